//! `portcullis-ratelimit` in this process, on a tokio runtime of its own: the real service
//! (the crate's own [`Server`]), its limits written to a temporary folder in envoyproxy/ratelimit
//! YAML, its gRPC (RLS v3) and HTTP (`/metrics`, `/healthz`) listeners on 127.0.0.1 ports the
//! kernel picks. Envoy reaches it through an HTTP/2 cluster
//! ([`crate::bootstrap::cluster`] with [`crate::bootstrap::Protocol::Http2`]).

use crate::net::TempDir;
use portcullis_ratelimit::clock::SystemClock;
use portcullis_ratelimit::server::{Server, Settings, StoreSettings};
use portcullis_ratelimit::service::{FailureMode, ServiceOptions};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Why the service did not start.
#[derive(Debug)]
pub enum RlsError {
    /// The limits could not be written, or the runtime not built.
    Io(std::io::Error),
    /// The service refused to start (an invalid configuration, say).
    Start(String),
}

impl fmt::Display for RlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RlsError::Io(e) => write!(f, "rate-limit service: {e}"),
            RlsError::Start(e) => write!(f, "rate-limit service did not start: {e}"),
        }
    }
}

impl std::error::Error for RlsError {}

impl From<std::io::Error> for RlsError {
    fn from(e: std::io::Error) -> Self {
        RlsError::Io(e)
    }
}

/// The running service; stopped with its runtime on drop.
pub struct RateLimitService {
    grpc: SocketAddr,
    http: SocketAddr,
    // Dropped first: the service stops before its configuration folder goes.
    _runtime: tokio::runtime::Runtime,
    _config: TempDir,
}

impl RateLimitService {
    /// Starts the service on `store` with `limits` (envoyproxy/ratelimit YAML) as its only
    /// configuration file. The same settings as the binary's defaults, apart from the
    /// listeners: failure mode `unavailable`, key prefix `rl:`, no global shadow mode.
    pub fn start(limits: &str, store: StoreSettings) -> Result<RateLimitService, RlsError> {
        let dir = TempDir::new()?;
        std::fs::write(dir.path().join("limits.yaml"), limits)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("portcullis-ratelimit")
            .enable_all()
            .build()?;
        let any_port = SocketAddr::from((crate::net::LOOPBACK, 0));
        let settings = Settings {
            config_path: dir.path().to_path_buf(),
            store,
            grpc_listen: any_port,
            http_listen: any_port,
            service: ServiceOptions {
                failure_mode: FailureMode::Unavailable,
                key_prefix: "rl:".to_owned(),
                global_shadow_mode: false,
            },
            config_poll: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(1),
        };
        let server = runtime
            .block_on(Server::bind(settings))
            .map_err(|e| RlsError::Start(e.to_string()))?;
        let (Some(grpc), Some(http)) = (server.grpc_addr(), server.http_addr()) else {
            return Err(RlsError::Start("no listener address".to_owned()));
        };
        runtime.spawn(server.run(std::future::pending()));
        Ok(RateLimitService {
            grpc,
            http,
            _runtime: runtime,
            _config: dir,
        })
    }

    /// As [`RateLimitService::start`], on the memory store (the system clock).
    pub fn memory(limits: &str) -> Result<RateLimitService, RlsError> {
        RateLimitService::start(limits, StoreSettings::Memory(Arc::new(SystemClock)))
    }

    /// The gRPC (RLS v3) address, for Envoy's HTTP/2 cluster.
    pub fn grpc(&self) -> SocketAddr {
        self.grpc
    }

    /// The HTTP address (`/metrics`, `/healthz`).
    pub fn http(&self) -> SocketAddr {
        self.http
    }
}
