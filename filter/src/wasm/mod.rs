//! The proxy-wasm binding: carries configuration and headers in, decisions out. No policy here.
//!
//! [`exports`] receives Envoy's callbacks and routes them to the contexts below; [`hostcalls`]
//! makes every call into Envoy without any way to panic (the proxy-wasm SDK's wrappers panic on
//! statuses they do not expect, which would kill the worker's VM).
//!
//! One root context per plugin and VM parses the configuration in `on_configure`; it hands
//! each stream (one HTTP context per request) the prepared [`Config`], the worker's token cache
//! and the worker's fetched keys. All request headers are read in `on_request_headers`,
//! because Envoy serves them only then.
//!
//! A request whose provider fetches its keys and has none yet (or not the token's `kid`) is
//! paused and parked with the root. The root fetches keys on its tick (`jwks`); when they
//! change, or the wait ends, it makes the stream the effective context and decides the request
//! again. That is why a stream's state lives in a [`Core`] the root can reach.

mod exports;
mod hostcalls;

use crate::audit::{self, AuditRecord};
use crate::burst::{SharedStore, StoreError};
use crate::cache::CacheKey;
use crate::cache::TokenCache;
use crate::client_ip::{self, SourceAddress};
use crate::config::provider::{Introspection, JwtProvider, Provider};
use crate::config::{Config, ProviderKind};
use crate::decision::{self, BodyPlan, Decision, Env, HeaderEdit, Refusal, Verdict, Wait, Waited};
use crate::guard::{self, Stop};
use crate::introspect::{self, Introspected, IntrospectionCache};
use crate::jwks::{Fetch, Refetch, RemoteKeys};
use crate::metrics::{self, Outcome, Series};
use crate::ratelimit::{self, proto};
use crate::reply;
use crate::request::Request;
use crate::shared_cache::{EntryId, Kind, SharedTokens};
use exports::Callout;
use hostcalls::{Buffer, Level, Map, MetricKind, SetShared};
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

/// How often the root looks at the shared key sets and starts fetches, when a provider fetches
/// its keys. Also how late a waiting request may learn that its wait is over.
const TICK: Duration = Duration::from_millis(200);
/// Most requests one worker parks while they wait for keys; beyond, they are decided at once.
const MAX_WAITERS: usize = 4096;
/// Most introspection calls one worker has in flight; beyond, requests get the endpoint's
/// failure mode (so a flood of made-up opaque tokens cannot become a flood of calls).
const MAX_INTROSPECTIONS_IN_FLIGHT: usize = 256;
/// Most of those one client (an IPv4 address, an IPv6 /64) may hold: one client's flood of
/// made-up tokens gets the failure mode itself instead of filling the worker's share and
/// pushing every other client's new token into it.
const MAX_INTROSPECTIONS_PER_CLIENT: usize = 16;

/// Per plugin and worker VM: the prepared configuration, the verified-token cache and the
/// fetched keys.
pub(crate) struct Root {
    id: u32,
    config: Option<Rc<Config>>,
    cache: Rc<RefCell<TokenCache>>,
    worker: Rc<RefCell<Worker>>,
}

/// What the root and its streams share in one worker.
#[derive(Default)]
struct Worker {
    keys: RemoteKeys,
    /// Introspection answers.
    introspected: IntrospectionCache,
    /// Introspection calls in flight: token, deadline (ns) and the client's network. An entry
    /// whose answer never comes (its stream went away) leaves at its deadline.
    introspecting: Vec<(u32, u64, Option<IpAddr>)>,
    /// Requests paused until their provider's keys change or their wait ends.
    waiters: Vec<Waiter>,
    /// Stat ids of the metric series this worker defined (ids are per VM; the stats behind
    /// them are Envoy's, shared by name).
    metrics: HashMap<Series, u32>,
}

struct Waiter {
    provider: usize,
    deadline_ns: u64,
    core: Weak<RefCell<Core>>,
}

impl Root {
    pub(crate) fn new(id: u32) -> Self {
        Root {
            id,
            config: None,
            cache: Rc::default(),
            worker: Rc::default(),
        }
    }

    /// Sends key fetches; one that cannot be sent backs off like a failed one.
    fn send_fetches(&self, fetches: Vec<Fetch>, now: u64) {
        for fetch in fetches {
            let sent = hostcalls::http_call(
                &fetch.cluster,
                &[
                    (":method", "GET"),
                    (":path", &fetch.path),
                    (":authority", &fetch.authority),
                    ("accept", "application/json"),
                    ("user-agent", "portcullis"),
                ],
                b"",
                u32::try_from(fetch.timeout_ms).unwrap_or(u32::MAX),
            );
            let mut worker = self.worker.borrow_mut();
            match sent {
                Ok(token) => {
                    exports::register(Callout::Http(token), self.id);
                    worker.keys.started(&fetch, token);
                }
                Err(error) => {
                    log_warn(&format!(
                        "portcullis: provider {}: cannot fetch keys through cluster {:?}: {error}",
                        worker.keys.name(fetch.provider),
                        fetch.cluster
                    ));
                    worker.keys.not_sent(&fetch, &HostStore, now);
                }
            }
        }
    }

