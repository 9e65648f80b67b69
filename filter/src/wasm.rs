//! The proxy-wasm binding: carries configuration and headers in, decisions out. No policy here.
//!
//! One root context per plugin parses the configuration in `on_configure`; it hands each stream
//! (one HTTP context per request) the prepared [`Config`] and the worker's token cache. All
//! request headers are read in `on_http_request_headers`, because Envoy serves them only then.

use crate::audit::{self, AuditRecord};
use crate::burst::{SharedStore, StoreError};
use crate::cache::TokenCache;
use crate::config::Config;
use crate::decision::{self, BodyPlan, Decision, Env, HeaderEdit, Refusal, Verdict};
use crate::guard::{self, Stop};
use crate::ratelimit::{self, proto};
use crate::reply;
use crate::request::{Request, split_host_port};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, Status};
use std::cell::RefCell;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// Per plugin and worker VM: the prepared configuration and the verified-token cache.
#[derive(Default)]
struct Root {
    config: Option<Rc<Config>>,
    cache: Rc<RefCell<TokenCache>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(bytes) = self.get_plugin_configuration() else {
            log_error(
                "portcullis: no plugin configuration (set `configuration` in the wasm filter)",
            );
            return false;
        };
        match Config::from_json(&bytes) {
            Ok(config) => {
                self.cache = Rc::new(RefCell::new(config.token_cache()));
                log_info(&format!(
                    "portcullis: configured {} route(s), {} provider(s)",
                    config.routes.len(),
                    config.providers.len()
                ));
                self.config = Some(Rc::new(config));
                true
            }
            Err(errors) => {
                let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
                log_error(&format!(
                    "portcullis: invalid configuration ({} error(s)): {}",
                    list.len(),
                    list.join("; ")
                ));
                false
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Never `None`: the SDK panics on it. Without a configuration (Envoy does not start a
        // filter whose on_configure failed, but fail closed anyway) every request gets a 503.
        Some(Box::new(Stream {
            context_id,
            config: self.config.clone(),
            cache: Rc::clone(&self.cache),
            seen: None,
            status: None,
            body: None,
            body_bytes: 0,
            rate_limit_call: None,
            rate_limit: None,
            response_headers: Vec::new(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// What one stream keeps from its header phase for the audit line.
struct Seen {
    request_id: String,
    method: String,
    path: String,
    decision: Decision,
    latency_us: u64,
}

struct Stream {
    context_id: u32,
    config: Option<Rc<Config>>,
    cache: Rc<RefCell<TokenCache>>,
    seen: Option<Seen>,
    status: Option<u16>,
    /// What to do with the request body, when the headers passed and a body follows.
    body: Option<BodyPlan>,
    /// Body bytes seen so far when the body streams through.
    body_bytes: u64,
    /// The token of the rate-limit call the request waits for.
    rate_limit_call: Option<u32>,
    /// The rate-limit service's answer, for the audit line.
    rate_limit: Option<&'static str>,
    /// Headers for the response (`RateLimit-Policy`, `RateLimit`).
    response_headers: Vec<(&'static str, String)>,
}

impl Context for Stream {
    fn on_grpc_call_response(&mut self, token: u32, status_code: u32, response_size: usize) {
        if self.rate_limit_call != Some(token) {
            return;
        }
        self.rate_limit_call = None;
        let Some(service) = self
            .config
            .as_ref()
            .and_then(|c| c.rate_limit_service.clone())
        else {
            return;
        };
        let answer = if status_code == 0 {
            self.get_grpc_call_response_body(0, response_size)
                .and_then(|body| proto::decode_response(&body).ok())
        } else {
            None
        };
        let Some(answer) = answer else {
            self.rate_limit = Some("error");
            if service.failure_mode_deny {
                self.refuse_body(ratelimit::unavailable());
            } else {
                self.resume_http_request();
            }
            return;
        };
        match ratelimit::verdict(&service, &answer) {
            ratelimit::Verdict::Allowed { headers } => {
                self.rate_limit = Some("ok");
                self.response_headers = headers;
                self.resume_http_request();
            }
            ratelimit::Verdict::OverLimit(stop) => {
                self.rate_limit = Some("over_limit");
                if stop.refusal.shadow {
                    self.record_body_refusal(stop);
                    self.resume_http_request();
                } else {
                    self.refuse_body(stop);
                }
            }
        }
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        let Some(config) = self.config.clone() else {
            self.send_http_response(
                503,
                vec![("content-type", "application/json")],
                Some(br#"{"error":"not_configured","message":"the gateway filter has no valid configuration"}"#),
            );
            self.status = Some(503);
            return Action::Pause;
        };
        let started = Instant::now();
        // The bytes variant: the SDK's String variant unwraps `from_utf8`, so one header value
        // with obs-text (which Envoy's HTTP/1 codec accepts) would panic and kill the VM.
        let headers: Vec<(String, String)> = self
            .get_http_request_headers_bytes()
            .into_iter()
            .map(|(name, value)| (name, text(value)))
            .collect();
        let req = Request::new(&headers);
        let now = unix_nanos(self.get_current_time());
        let decision = {
            let mut cache = self.cache.borrow_mut();
            let mut env = Env {
                cache: &mut cache,
                store: &HostStore,
                now_ns: now,
                peer: self.peer(),
                end_of_stream,
            };
            decision::decide(&config, &mut env, &req)
        };
        let request_id = req
            .header("x-request-id")
            .map_or_else(|| format!("{now:x}-{:x}", self.context_id), str::to_owned);
        let call = match &decision.verdict {
            Verdict::Refuse(refusal) if !refusal.shadow => {
                self.refuse(refusal, &request_id);
                None
            }
            _ => {
                for edit in &decision.edits {
                    match edit {
                        HeaderEdit::Remove(name) => self.set_http_request_header(name, None),
                        HeaderEdit::Set(name, value) => {
                            self.set_http_request_header(name, Some(value))
                        }
                    }
                }
                self.body = decision.body;
                Some(self.ask_rate_limit_service(&config, &decision, &req))
            }
        };
        self.seen = Some(Seen {
            request_id,
            method: req.method().to_owned(),
            path: decision
                .normalized_path
                .clone()
                .unwrap_or_else(|| req.path().to_owned()),
            decision,
            latency_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        });
        match call {
            None | Some(Ask::Wait) => Action::Pause,
            Some(Ask::NotNeeded) => Action::Continue,
            Some(Ask::Failed(stop)) => {
                self.refuse_body(stop);
                Action::Pause
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let (Some(plan), Some(config)) = (self.body, self.config.clone()) else {
            return Action::Continue;
        };
        let size = u64::try_from(body_size).unwrap_or(u64::MAX);
        if !plan.buffer {
            // Streaming: each call carries one chunk.
            self.body_bytes = self.body_bytes.saturating_add(size);
            if self.body_bytes > plan.max_bytes {
                self.refuse_body(guard::too_large(plan.max_bytes));
                return Action::Pause;
            }
            return Action::Continue;
        }
        // Buffering: after a Pause, each call carries the whole body so far.
        if size > plan.max_bytes {
            self.refuse_body(guard::too_large(plan.max_bytes));
            return Action::Pause;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let started = Instant::now();
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        let stop = config
            .routes
            .get(plan.route)
            .and_then(|route| guard::check_body(route, &plan, &body));
        let elapsed = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        if let Some(seen) = &mut self.seen {
            seen.latency_us = seen.latency_us.saturating_add(elapsed);
        }
        match stop {
            Some(stop) => {
                let shadow =
                    stop.refusal.shadow || config.routes.get(plan.route).is_some_and(|r| r.shadow);
                if shadow {
                    self.record_body_refusal(stop.shadowed());
                    Action::Continue
                } else {
                    self.refuse_body(stop);
                    Action::Pause
                }
            }
            None => Action::Continue,
        }
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        for (name, value) in std::mem::take(&mut self.response_headers) {
            self.add_http_response_header(name, &value);
        }
        if self.status.is_none() {
            self.status = self
                .get_http_response_header_bytes(":status")
                .and_then(|s| std::str::from_utf8(&s).ok()?.parse().ok());
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        let time = audit::rfc3339(unix_nanos(self.get_current_time()));
        let (Some(seen), Some(config)) = (&self.seen, &self.config) else {
            // Envoy (or an earlier filter) answered before the request reached this filter.
            let record = AuditRecord {
                time,
                decision: "none",
                reason: "not_seen",
                status: self.status,
                ..AuditRecord::default()
            };
            log_info(&record.to_json());
            return;
        };
        let d = &seen.decision;
        let route = d
            .route
            .and_then(|i| config.routes.get(i))
            .map(|r| r.name.as_str());
        let identity = d.identity.as_ref();
        let client_ip = d.client_ip.map(|ip| ip.to_string());
        let record = AuditRecord {
            time,
            request_id: &seen.request_id,
            route,
            method: &seen.method,
            path: &seen.path,
            client_ip: client_ip.as_deref(),
            provider: identity
                .and_then(|i| config.providers.get(i.provider))
                .map(|p| p.name.as_str()),
            subject: identity.and_then(|i| i.subject()),
            consumer: identity.and_then(|i| i.consumer(config)),
            decision: match &d.verdict {
                Verdict::Allow => "allow",
                Verdict::Refuse(r) if r.shadow => "shadow_deny",
                Verdict::Refuse(_) => "deny",
            },
            reason: d.reason,
            rule: d.rule.as_deref(),
            status: self.status,
            filter_latency_us: seen.latency_us,
            rate_limit: self.rate_limit,
        };
        log_info(&record.to_json());
    }
}

impl Stream {
    /// `source.address` without its port (`1.2.3.4:5678`, `[::1]:5678`), as an address.
    fn peer(&self) -> Option<IpAddr> {
        let raw = self.get_property(vec!["source", "address"])?;
        let text = String::from_utf8(raw).ok()?;
        let (host, _) = split_host_port(&text);
        let ip = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        ip.parse().ok()
    }

    /// Sends the local reply of a refusal.
    fn refuse(&mut self, refusal: &Refusal, request_id: &str) {
        let body = reply::body(refusal, request_id);
        let headers = reply::headers(refusal);
        let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.send_http_response(u32::from(refusal.status), pairs, Some(body.as_bytes()));
        self.status = Some(refusal.status);
    }

    /// Calls the rate-limit service when the route has descriptors for this request. A call
    /// that cannot be made is a failure of the service.
    fn ask_rate_limit_service(
        &mut self,
        config: &Config,
        decision: &Decision,
        req: &Request<'_>,
    ) -> Ask {
        let Some(service) = &config.rate_limit_service else {
            return Ask::NotNeeded;
        };
        let descriptors = ratelimit::descriptors(config, decision, req);
        if descriptors.is_empty() {
            return Ask::NotNeeded;
        }
        let message = ratelimit::request_message(service, &descriptors);
        let call = self.dispatch_grpc_call(
            // A serialized GrpcService is valid UTF-8 for any cluster name under 128 bytes;
            // the SDK takes the target as &str.
            std::str::from_utf8(&service.grpc_service).unwrap_or(&service.cluster),
            ratelimit::SERVICE,
            ratelimit::METHOD,
            Vec::new(),
            Some(&message),
            Duration::from_millis(service.timeout_ms),
        );
        match call {
            Ok(token) => {
                self.rate_limit_call = Some(token);
                Ask::Wait
            }
            Err(_) => {
                self.rate_limit = Some("error");
                if service.failure_mode_deny {
                    Ask::Failed(ratelimit::unavailable())
                } else {
                    Ask::NotNeeded
                }
            }
        }
    }

    /// Refuses in the body phase, and records why for the audit line.
    fn refuse_body(&mut self, stop: Stop) {
        self.body = None;
        let request_id = self
            .seen
            .as_ref()
            .map_or_else(String::new, |s| s.request_id.clone());
        self.refuse(&stop.refusal, &request_id);
        self.record_body_refusal(stop);
    }

    fn record_body_refusal(&mut self, stop: Stop) {
        if let Some(seen) = &mut self.seen {
            seen.decision.verdict = Verdict::Refuse(stop.refusal);
            seen.decision.reason = stop.reason;
            seen.decision.rule = stop.rule;
        }
    }
}

/// What the header phase does about the rate-limit service.
enum Ask {
    /// No service, or no descriptor for this request.
    NotNeeded,
    /// The request waits for the answer.
    Wait,
    /// The call could not be made and the failure mode refuses.
    Failed(Stop),
}

/// proxy-wasm shared data, shared by every worker VM of the plugin's VM id.
struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        match proxy_wasm::hostcalls::get_shared_data(key) {
            Ok((Some(value), Some(cas))) => Some((value, cas)),
            _ => None,
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        match proxy_wasm::hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(StoreError::CasMismatch),
            Err(_) => Err(StoreError::Refused),
        }
    }
}

/// A header value as text; invalid UTF-8 becomes U+FFFD, which no credential contains.
fn text(value: Vec<u8>) -> String {
    String::from_utf8(value).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn log_info(msg: &str) {
    let _ = proxy_wasm::hostcalls::log(LogLevel::Info, msg);
}

fn log_error(msg: &str) {
    let _ = proxy_wasm::hostcalls::log(LogLevel::Error, msg);
}
