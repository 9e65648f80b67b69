//! The header-phase decision: route, authenticate, authorize, and the header edits that follow.
//!
//! Pure: given the prepared [`Config`], the request's headers, the time and the per-worker token
//! cache, it returns a [`Decision`]. The proxy-wasm glue applies it; tests call it directly.

use crate::apikey;
use crate::cache::TokenCache;
use crate::config::{
    ClaimRule, ClaimTest, Config, HostMatch, PathMatch, ProviderKind, Route, TokenSource,
};
use crate::jwt::JwtError;
use crate::jwt::authenticate::authenticate;
use crate::jwt::claims::VerifiedToken;
use crate::request::{Request, without_cookie, without_query_param};
use serde_json::Value;
use std::sync::Arc;

/// What the filter does with a request.
#[derive(Debug)]
pub struct Decision {
    /// Index of the matched route.
    pub route: Option<usize>,
    /// Who the caller is, when a provider vouched for them.
    pub identity: Option<Identity>,
    /// Pass or refuse.
    pub verdict: Verdict,
    /// Why, in one word, for audit records and metrics.
    pub reason: &'static str,
    /// The provider, scope or claim that decided, when one did.
    pub rule: Option<String>,
    /// Header edits to apply to the request before it goes upstream (also on a shadowed
    /// refusal, which passes).
    pub edits: Vec<HeaderEdit>,
}

/// Pass, or refuse with a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The request goes on.
    Allow,
    /// The request is refused (or, when `shadow`, would have been).
    Refuse(Refusal),
}

/// A refusal, ready to be turned into a local reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status.
    pub status: u16,
    /// Machine-readable code for the JSON body.
    pub error: &'static str,
    /// Human-readable reason for the JSON body (never contains a credential).
    pub message: String,
    /// `WWW-Authenticate` value, if the status calls for one.
    pub challenge: Option<String>,
    /// Recorded only: the request passes.
    pub shadow: bool,
}

/// A change to the request headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEdit {
    /// Remove every header with this name.
    Remove(String),
    /// Set (replace) a header.
    Set(String, String),
}

/// The verified caller.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Index of the provider that verified the credential.
    pub provider: usize,
    /// What was verified.
    pub credential: Credential,
}

/// A verified credential.
#[derive(Debug, Clone)]
pub enum Credential {
    /// A JWT and its claims.
    Jwt(Arc<VerifiedToken>),
    /// An API key: its index in the provider's key list.
    ApiKey(usize),
}

impl Identity {
    /// `sub` of a token.
    pub fn subject(&self) -> Option<&str> {
        match &self.credential {
            Credential::Jwt(t) => t.subject.as_deref(),
            Credential::ApiKey(_) => None,
        }
    }

    /// The consumer of an API key.
    pub fn consumer<'c>(&self, config: &'c Config) -> Option<&'c str> {
        match self.credential {
            Credential::ApiKey(i) => self.api_key(config, i).map(|k| k.consumer.as_str()),
            Credential::Jwt(_) => None,
        }
    }

    fn api_key<'c>(
        &self,
        config: &'c Config,
        i: usize,
    ) -> Option<&'c crate::config::provider::ApiKey> {
        match &config.providers.get(self.provider)?.kind {
            ProviderKind::ApiKey(p) => apikey::key(p, i),
            ProviderKind::Jwt(_) => None,
        }
    }

    fn has_scope(&self, config: &Config, scope: &str) -> bool {
        match &self.credential {
            Credential::Jwt(t) => t.has_scope(scope),
            Credential::ApiKey(i) => self
                .api_key(config, *i)
                .is_some_and(|k| k.scopes.iter().any(|s| s == scope)),
        }
    }

    /// A claim of a token; API-key identities expose their consumer as `sub` and `consumer`.
    fn claim(&self, config: &Config, path: &[String]) -> Option<Value> {
        match &self.credential {
            Credential::Jwt(t) => t.claim(path).cloned(),
            Credential::ApiKey(_) => match path {
                [name] if name == "sub" || name == "consumer" => {
                    self.consumer(config).map(|c| Value::String(c.to_owned()))
                }
                _ => None,
            },
        }
    }
}

