//! One VM per worker per plugin: start-up (CPPH `WasmBase::startVm`/`start`), the per-stream
//! callbacks with Envoy's status mapping (CPPH `context.cc`, ECTX `decodeHeaders`…`onDestroy`),
//! callout delivery on the root context, ticks, queues, and failure handling.

use super::error::StartError;
use super::module::WasmModule;
use super::shared::HostShared;
use super::state::{HostState, MapSlot, Phase, StreamState};
use super::types::{
    BodyBuffer, DataStatus, Direction, Effect, FailDecision, HeaderMap, HeadersStatus, LogLevel,
    LogRecord, PluginConfig, StreamId, StreamInfo, TrailersStatus,
};
use super::wasi;
use std::sync::Arc;
use wasmtime::{Extern, Instance, Store, TypedFunc, WasmParams, WasmResults};

type F1 = Option<TypedFunc<i32, ()>>;
type F2 = Option<TypedFunc<(i32, i32), ()>>;
type F3 = Option<TypedFunc<(i32, i32, i32), ()>>;
type B1 = Option<TypedFunc<i32, i32>>;
type B2 = Option<TypedFunc<(i32, i32), i32>>;
type B3 = Option<TypedFunc<(i32, i32, i32), i32>>;
type F5 = Option<TypedFunc<(i32, i32, i32, i32, i32), ()>>;

/// The callback exports; missing ones behave as if they returned Continue / true (CPPH
/// `wasm.cc` getFunctions: absent callbacks are skipped).
struct Callbacks {
    context_create: F2,
    vm_start: B2,
    configure: B2,
    tick: F1,
    queue_ready: F2,
    request_headers: B3,
    request_body: B3,
    request_trailers: B2,
    response_headers: B3,
    response_body: B3,
    response_trailers: B2,
    http_call_response: F5,
    grpc_initial_metadata: F3,
    grpc_receive: F3,
    grpc_trailing_metadata: F3,
    grpc_close: F3,
    log: F1,
    done: B1,
    delete: F1,
}

impl Callbacks {
    fn lookup(instance: &Instance, store: &mut Store<HostState>) -> Callbacks {
        macro_rules! f {
            ($name:literal) => {
                instance.get_typed_func(&mut *store, $name).ok()
            };
        }
        Callbacks {
            context_create: f!("proxy_on_context_create"),
            vm_start: f!("proxy_on_vm_start"),
            configure: f!("proxy_on_configure"),
            tick: f!("proxy_on_tick"),
            queue_ready: f!("proxy_on_queue_ready"),
            request_headers: f!("proxy_on_request_headers"),
            request_body: f!("proxy_on_request_body"),
            request_trailers: f!("proxy_on_request_trailers"),
            response_headers: f!("proxy_on_response_headers"),
            response_body: f!("proxy_on_response_body"),
            response_trailers: f!("proxy_on_response_trailers"),
            http_call_response: f!("proxy_on_http_call_response"),
            grpc_initial_metadata: f!("proxy_on_grpc_receive_initial_metadata"),
            grpc_receive: f!("proxy_on_grpc_receive"),
            grpc_trailing_metadata: f!("proxy_on_grpc_receive_trailing_metadata"),
            grpc_close: f!("proxy_on_grpc_close"),
            log: f!("proxy_on_log"),
            done: f!("proxy_on_done"),
            delete: f!("proxy_on_delete"),
        }
    }
}

/// How a call into the guest went.
enum Outcome<R> {
    /// The export does not exist.
    Missing,
    /// It returned.
    Returned(R),
    /// It trapped; the VM is now failed.
    Trapped(String),
}

