//! The filter's proxy-wasm binding has no call that can panic on a host answer.
//!
//! A panic in the filter kills the worker's VM, and Envoy then answers 503 to every request on
//! that worker (issue 13: the proxy-wasm SDK panicked on the status of a callout answer whose
//! connection was reset). So the filter makes its host calls itself, in
//! `filter/src/wasm/hostcalls.rs`, taking every status as a number, and receives Envoy's
//! callbacks itself in `filter/src/wasm/exports.rs`. This test fails if the SDK, or any host
//! import outside that module, comes back: it reads the sources and the built
//! `portcullis.wasm` (`make build`), whose imports and panic messages it lists.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn filter_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// The `proxy_*` functions `hostcalls.rs` imports, each checked to return the status as a plain
/// `u32` (never an enum: a status outside an enum is undefined behaviour, and the SDK's enum
/// made it a panic).
fn declared_imports() -> BTreeSet<String> {
    let text = read(&filter_dir().join("src/wasm/hostcalls.rs"));
    let start = text
        .find("unsafe extern \"C\" {")
        .expect("hostcalls.rs has an extern block");
    let block = &text[start..start + text[start..].find("\n}\n").expect("end of block")];
    let mut names = BTreeSet::new();
    for decl in block.split("fn ").skip(1) {
        let name: String = decl
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let signature = &decl[..decl.find(';').expect("declaration ends with ;")];
        assert!(
            signature.trim_end().ends_with("-> u32"),
            "{name} must return its status as u32: {signature}"
        );
        assert!(name.starts_with("proxy_"), "unexpected import {name}");
        names.insert(name);
    }
    assert!(names.len() >= 20, "found only {names:?}");
    names
}

#[test]
fn the_filter_does_not_depend_on_the_proxy_wasm_sdk() {
    let manifest = read(&filter_dir().join("Cargo.toml"));
    for line in manifest.lines() {
        let key = line.split('=').next().unwrap_or("").trim();
        assert!(
            key != "proxy-wasm" && key != "proxy_wasm",
            "filter/Cargo.toml depends on the proxy-wasm SDK again: {line}"
        );
    }
    for file in sources(&filter_dir().join("src")) {
        let text = read(&file);
        assert!(
            !text.contains("proxy_wasm::"),
            "{} uses the proxy-wasm SDK",
            file.display()
        );
    }
}

#[test]
fn every_host_import_is_declared_in_hostcalls() {
    let declared = declared_imports();
    for file in sources(&filter_dir().join("src")) {
        if file.ends_with("wasm/hostcalls.rs") {
            continue;
        }
        let text = read(&file);
        for needle in ["wasm_import_module", "fn proxy_log(", "fn proxy_http_call("] {
            assert!(
                !text.contains(needle),
                "{} declares host imports ({needle}); they belong in wasm/hostcalls.rs",
                file.display()
            );
        }
    }
    assert!(declared.contains("proxy_http_call"));
}

/// The release build of the filter.
fn wasm() -> Vec<u8> {
    let path = std::env::var_os("PORTCULLIS_WASM").map_or_else(
        || filter_dir().join("../target/wasm32-wasip1/release/portcullis.wasm"),
        PathBuf::from,
    );
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run `make build` first, or set PORTCULLIS_WASM)",
            path.display()
        )
    })
}

#[test]
fn the_built_module_imports_only_the_non_panicking_calls() {
    let declared = declared_imports();
    let bytes = wasm();
    let mut imports = BTreeSet::new();
    let mut exports = BTreeSet::new();
    for payload in wasmparser::Parser::new(0).parse_all(&bytes) {
        match payload.expect("a valid wasm module") {
            wasmparser::Payload::ImportSection(section) => {
                for import in section.into_imports() {
                    let import = import.expect("an import");
                    imports.insert((import.module.to_owned(), import.name.to_owned()));
                }
            }
            wasmparser::Payload::ExportSection(section) => {
                for export in section {
                    exports.insert(export.expect("an export").name.to_owned());
                }
            }
            _ => {}
        }
    }
    for (module, name) in &imports {
        match module.as_str() {
            "env" => assert!(
                declared.contains(name),
                "the module imports env.{name}, which hostcalls.rs does not declare"
            ),
            // The Rust standard library's WASI needs (clock, random seed, stderr, exit).
            "wasi_snapshot_preview1" => {}
            other => panic!("unexpected import module {other}.{name}"),
        }
    }
    for name in [
        "proxy_abi_version_0_2_1",
        "_initialize",
        "proxy_on_memory_allocate",
        "proxy_on_context_create",
        "proxy_on_configure",
        "proxy_on_tick",
        "proxy_on_request_headers",
        "proxy_on_request_body",
        "proxy_on_response_headers",
        "proxy_on_log",
        "proxy_on_done",
        "proxy_on_delete",
        "proxy_on_http_call_response",
        "proxy_on_grpc_receive",
        "proxy_on_grpc_close",
    ] {
        assert!(exports.contains(name), "the module does not export {name}");
    }
    // The SDK's panics, by their messages: none of its code may be linked.
    for message in [
        "unexpected status",
        "invalid token_id",
        "invalid context_id",
        "invalid root_context_id",
        "proxy-wasm-0.",
    ] {
        assert!(
            !bytes
                .windows(message.len())
                .any(|w| w == message.as_bytes()),
            "the module contains the proxy-wasm SDK's {message:?}"
        );
    }
}
