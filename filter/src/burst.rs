//! The local burst guard: a token bucket per client (optionally per route) kept in proxy-wasm
//! shared data, so every worker of one Envoy draws from the same bucket.
//!
//! Shared data cannot delete keys, so memory is bounded by construction: a fixed number of
//! slots, each holding up to [`WAYS`] buckets. A client hashes to one slot; when the slot is
//! full, the bucket that is fullest after refilling is evicted — a stale bucket is full, and of
//! active ones the fullest belongs to the client that is least limited. An IP-spraying flood
//! therefore evicts its own fresh buckets and never frees a client that is being held back.
//! Updates are compare-and-swap, retried a few times; contention beyond that refuses (fail
//! closed).

use std::hash::{Hash, Hasher};
use std::net::IpAddr;

/// Buckets per slot.
pub const WAYS: usize = 4;
/// Bytes of one bucket: fingerprint, milli-tokens, last update (ns), all u64 little-endian.
const BUCKET_BYTES: usize = 24;
/// Compare-and-swap attempts before refusing.
const CAS_ATTEMPTS: usize = 8;
const MILLI: u64 = 1000;
const NANOS_PER_SECOND: u128 = 1_000_000_000;

/// Shared key-value storage with compare-and-swap (proxy-wasm shared data, or memory in tests).
pub trait SharedStore {
    /// The value and its CAS token, if the key exists.
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    /// Stores `value` if the key's CAS token still equals `cas` (`None`: unconditionally).
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError>;
}

/// Why a shared-data write failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Another worker wrote the key since it was read.
    #[error("the value changed since it was read")]
    CasMismatch,
    /// The host refused the write.
    #[error("the host refused the write")]
    Refused,
}

/// A token bucket's parameters, prepared at configure time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketSpec {
    /// Refill rate in milli-tokens per second (a request costs 1000).
    pub rate_milli: u64,
    /// Capacity in milli-tokens (the burst).
    pub capacity_milli: u64,
    /// Whether the bucket is per client and route rather than per client.
    pub per_route: bool,
    /// Leading bits of an IPv4 address that make one client (32: each address).
    pub ipv4_prefix: u8,
    /// Leading bits of an IPv6 address that make one client (64: each /64, the smallest
    /// network a site is given, so one holder cannot spread over 2^64 buckets).
    pub ipv6_prefix: u8,
    /// Record refusals without refusing.
    pub shadow: bool,
}

/// The slots of one guard, with their shared-data key names prepared once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slots {
    keys: Vec<String>,
}