/// One plugin's VM on one worker. Not shared between threads (Envoy: one VM per thread).
pub struct Vm {
    store: Store<HostState>,
    cb: Callbacks,
    failed: bool,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("key", &self.key())
            .field("worker", &self.worker())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

fn i(v: usize) -> i32 {
    u32::try_from(v).unwrap_or(u32::MAX) as i32
}

impl Vm {
    /// Instantiates the module and starts the plugin: `_initialize` (+ `main`/`__main_void`) or
    /// `_start` with only logging and WASI allowed, then the root context (id 1 on a fresh VM):
    /// `proxy_on_context_create(root, 0)`, `proxy_on_vm_start(root, vm_config_size)`,
    /// `proxy_on_configure(root, plugin_config_size)` with the plugin configuration readable only
    /// during that call. Envoy's canary is exactly this followed by a drop.
    pub fn start(
        module: &WasmModule,
        plugin: &PluginConfig,
        shared: HostShared,
        worker: usize,
    ) -> Result<Vm, StartError> {
        let plugin = Arc::new(plugin.clone());
        let state = HostState::new(wasi::context(&plugin), shared, Arc::clone(&plugin), worker);
        let mut store = Store::new(&module.engine, state);
        let instance = module
            .pre
            .instantiate(&mut store)
            .map_err(|e| StartError::Instantiate {
                plugin: plugin.name.clone(),
                reason: format!("{e:#}"),
            })?;
        let memory = match instance.get_export(&mut store, "memory") {
            Some(Extern::Memory(m)) => Some(m),
            _ => None,
        };
        let alloc = instance
            .get_typed_func::<i32, i32>(&mut store, module.allocator)
            .ok();
        store.data_mut().memory = memory;
        store.data_mut().alloc = alloc;
        let cb = Callbacks::lookup(&instance, &mut store);
        let mut vm = Vm {
            store,
            cb,
            failed: false,
        };
        let trap = |vm: &Vm, function: &str, trap: String| StartError::Trap {
            plugin: plugin.name.clone(),
            function: function.to_owned(),
            trap,
            guest_log: vm.store.data().last_error_log.clone(),
        };

        // Start functions (CPPH `WasmBase::startVm`).
        let initialize = instance.get_typed_func::<(), ()>(&mut vm.store, "_initialize");
        if let Ok(init) = initialize {
            if let Outcome::Trapped(t) = vm.call("_initialize", 0, Some(init), ()) {
                return Err(trap(&vm, "_initialize", t));
            }
            let main = instance.get_typed_func::<(i32, i32), i32>(&mut vm.store, "main");
            if let Ok(main) = main {
                if let Outcome::Trapped(t) = vm.call("main", 0, Some(main), (0, 0)) {
                    return Err(trap(&vm, "main", t));
                }
            } else if let Ok(main) = instance.get_typed_func::<(), ()>(&mut vm.store, "__main_void")
                && let Outcome::Trapped(t) = vm.call("__main_void", 0, Some(main), ())
            {
                return Err(trap(&vm, "__main_void", t));
            }
        } else if let Ok(start) = instance.get_typed_func::<(), ()>(&mut vm.store, "_start")
            && let Outcome::Trapped(t) = vm.call("_start", 0, Some(start), ())
        {
            return Err(trap(&vm, "_start", t));
        }
        vm.store.data_mut().phase = Phase::Running;

        // Root context (CPPH `WasmBase::start`, `ContextBase::onStart`/`onConfigure`).
        let root = vm.alloc_context_id();
        vm.store.data_mut().root_id = root;
        let f = vm.cb.context_create.clone();
        if let Outcome::Trapped(t) =
            vm.call("proxy_on_context_create", root, f, (i(root as usize), 0))
        {
            return Err(trap(&vm, "proxy_on_context_create", t));
        }
        let f = vm.cb.vm_start.clone();
        let size = i(plugin.vm_configuration.len());
        match vm.call("proxy_on_vm_start", root, f, (root as i32, size)) {
            Outcome::Trapped(t) => return Err(trap(&vm, "proxy_on_vm_start", t)),
            Outcome::Returned(0) => {
                return Err(StartError::VmStartFailed {
                    plugin: plugin.name.clone(),
                    guest_log: vm.store.data().last_error_log.clone(),
                });
            }
            _ => {}
        }
        let f = vm.cb.configure.clone();
        let size = i(plugin.configuration.len());
        vm.store.data_mut().in_configure = true;
        let configured = vm.call("proxy_on_configure", root, f, (root as i32, size));
        vm.store.data_mut().in_configure = false;
        match configured {
            Outcome::Trapped(t) => Err(trap(&vm, "proxy_on_configure", t)),
            Outcome::Returned(0) => Err(StartError::ConfigureFailed {
                plugin: plugin.name.clone(),
                guest_log: vm.store.data().last_error_log.clone(),
            }),
            _ => Ok(vm),
        }
    }

