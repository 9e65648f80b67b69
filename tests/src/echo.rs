//! An upstream service that answers every request with what it received, as JSON:
//! `{"name", "method", "path", "headers": {name: value}, "body"}` (repeated headers joined with
//! `,`, the body as lossy UTF-8), so a test sees what Envoy and the filter forwarded (identity
//! headers, stripped credentials). A [`TestServer`]: its paths can be broken too.

use crate::server::{Answer, Request, TestServer};
use serde_json::{Map, Value, json};
use std::io;

/// The echo answer for one request.
fn echo_answer(name: &str, req: &Request) -> Answer {
    let mut headers = Map::new();
    for (k, v) in &req.headers {
        match headers.get_mut(k) {
            Some(Value::String(prev)) => {
                prev.push(',');
                prev.push_str(v);
            }
            _ => {
                headers.insert(k.clone(), Value::String(v.clone()));
            }
        }
    }
    let path = match &req.query {
        Some(q) => format!("{}?{q}", req.path),
        None => req.path.clone(),
    };
    Answer::json(
        200,
        &json!({
            "name": name,
            "method": req.method,
            "path": path,
            "headers": headers,
            "body": String::from_utf8_lossy(&req.body),
        }),
    )
}

/// Starts an echo service named `name` (the name is in every answer).
pub fn echo(name: &str) -> io::Result<TestServer> {
    let name = name.to_owned();
    TestServer::start(move |req| echo_answer(&name, req))
}
