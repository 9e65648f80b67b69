//! Loading a module once per process (Envoy's base VM): ABI marker check, import check, and a
//! pre-linked `InstancePre` every worker VM instantiates from.

use super::error::AbiError;
use super::hostcalls;
use super::shared::HostShared;
use super::state::HostState;
use super::types::{LogLevel, PluginConfig};
use super::wasi;
use crate::stats::Stats;
use std::path::Path;
use std::sync::Arc;
use wasmtime::{Engine, ExternType, InstancePre, Linker, Module, Store, ValType};
use wasmtime_wasi::WasiCtxBuilder;

/// The ABI a module declares through its marker export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbiVersion {
    /// `proxy_abi_version_0_2_0` (accepted; served with the 0.2.1 host functions).
    V0_2_0,
    /// `proxy_abi_version_0_2_1` (what proxy-wasm Rust SDK 0.2.x exports).
    V0_2_1,
}

/// A compiled, checked module. `Send + Sync`: load once, share with every worker.
#[derive(Clone)]
pub struct WasmModule {
    pub(crate) engine: Engine,
    pub(crate) module: Module,
    pub(crate) pre: InstancePre<HostState>,
    pub(crate) abi: AbiVersion,
    /// `malloc` if exported, else `proxy_on_memory_allocate` (CPPH `WasmBase::getFunctions`).
    pub(crate) allocator: &'static str,
}

impl std::fmt::Debug for WasmModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmModule")
            .field("abi", &self.abi)
            .field("allocator", &self.allocator)
            .finish_non_exhaustive()
    }
}

/// Callback exports and their arity (params, results), all i32 (CPPH `wasm.h` `FOR_ALL_*`).
/// A present export with another signature fails the load as in cpp-host.
const CALLBACKS: &[(&str, usize, usize)] = &[
    ("proxy_on_context_create", 2, 0),
    ("proxy_on_vm_start", 2, 1),
    ("proxy_on_configure", 2, 1),
    ("proxy_on_tick", 1, 0),
    ("proxy_on_queue_ready", 2, 0),
    ("proxy_on_request_headers", 3, 1),
    ("proxy_on_request_body", 3, 1),
    ("proxy_on_request_trailers", 2, 1),
    ("proxy_on_response_headers", 3, 1),
    ("proxy_on_response_body", 3, 1),
    ("proxy_on_response_trailers", 2, 1),
    ("proxy_on_http_call_response", 5, 0),
    ("proxy_on_grpc_receive_initial_metadata", 3, 0),
    ("proxy_on_grpc_receive", 3, 0),
    ("proxy_on_grpc_receive_trailing_metadata", 3, 0),
    ("proxy_on_grpc_close", 3, 0),
    ("proxy_on_log", 1, 0),
    ("proxy_on_done", 1, 1),
    ("proxy_on_delete", 1, 0),
    ("proxy_on_memory_allocate", 1, 1),
    ("malloc", 1, 1),
];

impl WasmModule {
    /// Reads and compiles `path`, then checks it as Envoy does before any VM starts.
    pub fn load(engine: &Engine, path: impl AsRef<Path>) -> Result<WasmModule, AbiError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| AbiError::Read {
            path: path.display().to_string(),
            source,
        })?;
        WasmModule::from_bytes(engine, &bytes)
    }

    /// As [`WasmModule::load`], from bytes.
    pub fn from_bytes(engine: &Engine, bytes: &[u8]) -> Result<WasmModule, AbiError> {
        let module = Module::new(engine, bytes).map_err(|e| AbiError::Compile(format!("{e:#}")))?;
        let abi = abi_version(&module)?;
        let linker = linker(engine).map_err(|e| AbiError::Link(format!("{e:#}")))?;
        check_imports(engine, &linker, &module)?;
        check_callbacks(&module)?;
        let allocator = if has_func_export(&module, "malloc") {
            "malloc"
        } else if has_func_export(&module, "proxy_on_memory_allocate") {
            "proxy_on_memory_allocate"
        } else {
            return Err(AbiError::MissingAllocator);
        };
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| AbiError::Link(format!("{e:#}")))?;
        Ok(WasmModule {
            engine: engine.clone(),
            module,
            pre,
            abi,
            allocator,
        })
    }

    /// The ABI the module declared.
    pub fn abi_version(&self) -> AbiVersion {
        self.abi
    }

    /// The compiled module.
    pub fn module(&self) -> &Module {
        &self.module
    }

    /// The engine it was compiled with.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

fn has_func_export(module: &Module, name: &str) -> bool {
    module
        .exports()
        .any(|e| e.name() == name && matches!(e.ty(), ExternType::Func(_)))
}

/// The first function export among the ABI markers decides (CPPH `BytecodeUtil::getAbiVersion`).
fn abi_version(module: &Module) -> Result<AbiVersion, AbiError> {
    for export in module.exports() {
        if !matches!(export.ty(), ExternType::Func(_)) {
            continue;
        }
        match export.name() {
            "proxy_abi_version_0_1_0" => return Err(AbiError::UnsupportedAbiVersion("0.1.0")),
            "proxy_abi_version_0_2_0" => return Ok(AbiVersion::V0_2_0),
            "proxy_abi_version_0_2_1" => return Ok(AbiVersion::V0_2_1),
            _ => {}
        }
    }
    Err(AbiError::MissingAbiVersion)
}

/// The host functions: `env.*` and WASI preview 1.
pub(crate) fn linker(engine: &Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker: Linker<HostState> = Linker::new(engine);
    wasi::add_to_linker(&mut linker)?;
    hostcalls::add_to_linker(&mut linker)?;
    Ok(linker)
}

/// Names the first import the linker lacks, with Envoy's message.
fn check_imports(
    engine: &Engine,
    linker: &Linker<HostState>,
    module: &Module,
) -> Result<(), AbiError> {
    let stats = Stats::new(Vec::new()).map_err(|e| AbiError::Link(e.to_string()))?;
    let shared = HostShared::with_log_sink(stats, Arc::new(|_| {}));
    shared.set_log_level(LogLevel::Critical);
    let state = HostState::new(
        WasiCtxBuilder::new().build_p1(),
        shared,
        Arc::new(PluginConfig::default()),
        0,
    );
    let mut store = Store::new(engine, state);
    for import in module.imports() {
        if linker.get_by_import(&mut store, &import).is_none() {
            return Err(AbiError::MissingImport {
                module: import.module().to_owned(),
                name: import.name().to_owned(),
            });
        }
    }
    Ok(())
}

fn check_callbacks(module: &Module) -> Result<(), AbiError> {
    for export in module.exports() {
        let Some(&(name, params, results)) = CALLBACKS.iter().find(|c| c.0 == export.name()) else {
            continue;
        };
        let ok = match export.ty() {
            ExternType::Func(f) => {
                f.params().len() == params
                    && f.results().len() == results
                    && f.params().all(|t| matches!(t, ValType::I32))
                    && f.results().all(|t| matches!(t, ValType::I32))
            }
            _ => false,
        };
        if !ok {
            return Err(AbiError::Link(format!(
                "Bad function signature for: {name}"
            )));
        }
    }
    Ok(())
}