    /// Sets of these providers were installed (and their keys changed, or not): cached tokens
    /// of a provider whose keys changed go, and the requests waiting for any of them (or whose
    /// wait is over) are decided again.
    fn keys_installed(&self, installed: &[(usize, bool)], now: u64) {
        for &(provider, _) in installed.iter().filter(|(_, changed)| *changed) {
            self.cache.borrow_mut().forget_provider(provider);
            log_info(&format!(
                "portcullis: provider {}: key set installed",
                self.worker.borrow().keys.name(provider)
            ));
        }
        let ready: Vec<Weak<RefCell<Core>>> = {
            let mut worker = self.worker.borrow_mut();
            let (ready, waiting) = std::mem::take(&mut worker.waiters)
                .into_iter()
                .partition(|w| {
                    installed.iter().any(|(p, _)| *p == w.provider) || w.deadline_ns <= now
                });
            worker.waiters = waiting;
            ready.into_iter().map(|w: Waiter| w.core).collect()
        };
        for core in ready {
            self.on_behalf(&core, |core| {
                core.waited.keys = true;
                core.decide_again();
            });
        }
    }

    /// Runs `f` on a stream's core with the stream as the effective context, then makes the
    /// root effective again (so that its own callouts stay its own).
    fn on_behalf(&self, core: &Weak<RefCell<Core>>, f: impl FnOnce(&mut Core)) {
        let Some(core) = core.upgrade() else {
            return;
        };
        let Ok(mut core) = core.try_borrow_mut() else {
            return;
        };
        // A stream that ended (the client left) must not be touched: Envoy keeps its id valid
        // until the filter is deleted, but its callbacks are gone.
        if !core.finished && hostcalls::set_effective_context(core.context_id).is_ok() {
            f(&mut core);
        }
        let _ = hostcalls::set_effective_context(self.id);
    }

    /// The answer to one of the root's key fetches (`headers` 0: the call failed, e.g. the
    /// connection was reset, and there is no answer to read).
    pub(crate) fn on_http_call_response(&mut self, token: u32, headers: usize, body_size: usize) {
        if !self.worker.borrow().keys.owns(token) {
            return;
        }
        let now = now_ns();
        let (status, bytes) =
            http_call_response(headers, body_size, crate::jwks::MAX_DOCUMENT_BYTES);
        let answer = self
            .worker
            .borrow_mut()
            .keys
            .on_response(token, status, &bytes, &HostStore, now);
        if let Some(error) = &answer.error {
            log_warn(&format!("portcullis: {error}"));
        }
        if let Some(next) = answer.next {
            self.send_fetches(vec![next], now);
        }
        if let Some(installed) = answer.installed {
            self.keys_installed(&[installed], now);
        }
    }

