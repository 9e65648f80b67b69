//! The subset of Envoy's v3 bootstrap YAML that the host runs.
//!
//! The YAML is parsed to a generic tree and read by a walker that type-checks every field the
//! host implements (errors name the field's path, e.g.
//! `static_resources.listeners[0].address.socket_address.port_value: expected an integer`) and
//! lists every other field once in [`Bootstrap::warnings`] (e.g.
//! `static_resources.clusters[1].outlier_detection: not implemented by portcullis-host
//! (ignored)`): an Envoy config is never silently half-understood, and never refused only
//! because it uses something the test host does not do.
//!
//! Field names are accepted in both forms protobuf JSON accepts (`port_value` and `portValue`);
//! filters and transport sockets are recognised by their `typed_config` `@type`, as Envoy does,
//! with the canonical and legacy extension names (`envoy.filters.http.router`, `envoy.router`)
//! accepted when `typed_config` is absent. Relative file names resolve against `base_dir` (the
//! YAML file's directory for [`load`]); Envoy itself resolves them against its working directory.

mod cluster;
mod listener;
mod route;
mod tls;
mod walk;

use std::path::{Path, PathBuf};

use thiserror::Error;

pub use cluster::{Cluster, DiscoveryType, LbPolicy};
pub use listener::{
    CodecType, FailurePolicy, FilterChain, HttpConnectionManager, HttpFilter, Listener, VmConfig,
    WasmPlugin,
};
pub use route::{
    DirectResponse, HeaderMatch, HeaderMatcher, PathMatch, Redirect, Route, RouteAction,
    RouteConfig, RouteMatch, StringMatcher, VirtualHost,
};
pub use tls::{DownstreamTls, TlsCertificate, TlsParams, TlsVersion, UpstreamTls};

use crate::stats::TagSpecifier;
use walk::{Obj, Walker, invalid};

/// Envoy's default `per_connection_buffer_limit_bytes` (1 MiB) for listeners and clusters.
pub const DEFAULT_BUFFER_LIMIT: u32 = 1024 * 1024;

/// A parsed bootstrap: what the host runs, plus what it ignored.
#[derive(Debug, Clone, PartialEq)]
pub struct Bootstrap {
    /// `static_resources.listeners`, in order.
    pub listeners: Vec<Listener>,
    /// `static_resources.clusters`, in order (names are unique).
    pub clusters: Vec<Cluster>,
    /// `admin.address`; `None` when the bootstrap has no admin section (no admin server).
    pub admin: Option<SocketAddress>,
    /// `stats_config.stats_tags` without `fixed_value` entries, in order (regexes validated).
    pub stats_tags: Vec<TagSpecifier>,
    /// `stats_config.use_all_default_tags` (Envoy's default tag extractors; true when unset).
    pub use_all_default_tags: bool,
    /// One line per field the host does not implement (`path: reason`), in document order.
    pub warnings: Vec<String>,
}

impl Bootstrap {
    /// The cluster of that name (routes and wasm callouts refer to clusters by name).
    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }
}

/// `config.core.v3.SocketAddress` (TCP only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketAddress {
    /// IP address (listeners, STATIC clusters, admin) or host name (DNS clusters).
    pub address: String,
    /// `port_value`.
    pub port: u16,
}

/// `config.core.v3.DataSource`: where bytes come from (files are read when used, so a
/// bootstrap can be checked without its certificates present).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSource {
    /// `filename`, resolved against the base directory.
    File(PathBuf),
    /// `inline_string`, `inline_bytes` (base64-decoded) or `environment_variable` (read now).
    Inline(Vec<u8>),
}

impl DataSource {
    /// The bytes (reads the file).
    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        match self {
            DataSource::File(p) => std::fs::read(p),
            DataSource::Inline(b) => Ok(b.clone()),
        }
    }
}

