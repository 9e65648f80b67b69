//! A small identity provider for end-to-end tests: OpenID discovery, a JWKS of ES256 keys that
//! can be rotated, and RFC 7662 token introspection for opaque tokens. Plain HTTP/1.1 on
//! 127.0.0.1 (keep-alive, Content-Length request bodies), one thread per connection.
#![allow(dead_code)]

use portcullis::jwt::{Algorithm, b64};
use portcullis::mint::SigningKey;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How the provider answers (applies to every endpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Normal answers.
    Up,
    /// `503` with an empty body.
    Down,
    /// Sleeps this long, then answers normally.
    Slow(Duration),
    /// `200` with the body `not json`.
    Garbage,
}

/// One ES256 key: its signer and public JWK.
struct Key {
    signer: SigningKey,
    jwk: Value,
}

struct State {
    /// Published keys, oldest first.
    published: Vec<Key>,
    /// Index in `published` of the signing key.
    current: usize,
    mode: Mode,
    hits: HashMap<String, usize>,
    opaque: HashMap<String, Value>,
}

/// The running provider; its acceptor stops on drop.
pub struct Idp {
    state: Arc<Mutex<State>>,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

fn new_key(kid: &str) -> Key {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let signer = SigningKey::from_pkcs8_pem(&pair.serialize_pem(), Algorithm::ES256)
        .unwrap()
        .with_kid(kid);
    let point = pair.public_key_raw();
    assert_eq!(point.len(), 65, "uncompressed P-256 point");
    let jwk = json!({
        "kty": "EC", "crv": "P-256", "x": b64::encode(&point[1..33]), "y": b64::encode(&point[33..65]),
        "kid": kid, "alg": "ES256", "use": "sig"
    });
    Key { signer, jwk }
}

impl Idp {
    /// The client credentials the introspection endpoint requires.
    pub const CLIENT_ID: &'static str = "portcullis";
    pub const CLIENT_SECRET: &'static str = "s3cret-introspection";

    /// Starts on 127.0.0.1:0 with one ES256 key (kid "k1") published.
    pub fn start() -> Idp {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            published: vec![new_key("k1")],
            current: 0,
            mode: Mode::Up,
            hits: HashMap::new(),
            opaque: HashMap::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (Arc::clone(&state), Arc::clone(&stop));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    let st = Arc::clone(&st);
                    std::thread::spawn(move || serve(conn, &st));
                }
            }
        });
        Idp { state, addr, stop }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Where it listens (the address for an Envoy cluster).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The advertised issuer; its authority is only a Host header (Envoy routes by cluster).
    pub fn issuer(&self) -> String {
        "http://idp.test".to_owned()
    }

    /// Signs `claims` with the current key (ES256, header kid = current kid).
    pub fn mint(&self, claims: &Value) -> String {
        let s = self.state();
        s.published[s.current].signer.sign(claims).unwrap()
    }

    /// Publishes a new key `kid` (old keys stay published) and makes it the signing key.
    pub fn rotate(&self, kid: &str) {
        let key = new_key(kid);
        let mut s = self.state();
        s.published.push(key);
        s.current = s.published.len() - 1;
    }

    /// Signs `claims` with a fresh key `kid` that is never published.
    pub fn mint_unpublished(&self, kid: &str, claims: &Value) -> String {
        new_key(kid).signer.sign(claims).unwrap()
    }

    /// Unpublishes every key but the current one.
    pub fn retire_old_keys(&self) {
        let mut s = self.state();
        let current = s.current;
        s.published.drain(..current);
        s.published.truncate(1);
        s.current = 0;
    }

    /// How every later request is answered.
    pub fn set_mode(&self, mode: Mode) {
        self.state().mode = mode;
    }

    /// Requests served so far to exactly this path (query excluded), whatever the answer.
    pub fn hits(&self, path: &str) -> usize {
        self.state().hits.get(path).copied().unwrap_or(0)
    }

    /// Registers the introspection answer for an opaque token (unknown: `{"active":false}`).
    pub fn add_opaque(&self, token: &str, answer: Value) {
        self.state().opaque.insert(token.to_owned(), answer);
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// One parsed request (header names lowercased, path without query).
struct Req {
    method: String,
    path: String,
    version: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        let found = self.headers.iter().find(|(k, _)| k == name);
        found.map(|(_, v)| v.as_str())
    }

    /// HTTP/1.1 keeps the connection unless `connection: close`; HTTP/1.0 only on `keep-alive`.
    fn keep_alive(&self) -> bool {
        match self.header("connection").map(str::to_ascii_lowercase) {
            Some(c) if c.contains("close") => false,
            Some(c) if c.contains("keep-alive") => true,
            _ => self.version == "HTTP/1.1",
        }
    }
}

fn line(r: &mut impl BufRead) -> Option<String> {
    let mut buf = Vec::new();
    (r.read_until(b'\n', &mut buf).ok()? > 0)
        .then(|| String::from_utf8_lossy(&buf).trim_end().to_owned())
}

