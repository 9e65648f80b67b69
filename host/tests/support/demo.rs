//! The demo stack of `envoy/envoy.yaml` on loopback: the file itself, with only its addresses
//! and file paths changed, run by `portcullis-host`; the demo services and the identity provider
//! as TLS echo upstreams with certificates from `scripts/make-certs.sh`; the rate-limit service
//! (in this process) on `deploy/ratelimit/config.yaml`. So the routes, the filter configuration,
//! the clusters' TLS and the certificates that docker-compose uses are the ones exercised here.

use super::rls::{self, RateLimitService};
use super::*;
use portcullis::jwt::Algorithm;
use portcullis::mint::SigningKey;
use portcullis_host::echo::EchoServer;
use portcullis_ratelimit::clock::SystemClock;
use portcullis_ratelimit::server::StoreSettings;
use rustls::pki_types::{CertificateDer, ServerName};
use std::collections::HashMap;
use std::path::Path;

/// The API key of the demo's `partners` provider (its SHA-256 is in envoy/envoy.yaml).
pub const DEMO_API_KEY: &str = "demo-key-NOT-SECRET-rotate-me";

/// The services of the compose file that envoy.yaml's clusters name, served here by echoes.
pub const SERVICES: [&str; 5] = ["orders-1", "orders-2", "orders-beta", "catalog", "idp"];

/// A file of the repository.
pub fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// envoy/envoy.yaml as it is in the repository.
pub fn envoy_yaml() -> serde_yaml::Value {
    serde_yaml::from_str(&std::fs::read_to_string(repo_file("envoy/envoy.yaml")).unwrap()).unwrap()
}

