//! The real filter (portcullis.wasm) driven through `abi::Vm` as Envoy would drive it.
//! The wasm comes from `PORTCULLIS_WASM`, else `<workspace>/target/wasm32-wasip1/release/portcullis.wasm`
//! (built by `make build`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use portcullis_host::abi::{
    AbiError, Effect, FailDecision, HeaderMap, HeadersStatus, HostShared, LogLevel, LogRecord,
    PluginConfig, StartError, StreamInfo, Vm, WasmModule,
};
use portcullis_host::stats::Stats;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

const KEY: &str = "test-key-123";
/// SHA-256 of [`KEY`], hex.
const KEY_SHA256: &str = "625faa3fbbc3d2bd9d6ee7678d04cc5339cb33dc68d9b58451853d60046e226a";

fn wasm_path() -> PathBuf {
    if let Ok(p) = std::env::var("PORTCULLIS_WASM") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm32-wasip1/release/portcullis.wasm");
    assert!(
        p.exists(),
        "{} is missing: run `make build` first (or set PORTCULLIS_WASM)",
        p.display()
    );
    p
}

/// Compiled once per test binary (cranelift in a debug build is slow).
fn module() -> &'static WasmModule {
    static MODULE: OnceLock<WasmModule> = OnceLock::new();
    MODULE.get_or_init(|| {
        let engine = wasmtime::Engine::default();
        WasmModule::load(&engine, wasm_path()).expect("portcullis.wasm loads")
    })
}

type Logs = Arc<Mutex<Vec<LogRecord>>>;

fn host() -> (HostShared, Logs) {
    let logs: Logs = Arc::default();
    let sink = Arc::clone(&logs);
    let shared = HostShared::with_log_sink(
        Stats::new(Vec::new()).unwrap(),
        Arc::new(move |r| sink.lock().unwrap().push(r)),
    );
    (shared, logs)
}

fn config() -> serde_json::Value {
    serde_json::json!({
        "realm": "test",
        "providers": {
            "partners": {
                "type": "api_key",
                "from_headers": ["x-api-key"],
                "keys": [{"consumer": "acme", "sha256": KEY_SHA256, "scopes": ["orders:read"]}]
            }
        },
        "routes": [
            {"name": "orders", "match": {"prefix": "/orders"}, "requires": ["partners"],
             "scopes": ["orders:read"]}
        ]
    })
}

fn plugin(configuration: &[u8]) -> PluginConfig {
    PluginConfig {
        name: "portcullis".into(),
        root_id: "portcullis".into(),
        vm_id: "portcullis".into(),
        configuration: configuration.to_vec(),
        ..PluginConfig::default()
    }
}

fn start(logs_too: bool) -> (Vm, Logs) {
    let (shared, logs) = host();
    let cfg = config().to_string();
    let vm = Vm::start(module(), &plugin(cfg.as_bytes()), shared, 0).expect("starts");
    if !logs_too {
        logs.lock().unwrap().clear();
    }
    (vm, logs)
}

fn request(extra: &[(&str, &[u8])]) -> HeaderMap {
    let mut h = HeaderMap::from_pairs(&[
        (":authority", &b"api.example.com"[..]),
        (":path", b"/orders/7"),
        (":method", b"GET"),
        (":scheme", b"https"),
        ("x-request-id", b"req-1"),
    ]);
    for (k, v) in extra {
        h.add(k, v);
    }
    h
}

fn info() -> StreamInfo {
    StreamInfo {
        source: Some("10.1.2.3:45678".parse().unwrap()),
        destination: Some("127.0.0.1:8080".parse().unwrap()),
        ..StreamInfo::default()
    }
}

#[test]
fn configure_ok_logs_and_root_context_is_one() {
    let (vm, logs) = start(true);
    assert_eq!(vm.root_context_id(), 1);
    assert!(!vm.is_failed());
    let logs = logs.lock().unwrap();
    assert!(
        logs.iter()
            .any(|r| r.level == LogLevel::Info && r.message.contains("configured 1 route(s)")),
        "{logs:#?}"
    );
}

#[test]
fn bad_configuration_is_refused_with_the_filter_error_line() {
    let (shared, _logs) = host();
    let mut doc = config();
    doc["providers"]["partners"]["keys"][0]["sha256"] = serde_json::json!("abc");
    let err = Vm::start(module(), &plugin(doc.to_string().as_bytes()), shared, 0).unwrap_err();
    assert!(matches!(err, StartError::ConfigureFailed { .. }), "{err}");
    let line = err.guest_log().expect("the filter logged why");
    assert!(line.contains("invalid configuration"), "{line}");
    assert!(line.contains("sha256"), "{line}");
    assert!(
        err.to_string()
            .contains("proxy_on_configure returned false")
    );

    // No configuration at all: the filter's own message.
    let (shared, _logs) = host();
    let err = Vm::start(module(), &plugin(b""), shared, 0).unwrap_err();
    assert!(
        err.guest_log()
            .is_some_and(|l| l.contains("no plugin configuration")),
        "{err}"
    );
}

