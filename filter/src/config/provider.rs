//! Identity providers: JWT issuers with their keys, and API-key sets.

use super::header_name;
use super::reader::{self, Ctx, Obj};
use crate::jwt::jwk::{self, KeySet};
use serde_json::Value;

/// A named provider, referred to by routes.
#[derive(Debug)]
pub struct Provider {
    /// The key in the `providers` map.
    pub name: String,
    /// Failures of this provider are recorded but never refuse a request.
    pub shadow: bool,
    /// Envoy picks the route again after the filter set this provider's identity headers
    /// (Envoy jwt_authn's `clear_route_cache`), so routes can match on them.
    pub clear_route_cache: bool,
    /// What kind of credential it checks.
    pub kind: ProviderKind,
}

impl Provider {
    /// Where this provider looks for its credential, and whether the credential is kept in the
    /// request sent upstream.
    pub fn sources(&self) -> (&[TokenSource], bool) {
        match &self.kind {
            ProviderKind::Jwt(jwt) => (&jwt.sources, jwt.forward),
            ProviderKind::ApiKey(keys) => (&keys.sources, keys.forward),
        }
    }
}

/// The credential a provider checks.
#[derive(Debug)]
pub enum ProviderKind {
    /// Signed JWTs from one issuer.
    Jwt(JwtProvider),
    /// API keys, stored as SHA-256 hashes.
    ApiKey(ApiKeyProvider),
}

/// Where a credential is taken from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// A header (lower-case name) whose value starts with `prefix` (compared ASCII
    /// case-insensitively; empty = the whole value).
    Header { name: String, prefix: String },
    /// A query parameter.
    Param(String),
    /// A cookie.
    Cookie(String),
}

/// Envoy jwt_authn's `JwtProvider`, with inline keys or keys fetched from the issuer.
#[derive(Debug)]
pub struct JwtProvider {
    /// Exact `iss` required, if set.
    pub issuer: Option<String>,
    /// At least one `aud` must be one of these, if set.
    pub audiences: Vec<String>,
    /// Verification keys from `local_jwks` (empty with `remote_jwks`).
    pub keys: KeySet,
    /// Where the keys are fetched from, instead of `local_jwks`.
    pub remote: Option<Box<RemoteJwks>>,
    /// For `type: introspection`: the endpoint that vouches for opaque tokens, instead of keys.
    pub introspection: Option<Box<Introspection>>,
    /// Where the token is looked for, in order.
    pub sources: Vec<TokenSource>,
    /// Keep the token in the request sent upstream.
    pub forward: bool,
    /// Header that receives the token's payload (base64url), if set.
    pub forward_payload_header: Option<String>,
    /// Claims copied into request headers.
    pub claim_to_headers: Vec<ClaimToHeader>,
    /// Tolerance for `exp` and `nbf`.
    pub clock_skew_seconds: u64,
    /// Refuse tokens without `exp`.
    pub require_expiration: bool,
    /// Longest accepted lifetime (`exp - iat`, or `exp - now` without `iat`).
    pub max_lifetime_seconds: Option<u64>,
    /// Claims that must be present (dotted paths for nested claims).
    pub required_claims: Vec<Vec<String>>,
}

/// `remote_jwks`: a JWKS fetched through an Envoy cluster, refreshed, and shared by the workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteJwks {
    /// Envoy cluster that reaches the issuer.
    pub cluster: String,
    /// `:authority` of the requests.
    pub authority: String,
    /// Path of the JWKS (with `discovery`, of the OpenID configuration document).
    pub path: String,
    /// `path` is `<issuer>/.well-known/openid-configuration`, whose `jwks_uri` names the JWKS.
    pub discovery: bool,
    /// Deadline of one fetch.
    pub timeout_ms: u64,
    /// How long a fetched set is used before it is fetched again.
    pub cache_duration_seconds: u64,
    /// How long a request waits for the first key set (or for a refetch) before it is refused.
    pub wait_ms: u64,
    /// Least time between two refetches caused by tokens with an unknown `kid`.
    pub unknown_kid_refetch_interval_seconds: u64,
    /// Back-off after a failed fetch: the first delay, doubled up to the maximum.
    pub retry_base_ms: u64,
    /// The longest back-off.
    pub retry_max_ms: u64,
}