/// Reads one request; `None` at end of stream or on a malformed one.
fn read_request(r: &mut impl BufRead) -> Option<Req> {
    let start = line(r)?;
    let mut parts = start.split_whitespace().map(str::to_owned);
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    let mut headers = Vec::new();
    loop {
        let l = line(r)?;
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let path = target.split('?').next().unwrap_or_default().to_owned();
    let mut req = Req {
        method,
        path,
        version,
        headers,
        body: Vec::new(),
    };
    let len = req
        .header("content-length")
        .map_or(Some(0), |n| n.parse().ok())?;
    req.body.resize(len, 0);
    r.read_exact(&mut req.body).ok()?;
    Some(req)
}

const CLOSE: &str = "connection: close\r\n";

fn serve(conn: TcpStream, state: &Mutex<State>) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    while let Some(req) = read_request(&mut reader) {
        let (status, headers, body) = answer(&req, state);
        let reason = if status == 200 { "OK" } else { "Not OK" };
        let extra: String = headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        let close = if req.keep_alive() { "" } else { CLOSE };
        let len = body.len();
        let resp = format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-length: {len}\r\n{extra}{close}\r\n{body}"
        );
        if out.write_all(resp.as_bytes()).is_err() || !req.keep_alive() {
            break;
        }
    }
}

type Answer = (u16, Vec<(&'static str, &'static str)>, String);

const JSON: (&str, &str) = ("content-type", "application/json");

fn json_answer(status: u16, body: &Value, extra: Option<(&'static str, &'static str)>) -> Answer {
    (
        status,
        [JSON].into_iter().chain(extra).collect(),
        body.to_string(),
    )
}

fn answer(req: &Req, state: &Mutex<State>) -> Answer {
    let mode = {
        let mut s = state.lock().unwrap();
        *s.hits.entry(req.path.clone()).or_default() += 1;
        s.mode
    };
    match mode {
        Mode::Up => {}
        Mode::Down => return (503, Vec::new(), String::new()),
        Mode::Slow(d) => std::thread::sleep(d),
        Mode::Garbage => return (200, vec![JSON], "not json".to_owned()),
    }
    let issuer = "http://idp.test";
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/.well-known/openid-configuration") => json_answer(
            200,
            &json!({
                "issuer": issuer,
                "jwks_uri": format!("{issuer}/jwks"),
                "introspection_endpoint": format!("{issuer}/introspect"),
                "token_endpoint": format!("{issuer}/token"),
            }),
            None,
        ),
        ("GET", "/jwks") => {
            let s = state.lock().unwrap();
            let keys: Vec<&Value> = s.published.iter().map(|k| &k.jwk).collect();
            json_answer(
                200,
                &json!({ "keys": keys }),
                Some(("cache-control", "max-age=300")),
            )
        }
        ("POST", "/introspect") => introspect(req, state),
        _ => (404, Vec::new(), String::new()),
    }
}

fn introspect(req: &Req, state: &Mutex<State>) -> Answer {
    let form = parse_form(&req.body);
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let creds = match req.header("authorization") {
        Some(h) => h
            .strip_prefix("Basic ")
            .and_then(decode_base64)
            .and_then(|raw| String::from_utf8(raw).ok())
            .and_then(|s| {
                s.split_once(':')
                    .map(|(i, p)| (form_decode(i), form_decode(p)))
            }),
        None => field("client_id").zip(field("client_secret")),
    };
    if creds != Some((Idp::CLIENT_ID.to_owned(), Idp::CLIENT_SECRET.to_owned())) {
        let challenge = ("www-authenticate", "Basic realm=\"idp\"");
        return json_answer(401, &json!({"error": "invalid_client"}), Some(challenge));
    }
    // RFC 7662 §2.1: a form body with exactly one non-empty `token`.
    let form_type = req.header("content-type").is_some_and(|t| {
        t.to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
    });
    let tokens: Vec<_> = form.iter().filter(|(k, _)| k == "token").collect();
    match tokens.as_slice() {
        [(_, token)] if form_type && !token.is_empty() => {
            let known = state.lock().unwrap().opaque.get(token).cloned();
            json_answer(200, &known.unwrap_or(json!({"active": false})), None)
        }
        _ => json_answer(400, &json!({"error": "invalid_request"}), None),
    }
}

/// `application/x-www-form-urlencoded` pairs, decoded.
fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (form_decode(k), form_decode(v))
        })
        .collect()
}

/// Percent-decoding with `+` as a space.
fn form_decode(s: &str) -> String {
    let (b, mut out, mut i) = (s.as_bytes(), Vec::new(), 0);
    while i < b.len() {
        let hex = s
            .get(i + 1..i + 3)
            .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()));
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 2;
            }
            (b'+', _) => out.push(b' '),
            (c, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Standard base64 with padding (RFC 4648 §4); `None` if malformed.
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let s = s.trim().as_bytes();
    if !s.len().is_multiple_of(4) {
        return None;
    }
    let data = s
        .strip_suffix(b"==")
        .or_else(|| s.strip_suffix(b"="))
        .unwrap_or(s);
    let (mut out, mut acc, mut bits) = (Vec::new(), 0u32, 0);
    for &c in data {
        acc = (acc << 6) | ALPHABET.iter().position(|&a| a == c)? as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}
