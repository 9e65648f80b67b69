//! The header-phase decision end to end (natively): routing, every claim and source rule,
//! API keys, authorization, shadow mode, header edits and refusal replies.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{KeyInit, Mac};
use portcullis::cache::TokenCache;
use portcullis::config::Config;
mod support;

use portcullis::decision::{Decision, HeaderEdit, Verdict};
use portcullis::request::Request;
use serde_json::{Value, json};
use support::decide;

const NOW: u64 = 1_800_000_000;
/// 32 bytes of 0x01.
const HS_SECRET: [u8; 32] = [1; 32];
const HS_KEY: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE";
const API_KEY: &str = "pk_live_0123456789abcdef";

/// An edit of the claims of a test token.
type Edit = Box<dyn FnOnce(&mut Value)>;

fn config_json() -> Value {
    json!({
        "realm": "demo",
        "providers": {
            "corp": {
                "issuer": "https://id.example.com",
                "audiences": ["api", "admin"],
                "local_jwks": {"keys": [{"kty": "oct", "kid": "hs1", "alg": "HS256", "k": HS_KEY}]},
                "claim_to_headers": [
                    {"header_name": "x-tenant", "claim_name": "tenant"},
                    {"header_name": "x-region", "claim_name": "org.region"}
                ],
                "forward_payload_header": "x-jwt-payload",
                "max_lifetime_seconds": 86400
            },
            "cookie": {
                "issuer": "https://id.example.com",
                "local_jwks": {"keys": [{"kty": "oct", "kid": "hs1", "alg": "HS256", "k": HS_KEY}]},
                "from_cookies": ["session"],
                "from_params": ["access_token"],
                "from_headers": [{"name": "x-token", "value_prefix": "Token "}],
                "required_claims": ["tenant"]
            },
            "keys": {
                "type": "api_key",
                "keys": [{"consumer": "acme", "sha256": portcullis::apikey::hash_hex(API_KEY),
                          "scopes": ["orders:read"]}]
            },
            "trialkeys": {
                "type": "api_key", "shadow": true,
                "keys": [{"consumer": "trial", "sha256": portcullis::apikey::hash_hex("trial-key")}]
            },
            "watch": {
                "shadow": true,
                "issuer": "https://other.example.com",
                "local_jwks": {"keys": [{"kty": "oct", "kid": "hs1", "alg": "HS256", "k": HS_KEY}]}
            }
        },
        "routes": [
            {"name": "health", "match": {"path": "/healthz"}, "public": true},
            {"name": "orders", "match": {"prefix": "/orders", "methods": ["GET", "POST"]},
             "requires": ["corp", "keys"], "scopes": ["orders:read"]},
            {"name": "admin", "match": {"prefix": "/admin", "hosts": ["*.example.com"]},
             "requires": ["corp"],
             "claims": [{"name": "role", "equals": "admin"}, {"name": "tenant", "one_of": ["a", "b"]},
                        {"name": "email", "regex": ".*@example\\.com"}]},
            {"name": "docs", "match": {"safe_regex": "/docs/[a-z]+"}, "requires": ["corp"], "allow_missing": true},
            {"name": "web", "match": {"prefix": "/web"}, "requires": ["cookie"]},
            {"name": "watched", "match": {"prefix": "/watched"}, "requires": ["watch"]},
            {"name": "mixed", "match": {"prefix": "/mixed"}, "requires": ["corp", "trialkeys"]},
            {"name": "trial", "match": {"prefix": "/trial"}, "requires": ["corp"], "scopes": ["beta"], "shadow": true},
            {"name": "keysonly", "match": {"prefix": "/keysonly"}, "requires": ["keys"]}
        ]
    })
}

fn config() -> Config {
    Config::from_json(config_json().to_string().as_bytes()).unwrap()
}

fn hs256(header: Value, claims: Value) -> String {
    let signing_input = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&HS_SECRET).unwrap();
    mac.update(signing_input.as_bytes());
    let sig = mac.finalize().into_bytes();
    format!("{signing_input}.{}", B64.encode(sig))
}

fn claims() -> Value {
    json!({
        "iss": "https://id.example.com", "aud": "api", "sub": "alice",
        "iat": NOW - 10, "exp": NOW + 3600, "scope": "orders:read orders:write",
        "tenant": "a", "org": {"region": "eu"}, "role": "admin", "email": "alice@example.com"
    })
}