/// OAuth 2.0 token introspection (RFC 7662) for opaque tokens.
#[derive(Clone, PartialEq, Eq)]
pub struct Introspection {
    /// Envoy cluster of the endpoint.
    pub cluster: String,
    /// `:authority`.
    pub authority: String,
    /// `:path`.
    pub path: String,
    /// Deadline of one call.
    pub timeout_ms: u64,
    /// `client_id`, sent in the body with `client_secret_post`.
    pub client_id: String,
    /// The client's credentials as the call sends them: the `authorization` header value
    /// (`client_secret_basic`) or the form fields (`client_secret_post`). Never logged.
    pub credentials: ClientCredentials,
    /// Longest time an active answer is reused (it is also never reused past its `exp`).
    pub cache_ttl_seconds: u64,
    /// How long an inactive or refused answer is reused.
    pub negative_cache_ttl_seconds: u64,
    /// The endpoint failed or was late: 503 with `Retry-After` (true), or 401.
    pub failure_mode_deny: bool,
}

/// How the client authenticates to the introspection endpoint (RFC 6749 §2.3.1).
#[derive(Clone, PartialEq, Eq)]
pub enum ClientCredentials {
    /// `authorization: Basic …`, prepared at configure time.
    Basic(String),
    /// `&client_id=…&client_secret=…`, form-encoded, appended to the body.
    Post(String),
}

impl std::fmt::Debug for Introspection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The credentials stay out of every log and panic message.
        f.debug_struct("Introspection")
            .field("cluster", &self.cluster)
            .field("authority", &self.authority)
            .field("path", &self.path)
            .field("client_id", &self.client_id)
            .field("credentials", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Defaults of `introspection`.
pub const DEFAULT_INTROSPECTION_TIMEOUT_MS: u64 = 2_000;
/// See [`DEFAULT_INTROSPECTION_TIMEOUT_MS`].
pub const DEFAULT_INTROSPECTION_TTL_SECONDS: u64 = 300;
/// See [`DEFAULT_INTROSPECTION_TIMEOUT_MS`].
pub const DEFAULT_INTROSPECTION_NEGATIVE_TTL_SECONDS: u64 = 10;

/// Defaults of `remote_jwks` (Envoy's jwt_authn caches a JWKS for 5 minutes by default).
pub const DEFAULT_JWKS_TIMEOUT_MS: u64 = 5_000;
/// See [`DEFAULT_JWKS_TIMEOUT_MS`].
pub const DEFAULT_JWKS_CACHE_SECONDS: u64 = 300;
/// See [`DEFAULT_JWKS_TIMEOUT_MS`].
pub const DEFAULT_JWKS_WAIT_MS: u64 = 3_000;
/// See [`DEFAULT_JWKS_TIMEOUT_MS`].
pub const DEFAULT_UNKNOWN_KID_REFETCH_SECONDS: u64 = 30;

/// One `claim_to_headers` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimToHeader {
    /// Lower-case header name.
    pub header_name: String,
    /// Claim path, split on `.` for nested claims.
    pub claim: Vec<String>,
}

/// A set of API keys, each kept only as a SHA-256 hash.
#[derive(Debug)]
pub struct ApiKeyProvider {
    /// Where the key is looked for, in order.
    pub sources: Vec<TokenSource>,
    /// Keep the key in the request sent upstream.
    pub forward: bool,
    /// The known keys.
    pub keys: Vec<ApiKey>,
}

/// One API key's hash and what it grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// SHA-256 of the key.
    pub sha256: [u8; 32],
    /// Who holds it.
    pub consumer: String,
    /// The scopes it grants.
    pub scopes: Vec<String>,
}