    /// Reads and prepares the configuration; `false` makes Envoy refuse the filter.
    pub(crate) fn on_configure(&mut self) -> bool {
        let bytes = match hostcalls::get_buffer(Buffer::PluginConfiguration, usize::MAX) {
            Ok(Some(bytes)) if !bytes.is_empty() => bytes,
            Ok(_) => {
                log_error(
                    "portcullis: no plugin configuration (set `configuration` in the wasm filter)",
                );
                return false;
            }
            Err(error) => {
                log_error(&format!(
                    "portcullis: cannot read the plugin configuration: {error}"
                ));
                return false;
            }
        };
        match Config::from_json(&bytes) {
            Ok(config) => {
                self.cache = Rc::new(RefCell::new(config.token_cache()));
                let keys = RemoteKeys::new(&config);
                keys.init_shared(&HostStore);
                if !keys.is_empty() {
                    // The first tick fetches (or installs what another worker fetched).
                    let period = u32::try_from(TICK.as_millis()).unwrap_or(u32::MAX);
                    if let Err(error) = hostcalls::set_tick_period(period) {
                        log_error(&format!(
                            "portcullis: cannot start the timer that fetches keys: {error}"
                        ));
                        return false;
                    }
                }
                self.worker = Rc::new(RefCell::new(Worker {
                    keys,
                    introspected: IntrospectionCache::new(
                        config.token_cache_entries,
                        config.token_cache_bytes,
                    ),
                    ..Worker::default()
                }));
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

    pub(crate) fn on_tick(&mut self) {
        let now = now_ns();
        let (installed, fetches) = self.worker.borrow_mut().keys.poll(&HostStore, now);
        self.send_fetches(fetches, now);
        self.keys_installed(&installed, now);
    }

    /// A new stream of this plugin. Without a configuration (Envoy does not start a filter
    /// whose on_configure failed, but fail closed anyway) its requests get a 503.
    pub(crate) fn new_stream(&self, context_id: u32) -> Rc<RefCell<Core>> {
        Core::new(
            context_id,
            self.config.clone(),
            Rc::clone(&self.cache),
            Rc::clone(&self.worker),
        )
    }
}

/// What one stream keeps from its header phase for the audit line.
struct Seen {
    request_id: String,
    method: String,
    path: String,
    decision: Decision,
    latency_us: u64,
    /// The refusal came from the body phase.
    body_refused: bool,
}

/// The request's headers and connection facts, kept while it waits for keys.
struct Held {
    headers: Vec<(String, String)>,
    peer: Option<IpAddr>,
    end_of_stream: bool,
    request_id: String,
    /// Time spent deciding so far.
    latency_us: u64,
}

/// One stream's state, reachable from the root while the request waits.
pub(crate) struct Core {
    me: Weak<RefCell<Core>>,
    context_id: u32,
    config: Option<Rc<Config>>,
    cache: Rc<RefCell<TokenCache>>,
    worker: Rc<RefCell<Worker>>,
    /// Set between the header phase and the final decision.
    held: Option<Held>,
    seen: Option<Seen>,
    status: Option<u16>,
    /// What to do with the request body, when the headers passed and a body follows.
    body: Option<BodyPlan>,
    /// Body bytes seen so far when the body streams through.
    body_bytes: u64,
    /// The token of the rate-limit call the request waits for.
    rate_limit_call: Option<u32>,
    /// The introspection call the request waits for: token, provider, and the answer's key.
    introspection_call: Option<(u32, usize, CacheKey)>,
    /// The answer it got, for the decision that follows.
    answer: Option<(CacheKey, Introspected)>,
    /// The rate-limit service's answer, for the audit line.
    rate_limit: Option<&'static str>,
    /// Headers for the response (`RateLimit-Policy`, `RateLimit`).
    response_headers: Vec<(&'static str, String)>,
    /// The stream is done (`on_done`): nothing may act on it any more.
    finished: bool,
    /// What the request already waited for.
    waited: Waited,
}

/// Whether the request goes on now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Pause,
}

impl Core {
    fn new(
        context_id: u32,
        config: Option<Rc<Config>>,
        cache: Rc<RefCell<TokenCache>>,
        worker: Rc<RefCell<Worker>>,
    ) -> Rc<RefCell<Core>> {
        Rc::new_cyclic(|me| {
            RefCell::new(Core {
                me: me.clone(),
                context_id,
                config,
                cache,
                worker,
                held: None,
                seen: None,
                status: None,
                body: None,
                body_bytes: 0,
                rate_limit_call: None,
                introspection_call: None,
                answer: None,
                rate_limit: None,
                response_headers: Vec::new(),
                finished: false,
                waited: Waited::default(),
            })
        })
    }

    /// The stream ended: nothing may act on it any more, and an introspection call it waited
    /// for no longer holds one of the worker's places (its answer will be dropped).
    pub(crate) fn on_done(&mut self) {
        self.finished = true;
        if let Some((call, _, _)) = self.introspection_call.take()
            && let Ok(mut worker) = self.worker.try_borrow_mut()
        {
            worker.introspecting.retain(|(t, _, _)| *t != call);
        }
    }

    pub(crate) fn on_request_headers(&mut self, end_of_stream: bool) -> Flow {
        // Values as bytes, made text without failing: a header value with obs-text (which
        // Envoy's HTTP/1 codec accepts) becomes U+FFFD, which no credential contains.
        let headers: Vec<(String, String)> = match hostcalls::get_map(Map::Request) {
            Ok(headers) => headers
                .into_iter()
                .map(|(name, value)| (name, text(value)))
                .collect(),
            Err(_) => {
                // Without its headers the request cannot be decided: refuse it.
                self.refuse(&guard::host_failure().refusal, "");
                return Flow::Pause;
            }
        };
        let peer = self.peer();
        let request_id = match headers.iter().find(|(n, _)| n == "x-request-id") {
            Some((_, id)) => id.clone(),
            None => format!("{:x}-{:x}", now_ns(), self.context_id),
        };
        self.held = Some(Held {
            headers,
            peer,
            end_of_stream,
            request_id,
            latency_us: 0,
        });
        self.decide()
    }

    pub(crate) fn on_response_headers(&mut self) {
        for (name, value) in std::mem::take(&mut self.response_headers) {
            let _ = hostcalls::add_map_value(Map::Response, name, &value);
        }
        if self.status.is_none() {
            self.status = hostcalls::get_map_value(Map::Response, ":status")
                .ok()
                .flatten()
                .and_then(|s| std::str::from_utf8(&s).ok()?.parse().ok());
        }
    }

    /// The header-phase decision (again after each wait, which `self.waited` records).
    fn decide(&mut self) -> Flow {
        let Some(config) = self.config.clone() else {
            send_or_reset(
                503,
                &[("content-type", "application/json")],
                br#"{"error":"not_configured","message":"the gateway filter has no valid configuration"}"#,
            );
            self.status = Some(503);
            return Flow::Pause;
        };
        let Some(held) = self.held.take() else {
            return Flow::Pause;
        };
        let started = Instant::now();
        let req = Request::new(&held.headers);
        let now = now_ns();
        let decision = {
            let mut cache = self.cache.borrow_mut();
            let mut worker = self.worker.borrow_mut();
            let worker = &mut *worker;
            let mut env = Env {
                cache: &mut cache,
                store: &HostStore,
                now_ns: now,
                peer: held.peer,
                end_of_stream: held.end_of_stream,
                remote_keys: &worker.keys,
                introspected: &mut worker.introspected,
                answer: self.answer.as_ref(),
                waited: self.waited,
            };
            decision::decide(&config, &mut env, &req)
        };
        let latency_us = held
            .latency_us
            .saturating_add(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
        if let Some(wait) = decision.wait {
            let waiting = match wait {
                Wait::Keys(provider) => {
                    let parked = self.park(provider, now);
                    self.waited.keys |= !parked;
                    parked
                }
                Wait::Introspection {
                    provider,
                    token,
                    key,
                } => {
                    let client = decision.client_ip;
                    let asked = self.introspect(&config, provider, &token, key, client);
                    self.waited.introspection |= !asked;
                    asked
                }
            };
            self.held = Some(Held { latency_us, ..held });
            if waiting {
                return Flow::Pause;
            }
            return self.decide();
        }
        let call = match &decision.verdict {
            Verdict::Refuse(refusal) if !refusal.shadow => {
                self.refuse(refusal, &held.request_id);
                None
            }
            _ => {
                if !apply_edits(&decision.edits) {
                    // A forged identity header that could not be removed, or an identity
                    // header that could not be set, must not reach the service.
                    self.refuse(&guard::host_failure().refusal, &held.request_id);
                    return Flow::Pause;
                }
                if config.clear_route_cache && !decision.edits.is_empty() {
                    clear_route_cache();
                }
                self.body = decision.body;
                Some(self.ask_rate_limit_service(&config, &decision, &req))
            }
        };
        publish_decision(metrics::verdict_word(&decision), decision.reason);
        self.seen = Some(Seen {
            request_id: held.request_id.clone(),
            method: req.method().to_owned(),
            path: decision
                .normalized_path
                .clone()
                .unwrap_or_else(|| req.path().to_owned()),
            decision,
            latency_us,
            body_refused: false,
        });
        match call {
            None | Some(Ask::Wait) => Flow::Pause,
            Some(Ask::NotNeeded) => Flow::Continue,
            Some(Ask::Failed(stop)) => self.refuse_late_unless_shadowed(stop, false),
        }
    }

    /// Parks the request until the provider's keys change or its wait ends; `false` when it
    /// should be decided at once instead (a refetch for an unknown `kid` is throttled, or too
    /// many requests wait).
    fn park(&mut self, provider: usize, now: u64) -> bool {
        let mut worker = self.worker.borrow_mut();
        if worker.waiters.len() >= MAX_WAITERS {
            // Requests whose clients left do not hold places.
            worker.waiters.retain(|w| {
                w.core
                    .upgrade()
                    .is_some_and(|c| c.try_borrow().is_ok_and(|c| !c.finished))
            });
        }
        if worker.waiters.len() >= MAX_WAITERS {
            return false;
        }
        if worker.keys.keys(provider).is_some()
            && worker.keys.request_refetch(provider, &HostStore, now) == Refetch::Throttled
        {
            return false;
        }
        let deadline_ns = now.saturating_add(worker.keys.wait_ns(provider));
        worker.waiters.push(Waiter {
            provider,
            deadline_ns,
            core: self.me.clone(),
        });
        true
    }

    /// Asks the provider's introspection endpoint about the token; `false` if the call could
    /// not be made (the request is then decided as if the endpoint failed).
    fn introspect(
        &mut self,
        config: &Config,
        provider: usize,
        token: &str,
        key: CacheKey,
        client: Option<IpAddr>,
    ) -> bool {
        let Some((p, _, endpoint)) = introspection_of(config, provider) else {
            return false;
        };
        let now = now_ns();
        let network = client.map(|ip| crate::burst::client_network(ip, 32, 64));
        {
            let mut worker = self.worker.borrow_mut();
            worker
                .introspecting
                .retain(|(_, deadline, _)| *deadline > now);
            let mine = worker
                .introspecting
                .iter()
                .filter(|(_, _, n)| *n == network)
                .count();
            // Unknown clients (no usable address) share only the worker-wide limit: one
            // budget for all of them would let one of them starve the others.
            if network.is_some() && mine >= MAX_INTROSPECTIONS_PER_CLIENT {
                return false;
            }
            if worker.introspecting.len() >= MAX_INTROSPECTIONS_IN_FLIGHT {
                log_warn(&format!(
                    "portcullis: provider {}: {MAX_INTROSPECTIONS_IN_FLIGHT} introspection calls in flight; refusing more",
                    p.name
                ));
                return false;
            }
        }
        let (headers, body) = introspect::call(endpoint, token);
        let sent = hostcalls::http_call(
            &endpoint.cluster,
            &headers,
            &body,
            u32::try_from(endpoint.timeout_ms).unwrap_or(u32::MAX),
        );
        match sent {
            Ok(call) => {
                self.introspection_call = Some((call, provider, key));
                let mut worker = self.worker.borrow_mut();
                let deadline = now.saturating_add(
                    endpoint
                        .timeout_ms
                        .saturating_add(1_000)
                        .saturating_mul(1_000_000),
                );
                worker.introspecting.push((call, deadline, network));
                exports::register(Callout::Http(call), self.context_id);
                true
            }
            Err(error) => {
                log_warn(&format!(
                    "portcullis: provider {}: cannot call the introspection endpoint through cluster {:?}: {error}",
                    p.name, endpoint.cluster
                ));
                false
            }
        }
    }

    /// The introspection endpoint answered (or failed, `headers` 0): keep the answer, decide
    /// again.
    pub(crate) fn on_introspection_answer(&mut self, call: u32, headers: usize, body_size: usize) {
        let Some((token, provider, key)) = self.introspection_call else {
            return;
        };
        if token != call {
            return;
        }
        self.introspection_call = None;
        self.worker
            .borrow_mut()
            .introspecting
            .retain(|(t, _, _)| *t != call);
        let Some(config) = self.config.clone() else {
            return;
        };
        let Some((p, jwt, endpoint)) = introspection_of(&config, provider) else {
            return;
        };
        let (status, body) = http_call_response(headers, body_size, introspect::MAX_ANSWER_BYTES);
        let now = now_ns() / 1_000_000_000;
        match introspect::read_answer(jwt, endpoint, status, &body, now) {
            Ok((answer, until)) => {
                self.worker.borrow_mut().introspected.insert(
                    key,
                    answer.clone(),
                    until,
                    body.len(),
                );
                self.answer = Some((key, answer));
                // The other workers reuse the answer instead of asking again.
                if let Some(shared) = SharedTokens::new(&HostStore, &config) {
                    let id = EntryId {
                        provider,
                        hash: &key.1,
                        stamp: 0,
                        kind: Kind::Introspection,
                    };
                    shared.put(id, until, &body);
                }
            }
            Err(why) => log_warn(&format!("portcullis: provider {}: {why}", p.name)),
        }
        self.waited.introspection = true;
        self.decide_again();
    }

    /// Decides the request again after it waited (keys changed, the wait ended, an
    /// introspection answer came), and lets it go on if it passes.
    fn decide_again(&mut self) {
        if self.finished {
            return;
        }
        if self.decide() == Flow::Continue {
            self.resume();
        }
    }

    /// Lets the paused request go on; if Envoy refuses, the request is reset rather than left
    /// hanging.
    fn resume(&mut self) {
        if hostcalls::resume_request().is_err() {
            let _ = hostcalls::close_request();
        }
    }

    /// The rate-limit service answered (`status_code` 0 and a message of `response_size`
    /// bytes) or the call failed (a gRPC status).
    pub(crate) fn on_rate_limit_answer(
        &mut self,
        token: u32,
        status_code: u32,
        response_size: usize,
    ) {
        if self.rate_limit_call != Some(token) || self.finished {
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
            hostcalls::get_buffer(Buffer::GrpcReceive, response_size)
                .ok()
                .flatten()
                .and_then(|body| proto::decode_response(&body).ok())
        } else {
            None
        };
        let flow = match answer {
            None => {
                self.rate_limit = Some("error");
                if service.failure_mode_deny {
                    self.refuse_late_unless_shadowed(ratelimit::unavailable(&service), false)
                } else {
                    Flow::Continue
                }
            }
            Some(answer) => match ratelimit::verdict(&service, &answer) {
                ratelimit::Verdict::Allowed { headers } => {
                    self.rate_limit = Some("ok");
                    self.response_headers = headers;
                    Flow::Continue
                }
                ratelimit::Verdict::OverLimit(stop) => {
                    self.rate_limit = Some("over_limit");
                    self.refuse_late_unless_shadowed(stop, false)
                }
            },
        };
        if flow == Flow::Continue {
            self.resume();
        }
    }

    pub(crate) fn on_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Flow {
        // Envoy holds the body while the headers are paused (StopAllIteration); should a chunk
        // come anyway before the decision, it must not let the request on.
        if self.held.is_some() || self.introspection_call.is_some() {
            return Flow::Pause;
        }
        let (Some(plan), Some(config)) = (self.body, self.config.clone()) else {
            return Flow::Continue;
        };
        let size = u64::try_from(body_size).unwrap_or(u64::MAX);
        if !plan.buffer {
            // Streaming: each call carries one chunk.
            self.body_bytes = self.body_bytes.saturating_add(size);
            if self.body_bytes > plan.max_bytes {
                return self.refuse_late_unless_shadowed(guard::too_large(plan.max_bytes), true);
            }
            return Flow::Continue;
        }
        // Buffering: after a Pause, each call carries the whole body so far.
        if size > plan.max_bytes {
            return self.refuse_late_unless_shadowed(guard::too_large(plan.max_bytes), true);
        }
        if !end_of_stream {
            return Flow::Pause;
        }
        self.check_buffered_body(plan, &config, body_size)
    }

    /// The whole buffered body against the route's checks, at its end (the last body chunk,
    /// or the trailers); at most `max` bytes are read, one past the limit being enough to
    /// refuse.
    fn check_buffered_body(&mut self, plan: BodyPlan, config: &Config, max: usize) -> Flow {
        self.body = None;
        let started = Instant::now();
        let body = match hostcalls::get_buffer(Buffer::RequestBody, max) {
            Ok(body) => body.unwrap_or_default(),
            Err(_) => {
                // A body that cannot be read cannot be checked.
                self.refuse_late(guard::host_failure(), true);
                return Flow::Pause;
            }
        };
        let stop = config
            .routes
            .get(plan.route)
            .and_then(|route| guard::check_body(route, &plan, &body));
        let elapsed = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        if let Some(seen) = &mut self.seen {
            seen.latency_us = seen.latency_us.saturating_add(elapsed);
        }
        match stop {
            Some(stop) => self.refuse_late_unless_shadowed(stop, true),
            None => Flow::Continue,
        }
    }

    /// Request trailers (HTTP/2; HTTP/1 with `enable_trailers`). When they follow a body, they
    /// end the request: no body callback has `end_of_stream`, so a body that waits to be
    /// checked is checked here, or it would go upstream unchecked. Identity-header and
    /// credential names (in any `_`/`-` spelling) are removed from them — a credential is never
    /// read from a trailer, so none may reach a service that merges trailers into headers —
    /// and their values are inspected as header values are.
    pub(crate) fn on_request_trailers(&mut self) -> Flow {
        if self.held.is_some() || self.introspection_call.is_some() {
            return Flow::Pause;
        }
        let Some(config) = self.config.clone() else {
            return Flow::Continue;
        };
        let trailers = match hostcalls::get_map(Map::RequestTrailers) {
            Ok(trailers) => trailers,
            Err(_) => {
                self.refuse_late(guard::host_failure(), false);
                return Flow::Pause;
            }
        };
        let trailers: Vec<(String, String)> =
            trailers.into_iter().map(|(n, v)| (n, text(v))).collect();
        for (name, _) in &trailers {
            let spelled = name.replace('_', "-");
            let credential = matches!(
                spelled.as_str(),
                "authorization" | "proxy-authorization" | "cookie"
            ) || config.providers.iter().any(|p| {
                p.sources().0.iter().any(
                    |s| matches!(s, crate::config::provider::TokenSource::Header { name, .. } if *name == spelled),
                )
            });
            if (credential || config.protected_headers.contains(&spelled))
                && hostcalls::set_map_value(Map::RequestTrailers, name, None).is_err()
            {
                self.refuse_late(guard::host_failure(), false);
                return Flow::Pause;
            }
        }
        let route = self
            .seen
            .as_ref()
            .and_then(|s| s.decision.route)
            .and_then(|i| config.routes.get(i));
        if let Some(stop) = route.and_then(|r| guard::inspect_trailers(r, &trailers))
            && self.refuse_late_unless_shadowed(stop, false) == Flow::Pause
        {
            return Flow::Pause;
        }
        match self.body {
            Some(plan) if plan.buffer => {
                let max = usize::try_from(plan.max_bytes)
                    .unwrap_or(usize::MAX)
                    .saturating_add(1);
                self.check_buffered_body(plan, &config, max)
            }
            _ => Flow::Continue,
        }
    }

    /// The audit line and the metrics of the finished request.
    pub(crate) fn on_log(&self) {
        let time = audit::rfc3339(now_ns());
        let (Some(seen), Some(config)) = (&self.seen, &self.config) else {
            // Envoy (or an earlier filter) answered before the request reached this filter,
            // or the client left while the request waited for keys.
            let reason = if self.held.is_some() {
                "abandoned_while_waiting"
            } else {
                "not_seen"
            };
            let record = AuditRecord {
                time,
                request_id: self.held.as_ref().map_or("", |h| h.request_id.as_str()),
                decision: "none",
                reason,
                status: self.status,
                ..AuditRecord::default()
            };
            log_info(&record.to_json());
            if let Some(config) = &self.config {
                self.count(
                    config,
                    &Outcome {
                        decision: None,
                        verdict: "none",
                        reason,
                        rate_limit: None,
                        body_refused: false,
                        latency_us: 0,
                    },
                );
            }
            return;
        };
        let d = &seen.decision;
        let route = d
            .route
            .and_then(|i| config.routes.get(i))
            .map(|r| r.name.as_str());
        let identity = d.identity.as_ref();
        let client_ip = d.client_ip.map(|ip| ip.to_string());
        let verdict = metrics::verdict_word(d);
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
            decision: verdict,
            reason: d.reason,
            rule: d.rule.as_deref(),
            status: self.status,
            filter_latency_us: seen.latency_us,
            rate_limit: self.rate_limit,
        };
        log_info(&record.to_json());
        self.count(
            config,
            &Outcome {
                decision: Some(d),
                verdict,
                reason: d.reason,
                rate_limit: self.rate_limit,
                body_refused: seen.body_refused,
                latency_us: seen.latency_us,
            },
        );
    }

    /// Adds the finished request to its metric series, defining each series' stat the first
    /// time this worker meets it.
    fn count(&self, config: &Config, outcome: &Outcome<'_>) {
        let mut worker = self.worker.borrow_mut();
        for (series, value) in metrics::of_request(config, outcome) {
            let id = match worker.metrics.get(&series) {
                Some(id) => *id,
                None => {
                    let kind = match series.kind() {
                        metrics::Kind::Counter => MetricKind::Counter,
                        metrics::Kind::Histogram => MetricKind::Histogram,
                    };
                    let Ok(id) = hostcalls::define_metric(kind, &series.stat_name(config)) else {
                        continue;
                    };
                    worker.metrics.insert(series, id);
                    id
                }
            };
            // A refusal by the host only loses one sample.
            let _ = match series.kind() {
                metrics::Kind::Counter => hostcalls::increment_metric(id, 1),
                metrics::Kind::Histogram => hostcalls::record_metric(id, value),
            };
        }
    }

    /// `source.address` without its port (`1.2.3.4:5678`, `[::1]:5678`), as an address.
    /// An address Envoy took from `X-Forwarded-For` (port 0: the connection manager's
    /// `use_remote_address` is false, or its own trusted hops chose it) counts only with
    /// `client_ip.trust_envoy_xff`; otherwise the client is unknown, which passes no IP list.
    fn peer(&self) -> Option<IpAddr> {
        let raw = hostcalls::get_property(&["source", "address"]).ok()??;
        let text = std::str::from_utf8(&raw).ok()?;
        match client_ip::source_address(text) {
            SourceAddress::Connection(ip) => Some(ip),
            SourceAddress::Forwarded(ip) => {
                if self.config.as_ref().is_some_and(|c| c.trust_envoy_xff) {
                    return Some(ip);
                }
                warn_spoofable_once();
                None
            }
            SourceAddress::Unknown => None,
        }
    }

    /// Sends the local reply of a refusal.
    fn refuse(&mut self, refusal: &Refusal, request_id: &str) {
        let body = reply::body(refusal, request_id);
        let headers = reply::headers(refusal);
        let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        send_or_reset(refusal.status, &pairs, body.as_bytes());
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
        let call = hostcalls::grpc_call(
            &service.grpc_service,
            ratelimit::SERVICE,
            ratelimit::METHOD,
            &message,
            u32::try_from(service.timeout_ms).unwrap_or(u32::MAX),
        );
        match call {
            Ok(token) => {
                self.rate_limit_call = Some(token);
                exports::register(Callout::Grpc(token), self.context_id);
                Ask::Wait
            }
            Err(_) => {
                self.rate_limit = Some("error");
                if service.failure_mode_deny {
                    Ask::Failed(ratelimit::unavailable(service))
                } else {
                    Ask::NotNeeded
                }
            }
        }
    }

    /// A refusal after the header decision (the rate-limit service's answer or failure, or the
    /// body; `from_body` then): enforced, or only recorded when [`guard::is_shadowed`] says so.
    /// Either way the body is not checked again.
    fn refuse_late_unless_shadowed(&mut self, stop: Stop, from_body: bool) -> Flow {
        let route = self
            .seen
            .as_ref()
            .and_then(|s| s.decision.route)
            .and_then(|i| self.config.as_ref()?.routes.get(i));
        if guard::is_shadowed(&stop.refusal, route) {
            self.body = None;
            // The first refusal a shadowed request met is the one recorded, as in the header
            // phase.
            if self
                .seen
                .as_ref()
                .is_some_and(|s| s.decision.verdict == Verdict::Allow)
            {
                self.record_late_refusal(stop.shadowed(), from_body);
            }
            Flow::Continue
        } else {
            self.refuse_late(stop, from_body);
            Flow::Pause
        }
    }

    /// Refuses after the header decision, and records why for the audit line.
    fn refuse_late(&mut self, stop: Stop, from_body: bool) {
        self.body = None;
        let request_id = self
            .seen
            .as_ref()
            .map_or_else(String::new, |s| s.request_id.clone());
        self.refuse(&stop.refusal, &request_id);
        self.record_late_refusal(stop, from_body);
    }

    fn record_late_refusal(&mut self, stop: Stop, from_body: bool) {
        if let Some(seen) = &mut self.seen {
            seen.body_refused = from_body;
            seen.decision.verdict = Verdict::Refuse(stop.refusal);
            seen.decision.reason = stop.reason;
            seen.decision.rule = stop.rule;
            publish_decision(metrics::verdict_word(&seen.decision), seen.decision.reason);
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
        match hostcalls::get_shared_data(key) {
            // An empty value is how an entry is removed (ABI 0.2.1 has no delete).
            Ok(Some((value, cas))) if !value.is_empty() => Some((value, cas)),
            _ => None,
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        match hostcalls::set_shared_data(key, value, cas) {
            Ok(()) => Ok(()),
            Err(SetShared::CasMismatch) => Err(StoreError::CasMismatch),
            Err(SetShared::Failed(_)) => Err(StoreError::Refused),
        }
    }
}

/// A header value as text; invalid UTF-8 becomes U+FFFD, which no credential contains.
fn text(value: Vec<u8>) -> String {
    String::from_utf8(value).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Applies the decision's header edits; `false` if Envoy refused one.
fn apply_edits(edits: &[HeaderEdit]) -> bool {
    edits.iter().all(|edit| {
        match edit {
            HeaderEdit::Remove(name) => hostcalls::set_map_value(Map::Request, name, None),
            HeaderEdit::Set(name, value) => {
                hostcalls::set_map_value(Map::Request, name, Some(value))
            }
        }
        .is_ok()
    })
}

/// Sends a local reply; if Envoy refuses it, resets the request, so that a refusal never turns
/// into a request left paused until the client gives up.
fn send_or_reset(status: u16, headers: &[(&str, &str)], body: &[u8]) {
    if hostcalls::send_local_response(status, headers, body).is_err() {
        let _ = hostcalls::close_request();
    }
}

/// The answer to an HTTP callout, inside its callback: the status (`None` when the call
/// failed without an answer: `headers` is then 0, and Envoy has no answer map to read) and the
/// body, of which at most `max + 1` bytes are copied into the VM (Envoy buffers the whole
/// answer, however large; one byte past the limit is enough for the reader to refuse it).
fn http_call_response(headers: usize, body_size: usize, max: usize) -> (Option<u16>, Vec<u8>) {
    if headers == 0 {
        return (None, Vec::new());
    }
    let status = hostcalls::get_map_value(Map::HttpCallResponse, ":status")
        .ok()
        .flatten()
        .and_then(|s| std::str::from_utf8(&s).ok()?.parse().ok());
    let body = hostcalls::get_buffer(Buffer::HttpCallResponseBody, body_size.min(max + 1))
        .ok()
        .flatten()
        .unwrap_or_default();
    (status, body)
}

/// A provider with an introspection endpoint: the provider, its token fields, the endpoint.
fn introspection_of(
    config: &Config,
    provider: usize,
) -> Option<(&Provider, &JwtProvider, &Introspection)> {
    let p = config.providers.get(provider)?;
    match &p.kind {
        ProviderKind::Jwt(jwt) => Some((p, jwt, jwt.introspection.as_deref()?)),
        ProviderKind::ApiKey(_) => None,
    }
}

/// Leaves the decision in Envoy's filter state (`wasm.portcullis.decision`,
/// `wasm.portcullis.reason`), where an access log reads it with
/// `%FILTER_STATE(wasm.portcullis.decision:PLAIN)%`. A refusal by the host only loses the field.
fn publish_decision(verdict: &str, reason: &str) {
    let _ = hostcalls::set_property("portcullis.decision", verdict.as_bytes());
    let _ = hostcalls::set_property("portcullis.reason", reason.as_bytes());
}

thread_local! {
    /// Whether this VM already said that its listener lets clients choose their address.
    static WARNED_SPOOFABLE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn warn_spoofable_once() {
    if !WARNED_SPOOFABLE.with(|w| w.replace(true)) {
        log_warn(
            "portcullis: source.address came from X-Forwarded-For (port 0): under the connection \
             manager's default use_remote_address: false any client writes it, so client \
             addresses are treated as unknown and IP lists refuse. Set use_remote_address: true; \
             or, if Envoy's own xff_num_trusted_hops or original_ip_detection_extensions chose \
             the address on purpose, client_ip.trust_envoy_xff: true",
        );
    }
}

/// Makes Envoy pick the route again from the edited headers (routing by identity). Envoy does
/// so by itself after header edits of filters of ABI 0.2.1 (this one) but, since 1.33, not for
/// newer ABIs; older Envoy has no such function (NotFound, ignored).
fn clear_route_cache() {
    let _ = hostcalls::call_foreign_function("clear_route_cache");
}

/// Now, from the host's clock, in nanoseconds since the Unix epoch.
fn now_ns() -> u64 {
    hostcalls::now_ns()
}

fn log_info(msg: &str) {
    hostcalls::log(Level::Info, msg);
}

fn log_warn(msg: &str) {
    hostcalls::log(Level::Warn, msg);
}

fn log_error(msg: &str) {
    hostcalls::log(Level::Error, msg);
}
