//! The verified-token cache shared by the workers: a token one worker verified is accepted by
//! another without verifying it again, and never by another configuration.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use portcullis::burst::MemoryStore;
use portcullis::cache::TokenCache;
use portcullis::config::Config;
use portcullis::decision::{self, Decision, Env, Verdict};
use portcullis::introspect::IntrospectionCache;
use portcullis::jwks::RemoteKeys;
use portcullis::jwt::Algorithm;
use portcullis::mint::SigningKey;
use portcullis::request::Request;
use serde_json::{Value, json};

const NOW: u64 = 1_800_000_000;

fn config(secret_byte: char, slots: u32) -> Config {
    let key = secret_byte.to_string().repeat(43);
    let doc = json!({
        "verified_token_cache": {"shared_slots": slots},
        "providers": {"corp": {"issuer": "https://id.example.com",
                               "local_jwks": {"keys": [{"kty": "oct", "kid": "k", "alg": "HS256", "k": key}]}}},
        "routes": [{"name": "all", "requires": ["corp"]}]
    });
    Config::from_json(doc.to_string().as_bytes()).unwrap()
}

/// One worker: its own token cache, the shared store of the Envoy.
fn decide(config: &Config, cache: &mut TokenCache, store: &MemoryStore, token: &str) -> Decision {
    let headers = vec![
        (":method".to_owned(), "GET".to_owned()),
        (":path".to_owned(), "/".to_owned()),
        (":authority".to_owned(), "api".to_owned()),
        ("authorization".to_owned(), format!("Bearer {token}")),
    ];
    let mut env = Env {
        cache,
        store,
        now_ns: NOW * 1_000_000_000,
        peer: "203.0.113.7".parse().ok(),
        end_of_stream: true,
        remote_keys: &RemoteKeys::default(),
        introspected: &mut IntrospectionCache::default(),
        answer: None,
        waited: Default::default(),
    };
    decision::decide(config, &mut env, &Request::new(&headers))
}

fn token() -> String {
    // The key of config('A'): 32 bytes of base64url "AAAA…" = zeros.
    let claims: Value = json!({"iss": "https://id.example.com", "sub": "alice", "exp": NOW + 600});
    SigningKey::hmac(&[0u8; 32], Algorithm::HS256)
        .unwrap()
        .with_kid("k")
        .sign(&claims)
        .unwrap()
}

#[test]
fn a_token_verified_by_one_worker_is_accepted_by_another_without_its_key() {
    let store = MemoryStore::default();
    let a = config('A', 64);
    let mut worker_a = a.token_cache();
    assert_eq!(
        decide(&a, &mut worker_a, &store, &token()).verdict,
        Verdict::Allow
    );

    // The same configuration in another worker, whose key is (for the test) wrong: it can
    // only accept the token from the shared cache, since a verification would fail.
    let mut b = config('E', 64);
    b.fingerprint = a.fingerprint;
    let mut worker_b = b.token_cache();
    let d = decide(&b, &mut worker_b, &store, &token());
    assert_eq!(d.verdict, Verdict::Allow, "{:?}", d.reason);
    assert_eq!(worker_b.len(), 1, "kept in the worker's own cache too");

    // Another configuration never reads it.
    let other = config('E', 64);
    let d = decide(&other, &mut other.token_cache(), &store, &token());
    assert_eq!(d.reason, "invalid_token");

    // With sharing off, the second worker verifies (and fails with the wrong key).
    let store = MemoryStore::default();
    let a = config('A', 0);
    assert_eq!(
        decide(&a, &mut a.token_cache(), &store, &token()).verdict,
        Verdict::Allow
    );
    let mut b = config('E', 0);
    b.fingerprint = a.fingerprint;
    let d = decide(&b, &mut b.token_cache(), &store, &token());
    assert_eq!(d.reason, "invalid_token");
    assert!(store.is_empty());
}