/// Default clock skew for `exp`/`nbf`, as Envoy's jwt_authn.
pub const DEFAULT_CLOCK_SKEW_SECONDS: u64 = 60;

/// Largest accepted API-key or claim-header value count etc. are bounded by the document size.
const MAX_SECONDS: u64 = 10 * 365 * 24 * 3600;

pub(super) fn read_providers(cx: &mut Ctx, v: &Value, path: &str) -> Vec<Provider> {
    let Value::Object(map) = v else {
        cx.error(
            path,
            format!("expected an object, found {}", reader::type_name(v)),
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, value) in map {
        let p = reader::child(path, name);
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            cx.error(
                &p,
                "provider names use letters, digits, '-', '_' and '.' only",
            );
            continue;
        }
        if let Some(provider) = read_provider(cx, name, value, &p) {
            out.push(provider);
        }
    }
    out
}

fn read_provider(cx: &mut Ctx, name: &str, v: &Value, path: &str) -> Option<Provider> {
    let mut o = Obj::new(cx, v, path)?;
    let kind_name = o.str(cx, "type").unwrap_or("jwt");
    let shadow = o.bool(cx, "shadow", false);
    let clear_route_cache = o.bool(cx, "clear_route_cache", false);
    let kind = match kind_name {
        "jwt" => read_jwt(cx, &mut o).map(ProviderKind::Jwt),
        "introspection" => read_introspection(cx, &mut o).map(ProviderKind::Jwt),
        "api_key" => read_api_key(cx, &mut o).map(ProviderKind::ApiKey),
        other => {
            cx.error(
                &o.field_path("type"),
                format!(
                    "unknown provider type {other:?} (expected \"jwt\", \"introspection\" or \"api_key\")"
                ),
            );
            None
        }
    };
    o.finish(cx);
    Some(Provider {
        name: name.to_owned(),
        shadow,
        clear_route_cache,
        kind: kind?,
    })
}

/// An OAuth 2.0 introspection provider (RFC 7662): the fields of a JWT provider that apply to
/// the claims an introspection answer carries, and the endpoint instead of keys.
fn read_introspection(cx: &mut Ctx, o: &mut Obj<'_>) -> Option<JwtProvider> {
    let introspection = o
        .required(cx, "introspection")
        .and_then(|v| read_introspection_endpoint(cx, v, &o.field_path("introspection")));
    let mut provider = read_token_fields(cx, o, false)?;
    provider.introspection = Some(Box::new(introspection?));
    Some(provider)
}

fn read_jwt(cx: &mut Ctx, o: &mut Obj<'_>) -> Option<JwtProvider> {
    let mut provider = read_token_fields(cx, o, true)?;
    let discovery = o.bool(cx, "discovery", false);
    let remote = o.get("remote_jwks").and_then(|v| {
        read_remote_jwks(
            cx,
            v,
            &o.field_path("remote_jwks"),
            discovery,
            provider.issuer.as_deref(),
        )
    });
    if discovery && !o.has("remote_jwks") {
        cx.error(
            &o.field_path("discovery"),
            "needs remote_jwks (at least its http_uri.cluster) to reach the issuer",
        );
    }
    provider.keys = match o.get("local_jwks") {
        Some(_) if o.has("remote_jwks") => {
            cx.error(
                &o.field_path("local_jwks"),
                "local_jwks and remote_jwks exclude each other",
            );
            KeySet::default()
        }
        None if o.has("remote_jwks") => KeySet::default(),
        None => {
            cx.error(
                &o.field_path("local_jwks"),
                "required field is missing (or give remote_jwks)",
            );
            KeySet::default()
        }
        Some(v) => {
            let p = o.field_path("local_jwks");
            let before = cx.error_count();
            let keys = jwk::read_jwks(cx, v, &p);
            if keys.is_empty() && cx.error_count() == before {
                cx.error(&p, "the key set holds no usable key");
            }
            keys
        }
    };
    provider.remote = remote;
    Some(provider)
}

