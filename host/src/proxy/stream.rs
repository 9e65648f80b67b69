//! One HTTP stream through the connection manager, the wasm filters and the router, with
//! Envoy's semantics (source/common/http/filter_manager.cc, conn_manager_impl.cc,
//! conn_manager_utility.cc, source/common/router/router.cc; ECTX `decodeHeaders`…`onDestroy`):
//!
//! - Before the filters the connection manager sets `x-forwarded-proto`, `x-request-id`
//!   (`generate_request_id`) and appends the peer to `x-forwarded-for` (`use_remote_address`),
//!   and picks the route. A filter that changes the request headers (modules of ABI 0.2.1 and
//!   older, the only ones the host loads; since envoy PR #36671 newer ABIs must call it
//!   explicitly) or calls the `clear_route_cache` foreign function clears the route cache: the
//!   router then picks the route again from the headers as the filters left them.
//! - Headers `Stop` stops everything (body and trailers are not read) until the filter's
//!   `ContinueStream` or `LocalReply` arrives; the continue carries the VM's held headers.
//! - Body `StopIterationAndBuffer` buffers at that filter and redelivers the cumulative body;
//!   above the listener's `per_connection_buffer_limit_bytes` the request gets 413 "Payload Too
//!   Large" and the response 500 (headers not sent yet) or a reset.
//! - Local replies (the filters', the router's) run through every filter's response callbacks
//!   (encoder chain in reverse order, FilterManager `sendLocalReplyViaFilterChain`).
//! - A failed VM answers 503 with an empty body (`wasm_fail_stream`) or is skipped (fail open).
//! - `on_log` then `destroy` for every filter at the end, also when the client went away.

use super::Listening;
use super::body::{BodyError, BodySender, ChannelBody, ProxyBody, empty};
use super::callout::connect_error_body;
use super::upstream::UpstreamError;
use super::worker::{StreamEvent, Worker};
use crate::abi::{
    DataStatus, Direction, Effect, FAIL_CLOSED_DETAILS, FAIL_CLOSED_GRPC_STATUS,
    FAIL_CLOSED_STATUS, FailDecision, HeaderMap, HeadersStatus, StreamId, StreamInfo,
    TrailersStatus,
};
use crate::bootstrap::RouteAction;
use bytes::Bytes;
use http_body::{Body as _, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot};

/// Envoy's default `stream_idle_timeout` (5 min): a stream paused forever ends with 408.
const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// The downstream connection, as the stream's properties see it.
#[derive(Debug)]
pub(crate) struct ConnInfo {
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub id: u64,
    pub tls: Option<TlsInfo>,
}

/// TLS facts of a downstream connection.
#[derive(Debug)]
pub(crate) struct TlsInfo {
    pub sni: Option<String>,
    pub version: Option<String>,
    pub mtls: bool,
}

type Head = Result<http::Response<ProxyBody>, BodyError>;

/// The hyper service: the stream runs in its own task (so it survives the client going away
/// long enough to run `on_log`), this future only waits for the response head.
pub(crate) async fn handle(
    w: Rc<Worker>,
    l: Rc<Listening>,
    conn: Rc<ConnInfo>,
    req: http::Request<Incoming>,
) -> Head {
    let (tx, rx) = oneshot::channel();
    tokio::task::spawn_local(async move {
        let mut s = Stream::new(w, l, &conn, &req, tx);
        s.run(req).await;
    });
    rx.await
        .unwrap_or_else(|_| Err(BodyError("stream reset".to_owned())))
}

/// A reply the proxy (or a filter) generates.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
    details: String,
    grpc_status: Option<u32>,
}

impl Reply {
    fn new(status: u16, body: &str, details: &str) -> Reply {
        Reply {
            status,
            headers: HeaderMap::new(),
            body: body.as_bytes().to_vec(),
            details: details.to_owned(),
            grpc_status: None,
        }
    }

    fn fail_closed() -> Reply {
        let mut r = Reply::new(FAIL_CLOSED_STATUS, "", FAIL_CLOSED_DETAILS);
        r.grpc_status = Some(FAIL_CLOSED_GRPC_STATUS as u32);
        r
    }

    fn from_effect(effect: Effect) -> Option<Reply> {
        match effect {
            Effect::LocalReply {
                status,
                headers,
                body,
                grpc_status,
                details,
                ..
            } => Some(Reply {
                status: u16::try_from(status).unwrap_or(500),
                headers,
                body,
                details,
                grpc_status,
            }),
            _ => None,
        }
    }
}

/// How a phase ended.
#[derive(Debug)]
enum Next {
    /// Go on.
    Go,
    /// Answer locally.
    Reply(Reply),
    /// Reset the stream.
    Reset,
    /// The client went away.
    Gone,
}

/// Outcome of pushing data through the chain.
enum Flow {
    /// Reached the end of the chain.
    Passed,
    /// Held at filter `i` (buffering, or stopped without buffer).
    Held(usize),
    /// Stop the normal flow.
    Stop(Next),
}

struct Filter {
    plugin: usize,
    id: StreamId,
    /// Stopped in body with buffering, per direction (0 request, 1 response).
    buffering: [bool; 2],
    buf: [Vec<u8>; 2],
}

struct Stream {
    w: Rc<Worker>,
    l: Rc<Listening>,
    filters: Vec<Filter>,
    rx: mpsc::UnboundedReceiver<StreamEvent>,
    head_tx: Option<oneshot::Sender<Head>>,
    down: Option<BodySender>,
    info: StreamInfo,
    started: Instant,
    grpc: bool,
    in_local_reply: bool,
    request_bytes: u64,
    response_bytes: u64,
    cluster: Option<String>,
}

