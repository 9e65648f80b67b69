//! One worker: a thread with a current-thread runtime, its own VM per plugin (Envoy: one VM per
//! worker thread, CPPH `getOrCreateThreadLocalPlugin`), its own upstream pools, and the tasks
//! that act on the VMs' effects (callouts, ticks, queue notifications).

use super::body::LocalExec;
use super::callout;
use super::stream::{self, ConnInfo, TlsInfo};
use super::{Listening, Process};
use crate::abi::{Effect, StreamId, Vm};
use crate::proxy::upstream::Upstreams;
use hyper_util::rt::TokioIo;
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinHandle};

/// A stream-level effect, addressed to the filter (index in its chain) that caused it.
#[derive(Debug)]
pub(crate) struct StreamEvent {
    /// Index of the filter in the stream's chain.
    pub filter: usize,
    /// What the module asked.
    pub effect: Effect,
}

/// How often the worker looks for `proxy_on_queue_ready` notifications (Envoy posts them to
/// the registrant's dispatcher; polling bounds the delay instead).
const QUEUE_POLL: Duration = Duration::from_millis(5);

/// Where a stream's effects go: its filter index and the stream driver's channel.
type StreamRoute = (usize, mpsc::UnboundedSender<StreamEvent>);

/// Per-worker state, shared by the worker's tasks through `Rc`.
pub(crate) struct Worker {
    pub id: usize,
    pub process: Arc<Process>,
    /// One VM per plugin, indexed like `Process::plugins`.
    pub vms: Vec<RefCell<Vm>>,
    pub upstreams: Upstreams,
    streams: RefCell<HashMap<(usize, StreamId), StreamRoute>>,
    ticks: RefCell<HashMap<usize, JoinHandle<()>>>,
    grpc: RefCell<HashMap<(usize, u32), AbortHandle>>,
}

impl Worker {
    pub fn new(id: usize, process: Arc<Process>, vms: Vec<Vm>, upstreams: Upstreams) -> Rc<Worker> {
        Rc::new(Worker {
            id,
            process,
            vms: vms.into_iter().map(RefCell::new).collect(),
            upstreams,
            streams: RefCell::new(HashMap::new()),
            ticks: RefCell::new(HashMap::new()),
            grpc: RefCell::new(HashMap::new()),
        })
    }

    /// Calls into plugin `p`'s VM, then acts on what the call asked (ECTX "after VM call"
    /// actions run once the callback returned). Never holds the VM across an await.
    pub fn with_vm<R>(self: &Rc<Self>, p: usize, f: impl FnOnce(&mut Vm) -> R) -> R {
        let r = match self.vms.get(p) {
            Some(vm) => f(&mut vm.borrow_mut()),
            None => return f_missing(),
        };
        self.dispatch(p);
        r
    }

    /// Registers a stream's filter so its stream effects reach the stream's driver.
    pub fn register_stream(
        &self,
        p: usize,
        id: StreamId,
        filter: usize,
        tx: mpsc::UnboundedSender<StreamEvent>,
    ) {
        self.streams.borrow_mut().insert((p, id), (filter, tx));
    }

    /// Forgets a finished stream.
    pub fn unregister_stream(&self, p: usize, id: StreamId) {
        self.streams.borrow_mut().remove(&(p, id));
    }

    fn to_stream(&self, p: usize, id: StreamId, effect: Effect) {
        let streams = self.streams.borrow();
        if let Some((filter, tx)) = streams.get(&(p, id)) {
            let _ = tx.send(StreamEvent {
                filter: *filter,
                effect,
            });
        }
    }

    /// Drains plugin `p`'s effects: stream effects go to their stream, callouts and timers
    /// start here.
    pub fn dispatch(self: &Rc<Self>, p: usize) {
        let Some(vm) = self.vms.get(p) else {
            return;
        };
        let effects = vm.borrow_mut().take_effects();
        for effect in effects {
            match effect {
                Effect::LocalReply { stream, .. }
                | Effect::ContinueStream { stream, .. }
                | Effect::CloseStream { stream, .. }
                | Effect::CloseConnection { stream, .. } => self.to_stream(p, stream, effect),
                Effect::HttpCall {
                    token,
                    cluster,
                    headers,
                    body,
                    trailers,
                    timeout,
                } => {
                    let w = Rc::clone(self);
                    tokio::task::spawn_local(async move {
                        callout::http_call(w, p, token, cluster, headers, body, trailers, timeout)
                            .await;
                    });
                }
                Effect::GrpcCall {
                    token,
                    cluster,
                    service,
                    method,
                    initial_metadata,
                    message,
                    timeout,
                } => {
                    let w = Rc::clone(self);
                    let call = callout::GrpcUnary {
                        token,
                        cluster,
                        service,
                        method,
                        metadata: initial_metadata,
                        message,
                        timeout,
                    };
                    let handle = tokio::task::spawn_local(async move {
                        callout::grpc_call(w, p, call).await;
                    });
                    self.grpc
                        .borrow_mut()
                        .insert((p, token), handle.abort_handle());
                }
                Effect::GrpcStreamOpen { token, .. } => {
                    // gRPC streams are not implemented: close at once with UNIMPLEMENTED so
                    // the module is not left waiting.
                    let w = Rc::clone(self);
                    tokio::task::spawn_local(async move {
                        w.with_vm(p, |vm| {
                            vm.on_grpc_close(
                                token,
                                12,
                                "gRPC streams are not implemented by portcullis-host",
                            )
                        });
                    });
                }
                Effect::GrpcSend { .. } => {}
                Effect::GrpcCancel { token } | Effect::GrpcClose { token } => {
                    // Envoy: cancelling a call delivers no callback.
                    if let Some(h) = self.grpc.borrow_mut().remove(&(p, token)) {
                        h.abort();
                    }
                }
                Effect::SetTickPeriod(period) => self.set_tick(p, period),
                Effect::Done => {}
            }
        }
    }

