//! Load and start errors, worded as Envoy words them where Envoy has a message.

use thiserror::Error;

/// Why a module could not be loaded (CPPH `WasmBase::load`, `BytecodeUtil::getAbiVersion`,
/// the runtimes' link step).
#[derive(Debug, Error)]
pub enum AbiError {
    /// The file could not be read.
    #[error("Failed to read Wasm module {path}: {source}")]
    Read {
        /// The path given.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// wasmtime rejected the bytes.
    #[error("Failed to load Wasm code: {0}")]
    Compile(String),
    /// No `proxy_abi_version_*` function export (CPPH `wasm.cc`).
    #[error("Missing or unknown Proxy-Wasm ABI version")]
    MissingAbiVersion,
    /// A known ABI marker this host does not implement (0.1.0).
    #[error("Unsupported Proxy-Wasm ABI version {0} (this host implements 0.2.0 and 0.2.1)")]
    UnsupportedAbiVersion(&'static str),
    /// An import the host does not provide (CPPH runtimes, e.g. `v8.cc` link).
    #[error("Failed to load Wasm module due to a missing import: {module}.{name}")]
    MissingImport {
        /// Import module (`env`, `wasi_snapshot_preview1`).
        module: String,
        /// Import name.
        name: String,
    },
    /// Neither `malloc` nor `proxy_on_memory_allocate` is exported (CPPH `WasmBase::getFunctions`).
    #[error("Wasm module is missing malloc function.")]
    MissingAllocator,
    /// Linking failed otherwise (e.g. an import with the wrong signature).
    #[error("Failed to load Wasm module: {0}")]
    Link(String),
}

/// Why a VM (canary or worker) could not start its plugin (CPPH `WasmBase::start`,
/// `ContextBase::onStart/onConfigure`; EWASM `createWasm`: the config is rejected, fail_open or not).
#[derive(Debug, Error)]
pub enum StartError {
    /// Instantiation failed (memory, table, start function).
    #[error("Unable to create Wasm plugin {plugin}: instantiation failed: {reason}")]
    Instantiate {
        /// Plugin name.
        plugin: String,
        /// wasmtime's error.
        reason: String,
    },
    /// A trap during `_initialize`, `proxy_on_context_create`, `proxy_on_vm_start` or
    /// `proxy_on_configure` (including a restricted hostcall during `_initialize`).
    #[error(
        "Unable to create Wasm plugin {plugin}: {function} failed: {trap}{}",
        guest_suffix(guest_log)
    )]
    Trap {
        /// Plugin name.
        plugin: String,
        /// The export that trapped.
        function: String,
        /// The trap.
        trap: String,
        /// The last error/critical line the module logged, if any.
        guest_log: Option<String>,
    },
    /// `proxy_on_vm_start` returned false (CPPH `FailState::StartFailed`).
    #[error(
        "Unable to create Wasm plugin {plugin}: proxy_on_vm_start returned false{}",
        guest_suffix(guest_log)
    )]
    VmStartFailed {
        /// Plugin name.
        plugin: String,
        /// The last error/critical line the module logged, if any.
        guest_log: Option<String>,
    },
    /// `proxy_on_configure` returned false (CPPH `FailState::ConfigureFailed`).
    #[error(
        "Unable to create Wasm plugin {plugin}: proxy_on_configure returned false{}",
        guest_suffix(guest_log)
    )]
    ConfigureFailed {
        /// Plugin name.
        plugin: String,
        /// The last error/critical line the module logged, if any.
        guest_log: Option<String>,
    },
}

impl StartError {
    /// The module's own explanation, if it logged one at error level or above.
    pub fn guest_log(&self) -> Option<&str> {
        match self {
            StartError::Instantiate { .. } => None,
            StartError::Trap { guest_log, .. }
            | StartError::VmStartFailed { guest_log, .. }
            | StartError::ConfigureFailed { guest_log, .. } => guest_log.as_deref(),
        }
    }
}

fn guest_suffix(log: &Option<String>) -> String {
    match log {
        Some(line) => format!(" (module logged: {line})"),
        None => String::new(),
    }
}