fn data_status_to_flow(status: DataStatus) -> Option<bool> {
    // Some(true) = continue, Some(false) = buffer, None = stop without buffer / failed closed.
    match status {
        DataStatus::Continue | DataStatus::Failed(FailDecision::Open) => Some(true),
        DataStatus::StopIterationAndBuffer | DataStatus::StopIterationAndWatermark => Some(false),
        DataStatus::StopIterationNoBuffer | DataStatus::Failed(FailDecision::Closed) => None,
    }
}

impl Stream {
    fn new(
        w: Rc<Worker>,
        l: Rc<Listening>,
        conn: &ConnInfo,
        req: &http::Request<Incoming>,
        head_tx: oneshot::Sender<Head>,
    ) -> Stream {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut info = StreamInfo {
            source: Some(conn.source),
            destination: Some(conn.destination),
            connection_id: conn.id,
            protocol: match req.version() {
                http::Version::HTTP_10 => "HTTP/1.0",
                http::Version::HTTP_2 => "HTTP/2",
                http::Version::HTTP_3 => "HTTP/3",
                _ => "HTTP/1.1",
            }
            .to_owned(),
            start_time: SystemTime::now(),
            ..StreamInfo::default()
        };
        if let Some(t) = &conn.tls {
            info.mtls = t.mtls;
            info.requested_server_name = t.sni.clone();
            info.tls_version = t.version.clone();
        }
        let grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let mut filters = Vec::new();
        for (i, &plugin) in l.chain.iter().enumerate() {
            let id = w.with_vm(plugin, |vm| vm.create_stream(info.clone()));
            w.register_stream(plugin, id, i, tx.clone());
            filters.push(Filter {
                plugin,
                id,
                buffering: [false, false],
                buf: [Vec::new(), Vec::new()],
            });
        }
        w.process.stats.add(
            &format!("http.{}.downstream_rq_total", l.hcm.stat_prefix),
            1,
        );
        Stream {
            w,
            l,
            filters,
            rx,
            head_tx: Some(head_tx),
            down: None,
            info,
            started: Instant::now(),
            grpc,
            in_local_reply: false,
            request_bytes: 0,
            response_bytes: 0,
            cluster: None,
        }
    }

    fn limit(&self) -> usize {
        self.l.buffer_limit
    }

    /// Sets the info every filter's properties read (route, response code, sizes…).
    fn sync_info(&mut self) {
        for f in &self.filters {
            let info = self.info.clone();
            if let Some(vm) = self.w.vms.get(f.plugin)
                && let Some(slot) = vm.borrow_mut().stream_info_mut(f.id)
            {
                *slot = info;
            }
        }
    }

    async fn run(&mut self, req: http::Request<Incoming>) {
        let (parts, body) = req.into_parts();
        let scheme = if self.info.tls_version.is_some() || self.l.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let mut h = request_map(&parts, scheme);
        self.mutate_request_headers(&mut h, scheme);
        let authority = h.get_str(":authority").unwrap_or_default().to_owned();
        let path = h.get_str(":path").unwrap_or("/").to_owned();
        let route = self
            .l
            .hcm
            .select_route(&authority, self.l.bound.port(), &path, &h.pairs)
            .cloned();
        if let Some(r) = &route {
            self.info.route_name = Some(r.name.clone());
            if let RouteAction::Forward { cluster, .. } = &r.action {
                self.info.cluster_name = Some(cluster.clone());
            }
        }
        self.info.virtual_host_name = self
            .l
            .hcm
            .route_config
            .virtual_host(&authority)
            .map(|vh| vh.name.clone());
        self.sync_info();

        let eos = body.is_end_stream();
        match self.decode_headers(&mut h, eos).await {
            Next::Go => {}
            other => return self.finish_early(other).await,
        }
        // The router works on the headers as the filters left them (a filter may have
        // rewritten `:path`); the route is picked again when a filter cleared the route cache
        // (ECTX `clearRouteCache`: a request-header change or the foreign function).
        let path = h.get_str(":path").unwrap_or("/").to_owned();
        let route = if self.take_route_cache_cleared() {
            let authority = h.get_str(":authority").unwrap_or_default().to_owned();
            let route = self
                .l
                .hcm
                .select_route(&authority, self.l.bound.port(), &path, &h.pairs)
                .cloned();
            self.info.route_name = route.as_ref().map(|r| r.name.clone());
            self.info.virtual_host_name = self
                .l
                .hcm
                .route_config
                .virtual_host(&authority)
                .map(|vh| vh.name.clone());
            self.info.cluster_name = match route.as_ref().map(|r| &r.action) {
                Some(RouteAction::Forward { cluster, .. }) => Some(cluster.clone()),
                _ => None,
            };
            self.sync_info();
            route
        } else {
            route
        };
        let (action, matched) = match route {
            None => {
                return self
                    .local_reply(Reply::new(404, "", "route_not_found"))
                    .await;
            }
            Some(r) => {
                let matched = match &r.matcher.path {
                    crate::bootstrap::PathMatch::Prefix(p) => p.len(),
                    crate::bootstrap::PathMatch::Path(p) => p.len(),
                    crate::bootstrap::PathMatch::Regex(_) => 0,
                };
                (r.action, matched)
            }
        };
        let (cluster, prefix_rewrite, timeout) = match action {
            RouteAction::Direct(d) => {
                let body = d
                    .body
                    .as_ref()
                    .and_then(|b| b.read().ok())
                    .unwrap_or_default();
                let mut r = Reply::new(d.status, "", "direct_response");
                r.body = body;
                return self.local_reply(r).await;
            }
            RouteAction::Redirect(redirect) => {
                let authority = h.get_str(":authority").unwrap_or_default();
                let location = redirect.location(scheme, authority, &path);
                let mut r = Reply::new(redirect.status, "", "direct_response");
                r.headers.add("location", location.as_bytes());
                return self.local_reply(r).await;
            }
            RouteAction::Forward {
                cluster,
                prefix_rewrite,
                timeout,
            } => (cluster, prefix_rewrite, timeout),
        };
        let upstream_path = rewrite_path(&path, prefix_rewrite.as_deref(), matched);
        self.forward(&upstream_path, cluster, timeout, h, body, eos)
            .await;
    }

