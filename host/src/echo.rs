//! An upstream that answers every request with what it received, as JSON:
//! `{"name", "method", "path", "headers": {name: value}, "body"}` (repeated headers joined with
//! `,`, values and body as lossy UTF-8). Used by the end-to-end tests (in-process, through
//! [`EchoServer::start`]) and by `make run` (the `portcullis-echo` binary) as the demo services.
//!
//! Test hooks (on in the tests' in-process servers; `portcullis-echo --test-hooks` turns them on
//! in the binary, off by default so that clients of the demo cannot use them): request header
//! `x-echo-delay-ms: N` delays the answer (route timeouts), `x-echo-status: N` sets the status.
//!
//! Static files (`portcullis-echo --file /.well-known/jwks.json=jwks.json`): a GET of that exact
//! path answers the file as `application/json` instead, so the demo stack's identity provider
//! (its JWKS) is an echo service too.

use crate::proxy::body::{ProxyBody, full};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The JSON answer for one request.
fn answer(name: &str, parts: &http::request::Parts, body: &[u8], hooks: bool) -> (u16, String) {
    let mut headers = serde_json::Map::new();
    for (k, v) in &parts.headers {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        match headers.get_mut(k.as_str()) {
            Some(serde_json::Value::String(prev)) => {
                prev.push(',');
                prev.push_str(&v);
            }
            _ => {
                headers.insert(k.as_str().to_owned(), serde_json::Value::String(v));
            }
        }
    }
    if let Some(a) = parts.uri.authority()
        && !headers.contains_key("host")
    {
        headers.insert("host".to_owned(), a.as_str().into());
    }
    let status = parts
        .headers
        .get("x-echo-status")
        .filter(|_| hooks)
        .and_then(|v| v.to_str().ok()?.parse::<u16>().ok())
        .filter(|s| (200..600).contains(s))
        .unwrap_or(200);
    let json = serde_json::json!({
        "name": name,
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        "headers": headers,
        "body": String::from_utf8_lossy(body),
    });
    (status, json.to_string())
}

/// Files served at exact paths (URL path → content), instead of the echo.
pub type Files = Arc<HashMap<String, Vec<u8>>>;

async fn respond(
    name: Arc<str>,
    files: Files,
    hooks: bool,
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<ProxyBody>, std::convert::Infallible> {
    let (parts, body) = req.into_parts();
    if parts.method == http::Method::GET
        && let Some(content) = files.get(parts.uri.path())
    {
        let mut resp = http::Response::new(full(content.clone()));
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        return Ok(resp);
    }
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes().to_vec())
        .unwrap_or_default();
    if let Some(ms) = parts
        .headers
        .get("x-echo-delay-ms")
        .filter(|_| hooks)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
    }
    let (status, json) = answer(&name, &parts, &body, hooks);
    let mut resp = http::Response::new(full(json));
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// Serves until the listener fails (HTTP/1.1 and h2c, or TLS with ALPN h2/http/1.1); `hooks`
/// turns the test hooks on.
pub async fn serve(
    listener: tokio::net::TcpListener,
    name: String,
    files: Files,
    hooks: bool,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let name: Arc<str> = name.into();
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let name = Arc::clone(&name);
        let files = Arc::clone(&files);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                respond(Arc::clone(&name), Arc::clone(&files), hooks, req)
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            match acceptor {
                None => {
                    let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
                }
                Some(a) => {
                    if let Ok(tls) = a.accept(tcp).await {
                        let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                    }
                }
            }
        });
    }
}

/// An echo service on a background thread; stopped when dropped.
#[derive(Debug)]
pub struct EchoServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl EchoServer {
    /// Serves on `listener` (already bound, so its port cannot be taken meanwhile).
    pub fn start(
        listener: std::net::TcpListener,
        name: &str,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> std::io::Result<EchoServer> {
        EchoServer::start_with_files(listener, name, Files::default(), tls)
    }

    /// As [`EchoServer::start`], answering GETs of `files`' paths with their content.
    pub fn start_with_files(
        listener: std::net::TcpListener,
        name: &str,
        files: Files,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> std::io::Result<EchoServer> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let name = name.to_owned();
        std::thread::Builder::new()
            .name(format!("echo-{name}"))
            .spawn(move || {
                rt.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    tokio::select! {
                        _ = serve(listener, name, files, true, tls) => {}
                        _ = rx => {}
                    }
                });
                rt.shutdown_background();
            })?;
        Ok(EchoServer {
            addr,
            stop: Some(tx),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}
