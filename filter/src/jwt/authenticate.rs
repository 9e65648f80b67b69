//! Verifying one token for one provider, cheapest refusals first.

use super::claims::{self, VerifiedToken};
use super::{JwtError, jws};
use crate::cache::TokenCache;
use crate::config::JwtProvider;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// Tokens longer than this are refused before any work (Envoy's default header limit is 60 KiB,
/// but no sane JWT comes near it).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Verifies `token` for the provider at `index`, using and filling the cache.
///
/// Order: cache → structure and header → key lookup by `kid` and pinned `alg` → claims (issuer,
/// audience, times) → signature. Everything before the signature is cheap, so a flood of forged
/// tokens costs little unless it is well-formed, addressed to a real key and unexpired.
pub fn authenticate(
    index: usize,
    provider: &JwtProvider,
    token: &str,
    now: u64,
    cache: &mut TokenCache,
) -> Result<Arc<VerifiedToken>, JwtError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::Malformed("token is too long"));
    }
    let key = (index, Sha256::digest(token.as_bytes()).into());
    if let Some(hit) = cache.get(&key) {
        claims::check_times(provider, hit.exp, hit.nbf, now)?;
        return Ok(hit);
    }
    let parsed = jws::parse(token)?;
    let mut any_key = false;
    let mut usable = Vec::new();
    for jwk in provider.keys.candidates(parsed.header.kid.as_deref()) {
        any_key = true;
        if jwk.alg == parsed.header.alg {
            usable.push(jwk);
        }
    }
    if !any_key {
        return Err(JwtError::UnknownKid);
    }
    if usable.is_empty() {
        return Err(JwtError::AlgMismatch);
    }
    let claims: Map<String, Value> = serde_json::from_slice(&parsed.payload)
        .map_err(|_| JwtError::Malformed("payload is not a JSON object"))?;
    let payload_b64 = token.split('.').nth(1).unwrap_or("");
    let verified = claims::validate(provider, claims, payload_b64, now)?;
    if usable
        .into_iter()
        .any(|jwk| jws::verify_with(&parsed, jwk).is_ok())
    {
        let verified = Arc::new(verified);
        cache.insert(key, Arc::clone(&verified));
        Ok(verified)
    } else {
        Err(JwtError::BadSignature)
    }
}
