//! Every Envoy configuration the project ships, checked by Envoy itself: `envoy --mode
//! validate` loads the whole bootstrap — every listener, filter and cluster, the wasm module
//! compiled and configured — without serving. It runs next to the schema checks of
//! `make check-deploy`, which cannot see what only Envoy knows (a module that does not load, a
//! filter configuration the filter refuses, an extension this build lacks).
//!
//! `envoy/local.yaml` is validated as `make run` starts it (from `envoy/`, so its relative path
//! to the module resolves); `envoy/envoy.yaml` (the demo stack's) with its absolute paths
//! (`/etc/envoy/...`, `/var/log/envoy/...`) pointed at a temporary folder holding the built
//! module and certificates from `scripts/make-certs.sh`. A file added to `envoy/` without a
//! case here fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use portcullis_e2e::artifacts::{envoy_binary, filter_wasm, workspace_root};
use portcullis_e2e::net::TempDir;
use std::path::Path;
use std::process::Command;

/// Runs `envoy --mode validate -c config` in `dir`; fails the test with Envoy's message.
fn validate(dir: &Path, config: &str) {
    let envoy = envoy_binary().unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(&envoy)
        .current_dir(dir)
        .args(["--mode", "validate", "-c", config, "--log-level", "warn"])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", envoy.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains(&format!("configuration '{config}' OK")),
        "Envoy ({}) refuses {}/{config}:\n{text}",
        envoy.display(),
        dir.display()
    );
}

#[test]
fn envoy_accepts_every_shipped_configuration() {
    let root = workspace_root();
    let envoy_dir = root.join("envoy");
    let mut shipped: Vec<String> = std::fs::read_dir(&envoy_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .collect();
    shipped.sort();
    assert_eq!(
        shipped,
        ["envoy.yaml", "local.yaml"],
        "a configuration in envoy/ without a validation case here"
    );

    // local.yaml names the module relative to envoy/: the one `make build` left.
    filter_wasm().unwrap_or_else(|e| panic!("{e}"));
    validate(&envoy_dir, "local.yaml");

    // envoy.yaml, with its absolute paths moved into a temporary folder.
    let tmp = TempDir::new().unwrap();
    let etc = tmp.path().join("etc");
    let certs = etc.join("certs");
    let logs = tmp.path().join("log");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::copy(filter_wasm().unwrap(), etc.join("portcullis.wasm")).unwrap();
    let made = Command::new(root.join("scripts/make-certs.sh"))
        .arg(&certs)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "make-certs.sh: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let yaml = std::fs::read_to_string(envoy_dir.join("envoy.yaml")).unwrap();
    let moved = yaml
        .replace("/etc/envoy/", &format!("{}/", etc.display()))
        .replace("/var/log/envoy/", &format!("{}/", logs.display()));
    assert!(
        !moved.contains("/etc/envoy") && !moved.contains("/var/log/envoy"),
        "envoy.yaml names a path this test does not provide"
    );
    std::fs::write(tmp.path().join("envoy.yaml"), moved).unwrap();
    validate(tmp.path(), "envoy.yaml");
}

/// The check itself can fail: a bootstrap Envoy refuses (a cluster the route names does not
/// exist) is reported with Envoy's own message.
#[test]
fn a_configuration_envoy_refuses_fails_with_its_message() {
    let tmp = TempDir::new().unwrap();
    let local = std::fs::read_to_string(workspace_root().join("envoy/local.yaml")).unwrap();
    let broken = local
        .replace(
            "cluster: catalog, timeout",
            "cluster: no-such-cluster, timeout",
        )
        .replace(
            "../target/wasm32-wasip1/release/portcullis.wasm",
            &filter_wasm().unwrap().display().to_string(),
        );
    std::fs::write(tmp.path().join("broken.yaml"), broken).unwrap();
    let refused = std::panic::catch_unwind(|| validate(tmp.path(), "broken.yaml"));
    let message = refused
        .err()
        .and_then(|e| e.downcast_ref::<String>().cloned())
        .expect("Envoy accepted a route to a missing cluster");
    assert!(message.contains("no-such-cluster"), "{message}");
}
