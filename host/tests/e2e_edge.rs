//! The connection manager's edge behaviour end to end over loopback, with
//! `portcullis-test-module` in `portcullis-host`: TLS on both sides (a throwaway CA made with
//! rcgen at test time), `use_remote_address` / `xff_num_trusted_hops` (the `x-forwarded-for`
//! the upstream receives and the `source.address` the filter sees), and shared-data CAS
//! contention between two worker VMs. Every wait has a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

fn module_filter(mode: &str) -> Value {
    let config = json!({ "mode": mode });
    wasm_filter("test", &test_module_wasm(), &config.to_string(), false)
}

// ---------------------------------------------------------------------------------------------
// TLS

/// A CA and the PEM files of what it signed, written to a temp dir.
struct Pki {
    dir: TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let pki = Pki {
            dir: TempDir::new(),
            ca,
        };
        std::fs::write(pki.ca_file(), pki.ca.pem()).unwrap();
        pki
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.0.join("ca.pem")
    }

    fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }

    /// A server certificate for `localhost` and 127.0.0.1; returns (chain file, key file).
    fn server(&self, name: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let (chain, key_file) = (
            self.dir.0.join(format!("{name}.pem")),
            self.dir.0.join(format!("{name}-key.pem")),
        );
        std::fs::write(&chain, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (chain, key_file)
    }
}

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Serves the certificate and records the SNI each client hello carried.
#[derive(Debug)]
struct SniRecorder {
    key: Arc<rustls::sign::CertifiedKey>,
    seen: Mutex<Vec<Option<String>>>,
}

impl rustls::server::ResolvesServerCert for SniRecorder {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.seen
            .lock()
            .unwrap()
            .push(hello.server_name().map(str::to_owned));
        Some(Arc::clone(&self.key))
    }
}

/// A TLS echo upstream with the certificate in `chain`/`key`, recording SNI.
fn tls_echo(name: &str, chain: &Path, key: &Path) -> (EchoServer, Arc<SniRecorder>) {
    let certs = rustls_pemfile::certs(&mut std::fs::read(chain).unwrap().as_slice())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key: PrivateKeyDer<'static> =
        rustls_pemfile::private_key(&mut std::fs::read(key).unwrap().as_slice())
            .unwrap()
            .unwrap();
    let signing = rustls::crypto::ring::sign::any_supported_type(&key).unwrap();
    let recorder = Arc::new(SniRecorder {
        key: Arc::new(rustls::sign::CertifiedKey::new(certs, signing)),
        seen: Mutex::new(Vec::new()),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(&recorder) as Arc<dyn rustls::server::ResolvesServerCert>);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let server = EchoServer::start(bind(), name, Some(Arc::new(config))).expect("echo starts");
    (server, recorder)
}

fn downstream_tls(chain: &Path, key: &Path) -> Value {
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": {"tls_certificates": [{
                "certificate_chain": {"filename": chain.display().to_string()},
                "private_key": {"filename": key.display().to_string()}
            }]}
        }
    })
}

fn upstream_tls(ca: &Path, sni: &str) -> Value {
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": sni,
            "common_tls_context": {"validation_context": {
                "trusted_ca": {"filename": ca.display().to_string()}
            }}
        }
    })
}

/// One HTTP/1.1 request over rustls to `addr` as `localhost`, trusting only `roots`.
fn tls_request(
    addr: SocketAddr,
    roots: &[CertificateDer<'static>],
    path: &str,
) -> std::io::Result<Resp> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).map_err(std::io::Error::other)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_root_certificates(store)
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").unwrap();
    let conn =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(std::io::Error::other)?;
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").as_bytes(),
    )?;
    tls.flush()?;
    let mut raw = Vec::new();
    match tls.read_to_end(&mut raw) {
        Ok(_) => {}
        // A peer that closes without close_notify after a complete answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e),
    }
    parse_response(&raw)
}

