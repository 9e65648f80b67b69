//! Where counters live: in this process ([`memory`]) or in Redis ([`redis`]).
//!
//! A request's checks go to the store together; each check is decided atomically (a mutex
//! shard in memory, one Lua script call in Redis), so a limit holds across any number of
//! service replicas sharing a Redis.

pub mod memory;
pub mod redis;

use crate::algorithm::{Hits, Limit, Outcome};
use std::time::Duration;

/// One descriptor to decide: its storage key, its limit and the hits it adds.
#[derive(Debug, Clone)]
pub struct Check {
    /// The counter's key (see [`storage_key`]).
    pub key: String,
    /// The limit to apply.
    pub limit: Limit,
    /// The hits to add (or give back).
    pub hits: Hits,
}

/// Why the store could not decide.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No answer within the store timeout.
    #[error("store timed out after {0:?}")]
    Timeout(Duration),
    /// Redis refused, dropped or could not make the connection.
    #[error("redis connection: {0}")]
    Connection(String),
    /// Redis answered with an error (script, cluster routing, ...).
    #[error("redis: {0}")]
    Redis(String),
    /// Redis answered something the script never returns.
    #[error("unexpected reply from redis: {0}")]
    Reply(String),
}

impl StoreError {
    /// A short kind for `ratelimit_store_errors_total{name}`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Connection(_) => "connection",
            Self::Redis(_) => "redis",
            Self::Reply(_) => "reply",
        }
    }
}

/// The configured store.
#[derive(Debug)]
pub enum Store {
    /// Counters in this process (one node).
    Memory(memory::MemoryStore),
    /// Counters in Redis, standalone or Cluster.
    Redis(redis::RedisStore),
}

impl Store {
    /// Decides every check, in order; atomic per check.
    pub async fn check(&self, checks: &[Check]) -> Result<Vec<Outcome>, StoreError> {
        match self {
            Self::Memory(m) => Ok(m.check(checks)),
            Self::Redis(r) => r.check(checks).await,
        }
    }

    /// Whether the store answers (for `/healthz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Self::Memory(_) => Ok(()),
            Self::Redis(r) => r.ping().await,
        }
    }

    /// `memory` or `redis`, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Memory(_) => "memory",
            Self::Redis(_) => "redis",
        }
    }
}

/// Appends `s` to `out`, percent-escaping the characters that delimit a storage key, so that
/// distinct descriptors never share a key.
fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            '|' => out.push_str("%7C"),
            '=' => out.push_str("%3D"),
            ':' => out.push_str("%3A"),
            _ => out.push(c),
        }
    }
}

/// The storage key of a descriptor: `PREFIX{domain|k1=v1|k2=v2}:ALG:UNIT`.
///
/// The braces are a Redis Cluster hash tag: all of one descriptor's keys hash to one slot. The
/// suffix keeps counters of different algorithms or units apart. `values` yields each entry's
/// (key, value), the value already replaced by its wildcard pattern for `share_threshold`.
pub fn storage_key<'a>(
    prefix: &str,
    domain: &str,
    entries: impl Iterator<Item = (&'a str, &'a str)>,
    limit: &Limit,
) -> String {
    let mut key = String::with_capacity(prefix.len() + domain.len() + 48);
    key.push_str(prefix);
    key.push('{');
    escape_into(&mut key, domain);
    for (k, v) in entries {
        key.push('|');
        escape_into(&mut key, k);
        key.push('=');
        escape_into(&mut key, v);
    }
    key.push_str("}:");
    key.push_str(limit.key_suffix());
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::{Algorithm, Unit};

    #[test]
    fn keys_are_tagged_escaped_and_distinct() {
        let limit = Limit {
            requests_per_unit: 1,
            unit: Unit::Second,
            algorithm: Algorithm::FixedWindow,
        };
        let k = storage_key("rl:", "d", [("a", "b}|c=d")].into_iter(), &limit);
        assert_eq!(k, "rl:{d|a=b%7D%7Cc%3Dd}:fw:second");
        let k1 = storage_key("", "d", [("a", "b|c=d")].into_iter(), &limit);
        let k2 = storage_key("", "d", [("a", "b"), ("c", "d")].into_iter(), &limit);
        assert_ne!(k1, k2);
        let gcra = Limit {
            algorithm: Algorithm::Gcra { burst: 2 },
            ..limit
        };
        assert_ne!(
            storage_key("", "d", [("a", "b")].into_iter(), &limit),
            storage_key("", "d", [("a", "b")].into_iter(), &gcra)
        );
    }
}
