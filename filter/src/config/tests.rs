//! Every configuration error names its JSON path.

use super::*;
use serde_json::{Value, json};

/// 32 bytes of 0x01, base64url.
const HS_KEY: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE";

/// An edit of the valid document.
type Edit = Box<dyn FnOnce(&mut Value)>;

fn valid() -> Value {
    json!({
        "realm": "api",
        "providers": {
            "corp": {
                "issuer": "https://id.example.com",
                "audiences": ["api"],
                "local_jwks": {"keys": [{"kty": "oct", "kid": "hs1", "alg": "HS256", "k": HS_KEY}]},
                "claim_to_headers": [{"header_name": "x-tenant", "claim_name": "org.tenant"}],
                "forward_payload_header": "x-jwt-payload"
            },
            "keys": {
                "type": "api_key",
                "keys": [{"consumer": "acme", "sha256": "a".repeat(64), "scopes": ["orders:read"]}]
            }
        },
        "routes": [
            {"name": "health", "match": {"path": "/healthz"}, "public": true},
            {"name": "orders", "match": {"prefix": "/orders", "methods": ["GET"], "hosts": ["*.example.com"]},
             "requires": ["corp", "keys"], "scopes": ["orders:read"],
             "claims": [{"name": "org.tenant", "one_of": ["a", "b"]}]}
        ]
    })
}

