#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
use crate::burst::MemoryStore;
use crate::jwt::jwk::test_support::public_jwks_json;
use serde_json::json;

const SECOND: u64 = 1_000_000_000;

fn config(remote: Value) -> Config {
    let doc = json!({
        "providers": {"idp": {"issuer": "https://id.example.com", "remote_jwks": remote}},
        "routes": [{"name": "all", "requires": ["idp"]}]
    });
    Config::from_json(doc.to_string().as_bytes()).unwrap()
}

fn direct() -> Config {
    config(
        json!({"http_uri": {"uri": "https://id.example.com/keys?v=1", "cluster": "idp",
                               "timeout_ms": 2000},
                  "cache_duration_seconds": 60,
                  "retry_policy": {"base_interval_ms": 100, "max_interval_ms": 1000}}),
    )
}

fn jwks() -> Vec<u8> {
    public_jwks_json().to_string().into_bytes()
}

/// Two workers of one configuration on one store, leases created.
fn two_workers(config: &Config, store: &MemoryStore) -> (RemoteKeys, RemoteKeys) {
    let (a, b) = (RemoteKeys::new(config), RemoteKeys::new(config));
    a.init_shared(store);
    b.init_shared(store);
    (a, b)
}

/// A poll that starts exactly one fetch, which gets `status` and `body` back.
fn fetch_once(
    keys: &mut RemoteKeys,
    store: &MemoryStore,
    now: u64,
    token: u32,
    status: Option<u16>,
    body: &[u8],
) -> Answer {
    let (_, fetches) = keys.poll(store, now);
    assert_eq!(fetches.len(), 1, "{fetches:?}");
    keys.started(&fetches[0], token);
    keys.on_response(token, status, body, store, now)
}

#[test]
fn one_worker_fetches_and_every_worker_installs_the_set() {
    let config = direct();
    let store = MemoryStore::default();
    let (mut a, mut b) = two_workers(&config, &store);
    let now = 1_000 * SECOND;

    let (changed, fetches) = a.poll(&store, now);
    assert!(changed.is_empty());
    assert_eq!(
        fetches,
        vec![Fetch {
            provider: 0,
            cluster: "idp".into(),
            authority: "id.example.com".into(),
            path: "/keys?v=1".into(),
            timeout_ms: 2000
        }]
    );
    a.started(&fetches[0], 7);
    // The other worker sees the lease and does not fetch.
    assert_eq!(b.poll(&store, now), (vec![], vec![]));
    assert!(a.owns(7));

    let answer = a.on_response(7, Some(200), &jwks(), &store, now);
    assert_eq!(answer.installed, Some((0, true)));
    assert!(answer.error.is_none());
    assert!(a.keys(0).is_some_and(|k| !k.is_empty()));
    // The other worker installs the shared set without fetching.
    assert_eq!(b.poll(&store, now + 1), (vec![(0, true)], vec![]));
    assert_eq!(b.keys(0).unwrap().len(), a.keys(0).unwrap().len());
    assert_eq!(a.poll(&store, now + 1), (vec![], vec![]));

    // After the cache duration, one worker refreshes.
    let later = now + 61 * SECOND;
    let (_, fetches) = b.poll(&store, later);
    assert_eq!(fetches.len(), 1);
    b.started(&fetches[0], 9);
    assert_eq!(a.poll(&store, later).1, vec![]);
}

#[test]
fn failures_back_off_for_every_worker_and_keep_the_last_good_set() {
    let config = direct();
    let store = MemoryStore::default();
    let (mut a, mut b) = two_workers(&config, &store);
    let now = 1_000 * SECOND;
    let answer = fetch_once(&mut a, &store, now, 1, Some(503), b"");
    assert_eq!(
        answer.error.as_deref(),
        Some("provider idp: JWKS fetch failed: HTTP status 503")
    );
    // 100 ms back-off for everyone, then 200 ms after the next failure.
    assert!(b.poll(&store, now + 50_000_000).1.is_empty());
    let answer = fetch_once(&mut b, &store, now + 100_000_000, 2, Some(200), b"not json");
    assert!(answer.error.unwrap().contains("not JSON"));
    assert!(a.poll(&store, now + 250_000_000).1.is_empty());
    let answer = fetch_once(&mut a, &store, now + 300_000_000, 3, Some(200), &jwks());
    assert_eq!(answer.installed, Some((0, true)));

    // Refresh fails: the last good set stays.
    let later = now + 100 * SECOND;
    assert!(
        fetch_once(&mut a, &store, later, 4, None, b"")
            .error
            .is_some()
    );
    assert!(a.keys(0).is_some());
    assert!(b.poll(&store, later).0 == vec![(0, true)] && b.keys(0).is_some());
}