/// What JWT and introspection providers share: where the token is, and the claim checks.
fn read_token_fields(
    cx: &mut Ctx,
    o: &mut Obj<'_>,
    require_expiration_default: bool,
) -> Option<JwtProvider> {
    let issuer = o.non_empty_str(cx, "issuer").map(str::to_owned);
    let audiences = o
        .str_list(cx, "audiences")
        .into_iter()
        .map(str::to_owned)
        .collect();
    let mut sources = read_header_sources(cx, o);
    sources.extend(read_named_sources(cx, o, "from_params", TokenSource::Param));
    sources.extend(read_named_sources(
        cx,
        o,
        "from_cookies",
        TokenSource::Cookie,
    ));
    if sources.is_empty() {
        sources.push(TokenSource::Header {
            name: "authorization".to_owned(),
            prefix: "Bearer ".to_owned(),
        });
    }
    let forward = o.bool(cx, "forward", false);
    let forward_payload_header = o
        .get("forward_payload_header")
        .and_then(|v| header_name(cx, v, &o.field_path("forward_payload_header")));
    let claim_to_headers = o
        .array(cx, "claim_to_headers")
        .into_iter()
        .filter_map(|(v, p)| read_claim_to_header(cx, v, &p))
        .collect();
    let clock_skew_seconds = o
        .u64(cx, "clock_skew_seconds", 3600)
        .unwrap_or(DEFAULT_CLOCK_SKEW_SECONDS);
    let require_expiration = o.bool(cx, "require_expiration", require_expiration_default);
    let max_lifetime_seconds = o.u64(cx, "max_lifetime_seconds", MAX_SECONDS);
    if max_lifetime_seconds == Some(0) {
        cx.error(&o.field_path("max_lifetime_seconds"), "must be at least 1");
    }
    let required_claims = o
        .array(cx, "required_claims")
        .into_iter()
        .filter_map(|(v, p)| claim_path(cx, v, &p))
        .collect();
    Some(JwtProvider {
        issuer,
        audiences,
        keys: KeySet::default(),
        remote: None,
        introspection: None,
        sources,
        forward,
        forward_payload_header,
        claim_to_headers,
        clock_skew_seconds,
        require_expiration,
        max_lifetime_seconds,
        required_claims,
    })
}

/// `remote_jwks: {http_uri: {uri, cluster, timeout_ms}, cache_duration_seconds, …}`. With
/// `discovery`, `uri` is left out: the issuer's OpenID configuration names the JWKS.
fn read_remote_jwks(
    cx: &mut Ctx,
    v: &Value,
    path: &str,
    discovery: bool,
    issuer: Option<&str>,
) -> Option<Box<RemoteJwks>> {
    let mut o = Obj::new(cx, v, path)?;
    let http = o.required(cx, "http_uri").and_then(|v| {
        read_http_uri(
            cx,
            v,
            &o.field_path("http_uri"),
            discovery,
            issuer,
            DEFAULT_JWKS_TIMEOUT_MS,
        )
    });
    let cache_duration_seconds = o
        .u64(cx, "cache_duration_seconds", MAX_SECONDS)
        .unwrap_or(DEFAULT_JWKS_CACHE_SECONDS);
    let wait_ms = o.u64(cx, "wait_ms", 60_000).unwrap_or(DEFAULT_JWKS_WAIT_MS);
    let unknown_kid_refetch_interval_seconds = o
        .u64(cx, "unknown_kid_refetch_interval_seconds", 86_400)
        .unwrap_or(DEFAULT_UNKNOWN_KID_REFETCH_SECONDS);
    if unknown_kid_refetch_interval_seconds == 0 {
        // Without a throttle, tokens with random kids would make the gateway hammer the issuer.
        cx.error(
            &o.field_path("unknown_kid_refetch_interval_seconds"),
            "must be at least 1",
        );
    }
    let (retry_base_ms, retry_max_ms) = match o.get("retry_policy") {
        Some(v) => {
            let mut r = Obj::new(cx, v, &o.field_path("retry_policy"))?;
            let base = r.u64(cx, "base_interval_ms", 3_600_000).unwrap_or(1_000);
            let max = r.u64(cx, "max_interval_ms", 3_600_000).unwrap_or(60_000);
            if base == 0 {
                cx.error(&r.field_path("base_interval_ms"), "must be at least 1");
            }
            if max < base {
                cx.error(
                    &r.field_path("max_interval_ms"),
                    "must not be less than base_interval_ms",
                );
            }
            r.finish(cx);
            (base, max)
        }
        None => (1_000, 60_000),
    };
    if cache_duration_seconds == 0 {
        cx.error(
            &o.field_path("cache_duration_seconds"),
            "must be at least 1",
        );
    }
    o.finish(cx);
    let (cluster, authority, path, timeout_ms) = http?;
    Some(Box::new(RemoteJwks {
        cluster,
        authority,
        path,
        discovery,
        timeout_ms,
        cache_duration_seconds,
        wait_ms,
        unknown_kid_refetch_interval_seconds,
        retry_base_ms,
        retry_max_ms,
    }))
}