    /// Context ids come from one per-VM counter, never reused (CPPH `allocContextId`).
    fn alloc_context_id(&mut self) -> u32 {
        let s = self.store.data_mut();
        s.last_context_id += 1;
        s.last_context_id
    }

    /// Calls an export with the effective context reset to `context` and releases the
    /// deferred effects when it returns; a trap marks the VM failed and drops them.
    fn call<P: WasmParams, R: WasmResults>(
        &mut self,
        name: &str,
        context: u32,
        func: Option<TypedFunc<P, R>>,
        params: P,
    ) -> Outcome<R> {
        let outcome = self.call_raw(name, context, func, params);
        if matches!(outcome, Outcome::Returned(_)) {
            self.release_pending();
        }
        outcome
    }

    /// As [`Vm::call`] but leaves the deferred effects pending: stream phases first take their
    /// map or buffer back, then release.
    fn call_raw<P: WasmParams, R: WasmResults>(
        &mut self,
        name: &str,
        context: u32,
        func: Option<TypedFunc<P, R>>,
        params: P,
    ) -> Outcome<R> {
        let Some(func) = func else {
            return Outcome::Missing;
        };
        self.store.data_mut().effective = context;
        self.store.data_mut().pending.clear();
        let result = func.call(&mut self.store, params);
        match result {
            Ok(r) => Outcome::Returned(r),
            Err(e) => {
                self.failed = true;
                let s = self.store.data_mut();
                s.pending.clear();
                s.call = Default::default();
                let trap = format!("{e:#}");
                // Envoy logs the failure on its wasm logger (CPPH `WasmBase::fail`).
                let plugin = &s.plugin;
                s.shared.log(LogRecord {
                    level: LogLevel::Critical,
                    plugin_name: plugin.name.clone(),
                    root_id: plugin.root_id.clone(),
                    vm_id: plugin.vm_id.clone(),
                    worker: s.worker,
                    message: format!("Function: {name} failed: {trap}"),
                });
                Outcome::Trapped(trap)
            }
        }
    }

    /// Moves the callback's deferred effects to the caller's list. A continue hands over the
    /// headers held while paused; after a local reply the request maps are gone.
    fn release_pending(&mut self) {
        let s = self.store.data_mut();
        let pending = std::mem::take(&mut s.pending);
        let mut root_done = false;
        for mut effect in pending {
            match &mut effect {
                Effect::ContinueStream {
                    stream,
                    direction,
                    held_headers,
                } => {
                    if let Some(st) = s.streams.get_mut(stream) {
                        let idx = match direction {
                            Direction::Request => 0,
                            Direction::Response => 2,
                        };
                        if let Some(slot) = st.maps[idx].take() {
                            st.log_maps[idx] = Some(slot.map.clone());
                            *held_headers = Some(slot.map);
                        }
                        st.maps[idx + 1] = None;
                    }
                }
                Effect::LocalReply { stream, .. } => {
                    if let Some(st) = s.streams.get_mut(stream) {
                        if let Some(slot) = st.maps[0].take() {
                            st.log_maps[0] = Some(slot.map);
                        }
                        st.maps[1] = None;
                    }
                }
                Effect::Done => root_done = true,
                _ => {}
            }
            s.effects.push(effect);
        }
        if root_done {
            // `proxy_on_delete(root)` runs right after the callback that called proxy_done.
            let root = s.root_id;
            let f = self.cb.delete.clone();
            let _ = self.call("proxy_on_delete", root, f, i(root as usize));
        }
    }