/// Why a bootstrap was refused.
#[derive(Debug, Error)]
pub enum BootstrapError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Not YAML.
    #[error("invalid YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
    /// A field the host implements has a wrong type or value, or a required field is missing.
    #[error("{path}: {message}")]
    Invalid {
        /// Where, e.g. `static_resources.listeners[0].address.socket_address.port_value`.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Reads and parses a bootstrap file; relative file names in it resolve against its directory.
pub fn load(path: impl AsRef<Path>) -> Result<Bootstrap, BootstrapError> {
    let path = path.as_ref();
    let yaml = std::fs::read_to_string(path).map_err(|source| BootstrapError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    parse(&yaml, base)
}

/// Parses bootstrap YAML; relative file names resolve against `base_dir`.
pub fn parse(yaml: &str, base_dir: impl AsRef<Path>) -> Result<Bootstrap, BootstrapError> {
    let mut value: serde_yaml::Value = serde_yaml::from_str(yaml)?;
    value.apply_merge()?;
    let mut w = Walker {
        warnings: Vec::new(),
        base_dir: base_dir.as_ref().to_path_buf(),
        cluster_names: cluster_names(&value),
    };
    let mut root = Obj::new("", &value)?;
    let mut listeners = Vec::new();
    let mut clusters: Vec<Cluster> = Vec::new();
    if let Some(mut sr) = root.obj("static_resources")? {
        for (p, v) in sr.list("listeners")? {
            listeners.push(listener::read_listener(&mut w, &p, v)?);
        }
        for (p, v) in sr.list("clusters")? {
            let c = cluster::read_cluster(&mut w, &p, v)?;
            if clusters.iter().any(|o| o.name == c.name) {
                return Err(invalid(
                    &format!("{p}.name"),
                    format!("duplicate cluster name {:?}", c.name),
                ));
            }
            clusters.push(c);
        }
        sr.finish(&mut w);
    }
    let mut names = std::collections::HashSet::new();
    for (i, l) in listeners.iter().enumerate() {
        if !l.name.is_empty() && !names.insert(l.name.clone()) {
            return Err(invalid(
                &format!("static_resources.listeners[{i}].name"),
                format!("duplicate listener name {:?}", l.name),
            ));
        }
    }
    let admin = match root.obj("admin")? {
        Some(mut a) => {
            let addr = match a.obj("address")? {
                Some(o) => Some(read_address(&mut w, o)?),
                None => None,
            };
            a.finish(&mut w);
            addr
        }
        None => None,
    };
    let mut stats_tags = Vec::new();
    let mut use_all_default_tags = true;
    if let Some(mut sc) = root.obj("stats_config")? {
        for (p, v) in sc.list("stats_tags")? {
            let mut t = Obj::new(&p, v)?;
            let tag_name = t.req_str("tag_name")?;
            if tag_name.is_empty() {
                return Err(invalid(&t.child("tag_name"), "must not be empty"));
            }
            if t.skip(
                &mut w,
                "fixed_value",
                "fixed_value tags are not implemented by portcullis-host (tag ignored)",
            ) {
                t.consume("regex");
                t.finish(&mut w);
                continue;
            }
            let regex = t.req_str("regex")?;
            if let Err(e) = regex::Regex::new(&regex) {
                return Err(invalid(&t.child("regex"), format!("invalid regex: {e}")));
            }
            t.finish(&mut w);
            stats_tags.push(TagSpecifier { tag_name, regex });
        }
        if let Some(all) = sc.bool("use_all_default_tags")? {
            use_all_default_tags = all;
        }
        sc.finish(&mut w);
    }
    root.finish(&mut w);
    Ok(Bootstrap {
        listeners,
        clusters,
        admin,
        stats_tags,
        use_all_default_tags,
        warnings: w.warnings,
    })
}

/// Cluster names as written (best effort: the real pass type-checks them).
fn cluster_names(root: &serde_yaml::Value) -> Vec<String> {
    root.get("static_resources")
        .and_then(|sr| sr.get("clusters"))
        .and_then(serde_yaml::Value::as_sequence)
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c.get("name").and_then(serde_yaml::Value::as_str))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// `config.core.v3.Address` holding a TCP `socket_address`.
fn read_address(w: &mut Walker, mut o: Obj<'_>) -> Result<SocketAddress, BootstrapError> {
    let mut sa = o.req_obj("socket_address")?;
    let address = sa.req_str("address")?;
    let port_path = sa.child("port_value");
    let port = sa
        .u32("port_value")?
        .ok_or_else(|| invalid(&port_path, "required field is missing"))?;
    let port = u16::try_from(port).map_err(|_| invalid(&port_path, "must be at most 65535"))?;
    if sa.enum_name("protocol", &["TCP", "UDP"])?.as_deref() == Some("UDP") {
        return Err(invalid(&sa.child("protocol"), "only TCP is implemented"));
    }
    sa.finish(w);
    o.finish(w);
    Ok(SocketAddress { address, port })
}