fn token_with(edit: impl FnOnce(&mut Value)) -> String {
    let mut c = claims();
    edit(&mut c);
    hs256(json!({"alg": "HS256", "typ": "JWT", "kid": "hs1"}), c)
}

fn token() -> String {
    token_with(|_| {})
}

struct Run {
    config: Config,
    cache: TokenCache,
}

impl Run {
    fn new() -> Self {
        let config = config();
        let cache = config.token_cache();
        Run { config, cache }
    }

    fn go(&mut self, method: &str, path: &str, extra: &[(&str, &str)]) -> Decision {
        let mut headers = vec![
            (":method".to_owned(), method.to_owned()),
            (":path".to_owned(), path.to_owned()),
            (":authority".to_owned(), "api.example.com".to_owned()),
        ];
        headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        decide(&self.config, &mut self.cache, &Request::new(&headers), NOW)
    }
}

fn get(path: &str, extra: &[(&str, &str)]) -> Decision {
    Run::new().go("GET", path, extra)
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[track_caller]
fn refused(d: &Decision, status: u16, error: &str) -> String {
    match &d.verdict {
        Verdict::Refuse(r) => {
            assert_eq!((r.status, r.error), (status, error), "{d:#?}");
            assert!(!r.shadow, "{d:#?}");
            r.message.clone()
        }
        Verdict::Allow => panic!("expected a refusal {status} {error}, got {d:#?}"),
    }
}

#[track_caller]
fn allowed(d: &Decision) {
    assert_eq!(d.verdict, Verdict::Allow, "{d:#?}");
}

fn set_value<'d>(d: &'d Decision, name: &str) -> Option<&'d str> {
    d.edits.iter().find_map(|e| match e {
        HeaderEdit::Set(n, v) if n == name => Some(v.as_str()),
        _ => None,
    })
}

fn removes(d: &Decision, name: &str) -> bool {
    d.edits
        .iter()
        .any(|e| matches!(e, HeaderEdit::Remove(n) if n == name))
}

#[test]
fn routing_first_match_host_method_path() {
    allowed(&get("/healthz", &[]));
    assert_eq!(get("/healthz", &[]).reason, "public");
    refused(&get("/healthz/x", &[]), 403, "no_route");
    refused(&Run::new().go("DELETE", "/orders", &[]), 403, "no_route");
    // Host rule: *.example.com does not match example.com itself or another domain.
    let mut run = Run::new();
    let auth = bearer(&token());
    let mut headers = vec![
        (":method".to_owned(), "GET".to_owned()),
        (":path".to_owned(), "/admin".to_owned()),
        (":authority".to_owned(), "evil.com".to_owned()),
        ("authorization".to_owned(), auth.clone()),
    ];
    let d = decide(&run.config, &mut run.cache, &Request::new(&headers), NOW);
    refused(&d, 403, "no_route");
    headers[2].1 = "Admin.Example.com:443".to_owned();
    let d = decide(&run.config, &mut run.cache, &Request::new(&headers), NOW);
    allowed(&d);
    // Regex is anchored: the whole path must match; the query is not part of it.
    let d = get("/docs/abc?x=1", &[]);
    allowed(&d);
    refused(&get("/docs/abc/def", &[]), 403, "no_route");
}

#[test]
fn valid_token_passes_with_identity_headers_and_stripped_credential() {
    let d = get(
        "/orders/1",
        &[
            ("authorization", &bearer(&token())),
            ("x-tenant", "forged"),
            ("x-portcullis-subject", "mallory"),
        ],
    );
    allowed(&d);
    assert_eq!(d.reason, "authenticated");
    assert_eq!(set_value(&d, "x-portcullis-subject"), Some("alice"));
    assert_eq!(set_value(&d, "x-portcullis-provider"), Some("corp"));
    assert_eq!(set_value(&d, "x-tenant"), Some("a"));
    assert_eq!(set_value(&d, "x-region"), Some("eu"));
    let payload = set_value(&d, "x-jwt-payload").unwrap();
    let decoded: Value = serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap();
    assert_eq!(decoded["sub"], "alice");
    assert!(removes(&d, "authorization"), "forward defaults to false");
    assert!(
        removes(&d, "x-portcullis-subject"),
        "forged identity header removed"
    );
    assert!(removes(&d, "x-tenant"));
}

