//! A raw HTTP/1.1 client: one request per connection (`connection: close`), the answer read to
//! the end. Raw, so that tests can send bytes no HTTP library would (non-UTF-8 header values,
//! odd paths) and see exactly what Envoy answered, an empty body included.

use serde_json::Value;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long a request may take, connection included, before it is an error.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(30);

/// An answer.
#[derive(Debug, Clone)]
pub struct Resp {
    /// The status code.
    pub status: u16,
    /// The headers in order, names lowercased.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl Resp {
    /// The first value of a header (name case-insensitive) as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON, if it is.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The `error` member of a JSON body (the filter's refusals), if any.
    pub fn error_code(&self) -> Option<String> {
        self.json()?.get("error")?.as_str().map(str::to_owned)
    }

    /// The `message` member of a JSON body, if any.
    pub fn message(&self) -> Option<String> {
        self.json()?.get("message")?.as_str().map(str::to_owned)
    }

    /// One line for assertion messages: status, the headers that matter here, the body (cut).
    pub fn summary(&self) -> String {
        let text = self.text();
        let cut: String = text.chars().take(300).collect();
        let mut s = format!("{} body={cut:?}", self.status);
        for name in ["retry-after", "www-authenticate", "content-type", "server"] {
            if let Some(v) = self.header(name) {
                s.push_str(&format!(" {name}={v:?}"));
            }
        }
        s
    }
}

/// One request on a fresh connection, [`REQUEST_DEADLINE`] for each step.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> io::Result<Resp> {
    request_within(addr, method, path, headers, body, REQUEST_DEADLINE)
}

/// As [`request`], with `deadline` for each step (connecting: at most 5 s): an answer that
/// does not come in time is an error (`WouldBlock` or `TimedOut`).
pub fn request_within(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
    deadline: Duration,
) -> io::Result<Resp> {
    let mut s = TcpStream::connect_timeout(&addr, deadline.min(Duration::from_secs(5)))?;
    s.set_read_timeout(Some(deadline))?;
    s.set_write_timeout(Some(deadline))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\n").into_bytes();
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.extend_from_slice(format!("host: {addr}\r\n").as_bytes());
    }
    for (k, v) in headers {
        req.extend_from_slice(k.as_bytes());
        req.extend_from_slice(b": ");
        req.extend_from_slice(v);
        req.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        req.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    req.extend_from_slice(b"connection: close\r\n\r\n");
    req.extend_from_slice(body);
    s.write_all(&req)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw)
}

/// `GET path`.
pub fn get(addr: SocketAddr, path: &str) -> io::Result<Resp> {
    request(addr, "GET", path, &[], b"")
}

/// `GET path` with `Authorization: Bearer <token>`.
pub fn get_with_bearer(addr: SocketAddr, path: &str, token: &str) -> io::Result<Resp> {
    let auth = format!("Bearer {token}");
    request(
        addr,
        "GET",
        path,
        &[("authorization", auth.as_bytes())],
        b"",
    )
}

fn bad(m: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, m.to_owned())
}

/// Parses a whole HTTP/1.1 answer (Content-Length or chunked body, or up to the close).
pub fn parse_response(raw: &[u8]) -> io::Result<Resp> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers (connection closed early?)"))?;
    let head = raw.get(..end).unwrap_or_default();
    let rest = raw.get(end + 4..).unwrap_or_default();
    let mut lines = head.split(|&b| b == b'\n');
    let status_line = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let mut headers = Vec::new();
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(colon) = line.iter().position(|&b| b == b':') {
            let (name, value) = line.split_at(colon);
            let value = value.get(1..).unwrap_or_default().trim_ascii().to_vec();
            headers.push((String::from_utf8_lossy(name).to_ascii_lowercase(), value));
        }
    }
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case(b"chunked"));
    let body = if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Ok(Resp {
        status,
        headers,
        body,
    })
}

/// A chunked body's content (stops at the last chunk, or where the bytes end).
fn dechunk(rest: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 0;
    // Each round consumes at least the size line: bounded by the input's length.
    while let Some(nl) = rest
        .get(at..)
        .and_then(|r| r.windows(2).position(|w| w == b"\r\n"))
    {
        let size_line = rest.get(at..at + nl).unwrap_or_default();
        let size_text = String::from_utf8_lossy(size_line).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("0").trim(), 16)
            .map_err(|_| bad("bad chunk size"))?;
        at += nl + 2;
        if size == 0 {
            break;
        }
        let end = (at + size).min(rest.len());
        out.extend_from_slice(rest.get(at..end).unwrap_or_default());
        at += size + 2;
    }
    Ok(out)
}
