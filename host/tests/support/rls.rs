//! `portcullis-ratelimit` in this process, on a runtime of its own, for the end-to-end suites.

use super::TempDir;
use portcullis_ratelimit::server::{Server, Settings, StoreSettings};
use portcullis_ratelimit::service::{FailureMode, ServiceOptions};
use std::net::SocketAddr;
use std::time::Duration;

/// The running service; stopped with its runtime when dropped.
pub struct RateLimitService {
    /// gRPC (RLS v3).
    pub grpc: SocketAddr,
    /// HTTP (`/metrics`, `/healthz`).
    pub http: SocketAddr,
    _runtime: tokio::runtime::Runtime,
    _config: TempDir,
}

/// Starts the service on `store` with `limits` (envoyproxy/ratelimit YAML) as its configuration,
/// both listeners on 127.0.0.1 ports the kernel picks.
pub fn start(limits: &str, store: StoreSettings) -> RateLimitService {
    let dir = TempDir::new();
    std::fs::write(dir.0.join("limits.yaml"), limits).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let settings = Settings {
        config_path: dir.0.clone(),
        store,
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        service: ServiceOptions {
            failure_mode: FailureMode::Unavailable,
            key_prefix: "rl:".to_owned(),
            global_shadow_mode: false,
        },
        config_poll: Duration::from_secs(1),
        drain_timeout: Duration::from_secs(1),
    };
    let server = runtime.block_on(Server::bind(settings)).unwrap();
    let (grpc, http) = (server.grpc_addr().unwrap(), server.http_addr().unwrap());
    runtime.spawn(server.run(std::future::pending()));
    RateLimitService {
        grpc,
        http,
        _runtime: runtime,
        _config: dir,
    }
}
