//! The policy's decision code exported so that `portcullis-bench` can time it inside wasmtime:
//! the same code as `portcullis.wasm`, compiled the same way, without the proxy-wasm ABI around
//! it (the burst guard's buckets live in a store inside the guest instead of Envoy's shared data).
//!
//! Protocol: the host writes a JSON setup document into memory from `bench_alloc`, calls
//! `bench_setup`, then times `bench_run`. Two kinds of setup:
//! - `{"decide": {"config": {...}, "headers": [[name, value], ...], "now": secs, "body": "..."}}`:
//!   each run is a header-phase decision, then, when a body is given and the decision asks for
//!   it, the body phase;
//! - `{"ip_lookup": {"networks": ["10.0.0.0/8", ...], "probes": ["10.1.2.3", ...]}}`: each run
//!   looks one probe address up in the set built from the networks.

use ipnet::IpNet;
use portcullis::burst::MemoryStore;
use portcullis::cache::TokenCache;
use portcullis::config::Config;
use portcullis::decision::{self, Env, Verdict};
use portcullis::guard;
use portcullis::ipset::IpSet;
use portcullis::request::Request;
use serde_json::Value;
use std::cell::RefCell;
use std::net::IpAddr;

/// Nanoseconds the clock moves per decision, so the burst guard refills as it would in a
/// steady stream of requests.
const TICK_NS: u64 = 10_000;

/// Prepared work, timed by [`Workload::run`]. The bench runs the same type natively.
pub enum Workload {
    /// Requests through the decision.
    Decide(Box<Decide>),
    /// Addresses looked up in an IP set.
    IpLookup {
        /// The set built from the networks.
        set: IpSet,
        /// Addresses looked up in turn.
        probes: Vec<IpAddr>,
    },
}

/// A request decided again and again, as one client sends it.
pub struct Decide {
    config: Config,
    cache: TokenCache,
    store: MemoryStore,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    now_ns: u64,
}

thread_local! {
    static STATE: RefCell<Option<Workload>> = const { RefCell::new(None) };
}

/// Allocates `len` bytes for the host to write the setup document into (leaked on purpose:
/// one allocation per scenario).
#[unsafe(no_mangle)]
pub extern "C" fn bench_alloc(len: u32) -> *mut u8 {
    let mut buf = vec![0u8; len as usize];
    let ptr = buf.as_mut_ptr();
    std::mem::forget(buf);
    ptr
}

/// Reads a setup document (see the module documentation); 0 on success, else the
/// [`Workload::setup`] error code.
///
/// # Safety
/// `ptr..ptr+len` must be memory returned by `bench_alloc` and written by the host.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bench_setup(ptr: *const u8, len: u32) -> i32 {
    // SAFETY: the host wrote `len` bytes at `ptr`, which `bench_alloc` returned.
    let bytes = unsafe { std::slice::from_raw_parts(ptr, len as usize) };
    let Ok(doc) = serde_json::from_slice::<Value>(bytes) else {
        return 1;
    };
    match Workload::setup(&doc) {
        Ok(w) => {
            STATE.with(|s| *s.borrow_mut() = Some(w));
            0
        }
        Err(code) => code,
    }
}

/// Runs the prepared work `iterations` times (see [`Workload::run`]).
#[unsafe(no_mangle)]
pub extern "C" fn bench_run(iterations: u32) -> u32 {
    STATE.with(|s| s.borrow_mut().as_mut().map_or(0, |w| w.run(iterations)))
}

impl Workload {
    /// Prepares the work a setup document describes. Errors are small codes, because the wasm
    /// export can only return a number: 2 bad config, 3 bad headers, 4 bad lists, 5 bad
    /// network, 6 bad address, 7 no probes, 9 unknown kind.
    pub fn setup(doc: &Value) -> Result<Workload, i32> {
        if let Some(d) = doc.get("decide") {
            Ok(Workload::Decide(Box::new(setup_decide(d)?)))
        } else if let Some(l) = doc.get("ip_lookup") {
            setup_ip_lookup(l)
        } else {
            Err(9)
        }
    }

    /// Runs the work `iterations` times; returns how many requests were allowed (or how many
    /// probes were in the set), so that the work cannot be optimised away and the caller can
    /// check that the scenario is what it claims.
    pub fn run(&mut self, iterations: u32) -> u32 {
        match self {
            Workload::Decide(d) => (0..iterations).filter(|_| d.run_once()).count() as u32,
            Workload::IpLookup { set, probes } => (0..iterations as usize)
                .filter(|i| set.contains(probes[i % probes.len()]))
                .count() as u32,
        }
    }
}

fn setup_decide(doc: &Value) -> Result<Decide, i32> {
    let config = Config::from_json(doc["config"].to_string().as_bytes()).map_err(|_| 2)?;
    let headers =
        serde_json::from_value::<Vec<(String, String)>>(doc["headers"].clone()).map_err(|_| 3)?;
    let body = doc["body"].as_str().map(|b| b.as_bytes().to_vec());
    let now_ns = doc["now"]
        .as_u64()
        .unwrap_or(0)
        .saturating_mul(1_000_000_000);
    let cache = config.token_cache();
    Ok(Decide {
        config,
        cache,
        store: MemoryStore::default(),
        headers,
        body,
        now_ns,
    })
}

fn setup_ip_lookup(doc: &Value) -> Result<Workload, i32> {
    let strings = |key: &str| -> Result<Vec<String>, i32> {
        serde_json::from_value(doc[key].clone()).map_err(|_| 4)
    };
    let networks = strings("networks")?
        .iter()
        .map(|n| n.parse::<IpNet>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| 5)?;
    let probes = strings("probes")?
        .iter()
        .map(|p| p.parse::<IpAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| 6)?;
    if probes.is_empty() {
        return Err(7);
    }
    Ok(Workload::IpLookup {
        set: IpSet::new(&networks),
        probes,
    })
}

impl Decide {
    /// One request from a fixed peer: the header phase, then the body phase when a body is
    /// given; whether it was allowed.
    fn run_once(&mut self) -> bool {
        self.attempt().is_ok()
    }

    /// One request; the reason it was refused, if it was.
    fn attempt(&mut self) -> Result<(), &'static str> {
        self.now_ns += TICK_NS;
        let req = Request::new(&self.headers);
        let mut env = Env {
            cache: &mut self.cache,
            store: &self.store,
            now_ns: self.now_ns,
            peer: Some(IpAddr::from([203, 0, 113, 7])),
            remote_keys: &portcullis::jwks::RemoteKeys::default(),
            introspected: &mut portcullis::introspect::IntrospectionCache::default(),
            answer: None,
            waited: Default::default(),
            end_of_stream: self.body.is_none(),
        };
        let d = decision::decide(&self.config, &mut env, &req);
        if d.verdict != Verdict::Allow {
            return Err(d.reason);
        }
        let Some(body) = &self.body else {
            return Ok(());
        };
        let (Some(plan), Some(route)) = (d.body, d.route.and_then(|i| self.config.routes.get(i)))
        else {
            return Err("no body plan");
        };
        match guard::check_body(route, &plan, body) {
            Some(stop) => Err(stop.reason),
            None => Ok(()),
        }
    }
}

impl Workload {
    /// Why one run of a decision workload is refused, if it is (for error messages).
    pub fn refusal(&mut self) -> Option<&'static str> {
        match self {
            Workload::Decide(d) => d.attempt().err(),
            Workload::IpLookup { .. } => None,
        }
    }
}
