//! What the integration tests share: the header decision for a request from a fixed client,
//! with its own shared-data store, at a time given in seconds.

use portcullis::burst::MemoryStore;
use portcullis::cache::TokenCache;
use portcullis::config::Config;
use portcullis::decision::{self, Decision, Env};
use portcullis::request::Request;

/// The peer address of test requests (TEST-NET-3).
pub const PEER: &str = "203.0.113.7";

/// Decides a request without a body from [`PEER`] at `now` (seconds since the epoch).
pub fn decide(config: &Config, cache: &mut TokenCache, req: &Request<'_>, now: u64) -> Decision {
    let store = MemoryStore::default();
    let mut env = Env {
        cache,
        store: &store,
        now_ns: now.saturating_mul(1_000_000_000),
        peer: PEER.parse().ok(),
        remote_keys: &portcullis::jwks::RemoteKeys::default(),
        introspected: &mut portcullis::introspect::IntrospectionCache::default(),
        answer: None,
        waited: Default::default(),
        end_of_stream: true,
    };
    decision::decide(config, &mut env, req)
}
