//! `envoy.transport_sockets.tls`: the parts of `DownstreamTlsContext` / `UpstreamTlsContext`
//! the host feeds to rustls.

use super::walk::{Obj, Walker, invalid};
use super::{BootstrapError, DataSource};

const TLS_SOCKET_NAMES: [&str; 2] = ["envoy.transport_sockets.tls", "tls"];
const RAW_SOCKET_NAMES: [&str; 2] = ["envoy.transport_sockets.raw_buffer", "raw_buffer"];
const DOWNSTREAM_TYPE: &str = "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
const UPSTREAM_TYPE: &str = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
const RAW_TYPE: &str = "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";

/// `tls_params.tls_{minimum,maximum}_protocol_version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsVersion {
    /// `TLS_AUTO`: Envoy's default for the side (downstream 1.2–1.3; upstream 1.2–1.2 in older
    /// Envoy, 1.2–1.3 in newer).
    #[default]
    Auto,
    /// `TLSv1_0` (rustls cannot: warned, the server uses 1.2).
    V1_0,
    /// `TLSv1_1` (rustls cannot: warned, the server uses 1.2).
    V1_1,
    /// `TLSv1_2`.
    V1_2,
    /// `TLSv1_3`.
    V1_3,
}

/// `common_tls_context.tls_params` (cipher suites, curves and signature algorithms are warned).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TlsParams {
    /// Lowest version offered/accepted.
    pub min: TlsVersion,
    /// Highest version offered/accepted.
    pub max: TlsVersion,
}

/// One `common_tls_context.tls_certificates[]` entry (PEM chain and key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsCertificate {
    /// `certificate_chain`.
    pub certificate_chain: DataSource,
    /// `private_key`.
    pub private_key: DataSource,
}

/// A listener filter chain's `DownstreamTlsContext`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownstreamTls {
    /// Server certificates (at least one; Envoy picks by SNI/key type, the host by order).
    pub certificates: Vec<TlsCertificate>,
    /// Protocol version bounds.
    pub params: TlsParams,
    /// ALPN offered to clients (`h2`, `http/1.1`); empty means no ALPN, as Envoy.
    pub alpn_protocols: Vec<String>,
    /// Whether clients must present a certificate signed by `trusted_ca` (mutual TLS).
    pub require_client_certificate: bool,
    /// `validation_context.trusted_ca`: the CA bundle client certificates are checked against.
    pub trusted_ca: Option<DataSource>,
}

/// A cluster's `UpstreamTlsContext`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// Server name sent in the handshake; `None` means no SNI, as Envoy (unless
    /// `auto_sni`, which is warned).
    pub sni: Option<String>,
    /// `validation_context.trusted_ca`. `None` means Envoy does **not** verify the server
    /// certificate at all; the host must do the same to behave alike.
    pub trusted_ca: Option<DataSource>,
    /// Client certificate for mutual TLS (first `tls_certificates` entry).
    pub client_certificate: Option<TlsCertificate>,
    /// Protocol version bounds.
    pub params: TlsParams,
    /// ALPN offered to the upstream.
    pub alpn_protocols: Vec<String>,
}

/// What a `transport_socket` turned out to be.
pub(crate) enum Socket<'a> {
    /// Plaintext (absent, raw_buffer, or an unknown socket that was warned).
    Plain,
    /// The TLS context object (already type-checked), to be read by the caller.
    Tls(Obj<'a>),
}

/// Reads `transport_socket` from `o`; `downstream` selects the expected context type.
pub(crate) fn transport_socket<'a>(
    w: &mut Walker,
    o: &mut Obj<'a>,
    downstream: bool,
) -> Result<Socket<'a>, BootstrapError> {
    let Some(mut ts) = o.obj("transport_socket")? else {
        return Ok(Socket::Plain);
    };
    let name = ts.str("name")?.unwrap_or_default();
    let expected = if downstream {
        DOWNSTREAM_TYPE
    } else {
        UPSTREAM_TYPE
    };
    let Some(mut tc) = ts.obj("typed_config")? else {
        if RAW_SOCKET_NAMES.contains(&name.as_str()) {
            ts.finish(w);
            return Ok(Socket::Plain);
        }
        return Err(invalid(
            &ts.child("typed_config"),
            "required field is missing",
        ));
    };
    let ty = tc.any_type()?;
    if ty == expected {
        ts.finish(w);
        return Ok(Socket::Tls(tc));
    }
    if TLS_SOCKET_NAMES.contains(&name.as_str()) {
        return Err(invalid(
            &tc.child("@type"),
            format!("expected type.googleapis.com/{expected}, got {ty}"),
        ));
    }
    if ty == RAW_TYPE {
        tc.finish(w);
        ts.finish(w);
        return Ok(Socket::Plain);
    }
    w.warn(
        &ts.path,
        format!(
            "transport socket {name:?} ({ty}) is not implemented by portcullis-host (plaintext used)"
        ),
    );
    Ok(Socket::Plain)
}

