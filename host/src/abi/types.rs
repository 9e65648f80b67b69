//! Plain data the caller and the ABI layer exchange: plugin configuration, header maps, stream
//! info, statuses and effects.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

/// One Envoy `envoy.filters.http.wasm` plugin (EWASM `plugin.cc`, `PluginConfig` proto).
#[derive(Debug, Clone, Default)]
pub struct PluginConfig {
    /// `config.name`: served as property `plugin_name` and in log lines.
    pub name: String,
    /// `config.root_id`: the module sees it only as property `plugin_root_id` and in log
    /// lines; its root context gets a numeric id (1 on a fresh VM).
    pub root_id: String,
    /// `vm_config.vm_id`: the key of shared data and shared queues (CPPH `shared_data.cc`).
    pub vm_id: String,
    /// `configuration` as bytes (StringValue → its string), readable only in `on_configure`.
    pub configuration: Vec<u8>,
    /// `vm_config.configuration` as bytes, readable as buffer 6 at any time.
    pub vm_configuration: Vec<u8>,
    /// `vm_config.environment_variables`: the only variables WASI `environ_get` shows (CPPH `exports.cc`).
    pub environment: Vec<(String, String)>,
    /// `fail_open` / `failure_policy: FAIL_OPEN`: what a failed VM means for requests.
    pub fail_open: bool,
}

/// Proxy-wasm / Envoy log levels (CPPSDK `proxy_wasm_enums.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// 0
    Trace,
    /// 1
    Debug,
    /// 2 (Envoy's default level)
    Info,
    /// 3
    Warn,
    /// 4
    Error,
    /// 5
    Critical,
}

impl LogLevel {
    /// From the ABI value; `None` beyond 5 (then `proxy_log` answers BadArgument).
    pub fn from_abi(level: i32) -> Option<LogLevel> {
        Some(match level {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            5 => LogLevel::Critical,
            _ => return None,
        })
    }

    /// The ABI value.
    pub fn to_abi(self) -> u32 {
        self as u32
    }

    /// spdlog's short name, as Envoy prints it.
    pub fn name(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warning",
            LogLevel::Error => "error",
            LogLevel::Critical => "critical",
        }
    }
}

/// One line a module logged (`proxy_log`, or WASI stdout/stderr), with Envoy's attribution
/// `wasm log <plugin name> <root_id> <vm_id>: msg` (ECTX `Context::log`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// The level the module asked for (fd 1 → info, fd 2 → error).
    pub level: LogLevel,
    /// `PluginConfig::name`.
    pub plugin_name: String,
    /// `PluginConfig::root_id`.
    pub root_id: String,
    /// `PluginConfig::vm_id`.
    pub vm_id: String,
    /// The worker whose VM logged.
    pub worker: usize,
    /// The message, as text (invalid UTF-8 replaced).
    pub message: String,
}

impl LogRecord {
    /// The line Envoy's `wasm` logger prints for this record.
    pub fn envoy_line(&self) -> String {
        format!(
            "[{}][wasm] wasm log {} {} {}: {}",
            self.level.name(),
            self.plugin_name,
            self.root_id,
            self.vm_id,
            self.message
        )
    }
}

/// An ordered header (or trailer, or metadata) map as Envoy keeps it: lower-case names,
/// pseudo-headers first by convention, duplicates allowed, values as bytes (Envoy's codecs
/// accept obs-text). Keep names lower-case when editing `pairs` directly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderMap {
    /// The entries, in order.
    pub pairs: Vec<(String, Vec<u8>)>,
}

impl HeaderMap {
    /// An empty map.
    pub fn new() -> HeaderMap {
        HeaderMap::default()
    }

    /// From pairs; names are lower-cased as Envoy's `LowerCaseString` does.
    pub fn from_pairs<K: AsRef<str>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> HeaderMap {
        HeaderMap {
            pairs: pairs
                .iter()
                .map(|(k, v)| (k.as_ref().to_ascii_lowercase(), v.as_ref().to_vec()))
                .collect(),
        }
    }

    /// Number of entries, duplicates counted (the `num_headers` of the callbacks).
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// True without entries.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The first value of `name` (Envoy `HeaderMap::get(...)[0]`).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        let name = name.to_ascii_lowercase();
        self.pairs
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The first value of `name` as text, if it is UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every value of `name`, in order.
    pub fn get_all(&self, name: &str) -> Vec<&[u8]> {
        let name = name.to_ascii_lowercase();
        self.pairs
            .iter()
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v.as_slice())
            .collect()
    }

    /// Appends an entry (Envoy `addCopy`; duplicates allowed).
    pub fn add(&mut self, name: &str, value: &[u8]) {
        self.pairs.push((name.to_ascii_lowercase(), value.to_vec()));
    }

    /// Removes every entry named `name` (Envoy `remove`).
    pub fn remove(&mut self, name: &str) {
        let name = name.to_ascii_lowercase();
        self.pairs.retain(|(k, _)| *k != name);
    }

    /// Envoy `setCopy` as used by `replaceHeaderMapValue` (ECTX): every existing entry is
    /// removed and one entry is appended.
    pub fn replace(&mut self, name: &str, value: &[u8]) {
        self.remove(name);
        self.add(name, value);
    }

    /// Envoy `HeaderMap::byteSize()`: the sum of name and value lengths, what
    /// `proxy_get_header_map_size` returns (ECTX `getHeaderMapSize`).
    pub fn byte_size(&self) -> usize {
        self.pairs.iter().map(|(k, v)| k.len() + v.len()).sum()
    }
}