#[test]
fn bearer_scheme_is_case_insensitive() {
    allowed(&get(
        "/orders",
        &[("authorization", &format!("bEaReR {}", token()))],
    ));
    refused(
        &get(
            "/orders",
            &[("authorization", &format!("Basic {}", token()))],
        ),
        401,
        "missing_credentials",
    );
}

#[test]
fn missing_credentials_get_a_bare_challenge() {
    let d = get("/orders", &[]);
    refused(&d, 401, "missing_credentials");
    let Verdict::Refuse(r) = &d.verdict else {
        unreachable!()
    };
    assert_eq!(r.challenge.as_deref(), Some("Bearer realm=\"demo\""));
}

#[test]
fn every_claim_rule() {
    let cases: Vec<(Edit, Option<&str>)> = vec![
        (Box::new(|_| {}), None),
        (
            Box::new(|c| c["exp"] = json!(NOW - 61)),
            Some("token has expired"),
        ),
        (Box::new(|c| c["exp"] = json!(NOW - 59)), None),
        (
            Box::new(|c| c["nbf"] = json!(NOW + 61)),
            Some("token is not valid yet"),
        ),
        (Box::new(|c| c["nbf"] = json!(NOW + 59)), None),
        (
            Box::new(|c| c["iss"] = json!("https://evil.example.com")),
            Some("token issuer is not accepted"),
        ),
        (
            Box::new(|c| c["iss"] = json!("https://id.example.com.evil")),
            Some("token issuer is not accepted"),
        ),
        (
            Box::new(|c| c["iss"] = json!("https://id.example.com/")),
            Some("token issuer is not accepted"),
        ),
        (
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("iss");
            }),
            Some("token issuer is not accepted"),
        ),
        (
            Box::new(|c| c["aud"] = json!("other")),
            Some("token audience is not accepted"),
        ),
        (Box::new(|c| c["aud"] = json!(["x", "admin"])), None),
        (
            Box::new(|c| c["aud"] = json!(["x", "y"])),
            Some("token audience is not accepted"),
        ),
        (
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("aud");
            }),
            Some("token audience is not accepted"),
        ),
        (
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            Some("token has no expiration time"),
        ),
        (
            Box::new(|c| c["exp"] = json!("soon")),
            Some("token is malformed"),
        ),
        (
            Box::new(|c| c["exp"] = json!(NOW + 86_400 * 2)),
            Some("token lifetime is longer than allowed"),
        ),
        (
            Box::new(|c| c["exp"] = json!((NOW + 100) as f64 + 0.5)),
            None,
        ),
    ];
    for (edit, expected) in cases {
        let t = token_with(edit);
        let d = get("/orders", &[("authorization", &bearer(&t))]);
        match expected {
            None => allowed(&d),
            Some(msg) => {
                let got = refused(&d, 401, "invalid_token");
                assert!(got.starts_with(msg), "{got} vs {msg}");
                let Verdict::Refuse(r) = &d.verdict else {
                    unreachable!()
                };
                let challenge = r.challenge.as_deref().unwrap();
                assert!(challenge.starts_with(
                    "Bearer realm=\"demo\", error=\"invalid_token\", error_description=\""
                ));
            }
        }
    }
}

#[test]
fn signature_and_header_attacks_are_refused() {
    let good = token();
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    // Tampered payload.
    let mut tampered = claims();
    tampered["sub"] = json!("root");
    parts[1] = B64.encode(tampered.to_string());
    let t = parts.join(".");
    assert_eq!(
        refused(
            &get("/orders", &[("authorization", &bearer(&t))]),
            401,
            "invalid_token"
        ),
        "token signature is invalid"
    );
    // Signature stripped.
    let stripped = format!("{}.{}.", parts[0], good.split('.').nth(1).unwrap());
    refused(
        &get("/orders", &[("authorization", &bearer(&stripped))]),
        401,
        "invalid_token",
    );
    // alg none, unknown kid, embedded jwk.
    for header in [
        json!({"alg": "none", "kid": "hs1"}),
        json!({"alg": "nOnE", "kid": "hs1"}),
        json!({"alg": "HS256", "kid": "nope"}),
        json!({"alg": "HS256", "kid": "hs1", "jwk": {"kty": "oct", "k": "AAAA"}}),
        json!({"alg": "HS512", "kid": "hs1"}),
    ] {
        let t = hs256(header.clone(), claims());
        refused(
            &get("/orders", &[("authorization", &bearer(&t))]),
            401,
            "invalid_token",
        );
    }
    // Malformed base64.
    refused(
        &get("/orders", &[("authorization", "Bearer abc.d*f.ghi")]),
        401,
        "invalid_token",
    );
}

