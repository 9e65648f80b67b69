//! Listeners: address, buffer limit, filter chains with the HTTP connection manager, its routes
//! and HTTP filters (wasm, router), and downstream TLS.

use serde_yaml::Value;

use super::route::{self, Route, RouteConfig};
use super::tls::{self, DownstreamTls, Socket};
use super::walk::{Obj, Walker, as_str, base64_decode, invalid};
use super::{BootstrapError, DEFAULT_BUFFER_LIMIT, DataSource, SocketAddress, read_address};

const HCM_NAMES: [&str; 2] = [
    "envoy.filters.network.http_connection_manager",
    "envoy.http_connection_manager",
];
const HCM_TYPE: &str =
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const WASM_NAMES: [&str; 2] = ["envoy.filters.http.wasm", "envoy.wasm"];
const WASM_TYPE: &str = "envoy.extensions.filters.http.wasm.v3.Wasm";
const ROUTER_NAMES: [&str; 2] = ["envoy.filters.http.router", "envoy.router"];
const ROUTER_TYPE: &str = "envoy.extensions.filters.http.router.v3.Router";
const STRING_VALUE: &str = "google.protobuf.StringValue";
const BYTES_VALUE: &str = "google.protobuf.BytesValue";

/// One `static_resources.listeners[]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    /// `name` (may be empty; used in stats as Envoy does).
    pub name: String,
    /// `address.socket_address`.
    pub address: SocketAddress,
    /// `per_connection_buffer_limit_bytes` (default 1 MiB): the watermark for buffered bodies,
    /// beyond which a paused request gets 413.
    pub per_connection_buffer_limit_bytes: u32,
    /// `filter_chains` that carry an HTTP connection manager. Without `filter_chain_match`
    /// support (warned), the host serves the first one.
    pub filter_chains: Vec<FilterChain>,
}

/// One filter chain: its HTTP connection manager and optional TLS.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterChain {
    /// `transport_socket` `envoy.transport_sockets.tls` (`None`: plaintext).
    pub tls: Option<DownstreamTls>,
    /// The `envoy.filters.network.http_connection_manager` filter.
    pub http: HttpConnectionManager,
}

/// `HttpConnectionManager`.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConnectionManager {
    /// `stat_prefix` (required): stats are `http.<stat_prefix>.…`.
    pub stat_prefix: String,
    /// `codec_type`.
    pub codec_type: CodecType,
    /// `route_config` (inline; `rds` is not implemented).
    pub route_config: RouteConfig,
    /// `http_filters` the host runs, in order; the last one is the router.
    pub http_filters: Vec<HttpFilter>,
    /// `use_remote_address` (default false): whether the peer address is the trusted client
    /// address and `x-forwarded-for` is appended.
    pub use_remote_address: bool,
    /// `xff_num_trusted_hops` (default 0).
    pub xff_num_trusted_hops: u32,
    /// `generate_request_id` (default true): set `x-request-id` when absent.
    pub generate_request_id: bool,
    /// `strip_any_host_port`: remove any `:port` from the host before routing.
    pub strip_any_host_port: bool,
    /// `strip_matching_host_port`: remove `:port` when it equals the listener's port.
    pub strip_matching_host_port: bool,
}

impl HttpConnectionManager {
    /// Route selection after the connection manager's host-port stripping options.
    pub fn select_route(
        &self,
        authority: &str,
        listener_port: u16,
        path: &str,
        headers: &[(String, Vec<u8>)],
    ) -> Option<&Route> {
        let stripped = route::strip_port(authority);
        let authority = if self.strip_any_host_port
            || (self.strip_matching_host_port
                && authority
                    .get(stripped.len() + 1..)
                    .is_some_and(|p| p == listener_port.to_string()))
        {
            stripped
        } else {
            authority
        };
        self.route_config.select(authority, path, headers)
    }
}

/// `codec_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CodecType {
    /// `AUTO`: HTTP/1.1, or HTTP/2 by ALPN / prior knowledge.
    #[default]
    Auto,
    /// `HTTP1`.
    Http1,
    /// `HTTP2`.
    Http2,
}

/// An HTTP filter the host runs.
#[derive(Debug, Clone, PartialEq)]
pub enum HttpFilter {
    /// `envoy.filters.http.wasm` (boxed: the plugin is large, the router is nothing).
    Wasm(Box<WasmPlugin>),
    /// `envoy.filters.http.router`.
    Router,
}