/// A request or response body chunk (or, after a body Pause, the whole buffered body).
pub type BodyBuffer = Vec<u8>;

/// What the proxy knows about a stream, for `proxy_get_property` (EEXPR attribute wrappers,
/// ECTX `findValue`). The proxy may update it while the stream runs ([`super::Vm::stream_info_mut`]).
#[derive(Debug, Clone)]
pub struct StreamInfo {
    /// Downstream peer: `source.address` ("ip:port") and `source.port`.
    pub source: Option<SocketAddr>,
    /// Local address the request arrived on: `destination.*`.
    pub destination: Option<SocketAddr>,
    /// `connection.id` and top-level `connection_id`.
    pub connection_id: u64,
    /// `connection.mtls`: a peer certificate was presented and validated.
    pub mtls: bool,
    /// `connection.requested_server_name` (SNI), if TLS.
    pub requested_server_name: Option<String>,
    /// `connection.tls_version`, if TLS (e.g. "TLSv1.3").
    pub tls_version: Option<String>,
    /// `request.protocol`: "HTTP/1.0", "HTTP/1.1", "HTTP/2" or "HTTP/3".
    pub protocol: String,
    /// `request.time`: when the first byte of the request arrived.
    pub start_time: SystemTime,
    /// `request.duration`, once the request is complete.
    pub request_duration: Option<Duration>,
    /// `request.size`: request body bytes, once known.
    pub request_size: Option<u64>,
    /// `request.total_size`: headers + body (+ trailers) bytes, once known.
    pub request_total_size: Option<u64>,
    /// `response.code`, once a response started.
    pub response_code: Option<u16>,
    /// `response.code_details`.
    pub response_code_details: Option<String>,
    /// `response.size`: response body bytes.
    pub response_size: Option<u64>,
    /// `upstream.address` ("ip:port") / `upstream.port`, once an upstream host was chosen.
    pub upstream: Option<SocketAddr>,
    /// `xds.route_name`.
    pub route_name: Option<String>,
    /// `xds.cluster_name`.
    pub cluster_name: Option<String>,
    /// `xds.virtual_host_name`.
    pub virtual_host_name: Option<String>,
    /// `xds.filter_chain_name`.
    pub filter_chain_name: Option<String>,
}

impl Default for StreamInfo {
    fn default() -> StreamInfo {
        StreamInfo {
            source: None,
            destination: None,
            connection_id: 0,
            mtls: false,
            requested_server_name: None,
            tls_version: None,
            protocol: "HTTP/1.1".to_owned(),
            start_time: SystemTime::now(),
            request_duration: None,
            request_size: None,
            request_total_size: None,
            response_code: None,
            response_code_details: None,
            response_size: None,
            upstream: None,
            route_name: None,
            cluster_name: None,
            virtual_host_name: None,
            filter_chain_name: None,
        }
    }
}

/// A stream (HTTP context) id: from the VM's context counter, like Envoy's (CPPH `wasm.h`
/// `allocContextId`).
pub type StreamId = u32;

/// Which way a stream is travelling (`proxy_continue_stream` / `proxy_close_stream` types 0/1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Downstream → upstream (decoding in Envoy terms).
    Request,
    /// Upstream → downstream (encoding).
    Response,
}

/// The filter-level failure decision once the VM has failed (EWASM `Context::failStream`,
/// `PluginConfig` `failure_policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailDecision {
    /// `fail_open`: skip the filter, continue the stream as if it were not there.
    Open,
    /// Default: reply [`FAIL_CLOSED_STATUS`] with an empty body, gRPC status UNAVAILABLE (14)
    /// and response-code-details [`FAIL_CLOSED_DETAILS`], and stop.
    Closed,
}

/// HTTP status of Envoy's fail-closed local reply.
pub const FAIL_CLOSED_STATUS: u16 = 503;
/// Response-code-details of Envoy's fail-closed local reply.
pub const FAIL_CLOSED_DETAILS: &str = "wasm_fail_stream";
/// gRPC status of Envoy's fail-closed local reply (UNAVAILABLE).
pub const FAIL_CLOSED_GRPC_STATUS: i32 = 14;

/// A headers callback's outcome, mapped from the raw i32 as Envoy does (CPPH
/// `convertVmCallResultToFilterHeadersStatus`, ECTX `convertFilterHeadersStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadersStatus {
    /// 0 (and the enum's unused 2): continue.
    Continue,
    /// 3: stop all, buffer.
    StopAllIterationAndBuffer,
    /// 1 (Pause, converted without `allow_on_headers_stop_iteration`), 4 and above, or forced
    /// by a local reply: stop all, buffer with watermarks.
    StopAllIterationAndWatermark,
    /// The VM failed (now or earlier): apply the decision.
    Failed(FailDecision),
}