/// `introspection: {http_uri, client_id, client_secret, auth_method, cache_ttl_seconds, …}`.
fn read_introspection_endpoint(cx: &mut Ctx, v: &Value, path: &str) -> Option<Introspection> {
    let mut o = Obj::new(cx, v, path)?;
    let http = o.required(cx, "http_uri").and_then(|v| {
        read_http_uri(
            cx,
            v,
            &o.field_path("http_uri"),
            false,
            None,
            DEFAULT_INTROSPECTION_TIMEOUT_MS,
        )
    });
    let client_id = o.required_str(cx, "client_id").map(str::to_owned);
    let secret = o.required_str(cx, "client_secret").map(str::to_owned);
    for (key, value) in [("client_id", &client_id), ("client_secret", &secret)] {
        if value.as_deref() == Some("") {
            cx.error(&o.field_path(key), "must not be empty");
        }
    }
    let basic = match o.str(cx, "auth_method").unwrap_or("client_secret_basic") {
        "client_secret_basic" => true,
        "client_secret_post" => false,
        other => {
            cx.error(
                &o.field_path("auth_method"),
                format!("{other:?}: expected client_secret_basic or client_secret_post"),
            );
            true
        }
    };
    let cache_ttl_seconds = o
        .u64(cx, "cache_ttl_seconds", 86_400)
        .unwrap_or(DEFAULT_INTROSPECTION_TTL_SECONDS);
    let negative_cache_ttl_seconds = o
        .u64(cx, "negative_cache_ttl_seconds", 3_600)
        .unwrap_or(DEFAULT_INTROSPECTION_NEGATIVE_TTL_SECONDS);
    let failure_mode_deny = o.bool(cx, "failure_mode_deny", true);
    o.finish(cx);
    let (cluster, authority, path, timeout_ms) = http?;
    let (client_id, secret) = (client_id?, secret?);
    let credentials = if basic {
        use base64::Engine as _;
        let pair = format!("{}:{}", form_encode(&client_id), form_encode(&secret));
        ClientCredentials::Basic(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        ))
    } else {
        ClientCredentials::Post(format!(
            "&client_id={}&client_secret={}",
            form_encode(&client_id),
            form_encode(&secret)
        ))
    };
    Some(Introspection {
        cluster,
        authority,
        path,
        timeout_ms,
        client_id,
        credentials,
        cache_ttl_seconds,
        negative_cache_ttl_seconds,
        failure_mode_deny,
    })
}

