//! The Redis store: standalone or Cluster, `redis://` or `rediss://`, AUTH from the URL.
//!
//! Each request is one `EVALSHA` of `decide.lua` carrying all its checks (standalone), or one
//! per Cluster slot, sent concurrently (a descriptor's key carries a `{…}` hash tag, so it always
//! lives in one slot; different descriptors usually live in different slots). The script is
//! loaded on first use and again after a `NOSCRIPT` (a restarted Redis).
//!
//! Connections are made lazily and remade by the client after Redis restarts; every call is
//! bounded by the store timeout, so a dead Redis costs a request at most that long.

use crate::algorithm::{Algorithm, Outcome};
use crate::store::{Check, StoreError};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::io::tcp::TcpSettings;
use redis::{IntoConnectionInfo, RedisError, Script};
use std::time::Duration;

/// The decision script.
const SCRIPT: &str = include_str!("decide.lua");

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// One URL (standalone) or the Cluster's seed nodes: `redis://[user:pass@]host:port[/db]`,
    /// `rediss://…` for TLS.
    pub urls: Vec<String>,
    /// Whether `urls` are Redis Cluster nodes.
    pub cluster: bool,
    /// Bound on every round trip (and connection attempt).
    pub timeout: Duration,
}

enum Connection {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Counters in Redis.
pub struct RedisStore {
    connection: Connection,
    script: Script,
    timeout: Duration,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field(
                "cluster",
                &matches!(self.connection, Connection::Cluster(_)),
            )
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Sorts a client error into connection trouble (the store is down) and anything else.
fn classify(e: &RedisError) -> StoreError {
    if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() || e.is_timeout() {
        StoreError::Connection(e.to_string())
    } else {
        StoreError::Redis(e.to_string())
    }
}

impl RedisStore {
    /// Prepares the client without connecting (the first request connects), so the service
    /// starts, and answers per its failure mode, while Redis is still down. Must be called
    /// inside a Tokio runtime.
    pub fn new(options: &RedisOptions) -> Result<Self, StoreError> {
        let bad_url = |e: RedisError| StoreError::Redis(format!("invalid redis URL: {e}"));
        // Small requests multiplexed on one connection: with Nagle's algorithm a request
        // written while the previous one is unacknowledged waits for the server's delayed ACK
        // (~40 ms on Linux), which showed as a 40 ms p99 in `make bench`.
        let tcp = TcpSettings::default().set_nodelay(true);
        let connection = if options.cluster {
            let client = ClusterClientBuilder::new(options.urls.clone())
                .tcp_settings(tcp)
                .retries(2)
                .min_retry_wait(10)
                .max_retry_wait(200)
                .connection_timeout(options.timeout)
                .response_timeout(options.timeout)
                .build()
                .map_err(bad_url)?;
            Connection::Cluster(
                client.get_pending_async_connection_with_config(
                    ClusterConfig::new()
                        .set_connection_timeout(options.timeout)
                        .set_response_timeout(options.timeout),
                ),
            )
        } else {
            let [url] = options.urls.as_slice() else {
                return Err(StoreError::Redis(
                    "a standalone Redis takes exactly one URL (use --redis-cluster for several)"
                        .into(),
                ));
            };
            let info = url
                .as_str()
                .into_connection_info()
                .map_err(bad_url)?
                .set_tcp_settings(tcp);
            let client = redis::Client::open(info).map_err(bad_url)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(options.timeout))
                .set_response_timeout(Some(options.timeout))
                .set_number_of_retries(1)
                .set_min_delay(Duration::from_millis(10))
                .set_max_delay(Duration::from_millis(200));
            Connection::Standalone(
                ConnectionManager::new_lazy_with_config(client, config).map_err(bad_url)?,
            )
        };
        Ok(Self {
            connection,
            script: Script::new(SCRIPT),
            timeout: options.timeout,
        })
    }