    /// ConnectionManagerUtility::mutateRequestHeaders (Envoy
    /// source/common/http/conn_manager_utility.cc), the parts a filter can observe: the
    /// `x-forwarded-for` the upstream receives, `x-forwarded-proto`, `x-request-id`, and the
    /// *downstream remote address* — which the connection manager replaces with the trusted
    /// client address it derives (conn_manager_impl.cc `setDownstreamRemoteAddress`), so the
    /// filters' `source.address` / `source.port` change too.
    ///
    /// Envoy's HCM documentation (`use_remote_address`, `xff_num_trusted_hops`, and
    /// "config_http_conn_man_headers_x-forwarded-for"):
    /// - `use_remote_address: true`: the trusted client address is the `xff_num_trusted_hops`-th
    ///   address from the right of the incoming XFF (`getLastAddressFromXFF(hops - 1)`), else
    ///   the connection's peer; the peer is appended to XFF — a loopback peer as the server's
    ///   local address instead (`config.localAddress()`); `x-forwarded-proto` is overwritten
    ///   unless trusted hops exist and the header is present.
    /// - `use_remote_address: false` (the default): XFF is left as received and the trusted
    ///   client address is the (`xff_num_trusted_hops` + 1)-th from the right (the default
    ///   original-IP detection, extensions/http/original_ip_detection/xff `XffIPDetection`);
    ///   with too few entries or an entry that is not an IP, the peer stays.
    fn mutate_request_headers(&mut self, h: &mut HeaderMap, scheme: &str) {
        let hcm = &self.l.hcm;
        let hops = hcm.xff_num_trusted_hops;
        // Several XFF lines are one inline header to Envoy, joined by "," as the codec adds them.
        let received = h.get_all("x-forwarded-for");
        let xff = (!received.is_empty()).then(|| received.join(&b","[..]));
        let mut trusted: Option<SocketAddr> = None;
        if hcm.use_remote_address {
            if hops > 0 {
                trusted = last_address_from_xff(xff.as_deref(), hops - 1);
            }
            if let Some(peer) = self.info.source {
                let appended = if peer.ip().is_loopback() {
                    super::local_address()
                } else {
                    peer.ip()
                };
                let mut value = xff.unwrap_or_default();
                if !value.is_empty() {
                    value.push(b',');
                }
                value.extend_from_slice(appended.to_string().as_bytes());
                h.replace("x-forwarded-for", &value);
            }
            if hops == 0 || h.get("x-forwarded-proto").is_none() {
                h.replace("x-forwarded-proto", scheme.as_bytes());
            }
        } else {
            trusted = last_address_from_xff(xff.as_deref(), hops);
        }
        if h.get("x-forwarded-proto").is_none() {
            h.add("x-forwarded-proto", scheme.as_bytes());
        }
        if let Some(addr) = trusted {
            self.info.source = Some(addr);
        }
        // An edge (use_remote_address) request's id is not trusted (Envoy regenerates it
        // unless preserve_external_request_id).
        if hcm.generate_request_id && (h.get("x-request-id").is_none() || hcm.use_remote_address) {
            h.replace("x-request-id", uuid4().as_bytes());
        }
    }

    async fn finish_early(&mut self, next: Next) {
        match next {
            Next::Reply(r) => self.local_reply(r).await,
            Next::Reset => self.reset(),
            Next::Go | Next::Gone => {}
        }
    }

    fn reset(&mut self) {
        if let Some(tx) = self.head_tx.take() {
            let _ = tx.send(Err(BodyError("stream reset".to_owned())));
        }
        if let Some(down) = self.down.take() {
            let _ = down.try_send(Err(BodyError("stream reset".to_owned())));
        }
        self.info.response_code_details = Some("wasm_close_stream".to_owned());
    }

