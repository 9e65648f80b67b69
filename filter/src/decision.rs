//! The header-phase decision: route, authenticate, authorize, and the header edits that follow.
//!
//! Pure: given the prepared [`Config`], the request's headers, the time and the per-worker token
//! cache, it returns a [`Decision`]. The proxy-wasm glue applies it; tests call it directly.

use crate::apikey;
use crate::burst::SharedStore;
use crate::cache::CacheKey;
use crate::cache::TokenCache;
use crate::client_ip::client_ip;
use crate::config::{
    ClaimRule, ClaimTest, Config, HostMatch, PathMatch, ProviderKind, Route, TokenSource,
};
use crate::guard;
pub use crate::guard::{BodyKind, BodyPlan, Stop};
use crate::introspect::{self, Introspected, IntrospectionCache};
use crate::jwks::RemoteKeys;
use crate::jwt::JwtError;
use crate::jwt::authenticate::authenticate;
use crate::jwt::claims;
use crate::jwt::claims::VerifiedToken;
use crate::path;
use crate::request::{Request, is_safe_header_value, without_cookie, without_query_param};
use crate::shared_cache::{EntryId, Kind, SharedTokens};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::net::IpAddr;
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
    /// The client address the checks used.
    pub client_ip: Option<IpAddr>,
    /// What to do with the request body, when one follows and the request passes.
    pub body: Option<BodyPlan>,
    /// The path routes and rules saw, when normalising changed it.
    pub normalized_path: Option<String>,
    /// What the request should wait for before it is decided again (with [`Env::waited`] saying so).
    /// The verdict is then the refusal that applies if it does not wait.
    pub wait: Option<Wait>,
}

/// Something a decision needs that the filter has to ask for first.
#[derive(Clone, PartialEq, Eq)]
pub enum Wait {
    /// The provider's fetched keys are missing, or lack the token's `kid`.
    Keys(usize),
    /// The provider's introspection endpoint has not been asked about this token yet.
    Introspection {
        /// The provider.
        provider: usize,
        /// The token to ask about.
        token: String,
        /// Its cache key.
        key: CacheKey,
    },
}

impl std::fmt::Debug for Wait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Wait::Keys(p) => write!(f, "Keys({p})"),
            // The token stays out of logs and panic messages.
            Wait::Introspection { provider, .. } => write!(f, "Introspection({provider})"),
        }
    }
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
    /// Other headers of the reply (`Retry-After`, `Allow`).
    pub headers: Vec<(&'static str, String)>,
    /// Structured details for the JSON body (schema violations).
    pub details: Option<Value>,
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
    pub fn claim(&self, config: &Config, path: &[String]) -> Option<Value> {
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

/// What the decision reads besides the headers: the worker's state and the connection.
pub struct Env<'w> {
    /// The worker's verified-token cache.
    pub cache: &'w mut TokenCache,
    /// Data shared by every worker (the burst guard's buckets).
    pub store: &'w dyn SharedStore,
    /// Now, in nanoseconds since the Unix epoch.
    pub now_ns: u64,
    /// The connection's peer (`source.address`).
    pub peer: Option<IpAddr>,
    /// Whether the headers end the request (no body follows).
    pub end_of_stream: bool,
    /// Keys fetched for `remote_jwks` providers.
    pub remote_keys: &'w RemoteKeys,
    /// The worker's introspection answers.
    pub introspected: &'w mut IntrospectionCache,
    /// The introspection answer this request waited for (used even when it may not be
    /// reused, e.g. with `cache_ttl_seconds: 0`).
    pub answer: Option<&'w (CacheKey, Introspected)>,
    /// What this request already waited for: it is not made to wait for it again, and it
    /// is not counted in the burst guard twice.
    pub waited: Waited,
}

/// What a request decided again already waited for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Waited {
    /// Keys (the first set, or a refetch for its `kid`).
    pub keys: bool,
    /// The introspection endpoint's answer (or its failure).
    pub introspection: bool,
}

impl Waited {
    /// Whether the request is decided again.
    pub fn any(self) -> bool {
        self.keys || self.introspection
    }
}

