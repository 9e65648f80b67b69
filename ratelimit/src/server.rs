//! Wires the service together: configuration and its watcher, the store, the gRPC and HTTP
//! listeners, graceful shutdown.

use crate::clock::Clock;
use crate::config::{ConfigError, RateLimitConfig};
use crate::http::{self, HttpState};
use crate::metrics::Metrics;
use crate::proto::RateLimitServiceServer;
use crate::service::{RateLimiter, ServiceOptions};
use crate::store::memory::MemoryStore;
use crate::store::redis::{RedisOptions, RedisStore};
use crate::store::{Store, StoreError};
use crate::watch;
use arc_swap::ArcSwap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;

/// Which store to use.
#[derive(Clone)]
pub enum StoreSettings {
    /// In this process, with the given clock (the system clock outside tests).
    Memory(Arc<dyn Clock>),
    /// Redis.
    Redis(RedisOptions),
}

impl std::fmt::Debug for StoreSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory(_) => f.write_str("Memory"),
            Self::Redis(o) => f.debug_tuple("Redis").field(&o.cluster).finish(),
        }
    }
}

/// Everything the service is started with (the command line's options).
#[derive(Debug, Clone)]
pub struct Settings {
    /// A YAML file or a folder of them.
    pub config_path: PathBuf,
    /// The store.
    pub store: StoreSettings,
    /// gRPC address (default 0.0.0.0:8081).
    pub grpc_listen: SocketAddr,
    /// HTTP address for /metrics and /healthz (default 0.0.0.0:8080).
    pub http_listen: SocketAddr,
    /// Failure mode, key prefix, global shadow mode.
    pub service: ServiceOptions,
    /// How often the configuration's files are checked for changes.
    pub config_poll: Duration,
    /// How long in-flight gRPC calls may take to finish after a shutdown signal.
    pub drain_timeout: Duration,
}

/// Why the service did not start (or stopped with an error).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration at start is invalid.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The store could not be set up (a bad Redis URL).
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The gRPC server failed.
    #[error("grpc server: {0}")]
    Serve(String),
}

/// A service whose configuration is loaded and listeners bound, ready to [`Server::run`].
#[derive(Debug)]
pub struct Server {
    settings: Settings,
    config: Arc<ArcSwap<RateLimitConfig>>,
    metrics: Arc<Metrics>,
    store: Arc<Store>,
    grpc: TcpListener,
    http: TcpListener,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

impl Server {
    /// Loads the configuration (an error names the file and the key path), prepares the store
    /// and binds both listeners. Must run inside a Tokio runtime.
    pub async fn bind(settings: Settings) -> Result<Self, StartError> {
        let metrics = Arc::new(Metrics::new());
        let config = match RateLimitConfig::load(&settings.config_path, &metrics) {
            Ok(config) => {
                metrics.config_load(Ok(config.domain_count()));
                config
            }
            Err(e) => {
                metrics.config_load(Err(()));
                return Err(e.into());
            }
        };
        tracing::info!(
            path = %settings.config_path.display(),
            domains = config.domain_count(),
            "configuration loaded"
        );
        let store = Arc::new(match &settings.store {
            StoreSettings::Memory(clock) => Store::Memory(MemoryStore::new(clock.clone())),
            StoreSettings::Redis(options) => Store::Redis(RedisStore::new(options)?),
        });
        let grpc = bind(settings.grpc_listen).await?;
        let http = bind(settings.http_listen).await?;
        Ok(Self {
            config: Arc::new(ArcSwap::from_pointee(config)),
            metrics,
            store,
            grpc,
            http,
            settings,
        })
    }

    /// The bound gRPC address (useful with port 0).
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.local_addr().ok()
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.local_addr().ok()
    }

    /// The metrics registry (tests read counters through `/metrics` instead, usually).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Serves until `shutdown` resolves; then health turns 503, the gRPC server stops
    /// accepting and lets in-flight calls finish (up to the drain timeout), and everything
    /// stops.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
        let Self {
            settings,
            config,
            metrics,
            store,
            grpc,
            http,
        } = self;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        };
        let draining = Arc::new(AtomicBool::new(false));
        let http_addr = http.local_addr().ok();

        let watcher = tokio::spawn(watch::watch(
            settings.config_path.clone(),
            config.clone(),
            metrics.clone(),
            settings.config_poll,
            stopped(),
        ));
        let http_task = tokio::spawn(http::serve(
            http,
            HttpState {
                metrics: metrics.clone(),
                store: store.clone(),
                draining: draining.clone(),
            },
            stopped(),
        ));
        let sweeper = {
            let store = store.clone();
            let stop = stopped();
            tokio::spawn(async move {
                tokio::pin!(stop);
                let mut ticker = tokio::time::interval(Duration::from_secs(10));
                loop {
                    tokio::select! {
                        () = &mut stop => return,
                        _ = ticker.tick() => {
                            if let Store::Memory(m) = store.as_ref() {
                                m.sweep();
                            }
                        }
                    }
                }
            })
        };

        let limiter = RateLimiter::new(config, store.clone(), metrics, settings.service.clone());
        let grpc_addr = grpc.local_addr().ok();
        tracing::info!(
            grpc = ?grpc_addr,
            http = ?http_addr,
            store = store.kind(),
            "portcullis-ratelimit listening"
        );
        let grpc_stop = stopped();
        // A listener handed to tonic keeps Nagle's algorithm unless told: small gRPC frames
        // then wait for the client's delayed ACK (the 40 ms p99 `make bench` showed).
        let incoming = tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true));
        let server = tonic::transport::Server::builder()
            .add_service(RateLimitServiceServer::new(limiter))
            .serve_with_incoming_shutdown(incoming, grpc_stop);
        tokio::pin!(server);
        tokio::pin!(shutdown);
        let result = tokio::select! {
            result = &mut server => result.map_err(|e| StartError::Serve(e.to_string())),
            () = &mut shutdown => {
                tracing::info!("shutting down: draining in-flight calls");
                draining.store(true, Ordering::SeqCst);
                let _ = stop_tx.send(true);
                match tokio::time::timeout(settings.drain_timeout, &mut server).await {
                    Ok(result) => result.map_err(|e| StartError::Serve(e.to_string())),
                    Err(_) => {
                        tracing::warn!("drain timeout: closing remaining connections");
                        Ok(())
                    }
                }
            }
        };
        let _ = stop_tx.send(true);
        for task in [watcher, http_task, sweeper] {
            let _ = task.await;
        }
        tracing::info!("stopped");
        result
    }
}
