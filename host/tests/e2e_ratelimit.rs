//! Global rate limits end to end: the real filter in `portcullis-host` calls the real
//! `portcullis-ratelimit` (in this process) over gRPC on loopback. Allowed responses carry the
//! IETF RateLimit headers, the request over the limit gets 429 with `Retry-After`, a service
//! that cannot be reached gets the configured failure mode, and two hosts hammering two service
//! replicas on one real Redis allow exactly the limit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use portcullis_ratelimit::clock::SystemClock;
use portcullis_ratelimit::server::StoreSettings;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use support::rls::{self, RateLimitService};
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
  - key: generic_key
    value: accuracy
    rate_limit:
      name: shared
      unit: hour
      requests_per_unit: 20
"#;

fn rate_limit_service() -> RateLimitService {
    rate_limit_service_on(StoreSettings::Memory(Arc::new(SystemClock)))
}

fn rate_limit_service_on(store: StoreSettings) -> RateLimitService {
    rls::start(LIMITS, store)
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
    let stack = filter_stack(&config.to_string(), vec![cluster("ratelimit", rls, true)]);
    let host = Host::start(&stack.yaml, stack.admin);
    (host, stack.addr, stack.echo)
}

/// One test, run in sequence: ports picked by parallel tests (and the service's ephemeral
/// ports) could otherwise collide between picking and binding.
#[test]
fn rate_limits_over_grpc() {
    limits_from_the_service();
    an_unreachable_service_follows_the_failure_mode();
    two_hosts_and_two_replicas_on_redis_allow_exactly_the_limit();
    redis_down_then_back_follows_the_failure_mode_then_recovers();
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

/// One redis-server on a loopback port, without persistence; killed on drop.
struct Redis {
    child: std::process::Child,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        Redis::start_on(free_port())
    }

    /// On a given port: a restarted Redis comes back where the service expects it.
    fn start_on(port: u16) -> Redis {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .current_dir(std::env::temp_dir())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (make setup installs it)");
        let redis = Redis { child, port };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !redis.pong() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        redis
    }

    fn pong(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The issue's accuracy case: two hosts (two workers each), each calling its own service
/// replica, both replicas on one Redis; 64 concurrent requests against a limit of 20 per hour
/// are answered with exactly 20 passes and 44 refusals.
fn two_hosts_and_two_replicas_on_redis_allow_exactly_the_limit() {
    let redis = Redis::start();
    let store = || {
        StoreSettings::Redis(portcullis_ratelimit::store::redis::RedisOptions {
            urls: vec![format!("redis://127.0.0.1:{}", redis.port)],
            cluster: false,
            timeout: Duration::from_secs(1),
        })
    };
    let (rls_a, rls_b) = (
        rate_limit_service_on(store()),
        rate_limit_service_on(store()),
    );
    let config = json!({
        "rate_limit_service": {"cluster": "ratelimit", "domain": "edge", "timeout_ms": 1000},
        "routes": [{"name": "orders", "match": {"prefix": "/orders"}, "public": true,
                    "rate_limits": [{"actions": [{"generic_key": {"descriptor_value": "accuracy"}}]}]}]
    });
    let (_host_a, addr_a, _echo_a) = host(&config, rls_a.grpc);
    let (_host_b, addr_b, _echo_b) = host(&config, rls_b.grpc);

    // The hour window is clock-aligned: stay clear of its boundary so that one window counts.
    let into_hour = unix_now() % 3600;
    if into_hour > 3570 {
        std::thread::sleep(Duration::from_secs(3600 - into_hour + 1));
    }

    let threads: Vec<_> = (0..8)
        .map(|i| {
            let addr = if i % 2 == 0 { addr_a } else { addr_b };
            std::thread::spawn(move || {
                (0..8)
                    .map(|_| {
                        let r = request(addr, "GET", "/orders/1", &[], b"");
                        if r.status == 429 {
                            assert!(r.header("retry-after").is_some(), "{}", r.text());
                        }
                        r.status
                    })
                    .collect::<Vec<u16>>()
            })
        })
        .collect();
    let statuses: Vec<u16> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let allowed = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((allowed, limited), (20, 44), "{statuses:?}");
}

/// Redis killed while requests flow: the service answers UNAVAILABLE (its failure mode), so a
/// host with `failure_mode_deny` refuses with 503 and one without lets requests through, each
/// with an audit reason; once Redis is back on its port, limits are enforced again within
/// seconds, without restarting anything.
fn redis_down_then_back_follows_the_failure_mode_then_recovers() {
    let redis = Redis::start();
    let port = redis.port;
    let rls = rate_limit_service_on(StoreSettings::Redis(
        portcullis_ratelimit::store::redis::RedisOptions {
            urls: vec![format!("redis://127.0.0.1:{port}")],
            cluster: false,
            timeout: Duration::from_millis(300),
        },
    ));
    let config = |deny: bool| {
        json!({
            "rate_limit_service": {"cluster": "ratelimit", "domain": "edge", "timeout_ms": 2000,
                                   "failure_mode_deny": deny},
            "routes": [{"name": "orders", "match": {"prefix": "/orders"}, "public": true,
                        "rate_limits": [{"actions": [{"generic_key": {"descriptor_value": "accuracy"}}]}]}]
        })
    };
    let (deny_host, deny, _echo_a) = host(&config(true), rls.grpc);
    let (allow_host, allow, _echo_b) = host(&config(false), rls.grpc);
    let counted = |addr| {
        let r = request(addr, "GET", "/orders/1", &[], b"");
        (r.status, r.header("ratelimit"))
    };

    let (status, state) = counted(deny);
    assert_eq!(status, 200);
    assert!(state.is_some_and(|s| s.starts_with("\"shared\";r=19;")));

    drop(redis);
    let r = request(deny, "GET", "/orders/1", &[], b"");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], "rate_limit_unavailable");
    assert!(r.header("retry-after").is_some());
    let r = request(allow, "GET", "/orders/1", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("ratelimit").is_none(),
        "no decision, no quota to report"
    );
    for host in [&deny_host, &allow_host] {
        let lines = host.wait_lines(
            |l| l.contains("\"rate_limit\":\"error\""),
            1,
            Duration::from_secs(10),
        );
        assert_eq!(lines.len(), 1, "{lines:#?}");
    }

    // Back on the same port, empty (no persistence): the count starts again.
    let _redis = Redis::start_on(port);
    let back = std::time::Instant::now();
    let deadline = back + Duration::from_secs(15);
    let recovered = loop {
        let (status, state) = counted(deny);
        if status == 200 {
            break state;
        }
        assert_eq!(status, 503, "only the failure mode while reconnecting");
        assert!(
            std::time::Instant::now() < deadline,
            "the service did not recover within 15 s of Redis coming back"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "limits enforced again {:?} after Redis answered",
        back.elapsed()
    );
    assert!(recovered.is_some_and(|s| s.starts_with("\"shared\";r=19;")));
    let allowed = (0..25).filter(|_| counted(allow).0 == 200).count();
    assert_eq!(allowed, 19, "the limit holds again after the restart");
}