/// Decides one request at header time, cheapest checks first: limits and path, route, method,
/// client address, burst guard, body size and type, then identity.
pub fn decide(config: &Config, env: &mut Env<'_>, req: &Request<'_>) -> Decision {
    let edits = strip_protected(config, req);
    let refused = |stop: Stop, edits| Decision {
        route: None,
        identity: None,
        verdict: Verdict::Refuse(stop.refusal),
        reason: stop.reason,
        rule: stop.rule,
        edits,
        client_ip: None,
        body: None,
        normalized_path: None,
        wait: None,
    };
    if let Some(stop) = guard::request_limits(&config.limits, req) {
        return refused(stop, edits);
    }
    if let Some(stop) = guard::authority(req) {
        return refused(stop, edits);
    }
    let normalized = match path::normalize(req.path(), &config.path_normalization.options) {
        Ok(n) => n,
        Err(e) => {
            let mut stop = Stop::new(400, "invalid_path", e.to_string());
            stop.rule = Some(e.reason().to_owned());
            return refused(stop, edits);
        }
    };
    let Some((index, route)) = find_route(config, req, &normalized.path) else {
        let stop = Stop::new(403, "no_route", "no route allows this request".to_owned());
        return refused(stop, edits);
    };
    let client = client_ip(
        env.peer,
        req.headers_named("x-forwarded-for"),
        config.xff_num_trusted_hops,
    )
    .map(|(ip, _)| ip);

    // Refusals of checks in shadow mode are remembered and evaluation goes on, so that an
    // enforcing check further down still decides.
    let mut shadowed: Option<Stop> = None;
    const CHECKS: usize = 5;
    let check = |step: usize, env: &Env<'_>| match step {
        0 => guard::method_allowed(route, req),
        1 => guard::request_limits(&route.limits, req),
        2 => guard::ip_filters(config.ip_filter.as_ref(), route, client),
        3 if env.waited.any() => None,
        3 => guard::burst(env.store, route, index, client, env.now_ns),
        _ => guard::body_headers(route, req, env.end_of_stream),
    };
    for stop in (0..CHECKS).filter_map(|step| check(step, env)) {
        if guard::is_shadowed(&stop.refusal, Some(route)) {
            shadowed.get_or_insert(stop.shadowed());
        } else {
            let mut d = refused(stop, edits);
            d.route = Some(index);
            d.client_ip = client;
            d.normalized_path = normalized.changed.then(|| normalized.path.into_owned());
            return d;
        }
    }

    let now = env.now_ns / 1_000_000_000;
    let mut decision = authenticate_and_authorize(config, env, index, route, req, now, edits);
    decision.client_ip = client;
    if decision.wait.is_some() {
        return decision;
    }
    if decision.verdict == Verdict::Allow
        && let Some(stop) = guard::inspect_request(route, req, &normalized.path)
    {
        if guard::is_shadowed(&stop.refusal, Some(route)) {
            shadowed.get_or_insert(stop.shadowed());
        } else {
            decision.verdict = Verdict::Refuse(stop.refusal);
            decision.reason = stop.reason;
            decision.rule = stop.rule;
        }
    }
    if let (Verdict::Allow, Some(stop)) = (&decision.verdict, shadowed) {
        decision.verdict = Verdict::Refuse(stop.refusal);
        decision.reason = stop.reason;
        decision.rule = stop.rule;
    }
    let passes = match &decision.verdict {
        Verdict::Allow => true,
        Verdict::Refuse(r) => r.shadow,
    };
    if normalized.changed {
        let path = normalized.path.into_owned();
        if passes && config.path_normalization.forward_normalized {
            forward_path(&path, req, &mut decision.edits);
        }
        decision.normalized_path = Some(path);
    }
    if passes && !env.end_of_stream {
        decision.body = Some(guard::body_plan(route, index, req));
    }
    decision
}