#[test]
fn api_keys() {
    let d = get("/orders", &[("x-api-key", API_KEY)]);
    allowed(&d);
    assert_eq!(set_value(&d, "x-portcullis-consumer"), Some("acme"));
    assert_eq!(set_value(&d, "x-portcullis-provider"), Some("keys"));
    assert!(removes(&d, "x-api-key"));
    let d = get("/orders", &[("x-api-key", "pk_live_wrong")]);
    assert_eq!(refused(&d, 401, "invalid_api_key"), "API key is not valid");
    // The consumer's scopes count: the admin route needs claims an API key cannot have.
    refused(
        &get("/orders", &[("x-api-key", "")]),
        401,
        "missing_credentials",
    );
}

#[test]
fn insufficient_scope_and_claim_rules_are_403() {
    let t = token_with(|c| c["scope"] = json!("profile"));
    let d = get("/orders", &[("authorization", &bearer(&t))]);
    refused(&d, 403, "insufficient_scope");
    assert_eq!(d.rule.as_deref(), Some("scope:orders:read"));
    let Verdict::Refuse(r) = &d.verdict else {
        unreachable!()
    };
    assert!(
        r.challenge
            .as_deref()
            .unwrap()
            .contains("error=\"insufficient_scope\"")
    );
    assert!(
        r.challenge
            .as_deref()
            .unwrap()
            .ends_with("scope=\"orders:read\"")
    );
    // scp array works as scope.
    let t = token_with(|c| {
        c.as_object_mut().unwrap().remove("scope");
        c["scp"] = json!(["orders:read"]);
    });
    allowed(&get("/orders", &[("authorization", &bearer(&t))]));
    // Claim rules.
    allowed(&get("/admin", &[("authorization", &bearer(&token()))]));
    for (edit, rule) in [
        (
            Box::new(|c: &mut Value| c["role"] = json!("user")) as Box<dyn FnOnce(&mut Value)>,
            "claim:role",
        ),
        (
            Box::new(|c: &mut Value| c["role"] = json!(["user", "admin"])),
            "",
        ),
        (
            Box::new(|c: &mut Value| c["tenant"] = json!("z")),
            "claim:tenant",
        ),
        (
            Box::new(|c: &mut Value| c["email"] = json!("a@example.com.evil")),
            "claim:email",
        ),
        (
            Box::new(|c: &mut Value| {
                c.as_object_mut().unwrap().remove("role");
            }),
            "claim:role",
        ),
    ] {
        let t = token_with(edit);
        let d = get("/admin", &[("authorization", &bearer(&t))]);
        if rule.is_empty() {
            allowed(&d);
        } else {
            refused(&d, 403, "forbidden");
            assert_eq!(d.rule.as_deref(), Some(rule));
        }
    }
}

#[test]
fn allow_missing_passes_anonymous_but_not_invalid() {
    let d = get("/docs/a", &[]);
    allowed(&d);
    assert_eq!(d.reason, "anonymous");
    let bad = token_with(|c| c["exp"] = json!(NOW - 1000));
    refused(
        &get("/docs/a", &[("authorization", &bearer(&bad))]),
        401,
        "invalid_token",
    );
}

#[test]
fn other_sources_cookie_param_header_prefix() {
    let t = token();
    let d = get(
        "/web",
        &[("cookie", &format!("theme=dark; session={t}; lang=en"))],
    );
    allowed(&d);
    assert!(removes(&d, "cookie"));
    assert_eq!(set_value(&d, "cookie"), Some("theme=dark; lang=en"));
    let d = get(&format!("/web/x?a=1&access_token={t}&b=2"), &[]);
    allowed(&d);
    assert_eq!(set_value(&d, ":path"), Some("/web/x?a=1&b=2"));
    let d = get("/web", &[("x-token", &format!("token {t}"))]);
    allowed(&d);
    assert!(removes(&d, "x-token"));
    // The cookie provider requires the tenant claim.
    let t = token_with(|c| {
        c.as_object_mut().unwrap().remove("tenant");
    });
    let d = get("/web", &[("cookie", &format!("session={t}"))]);
    assert_eq!(
        refused(&d, 401, "invalid_token"),
        "token lacks a required claim"
    );
    // Bearer in Authorization is not a source of this provider.
    refused(
        &get("/web", &[("authorization", &bearer(&token()))]),
        401,
        "missing_credentials",
    );
}

