//! envoy/local.yaml (what `make run` starts) carries examples/portcullis.json as the filter's
//! configuration, and both stay loadable: the host reads the YAML without errors and the filter
//! accepts the JSON.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use portcullis_host::bootstrap::{self, HttpFilter};
use std::path::Path;

#[test]
fn local_yaml_embeds_the_example_configuration() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let boot = bootstrap::load(root.join("envoy/local.yaml")).unwrap();
    let plugin = boot
        .listeners
        .iter()
        .flat_map(|l| &l.filter_chains)
        .flat_map(|c| &c.http.http_filters)
        .find_map(|f| match f {
            HttpFilter::Wasm(p) => Some(p),
            _ => None,
        })
        .expect("envoy/local.yaml has a wasm filter");
    let embedded: serde_json::Value = serde_json::from_slice(&plugin.configuration).unwrap();
    let example: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("examples/portcullis.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        embedded, example,
        "envoy/local.yaml's configuration differs from examples/portcullis.json: regenerate it"
    );
    portcullis::config::Config::from_json(&plugin.configuration).unwrap();
}
