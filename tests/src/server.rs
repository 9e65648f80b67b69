//! A small HTTP/1.1 server on 127.0.0.1 for upstreams of the suites: a handler makes each
//! answer, and any path (or every path) can be given a [`Fault`] that replaces its answer, so
//! one server can be healthy on one path and broken on another. Keep-alive, Content-Length
//! request bodies, one thread per connection; it counts requests per path.

use crate::fault::{self, After, Fault};
use serde_json::Value;
use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// An idle connection is closed after this long; a write may block at most this long.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);

/// The largest request body read.
pub const MAX_REQUEST_BODY: usize = 1 << 20;

/// One parsed request (header names lowercased).
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query (after `?`), if any.
    pub query: Option<String>,
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    /// The headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of a header (name lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        let found = self.headers.iter().find(|(k, _)| k == name);
        found.map(|(_, v)| v.as_str())
    }

    /// HTTP/1.1 keeps the connection unless `connection: close`; HTTP/1.0 only on `keep-alive`.
    pub fn keep_alive(&self) -> bool {
        match self.header("connection").map(str::to_ascii_lowercase) {
            Some(c) if c.contains("close") => false,
            Some(c) if c.contains("keep-alive") => true,
            _ => self.version == "HTTP/1.1",
        }
    }
}

/// An answer a handler makes (`content-length` is added when it is written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// Headers besides `content-length`.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Answer {
    /// `status` with a JSON body.
    pub fn json(status: u16, body: &Value) -> Answer {
        Answer {
            status,
            headers: vec![("content-type".to_owned(), "application/json".to_owned())],
            body: body.to_string().into_bytes(),
        }
    }

    /// `status` with no body.
    pub fn empty(status: u16) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: &str) -> Answer {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// What makes the answers.
pub type Handler = dyn Fn(&Request) -> Answer + Send + Sync;

#[derive(Default)]
struct Faults {
    every: Option<Fault>,
    by_path: HashMap<String, Fault>,
    hits: HashMap<String, usize>,
}

struct Shared {
    handler: Box<Handler>,
    faults: Mutex<Faults>,
}

impl Shared {
    fn faults(&self) -> MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The running server; its acceptor stops on drop (open connections end with their peer).
pub struct TestServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
}

impl TestServer {
    /// Starts on 127.0.0.1 with a port the kernel picks; `handler` answers every request that
    /// has no fault.
    pub fn start(
        handler: impl Fn(&Request) -> Answer + Send + Sync + 'static,
    ) -> io::Result<TestServer> {
        let listener = crate::net::bind()?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            handler: Box::new(handler),
            faults: Mutex::new(Faults::default()),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (sh, sp) = (Arc::clone(&shared), Arc::clone(&stop));
        std::thread::Builder::new()
            .name(format!("test-server-{}", addr.port()))
            .spawn(move || accept(&listener, &sh, &sp))?;
        Ok(TestServer { addr, shared, stop })
    }

    /// Where it listens (the address for an Envoy cluster).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Breaks (`Some`) or heals (`None`) the answers to exactly this path (query excluded).
    pub fn set_fault(&self, path: &str, fault: Option<Fault>) {
        let mut f = self.shared.faults();
        match fault {
            Some(fault) => f.by_path.insert(path.to_owned(), fault),
            None => f.by_path.remove(path),
        };
    }

    /// Breaks (`Some`) or heals (`None`) the answers to every path without a fault of its own.
    pub fn set_fault_all(&self, fault: Option<Fault>) {
        self.shared.faults().every = fault;
    }

    /// Requests received so far for exactly this path (query excluded), whatever the answer.
    pub fn hits(&self, path: &str) -> usize {
        self.shared.faults().hits.get(path).copied().unwrap_or(0)
    }

    /// Requests received so far, all paths.
    pub fn total_hits(&self) -> usize {
        self.shared.faults().hits.values().sum()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the acceptor, which then sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

fn accept(listener: &TcpListener, shared: &Arc<Shared>, stop: &AtomicBool) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if let Ok(conn) = conn {
            let shared = Arc::clone(shared);
            let _ = std::thread::Builder::new()
                .name("test-server-conn".to_owned())
                .spawn(move || serve(conn, &shared));
        }
    }
}

fn serve(conn: TcpStream, shared: &Shared) {
    let _ = conn.set_read_timeout(Some(CONNECTION_DEADLINE));
    let _ = conn.set_write_timeout(Some(CONNECTION_DEADLINE));
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    // Each round reads one request; the loop ends with the connection (EOF, error, deadline).
    while let Some(req) = read_request(&mut reader) {
        let fault = {
            let mut f = shared.faults();
            *f.hits.entry(req.path.clone()).or_default() += 1;
            f.by_path.get(&req.path).copied().or(f.every)
        };
        let close = !req.keep_alive();
        let answer = (shared.handler)(&req);
        let written = match fault {
            None => fault::write_answer(&mut out, &answer, close).map(|()| After::KeepGoing),
            Some(fault) => fault::write_fault(&mut out, fault, &answer, close),
        };
        if close || !matches!(written, Ok(After::KeepGoing)) {
            break;
        }
    }
}

fn line(r: &mut impl BufRead) -> Option<String> {
    let mut buf = Vec::new();
    // Lines are at most 64 KiB: a longer one ends the connection.
    let n = r
        .by_ref()
        .take(64 * 1024)
        .read_until(b'\n', &mut buf)
        .ok()?;
    (n > 0 && buf.ends_with(b"\n")).then(|| String::from_utf8_lossy(&buf).trim_end().to_owned())
}

/// Reads one request; `None` at end of stream or on a malformed one.
pub fn read_request(r: &mut impl BufRead) -> Option<Request> {
    let start = line(r)?;
    let mut parts = start.split_whitespace().map(str::to_owned);
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    let mut headers = Vec::new();
    // At most 200 header lines.
    for _ in 0..200 {
        let l = line(r)?;
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (target, None),
    };
    let mut req = Request {
        method,
        path,
        query,
        version,
        headers,
        body: Vec::new(),
    };
    let len: usize = req
        .header("content-length")
        .map_or(Some(0), |n| n.parse().ok())?;
    if len > MAX_REQUEST_BODY {
        return None;
    }
    req.body.resize(len, 0);
    r.read_exact(&mut req.body).ok()?;
    Some(req)
}
