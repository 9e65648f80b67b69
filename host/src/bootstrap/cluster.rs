//! Clusters: discovery type, load balancing, endpoints, HTTP/2 and upstream TLS.

use std::time::Duration;

use serde_yaml::Value;

use super::tls::{self, Socket, UpstreamTls};
use super::walk::{Obj, Walker, invalid};
use super::{BootstrapError, DEFAULT_BUFFER_LIMIT, SocketAddress, read_address};

/// Envoy's default `connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const HTTP_OPTIONS_KEY: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// One `static_resources.clusters[]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    /// `name`: what routes and wasm callouts refer to.
    pub name: String,
    /// `type`.
    pub discovery: DiscoveryType,
    /// `lb_policy`.
    pub lb_policy: LbPolicy,
    /// `connect_timeout` (default 5 s).
    pub connect_timeout: Duration,
    /// `load_assignment` endpoints, flattened in order (localities and priorities are warned).
    pub endpoints: Vec<SocketAddress>,
    /// HTTP/2 to the upstream (legacy `http2_protocol_options`, or
    /// `typed_extension_protocol_options` `HttpProtocolOptions.explicit_http_config`); needed
    /// for gRPC.
    pub http2: bool,
    /// `transport_socket` `envoy.transport_sockets.tls` (`None`: plaintext).
    pub tls: Option<UpstreamTls>,
    /// `per_connection_buffer_limit_bytes` (default 1 MiB).
    pub per_connection_buffer_limit_bytes: u32,
}

/// `type`: how endpoint addresses become IPs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscoveryType {
    /// `STATIC` (the default): addresses are IPs.
    Static,
    /// `STRICT_DNS`: every endpoint resolved, all resulting IPs used.
    StrictDns,
    /// `LOGICAL_DNS`: one endpoint, the first resolved IP used per new connection.
    LogicalDns,
}

/// `lb_policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    /// `ROUND_ROBIN` (the default; also what other policies fall back to, with a warning).
    RoundRobin,
    /// `LEAST_REQUEST`.
    LeastRequest,
}

