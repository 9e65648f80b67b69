//! Request protection of the real filter (portcullis.wasm) in `portcullis-host` over loopback:
//! each refusal's status, headers and JSON body as a client sees it, the client address from
//! `X-Forwarded-For` with trusted hops, the burst guard shared by two worker VMs, and body
//! limits on a streamed body. The wasm comes from `PORTCULLIS_WASM` (else `make build`'s).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use support::*;

fn config() -> Value {
    json!({
        "schemas": {"order": {"type": "object", "required": ["sku", "quantity"],
            "properties": {"sku": {"type": "string"}, "quantity": {"type": "integer", "minimum": 1}}}},
        "client_ip": {"xff_num_trusted_hops": 1},
        "limits": {"max_uri_bytes": 200, "max_headers": 30, "max_query_params": 5},
        "routes": [
            {"name": "internal", "match": {"prefix": "/internal"}, "public": true,
             "ip_filter": {"allow": ["192.0.2.0/24"]}},
            {"name": "blocked", "match": {"prefix": "/blocked"}, "public": true,
             "ip_filter": {"deny": ["198.51.100.0/24"]}},
            {"name": "burst", "match": {"prefix": "/burst"}, "public": true,
             "burst": {"requests_per_second": 0.01, "burst": 3}},
            {"name": "upload", "match": {"prefix": "/upload"}, "public": true,
             "allowed_methods": ["POST"], "content_types": ["application/json"],
             "limits": {"max_body_bytes": 64}},
            {"name": "orders", "match": {"prefix": "/orders"}, "public": true,
             "body_schemas": [{"methods": ["POST"], "schema": "order"}]},
            {"name": "comments", "match": {"prefix": "/comments"}, "public": true,
             "inspection": {"mode": "block"}},
            {"name": "rest", "public": true}
        ]
    })
}

struct Setup {
    host: Host,
    addr: SocketAddr,
    _echo: EchoServer,
}

/// The host with two workers, the filter, and an edge connection manager
/// (`use_remote_address: true`, as the filter's `xff_num_trusted_hops` expects).
fn setup() -> Setup {
    let echo = echo("svc");
    let (port, admin) = (free_port(), free_port());
    let mut l = listener(
        "ingress",
        port,
        vec![wasm_filter(
            "portcullis",
            &filter_wasm(),
            &config().to_string(),
            false,
        )],
        vec![route("/", "svc")],
        None,
    );
    l["filter_chains"][0]["filters"][0]["typed_config"]["use_remote_address"] = json!(true);
    let yaml = bootstrap(vec![l], vec![cluster("svc", echo.addr(), false)], admin);
    let host = Host::start_with(&yaml, admin, 2);
    Setup {
        host,
        addr: ([127, 0, 0, 1], port).into(),
        _echo: echo,
    }
}

#[track_caller]
fn refused(r: &Resp, status: u16, error: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    let body = r.json();
    assert_eq!(body["error"], error, "{body}");
    assert!(body["request_id"].as_str().is_some_and(|s| !s.is_empty()));
}

