//! ABI behaviours the filter does not exercise, with `portcullis-test-module` (its plugin
//! configuration `{"mode": ...}` picks the behaviour; it reports through `result:` log lines).
//! The wasm comes from `PORTCULLIS_TEST_MODULE_WASM`, else
//! `<workspace>/target/wasm32-wasip1/release/portcullis_test_module.wasm` (`make test-modules`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use portcullis_host::abi::{
    DataStatus, Direction, Effect, FailDecision, HeaderMap, HeadersStatus, HostShared, LogRecord,
    PluginConfig, StartError, StreamInfo, Vm, WasmModule,
};
use portcullis_host::stats::{MetricKind, Stats};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

fn wasm_path() -> PathBuf {
    if let Ok(p) = std::env::var("PORTCULLIS_TEST_MODULE_WASM") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm32-wasip1/release/portcullis_test_module.wasm");
    assert!(
        p.exists(),
        "{} is missing: run `make test-modules` first (or set PORTCULLIS_TEST_MODULE_WASM)",
        p.display()
    );
    p
}

fn module() -> &'static WasmModule {
    static MODULE: OnceLock<WasmModule> = OnceLock::new();
    MODULE.get_or_init(|| {
        let engine = wasmtime::Engine::default();
        WasmModule::load(&engine, wasm_path()).expect("test module loads")
    })
}

#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<LogRecord>>>);

impl Logs {
    /// `result:` lines, prefix stripped, drained.
    fn results(&self) -> Vec<String> {
        let mut logs = self.0.lock().unwrap();
        let out = logs
            .iter()
            .filter_map(|r| r.message.strip_prefix("result: ").map(str::to_owned))
            .collect();
        logs.clear();
        out
    }

    fn all(&self) -> Vec<LogRecord> {
        self.0.lock().unwrap().clone()
    }
}

fn host() -> (HostShared, Logs) {
    let logs = Logs::default();
    let sink = logs.0.clone();
    let shared = HostShared::with_log_sink(
        Stats::new(Vec::new()).unwrap(),
        Arc::new(move |r| sink.lock().unwrap().push(r)),
    );
    shared.set_log_level(portcullis_host::abi::LogLevel::Trace);
    (shared, logs)
}