/// `application/x-www-form-urlencoded` (the WHATWG serializer: unreserved bytes kept, space as
/// `+`, everything else `%XX`).
pub fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Envoy's `HttpUri`: `{uri, cluster, timeout_ms}` → (cluster, authority, path, timeout).
fn read_http_uri(
    cx: &mut Ctx,
    v: &Value,
    path: &str,
    discovery: bool,
    issuer: Option<&str>,
    default_timeout_ms: u64,
) -> Option<(String, String, String, u64)> {
    let mut o = Obj::new(cx, v, path)?;
    let cluster = o.non_empty_str(cx, "cluster").map(str::to_owned);
    if !o.has("cluster") {
        cx.error(&o.field_path("cluster"), "required field is missing");
    }
    let timeout_ms = o
        .u64(cx, "timeout_ms", 60_000)
        .unwrap_or(default_timeout_ms);
    if timeout_ms == 0 {
        cx.error(&o.field_path("timeout_ms"), "must be at least 1");
    }
    let uri = match (discovery, o.get("uri")) {
        (true, Some(_)) => {
            cx.error(
                &o.field_path("uri"),
                "with discovery the JWKS location comes from the issuer; leave uri out",
            );
            None
        }
        (true, None) => match issuer {
            Some(issuer) => {
                let base = issuer.trim_end_matches('/');
                split_url(&format!("{base}/.well-known/openid-configuration")).or_else(|| {
                    cx.error(path, "discovery needs an issuer that is an http(s) URL");
                    None
                })
            }
            None => {
                cx.error(path, "discovery needs the provider's issuer");
                None
            }
        },
        (false, Some(v)) => reader::as_str(cx, v, &o.field_path("uri")).and_then(|s| {
            split_url(s).or_else(|| {
                cx.error(
                    &o.field_path("uri"),
                    format!("{s:?} is not an http(s) URL with a host"),
                );
                None
            })
        }),
        (false, None) => {
            cx.error(
                &o.field_path("uri"),
                "required field is missing (or set discovery on the provider)",
            );
            None
        }
    };
    o.finish(cx);
    let (authority, path) = uri?;
    Some((cluster?, authority, path, timeout_ms))
}

/// `http(s)://authority/path?query` → (authority, path with query; `/` when empty).
pub fn split_url(url: &str) -> Option<(String, String)> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let rest = rest.split('#').next().unwrap_or(rest);
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if authority.is_empty()
        || authority.contains('@')
        || !authority.bytes().all(|b| b.is_ascii_graphic())
        || !path.bytes().all(|b| b.is_ascii_graphic())
    {
        return None;
    }
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_owned()
    };
    Some((authority.to_owned(), path))
}

/// Reads a claim name, splitting nested claims on `.` (as Envoy's `claim_to_headers`).
pub(super) fn claim_path(cx: &mut Ctx, v: &Value, path: &str) -> Option<Vec<String>> {
    let s = reader::as_str(cx, v, path)?;
    let parts: Vec<String> = s.split('.').map(str::to_owned).collect();
    if parts.iter().any(String::is_empty) {
        cx.error(path, format!("{s:?} is not a claim name (empty segment)"));
        return None;
    }
    Some(parts)
}

fn read_claim_to_header(cx: &mut Ctx, v: &Value, path: &str) -> Option<ClaimToHeader> {
    let mut o = Obj::new(cx, v, path)?;
    let header = o
        .required(cx, "header_name")
        .and_then(|v| header_name(cx, v, &o.field_path("header_name")));
    let claim = o
        .required(cx, "claim_name")
        .and_then(|v| claim_path(cx, v, &o.field_path("claim_name")));
    o.finish(cx);
    Some(ClaimToHeader {
        header_name: header?,
        claim: claim?,
    })
}

/// `from_headers: [{name, value_prefix}]` as in Envoy's jwt_authn.
fn read_header_sources(cx: &mut Ctx, o: &mut Obj<'_>) -> Vec<TokenSource> {
    o.array(cx, "from_headers")
        .into_iter()
        .filter_map(|(v, p)| {
            let mut h = Obj::new(cx, v, &p)?;
            let name = h
                .required(cx, "name")
                .and_then(|v| header_name(cx, v, &h.field_path("name")));
            let prefix = h.str(cx, "value_prefix").unwrap_or("").to_owned();
            h.finish(cx);
            Some(TokenSource::Header {
                name: name?,
                prefix,
            })
        })
        .collect()
}