/// Decides one request at header time.
pub fn decide(config: &Config, cache: &mut TokenCache, req: &Request<'_>, now: u64) -> Decision {
    let mut edits = strip_protected(config, req);
    let Some((index, route)) = find_route(config, req) else {
        return Decision {
            route: None,
            identity: None,
            verdict: Verdict::Refuse(Refusal {
                status: 403,
                error: "no_route",
                message: "no route allows this request".to_owned(),
                challenge: None,
                shadow: false,
            }),
            reason: "no_route",
            rule: None,
            edits,
        };
    };
    let mut decision = Decision {
        route: Some(index),
        identity: None,
        verdict: Verdict::Allow,
        reason: "public",
        rule: None,
        edits: Vec::new(),
    };
    if route.public {
        decision.edits = edits;
        return decision;
    }

    let outcome = authenticate_route(config, cache, route, req, now);
    let (identity, found) = match outcome {
        AuthOutcome::Verified { identity, found } => (identity, found),
        AuthOutcome::Missing if route.allow_missing => {
            decision.reason = "anonymous";
            decision.edits = edits;
            return decision;
        }
        AuthOutcome::Missing => {
            let shadow = route.shadow || all_shadow(config, &route.requires);
            decision.verdict = Verdict::Refuse(Refusal {
                status: 401,
                error: "missing_credentials",
                message: "credentials are required".to_owned(),
                challenge: Some(challenge(config, route, None)),
                shadow,
            });
            decision.reason = "missing_credentials";
            decision.edits = edits;
            return decision;
        }
        AuthOutcome::Failed { failures } => {
            let shadow = route.shadow || all_shadow(config, failures.iter().map(|f| &f.provider));
            let chosen = most_telling(&failures);
            let (error, message) = match chosen.and_then(|f| f.error.as_ref()) {
                Some(e) => ("invalid_token", e.to_string()),
                None => ("invalid_api_key", "API key is not valid".to_owned()),
            };
            decision.verdict = Verdict::Refuse(Refusal {
                status: 401,
                error,
                message: message.clone(),
                challenge: Some(challenge(config, route, Some(("invalid_token", &message)))),
                shadow,
            });
            decision.reason = error;
            decision.rule = chosen.and_then(|f| provider_name(config, f.provider));
            decision.edits = edits;
            return decision;
        }
    };

    decision.rule = provider_name(config, identity.provider);
    let provider_shadow = config
        .providers
        .get(identity.provider)
        .is_some_and(|p| p.shadow);
    if let Some(refusal) = authorize(config, route, &identity, &mut decision) {
        decision.verdict = Verdict::Refuse(Refusal {
            shadow: route.shadow || provider_shadow,
            ..refusal
        });
        decision.identity = Some(identity);
        decision.edits = edits;
        return decision;
    }
    decision.reason = "authenticated";
    identity_edits(config, &identity, &mut edits);
    if let Some(found) = found {
        credential_edits(req, &found, &mut edits);
    }
    decision.identity = Some(identity);
    decision.edits = edits;
    decision
}

/// The first route that matches host, method and path.
pub fn find_route<'c>(config: &'c Config, req: &Request<'_>) -> Option<(usize, &'c Route)> {
    let host = req.host();
    let method = req.method();
    let path = req.path();
    config.routes.iter().enumerate().find(|(_, r)| {
        (r.hosts.is_empty() || r.hosts.iter().any(|h| host_matches(h, host)))
            && (r.methods.is_empty() || r.methods.iter().any(|m| m == method))
            && path_matches(&r.path, path)
    })
}

fn host_matches(rule: &HostMatch, host: &str) -> bool {
    match rule {
        HostMatch::Any => true,
        HostMatch::Exact(h) => h.eq_ignore_ascii_case(host),
        HostMatch::Suffix(s) => {
            host.len() > s.len()
                && host
                    .get(host.len() - s.len()..)
                    .is_some_and(|tail| tail.eq_ignore_ascii_case(s))
        }
    }
}

fn path_matches(rule: &PathMatch, path: &str) -> bool {
    match rule {
        PathMatch::Any => true,
        PathMatch::Exact(p) => p == path,
        PathMatch::Prefix(p) => path.starts_with(p.as_str()),
        PathMatch::Regex(r) => r.is_match(path),
    }
}

/// Where a verified credential was found, so it can be stripped.
#[derive(Debug)]
struct Found<'c> {
    source: &'c TokenSource,
}

struct Failure {
    provider: usize,
    /// `None` for an API key that matched nothing.
    error: Option<JwtError>,
}

enum AuthOutcome<'c> {
    Verified {
        identity: Identity,
        found: Option<Found<'c>>,
    },
    Missing,
    Failed {
        failures: Vec<Failure>,
    },
}

