//! Envoy bootstrap building blocks, as JSON (which is YAML, so Envoy reads it as written): the
//! portcullis wasm filter, HTTP listeners, STATIC clusters (HTTP/1.1, or HTTP/2 for gRPC), and
//! the whole bootstrap with its admin listener.
//!
//! Addresses are 127.0.0.1; a port of 0 lets Envoy bind one the kernel picks (no race between
//! parallel tests), found afterwards with [`crate::envoy::Envoy::listener`].

use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path;

/// What Envoy does with a request when the filter's VM is gone (`failure_policy` of the
/// wasm filter's `PluginConfig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Refuse the request: Envoy's own `503` with an empty body (what the README recommends).
    FailClosed,
    /// Let the request pass without the filter.
    FailOpen,
    /// Create a new VM and retry.
    FailReload,
}

impl FailurePolicy {
    fn as_str(self) -> &'static str {
        match self {
            FailurePolicy::FailClosed => "FAIL_CLOSED",
            FailurePolicy::FailOpen => "FAIL_OPEN",
            FailurePolicy::FailReload => "FAIL_RELOAD",
        }
    }
}

/// `envoy.filters.http.wasm` running `code` with `configuration` as a
/// `google.protobuf.StringValue`, on V8, `name` as its name, root id and VM id.
pub fn wasm_filter(
    name: &str,
    code: &Path,
    configuration: &str,
    failure_policy: FailurePolicy,
) -> Value {
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                "root_id": name,
                "failure_policy": failure_policy.as_str(),
                "vm_config": {
                    "vm_id": name,
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": code.display().to_string()}}
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": configuration
                }
            }
        }
    })
}

/// The portcullis filter (fail closed) with `configuration`.
pub fn portcullis(code: &Path, configuration: &str) -> Value {
    wasm_filter("portcullis", code, configuration, FailurePolicy::FailClosed)
}

/// A route to `cluster` for every path starting with `prefix`.
pub fn route(prefix: &str, cluster: &str) -> Value {
    json!({"match": {"prefix": prefix}, "route": {"cluster": cluster}})
}

/// An HTTP listener `name` on 127.0.0.1:`port` (0: any) with `filters` (the router is
/// appended) and `routes` in one virtual host for every domain. The connection manager uses
/// the peer address as the client's (`use_remote_address: true`), as an edge proxy does.
pub fn listener(name: &str, port: u16, filters: Vec<Value>, routes: Vec<Value>) -> Value {
    let mut http_filters = filters;
    http_filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    }));
    json!({
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{
            "filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": name,
                    "use_remote_address": true,
                    "route_config": {
                        "name": name,
                        "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]
                    },
                    "http_filters": http_filters
                }
            }]
        }]
    })
}

/// The protocol Envoy speaks to a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 (upstream services, the identity provider).
    Http1,
    /// HTTP/2 (gRPC: the rate-limit service).
    Http2,
}

/// A STATIC cluster `name` with one endpoint.
pub fn cluster(name: &str, addr: SocketAddr, protocol: Protocol) -> Value {
    let mut c = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": addr.ip().to_string(), "port_value": addr.port()
            }}}}]}]
        }
    });
    if protocol == Protocol::Http2 {
        c["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}
            }
        });
    }
    c
}

/// The whole bootstrap: `listeners`, `clusters`, and the admin listener on 127.0.0.1:0 (the
/// port Envoy picks is read from `--admin-address-path`).
pub fn bootstrap(listeners: Vec<Value>, clusters: Vec<Value>) -> Value {
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": listeners, "clusters": clusters}
    })
}

/// Several filter configurations in one Envoy, isolated from each other: one listener per
/// `(name, configuration)`, named `name`, whose portcullis filter (fail closed) runs in a VM of
/// its own (`vm_id` = `name`: a VM that fails takes no other listener's with it; shared data is
/// per VM id too), each in front of the cluster `upstream` (at `upstream`); plus `clusters`.
/// Envoy compiles a module once for every VM id that loads the same code, so this costs one
/// compilation, not one per listener.
pub fn gateways(
    code: &Path,
    configurations: &[(String, String)],
    upstream: SocketAddr,
    clusters: Vec<Value>,
) -> Value {
    let mut all = vec![cluster("upstream", upstream, Protocol::Http1)];
    all.extend(clusters);
    let listeners = configurations
        .iter()
        .map(|(name, configuration)| {
            listener(
                name,
                0,
                vec![wasm_filter(
                    name,
                    code,
                    configuration,
                    FailurePolicy::FailClosed,
                )],
                vec![route("/", "upstream")],
            )
        })
        .collect();
    bootstrap(listeners, all)
}

/// The common shape: one listener, `ingress`, with the portcullis filter (`configuration`) in
/// front of the cluster `upstream` (at `upstream`), plus the `clusters` the filter calls.
pub fn gateway(
    code: &Path,
    configuration: &str,
    upstream: SocketAddr,
    clusters: Vec<Value>,
) -> Value {
    let mut all = vec![cluster("upstream", upstream, Protocol::Http1)];
    all.extend(clusters);
    bootstrap(
        vec![listener(
            "ingress",
            0,
            vec![portcullis(code, configuration)],
            vec![route("/", "upstream")],
        )],
        all,
    )
}
