//! The processes the loopback figures call besides the host: `portcullis-ratelimit` (the
//! binary `make bench` builds with the bench profile) and a `redis-server` for it. Both listen
//! on loopback ports and are killed on drop.

use crate::loopback::{TempDir, free_port, wait_for_200};
use anyhow::{Context, Result, bail};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed (and reaped) on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `redis-server` without persistence on a free loopback port.
pub struct Redis {
    _child: Killed,
    /// `redis://127.0.0.1:<port>`.
    pub url: String,
}

impl Redis {
    /// Starts it and waits for its port (at most 10 s).
    pub fn start() -> Result<Redis> {
        let port = free_port()?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .current_dir(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("redis-server is missing (make setup installs it)")?;
        let redis = Redis {
            _child: Killed(child),
            url: format!("redis://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("redis-server did not listen on {port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Ok(redis)
    }
}

/// `portcullis-ratelimit` with a given limits file, on the memory store or a Redis.
pub struct RateLimitService {
    _child: Killed,
    _config: TempDir,
    /// Its gRPC address.
    pub grpc: SocketAddr,
}

impl RateLimitService {
    /// Starts `target/release/portcullis-ratelimit` and waits until its `/healthz` answers 200
    /// (the store is reachable).
    pub fn start(
        root: &Path,
        label: &str,
        limits_yaml: &str,
        redis: Option<&Redis>,
    ) -> Result<RateLimitService> {
        let binary = root.join("target/release/portcullis-ratelimit");
        let config = TempDir::new(label)?;
        std::fs::write(config.0.join("limits.yaml"), limits_yaml)?;
        let (grpc, http): (SocketAddr, SocketAddr) = (
            ([127, 0, 0, 1], free_port()?).into(),
            ([127, 0, 0, 1], free_port()?).into(),
        );
        let mut cmd = Command::new(&binary);
        cmd.arg("--config")
            .arg(&config.0)
            .args(["--grpc-listen", &grpc.to_string()])
            .args(["--http-listen", &http.to_string()])
            .args(["--log-level", "warn"])
            .stdout(Stdio::null());
        if let Some(redis) = redis {
            cmd.args(["--redis", &redis.url]);
        }
        let child = cmd.spawn().with_context(|| {
            format!(
                "{} is missing: build it with `cargo build --profile bench -p portcullis-ratelimit` (make bench does)",
                binary.display()
            )
        })?;
        let service = RateLimitService {
            _child: Killed(child),
            _config: config,
            grpc,
        };
        wait_for_200(http, "/healthz", "portcullis-ratelimit")?;
        Ok(service)
    }
}
