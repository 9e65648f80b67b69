//! The HTTP side: `GET /metrics` (Prometheus) and `GET /healthz` (also `/healthcheck`, the path
//! envoyproxy/ratelimit serves): 200 when the store answers a ping and the service is not
//! shutting down, 503 otherwise.

use crate::metrics::Metrics;
use crate::store::Store;
use bytes::Bytes;
use http::{Method, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;

/// What the HTTP handlers read.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// The metrics to expose.
    pub metrics: Arc<Metrics>,
    /// The store to ping for health.
    pub store: Arc<Store>,
    /// Set once shutdown starts: health turns 503 so load balancers stop sending.
    pub draining: Arc<AtomicBool>,
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

async fn handle(
    state: Arc<HttpState>,
    request: http::Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Ok(text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "GET only\n".into(),
        ));
    }
    Ok(match request.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            state.metrics.encode(),
        ),
        "/healthz" | "/healthcheck" => {
            if state.draining.load(Ordering::SeqCst) {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    PLAIN,
                    "shutting down\n".into(),
                )
            } else {
                match state.store.ping().await {
                    Ok(()) => text(StatusCode::OK, PLAIN, "OK\n".into()),
                    Err(e) => text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        PLAIN,
                        format!("{} store unavailable: {e}\n", state.store.kind()),
                    ),
                }
            }
        }
        _ => text(StatusCode::NOT_FOUND, PLAIN, "not found\n".into()),
    })
}

/// Serves HTTP/1.1 on `listener` until `stop` resolves.
pub async fn serve(listener: TcpListener, state: HttpState, stop: impl Future<Output = ()>) {
    let state = Arc::new(state);
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            () = &mut stop => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "http accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(state.clone(), request));
            // A client that never finishes its headers is dropped (admin port, but still).
            if let Err(error) = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "http connection ended with an error");
            }
        });
    }
}