fn plugin(mode: &str) -> PluginConfig {
    PluginConfig {
        name: "test".into(),
        root_id: "test-root".into(),
        vm_id: "test-vm".into(),
        configuration: format!(r#"{{"mode": "{mode}"}}"#).into_bytes(),
        vm_configuration: b"vmcfg".to_vec(),
        ..PluginConfig::default()
    }
}

fn start_with(mode: &str, shared: HostShared, worker: usize) -> Vm {
    Vm::start(module(), &plugin(mode), shared, worker).expect("starts")
}

fn start(mode: &str) -> (Vm, Logs, HostShared) {
    let (shared, logs) = host();
    let vm = start_with(mode, shared.clone(), 0);
    logs.results();
    (vm, logs, shared)
}

fn get_request() -> HeaderMap {
    HeaderMap::from_pairs(&[
        (":authority", "api.example.com"),
        (":path", "/a/b?x=1"),
        (":method", "POST"),
        (":scheme", "http"),
        ("x-request-id", "rid-9"),
        ("x-a", "1"),
        ("X-A", "2"),
    ])
}

#[test]
fn start_sequence_vm_start_gets_vm_config_size() {
    let (shared, logs) = host();
    let vm = start_with("none", shared, 0);
    assert_eq!(vm.root_context_id(), 1);
    assert_eq!(
        logs.results(),
        vec!["on_vm_start size=5", "configured mode=none"]
    );
}

#[test]
fn configure_false_is_refused_with_the_module_log_line() {
    let (shared, _logs) = host();
    let err = Vm::start(module(), &plugin("reject"), shared, 0).unwrap_err();
    assert!(matches!(err, StartError::ConfigureFailed { .. }), "{err}");
    assert_eq!(err.guest_log(), Some("test-module: configuration rejected"));
}

#[test]
fn restricted_hostcall_during_initialize_traps() {
    let (shared, logs) = host();
    let mut p = plugin("none");
    p.environment = vec![("PORTCULLIS_TEST_INIT".into(), "restricted".into())];
    let err = Vm::start(module(), &p, shared.clone(), 0).unwrap_err();
    let StartError::Trap { function, trap, .. } = &err else {
        panic!("expected a trap, got {err}");
    };
    assert_eq!(function, "_initialize");
    assert!(trap.contains("restricted_callback"), "{trap}");
    // proxy_log itself was allowed, and the restricted call never returned.
    assert!(
        logs.all()
            .iter()
            .any(|r| r.message == "test-module: _initialize")
    );
    let results = logs.results();
    assert!(
        !results
            .iter()
            .any(|r| r.contains("restricted call returned"))
    );
    // Without the variable the same module starts: the environment is the plugin's only.
    start_with("none", shared, 0);
}

#[test]
fn order_is_context_create_lazily_then_log_done_delete() {
    let (mut vm, logs, _) = start("none");
    let s = vm.create_stream(StreamInfo::default());
    assert_eq!(s, 2);
    assert!(
        logs.results().is_empty(),
        "no callback before request headers"
    );
    let mut h = get_request();
    assert_eq!(
        vm.on_request_headers(s, &mut h, false),
        HeadersStatus::Continue
    );
    let mut body = b"abc".to_vec();
    assert_eq!(vm.on_request_body(s, &mut body, true), DataStatus::Continue);
    vm.on_log(s);
    vm.destroy(s);
    assert_eq!(
        logs.results(),
        vec![
            "request_headers ctx=2 n=7 eos=false",
            "request_body size=3 eos=true",
            "on_log",
            "deleted ctx=2"
        ]
    );
}

#[test]
fn body_pause_buffers_then_continue_with_edits() {
    let (mut vm, logs, _) = start("pause_request_body");
    let s = vm.create_stream(StreamInfo::default());
    let mut h = get_request();
    assert_eq!(
        vm.on_request_headers(s, &mut h, false),
        HeadersStatus::Continue
    );
    let mut chunk = b"hello ".to_vec();
    assert_eq!(
        vm.on_request_body(s, &mut chunk, false),
        DataStatus::StopIterationAndBuffer
    );
    // The proxy buffers and redelivers the whole body.
    let mut all = b"hello world".to_vec();
    assert_eq!(vm.on_request_body(s, &mut all, true), DataStatus::Continue);
    assert_eq!(all, b"HELLO WORLD!", "replace-from-start then append");
    assert!(vm.take_effects().is_empty());
    let results = logs.results();
    assert!(results.contains(&"request_body size=11 eos=true".to_owned()));
}

#[test]
fn local_reply_from_body_forces_stop_and_is_deferred() {
    let (mut vm, _logs, _) = start("local_reply_body");
    let s = vm.create_stream(StreamInfo::default());
    let mut h = get_request();
    vm.on_request_headers(s, &mut h, false);
    let mut body = b"x".to_vec();
    assert_eq!(
        vm.on_request_body(s, &mut body, false),
        DataStatus::StopIterationNoBuffer,
        "the module returned Continue, a local reply forces Stop"
    );
    let effects = vm.take_effects();
    let [
        Effect::LocalReply {
            stream,
            status,
            headers,
            body,
            grpc_status,
            details,
        },
    ] = &effects[..]
    else {
        panic!("{effects:#?}");
    };
    assert_eq!((*stream, *status, *grpc_status), (s, 413, None));
    assert_eq!(body, b"body refused");
    assert_eq!(headers.get_str("x-reason"), Some("Too Big"));
    assert_eq!(headers.pairs[1].0, "x-upper", "names lower-cased");
    assert_eq!(details, "");
}

#[test]
fn http_call_effect_response_and_continue_with_held_headers() {
    let (mut vm, logs, shared) = start("http_call");
    shared.set_clusters(["auth_cluster".to_owned()]);
    let s = vm.create_stream(StreamInfo::default());
    let mut h = get_request();
    assert_eq!(
        vm.on_request_headers(s, &mut h, true),
        HeadersStatus::StopAllIterationAndWatermark,
        "Pause in headers = StopAllIterationAndWatermark"
    );
    let effects = vm.take_effects();
    let [
        Effect::HttpCall {
            token,
            cluster,
            headers,
            body,
            trailers,
            timeout,
        },
    ] = &effects[..]
    else {
        panic!("{effects:#?}");
    };
    assert_eq!(*token, 4, "first HTTP call token");
    assert_eq!(cluster, "auth_cluster");
    assert_eq!(headers.get_str(":path"), Some("/check"));
    assert_eq!(body, b"ping");
    assert_eq!(trailers.get_str("x-t"), Some("1"));
    assert_eq!(*timeout, Some(Duration::from_millis(1500)));
    let results = logs.results();
    assert!(
        results.contains(&"http_call token=4".to_owned()),
        "{results:?}"
    );
    assert!(
        results.contains(&"http_call without :path → Err(BadArgument)".to_owned()),
        "{results:?}"
    );

    vm.on_http_call_response(
        4,
        HeaderMap::from_pairs(&[(":status", "200")]),
        b"pong".to_vec(),
        HeaderMap::from_pairs(&[("x-trailer", "t")]),
    );
    let results = logs.results();
    assert_eq!(
        results[0],
        "http_call_response token=4 headers=1 body=4 trailers=1 status=200 trailer=t"
    );
    let effects = vm.take_effects();
    let [
        Effect::ContinueStream {
            stream,
            direction: Direction::Request,
            held_headers: Some(held),
        },
    ] = &effects[..]
    else {
        panic!("{effects:#?}");
    };
    assert_eq!(*stream, s);
    assert_eq!(held.get_str("x-call-status"), Some("200"));
    assert_eq!(held.get_str("x-call-body"), Some("pong"));
    // A second delivery of the same token is ignored (Envoy delivers once).
    vm.on_http_call_response(4, HeaderMap::new(), Vec::new(), HeaderMap::new());
    assert!(logs.results().is_empty());
    assert!(!vm.is_failed());
}

#[test]
fn http_call_to_unknown_cluster_is_bad_argument() {
    let (mut vm, logs, shared) = start("http_call");
    shared.set_clusters(["other".to_owned()]);
    let s = vm.create_stream(StreamInfo::default());
    let mut h = get_request();
    assert_eq!(
        vm.on_request_headers(s, &mut h, true),
        HeadersStatus::Continue
    );
    assert!(
        logs.results()
            .contains(&"http_call error BadArgument".to_owned())
    );
}

#[test]
fn grpc_call_success_only_receive() {
    let (mut vm, logs, _) = start("grpc_call");
    let s = vm.create_stream(StreamInfo::default());
    let mut h = get_request();
    vm.on_request_headers(s, &mut h, true);
    let effects = vm.take_effects();
    let [
        Effect::GrpcCall {
            token,
            cluster,
            service,
            method,
            initial_metadata,
            message,
            timeout,
        },
    ] = &effects[..]
    else {
        panic!("{effects:#?}");
    };
    assert_eq!(*token, 5, "gRPC call tokens have low bits 01");
    assert_eq!(
        (cluster.as_str(), service.as_str(), method.as_str()),
        ("grpc_cluster", "test.Checker", "Check")
    );
    assert_eq!(initial_metadata.get("x-md"), Some(&b"v"[..]));
    assert_eq!(message, b"request-message");
    assert_eq!(*timeout, Some(Duration::from_secs(2)));
    logs.results();
    vm.on_grpc_receive(5, b"reply".to_vec());
    assert_eq!(logs.results(), vec!["grpc_call_response token=5 ok:reply"]);
    let effects = vm.take_effects();
    let [
        Effect::ContinueStream {
            held_headers: Some(held),
            ..
        },
    ] = &effects[..]
    else {
        panic!("{effects:#?}");
    };
    assert_eq!(held.get_str("x-grpc-result"), Some("ok:reply"));
    // The call is over: a close afterwards is not delivered.
    vm.on_grpc_close(5, 0, "");
    assert!(logs.results().is_empty());
}

#[test]
fn grpc_call_failure_only_close_with_status() {
    let (mut vm, logs, _) = start("grpc_call");
    let s = vm.create_stream(StreamInfo::default());
    let mut h = get_request();
    vm.on_request_headers(s, &mut h, true);
    vm.take_effects();
    logs.results();
    vm.on_grpc_close(5, 14, "upstream unavailable");
    assert_eq!(
        logs.results(),
        vec!["grpc_call_response token=5 fail:14:14:upstream unavailable"]
    );
    assert!(matches!(
        &vm.take_effects()[..],
        [Effect::ContinueStream { .. }]
    ));
}

#[test]
fn tick_period_effect_and_on_tick() {
    let (shared, logs) = host();
    let mut vm = start_with("tick", shared, 0);
    assert_eq!(
        vm.take_effects(),
        vec![Effect::SetTickPeriod(Duration::from_millis(250))]
    );
    logs.results();
    vm.on_tick();
    vm.on_tick();
    assert_eq!(logs.results(), vec!["tick 1", "tick 2"]);
}

#[test]
fn shared_data_cas_contention_between_two_vms() {
    let (shared, logs) = host();
    let mut a = start_with("shared_cas", shared.clone(), 0);
    let mut b = start_with("shared_cas", shared.clone(), 1);
    // Seed the key so both readers see a cas.
    shared.set_shared_data("test-vm", "counter", b"0", 0);
    logs.results();
    let (sa, sb) = (
        a.create_stream(StreamInfo::default()),
        b.create_stream(StreamInfo::default()),
    );
    let (mut ha, mut hb) = (get_request(), get_request());
    a.on_request_headers(sa, &mut ha, false);
    b.on_request_headers(sb, &mut hb, false);
    let (mut ba, mut bb) = (b"x".to_vec(), b"y".to_vec());
    a.on_request_body(sa, &mut ba, true);
    b.on_request_body(sb, &mut bb, true);
    let results = logs.results();
    let gets: Vec<_> = results
        .iter()
        .filter(|r| r.starts_with("shared get"))
        .collect();
    assert_eq!(gets.len(), 2);
    assert_eq!(gets[0], gets[1], "both read the same value and cas");
    let sets: Vec<_> = results
        .iter()
        .filter(|r| r.starts_with("shared set"))
        .collect();
    assert_eq!(sets, vec!["shared set ok", "shared set cas_mismatch"]);
    assert_eq!(
        shared.get_shared_data("test-vm", "counter").unwrap().0,
        b"ctx2"
    );
    // Another vm_id does not see it.
    assert!(shared.get_shared_data("other-vm", "counter").is_none());
}

#[test]
fn metrics_define_increment_record_get() {
    let (shared, logs) = host();
    let mut vm = start_with("metrics", shared.clone(), 0);
    assert!(
        logs.results().contains(&"ids 4 5 6".to_owned()),
        "per-kind ids"
    );
    let s = vm.create_stream(StreamInfo::default());
    let mut h = get_request();
    vm.on_request_headers(s, &mut h, true);
    let results = logs.results();
    let line = results.iter().find(|r| r.starts_with("metrics ")).unwrap();
    for expected in [
        "inc=Ok(())",
        "zero=Err(BadArgument)",
        "negative=Err(BadArgument)",
        "added=Ok(())",
        "gauge_up=Ok(())",
        "gauge_down=Ok(())",
        "gauge_value=Ok(6)",
        "gauge_set=Ok(())",
        "hist=Ok(())",
        "hist_inc=Err(BadArgument)",
        "hist_get=Err(BadArgument)",
        "counter=Ok(6)",
        "gauge=Ok(42)",
        "unknown=Err(NotFound)",
        "again=Ok(8)",
    ] {
        assert!(line.contains(expected), "{expected} in {line}");
    }
    let stats = shared.stats();
    assert_eq!(
        stats.find("wasmcustom.test.requests"),
        Some((MetricKind::Counter, 6))
    );
    assert_eq!(
        stats.find("wasmcustom.test.active"),
        Some((MetricKind::Gauge, 42))
    );
    assert_eq!(
        stats.find("wasmcustom.test.latency"),
        Some((MetricKind::Histogram, 1))
    );
}

#[test]
fn clear_route_cache_and_request_header_edits_clear_the_route_cache() {
    let (mut vm, logs, _) = start("route_cache");
    // The foreign function alone (no header edit).
    let s = vm.create_stream(StreamInfo::default());
    let mut h = get_request();
    vm.on_request_headers(s, &mut h, true);
    assert!(
        logs.results()
            .contains(&"clear=Ok(None) unknown=Err(NotFound)".to_owned()),
        "{:?}",
        logs.results()
    );
    assert!(vm.take_route_cache_cleared(s));
    assert!(!vm.take_route_cache_cleared(s), "the flag is taken once");
    // No foreign function: a request-header edit of an ABI 0.2.1 module clears it too (Envoy
    // clears the route cache on such edits for ABIs up to 0.2.1)...
    let (mut vm, _, _) = start("source_address");
    let s = vm.create_stream(StreamInfo::default());
    let mut h = get_request();
    vm.on_request_headers(s, &mut h, true);
    assert!(
        vm.take_route_cache_cleared(s),
        "a request-header edit clears it"
    );
    // ...and a module that neither edits nor calls leaves it.
    let (mut vm, _, _) = start("pass");
    let s = vm.create_stream(StreamInfo::default());
    let mut h = get_request();
    vm.on_request_headers(s, &mut h, true);
    assert!(!vm.take_route_cache_cleared(s), "no edit, no clearing");
}

#[test]
fn trap_fails_the_vm_then_fail_closed_or_open() {
    for fail_open in [false, true] {
        let (shared, logs) = host();
        let mut p = plugin("trap");
        p.fail_open = fail_open;
        let mut vm = Vm::start(module(), &p, shared, 0).unwrap();
        let s = vm.create_stream(StreamInfo::default());
        let mut h = get_request();
        assert_eq!(
            vm.on_request_headers(s, &mut h, true),
            HeadersStatus::Continue
        );
        let s = vm.create_stream(StreamInfo::default());
        let mut h = get_request();
        h.add("x-trap", b"1");
        let expected = if fail_open {
            FailDecision::Open
        } else {
            FailDecision::Closed
        };
        assert_eq!(
            vm.on_request_headers(s, &mut h, true),
            HeadersStatus::Failed(expected)
        );
        assert!(vm.is_failed());
        assert!(
            logs.all().iter().any(|r| r
                .message
                .contains("Function: proxy_on_request_headers failed")),
            "the trap is logged"
        );
        assert!(
            logs.all()
                .iter()
                .any(|r| r.message.contains("trap requested")),
            "the SDK's panic hook line"
        );
        // Later requests are not run at all.
        logs.results();
        let s = vm.create_stream(StreamInfo::default());
        let mut h = get_request();
        assert_eq!(
            vm.on_request_headers(s, &mut h, true),
            HeadersStatus::Failed(expected)
        );
        let mut body = Vec::new();
        assert_eq!(
            vm.on_request_body(s, &mut body, true),
            DataStatus::Failed(expected)
        );
        vm.on_log(s);
        vm.destroy(s);
        assert!(logs.results().is_empty());
    }
}

#[test]
fn properties_and_request_headers_window() {
    let (mut vm, logs, _) = start("properties");
    let s = vm.create_stream(StreamInfo {
        source: Some("10.0.0.1:5555".parse().unwrap()),
        destination: Some("[::1]:8080".parse().unwrap()),
        ..StreamInfo::default()
    });
    let mut h = get_request();
    vm.on_request_headers(s, &mut h, false);
    let results = logs.results();
    let line = results
        .iter()
        .find(|r| r.starts_with("properties "))
        .unwrap();
    for expected in [
        "source.address=10.0.0.1:5555",
        // 5555 as 8-byte little-endian.
        "source.port=b315000000000000",
        "destination.address=[::1]:8080",
        "request.path=/a/b?x=1",
        "request.url_path=/a/b",
        "request.method=POST",
        "request.host=api.example.com",
        "request.id=rid-9",
        "request.protocol=HTTP/1.1",
        "request.headers.x-a=1,2",
        "connection.mtls=00",
        "plugin_name=test",
        "plugin_root_id=test-root",
        "plugin_vm_id=test-vm",
        "nope=-",
    ] {
        assert!(line.contains(expected), "{expected} in {line}");
    }
    // After the headers phase: request.* from headers is NotFound; filter state persists.
    let mut resp = HeaderMap::from_pairs(&[(":status", "200")]);
    vm.on_response_headers(s, &mut resp, true);
    assert!(
        logs.results()
            .contains(&"response properties request.path=- my_state=kept".to_owned())
    );
    // on_log sees the request headers again, read-only.
    vm.on_log(s);
    assert_eq!(
        logs.results(),
        vec!["log request.path=/a/b?x=1 x-a=Some(\"1\")"]
    );
    assert!(!vm.is_failed());
}

#[test]
fn shared_queue_notifies_the_registrant_worker() {
    let (shared, logs) = host();
    let mut w0 = start_with("queue", shared.clone(), 0);
    let mut w1 = start_with("queue", shared.clone(), 1);
    logs.results();
    // w1 registered last: it gets the notification.
    let s = w0.create_stream(StreamInfo::default());
    let mut h = get_request();
    w0.on_request_headers(s, &mut h, true);
    let results = logs.results();
    assert!(
        results.contains(&"enqueue 1 Ok(())".to_owned()),
        "{results:?}"
    );
    assert!(results.contains(&"enqueue missing Err(NotFound)".to_owned()));
    assert!(shared.take_queue_ready(0).is_empty());
    let ready = shared.take_queue_ready(1);
    assert_eq!(ready.len(), 1);
    assert_eq!(ready[0].vm, w1.key());
    w1.on_queue_ready(ready[0].queue_id);
    w1.on_queue_ready(ready[0].queue_id);
    assert_eq!(logs.results(), vec!["dequeued 1 hello", "dequeued 1 empty"]);
}
