//! Broken upstream answers in real Envoy (issue 13): the identity provider's JWKS endpoint, its
//! OpenID discovery document, its introspection endpoint and the rate-limit service answer in
//! every broken way we know — reset mid-body, reset before headers, 200 with garbage, an 8 MiB
//! body, too slow (the whole answer, or only its body), 500; for gRPC a reset mid-answer
//! (`RST_STREAM`, or the connection reset) and a malformed message — and the gateway must go
//! on serving: public routes 200, protected routes decided as documented
//! (docs/configuration.md):
//!
//! - no keys yet (`remote_jwks`, with or without discovery): the request waits `wait_ms`, then
//!   401 `invalid_token`, "the issuer's signing keys are not available";
//! - keys fetched before the endpoint broke are kept: valid tokens pass;
//! - introspection with `failure_mode_deny: true`: 503 `introspection_unavailable`,
//!   `Retry-After: 1`;
//! - rate-limit service with `failure_mode_deny: true`: 503 `rate_limit_unavailable`,
//!   `Retry-After: 1`; with `false`: the request passes.
//!
//! After every group: Envoy's log has no wasm panic (`panicked at`, `unexpected status`), no
//! answer was a bare 503 with an empty body — Envoy's own answer when the filter's VM is dead
//! (`failure_policy: FAIL_CLOSED`); the filter's 503s have a JSON body — and none hung.
//!
//! Layout: one Envoy per test, one listener per group (a fault; a failure mode of the rate-limit
//! service), each with its own filter configuration in a VM of its own, so that a group whose
//! VM dies takes no other group with it (Envoy compiles the module once for all of them). The
//! groups run at once. In a group every provider has its own path on the group's identity
//! provider, so that each can be broken alone. Every check of a group runs; the test fails at
//! the end with the list, per group, of those that did not hold.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use portcullis_e2e::bootstrap::{self, Protocol};
use portcullis_e2e::{Envoy, FakeRls, Fault, Idp, Resp, RlsAnswer, TestServer, echo, unix_now};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Every callout's timeout.
const TIMEOUT_MS: u64 = 500;
/// The slow faults' delay: three times the timeout.
const SLOW: Duration = Duration::from_millis(3 * TIMEOUT_MS);
/// How long a request waits for keys.
const WAIT_MS: u64 = 600;
/// How long a request to the gateway may take before it counts as hung (every documented
/// outcome comes within about a second).
const HUNG: Duration = Duration::from_secs(10);
/// Requests to the public route at each check, each on a new connection (so both workers
/// serve some).
const PUBLIC_REQUESTS: usize = 20;
/// Requests to each protected route, in parallel.
const PROTECTED_REQUESTS: usize = 6;

/// The JWKS of the provider `jwks` (no discovery).
const JWKS: &str = "/j/jwks";
/// The discovery document of the provider `disco`.
const DISCO_DOC: &str = "/d/.well-known/openid-configuration";
/// The JWKS of the provider `disco_jwks`, found through a healthy discovery document.
const DISCO_JWKS: &str = "/dj/jwks";
/// The JWKS of the provider `kept`: healthy at first, broken once its keys are in.
const KEPT_JWKS: &str = "/k/jwks";
/// The introspection endpoint of the provider `opaque`.
const INTROSPECT: &str = "/introspect";

const KEYS_NOT_AVAILABLE: &str = "the issuer's signing keys are not available";

// -------------------------------------------------------------------------------------------
// Envoy, the groups' listeners, and the checks every group makes.

/// Starts one Envoy with a listener (and VM) per `(name, configuration)` in front of an echo
/// service, plus `clusters`.
fn start_envoy(groups: &[(String, String)], clusters: Vec<Value>) -> (Envoy, TestServer) {
    let upstream = echo::echo("upstream").unwrap();
    let wasm = portcullis_e2e::artifacts::filter_wasm().unwrap_or_else(|e| panic!("{e}"));
    let bootstrap = bootstrap::gateways(&wasm, groups, upstream.addr(), clusters);
    let started = Instant::now();
    let envoy = Envoy::start(&bootstrap).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "Envoy ready in {:?} ({} listeners)",
        started.elapsed(),
        groups.len()
    );
    (envoy, upstream)
}

