//! Clusters as seen from one worker (Envoy: each worker has its own connection pools and load
//! balancer state, source/common/upstream/cluster_manager_impl.cc `ThreadLocalClusterManagerImpl`):
//! endpoint discovery (STATIC, STRICT_DNS, LOGICAL_DNS via tokio's resolver), round robin /
//! least request, `connect_timeout`, HTTP/1.1 or HTTP/2 (prior knowledge, or ALPN `h2` over
//! TLS), upstream TLS.

use super::body::ProxyBody;
use super::tls;
use crate::bootstrap::{Bootstrap, Cluster, DiscoveryType, LbPolicy};
use hyper::Uri;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Why no upstream response headers arrived (the router turns these into Envoy's local replies).
#[derive(Debug, Error)]
pub enum UpstreamError {
    /// No endpoint (DNS gave nothing): Envoy's 503 `no healthy upstream`.
    #[error("no healthy upstream")]
    NoHealthyUpstream,
    /// TCP/TLS connect failed or timed out (`connect_timeout`).
    #[error("{0}")]
    Connect(String),
    /// The connection was reset before the response headers.
    #[error("{0}")]
    Reset(String),
}

/// All clusters of one worker, by name.
pub struct Upstreams {
    clusters: HashMap<String, Rc<ClusterClient>>,
}

impl Upstreams {
    /// One client per cluster (TLS configurations are built here: errors are fatal at start).
    pub fn new(bootstrap: &Bootstrap) -> anyhow::Result<Upstreams> {
        let mut clusters = HashMap::new();
        for c in &bootstrap.clusters {
            clusters.insert(c.name.clone(), Rc::new(ClusterClient::new(c)?));
        }
        Ok(Upstreams { clusters })
    }

    /// The cluster of that name.
    pub fn get(&self, name: &str) -> Option<Rc<ClusterClient>> {
        self.clusters.get(name).cloned()
    }
}

/// One cluster's pool and load-balancer state on one worker.
pub struct ClusterClient {
    /// The cluster's configuration.
    pub cluster: Cluster,
    client: Client<Connector, ProxyBody>,
    next: Cell<usize>,
    active: RefCell<HashMap<SocketAddr, usize>>,
}

impl ClusterClient {
    fn new(cluster: &Cluster) -> anyhow::Result<ClusterClient> {
        let tls = match &cluster.tls {
            Some(t) => Some((tls::client_config(t, cluster.http2)?, t.clone())),
            None => None,
        };
        let connector = Connector {
            connect_timeout: cluster.connect_timeout,
            tls: tls.map(|(config, t)| Arc::new((config, t))),
        };
        let client = Client::builder(TokioExecutor::new())
            .http2_only(cluster.http2)
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Ok(ClusterClient {
            cluster: cluster.clone(),
            client,
            next: Cell::new(0),
            active: RefCell::new(HashMap::new()),
        })
    }

    /// The endpoints' addresses now: IPs as written (STATIC), every resolved address of every
    /// endpoint (STRICT_DNS), or the first resolved address of the one endpoint (LOGICAL_DNS).
    async fn resolve(&self) -> Vec<SocketAddr> {
        let mut out = Vec::new();
        for ep in &self.cluster.endpoints {
            match self.cluster.discovery {
                DiscoveryType::Static => {
                    if let Ok(ip) = ep.address.parse::<std::net::IpAddr>() {
                        out.push(SocketAddr::new(ip, ep.port));
                    }
                }
                DiscoveryType::StrictDns | DiscoveryType::LogicalDns => {
                    if let Ok(addrs) = tokio::net::lookup_host((ep.address.as_str(), ep.port)).await
                    {
                        let mut addrs: Vec<SocketAddr> = addrs.collect();
                        if self.cluster.discovery == DiscoveryType::LogicalDns {
                            addrs.truncate(1);
                        }
                        out.extend(addrs);
                    }
                    if self.cluster.discovery == DiscoveryType::LogicalDns {
                        break;
                    }
                }
            }
        }
        out
    }

    /// Round robin, or least request (fewest active requests on this worker, round robin among
    /// equals; Envoy uses power-of-two-choices, which this is the deterministic limit of).
    fn pick(&self, addrs: &[SocketAddr]) -> Option<SocketAddr> {
        if addrs.is_empty() {
            return None;
        }
        let start = self.next.get();
        self.next.set(start.wrapping_add(1));
        let rr = addrs.get(start % addrs.len()).copied();
        match self.cluster.lb_policy {
            LbPolicy::RoundRobin => rr,
            LbPolicy::LeastRequest => {
                let active = self.active.borrow();
                let n = addrs.len();
                (0..n)
                    .filter_map(|k| addrs.get((start + k) % n))
                    .min_by_key(|a| active.get(a).copied().unwrap_or(0))
                    .copied()
            }
        }
    }

    /// Sends `req` (its URI holds only the path) to an endpoint and waits for the response
    /// headers. Returns the endpoint used.
    pub async fn send(
        self: &Rc<Self>,
        mut req: http::Request<ProxyBody>,
    ) -> Result<(http::Response<Incoming>, SocketAddr), UpstreamError> {
        let addrs = self.resolve().await;
        let addr = self.pick(&addrs).ok_or(UpstreamError::NoHealthyUpstream)?;
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let uri: Uri = format!("http://{addr}{path}")
            .parse()
            .map_err(|e| UpstreamError::Reset(format!("bad upstream uri: {e}")))?;
        *req.uri_mut() = uri;
        *self.active.borrow_mut().entry(addr).or_insert(0) += 1;
        let _guard = ActiveGuard {
            client: Rc::clone(self),
            addr,
        };
        match self.client.request(req).await {
            Ok(resp) => Ok((resp, addr)),
            Err(e) if e.is_connect() => Err(UpstreamError::Connect(error_chain(&e))),
            Err(e) => Err(UpstreamError::Reset(error_chain(&e))),
        }
    }
}

struct ActiveGuard {
    client: Rc<ClusterClient>,
    addr: SocketAddr,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if let Some(n) = self.client.active.borrow_mut().get_mut(&self.addr) {
            *n = n.saturating_sub(1);
        }
    }
}