/// Tries the route's providers in order; the first that verifies a credential wins.
fn authenticate_route<'c>(
    config: &'c Config,
    cache: &mut TokenCache,
    route: &Route,
    req: &Request<'_>,
    now: u64,
) -> AuthOutcome<'c> {
    let mut failures = Vec::new();
    for &index in &route.requires {
        let Some(provider) = config.providers.get(index) else {
            continue;
        };
        match &provider.kind {
            ProviderKind::Jwt(jwt) => {
                let Some((token, source)) = extract(req, &jwt.sources) else {
                    continue;
                };
                match authenticate(index, jwt, &token, now, cache) {
                    Ok(verified) => {
                        return AuthOutcome::Verified {
                            identity: Identity {
                                provider: index,
                                credential: Credential::Jwt(verified),
                            },
                            found: (!jwt.forward).then_some(Found { source }),
                        };
                    }
                    Err(e) => failures.push(Failure {
                        provider: index,
                        error: Some(e),
                    }),
                }
            }
            ProviderKind::ApiKey(keys) => {
                let Some((presented, source)) = extract(req, &keys.sources) else {
                    continue;
                };
                match apikey::find(keys, &presented) {
                    Some(i) => {
                        return AuthOutcome::Verified {
                            identity: Identity {
                                provider: index,
                                credential: Credential::ApiKey(i),
                            },
                            found: (!keys.forward).then_some(Found { source }),
                        };
                    }
                    None => failures.push(Failure {
                        provider: index,
                        error: None,
                    }),
                }
            }
        }
    }
    if failures.is_empty() {
        AuthOutcome::Missing
    } else {
        AuthOutcome::Failed { failures }
    }
}

/// The first credential found in these sources.
fn extract<'c>(req: &Request<'_>, sources: &'c [TokenSource]) -> Option<(String, &'c TokenSource)> {
    sources.iter().find_map(|source| {
        let value = match source {
            TokenSource::Header { name, prefix } => req.headers_named(name).find_map(|v| {
                let head = v.get(..prefix.len())?;
                if head.eq_ignore_ascii_case(prefix) {
                    v.get(prefix.len()..).map(|t| t.trim().to_owned())
                } else {
                    None
                }
            }),
            TokenSource::Param(name) => req.query_param(name),
            TokenSource::Cookie(name) => req.cookie(name).map(str::to_owned),
        }?;
        (!value.is_empty()).then_some((value, source))
    })
}

/// Among several providers' failures, the one that tells the client most: an error found
/// after the key and issuer matched beats "no key matches" or "wrong issuer", which only say
/// the token was meant for another provider.
fn most_telling(failures: &[Failure]) -> Option<&Failure> {
    failures
        .iter()
        .find(|f| {
            !matches!(
                f.error,
                Some(JwtError::UnknownKid | JwtError::BadIssuer | JwtError::AlgMismatch)
            )
        })
        .or_else(|| failures.first())
}

fn all_shadow<'a>(config: &Config, providers: impl IntoIterator<Item = &'a usize>) -> bool {
    let mut any = false;
    for &i in providers {
        any = true;
        if !config.providers.get(i).is_some_and(|p| p.shadow) {
            return false;
        }
    }
    any
}

fn provider_name(config: &Config, index: usize) -> Option<String> {
    config.providers.get(index).map(|p| p.name.clone())
}

/// Scopes, then claim rules. Returns the refusal, having set `reason` and `rule`.
fn authorize(
    config: &Config,
    route: &Route,
    identity: &Identity,
    decision: &mut Decision,
) -> Option<Refusal> {
    if let Some(missing) = route.scopes.iter().find(|s| !identity.has_scope(config, s)) {
        decision.reason = "insufficient_scope";
        decision.rule = Some(format!("scope:{missing}"));
        let message = format!("the scope {missing:?} is required");
        let mut challenge = challenge(config, route, Some(("insufficient_scope", &message)));
        challenge.push_str(&format!(
            ", scope=\"{}\"",
            quote_safe(&route.scopes.join(" "))
        ));
        return Some(Refusal {
            status: 403,
            error: "insufficient_scope",
            message,
            challenge: Some(challenge),
            shadow: false,
        });
    }
    if let Some(rule) = route
        .claims
        .iter()
        .find(|rule| !claim_rule_holds(rule, identity.claim(config, &rule.claim).as_ref()))
    {
        let name = rule.claim.join(".");
        decision.reason = "claim_mismatch";
        decision.rule = Some(format!("claim:{name}"));
        let message = format!("the claim {name:?} does not satisfy this route's rule");
        return Some(Refusal {
            status: 403,
            error: "forbidden",
            challenge: Some(challenge(
                config,
                route,
                Some(("insufficient_scope", &message)),
            )),
            message,
            shadow: false,
        });
    }
    None
}

