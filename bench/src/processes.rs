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

/// A minimal OAuth 2.0 introspection endpoint (RFC 7662) on a loopback port: every POST gets
/// the same active answer, on keep-alive HTTP/1.1 connections (a thread each). Stops with the
/// process.
pub fn introspection_endpoint(answer: &str) -> Result<SocketAddr> {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
        answer.len()
    );
    std::thread::Builder::new()
        .name("introspection".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let response = response.clone();
                let _ = std::thread::Builder::new().spawn(move || {
                    let _ = stream.set_nodelay(true);
                    let Ok(mut writer) = stream.try_clone() else {
                        return;
                    };
                    let mut reader = BufReader::new(stream);
                    loop {
                        let mut length = 0usize;
                        let mut line = String::new();
                        loop {
                            line.clear();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            let lower = line.to_ascii_lowercase();
                            if let Some(v) = lower.strip_prefix("content-length:") {
                                length = v.trim().parse().unwrap_or(0);
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        let mut body = vec![0u8; length];
                        if reader.read_exact(&mut body).is_err()
                            || writer.write_all(response.as_bytes()).is_err()
                        {
                            return;
                        }
                    }
                });
            }
        })?;
    Ok(addr)
}
