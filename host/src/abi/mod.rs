//! The proxy-wasm ABI 0.2.1 as Envoy implements it (Envoy + proxy-wasm-cpp-host), on wasmtime.
//!
//! Envoy semantics, not the spec's, wherever they differ: see `shared/reference/proxy-wasm-abi.md`
//! and the source file named on each item. Usage, as Envoy's wasm filter does it:
//!
//! 1. [`WasmModule::load`] once per process (checks the ABI marker and imports).
//! 2. A canary: [`Vm::start`] then drop; a [`StartError`] rejects the configuration.
//! 3. Per worker: [`Vm::start`]; per request [`Vm::create_stream`], the `on_*` callbacks in
//!    Envoy's order, [`Vm::on_log`], [`Vm::destroy`]; after every call drain
//!    [`Vm::take_effects`] and act on them (local replies, continues, callouts, ticks).
//! 4. Per worker event loop: [`HostShared::take_queue_ready`] → [`Vm::on_queue_ready`].
//!
//! A trap fails the VM; later stream callbacks answer `Failed(FailDecision)`: with
//! [`FailDecision::Closed`] reply [`FAIL_CLOSED_STATUS`] / [`FAIL_CLOSED_DETAILS`], empty body.

mod error;
mod hostcalls;
mod memory;
mod module;
mod pairs;
mod properties;
mod shared;
mod state;
mod status;
mod types;
mod vm;
mod wasi;

pub use error::{AbiError, StartError};
pub use module::{AbiVersion, WasmModule};
pub use shared::{CasResult, HostShared, LogSink};
pub use types::{
    BodyBuffer, DataStatus, Direction, Effect, FAIL_CLOSED_DETAILS, FAIL_CLOSED_GRPC_STATUS,
    FAIL_CLOSED_STATUS, FailDecision, HeaderMap, HeadersStatus, LogLevel, LogRecord, PluginConfig,
    QueueReady, StreamId, StreamInfo, TrailersStatus,
};
pub use vm::Vm;