#[test]
fn shadow_route_and_provider_pass_but_record() {
    // Route in shadow: insufficient scope is recorded, the request passes.
    let d = get("/trial", &[("authorization", &bearer(&token()))]);
    match &d.verdict {
        Verdict::Refuse(r) => assert!(r.shadow && r.status == 403),
        Verdict::Allow => panic!("expected a shadowed refusal"),
    }
    assert_eq!(d.reason, "insufficient_scope");
    // Provider in shadow: its failure (wrong issuer for it) does not refuse.
    let d = get("/watched", &[("authorization", &bearer(&token()))]);
    match &d.verdict {
        Verdict::Refuse(r) => assert!(r.shadow && r.status == 401),
        Verdict::Allow => panic!("expected a shadowed refusal"),
    }
    // Shadowed refusals still strip forged identity headers.
    let d = get("/watched", &[("x-portcullis-subject", "mallory")]);
    assert!(removes(&d, "x-portcullis-subject"));
}

#[test]
fn cached_tokens_still_expire() {
    let mut run = Run::new();
    let t = token_with(|c| c["exp"] = json!(NOW + 10));
    let auth = bearer(&t);
    allowed(&run.go("GET", "/orders", &[("authorization", &auth)]));
    assert_eq!(run.cache.len(), 1);
    allowed(&run.go("GET", "/orders", &[("authorization", &auth)]));
    let mut headers = vec![
        (":method".to_owned(), "GET".to_owned()),
        (":path".to_owned(), "/orders".to_owned()),
        ("authorization".to_owned(), auth.clone()),
    ];
    let later = decide(
        &run.config,
        &mut run.cache,
        &Request::new(&headers),
        NOW + 100,
    );
    refused(&later, 401, "invalid_token");
    // A tampered token never hits the cached entry of the genuine one.
    headers[2].1 = format!("{auth}x");
    let d = decide(&run.config, &mut run.cache, &Request::new(&headers), NOW);
    refused(&d, 401, "invalid_token");
}

#[test]
fn refusal_reply_body_and_headers() {
    let d = get("/orders", &[]);
    let Verdict::Refuse(r) = &d.verdict else {
        unreachable!()
    };
    let body: Value = serde_json::from_str(&portcullis::reply::body(r, "req-1")).unwrap();
    assert_eq!(
        body,
        json!({"error": "missing_credentials", "message": "credentials are required", "request_id": "req-1"})
    );
    let headers = portcullis::reply::headers(r);
    assert!(headers.contains(&("content-type", "application/json".to_owned())));
    assert!(headers.contains(&("www-authenticate", "Bearer realm=\"demo\"".to_owned())));
}

#[test]
fn a_shadow_provider_beside_an_enforcing_one_never_lets_a_request_in() {
    // A junk or even a valid key of the shadow provider does not open the route...
    refused(
        &get("/mixed", &[("x-api-key", "junk")]),
        401,
        "missing_credentials",
    );
    refused(
        &get("/mixed", &[("x-api-key", "trial-key")]),
        401,
        "missing_credentials",
    );
    // ...which the enforcing provider still decides.
    allowed(&get("/mixed", &[("authorization", &bearer(&token()))]));
}

#[test]
fn hosts_are_normalised_before_matching() {
    let mut run = Run::new();
    // (A non-numeric port is refused before routing: `ambiguous_authorities_are_refused`.)
    for authority in ["Admin.Example.COM.", "x.example.com.:8443"] {
        let headers = vec![
            (":method".to_owned(), "GET".to_owned()),
            (":path".to_owned(), "/admin".to_owned()),
            (":authority".to_owned(), authority.to_owned()),
        ];
        // No credential: the admin route (hosts *.example.com) is what refuses it.
        let d = decide(&run.config, &mut run.cache, &Request::new(&headers), NOW);
        refused(&d, 401, "missing_credentials");
        assert_eq!(d.route, Some(2), "{authority}");
    }
}