struct Common {
    certificates: Vec<TlsCertificate>,
    params: TlsParams,
    alpn_protocols: Vec<String>,
    trusted_ca: Option<DataSource>,
}

fn read_common(w: &mut Walker, ctx: &mut Obj<'_>) -> Result<Common, BootstrapError> {
    let Some(mut c) = ctx.obj("common_tls_context")? else {
        return Ok(Common {
            certificates: Vec::new(),
            params: TlsParams::default(),
            alpn_protocols: Vec::new(),
            trusted_ca: None,
        });
    };
    let mut certificates = Vec::new();
    for (p, v) in c.list("tls_certificates")? {
        let mut tc = Obj::new(&p, v)?;
        let chain_path = tc.child("certificate_chain");
        let key_path = tc.child("private_key");
        let certificate_chain = tc
            .data_source(w, "certificate_chain")?
            .ok_or_else(|| invalid(&chain_path, "required field is missing"))?;
        let private_key = tc
            .data_source(w, "private_key")?
            .ok_or_else(|| invalid(&key_path, "required field is missing"))?;
        tc.finish(w);
        certificates.push(TlsCertificate {
            certificate_chain,
            private_key,
        });
    }
    let mut params = TlsParams::default();
    if let Some(mut tp) = c.obj("tls_params")? {
        let names = ["TLS_AUTO", "TLSv1_0", "TLSv1_1", "TLSv1_2", "TLSv1_3"];
        for (key, slot) in [
            ("tls_minimum_protocol_version", &mut params.min),
            ("tls_maximum_protocol_version", &mut params.max),
        ] {
            let Some(v) = tp.enum_name(key, &names)? else {
                continue;
            };
            *slot = match v.as_str() {
                "TLSv1_0" => TlsVersion::V1_0,
                "TLSv1_1" => TlsVersion::V1_1,
                "TLSv1_2" => TlsVersion::V1_2,
                "TLSv1_3" => TlsVersion::V1_3,
                _ => TlsVersion::Auto,
            };
            if matches!(*slot, TlsVersion::V1_0 | TlsVersion::V1_1) {
                w.warn(
                    &tp.child(key),
                    "rustls implements TLS 1.2 and 1.3 only (TLS 1.2 used)",
                );
            }
        }
        tp.finish(w);
    }
    let alpn_protocols = c.str_list("alpn_protocols")?;
    let mut trusted_ca = None;
    if let Some(mut vc) = c.obj("validation_context")? {
        trusted_ca = vc.data_source(w, "trusted_ca")?;
        vc.finish(w);
    }
    c.finish(w);
    Ok(Common {
        certificates,
        params,
        alpn_protocols,
        trusted_ca,
    })
}

/// Reads a type-checked `DownstreamTlsContext`.
pub(crate) fn read_downstream(
    w: &mut Walker,
    mut ctx: Obj<'_>,
) -> Result<DownstreamTls, BootstrapError> {
    let common = read_common(w, &mut ctx)?;
    if common.certificates.is_empty() {
        return Err(invalid(
            &ctx.child("common_tls_context.tls_certificates"),
            "a downstream TLS context needs at least one certificate",
        ));
    }
    let require_client_certificate = ctx.bool("require_client_certificate")?.unwrap_or(false);
    if require_client_certificate && common.trusted_ca.is_none() {
        return Err(invalid(
            &ctx.child("require_client_certificate"),
            "requires common_tls_context.validation_context.trusted_ca",
        ));
    }
    ctx.finish(w);
    Ok(DownstreamTls {
        certificates: common.certificates,
        params: common.params,
        alpn_protocols: common.alpn_protocols,
        require_client_certificate,
        trusted_ca: common.trusted_ca,
    })
}

/// Reads a type-checked `UpstreamTlsContext`.
pub(crate) fn read_upstream(
    w: &mut Walker,
    mut ctx: Obj<'_>,
) -> Result<UpstreamTls, BootstrapError> {
    let common = read_common(w, &mut ctx)?;
    let sni = ctx.str("sni")?.filter(|s| !s.is_empty());
    let mut certs = common.certificates.into_iter();
    let client_certificate = certs.next();
    if certs.next().is_some() {
        w.warn(
            &ctx.child("common_tls_context.tls_certificates"),
            "only the first client certificate is used by portcullis-host",
        );
    }
    ctx.finish(w);
    Ok(UpstreamTls {
        sni,
        trusted_ca: common.trusted_ca,
        client_certificate,
        params: common.params,
        alpn_protocols: common.alpn_protocols,
    })
}
