//! Envoy's own rate-limit filter on `portcullis-ratelimit` (issue 15, item 4): the proof that
//! the service is a drop-in for envoyproxy/ratelimit.
//!
//! No wasm here. Envoy's native `envoy.filters.http.ratelimit` filter (domain `interop`,
//! `transport_api_version: V3`, `failure_mode_deny`, `enable_x_ratelimit_headers:
//! DRAFT_VERSION_03`) calls the real service (started in this process, memory store) over gRPC
//! through an HTTP/2 cluster. The limits are an envoyproxy/ratelimit YAML file. Two routes, each
//! with its own upstream cluster so Envoy's `cluster.<name>.ratelimit.*` stats tell them apart:
//!
//! - `/ip/…`: route action `remote_address` → descriptor `[remote_address=<client>]`, 3 per
//!   hour per client address (clients connect from 127.0.0.1 and 127.0.0.2, both loopback);
//! - `/key/…`: route action `generic_key` → descriptor `[generic_key=search]`, 2 per hour for
//!   everyone.
//!
//! Under the limit: 200 from the echo upstream, with `x-ratelimit-limit` (`3, 3;w=3600;
//! name="per-ip"`), `x-ratelimit-remaining` counting down and `x-ratelimit-reset`; the next
//! request: Envoy's own 429 (`x-envoy-ratelimited`), the same headers with 0 remaining, and the
//! upstream never sees it. Fixed windows are aligned to the hour, so the suite waits out the last
//! 15 seconds of an hour rather than straddle two windows.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use portcullis_e2e::bootstrap::{self, Protocol};
use portcullis_e2e::client::parse_response;
use portcullis_e2e::{Envoy, RateLimitService, Resp, TestServer, echo, unix_now};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const DOMAIN: &str = "interop";
const PER_IP: u32 = 3;
const SEARCH: u32 = 2;
const WINDOW_SECS: u64 = 3600;

/// The limits, in envoyproxy/ratelimit's format (nothing of ours: no `algorithm`, no `burst`).
fn limits() -> String {
    format!(
        "domain: {DOMAIN}
descriptors:
  - key: remote_address
    rate_limit:
      name: per-ip
      unit: hour
      requests_per_unit: {PER_IP}
  - key: generic_key
    value: search
    rate_limit:
      name: search
      unit: hour
      requests_per_unit: {SEARCH}
"
    )
}

/// Envoy's native rate-limit filter on the cluster `ratelimit`.
fn ratelimit_filter() -> Value {
    json!({
        "name": "envoy.filters.http.ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
            "domain": DOMAIN,
            "timeout": "2s",
            // A service that cannot be reached is a 500, never a silent pass.
            "failure_mode_deny": true,
            "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
            "rate_limit_service": {
                "grpc_service": {"envoy_grpc": {"cluster_name": "ratelimit"}},
                "transport_api_version": "V3"
            }
        }
    })
}

/// A route for `prefix` to `cluster`, with one rate limit made of `action`.
fn limited_route(prefix: &str, cluster: &str, action: Value) -> Value {
    json!({
        "match": {"prefix": prefix},
        "route": {"cluster": cluster, "rate_limits": [{"actions": [action]}]}
    })
}

/// `GET path` to `addr` from the loopback address `source` (any of 127.0.0.0/8), on a fresh
/// connection.
fn get_from(source: Ipv4Addr, addr: SocketAddr, path: &str) -> Resp {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from((source, 0)).into())
        .unwrap_or_else(|e| panic!("bind {source}: {e}"));
    socket
        .connect_timeout(&addr.into(), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr} from {source}: {e}"));
    let mut s: TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    parse_response(&raw).unwrap_or_else(|e| panic!("GET {path} from {source}: {e}"))
}

/// A response header that must be there, as text.
fn header(r: &Resp, name: &str) -> String {
    r.header(name)
        .unwrap_or_else(|| panic!("no {name} in {} {:?}", r.summary(), r.headers))
}

/// The `x-ratelimit-*` headers of DRAFT_VERSION_03 for a limit of `limit` per hour named
/// `name` with `remaining` left.
fn assert_ratelimit_headers(r: &Resp, limit: u32, name: &str, remaining: u32) {
    assert_eq!(
        header(r, "x-ratelimit-limit"),
        format!("{limit}, {limit};w={WINDOW_SECS};name=\"{name}\""),
        "{}",
        r.summary()
    );
    assert_eq!(
        header(r, "x-ratelimit-remaining"),
        remaining.to_string(),
        "{}",
        r.summary()
    );
    let reset: u64 = header(r, "x-ratelimit-reset")
        .parse()
        .unwrap_or_else(|e| panic!("x-ratelimit-reset: {e}"));
    assert!(
        (1..=WINDOW_SECS).contains(&reset),
        "x-ratelimit-reset {reset}"
    );
}

/// `limit` requests pass (200 from the echo upstream, remaining counting down), the next is
/// Envoy's 429.
fn exhaust(from: Ipv4Addr, addr: SocketAddr, path: &str, limit: u32, name: &str) -> Resp {
    for i in 1..=limit {
        let r = get_from(from, addr, path);
        assert_eq!(
            r.status,
            200,
            "request {i} of {limit} to {path}: {}",
            r.summary()
        );
        assert_eq!(r.json().unwrap()["name"], "upstream", "{}", r.summary());
        assert_ratelimit_headers(&r, limit, name, limit - i);
    }
    let r = get_from(from, addr, path);
    assert_eq!(
        r.status,
        429,
        "request {} to {path}: {}",
        limit + 1,
        r.summary()
    );
    assert_eq!(header(&r, "x-envoy-ratelimited"), "true");
    assert_ratelimit_headers(&r, limit, name, 0);
    r
}

