//! The filter's configuration: read strictly from one JSON document, then prepared once.
//!
//! [`Config::from_json`] either returns a fully prepared policy (keys decoded, regexes
//! compiled, hashes parsed) or every error it found, each naming its JSON path.

pub mod inspection;
pub mod protection;
pub mod provider;
pub mod ratelimit;
pub mod reader;
pub mod route;
pub mod schemas;

pub use protection::{Burst, IpFilter, Limits};
pub use provider::{ApiKeyProvider, JwtProvider, Provider, ProviderKind, TokenSource};
pub use reader::{ConfigError, Ctx};
pub use route::{ClaimRule, ClaimTest, HostMatch, PathMatch, Route, RouteDefaults};

use reader::Obj;
use serde_json::Value;
use std::sync::Arc;

/// Largest configuration document accepted (a JWKS with many RSA keys fits easily).
pub const MAX_CONFIG_BYTES: usize = 4 * 1024 * 1024;

/// The prepared configuration of one filter instance.
#[derive(Debug)]
pub struct Config {
    /// `realm` in `WWW-Authenticate` challenges.
    pub realm: String,
    /// Named identity providers; routes refer to them by index.
    pub providers: Vec<Provider>,
    /// Routes, in order: the first match wins.
    pub routes: Vec<Route>,
    /// Capacity of the verified-token cache in tokens; 0 turns it off.
    pub token_cache_entries: usize,
    /// Capacity of the verified-token cache in (approximate) bytes; 0 turns it off.
    pub token_cache_bytes: usize,
    /// Slots of the verified-token cache shared by the workers (0: not shared).
    pub shared_cache_slots: u32,
    /// The first 8 bytes of the configuration's SHA-256: shared entries of another
    /// configuration (another plugin on the same VM id, or before an update) are never used.
    pub fingerprint: u64,
    /// Headers that carry the verified identity to the services.
    pub identity_headers: IdentityHeaders,
    /// Every header name the filter sets from an identity (identity headers, `claim_to_headers`,
    /// `forward_payload_header`): removed from every incoming request so clients cannot forge
    /// them.
    pub protected_headers: Vec<String>,
    /// Some provider routes by identity (`clear_route_cache`): after the filter edits a
    /// passing request's headers, Envoy must pick its route again.
    pub clear_route_cache: bool,
    /// Proxies in front of Envoy whose `X-Forwarded-For` entries are trusted (see
    /// [`crate::client_ip`]).
    pub xff_num_trusted_hops: u32,
    /// Whether a `source.address` that Envoy took from `X-Forwarded-For` (its own trusted
    /// hops) is the client; by default such an address is unknown (see
    /// [`crate::client_ip::source_address`]).
    pub trust_envoy_xff: bool,
    /// Global IP lists, checked before the route's.
    pub ip_filter: Option<IpFilter>,
    /// Global limits: those checked before a route is known (URI, headers, query) use these.
    pub limits: Limits,
    /// The rate-limit service routes with `rate_limits` call.
    pub rate_limit_service: Option<ratelimit::RateLimitService>,
    /// How paths are normalised before routing.
    pub path_normalization: protection::PathNormalization,
}

/// Names of the headers the filter sets from a verified identity. Whatever a client sends
/// under these names is removed first, so services can trust them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityHeaders {
    /// The token's `sub` claim.
    pub subject: Option<String>,
    /// The API-key consumer.
    pub consumer: Option<String>,
    /// The name of the provider that authenticated the request.
    pub provider: Option<String>,
}

impl Config {
    /// Parses and prepares a configuration, or returns every error found.
    pub fn from_json(bytes: &[u8]) -> Result<Config, Vec<ConfigError>> {
        if bytes.len() > MAX_CONFIG_BYTES {
            return Err(vec![ConfigError {
                path: String::new(),
                reason: format!("configuration is larger than {MAX_CONFIG_BYTES} bytes"),
            }]);
        }
        let doc: Value = serde_json::from_slice(bytes).map_err(|e| {
            vec![ConfigError {
                path: String::new(),
                reason: format!("not valid JSON: {e}"),
            }]
        })?;
        let mut cx = Ctx::default();
        let config = read_config(&mut cx, &doc);
        let errors = cx.into_errors();
        match config {
            Some(mut c) if errors.is_empty() => {
                use sha2::{Digest, Sha256};
                let digest = Sha256::digest(bytes);
                let mut first = [0u8; 8];
                first.copy_from_slice(digest.get(..8).unwrap_or(&[0; 8]));
                c.fingerprint = u64::from_be_bytes(first);
                Ok(c)
            }
            _ => Err(errors),
        }
    }