/// The innermost cause, as Envoy's `transport failure reason`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        msg = s.to_string();
        cur = s.source();
    }
    msg
}

/// Connects to the endpoint in the URI (an IP:port picked by the load balancer).
#[derive(Clone)]
struct Connector {
    connect_timeout: Duration,
    tls: Option<Arc<(Arc<rustls::ClientConfig>, crate::bootstrap::UpstreamTls)>>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for Connector {
    type Response = UpConn;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<UpConn, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let authority = uri.authority().map(|a| a.as_str().to_owned());
            let addr: SocketAddr = authority
                .as_deref()
                .unwrap_or_default()
                .parse()
                .map_err(|e| format!("bad endpoint {authority:?}: {e}"))?;
            let tcp = tokio::time::timeout(this.connect_timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| "connection timeout".to_owned())??;
            let _ = tcp.set_nodelay(true);
            match &this.tls {
                None => Ok(UpConn {
                    io: TokioIo::new(UpStream::Plain(tcp)),
                    h2: false,
                }),
                Some(t) => {
                    let (config, settings) = (&t.0, &t.1);
                    let name = tls::server_name(settings, addr.ip())?;
                    let tls = tokio::time::timeout(
                        this.connect_timeout,
                        tokio_rustls::TlsConnector::from(Arc::clone(config)).connect(name, tcp),
                    )
                    .await
                    .map_err(|_| "TLS handshake timeout".to_owned())??;
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    Ok(UpConn {
                        io: TokioIo::new(UpStream::Tls(Box::new(tls))),
                        h2,
                    })
                }
            }
        })
    }
}

/// A plaintext or TLS upstream stream.
enum UpStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for UpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// What the pool gets from the connector.
struct UpConn {
    io: TokioIo<UpStream>,
    h2: bool,
}

impl Connection for UpConn {
    fn connected(&self) -> Connected {
        let c = Connected::new();
        if self.h2 { c.negotiated_h2() } else { c }
    }
}

impl hyper::rt::Read for UpConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for UpConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
