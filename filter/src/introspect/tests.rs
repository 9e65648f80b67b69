#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use super::*;
use crate::config::{Config, ProviderKind};
use serde_json::json;

const NOW: u64 = 1_800_000_000;

fn provider(auth_method: &str) -> Config {
    let doc = json!({
        "providers": {"opaque": {
            "type": "introspection",
            "issuer": "https://id.example.com",
            "audiences": ["orders"],
            "introspection": {
                "http_uri": {"uri": "https://id.example.com/oauth/introspect", "cluster": "idp"},
                "client_id": "gw", "client_secret": "s3c:ret&",
                "auth_method": auth_method,
                "cache_ttl_seconds": 60
            }
        }},
        "routes": [{"name": "all", "requires": ["opaque"]}]
    });
    Config::from_json(doc.to_string().as_bytes()).unwrap()
}

fn parts(config: &Config) -> (&JwtProvider, &Introspection) {
    match &config.providers[0].kind {
        ProviderKind::Jwt(jwt) => (jwt, jwt.introspection.as_deref().unwrap()),
        ProviderKind::ApiKey(_) => panic!("not a token provider"),
    }
}

#[test]
fn the_call_carries_the_token_and_the_client_credentials() {
    let config = provider("client_secret_basic");
    let (_, endpoint) = parts(&config);
    let (headers, body) = call(endpoint, "a b+c");
    assert!(headers.contains(&(":path", "/oauth/introspect")));
    assert!(headers.contains(&(":authority", "id.example.com")));
    assert!(headers.contains(&("content-type", "application/x-www-form-urlencoded")));
    // base64("gw:s3c%3Aret%26"), RFC 6749 §2.3.1.
    assert!(headers.contains(&("authorization", "Basic Z3c6czNjJTNBcmV0JTI2")));
    assert_eq!(body, b"token=a+b%2Bc&token_type_hint=access_token");

    let config = provider("client_secret_post");
    let (_, endpoint) = parts(&config);
    let (headers, body) = call(endpoint, "t");
    assert!(!headers.iter().any(|(k, _)| *k == "authorization"));
    assert_eq!(
        String::from_utf8(body).unwrap(),
        "token=t&token_type_hint=access_token&client_id=gw&client_secret=s3c%3Aret%26"
    );
    assert!(!format!("{endpoint:?}").contains("s3c"), "Debug redacts");
}

#[test]
fn answers_are_checked_like_token_claims() {
    let config = provider("client_secret_basic");
    let (jwt, endpoint) = parts(&config);
    let read = |answer: Value| {
        read_answer(jwt, endpoint, Some(200), answer.to_string().as_bytes(), NOW).unwrap()
    };
    let good = json!({"active": true, "sub": "u1", "scope": "orders:read orders:write",
                      "iss": "https://id.example.com", "aud": "orders", "exp": NOW + 30});
    let (answer, until) = read(good.clone());
    let Introspected::Active(token) = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(token.subject.as_deref(), Some("u1"));
    assert!(token.has_scope("orders:write"));
    assert_eq!(until, NOW + 30, "never past exp");
    let mut long = good.clone();
    long["exp"] = json!(NOW + 3600);
    assert_eq!(read(long).1, NOW + 60, "never past the TTL");

    let refused = |answer: Value| match read(answer) {
        (Introspected::Refused(e), until) => {
            assert_eq!(until, NOW + 10);
            e
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(refused(json!({"active": false})), JwtError::Inactive);
    assert_eq!(refused(json!({"active": "true"})), JwtError::Inactive);
    let mut expired = good.clone();
    expired["exp"] = json!(NOW - 3600);
    assert_eq!(refused(expired), JwtError::Expired);
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = json!("billing");
    assert_eq!(refused(wrong_aud), JwtError::BadAudience);
    let mut wrong_iss = good;
    wrong_iss["iss"] = json!("https://evil.example.com");
    assert_eq!(refused(wrong_iss), JwtError::BadIssuer);
}

#[test]
fn failures_say_why_without_the_answer() {
    let config = provider("client_secret_basic");
    let (jwt, endpoint) = parts(&config);
    let err = |status, body: &[u8]| read_answer(jwt, endpoint, status, body, NOW).unwrap_err();
    assert_eq!(err(None, b""), "introspection endpoint did not answer");
    assert_eq!(
        err(Some(503), b"secret detail"),
        "introspection endpoint answered HTTP 503"
    );
    assert_eq!(
        err(Some(200), b"[1]"),
        "introspection answer is not a JSON object"
    );
}

#[test]
fn the_cache_expires_and_stays_bounded() {
    let mut cache = IntrospectionCache::new(2, 1 << 20);
    let k = |i: u8| (0, [i; 32]);
    cache.insert(
        k(1),
        Introspected::Refused(JwtError::Inactive),
        NOW + 10,
        20,
    );
    assert!(cache.get(&k(1), NOW + 9).is_some());
    assert!(cache.get(&k(1), NOW + 10).is_none());
    cache.insert(
        k(2),
        Introspected::Refused(JwtError::Inactive),
        NOW + 10,
        20,
    );
    cache.insert(
        k(3),
        Introspected::Refused(JwtError::Inactive),
        NOW + 10,
        20,
    );
    assert_eq!(cache.len(), 2);
    assert!(cache.get(&k(1), NOW).is_none());
    // Replacing an entry does not grow the cache.
    cache.insert(k(3), Introspected::Refused(JwtError::Expired), NOW + 10, 20);
    assert_eq!(cache.len(), 2);
    assert_eq!(
        cache.get(&k(3), NOW),
        Some(&Introspected::Refused(JwtError::Expired))
    );
}

#[test]
fn the_cache_is_bounded_in_bytes_too() {
    let mut cache = IntrospectionCache::new(100, 1000);
    let k = |i: u8| (0, [i; 32]);
    for i in 0..5 {
        cache.insert(
            k(i),
            Introspected::Refused(JwtError::Inactive),
            NOW + 10,
            100,
        );
    }
    // 456 bytes each: two fit.
    assert_eq!(cache.len(), 2);
    assert!(cache.get(&k(4), NOW).is_some());
    cache.insert(
        k(9),
        Introspected::Refused(JwtError::Inactive),
        NOW + 10,
        1000,
    );
    assert!(
        cache.get(&k(9), NOW).is_none(),
        "larger than the whole cache"
    );
    assert!(IntrospectionCache::new(100, 0).is_empty());
}
