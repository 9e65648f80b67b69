//! Remote key sets (`remote_jwks`): fetched through an Envoy cluster by one worker at a time,
//! shared with the other workers through proxy-wasm shared data, refreshed after
//! `cache_duration_seconds`, refetched (throttled) when a token names an unknown `kid`.
//!
//! Plain Rust without host calls: the wasm glue asks [`RemoteKeys::poll`] on every tick which
//! fetches to start, sends them with `proxy_http_call`, and hands the answers to
//! [`RemoteKeys::on_response`]. Three shared-data entries per provider tie the workers together:
//!
//! - `portcullis.jwks.<id>`: the last good set (`<fetched-at ns, 16 hex>\n<JWKS JSON>`); every
//!   worker installs it when its CAS changes, so one fetch serves all of them;
//! - `<...>.lease`: who may fetch next (`<until ns><failures>`): taken with CAS, so only one
//!   worker fetches; after a failure it holds the back-off for everyone;
//! - `<...>.refetch`: when an unknown `kid` last asked for a refetch, for the throttle.

use crate::burst::SharedStore;
use crate::config::provider::{RemoteJwks, split_url};
use crate::config::reader::Ctx;
use crate::config::{Config, ProviderKind};
use crate::jwt::jwk::{self, KeySet};
use serde_json::Value;
use std::sync::Arc;

/// Largest accepted JWKS or discovery document.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

const NANOS_PER_MS: u64 = 1_000_000;

/// An HTTP GET the glue should send with `proxy_http_call`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    /// The provider it is for.
    pub provider: usize,
    /// Envoy cluster.
    pub cluster: String,
    /// `:authority`.
    pub authority: String,
    /// `:path`.
    pub path: String,
    /// Deadline.
    pub timeout_ms: u64,
}

/// What a fetch asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The OpenID configuration, for its `jwks_uri`.
    Discovery,
    /// The key set.
    Jwks,
}

/// What an unknown `kid` may wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refetch {
    /// A refetch was asked for (now, or by another request, and has not happened yet).
    Pending,
    /// The last refetch is too recent: the token is refused now.
    Throttled,
}

/// The outcome of an answer to one of our fetches.
#[derive(Debug, Default)]
pub struct Answer {
    /// The provider whose fetch completed here, and whether its keys changed.
    pub installed: Option<(usize, bool)>,
    /// A follow-up fetch (the JWKS after discovery).
    pub next: Option<Fetch>,
    /// Why the fetch failed, for the log (never the document).
    pub error: Option<String>,
}

/// One remote provider in this worker.
#[derive(Debug)]
struct Entry {
    provider: usize,
    name: String,
    /// Its shared-data keys: the set, the fetch lease, the last unknown-`kid` refetch.
    key: String,
    lease_key: String,
    refetch_key: String,
    remote: RemoteJwks,
    issuer: Option<String>,
    keys: Option<Arc<KeySet>>,
    /// CAS of the shared entry that `keys` came from.
    version: Option<u32>,
    /// Hash of the JWKS document the keys came from: what changes when the keys change (a
    /// refresh that brings the same document changes nothing).
    keys_hash: u64,
    fetched_at_ns: u64,
    /// Where the JWKS is: from the configuration, or found by discovery.
    jwks_at: Option<(String, String)>,
    in_flight: Option<(u32, Stage)>,
}

/// Every remote provider's keys, in one worker.
#[derive(Debug, Default)]
pub struct RemoteKeys {
    entries: Vec<Entry>,
}

impl RemoteKeys {
    /// One entry per provider with `remote_jwks`.
    pub fn new(config: &Config) -> Self {
        let entries = config
            .providers
            .iter()
            .enumerate()
            .filter_map(|(i, p)| match &p.kind {
                ProviderKind::Jwt(jwt) => jwt
                    .remote
                    .as_ref()
                    .map(|remote| Entry::new(i, &p.name, remote, jwt.issuer.as_deref())),
                ProviderKind::ApiKey(_) => None,
            })
            .collect();
        RemoteKeys { entries }
    }

    /// Creates each provider's fetch lease, free, where it does not exist yet. Shared data has
    /// no "create if absent": a lease taken while its key was missing could be taken twice, so
    /// [`Self::poll`] only takes existing leases, with CAS. Called when the configuration is
    /// loaded, before the first tick.
    pub fn init_shared(&self, store: &dyn SharedStore) {
        for e in &self.entries {
            if store.get(&e.lease_key).is_none() {
                let _ = store.set(&e.lease_key, lease_value(0, 0).as_bytes(), None);
            }
        }
    }

    /// Whether any provider fetches its keys.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The current keys of a remote provider (`None`: none yet, or not a remote provider).
    pub fn keys(&self, provider: usize) -> Option<Arc<KeySet>> {
        self.entry(provider).and_then(|e| e.keys.clone())
    }