#[test]
fn a_set_without_usable_keys_is_refused() {
    let err =
        parse_jwks(br#"{"keys":[{"kty":"RSA","use":"enc","n":"AQAB","e":"AQAB"}]}"#).unwrap_err();
    assert!(err.starts_with("the JWKS holds no usable key"), "{err}");
    assert!(parse_jwks(br#"{"keys":[]}"#).is_err());
    assert!(parse_jwks(&jwks()).is_ok());
}

/// Issue 14 (7): an HMAC secret in a fetched (public) set would let anyone who reads the set
/// sign tokens: symmetric keys are never installed from a remote set.
#[test]
fn symmetric_keys_of_a_fetched_set_are_never_installed() {
    let oct = serde_json::json!({"kty": "oct", "kid": "hs1", "alg": "HS256",
        "k": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE"});
    let only = serde_json::json!({"keys": [oct.clone()]}).to_string();
    let err = parse_jwks(only.as_bytes()).unwrap_err();
    assert!(err.contains("only symmetric (oct) keys"), "{err}");
    let mut mixed = public_jwks_json();
    let public = parse_jwks(&jwks()).unwrap().len();
    mixed["keys"].as_array_mut().unwrap().push(oct);
    let keys = parse_jwks(mixed.to_string().as_bytes()).unwrap();
    assert_eq!(keys.len(), public);
    assert!(keys.iter().all(|k| !k.is_symmetric()));
}

#[test]
fn unknown_kid_refetches_are_throttled_across_workers() {
    let config = direct();
    let store = MemoryStore::default();
    let (mut a, mut b) = two_workers(&config, &store);
    let now = 1_000 * SECOND;
    fetch_once(&mut a, &store, now, 1, Some(200), &jwks());
    b.poll(&store, now);

    let t = now + 5 * SECOND;
    assert_eq!(a.request_refetch(0, &store, t), Refetch::Pending);
    // Asked for and not done yet: another request waits for the same refetch.
    assert_eq!(b.request_refetch(0, &store, t), Refetch::Pending);
    // The refetch is due.
    let answer = fetch_once(&mut b, &store, t, 2, Some(200), &jwks());
    assert_eq!(answer.installed, Some((0, false)));
    assert_eq!(a.poll(&store, t).0, vec![(0, false)]);
    // Within the interval (30 s by default): refused at once.
    assert_eq!(
        a.request_refetch(0, &store, t + 10 * SECOND),
        Refetch::Throttled
    );
    assert_eq!(
        a.request_refetch(0, &store, t + 31 * SECOND),
        Refetch::Pending
    );
}

#[test]
fn discovery_finds_the_jwks_and_checks_the_issuer() {
    let doc = json!({
        "providers": {"idp": {"issuer": "https://id.example.com/realms/x/", "discovery": true,
                              "remote_jwks": {"http_uri": {"cluster": "idp"}}}},
        "routes": [{"name": "all", "requires": ["idp"]}]
    });
    let config = Config::from_json(doc.to_string().as_bytes()).unwrap();
    let store = MemoryStore::default();
    let mut keys = RemoteKeys::new(&config);
    keys.init_shared(&store);
    let now = 1_000 * SECOND;
    let (_, f) = keys.poll(&store, now);
    assert_eq!(f[0].authority, "id.example.com");
    assert_eq!(f[0].path, "/realms/x/.well-known/openid-configuration");
    keys.started(&f[0], 1);
    let wrong =
        json!({"issuer": "https://evil.example.com", "jwks_uri": "https://evil.example.com/k"});
    let answer = keys.on_response(1, Some(200), wrong.to_string().as_bytes(), &store, now);
    assert!(answer.error.unwrap().contains("another issuer"));

    let (_, f) = keys.poll(&store, now + 2 * SECOND);
    keys.started(&f[0], 2);
    let good = json!({"issuer": "https://id.example.com/realms/x",
                      "jwks_uri": "https://keys.example.com/realms/x/certs"});
    let answer = keys.on_response(
        2,
        Some(200),
        good.to_string().as_bytes(),
        &store,
        now + 2 * SECOND,
    );
    let next = answer.next.unwrap();
    assert_eq!(
        (next.authority.as_str(), next.path.as_str()),
        ("keys.example.com", "/realms/x/certs")
    );
    keys.started(&next, 3);
    assert_eq!(
        keys.on_response(3, Some(200), &jwks(), &store, now + 2 * SECOND)
            .installed,
        Some((0, true))
    );
}

#[test]
fn a_missing_lease_is_created_free_and_taken_later() {
    let config = direct();
    let store = MemoryStore::default();
    let mut a = RemoteKeys::new(&config);
    let now = 1_000 * SECOND;
    assert!(a.poll(&store, now).1.is_empty());
    assert_eq!(a.poll(&store, now).1.len(), 1);
}