    /// Waits for filter `filter` to resume `dir`, or for a local reply / reset.
    async fn wait(&mut self, dir: Direction, filter: usize) -> Result<Option<HeaderMap>, Next> {
        let deadline = tokio::time::sleep(STREAM_IDLE_TIMEOUT);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                ev = self.rx.recv() => {
                    let Some(ev) = ev else { return Err(Next::Reset) };
                    match ev.effect {
                        Effect::ContinueStream { direction, held_headers, .. }
                            if direction == dir && ev.filter == filter =>
                        {
                            return Ok(held_headers);
                        }
                        Effect::ContinueStream { direction, .. } => {
                            // A filter stopped in its body asks to go on: release its buffer
                            // once the current wait is over (handled by the body loops).
                            let idx = usize::from(direction == Direction::Response);
                            if let Some(f) = self.filters.get_mut(ev.filter) {
                                f.buffering[idx] = false;
                            }
                        }
                        e @ Effect::LocalReply { .. } => {
                            if self.in_local_reply {
                                continue;
                            }
                            if let Some(r) = Reply::from_effect(e) {
                                return Err(Next::Reply(r));
                            }
                        }
                        Effect::CloseStream { .. } | Effect::CloseConnection { .. } => {
                            return Err(Next::Reset);
                        }
                        _ => {}
                    }
                }
                _ = gone(&mut self.head_tx, &self.down) => return Err(Next::Gone),
                _ = &mut deadline => {
                    return Err(Next::Reply(Reply::new(408, "stream timeout", "stream_idle_timeout")));
                }
            }
        }
    }

    /// Request headers through the chain, in order.
    async fn decode_headers(&mut self, h: &mut HeaderMap, eos: bool) -> Next {
        for i in 0..self.filters.len() {
            let (p, id) = self.ids(i);
            let status = self.w.with_vm(p, |vm| vm.on_request_headers(id, h, eos));
            match status {
                HeadersStatus::Continue | HeadersStatus::Failed(FailDecision::Open) => {}
                HeadersStatus::Failed(FailDecision::Closed) => {
                    return Next::Reply(Reply::fail_closed());
                }
                HeadersStatus::StopAllIterationAndBuffer
                | HeadersStatus::StopAllIterationAndWatermark => {
                    match self.wait(Direction::Request, i).await {
                        Ok(Some(held)) => *h = held,
                        Ok(None) => {}
                        Err(next) => return next,
                    }
                }
            }
        }
        Next::Go
    }

    /// Whether any filter called `clear_route_cache` (each filter's flag is reset).
    fn take_route_cache_cleared(&mut self) -> bool {
        let mut cleared = false;
        for i in 0..self.filters.len() {
            let (p, id) = self.ids(i);
            cleared |= self.w.with_vm(p, |vm| vm.take_route_cache_cleared(id));
        }
        cleared
    }

    fn ids(&self, i: usize) -> (usize, StreamId) {
        self.filters
            .get(i)
            .map_or((usize::MAX, 0), |f| (f.plugin, f.id))
    }

    /// Pushes request data from filter `from` on; returns where it ended.
    fn decode_data(
        &mut self,
        from: usize,
        mut data: Vec<u8>,
        eos: bool,
        up: &Option<BodySender>,
    ) -> (Flow, Option<Vec<u8>>) {
        let limit = self.limit();
        for i in from..self.filters.len() {
            let (p, id) = self.ids(i);
            let Some(f) = self.filters.get_mut(i) else {
                return (Flow::Held(i), None);
            };
            let mut chunk = if f.buffering[0] {
                let mut b = std::mem::take(&mut f.buf[0]);
                b.extend_from_slice(&data);
                b
            } else {
                data
            };
            if f.buffering[0] && chunk.len() > limit {
                return (Flow::Stop(Next::Reply(payload_too_large())), None);
            }
            let status = self
                .w
                .with_vm(p, |vm| vm.on_request_body(id, &mut chunk, eos));
            if let DataStatus::Failed(FailDecision::Closed) = status {
                return (Flow::Stop(Next::Reply(Reply::fail_closed())), None);
            }
            let Some(f) = self.filters.get_mut(i) else {
                return (Flow::Held(i), None);
            };
            match data_status_to_flow(status) {
                Some(true) => {
                    f.buffering[0] = false;
                    data = chunk;
                }
                Some(false) => {
                    f.buffering[0] = true;
                    let over = chunk.len() > limit;
                    f.buf[0] = chunk;
                    if over {
                        return (Flow::Stop(Next::Reply(payload_too_large())), None);
                    }
                    return (Flow::Held(i), None);
                }
                None => return (Flow::Held(i), None),
            }
        }
        let _ = up;
        (Flow::Passed, Some(data))
    }

    async fn send_up(&mut self, up: &Option<BodySender>, frame: Frame<Bytes>) {
        if let Some(tx) = up {
            let _ = tx.send(Ok(frame)).await;
        }
    }

    /// Pushes data (and the eos) through the chain, waiting at a filter that holds the end of
    /// the stream until it continues.
    async fn push_request(&mut self, data: Vec<u8>, eos: bool, up: &Option<BodySender>) -> Next {
        let mut start = 0;
        let mut data = data;
        loop {
            let (flow, out) = self.decode_data(start, data, eos, up);
            match flow {
                Flow::Passed => {
                    let out = out.unwrap_or_default();
                    self.request_bytes += out.len() as u64;
                    if !out.is_empty() {
                        self.send_up(up, Frame::data(Bytes::from(out))).await;
                    }
                    return Next::Go;
                }
                Flow::Held(i) if eos => {
                    // The end of the stream is held: wait for that filter.
                    match self.wait(Direction::Request, i).await {
                        Ok(_) => {
                            start = i + 1;
                            data = self
                                .filters
                                .get_mut(i)
                                .map(|f| {
                                    f.buffering[0] = false;
                                    std::mem::take(&mut f.buf[0])
                                })
                                .unwrap_or_default();
                        }
                        Err(next) => return next,
                    }
                }
                Flow::Held(_) => return Next::Go,
                Flow::Stop(next) => return next,
            }
        }
    }

    /// The request body (and trailers) until the end of the stream.
    async fn decode_body(&mut self, body: &mut Incoming, up: &Option<BodySender>) -> Next {
        loop {
            tokio::select! {
                frame = body.frame() => {
                    match frame {
                        None => return self.push_request(Vec::new(), true, up).await,
                        Some(Err(_)) => return Next::Gone,
                        Some(Ok(frame)) => {
                            match frame.into_data() {
                                Ok(data) => {
                                    let end = body.is_end_stream();
                                    let next = self.push_request(data.to_vec(), end, up).await;
                                    if end || !matches!(next, Next::Go) {
                                        return next;
                                    }
                                }
                                Err(frame) => {
                                    let Ok(trailers) = frame.into_trailers() else { continue };
                                    return self.decode_trailers(&trailers, up).await;
                                }
                            }
                        }
                    }
                }
                ev = self.rx.recv() => {
                    let Some(ev) = ev else { return Next::Reset };
                    match ev.effect {
                        Effect::ContinueStream { direction: Direction::Request, .. } => {
                            // A filter that buffered releases its data downstream.
                            let i = ev.filter;
                            let data = self.filters.get_mut(i).map(|f| {
                                f.buffering[0] = false;
                                std::mem::take(&mut f.buf[0])
                            }).unwrap_or_default();
                            let (flow, out) = self.decode_data(i + 1, data, false, up);
                            match flow {
                                Flow::Passed => {
                                    let out = out.unwrap_or_default();
                                    self.request_bytes += out.len() as u64;
                                    if !out.is_empty() {
                                        self.send_up(up, Frame::data(Bytes::from(out))).await;
                                    }
                                }
                                Flow::Held(_) => {}
                                Flow::Stop(next) => return next,
                            }
                        }
                        e @ Effect::LocalReply { .. } => {
                            if let Some(r) = Reply::from_effect(e) {
                                return Next::Reply(r);
                            }
                        }
                        Effect::CloseStream { .. } | Effect::CloseConnection { .. } => return Next::Reset,
                        _ => {}
                    }
                }
                _ = gone(&mut self.head_tx, &self.down) => return Next::Gone,
            }
        }
    }

    /// Request trailers: each filter in order; a filter that buffered releases its body first.
    async fn decode_trailers(
        &mut self,
        trailers: &http::HeaderMap,
        up: &Option<BodySender>,
    ) -> Next {
        let mut t = HeaderMap::new();
        for (k, v) in trailers {
            t.add(k.as_str(), v.as_bytes());
        }
        for i in 0..self.filters.len() {
            let (p, id) = self.ids(i);
            let status = self.w.with_vm(p, |vm| vm.on_request_trailers(id, &mut t));
            match status {
                TrailersStatus::Continue | TrailersStatus::Failed(FailDecision::Open) => {}
                TrailersStatus::Failed(FailDecision::Closed) => {
                    return Next::Reply(Reply::fail_closed());
                }
                TrailersStatus::StopIteration => {
                    if let Err(next) = self.wait(Direction::Request, i).await {
                        return next;
                    }
                }
            }
            let released = self.filters.get_mut(i).and_then(|f| {
                f.buffering[0].then(|| {
                    f.buffering[0] = false;
                    std::mem::take(&mut f.buf[0])
                })
            });
            if let Some(data) = released {
                let (flow, out) = self.decode_data(i + 1, data, false, up);
                if let Flow::Stop(next) = flow {
                    return next;
                }
                if let Some(out) = out.filter(|o| !o.is_empty()) {
                    self.request_bytes += out.len() as u64;
                    self.send_up(up, Frame::data(Bytes::from(out))).await;
                }
            }
        }
        self.send_up(up, Frame::trailers(outbound_headers(&t, false)))
            .await;
        Next::Go
    }

    /// The router: upstream request, request body, response (router.cc `Filter::decodeHeaders`
    /// … `onUpstreamHeaders`).
    async fn forward(
        &mut self,
        path: &str,
        cluster: String,
        timeout: Option<Duration>,
        h: HeaderMap,
        mut body: Incoming,
        eos: bool,
    ) {
        let stats = self.w.process.stats.clone();
        let Some(client) = self.w.upstreams.get(&cluster) else {
            return self
                .local_reply(Reply::new(503, "", "cluster_not_found"))
                .await;
        };
        self.cluster = Some(cluster.clone());
        stats.add(&format!("cluster.{cluster}.upstream_rq_total"), 1);
        let mut builder = http::Request::builder()
            .method(h.get_str(":method").unwrap_or("GET"))
            .uri(path);
        if let Some(hm) = builder.headers_mut() {
            *hm = outbound_headers(&h, true);
        }
        let (up, up_body) = if eos {
            (None, empty())
        } else {
            let (tx, rx) = ChannelBody::channel(16);
            (Some(tx), rx.boxed())
        };
        let Ok(req) = builder.body(up_body) else {
            return self
                .local_reply(Reply::new(400, "Bad Request", "invalid_request"))
                .await;
        };
        let send = {
            let client = Rc::clone(&client);
            tokio::task::spawn_local(async move { client.send(req).await })
        };
        let abort = send.abort_handle();
        if !eos {
            let next = self.decode_body(&mut body, &up).await;
            if !matches!(next, Next::Go) {
                abort.abort();
                return self.finish_early(next).await;
            }
        }
        drop(up);
        let request_done = Instant::now();
        // The route timeout runs from the end of the request (router.cc `onRequestComplete`).
        let deadline =
            tokio::time::sleep(timeout.unwrap_or(Duration::from_secs(u64::from(u32::MAX))));
        tokio::pin!(deadline);
        tokio::pin!(send);
        let result = loop {
            tokio::select! {
                r = &mut send => break r,
                _ = &mut deadline => {
                    abort.abort();
                    stats.add(&format!("cluster.{cluster}.upstream_rq_timeout"), 1);
                    stats.upstream_code(&cluster, 504);
                    return self.local_reply(Reply::new(504, "upstream request timeout", "upstream_response_timeout")).await;
                }
                ev = self.rx.recv() => {
                    let Some(ev) = ev else { continue };
                    match ev.effect {
                        e @ Effect::LocalReply { .. } => {
                            abort.abort();
                            if let Some(r) = Reply::from_effect(e) {
                                return self.local_reply(r).await;
                            }
                        }
                        Effect::CloseStream { .. } | Effect::CloseConnection { .. } => {
                            abort.abort();
                            return self.reset();
                        }
                        _ => {}
                    }
                }
                _ = gone(&mut self.head_tx, &self.down) => { abort.abort(); return; }
            }
        };
        let (resp, addr) = match result {
            Ok(Ok(ok)) => ok,
            Ok(Err(e)) => {
                if matches!(e, UpstreamError::Connect(_)) {
                    stats.add(&format!("cluster.{cluster}.upstream_cx_connect_fail"), 1);
                }
                let details = match &e {
                    UpstreamError::NoHealthyUpstream => "no_healthy_upstream",
                    UpstreamError::Connect(_) => {
                        "upstream_reset_before_response_started{connection_failure}"
                    }
                    UpstreamError::Reset(_) => {
                        "upstream_reset_before_response_started{connection_termination}"
                    }
                };
                stats.upstream_code(&cluster, 503);
                return self
                    .local_reply(Reply::new(503, &connect_error_body(&e), details))
                    .await;
            }
            Err(_) => return,
        };
        self.info.upstream = Some(addr);
        let (parts, mut resp_body) = resp.into_parts();
        stats.upstream_code(&cluster, parts.status.as_u16());
        // Envoy's router charges upstream_rq_time when the upstream response ends, before the
        // encoder filters see its last frame (`onUpstreamComplete`).
        let rq_time = format!("cluster.{cluster}.upstream_rq_time");
        let complete = || stats.record(&rq_time, millis(request_done.elapsed()));
        let mut rh = response_map(parts.status, &parts.headers);
        self.info.response_code = Some(parts.status.as_u16());
        self.info.response_code_details = Some("via_upstream".to_owned());
        self.sync_info();
        let eos = resp_body.is_end_stream();
        if eos {
            complete();
        }
        match self.encode_headers(&mut rh, eos).await {
            Next::Go => {}
            other => return self.finish_early(other).await,
        }
        self.send_head(&rh, eos);
        if eos {
            return;
        }
        loop {
            let frame = tokio::select! {
                f = resp_body.frame() => f,
                _ = gone(&mut self.head_tx, &self.down) => return,
            };
            match frame {
                None => {
                    complete();
                    if let Next::Reset = self.push_response(Vec::new(), true).await {
                        return self.reset();
                    }
                    break;
                }
                Some(Err(_)) => return self.reset(),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let end = resp_body.is_end_stream();
                        if end {
                            complete();
                        }
                        match self.push_response(data.to_vec(), end).await {
                            Next::Go => {}
                            _ => return self.reset(),
                        }
                        if end {
                            break;
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            complete();
                            if let Next::Go = self.encode_trailers(&trailers).await {
                                continue;
                            }
                            return self.reset();
                        }
                    }
                },
            }
        }
        self.down = None;
    }

    /// Response headers through the chain in reverse order (the encoder chain).
    async fn encode_headers(&mut self, h: &mut HeaderMap, eos: bool) -> Next {
        for i in (0..self.filters.len()).rev() {
            let (p, id) = self.ids(i);
            let status = self.w.with_vm(p, |vm| vm.on_response_headers(id, h, eos));
            match status {
                HeadersStatus::Continue | HeadersStatus::Failed(_) => {}
                HeadersStatus::StopAllIterationAndBuffer
                | HeadersStatus::StopAllIterationAndWatermark => {
                    match self.wait(Direction::Response, i).await {
                        Ok(Some(held)) => *h = held,
                        Ok(None) => {}
                        Err(next) => return next,
                    }
                }
            }
        }
        Next::Go
    }

    /// Response data through the chain in reverse order, with buffering; `Reset` when a
    /// buffer overflows after the headers went out (Envoy resets then).
    async fn push_response(&mut self, data: Vec<u8>, eos: bool) -> Next {
        let limit = self.limit();
        let mut data = data;
        let mut i = self.filters.len();
        while i > 0 {
            i -= 1;
            let (p, id) = self.ids(i);
            let Some(f) = self.filters.get_mut(i) else {
                return Next::Go;
            };
            let mut chunk = if f.buffering[1] {
                let mut b = std::mem::take(&mut f.buf[1]);
                b.extend_from_slice(&data);
                b
            } else {
                data
            };
            let status = self
                .w
                .with_vm(p, |vm| vm.on_response_body(id, &mut chunk, eos));
            let Some(f) = self.filters.get_mut(i) else {
                return Next::Go;
            };
            match data_status_to_flow(status) {
                Some(true) => {
                    f.buffering[1] = false;
                    data = chunk;
                }
                Some(false) => {
                    f.buffering[1] = true;
                    let over = chunk.len() > limit;
                    f.buf[1] = chunk;
                    if over {
                        return Next::Reset;
                    }
                    if !eos {
                        return Next::Go;
                    }
                    match self.wait(Direction::Response, i).await {
                        Ok(_) => {
                            data = self
                                .filters
                                .get_mut(i)
                                .map(|f| {
                                    f.buffering[1] = false;
                                    std::mem::take(&mut f.buf[1])
                                })
                                .unwrap_or_default();
                        }
                        Err(_) => return Next::Reset,
                    }
                }
                None => {
                    if eos {
                        match self.wait(Direction::Response, i).await {
                            Ok(_) => data = Vec::new(),
                            Err(_) => return Next::Reset,
                        }
                    } else {
                        return Next::Go;
                    }
                }
            }
        }
        self.response_bytes += data.len() as u64;
        if let Some(down) = &self.down {
            if !data.is_empty() {
                let _ = down.send(Ok(Frame::data(Bytes::from(data)))).await;
            }
            if eos {
                self.down = None;
            }
        }
        Next::Go
    }

    async fn encode_trailers(&mut self, trailers: &http::HeaderMap) -> Next {
        let mut t = HeaderMap::new();
        for (k, v) in trailers {
            t.add(k.as_str(), v.as_bytes());
        }
        for i in (0..self.filters.len()).rev() {
            let (p, id) = self.ids(i);
            let status = self.w.with_vm(p, |vm| vm.on_response_trailers(id, &mut t));
            if let TrailersStatus::StopIteration = status
                && self.wait(Direction::Response, i).await.is_err()
            {
                return Next::Reset;
            }
            let released = self.filters.get_mut(i).and_then(|f| {
                f.buffering[1].then(|| {
                    f.buffering[1] = false;
                    std::mem::take(&mut f.buf[1])
                })
            });
            if let (Some(data), Some(down)) = (released, &self.down) {
                let _ = down.send(Ok(Frame::data(Bytes::from(data)))).await;
            }
        }
        if let Some(down) = self.down.take() {
            let _ = down
                .send(Ok(Frame::trailers(outbound_headers(&t, false))))
                .await;
        }
        Next::Go
    }

    /// Sends the response head downstream; a body follows unless `eos`.
    fn send_head(&mut self, h: &HeaderMap, eos: bool) {
        let status = h
            .get_str(":status")
            .and_then(|s| s.parse::<u16>().ok())
            .and_then(|s| http::StatusCode::from_u16(s).ok())
            .unwrap_or(http::StatusCode::BAD_GATEWAY);
        self.info.response_code = Some(status.as_u16());
        let body = if eos {
            empty()
        } else {
            let (tx, rx) = ChannelBody::channel(16);
            self.down = Some(tx);
            rx.boxed()
        };
        let mut resp = http::Response::new(body);
        *resp.status_mut() = status;
        *resp.headers_mut() = outbound_headers(h, false);
        if let Some(tx) = self.head_tx.take() {
            let _ = tx.send(Ok(resp));
        }
    }

    /// Envoy's local reply (`Utility::sendLocalReply`): `:status`, the given headers added,
    /// `content-length`, `content-type: text/plain` for a non-empty body without one; for gRPC
    /// requests a trailers-only response with `grpc-status`. Then the encoder chain.
    async fn local_reply(&mut self, r: Reply) {
        if self.head_tx.is_none() || self.in_local_reply {
            // Headers already sent: Envoy resets the stream.
            return self.reset();
        }
        self.in_local_reply = true;
        let mut h = HeaderMap::new();
        let mut body = r.body;
        if self.grpc {
            h.add(":status", b"200");
            for (k, v) in &r.headers.pairs {
                h.add(k, v);
            }
            h.replace("content-type", b"application/grpc");
            let code = r
                .grpc_status
                .unwrap_or_else(|| http_to_grpc_status(r.status));
            h.replace("grpc-status", code.to_string().as_bytes());
            if !body.is_empty() {
                h.replace("grpc-message", &percent_encode(&body));
            }
            body.clear();
        } else {
            h.add(":status", r.status.to_string().as_bytes());
            for (k, v) in &r.headers.pairs {
                h.add(k, v);
            }
            if !body.is_empty() {
                h.replace("content-length", body.len().to_string().as_bytes());
                if h.get("content-type").is_none() {
                    h.add("content-type", b"text/plain");
                }
            }
        }
        self.info.response_code = Some(if self.grpc { 200 } else { r.status });
        self.info.response_code_details = Some(r.details.replace(' ', "_"));
        self.sync_info();
        let eos = body.is_empty();
        match self.encode_headers(&mut h, eos).await {
            Next::Go => {}
            Next::Reply(_) | Next::Reset => return self.reset(),
            Next::Gone => return,
        }
        self.send_head(&h, eos);
        if !eos {
            let _ = self.push_response(body, true).await;
        }
        self.down = None;
    }

    /// Access log then destruction, for every filter (ECTX `Context::log`, `onDestroy`;
    /// Envoy ≥1.16 logs before destroying).
    fn finish(&mut self) {
        self.info.request_duration = Some(self.started.elapsed());
        self.info.request_size = Some(self.request_bytes);
        self.info.response_size = Some(self.response_bytes);
        if self.info.response_code.is_none() && self.head_tx.is_none() {
            self.info.response_code = Some(0);
        }
        self.sync_info();
        let prefix = &self.l.hcm.stat_prefix;
        let stats = &self.w.process.stats;
        if let Some(code) = self.info.response_code.filter(|c| *c >= 100) {
            stats.add(&format!("http.{prefix}.downstream_rq_completed"), 1);
            stats.add(&format!("http.{prefix}.downstream_rq_{}xx", code / 100), 1);
        }
        stats.record(
            &format!("http.{prefix}.downstream_rq_time"),
            millis(self.started.elapsed()),
        );
        let filters: Vec<(usize, StreamId)> =
            self.filters.iter().map(|f| (f.plugin, f.id)).collect();
        for &(p, id) in &filters {
            self.w.with_vm(p, |vm| vm.on_log(id));
        }
        for &(p, id) in &filters {
            self.w.with_vm(p, |vm| vm.destroy(id));
            self.w.unregister_stream(p, id);
        }
        self.filters.clear();
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Whole milliseconds, the unit of Envoy's `*_rq_time` histograms.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn payload_too_large() -> Reply {
    Reply::new(413, "Payload Too Large", "request_payload_too_large")
}