    /// Index of the provider with this name.
    pub fn provider_index(&self, name: &str) -> Option<usize> {
        self.providers.iter().position(|p| p.name == name)
    }
}

fn read_config(cx: &mut Ctx, doc: &Value) -> Option<Config> {
    let mut top = Obj::new(cx, doc, "")?;
    let realm = top.non_empty_str(cx, "realm").unwrap_or("portcullis");
    if realm.contains(['"', '\\']) || realm.chars().any(char::is_control) {
        cx.error(
            "realm",
            "must not contain quotes, backslashes or control characters",
        );
    }
    let (token_cache_entries, token_cache_bytes, shared_cache_slots) =
        match top.get("verified_token_cache") {
            Some(v) => read_cache(cx, v, "verified_token_cache"),
            None => (
                DEFAULT_TOKEN_CACHE_ENTRIES,
                DEFAULT_TOKEN_CACHE_BYTES,
                DEFAULT_SHARED_CACHE_SLOTS,
            ),
        };
    let identity_headers = match top.get("identity_headers") {
        Some(v) => read_identity_headers(cx, v, "identity_headers"),
        None => IdentityHeaders::default(),
    };
    let providers = match top.get("providers") {
        Some(v) => provider::read_providers(cx, v, "providers"),
        None => Vec::new(),
    };
    let path_normalization = top
        .get("path_normalization")
        .map_or_else(Default::default, |v| {
            protection::read_path_normalization(cx, v, "path_normalization")
        });
    let (xff_num_trusted_hops, trust_envoy_xff) = top.get("client_ip").map_or((0, false), |v| {
        protection::read_client_ip(cx, v, "client_ip")
    });
    let ip_filter = top
        .get("ip_filter")
        .map(|v| protection::read_ip_filter(cx, v, "ip_filter"));
    let limits = top.get("limits").map_or_else(Limits::default, |v| {
        protection::read_limits(cx, v, "limits", Limits::default())
    });
    let burst = top.get("burst").and_then(|v| {
        protection::read_burst(cx, v, "burst", "portcullis.burst.global.").map(Arc::new)
    });
    let rate_limit_service = top
        .get("rate_limit_service")
        .and_then(|v| ratelimit::read_service(cx, v, "rate_limit_service"));
    let inspection = top.get("inspection").map(|v| {
        inspection::read_spec(cx, v, "inspection", &inspection::InspectionSpec::default())
    });
    let schemas = top.get("schemas").map_or_else(Default::default, |v| {
        schemas::read_schemas(cx, v, "schemas")
    });
    let defaults = RouteDefaults {
        limits,
        burst,
        inspection,
        schemas,
        path_options: path_normalization.options,
        rate_limit_service: top.has("rate_limit_service"),
    };
    let mut inspectors = inspection::InspectorCache::default();
    let routes = match top.required(cx, "routes") {
        Some(v) => route::read_routes(cx, v, "routes", &providers, &defaults, &mut inspectors),
        None => Vec::new(),
    };
    top.finish(cx);
    let protected_headers = protected_headers(&identity_headers, &providers);
    let clear_route_cache = providers.iter().any(|p| p.clear_route_cache);
    Some(Config {
        realm: realm.to_owned(),
        providers,
        routes,
        token_cache_entries,
        token_cache_bytes,
        shared_cache_slots,
        fingerprint: 0,
        identity_headers,
        protected_headers,
        clear_route_cache,
        xff_num_trusted_hops,
        trust_envoy_xff,
        ip_filter,
        limits,
        rate_limit_service,
        path_normalization,
    })
}

