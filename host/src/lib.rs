//! portcullis-host: a proxy-wasm host on wasmtime that runs HTTP filters the way Envoy does,
//! configured from Envoy's own v3 bootstrap YAML. It exists because our machines have no Envoy:
//! every behaviour of the filter that goes through the proxy-wasm ABI is tested here. It is a
//! test bench and a local runner, not a production proxy.
//!
//! - [`abi`]: the proxy-wasm ABI 0.2.1 with Envoy's semantics (one VM per worker).
//! - [`bootstrap`]: the subset of Envoy's bootstrap YAML the host understands; everything else is
//!   reported as a warning, never silently dropped.
//! - [`proxy`]: the data path (listeners, connection manager, wasm filters, router, admin) and
//!   the `portcullis-host` start-up, as Envoy does them.
//! - [`echo`]: the upstream of the end-to-end tests and `make run`, which answers what it got.
//! - [`stats`]: Envoy-style stats (wasm-defined metrics in the `wasmcustom` namespace, tag
//!   extraction) rendered for `/stats` and `/stats/prometheus`.

pub mod abi;
pub mod bootstrap;
pub mod echo;
pub mod proxy;
pub mod stats;