impl Slots {
    /// `max_clients` buckets in `max_clients / WAYS` slots (at least one).
    pub fn new(prefix: &str, max_clients: usize) -> Slots {
        let count = (max_clients / WAYS).max(1);
        Slots {
            keys: (0..count).map(|i| format!("{prefix}{i}")).collect(),
        }
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are no slots (never, by construction).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// What the guard decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A token was taken.
    Allowed,
    /// The bucket is empty; a token will be there in this many seconds (at least 1).
    Limited {
        /// For `Retry-After`.
        retry_after_seconds: u64,
    },
    /// The shared data could not be updated (contention or host refusal).
    Unavailable,
}

/// Takes one token from the client's bucket.
pub fn take(
    store: &dyn SharedStore,
    slots: &Slots,
    spec: &BucketSpec,
    client: IpAddr,
    route: usize,
    now_ns: u64,
) -> Outcome {
    let client = client_network(client, spec.ipv4_prefix, spec.ipv6_prefix);
    let fingerprint = fingerprint(client, spec.per_route.then_some(route));
    let Some(key) = slot_index(fingerprint, slots.len()).and_then(|i| slots.keys.get(i)) else {
        return Outcome::Unavailable;
    };
    for _ in 0..CAS_ATTEMPTS {
        let (mut buckets, cas) = match store.get(key) {
            Some((bytes, cas)) => (decode(&bytes), Some(cas)),
            None => ([Bucket::EMPTY; WAYS], None),
        };
        let way = choose(&buckets, fingerprint, spec, now_ns);
        let Some(bucket) = buckets.get_mut(way) else {
            return Outcome::Unavailable;
        };
        if bucket.fingerprint != fingerprint {
            *bucket = Bucket {
                fingerprint,
                milli_tokens: spec.capacity_milli,
                updated_ns: now_ns,
            };
        }
        bucket.refill(spec, now_ns);
        let outcome = if bucket.milli_tokens >= MILLI {
            bucket.milli_tokens -= MILLI;
            Outcome::Allowed
        } else {
            Outcome::Limited {
                retry_after_seconds: retry_after(bucket.milli_tokens, spec.rate_milli),
            }
        };
        match store.set(key, &encode(&buckets), cas) {
            Ok(()) => return outcome,
            Err(StoreError::CasMismatch) => continue,
            Err(StoreError::Refused) => return Outcome::Unavailable,
        }
    }
    Outcome::Unavailable
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bucket {
    /// 0 = unused.
    fingerprint: u64,
    milli_tokens: u64,
    updated_ns: u64,
}

impl Bucket {
    const EMPTY: Bucket = Bucket {
        fingerprint: 0,
        milli_tokens: 0,
        updated_ns: 0,
    };

    fn refill(&mut self, spec: &BucketSpec, now_ns: u64) {
        let elapsed = u128::from(now_ns.saturating_sub(self.updated_ns));
        let gained = elapsed.saturating_mul(u128::from(spec.rate_milli)) / NANOS_PER_SECOND;
        let gained = u64::try_from(gained).unwrap_or(u64::MAX);
        self.milli_tokens = self
            .milli_tokens
            .saturating_add(gained)
            .min(spec.capacity_milli);
        // A clock that steps back never refills twice.
        self.updated_ns = self.updated_ns.max(now_ns);
    }

    /// Tokens the bucket would hold now (unused ways count as full, so they are taken first).
    fn level(&self, spec: &BucketSpec, now_ns: u64) -> u64 {
        if self.fingerprint == 0 {
            return u64::MAX;
        }
        let mut copy = *self;
        copy.refill(spec, now_ns);
        copy.milli_tokens
    }
}

/// The way for this client: its own bucket, else the fullest (unused, stale, or least limited).
fn choose(buckets: &[Bucket; WAYS], fingerprint: u64, spec: &BucketSpec, now_ns: u64) -> usize {
    if let Some(i) = buckets.iter().position(|b| b.fingerprint == fingerprint) {
        return i;
    }
    buckets
        .iter()
        .enumerate()
        .max_by_key(|(_, b)| b.level(spec, now_ns))
        .map_or(0, |(i, _)| i)
}

fn retry_after(milli_tokens: u64, rate_milli: u64) -> u64 {
    let missing = MILLI.saturating_sub(milli_tokens);
    missing.div_ceil(rate_milli.max(1)).max(1)
}

/// A non-zero 64-bit fingerprint of the client (and route). The std hasher with its fixed keys
/// gives the same value in every worker VM of one build, which is all the slots need.
/// The network a client's bucket belongs to: its address with the bits past the prefix cleared
/// (an IPv4-mapped IPv6 address counts as IPv4).
pub fn client_network(client: IpAddr, ipv4_prefix: u8, ipv6_prefix: u8) -> IpAddr {
    let client = match client {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(client, IpAddr::V4),
        v4 => v4,
    };
    match client {
        IpAddr::V4(v4) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(ipv4_prefix.min(32)))
                .unwrap_or(0);
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(ipv6_prefix.min(128)))
                .unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    }
}

fn fingerprint(client: IpAddr, route: Option<usize>) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    client.hash(&mut h);
    route.hash(&mut h);
    h.finish().max(1)
}

fn slot_index(fingerprint: u64, slots: usize) -> Option<usize> {
    let slots = u64::try_from(slots).ok().filter(|&n| n > 0)?;
    // The high bits pick the slot; the fingerprint as a whole identifies the bucket.
    usize::try_from(fingerprint.rotate_left(32) % slots).ok()
}

fn decode(bytes: &[u8]) -> [Bucket; WAYS] {
    let mut out = [Bucket::EMPTY; WAYS];
    for (slot, chunk) in out.iter_mut().zip(bytes.chunks_exact(BUCKET_BYTES)) {
        let word = |i: usize| {
            chunk
                .get(i * 8..i * 8 + 8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, u64::from_le_bytes)
        };
        *slot = Bucket {
            fingerprint: word(0),
            milli_tokens: word(1),
            updated_ns: word(2),
        };
    }
    out
}