/// Resolves when the client is gone: the response-head receiver (before the head) or the
/// body receiver (after) was dropped by hyper.
async fn gone(head: &mut Option<oneshot::Sender<Head>>, down: &Option<BodySender>) {
    match (head, down) {
        (Some(tx), _) => tx.closed().await,
        (None, Some(d)) => d.closed().await,
        (None, None) => std::future::pending().await,
    }
}

/// Envoy `Http::Utility::getLastAddressFromXFF` (source/common/http/utility.cc): drops the
/// last `skip` comma-separated entries, takes the text after the last remaining comma (the
/// whole rest when there is none, or when that comma ends the text), trims whitespace and
/// parses it as a bare IPv4/IPv6 address (`parseInternetAddressNoThrow`, port 0). Too few
/// entries or anything but an IP — a port, brackets, a name, garbage — gives `None`, so a bad
/// entry never becomes the trusted address.
fn last_address_from_xff(xff: Option<&[u8]>, skip: u32) -> Option<SocketAddr> {
    let mut rest = xff?;
    for _ in 0..skip {
        let comma = rest.iter().rposition(|&b| b == b',')?;
        rest = rest.get(..comma)?;
    }
    if let Some(comma) = rest.iter().rposition(|&b| b == b',')
        && comma + 1 < rest.len()
    {
        rest = rest.get(comma + 1..)?;
    }
    // StringUtil::ltrim/rtrim: Envoy's whitespace set.
    let is_space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c);
    let start = rest.iter().position(|b| !is_space(b)).unwrap_or(rest.len());
    let end = rest
        .iter()
        .rposition(|b| !is_space(b))
        .map_or(start, |e| e + 1);
    let text = std::str::from_utf8(rest.get(start..end)?).ok()?;
    let ip: std::net::IpAddr = text.parse().ok()?;
    Some(SocketAddr::new(ip, 0))
}

