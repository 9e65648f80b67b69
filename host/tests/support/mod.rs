//! End-to-end harness: Envoy bootstraps written as JSON (valid YAML) into a temp dir, the
//! `portcullis-host` binary started on them with its stderr captured, in-process echo
//! upstreams, and a raw HTTP/1.1 client (raw, so tests can send bytes no HTTP library would,
//! such as non-UTF-8 header values). Only 127.0.0.1 and ports the kernel picked; every wait has
//! a deadline; everything started is stopped on drop.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use portcullis_host::echo::EchoServer;

pub mod demo;
pub mod idp;
pub mod rls;

/// How long the host may take to compile its modules and start (debug wasmtime is slow).
pub const START_DEADLINE: Duration = Duration::from_secs(120);

fn wasm(var: &str, file: &str, make: &str) -> PathBuf {
    if let Ok(p) = std::env::var(var) {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm32-wasip1/release")
        .join(file);
    assert!(
        p.exists(),
        "{} is missing: run `{make}` first (or set {var})",
        p.display()
    );
    p
}

/// The real filter (`PORTCULLIS_WASM`, else the workspace's release wasm).
pub fn filter_wasm() -> PathBuf {
    wasm("PORTCULLIS_WASM", "portcullis.wasm", "make build")
}

/// The test module (`PORTCULLIS_TEST_MODULE_WASM`, else the workspace's release wasm).
pub fn test_module_wasm() -> PathBuf {
    wasm(
        "PORTCULLIS_TEST_MODULE_WASM",
        "portcullis_test_module.wasm",
        "make test-modules",
    )
}

/// A listener on 127.0.0.1 with a kernel-picked port.
pub fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
}

/// A port that was free a moment ago (for the host's own listeners, which it binds itself).
pub fn free_port() -> u16 {
    bind().local_addr().unwrap().port()
}

/// An echo upstream named `name`.
pub fn echo(name: &str) -> EchoServer {
    EchoServer::start(bind(), name, None).expect("echo starts")
}

// ---------------------------------------------------------------------------------------------
// Bootstrap building blocks (JSON is YAML).

/// `envoy.filters.http.wasm` with a StringValue configuration.
pub fn wasm_filter(
    name: &str,
    code: &std::path::Path,
    configuration: &str,
    fail_open: bool,
) -> Value {
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                "root_id": name,
                "fail_open": fail_open,
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

/// A route to `cluster` for `prefix`.
pub fn route(prefix: &str, cluster: &str) -> Value {
    json!({"match": {"prefix": prefix}, "route": {"cluster": cluster}})
}

/// An HTTP listener on 127.0.0.1:`port` with the filters (router appended) and routes.
pub fn listener(
    name: &str,
    port: u16,
    filters: Vec<Value>,
    routes: Vec<Value>,
    buffer_limit: Option<u32>,
) -> Value {
    let mut http_filters = filters;
    http_filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    }));
    let mut l = json!({
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{
            "filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": name,
                    "route_config": {
                        "name": "local",
                        "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]
                    },
                    "http_filters": http_filters
                }
            }]
        }]
    });
    if let Some(limit) = buffer_limit {
        l["per_connection_buffer_limit_bytes"] = json!(limit);
    }
    l
}

/// A STATIC cluster with one endpoint; `http2` for gRPC.
pub fn cluster(name: &str, addr: SocketAddr, http2: bool) -> Value {
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
    if http2 {
        c["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}
            }
        });
    }
    c
}

/// The whole bootstrap, with an admin listener on `admin_port`.
pub fn bootstrap(listeners: Vec<Value>, clusters: Vec<Value>, admin_port: u16) -> String {
    serde_json::to_string_pretty(&json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {"listeners": listeners, "clusters": clusters}
    }))
    .unwrap()
}

/// The common end-to-end shape: one listener (`ingress`) with the portcullis filter
/// (`configuration`) in front of an `orders` echo service, plus `clusters` the filter calls.
pub struct FilterStack {
    /// The bootstrap to start the host with.
    pub yaml: String,
    /// Its admin port.
    pub admin: u16,
    /// The filtered listener.
    pub addr: SocketAddr,
    /// The upstream, alive as long as the stack.
    pub echo: EchoServer,
}