/// The identity part of the decision, on a matched route.
fn authenticate_and_authorize(
    config: &Config,
    env: &mut Env<'_>,
    index: usize,
    route: &Route,
    req: &Request<'_>,
    now: u64,
    mut edits: Vec<HeaderEdit>,
) -> Decision {
    let mut decision = Decision {
        route: Some(index),
        identity: None,
        verdict: Verdict::Allow,
        reason: "public",
        rule: None,
        edits: Vec::new(),
        client_ip: None,
        body: None,
        normalized_path: None,
        wait: None,
    };
    if route.public {
        decision.edits = edits;
        return decision;
    }

    // Refusals are only recorded on a route in shadow mode, or when every provider that decides
    // the route is in shadow mode (then the route has no enforcing provider at all).
    let shadow = route.shadow || route.shadow_providers_only;
    let outcome = authenticate_route(config, env, route, req, now);
    let (identity, found) = match outcome {
        AuthOutcome::Verified { identity, found } => (identity, found),
        AuthOutcome::Wait(wait) => {
            let provider = match &wait {
                Wait::Keys(p) | Wait::Introspection { provider: p, .. } => *p,
            };
            let message = match wait {
                Wait::Keys(_) => JwtError::KeysUnavailable.to_string(),
                Wait::Introspection { .. } => "the token could not be checked".to_owned(),
            };
            decision.verdict = Verdict::Refuse(Refusal {
                status: 401,
                error: "invalid_token",
                challenge: Some(challenge(config, route, Some(("invalid_token", &message)))),
                message,
                headers: Vec::new(),
                details: None,
                shadow,
            });
            decision.reason = "invalid_token";
            decision.rule = provider_name(config, provider);
            decision.wait = Some(wait);
            strip_credentials(config, route, req, None, &mut edits);
            decision.edits = edits;
            return decision;
        }
        AuthOutcome::IntrospectionFailed { provider } => {
            let mut stop = introspection_unavailable(config, provider);
            stop.refusal.shadow = shadow;
            decision.verdict = Verdict::Refuse(stop.refusal);
            decision.reason = stop.reason;
            decision.rule = provider_name(config, provider);
            strip_credentials(config, route, req, None, &mut edits);
            decision.edits = edits;
            return decision;
        }
        AuthOutcome::Missing if route.allow_missing => {
            decision.reason = "anonymous";
            // Whatever sits where a credential would (an unrecognised scheme, an empty token)
            // was not verified: the service must not act on it.
            strip_credentials(config, route, req, None, &mut edits);
            decision.edits = edits;
            return decision;
        }
        AuthOutcome::Missing => {
            decision.verdict = Verdict::Refuse(Refusal {
                status: 401,
                error: "missing_credentials",
                message: "credentials are required".to_owned(),
                challenge: Some(challenge(config, route, None)),
                headers: Vec::new(),
                details: None,
                shadow,
            });
            decision.reason = "missing_credentials";
            strip_credentials(config, route, req, None, &mut edits);
            decision.edits = edits;
            return decision;
        }
        AuthOutcome::Ambiguous { provider } => {
            let message = "the request carries more than one credential".to_owned();
            decision.verdict = Verdict::Refuse(Refusal {
                status: 400,
                error: "invalid_request",
                challenge: Some(challenge(
                    config,
                    route,
                    Some(("invalid_request", &message)),
                )),
                message,
                headers: Vec::new(),
                details: None,
                shadow,
            });
            decision.reason = "invalid_request";
            decision.rule = provider_name(config, provider);
            strip_credentials(config, route, req, None, &mut edits);
            decision.edits = edits;
            return decision;
        }
        AuthOutcome::Failed { failures } => {
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
                headers: Vec::new(),
                details: None,
                shadow,
            });
            decision.reason = error;
            decision.rule = chosen.and_then(|f| provider_name(config, f.provider));
            strip_credentials(config, route, req, None, &mut edits);
            decision.edits = edits;
            return decision;
        }
    };

    decision.rule = provider_name(config, identity.provider);
    strip_credentials(
        config,
        route,
        req,
        found.forward.then_some(found.source),
        &mut edits,
    );
    if let Some(refusal) = authorize(config, route, &identity, &mut decision) {
        decision.verdict = Verdict::Refuse(Refusal { shadow, ..refusal });
        decision.identity = Some(identity);
        decision.edits = edits;
        return decision;
    }
    decision.reason = "authenticated";
    identity_edits(config, &identity, &mut edits);
    decision.identity = Some(identity);
    decision.edits = edits;
    decision
}

