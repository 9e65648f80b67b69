//! Callouts a module starts (`proxy_http_call`, `proxy_grpc_call`), owned by the root context
//! and delivered on it (ECTX `httpCall`/`grpcCall`, `onHttpCallSuccess`/`onHttpCallFailure`,
//! `GrpcCallClientHandler`). See the reference, §4.
//!
//! What Envoy delivers when no real response arrives: a timeout is a synthetic
//! `504 upstream request timeout`, a connect failure a synthetic `503 upstream connect error …`
//! (both as successful responses, envoy issue #27311), a reset after the headers is
//! `(root, token, 0, 0, 0)` with status 11. A unary gRPC call gets exactly one of
//! `on_grpc_receive` (OK with a message) or `on_grpc_close` (anything else).

use super::body::{ChannelBody, ProxyBody, full};
use super::stream::{http_to_grpc_status, outbound_headers, response_map};
use super::upstream::UpstreamError;
use super::worker::Worker;
use crate::abi::HeaderMap;
use bytes::{Buf, Bytes};
use http_body::Frame;
use http_body_util::BodyExt;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Why a callout got no (complete) response.
enum CallError {
    Timeout,
    Upstream(UpstreamError),
    /// Reset while reading the body or trailers.
    Reset,
}

/// A complete upstream response: headers (with `:status`), body, trailers.
type Complete = (HeaderMap, Vec<u8>, HeaderMap);

async fn exchange(
    w: &Rc<Worker>,
    cluster: &str,
    req: http::Request<ProxyBody>,
    timeout: Option<Duration>,
) -> Result<Complete, CallError> {
    let Some(client) = w.upstreams.get(cluster) else {
        return Err(CallError::Upstream(UpstreamError::NoHealthyUpstream));
    };
    let stats = &w.process.stats;
    stats.add(&format!("cluster.{cluster}.upstream_rq_total"), 1);
    let sent = Instant::now();
    let work = async {
        let (resp, _) = client.send(req).await.map_err(CallError::Upstream)?;
        let (parts, body) = resp.into_parts();
        let headers = response_map(parts.status, &parts.headers);
        let collected = body.collect().await.map_err(|_| CallError::Reset)?;
        let trailers = collected
            .trailers()
            .map(response_trailers)
            .unwrap_or_default();
        let mut data = collected.aggregate();
        let body = data.copy_to_bytes(data.remaining()).to_vec();
        Ok((headers, body, trailers))
    };
    let out = match timeout {
        Some(t) => tokio::time::timeout(t, work)
            .await
            .unwrap_or(Err(CallError::Timeout)),
        None => work.await,
    };
    // As the async client's router charges them: the code (and its class and completion),
    // the time to the end of the response, or the timeout (504) and connect failure (503).
    match &out {
        Ok((h, _, _)) => {
            if let Some(code) = h.get_str(":status").and_then(|c| c.parse().ok()) {
                stats.upstream_code(cluster, code);
            }
            let ms = u64::try_from(sent.elapsed().as_millis()).unwrap_or(u64::MAX);
            stats.record(&format!("cluster.{cluster}.upstream_rq_time"), ms);
        }
        Err(CallError::Timeout) => {
            stats.add(&format!("cluster.{cluster}.upstream_rq_timeout"), 1);
            stats.upstream_code(cluster, 504);
        }
        Err(CallError::Upstream(e)) => {
            if matches!(e, UpstreamError::Connect(_)) {
                stats.add(&format!("cluster.{cluster}.upstream_cx_connect_fail"), 1);
            }
            stats.upstream_code(cluster, 503);
        }
        Err(CallError::Reset) => {}
    }
    out
}

fn response_trailers(t: &http::HeaderMap) -> HeaderMap {
    let mut m = HeaderMap::new();
    for (k, v) in t {
        m.add(k.as_str(), v.as_bytes());
    }
    m
}

/// Envoy's synthetic local reply as the async client sees it.
fn synthetic(status: u16, body: &str) -> Complete {
    let headers = HeaderMap::from_pairs(&[
        (":status", status.to_string()),
        ("content-length", body.len().to_string()),
        ("content-type", "text/plain".to_owned()),
    ]);
    (headers, body.as_bytes().to_vec(), HeaderMap::new())
}

/// Envoy's body for an upstream that could not be reached (router `onUpstreamReset`).
pub(crate) fn connect_error_body(e: &UpstreamError) -> String {
    match e {
        UpstreamError::NoHealthyUpstream => "no healthy upstream".to_owned(),
        UpstreamError::Connect(reason) => {
            let kind = if reason.contains("timeout") {
                "connection timeout"
            } else {
                "remote connection failure"
            };
            format!(
                "upstream connect error or disconnect/reset before headers. reset reason: {kind}, transport failure reason: {reason}"
            )
        }
        UpstreamError::Reset(_) => {
            "upstream connect error or disconnect/reset before headers. reset reason: connection termination".to_owned()
        }
    }
}

fn build_request(
    headers: &HeaderMap,
    body: Vec<u8>,
    trailers: Option<HeaderMap>,
) -> Option<http::Request<ProxyBody>> {
    let method = headers.get_str(":method")?;
    let path = headers.get_str(":path")?;
    let mut builder = http::Request::builder().method(method).uri(path);
    if let Some(h) = builder.headers_mut() {
        *h = outbound_headers(headers, true);
    }
    let body = match trailers.filter(|t| !t.is_empty()) {
        None => full(body),
        Some(t) => {
            let (tx, rx) = ChannelBody::channel(2);
            let _ = tx.try_send(Ok(Frame::data(Bytes::from(body))));
            let _ = tx.try_send(Ok(Frame::trailers(outbound_headers(&t, false))));
            rx.boxed()
        }
    };
    builder.body(body).ok()
}