/// `prefix_rewrite`: the `matched` prefix (or the whole path of a `path` match) replaced
/// (router `RouteEntryImplBase::finalizePathHeader`); the query string is kept.
fn rewrite_path(path: &str, rewrite: Option<&str>, matched: usize) -> String {
    match (rewrite, path.get(matched..)) {
        (Some(rewrite), Some(rest)) if matched > 0 => format!("{rewrite}{rest}"),
        _ => path.to_owned(),
    }
}

/// The request as Envoy's header map: `:authority`, `:path`, `:method`, `:scheme`, then the
/// headers in order (`host` becomes `:authority`).
fn request_map(parts: &http::request::Parts, scheme: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().as_bytes().to_vec())
        .or_else(|| {
            parts
                .headers
                .get(http::header::HOST)
                .map(|v| v.as_bytes().to_vec())
        })
        .unwrap_or_default();
    h.add(":authority", &authority);
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    h.add(":path", path.as_bytes());
    h.add(":method", parts.method.as_str().as_bytes());
    h.add(":scheme", scheme.as_bytes());
    for (k, v) in &parts.headers {
        if k == http::header::HOST {
            continue;
        }
        h.add(k.as_str(), v.as_bytes());
    }
    h
}

/// A response as Envoy's map: `:status` first.
pub(crate) fn response_map(status: http::StatusCode, headers: &http::HeaderMap) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.add(":status", status.as_str().as_bytes());
    for (k, v) in headers {
        h.add(k.as_str(), v.as_bytes());
    }
    h
}