    /// Drains what the module asked of the proxy since the last drain.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.store.data_mut().effects)
    }

    /// A trap happened: every later callback is skipped.
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// What requests get while the VM is failed (`fail_open` → [`FailDecision::Open`]).
    pub fn fail_decision(&self) -> FailDecision {
        if self.store.data().plugin.fail_open {
            FailDecision::Open
        } else {
            FailDecision::Closed
        }
    }

    /// Identifies this VM in [`super::QueueReady`] notifications.
    pub fn key(&self) -> u64 {
        self.store.data().vm_key
    }

    /// The worker this VM belongs to.
    pub fn worker(&self) -> usize {
        self.store.data().worker
    }

    /// The root context id (1 on a fresh VM).
    pub fn root_context_id(&self) -> u32 {
        self.store.data().root_id
    }

    /// The plugin this VM runs.
    pub fn plugin(&self) -> &PluginConfig {
        &self.store.data().plugin
    }

    /// A new HTTP context id; `proxy_on_context_create` is sent lazily at request headers (or
    /// at `on_log` if the filter never saw them), as Envoy does (ECTX `Context::onCreate`).
    pub fn create_stream(&mut self, info: StreamInfo) -> StreamId {
        let id = self.alloc_context_id();
        self.store
            .data_mut()
            .streams
            .insert(id, StreamState::new(info));
        id
    }

    /// Whether the module called the `clear_route_cache` foreign function for this stream since
    /// the last time the proxy asked (the flag is reset).
    pub fn take_route_cache_cleared(&mut self, stream: StreamId) -> bool {
        self.store
            .data_mut()
            .streams
            .get_mut(&stream)
            .is_some_and(|st| std::mem::take(&mut st.route_cache_cleared))
    }

    /// The stream's info, for the proxy to update (response code, sizes, upstream, …).
    pub fn stream_info_mut(&mut self, stream: StreamId) -> Option<&mut StreamInfo> {
        self.store
            .data_mut()
            .streams
            .get_mut(&stream)
            .map(|st| &mut st.info)
    }

    fn ensure_created(&mut self, stream: StreamId) -> bool {
        let s = self.store.data_mut();
        let root = s.root_id;
        let Some(st) = s.streams.get_mut(&stream) else {
            return false;
        };
        if st.created {
            return true;
        }
        st.created = true;
        let f = self.cb.context_create.clone();
        !matches!(
            self.call(
                "proxy_on_context_create",
                stream,
                f,
                (stream as i32, root as i32)
            ),
            Outcome::Trapped(_)
        )
    }

    fn stream_created(&self, stream: StreamId) -> bool {
        self.store
            .data()
            .streams
            .get(&stream)
            .is_some_and(|st| st.created)
    }

    /// Runs a headers or trailers callback with map `idx` in its window. Returns the raw
    /// result (None = missing export), whether a local reply forced Stop, or Err on a trap.
    fn map_phase<P: WasmParams>(
        &mut self,
        name: &str,
        stream: StreamId,
        idx: usize,
        func: Option<TypedFunc<P, i32>>,
        params: P,
        map: &mut HeaderMap,
    ) -> Result<(Option<i32>, bool), ()> {
        let Some(st) = self.store.data_mut().streams.get_mut(&stream) else {
            return Ok((None, false));
        };
        st.force_stop = false;
        st.maps[idx] = Some(MapSlot {
            map: std::mem::take(map),
            writable: true,
        });
        let outcome = self.call_raw(name, stream, func, params);
        let st = self.store.data_mut().streams.get_mut(&stream);
        let (forced, slot) = match st {
            Some(st) => (st.force_stop, st.maps[idx].take()),
            None => (false, None),
        };
        if let Some(slot) = slot {
            *map = slot.map;
        }
        match outcome {
            Outcome::Trapped(_) => Err(()),
            Outcome::Missing => Ok((None, forced)),
            Outcome::Returned(r) => Ok((Some(r), forced)),
        }
    }