/// Sends the normalised path upstream, with the query as the other edits left it (credential
/// parameters may have been removed from it).
fn forward_path(path: &str, req: &Request<'_>, edits: &mut Vec<HeaderEdit>) {
    let edited_query = edits.iter().rev().find_map(|e| match e {
        HeaderEdit::Set(name, value) if name == ":path" => {
            Some(value.split_once('?').map(|(_, q)| q.to_owned()))
        }
        _ => None,
    });
    let query = edited_query.unwrap_or_else(|| req.query().map(str::to_owned));
    edits.retain(|e| !matches!(e, HeaderEdit::Set(name, _) if name == ":path"));
    let value = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    edits.push(HeaderEdit::Set(":path".to_owned(), value));
}

/// The first route that matches host, method and the (normalised) path.
pub fn find_route<'c>(
    config: &'c Config,
    req: &Request<'_>,
    path: &str,
) -> Option<(usize, &'c Route)> {
    let host = req.host();
    let method = req.method();
    config.routes.iter().enumerate().find(|(_, r)| {
        (r.hosts.is_empty() || r.hosts.iter().any(|h| host_matches(h, host)))
            && (r.methods.is_empty() || r.methods.iter().any(|m| m == method))
            && path_matches(&r.path, path, r.case_sensitive)
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

fn path_matches(rule: &PathMatch, path: &str, case_sensitive: bool) -> bool {
    match rule {
        PathMatch::Any => true,
        PathMatch::Exact(p) if case_sensitive => p == path,
        PathMatch::Exact(p) => p.eq_ignore_ascii_case(path),
        PathMatch::Prefix(p) if case_sensitive => path.starts_with(p.as_str()),
        PathMatch::Prefix(p) => path
            .get(..p.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(p)),
        PathMatch::Regex(r) => r.is_match(path),
    }
}

/// An introspection answer another worker received, kept in this worker's cache too.
fn shared_answer(
    env: &mut Env<'_>,
    shared: Option<&SharedTokens<'_>>,
    jwt: &crate::config::JwtProvider,
    key: CacheKey,
    now: u64,
) -> Option<Introspected> {
    let endpoint = jwt.introspection.as_deref()?;
    let id = EntryId {
        provider: key.0,
        hash: &key.1,
        stamp: 0,
        kind: Kind::Introspection,
    };
    let (until, body) = shared?.get(id, now)?;
    let (answer, _) = introspect::read_answer(jwt, endpoint, Some(200), &body, now).ok()?;
    env.introspected
        .insert(key, answer.clone(), until, body.len());
    Some(answer)
}

/// The introspection endpoint failed or was late: 503 with `Retry-After` (or 401 when the
/// provider is not `failure_mode_deny`).
fn introspection_unavailable(config: &Config, provider: usize) -> Stop {
    let deny = config
        .providers
        .get(provider)
        .is_none_or(|p| match &p.kind {
            ProviderKind::Jwt(jwt) => jwt
                .introspection
                .as_ref()
                .is_none_or(|i| i.failure_mode_deny),
            ProviderKind::ApiKey(_) => true,
        });
    if deny {
        let mut stop = Stop::new(
            503,
            "introspection_unavailable",
            "the token could not be checked; retry shortly".to_owned(),
        );
        stop.refusal.headers.push(("retry-after", "1".to_owned()));
        stop
    } else {
        let mut stop = Stop::new(
            401,
            "invalid_token",
            "the token could not be checked".to_owned(),
        );
        stop.reason = "introspection_unavailable";
        stop
    }
}

/// Where a verified credential was found, so it can be stripped.
#[derive(Debug)]
struct Found<'c> {
    source: &'c TokenSource,
    /// The provider forwards it (`forward: true`): the one source left in the request.
    forward: bool,
}

struct Failure {
    provider: usize,
    /// `None` for an API key that matched nothing.
    error: Option<JwtError>,
}

enum AuthOutcome<'c> {
    Verified {
        identity: Identity,
        found: Found<'c>,
    },
    Missing,
    /// A provider found more than one credential.
    Ambiguous {
        provider: usize,
    },
    Failed {
        failures: Vec<Failure>,
    },
    /// A provider needs keys or an introspection answer first.
    Wait(Wait),
    /// The introspection endpoint failed or was late for this token.
    IntrospectionFailed {
        provider: usize,
    },
}

/// Tries the route's deciding providers in order; the first that verifies a credential wins.
fn authenticate_route<'c>(
    config: &'c Config,
    env: &mut Env<'_>,
    route: &Route,
    req: &Request<'_>,
    now: u64,
) -> AuthOutcome<'c> {
    let mut failures = Vec::new();
    let shared = SharedTokens::new(env.store, config);
    for &index in &route.deciding {
        let Some(provider) = config.providers.get(index) else {
            continue;
        };
        let (sources, forward) = provider.sources();
        let (value, source) = match extract(req, sources) {
            Extracted::Nothing => continue,
            Extracted::Several => return AuthOutcome::Ambiguous { provider: index },
            Extracted::One(value, source) => (value, source),
        };
        let verified = match (value, &provider.kind) {
            (None, _) => Err(Some(JwtError::Malformed(
                "credential is not valid percent-encoding",
            ))),
            (Some(token), ProviderKind::Jwt(jwt)) if jwt.remote.is_some() => {
                let verified = match env.remote_keys.keys(index) {
                    Some(keys) => {
                        let stamp = env.remote_keys.version(index);
                        let shared = shared.as_ref().map(|s| (s, stamp));
                        authenticate(index, jwt, &keys, &token, now, env.cache, shared)
                    }
                    None => Err(JwtError::KeysUnavailable),
                };
                match verified {
                    Err(JwtError::KeysUnavailable | JwtError::UnknownKid) if !env.waited.keys => {
                        return AuthOutcome::Wait(Wait::Keys(index));
                    }
                    other => other.map(Credential::Jwt).map_err(Some),
                }
            }
            (Some(token), _) if token.len() > crate::jwt::jws::MAX_TOKEN_LEN => {
                // Checked before hashing, and before any call on an introspection endpoint.
                Err(Some(JwtError::Malformed("token is too large")))
            }
            (Some(token), ProviderKind::Jwt(jwt)) if jwt.introspection.is_some() => {
                let key = (index, <[u8; 32]>::from(Sha256::digest(token.as_bytes())));
                let answer = env
                    .answer
                    .filter(|(k, _)| *k == key)
                    .map(|(_, a)| a.clone())
                    .or_else(|| env.introspected.get(&key, now).cloned())
                    .or_else(|| shared_answer(env, shared.as_ref(), jwt, key, now));
                match answer {
                    Some(Introspected::Active(t)) => claims::check_times(jwt, t.exp, t.nbf, now)
                        .map(|()| Credential::Jwt(t))
                        .map_err(Some),
                    Some(Introspected::Refused(e)) => Err(Some(e)),
                    None if !env.waited.introspection => {
                        return AuthOutcome::Wait(Wait::Introspection {
                            provider: index,
                            token,
                            key,
                        });
                    }
                    None => return AuthOutcome::IntrospectionFailed { provider: index },
                }
            }
            (Some(token), ProviderKind::Jwt(jwt)) => {
                let shared = shared.as_ref().map(|s| (s, 0));
                authenticate(index, jwt, &jwt.keys, &token, now, env.cache, shared)
                    .map(Credential::Jwt)
                    .map_err(Some)
            }
            (Some(key), ProviderKind::ApiKey(keys)) => {
                apikey::find(keys, &key).map(Credential::ApiKey).ok_or(None)
            }
        };
        match verified {
            Ok(credential) => {
                return AuthOutcome::Verified {
                    identity: Identity {
                        provider: index,
                        credential,
                    },
                    found: Found { source, forward },
                };
            }
            Err(error) => failures.push(Failure {
                provider: index,
                error: error.filter(|_| matches!(provider.kind, ProviderKind::Jwt(_))),
            }),
        }
    }
    if failures.is_empty() {
        AuthOutcome::Missing
    } else {
        AuthOutcome::Failed { failures }
    }
}