#[test]
fn every_spelling_of_a_path_meets_the_rule_written_for_it() {
    // The admin route's rule (a token with role=admin) holds for every spelling of /admin.
    let admin = get("/admin", &[]);
    assert_eq!(admin.route, Some(2));
    refused(&admin, 401, "missing_credentials");
    for path in [
        "//admin",
        "/./admin",
        "/x/../admin",
        "/%61dmin",
        "/admin/.",
        "/x/%2e%2e/admin",
        "/x\\..\\admin",
        "/../admin",
    ] {
        let d = get(path, &[]);
        assert_eq!(d.route, Some(2), "{path}");
        refused(&d, 401, "missing_credentials");
    }
    // What cannot be made unambiguous is refused before routing (the defaults).
    for path in ["/x/..%2fadmin", "/admin;param", "/healthz%00", "/caf\u{e9}"] {
        let d = get(path, &[]);
        refused(&d, 400, "invalid_path");
        assert_eq!(d.route, None, "{path}");
    }
    // With the lenient options they are read the way the upstream would.
    let mut doc = config_json();
    doc["path_normalization"] = json!({"escaped_slashes": "decode", "path_parameters": "strip"});
    let mut run = Run {
        config: Config::from_json(doc.to_string().as_bytes()).unwrap(),
        cache: TokenCache::new(8, 1 << 20),
    };
    for path in ["/x/..%2fadmin", "/admin;param", "/x/..;/admin"] {
        let d = run.go("GET", path, &[]);
        assert_eq!(d.route, Some(2), "{path}");
    }
}

#[test]
fn the_normalised_path_goes_upstream_with_the_query_as_edited() {
    let d = get("//x/../healthz?a=1", &[]);
    assert_eq!(d.verdict, Verdict::Allow);
    assert_eq!(d.normalized_path.as_deref(), Some("/healthz"));
    assert!(
        d.edits
            .contains(&HeaderEdit::Set(":path".into(), "/healthz?a=1".into())),
        "{:?}",
        d.edits
    );
    // A credential taken from the query (forward: false) is removed from the forwarded query
    // too.
    let mut doc = config_json();
    doc["providers"]["cookie"]["forward"] = json!(false);
    let mut run = Run {
        config: Config::from_json(doc.to_string().as_bytes()).unwrap(),
        cache: TokenCache::new(8, 1 << 20),
    };
    let d = run.go(
        "GET",
        &format!("/web/./x?access_token={}&keep=1", token()),
        &[],
    );
    assert_eq!(d.verdict, Verdict::Allow, "{d:#?}");
    let paths: Vec<&HeaderEdit> = d
        .edits
        .iter()
        .filter(|e| matches!(e, HeaderEdit::Set(n, _) if n == ":path"))
        .collect();
    assert_eq!(
        paths,
        vec![&HeaderEdit::Set(":path".into(), "/web/x?keep=1".into())]
    );
    // An unchanged path is not rewritten.
    let d = get("/healthz", &[]);
    assert!(d.normalized_path.is_none() && d.edits.is_empty(), "{d:#?}");
}

#[test]
fn control_characters_in_sub_are_refused() {
    let t = token_with(|c| c["sub"] = json!("alice\r\nx-portcullis-consumer: root"));
    let got = refused(
        &get("/orders", &[("authorization", &bearer(&t))]),
        401,
        "invalid_token",
    );
    assert_eq!(got, "token is malformed: sub holds control characters");
}

#[test]
fn shadowed_refusals_still_strip_credentials() {
    // Route in shadow, identity verified, scope missing: the token must not reach upstream.
    let d = get("/trial", &[("authorization", &bearer(&token()))]);
    assert!(matches!(&d.verdict, Verdict::Refuse(r) if r.shadow));
    assert!(removes(&d, "authorization"));
    // Shadow provider failing: its (forward: false) credential is stripped too.
    let d = get("/watched", &[("authorization", "Bearer junk")]);
    assert!(matches!(&d.verdict, Verdict::Refuse(r) if r.shadow));
    assert!(removes(&d, "authorization"));
}

#[test]
fn an_unreadable_query_credential_is_invalid_not_missing() {
    let d = get("/web?access_token=%zz", &[]);
    assert_eq!(
        refused(&d, 401, "invalid_token"),
        "token is malformed: credential is not valid percent-encoding"
    );
}