/// The filter's configuration in envoy.yaml (the wasm filter of the `https` listener).
pub fn filter_configuration(doc: &serde_yaml::Value) -> String {
    let listeners = doc["static_resources"]["listeners"].as_sequence().unwrap();
    let https = listeners
        .iter()
        .find(|l| l["name"].as_str() == Some("https"))
        .unwrap();
    let hcm = &https["filter_chains"][0]["filters"][0]["typed_config"];
    let wasm = hcm["http_filters"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|f| f["name"].as_str() == Some("envoy.filters.http.wasm"))
        .unwrap();
    wasm["typed_config"]["config"]["configuration"]["value"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The running demo stack.
pub struct Demo {
    pub host: Host,
    /// The HTTPS listener (`https`, 8443 in compose).
    pub https: SocketAddr,
    /// The plain HTTP listener that redirects (8080 in compose).
    pub http: SocketAddr,
    /// The admin listener (`/stats/prometheus`).
    pub admin: SocketAddr,
    /// The rate-limit service's HTTP listener (`/metrics`).
    pub ratelimit_metrics: SocketAddr,
    /// The bootstrap the host runs (envoy.yaml with local addresses).
    pub yaml: String,
    roots: Vec<CertificateDer<'static>>,
    signer: SigningKey,
    _upstreams: Vec<EchoServer>,
    _ratelimit: RateLimitService,
    _certs: TempDir,
}

impl Demo {
    /// Starts the stack with the rate-limit service's counters in memory.
    pub fn start() -> Demo {
        Demo::start_with(StoreSettings::Memory(Arc::new(SystemClock)))
    }

    /// Starts the stack with the rate-limit service on `store`.
    pub fn start_with(store: StoreSettings) -> Demo {
        let certs = TempDir::new();
        let made = Command::new(repo_file("scripts/make-certs.sh"))
            .arg(&certs.0)
            .output()
            .expect("scripts/make-certs.sh runs (openssl)");
        assert!(
            made.status.success(),
            "make-certs: {}",
            String::from_utf8_lossy(&made.stderr)
        );
        let tls = portcullis_host::proxy::tls::server_config_from_files(
            &certs.0.join("services.crt"),
            &certs.0.join("services.key"),
        )
        .unwrap();
        let jwks = std::fs::read(repo_file("deploy/idp/jwks.json")).unwrap();
        let mut upstreams = Vec::new();
        let mut addresses: HashMap<String, SocketAddr> = HashMap::new();
        for name in SERVICES {
            let files: HashMap<String, Vec<u8>> = if name == "idp" {
                [("/.well-known/jwks.json".to_owned(), jwks.clone())].into()
            } else {
                HashMap::new()
            };
            let echo =
                EchoServer::start_with_files(bind(), name, files.into(), Some(Arc::clone(&tls)))
                    .unwrap();
            addresses.insert(name.to_owned(), echo.addr());
            upstreams.push(echo);
        }
        let limits = std::fs::read_to_string(repo_file("deploy/ratelimit/config.yaml")).unwrap();
        let ratelimit = rls::start(&limits, store);
        addresses.insert("portcullis-ratelimit".to_owned(), ratelimit.grpc);

        let (https, http, admin) = (free_port(), free_port(), free_port());
        let mut doc = envoy_yaml();
        let wasm = filter_wasm();
        let mut files: HashMap<String, String> = HashMap::new();
        for f in ["ca.crt", "envoy.crt", "envoy.key"] {
            files.insert(
                format!("/etc/envoy/certs/{f}"),
                certs.0.join(f).display().to_string(),
            );
        }
        files.insert(
            "/etc/envoy/portcullis.wasm".to_owned(),
            wasm.display().to_string(),
        );
        files.insert(
            "/var/log/envoy/access.log".to_owned(),
            certs.0.join("access.log").display().to_string(),
        );
        localize(&mut doc, &addresses, &files);
        doc["admin"]["address"]["socket_address"]["address"] = "127.0.0.1".into();
        doc["admin"]["address"]["socket_address"]["port_value"] = admin.into();
        for l in doc["static_resources"]["listeners"]
            .as_sequence_mut()
            .unwrap()
        {
            let port = match l["name"].as_str() {
                Some("https") => https,
                Some("http") => http,
                other => panic!("unexpected listener {other:?} in envoy.yaml"),
            };
            l["address"]["socket_address"]["address"] = "127.0.0.1".into();
            l["address"]["socket_address"]["port_value"] = port.into();
        }
        // The redirect names the HTTPS port.
        let redirect = &mut doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
            [0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0]["redirect"];
        assert_eq!(redirect["port_redirect"].as_u64(), Some(8443));
        redirect["port_redirect"] = https.into();

        let yaml = serde_yaml::to_string(&doc).unwrap();
        let host = Host::start(&yaml, admin);
        let pem = std::fs::read(certs.0.join("ca.crt")).unwrap();
        let roots = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = std::fs::read_to_string(repo_file("filter/tests/keys/rsa1.private.pem")).unwrap();
        let signer = SigningKey::from_pkcs8_pem(&key, Algorithm::RS256)
            .unwrap()
            .with_kid("rsa1");
        Demo {
            host,
            https: ([127, 0, 0, 1], https).into(),
            http: ([127, 0, 0, 1], http).into(),
            admin: ([127, 0, 0, 1], admin).into(),
            ratelimit_metrics: ratelimit.http,
            yaml,
            roots,
            signer,
            _upstreams: upstreams,
            _ratelimit: ratelimit,
            _certs: certs,
        }
    }

    /// A token of the demo identity provider for `sub` with `scope` and extra claims.
    pub fn token(&self, sub: &str, scope: &str, extra: Value) -> String {
        let now = unix_now();
        let mut claims = json!({
            "iss": "https://id.portcullis.test",
            "aud": "portcullis-demo",
            "sub": sub,
            "scope": scope,
            "iat": now,
            "exp": now + 3600,
        });
        if let (Some(c), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
            c.extend(extra.clone());
        }
        self.signer.sign(&claims).unwrap()
    }

    /// One HTTP/1.1 request over TLS to the HTTPS listener (as `localhost`, trusting the demo CA).
    pub fn https(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        let mut store = rustls::RootCertStore::empty();
        for r in &self.roots {
            store.add(r.clone()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth();
        let name = ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let tcp = TcpStream::connect_timeout(&self.https, Duration::from_secs(5)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        tls.write_all(head.as_bytes()).unwrap();
        tls.write_all(body).unwrap();
        tls.flush().unwrap();
        let mut raw = Vec::new();
        match tls.read_to_end(&mut raw) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
            Err(e) => panic!("TLS read: {e}"),
        }
        parse_response(&raw).unwrap()
    }

    /// `GET path` over TLS with a bearer token.
    pub fn get_as(&self, token: &str, path: &str) -> Resp {
        self.https(
            "GET",
            path,
            &[("authorization", &format!("Bearer {token}"))],
            b"",
        )
    }

    /// `/stats/prometheus` of the host.
    pub fn prometheus(&self) -> String {
        request(self.admin, "GET", "/stats/prometheus", &[], b"").text()
    }
}

/// Points every `socket_address` naming a compose service at its local address, and every
/// container path at its local file.
fn localize(
    node: &mut serde_yaml::Value,
    addresses: &HashMap<String, SocketAddr>,
    files: &HashMap<String, String>,
) {
    match node {
        serde_yaml::Value::Mapping(map) => {
            if let Some(sa) = map.get_mut("socket_address")
                && let Some(name) = sa["address"].as_str()
                && let Some(addr) = addresses.get(name)
            {
                sa["address"] = addr.ip().to_string().into();
                sa["port_value"] = addr.port().into();
            }
            for (_, v) in map.iter_mut() {
                localize(v, addresses, files);
            }
        }
        serde_yaml::Value::Sequence(seq) => {
            for v in seq {
                localize(v, addresses, files);
            }
        }
        serde_yaml::Value::String(s) => {
            if let Some(local) = files.get(s.as_str()) {
                *s = local.clone();
            }
        }
        _ => {}
    }
}

/// The value of the Prometheus sample `name{labels…}` whose labels include all of `labels`.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (label_part, value) = match rest.strip_prefix('{') {
            Some(r) => {
                let end = r.find('}')?;
                (&r[..end], r[end + 1..].trim())
            }
            None => ("", rest.strip_prefix(' ')?.trim()),
        };
        labels
            .iter()
            .all(|(k, v)| label_part.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.parse().ok())?
    })
}