#[test]
fn tls_downstream_and_upstream_through_the_filter() {
    let pki = Pki::new("trusted");
    let rogue = Pki::new("rogue");
    let (listener_chain, listener_key) = pki.server("listener");
    let (up_chain, up_key) = pki.server("upstream");
    let (rogue_chain, rogue_key) = rogue.server("rogue-upstream");
    let (secure, secure_sni) = tls_echo("secure", &up_chain, &up_key);
    let (untrusted, _) = tls_echo("untrusted", &rogue_chain, &rogue_key);

    let (port, admin) = (free_port(), free_port());
    let mut l = listener(
        "tls_ingress",
        port,
        vec![module_filter("source_address")],
        vec![route("/rogue", "rogue"), route("/", "secure")],
        None,
    );
    l["filter_chains"][0]["transport_socket"] = downstream_tls(&listener_chain, &listener_key);
    let mut secure_cluster = cluster("secure", secure.addr(), false);
    secure_cluster["transport_socket"] = upstream_tls(&pki.ca_file(), "localhost");
    let mut rogue_cluster = cluster("rogue", untrusted.addr(), false);
    rogue_cluster["transport_socket"] = upstream_tls(&pki.ca_file(), "localhost");
    let host = Host::start(
        &bootstrap(vec![l], vec![secure_cluster, rogue_cluster], admin),
        admin,
    );
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();

    // Plaintext on the TLS listener gets no HTTP answer.
    assert!(
        try_request(addr, "GET", "/plain", &[], b"")
            .map(|r| r.status == 0)
            .unwrap_or(true),
        "a plaintext request must not be served by a TLS listener"
    );

    // A client that trusts the CA: through the filter to the TLS upstream.
    let r = tls_request(addr, &[pki.ca_der()], "/hello").expect("TLS request");
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["name"], "secure", "{body}");
    assert_eq!(body["path"], "/hello");
    assert_eq!(
        body["headers"]["x-forwarded-proto"], "https",
        "the connection manager saw TLS: {body}"
    );
    let source = body["headers"]["x-source-address"].as_str().unwrap_or("");
    assert!(
        source.starts_with("127.0.0.1:"),
        "the filter ran on the TLS stream: {body}"
    );
    assert_eq!(
        secure_sni.seen.lock().unwrap().as_slice(),
        [Some("localhost".to_owned())],
        "the configured SNI reached the upstream"
    );

    // A client that trusts another CA fails the handshake.
    let err = tls_request(addr, &[rogue.ca_der()], "/hello")
        .expect_err("a client without the CA must not complete the handshake");
    assert!(
        err.to_string().contains("invalid peer certificate"),
        "handshake error: {err}"
    );

    // An upstream whose certificate does not chain to the cluster's trusted CA: Envoy's 503.
    let r = tls_request(addr, &[pki.ca_der()], "/rogue").expect("TLS request");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.text()
            .starts_with("upstream connect error or disconnect/reset before headers"),
        "{}",
        r.text()
    );
    assert_eq!(host.counter("cluster.rogue.upstream_cx_connect_fail"), 1);
    assert_eq!(host.counter("cluster.secure.upstream_rq_200"), 1);
}

// ---------------------------------------------------------------------------------------------
// x-forwarded-for

/// A host whose listener has `use_remote_address` / `xff_num_trusted_hops` as given.
fn xff_host(use_remote_address: bool, hops: u32) -> (Host, SocketAddr, EchoServer) {
    let up = echo("up");
    let (port, admin) = (free_port(), free_port());
    let mut l = listener(
        "xff",
        port,
        vec![module_filter("source_address")],
        vec![route("/", "up")],
        None,
    );
    let hcm = &mut l["filter_chains"][0]["filters"][0]["typed_config"];
    hcm["use_remote_address"] = json!(use_remote_address);
    hcm["xff_num_trusted_hops"] = json!(hops);
    let host = Host::start(
        &bootstrap(vec![l], vec![cluster("up", up.addr(), false)], admin),
        admin,
    );
    (host, ([127, 0, 0, 1], port).into(), up)
}

