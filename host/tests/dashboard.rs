//! The Grafana dashboard (`deploy/grafana/dashboards/portcullis.json`) shows data: a real
//! Prometheus (Debian's `prometheus`) scrapes the demo stack (support::demo: envoy/envoy.yaml run
//! by portcullis-host, the rate-limit service on a real redis-server) and a real redis_exporter
//! (Debian's `prometheus-redis-exporter`) with the jobs of `deploy/prometheus/prometheus.yml`,
//! while a bounded traffic mix runs over several scrapes: allowed requests, every refusal reason
//! the dashboard breaks down (missing, invalid and insufficient credentials, claim mismatch, two
//! attack categories, body refusals, the per-user limit's 429), upstream 4xx/5xx and slow
//! answers, and a Redis stall that makes the rate-limit service's store time out. Then every
//! PromQL expression of the dashboard (rows' nested panels included) is run through Prometheus'
//! HTTP API with Grafana's variables substituted, and each must return data; the route
//! variable's values must exist; the Loki panel must read the audit stream
//! (`job="portcullis-audit"`, datasource uid `loki`) and filter on a field the filter's audit
//! records have. `make setup` installs the Debian packages.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use portcullis_ratelimit::server::StoreSettings;
use portcullis_ratelimit::store::redis::RedisOptions;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::demo::{DEMO_API_KEY, Demo, repo_file, sample};
use support::*;

/// Prometheus' scrape and evaluation interval here (the demo stack's is 10 s).
const SCRAPE_INTERVAL: &str = "1s";
/// What Grafana's `$__rate_interval` and `$__range` become: windows that cover the whole
/// traffic mix, which ends a few scrapes before the queries.
const RATE_INTERVAL: &str = "30s";
const RANGE: &str = "5m";

/// A process this test started; killed on drop. Its output goes to `<dir>/<name>.log`.
struct Proc {
    child: Child,
    name: &'static str,
    log: std::path::PathBuf,
}

impl Proc {
    fn spawn(
        name: &'static str,
        program: &str,
        package: &str,
        args: &[String],
        dir: &Path,
    ) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(program)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{program} must be installed (make setup installs Debian's {package}): {e}")
            });
        Proc { child, name, log }
    }

    /// The last lines of its output, for failure messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Waits (bounded) until `GET path` on `addr` answers 200 and `ok(body)`.
    fn wait_ready(&mut self, addr: SocketAddr, path: &str, ok: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited with {status}:\n{}", self.name, self.log_tail());
            }
            if let Ok(r) = try_request(addr, "GET", path, &[], b"")
                && r.status == 200
                && ok(&r.text())
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready on {addr}{path} after 20 s:\n{}",
                self.name,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGSTOP / SIGCONT to this process (by its id).
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {}", self.name);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn loopback(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

