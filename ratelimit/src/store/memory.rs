//! The in-memory store: counters in sharded mutex-protected maps, expired entries swept.

use crate::algorithm::{self, Algorithm, Outcome, WindowState};
use crate::clock::Clock;
use crate::store::Check;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};

/// Shards: enough that concurrent requests rarely wait on one another.
const SHARDS: usize = 64;

/// One counter's state.
#[derive(Debug, Clone, Copy)]
enum State {
    Window(WindowState, u64),
    Gcra(f64),
}

impl State {
    /// Whether the state can be forgotten at `now` (µs): its window is over, or its GCRA bucket
    /// is full again (a missing state means exactly that).
    fn expired(&self, now: u64) -> bool {
        match self {
            Self::Window(w, window) => w.start.saturating_add(*window) <= now,
            Self::Gcra(tat) => *tat <= now as f64,
        }
    }
}

/// Counters in this process; decisions are atomic per key (one shard lock).
pub struct MemoryStore {
    shards: Vec<Mutex<HashMap<String, State>>>,
    /// Where a key would go if a shard index were ever out of range (it cannot be: the index is
    /// reduced modulo the shard count), so that the lookup needs no panic path.
    spare: Mutex<HashMap<String, State>>,
    hasher: RandomState,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store reading time from `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            spare: Mutex::new(HashMap::new()),
            hasher: RandomState::new(),
            clock,
        }
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, HashMap<String, State>> {
        let hash = usize::try_from(self.hasher.hash_one(key) % SHARDS as u64).unwrap_or(0);
        // A panic while holding a shard cannot leave a counter half-updated (each update is one
        // assignment), so a poisoned lock is still usable.
        self.shards
            .get(hash)
            .unwrap_or(&self.spare)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Decides every check at the clock's current time.
    pub fn check(&self, checks: &[Check]) -> Vec<Outcome> {
        let now = self.clock.now_micros();
        checks
            .iter()
            .map(|c| {
                let mut shard = self.shard(&c.key);
                match c.limit.algorithm {
                    Algorithm::FixedWindow => {
                        let window = c.limit.unit.micros();
                        let mut state = match shard.get(&c.key) {
                            Some(State::Window(w, _)) => *w,
                            _ => WindowState::default(),
                        };
                        let outcome = algorithm::fixed_window(&mut state, now, &c.limit, c.hits);
                        upsert(&mut shard, &c.key, State::Window(state, window));
                        outcome
                    }
                    Algorithm::Gcra { .. } => {
                        let mut tat = match shard.get(&c.key) {
                            Some(State::Gcra(t)) => *t,
                            _ => 0.0,
                        };
                        let outcome = algorithm::gcra(&mut tat, now, &c.limit, c.hits);
                        upsert(&mut shard, &c.key, State::Gcra(tat));
                        outcome
                    }
                }
            })
            .collect()
    }

    /// Forgets every expired counter (called periodically by the server).
    pub fn sweep(&self) -> usize {
        let now = self.clock.now_micros();
        let mut removed = 0;
        for shard in self.shards.iter().chain([&self.spare]) {
            let mut map = shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let before = map.len();
            map.retain(|_, s| !s.expired(now));
            removed += before - map.len();
        }
        removed
    }

    /// Number of live counters (tests, logs).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .chain([&self.spare])
            .map(|s| {
                s.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .len()
            })
            .sum()
    }

    /// Whether no counter is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Stores a state, allocating the key only for a new counter.
fn upsert(map: &mut HashMap<String, State>, key: &str, state: State) {
    match map.get_mut(key) {
        Some(slot) => *slot = state,
        None => {
            map.insert(key.to_owned(), state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::{Hits, Limit, Unit};
    use crate::clock::ManualClock;

    #[test]
    fn counts_per_key_and_sweeps() {
        let clock = Arc::new(ManualClock::new(1_000_000_000));
        let store = MemoryStore::new(clock.clone());
        let check = |key: &str| Check {
            key: key.into(),
            limit: Limit {
                requests_per_unit: 2,
                unit: Unit::Second,
                algorithm: Algorithm::FixedWindow,
            },
            hits: Hits {
                count: 1,
                refund: false,
            },
        };
        let allowed = |k: &str| store.check(&[check(k)])[0].allowed;
        assert!(allowed("a"));
        assert!(allowed("a"));
        assert!(!allowed("a"));
        assert!(allowed("b"));
        assert_eq!(store.len(), 2);
        clock.advance(1_000_000);
        assert_eq!(store.sweep(), 2);
        assert!(store.is_empty());
        assert!(allowed("a"));
    }
}