/// See [`FilterStack`].
pub fn filter_stack(configuration: &str, clusters: Vec<Value>) -> FilterStack {
    let echo = echo("orders");
    let (port, admin) = (free_port(), free_port());
    let mut all = vec![cluster("orders", echo.addr(), false)];
    all.extend(clusters);
    let yaml = bootstrap(
        vec![listener(
            "ingress",
            port,
            vec![wasm_filter(
                "portcullis",
                &filter_wasm(),
                configuration,
                false,
            )],
            vec![route("/", "orders")],
            None,
        )],
        all,
        admin,
    );
    FilterStack {
        yaml,
        admin,
        addr: ([127, 0, 0, 1], port).into(),
        echo,
    }
}

/// `GET path` with `Authorization: Bearer <token>`.
pub fn get_with_bearer(addr: SocketAddr, path: &str, token: &str) -> Resp {
    let auth = format!("Bearer {token}");
    request(
        addr,
        "GET",
        path,
        &[("authorization", auth.as_bytes())],
        b"",
    )
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

// ---------------------------------------------------------------------------------------------
// The host process.

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A temp directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("portcullis-e2e-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `portcullis-host`; killed on drop.
pub struct Host {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    pub admin: SocketAddr,
    _dir: TempDir,
}

/// What a host that exited left behind.
#[derive(Debug)]
pub struct Exited {
    pub code: Option<i32>,
    pub stderr: Vec<String>,
}

fn spawn(yaml: &str, concurrency: usize) -> (Child, Arc<Mutex<Vec<String>>>, TempDir) {
    let dir = TempDir::new();
    let path = dir.0.join("envoy.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis-host"))
        .arg("-c")
        .arg(&path)
        .args(["--concurrency", &concurrency.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("portcullis-host starts");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if std::env::var_os("PORTCULLIS_E2E_ECHO").is_some() {
                eprintln!("host: {line}");
            }
            sink.lock().unwrap().push(line);
        }
    });
    (child, lines, dir)
}

impl Host {
    /// Starts the host and waits for `/ready` (or its exit).
    pub fn try_start(yaml: &str, admin_port: u16) -> Result<Host, Exited> {
        Host::try_start_with(yaml, admin_port, 2)
    }

    /// As [`Host::try_start`] with `--concurrency`.
    pub fn try_start_with(yaml: &str, admin_port: u16, concurrency: usize) -> Result<Host, Exited> {
        let (mut child, lines, dir) = spawn(yaml, concurrency);
        let admin: SocketAddr = ([127, 0, 0, 1], admin_port).into();
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(200));
                return Err(Exited {
                    code: status.code(),
                    stderr: lines.lock().unwrap().clone(),
                });
            }
            if let Ok(r) = try_request(admin, "GET", "/ready", &[], b"")
                && r.status == 200
            {
                return Ok(Host {
                    child,
                    lines,
                    admin,
                    _dir: dir,
                });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "portcullis-host not ready after {START_DEADLINE:?}; stderr:\n{}",
                    lines.lock().unwrap().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the host or fails the test with its stderr.
    pub fn start(yaml: &str, admin_port: u16) -> Host {
        Host::start_with(yaml, admin_port, 2)
    }

    /// As [`Host::start`] with `--concurrency`.
    pub fn start_with(yaml: &str, admin_port: u16, concurrency: usize) -> Host {
        match Host::try_start_with(yaml, admin_port, concurrency) {
            Ok(h) => h,
            Err(e) => panic!(
                "portcullis-host exited with {:?}:\n{}",
                e.code,
                e.stderr.join("\n")
            ),
        }
    }

    /// Everything the host printed on stderr so far.
    pub fn stderr(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits (bounded) until `count` stderr lines satisfy `pred`; returns them all.
    pub fn wait_lines(
        &self,
        pred: impl Fn(&str) -> bool,
        count: usize,
        timeout: Duration,
    ) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let found: Vec<String> = self.stderr().into_iter().filter(|l| pred(l)).collect();
            if found.len() >= count || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// GET on the admin listener.
    pub fn admin(&self, path: &str) -> Resp {
        request(self.admin, "GET", path, &[], b"")
    }

    /// A counter's value from `/stats` (0 if absent).
    pub fn counter(&self, name: &str) -> u64 {
        let text = self.admin("/stats").text();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the host on `yaml` expecting it to exit (bounded).
pub fn run_to_exit(yaml: &str, timeout: Duration) -> Exited {
    let (mut child, lines, _dir) = spawn(yaml, 2);
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            std::thread::sleep(Duration::from_millis(200));
            return Exited {
                code: status.code(),
                stderr: lines.lock().unwrap().clone(),
            };
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "portcullis-host still running after {timeout:?}:\n{}",
                lines.lock().unwrap().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.1 client.

/// A response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Resp {
    /// The first value of a header (name case-insensitive) as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?} {}", self.status, self.text()))
    }
}

/// One request on a fresh connection (`connection: close`), 30 s deadline.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> Resp {
    try_request(addr, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path} to {addr}: {e}"))
}

/// As [`request`], errors returned.
pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\n").into_bytes();
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.extend_from_slice(format!("host: {addr}\r\n").as_bytes());
    }
    for (k, v) in headers {
        req.extend_from_slice(k.as_bytes());
        req.extend_from_slice(b": ");
        req.extend_from_slice(v);
        req.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        req.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    req.extend_from_slice(b"connection: close\r\n\r\n");
    req.extend_from_slice(body);
    s.write_all(&req)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw)
}