/// What a provider's sources hold.
enum Extracted<'c> {
    /// No credential.
    Nothing,
    /// Exactly one credential (`None` if it is present but not readable, e.g. bad
    /// percent-encoding), and where.
    One(Option<String>, &'c TokenSource),
    /// More than one: RFC 6750 §2 forbids sending a token more than one way, and an upstream
    /// that kept the credential could read another one than the filter verified.
    Several,
}

/// Every credential in these sources; empty values do not count.
fn extract<'c>(req: &Request<'_>, sources: &'c [TokenSource]) -> Extracted<'c> {
    let mut first: Option<(Option<String>, &'c TokenSource)> = None;
    let mut count = 0usize;
    let mut found = |value: Option<String>, source: &'c TokenSource| {
        if value.as_deref() != Some("") {
            count += 1;
            first.get_or_insert((value, source));
        }
    };
    let mut ambiguous = false;
    for source in sources {
        match source {
            TokenSource::Header { name, prefix } => match scheme_of(prefix) {
                Some(scheme) => {
                    // `Bearer <token>` as RFC 7235 spells it: the scheme in any case, then any
                    // whitespace. Envoy joins repeated headers with commas, and a credential
                    // list is comma-separated too: a scheme credential beside anything else in
                    // the same header is ambiguous (which one would the service use?).
                    let (mut parts, mut tokens) = (0usize, 0usize);
                    for part in req
                        .headers_named(name)
                        .flat_map(|v| v.split(','))
                        .map(|p| p.trim_matches([' ', '\t']))
                        .filter(|p| !p.is_empty())
                    {
                        parts += 1;
                        if let Some(token) = scheme_token(part, scheme) {
                            tokens += 1;
                            found(Some(token.to_owned()), source);
                        }
                    }
                    ambiguous |= tokens > 0 && parts > 1;
                }
                None => {
                    for v in req.headers_named(name) {
                        let matches = v
                            .get(..prefix.len())
                            .is_some_and(|head| head.eq_ignore_ascii_case(prefix));
                        if matches {
                            let token = v.get(prefix.len()..).unwrap_or("").trim();
                            found(Some(token.to_owned()), source);
                        }
                    }
                }
            },
            TokenSource::Param(name) => {
                ambiguous |= req
                    .query()
                    .is_some_and(|q| crate::request::query_disguises(q, name));
                req.query_values(name).for_each(|v| found(v, source));
            }
            TokenSource::Cookie(name) => {
                let cookies: Vec<&str> = req.headers_named("cookie").collect();
                ambiguous |= crate::request::cookie_disguises(&cookies, name);
                req.cookie_values(name)
                    .for_each(|v| found(Some(v.to_owned()), source));
            }
        }
    }
    if ambiguous {
        return Extracted::Several;
    }
    match (count, first) {
        (1, Some((value, source))) => Extracted::One(value, source),
        (0, _) | (_, None) => Extracted::Nothing,
        _ => Extracted::Several,
    }
}

