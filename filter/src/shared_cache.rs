//! Verified tokens and introspection answers shared by the workers of one Envoy, in proxy-wasm
//! shared data: a token verified by one worker is accepted by the others without verifying it
//! again (or asking the introspection endpoint again).
//!
//! Shared data cannot delete keys, so the cache is a fixed table of slots
//! (`verified_token_cache.shared_slots`, keys `portcullis.tok.<slot>`), each holding the latest
//! entry whose token hashes to it; a newer entry overwrites an older one, whatever its
//! configuration. An entry names its configuration (a fingerprint
//! of the whole plugin configuration), its provider, the token's SHA-256 and, for fetched
//! keys, the key set it was verified with, so it never serves another configuration, another
//! provider, another token or a key set that has changed since. What is stored is what the
//! claims are re-read from — the JWT's payload segment or the introspection answer — and the
//! reader checks the claims again (times, issuer, audience), which costs far less than a
//! signature or a call.

use crate::burst::SharedStore;
use crate::config::Config;

/// Entries larger than this are not shared (a slot table of large tokens would hold a lot of
/// memory in every Envoy).
pub const MAX_SHARED_PAYLOAD: usize = 8 * 1024;

const FORMAT: u8 = 1;
const HEADER: usize = 1 + 8 + 1 + 4 + 32 + 8 + 8;

/// What an entry's payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A verified JWT's payload segment (base64url).
    Jwt = 0,
    /// An introspection answer (JSON), as received.
    Introspection = 1,
}

/// The shared slot table of one configuration.
pub struct SharedTokens<'s> {
    store: &'s dyn SharedStore,
    fingerprint: u64,
    slots: u32,
}

/// One entry's identity: which provider, which token, which key set (0 for inline keys and
/// introspection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryId<'h> {
    /// Provider index.
    pub provider: usize,
    /// SHA-256 of the token.
    pub hash: &'h [u8; 32],
    /// Version of the key set the token was verified with.
    pub stamp: u64,
    /// What the payload is.
    pub kind: Kind,
}

impl<'s> SharedTokens<'s> {
    /// The table for `config`, or `None` when sharing is off (`shared_slots: 0`).
    pub fn new(store: &'s dyn SharedStore, config: &Config) -> Option<Self> {
        (config.shared_cache_slots > 0).then_some(SharedTokens {
            store,
            fingerprint: config.fingerprint,
            slots: config.shared_cache_slots,
        })
    }

    /// The slot's key. The configuration is in the entry, not in the key: a new
    /// configuration reuses the same slots instead of leaving a table behind.
    fn key(&self, hash: &[u8; 32]) -> String {
        let [a, b, c, d, ..] = *hash;
        let slot = u32::from_be_bytes([a, b, c, d]) % self.slots;
        format!("portcullis.tok.{slot}")
    }

    /// The payload stored for exactly this entry, if it is still valid at `now` (seconds).
    pub fn get(&self, id: EntryId<'_>, now: u64) -> Option<(u64, Vec<u8>)> {
        let (value, _) = self.store.get(&self.key(id.hash))?;
        let header = value.get(..HEADER)?;
        let until = read_until(header)?;
        if header != encode_header(self.fingerprint, id, until).as_slice() {
            return None;
        }
        (now < until).then(|| (until, value.get(HEADER..).unwrap_or_default().to_vec()))
    }

    /// Shares an entry valid until `until` (seconds); a larger payload is not shared.
    pub fn put(&self, id: EntryId<'_>, until: u64, payload: &[u8]) {
        if payload.len() > MAX_SHARED_PAYLOAD {
            return;
        }
        let mut value = encode_header(self.fingerprint, id, until);
        value.extend_from_slice(payload);
        let _ = self.store.set(&self.key(id.hash), &value, None);
    }
}

fn encode_header(fingerprint: u64, id: EntryId<'_>, until: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER + 256);
    v.push(FORMAT);
    v.extend_from_slice(&fingerprint.to_le_bytes());
    v.push(id.kind as u8);
    v.extend_from_slice(&u32::try_from(id.provider).unwrap_or(u32::MAX).to_le_bytes());
    v.extend_from_slice(id.hash);
    v.extend_from_slice(&id.stamp.to_le_bytes());
    v.extend_from_slice(&until.to_le_bytes());
    v
}

fn read_until(header: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = header.get(HEADER - 8..HEADER)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::burst::MemoryStore;

    fn config(slots: u32) -> Config {
        let mut c = Config::from_json(br#"{"routes":[{"name":"all","public":true}]}"#).unwrap();
        c.shared_cache_slots = slots;
        c
    }

    #[test]
    fn an_entry_serves_exactly_its_token_provider_key_set_and_configuration() {
        let store = MemoryStore::default();
        let config = config(16);
        let shared = SharedTokens::new(&store, &config).unwrap();
        let hash = [7u8; 32];
        let id = EntryId {
            provider: 1,
            hash: &hash,
            stamp: 5,
            kind: Kind::Jwt,
        };
        shared.put(id, 100, b"payload");
        assert_eq!(shared.get(id, 99), Some((100, b"payload".to_vec())));
        assert_eq!(shared.get(id, 100), None, "expired");
        assert_eq!(shared.get(EntryId { provider: 0, ..id }, 1), None);
        assert_eq!(shared.get(EntryId { stamp: 6, ..id }, 1), None);
        let kind = Kind::Introspection;
        assert_eq!(shared.get(EntryId { kind, ..id }, 1), None);
        let other = [8u8; 32];
        assert_eq!(shared.get(EntryId { hash: &other, ..id }, 1), None);
        let mut second = self::tests::config(16);
        second.fingerprint = config.fingerprint ^ 1;
        let elsewhere = SharedTokens::new(&store, &second).unwrap();
        assert_eq!(elsewhere.get(id, 1), None, "another configuration");
        // Large payloads are not shared.
        shared.put(id, 100, &vec![b'x'; MAX_SHARED_PAYLOAD + 1]);
        assert_eq!(shared.get(id, 1), Some((100, b"payload".to_vec())));
    }

    #[test]
    fn sharing_can_be_turned_off() {
        let store = MemoryStore::default();
        assert!(SharedTokens::new(&store, &config(0)).is_none());
    }
}