    /// After a headers callback: hold the map while paused (Envoy keeps the pointer), else
    /// record it for `on_log` (the window closes).
    fn after_headers(&mut self, stream: StreamId, idx: usize, map: &HeaderMap, hold: bool) {
        if let Some(st) = self.store.data_mut().streams.get_mut(&stream) {
            if hold {
                st.maps[idx] = Some(MapSlot {
                    map: map.clone(),
                    writable: true,
                });
            } else {
                st.log_maps[idx] = Some(map.clone());
            }
        }
    }

    fn headers(
        &mut self,
        name: &str,
        stream: StreamId,
        idx: usize,
        headers: &mut HeaderMap,
        end_of_stream: bool,
    ) -> HeadersStatus {
        if self.failed {
            return HeadersStatus::Failed(self.fail_decision());
        }
        if idx == 0 && !self.ensure_created(stream) {
            return HeadersStatus::Failed(self.fail_decision());
        }
        if !self.stream_created(stream) {
            return HeadersStatus::Continue;
        }
        let func = if idx == 0 {
            self.cb.request_headers.clone()
        } else {
            self.cb.response_headers.clone()
        };
        let n = i(headers.len());
        let params = (stream as i32, n, i32::from(end_of_stream));
        let Ok((raw, forced)) = self.map_phase(name, stream, idx, func, params, headers) else {
            return HeadersStatus::Failed(self.fail_decision());
        };
        // CPPH `convertVmCallResultToFilterHeadersStatus` + ECTX: Pause (1) becomes
        // StopAllIterationAndWatermark; a local reply forces it too.
        let status = if forced {
            HeadersStatus::StopAllIterationAndWatermark
        } else {
            match raw.unwrap_or(0) as u32 {
                0 | 2 => HeadersStatus::Continue,
                3 => HeadersStatus::StopAllIterationAndBuffer,
                _ => HeadersStatus::StopAllIterationAndWatermark,
            }
        };
        let hold = status != HeadersStatus::Continue && !forced;
        self.after_headers(stream, idx, headers, hold);
        // A continue from the same callback now takes the held map with it.
        self.release_pending();
        status
    }

    fn body(
        &mut self,
        name: &str,
        stream: StreamId,
        idx: usize,
        body: &mut BodyBuffer,
        end_of_stream: bool,
    ) -> DataStatus {
        if self.failed {
            return DataStatus::Failed(self.fail_decision());
        }
        if !self.stream_created(stream) {
            return DataStatus::Continue;
        }
        let func = if idx == 0 {
            self.cb.request_body.clone()
        } else {
            self.cb.response_body.clone()
        };
        if let Some(st) = self.store.data_mut().streams.get_mut(&stream) {
            st.force_stop = false;
            st.bodies[idx] = Some(std::mem::take(body));
        }
        let params = (
            stream as i32,
            i(body_len(self, stream, idx)),
            i32::from(end_of_stream),
        );
        let outcome = self.call_raw(name, stream, func, params);
        let mut forced = false;
        if let Some(st) = self.store.data_mut().streams.get_mut(&stream) {
            forced = st.force_stop;
            if let Some(b) = st.bodies[idx].take() {
                *body = b;
            }
        }
        let raw = match outcome {
            Outcome::Trapped(_) => return DataStatus::Failed(self.fail_decision()),
            Outcome::Missing => 0,
            Outcome::Returned(r) => r,
        };
        self.release_pending();
        // CPPH `convertVmCallResultToFilterDataStatus`; a local reply forces NoBuffer.
        if forced {
            return DataStatus::StopIterationNoBuffer;
        }
        match raw as u32 {
            0 => DataStatus::Continue,
            1 => DataStatus::StopIterationAndBuffer,
            2 => DataStatus::StopIterationAndWatermark,
            _ => DataStatus::StopIterationNoBuffer,
        }
    }