    /// The version of a remote provider's current keys (a hash of their document), so that a
    /// token verified with another set is not taken from the shared cache.
    pub fn version(&self, provider: usize) -> u64 {
        self.entry(provider).map_or(0, |e| e.keys_hash)
    }

    /// The longest a request waits for this provider's keys, in nanoseconds.
    pub fn wait_ns(&self, provider: usize) -> u64 {
        self.entry(provider)
            .map_or(0, |e| e.remote.wait_ms.saturating_mul(NANOS_PER_MS))
    }

    /// The provider's name, for logs.
    pub fn name(&self, provider: usize) -> &str {
        self.entry(provider).map_or("", |e| e.name.as_str())
    }

    /// Installs key sets other workers (or this one) stored since the last call, and returns
    /// the providers with a newly stored set (and whether their keys changed) and the fetches
    /// this worker should start now.
    pub fn poll(
        &mut self,
        store: &dyn SharedStore,
        now_ns: u64,
    ) -> (Vec<(usize, bool)>, Vec<Fetch>) {
        let mut changed = Vec::new();
        let mut fetches = Vec::new();
        for e in &mut self.entries {
            if let Some(keys_changed) = e.install_shared(store) {
                changed.push((e.provider, keys_changed));
            }
            if e.in_flight.is_none() && e.is_due(store, now_ns) && e.take_lease(store, now_ns) {
                fetches.push(e.next_fetch());
            }
        }
        (changed, fetches)
    }

    /// Records the token of a fetch the glue sent for `fetch`.
    pub fn started(&mut self, fetch: &Fetch, token: u32) {
        if let Some(e) = self.entry_mut(fetch.provider) {
            let stage = if e.jwks_at.is_some() {
                Stage::Jwks
            } else {
                Stage::Discovery
            };
            e.in_flight = Some((token, stage));
        }
    }

    /// A fetch that could not be sent: back off as after a failed one.
    pub fn not_sent(&mut self, fetch: &Fetch, store: &dyn SharedStore, now_ns: u64) {
        if let Some(e) = self.entry_mut(fetch.provider) {
            e.in_flight = None;
            e.back_off(store, now_ns);
        }
    }

    /// Whether `token` is one of our fetches.
    pub fn owns(&self, token: u32) -> bool {
        self.entries
            .iter()
            .any(|e| e.in_flight.is_some_and(|(t, _)| t == token))
    }

    /// Handles the answer to a fetch: `status` is the HTTP status (`None`: no answer).
    pub fn on_response(
        &mut self,
        token: u32,
        status: Option<u16>,
        body: &[u8],
        store: &dyn SharedStore,
        now_ns: u64,
    ) -> Answer {
        let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.in_flight.is_some_and(|(t, _)| t == token))
        else {
            return Answer::default();
        };
        let Some((_, stage)) = e.in_flight.take() else {
            return Answer::default();
        };
        let result = match status {
            None => Err("no answer (connection failed or reset)".to_owned()),
            Some(200) if body.len() > MAX_DOCUMENT_BYTES => {
                Err(format!("document larger than {MAX_DOCUMENT_BYTES} bytes"))
            }
            Some(200) => Ok(()),
            Some(s) => Err(format!("HTTP status {s}")),
        };
        let outcome = result.and_then(|()| match stage {
            Stage::Discovery => e.discovered(body).map(|()| None),
            Stage::Jwks => e.store_jwks(body, store, now_ns).map(Some),
        });
        match outcome {
            Ok(None) => {
                // Discovery done: the JWKS next, under the same lease.
                e.extend_lease(store, now_ns);
                Answer {
                    next: Some(e.next_fetch()),
                    ..Answer::default()
                }
            }
            Ok(Some(installed)) => Answer {
                installed: installed.map(|changed| (e.provider, changed)),
                ..Answer::default()
            },
            Err(why) => {
                e.back_off(store, now_ns);
                let what = match stage {
                    Stage::Discovery => "OpenID configuration",
                    Stage::Jwks => "JWKS",
                };
                Answer {
                    error: Some(format!("provider {}: {what} fetch failed: {why}", e.name)),
                    ..Answer::default()
                }
            }
        }
    }

    /// A token named a `kid` the provider's keys do not have: asks for a refetch unless one
    /// happened less than `unknown_kid_refetch_interval_seconds` ago.
    pub fn request_refetch(
        &mut self,
        provider: usize,
        store: &dyn SharedStore,
        now_ns: u64,
    ) -> Refetch {
        let Some(e) = self.entry_mut(provider) else {
            return Refetch::Throttled;
        };
        let current = store.get(&e.refetch_key);
        let last = current.as_ref().map_or(0, |(v, _)| hex_u64(v, 0));
        if last > e.fetched_at_ns {
            return Refetch::Pending;
        }
        let interval = e
            .remote
            .unknown_kid_refetch_interval_seconds
            .saturating_mul(1_000_000_000);
        if last != 0 && now_ns.saturating_sub(last) < interval {
            return Refetch::Throttled;
        }
        let value = format!("{now_ns:016x}");
        match store.set(
            &e.refetch_key,
            value.as_bytes(),
            current.map(|(_, cas)| cas),
        ) {
            // Lost a race: another request asked first; wait for that refetch.
            Ok(()) | Err(_) => Refetch::Pending,
        }
    }

    fn entry(&self, provider: usize) -> Option<&Entry> {
        self.entries.iter().find(|e| e.provider == provider)
    }

    fn entry_mut(&mut self, provider: usize) -> Option<&mut Entry> {
        self.entries.iter_mut().find(|e| e.provider == provider)
    }
}