#[test]
fn more_than_one_credential_is_a_bad_request() {
    let t = token();
    for (path, headers) in [
        (format!("/web?access_token={t}&access_token={t}"), vec![]),
        (
            format!("/web?access_token={t}"),
            vec![("cookie".to_owned(), format!("session={t}"))],
        ),
        (
            "/orders".to_owned(),
            vec![
                ("authorization".to_owned(), bearer(&t)),
                ("authorization".to_owned(), bearer(&t)),
            ],
        ),
    ] {
        let extra: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let d = get(&path, &extra);
        refused(&d, 400, "invalid_request");
        let Verdict::Refuse(r) = &d.verdict else {
            unreachable!()
        };
        assert!(
            r.challenge
                .as_deref()
                .unwrap()
                .contains("error=\"invalid_request\"")
        );
    }
}

#[test]
fn a_parameter_and_a_cookie_together_are_ambiguous() {
    let t = token();
    let d = get(
        &format!("/web/x?keep=1&access_token={t}"),
        &[("cookie", "session=junk; keep=2")],
    );
    // Two credentials (param + cookie) of one provider: refused with 400. Were the refusal
    // only recorded (shadow), both would leave the request in one rewrite of each header.
    refused(&d, 400, "invalid_request");
    assert_eq!(set_value(&d, ":path"), Some("/web/x?keep=1"));
    assert_eq!(set_value(&d, "cookie"), Some("keep=2"));
}

/// Issue 14 (2): no credential the filter did not verify reaches the service.
#[test]
fn unverified_credentials_never_reach_the_service() {
    // A valid API key beside a forged bearer token: the key wins, and the token goes too.
    let forged = bearer("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJyb290In0.forged");
    let d = get(
        "/orders",
        &[("x-api-key", API_KEY), ("authorization", &forged)],
    );
    allowed(&d);
    assert_eq!(d.reason, "authenticated");
    assert!(removes(&d, "authorization"), "{d:#?}");
    assert!(removes(&d, "x-api-key"), "{d:#?}");
    // The same with a valid token and a wrong API key: the key goes.
    let d = get(
        "/orders",
        &[
            ("x-api-key", "not-a-key"),
            ("authorization", &bearer(&token())),
        ],
    );
    allowed(&d);
    assert!(
        removes(&d, "x-api-key") && removes(&d, "authorization"),
        "{d:#?}"
    );
    // An anonymous pass (allow_missing) leaves no unread credential behind.
    for value in [
        "Basic YWxhZGRpbjpvcGVuc2VzYW1l",
        "Bearer",
        "Token abc",
        "Bearerabc",
    ] {
        let d = get("/docs/abc", &[("authorization", value)]);
        allowed(&d);
        assert_eq!(d.reason, "anonymous", "{value}");
        assert!(removes(&d, "authorization"), "{value}: {d:#?}");
    }
    // Underscore spellings of a credential header, which a CGI-style service reads as the
    // header itself, go as well.
    let d = get(
        "/orders",
        &[
            ("authorization", &bearer(&token())),
            ("x_api_key", "pk_other"),
        ],
    );
    allowed(&d);
    assert!(removes(&d, "x_api_key"), "{d:#?}");
}

/// Issue 14 (2b): a bearer credential is recognised however it is spelled.
#[test]
fn bearer_credentials_in_any_spelling_are_verified() {
    let forged = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJyb290In0.forged";
    for value in [
        format!("Bearer\t{forged}"),
        format!("bearer  {forged}"),
        format!("BEARER \t {forged} "),
    ] {
        let d = get("/docs/abc", &[("authorization", &value)]);
        refused(&d, 401, "invalid_token");
        let d = get(
            "/docs/abc",
            &[("authorization", &value.replace(forged, &token()))],
        );
        allowed(&d);
        assert_eq!(d.reason, "authenticated", "{value}");
        assert!(removes(&d, "authorization"));
    }
    // Envoy joins repeated headers with a comma: a bearer credential beside any other one is
    // ambiguous, in one header or in two.
    let joined = format!("Basic YWxhZGRpbjpvcGVuc2VzYW1l,Bearer {}", token());
    refused(
        &get("/docs/abc", &[("authorization", &joined)]),
        400,
        "invalid_request",
    );
    let twice = [
        ("authorization", "Basic YWxhZGRpbjpvcGVuc2VzYW1l".to_owned()),
        ("authorization", bearer(&token())),
    ];
    let pairs: Vec<(&str, &str)> = twice.iter().map(|(k, v)| (*k, v.as_str())).collect();
    refused(&get("/docs/abc", &pairs), 400, "invalid_request");
    let two_tokens = format!("Bearer {},Bearer {}", token(), token());
    refused(
        &get("/orders", &[("authorization", &two_tokens)]),
        400,
        "invalid_request",
    );
}