    fn trailers(
        &mut self,
        name: &str,
        stream: StreamId,
        idx: usize,
        trailers: &mut HeaderMap,
    ) -> TrailersStatus {
        if self.failed {
            return TrailersStatus::Failed(self.fail_decision());
        }
        if !self.stream_created(stream) {
            return TrailersStatus::Continue;
        }
        let func = if idx == 1 {
            self.cb.request_trailers.clone()
        } else {
            self.cb.response_trailers.clone()
        };
        let params = (stream as i32, i(trailers.len()));
        let Ok((raw, forced)) = self.map_phase(name, stream, idx, func, params, trailers) else {
            return TrailersStatus::Failed(self.fail_decision());
        };
        if idx == 3
            && let Some(st) = self.store.data_mut().streams.get_mut(&stream)
        {
            st.log_maps[3] = Some(trailers.clone());
        }
        self.release_pending();
        // CPPH `convertVmCallResultToFilterTrailersStatus`.
        if forced || raw.unwrap_or(0) != 0 {
            TrailersStatus::StopIteration
        } else {
            TrailersStatus::Continue
        }
    }

    /// `proxy_on_context_create` (first time) then `proxy_on_request_headers`. While the
    /// result is a Stop the VM keeps a copy of the headers for the module (they come back in
    /// [`Effect::ContinueStream`]); otherwise the request headers are gone for the module
    /// (get → BadArgument, as ECTX `getMap` outside the window) until `on_log`.
    pub fn on_request_headers(
        &mut self,
        stream: StreamId,
        headers: &mut HeaderMap,
        end_of_stream: bool,
    ) -> HeadersStatus {
        self.headers(
            "proxy_on_request_headers",
            stream,
            0,
            headers,
            end_of_stream,
        )
    }

    /// `proxy_on_request_body`; `body` is buffer 0 during the call (the whole buffered body
    /// after a StopIterationAndBuffer, which the proxy accumulates).
    pub fn on_request_body(
        &mut self,
        stream: StreamId,
        body: &mut BodyBuffer,
        end_of_stream: bool,
    ) -> DataStatus {
        self.body("proxy_on_request_body", stream, 0, body, end_of_stream)
    }

    /// `proxy_on_request_trailers`; `trailers` is map 1 during the call.
    pub fn on_request_trailers(
        &mut self,
        stream: StreamId,
        trailers: &mut HeaderMap,
    ) -> TrailersStatus {
        self.trailers("proxy_on_request_trailers", stream, 1, trailers)
    }

    /// `proxy_on_response_headers` (also for a local reply of this plugin).
    pub fn on_response_headers(
        &mut self,
        stream: StreamId,
        headers: &mut HeaderMap,
        end_of_stream: bool,
    ) -> HeadersStatus {
        self.headers(
            "proxy_on_response_headers",
            stream,
            2,
            headers,
            end_of_stream,
        )
    }

    /// `proxy_on_response_body`; `body` is buffer 1 during the call.
    pub fn on_response_body(
        &mut self,
        stream: StreamId,
        body: &mut BodyBuffer,
        end_of_stream: bool,
    ) -> DataStatus {
        self.body("proxy_on_response_body", stream, 1, body, end_of_stream)
    }

    /// `proxy_on_response_trailers`; `trailers` is map 3 during the call.
    pub fn on_response_trailers(
        &mut self,
        stream: StreamId,
        trailers: &mut HeaderMap,
    ) -> TrailersStatus {
        self.trailers("proxy_on_response_trailers", stream, 3, trailers)
    }