/// A redis-server without persistence on a free loopback port.
fn redis(dir: &Path) -> (Proc, u16) {
    let port = free_port();
    let args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let proc = Proc::spawn("redis", "redis-server", "redis-server", &args, dir);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pong(port) {
        assert!(
            Instant::now() < deadline,
            "redis-server did not answer PING"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    (proc, port)
}

fn pong(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(loopback(port)) else {
        return false;
    };
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// deploy/prometheus/prometheus.yml with its targets (compose service names) pointed at the
/// local processes and a 1 s interval.
fn prometheus_config(targets: &HashMap<&str, SocketAddr>) -> String {
    let text = std::fs::read_to_string(repo_file("deploy/prometheus/prometheus.yml")).unwrap();
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    doc["global"]["scrape_interval"] = SCRAPE_INTERVAL.into();
    doc["global"]["scrape_timeout"] = SCRAPE_INTERVAL.into();
    doc["global"]["evaluation_interval"] = SCRAPE_INTERVAL.into();
    for job in doc["scrape_configs"].as_sequence_mut().unwrap() {
        let name = job["job_name"].as_str().unwrap().to_owned();
        // Per-job intervals of the file would slow the test down; the global one applies.
        if let Some(map) = job.as_mapping_mut() {
            map.remove("scrape_interval");
            map.remove("scrape_timeout");
        }
        for sc in job["static_configs"].as_sequence_mut().unwrap() {
            for t in sc["targets"].as_sequence_mut().unwrap() {
                let host = t.as_str().unwrap().split(':').next().unwrap().to_owned();
                let local = targets.get(host.as_str()).unwrap_or_else(|| {
                    panic!("job {name}: no local process for target {t:?} of prometheus.yml")
                });
                *t = local.to_string().into();
            }
        }
    }
    serde_yaml::to_string(&doc).unwrap()
}

/// RFC 3986 percent-encoding of a query parameter value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET /api/v1/<what>` on Prometheus; the `data` of a successful answer.
fn api(prometheus: SocketAddr, what: &str) -> Value {
    let r = request(prometheus, "GET", &format!("/api/v1/{what}"), &[], b"");
    let body = r.json();
    assert_eq!(
        (r.status, body["status"].as_str()),
        (200, Some("success")),
        "{what}: {body}"
    );
    body["data"].clone()
}

/// The series an instant query returns.
fn query(prometheus: SocketAddr, expr: &str) -> Vec<Value> {
    let data = api(prometheus, &format!("query?query={}", encode(expr)));
    match data["resultType"].as_str() {
        Some("vector" | "matrix") => data["result"].as_array().unwrap().clone(),
        // A scalar or string is one value.
        _ => vec![data["result"].clone()],
    }
}

/// One query of a panel.
#[derive(Debug)]
struct Query {
    panel: String,
    ref_id: String,
    datasource: Value,
    expr: String,
}

/// Every target of every panel, rows' nested panels included.
fn queries(panels: &[Value], out: &mut Vec<Query>) {
    for p in panels {
        if let Some(nested) = p["panels"].as_array() {
            queries(nested, out);
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            let datasource = if t["datasource"].is_object() {
                t["datasource"].clone()
            } else {
                p["datasource"].clone()
            };
            out.push(Query {
                panel: p["title"].as_str().unwrap_or_default().to_owned(),
                ref_id: t["refId"].as_str().unwrap_or_default().to_owned(),
                datasource,
                expr: t["expr"].as_str().unwrap_or_default().to_owned(),
            });
        }
    }
}

/// Every panel, rows' nested panels included.
fn all_panels(panels: &[Value]) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in panels {
        out.push(p);
        if let Some(nested) = p["panels"].as_array() {
            out.extend(all_panels(nested));
        }
    }
    out
}

/// Grafana's variables (`$name`, `${name}`, `${name:fmt}`, `[[name]]`) replaced by `values`;
/// an unknown variable fails the test.
fn substitute(expr: &str, values: &HashMap<String, String>) -> String {
    let re = regex::Regex::new(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)").unwrap();
    re.replace_all(expr, |c: &regex::Captures<'_>| {
        let name = c.get(1).or(c.get(2)).or(c.get(3)).unwrap().as_str();
        values
            .get(name)
            .unwrap_or_else(|| panic!("unknown variable ${name} in {expr}"))
            .clone()
    })
    .into_owned()
}

/// The dashboard's template variables: each a Prometheus `label_values(metric, label)` query
/// whose values exist; the value an expression gets for it (its "All" value).
fn template_variables(dashboard: &Value, prometheus: SocketAddr) -> HashMap<String, String> {
    let mut values = HashMap::new();
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = v["name"].as_str().unwrap().to_owned();
        assert_eq!(v["type"], "query", "variable {name}");
        assert_eq!(v["datasource"]["uid"], "prometheus", "variable {name}");
        let definition = v["definition"].as_str().unwrap();
        let inner = definition
            .strip_prefix("label_values(")
            .and_then(|d| d.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {name}: {definition}"));
        let (metric, label) = inner.rsplit_once(',').unwrap();
        let found = api(
            prometheus,
            &format!(
                "label/{}/values?match[]={}",
                label.trim(),
                encode(metric.trim())
            ),
        );
        assert!(
            !found.as_array().unwrap().is_empty(),
            "variable {name}: {definition} has no values"
        );
        let all = v["allValue"].as_str().unwrap_or(".*").to_owned();
        assert_eq!(v["includeAll"], true, "variable {name}");
        values.insert(name, all);
    }
    values
}

/// Everything the dashboard shows, over one scrape interval: allowed requests on every route,
/// each refusal reason, an attack of two categories, body refusals, upstream 404/503 and slow
/// answers.
fn traffic_round(demo: &Demo, tokens: &Tokens, round: usize) {
    let ok = |r: Resp, status: u16, what: &str| {
        assert_eq!(r.status, status, "round {round}, {what}: {}", r.text());
    };
    ok(demo.https("GET", "/healthz", &[], b""), 200, "health");
    for i in 0..3 {
        ok(
            demo.get_as(&tokens.alice, &format!("/api/orders/{i}")),
            200,
            "alice",
        );
    }
    ok(demo.get_as(&tokens.bob, "/api/orders/7"), 200, "bob (beta)");
    ok(
        demo.https("GET", "/api/orders/9", &[("x-api-key", DEMO_API_KEY)], b""),
        200,
        "API key",
    );
    ok(
        demo.https(
            "GET",
            "/api/orders/3",
            &[
                ("authorization", &format!("Bearer {}", tokens.alice)),
                ("x-echo-delay-ms", "30"),
            ],
            b"",
        ),
        200,
        "slow service",
    );
    let json_post = |token: &str, content_type: &str, body: &[u8]| {
        demo.https(
            "POST",
            "/api/orders",
            &[
                ("authorization", &format!("Bearer {token}")),
                ("content-type", content_type),
            ],
            body,
        )
    };
    ok(
        json_post(&tokens.writer, "application/json", b"{\"item\":1}"),
        200,
        "write",
    );
    ok(
        demo.https("GET", "/api/catalog/items", &[], b""),
        200,
        "catalog",
    );
    ok(
        demo.https("GET", "/api/catalog/x", &[("x-echo-status", "503")], b""),
        503,
        "catalog 503",
    );
    ok(
        demo.https("GET", "/api/catalog/x", &[("x-echo-status", "404")], b""),
        404,
        "catalog 404",
    );
    // Refusals.
    ok(
        demo.https("GET", "/api/orders/1", &[], b""),
        401,
        "anonymous",
    );
    ok(
        demo.get_as("not-a-token", "/api/orders/1"),
        401,
        "bad token",
    );
    ok(
        demo.https("GET", "/api/orders/1", &[("x-api-key", "wrong-key")], b""),
        401,
        "bad API key",
    );
    ok(
        json_post(&tokens.alice, "application/json", b"{}"),
        403,
        "scope",
    );
    ok(demo.get_as(&tokens.alice, "/api/admin/users"), 403, "role");
    ok(
        demo.https(
            "GET",
            "/api/catalog/search?q=1%27%20UNION%20SELECT%20password%20FROM%20users--",
            &[],
            b"",
        ),
        403,
        "SQL injection",
    );
    ok(
        demo.https(
            "GET",
            "/api/catalog/search?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E",
            &[],
            b"",
        ),
        403,
        "XSS",
    );
    ok(
        json_post(&tokens.writer, "text/plain", b"hello"),
        415,
        "content type",
    );
    ok(
        json_post(&tokens.writer, "application/json", b"{\"item\":"),
        400,
        "invalid JSON body",
    );
}

struct Tokens {
    alice: String,
    bob: String,
    writer: String,
}

/// Requests of one user until the per-user limit (60 a minute) answers 429: at most 121, as
/// the loop may cross the start of a window (windows are aligned to the minute).
fn until_429(demo: &Demo) {
    let carol = demo.token("carol", "orders:read", json!({"tenant": "acme"}));
    for _ in 0..=120 {
        let r = demo.get_as(&carol, "/api/orders/1");
        if r.status == 429 {
            return;
        }
        assert_eq!(r.status, 200, "{}", r.text());
    }
    panic!("no 429 after 121 requests of one user (60 per minute)");
}

/// Redis stopped for longer than the store's timeout while requests come: the rate-limit
/// service's store times out (`ratelimit_store_errors_total{name="timeout"}`), it answers
/// UNAVAILABLE, and the demo's filter fails closed (503, `outcome="error"`).
fn redis_stall(demo: &Demo, redis: &Proc, tokens: &Tokens) {
    redis.signal("-STOP");
    for _ in 0..3 {
        let r = demo.get_as(&tokens.alice, "/api/orders/5");
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.json()["error"], "rate_limit_unavailable");
    }
    redis.signal("-CONT");
}

