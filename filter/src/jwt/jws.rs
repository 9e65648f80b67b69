//! Compact JWS (RFC 7515 §7.1): `base64url(header) . base64url(payload) . base64url(signature)`.
//!
//! [`parse`] refuses, before any signature arithmetic, everything a verifier could be tricked by:
//! other serialisations (JWE's five segments, JSON serialisation), loose base64url, `alg: none`
//! in any spelling, unknown algorithms, `crit` (we understand no extension), headers that
//! point at other keys (`jwk`, `jku`, `x5u`, `x5c`) and the unencoded-payload option
//! (`b64` other than `true`, RFC 7797). The key, and with it the algorithm, always comes from
//! the configuration: [`verify_with`] only checks that the token's `alg` agrees with it.

use super::jwk::{Jwk, KeySet};
use super::{Algorithm, JwtError, b64};
use serde::{Deserialize, Deserializer};

/// Longest token accepted. Real tokens are well under 4 KiB; the cap bounds the work an
/// anonymous client can cause before the signature is checked.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The protected header members the filter uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The algorithm the token claims; must equal its key's pinned algorithm.
    pub alg: Algorithm,
    /// Names the key to verify with.
    pub kid: Option<String>,
    /// Media type of the whole token (e.g. `JWT`), for claim checks that care.
    pub typ: Option<String>,
}

/// A parsed, not yet verified, compact JWS.
#[derive(Debug, Clone)]
pub struct Jws<'t> {
    /// The decoded protected header.
    pub header: Header,
    /// `header.payload` exactly as received: what the signature covers.
    pub signing_input: &'t str,
    /// The decoded payload (the JWT claims JSON; not inspected here).
    pub payload: Vec<u8>,
    /// The decoded signature.
    pub signature: Vec<u8>,
}

/// Parses a compact JWS. Does not verify it.
pub fn parse(token: &str) -> Result<Jws<'_>, JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::Malformed("token is too large"));
    }
    let (signing_input, signature_b64) = token
        .rsplit_once('.')
        .ok_or(JwtError::Malformed("token does not have three segments"))?;
    let (header_b64, payload_b64) = signing_input
        .split_once('.')
        .ok_or(JwtError::Malformed("token does not have three segments"))?;
    if payload_b64.contains('.') {
        return Err(JwtError::Malformed(
            "token has more than three segments (JWE is not accepted)",
        ));
    }
    if header_b64.is_empty() {
        return Err(JwtError::Malformed("token header is empty"));
    }
    let header_json = b64::decode(header_b64)
        .map_err(|_| JwtError::Malformed("token header is not base64url"))?;
    let header = parse_header(&header_json)?;
    let payload = b64::decode(payload_b64)
        .map_err(|_| JwtError::Malformed("token payload is not base64url"))?;
    let signature = b64::decode(signature_b64)
        .map_err(|_| JwtError::Malformed("token signature is not base64url"))?;
    if signature.is_empty() {
        return Err(JwtError::Malformed("token has no signature"));
    }
    Ok(Jws {
        header,
        signing_input,
        payload,
        signature,
    })
}

/// Verifies `jws` with `key`, refusing a token whose `alg` is not the key's pinned algorithm.
pub fn verify_with(jws: &Jws<'_>, key: &Jwk) -> Result<(), JwtError> {
    if jws.header.alg != key.alg {
        return Err(JwtError::AlgMismatch);
    }
    key.verify(jws.signing_input.as_bytes(), &jws.signature)
}

/// Verifies `jws` with the keys of a set and returns the key that verified it.
///
/// The candidates are the keys with the token's `kid` (all keys without a `kid`), narrowed to
/// those pinned to the token's `alg`. Errors: no candidate → [`JwtError::UnknownKid`]; the
/// `kid` matched but only keys of another algorithm → [`JwtError::AlgMismatch`]; no candidate
/// verified → [`JwtError::BadSignature`].
pub fn verify_with_set<'k>(jws: &Jws<'_>, keys: &'k KeySet) -> Result<&'k Jwk, JwtError> {
    let mut named = false;
    let mut tried = false;
    for key in keys.candidates(jws.header.kid.as_deref()) {
        named = true;
        if key.alg != jws.header.alg {
            continue;
        }
        tried = true;
        if key
            .verify(jws.signing_input.as_bytes(), &jws.signature)
            .is_ok()
        {
            return Ok(key);
        }
    }
    Err(match (named, tried) {
        (_, true) => JwtError::BadSignature,
        (true, false) if jws.header.kid.is_some() => JwtError::AlgMismatch,
        _ => JwtError::UnknownKid,
    })
}

/// The header as sent. serde's derived visitor refuses a repeated member among these (so
/// `{"alg":"RS256","alg":"none"}` cannot be read two ways); repeats of members we ignore
/// cannot change what we do.
#[derive(Deserialize)]
struct RawHeader {
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default, deserialize_with = "present")]
    crit: bool,
    #[serde(default, deserialize_with = "present")]
    jwk: bool,
    #[serde(default, deserialize_with = "present")]
    jku: bool,
    #[serde(default, deserialize_with = "present")]
    x5u: bool,
    #[serde(default, deserialize_with = "present")]
    x5c: bool,
    #[serde(default, deserialize_with = "b64_member")]
    b64: B64Member,
}

#[derive(Default, PartialEq, Eq)]
enum B64Member {
    #[default]
    Absent,
    True,
    Other,
}

/// A member counts as present whatever its value, `null` included.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

fn b64_member<'de, D: Deserializer<'de>>(d: D) -> Result<B64Member, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Bool(true) => B64Member::True,
        _ => B64Member::Other,
    })
}

fn parse_header(json: &[u8]) -> Result<Header, JwtError> {
    // serde would also read a struct from a JSON array; the header must be an object.
    let first = json
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(&b'{') {
        return Err(JwtError::Malformed("token header is not a JSON object"));
    }
    let raw: RawHeader = serde_json::from_slice(json).map_err(|e| {
        JwtError::Malformed(match e.classify() {
            serde_json::error::Category::Data => "token header repeats or mistypes a member",
            _ => "token header is not valid JSON",
        })
    })?;
    let alg = raw
        .alg
        .ok_or(JwtError::Malformed("token header has no alg"))?;
    if alg.eq_ignore_ascii_case("none") {
        return Err(JwtError::AlgNone);
    }
    if raw.crit {
        return Err(JwtError::UnknownCrit);
    }
    for (present, name) in [
        (raw.jwk, "jwk"),
        (raw.jku, "jku"),
        (raw.x5u, "x5u"),
        (raw.x5c, "x5c"),
    ] {
        if present {
            return Err(JwtError::ForbiddenHeader(name));
        }
    }
    if raw.b64 == B64Member::Other {
        return Err(JwtError::ForbiddenHeader("b64"));
    }
    let alg = Algorithm::from_name(&alg).ok_or(JwtError::UnsupportedAlg)?;
    Ok(Header {
        alg,
        kid: raw.kid,
        typ: raw.typ,
    })
}

#[cfg(test)]
mod tests {}