/// The wasm filter's `PluginConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct WasmPlugin {
    /// The `http_filters[].name` (Envoy's filter name; not seen by the plugin).
    pub filter_name: String,
    /// `config.name`: the `plugin_name` property.
    pub name: String,
    /// `config.root_id`: selects the root context in the module.
    pub root_id: String,
    /// `config.vm_config`.
    pub vm_config: VmConfig,
    /// `config.configuration` bytes (StringValue/BytesValue `value`), given to
    /// `proxy_on_configure`.
    pub configuration: Vec<u8>,
    /// What requests get when the VM has failed.
    pub failure_policy: FailurePolicy,
}

/// `vm_config`.
#[derive(Debug, Clone, PartialEq)]
pub struct VmConfig {
    /// `vm_id` (VM sharing key; informative here).
    pub vm_id: String,
    /// `runtime` as written (the host always runs wasmtime).
    pub runtime: String,
    /// `code.local`: the module.
    pub code: DataSource,
    /// `configuration`, given to `proxy_on_vm_start`.
    pub configuration: Vec<u8>,
    /// `environment_variables.key_values`, sorted by key.
    pub env_key_values: Vec<(String, String)>,
    /// `environment_variables.host_env_keys`: host variables passed through.
    pub env_host_keys: Vec<String>,
}

/// `failure_policy` / legacy `fail_open`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Requests get 503 once the VM failed (Envoy's default; also FAIL_RELOAD, warned).
    #[default]
    FailClosed,
    /// Requests pass through the filter untouched once the VM failed.
    FailOpen,
}

/// Reads one listener.
pub(crate) fn read_listener(
    w: &mut Walker,
    path: &str,
    v: &Value,
) -> Result<Listener, BootstrapError> {
    let mut o = Obj::new(path, v)?;
    let name = o.str("name")?.unwrap_or_default();
    let address = read_address(w, o.req_obj("address")?)?;
    let per_connection_buffer_limit_bytes = o
        .u32("per_connection_buffer_limit_bytes")?
        .unwrap_or(DEFAULT_BUFFER_LIMIT);
    let mut filter_chains = Vec::new();
    for (p, v) in o.list("filter_chains")? {
        if let Some(fc) = read_filter_chain(w, &p, v)? {
            filter_chains.push(fc);
        }
    }
    if filter_chains.is_empty() {
        return Err(invalid(
            &o.child("filter_chains"),
            "no filter chain with an http_connection_manager",
        ));
    }
    o.finish(w);
    Ok(Listener {
        name,
        address,
        per_connection_buffer_limit_bytes,
        filter_chains,
    })
}

fn read_filter_chain(
    w: &mut Walker,
    path: &str,
    v: &Value,
) -> Result<Option<FilterChain>, BootstrapError> {
    let mut o = Obj::new(path, v)?;
    let mut http = None;
    for (p, v) in o.list("filters")? {
        let mut f = Obj::new(&p, v)?;
        let name = f.str("name")?.unwrap_or_default();
        let is_hcm_name = HCM_NAMES.contains(&name.as_str());
        let Some(mut tc) = f.obj("typed_config")? else {
            if is_hcm_name {
                return Err(invalid(
                    &f.child("typed_config"),
                    "required field is missing",
                ));
            }
            w.warn(
                &p,
                format!(
                    "network filter {name:?} is not implemented by portcullis-host (filter skipped)"
                ),
            );
            continue;
        };
        let ty = tc.any_type()?;
        if ty == HCM_TYPE {
            if http.is_some() {
                return Err(invalid(
                    &p,
                    "more than one http_connection_manager in a chain",
                ));
            }
            http = Some(read_hcm(w, tc)?);
            f.finish(w);
        } else if is_hcm_name {
            return Err(invalid(
                &tc.child("@type"),
                format!("expected type.googleapis.com/{HCM_TYPE}, got {ty}"),
            ));
        } else {
            w.warn(
                &p,
                format!(
                    "network filter {name:?} ({ty}) is not implemented by portcullis-host (filter skipped)"
                ),
            );
        }
    }
    let tls = match tls::transport_socket(w, &mut o, true)? {
        Socket::Plain => None,
        Socket::Tls(ctx) => Some(tls::read_downstream(w, ctx)?),
    };
    let Some(http) = http else {
        w.warn(
            path,
            "filter chain without an http_connection_manager is not implemented by portcullis-host (chain skipped)",
        );
        return Ok(None);
    };
    o.finish(w);
    Ok(Some(FilterChain { tls, http }))
}

