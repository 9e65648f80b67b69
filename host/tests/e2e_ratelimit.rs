//! Global rate limits end to end: the real filter in `portcullis-host` calls the real
//! `portcullis-ratelimit` (memory store, in this process) over gRPC on loopback. Allowed
//! responses carry the IETF RateLimit headers, the request over the limit gets 429 with
//! `Retry-After`, and a service that cannot be reached gets the configured failure mode.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use portcullis_ratelimit::clock::SystemClock;
use portcullis_ratelimit::server::{Server, Settings, StoreSettings};
use portcullis_ratelimit::service::{FailureMode, ServiceOptions};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use support::*;

const LIMITS: &str = r#"
domain: edge
descriptors:
  - key: generic_key
    value: orders
    descriptors:
      - key: remote_address
        rate_limit:
          name: per-client
          unit: hour
          requests_per_unit: 3
"#;

/// The rate-limit service on a runtime of its own; dropped with the runtime.
struct RateLimitService {
    grpc: SocketAddr,
    _runtime: tokio::runtime::Runtime,
    _config: TempDir,
}

fn rate_limit_service() -> RateLimitService {
    let dir = TempDir::new();
    std::fs::write(dir.0.join("limits.yaml"), LIMITS).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let settings = Settings {
        config_path: dir.0.clone(),
        store: StoreSettings::Memory(Arc::new(SystemClock)),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        service: ServiceOptions {
            failure_mode: FailureMode::Unavailable,
            key_prefix: "rl:".to_owned(),
            global_shadow_mode: false,
        },
        config_poll: Duration::from_secs(1),
        drain_timeout: Duration::from_secs(1),
    };
    let server = runtime.block_on(Server::bind(settings)).unwrap();
    let grpc = server.grpc_addr().unwrap();
    runtime.spawn(server.run(std::future::pending()));
    RateLimitService {
        grpc,
        _runtime: runtime,
        _config: dir,
    }
}

fn filter_config(failure_mode_deny: bool) -> Value {
    json!({
        "rate_limit_service": {"cluster": "ratelimit", "domain": "edge", "timeout_ms": 1000,
                               "failure_mode_deny": failure_mode_deny,
                               "response_headers": "ietf_and_legacy"},
        "routes": [
            {"name": "orders", "match": {"prefix": "/orders"}, "public": true,
             "rate_limits": [{"actions": [{"generic_key": {"descriptor_value": "orders"}},
                                          {"remote_address": {}}]}]},
            {"name": "rest", "public": true}
        ]
    })
}

/// A host whose `ratelimit` cluster points at `rls` (HTTP/2).
fn host(config: &Value, rls: SocketAddr) -> (Host, SocketAddr, EchoServer) {
    let echo = echo("orders");
    let (port, admin) = (free_port(), free_port());
    let yaml = bootstrap(
        vec![listener(
            "ingress",
            port,
            vec![wasm_filter(
                "portcullis",
                &filter_wasm(),
                &config.to_string(),
                false,
            )],
            vec![route("/", "orders")],
            None,
        )],
        vec![
            cluster("orders", echo.addr(), false),
            cluster("ratelimit", rls, true),
        ],
        admin,
    );
    let host = Host::start(&yaml, admin);
    (host, ([127, 0, 0, 1], port).into(), echo)
}

/// One test, run in sequence: ports picked by parallel tests (and the service's ephemeral
/// ports) could otherwise collide between picking and binding.
#[test]
fn rate_limits_over_grpc() {
    limits_from_the_service();
    an_unreachable_service_follows_the_failure_mode();
}

fn limits_from_the_service() {
    let rls = rate_limit_service();
    let (host, addr, _echo) = host(&filter_config(true), rls.grpc);

    for remaining in [2, 1, 0] {
        let r = request(addr, "GET", "/orders/1", &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.header("ratelimit-policy").as_deref(),
            Some("\"per-client\";q=3;w=3600")
        );
        let state = r.header("ratelimit").unwrap();
        assert!(
            state.starts_with(&format!("\"per-client\";r={remaining};t=")),
            "{state}"
        );
        assert_eq!(
            r.header("x-ratelimit-remaining"),
            Some(remaining.to_string())
        );
    }
    let r = request(addr, "GET", "/orders/1", &[], b"");
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"], "rate_limited");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry), "{retry}");
    assert!(r.header("ratelimit").unwrap().contains(";r=0;"));
    // A route without descriptors is not counted.
    assert_eq!(request(addr, "GET", "/other", &[], b"").status, 200);

    let lines = host.wait_lines(
        |l| l.contains("\"rate_limit\":\"over_limit\""),
        1,
        Duration::from_secs(10),
    );
    assert_eq!(lines.len(), 1, "{lines:#?}");
}

fn an_unreachable_service_follows_the_failure_mode() {
    // A port nobody listens on.
    let dead: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let (_host, addr, _echo) = host(&filter_config(true), dead);
    let r = request(addr, "GET", "/orders/1", &[], b"");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], "rate_limit_unavailable");
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));

    let (host, addr, _echo) = host(&filter_config(false), dead);
    let r = request(addr, "GET", "/orders/1", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let lines = host.wait_lines(
        |l| l.contains("\"rate_limit\":\"error\""),
        1,
        Duration::from_secs(10),
    );
    assert_eq!(lines.len(), 1, "{lines:#?}");
}
