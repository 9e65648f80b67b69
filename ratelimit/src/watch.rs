//! Reloads the configuration when its file, or a file in its folder, changes.
//!
//! Polls modification times and sizes every interval (1 s by default): simple, portable, and
//! it sees symlink swaps (Kubernetes ConfigMaps) because metadata follows links. A new
//! configuration that fails to load is logged and counted, and the one in force stays.

use crate::config::{RateLimitConfig, config_files};
use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// What the watcher compares between polls: each file's name, mtime and size.
type Fingerprint = Vec<(PathBuf, Option<SystemTime>, u64)>;

/// The current fingerprint of a configuration path (an empty one when it cannot be listed).
fn fingerprint(path: &Path) -> Fingerprint {
    let mut files = config_files(path).unwrap_or_default();
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let meta = std::fs::metadata(&f).ok();
            let mtime = meta.as_ref().and_then(|m| m.modified().ok());
            let len = meta.map_or(0, |m| m.len());
            (f, mtime, len)
        })
        .collect()
}

/// Watches `path` and swaps `current` when it changes, until `stop` resolves.
pub async fn watch(
    path: PathBuf,
    current: Arc<ArcSwap<RateLimitConfig>>,
    metrics: Arc<Metrics>,
    interval: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut seen = fingerprint(&path);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = ticker.tick() => {}
        }
        let now = fingerprint(&path);
        if now == seen {
            continue;
        }
        seen = now;
        match RateLimitConfig::load(&path, &metrics) {
            Ok(config) => {
                let domains = config.domain_count();
                current.store(Arc::new(config));
                metrics.config_load(Ok(domains));
                tracing::info!(path = %path.display(), domains, "configuration reloaded");
            }
            Err(error) => {
                metrics.config_load(Err(()));
                tracing::error!(
                    path = %path.display(),
                    %error,
                    "new configuration rejected; the previous one stays in force"
                );
            }
        }
    }
}