fn read_hcm(w: &mut Walker, mut o: Obj<'_>) -> Result<HttpConnectionManager, BootstrapError> {
    let stat_prefix = o.req_str("stat_prefix")?;
    let codec_type = match o
        .enum_name("codec_type", &["AUTO", "HTTP1", "HTTP2", "HTTP3"])?
        .as_deref()
    {
        Some("HTTP1") => CodecType::Http1,
        Some("HTTP2") => CodecType::Http2,
        Some("HTTP3") => {
            w.warn(
                &o.child("codec_type"),
                "HTTP3 is not implemented by portcullis-host (AUTO used)",
            );
            CodecType::Auto
        }
        _ => CodecType::Auto,
    };
    let route_path = o.child("route_config");
    let route_config = match o.obj("route_config")? {
        Some(rc) => route::read_route_config(w, rc)?,
        None => {
            return Err(invalid(
                &route_path,
                "required (rds / scoped_routes are not implemented by portcullis-host)",
            ));
        }
    };
    let mut http_filters = Vec::new();
    let filters_path = o.child("http_filters");
    for (p, v) in o.list("http_filters")? {
        if let Some(f) = read_http_filter(w, &p, v)? {
            http_filters.push(f);
        }
    }
    match http_filters.iter().position(|f| *f == HttpFilter::Router) {
        Some(i) if i + 1 == http_filters.len() => {}
        Some(_) => {
            return Err(invalid(
                &filters_path,
                "envoy.filters.http.router must be the last HTTP filter",
            ));
        }
        None => {
            return Err(invalid(
                &filters_path,
                "the last HTTP filter must be envoy.filters.http.router",
            ));
        }
    }
    let use_remote_address = o.bool("use_remote_address")?.unwrap_or(false);
    let xff_num_trusted_hops = o.u32("xff_num_trusted_hops")?.unwrap_or(0);
    let generate_request_id = o.bool("generate_request_id")?.unwrap_or(true);
    let strip_any_host_port = o.bool("strip_any_host_port")?.unwrap_or(false);
    let strip_matching_host_port = o.bool("strip_matching_host_port")?.unwrap_or(false);
    o.finish(w);
    Ok(HttpConnectionManager {
        stat_prefix,
        codec_type,
        route_config,
        http_filters,
        use_remote_address,
        xff_num_trusted_hops,
        generate_request_id,
        strip_any_host_port,
        strip_matching_host_port,
    })
}

fn read_http_filter(
    w: &mut Walker,
    path: &str,
    v: &Value,
) -> Result<Option<HttpFilter>, BootstrapError> {
    let mut f = Obj::new(path, v)?;
    let name = f.req_str("name")?;
    if f.bool("disabled")? == Some(true) {
        w.warn(
            &f.child("disabled"),
            "disabled filters are not implemented by portcullis-host (filter skipped)",
        );
        f.consume("typed_config");
        f.finish(w);
        return Ok(None);
    }
    f.consume("is_optional");
    let Some(mut tc) = f.obj("typed_config")? else {
        if ROUTER_NAMES.contains(&name.as_str()) {
            f.finish(w);
            return Ok(Some(HttpFilter::Router));
        }
        if WASM_NAMES.contains(&name.as_str()) {
            return Err(invalid(
                &f.child("typed_config"),
                "required field is missing",
            ));
        }
        w.warn(
            path,
            format!("HTTP filter {name:?} is not implemented by portcullis-host (filter skipped)"),
        );
        return Ok(None);
    };
    let ty = tc.any_type()?;
    let filter = if ty == ROUTER_TYPE {
        tc.finish(w);
        HttpFilter::Router
    } else if ty == WASM_TYPE {
        let config_path = tc.child("config");
        let config = tc
            .obj("config")?
            .ok_or_else(|| invalid(&config_path, "required field is missing"))?;
        let plugin = read_plugin(w, name, config)?;
        tc.finish(w);
        HttpFilter::Wasm(Box::new(plugin))
    } else {
        let expected = if ROUTER_NAMES.contains(&name.as_str()) {
            Some(ROUTER_TYPE)
        } else if WASM_NAMES.contains(&name.as_str()) {
            Some(WASM_TYPE)
        } else {
            None
        };
        if let Some(expected) = expected {
            return Err(invalid(
                &tc.child("@type"),
                format!("expected type.googleapis.com/{expected}, got {ty}"),
            ));
        }
        w.warn(
            path,
            format!(
                "HTTP filter {name:?} ({ty}) is not implemented by portcullis-host (filter skipped)"
            ),
        );
        return Ok(None);
    };
    f.finish(w);
    Ok(Some(filter))
}

