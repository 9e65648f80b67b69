//! `portcullis-ratelimit --config PATH [--redis URL] [--grpc-listen ADDR] [--http-listen ADDR]`
//!
//! Envoy's rate-limit service (RLS v3) with envoyproxy/ratelimit's configuration format. Exits
//! non-zero with the file and key path when the configuration is invalid at start.

use clap::Parser;
use portcullis_ratelimit::clock::SystemClock;
use portcullis_ratelimit::server::{Server, Settings, StoreSettings};
use portcullis_ratelimit::service::{FailureMode, ServiceOptions};
use portcullis_ratelimit::store::redis::RedisOptions;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Envoy rate-limit service (envoy.service.ratelimit.v3) on memory or Redis.
#[derive(Debug, Parser)]
#[command(name = "portcullis-ratelimit", version)]
struct Cli {
    /// A YAML file, or a folder of *.yaml / *.yml files (envoyproxy/ratelimit's format);
    /// reloaded when it changes.
    #[arg(long)]
    config: PathBuf,
    /// Redis URL (redis://[user:pass@]host:port[/db] or rediss://...); with --redis-cluster, a
    /// comma-separated list of cluster nodes. Absent: counters in memory (one node).
    #[arg(long)]
    redis: Option<String>,
    /// The --redis URLs are Redis Cluster nodes.
    #[arg(long)]
    redis_cluster: bool,
    /// Bound on each Redis round trip and connection attempt, in milliseconds.
    #[arg(long, default_value_t = 500)]
    store_timeout_ms: u64,
    /// Prefix of every Redis key (outside the {hash tag}).
    #[arg(long, default_value = "rl:")]
    key_prefix: String,
    /// Answer while the store is down: unavailable (gRPC UNAVAILABLE, the caller's failure
    /// mode applies), allow (OK) or deny (OVER_LIMIT).
    #[arg(long, default_value = "unavailable", value_parser = parse_failure_mode)]
    failure_mode: FailureMode,
    /// gRPC listen address.
    #[arg(long, default_value = "0.0.0.0:8081")]
    grpc_listen: SocketAddr,
    /// HTTP listen address (/metrics, /healthz).
    #[arg(long, default_value = "0.0.0.0:8080")]
    http_listen: SocketAddr,
    /// Answer OK whatever the limits say (decisions are still counted).
    #[arg(long)]
    shadow_mode: bool,
    /// How often to check the configuration for changes, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    config_poll_ms: u64,
    /// Log format: json (one object per line) or text (key=value).
    #[arg(long, default_value = "json")]
    log_format: String,
    /// Log level filter (RUST_LOG syntax), e.g. info or portcullis_ratelimit=debug.
    #[arg(long, default_value = "info")]
    log_level: String,
}

fn parse_failure_mode(s: &str) -> Result<FailureMode, String> {
    FailureMode::parse(s).ok_or_else(|| format!("{s:?}: expected unavailable, allow or deny"))
}

fn init_logs(cli: &Cli) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log_level)
        .map_err(|e| format!("--log-level {:?}: {e}", cli.log_level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match cli.log_format.as_str() {
        "json" => builder.json().flatten_event(true).init(),
        "text" => builder.with_ansi(false).init(),
        other => return Err(format!("--log-format {other:?}: expected json or text")),
    }
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
                    _ = tokio::signal::ctrl_c() => tracing::info!(signal = "SIGINT", "shutdown requested"),
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot watch SIGTERM; SIGINT only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_logs(&cli) {
        eprintln!("portcullis-ratelimit: {e}");
        return ExitCode::from(2);
    }
    // One TLS provider for rediss:// (ring, like the host); an already installed one is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let store = match &cli.redis {
        None => StoreSettings::Memory(Arc::new(SystemClock)),
        Some(urls) => StoreSettings::Redis(RedisOptions {
            urls: urls
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect(),
            cluster: cli.redis_cluster,
            timeout: Duration::from_millis(cli.store_timeout_ms.max(1)),
        }),
    };
    let settings = Settings {
        config_path: cli.config.clone(),
        store,
        grpc_listen: cli.grpc_listen,
        http_listen: cli.http_listen,
        service: ServiceOptions {
            failure_mode: cli.failure_mode,
            key_prefix: cli.key_prefix.clone(),
            global_shadow_mode: cli.shadow_mode,
        },
        config_poll: Duration::from_millis(cli.config_poll_ms.max(10)),
        drain_timeout: Duration::from_secs(10),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portcullis-ratelimit: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let server = Server::bind(settings).await?;
        server.run(shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "portcullis-ratelimit failed");
            eprintln!("portcullis-ratelimit: {e}");
            ExitCode::FAILURE
        }
    }
}