    /// `proxy_on_log` (access-log phase, before [`Vm::destroy`]: Envoy ≥1.16 order). Request
    /// headers, response headers and trailers are readable (read-only) as this filter left
    /// them; a missing single value reads NotFound. Creates the context first if the filter
    /// never saw request headers (ECTX `Context::log`).
    pub fn on_log(&mut self, stream: StreamId) {
        if self.failed || !self.ensure_created(stream) {
            return;
        }
        if let Some(st) = self.store.data_mut().streams.get_mut(&stream) {
            for idx in [0, 2, 3] {
                let map = match st.maps[idx].take() {
                    Some(slot) => Some(slot.map),
                    None => st.log_maps[idx].clone(),
                };
                st.maps[idx] = map.map(|map| MapSlot {
                    map,
                    writable: false,
                });
            }
            st.maps[1] = None;
            st.in_log = true;
        }
        let f = self.cb.log.clone();
        let _ = self.call("proxy_on_log", stream, f, stream as i32);
        if let Some(st) = self.store.data_mut().streams.get_mut(&stream) {
            st.maps = [None, None, None, None];
            st.in_log = false;
        }
    }

    /// `proxy_on_done` (result ignored for streams) then `proxy_on_delete`, and the stream is
    /// forgotten (ECTX `Context::onDestroy`).
    pub fn destroy(&mut self, stream: StreamId) {
        let created = self.stream_created(stream);
        if created && !self.failed {
            let f = self.cb.done.clone();
            let _ = self.call("proxy_on_done", stream, f, stream as i32);
            if !self.failed {
                let f = self.cb.delete.clone();
                let _ = self.call("proxy_on_delete", stream, f, stream as i32);
            }
        }
        self.store.data_mut().streams.remove(&stream);
    }

    /// Delivers an HTTP call's response to the root context with maps 6/7 and buffer 4
    /// readable only during the callback (ECTX `onHttpCallSuccess`). Unknown tokens are
    /// ignored (the Rust SDK would panic on them).
    pub fn on_http_call_response(
        &mut self,
        token: u32,
        headers: HeaderMap,
        body: Vec<u8>,
        trailers: HeaderMap,
    ) {
        if self.failed || !self.store.data_mut().http_calls.remove(&token) {
            return;
        }
        let (nh, nb, nt) = (i(headers.len()), i(body.len()), i(trailers.len()));
        let s = self.store.data_mut();
        s.call.maps[2] = Some(headers);
        s.call.maps[3] = Some(trailers);
        s.call.http_body = Some(body);
        let root = s.root_id;
        let f = self.cb.http_call_response.clone();
        let _ = self.call(
            "proxy_on_http_call_response",
            root,
            f,
            (root as i32, token as i32, nh, nb, nt),
        );
        self.store.data_mut().call = Default::default();
    }

    /// An HTTP call that failed (reset, overflow): `(root, token, 0, 0, 0)` and
    /// `proxy_get_status` = (11 BrokenConnection, "reset") (ECTX `onHttpCallFailure`).
    /// Timeouts and connect failures are delivered as synthetic 504/503 responses instead.
    pub fn on_http_call_failure(&mut self, token: u32) {
        if self.failed || !self.store.data_mut().http_calls.remove(&token) {
            return;
        }
        let s = self.store.data_mut();
        s.status = (11, b"reset".to_vec());
        let root = s.root_id;
        let f = self.cb.http_call_response.clone();
        let _ = self.call(
            "proxy_on_http_call_response",
            root,
            f,
            (root as i32, token as i32, 0, 0, 0),
        );
    }

    /// A gRPC message: for a unary call this is its success (the only callback it gets); for
    /// a stream one message. Buffer 5 holds it during the callback.
    pub fn on_grpc_receive(&mut self, token: u32, message: Vec<u8>) {
        if self.failed {
            return;
        }
        let s = self.store.data_mut();
        if !s.grpc_calls.remove(&token) && !s.grpc_streams.contains(&token) {
            return;
        }
        let size = i(message.len());
        s.call.grpc_message = Some(message);
        let root = s.root_id;
        let f = self.cb.grpc_receive.clone();
        let _ = self.call(
            "proxy_on_grpc_receive",
            root,
            f,
            (root as i32, token as i32, size),
        );
        self.store.data_mut().call = Default::default();
    }