#[test]
fn every_dashboard_query_returns_data() {
    let started = Instant::now();
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_file("deploy/grafana/dashboards/portcullis.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(dashboard["uid"], "portcullis");
    let schema = dashboard["schemaVersion"].as_u64().unwrap();
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = std::collections::HashSet::new();
    for p in all_panels(panels) {
        let id = p["id"].as_u64().unwrap();
        assert!(ids.insert(id), "panel id {id} twice");
        assert!(p["gridPos"]["w"].as_u64().is_some(), "{p}");
    }
    let mut all = Vec::new();
    queries(panels, &mut all);
    let (loki, promql): (Vec<Query>, Vec<Query>) = all
        .into_iter()
        .partition(|q| q.datasource["type"] == "loki");
    for q in &promql {
        assert_eq!(
            q.datasource,
            json!({"type": "prometheus", "uid": "prometheus"}),
            "{q:?}"
        );
        assert!(!q.expr.trim().is_empty(), "empty query: {q:?}");
    }

    let dir = TempDir::new();
    let (redis, redis_port) = redis(&dir.0);
    let demo = Demo::start_with(StoreSettings::Redis(RedisOptions {
        urls: vec![format!("redis://127.0.0.1:{redis_port}")],
        cluster: false,
        // Below the filter's 100 ms, so that a stalled Redis is the service's store error.
        timeout: Duration::from_millis(50),
    }));
    let exporter_addr = loopback(free_port());
    let mut exporter = Proc::spawn(
        "redis_exporter",
        "prometheus-redis-exporter",
        "prometheus-redis-exporter",
        &[
            format!("-redis.addr=redis://127.0.0.1:{redis_port}"),
            format!("-web.listen-address={exporter_addr}"),
        ],
        &dir.0,
    );
    exporter.wait_ready(exporter_addr, "/metrics", |t| t.contains("redis_up 1"));
    let prometheus_addr = loopback(free_port());
    let targets = HashMap::from([
        ("envoy", demo.admin),
        ("portcullis-ratelimit", demo.ratelimit_metrics),
        ("redis-exporter", exporter_addr),
        ("prometheus", prometheus_addr),
    ]);
    std::fs::write(dir.0.join("prometheus.yml"), prometheus_config(&targets)).unwrap();
    let mut prometheus = Proc::spawn(
        "prometheus",
        "prometheus",
        "prometheus",
        &[
            format!("--config.file={}", dir.0.join("prometheus.yml").display()),
            format!("--storage.tsdb.path={}", dir.0.join("tsdb").display()),
            format!("--web.listen-address={prometheus_addr}"),
            "--log.level=warn".to_owned(),
        ],
        &dir.0,
    );
    prometheus.wait_ready(prometheus_addr, "/-/ready", |_| true);
    // Prometheus applies its targets a few seconds after it starts (the scrape manager's
    // reload tick): the traffic starts once every target has been scraped.
    let deadline = Instant::now() + Duration::from_secs(20);
    while query(prometheus_addr, "up").len() < targets.len() {
        assert!(
            Instant::now() < deadline,
            "Prometheus has not scraped every target after 20 s:\n{}",
            prometheus.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ready = started.elapsed();

    // The traffic mix, one round per scrape interval; the per-user limit and the Redis stall
    // in the middle rounds.
    let tokens = Tokens {
        alice: demo.token("alice", "orders:read", json!({"tenant": "acme"})),
        bob: demo.token("bob", "orders:read", json!({"tenant": "globex"})),
        writer: demo.token(
            "wanda",
            "orders:read orders:write",
            json!({"tenant": "acme"}),
        ),
    };
    let traffic = Instant::now();
    for round in 0..4 {
        let round_start = Instant::now();
        traffic_round(&demo, &tokens, round);
        match round {
            1 => until_429(&demo),
            2 => redis_stall(&demo, &redis, &tokens),
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(1100).saturating_sub(round_start.elapsed()));
    }
    let traffic = traffic.elapsed();

    // The host renders Envoy's cluster stats as Envoy does (default tag extractors).
    let text = demo.prometheus();
    for (name, labels) in [
        (
            "envoy_cluster_upstream_rq",
            vec![
                ("envoy_response_code", "200"),
                ("envoy_cluster_name", "orders"),
            ],
        ),
        (
            "envoy_cluster_upstream_rq_xx",
            vec![
                ("envoy_response_code_class", "5"),
                ("envoy_cluster_name", "catalog"),
            ],
        ),
        (
            "envoy_cluster_upstream_rq_time_count",
            vec![("envoy_cluster_name", "orders_beta")],
        ),
        // The filter's calls to the rate-limit service count as Envoy's async client does.
        (
            "envoy_cluster_upstream_rq_xx",
            vec![
                ("envoy_response_code_class", "2"),
                ("envoy_cluster_name", "ratelimit"),
            ],
        ),
        (
            "envoy_http_downstream_rq_xx",
            vec![
                ("envoy_response_code_class", "4"),
                ("envoy_http_conn_manager_prefix", "ingress"),
            ],
        ),
    ] {
        assert!(
            sample(&text, name, &labels).is_some_and(|v| v >= 1.0),
            "{name} {labels:?}:\n{text}"
        );
    }

    // Two more scrapes after the last request, then every target has been scraped.
    let last_scrape = Instant::now();
    let deadline = last_scrape + Duration::from_secs(10);
    loop {
        let up = query(prometheus_addr, "up");
        let all_up = up.len() == targets.len() && up.iter().all(|s| s["value"][1] == "1");
        if all_up && last_scrape.elapsed() > Duration::from_millis(2500) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "scrape targets not all up: {up:?}\n{:?}",
            api(prometheus_addr, "targets")
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Prometheus saw the traffic grow over several scrapes.
    let seen = query(
        prometheus_addr,
        &format!("sum(rate(portcullis_requests_total[{RATE_INTERVAL}]))"),
    );
    assert!(
        seen.first()
            .and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok())
            .is_some_and(|v| v > 0.0),
        "no request rate in Prometheus: {seen:?}"
    );

    // Every PromQL expression returns data, and not only NaN (a histogram that never moved, a
    // ratio of nothing).
    let mut values = template_variables(&dashboard, prometheus_addr);
    values.insert("__rate_interval".into(), RATE_INTERVAL.into());
    values.insert("__interval".into(), "2s".into());
    values.insert("__range".into(), RANGE.into());
    values.insert("__range_s".into(), "300".into());
    let mut empty = Vec::new();
    for q in &promql {
        let expr = substitute(&q.expr, &values);
        let result = query(prometheus_addr, &expr);
        // Shown with --nocapture: what each panel would draw.
        let shown: Vec<String> = result
            .iter()
            .take(4)
            .map(|s| format!("{}={}", s["metric"], s["value"][1]))
            .collect();
        eprintln!(
            "{:>3} series  {} [{}]  {}",
            result.len(),
            q.panel,
            q.ref_id,
            shown.join(" ")
        );
        let finite = result.iter().any(|s| {
            let v = if s["value"].is_array() {
                &s["value"][1]
            } else {
                &s[1]
            };
            v.as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(f64::is_finite)
        });
        if result.is_empty() {
            empty.push(format!("  no data: {} [{}]: {expr}", q.panel, q.ref_id));
        } else if !finite {
            empty.push(format!("  only NaN: {} [{}]: {expr}", q.panel, q.ref_id));
        }
    }
    assert!(
        empty.is_empty(),
        "{} of {} dashboard queries show nothing:\n{}\nthe project's metrics in Prometheus: {}",
        empty.len(),
        promql.len(),
        empty.join("\n"),
        api(prometheus_addr, "label/__name__/values")
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .filter(|n| ["portcullis_", "envoy_", "ratelimit_"]
                .iter()
                .any(|p| n.starts_with(p)))
            .collect::<Vec<_>>()
            .join(" ")
    );

    // The logs panel reads the audit stream, and its filter is on a field of the audit record.
    assert!(!loki.is_empty(), "no Loki panel");
    let audit = demo
        .host
        .stderr()
        .into_iter()
        .find_map(|l| {
            let record: Value = serde_json::from_str(&l[l.find('{')?..]).ok()?;
            (record["decision"] == "deny").then_some(record)
        })
        .expect("an audit record of a refusal");
    let stream = regex::Regex::new(r"^\{([^}]*)\}").unwrap();
    let filter = regex::Regex::new(r#"\|\s*(\w+)\s*!=\s*"allow""#).unwrap();
    for q in &loki {
        assert_eq!(q.datasource["uid"], "loki", "{q:?}");
        let selector = stream
            .captures(q.expr.trim())
            .unwrap_or_else(|| panic!("no stream selector: {q:?}"))[1]
            .to_owned();
        assert!(
            selector
                .split(',')
                .any(|m| m.replace(' ', "") == "job=\"portcullis-audit\""),
            "the logs panel must read the audit stream (job=\"portcullis-audit\", as Alloy \
             ships it): {q:?}"
        );
        assert!(q.expr.contains("| json"), "{q:?}");
        let field = filter
            .captures(&q.expr)
            .unwrap_or_else(|| panic!("no refusal filter: {q:?}"))[1]
            .to_owned();
        assert!(
            audit.get(&field).is_some(),
            "audit record has no {field}: {audit}"
        );
    }
    eprintln!(
        "dashboard: {} PromQL queries and {} Loki queries checked; stack ready in {:.1?}, \
         traffic {:.1?}, total {:.1?}",
        promql.len(),
        loki.len(),
        ready,
        traffic,
        started.elapsed()
    );
}
