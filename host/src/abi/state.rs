//! The per-VM host state inside the wasmtime `Store`: contexts, the windows in which maps and
//! buffers exist (ECTX `getMap`/`getBuffer`), ids and tokens, and effects.

use super::shared::HostShared;
use super::types::{BodyBuffer, Effect, HeaderMap, PluginConfig, StreamInfo};
use crate::stats::StatId;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use wasmtime::{Memory, TypedFunc};
use wasmtime_wasi::p1::WasiP1Ctx;

/// Start-up phase: during `_initialize` only logging and WASI are allowed (CPPH `wasm.cc`
/// `startVm`, V8 "restricted_callback").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Initializing,
    Running,
}

/// A header map slot of a stream: present only while Envoy would hold the pointer.
pub(crate) struct MapSlot {
    pub(crate) map: HeaderMap,
    pub(crate) writable: bool,
}

/// One HTTP context.
pub(crate) struct StreamState {
    pub(crate) info: StreamInfo,
    /// `proxy_on_context_create` sent (lazily, at request headers or on_log).
    pub(crate) created: bool,
    /// Maps 0..=3 (request headers/trailers, response headers/trailers) in their window.
    pub(crate) maps: [Option<MapSlot>; 4],
    /// Body buffers 0/1 in their window.
    pub(crate) bodies: [Option<BodyBuffer>; 2],
    /// What `on_log` sees for maps 0, 2, 3 (final versions after this filter).
    pub(crate) log_maps: [Option<HeaderMap>; 4],
    /// Inside `proxy_on_log`: missing single values read NotFound instead of BadArgument.
    pub(crate) in_log: bool,
    /// A local reply was sent (a second one is ignored but still forces Stop).
    pub(crate) local_reply_sent: bool,
    /// Set by `proxy_send_local_response` during the current callback: force Stop.
    pub(crate) force_stop: bool,
    /// `proxy_set_property` values (Envoy filter state `wasm.<path>`).
    pub(crate) filter_state: HashMap<Vec<u8>, Vec<u8>>,
    /// The `clear_route_cache` foreign function was called: the proxy picks the route again
    /// from the headers as they are after the filter.
    pub(crate) route_cache_cleared: bool,
}

impl StreamState {
    pub(crate) fn new(info: StreamInfo) -> StreamState {
        StreamState {
            info,
            created: false,
            maps: [None, None, None, None],
            bodies: [None, None],
            log_maps: [None, None, None, None],
            in_log: false,
            local_reply_sent: false,
            force_stop: false,
            filter_state: HashMap::new(),
            route_cache_cleared: false,
        }
    }
}

/// Maps and buffers that exist only inside one callout callback.
#[derive(Default)]
pub(crate) struct CallWindow {
    /// Maps 4..=7 (gRPC initial/trailing metadata, HTTP call response headers/trailers).
    pub(crate) maps: [Option<HeaderMap>; 4],
    /// Buffer 4 (HTTP call response body).
    pub(crate) http_body: Option<Vec<u8>>,
    /// Buffer 5 (gRPC receive buffer).
    pub(crate) grpc_message: Option<Vec<u8>>,
}

/// Everything hostcalls need; lives in `Store<HostState>`.
pub(crate) struct HostState {
    pub(crate) wasi: WasiP1Ctx,
    pub(crate) memory: Option<Memory>,
    pub(crate) alloc: Option<TypedFunc<i32, i32>>,
    pub(crate) phase: Phase,
    pub(crate) shared: HostShared,
    pub(crate) plugin: Arc<PluginConfig>,
    pub(crate) worker: usize,
    pub(crate) vm_key: u64,
    /// Root context id (0 before it exists).
    pub(crate) root_id: u32,
    /// Last context id handed out (CPPH `WasmBase::allocContextId`; 0 is the VM).
    pub(crate) last_context_id: u32,
    /// Target of hostcalls; reset on every host→guest call (CPPH `exports.cc` contextOrEffectiveContext).
    pub(crate) effective: u32,
    pub(crate) streams: HashMap<u32, StreamState>,
    pub(crate) call: CallWindow,
    /// Buffer 7 readable (only inside `proxy_on_configure`).
    pub(crate) in_configure: bool,
    /// Effects queued during the current callback, released when it returns.
    pub(crate) pending: Vec<Effect>,
    /// Effects ready for the caller.
    pub(crate) effects: Vec<Effect>,
    /// Per-VM metric ids (ECTX `defineMetric`).
    pub(crate) metrics: HashMap<u32, StatId>,
    pub(crate) next_metric: [u32; 3],
    /// Callout tokens (EWASM `wasm.h` nextHttpCallId / nextGrpcCallId / nextGrpcStreamId).
    pub(crate) next_token: [u32; 3],
    pub(crate) http_calls: HashSet<u32>,
    pub(crate) grpc_calls: HashSet<u32>,
    pub(crate) grpc_streams: HashSet<u32>,
    /// `proxy_get_status` (code, message) of the root context's last callout.
    pub(crate) status: (u32, Vec<u8>),
    /// The root's `proxy_on_done` returned false: `proxy_done` is now valid.
    pub(crate) done_pending: bool,
    /// The last line the module logged at error level or above (start-up diagnostics).
    pub(crate) last_error_log: Option<String>,
}

impl HostState {
    pub(crate) fn new(
        wasi: WasiP1Ctx,
        shared: HostShared,
        plugin: Arc<PluginConfig>,
        worker: usize,
    ) -> HostState {
        let vm_key = shared.next_vm_key();
        HostState {
            wasi,
            memory: None,
            alloc: None,
            phase: Phase::Initializing,
            shared,
            plugin,
            worker,
            vm_key,
            root_id: 0,
            last_context_id: 0,
            effective: 0,
            streams: HashMap::new(),
            call: CallWindow::default(),
            in_configure: false,
            pending: Vec::new(),
            effects: Vec::new(),
            metrics: HashMap::new(),
            next_metric: [0, 1, 2],
            next_token: [0, 1, 2],
            http_calls: HashSet::new(),
            grpc_calls: HashSet::new(),
            grpc_streams: HashSet::new(),
            status: (0, Vec::new()),
            done_pending: false,
            last_error_log: None,
        }
    }

    /// The stream the effective context names, if it is one.
    pub(crate) fn effective_stream(&self) -> Option<&StreamState> {
        self.streams.get(&self.effective)
    }

    pub(crate) fn effective_stream_mut(&mut self) -> Option<&mut StreamState> {
        self.streams.get_mut(&self.effective)
    }

    /// Next token of a kind (0 HTTP call, 1 gRPC call, 2 gRPC stream): low two bits = kind.
    pub(crate) fn next_token(&mut self, kind: usize) -> u32 {
        let slot = &mut self.next_token[kind];
        *slot = slot.wrapping_add(4);
        if *slot < 4 {
            *slot = 4 + kind as u32;
        }
        *slot
    }
}
