//! Whole requests over loopback: an echo upstream, portcullis-host (run in this process on its
//! own threads, two workers as `--concurrency 2`) with and without the filter, and a load
//! generator of keep-alive HTTP/1.1 connections. Prints requests per second and latency
//! percentiles. Everything shares the machine's cores, so the figures say what the filter adds
//! relative to the same path without it, not what Envoy would do on its own hardware.

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use portcullis_host::abi::LogLevel;
use portcullis_host::echo::EchoServer;
use portcullis_host::proxy::{self, Options};
use serde_json::{Value, json};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Warm-up, then the measured run, per scenario.
const WARMUP: Duration = Duration::from_millis(500);
const MEASURE: Duration = Duration::from_secs(3);

/// One load run: where to send what.
pub struct Target {
    /// Row name.
    pub name: String,
    /// Listener (or the echo service itself).
    pub addr: SocketAddr,
    /// Request headers besides the host (path `/api/orders/1234?expand=items`, GET).
    pub headers: Vec<(String, String)>,
    /// Keep-alive connections sending requests back to back.
    pub connections: usize,
}

/// The running pieces: kept alive while the targets are measured.
pub struct Stack {
    _echo: EchoServer,
    _dir: TempDir,
    /// The echo service, direct.
    pub echo: SocketAddr,
    /// The host's listeners, in the order given to [`start`].
    pub listeners: Vec<SocketAddr>,
}

/// A cluster the filter calls: its name and address.
pub type Upstream<'n> = (&'n str, SocketAddr);

/// A listener of the host: with the filter configured by `filter`, or with the router alone.
pub struct Listener {
    /// Stat prefix.
    pub name: &'static str,
    /// The filter's configuration; `None`: no wasm filter.
    pub filter: Option<Value>,
}

/// Starts the echo service and the host with `listeners` (all routing to the echo service),
/// the HTTP/2 `grpc_clusters` and the HTTP/1.1 `http_clusters` (name, address) the filter may
/// call, and waits until the host answers.
pub fn start(
    root: &Path,
    listeners: &[Listener],
    grpc_clusters: &[Upstream<'_>],
    http_clusters: &[Upstream<'_>],
) -> Result<Stack> {
    let echo = EchoServer::start(TcpListener::bind("127.0.0.1:0")?, "svc", None)?;
    let admin = free_port()?;
    let ports = listeners
        .iter()
        .map(|_| free_port())
        .collect::<Result<Vec<u16>>>()?;
    let wasm = root.join("target/wasm32-wasip1/release/portcullis.wasm");
    let dir = TempDir::new("host")?;
    let yaml = bootstrap(
        echo.addr(),
        listeners,
        &ports,
        (grpc_clusters, http_clusters),
        admin,
        &wasm,
    );
    let path = dir.0.join("envoy.yaml");
    std::fs::write(&path, yaml)?;
    let opts = Options {
        config: path,
        concurrency: 2,
        // The filter's audit lines (info) are not printed: a log line per request to a
        // terminal would measure the terminal.
        log_level: LogLevel::Warn,
    };
    std::thread::Builder::new()
        .name("portcullis-host".into())
        .spawn(move || proxy::run(&opts))?;
    let stack = Stack {
        echo: echo.addr(),
        _echo: echo,
        _dir: dir,
        listeners: ports
            .iter()
            .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
            .collect(),
    };
    wait_ready(([127, 0, 0, 1], admin).into())?;
    Ok(stack)
}

/// Runs each target and prints a row: requests/s, p50, p99 and p99.9 in µs.
pub fn run(targets: &[Target]) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    println!(
        "{:<44} {:>6} {:>8} {:>8} {:>8} {:>9}",
        "path", "conns", "req/s", "p50 µs", "p99 µs", "p99.9 µs"
    );
    for t in targets {
        let mut latencies = rt.block_on(load(t))?;
        latencies.sort_unstable();
        let pct = |p: f64| {
            let i = ((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1));
            latencies.get(i).copied().unwrap_or(0)
        };
        println!(
            "{:<44} {:>6} {:>8.0} {:>8} {:>8} {:>9}",
            t.name,
            t.connections,
            latencies.len() as f64 / MEASURE.as_secs_f64(),
            pct(0.50),
            pct(0.99),
            pct(0.999)
        );
    }
    Ok(())
}

/// `t.connections` connections sending requests back to back: a warm-up, then `MEASURE` during
/// which every answer's latency (µs) is kept. Every answer must be 200.
async fn load(t: &Target) -> Result<Vec<u32>> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..t.connections {
        let stream = tokio::net::TcpStream::connect(t.addr).await?;
        stream.set_nodelay(true)?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let headers = t.headers.clone();
        let addr = t.addr;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(50_000);
            loop {
                let sent = Instant::now();
                if sent.duration_since(start) > WARMUP + MEASURE {
                    break;
                }
                let mut req = http::Request::get("/api/orders/1234?expand=items")
                    .header("host", addr.to_string());
                for (k, v) in &headers {
                    req = req.header(k.as_str(), v.as_str());
                }
                let resp = sender
                    .send_request(req.body(Empty::<Bytes>::new())?)
                    .await?;
                let status = resp.status();
                resp.into_body().collect().await?;
                if status != http::StatusCode::OK {
                    bail!("answer {status}, not 200");
                }
                if sent.duration_since(start) >= WARMUP {
                    latencies.push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
                }
            }
            Ok::<Vec<u32>, anyhow::Error>(latencies)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.context("a load connection panicked")??);
    }
    Ok(all)
}