#[test]
fn protection_refusals_over_http() {
    let s = setup();
    let addr = s.addr;
    let get = |path: &str, headers: &[(&str, &[u8])]| request(addr, "GET", path, headers, b"");

    // Passes, and the upstream gets the request.
    let r = get("/anything?a=1", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["name"], "svc");

    // 414, 431, 400 from the global limits.
    refused(
        &get(&format!("/{}", "a".repeat(250)), &[]),
        414,
        "uri_too_long",
    );
    let many: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| (format!("x-h{i}"), b"v".to_vec()))
        .collect();
    let many: Vec<(&str, &[u8])> = many
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    refused(&get("/x", &many), 431, "too_many_headers");
    refused(
        &get("/x?a=1&b=2&c=3&d=4&e=5&f=6", &[]),
        400,
        "too_many_query_parameters",
    );

    // 405 with Allow; 415 with Accept; 413 on the declared length.
    let r = get("/upload", &[]);
    refused(&r, 405, "method_not_allowed");
    assert_eq!(r.header("allow").as_deref(), Some("POST"));
    let r = request(
        addr,
        "POST",
        "/upload",
        &[("content-type", b"text/xml")],
        b"<a/>",
    );
    refused(&r, 415, "unsupported_media_type");
    assert_eq!(r.header("accept").as_deref(), Some("application/json"));
    let big = vec![b' '; 100];
    let json_ct: &[(&str, &[u8])] = &[("content-type", b"application/json")];
    refused(
        &request(addr, "POST", "/upload", json_ct, &big),
        413,
        "body_too_large",
    );
    let r = request(addr, "POST", "/upload", json_ct, br#"{"ok": true}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["body"], r#"{"ok": true}"#);
    // A streamed body without a length is counted as it passes.
    let chunk = [b' '; 40];
    let r = request_chunks(
        addr,
        "POST",
        "/upload",
        json_ct,
        &[&chunk, &chunk, &chunk],
        Duration::from_millis(30),
    );
    refused(&r, 413, "body_too_large");

    // Inspection: an attack in the query is refused at header time; one in a JSON body after
    // the whole body was read (sent in chunks), and nothing reaches the service; prose passes.
    refused(
        &get(
            "/comments?q=1%27%20UNION%20SELECT%20password%20FROM%20users--",
            &[],
        ),
        403,
        "suspicious_request",
    );
    let r = request_chunks(
        addr,
        "POST",
        "/comments",
        json_ct,
        &[
            br#"{"text": "nice post", "#,
            br#""html": "<script>alert(1)</script>"}"#,
        ],
        Duration::from_millis(30),
    );
    refused(&r, 403, "suspicious_request");
    let prose = br#"{"text": "O'Brien's order: don't ship before 5 - 3 = 2 days"}"#;
    let r = request(addr, "POST", "/comments", json_ct, prose);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["body"], std::str::from_utf8(prose).unwrap());
    let r = request(addr, "POST", "/comments", json_ct, b"{\"text\": ");
    refused(&r, 400, "invalid_body");

    // JSON Schema: violations listed in the 400 body; a valid order reaches the service.
    let r = request(
        addr,
        "POST",
        "/orders",
        json_ct,
        br#"{"sku": "A-1", "quantity": 0}"#,
    );
    refused(&r, 400, "schema_violation");
    let details = r.json()["details"].clone();
    assert_eq!(details[0]["instance_path"], "/quantity", "{details}");
    assert_eq!(details[0]["keyword"], "minimum", "{details}");
    let r = request(
        addr,
        "POST",
        "/orders",
        json_ct,
        br#"{"sku": "A-1", "quantity": 2}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // The client address: the peer is loopback (not allowed); one trusted hop makes the
    // X-Forwarded-For entry the client; an entry a client prepends is not reached.
    refused(&get("/internal", &[]), 403, "ip_denied");
    let r = get("/internal", &[("x-forwarded-for", b"192.0.2.5")]);
    assert_eq!(r.status, 200, "{}", r.text());
    refused(
        &get(
            "/internal",
            &[("x-forwarded-for", b"192.0.2.5, 203.0.113.1")],
        ),
        403,
        "ip_denied",
    );
    refused(
        &get("/internal", &[("x-forwarded-for", b"192.0.2.5:80")]),
        403,
        "ip_denied",
    );
    refused(
        &get("/blocked", &[("x-forwarded-for", b"198.51.100.7")]),
        403,
        "ip_denied",
    );
    assert_eq!(
        get("/blocked", &[("x-forwarded-for", b"192.0.2.5")]).status,
        200
    );

    // The burst guard: three requests, then 429 with Retry-After, whichever of the two
    // workers takes the connection (one bucket in shared data).
    let client: &[(&str, &[u8])] = &[("x-forwarded-for", b"192.0.2.77")];
    for i in 0..3 {
        let r = get("/burst", client);
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    for _ in 0..4 {
        let r = get("/burst", client);
        refused(&r, 429, "burst_limited");
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=100).contains(&retry), "{retry}");
    }
    // Another client is not affected.
    assert_eq!(
        get("/burst", &[("x-forwarded-for", b"192.0.2.78")]).status,
        200
    );

    // The audit lines name the reasons and the client address the checks used.
    let lines = s.host.wait_lines(
        |l| l.contains("\"reason\":\"burst_limited\""),
        4,
        Duration::from_secs(10),
    );
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains("\"client_ip\":\"192.0.2.77\"")),
        "{lines:#?}"
    );
    let denied = s.host.wait_lines(
        |l| l.contains("\"reason\":\"ip_denied\""),
        4,
        Duration::from_secs(10),
    );
    assert_eq!(denied.len(), 4, "{denied:#?}");
}