    /// A unary call's failure (non-OK status, timeout) or a stream's remote close:
    /// `proxy_on_grpc_close(root, token, status)` with `proxy_get_status` = (status, message)
    /// (ECTX `GrpcCallClientHandler::onFailure`).
    pub fn on_grpc_close(&mut self, token: u32, status: u32, message: &str) {
        if self.failed {
            return;
        }
        let s = self.store.data_mut();
        if !s.grpc_calls.remove(&token) && !s.grpc_streams.remove(&token) {
            return;
        }
        s.status = (status, message.as_bytes().to_vec());
        let root = s.root_id;
        let f = self.cb.grpc_close.clone();
        let _ = self.call(
            "proxy_on_grpc_close",
            root,
            f,
            (root as i32, token as i32, status as i32),
        );
    }

    /// A gRPC stream's initial (`trailing == false`) or trailing metadata (maps 4/5).
    pub fn on_grpc_metadata(&mut self, token: u32, metadata: HeaderMap, trailing: bool) {
        if self.failed || !self.store.data().grpc_streams.contains(&token) {
            return;
        }
        let n = i(metadata.len());
        let s = self.store.data_mut();
        s.call.maps[usize::from(trailing)] = Some(metadata);
        let root = s.root_id;
        let (name, f) = if trailing {
            (
                "proxy_on_grpc_receive_trailing_metadata",
                self.cb.grpc_trailing_metadata.clone(),
            )
        } else {
            (
                "proxy_on_grpc_receive_initial_metadata",
                self.cb.grpc_initial_metadata.clone(),
            )
        };
        let _ = self.call(name, root, f, (root as i32, token as i32, n));
        self.store.data_mut().call = Default::default();
    }

    /// `proxy_on_tick(root)`, when the period of the last [`Effect::SetTickPeriod`] elapsed.
    pub fn on_tick(&mut self) {
        if self.failed {
            return;
        }
        let root = self.root_context_id();
        let f = self.cb.tick.clone();
        let _ = self.call("proxy_on_tick", root, f, root as i32);
    }

    /// `proxy_on_queue_ready(root, queue)`, for a [`super::QueueReady`] addressed to this VM.
    pub fn on_queue_ready(&mut self, queue_id: u32) {
        if self.failed {
            return;
        }
        let root = self.root_context_id();
        let f = self.cb.queue_ready.clone();
        let _ = self.call(
            "proxy_on_queue_ready",
            root,
            f,
            (root as i32, queue_id as i32),
        );
    }

    /// Root shutdown (CPPH `WasmBase::startShutdown`): `proxy_on_done(root)`; true (or no
    /// export) → `proxy_on_delete(root)` now and `true`; false → the module must call
    /// `proxy_done` later ([`Effect::Done`], after which on_delete runs) and this returns false.
    pub fn shutdown(&mut self) -> bool {
        if self.failed {
            return true;
        }
        let root = self.root_context_id();
        let f = self.cb.done.clone();
        match self.call("proxy_on_done", root, f, root as i32) {
            Outcome::Returned(0) => {
                self.store.data_mut().done_pending = true;
                false
            }
            Outcome::Trapped(_) => true,
            _ => {
                let f = self.cb.delete.clone();
                let _ = self.call("proxy_on_delete", root, f, root as i32);
                true
            }
        }
    }
}

fn body_len(vm: &Vm, stream: StreamId, idx: usize) -> usize {
    vm.store
        .data()
        .streams
        .get(&stream)
        .and_then(|st| st.bodies[idx].as_ref())
        .map_or(0, Vec::len)
}
