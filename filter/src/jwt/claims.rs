//! Registered-claim checks (RFC 7519 §4.1) and the verified token kept for the request.

use super::JwtError;
use crate::config::JwtProvider;
use serde_json::{Map, Value};

/// What a verified token contributes to the request: its claims, read once.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedToken {
    /// All claims of the payload.
    pub claims: Map<String, Value>,
    /// `exp`, seconds since the epoch.
    pub exp: Option<u64>,
    /// `nbf`, seconds since the epoch.
    pub nbf: Option<u64>,
    /// `sub`.
    pub subject: Option<String>,
    /// Scopes from `scope` (space-delimited) or `scp` (array or string).
    pub scopes: Vec<String>,
    /// The payload segment as received (base64url), for `forward_payload_header`.
    pub payload_b64: String,
}

impl VerifiedToken {
    /// Reads a claim by path (`["realm", "roles"]` for `realm.roles`).
    pub fn claim(&self, path: &[String]) -> Option<&Value> {
        claim_at(&self.claims, path)
    }

    /// Whether the identity holds `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

/// A claim by path in a claim set.
pub fn claim_at<'c>(claims: &'c Map<String, Value>, path: &[String]) -> Option<&'c Value> {
    let (first, rest) = path.split_first()?;
    let mut value = claims.get(first)?;
    for part in rest {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

/// Checks the claims of a token whose signature is not yet verified, so that a token bound to
/// fail is refused before any signature arithmetic.
pub fn validate(
    provider: &JwtProvider,
    claims: Map<String, Value>,
    payload_b64: &str,
    now: u64,
) -> Result<VerifiedToken, JwtError> {
    let exp = numeric_date(&claims, "exp")?;
    let nbf = numeric_date(&claims, "nbf")?;
    let iat = numeric_date(&claims, "iat")?;
    check_times(provider, exp, nbf, now)?;
    if let Some(max) = provider.max_lifetime_seconds {
        let exp = exp.ok_or(JwtError::MissingExpiration)?;
        let start = iat.unwrap_or(now);
        if exp.saturating_sub(start) > max {
            return Err(JwtError::LifetimeTooLong);
        }
    }
    if let Some(issuer) = &provider.issuer {
        match claims.get("iss") {
            Some(Value::String(iss)) if iss == issuer => {}
            _ => return Err(JwtError::BadIssuer),
        }
    }
    if !provider.audiences.is_empty() && !audience_matches(&claims, &provider.audiences)? {
        return Err(JwtError::BadAudience);
    }
    if provider
        .required_claims
        .iter()
        .any(|path| claim_at(&claims, path).is_none())
    {
        return Err(JwtError::MissingClaim);
    }
    let subject = match claims.get("sub") {
        None => None,
        // `sub` goes into a request header: a CR, LF or NUL could split or end it.
        Some(Value::String(s)) if crate::request::is_safe_header_value(s) => Some(s.clone()),
        Some(Value::String(_)) => {
            return Err(JwtError::Malformed("sub holds control characters"));
        }
        Some(_) => return Err(JwtError::Malformed("sub is not a string")),
    };
    let scopes = scopes_of(&claims)?;
    Ok(VerifiedToken {
        claims,
        exp,
        nbf,
        subject,
        scopes,
        payload_b64: payload_b64.to_owned(),
    })
}

/// The time checks alone, repeated on every use of a cached token.
pub fn check_times(
    provider: &JwtProvider,
    exp: Option<u64>,
    nbf: Option<u64>,
    now: u64,
) -> Result<(), JwtError> {
    let skew = provider.clock_skew_seconds;
    match exp {
        Some(exp) if now > exp.saturating_add(skew) => return Err(JwtError::Expired),
        None if provider.require_expiration => return Err(JwtError::MissingExpiration),
        _ => {}
    }
    if nbf.is_some_and(|nbf| now.saturating_add(skew) < nbf) {
        return Err(JwtError::NotYetValid);
    }
    Ok(())
}

/// A NumericDate claim: a JSON number of seconds (fractions are truncated).
fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<u64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(u) = n.as_u64() {
                Ok(Some(u))
            } else {
                match n.as_f64() {
                    Some(f) if (0.0..1e15).contains(&f) => Ok(Some(f as u64)),
                    _ => Err(JwtError::Malformed(date_error(name))),
                }
            }
        }
        Some(_) => Err(JwtError::Malformed(date_error(name))),
    }
}

fn date_error(name: &str) -> &'static str {
    match name {
        "exp" => "exp is not a valid NumericDate",
        "nbf" => "nbf is not a valid NumericDate",
        _ => "iat is not a valid NumericDate",
    }
}

fn audience_matches(claims: &Map<String, Value>, accepted: &[String]) -> Result<bool, JwtError> {
    let accepts = |a: &str| accepted.iter().any(|ours| ours == a);
    match claims.get("aud") {
        None => Ok(false),
        Some(Value::String(a)) => Ok(accepts(a)),
        Some(Value::Array(list)) => {
            let mut any = false;
            for item in list {
                match item {
                    Value::String(a) => any |= accepts(a),
                    _ => return Err(JwtError::Malformed("aud holds a non-string")),
                }
            }
            Ok(any)
        }
        Some(_) => Err(JwtError::Malformed("aud is not a string or array")),
    }
}

fn scopes_of(claims: &Map<String, Value>) -> Result<Vec<String>, JwtError> {
    let mut scopes = Vec::new();
    for (name, arrays_allowed, error) in [
        ("scope", false, "scope is not a space-delimited string"),
        ("scp", true, "scp is not a string or an array of strings"),
    ] {
        match claims.get(name) {
            None => {}
            Some(Value::String(s)) => scopes.extend(s.split_whitespace().map(str::to_owned)),
            Some(Value::Array(items)) if arrays_allowed => {
                for item in items {
                    let s = item.as_str().ok_or(JwtError::Malformed(error))?;
                    scopes.push(s.to_owned());
                }
            }
            Some(_) => return Err(JwtError::Malformed(error)),
        }
    }
    Ok(scopes)
}