/// (x-forwarded-for at the upstream, source.address the filter saw, source.port).
fn through(addr: SocketAddr, xff: Option<&str>) -> (Option<String>, String, String) {
    let headers: Vec<(&str, &[u8])> = xff
        .map(|v| vec![("x-forwarded-for", v.as_bytes())])
        .unwrap_or_default();
    let r = request(addr, "GET", "/", &headers, b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let h = &r.json()["headers"];
    (
        h["x-forwarded-for"].as_str().map(str::to_owned),
        h["x-source-address"].as_str().unwrap_or("").to_owned(),
        h["x-source-port"].as_str().unwrap_or("").to_owned(),
    )
}

fn local_address(host: &Host) -> String {
    let lines = host.wait_lines(|l| l.contains("local address: "), 1, Duration::from_secs(5));
    let line = lines.first().expect("the host logs its local address");
    line.split("local address: ").nth(1).unwrap().to_owned()
}

#[test]
fn xff_trusted_hops_without_use_remote_address() {
    // Envoy's default: XFF untouched; the client is the (hops+1)-th address from the right.
    let (_h0, a0, _u0) = xff_host(false, 0);
    let (h2, a2, _u2) = xff_host(false, 2);
    let is_peer = |s: &str| s.starts_with("127.0.0.1:") && s != "127.0.0.1:0";

    // No XFF: the peer stays the remote address, nothing is added.
    let (xff, source, port) = through(a2, None);
    assert_eq!(xff, None);
    assert!(is_peer(&source), "{source}");
    assert_ne!(port, "0");

    // hops 0: the last entry is the client.
    let (xff, source, port) = through(a0, Some("203.0.113.7, 198.51.100.1"));
    assert_eq!(xff.as_deref(), Some("203.0.113.7, 198.51.100.1"));
    assert_eq!(source, "198.51.100.1:0");
    assert_eq!(port, "0");

    // More entries than trusted hops: the third from the right.
    let (xff, source, _) = through(a2, Some("192.0.2.9,203.0.113.7, 10.0.0.1 ,10.0.0.2"));
    assert_eq!(
        xff.as_deref(),
        Some("192.0.2.9,203.0.113.7, 10.0.0.1 ,10.0.0.2")
    );
    assert_eq!(source, "203.0.113.7:0");
    // IPv6 entries come out as Envoy prints them.
    let (_, source, _) = through(a2, Some("2001:db8::5, 10.0.0.1, 10.0.0.2"));
    assert_eq!(source, "[2001:db8::5]:0");

    // Fewer entries than trusted hops + 1: the peer.
    let (_, source, _) = through(a2, Some("10.0.0.1,10.0.0.2"));
    assert!(is_peer(&source), "{source}");
    let (_, source, _) = through(a0, Some(""));
    assert!(is_peer(&source), "{source}");

    // Malformed: the selected entry is not a bare IP — never trusted.
    for bad in [
        "evil.example,10.0.0.1,10.0.0.2",
        "203.0.113.7:8080,10.0.0.1,10.0.0.2",
        "[2001:db8::5],10.0.0.1,10.0.0.2",
        "203.0.113.300,10.0.0.1,10.0.0.2",
        "unknown, 10.0.0.1, 10.0.0.2",
        ",10.0.0.1,10.0.0.2",
    ] {
        let (xff, source, _) = through(a2, Some(bad));
        assert_eq!(xff.as_deref(), Some(bad));
        assert!(is_peer(&source), "{bad:?} gave {source}");
    }
    // Two XFF header lines are one list (Envoy's codec joins them with ",").
    let r = request(
        a2,
        "GET",
        "/",
        &[
            ("x-forwarded-for", b"203.0.113.8"),
            ("x-forwarded-for", b"10.0.0.1, 10.0.0.2"),
        ],
        b"",
    );
    assert_eq!(
        r.json()["headers"]["x-source-address"],
        "203.0.113.8:0",
        "{}",
        r.text()
    );
    drop(h2);
}

#[test]
fn xff_trusted_hops_with_use_remote_address() {
    // The peer (loopback here, so the server's local address) is appended; the client is the
    // hops-th address from the right of what was received.
    let (h0, a0, _u0) = xff_host(true, 0);
    let (_h1, a1, _u1) = xff_host(true, 1);
    let local = local_address(&h0);
    let is_peer = |s: &str| s.starts_with("127.0.0.1:") && s != "127.0.0.1:0";

    // No XFF: XFF is the appended address alone; the peer is the client.
    let (xff, source, _) = through(a1, None);
    assert_eq!(xff.as_deref(), Some(local.as_str()));
    assert!(is_peer(&source), "{source}");

    // hops 0: whatever the client claims, the peer is the client.
    let (xff, source, _) = through(a0, Some("203.0.113.7"));
    assert_eq!(xff, Some(format!("203.0.113.7,{local}")));
    assert!(is_peer(&source), "{source}");

    // hops 1, more entries: the last received entry (the trusted proxy's client).
    let (xff, source, _) = through(a1, Some("192.0.2.9, 203.0.113.7"));
    assert_eq!(xff, Some(format!("192.0.2.9, 203.0.113.7,{local}")));
    assert_eq!(source, "203.0.113.7:0");

    // hops 1, empty XFF (fewer entries than trusted hops): the peer.
    let (xff, source, _) = through(a1, Some(""));
    assert_eq!(xff.as_deref(), Some(local.as_str()));
    assert!(is_peer(&source), "{source}");

    // hops 1, malformed last entry: never trusted, still forwarded with the peer appended.
    let (xff, source, _) = through(a1, Some("203.0.113.7, not-an-ip"));
    assert_eq!(xff, Some(format!("203.0.113.7, not-an-ip,{local}")));
    assert!(is_peer(&source), "{source}");
}

// ---------------------------------------------------------------------------------------------
// Shared-data CAS across workers

#[test]
fn shared_data_cas_counter_is_exact_across_two_workers() {
    const REQUESTS: usize = 200;
    const CLIENTS: usize = 20;
    let up = echo("up");
    let (port, admin) = (free_port(), free_port());
    let yaml = bootstrap(
        vec![listener(
            "cas",
            port,
            vec![module_filter("cas_counter")],
            vec![route("/", "up")],
            None,
        )],
        vec![cluster("up", up.addr(), false)],
        admin,
    );
    let host = Host::start_with(&yaml, admin, 2);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();

    // Every client keeps going until its share is sent; each request is its own connection,
    // so the two workers' accept loops share them.
    let seen = Arc::new(Mutex::new((BTreeSet::new(), BTreeSet::new(), 0u64)));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let seen = Arc::clone(&seen);
            std::thread::spawn(move || {
                for _ in 0..REQUESTS / CLIENTS {
                    let r = request(addr, "GET", "/inc", &[], b"");
                    assert_eq!(r.status, 200, "{}", r.text());
                    let h = &r.json()["headers"];
                    let value: u64 = h["x-cas-counter"].as_str().unwrap().parse().unwrap();
                    let mismatches: u64 = h["x-cas-mismatches"].as_str().unwrap().parse().unwrap();
                    let mut s = seen.lock().unwrap();
                    s.0.insert(h["x-vm"].as_str().unwrap().to_owned());
                    assert!(s.1.insert(value), "value {value} handed out twice");
                    s.2 += mismatches;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let r = request(addr, "GET", "/read", &[("x-cas-read", b"1")], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let final_value: usize = r.json()["headers"]["x-cas-counter"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let (vms, values, mismatches) = seen.lock().unwrap().clone();
    eprintln!("cas: {REQUESTS} increments on VMs {vms:?}, {mismatches} CAS mismatches retried");
    assert_eq!(final_value, REQUESTS, "no increment lost");
    assert!(
        mismatches > 0,
        "the two workers' VMs never collided, so CAS was not exercised"
    );
    assert_eq!(values.len(), REQUESTS);
    assert_eq!(values.iter().copied().min(), Some(1));
    assert_eq!(values.iter().copied().max(), Some(REQUESTS as u64));
    assert_eq!(
        vms.len(),
        2,
        "both worker VMs served requests (the canary took number 1): {vms:?}"
    );
    drop(host);
}
