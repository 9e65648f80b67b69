//! Property tests: no token, header value or configuration document makes the policy panic.
//! (A panic in the wasm filter kills the VM for every request on that worker.)

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use portcullis::cache::TokenCache;
use portcullis::config::Config;
mod support;

use portcullis::jwt::jws;
use portcullis::request::Request;
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use support::decide;

const EXAMPLE: &str = include_str!("../../examples/portcullis.json");

fn example() -> Config {
    Config::from_json(EXAMPLE.as_bytes()).unwrap()
}

/// Field names the configuration knows, so random documents reach deep into the reader.
const FIELDS: &[&str] = &[
    "routes",
    "providers",
    "realm",
    "identity_headers",
    "verified_token_cache",
    "max_entries",
    "name",
    "match",
    "hosts",
    "methods",
    "path",
    "prefix",
    "safe_regex",
    "public",
    "requires",
    "allow_missing",
    "scopes",
    "claims",
    "shadow",
    "equals",
    "one_of",
    "regex",
    "type",
    "issuer",
    "audiences",
    "local_jwks",
    "keys",
    "kty",
    "kid",
    "alg",
    "n",
    "e",
    "crv",
    "x",
    "y",
    "k",
    "d",
    "use",
    "key_ops",
    "from_headers",
    "value_prefix",
    "from_params",
    "from_cookies",
    "forward",
    "forward_payload_header",
    "claim_to_headers",
    "header_name",
    "claim_name",
    "clock_skew_seconds",
    "require_expiration",
    "max_lifetime_seconds",
    "required_claims",
    "consumer",
    "sha256",
    "subject",
    "jwt",
    "api_key",
    "RSA",
    "EC",
    "OKP",
    "oct",
    "P-256",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        prop::sample::select(FIELDS).prop_map(|s| json!(s)),
        ".{0,12}".prop_map(Value::String),
        "[A-Za-z0-9_-]{0,400}".prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(FIELDS), inner), 0..8).prop_map(|kv| {
                let map: Map<String, Value> =
                    kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
                Value::Object(map)
            }),
        ]
    })
}

/// Replaces the node at a pseudo-random position of `doc` with `replacement`.
fn mutate(doc: &mut Value, mut choice: usize, replacement: Value) {
    let mut node = doc;
    loop {
        let children = match node {
            Value::Object(m) => m.len(),
            Value::Array(a) => a.len(),
            _ => 0,
        };
        if children == 0 || choice.is_multiple_of(4) {
            *node = replacement;
            return;
        }
        let i = choice % children;
        choice /= 3;
        node = match node {
            Value::Object(m) => m.values_mut().nth(i).unwrap(),
            Value::Array(a) => &mut a[i],
            _ => unreachable!(),
        };
    }
}

fn headers(path: &str, extra: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut h = vec![
        (":method".to_owned(), "GET".to_owned()),
        (":path".to_owned(), path.to_owned()),
        (":authority".to_owned(), "api.example.com".to_owned()),
    ];
    h.extend(extra);
    h
}

/// Three segments built from arbitrary JSON-ish text, so parsing gets past base64.
fn token_like() -> impl Strategy<Value = String> {
    (
        json_value(),
        json_value(),
        prop::collection::vec(any::<u8>(), 0..80),
    )
        .prop_map(|(h, p, s)| {
            format!(
                "{}.{}.{}",
                B64.encode(h.to_string()),
                B64.encode(p.to_string()),
                B64.encode(s)
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_documents_never_panic(doc in json_value()) {
        let _ = Config::from_json(doc.to_string().as_bytes());
    }

    #[test]
    fn mutated_example_never_panics(choice in any::<usize>(), replacement in json_value()) {
        let mut doc: Value = serde_json::from_str(EXAMPLE).unwrap();
        mutate(&mut doc, choice, replacement);
        let _ = Config::from_json(doc.to_string().as_bytes());
    }

    #[test]
    fn arbitrary_bytes_as_config_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Config::from_json(&bytes);
    }

    #[test]
    fn arbitrary_tokens_never_panic(token in prop_oneof![".{0,300}", token_like()]) {
        let _ = jws::parse(&token);
        let config = example();
        let mut cache = TokenCache::new(8, 1 << 20);
        let h = headers("/api/orders/1", vec![("authorization".to_owned(), format!("Bearer {token}"))]);
        let _ = decide(&config, &mut cache, &Request::new(&h), 1_800_000_000);
    }

    #[test]
    fn arbitrary_header_values_never_panic(
        path in ".{0,64}",
        query in ".{0,64}",
        auth in ".{0,64}",
        cookie in ".{0,64}",
        key in ".{0,64}",
        authority in ".{0,32}",
        method in ".{0,8}",
    ) {
        let config = example();
        let mut cache = TokenCache::new(8, 1 << 20);
        let h = vec![
            (":method".to_owned(), method),
            (":path".to_owned(), format!("{path}?{query}")),
            (":authority".to_owned(), authority),
            ("authorization".to_owned(), auth),
            ("cookie".to_owned(), cookie),
            ("x-api-key".to_owned(), key),
        ];
        let _ = decide(&config, &mut cache, &Request::new(&h), 0);
        let _ = decide(&config, &mut cache, &Request::new(&h), u64::MAX);
    }
}

#[test]
fn the_example_configuration_is_valid() {
    let config = example();
    assert!(config.routes.len() >= 4);
    assert!(config.providers.len() >= 2);
}