/// A body callback's outcome (CPPH `convertVmCallResultToFilterDataStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataStatus {
    /// 0.
    Continue,
    /// 1 (Pause): buffer this and later chunks; redeliver the whole buffer.
    StopIterationAndBuffer,
    /// 2.
    StopIterationAndWatermark,
    /// 3 and above, or forced by a local reply.
    StopIterationNoBuffer,
    /// The VM failed: apply the decision.
    Failed(FailDecision),
}

/// A trailers callback's outcome (CPPH `convertVmCallResultToFilterTrailersStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrailersStatus {
    /// 0.
    Continue,
    /// 1 and above, or forced by a local reply.
    StopIteration,
    /// The VM failed: apply the decision.
    Failed(FailDecision),
}

/// Something the module asked the proxy to do; drained with [`super::Vm::take_effects`] after
/// each call into the VM. Stream-level effects are deferred until the callback returned, as
/// Envoy's "after VM call" actions (ECTX `sendLocalResponse`, `continueStream`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// `proxy_send_local_response`: reply locally. The callback's return was forced to Stop;
    /// the reply then goes through this plugin's response callbacks (the proxy's job).
    LocalReply {
        /// The stream.
        stream: StreamId,
        /// HTTP status.
        status: u32,
        /// Headers to add (names lower-cased).
        headers: HeaderMap,
        /// Body.
        body: Vec<u8>,
        /// gRPC status 0..=16 for gRPC requests, `None` otherwise (Rust passes -1).
        grpc_status: Option<u32>,
        /// Response-code-details, spaces replaced by `_`.
        details: String,
    },
    /// `proxy_continue_stream(0|1)`: resume the paused direction at the next filter.
    ContinueStream {
        /// The stream.
        stream: StreamId,
        /// Which direction.
        direction: Direction,
        /// The headers held while the stream was paused in its headers callback, with any
        /// changes the module made while paused; `None` if it was not paused there. The proxy
        /// forwards these instead of its copy.
        held_headers: Option<HeaderMap>,
    },
    /// `proxy_close_stream(0|1)`: reset the stream (details `wasm_close_stream`).
    CloseStream {
        /// The stream.
        stream: StreamId,
        /// Which direction was named.
        direction: Direction,
    },
    /// `proxy_close_stream(2|3)`: close the downstream (`true`) or upstream connection.
    CloseConnection {
        /// The stream whose connection.
        stream: StreamId,
        /// Downstream (2) or upstream (3).
        downstream: bool,
    },
    /// `proxy_http_call`: call `cluster`, answer with [`super::Vm::on_http_call_response`].
    HttpCall {
        /// Token (4, 8, 12, …).
        token: u32,
        /// Envoy cluster name.
        cluster: String,
        /// Request headers incl. `:method`, `:path`, `:authority`.
        headers: HeaderMap,
        /// Request body.
        body: Vec<u8>,
        /// Request trailers.
        trailers: HeaderMap,
        /// `None` = no timeout (0 ms).
        timeout: Option<Duration>,
    },
    /// `proxy_grpc_call`: unary call; answer with exactly one of
    /// [`super::Vm::on_grpc_receive`] (success) or [`super::Vm::on_grpc_close`] (failure).
    GrpcCall {
        /// Token (5, 9, 13, …).
        token: u32,
        /// Cluster name.
        cluster: String,
        /// gRPC service (`pkg.Service`).
        service: String,
        /// Method name.
        method: String,
        /// Initial metadata.
        initial_metadata: HeaderMap,
        /// Serialized request message (the proxy adds gRPC framing).
        message: Vec<u8>,
        /// `None` = no timeout.
        timeout: Option<Duration>,
    },
    /// `proxy_grpc_stream`: open a stream.
    GrpcStreamOpen {
        /// Token (6, 10, 14, …).
        token: u32,
        /// Cluster name.
        cluster: String,
        /// gRPC service.
        service: String,
        /// Method name.
        method: String,
        /// Initial metadata.
        initial_metadata: HeaderMap,
    },
    /// `proxy_grpc_send`.
    GrpcSend {
        /// Stream token.
        token: u32,
        /// Message.
        message: Vec<u8>,
        /// Half-close after it.
        end_stream: bool,
    },
    /// `proxy_grpc_cancel`: cancel a call / reset a stream.
    GrpcCancel {
        /// Token.
        token: u32,
    },
    /// `proxy_grpc_close`: cancel a call / half-close a stream.
    GrpcClose {
        /// Token.
        token: u32,
    },
    /// `proxy_set_tick_period_milliseconds`: (re)arm the root context's timer; zero disables.
    SetTickPeriod(Duration),
    /// `proxy_done`: the root context finished its deferred shutdown.
    Done,
}

/// Where a queued item's `proxy_on_queue_ready` must be delivered (CPPH `shared_queue.cc`: the
/// most recent registrant's root context and thread).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueReady {
    /// The worker whose VM registered the queue.
    pub worker: usize,
    /// The registering VM ([`super::Vm::key`]).
    pub vm: u64,
    /// The queue id.
    pub queue_id: u32,
}