/// The authentication scheme of a header prefix written as Envoy's `value_prefix: "Bearer "`
/// (a word, then whitespace); `None` for any other prefix, which is matched as written.
fn scheme_of(prefix: &str) -> Option<&str> {
    let scheme = prefix.trim_end_matches([' ', '\t']);
    (!scheme.is_empty()
        && scheme.len() < prefix.len()
        && scheme.bytes().all(|b| b.is_ascii_graphic()))
    .then_some(scheme)
}

/// The token of one credential `part` if it is `scheme` (any case) followed by whitespace.
fn scheme_token<'v>(part: &'v str, scheme: &str) -> Option<&'v str> {
    let head = part.get(..scheme.len())?;
    let rest = part.get(scheme.len()..)?;
    (head.eq_ignore_ascii_case(scheme) && rest.starts_with([' ', '\t']))
        .then(|| rest.trim_matches([' ', '\t']))
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
            headers: Vec::new(),
            details: None,
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
            headers: Vec::new(),
            details: None,
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

/// Removes, from every request, whatever a client sent under the names of identity headers —
/// or under a spelling a CGI-style service reads as the same name (`x_portcullis_subject`) —
/// so that only the filter can set them.
fn strip_protected(config: &Config, req: &Request<'_>) -> Vec<HeaderEdit> {
    let mut edits: Vec<HeaderEdit> = config
        .protected_headers
        .iter()
        .filter(|name| req.header(name).is_some())
        .map(|name| HeaderEdit::Remove(name.clone()))
        .collect();
    if req.headers.iter().any(|(n, _)| n.contains('_')) {
        for name in &config.protected_headers {
            for twin in underscore_twins(req, name) {
                edits.push(HeaderEdit::Remove(twin.to_owned()));
            }
        }
    }
    edits
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
    is_safe_header_value(&s).then_some(s)
}

