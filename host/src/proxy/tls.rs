//! rustls configurations from the bootstrap's TLS contexts (Envoy `DownstreamTlsContext` /
//! `UpstreamTlsContext`, source/common/tls/{server,client}_context_impl.cc).
//!
//! Envoy semantics kept: without `validation_context.trusted_ca` an upstream certificate is not
//! verified at all; with it, the chain is verified but the host name is not (Envoy checks names
//! only with `match_typed_subject_alt_names`, which the host does not implement); no `sni` means
//! no SNI extension.

use crate::bootstrap::{DataSource, DownstreamTls, TlsParams, TlsVersion, UpstreamTls};
use anyhow::{Context as _, anyhow};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error as TlsError, RootCertStore,
    ServerConfig, SignatureScheme, SupportedProtocolVersion,
};
use std::sync::Arc;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(source: &DataSource) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = source
        .read()
        .with_context(|| format!("reading {source:?}"))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificates of {source:?}"))?;
    if certs.is_empty() {
        return Err(anyhow!("no PEM certificate in {source:?}"));
    }
    Ok(certs)
}

fn key(source: &DataSource) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = source
        .read()
        .with_context(|| format!("reading {source:?}"))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .with_context(|| format!("parsing the private key of {source:?}"))?
        .ok_or_else(|| anyhow!("no PEM private key in {source:?}"))
}

fn roots(source: &DataSource) -> anyhow::Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    for cert in certs(source)? {
        store
            .add(cert)
            .with_context(|| format!("adding a trusted CA of {source:?}"))?;
    }
    Ok(store)
}

/// Envoy's `TLS_AUTO` is 1.2–1.3 on both sides in current releases; rustls has no 1.0/1.1
/// (warned by the bootstrap reader).
fn versions(params: &TlsParams) -> Vec<&'static SupportedProtocolVersion> {
    let rank = |v: TlsVersion, auto: u8| match v {
        TlsVersion::Auto => auto,
        TlsVersion::V1_0 | TlsVersion::V1_1 | TlsVersion::V1_2 => 2,
        TlsVersion::V1_3 => 3,
    };
    let (min, max) = (rank(params.min, 2), rank(params.max, 3));
    let mut out = Vec::new();
    if min <= 2 && max >= 2 {
        out.push(&rustls::version::TLS12);
    }
    if max >= 3 {
        out.push(&rustls::version::TLS13);
    }
    if out.is_empty() {
        out.push(&rustls::version::TLS13);
    }
    out
}

/// A listener's server configuration (first certificate; ALPN as configured, none if empty).
pub fn server_config(tls: &DownstreamTls) -> anyhow::Result<Arc<ServerConfig>> {
    let cert = tls
        .certificates
        .first()
        .ok_or_else(|| anyhow!("DownstreamTlsContext without tls_certificates"))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&versions(&tls.params))?;
    let builder = match &tls.trusted_ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider());
            let verifier = if tls.require_client_certificate {
                verifier.build()?
            } else {
                verifier.allow_unauthenticated().build()?
            };
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config =
        builder.with_single_cert(certs(&cert.certificate_chain)?, key(&cert.private_key)?)?;
    config.alpn_protocols = tls
        .alpn_protocols
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
    Ok(Arc::new(config))
}

/// A cluster's client configuration; `http2` offers `h2` by ALPN (Envoy does for HTTP/2
/// clusters) unless `alpn_protocols` is set.
pub fn client_config(tls: &UpstreamTls, http2: bool) -> anyhow::Result<Arc<ClientConfig>> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&versions(&tls.params))?;
    let verifier: Arc<dyn ServerCertVerifier> = match &tls.trusted_ca {
        Some(ca) => Arc::new(ChainOnly(
            rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots(ca)?),
                provider(),
            )
            .build()?,
        )),
        None => Arc::new(NoVerification(provider())),
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match &tls.client_certificate {
        Some(c) => {
            builder.with_client_auth_cert(certs(&c.certificate_chain)?, key(&c.private_key)?)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = if !tls.alpn_protocols.is_empty() {
        tls.alpn_protocols
            .iter()
            .map(|p| p.as_bytes().to_vec())
            .collect()
    } else if http2 {
        vec![b"h2".to_vec()]
    } else {
        Vec::new()
    };
    config.enable_sni = tls.sni.is_some();
    Ok(Arc::new(config))
}

/// The name rustls is given: the configured SNI, else the endpoint IP (rustls sends no SNI for
/// an IP, and `enable_sni` is off anyway without `sni`).
pub fn server_name(tls: &UpstreamTls, ip: std::net::IpAddr) -> anyhow::Result<ServerName<'static>> {
    match &tls.sni {
        Some(sni) => Ok(ServerName::try_from(sni.clone())?),
        None => Ok(ServerName::IpAddress(ip.into())),
    }
}

/// Verifies the chain against the trusted CA, ignoring the name (Envoy without SAN matchers).
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(TlsError::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// No `trusted_ca`: Envoy accepts any server certificate (handshake signatures still checked).
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A server config from PEM files (the echo service's `--tls-cert/--tls-key`).
pub fn server_config_from_files(
    cert: &std::path::Path,
    key_file: &std::path::Path,
) -> anyhow::Result<Arc<ServerConfig>> {
    let cert = DataSource::File(cert.to_path_buf());
    let key_src = DataSource::File(key_file.to_path_buf());
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs(&cert)?, key(&key_src)?)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