    /// Decides every check (one script call, or one per Cluster slot in parallel).
    pub async fn check(&self, checks: &[Check]) -> Result<Vec<Outcome>, StoreError> {
        if checks.is_empty() {
            return Ok(Vec::new());
        }
        let work = async {
            match &self.connection {
                Connection::Standalone(manager) => {
                    self.invoke(&mut manager.clone(), checks.iter()).await
                }
                Connection::Cluster(cluster) => self.check_cluster(cluster, checks).await,
            }
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| StoreError::Timeout(self.timeout))?
    }

    /// Groups checks by slot; one call per group, all groups at once.
    async fn check_cluster(
        &self,
        cluster: &ClusterConnection,
        checks: &[Check],
    ) -> Result<Vec<Outcome>, StoreError> {
        let slots: Vec<Slot> = checks.iter().map(|c| Slot::for_key(&c.key)).collect();
        let mut groups: Vec<Slot> = Vec::new();
        for slot in &slots {
            if !groups.contains(slot) {
                groups.push(*slot);
            }
        }
        if groups.len() <= 1 {
            return self.invoke(&mut cluster.clone(), checks.iter()).await;
        }
        let calls = groups.iter().map(|slot| {
            let mut connection = cluster.clone();
            let members = checks
                .iter()
                .zip(slots.iter())
                .filter(move |(_, s)| *s == slot)
                .map(|(c, _)| c);
            async move { self.invoke(&mut connection, members).await }
        });
        let results = futures_util::future::try_join_all(calls).await?;
        // Put the outcomes back in the checks' order.
        let mut per_group: Vec<std::vec::IntoIter<Outcome>> =
            results.into_iter().map(Vec::into_iter).collect();
        let mut out = Vec::with_capacity(checks.len());
        for slot in &slots {
            let group = groups.iter().position(|g| g == slot);
            let next = group
                .and_then(|g| per_group.get_mut(g))
                .and_then(Iterator::next);
            match next {
                Some(outcome) => out.push(outcome),
                None => return Err(StoreError::Reply("fewer outcomes than checks".into())),
            }
        }
        Ok(out)
    }

    /// One `EVALSHA` (loading the script on `NOSCRIPT`) for `checks`, which share a slot.
    async fn invoke<'c, C: redis::aio::ConnectionLike>(
        &self,
        connection: &mut C,
        checks: impl Iterator<Item = &'c Check>,
    ) -> Result<Vec<Outcome>, StoreError> {
        let mut invocation = self.script.prepare_invoke();
        let mut count = 0usize;
        for c in checks {
            let (alg, burst) = match c.limit.algorithm {
                Algorithm::FixedWindow => (1u8, 0u32),
                Algorithm::Gcra { burst } => (2u8, burst.max(1)),
            };
            let hits = i64::try_from(c.hits.count).unwrap_or(i64::MAX);
            invocation
                .key(&c.key)
                .arg(alg)
                .arg(c.limit.requests_per_unit)
                .arg(c.limit.unit.micros())
                .arg(burst)
                .arg(if c.hits.refund { -hits } else { hits });
            count += 1;
        }
        let reply: Vec<i64> = invocation
            .invoke_async(connection)
            .await
            .map_err(|e| classify(&e))?;
        if reply.len() != count * 3 {
            return Err(StoreError::Reply(format!(
                "{} integers for {count} checks",
                reply.len()
            )));
        }
        Ok(reply
            .chunks_exact(3)
            .map(|c| match *c {
                [allowed, remaining, reset] => Outcome {
                    allowed: allowed == 1,
                    remaining: u64::try_from(remaining).unwrap_or(0),
                    reset: Duration::from_micros(u64::try_from(reset).unwrap_or(0)),
                },
                _ => Outcome {
                    allowed: false,
                    remaining: 0,
                    reset: Duration::ZERO,
                },
            })
            .collect())
    }

    /// `PING`, bounded by the store timeout.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let work = async {
            let cmd = redis::cmd("PING");
            let reply: Result<String, RedisError> = match &self.connection {
                Connection::Standalone(m) => cmd.query_async(&mut m.clone()).await,
                Connection::Cluster(c) => cmd.query_async(&mut c.clone()).await,
            };
            reply.map(|_| ()).map_err(|e| classify(&e))
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| StoreError::Timeout(self.timeout))?
    }
}