impl Entry {
    fn new(provider: usize, name: &str, remote: &RemoteJwks, issuer: Option<&str>) -> Self {
        let key = shared_key(name, remote, issuer);
        Entry {
            provider,
            name: name.to_owned(),
            lease_key: format!("{key}.lease"),
            refetch_key: format!("{key}.refetch"),
            key,
            jwks_at: (!remote.discovery).then(|| (remote.authority.clone(), remote.path.clone())),
            remote: remote.clone(),
            issuer: issuer.map(str::to_owned),
            keys: None,
            version: None,
            keys_hash: 0,
            fetched_at_ns: 0,
            in_flight: None,
        }
    }

    /// Installs the shared set if it was stored since this worker last looked: `None` if
    /// not, else whether the keys changed (a refresh that brought the same document only
    /// renews `fetched_at`).
    fn install_shared(&mut self, store: &dyn SharedStore) -> Option<bool> {
        let (value, cas) = store.get(&self.key)?;
        if self.version == Some(cas) {
            return None;
        }
        self.version = Some(cas);
        let (stamp, body) = value.split_at_checked(17)?;
        let hash = fnv64([body]);
        if self.keys.is_some() && hash == self.keys_hash {
            self.fetched_at_ns = hex_u64(stamp, 0);
            return Some(false);
        }
        let keys = parse_jwks(body).ok()?;
        self.keys = Some(Arc::new(keys));
        self.keys_hash = hash;
        self.fetched_at_ns = hex_u64(stamp, 0);
        Some(true)
    }

    /// Whether a fetch should start: no keys yet, the set is older than the cache duration,
    /// or an unknown `kid` asked for a refetch after the last fetch.
    fn is_due(&self, store: &dyn SharedStore, now_ns: u64) -> bool {
        if self.keys.is_none() {
            return true;
        }
        let age = now_ns.saturating_sub(self.fetched_at_ns);
        if age
            >= self
                .remote
                .cache_duration_seconds
                .saturating_mul(1_000_000_000)
        {
            return true;
        }
        store
            .get(&self.refetch_key)
            .is_some_and(|(v, _)| hex_u64(&v, 0) > self.fetched_at_ns)
    }

    /// Takes the fetch lease when nobody holds it and no back-off runs (with CAS, so one
    /// worker wins; a missing lease is created free and taken on a later tick).
    fn take_lease(&self, store: &dyn SharedStore, now_ns: u64) -> bool {
        let Some((current, cas)) = store.get(&self.lease_key) else {
            let _ = store.set(&self.lease_key, lease_value(0, 0).as_bytes(), None);
            return false;
        };
        let (until, failures) = (hex_u64(&current, 0), hex_u64(&current, 16));
        if now_ns < until {
            return false;
        }
        let value = lease_value(now_ns.saturating_add(self.lease_ns()), failures);
        store
            .set(&self.lease_key, value.as_bytes(), Some(cas))
            .is_ok()
    }

    fn extend_lease(&self, store: &dyn SharedStore, now_ns: u64) {
        let failures = store
            .get(&self.lease_key)
            .map_or(0, |(v, _)| hex_u64(&v, 16));
        let value = lease_value(now_ns.saturating_add(self.lease_ns()), failures);
        let _ = store.set(&self.lease_key, value.as_bytes(), None);
    }

    /// The fetch's deadline and a second of slack: long enough that nobody else fetches
    /// meanwhile, short enough that a worker that stopped does not block the others.
    fn lease_ns(&self) -> u64 {
        self.remote
            .timeout_ms
            .saturating_add(1_000)
            .saturating_mul(NANOS_PER_MS)
    }

