//! Test harness: Redis servers and clusters started on free loopback ports, the service started
//! in-process on ephemeral ports, a gRPC client, request builders, a tiny HTTP GET.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

pub mod suite;

use portcullis_ratelimit::clock::Clock;
use portcullis_ratelimit::proto::rate_limit_descriptor::{Entry, RateLimitOverride};
use portcullis_ratelimit::proto::rate_limit_response::{Code, DescriptorStatus};
use portcullis_ratelimit::proto::{
    RateLimitDescriptor, RateLimitRequest, RateLimitResponse, RateLimitServiceClient,
};
use portcullis_ratelimit::server::{Server, Settings, StoreSettings};
use portcullis_ratelimit::service::{FailureMode, ServiceOptions};
use portcullis_ratelimit::store::redis::RedisOptions;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

/// A loopback port nothing listens on (nor on `port + 10000`, Redis Cluster's bus port).
pub fn free_port() -> u16 {
    for _ in 0..200 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair");
}

fn redis_cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits (bounded) until `f` holds.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// One redis-server on a loopback port, without persistence; killed on drop.
pub struct RedisServer {
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
    cluster: bool,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_on(free_port(), false)
    }

    fn start_on(port: u16, cluster: bool) -> Self {
        let mut server = Self {
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
            cluster,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ])
        .current_dir(self.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if self.cluster {
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ]);
        }
        let child = cmd
            .spawn()
            .expect("redis-server must be installed (make setup installs it)");
        self.child = Some(child);
        let port = self.port;
        wait_until(
            "redis-server to answer PING",
            Duration::from_secs(10),
            || redis_cli(port, &["PING"]).is_some_and(|s| s.trim() == "PONG"),
        );
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (and, for a cluster node, with its nodes.conf).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn cli(&self, args: &[&str]) -> Option<String> {
        redis_cli(self.port, args)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A 3-master Redis Cluster on loopback (no replicas).
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> Self {
        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < 3 {
            let p = free_port();
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        let nodes: Vec<RedisServer> = ports
            .iter()
            .map(|p| RedisServer::start_on(*p, true))
            .collect();
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let mut args: Vec<&str> = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        let out = Command::new("redis-cli").args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for node in &nodes {
            wait_until("cluster_state:ok", Duration::from_secs(20), || {
                node.cli(&["CLUSTER", "INFO"])
                    .is_some_and(|s| s.contains("cluster_state:ok"))
            });
        }
        Self { nodes }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}

/// Which store a test service uses.
#[derive(Clone)]
pub enum Backend {
    Memory(Arc<dyn Clock>),
    Redis(String),
    Cluster(Vec<String>),
}

impl Backend {
    fn store(&self) -> StoreSettings {
        match self {
            Self::Memory(clock) => StoreSettings::Memory(clock.clone()),
            Self::Redis(url) => StoreSettings::Redis(RedisOptions {
                urls: vec![url.clone()],
                cluster: false,
                timeout: Duration::from_millis(300),
            }),
            Self::Cluster(urls) => StoreSettings::Redis(RedisOptions {
                urls: urls.clone(),
                cluster: true,
                timeout: Duration::from_millis(500),
            }),
        }
    }

    pub fn is_redis(&self) -> bool {
        !matches!(self, Self::Memory(_))
    }
}

/// A running in-process service; stopped on drop.
pub struct Service {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub config_dir: TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Service {
    pub async fn start(config: &str, backend: &Backend) -> Self {
        Self::start_with(config, backend, FailureMode::Unavailable, "rl:").await
    }

    pub async fn start_with(
        config: &str,
        backend: &Backend,
        failure_mode: FailureMode,
        key_prefix: &str,
    ) -> Self {
        let config_dir = tempfile::tempdir().unwrap();
        std::fs::write(config_dir.path().join("config.yaml"), config).unwrap();
        Self::start_dir(config_dir, backend, failure_mode, key_prefix).await
    }

    pub async fn start_dir(
        config_dir: TempDir,
        backend: &Backend,
        failure_mode: FailureMode,
        key_prefix: &str,
    ) -> Self {
        let settings = Settings {
            config_path: config_dir.path().to_owned(),
            store: backend.store(),
            grpc_listen: "127.0.0.1:0".parse().unwrap(),
            http_listen: "127.0.0.1:0".parse().unwrap(),
            service: ServiceOptions {
                failure_mode,
                key_prefix: key_prefix.to_owned(),
                global_shadow_mode: false,
            },
            config_poll: Duration::from_millis(100),
            drain_timeout: Duration::from_secs(2),
        };
        let server = Server::bind(settings).await.unwrap();
        let grpc = server.grpc_addr().unwrap();
        let http = server.http_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Self {
            grpc,
            http,
            config_dir,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.config_dir.path().join("config.yaml")
    }

    pub async fn client(&self) -> RateLimitServiceClient<Channel> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match RateLimitServiceClient::connect(format!("http://{}", self.grpc)).await {
                Ok(c) => return c,
                Err(e) if Instant::now() > deadline => panic!("connect: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.http, path).await
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("service stops within 5 s")
                .unwrap();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A GET over HTTP/1.1 with `Connection: close`; returns the status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let work = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status: u16 = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap();
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .expect("HTTP GET within 5 s")
}

/// A descriptor from (key, value) pairs.
pub fn descriptor(pairs: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: pairs
            .iter()
            .map(|(k, v)| Entry {
                key: (*k).into(),
                value: (*v).into(),
            })
            .collect(),
        ..Default::default()
    }
}

/// A descriptor with a limit override.
pub fn descriptor_override(
    pairs: &[(&str, &str)],
    per_unit: u32,
    unit: i32,
) -> RateLimitDescriptor {
    RateLimitDescriptor {
        limit: Some(RateLimitOverride {
            requests_per_unit: per_unit,
            unit,
        }),
        ..descriptor(pairs)
    }
}

/// A request for one or more descriptors.
pub fn request(domain: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.into(),
        descriptors,
        hits_addend: 0,
    }
}

/// Sends a request; panics on a gRPC error.
pub async fn ask(
    client: &mut RateLimitServiceClient<Channel>,
    req: RateLimitRequest,
) -> RateLimitResponse {
    tokio::time::timeout(Duration::from_secs(5), client.should_rate_limit(req))
        .await
        .expect("answer within 5 s")
        .expect("gRPC OK")
        .into_inner()
}

/// Whether a response's overall code is OK.
pub fn is_ok(r: &RateLimitResponse) -> bool {
    r.overall_code == Code::Ok as i32
}

/// Whether a status is OVER_LIMIT.
pub fn over(s: &DescriptorStatus) -> bool {
    s.code == Code::OverLimit as i32
}

/// A unique name, so tests sharing a Redis never share counters.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{nanos}-{}", N.fetch_add(1, Ordering::Relaxed))
}

/// Writes `text` to `path` atomically (write then rename), as config tooling does.
pub fn write_config(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