    /// The gRPC call finished (its abort handle is no longer needed).
    pub fn grpc_done(&self, p: usize, token: u32) {
        self.grpc.borrow_mut().remove(&(p, token));
    }

    /// One timer per root context on this worker; the first tick after one period, re-armed
    /// after each callback (EWASM `Wasm::setTimerPeriod`, `tickHandler`). Zero disables.
    fn set_tick(self: &Rc<Self>, p: usize, period: Duration) {
        if let Some(h) = self.ticks.borrow_mut().remove(&p) {
            h.abort();
        }
        if period.is_zero() {
            return;
        }
        let w = Rc::clone(self);
        let handle = tokio::task::spawn_local(async move {
            loop {
                tokio::time::sleep(period).await;
                let failed = w.with_vm(p, |vm| {
                    vm.on_tick();
                    vm.is_failed()
                });
                if failed {
                    break;
                }
            }
        });
        self.ticks.borrow_mut().insert(p, handle);
    }

    /// Delivers `proxy_on_queue_ready` to the registrant VM on this worker.
    pub async fn poll_queues(self: Rc<Self>) {
        let mut iv = tokio::time::interval(QUEUE_POLL);
        loop {
            iv.tick().await;
            for ready in self.process.shared.take_queue_ready(self.id) {
                let Some(p) = self.vms.iter().position(|vm| vm.borrow().key() == ready.vm) else {
                    continue;
                };
                self.with_vm(p, |vm| vm.on_queue_ready(ready.queue_id));
            }
        }
    }

    /// Accepts connections on one listener until shutdown.
    pub async fn accept_loop(
        self: Rc<Self>,
        listening: Rc<Listening>,
        listener: tokio::net::TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((tcp, peer)) = accepted else { continue };
                    let w = Rc::clone(&self);
                    let l = Rc::clone(&listening);
                    tokio::task::spawn_local(async move { w.serve_connection(l, tcp, peer).await });
                }
                _ = shutdown.changed() => break,
            }
        }
    }

    async fn serve_connection(
        self: Rc<Self>,
        l: Rc<Listening>,
        tcp: tokio::net::TcpStream,
        peer: SocketAddr,
    ) {
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().unwrap_or(l.bound);
        let stats = &self.process.stats;
        stats.add(&format!("listener.{}.downstream_cx_total", l.stat_addr), 1);
        stats.add(
            &format!("http.{}.downstream_cx_total", l.hcm.stat_prefix),
            1,
        );
        let id = self.process.next_connection_id();
        match &l.tls {
            None => {
                let conn = Rc::new(ConnInfo {
                    source: peer,
                    destination: local,
                    id,
                    tls: None,
                });
                serve_io(self, l, conn, TokioIo::new(tcp)).await;
            }
            Some(acceptor) => {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let (_, session) = tls.get_ref();
                let info = TlsInfo {
                    sni: session.server_name().map(str::to_owned),
                    version: session.protocol_version().map(|v| match v {
                        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".to_owned(),
                        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".to_owned(),
                        other => format!("{other:?}"),
                    }),
                    mtls: session.peer_certificates().is_some_and(|c| !c.is_empty()),
                };
                let conn = Rc::new(ConnInfo {
                    source: peer,
                    destination: local,
                    id,
                    tls: Some(info),
                });
                serve_io(self, l, conn, TokioIo::new(tls)).await;
            }
        }
    }
}

fn f_missing<R>() -> R {
    // Plugin indices come from the process's own list; a miss is a host bug. Abort loudly
    // without `panic!` (denied in this crate) by exiting with Envoy's crash code.
    eprintln!("[critical][main] portcullis-host: internal error: unknown plugin index");
    std::process::exit(70)
}

async fn serve_io<I>(w: Rc<Worker>, l: Rc<Listening>, conn: Rc<ConnInfo>, io: I)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
{
    let mut builder = hyper_util::server::conn::auto::Builder::new(LocalExec);
    match l.hcm.codec_type {
        crate::bootstrap::CodecType::Http1 => builder = builder.http1_only(),
        crate::bootstrap::CodecType::Http2 => builder = builder.http2_only(),
        crate::bootstrap::CodecType::Auto => {}
    }
    let service = hyper::service::service_fn(move |req| {
        let w = Rc::clone(&w);
        let l = Rc::clone(&l);
        let conn = Rc::clone(&conn);
        async move { stream::handle(w, l, conn, req).await }
    });
    let _ = builder.serve_connection(io, service).await;
}