    /// After a failure: nobody fetches before the back-off (base × 2^failures, capped) ends.
    fn back_off(&self, store: &dyn SharedStore, now_ns: u64) {
        let failures = store
            .get(&self.lease_key)
            .map_or(0, |(v, _)| hex_u64(&v, 16));
        let delay_ms = self
            .remote
            .retry_base_ms
            .saturating_mul(1u64 << failures.min(20))
            .min(self.remote.retry_max_ms);
        let until = now_ns.saturating_add(delay_ms.saturating_mul(NANOS_PER_MS));
        let _ = store.set(
            &self.lease_key,
            lease_value(until, failures.saturating_add(1)).as_bytes(),
            None,
        );
    }

    fn next_fetch(&self) -> Fetch {
        let (authority, path) = self
            .jwks_at
            .clone()
            .unwrap_or_else(|| (self.remote.authority.clone(), self.remote.path.clone()));
        Fetch {
            provider: self.provider,
            cluster: self.remote.cluster.clone(),
            authority,
            path,
            timeout_ms: self.remote.timeout_ms,
        }
    }

    /// Reads `jwks_uri` from the OpenID configuration, whose `issuer` must be ours (OpenID
    /// Connect Discovery §4.3).
    fn discovered(&mut self, body: &[u8]) -> Result<(), String> {
        let doc: Value =
            serde_json::from_slice(body).map_err(|_| "the OpenID configuration is not JSON")?;
        let issuer = doc.get("issuer").and_then(Value::as_str);
        let ours = self.issuer.as_deref().map(|i| i.trim_end_matches('/'));
        if issuer.map(|i| i.trim_end_matches('/')) != ours {
            return Err("the OpenID configuration names another issuer".to_owned());
        }
        let uri = doc
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or("the OpenID configuration has no jwks_uri")?;
        self.jwks_at =
            Some(split_url(uri).ok_or("the OpenID configuration's jwks_uri is not a URL")?);
        Ok(())
    }

    /// Checks a fetched JWKS and shares it; installs it here (see [`Self::install_shared`]).
    fn store_jwks(
        &mut self,
        body: &[u8],
        store: &dyn SharedStore,
        now_ns: u64,
    ) -> Result<Option<bool>, String> {
        parse_jwks(body)?;
        let mut value = format!("{now_ns:016x}\n").into_bytes();
        value.extend_from_slice(body);
        store
            .set(&self.key, &value, None)
            .map_err(|e| format!("shared data: {e}"))?;
        let _ = store.set(&self.lease_key, lease_value(0, 0).as_bytes(), None);
        Ok(self.install_shared(store))
    }
}

/// A fetched JWKS as a key set: keys the filter cannot use (another `use`, no `alg`, an
/// unsupported curve) are skipped, and so are symmetric (`oct`) keys: a fetched set is public,
/// and whoever reads an HMAC secret from it could sign tokens with it. A set without any usable
/// key is an error.
pub fn parse_jwks(body: &[u8]) -> Result<KeySet, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|_| "the JWKS is not JSON")?;
    let mut cx = Ctx::default();
    let read = jwk::read_jwks(&mut cx, &doc, "jwks");
    let symmetric = read.iter().filter(|k| k.is_symmetric()).count();
    let keys = KeySet::from_keys(read.iter().filter(|k| !k.is_symmetric()).cloned().collect());
    if keys.is_empty() && symmetric > 0 {
        return Err(format!(
            "the JWKS holds only symmetric (oct) keys ({symmetric}), which a fetched, public key set must never carry"
        ));
    }
    if keys.is_empty() {
        let first = cx
            .into_errors()
            .into_iter()
            .next()
            .map_or_else(String::new, |e| format!(" (first problem: {e})"));
        return Err(format!("the JWKS holds no usable key{first}"));
    }
    Ok(keys)
}

/// `portcullis.jwks.<name>.<hash of issuer, cluster, authority, path, discovery>`: two
/// plugins on one VM id with a provider of the same name but another source or issuer do not
/// share keys.
fn shared_key(name: &str, remote: &RemoteJwks, issuer: Option<&str>) -> String {
    let discovery: &[u8] = if remote.discovery { b"d" } else { b"" };
    let hash = fnv64([
        issuer.unwrap_or("").as_bytes(),
        remote.cluster.as_bytes(),
        remote.authority.as_bytes(),
        remote.path.as_bytes(),
        discovery,
    ]);
    format!("portcullis.jwks.{name}.{hash:016x}")
}

/// FNV-1a over the parts, each followed by a 0 byte (not a cryptographic hash: it tells
/// configurations and documents apart, it does not protect anything).
fn fnv64<const N: usize>(parts: [&[u8]; N]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in parts.iter().flat_map(|p| p.iter().copied().chain([0])) {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn lease_value(until_ns: u64, failures: u64) -> String {
    format!("{until_ns:016x}{failures:016x}")
}

/// The 16 hex digits at `at` in `v` (0 if absent or not hex).
fn hex_u64(v: &[u8], at: usize) -> u64 {
    v.get(at..at + 16)
        .and_then(|h| std::str::from_utf8(h).ok())
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
