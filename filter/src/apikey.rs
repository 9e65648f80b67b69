//! API keys: the presented key is hashed and compared with every stored hash in constant time.

use crate::config::provider::{ApiKey, ApiKeyProvider};
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// Keys longer than this are refused without hashing.
pub const MAX_API_KEY_BYTES: usize = 4096;

/// Index of the stored key whose hash equals the presented key's, if any.
///
/// Every stored hash is compared, without early exit, so the time taken does not depend on
/// which (or whether a) key matched.
pub fn find(provider: &ApiKeyProvider, presented: &str) -> Option<usize> {
    if presented.is_empty() || presented.len() > MAX_API_KEY_BYTES {
        return None;
    }
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    let mut found = u32::MAX;
    for (i, key) in provider.keys.iter().enumerate() {
        let candidate = u32::try_from(i).unwrap_or(u32::MAX);
        found.conditional_assign(&candidate, key.sha256.ct_eq(&digest));
    }
    usize::try_from(found)
        .ok()
        .filter(|i| *i < provider.keys.len())
}

/// The key at `index` (as returned by [`find`]).
pub fn key(provider: &ApiKeyProvider, index: usize) -> Option<&ApiKey> {
    provider.keys.get(index)
}

/// Hex SHA-256 of a key: what the configuration stores.
pub fn hash_hex(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