pub fn parse_response(raw: &[u8]) -> std::io::Result<Resp> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers (connection closed early?)"))?;
    let head = &raw[..end];
    let mut rest = raw[end + 4..].to_vec();
    let mut lines = head.split(|&b| b == b'\n');
    let status_line = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let mut headers = Vec::new();
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(colon) = line.iter().position(|&b| b == b':') {
            let name = String::from_utf8_lossy(&line[..colon]).to_ascii_lowercase();
            let value = line[colon + 1..].trim_ascii().to_vec();
            headers.push((name, value));
        }
    }
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case(b"chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut at = 0;
        while let Some(nl) = rest
            .get(at..)
            .and_then(|r| r.windows(2).position(|w| w == b"\r\n"))
        {
            let size_text = String::from_utf8_lossy(&rest[at..at + nl]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("0").trim(), 16)
                .map_err(|_| bad("bad chunk size"))?;
            at += nl + 2;
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[at..(at + size).min(rest.len())]);
            at += size + 2;
        }
        rest = out;
    }
    Ok(Resp {
        status,
        headers,
        body: rest,
    })
}

/// A chunked request whose chunks are written `gap` apart (so the proxy sees several body
/// frames), 30 s deadline.
pub fn request_chunks(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
    chunks: &[&[u8]],
    gap: Duration,
) -> Resp {
    let run = || -> std::io::Result<Resp> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\n").into_bytes();
        for (k, v) in headers {
            head.extend_from_slice(format!("{k}: ").as_bytes());
            head.extend_from_slice(v);
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n");
        s.write_all(&head)?;
        // The proxy may answer (413) and close before the last chunk: a write error ends the
        // writing, and the answer is read.
        let mut write_chunk = |c: &[u8]| -> std::io::Result<()> {
            s.write_all(format!("{:x}\r\n", c.len()).as_bytes())?;
            s.write_all(c)?;
            s.write_all(b"\r\n")?;
            s.flush()
        };
        let mut open = true;
        for c in chunks {
            if write_chunk(c).is_err() {
                open = false;
                break;
            }
            std::thread::sleep(gap);
        }
        if open {
            let _ = s.write_all(b"0\r\n\r\n");
        }
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        parse_response(&raw)
    };
    run().unwrap_or_else(|e| panic!("{method} {path} to {addr}: {e}"))
}

/// Sends a request and closes the connection before any answer (a client that goes away).
pub fn abandon(addr: SocketAddr, path: &str) {
    if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        let _ = s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes());
        std::thread::sleep(Duration::from_millis(50));
    }
}