/// A counter from the service's `/metrics` (Prometheus text), 0 when absent.
fn service_metric(rls: &RateLimitService, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = portcullis_e2e::get(rls.http(), "/metrics").unwrap().text();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until the current fixed window (aligned to the hour) has at least 15 s left (the
/// requests take well under a second).
fn not_at_the_end_of_a_window() {
    let left = WINDOW_SECS - unix_now() % WINDOW_SECS;
    if left < 15 {
        eprintln!("waiting {}s for the next hour's window", left + 1);
        std::thread::sleep(Duration::from_secs(left + 1));
    }
}

struct Suite {
    envoy: Envoy,
    rls: RateLimitService,
    upstream: TestServer,
}

impl Suite {
    fn start() -> Suite {
        let rls = RateLimitService::memory(&limits()).unwrap_or_else(|e| panic!("{e}"));
        let upstream = echo::echo("upstream").unwrap();
        let routes = vec![
            limited_route("/ip/", "by_address", json!({"remote_address": {}})),
            limited_route(
                "/key/",
                "by_key",
                json!({"generic_key": {"descriptor_value": "search"}}),
            ),
        ];
        let listener = bootstrap::listener("ingress", 0, vec![ratelimit_filter()], routes);
        let clusters = vec![
            bootstrap::cluster("by_address", upstream.addr(), Protocol::Http1),
            bootstrap::cluster("by_key", upstream.addr(), Protocol::Http1),
            bootstrap::cluster("ratelimit", rls.grpc(), Protocol::Http2),
        ];
        let envoy = Envoy::start(&bootstrap::bootstrap(vec![listener], clusters))
            .unwrap_or_else(|e| panic!("{e}"));
        Suite {
            envoy,
            rls,
            upstream,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.envoy.listener("ingress").unwrap()
    }

    /// Envoy's counter `cluster.<cluster>.ratelimit.<name>` (0 when absent).
    fn envoy_stat(&self, cluster: &str, name: &str) -> u64 {
        self.envoy
            .stat(&format!("cluster.{cluster}.ratelimit.{name}"))
            .unwrap_or(0)
    }
}

#[test]
fn envoy_ratelimit_filter_on_portcullis_ratelimit() {
    let started = Instant::now();
    let suite = Suite::start();
    let addr = suite.addr();
    let first = Ipv4Addr::LOCALHOST;
    let second = Ipv4Addr::new(127, 0, 0, 2);
    not_at_the_end_of_a_window();

    // remote_address: one client's quota, then its 429; another address has its own.
    exhaust(first, addr, "/ip/a", PER_IP, "per-ip");
    assert_eq!(suite.upstream.hits("/ip/a"), PER_IP as usize);
    let r = get_from(second, addr, "/ip/b");
    assert_eq!(r.status, 200, "another client address: {}", r.summary());
    assert_ratelimit_headers(&r, PER_IP, "per-ip", PER_IP - 1);
    let r = get_from(first, addr, "/ip/c");
    assert_eq!(r.status, 429, "{}", r.summary());
    assert_eq!(suite.upstream.hits("/ip/c"), 0);

    // generic_key: one counter for everyone, whatever the address.
    for i in 1..=SEARCH {
        let from = if i % 2 == 1 { second } else { first };
        let r = get_from(from, addr, "/key/q");
        assert_eq!(r.status, 200, "search request {i}: {}", r.summary());
        assert_ratelimit_headers(&r, SEARCH, "search", SEARCH - i);
    }
    for from in [first, second] {
        let r = get_from(from, addr, "/key/q");
        assert_eq!(r.status, 429, "search from {from}: {}", r.summary());
        assert_eq!(header(&r, "x-envoy-ratelimited"), "true");
        assert_ratelimit_headers(&r, SEARCH, "search", 0);
    }
    assert_eq!(suite.upstream.hits("/key/q"), SEARCH as usize);
    // The remote_address limit of the second client is untouched by the search route.
    let r = get_from(second, addr, "/ip/d");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_ratelimit_headers(&r, PER_IP, "per-ip", PER_IP - 2);

    // Envoy's own count of the service's answers, per upstream cluster.
    let by_address = (
        suite.envoy_stat("by_address", "ok"),
        suite.envoy_stat("by_address", "over_limit"),
        suite.envoy_stat("by_address", "error"),
    );
    assert_eq!(
        by_address,
        (u64::from(PER_IP) + 2, 2, 0),
        "ok, over_limit, error"
    );
    let by_key = (
        suite.envoy_stat("by_key", "ok"),
        suite.envoy_stat("by_key", "over_limit"),
        suite.envoy_stat("by_key", "error"),
    );
    assert_eq!(by_key, (u64::from(SEARCH), 2, 0), "ok, over_limit, error");
    // And the service's: every decision was its own.
    let decided = |descriptor: &str, code: &str| {
        service_metric(
            &suite.rls,
            "ratelimit_decisions_total",
            &[
                ("domain", DOMAIN),
                ("descriptor", descriptor),
                ("code", code),
            ],
        )
    };
    assert_eq!(decided("remote_address", "ok"), f64::from(PER_IP + 2));
    assert_eq!(decided("remote_address", "over_limit"), 2.0);
    assert_eq!(decided("generic_key_search", "ok"), f64::from(SEARCH));
    assert_eq!(decided("generic_key_search", "over_limit"), 2.0);

    let errors = suite.envoy.log_lines_with("[error]");
    assert!(errors.is_empty(), "{errors:?}");
    eprintln!("interop: {:?}", started.elapsed());
}