/// `StringValue`/`BytesValue` Any → bytes; other types are warned and give no bytes.
fn any_bytes(w: &mut Walker, path: &str, v: &Value) -> Result<Vec<u8>, BootstrapError> {
    let mut o = Obj::new(path, v)?;
    let ty = o.any_type()?;
    let bytes = if ty == STRING_VALUE {
        o.str("value")?.unwrap_or_default().into_bytes()
    } else if ty == BYTES_VALUE {
        match o.get("value") {
            Some((p, v)) => base64_decode(&as_str(&p, v)?)
                .ok_or_else(|| invalid(&p, "expected base64 bytes"))?,
            None => Vec::new(),
        }
    } else {
        w.warn(
            path,
            format!(
                "configuration of type {ty} is not implemented by portcullis-host (only \
                 google.protobuf.StringValue and BytesValue; empty configuration used)"
            ),
        );
        return Ok(Vec::new());
    };
    o.finish(w);
    Ok(bytes)
}

fn read_plugin(
    w: &mut Walker,
    filter_name: String,
    mut o: Obj<'_>,
) -> Result<WasmPlugin, BootstrapError> {
    let name = o.str("name")?.unwrap_or_default();
    let root_id = o.str("root_id")?.unwrap_or_default();
    let vm_path = o.child("vm_config");
    let vm = o.obj("vm_config")?.ok_or_else(|| {
        invalid(
            &vm_path,
            "required (vm_config is the only VM source implemented)",
        )
    })?;
    let vm_config = read_vm_config(w, vm)?;
    let configuration = match o.get("configuration") {
        Some((p, v)) => any_bytes(w, &p, v)?,
        None => Vec::new(),
    };
    let fail_open = o.bool("fail_open")?.unwrap_or(false);
    let policy = o.enum_name(
        "failure_policy",
        &["UNSPECIFIED", "FAIL_CLOSED", "FAIL_OPEN", "FAIL_RELOAD"],
    )?;
    let failure_policy = match policy.as_deref() {
        Some("FAIL_OPEN") => FailurePolicy::FailOpen,
        Some("FAIL_CLOSED") => FailurePolicy::FailClosed,
        Some("FAIL_RELOAD") => {
            w.warn(
                &o.child("failure_policy"),
                "FAIL_RELOAD is not implemented by portcullis-host (FAIL_CLOSED used)",
            );
            FailurePolicy::FailClosed
        }
        _ if fail_open => FailurePolicy::FailOpen,
        _ => FailurePolicy::FailClosed,
    };
    o.finish(w);
    Ok(WasmPlugin {
        filter_name,
        name,
        root_id,
        vm_config,
        configuration,
        failure_policy,
    })
}

fn read_vm_config(w: &mut Walker, mut o: Obj<'_>) -> Result<VmConfig, BootstrapError> {
    let vm_id = o.str("vm_id")?.unwrap_or_default();
    let runtime = o.str("runtime")?.unwrap_or_default();
    if runtime == "envoy.wasm.runtime.null" {
        return Err(invalid(
            &o.child("runtime"),
            "the null runtime (plugins compiled into Envoy) cannot run in portcullis-host",
        ));
    }
    let mut code = o.req_obj("code")?;
    let local_path = code.child("local");
    let Some(mut local) = code.obj("local")? else {
        return Err(invalid(
            &local_path,
            "required (remote code is not implemented by portcullis-host)",
        ));
    };
    let source = super::walk::read_data_source(w, &mut local)?;
    local.finish(w);
    code.finish(w);
    let configuration = match o.get("configuration") {
        Some((p, v)) => any_bytes(w, &p, v)?,
        None => Vec::new(),
    };
    let mut env_key_values = Vec::new();
    let mut env_host_keys = Vec::new();
    if let Some(mut env) = o.obj("environment_variables")? {
        env_host_keys = env.str_list("host_env_keys")?;
        if let Some(mut kv) = env.obj("key_values")? {
            let keys: Vec<String> = kv_keys(&kv);
            for k in keys {
                let v = kv.req_str(&k)?;
                env_key_values.push((k, v));
            }
            env_key_values.sort();
            kv.finish(w);
        }
        env.finish(w);
    }
    o.finish(w);
    Ok(VmConfig {
        vm_id,
        runtime,
        code: source,
        configuration,
        env_key_values,
        env_host_keys,
    })
}

/// The keys of a map field (protobuf `map<string,string>`), which are data, not field names.
fn kv_keys(o: &Obj<'_>) -> Vec<String> {
    o.keys()
}
