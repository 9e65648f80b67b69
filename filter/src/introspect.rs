//! OAuth 2.0 token introspection (RFC 7662) for opaque tokens: the call to make, the answer's
//! reading, and the worker's cache of answers.
//!
//! An answer's members are JWT claim names (RFC 7662 §2.2), so an active answer goes through the
//! same checks as a JWT's claims (`exp`, `nbf`, `iss`, `aud`, required claims) and becomes the
//! same [`VerifiedToken`]: scopes, claim rules, `claim_to_headers`, `forward_payload_header`
//! (the answer, base64url) and rate-limit descriptors work on it unchanged.

use crate::cache::CacheKey;
use crate::config::JwtProvider;
use crate::config::provider::{ClientCredentials, Introspection, form_encode};
use crate::jwt::JwtError;
use crate::jwt::claims::{self, VerifiedToken};
use serde_json::{Map, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Largest accepted answer.
pub const MAX_ANSWER_BYTES: usize = 16 * 1024;

/// What the endpoint said about a token, once checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Introspected {
    /// Active, and its claims pass the provider's checks.
    Active(Arc<VerifiedToken>),
    /// Not active, or refused by a check (why, in the client's words).
    Refused(JwtError),
}

/// The HTTP call: headers and body (the token and, with `client_secret_post`, the client's
/// credentials are in the body; with `client_secret_basic`, in `authorization`).
pub fn call<'e>(endpoint: &'e Introspection, token: &str) -> (Vec<(&'e str, &'e str)>, Vec<u8>) {
    let mut headers = vec![
        (":method", "POST"),
        (":path", endpoint.path.as_str()),
        (":authority", endpoint.authority.as_str()),
        ("content-type", "application/x-www-form-urlencoded"),
        ("accept", "application/json"),
    ];
    let mut body = format!("token={}&token_type_hint=access_token", form_encode(token));
    match &endpoint.credentials {
        ClientCredentials::Basic(value) => headers.push(("authorization", value.as_str())),
        ClientCredentials::Post(fields) => body.push_str(fields),
    }
    (headers, body.into_bytes())
}

/// Reads the endpoint's answer (`status` `None`: no answer). `Ok` carries the outcome and until
/// when (seconds since the epoch) it may be reused; `Err` says why the endpoint failed (never
/// the token or the answer).
pub fn read_answer(
    provider: &JwtProvider,
    endpoint: &Introspection,
    status: Option<u16>,
    body: &[u8],
    now: u64,
) -> Result<(Introspected, u64), String> {
    match status {
        Some(200) => {}
        Some(s) => return Err(format!("introspection endpoint answered HTTP {s}")),
        None => return Err("introspection endpoint did not answer".to_owned()),
    }
    if body.len() > MAX_ANSWER_BYTES {
        return Err(format!(
            "introspection answer larger than {MAX_ANSWER_BYTES} bytes"
        ));
    }
    let answer: Map<String, Value> = serde_json::from_slice(body)
        .map_err(|_| "introspection answer is not a JSON object".to_owned())?;
    let refused_until = now.saturating_add(endpoint.negative_cache_ttl_seconds);
    if answer.get("active") != Some(&Value::Bool(true)) {
        return Ok((Introspected::Refused(JwtError::Inactive), refused_until));
    }
    // `forward_payload_header` passes the answer on, base64url-encoded like a JWT payload.
    let payload_b64 = match provider.forward_payload_header {
        Some(_) => crate::jwt::b64::encode(body),
        None => String::new(),
    };
    match claims::validate(provider, answer, &payload_b64, now) {
        Ok(token) => {
            let ttl_end = now.saturating_add(endpoint.cache_ttl_seconds);
            let until = token.exp.map_or(ttl_end, |exp| exp.min(ttl_end));
            Ok((Introspected::Active(Arc::new(token)), until))
        }
        Err(e) => Ok((Introspected::Refused(e), refused_until)),
    }
}

/// A worker's introspection answers, by provider and SHA-256 of the token; bounded in entries
/// and in bytes, oldest first out, each reused until its own deadline.
#[derive(Debug)]
pub struct IntrospectionCache {
    max_entries: usize,
    max_bytes: usize,
    bytes: usize,
    entries: HashMap<CacheKey, (Introspected, u64, usize)>,
    order: VecDeque<CacheKey>,
}

impl IntrospectionCache {
    /// Room for `max_entries` answers and about `max_bytes` (either 0: none are kept).
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        IntrospectionCache {
            max_entries,
            max_bytes,
            bytes: 0,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The answer for this token, unless it expired.
    pub fn get(&self, key: &CacheKey, now: u64) -> Option<&Introspected> {
        self.entries
            .get(key)
            .filter(|(_, until, _)| now < *until)
            .map(|(answer, _, _)| answer)
    }

    /// Keeps an answer received as `answer_len` bytes until `until` (replacing an older one
    /// for the same token).
    pub fn insert(&mut self, key: CacheKey, answer: Introspected, until: u64, answer_len: usize) {
        // The claims parsed from the answer, and its base64url copy for
        // `forward_payload_header`, take about twice the answer.
        let cost = answer_len.saturating_mul(2).saturating_add(256);
        if cost > self.max_bytes {
            return;
        }
        if let Some((_, _, old)) = self.entries.insert(key, (answer, until, cost)) {
            self.bytes -= old;
            self.order.retain(|k| *k != key);
        }
        self.bytes += cost;
        self.order.push_back(key);
        while self.entries.len() > self.max_entries || self.bytes > self.max_bytes {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some((_, _, freed)) = self.entries.remove(&old) {
                self.bytes -= freed;
            }
        }
    }

    /// Number of answers held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Default for IntrospectionCache {
    fn default() -> Self {
        IntrospectionCache::new(0, 0)
    }
}

#[cfg(test)]
mod tests;
