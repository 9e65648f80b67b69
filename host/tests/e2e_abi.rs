//! ABI behaviour end to end, with `portcullis-test-module` in `portcullis-host` over real HTTP:
//! body pause and the buffer limit, local replies, HTTP and gRPC callouts, ticks, metrics, traps,
//! and the router's own replies. The module comes from `PORTCULLIS_TEST_MODULE_WASM` (else the
//! workspace's release build: `make test-modules`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_host::proxy::body::ChannelBody;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use support::*;

fn module_filter(mode: &str, extra: Value, fail_open: bool) -> Value {
    let mut config = json!({"mode": mode});
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    wasm_filter("test", &test_module_wasm(), &config.to_string(), fail_open)
}

struct One {
    host: Host,
    addr: SocketAddr,
    _echoes: Vec<EchoServer>,
}

/// One listener with the test module in `mode`, routing `/` to an echo named `orders`, plus
/// any extra clusters.
fn one(
    mode: &str,
    extra: Value,
    fail_open: bool,
    limit: Option<u32>,
    clusters: Vec<Value>,
    concurrency: usize,
) -> One {
    let orders = echo("orders");
    let (port, admin) = (free_port(), free_port());
    let mut all = vec![cluster("orders", orders.addr(), false)];
    all.extend(clusters);
    let yaml = bootstrap(
        vec![listener(
            "ingress",
            port,
            vec![module_filter(mode, extra, fail_open)],
            vec![route("/", "orders")],
            limit,
        )],
        all,
        admin,
    );
    let host = Host::start_with(&yaml, admin, concurrency);
    One {
        host,
        addr: ([127, 0, 0, 1], port).into(),
        _echoes: vec![orders],
    }
}

fn results(host: &Host) -> Vec<String> {
    host.stderr()
        .iter()
        .filter_map(|l| l.split_once("result: ").map(|(_, r)| r.to_owned()))
        .collect()
}

#[test]
fn body_pause_redelivers_the_cumulative_body_then_413_over_the_limit() {
    let o = one("pause_request_body", json!({}), false, Some(64), vec![], 2);
    let r = request_chunks(
        o.addr,
        "POST",
        "/upload",
        &[],
        &[b"hello ", b"world"],
        Duration::from_millis(150),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["body"],
        "HELLO WORLD!",
        "replaced then appended by the module"
    );
    // The host's stderr is read by another thread: under load the module's last lines can
    // arrive after the response, so wait (bounded) for the final callback's line.
    o.host.wait_lines(
        |l| l.contains("result: request_body size=11 eos=true"),
        1,
        Duration::from_secs(10),
    );
    let res = results(&o.host);
    assert!(
        res.iter()
            .any(|l| l.starts_with("request_body size=6 eos=false")),
        "{res:#?}"
    );
    assert!(
        res.iter()
            .any(|l| l.starts_with("request_body size=11 eos=true")),
        "cumulative: {res:#?}"
    );

    let big = vec![b'x'; 40];
    let r = request_chunks(
        o.addr,
        "POST",
        "/upload",
        &[],
        &[&big, &big],
        Duration::from_millis(150),
    );
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.text(), "Payload Too Large");
}

#[test]
fn local_reply_goes_through_the_response_callbacks() {
    let o = one("local_reply_body", json!({}), false, None, vec![], 2);
    let r = request(o.addr, "POST", "/x", &[], b"some body");
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.text(), "body refused");
    assert_eq!(r.header("x-reason").as_deref(), Some("Too Big"));
    assert_eq!(r.header("x-upper").as_deref(), Some("yes"));
    let lines = o.host.wait_lines(
        |l| l.contains("result: deleted ctx="),
        1,
        Duration::from_secs(5),
    );
    assert_eq!(lines.len(), 1);
    let res = results(&o.host);
    let pos = |p: &str| {
        res.iter()
            .position(|l| l.starts_with(p))
            .unwrap_or_else(|| panic!("{p}: {res:#?}"))
    };
    assert!(pos("request_body") < pos("response_headers"), "{res:#?}");
    assert!(pos("response_headers") < pos("on_log"), "{res:#?}");
    assert!(pos("on_log") < pos("deleted ctx="), "{res:#?}");
}

