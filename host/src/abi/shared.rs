//! Process-wide state every worker VM sees: shared data (CPPH `shared_data.cc`), shared queues
//! (CPPH `shared_queue.cc`), the log sink and level (ECTX `Context::log`), and the stats.

use super::types::{LogLevel, LogRecord, QueueReady};
use crate::stats::Stats;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

/// Where log records go. Tests capture them; the default prints Envoy-like lines on stderr.
pub type LogSink = Arc<dyn Fn(LogRecord) + Send + Sync>;

/// Process-wide host state; clones share it (one per host, handed to every [`super::Vm`]).
#[derive(Clone)]
pub struct HostShared {
    inner: Arc<Inner>,
}

struct Inner {
    data: Mutex<SharedData>,
    queues: Mutex<Queues>,
    log_sink: LogSink,
    log_level: AtomicU32,
    stats: Stats,
    next_vm_key: AtomicU64,
    clusters: RwLock<Option<HashSet<String>>>,
}

#[derive(Default)]
struct SharedData {
    /// vm_id → key → (value, cas).
    by_vm: HashMap<String, HashMap<String, (Vec<u8>, u32)>>,
    /// Last cas handed out; global across vm_ids, never 0 (CPPH `SharedData::nextCas`).
    cas: u32,
}

#[derive(Default)]
struct Queues {
    by_key: HashMap<(String, String), u32>,
    by_id: HashMap<u32, Queue>,
    next_id: u32,
    /// Notifications waiting for each worker's event loop.
    ready: HashMap<usize, Vec<QueueReady>>,
}

struct Queue {
    items: VecDeque<Vec<u8>>,
    /// Most recent registrant: (worker, vm key).
    target: (usize, u64),
}

