//! Verifying one token for one provider, cheapest refusals first.

use super::claims::{self, VerifiedToken};
use super::{JwtError, jws};
use crate::cache::TokenCache;
use crate::config::JwtProvider;
use crate::jwt::jwk::KeySet;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// Verifies `token` for the provider at `index` with `keys` (its `local_jwks`, or the set
/// fetched for it), using and filling the cache.
///
/// Order: cache → structure and header → key lookup by `kid` and pinned `alg` → claims (issuer,
/// audience, times) → signature. Everything before the signature is cheap, so a flood of forged
/// tokens costs little unless it is well-formed, addressed to a real key and unexpired.
pub fn authenticate(
    index: usize,
    provider: &JwtProvider,
    keys: &KeySet,
    token: &str,
    now: u64,
    cache: &mut TokenCache,
) -> Result<Arc<VerifiedToken>, JwtError> {
    // Checked before hashing too, so an oversized token costs nothing.
    if token.len() > jws::MAX_TOKEN_LEN {
        return Err(JwtError::Malformed("token is too large"));
    }
    let key = cache
        .is_enabled()
        .then(|| (index, <[u8; 32]>::from(Sha256::digest(token.as_bytes()))));
    if let Some(hit) = key.and_then(|key| cache.get(&key)) {
        claims::check_times(provider, hit.exp, hit.nbf, now)?;
        return Ok(hit);
    }
    let parsed = jws::parse(token)?;
    let usable = jws::usable_keys(&parsed, keys)?;
    let claims: Map<String, Value> = serde_json::from_slice(&parsed.payload)
        .map_err(|_| JwtError::Malformed("payload is not a JSON object"))?;
    let payload_b64 = token.split('.').nth(1).unwrap_or("");
    let verified = claims::validate(provider, claims, payload_b64, now)?;
    jws::verify_any(&parsed, &usable)?;
    let verified = Arc::new(verified);
    if let Some(key) = key {
        cache.insert(key, Arc::clone(&verified));
    }
    Ok(verified)
}
