//! Verifying one token for one provider, cheapest refusals first.

use super::b64;
use super::claims::{self, VerifiedToken};
use super::{JwtError, jws};
use crate::cache::TokenCache;
use crate::config::JwtProvider;
use crate::jwt::jwk::KeySet;
use crate::shared_cache::{EntryId, Kind, SharedTokens};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// Verifies `token` for the provider at `index` with `keys` (its `local_jwks`, or the set
/// fetched for it, whose version is `stamp`), using and filling the worker's cache and, when
/// given, the cache shared by the workers.
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
    shared: Option<(&SharedTokens<'_>, u64)>,
) -> Result<Arc<VerifiedToken>, JwtError> {
    // Checked before hashing too, so an oversized token costs nothing.
    if token.len() > jws::MAX_TOKEN_LEN {
        return Err(JwtError::Malformed("token is too large"));
    }
    let key = (cache.is_enabled() || shared.is_some())
        .then(|| (index, <[u8; 32]>::from(Sha256::digest(token.as_bytes()))));
    if let Some(hit) = key.and_then(|key| cache.get(&key)) {
        claims::check_times(provider, hit.exp, hit.nbf, now)?;
        return Ok(hit);
    }
    // The entry in the cache shared by the workers: this provider, this token, this key set.
    let shared = shared
        .zip(key)
        .map(|((tokens, stamp), (_, hash))| (tokens, hash, stamp));
    let entry = |hash, stamp| EntryId {
        provider: index,
        hash,
        stamp,
        kind: Kind::Jwt,
    };
    if let Some((tokens, hash, stamp)) = &shared
        && let Some((_, payload)) = tokens.get(entry(hash, *stamp), now)
    {
        // Verified by another worker: the claims are read and checked again, the signature
        // is not.
        let verified = Arc::new(from_shared(provider, &payload, now)?);
        if let Some(key) = key {
            cache.insert(key, Arc::clone(&verified));
        }
        return Ok(verified);
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
    if let Some((tokens, hash, stamp)) = &shared {
        let until = verified.exp.unwrap_or(u64::MAX);
        tokens.put(entry(hash, *stamp), until, payload_b64.as_bytes());
    }
    Ok(verified)
}

/// The claims of a token another worker verified, from its payload segment.
fn from_shared(
    provider: &JwtProvider,
    payload: &[u8],
    now: u64,
) -> Result<VerifiedToken, JwtError> {
    let payload_b64 =
        std::str::from_utf8(payload).map_err(|_| JwtError::Malformed("shared entry"))?;
    let json = b64::decode(payload_b64).map_err(|_| JwtError::Malformed("shared entry"))?;
    let claims: Map<String, Value> =
        serde_json::from_slice(&json).map_err(|_| JwtError::Malformed("shared entry"))?;
    claims::validate(provider, claims, payload_b64, now)
}