/// `proxy_http_call`: send, then `on_http_call_response` (or the failure callback).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn http_call(
    w: Rc<Worker>,
    p: usize,
    token: u32,
    cluster: String,
    mut headers: HeaderMap,
    body: Vec<u8>,
    trailers: HeaderMap,
    timeout: Option<Duration>,
) {
    // Envoy sets content-length for a non-empty body.
    if !body.is_empty() {
        headers.replace("content-length", body.len().to_string().as_bytes());
    }
    let Some(req) = build_request(&headers, body, Some(trailers)) else {
        w.with_vm(p, |vm| vm.on_http_call_failure(token));
        return;
    };
    match exchange(&w, &cluster, req, timeout).await {
        Ok((h, b, t)) => w.with_vm(p, |vm| vm.on_http_call_response(token, h, b, t)),
        Err(CallError::Timeout) => {
            let (h, b, t) = synthetic(504, "upstream request timeout");
            w.with_vm(p, |vm| vm.on_http_call_response(token, h, b, t));
        }
        Err(CallError::Upstream(e)) => {
            let (h, b, t) = synthetic(503, &connect_error_body(&e));
            w.with_vm(p, |vm| vm.on_http_call_response(token, h, b, t));
        }
        Err(CallError::Reset) => w.with_vm(p, |vm| vm.on_http_call_failure(token)),
    }
}

/// One unary gRPC call.
pub(crate) struct GrpcUnary {
    pub token: u32,
    pub cluster: String,
    pub service: String,
    pub method: String,
    pub metadata: HeaderMap,
    pub message: Vec<u8>,
    pub timeout: Option<Duration>,
}

/// gRPC status codes used here.
const GRPC_INTERNAL: u32 = 13;
const GRPC_UNAVAILABLE: u32 = 14;

/// `proxy_grpc_call`: POST `/<service>/<method>` over the cluster's HTTP/2, gRPC framing;
/// success only with `grpc-status: 0` and a message (Envoy `AsyncRequestImpl::onRemoteClose`:
/// OK without a message is a failure with INTERNAL).
pub(crate) async fn grpc_call(w: Rc<Worker>, p: usize, call: GrpcUnary) {
    let outcome = grpc_exchange(&w, &call).await;
    w.grpc_done(p, call.token);
    match outcome {
        Ok(message) => w.with_vm(p, |vm| vm.on_grpc_receive(call.token, message)),
        Err((status, message)) => {
            w.with_vm(p, |vm| vm.on_grpc_close(call.token, status, &message));
        }
    }
}

async fn grpc_exchange(w: &Rc<Worker>, call: &GrpcUnary) -> Result<Vec<u8>, (u32, String)> {
    let mut headers = HeaderMap::from_pairs(&[
        (":method", "POST"),
        (":path", &format!("/{}/{}", call.service, call.method)),
        (":authority", &call.cluster),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]);
    if let Some(t) = call.timeout {
        headers.add("grpc-timeout", format!("{}m", t.as_millis()).as_bytes());
    }
    for (k, v) in &call.metadata.pairs {
        headers.add(k, v);
    }
    let mut framed = Vec::with_capacity(call.message.len() + 5);
    framed.push(0);
    framed.extend_from_slice(
        &u32::try_from(call.message.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    framed.extend_from_slice(&call.message);
    let Some(req) = build_request(&headers, framed, None) else {
        return Err((GRPC_INTERNAL, "bad request".to_owned()));
    };
    let (h, body, trailers) = match exchange(w, &call.cluster, req, call.timeout).await {
        Ok(c) => c,
        Err(CallError::Timeout) => {
            return Err((GRPC_UNAVAILABLE, "upstream request timeout".to_owned()));
        }
        Err(CallError::Upstream(e)) => return Err((GRPC_UNAVAILABLE, connect_error_body(&e))),
        Err(CallError::Reset) => {
            return Err((GRPC_INTERNAL, "stream reset".to_owned()));
        }
    };
    // grpc-status from the trailers, or from the headers of a trailers-only response.
    let status_of = |m: &HeaderMap| m.get_str("grpc-status").and_then(|s| s.parse::<u32>().ok());
    let message_of = |m: &HeaderMap| m.get_str("grpc-message").unwrap_or_default().to_owned();
    let http_status = h
        .get_str(":status")
        .and_then(|s| s.parse::<u16>().ok())
        .unwrap_or(0);
    let (status, message) = match (status_of(&trailers), status_of(&h)) {
        (Some(s), _) => (s, message_of(&trailers)),
        (None, Some(s)) => (s, message_of(&h)),
        (None, None) if http_status != 200 => (
            http_to_grpc_status(http_status),
            String::from_utf8_lossy(&body).into_owned(),
        ),
        (None, None) => (GRPC_INTERNAL, "missing grpc-status".to_owned()),
    };
    if status != 0 {
        return Err((status, message));
    }
    // The first length-prefixed message.
    match body.get(1..5).and_then(|len| <[u8; 4]>::try_from(len).ok()) {
        Some(len) => {
            let len = u32::from_be_bytes(len) as usize;
            match body.get(5..5 + len) {
                Some(m) => Ok(m.to_vec()),
                None => Err((GRPC_INTERNAL, "truncated gRPC message".to_owned())),
            }
        }
        None => Err((GRPC_INTERNAL, String::new())),
    }
}