fn protected_headers(identity: &IdentityHeaders, providers: &[Provider]) -> Vec<String> {
    let mut names: Vec<String> = [&identity.subject, &identity.consumer, &identity.provider]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    for p in providers {
        if let ProviderKind::Jwt(jwt) = &p.kind {
            names.extend(jwt.forward_payload_header.iter().cloned());
            names.extend(jwt.claim_to_headers.iter().map(|c| c.header_name.clone()));
        }
    }
    names.sort_unstable();
    names.dedup();
    names
}

/// Default capacity of the verified-token cache, in tokens.
pub const DEFAULT_TOKEN_CACHE_ENTRIES: usize = 1024;
/// Default capacity of the verified-token cache, in bytes (per worker VM).
pub const DEFAULT_TOKEN_CACHE_BYTES: usize = 8 << 20;

fn read_cache(cx: &mut Ctx, v: &Value, path: &str) -> (usize, usize, u32) {
    let Some(mut o) = Obj::new(cx, v, path) else {
        return (0, 0, 0);
    };
    let entries = o.u64(cx, "max_entries", 100_000);
    let bytes = o.u64(cx, "max_bytes", 256 << 20);
    let slots = o.u64(cx, "shared_slots", 65_536);
    o.finish(cx);
    let size = |n: Option<u64>, default| n.and_then(|n| usize::try_from(n).ok()).unwrap_or(default);
    (
        size(entries, DEFAULT_TOKEN_CACHE_ENTRIES),
        size(bytes, DEFAULT_TOKEN_CACHE_BYTES),
        slots
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(DEFAULT_SHARED_CACHE_SLOTS),
    )
}

/// Default slots of the shared verified-token cache.
pub const DEFAULT_SHARED_CACHE_SLOTS: u32 = 4096;

impl Config {
    /// An empty verified-token cache sized as configured (one per worker VM).
    pub fn token_cache(&self) -> crate::cache::TokenCache {
        crate::cache::TokenCache::new(self.token_cache_entries, self.token_cache_bytes)
    }
}

impl Default for IdentityHeaders {
    fn default() -> Self {
        IdentityHeaders {
            subject: Some("x-portcullis-subject".to_owned()),
            consumer: Some("x-portcullis-consumer".to_owned()),
            provider: Some("x-portcullis-provider".to_owned()),
        }
    }
}

fn read_identity_headers(cx: &mut Ctx, v: &Value, path: &str) -> IdentityHeaders {
    let defaults = IdentityHeaders::default();
    let Some(mut o) = Obj::new(cx, v, path) else {
        return defaults;
    };
    let mut one = |key: &'static str, default: Option<String>| -> Option<String> {
        match o.get(key) {
            None => default,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(value) => header_name(cx, value, &reader::child(path, key)),
        }
    };
    let headers = IdentityHeaders {
        subject: one("subject", defaults.subject),
        consumer: one("consumer", defaults.consumer),
        provider: one("provider", defaults.provider),
    };
    o.finish(cx);
    headers
}

/// Reads an HTTP header name: lower-cased, RFC 9110 token characters only, no pseudo-headers.
pub fn header_name(cx: &mut Ctx, v: &Value, path: &str) -> Option<String> {
    let s = reader::as_str(cx, v, path)?;
    if s.is_empty() {
        cx.error(path, "header name must not be empty");
        return None;
    }
    let valid = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid {
        cx.error(
            path,
            format!("{s:?} is not a valid header name (RFC 9110 token characters only)"),
        );
        return None;
    }
    Some(s.to_ascii_lowercase())
}

/// Reads a list of OAuth scopes: each a scope-token of RFC 6749 §3.3 (printable ASCII without
/// space, `"` or `\`), so it can be compared with a token's `scope` and quoted in a challenge.
pub fn scope_list(cx: &mut Ctx, o: &mut reader::Obj<'_>, key: &'static str) -> Vec<String> {
    let path = o.field_path(key);
    o.str_list(cx, key)
        .into_iter()
        .enumerate()
        .filter_map(|(i, scope)| {
            let valid = !scope.is_empty()
                && scope
                    .bytes()
                    .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
            if valid {
                Some(scope.to_owned())
            } else {
                cx.error(
                    &reader::index(&path, i),
                    format!(
                        "{scope:?} is not a scope (printable ASCII without space, '\"' or '\\')"
                    ),
                );
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