fn errors_of(doc: &Value) -> Vec<String> {
    match Config::from_json(doc.to_string().as_bytes()) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

/// Applies `edit` to the valid document and returns its errors.
fn errors_after(edit: impl FnOnce(&mut Value)) -> Vec<String> {
    let mut doc = valid();
    edit(&mut doc);
    errors_of(&doc)
}

#[track_caller]
fn assert_error(errors: &[String], expected: &str) {
    assert!(
        errors.iter().any(|e| e.starts_with(expected)),
        "expected an error starting with {expected:?}, got {errors:#?}"
    );
}

#[test]
fn the_sample_is_valid_and_prepared() {
    let config = Config::from_json(valid().to_string().as_bytes()).unwrap();
    assert_eq!(config.realm, "api");
    assert_eq!(config.routes.len(), 2);
    assert_eq!(config.providers.len(), 2);
    let orders = &config.routes[1];
    assert_eq!(orders.requires.len(), 2);
    assert_eq!(
        config.protected_headers,
        vec![
            "x-jwt-payload",
            "x-portcullis-consumer",
            "x-portcullis-provider",
            "x-portcullis-subject",
            "x-tenant"
        ]
    );
}

#[test]
fn every_error_names_its_path() {
    let cases: Vec<(Edit, &str)> = vec![
        (Box::new(|d| d["bogus"] = json!(1)), "bogus: unknown field"),
        (
            Box::new(|d| d["realm"] = json!(7)),
            "realm: expected a string",
        ),
        (
            Box::new(|d| d["realm"] = json!("a\"b")),
            "realm: must not contain",
        ),
        (
            Box::new(|d| {
                d.as_object_mut()
                    .unwrap()
                    .remove("routes")
                    .map(|_| ())
                    .unwrap()
            }),
            "routes: required field is missing",
        ),
        (
            Box::new(|d| d["routes"] = json!([])),
            "routes: at least one route",
        ),
        (
            Box::new(|d| d["routes"] = json!({})),
            "routes: expected an array",
        ),
        (
            Box::new(|d| d["providers"]["corp"]["issuer"] = json!(false)),
            "providers.corp.issuer: expected a string",
        ),
        (
            Box::new(|d| d["providers"]["corp"]["audiences"] = json!(["a", 3])),
            "providers.corp.audiences[1]: expected a string",
        ),
        (
            Box::new(|d| d["providers"]["corp"]["typo"] = json!(1)),
            "providers.corp.typo: unknown field",
        ),
        (
            Box::new(|d| d["providers"]["corp"]["type"] = json!("saml")),
            "providers.corp.type: unknown provider type",
        ),
        (
            Box::new(|d| {
                d["providers"]["corp"]
                    .as_object_mut()
                    .unwrap()
                    .remove("local_jwks");
            }),
            "providers.corp.local_jwks: required field is missing",
        ),
        (
            Box::new(|d| d["providers"]["corp"]["local_jwks"]["keys"][0]["k"] = json!("a+b/")),
            "providers.corp.local_jwks.keys[0].k",
        ),
        (
            Box::new(|d| d["providers"]["corp"]["local_jwks"]["keys"][0]["k"] = json!("")),
            "providers.corp.local_jwks.keys[0]",
        ),
        (
            Box::new(|d| d["providers"]["corp"]["clock_skew_seconds"] = json!(-5)),
            "providers.corp.clock_skew_seconds: expected a non-negative integer",
        ),
        (
            Box::new(|d| d["providers"]["corp"]["max_lifetime_seconds"] = json!(0)),
            "providers.corp.max_lifetime_seconds: must be at least 1",
        ),
        (
            Box::new(|d| d["providers"]["corp"]["from_headers"] = json!([{"name": "bad header"}])),
            "providers.corp.from_headers[0].name: \"bad header\" is not a valid header name",
        ),
        (
            Box::new(|d| d["providers"]["corp"]["from_headers"] = json!([{"name": ":path"}])),
            "providers.corp.from_headers[0].name: \":path\" is not a valid header name",
        ),
        (
            Box::new(|d| d["providers"]["corp"]["from_params"] = json!(["a=b"])),
            "providers.corp.from_params[0]: \"a=b\" is not a valid name",
        ),
        (
            Box::new(|d| {
                d["providers"]["corp"]["claim_to_headers"][0]["claim_name"] = json!("a..b")
            }),
            "providers.corp.claim_to_headers[0].claim_name: \"a..b\" is not a claim name",
        ),
        (
            Box::new(|d| d["providers"]["corp"]["claim_to_headers"][0]["extra"] = json!(1)),
            "providers.corp.claim_to_headers[0].extra: unknown field",
        ),
        (
            Box::new(|d| d["providers"]["keys"]["keys"][0]["sha256"] = json!("abc")),
            "providers.keys.keys[0].sha256: expected 64 hex digits",
        ),
        (
            Box::new(|d| d["providers"]["keys"]["keys"][0]["sha256"] = json!("g".repeat(64))),
            "providers.keys.keys[0].sha256: not a hex string",
        ),
        (
            Box::new(|d| d["providers"]["keys"]["keys"][0]["consumer"] = json!("")),
            "providers.keys.keys[0].consumer: must not be empty",
        ),
        (
            Box::new(|d| d["providers"]["keys"]["keys"] = json!([])),
            "providers.keys.keys: at least one key is required",
        ),
        (
            Box::new(|d| {
                let k = d["providers"]["keys"]["keys"][0].clone();
                d["providers"]["keys"]["keys"] = json!([k.clone(), k]);
            }),
            "providers.keys.keys[1]: the same key hash appears twice",
        ),
        (
            Box::new(|d| d["providers"]["bad name!"] = json!({})),
            "providers.bad name!: provider names",
        ),
        (
            Box::new(|d| d["routes"][1]["requires"] = json!(["corp", "nobody"])),
            "routes[1].requires[1]: no provider is named \"nobody\"",
        ),
        (
            Box::new(|d| {
                d["routes"][1].as_object_mut().unwrap().remove("requires");
            }),
            "routes[1].requires: a route must name the providers",
        ),
        (
            Box::new(|d| d["routes"][1]["requires"] = json!([])),
            "routes[1].requires: a route must name the providers",
        ),
        (
            Box::new(|d| d["routes"][0]["scopes"] = json!(["x"])),
            "routes[0].public: a public route cannot",
        ),
        (
            Box::new(|d| d["routes"][1]["match"]["prefix"] = json!("orders")),
            "routes[1].match.prefix: \"orders\" must start with '/'",
        ),
        (
            Box::new(|d| d["routes"][1]["match"]["path"] = json!("/x")),
            "routes[1].match: use only one of",
        ),
        (
            Box::new(|d| d["routes"][1]["match"]["safe_regex"] = json!("(")),
            "routes[1].match.safe_regex: invalid regex",
        ),
        (
            Box::new(|d| d["routes"][1]["match"]["methods"] = json!(["get"])),
            "routes[1].match.methods[0]: \"get\" is not an upper-case HTTP method",
        ),
        (
            Box::new(|d| d["routes"][1]["match"]["hosts"] = json!(["a b"])),
            "routes[1].match.hosts[0]: \"a b\" is not a host name",
        ),
        (
            Box::new(|d| d["routes"][1]["match"]["hosts"] = json!(["api.example.com:8443"])),
            "routes[1].match.hosts[0]: \"api.example.com:8443\" is not a host name",
        ),
        (
            Box::new(|d| d["routes"][1]["scopes"] = json!(["orders read"])),
            "routes[1].scopes[0]: \"orders read\" is not a scope",
        ),
        (
            Box::new(|d| d["providers"]["keys"]["keys"][0]["scopes"] = json!(["a\"b"])),
            "providers.keys.keys[0].scopes[0]: \"a\\\"b\" is not a scope",
        ),
        (
            Box::new(|d| d["providers"]["keys"]["keys"][0]["consumer"] = json!("a\nb")),
            "providers.keys.keys[0].consumer: must not contain control characters",
        ),
        (
            Box::new(|d| d["routes"][1]["claims"][0] = json!({"name": "x"})),
            "routes[1].claims[0]: a claim rule needs exactly one of",
        ),
        (
            Box::new(|d| d["routes"][1]["claims"][0] = json!({"name": "x", "equals": [1]})),
            "routes[1].claims[0].equals: expected a string, number or boolean",
        ),
        (
            Box::new(|d| d["routes"][1]["claims"][0] = json!({"name": "x", "one_of": []})),
            "routes[1].claims[0].one_of: must list at least one value",
        ),
        (
            Box::new(|d| d["routes"][1]["claims"][0] = json!({"name": "x", "regex": "[a"})),
            "routes[1].claims[0].regex: invalid regex",
        ),
        (
            Box::new(|d| d["routes"][1]["shadow"] = json!("yes")),
            "routes[1].shadow: expected a boolean",
        ),
        (
            Box::new(|d| d["providers"]["keys"]["clear_route_cache"] = json!(1)),
            "providers.keys.clear_route_cache: expected a boolean",
        ),
        (
            Box::new(|d| d["verified_token_cache"] = json!({"max_entries": 10_000_000})),
            "verified_token_cache.max_entries: 10000000 is larger than the maximum",
        ),
        (
            Box::new(|d| d["verified_token_cache"] = json!({"max_bytes": 1u64 << 40})),
            "verified_token_cache.max_bytes: 1099511627776 is larger than the maximum",
        ),
        (
            Box::new(|d| d["identity_headers"] = json!({"subject": "x y"})),
            "identity_headers.subject: \"x y\" is not a valid header name",
        ),
    ];
    for (edit, expected) in cases {
        let errors = errors_after(edit);
        assert_error(&errors, expected);
    }
}

#[test]
fn all_errors_are_reported_at_once() {
    let errors = errors_after(|d| {
        d["realm"] = json!(1);
        d["routes"][1]["match"]["methods"] = json!(["get"]);
        d["providers"]["keys"]["keys"][0]["sha256"] = json!("abc");
    });
    assert_eq!(errors.len(), 3, "{errors:#?}");
}

#[test]
fn not_json_and_not_an_object() {
    assert_error(&errors_of(&json!([])), "expected an object");
    let err = Config::from_json(b"{").unwrap_err();
    assert!(err[0].to_string().starts_with("not valid JSON"));
    let big = vec![b' '; MAX_CONFIG_BYTES + 1];
    assert!(Config::from_json(&big).is_err());
}

#[test]
fn remote_jwks_errors_name_their_paths() {
    let remote = |corp: Value| {
        errors_after(move |d| {
            d["providers"]["corp"]
                .as_object_mut()
                .unwrap()
                .remove("local_jwks");
            for (k, v) in corp.as_object().unwrap() {
                if v.is_null() {
                    d["providers"]["corp"].as_object_mut().unwrap().remove(k);
                } else {
                    d["providers"]["corp"][k] = v.clone();
                }
            }
        })
    };
    let ok = json!({"remote_jwks": {"http_uri": {"uri": "https://id.example.com/jwks", "cluster": "idp"}}});
    assert_eq!(remote(ok), Vec::<String>::new());
    let cases = [
        (
            json!({"remote_jwks": {"http_uri": {"uri": "ftp://x/jwks", "cluster": "idp"}}}),
            "providers.corp.remote_jwks.http_uri.uri: \"ftp://x/jwks\" is not an http(s) URL",
        ),
        (
            json!({"remote_jwks": {"http_uri": {"uri": "https://id.example.com/jwks"}}}),
            "providers.corp.remote_jwks.http_uri.cluster: required field is missing",
        ),
        (
            json!({"remote_jwks": {"http_uri": {"cluster": "idp"}}}),
            "providers.corp.remote_jwks.http_uri.uri: required field is missing",
        ),
        (
            json!({"discovery": true, "remote_jwks": {"http_uri": {"uri": "https://id.example.com/jwks", "cluster": "idp"}}}),
            "providers.corp.remote_jwks.http_uri.uri: with discovery",
        ),
        (
            json!({"discovery": true}),
            "providers.corp.discovery: needs remote_jwks",
        ),
        (
            json!({"remote_jwks": {"http_uri": {"uri": "https://a/j", "cluster": "idp"},
                                   "retry_policy": {"base_interval_ms": 500, "max_interval_ms": 100}}}),
            "providers.corp.remote_jwks.retry_policy.max_interval_ms: must not be less",
        ),
        (
            json!({"remote_jwks": {"http_uri": {"uri": "https://a/j", "cluster": "idp"},
                                   "cache_duration_seconds": 0}}),
            "providers.corp.remote_jwks.cache_duration_seconds: must be at least 1",
        ),
        (
            json!({"remote_jwks": {"http_uri": {"uri": "https://a/j", "cluster": "idp"}},
                   "local_jwks": {"keys": [{"kty": "oct", "kid": "hs1", "alg": "HS256", "k": HS_KEY}]}}),
            "providers.corp.local_jwks: local_jwks and remote_jwks exclude each other",
        ),
        (
            json!({"remote_jwks": {"http_uri": {"uri": "https://a/j", "cluster": "idp"},
                                   "unknown_kid_refetch_interval_seconds": 0}}),
            "providers.corp.remote_jwks.unknown_kid_refetch_interval_seconds: must be at least 1",
        ),
        (
            json!({}),
            "providers.corp.local_jwks: required field is missing",
        ),
    ];
    for (corp, expected) in cases {
        assert_error(&remote(corp), expected);
    }
    assert_error(
        &remote(json!({"issuer": null, "discovery": true,
                       "remote_jwks": {"http_uri": {"cluster": "idp"}}})),
        "providers.corp.remote_jwks.http_uri: discovery needs the provider's issuer",
    );
}

#[test]
fn urls_split_into_authority_and_path() {
    use super::provider::split_url;
    assert_eq!(
        split_url("https://id.example.com:8443/a/b?x=1#f"),
        Some(("id.example.com:8443".into(), "/a/b?x=1".into()))
    );
    assert_eq!(
        split_url("http://idp.test"),
        Some(("idp.test".into(), "/".into()))
    );
    assert_eq!(split_url("https://h?q"), Some(("h".into(), "/?q".into())));
    assert_eq!(split_url("https://user@h/x"), None);
    assert_eq!(split_url("https:///x"), None);
    assert_eq!(split_url("h/x"), None);
}

#[test]
fn clear_route_cache_on_any_provider_routes_every_edited_request_again() {
    let config = |flag: bool| {
        let mut doc = valid();
        doc["providers"]["keys"]["clear_route_cache"] = json!(flag);
        Config::from_json(doc.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e:?}"))
    };
    assert!(config(true).clear_route_cache);
    assert!(!config(false).clear_route_cache);
    let default =
        Config::from_json(valid().to_string().as_bytes()).unwrap_or_else(|e| panic!("{e:?}"));
    assert!(!default.clear_route_cache);
}
