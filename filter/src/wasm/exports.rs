//! The callbacks Envoy calls (the exports of proxy-wasm ABI 0.2.1) and the contexts they reach.
//!
//! The filter does this itself rather than through the proxy-wasm SDK's dispatcher, which
//! panics on anything unexpected (an unknown context or token, a refused
//! `proxy_set_effective_context`), and a panic kills the VM for every request of the worker.
//! Here an unknown context or token is ignored, or its request refused, and nothing unwraps.
//!
//! Envoy delivers every callout answer to the root context; [`register`] records which context
//! made each call (a stream, or the root for key fetches), so the answer reaches that context
//! with it as the effective context, or is dropped if the stream has gone.

use super::{Core, Flow, Root, hostcalls};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// A callout's token, by kind (Envoy numbers HTTP and gRPC calls apart, but the kinds arrive
/// through different callbacks, so they are kept apart here too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Callout {
    Http(u32),
    Grpc(u32),
}

/// The contexts of this VM and the owners of its callouts.
#[derive(Default)]
struct Contexts {
    roots: HashMap<u32, Rc<RefCell<Root>>>,
    streams: HashMap<u32, Rc<RefCell<Core>>>,
    callouts: HashMap<Callout, u32>,
}

thread_local! {
    static CONTEXTS: RefCell<Contexts> = RefCell::new(Contexts::default());
}

/// Runs `f` on the registry; `None` if it is in use (a callback cannot run inside another, so
/// this does not happen, but it must not panic if it did).
fn with<T>(f: impl FnOnce(&mut Contexts) -> T) -> Option<T> {
    CONTEXTS.with(|c| c.try_borrow_mut().ok().map(|mut c| f(&mut c)))
}

fn root(id: u32) -> Option<Rc<RefCell<Root>>> {
    with(|c| c.roots.get(&id).cloned()).flatten()
}

fn stream(id: u32) -> Option<Rc<RefCell<Core>>> {
    with(|c| c.streams.get(&id).cloned()).flatten()
}

/// Records that `context_id` made the call `callout`, so that its answer reaches it.
pub(crate) fn register(callout: Callout, context_id: u32) {
    let _ = with(|c| c.callouts.insert(callout, context_id));
}

/// An answer arrived: its call's owner, which Envoy made the effective context of the rest of
/// this callback; `None` for a call this VM does not know.
fn owner(callout: Callout) -> Option<Owner> {
    let id = with(|c| c.callouts.remove(&callout)).flatten()?;
    if let Some(core) = stream(id) {
        if core.try_borrow().is_ok_and(|c| c.finished) {
            return None;
        }
        hostcalls::set_effective_context(id).ok()?;
        return Some(Owner::Stream(core));
    }
    root(id).map(Owner::Root)
}

enum Owner {
    Root(Rc<RefCell<Root>>),
    Stream(Rc<RefCell<Core>>),
}

fn action(flow: Flow) -> u32 {
    match flow {
        Flow::Continue => 0,
        Flow::Pause => 1,
    }
}

/// The marker Envoy reads to pick the ABI version.
#[unsafe(no_mangle)]
pub extern "C" fn proxy_abi_version_0_2_1() {}

#[cfg(target_os = "wasi")]
unsafe extern "C" {
    fn __wasm_call_ctors();
}

/// Module start (a WASI reactor): runs the static constructors the linker gathered, and makes
/// a panic, should one ever happen, say where in Envoy's log before the VM stops.
#[unsafe(no_mangle)]
pub extern "C" fn _initialize() {
    #[cfg(target_os = "wasi")]
    // SAFETY: called once by the host before any other export, as the reactor model requires.
    unsafe {
        __wasm_call_ctors();
    }
    std::panic::set_hook(Box::new(|info| {
        hostcalls::log(hostcalls::Level::Critical, &format!("portcullis: {info}"));
    }));
}

