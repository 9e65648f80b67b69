//! The admin listener (`admin.address`; Envoy source/server/admin/admin.cc): `/ready`, `/stats`,
//! `/stats/prometheus`, and `POST /quitquitquit` (stops the host, as Envoy's).

use super::Process;
use super::body::{ProxyBody, full};
use crate::stats::Stats;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::watch;

/// Serves admin requests on `listener` until shutdown.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    process: Arc<Process>,
    stats: Stats,
    quit: watch::Sender<bool>,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let process = Arc::clone(&process);
        let stats = stats.clone();
        let quit = quit.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let resp = answer(&req, &process, &stats, &quit);
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

fn text(status: u16, content_type: &str, body: String) -> http::Response<ProxyBody> {
    let mut resp = http::Response::new(full(body));
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp
}

fn answer(
    req: &http::Request<hyper::body::Incoming>,
    process: &Process,
    stats: &Stats,
    quit: &watch::Sender<bool>,
) -> http::Response<ProxyBody> {
    match req.uri().path() {
        // Envoy answers LIVE once the server is initialized (workers started).
        "/ready" if process.ready.load(Ordering::SeqCst) => {
            text(200, "text/plain; charset=UTF-8", "LIVE\n".to_owned())
        }
        "/ready" => text(
            503,
            "text/plain; charset=UTF-8",
            "PRE_INITIALIZING\n".to_owned(),
        ),
        "/stats" => text(200, "text/plain; charset=UTF-8", stats.render_text()),
        "/stats/prometheus" => text(
            200,
            "text/plain; version=0.0.4; charset=UTF-8",
            stats.render_prometheus(),
        ),
        "/quitquitquit" if req.method() == http::Method::POST => {
            let _ = quit.send(true);
            text(200, "text/plain; charset=UTF-8", "OK\n".to_owned())
        }
        _ => text(
            404,
            "text/plain; charset=UTF-8",
            "invalid path. admin commands are: /ready /stats /stats/prometheus /quitquitquit\n"
                .to_owned(),
        ),
    }
}
