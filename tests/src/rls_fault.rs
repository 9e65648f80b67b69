//! A fake rate-limit service (Envoy's RLS v3, `envoy.service.ratelimit.v3.RateLimitService/
//! ShouldRateLimit`) over HTTP/2 on 127.0.0.1, written on the `h2` crate so that it can break a
//! gRPC answer where a real gRPC server never would.
//!
//! Each call is answered by an [`RlsAnswer`]: the default one, or the one registered for a
//! marker that the request message contains (a descriptor value, say: `"fault-reset"` in a
//! route's `generic_key` makes that route's calls get that answer). So one service can be
//! healthy for one route and broken for another.
//!
//! | answer | on the wire |
//! | --- | --- |
//! | [`RlsAnswer::Ok`], [`RlsAnswer::OverLimit`] | a correct `RateLimitResponse` (`overall_code` 1 or 2), `grpc-status: 0` |
//! | [`RlsAnswer::Malformed`] | a complete, correctly framed message with `grpc-status: 0` whose payload, `ff ff ff`, is not a `RateLimitResponse` (a truncated varint) |
//! | [`RlsAnswer::ResetStream`] | response headers, a gRPC frame whose length prefix promises 64 bytes with 2 sent, then `RST_STREAM` (`INTERNAL_ERROR`) |
//! | [`RlsAnswer::CloseConnection`] | the same headers and partial frame, then the TCP connection closed with RST |

use bytes::Bytes;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::mpsc;

/// The gRPC method the service answers (other paths get `grpc-status: 12`, UNIMPLEMENTED).
pub const SHOULD_RATE_LIMIT: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// How long a broken answer's bytes are left to reach Envoy before the reset.
pub const BEFORE_RESET: Duration = Duration::from_millis(100);

/// How a call is answered (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RlsAnswer {
    /// `OK`.
    Ok,
    /// `OVER_LIMIT`.
    OverLimit,
    /// `grpc-status: 0` with a payload that is not a `RateLimitResponse`.
    Malformed,
    /// Part of a message, then `RST_STREAM`.
    ResetStream,
    /// Part of a message, then the connection closed with RST.
    CloseConnection,
}

#[derive(Debug)]
struct State {
    default: RlsAnswer,
    by_marker: Vec<(String, RlsAnswer)>,
    /// Calls per marker (`""`: calls that matched none).
    calls: HashMap<String, usize>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl State {
    fn pick(&mut self, message: &[u8]) -> RlsAnswer {
        let found = self
            .by_marker
            .iter()
            .find(|(m, _)| message.windows(m.len()).any(|w| w == m.as_bytes()))
            .cloned();
        let (marker, answer) = found.unwrap_or((String::new(), self.default));
        *self.calls.entry(marker).or_default() += 1;
        answer
    }
}

/// The running service; stopped with its runtime on drop.
pub struct FakeRls {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FakeRls {
    /// Starts on 127.0.0.1 (a kernel-picked port), answering every call with `default`.
    pub fn start(default: RlsAnswer) -> io::Result<FakeRls> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fake-rls")
            .enable_all()
            .build()?;
        let std_listener = crate::net::bind()?;
        let addr = std_listener.local_addr()?;
        std_listener.set_nonblocking(true)?;
        let listener = {
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(std_listener)?
        };
        let state = Arc::new(Mutex::new(State {
            default,
            by_marker: Vec::new(),
            calls: HashMap::new(),
        }));
        let st = Arc::clone(&state);
        runtime.spawn(async move {
            // Ends with the runtime.
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve_connection(socket, Arc::clone(&st)));
            }
        });
        Ok(FakeRls {
            addr,
            state,
            runtime: Some(runtime),
        })
    }

    /// Where it listens (the address for an HTTP/2 Envoy cluster).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers calls whose request message contains `marker` with `answer` (the first marker
    /// registered that matches wins).
    pub fn answer_when(&self, marker: &str, answer: RlsAnswer) {
        lock(&self.state)
            .by_marker
            .push((marker.to_owned(), answer));
    }

    /// Calls received so far whose message contained `marker` (`""`: those that matched no
    /// marker).
    pub fn calls_with(&self, marker: &str) -> usize {
        lock(&self.state).calls.get(marker).copied().unwrap_or(0)
    }

    /// Calls received so far.
    pub fn calls(&self) -> usize {
        lock(&self.state).calls.values().sum()
    }
}

impl Drop for FakeRls {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// One HTTP/2 connection: every stream is answered by a task of its own; a task can ask for
/// the whole connection to be dropped (with RST: `SO_LINGER` 0 is set first).
async fn serve_connection(socket: tokio::net::TcpStream, state: Arc<Mutex<State>>) {
    let _ = socket2::SockRef::from(&socket).set_linger(Some(Duration::ZERO));
    let Ok(mut conn) = h2::server::handshake(socket).await else {
        return;
    };
    let (kill, mut killed) = mpsc::channel::<()>(1);
    // Each round accepts one stream, or ends the connection.
    loop {
        tokio::select! {
            next = conn.accept() => match next {
                Some(Ok((req, respond))) => {
                    tokio::spawn(answer_call(req, respond, Arc::clone(&state), kill.clone()));
                }
                _ => break,
            },
            _ = killed.recv() => break,
        }
    }
}

/// A gRPC message frame: not compressed, the length, the payload.
fn frame(payload: &[u8]) -> Bytes {
    let mut out = vec![0u8];
    out.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(payload);
    Bytes::from(out)
}

fn trailers(status: u32) -> http::HeaderMap {
    let mut t = http::HeaderMap::new();
    t.insert("grpc-status", http::HeaderValue::from(status));
    t
}

async fn answer_call(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    state: Arc<Mutex<State>>,
    kill: mpsc::Sender<()>,
) {
    let (parts, mut body) = req.into_parts();
    let mut message = Vec::new();
    // Reads the request to its end (bounded: 1 MiB).
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
        message.extend_from_slice(&chunk);
        if message.len() > 1 << 20 {
            break;
        }
    }
    let Ok(head) = http::Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(())
    else {
        return;
    };
    if parts.uri.path() != SHOULD_RATE_LIMIT {
        if let Ok(mut send) = respond.send_response(head, false) {
            let _ = send.send_trailers(trailers(12));
        }
        return;
    }
    let answer = lock(&state).pick(&message);
    let Ok(mut send) = respond.send_response(head, false) else {
        return;
    };
    match answer {
        RlsAnswer::Ok | RlsAnswer::OverLimit | RlsAnswer::Malformed => {
            let payload: &[u8] = match answer {
                // RateLimitResponse { overall_code (field 1, varint): OK = 1 / OVER_LIMIT = 2 }
                RlsAnswer::Ok => &[0x08, 0x01],
                RlsAnswer::OverLimit => &[0x08, 0x02],
                _ => &[0xff, 0xff, 0xff],
            };
            if send.send_data(frame(payload), false).is_ok() {
                let _ = send.send_trailers(trailers(0));
            }
        }
        RlsAnswer::ResetStream | RlsAnswer::CloseConnection => {
            // The length prefix promises 64 bytes; 2 follow.
            let partial = Bytes::from_static(&[0, 0, 0, 0, 64, 0x08, 0x01]);
            let _ = send.send_data(partial, false);
            tokio::time::sleep(BEFORE_RESET).await;
            if answer == RlsAnswer::ResetStream {
                send.send_reset(h2::Reason::INTERNAL_ERROR);
            } else {
                let _ = kill.send(()).await;
            }
        }
    }
}