fn encode(buckets: &[Bucket; WAYS]) -> [u8; WAYS * BUCKET_BYTES] {
    let mut out = [0u8; WAYS * BUCKET_BYTES];
    for (chunk, b) in out.chunks_exact_mut(BUCKET_BYTES).zip(buckets) {
        for (dst, word) in
            chunk
                .chunks_exact_mut(8)
                .zip([b.fingerprint, b.milli_tokens, b.updated_ns])
        {
            dst.copy_from_slice(&word.to_le_bytes());
        }
    }
    out
}

/// Shared data in memory: for tests, benchmarks and native use of the policy.
#[derive(Debug, Default)]
pub struct MemoryStore {
    map: std::cell::RefCell<std::collections::HashMap<String, (Vec<u8>, u32)>>,
}

impl MemoryStore {
    /// Number of keys written so far.
    pub fn len(&self) -> usize {
        self.map.borrow().len()
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.map.borrow().is_empty()
    }
}

impl SharedStore for MemoryStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.map.borrow().get(key).cloned()
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        let mut map = self.map.borrow_mut();
        let current = map.get(key).map(|(_, c)| *c);
        if cas.is_some_and(|c| Some(c) != current) {
            return Err(StoreError::CasMismatch);
        }
        let next = current.unwrap_or(0).wrapping_add(1).max(1);
        map.insert(key.to_owned(), (value.to_vec(), next));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn spec(rate: u64, burst: u64) -> BucketSpec {
        BucketSpec {
            rate_milli: rate * MILLI,
            capacity_milli: burst * MILLI,
            per_route: false,
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            shadow: false,
        }
    }

    fn ip(i: u32) -> IpAddr {
        IpAddr::from(i.to_be_bytes())
    }

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_its_rate() {
        let store = MemoryStore::default();
        let slots = Slots::new("b.", 1024);
        let s = spec(2, 3);
        let t0 = 1_000 * SEC;
        for _ in 0..3 {
            assert_eq!(take(&store, &slots, &s, ip(1), 0, t0), Outcome::Allowed);
        }
        assert_eq!(
            take(&store, &slots, &s, ip(1), 0, t0),
            Outcome::Limited {
                retry_after_seconds: 1
            }
        );
        // Another client has its own bucket.
        assert_eq!(take(&store, &slots, &s, ip(2), 0, t0), Outcome::Allowed);
        // Half a second at 2/s is one token.
        assert_eq!(
            take(&store, &slots, &s, ip(1), 0, t0 + SEC / 2),
            Outcome::Allowed
        );
        assert!(matches!(
            take(&store, &slots, &s, ip(1), 0, t0 + SEC / 2),
            Outcome::Limited { .. }
        ));
    }

    #[test]
    fn slow_rates_give_long_retry_after() {
        let store = MemoryStore::default();
        let slots = Slots::new("b.", 16);
        let s = BucketSpec {
            rate_milli: 100, // one request per 10 s
            ..spec(0, 1)
        };
        assert_eq!(take(&store, &slots, &s, ip(1), 0, SEC), Outcome::Allowed);
        assert_eq!(
            take(&store, &slots, &s, ip(1), 0, SEC),
            Outcome::Limited {
                retry_after_seconds: 10
            }
        );
    }

    #[test]
    fn one_ipv6_network_is_one_client() {
        let store = MemoryStore::default();
        let slots = Slots::new("b.", 1024);
        let s = spec(1, 2);
        let v6 = |s: &str| -> IpAddr { s.parse().unwrap_or(IpAddr::V4(0.into())) };
        // Addresses of one /64 share a bucket...
        assert_eq!(
            take(&store, &slots, &s, v6("2001:db8:1:2::1"), 0, SEC),
            Outcome::Allowed
        );
        assert_eq!(
            take(&store, &slots, &s, v6("2001:db8:1:2:ffff::9"), 0, SEC),
            Outcome::Allowed
        );
        assert!(matches!(
            take(&store, &slots, &s, v6("2001:db8:1:2:dead:beef:0:1"), 0, SEC),
            Outcome::Limited { .. }
        ));
        // ...another /64 has its own.
        assert_eq!(
            take(&store, &slots, &s, v6("2001:db8:1:3::1"), 0, SEC),
            Outcome::Allowed
        );
        // Per address when asked (prefix 128), and IPv4 networks when asked.
        let each = BucketSpec {
            ipv6_prefix: 128,
            ipv4_prefix: 24,
            ..spec(1, 1)
        };
        assert_eq!(
            take(&store, &slots, &each, v6("2001:db8:9::1"), 0, SEC),
            Outcome::Allowed
        );
        assert_eq!(
            take(&store, &slots, &each, v6("2001:db8:9::2"), 0, SEC),
            Outcome::Allowed
        );
        assert_eq!(
            take(&store, &slots, &each, ip(0x0a00_0001), 0, SEC),
            Outcome::Allowed
        );
        assert!(matches!(
            take(&store, &slots, &each, ip(0x0a00_00fe), 0, SEC),
            Outcome::Limited { .. }
        ));
    }

    #[test]
    fn networks_are_masked_and_mapped_addresses_count_as_ipv4() {
        let net = |s: &str, v4: u8, v6: u8| {
            client_network(s.parse().unwrap_or(IpAddr::V4(0.into())), v4, v6).to_string()
        };
        assert_eq!(net("2001:db8:1:2:3:4:5:6", 32, 64), "2001:db8:1:2::");
        assert_eq!(net("2001:db8:1:2:3:4:5:6", 32, 48), "2001:db8:1::");
        assert_eq!(net("2001:db8:1:2:3:4:5:6", 32, 128), "2001:db8:1:2:3:4:5:6");
        assert_eq!(net("2001:db8::1", 32, 0), "::");
        assert_eq!(net("192.0.2.77", 32, 64), "192.0.2.77");
        assert_eq!(net("192.0.2.77", 24, 64), "192.0.2.0");
        assert_eq!(net("::ffff:192.0.2.77", 32, 64), "192.0.2.77");
        assert_eq!(net("192.0.2.77", 0, 64), "0.0.0.0");
    }

    #[test]
    fn per_route_buckets_are_separate() {
        let store = MemoryStore::default();
        let slots = Slots::new("b.", 64);
        let s = BucketSpec {
            per_route: true,
            ..spec(1, 1)
        };
        assert_eq!(take(&store, &slots, &s, ip(1), 0, SEC), Outcome::Allowed);
        assert_eq!(take(&store, &slots, &s, ip(1), 1, SEC), Outcome::Allowed);
        assert!(matches!(
            take(&store, &slots, &s, ip(1), 0, SEC),
            Outcome::Limited { .. }
        ));
    }

    #[test]
    fn a_spraying_flood_keeps_memory_bounded_and_the_limited_client_limited() {
        let store = MemoryStore::default();
        let slots = Slots::new("b.", 64);
        let s = spec(1, 5);
        let t = 10 * SEC;
        let abuser = ip(7);
        for _ in 0..5 {
            assert_eq!(take(&store, &slots, &s, abuser, 0, t), Outcome::Allowed);
        }
        for i in 0..100_000u32 {
            let _ = take(&store, &slots, &s, ip(1_000_000 + i), 0, t);
        }
        assert!(store.len() <= 16);
        assert!(matches!(
            take(&store, &slots, &s, abuser, 0, t),
            Outcome::Limited { .. }
        ));
    }

    #[test]
    fn persistent_cas_conflicts_fail_closed() {
        struct Busy;
        impl SharedStore for Busy {
            fn get(&self, _: &str) -> Option<(Vec<u8>, u32)> {
                Some((Vec::new(), 1))
            }
            fn set(&self, _: &str, _: &[u8], _: Option<u32>) -> Result<(), StoreError> {
                Err(StoreError::CasMismatch)
            }
        }
        let slots = Slots::new("b.", 4);
        assert_eq!(
            take(&Busy, &slots, &spec(1, 1), ip(1), 0, SEC),
            Outcome::Unavailable
        );
    }

    #[test]
    fn garbage_in_shared_data_is_read_as_empty_buckets() {
        let store = MemoryStore::default();
        let slots = Slots::new("b.", 4);
        store.set("b.0", b"short", None).unwrap();
        assert_eq!(
            take(&store, &slots, &spec(1, 1), ip(1), 0, SEC),
            Outcome::Allowed
        );
    }
}