/// Whether a claim value (or, for an array claim, any element) passes the rule.
fn claim_rule_holds(rule: &ClaimRule, value: Option<&Value>) -> bool {
    let Some(value) = value else {
        return false;
    };
    let one = |v: &Value| match &rule.test {
        ClaimTest::Equals(expected) => v == expected,
        ClaimTest::OneOf(list) => list.iter().any(|e| e == v),
        ClaimTest::Regex(re) => v.as_str().is_some_and(|s| re.is_match(s)),
    };
    match value {
        Value::Array(items) => items.iter().any(one),
        other => one(other),
    }
}

/// An RFC 6750 challenge (or `ApiKey` for routes that take only API keys).
fn challenge(config: &Config, route: &Route, error: Option<(&str, &str)>) -> String {
    let any_jwt = route.requires.iter().any(|&i| {
        config
            .providers
            .get(i)
            .is_some_and(|p| matches!(p.kind, ProviderKind::Jwt(_)))
    });
    let scheme = if any_jwt || route.requires.is_empty() {
        "Bearer"
    } else {
        "ApiKey"
    };
    let mut out = format!("{scheme} realm=\"{}\"", config.realm);
    if let Some((code, description)) = error {
        out.push_str(&format!(
            ", error=\"{code}\", error_description=\"{}\"",
            quote_safe(description)
        ));
    }
    out
}

/// RFC 6750 §3: error_description uses %x20-21 / %x23-5B / %x5D-7E only.
fn quote_safe(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '"' => '\'',
            '\\' => '/',
            c if (' '..='~').contains(&c) => c,
            _ => '?',
        })
        .collect()
}

/// Removes, from every request, whatever a client sent under the names of identity headers, so
/// that only the filter can set them.
fn strip_protected(config: &Config, req: &Request<'_>) -> Vec<HeaderEdit> {
    config
        .protected_headers
        .iter()
        .filter(|name| req.header(name).is_some())
        .map(|name| HeaderEdit::Remove(name.clone()))
        .collect()
}

fn identity_edits(config: &Config, identity: &Identity, edits: &mut Vec<HeaderEdit>) {
    let names = &config.identity_headers;
    if let (Some(h), Some(v)) = (&names.subject, identity.subject()) {
        edits.push(HeaderEdit::Set(h.clone(), v.to_owned()));
    }
    if let (Some(h), Some(v)) = (&names.consumer, identity.consumer(config)) {
        edits.push(HeaderEdit::Set(h.clone(), v.to_owned()));
    }
    if let (Some(h), Some(p)) = (&names.provider, config.providers.get(identity.provider)) {
        edits.push(HeaderEdit::Set(h.clone(), p.name.clone()));
    }
    let (Credential::Jwt(token), Some(ProviderKind::Jwt(jwt))) = (
        &identity.credential,
        config.providers.get(identity.provider).map(|p| &p.kind),
    ) else {
        return;
    };
    if let Some(h) = &jwt.forward_payload_header {
        edits.push(HeaderEdit::Set(h.clone(), token.payload_b64.clone()));
    }
    for c in &jwt.claim_to_headers {
        if let Some(value) = token.claim(&c.claim).and_then(header_value) {
            edits.push(HeaderEdit::Set(c.header_name.clone(), value));
        }
    }
}

/// A claim as a header value: strings as they are, numbers and booleans in JSON form; other
/// types and values with control characters are skipped.
fn header_value(v: &Value) -> Option<String> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    (!s.chars().any(char::is_control)).then_some(s)
}

/// Removes the verified credential from the request (`forward: false`).
fn credential_edits(req: &Request<'_>, found: &Found<'_>, edits: &mut Vec<HeaderEdit>) {
    match found.source {
        TokenSource::Header { name, .. } => edits.push(HeaderEdit::Remove(name.clone())),
        TokenSource::Param(name) => edits.push(HeaderEdit::Set(
            ":path".to_owned(),
            without_query_param(req.path_and_query(), name),
        )),
        TokenSource::Cookie(name) => {
            let all: Vec<&str> = req.headers_named("cookie").collect();
            edits.push(HeaderEdit::Remove("cookie".to_owned()));
            if let Some(rest) = without_cookie(&all.join("; "), name) {
                edits.push(HeaderEdit::Set("cookie".to_owned(), rest));
            }
        }
    }
}
