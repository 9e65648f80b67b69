//! The behaviours; see the crate docs for the list of modes.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType, Status};
use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    let _ = hostcalls::log(LogLevel::Info, "test-module: _initialize");
    if std::env::var("PORTCULLIS_TEST_INIT").as_deref() == Ok("restricted") {
        // Envoy refuses every proxy_* call but proxy_log while the VM starts.
        let _ = hostcalls::set_tick_period(Duration::from_millis(5));
        let _ = hostcalls::log(LogLevel::Info, "result: restricted call returned");
    }
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

fn result(msg: &str) {
    let _ = hostcalls::log(LogLevel::Info, &format!("result: {msg}"));
}

/// Extracts the string value of `"mode"` from the configuration without a JSON dependency.
fn mode_of(config: &[u8]) -> String {
    field_of(config, "mode")
}

/// Extracts the string value of `"<key>"` from the configuration (flat JSON, no escapes).
fn field_of(config: &[u8], key: &str) -> String {
    let text = String::from_utf8_lossy(config);
    let quoted = format!("\"{key}\"");
    let Some(at) = text.find(&quoted) else {
        return String::new();
    };
    let rest = &text[at + quoted.len()..];
    let mut parts = rest.splitn(3, '"');
    let _ = parts.next();
    parts.next().unwrap_or_default().to_owned()
}

#[derive(Default)]
struct Root {
    mode: Rc<String>,
    /// `"cluster"` in the configuration: the callout target (modes `http_call`, `grpc_call`).
    cluster: Rc<String>,
    ticks: u32,
    metrics: Rc<Metrics>,
    queue: Option<u32>,
    /// Mode `cas_counter`: this VM's number, taken from shared data at configure time.
    vm_number: u64,
}