/// Outcome of [`HostShared::set_shared_data`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasResult {
    /// Stored with a new cas.
    Ok,
    /// The key exists with a different non-zero cas.
    Mismatch,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl HostShared {
    /// Host state with the default log sink (stderr, Envoy-like lines) and log level info
    /// (Envoy's default).
    pub fn new(stats: Stats) -> HostShared {
        HostShared::with_log_sink(
            stats,
            Arc::new(|record: LogRecord| eprintln!("{}", record.envoy_line())),
        )
    }

    /// Host state sending log records to `sink`.
    pub fn with_log_sink(stats: Stats, sink: LogSink) -> HostShared {
        HostShared {
            inner: Arc::new(Inner {
                data: Mutex::new(SharedData::default()),
                queues: Mutex::new(Queues::default()),
                log_sink: sink,
                log_level: AtomicU32::new(LogLevel::Info.to_abi()),
                stats,
                next_vm_key: AtomicU64::new(1),
                clusters: RwLock::new(None),
            }),
        }
    }

    /// The stats registry.
    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    /// The `wasm` logger level: records below it are dropped, and `proxy_get_log_level`
    /// returns it (ECTX `getLogLevel`).
    pub fn log_level(&self) -> LogLevel {
        LogLevel::from_abi(self.inner.log_level.load(Ordering::Relaxed) as i32)
            .unwrap_or(LogLevel::Info)
    }

    /// Sets the `wasm` logger level (`--component-log-level wasm:debug`).
    pub fn set_log_level(&self, level: LogLevel) {
        self.inner
            .log_level
            .store(level.to_abi(), Ordering::Relaxed);
    }

    /// Hands a record to the sink if its level is enabled.
    pub(crate) fn log(&self, record: LogRecord) {
        if record.level >= self.log_level() {
            (self.inner.log_sink)(record);
        }
    }

    /// Declares the cluster names callouts may target: `proxy_http_call` to another name is
    /// BadArgument, `proxy_grpc_call` ParseFailure (ECTX `httpCall`/`grpcCall`). Until called,
    /// every name is accepted.
    pub fn set_clusters<I: IntoIterator<Item = String>>(&self, names: I) {
        let set: HashSet<String> = names.into_iter().collect();
        *self
            .inner
            .clusters
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(set);
    }

    pub(crate) fn cluster_known(&self, name: &str) -> bool {
        self.inner
            .clusters
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_none_or(|set| set.contains(name))
    }

    pub(crate) fn next_vm_key(&self) -> u64 {
        self.inner.next_vm_key.fetch_add(1, Ordering::Relaxed)
    }

    /// `proxy_get_shared_data`: value and cas, or `None` (NotFound).
    pub fn get_shared_data(&self, vm_id: &str, key: &str) -> Option<(Vec<u8>, u32)> {
        let data = lock(&self.inner.data);
        data.by_vm.get(vm_id)?.get(key).cloned()
    }

    /// `proxy_set_shared_data` as CPPH `SharedData::set`: a non-zero cas must match the
    /// stored one if the key exists; a non-zero cas on a missing key still succeeds.
    pub fn set_shared_data(&self, vm_id: &str, key: &str, value: &[u8], cas: u32) -> CasResult {
        let mut data = lock(&self.inner.data);
        let exists_with = data
            .by_vm
            .get(vm_id)
            .and_then(|m| m.get(key))
            .map(|(_, c)| *c);
        if let Some(stored) = exists_with
            && cas != 0
            && cas != stored
        {
            return CasResult::Mismatch;
        }
        data.cas = data.cas.wrapping_add(1);
        if data.cas == 0 {
            data.cas = 1;
        }
        let new_cas = data.cas;
        data.by_vm
            .entry(vm_id.to_owned())
            .or_default()
            .insert(key.to_owned(), (value.to_vec(), new_cas));
        CasResult::Ok
    }

    /// `proxy_register_shared_queue`: id of (vm_id, name), created if new; the caller becomes
    /// the notification target (the most recent registrant wins).
    pub(crate) fn register_queue(&self, vm_id: &str, name: &str, worker: usize, vm: u64) -> u32 {
        let mut q = lock(&self.inner.queues);
        let key = (vm_id.to_owned(), name.to_owned());
        if let Some(&id) = q.by_key.get(&key) {
            if let Some(queue) = q.by_id.get_mut(&id) {
                queue.target = (worker, vm);
            }
            return id;
        }
        q.next_id += 1;
        let id = q.next_id;
        q.by_key.insert(key, id);
        q.by_id.insert(
            id,
            Queue {
                items: VecDeque::new(),
                target: (worker, vm),
            },
        );
        id
    }

    /// `proxy_resolve_shared_queue`: id of (vm_id, name), if registered.
    pub fn resolve_queue(&self, vm_id: &str, name: &str) -> Option<u32> {
        let q = lock(&self.inner.queues);
        q.by_key.get(&(vm_id.to_owned(), name.to_owned())).copied()
    }

    /// `proxy_enqueue_shared_queue`: false for an unknown id (NotFound). Queues a
    /// [`QueueReady`] for the registrant's worker, delivered asynchronously as in Envoy.
    pub fn enqueue(&self, id: u32, value: &[u8]) -> bool {
        let mut q = lock(&self.inner.queues);
        let Some(queue) = q.by_id.get_mut(&id) else {
            return false;
        };
        queue.items.push_back(value.to_vec());
        let (worker, vm) = queue.target;
        q.ready.entry(worker).or_default().push(QueueReady {
            worker,
            vm,
            queue_id: id,
        });
        true
    }

    /// `proxy_dequeue_shared_queue`: `None` for an unknown id (NotFound), `Some(None)` when
    /// empty (Empty).
    pub fn dequeue(&self, id: u32) -> Option<Option<Vec<u8>>> {
        let mut q = lock(&self.inner.queues);
        let queue = q.by_id.get_mut(&id)?;
        Some(queue.items.pop_front())
    }

    /// The queue-ready notifications waiting for `worker`; the worker delivers each with
    /// [`super::Vm::on_queue_ready`] on the VM whose [`super::Vm::key`] matches.
    pub fn take_queue_ready(&self, worker: usize) -> Vec<QueueReady> {
        let mut q = lock(&self.inner.queues);
        q.ready.remove(&worker).unwrap_or_default()
    }
}

impl std::fmt::Debug for HostShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostShared").finish_non_exhaustive()
    }
}
