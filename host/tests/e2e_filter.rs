//! The real filter (portcullis.wasm) in `portcullis-host`, over real HTTP on loopback: what a
//! client and an upstream service see, and what the operator sees (exit codes, audit lines).
//! The wasm comes from `PORTCULLIS_WASM` (else the workspace's release build: `make build`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use portcullis::jwt::{Algorithm, b64};
use portcullis::mint::SigningKey;
use serde_json::{Value, json};
use std::time::Duration;
use support::*;

const API_KEY: &str = "e2e-key-0123456789";
const SECRET: &[u8] = b"an-hs256-secret-of-32-bytes-min!";
const ISSUER: &str = "https://id.e2e.test";
const AUDIENCE: &str = "e2e-api";

fn config() -> Value {
    json!({
        "realm": "e2e",
        "providers": {
            "corp": {
                "issuer": ISSUER,
                "audiences": [AUDIENCE],
                "local_jwks": {"keys": [{"kty": "oct", "kid": "k1", "alg": "HS256", "k": b64::encode(SECRET)}]},
                "claim_to_headers": [{"header_name": "x-tenant", "claim_name": "tenant"}]
            },
            "partners": {
                "type": "api_key",
                "from_headers": ["x-api-key"],
                "keys": [{"consumer": "acme", "sha256": portcullis::apikey::hash_hex(API_KEY), "scopes": ["orders:read"]}]
            }
        },
        "routes": [
            {"name": "health", "match": {"path": "/healthz"}, "public": true},
            {"name": "orders", "match": {"prefix": "/orders"}, "requires": ["corp", "partners"], "scopes": ["orders:read"]},
            {"name": "admin", "match": {"prefix": "/admin"}, "requires": ["corp"], "claims": [{"name": "role", "equals": "admin"}]},
            {"name": "shadow", "match": {"prefix": "/shadow"}, "requires": ["corp"], "shadow": true}
        ]
    })
}

fn token(claims: Value) -> String {
    let now = unix_now();
    let mut base =
        json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 300});
    for (k, v) in claims.as_object().unwrap() {
        base[k] = v.clone();
    }
    SigningKey::hmac(SECRET, Algorithm::HS256)
        .unwrap()
        .with_kid("k1")
        .sign(&base)
        .unwrap()
}

struct Setup {
    host: Host,
    port: u16,
    _echo: EchoServer,
}

fn setup(configuration: &str) -> Result<Setup, Exited> {
    let stack = filter_stack(configuration, Vec::new());
    Host::try_start(&stack.yaml, stack.admin).map(|host| Setup {
        host,
        port: stack.addr.port(),
        _echo: stack.echo,
    })
}

fn audit_lines(host: &Host) -> Vec<Value> {
    host.stderr()
        .iter()
        .filter_map(|l| {
            l.split_once("wasm log portcullis portcullis portcullis: ")
                .map(|(_, j)| j)
        })
        .filter(|j| j.starts_with('{'))
        .filter_map(|j| serde_json::from_str(j).ok())
        .collect()
}

