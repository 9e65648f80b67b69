//! OAuth 2.0 token introspection end to end: the real filter in `portcullis-host` asks the test
//! identity provider (`support::idp`) about opaque tokens through an Envoy cluster, with the
//! client's credentials, and decides on the answer: active, inactive, expired, wrong audience,
//! missing scope; answers are reused by every worker (fewer calls on the provider), refusals
//! only briefly; an
//! endpoint that is down or slow gets 503 with `Retry-After`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use support::idp::{Idp, Mode};
use support::*;

fn config(idp: &Idp) -> Value {
    json!({
        "providers": {"opaque": {
            "type": "introspection",
            "issuer": idp.issuer(),
            "audiences": ["orders"],
            "claim_to_headers": [{"header_name": "x-client", "claim_name": "client_id"}],
            "introspection": {
                "http_uri": {"uri": format!("{}/introspect", idp.issuer()), "cluster": "idp",
                             "timeout_ms": 400},
                "client_id": Idp::CLIENT_ID,
                "client_secret": Idp::CLIENT_SECRET,
                "cache_ttl_seconds": 60,
                "negative_cache_ttl_seconds": 2
            }
        }},
        "routes": [{"name": "orders", "match": {"prefix": "/orders"}, "requires": ["opaque"],
                    "scopes": ["orders:read"]}]
    })
}

/// A host with two workers (they share answers through shared data) whose `idp` cluster
/// reaches the test provider.
fn host(idp: &Idp, config: &Value) -> (Host, SocketAddr, EchoServer) {
    let stack = filter_stack(&config.to_string(), vec![cluster("idp", idp.addr(), false)]);
    let host = Host::start(&stack.yaml, stack.admin);
    (host, stack.addr, stack.echo)
}

fn get(addr: SocketAddr, token: &str) -> Resp {
    get_with_bearer(addr, "/orders/1", token)
}

fn answer(idp: &Idp, extra: Value) -> Value {
    let mut a = json!({"active": true, "sub": "u1", "scope": "orders:read", "client_id": "app",
                       "iss": idp.issuer(), "aud": "orders", "exp": unix_now() + 600});
    for (k, v) in extra.as_object().unwrap() {
        a[k] = v.clone();
    }
    a
}

#[test]
fn opaque_tokens_through_the_host() {
    let idp = Idp::start();
    idp.add_opaque("tok-active", answer(&idp, json!({})));
    idp.add_opaque("tok-off", json!({"active": false}));
    idp.add_opaque(
        "tok-expired",
        answer(&idp, json!({"exp": unix_now() - 3600})),
    );
    idp.add_opaque("tok-billing", answer(&idp, json!({"aud": "billing"})));
    idp.add_opaque("tok-noscope", answer(&idp, json!({"scope": "profile"})));
    let (host, addr, _echo) = host(&idp, &config(&idp));

    // Active: passes, with the claims as identity; asked once, then reused by both workers.
    for _ in 0..10 {
        let r = get(addr, "tok-active");
        assert_eq!(r.status, 200, "{}", r.text());
        let seen = &r.json()["headers"];
        assert_eq!(seen["x-portcullis-subject"], "u1", "{seen}");
        assert_eq!(seen["x-client"], "app", "{seen}");
        assert!(
            seen.get("authorization").is_none(),
            "the token is not forwarded: {seen}"
        );
    }
    assert_eq!(idp.hits("/introspect"), 1);

    // Refusals, each with its reason.
    for (token, status, message) in [
        ("tok-off", 401, "token is not active"),
        ("tok-unknown", 401, "token is not active"),
        ("tok-expired", 401, "token has expired"),
        ("tok-billing", 401, "token audience is not accepted"),
        ("tok-noscope", 403, ""),
    ] {
        let r = get(addr, token);
        assert_eq!(r.status, status, "{token}: {}", r.text());
        if status == 401 {
            assert_eq!(r.json()["message"], message, "{token}");
            assert!(
                r.header("www-authenticate")
                    .unwrap()
                    .contains("invalid_token")
            );
        }
    }
    // Refusals are reused briefly. Deadlines are whole seconds, so a TTL of 2 s means at
    // least one second of reuse, and 2.1 s later the refusal is surely stale.
    let calls = idp.hits("/introspect");
    assert_eq!(get(addr, "tok-off").status, 401);
    assert_eq!(idp.hits("/introspect"), calls);
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(get(addr, "tok-off").status, 401);
    assert_eq!(idp.hits("/introspect"), calls + 1);

    // Endpoint down or slow: 503 with Retry-After; answers already held keep working.
    idp.set_mode(Mode::Down);
    idp.add_opaque("tok-new", answer(&idp, json!({})));
    let r = get(addr, "tok-new");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], "introspection_unavailable");
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    assert_eq!(get(addr, "tok-active").status, 200);
    idp.set_mode(Mode::Slow(Duration::from_secs(2)));
    assert_eq!(get(addr, "tok-new").status, 503);
    idp.set_mode(Mode::Up);
    assert_eq!(get(addr, "tok-new").status, 200);

    // Never the token or the client secret in the logs.
    let lines = host.stderr();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("introspection endpoint answered HTTP 503")),
        "{lines:#?}"
    );
    for line in &lines {
        assert!(!line.contains("tok-"), "token logged: {line}");
        assert!(!line.contains(Idp::CLIENT_SECRET), "secret logged: {line}");
    }
}

#[test]
fn wrong_client_credentials_fail_closed() {
    let idp = Idp::start();
    idp.add_opaque("tok-active", answer(&idp, json!({})));
    let mut config = config(&idp);
    config["providers"]["opaque"]["introspection"]["client_secret"] = json!("wrong");
    config["providers"]["opaque"]["introspection"]["auth_method"] = json!("client_secret_post");
    let (_host, addr, _echo) = host(&idp, &config);
    let r = get(addr, "tok-active");
    assert_eq!(r.status, 503, "{}", r.text());

    // The same with the right secret in the body passes.
    let mut config = self::config(&idp);
    config["providers"]["opaque"]["introspection"]["auth_method"] = json!("client_secret_post");
    let (_host, addr, _echo) = host(&idp, &config);
    assert_eq!(get(addr, "tok-active").status, 200);
}

#[test]
fn a_zero_ttl_asks_for_every_request() {
    let idp = Idp::start();
    idp.add_opaque("tok-active", answer(&idp, json!({})));
    let mut config = config(&idp);
    config["providers"]["opaque"]["introspection"]["cache_ttl_seconds"] = json!(0);
    let (_host, addr, _echo) = host(&idp, &config);
    for _ in 0..3 {
        assert_eq!(get(addr, "tok-active").status, 200);
    }
    assert_eq!(idp.hits("/introspect"), 3);
}
