//! The real filter (`portcullis.wasm`) inside portcullis-host's proxy-wasm ABI, driven as Envoy
//! drives it for one request: a stream context, `proxy_on_request_headers`,
//! `proxy_on_response_headers`, `proxy_on_log` (the audit line, into a sink that drops it) and
//! the context's deletion. No network: this is the filter's cost per request with the ABI
//! around it, next to the native and bare-wasm figures of the same scenario.

use crate::{Scenario, median_us};
use anyhow::{Context, Result, bail};
use portcullis_host::abi::{HeaderMap, HeadersStatus, HostShared, PluginConfig, StreamInfo, Vm};
use portcullis_host::abi::{LogRecord, WasmModule};
use portcullis_host::stats::Stats;
use std::path::Path;
use std::sync::Arc;

/// `portcullis.wasm` compiled once for every scenario.
pub struct Filter {
    module: WasmModule,
}

impl Filter {
    /// Loads `make build`'s module.
    pub fn load(root: &Path) -> Result<Filter> {
        let path = root.join("target/wasm32-wasip1/release/portcullis.wasm");
        let engine = wasmtime::Engine::default();
        let module = WasmModule::load(&engine, &path)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("{} (make build makes it)", path.display()))?;
        Ok(Filter { module })
    }

    /// µs per allowed request through the ABI, for a scenario without a body.
    pub fn time(&self, s: &Scenario) -> Result<f64> {
        let decide = &s.setup["decide"];
        let plugin = PluginConfig {
            name: "portcullis".into(),
            root_id: "portcullis".into(),
            vm_id: "portcullis".into(),
            configuration: decide["config"].to_string().into_bytes(),
            ..PluginConfig::default()
        };
        let stats = Stats::new(Vec::new()).map_err(|e| anyhow::anyhow!("{e}"))?;
        let shared = HostShared::with_log_sink(stats, Arc::new(|_: LogRecord| {}));
        let mut vm = Vm::start(&self.module, &plugin, shared, 0)
            .map_err(|e| anyhow::anyhow!("{}: the filter does not start: {e}", s.name))?;
        let pairs: Vec<(String, String)> = serde_json::from_value(decide["headers"].clone())?;
        let request = HeaderMap::from_pairs(&pairs);
        let info = StreamInfo {
            source: Some(([203, 0, 113, 7], 40000).into()),
            destination: Some(([127, 0, 0, 1], 10000).into()),
            ..StreamInfo::default()
        };
        let name = s.name.as_str();
        median_us(|n| {
            for _ in 0..n {
                let stream = vm.create_stream(info.clone());
                let mut headers = request.clone();
                let status = vm.on_request_headers(stream, &mut headers, true);
                if status != HeadersStatus::Continue {
                    let effects = vm.take_effects();
                    bail!("{name}: the filter did not let the request pass: {effects:?}");
                }
                let mut response = HeaderMap::from_pairs(&[(":status", "200")]);
                vm.on_response_headers(stream, &mut response, true);
                vm.on_log(stream);
                vm.destroy(stream);
            }
            Ok(())
        })
    }
}