/// Reads one cluster.
pub(crate) fn read_cluster(
    w: &mut Walker,
    path: &str,
    v: &Value,
) -> Result<Cluster, BootstrapError> {
    let mut o = Obj::new(path, v)?;
    let name = o.req_str("name")?;
    if name.is_empty() {
        return Err(invalid(&o.child("name"), "must not be empty"));
    }
    if o.has("cluster_type") {
        return Err(invalid(
            &o.child("cluster_type"),
            "custom cluster types are not implemented by portcullis-host",
        ));
    }
    let discovery = match o
        .enum_name(
            "type",
            &["STATIC", "STRICT_DNS", "LOGICAL_DNS", "EDS", "ORIGINAL_DST"],
        )?
        .as_deref()
    {
        None | Some("STATIC") => DiscoveryType::Static,
        Some("STRICT_DNS") => DiscoveryType::StrictDns,
        Some("LOGICAL_DNS") => DiscoveryType::LogicalDns,
        Some(other) => {
            return Err(invalid(
                &o.child("type"),
                format!(
                    "{other} is not implemented by portcullis-host (STATIC, STRICT_DNS, LOGICAL_DNS)"
                ),
            ));
        }
    };
    let lb_policy = match o
        .enum_name(
            "lb_policy",
            &[
                "ROUND_ROBIN",
                "LEAST_REQUEST",
                "RING_HASH",
                "RANDOM",
                "ORIGINAL_DST_LB",
                "MAGLEV",
                "CLUSTER_PROVIDED",
                "LOAD_BALANCING_POLICY_CONFIG",
            ],
        )?
        .as_deref()
    {
        None | Some("ROUND_ROBIN") => LbPolicy::RoundRobin,
        Some("LEAST_REQUEST") => LbPolicy::LeastRequest,
        Some(other) => {
            w.warn(
                &o.child("lb_policy"),
                format!("{other} is not implemented by portcullis-host (ROUND_ROBIN used)"),
            );
            LbPolicy::RoundRobin
        }
    };
    let connect_timeout = o
        .duration("connect_timeout")?
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let per_connection_buffer_limit_bytes = o
        .u32("per_connection_buffer_limit_bytes")?
        .unwrap_or(DEFAULT_BUFFER_LIMIT);

    let mut endpoints = Vec::new();
    if let Some(mut la) = o.obj("load_assignment")? {
        la.consume("cluster_name");
        for (lp, lv) in la.list("endpoints")? {
            let mut loc = Obj::new(&lp, lv)?;
            for (ep, ev) in loc.list("lb_endpoints")? {
                let mut lbe = Obj::new(&ep, ev)?;
                let mut e = lbe.req_obj("endpoint")?;
                let addr_path = e.child("address");
                let addr = read_address(w, e.req_obj("address")?)?;
                if discovery == DiscoveryType::Static
                    && addr.address.parse::<std::net::IpAddr>().is_err()
                {
                    return Err(invalid(
                        &format!("{addr_path}.socket_address.address"),
                        "a STATIC cluster needs an IP address (use STRICT_DNS for host names)",
                    ));
                }
                endpoints.push(addr);
                e.finish(w);
                lbe.finish(w);
            }
            loc.finish(w);
        }
        la.finish(w);
    }
    if endpoints.is_empty() {
        return Err(invalid(
            &o.child("load_assignment"),
            "at least one endpoint is required",
        ));
    }
    if discovery == DiscoveryType::LogicalDns && endpoints.len() != 1 {
        return Err(invalid(
            &o.child("load_assignment"),
            "a LOGICAL_DNS cluster must have exactly one endpoint",
        ));
    }

    let mut http2 = false;
    if let Some(h2) = o.obj("http2_protocol_options")? {
        http2 = true;
        // Its settings (window sizes, stream limits) are warned individually.
        h2.finish(w);
    }
    if let Some(mut teo) = o.obj("typed_extension_protocol_options")? {
        for key in teo.keys() {
            let Some((p, v)) = teo.get(&key) else {
                continue;
            };
            if key != HTTP_OPTIONS_KEY {
                w.unimplemented(&p);
                continue;
            }
            let mut hpo = Obj::new(&p, v)?;
            let ty = hpo.any_type()?;
            if ty != HTTP_OPTIONS_KEY {
                return Err(invalid(
                    &hpo.child("@type"),
                    format!("expected type.googleapis.com/{HTTP_OPTIONS_KEY}, got {ty}"),
                ));
            }
            if let Some(mut ex) = hpo.obj("explicit_http_config")? {
                if let Some(h2) = ex.obj("http2_protocol_options")? {
                    http2 = true;
                    h2.finish(w);
                } else if let Some(h1) = ex.obj("http_protocol_options")? {
                    http2 = false;
                    h1.finish(w);
                } else {
                    ex.skip(
                        w,
                        "http3_protocol_options",
                        "HTTP/3 is not implemented by portcullis-host (HTTP/1.1 used)",
                    );
                }
                ex.finish(w);
            }
            hpo.skip(
                w,
                "use_downstream_protocol_config",
                "not implemented by portcullis-host (HTTP/1.1 used)",
            );
            hpo.skip(
                w,
                "auto_config",
                "not implemented by portcullis-host (HTTP/1.1 used)",
            );
            hpo.finish(w);
        }
        teo.finish(w);
    }

    let tls = match tls::transport_socket(w, &mut o, false)? {
        Socket::Plain => None,
        Socket::Tls(ctx) => Some(tls::read_upstream(w, ctx)?),
    };
    o.finish(w);
    Ok(Cluster {
        name,
        discovery,
        lb_policy,
        connect_timeout,
        endpoints,
        http2,
        tls,
        per_connection_buffer_limit_bytes,
    })
}