/// The host hands the filter bytes (headers, bodies, properties) in memory allocated here.
#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    hostcalls::allocate(size)
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_context_create(context_id: u32, parent_id: u32) {
    if parent_id == 0 {
        let root = Rc::new(RefCell::new(Root::new(context_id)));
        let _ = with(|c| c.roots.insert(context_id, root));
        return;
    }
    // A stream of an unknown root gets no configuration, so its request is refused (503).
    let core = match root(parent_id) {
        Some(root) => match root.try_borrow() {
            Ok(root) => root.new_stream(context_id),
            Err(_) => Root::new(parent_id).new_stream(context_id),
        },
        None => Root::new(parent_id).new_stream(context_id),
    };
    let _ = with(|c| c.streams.insert(context_id, core));
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_vm_start(_root_id: u32, _vm_configuration_size: usize) -> u32 {
    1
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_configure(root_id: u32, _configuration_size: usize) -> u32 {
    let configured = root(root_id)
        .and_then(|root| root.try_borrow_mut().ok().map(|mut r| r.on_configure()))
        .unwrap_or(false);
    u32::from(configured)
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_tick(root_id: u32) {
    if let Some(root) = root(root_id)
        && let Ok(mut root) = root.try_borrow_mut()
    {
        root.on_tick();
    }
}

/// Runs `f` on a stream; an unknown stream (or one in use) has its request refused: fail
/// closed.
fn on_stream(context_id: u32, f: impl FnOnce(&mut Core) -> Flow) -> u32 {
    let flow = match stream(context_id) {
        Some(core) => match core.try_borrow_mut() {
            Ok(mut core) => f(&mut core),
            Err(_) => Flow::Pause,
        },
        None => {
            let _ = hostcalls::send_local_response(
                503,
                &[("content-type", "application/json")],
                br#"{"error":"gateway_unavailable","message":"the gateway lost this request's state; retry shortly"}"#,
            );
            Flow::Pause
        }
    };
    action(flow)
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_request_headers(context_id: u32, _headers: usize, eos: u32) -> u32 {
    on_stream(context_id, |core| core.on_request_headers(eos != 0))
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_request_body(context_id: u32, body_size: usize, eos: u32) -> u32 {
    on_stream(context_id, |core| core.on_request_body(body_size, eos != 0))
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_request_trailers(context_id: u32, _trailers: usize) -> u32 {
    on_stream(context_id, Core::on_request_trailers)
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_response_headers(context_id: u32, _headers: usize, _eos: u32) -> u32 {
    if let Some(core) = stream(context_id)
        && let Ok(mut core) = core.try_borrow_mut()
    {
        core.on_response_headers();
    }
    0
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_log(context_id: u32) {
    if let Some(core) = stream(context_id)
        && let Ok(core) = core.try_borrow()
    {
        core.on_log();
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_done(context_id: u32) -> u32 {
    if let Some(core) = stream(context_id)
        && let Ok(mut core) = core.try_borrow_mut()
    {
        core.on_done();
    }
    1
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_delete(context_id: u32) {
    let _ = with(|c| {
        if let Some(core) = c.streams.remove(&context_id) {
            // A waiter or a pending answer may still hold it: mark it so nothing acts on it.
            if let Ok(mut core) = core.try_borrow_mut() {
                core.on_done();
            }
        } else {
            c.roots.remove(&context_id);
        }
    });
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_http_call_response(
    _root_id: u32,
    token: u32,
    headers: usize,
    body_size: usize,
    _trailers: usize,
) {
    match owner(Callout::Http(token)) {
        Some(Owner::Stream(core)) => {
            if let Ok(mut core) = core.try_borrow_mut() {
                core.on_introspection_answer(token, headers, body_size);
            }
        }
        Some(Owner::Root(root)) => {
            if let Ok(mut root) = root.try_borrow_mut() {
                root.on_http_call_response(token, headers, body_size);
            }
        }
        None => {}
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_grpc_receive(_root_id: u32, token: u32, message_size: usize) {
    grpc_answer(token, 0, message_size);
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_grpc_close(_root_id: u32, token: u32, status_code: u32) {
    // A unary call that succeeded was delivered by `proxy_on_grpc_receive` and is no longer
    // registered; a close with status 0 and no message is a failure of the call too.
    grpc_answer(token, status_code.max(1), 0);
}

fn grpc_answer(token: u32, status_code: u32, message_size: usize) {
    if let Some(Owner::Stream(core)) = owner(Callout::Grpc(token))
        && let Ok(mut core) = core.try_borrow_mut()
    {
        core.on_rate_limit_answer(token, status_code, message_size);
    }
}