#[test]
fn allowed_request_gets_identity_headers_and_loses_the_key() {
    let (mut vm, _logs) = start(false);
    let s = vm.create_stream(info());
    assert_eq!(s, 2, "streams follow the root context id");
    let mut h = request(&[
        ("x-api-key", KEY.as_bytes()),
        ("x-portcullis-consumer", b"forged"),
    ]);
    assert_eq!(
        vm.on_request_headers(s, &mut h, true),
        HeadersStatus::Continue
    );
    assert!(vm.take_effects().is_empty());
    assert_eq!(h.get("x-api-key"), None, "credential removed");
    assert_eq!(h.get_all("x-portcullis-consumer"), vec![&b"acme"[..]]);
    assert_eq!(h.get_str("x-portcullis-provider"), Some("partners"));
    assert_eq!(h.get_str(":path"), Some("/orders/7"), "pseudo-headers kept");

    let mut resp = HeaderMap::from_pairs(&[(":status", "200")]);
    assert_eq!(
        vm.on_response_headers(s, &mut resp, true),
        HeadersStatus::Continue
    );
    vm.on_log(s);
    vm.destroy(s);
    assert!(!vm.is_failed());
}

#[test]
fn refused_request_gets_a_deferred_401_and_one_audit_line() {
    let (mut vm, logs) = start(false);
    let s = vm.create_stream(info());
    let mut h = request(&[]);
    // send_local_response forces Stop whatever the filter returned.
    assert_eq!(
        vm.on_request_headers(s, &mut h, true),
        HeadersStatus::StopAllIterationAndWatermark
    );
    let effects = vm.take_effects();
    assert_eq!(effects.len(), 1, "{effects:#?}");
    let Effect::LocalReply {
        stream,
        status,
        headers,
        body,
        grpc_status,
        ..
    } = &effects[0]
    else {
        panic!("expected a local reply, got {effects:#?}");
    };
    assert_eq!((*stream, *status, *grpc_status), (s, 401, None));
    assert_eq!(headers.get_str("content-type"), Some("application/json"));
    let challenge = headers.get_str("www-authenticate").expect("challenge");
    assert!(challenge.contains("realm=\"test\""), "{challenge}");
    let body: serde_json::Value = serde_json::from_slice(body).expect("JSON body");
    assert_eq!(body["error"], "missing_credentials");
    assert_eq!(body["request_id"], "req-1");

    // The local reply goes through the plugin's response path, then on_log.
    let mut resp = HeaderMap::from_pairs(&[(":status", "401")]);
    assert_eq!(
        vm.on_response_headers(s, &mut resp, false),
        HeadersStatus::Continue
    );
    logs.lock().unwrap().clear();
    vm.on_log(s);
    vm.destroy(s);
    let logs = logs.lock().unwrap();
    assert_eq!(logs.len(), 1, "{logs:#?}");
    let audit: serde_json::Value = serde_json::from_str(&logs[0].message).expect("JSON audit");
    assert_eq!(audit["decision"], "deny");
    assert_eq!(audit["status"], 401);
    assert_eq!(audit["path"], "/orders/7");
    assert_eq!(audit["client_ip"], "10.1.2.3", "from source.address");
    assert_eq!(logs[0].plugin_name, "portcullis");
}

#[test]
fn invalid_utf8_header_value_does_not_trap() {
    let (mut vm, logs) = start(false);
    let s = vm.create_stream(info());
    let mut h = request(&[("x-api-key", b"\xff\xfe-not-utf8"), ("x-other", b"caf\xe9")]);
    let status = vm.on_request_headers(s, &mut h, true);
    assert!(
        !vm.is_failed(),
        "{status:?} {:#?} {:#?}",
        logs.lock().unwrap(),
        vm.take_effects()
    );
    assert_eq!(status, HeadersStatus::StopAllIterationAndWatermark);
    let effects = vm.take_effects();
    assert!(
        matches!(&effects[..], [Effect::LocalReply { status: 401, .. }]),
        "{effects:#?}"
    );
    // And the VM still serves the next request.
    let s2 = vm.create_stream(info());
    let mut h = request(&[("x-api-key", KEY.as_bytes())]);
    assert_eq!(
        vm.on_request_headers(s2, &mut h, true),
        HeadersStatus::Continue
    );
}

#[test]
fn fail_open_and_closed_are_reported_once_failed() {
    let (vm, _) = start(false);
    assert_eq!(vm.fail_decision(), FailDecision::Closed);
}

/// A module with only an ABI marker that is an imported function `env.xyz`.
fn tiny_module(with_marker: bool) -> Vec<u8> {
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    m.extend_from_slice(&[0x01, 0x04, 0x01, 0x60, 0x00, 0x00]);
    m.extend_from_slice(&[
        0x02, 0x0b, 0x01, 0x03, b'e', b'n', b'v', 0x03, b'x', b'y', b'z', 0x00, 0x00,
    ]);
    if with_marker {
        let name = b"proxy_abi_version_0_2_1";
        m.extend_from_slice(&[0x07, (name.len() + 4) as u8, 0x01, name.len() as u8]);
        m.extend_from_slice(name);
        m.extend_from_slice(&[0x00, 0x00]);
    }
    m
}

#[test]
fn load_checks_abi_marker_then_imports_with_envoy_messages() {
    let engine = wasmtime::Engine::default();
    let err = WasmModule::from_bytes(&engine, &tiny_module(false)).unwrap_err();
    assert!(matches!(err, AbiError::MissingAbiVersion));
    assert_eq!(err.to_string(), "Missing or unknown Proxy-Wasm ABI version");
    let err = WasmModule::from_bytes(&engine, &tiny_module(true)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Failed to load Wasm module due to a missing import: env.xyz"
    );
}