#[derive(Default)]
struct Metrics {
    counter: Cell<u32>,
    gauge: Cell<u32>,
    histogram: Cell<u32>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, size: usize) -> bool {
        result(&format!("on_vm_start size={size}"));
        true
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        self.mode = Rc::new(mode_of(&config));
        self.cluster = Rc::new(field_of(&config, "cluster"));
        match self.mode.as_str() {
            "reject" => {
                let _ = hostcalls::log(LogLevel::Error, "test-module: configuration rejected");
                return false;
            }
            "tick" => self.set_tick_period(Duration::from_millis(250)),
            "metrics" => {
                let m = Metrics::default();
                m.counter.set(
                    hostcalls::define_metric(MetricType::Counter, "test.requests").unwrap_or(0),
                );
                m.gauge
                    .set(hostcalls::define_metric(MetricType::Gauge, "test.active").unwrap_or(0));
                m.histogram.set(
                    hostcalls::define_metric(MetricType::Histogram, "test.latency").unwrap_or(0),
                );
                result(&format!(
                    "ids {} {} {}",
                    m.counter.get(),
                    m.gauge.get(),
                    m.histogram.get()
                ));
                self.metrics = Rc::new(m);
            }
            "queue" => self.queue = Some(self.register_shared_queue("test-queue")),
            "cas_counter" => match cas_increment("cas_vm_seq") {
                Ok((n, _)) => {
                    // A missing key cannot be compare-and-swapped (CAS 0 means "no check"), so
                    // the counter is created here: the canary VM configures alone, before the
                    // workers, and every later increment is a real CAS.
                    if let Ok((None, _)) = hostcalls::get_shared_data("cas_counter") {
                        let _ = hostcalls::set_shared_data("cas_counter", Some(b"0"), None);
                    }
                    self.vm_number = n;
                }
                Err(attempts) => {
                    result(&format!(
                        "cas_counter vm number failed after {attempts} attempts"
                    ));
                    return false;
                }
            },
            _ => {}
        }
        result(&format!("configured mode={}", self.mode));
        true
    }

    fn on_tick(&mut self) {
        self.ticks += 1;
        result(&format!("tick {}", self.ticks));
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        match self.dequeue_shared_queue(queue_id) {
            Ok(Some(bytes)) => result(&format!(
                "dequeued {queue_id} {}",
                String::from_utf8_lossy(&bytes)
            )),
            Ok(None) => result(&format!("dequeued {queue_id} empty")),
            Err(status) => result(&format!("dequeue {queue_id} error {status:?}")),
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            context_id,
            mode: Rc::clone(&self.mode),
            cluster: Rc::clone(&self.cluster),
            metrics: Rc::clone(&self.metrics),
            queue: self.queue,
            cas: None,
            vm_number: self.vm_number,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    context_id: u32,
    mode: Rc<String>,
    cluster: Rc<String>,
    metrics: Rc<Metrics>,
    queue: Option<u32>,
    cas: Option<Option<u32>>,
    vm_number: u64,
}

/// Most CAS attempts per increment (mode `cas_counter`): contention between two workers needs
/// a few; running out means the host's CAS is broken (or starving a VM).
const CAS_ATTEMPTS: u32 = 10_000;

/// Reads the decimal counter `key` from shared data and writes it back incremented with the
/// CAS it was read with, retrying on `CasMismatch`. Returns the new value and the number of
/// mismatches, or the attempts made when it gave up.
fn cas_increment(key: &str) -> Result<(u64, u32), u32> {
    let mut mismatches = 0;
    for _ in 0..CAS_ATTEMPTS {
        let Ok((value, cas)) = hostcalls::get_shared_data(key) else {
            return Err(mismatches + 1);
        };
        let current = value
            .as_deref()
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        // Hold the read value for a millisecond (on the host's clock) so the other worker's
        // VM, running in parallel, writes in between often.
        let start = hostcalls::get_current_time().ok();
        while let (Some(t0), Ok(now)) = (start, hostcalls::get_current_time()) {
            if now.duration_since(t0).unwrap_or_default() >= Duration::from_millis(1) {
                break;
            }
        }
        let next = current + 1;
        // A missing key has no CAS (None = 0 = no check): only the canary's first write.
        match hostcalls::set_shared_data(key, Some(next.to_string().as_bytes()), cas) {
            Ok(()) => return Ok((next, mismatches)),
            Err(Status::CasMismatch) => mismatches += 1,
            Err(_) => return Err(mismatches + 1),
        }
    }
    Err(CAS_ATTEMPTS)
}

impl Context for Stream {
    fn on_http_call_response(&mut self, token: u32, headers: usize, body: usize, trailers: usize) {
        let status = self
            .get_http_call_response_header(":status")
            .unwrap_or_default();
        let bytes = self
            .get_http_call_response_body(0, body)
            .unwrap_or_default();
        let trailer = self
            .get_http_call_response_trailer("x-trailer")
            .unwrap_or_default();
        result(&format!(
            "http_call_response token={token} headers={headers} body={body} trailers={trailers} status={status} trailer={trailer}"
        ));
        self.set_http_request_header("x-call-status", Some(&status));
        self.set_http_request_header("x-call-body", Some(&String::from_utf8_lossy(&bytes)));
        self.resume_http_request();
    }

    fn on_grpc_call_response(&mut self, token: u32, status: u32, size: usize) {
        let value = if status == 0 {
            let body = self
                .get_grpc_call_response_body(0, size)
                .unwrap_or_default();
            format!("ok:{}", String::from_utf8_lossy(&body))
        } else {
            let (code, message) = self.get_grpc_status();
            format!("fail:{status}:{code}:{}", message.unwrap_or_default())
        };
        result(&format!("grpc_call_response token={token} {value}"));
        self.set_http_request_header("x-grpc-result", Some(&value));
        self.resume_http_request();
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, n: usize, eos: bool) -> Action {
        result(&format!(
            "request_headers ctx={} n={n} eos={eos}",
            self.context_id
        ));
        match self.mode.as_str() {
            "http_call" => {
                let cluster = if self.cluster.is_empty() {
                    "auth_cluster".to_owned()
                } else {
                    self.cluster.to_string()
                };
                // End-to-end tests pass `x-echo-delay-ms` on to the echo upstream.
                let delay = self.get_http_request_header("x-echo-delay-ms");
                let mut call_headers = vec![
                    (":method", "POST"),
                    (":path", "/check"),
                    (":authority", "auth"),
                ];
                if let Some(d) = delay.as_deref() {
                    call_headers.push(("x-echo-delay-ms", d));
                }
                let sent = self.dispatch_http_call(
                    &cluster,
                    call_headers,
                    Some(b"ping"),
                    vec![("x-t", "1")],
                    Duration::from_millis(1500),
                );
                match sent {
                    Ok(token) => {
                        result(&format!("http_call token={token}"));
                        let missing = self.dispatch_http_call(
                            &cluster,
                            vec![(":method", "GET")],
                            None,
                            vec![],
                            Duration::from_secs(1),
                        );
                        result(&format!("http_call without :path → {missing:?}"));
                        Action::Pause
                    }
                    Err(status) => {
                        result(&format!("http_call error {status:?}"));
                        Action::Continue
                    }
                }
            }
            "grpc_call" => {
                let cluster = if self.cluster.is_empty() {
                    "grpc_cluster".to_owned()
                } else {
                    self.cluster.to_string()
                };
                // End-to-end tests pick the method (the test server fails some).
                let method = self
                    .get_http_request_header("x-grpc-method")
                    .unwrap_or_else(|| "Check".to_owned());
                let sent = self.dispatch_grpc_call(
                    &cluster,
                    "test.Checker",
                    &method,
                    vec![("x-md", b"v")],
                    Some(b"request-message"),
                    Duration::from_secs(2),
                );
                match sent {
                    Ok(token) => {
                        result(&format!("grpc_call token={token}"));
                        Action::Pause
                    }
                    Err(status) => {
                        result(&format!("grpc_call error {status:?}"));
                        Action::Continue
                    }
                }
            }
            "shared_cas" => {
                let (value, cas) = self.get_shared_data("counter");
                result(&format!(
                    "shared get value={} cas={cas:?}",
                    String::from_utf8_lossy(&value.unwrap_or_default())
                ));
                self.cas = Some(cas);
                Action::Continue
            }
            "route_cache" => {
                // The foreign function, without any header edit.
                let clear = hostcalls::call_foreign_function("clear_route_cache", None);
                let unknown = hostcalls::call_foreign_function("compress", Some(b"x"));
                result(&format!("clear={clear:?} unknown={unknown:?}"));
                Action::Continue
            }
            "metrics" => {
                let m = &self.metrics;
                let inc = hostcalls::increment_metric(m.counter.get(), 1);
                let zero = hostcalls::increment_metric(m.counter.get(), 0);
                let negative = hostcalls::increment_metric(m.counter.get(), -3);
                let added = hostcalls::record_metric(m.counter.get(), 5);
                let gauge_up = hostcalls::increment_metric(m.gauge.get(), 10);
                let gauge_down = hostcalls::increment_metric(m.gauge.get(), -4);
                let gauge_value = hostcalls::get_metric(m.gauge.get());
                let gauge_set = hostcalls::record_metric(m.gauge.get(), 42);
                let hist = hostcalls::record_metric(m.histogram.get(), 7);
                let hist_inc = hostcalls::increment_metric(m.histogram.get(), 1);
                let hist_get = hostcalls::get_metric(m.histogram.get());
                let counter = hostcalls::get_metric(m.counter.get());
                let gauge = hostcalls::get_metric(m.gauge.get());
                let unknown = hostcalls::get_metric(1000);
                let again = hostcalls::define_metric(MetricType::Counter, "test.requests");
                result(&format!(
                    "metrics inc={inc:?} zero={zero:?} negative={negative:?} added={added:?} \
                     gauge_up={gauge_up:?} gauge_down={gauge_down:?} gauge_value={gauge_value:?} \
                     gauge_set={gauge_set:?} hist={hist:?} hist_inc={hist_inc:?} \
                     hist_get={hist_get:?} counter={counter:?} gauge={gauge:?} \
                     unknown={unknown:?} again={again:?}"
                ));
                Action::Continue
            }
            "trap" => {
                if self.get_http_request_header("x-trap").is_some() {
                    panic!("test-module: trap requested");
                }
                Action::Continue
            }
            "properties" => {
                let mut out = Vec::new();
                for path in [
                    vec!["source", "address"],
                    vec!["source", "port"],
                    vec!["destination", "address"],
                    vec!["request", "path"],
                    vec!["request", "url_path"],
                    vec!["request", "method"],
                    vec!["request", "host"],
                    vec!["request", "id"],
                    vec!["request", "protocol"],
                    vec!["request", "headers", "x-a"],
                    vec!["connection", "mtls"],
                    vec!["plugin_name"],
                    vec!["plugin_root_id"],
                    vec!["plugin_vm_id"],
                    vec!["nope"],
                ] {
                    let value = self.get_property(path.clone());
                    out.push(format!("{}={}", path.join("."), show(value)));
                }
                self.set_property(vec!["my_state"], Some(b"kept"));
                result(&format!("properties {}", out.join(" ")));
                Action::Continue
            }
            "source_address" => {
                // What Envoy's connection manager made the downstream remote address (after
                // `use_remote_address` / `xff_num_trusted_hops`), for the upstream to see.
                let address = show(self.get_property(vec!["source", "address"]));
                let port = self
                    .get_property(vec!["source", "port"])
                    .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
                    .map_or_else(|| "-".to_owned(), |b| u64::from_le_bytes(b).to_string());
                self.set_http_request_header("x-source-address", Some(&address));
                self.set_http_request_header("x-source-port", Some(&port));
                Action::Continue
            }
            "cas_counter" => {
                self.set_http_request_header("x-vm", Some(&self.vm_number.to_string()));
                if self.get_http_request_header("x-cas-read").is_some() {
                    let (value, _) = self.get_shared_data("cas_counter");
                    let value = String::from_utf8_lossy(&value.unwrap_or_default()).into_owned();
                    self.set_http_request_header("x-cas-counter", Some(&value));
                    return Action::Continue;
                }
                match cas_increment("cas_counter") {
                    Ok((value, mismatches)) => {
                        self.set_http_request_header("x-cas-counter", Some(&value.to_string()));
                        self.set_http_request_header(
                            "x-cas-mismatches",
                            Some(&mismatches.to_string()),
                        );
                        Action::Continue
                    }
                    Err(attempts) => {
                        let body = format!("cas gave up after {attempts} attempts");
                        self.send_http_response(500, vec![], Some(body.as_bytes()));
                        Action::Pause
                    }
                }
            }
            "queue" => {
                if let Some(queue) = self.queue {
                    let r = self.enqueue_shared_queue(queue, Some(b"hello"));
                    result(&format!("enqueue {queue} {r:?}"));
                }
                let missing = self.enqueue_shared_queue(9999, Some(b"x"));
                result(&format!("enqueue missing {missing:?}"));
                Action::Continue
            }
            _ => Action::Continue,
        }
    }

    fn on_http_request_body(&mut self, size: usize, eos: bool) -> Action {
        result(&format!("request_body size={size} eos={eos}"));
        match self.mode.as_str() {
            "pause_request_body" => {
                if !eos {
                    return Action::Pause;
                }
                let body = self.get_http_request_body(0, size).unwrap_or_default();
                let upper = body.to_ascii_uppercase();
                self.set_http_request_body(0, size, &upper);
                self.set_http_request_body(usize::MAX, 0, b"!");
                Action::Continue
            }
            "local_reply_body" => {
                self.send_http_response(
                    413,
                    vec![("x-reason", "Too Big"), ("X-Upper", "yes")],
                    Some(b"body refused"),
                );
                Action::Continue
            }
            "shared_cas" => {
                let cas = self.cas.flatten();
                let next = format!("ctx{}", self.context_id);
                match self.set_shared_data("counter", Some(next.as_bytes()), cas) {
                    Ok(()) => result("shared set ok"),
                    Err(Status::CasMismatch) => result("shared set cas_mismatch"),
                    Err(other) => result(&format!("shared set {other:?}")),
                }
                Action::Continue
            }
            _ => Action::Continue,
        }
    }

    fn on_http_response_headers(&mut self, n: usize, eos: bool) -> Action {
        result(&format!("response_headers n={n} eos={eos}"));
        if self.mode.as_str() == "properties" {
            let path = self.get_property(vec!["request", "path"]);
            let kept = self.get_property(vec!["my_state"]);
            result(&format!(
                "response properties request.path={} my_state={}",
                show(path),
                show(kept)
            ));
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if self.mode.as_str() == "properties" {
            let path = self.get_property(vec!["request", "path"]);
            let header = self.get_http_request_header("x-a");
            result(&format!("log request.path={} x-a={header:?}", show(path)));
        } else {
            result("on_log");
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // The SDK drops the context on proxy_on_delete.
        result(&format!("deleted ctx={}", self.context_id));
    }
}

/// Strings as text, anything else as hex, missing as `-`.
fn show(value: Option<Vec<u8>>) -> String {
    match value {
        None => "-".to_owned(),
        Some(bytes) => match String::from_utf8(bytes.clone()) {
            Ok(s) if s.chars().all(|c| !c.is_control()) => s,
            _ => bytes.iter().map(|b| format!("{b:02x}")).collect(),
        },
    }
}