/// The credentials to take out of a request before it goes upstream (`forward: false`),
/// collected first so that several parameters or cookies make one rewrite of `:path` and of
/// `cookie`.
#[derive(Default)]
struct CredentialRemoval<'c> {
    headers: Vec<&'c str>,
    params: Vec<&'c str>,
    cookies: Vec<&'c str>,
}

impl<'c> CredentialRemoval<'c> {
    fn add(&mut self, source: &'c TokenSource) {
        match source {
            TokenSource::Header { name, .. } => self.headers.push(name),
            TokenSource::Param(name) => self.params.push(name),
            TokenSource::Cookie(name) => self.cookies.push(name),
        }
    }

    fn apply(mut self, req: &Request<'_>, edits: &mut Vec<HeaderEdit>) {
        self.headers.sort_unstable();
        self.headers.dedup();
        for name in self.headers {
            if !edits
                .iter()
                .any(|e| matches!(e, HeaderEdit::Remove(n) if n == name))
            {
                edits.push(HeaderEdit::Remove(name.to_owned()));
            }
        }
        if !self.params.is_empty() {
            let original = req.path_and_query();
            let path = self
                .params
                .iter()
                .fold(original.to_owned(), |p, name| without_query_param(&p, name));
            if path != original {
                edits.push(HeaderEdit::Set(":path".to_owned(), path));
            }
        }
        if !self.cookies.is_empty() {
            let all: Vec<&str> = req.headers_named("cookie").collect();
            let rest = self
                .cookies
                .iter()
                .try_fold(all.join("; "), |c, name| without_cookie(&c, name));
            edits.push(HeaderEdit::Remove("cookie".to_owned()));
            if let Some(rest) = rest {
                edits.push(HeaderEdit::Set("cookie".to_owned(), rest));
            }
        }
    }
}

/// Removes every credential source of every provider the route names (enforcing or shadow)
/// that the request fills, except `kept`: the verified credential of a provider with
/// `forward: true`. So a service never receives a credential the filter did not verify — a
/// forged token beside a valid API key, a token in a spelling the filter did not read — and,
/// with `forward: false`, not even the verified one. Header sources go in every spelling a
/// CGI-style service would read as the same name (`x_api_key` for `x-api-key`).
fn strip_credentials<'c>(
    config: &'c Config,
    route: &Route,
    req: &Request<'c>,
    kept: Option<&TokenSource>,
    edits: &mut Vec<HeaderEdit>,
) {
    let kept_header = match kept {
        Some(TokenSource::Header { name, .. }) => Some(name.as_str()),
        _ => None,
    };
    let mut removal = CredentialRemoval::default();
    // The standard credential headers, whichever providers the route names (an API-key route
    // must not forward a forged bearer token beside its verified consumer).
    for name in ["authorization", "proxy-authorization"] {
        if Some(name) != kept_header {
            if req.header(name).is_some() {
                removal.headers.push(name);
            }
            removal.headers.extend(underscore_twins(req, name));
        }
    }
    for provider in route
        .requires
        .iter()
        .filter_map(|&i| config.providers.get(i))
    {
        for source in provider.sources().0 {
            if Some(source) == kept {
                continue;
            }
            let present = match source {
                TokenSource::Header { name, .. } => {
                    if Some(name.as_str()) != kept_header && req.header(name).is_some() {
                        removal.add(source);
                    }
                    for twin in underscore_twins(req, name) {
                        removal.headers.push(twin);
                    }
                    continue;
                }
                TokenSource::Param(name) => req.query_values(name).next().is_some(),
                TokenSource::Cookie(name) => req.cookie_values(name).next().is_some(),
            };
            if present {
                removal.add(source);
            }
        }
    }
    removal.apply(req, edits);
}

/// The names of request headers that are not `name` but that a CGI/WSGI/Rack service reads as
/// it (`HTTP_X_PORTCULLIS_SUBJECT` for both `x-portcullis-subject` and `x_portcullis_subject`):
/// the same after `_` → `-` (Envoy has already lower-cased every name).
fn underscore_twins<'r>(req: &Request<'r>, name: &'r str) -> impl Iterator<Item = &'r str> {
    req.headers.iter().filter_map(move |(n, _)| {
        (n.contains('_')
            && n.len() == name.len()
            && n.bytes()
                .zip(name.bytes())
                .all(|(a, b)| a == b || (a == b'_' && b == b'-')))
        .then_some(n.as_str())
    })
}