fn read_named_sources(
    cx: &mut Ctx,
    o: &mut Obj<'_>,
    key: &'static str,
    make: fn(String) -> TokenSource,
) -> Vec<TokenSource> {
    let path = o.field_path(key);
    o.str_list(cx, key)
        .into_iter()
        .enumerate()
        .filter_map(|(i, s)| {
            if s.is_empty() || s.contains([';', '=', '&', ' ']) {
                cx.error(
                    &reader::index(&path, i),
                    format!("{s:?} is not a valid name"),
                );
                None
            } else {
                Some(make(s.to_owned()))
            }
        })
        .collect()
}

fn read_api_key(cx: &mut Ctx, o: &mut Obj<'_>) -> Option<ApiKeyProvider> {
    let mut sources: Vec<TokenSource> = o
        .array(cx, "from_headers")
        .into_iter()
        .filter_map(|(v, p)| header_name(cx, v, &p))
        .map(|name| TokenSource::Header {
            name,
            prefix: String::new(),
        })
        .collect();
    sources.extend(read_named_sources(cx, o, "from_params", TokenSource::Param));
    if sources.is_empty() {
        sources.push(TokenSource::Header {
            name: "x-api-key".to_owned(),
            prefix: String::new(),
        });
    }
    let forward = o.bool(cx, "forward", false);
    let keys_path = o.field_path("keys");
    let before = cx.error_count();
    let mut keys: Vec<ApiKey> = Vec::new();
    for (v, p) in o.array(cx, "keys") {
        let Some(key) = read_one_key(cx, v, &p) else {
            continue;
        };
        if keys.iter().any(|k| k.sha256 == key.sha256) {
            cx.error(&p, "the same key hash appears twice");
            continue;
        }
        keys.push(key);
    }
    if keys.is_empty() && cx.error_count() == before {
        cx.error(&keys_path, "at least one key is required");
    }
    Some(ApiKeyProvider {
        sources,
        forward,
        keys,
    })
}

fn read_one_key(cx: &mut Ctx, v: &Value, path: &str) -> Option<ApiKey> {
    let mut o = Obj::new(cx, v, path)?;
    let consumer = o.required_str(cx, "consumer").map(str::to_owned);
    if consumer.as_deref() == Some("") {
        cx.error(&o.field_path("consumer"), "must not be empty");
    } else if consumer
        .as_deref()
        .is_some_and(|c| !crate::request::is_safe_header_value(c))
    {
        cx.error(
            &o.field_path("consumer"),
            "must not contain control characters (it is sent in a header)",
        );
    }
    let sha256 = o
        .required_str(cx, "sha256")
        .and_then(|s| parse_sha256_hex(cx, s, &o.field_path("sha256")));
    let scopes = super::scope_list(cx, &mut o, "scopes");
    o.finish(cx);
    Some(ApiKey {
        sha256: sha256?,
        consumer: consumer.filter(|c| !c.is_empty())?,
        scopes,
    })
}

/// Parses 64 hex digits (either case) into a SHA-256 digest.
pub fn parse_sha256_hex(cx: &mut Ctx, s: &str, path: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    let bytes = s.as_bytes();
    if bytes.len() != 64 {
        cx.error(
            path,
            format!(
                "expected 64 hex digits (a SHA-256), found {} characters",
                s.len()
            ),
        );
        return None;
    }
    for (slot, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let hi = hex_val(pair.first().copied());
        let lo = hex_val(pair.get(1).copied());
        match (hi, lo) {
            (Some(h), Some(l)) => *slot = h << 4 | l,
            _ => {
                cx.error(path, "not a hex string");
                return None;
            }
        }
    }
    Some(out)
}

fn hex_val(b: Option<u8>) -> Option<u8> {
    match b? {
        b @ b'0'..=b'9' => Some(b - b'0'),
        b @ b'a'..=b'f' => Some(b - b'a' + 10),
        b @ b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}