/// Connection-specific headers an HTTP/2 peer must not see (and Envoy's codecs drop).
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

/// Envoy's map back to HTTP headers: pseudo-headers dropped (`:authority` becomes `host` for a
/// request), hop-by-hop headers dropped, invalid names/values skipped.
pub(crate) fn outbound_headers(h: &HeaderMap, request: bool) -> http::HeaderMap {
    let mut out = http::HeaderMap::new();
    for (k, v) in &h.pairs {
        if k == ":authority" && request {
            if let Ok(v) = http::HeaderValue::from_bytes(v) {
                out.insert(http::header::HOST, v);
            }
            continue;
        }
        if k.starts_with(':') || HOP_BY_HOP.contains(&k.as_str()) {
            continue;
        }
        if k == "te" && v.as_slice() != b"trailers" {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_bytes(v),
        ) {
            out.append(name, value);
        }
    }
    out
}

/// gRPC status for an HTTP status (Envoy `Grpc::Utility::httpToGrpcStatus`).
pub(crate) fn http_to_grpc_status(status: u16) -> u32 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

fn percent_encode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for &b in bytes {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

/// A random (v4) UUID, as Envoy's `x-request-id`.
fn uuid4() -> String {
    use std::hash::{BuildHasher, Hasher};
    let state = std::collections::hash_map::RandomState::new();
    let mut a = state.build_hasher();
    a.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    let x = a.finish();
    let mut b = state.build_hasher();
    b.write_u64(x);
    let y = b.finish();
    let hi = (x & 0xffff_ffff_ffff_0fff) | 0x0000_0000_0000_4000;
    let lo = (y & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    )
}