fn bootstrap(
    echo: SocketAddr,
    listeners: &[Listener],
    ports: &[u16],
    (grpc_clusters, http_clusters): (&[Upstream<'_>], &[Upstream<'_>]),
    admin: u16,
    wasm: &Path,
) -> String {
    let router = json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    });
    let wasm_filter = |config: &Value| {
        json!({
            "name": "envoy.filters.http.wasm",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": "portcullis",
                    "root_id": "portcullis",
                    "vm_config": {
                        "vm_id": "portcullis",
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": {"local": {"filename": wasm.display().to_string()}}
                    },
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": config.to_string()
                    }
                }
            }
        })
    };
    let listener = |l: &Listener, port: u16| {
        let filters = match &l.filter {
            Some(config) => vec![wasm_filter(config), router.clone()],
            None => vec![router.clone()],
        };
        json!({
            "name": l.name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": l.name,
                    "route_config": {"name": "local", "virtual_hosts": [{
                        "name": "all", "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "svc"}}]
                    }]},
                    "http_filters": filters
                }
            }]}]
        })
    };
    let cluster = |name: &str, addr: SocketAddr| {
        json!({
            "name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {
                    "address": addr.ip().to_string(), "port_value": addr.port()}}}}
            ]}]}
        })
    };
    let mut clusters = vec![cluster("svc", echo)];
    for (name, addr) in grpc_clusters {
        let mut c = cluster(name, *addr);
        c["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}
            }
        });
        clusters.push(c);
    }
    for (name, addr) in http_clusters {
        clusters.push(cluster(name, *addr));
    }
    let doc = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": listeners.iter().zip(ports).map(|(l, p)| listener(l, *p)).collect::<Vec<_>>(),
            "clusters": clusters
        }
    });
    // JSON is YAML.
    doc.to_string()
}

/// Polls the admin `/ready` until it answers 200 (at most 30 s: compiling the module takes a
/// few seconds).
fn wait_ready(admin: SocketAddr) -> Result<()> {
    wait_for_200(admin, "/ready", "portcullis-host")
}

/// Polls `GET path` on `addr` until it answers 200, at most 30 s.
pub fn wait_for_200(addr: SocketAddr, path: &str, what: &str) -> Result<()> {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            let _ = write!(
                s,
                "GET {path} HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n"
            );
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.1 200") {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what} did not answer 200 on {path} within 30 s")
}

/// A port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A temporary folder, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// `portcullis-bench-<label>-<pid>` in the system's temporary folder.
    pub fn new(label: &str) -> Result<TempDir> {
        let p =
            std::env::temp_dir().join(format!("portcullis-bench-{label}-{}", std::process::id()));
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