#[test]
fn http_callout_to_a_cluster_success_timeout_and_connect_failure() {
    let auth = echo("auth");
    let dead = bind().local_addr().unwrap(); // closed again at once: connection refused
    let orders = echo("orders");
    let (p1, p2, admin) = (free_port(), free_port(), free_port());
    let yaml = bootstrap(
        vec![
            listener(
                "live",
                p1,
                vec![module_filter(
                    "http_call",
                    json!({"cluster": "auth"}),
                    false,
                )],
                vec![route("/", "orders")],
                None,
            ),
            listener(
                "dead",
                p2,
                vec![module_filter(
                    "http_call",
                    json!({"cluster": "dead"}),
                    false,
                )],
                vec![route("/", "orders")],
                None,
            ),
        ],
        vec![
            cluster("orders", orders.addr(), false),
            cluster("auth", auth.addr(), false),
            cluster("dead", dead, false),
        ],
        admin,
    );
    let host = Host::start(&yaml, admin);
    let live: SocketAddr = ([127, 0, 0, 1], p1).into();

    let r = request(live, "GET", "/a", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let h = r.json()["headers"].clone();
    assert_eq!(h["x-call-status"], "200", "{h}");
    let call_body: Value = serde_json::from_str(h["x-call-body"].as_str().unwrap()).unwrap();
    assert_eq!(call_body["name"], "auth");
    assert_eq!(call_body["path"], "/check");
    assert_eq!(call_body["body"], "ping");

    // The module's timeout is 1.5 s: Envoy delivers a synthetic 504.
    let r = request(live, "GET", "/a", &[("x-echo-delay-ms", b"4000")], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let h = r.json()["headers"].clone();
    assert_eq!(h["x-call-status"], "504", "{h}");
    assert_eq!(h["x-call-body"], "upstream request timeout");

    // Connection refused: a synthetic 503.
    let r = request(([127, 0, 0, 1], p2).into(), "GET", "/a", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let h = r.json()["headers"].clone();
    assert_eq!(h["x-call-status"], "503", "{h}");
    assert!(
        h["x-call-body"]
            .as_str()
            .unwrap()
            .starts_with("upstream connect error or disconnect/reset before headers"),
        "{h}"
    );
    host.wait_lines(
        |l| l.contains("result: http_call token=4"),
        1,
        Duration::from_secs(10),
    );
    let res = results(&host);
    assert!(
        res.iter().any(|l| l.starts_with("http_call token=4")),
        "root-owned token numbering: {res:#?}"
    );
}

/// A tiny gRPC server over h2c: `Check` answers `got:<request>`, `Deny` fails with
/// PERMISSION_DENIED (trailers-only), anything else UNIMPLEMENTED.
fn grpc_server() -> SocketAddr {
    let l = bind();
    let addr = l.local_addr().unwrap();
    l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            loop {
                let Ok((tcp, _)) = l.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        |req: http::Request<hyper::body::Incoming>| async move {
                            let path = req.uri().path().to_owned();
                            let md = req.headers().get("x-md").map(|v| v.as_bytes().to_vec());
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let message = body.get(5..).unwrap_or_default().to_vec();
                            let (tx, rx) = ChannelBody::channel(4);
                            let mut resp = http::Response::new(rx);
                            resp.headers_mut()
                                .insert("content-type", "application/grpc".parse().unwrap());
                            match path.as_str() {
                                "/test.Checker/Check" if md.as_deref() == Some(b"v") => {
                                    let mut reply = b"got:".to_vec();
                                    reply.extend_from_slice(&message);
                                    let mut framed = vec![0u8];
                                    framed.extend_from_slice(&(reply.len() as u32).to_be_bytes());
                                    framed.extend_from_slice(&reply);
                                    tx.try_send(Ok(Frame::data(Bytes::from(framed)))).unwrap();
                                    let mut t = http::HeaderMap::new();
                                    t.insert("grpc-status", "0".parse().unwrap());
                                    tx.try_send(Ok(Frame::trailers(t))).unwrap();
                                }
                                "/test.Checker/Deny" => {
                                    resp.headers_mut()
                                        .insert("grpc-status", "7".parse().unwrap());
                                    resp.headers_mut()
                                        .insert("grpc-message", "denied".parse().unwrap());
                                }
                                _ => {
                                    resp.headers_mut()
                                        .insert("grpc-status", "12".parse().unwrap());
                                }
                            }
                            drop(tx);
                            Ok::<_, std::convert::Infallible>(resp)
                        },
                    );
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
    });
    addr
}

#[test]
fn grpc_callout_success_and_failure() {
    let grpc = grpc_server();
    let dead = bind().local_addr().unwrap();
    let o = one(
        "grpc_call",
        json!({"cluster": "checker"}),
        false,
        None,
        vec![cluster("checker", grpc, true)],
        2,
    );
    let r = request(o.addr, "GET", "/g", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["headers"]["x-grpc-result"],
        "ok:got:request-message"
    );

    let r = request(o.addr, "GET", "/g", &[("x-grpc-method", b"Deny")], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["headers"]["x-grpc-result"], "fail:7:7:denied");
    o.host.wait_lines(
        |l| l.contains("result: grpc_call token=5"),
        1,
        Duration::from_secs(10),
    );
    let res = results(&o.host);
    assert!(
        res.iter().any(|l| l.starts_with("grpc_call token=5")),
        "{res:#?}"
    );
    drop(o);

    let o = one(
        "grpc_call",
        json!({"cluster": "checker"}),
        false,
        None,
        vec![cluster("checker", dead, true)],
        2,
    );
    let r = request(o.addr, "GET", "/g", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json()["headers"]["x-grpc-result"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(v.starts_with("fail:14:14:upstream connect error"), "{v}");
}

#[test]
fn tick_fires_on_every_worker_vm() {
    let o = one("tick", json!({}), false, None, vec![], 2);
    let ticks = o
        .host
        .wait_lines(|l| l.contains("result: tick 2"), 2, Duration::from_secs(10));
    assert_eq!(
        ticks.len(),
        2,
        "one timer per worker VM: {:#?}",
        o.host.stderr()
    );
}

#[test]
fn metrics_are_exported_in_prometheus() {
    let o = one("metrics", json!({}), false, None, vec![], 1);
    let r = request(o.addr, "GET", "/m", &[], b"");
    assert_eq!(r.status, 200);
    let text = o.host.admin("/stats/prometheus").text();
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_owned)
    };
    // +1, +0 and -3 refused, record 5 adds: 6.
    assert_eq!(value("test_requests").as_deref(), Some("6"), "{text}");
    assert_eq!(value("test_active").as_deref(), Some("42"), "{text}");
    assert!(text.contains("test_latency_count{} 1"), "{text}");
    assert!(
        o.host
            .admin("/stats")
            .text()
            .contains("wasmcustom.test.requests: 6")
    );
}

#[test]
fn trap_fails_closed_and_the_vm_stays_failed() {
    let o = one("trap", json!({}), false, None, vec![], 1);
    let r = request(o.addr, "GET", "/t", &[], b"");
    assert_eq!(r.status, 200);
    let r = request(o.addr, "GET", "/t", &[("x-trap", b"1")], b"");
    assert_eq!(r.status, 503);
    assert!(r.body.is_empty(), "fail closed: empty body");
    let r = request(o.addr, "GET", "/t", &[], b"");
    assert_eq!(r.status, 503, "the VM stays failed");
    assert!(
        o.host
            .stderr()
            .iter()
            .any(|l| l.contains("Function: proxy_on_request_headers failed"))
    );
}

#[test]
fn trap_fails_open_and_the_filter_is_skipped() {
    let o = one("trap", json!({}), true, None, vec![], 1);
    let r = request(o.addr, "GET", "/t", &[("x-trap", b"1")], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let before = results(&o.host).len();
    let r = request(o.addr, "GET", "/t", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/t");
    assert_eq!(
        results(&o.host).len(),
        before,
        "no callback into the failed VM"
    );
}

#[test]
fn router_replies_timeout_connect_failure_direct_rewrite_and_no_route() {
    let orders = echo("orders");
    let dead = bind().local_addr().unwrap();
    let (port, admin) = (free_port(), free_port());
    let routes = vec![
        json!({"match": {"prefix": "/slow"}, "route": {"cluster": "orders", "timeout": "0.5s"}}),
        json!({"match": {"prefix": "/dead"}, "route": {"cluster": "dead"}}),
        json!({"match": {"path": "/direct"}, "direct_response": {"status": 200, "body": {"inline_string": "direct!"}}}),
        json!({"match": {"prefix": "/old/"}, "route": {"cluster": "orders", "prefix_rewrite": "/new/"}}),
    ];
    let yaml = bootstrap(
        vec![listener(
            "ingress",
            port,
            vec![module_filter("none", json!({}), false)],
            routes,
            None,
        )],
        vec![
            cluster("orders", orders.addr(), false),
            cluster("dead", dead, false),
        ],
        admin,
    );
    let host = Host::start(&yaml, admin);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();

    let r = request(addr, "GET", "/slow", &[("x-echo-delay-ms", b"3000")], b"");
    assert_eq!(r.status, 504);
    assert_eq!(r.text(), "upstream request timeout");
    let r = request(addr, "GET", "/dead", &[], b"");
    assert_eq!(r.status, 503);
    assert!(
        r.text()
            .starts_with("upstream connect error or disconnect/reset before headers"),
        "{}",
        r.text()
    );
    let r = request(addr, "GET", "/direct", &[], b"");
    assert_eq!((r.status, r.text().as_str()), (200, "direct!"));
    let r = request(addr, "GET", "/old/x?q=1", &[], b"");
    assert_eq!(r.json()["path"], "/new/x?q=1");
    let r = request(addr, "GET", "/nothing", &[], b"");
    assert_eq!(r.status, 404);
    // The module saw every request, including the local replies (through its response callbacks).
    let res = host.wait_lines(|l| l.contains("result: on_log"), 5, Duration::from_secs(5));
    assert_eq!(res.len(), 5);
    assert_eq!(host.counter("cluster.dead.upstream_cx_connect_fail"), 1);
    assert_eq!(host.counter("cluster.orders.upstream_rq_timeout"), 1);

    // A client that goes away mid-request still gets on_log and destroy.
    abandon(addr, "/slow");
    let res = host.wait_lines(|l| l.contains("result: on_log"), 6, Duration::from_secs(10));
    assert_eq!(res.len(), 6, "on_log after the client left");
}
