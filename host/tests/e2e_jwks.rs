//! Remote keys end to end: the real filter in `portcullis-host` (two workers) fetches the JWKS
//! of the test identity provider (`support::idp`) through an Envoy cluster: at start (requests
//! wait for it), again after `cache_duration_seconds`, once per instance for both workers, and
//! again when a token names an unknown `kid` (throttled). With the provider down at start,
//! requests wait and then get 401; down later, the last good keys keep working. With
//! `discovery`, the JWKS location comes from the OpenID configuration.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::idp::{Idp, Mode};
use support::*;

fn claims(idp: &Idp) -> Value {
    json!({"iss": idp.issuer(), "sub": "alice", "aud": "orders", "exp": unix_now() + 600})
}

/// The filter's configuration with one provider whose keys come from `remote_jwks`.
fn config(idp: &Idp, remote_jwks: Value, discovery: bool) -> Value {
    json!({
        "providers": {"idp": {"issuer": idp.issuer(), "audiences": ["orders"],
                              "discovery": discovery, "remote_jwks": remote_jwks}},
        "routes": [{"name": "orders", "match": {"prefix": "/orders"}, "requires": ["idp"]}]
    })
}

/// A host with two workers whose `idp` cluster reaches the test provider.
fn host(idp: &Idp, config: &Value) -> (Host, SocketAddr, EchoServer) {
    let stack = filter_stack(&config.to_string(), vec![cluster("idp", idp.addr(), false)]);
    let host = Host::start(&stack.yaml, stack.admin);
    (host, stack.addr, stack.echo)
}

fn get(addr: SocketAddr, token: &str) -> Resp {
    get_with_bearer(addr, "/orders/1", token)
}

/// Polls `f` every 50 ms until it holds, at most `within`.
fn eventually(within: Duration, f: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// One test, run in sequence: ports picked by parallel tests could collide.
#[test]
fn remote_jwks_through_the_host() {
    fetched_at_start_refreshed_and_rotated();
    provider_down_at_start_then_up();
    provider_down_later_keeps_the_last_good_keys();
    discovery_finds_the_jwks();
}

fn fetched_at_start_refreshed_and_rotated() {
    let idp = Idp::start();
    let remote = json!({
        "http_uri": {"uri": format!("{}/jwks", idp.issuer()), "cluster": "idp", "timeout_ms": 1000},
        "cache_duration_seconds": 3,
        "unknown_kid_refetch_interval_seconds": 30
    });
    let (host, addr, _echo) = host(&idp, &config(&idp, remote, false));

    // The first requests wait for the first key set, then pass.
    let token = idp.mint(&claims(&idp));
    for _ in 0..6 {
        let r = get(addr, &token);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // One fetch serves both workers.
    assert_eq!(idp.hits("/jwks"), 1);
    let installed = host.wait_lines(
        |l| l.contains("provider idp: key set installed"),
        2,
        Duration::from_secs(5),
    );
    assert_eq!(
        installed.len(),
        2,
        "each worker installs the set: {installed:#?}"
    );

    // After the cache duration, one refresh for the instance.
    assert!(
        eventually(Duration::from_secs(6), || idp.hits("/jwks") == 2),
        "refresh: {} fetches",
        idp.hits("/jwks")
    );
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(idp.hits("/jwks"), 2, "one refresh, not one per worker");

    // Rotation: a token signed with a new key is accepted after one refetch.
    idp.rotate("k2");
    let before = idp.hits("/jwks");
    let rotated = idp.mint(&claims(&idp));
    let r = get(addr, &rotated);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(idp.hits("/jwks"), before + 1);
    assert_eq!(
        get(addr, &token).status,
        200,
        "the old key is still published"
    );

    // Random kids cannot make the gateway hammer the provider: the refetch is throttled.
    let before = idp.hits("/jwks");
    for i in 0..20 {
        let forged = idp.mint_unpublished(&format!("random-{i}"), &claims(&idp));
        let r = get(addr, &forged);
        assert_eq!(r.status, 401, "{}", r.text());
        assert_eq!(r.json()["error"], "invalid_token");
        assert!(
            r.header("www-authenticate")
                .unwrap()
                .contains("invalid_token")
        );
    }
    assert_eq!(idp.hits("/jwks"), before, "no refetch within the interval");

    // A key removed from the set stops working with the next refresh, cached or not.
    idp.retire_old_keys();
    assert!(
        eventually(Duration::from_secs(8), || get(addr, &token).status == 401),
        "the retired key's token is still accepted"
    );
    assert_eq!(get(addr, &rotated).status, 200);
}

fn provider_down_at_start_then_up() {
    let idp = Idp::start();
    idp.set_mode(Mode::Down);
    let remote = json!({
        "http_uri": {"uri": format!("{}/jwks", idp.issuer()), "cluster": "idp", "timeout_ms": 500},
        "wait_ms": 800,
        "retry_policy": {"base_interval_ms": 100, "max_interval_ms": 400}
    });
    let (host, addr, _echo) = host(&idp, &config(&idp, remote, false));
    let token = idp.mint(&claims(&idp));

    let started = Instant::now();
    let r = get(addr, &token);
    let waited = started.elapsed();
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(
        r.json()["message"],
        "the issuer's signing keys are not available"
    );
    assert!(
        waited >= Duration::from_millis(700),
        "the request should wait about wait_ms, waited {waited:?}"
    );
    assert!(
        !host
            .wait_lines(
                |l| l.contains("provider idp: JWKS fetch failed: HTTP status 503"),
                1,
                Duration::from_secs(5)
            )
            .is_empty()
    );
    // Retries back off: far fewer than one fetch per tick.
    let failures = idp.hits("/jwks");
    assert!((2..=8).contains(&failures), "{failures} fetches in ~1 s");

    idp.set_mode(Mode::Up);
    assert!(
        eventually(Duration::from_secs(5), || get(addr, &token).status == 200),
        "keys did not arrive after the provider came back"
    );
}

fn provider_down_later_keeps_the_last_good_keys() {
    let idp = Idp::start();
    let remote = json!({
        "http_uri": {"uri": format!("{}/jwks", idp.issuer()), "cluster": "idp", "timeout_ms": 300},
        "cache_duration_seconds": 1,
        "retry_policy": {"base_interval_ms": 200, "max_interval_ms": 400}
    });
    let (_host, addr, _echo) = host(&idp, &config(&idp, remote, false));
    let token = idp.mint(&claims(&idp));
    assert_eq!(get(addr, &token).status, 200);

    idp.set_mode(Mode::Garbage);
    let before = idp.hits("/jwks");
    assert!(
        eventually(Duration::from_secs(5), || idp.hits("/jwks") >= before + 2),
        "no refresh attempts"
    );
    idp.set_mode(Mode::Slow(Duration::from_secs(2)));
    for _ in 0..5 {
        let r = get(addr, &token);
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

fn discovery_finds_the_jwks() {
    let idp = Idp::start();
    let remote = json!({"http_uri": {"cluster": "idp", "timeout_ms": 1000}});
    let (_host, addr, _echo) = host(&idp, &config(&idp, remote, true));
    let token = idp.mint(&claims(&idp));
    let r = get(addr, &token);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(idp.hits("/.well-known/openid-configuration"), 1);
    assert_eq!(idp.hits("/jwks"), 1);
}
