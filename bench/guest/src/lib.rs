//! The policy's header-phase decision, exported so that `portcullis-bench` can time it inside
//! wasmtime: the same code as `portcullis.wasm`, compiled the same way, without the proxy-wasm
//! ABI around it (the host issue measures the whole filter).
//!
//! Protocol: the host writes a JSON setup document into memory from `bench_alloc`, calls
//! `bench_setup`, then times `bench_run`.

use portcullis::cache::TokenCache;
use portcullis::config::Config;
use portcullis::decision::Verdict;
use portcullis::request::Request;
use std::cell::RefCell;

struct State {
    config: Config,
    cache: TokenCache,
    headers: Vec<(String, String)>,
    now: u64,
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
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

/// Reads `{"config": {...}, "headers": [[name, value], ...], "now": secs}`; 0 on success.
///
/// # Safety
/// `ptr..ptr+len` must be memory returned by `bench_alloc` and written by the host.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bench_setup(ptr: *const u8, len: u32) -> i32 {
    // SAFETY: the host wrote `len` bytes at `ptr`, which `bench_alloc` returned.
    let bytes = unsafe { std::slice::from_raw_parts(ptr, len as usize) };
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return 1;
    };
    let Ok(config) = Config::from_json(doc["config"].to_string().as_bytes()) else {
        return 2;
    };
    let Ok(headers) = serde_json::from_value::<Vec<(String, String)>>(doc["headers"].clone())
    else {
        return 3;
    };
    let now = doc["now"].as_u64().unwrap_or(0);
    let cache = config.token_cache();
    STATE.with(|s| {
        *s.borrow_mut() = Some(State {
            config,
            cache,
            headers,
            now,
        })
    });
    0
}

/// Decides the prepared request `iterations` times; returns how many were allowed (so the
/// work cannot be optimised away, and the host can check the scenario is what it claims).
#[unsafe(no_mangle)]
pub extern "C" fn bench_run(iterations: u32) -> u32 {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        let Some(state) = s.as_mut() else {
            return 0;
        };
        let mut allowed = 0;
        for _ in 0..iterations {
            let req = Request::new(&state.headers);
            let d = decide(&state.config, &mut state.cache, &req, state.now);
            if d.verdict == Verdict::Allow {
                allowed += 1;
            }
        }
        allowed
    })
}

/// The header decision for a request without a body from a fixed peer, at `now` seconds.
fn decide(
    config: &portcullis::config::Config,
    cache: &mut portcullis::cache::TokenCache,
    req: &Request<'_>,
    now: u64,
) -> portcullis::decision::Decision {
    let store = portcullis::burst::MemoryStore::default();
    let mut env = portcullis::decision::Env {
        cache,
        store: &store,
        now_ns: now.saturating_mul(1_000_000_000),
        peer: Some(std::net::IpAddr::from([203, 0, 113, 7])),
        end_of_stream: true,
    };
    portcullis::decision::decide(config, &mut env, req)
}