/// One group's listener of the shared Envoy, and every answer it gave.
struct Gateway<'a> {
    envoy: &'a Envoy,
    /// The listener's name, also its filter's VM id (it names the VM in Envoy's log).
    vm: String,
    addr: SocketAddr,
    answers: Mutex<Vec<(String, Resp)>>,
}

impl<'a> Gateway<'a> {
    fn new(envoy: &'a Envoy, vm: &str) -> Gateway<'a> {
        Gateway {
            envoy,
            vm: vm.to_owned(),
            addr: envoy.listener(vm).unwrap(),
            answers: Mutex::new(Vec::new()),
        }
    }

    /// `GET path` on a new connection, with a bearer token if given; recorded. No answer
    /// within [`HUNG`] (or a broken one) is recorded as status 0 with the error as its body.
    fn get(&self, path: &str, token: Option<&str>) -> Resp {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &[u8])> = auth
            .iter()
            .map(|a| ("authorization", a.as_bytes()))
            .collect();
        let r = portcullis_e2e::request_within(self.addr, "GET", path, &headers, b"", HUNG)
            .unwrap_or_else(|e| Resp {
                status: 0,
                headers: Vec::new(),
                body: format!("no answer: {e}").into_bytes(),
            });
        self.answers
            .lock()
            .unwrap()
            .push((path.to_owned(), r.clone()));
        r
    }