/// Issue 14 (3): identity headers cannot be forged with underscores.
#[test]
fn identity_headers_spelled_with_underscores_are_removed() {
    for path in ["/healthz", "/docs/abc"] {
        let d = get(
            path,
            &[
                ("x_portcullis_subject", "admin"),
                ("x_tenant", "globex"),
                ("x_request_id", "ok"),
            ],
        );
        allowed(&d);
        assert!(removes(&d, "x_portcullis_subject"), "{path}: {d:#?}");
        assert!(removes(&d, "x_tenant"), "{path}: {d:#?}");
        assert!(!removes(&d, "x_request_id"), "not an identity header");
    }
    let d = get(
        "/orders",
        &[
            ("authorization", &bearer(&token())),
            ("x_tenant", "globex"),
            ("x-tenant", "globex"),
        ],
    );
    allowed(&d);
    assert!(removes(&d, "x_tenant") && removes(&d, "x-tenant"));
    assert_eq!(set_value(&d, "x-tenant"), Some("a"));
}

/// Issue 14 (4): an authority Envoy could read differently from the filter is refused before
/// routing, so a route protected by host cannot be missed by a spelling Envoy still routes.
#[test]
fn ambiguous_authorities_are_refused() {
    let run_with = |authority: &str| {
        let mut run = Run::new();
        let headers = vec![
            (":method".to_owned(), "GET".to_owned()),
            (":path".to_owned(), "/admin".to_owned()),
            (":authority".to_owned(), authority.to_owned()),
        ];
        decide(&run.config, &mut run.cache, &Request::new(&headers), NOW)
    };
    for bad in [
        "admin.example.com:80:80",
        "admin.example.com:",
        "admin.example.com:abc",
        "admin.example.com:123456",
        "user@admin.example.com",
        "admin.example.com :80",
        "[::1",
        "[not-v6]:80",
        "[::1]x",
        "[::1].",
        "[::1]:80x",
        "admin.example.com%2f",
    ] {
        refused(&run_with(bad), 400, "invalid_host");
    }
    // What Envoy and the filter read the same way goes on to routing (here: a 401, the
    // admin route needs a token).
    for good in [
        "admin.example.com",
        "admin.example.com:80",
        "ADMIN.example.com:443",
        "admin.example.com.",
        "[::1]:8080",
        "[2001:db8::1]",
    ] {
        let d = run_with(good);
        match &d.verdict {
            Verdict::Refuse(r) => assert_ne!(r.error, "invalid_host", "{good}"),
            Verdict::Allow => {}
        }
    }
}

/// The adversarial review of issue 14's fixes: credentials other parsers would read.
#[test]
fn credentials_disguised_for_other_parsers_are_ambiguous() {
    let t = token();
    for query in [
        format!("/web?a=1;access_token={t}"),
        format!("/web?access.token={t}"),
        format!("/web?access_token[]={t}"),
        format!("/web?access%5Ftoken={t}&a=1;access_token=x"),
    ] {
        refused(&get(&query, &[]), 400, "invalid_request");
    }
    for cookie in [format!("sess%69on={t}"), format!("a=1, session={t}")] {
        refused(&get("/web", &[("cookie", &cookie)]), 400, "invalid_request");
    }
    // The plain spellings are read as before.
    allowed(&get(&format!("/web?access_token={t}"), &[]));
    allowed(&get("/web", &[("cookie", &format!("a=1; session={t}"))]));
}

#[test]
fn standard_credential_headers_never_pass_unverified() {
    // An API-key route: a forged bearer token (or proxy credential) beside the valid key.
    let forged = bearer("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJyb290In0.forged");
    let d = get(
        "/keysonly",
        &[
            ("x-api-key", API_KEY),
            ("authorization", &forged),
            ("proxy-authorization", &forged),
            ("proxy_authorization", &forged),
        ],
    );
    allowed(&d);
    for name in [
        "authorization",
        "proxy-authorization",
        "proxy_authorization",
        "x-api-key",
    ] {
        assert!(removes(&d, name), "{name}: {d:#?}");
    }
}