/// One host for the request paths (starting a host compiles the filter, which is slow in a
/// debug build); each check fails on its own message.
#[test]
fn filter_paths_over_http() {
    let s = setup(&config().to_string()).unwrap_or_else(|e| panic!("{e:?}"));
    let addr = ([127, 0, 0, 1], s.port).into();

    // Allowed with an API key: identity headers upstream, the key stripped.
    let r = request(
        addr,
        "GET",
        "/orders/7",
        &[("x-api-key", API_KEY.as_bytes())],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let echoed = r.json();
    assert_eq!(echoed["name"], "orders");
    assert_eq!(echoed["path"], "/orders/7");
    let h = &echoed["headers"];
    assert_eq!(h["x-portcullis-consumer"], "acme", "{h}");
    assert_eq!(h["x-portcullis-provider"], "partners", "{h}");
    assert!(h.get("x-api-key").is_none(), "credential stripped: {h}");
    assert!(
        h.get("x-request-id").is_some(),
        "Envoy adds x-request-id: {h}"
    );
    assert_eq!(h["x-forwarded-proto"], "http");

    // Allowed with a JWT: subject and claim headers, Authorization stripped; a spoofed
    // identity header is removed.
    let t = token(json!({"scope": "orders:read", "tenant": "t1"}));
    let r = request(
        addr,
        "GET",
        "/orders/1",
        &[
            ("authorization", format!("Bearer {t}").as_bytes()),
            ("x-portcullis-subject", b"mallory"),
        ],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let h = r.json()["headers"].clone();
    assert_eq!(h["x-portcullis-subject"], "alice", "{h}");
    assert_eq!(h["x-tenant"], "t1", "{h}");
    assert!(h.get("authorization").is_none(), "{h}");

    // 401 without credentials: JSON body, WWW-Authenticate, never reaches the echo.
    let r = request(addr, "GET", "/orders/1", &[], b"");
    assert_eq!(r.status, 401, "{}", r.text());
    let www = r.header("www-authenticate").expect("www-authenticate");
    assert!(www.contains("realm=\"e2e\""), "{www}");
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    let body = r.json();
    assert_eq!(body["error"], "missing_credentials");
    assert!(body["request_id"].as_str().is_some_and(|s| !s.is_empty()));

    // 401 with a wrong key.
    let r = request(addr, "GET", "/orders/1", &[("x-api-key", b"nope")], b"");
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "invalid_api_key");

    // 403: a valid token without the claim.
    let t = token(json!({"role": "user"}));
    let r = request(
        addr,
        "GET",
        "/admin/x",
        &[("authorization", format!("Bearer {t}").as_bytes())],
        b"",
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "forbidden");
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("insufficient_scope")
    );

    // Shadow: refused but passes.
    let r = request(addr, "GET", "/shadow/x", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["path"], "/shadow/x");

    // No route in the filter → 403 no_route; public route passes.
    let r = request(addr, "GET", "/elsewhere", &[], b"");
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "no_route");
    let r = request(addr, "GET", "/healthz", &[], b"");
    assert_eq!(r.status, 200);

    // A header value that is not UTF-8 must not kill the VM: refused or not, the next
    // request still works.
    let r = request(
        addr,
        "GET",
        "/orders/1",
        &[("x-api-key", b"\xff\xfe-not-utf8")],
        b"",
    );
    assert_eq!(r.status, 401, "{}", r.text());
    let r = request(
        addr,
        "GET",
        "/orders/2",
        &[("x-api-key", API_KEY.as_bytes())],
        b"",
    );
    assert_eq!(
        r.status,
        200,
        "VM still alive after a non-UTF-8 header: {}",
        r.text()
    );

    // One audit line per request (10 so far). Connections spread over two workers, so the
    // lines are compared per path, not in order.
    let lines = s.host.wait_lines(
        |l| l.contains("wasm log portcullis") && l.contains("\"decision\""),
        10,
        Duration::from_secs(10),
    );
    assert_eq!(lines.len(), 10, "{lines:#?}");
    let audits = audit_lines(&s.host);
    let mut got: Vec<(String, String)> = audits
        .iter()
        .map(|a| {
            (
                a["path"].as_str().unwrap_or("").to_owned(),
                a["decision"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    got.sort();
    let mut want: Vec<(String, String)> = [
        ("/orders/7", "allow"),
        ("/orders/1", "allow"),
        ("/orders/1", "deny"),
        ("/orders/1", "deny"),
        ("/admin/x", "deny"),
        ("/shadow/x", "shadow_deny"),
        ("/elsewhere", "deny"),
        ("/healthz", "allow"),
        ("/orders/1", "deny"),
        ("/orders/2", "allow"),
    ]
    .iter()
    .map(|(p, d)| ((*p).to_owned(), (*d).to_owned()))
    .collect();
    want.sort();
    assert_eq!(got, want);
    let first = audits.iter().find(|a| a["path"] == "/orders/7").unwrap();
    assert_eq!(first["status"], 200);
    assert_eq!(first["client_ip"], "127.0.0.1");
    assert_eq!(first["consumer"], "acme");

    // Envoy-named counters.
    assert_eq!(s.host.counter("http.ingress.downstream_rq_total"), 10);
    assert_eq!(s.host.counter("http.ingress.downstream_rq_2xx"), 5);
    assert_eq!(s.host.counter("http.ingress.downstream_rq_4xx"), 5);
    assert_eq!(s.host.counter("cluster.orders.upstream_rq_total"), 5);
    assert_eq!(s.host.counter("cluster.orders.upstream_rq_200"), 5);
    assert!(
        s.host.counter(&format!(
            "listener.127.0.0.1_{}.downstream_cx_total",
            s.port
        )) >= 10
    );
}

#[test]
fn bad_configuration_exits_non_zero_with_the_filter_error_line() {
    let mut bad = config();
    bad["routes"][1]["requires"] = json!(["crop"]);
    let echo = echo("orders");
    let (port, admin) = (free_port(), free_port());
    let yaml = bootstrap(
        vec![listener(
            "ingress",
            port,
            vec![wasm_filter(
                "portcullis",
                &filter_wasm(),
                &bad.to_string(),
                true,
            )],
            vec![route("/", "orders")],
            None,
        )],
        vec![cluster("orders", echo.addr(), false)],
        admin,
    );
    let exited = run_to_exit(&yaml, START_DEADLINE);
    assert_eq!(exited.code, Some(1), "{:#?}", exited.stderr);
    let all = exited.stderr.join("\n");
    assert!(
        exited.stderr.iter().any(|l| l.contains("[error][wasm]")
            && l.contains("portcullis: invalid configuration")
            && l.contains("no provider is named \"crop\"")),
        "the filter's own error line: {all}"
    );
    assert!(
        all.contains("Unable to create Wasm plugin portcullis"),
        "Envoy's message: {all}"
    );
}