    /// The requests at once, each on its own connection: (path, how long it took, answer).
    fn parallel(&self, requests: Vec<(String, Option<String>)>) -> Vec<(String, Duration, Resp)> {
        std::thread::scope(|s| {
            let handles: Vec<_> = requests
                .iter()
                .map(|(path, token)| {
                    s.spawn(move || {
                        let started = Instant::now();
                        let r = self.get(path, token.as_deref());
                        (path.clone(), started.elapsed(), r)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    /// Public routes are served: each of [`PUBLIC_REQUESTS`] requests gets 200 from the
    /// upstream.
    fn check_public(&self, checks: &mut Checks, when: &str) {
        let mut bad = Vec::new();
        for _ in 0..PUBLIC_REQUESTS {
            let r = self.get("/public", None);
            let from_upstream = r.json().is_some_and(|j| j["name"] == "upstream");
            if r.status != 200 || !from_upstream {
                bad.push(r.summary());
            }
        }
        checks.check(
            bad.is_empty(),
            format!(
                "{when}: {} of {PUBLIC_REQUESTS} requests to the public route were not served: {}",
                bad.len(),
                dedup(bad).join(" | ")
            ),
        );
    }

    /// The group's VMs lived through it: no wasm panic of this VM in Envoy's log, no bare 503
    /// and no hung request among the answers.
    fn check_vms_alive(&self, checks: &mut Checks) {
        let log = self.envoy.log();
        let tag = format!(" {}:", self.vm);
        let mut panics = Vec::new();
        for (n, line) in log.iter().enumerate() {
            if line.contains("panicked at") && line.contains(&tag) {
                // The panic's message is on the next line, without Envoy's prefix.
                let next = log.get(n + 1).map_or("", String::as_str);
                panics.push(format!("{} / {next}", tail(line)));
            }
        }
        let unexpected_status = panics.iter().any(|p| p.contains("unexpected status"));
        checks.check(
            panics.is_empty(),
            format!(
                "Envoy's log shows {} wasm panic(s) of this VM{}: {}",
                panics.len(),
                if unexpected_status {
                    " (unexpected status)"
                } else {
                    ""
                },
                dedup(panics).join(" | ")
            ),
        );
        let answers = self.answers.lock().unwrap();
        let bare: Vec<String> = answers
            .iter()
            .filter(|(_, r)| r.status == 503 && r.body.is_empty())
            .map(|(path, _)| path.clone())
            .collect();
        checks.check(
            bare.is_empty(),
            format!(
                "{} of {} answers were Envoy's bare 503 (the filter's VM was dead), to: {}",
                bare.len(),
                answers.len(),
                dedup(bare).join(", ")
            ),
        );
        let hung: Vec<String> = answers
            .iter()
            .filter(|(_, r)| r.status == 0)
            .map(|(path, r)| format!("{path}: {}", r.text()))
            .collect();
        checks.check(
            hung.is_empty(),
            format!(
                "{} requests got no answer within {HUNG:?}: {}",
                hung.len(),
                dedup(hung).join(" | ")
            ),
        );
    }

    /// This VM's log lines that contain `needle`, without Envoy's prefix, repeats removed.
    fn log_lines(&self, needle: &str) -> Vec<String> {
        let tag = format!(" {}:", self.vm);
        let lines: Vec<String> = self
            .envoy
            .log()
            .iter()
            .filter(|l| l.contains(&tag) && l.contains(needle))
            .map(|l| tail(l).to_owned())
            .collect();
        dedup(lines)
    }

    /// Envoy's statistics of `cluster` that say how its requests ended (non-zero ones).
    fn cluster_stats(&self, cluster: &str) -> String {
        let text = self
            .envoy
            .admin(&format!(
                "/stats?filter=^cluster\\.{cluster}\\.upstream_(rq|cx)_"
            ))
            .map(|r| r.text())
            .unwrap_or_default();
        let wanted = [
            "upstream_rq_completed",
            "upstream_rq_2xx",
            "upstream_rq_5xx",
            "upstream_rq_timeout",
            "upstream_rq_rx_reset",
            "upstream_rq_tx_reset",
            "upstream_cx_destroy_remote_with_active_rq",
            "upstream_cx_destroy_local_with_active_rq",
            "upstream_cx_rx_bytes_total",
        ];
        text.lines()
            .filter_map(|l| {
                let (name, value) = l.split_once(": ")?;
                let short = name.rsplit_once('.')?.1;
                (wanted.contains(&short) && value.trim() != "0")
                    .then(|| format!("{short}={}", value.trim()))
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A log line without Envoy's prefix (time, thread, level, source).
fn tail(line: &str) -> &str {
    line.split_once("wasm log ").map_or(line, |(_, t)| t)
}

fn dedup(mut items: Vec<String>) -> Vec<String> {
    items.sort();
    items.dedup();
    items
}

/// The checks of one group: each one runs; [`report`] lists those that did not hold.
struct Checks {
    group: String,
    failed: Vec<String>,
    run: usize,
    /// What the group saw, for the test's output.
    notes: Vec<String>,
}

impl Checks {
    fn new(group: &str) -> Checks {
        Checks {
            group: group.to_owned(),
            failed: Vec::new(),
            run: 0,
            notes: Vec::new(),
        }
    }

    fn check(&mut self, ok: bool, what: String) {
        self.run += 1;
        if !ok {
            self.failed.push(what);
        }
    }

    fn note(&mut self, what: String) {
        self.notes.push(what);
    }
}

/// Prints every group's outcome; fails with the groups whose checks did not all hold.
fn report(groups: Vec<Checks>) {
    let mut failed = Vec::new();
    for g in &groups {
        let verdict = if g.failed.is_empty() {
            format!("all {} checks held", g.run)
        } else {
            format!("{} of {} checks FAILED", g.failed.len(), g.run)
        };
        eprintln!("\n[{}] {verdict}", g.group);
        for n in &g.notes {
            eprintln!("    seen: {n}");
        }
        for f in &g.failed {
            eprintln!("  - {f}");
        }
        if !g.failed.is_empty() {
            failed.push(format!(
                "[{}] {verdict}:\n  - {}",
                g.group,
                g.failed.join("\n  - ")
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} groups failed:\n{}",
        failed.len(),
        groups.len(),
        failed.join("\n")
    );
}

/// Polls `f` every 50 ms until it holds, at most `within`.
fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// A name usable as a listener, VM id and cluster name.
fn slug(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    s.split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

// -------------------------------------------------------------------------------------------
// The identity provider: keys, discovery, introspection.

static TOKENS: AtomicUsize = AtomicUsize::new(0);

/// A fresh valid token for `issuer` (a new `jti` each time, so that no cache can answer for
/// it: the filter verifies it with the keys it holds).
fn token(idp: &Idp, issuer: &str) -> String {
    let n = TOKENS.fetch_add(1, Ordering::Relaxed);
    idp.mint(&json!({"iss": issuer, "sub": "alice", "aud": "orders",
                     "exp": unix_now() + 600, "jti": format!("t{n}")}))
        .unwrap()
}

/// The filter configuration of an identity-provider group whose provider is reached through
/// `cluster`.
fn idp_config(idp: &Idp, cluster: &str) -> Value {
    let remote = |uri: Option<String>, cache_duration_seconds: u64| {
        let mut http_uri = json!({"cluster": cluster, "timeout_ms": TIMEOUT_MS});
        if let Some(uri) = uri {
            http_uri["uri"] = json!(uri);
        }
        json!({
            "http_uri": http_uri,
            "cache_duration_seconds": cache_duration_seconds,
            "wait_ms": WAIT_MS,
            "retry_policy": {"base_interval_ms": 200, "max_interval_ms": 2000}
        })
    };
    let i = idp.issuer();
    json!({
        "providers": {
            "jwks": {"issuer": i, "audiences": ["orders"],
                     "remote_jwks": remote(Some(format!("{i}{JWKS}")), 300)},
            "disco": {"issuer": idp.issuer_at("/d"), "audiences": ["orders"], "discovery": true,
                      "remote_jwks": remote(None, 300)},
            "disco_jwks": {"issuer": idp.issuer_at("/dj"), "audiences": ["orders"],
                           "discovery": true, "remote_jwks": remote(None, 300)},
            "kept": {"issuer": i, "audiences": ["orders"],
                     "remote_jwks": remote(Some(format!("{i}{KEPT_JWKS}")), 1)},
            "opaque": {"type": "introspection", "issuer": i, "audiences": ["orders"],
                       "introspection": {
                           "http_uri": {"uri": format!("{i}{INTROSPECT}"), "cluster": cluster,
                                        "timeout_ms": TIMEOUT_MS},
                           "client_id": Idp::CLIENT_ID,
                           "client_secret": Idp::CLIENT_SECRET,
                           "failure_mode_deny": true
                       }}
        },
        "routes": [
            {"name": "public", "match": {"prefix": "/public"}, "public": true},
            {"name": "jwks", "match": {"prefix": "/jwks"}, "requires": ["jwks"]},
            {"name": "disco", "match": {"prefix": "/disco/"}, "requires": ["disco"]},
            {"name": "disco_jwks", "match": {"prefix": "/disco-jwks"}, "requires": ["disco_jwks"]},
            {"name": "kept", "match": {"prefix": "/kept"}, "requires": ["kept"]},
            {"name": "opaque", "match": {"prefix": "/opaque"}, "requires": ["opaque"]}
        ]
    })
}

/// One identity-provider group, on its listener: every endpoint of its provider broken with
/// `fault` (the `kept` provider's only after its keys are in), then the documented outcomes.
fn identity_provider_group(gw: &Gateway<'_>, idp: &Idp, fault: Fault) -> Checks {
    let mut checks = Checks::new(&format!("identity provider: {}", fault.name()));
    let i = idp.issuer();

    // The broken fetches start with Envoy's first ticks: the gateway serves all the same.
    gw.check_public(&mut checks, "right after start");

    // Keys fetched while the endpoint was healthy are kept when it breaks.
    // (A request waits at most wait_ms for the first fetch: on a loaded machine it may take a
    // second try.)
    let mut first = Vec::new();
    let in_time = eventually(Duration::from_secs(10), || {
        let r = gw.get("/kept/first", Some(&token(idp, &i)));
        let ok = r.status == 200;
        first.push(r.summary());
        ok
    });
    checks.check(
        in_time,
        format!(
            "kept: no token passed within 10 s while the JWKS was healthy: {}",
            dedup(first).join(" | ")
        ),
    );
    let before = idp.hits(KEPT_JWKS);
    idp.set_fault(KEPT_JWKS, Some(fault));
    let refetched = eventually(Duration::from_secs(10), || {
        idp.hits(KEPT_JWKS) >= before + 2
    });
    checks.check(
        refetched,
        format!(
            "kept: {} broken refetches in 10 s, expected at least 2 (cache_duration_seconds 1)",
            idp.hits(KEPT_JWKS) - before
        ),
    );

    // No keys yet: each request waits wait_ms, then 401 "keys not available".
    let mut requests = Vec::new();
    for (route, issuer) in [
        ("/jwks/1", i.clone()),
        ("/disco/1", idp.issuer_at("/d")),
        ("/disco-jwks/1", idp.issuer_at("/dj")),
    ] {
        for _ in 0..PROTECTED_REQUESTS {
            requests.push((route.to_owned(), Some(token(idp, &issuer))));
        }
    }
    // The wait ends at the first 200 ms tick after wait_ms; a loaded machine may be late.
    let (earliest, latest) = (
        Duration::from_millis(WAIT_MS - 50),
        Duration::from_millis(WAIT_MS + 200 + 2000),
    );
    let mut took_all = Vec::new();
    for (path, took, r) in gw.parallel(requests) {
        let www = r.header("www-authenticate").unwrap_or_default();
        let as_documented = r.status == 401
            && r.error_code().as_deref() == Some("invalid_token")
            && r.message().as_deref() == Some(KEYS_NOT_AVAILABLE)
            && www.contains("invalid_token")
            && (earliest..=latest).contains(&took);
        checks.check(
            as_documented,
            format!(
                "{path}: expected 401 invalid_token {KEYS_NOT_AVAILABLE:?} after ~{WAIT_MS} ms, got after {took:.1?}: {}",
                r.summary()
            ),
        );
        took_all.push(took);
    }
    checks.note(format!(
        "requests waiting for keys answered after {:.0?} to {:.0?}",
        took_all.iter().min().unwrap_or(&Duration::ZERO),
        took_all.iter().max().unwrap_or(&Duration::ZERO)
    ));

    // The kept keys still verify fresh tokens.
    let mut kept_bad = Vec::new();
    for n in 0..10 {
        let r = gw.get(&format!("/kept/{n}"), Some(&token(idp, &i)));
        if r.status != 200 {
            kept_bad.push(r.summary());
        }
    }
    checks.check(
        kept_bad.is_empty(),
        format!(
            "kept: {} of 10 valid tokens refused after the JWKS broke: {}",
            kept_bad.len(),
            dedup(kept_bad.clone()).join(" | ")
        ),
    );

    // Introspection fails closed: 503 introspection_unavailable, Retry-After: 1.
    let mut requests = Vec::new();
    for n in 0..PROTECTED_REQUESTS {
        let opaque = format!("opaque-{n}");
        idp.add_opaque(
            &opaque,
            json!({"active": true, "sub": format!("u{n}"), "iss": i, "aud": "orders",
                   "exp": unix_now() + 600}),
        );
        requests.push((format!("/opaque/{n}"), Some(opaque)));
    }
    for (path, took, r) in gw.parallel(requests) {
        let as_documented = r.status == 503
            && r.error_code().as_deref() == Some("introspection_unavailable")
            && r.header("retry-after").as_deref() == Some("1");
        checks.check(
            as_documented,
            format!(
                "{path}: expected 503 introspection_unavailable with Retry-After: 1, got after {took:.1?}: {}",
                r.summary()
            ),
        );
    }

    // Every broken endpoint was asked.
    for path in [JWKS, DISCO_DOC, DISCO_JWKS, INTROSPECT] {
        checks.check(idp.hits(path) >= 1, format!("{path} was never asked"));
    }
    checks.check(
        idp.hits("/dj/.well-known/openid-configuration") >= 1,
        "disco_jwks: its (healthy) discovery document was never asked".to_owned(),
    );

    gw.check_public(&mut checks, "at the end");
    gw.check_vms_alive(&mut checks);
    for needle in [
        "fetch failed",
        "introspection endpoint",
        "introspection answer",
    ] {
        for line in gw.log_lines(needle) {
            checks.note(line);
        }
    }
    checks.note(format!(
        "Envoy's cluster stats: {}",
        gw.cluster_stats(&format!("idp-{}", gw.vm))
    ));
    checks
}

#[test]
fn identity_provider_faults() {
    let faults = Fault::all(SLOW);
    let idps: Vec<(Fault, String, Idp)> = faults
        .iter()
        .map(|&fault| {
            let idp = Idp::start().unwrap();
            for path in [JWKS, DISCO_DOC, DISCO_JWKS, INTROSPECT] {
                idp.set_fault(path, Some(fault));
            }
            (fault, slug(&format!("idp {}", fault.name())), idp)
        })
        .collect();
    let groups: Vec<(String, String)> = idps
        .iter()
        .map(|(_, vm, idp)| {
            (
                vm.clone(),
                idp_config(idp, &format!("idp-{vm}")).to_string(),
            )
        })
        .collect();
    let clusters = idps
        .iter()
        .map(|(_, vm, idp)| bootstrap::cluster(&format!("idp-{vm}"), idp.addr(), Protocol::Http1))
        .collect();
    let (envoy, _upstream) = start_envoy(&groups, clusters);
    let started = Instant::now();
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = idps
            .iter()
            .map(|(fault, vm, idp)| {
                let envoy = &envoy;
                s.spawn(move || identity_provider_group(&Gateway::new(envoy, vm), idp, *fault))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    eprintln!("groups done in {:?}", started.elapsed());
    report(results);
}

// -------------------------------------------------------------------------------------------
// The rate-limit service.

/// Routes, the descriptor value each sends (the fake service's marker), the service's answer.
/// The descriptor value the service answers OVER_LIMIT for.
const OVER_LIMIT: &str = "over-limit";

const RATE_LIMITED: [(&str, &str, RlsAnswer); 3] = [
    (
        "/rl/reset-stream",
        "fault-reset-stream",
        RlsAnswer::ResetStream,
    ),
    (
        "/rl/close-connection",
        "fault-close-connection",
        RlsAnswer::CloseConnection,
    ),
    ("/rl/malformed", "fault-malformed", RlsAnswer::Malformed),
];

/// The filter configuration of a rate-limit group whose service is reached through `cluster`;
/// `control` is the descriptor value of its control route.
fn rate_limit_config(failure_mode_deny: bool, cluster: &str, control: &str) -> Value {
    let limited = |name: &str, prefix: &str, value: &str| {
        json!({"name": name, "match": {"prefix": prefix}, "public": true,
               "rate_limits": [{"actions": [{"generic_key": {"descriptor_value": value}}]}]})
    };
    let mut routes = vec![
        json!({"name": "public", "match": {"prefix": "/public"}, "public": true}),
        limited("control", "/rl/ok", control),
        // Shadow mode (issue 13, item 3): the service's refusal and its failure are only
        // recorded on a shadowed route; the same answer refuses on an enforcing one.
        limited("over-limit", "/rl/over", OVER_LIMIT),
    ];
    for (name, prefix, value) in [
        ("shadow-over-limit", "/rl/shadow/over", OVER_LIMIT),
        (
            "shadow-malformed",
            "/rl/shadow/malformed",
            "fault-malformed",
        ),
    ] {
        let mut route = limited(name, prefix, value);
        route["shadow"] = json!(true);
        routes.push(route);
    }
    for (prefix, marker, _) in RATE_LIMITED {
        routes.push(limited(marker, prefix, marker));
    }
    json!({
        "rate_limit_service": {"cluster": cluster, "domain": "edge", "timeout_ms": TIMEOUT_MS,
                               "failure_mode_deny": failure_mode_deny},
        "routes": routes
    })
}

/// One rate-limit group, on its listener: the service answers OK for the control route and
/// breaks its answers for the others; the failure mode decides.
fn rate_limit_group(
    gw: &Gateway<'_>,
    rls: &FakeRls,
    failure_mode_deny: bool,
    control: &str,
) -> Checks {
    let mut checks = Checks::new(&format!(
        "rate-limit service, failure_mode_deny {failure_mode_deny}"
    ));
    gw.check_public(&mut checks, "right after start");
    let check_control = |checks: &mut Checks, when: &str| {
        for _ in 0..5 {
            let r = gw.get("/rl/ok", None);
            checks.check(
                r.status == 200,
                format!(
                    "{when}: the control route (service answers OK) got {}",
                    r.summary()
                ),
            );
        }
    };
    check_control(&mut checks, "before the faults");
    let control_calls = rls.calls_with(control);
    checks.check(
        control_calls >= 5,
        format!("the control route called the service {control_calls} times for 5 requests"),
    );

    // One at a time: a connection the service resets must not take another call with it.
    for (prefix, marker, answer) in RATE_LIMITED {
        let before = rls.calls_with(marker);
        for n in 0..8 {
            let path = format!("{prefix}/{n}");
            let r = gw.get(&path, None);
            let (as_documented, expected) = if failure_mode_deny {
                (
                    r.status == 503
                        && r.error_code().as_deref() == Some("rate_limit_unavailable")
                        && r.header("retry-after").as_deref() == Some("1"),
                    "503 rate_limit_unavailable with Retry-After: 1",
                )
            } else {
                (
                    r.status == 200 && r.json().is_some_and(|j| j["name"] == "upstream"),
                    "200 from the upstream",
                )
            };
            checks.check(
                as_documented,
                format!(
                    "{path} ({answer:?}): expected {expected}, got {}",
                    r.summary()
                ),
            );
        }
        checks.check(
            rls.calls_with(marker) > before,
            format!("{prefix}: the service never got its call"),
        );
    }

    check_control(&mut checks, "after the faults");

    // Shadow mode: OVER_LIMIT refuses an enforcing route with 429 and Retry-After, and is
    // only recorded on a shadowed one; so is a failure of the service on a shadowed route.
    let r = gw.get("/rl/over", None);
    checks.check(
        r.status == 429
            && r.error_code().as_deref() == Some("rate_limited")
            && r.header("retry-after").is_some(),
        format!(
            "/rl/over: expected 429 rate_limited with Retry-After, got {}",
            r.summary()
        ),
    );
    for (path, reason) in [
        ("/rl/shadow/over", "rate_limited"),
        ("/rl/shadow/malformed", "rate_limit_unavailable"),
    ] {
        let r = gw.get(path, None);
        checks.check(
            r.status == 200 && r.json().is_some_and(|j| j["name"] == "upstream"),
            format!(
                "{path} (shadowed route): expected 200 from the upstream, got {}",
                r.summary()
            ),
        );
        // The refusal is recorded: the audit line says shadow_deny with the reason (a failure
        // of the service refuses nothing to record when the failure mode lets requests pass).
        let (decision, reason) = match (reason, failure_mode_deny) {
            ("rate_limit_unavailable", false) => ("allow", "public"),
            (reason, _) => ("shadow_deny", reason),
        };
        let audit = gw.envoy.wait_for_log(
            |l| l.contains(&format!(" {}:", gw.vm)) && l.contains(&format!("\"path\":\"{path}\"")),
            1,
            Duration::from_secs(5),
        );
        checks.check(
            audit.iter().any(|l| {
                l.contains(&format!("\"decision\":\"{decision}\""))
                    && l.contains(&format!("\"reason\":\"{reason}\""))
            }),
            format!("{path}: expected an audit line with decision {decision} and reason {reason}, got {audit:?}"),
        );
    }
    gw.check_public(&mut checks, "at the end");
    gw.check_vms_alive(&mut checks);
    for line in gw.log_lines("rate") {
        if !line.contains("\"route\"") {
            checks.note(line);
        }
    }
    checks.note(format!(
        "Envoy's cluster stats: {}",
        gw.cluster_stats(&format!("rls-{}", gw.vm))
    ));
    checks
}

#[test]
fn rate_limit_service_faults() {
    let rls = FakeRls::start(RlsAnswer::Ok).unwrap();
    for (_, marker, answer) in RATE_LIMITED {
        rls.answer_when(marker, answer);
    }
    let modes = [
        (true, "rl-fail-closed", "control-closed"),
        (false, "rl-fail-open", "control-open"),
    ];
    for (_, _, control) in modes {
        rls.answer_when(control, RlsAnswer::Ok);
    }
    rls.answer_when(OVER_LIMIT, RlsAnswer::OverLimit);
    // A cluster per group, pointing at the same service: a connection the service resets
    // carries only that group's calls.
    let groups: Vec<(String, String)> = modes
        .iter()
        .map(|(deny, vm, control)| {
            let config = rate_limit_config(*deny, &format!("rls-{vm}"), control);
            ((*vm).to_owned(), config.to_string())
        })
        .collect();
    let clusters = modes
        .iter()
        .map(|(_, vm, _)| bootstrap::cluster(&format!("rls-{vm}"), rls.addr(), Protocol::Http2))
        .collect();
    let (envoy, _upstream) = start_envoy(&groups, clusters);
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = modes
            .iter()
            .map(|&(deny, vm, control)| {
                let (envoy, rls) = (&envoy, &rls);
                s.spawn(move || rate_limit_group(&Gateway::new(envoy, vm), rls, deny, control))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    report(results);
}
