//! A test identity provider: OpenID discovery, a JWKS of ES256 keys that can be rotated, and
//! RFC 7662 token introspection for opaque tokens, on a [`TestServer`] — so any of its
//! endpoints can be broken with a [`Fault`].
//!
//! Its advertised issuer is `http://idp.test` (Envoy reaches it through a cluster, so the host
//! is only a `Host` header). Endpoints, for any path prefix `P` (so that several providers of
//! one filter configuration can each have their own, separately broken, endpoints):
//!
//! - `GET P/.well-known/openid-configuration`: issuer `http://idp.test` + `P`, `jwks_uri`
//!   `<issuer>/jwks`, `introspection_endpoint` `<issuer>/introspect`;
//! - `GET P/jwks`: every published key (`cache-control: max-age=300`);
//! - `POST P/introspect`: client credentials required (Basic or in the form), `token` looked up
//!   among the registered opaque tokens (unknown: `{"active": false}`).

use crate::fault::Fault;
use crate::server::{Answer, Request, TestServer};
use portcullis::jwt::{Algorithm, b64};
use portcullis::mint::SigningKey;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// The issuer the provider advertises (plus the path prefix of its endpoints).
pub const ISSUER: &str = "http://idp.test";

/// Why the provider could not start or sign.
#[derive(Debug)]
pub enum IdpError {
    /// Its listener.
    Io(io::Error),
    /// Making or using a key.
    Key(String),
}

impl std::fmt::Display for IdpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdpError::Io(e) => write!(f, "identity provider: {e}"),
            IdpError::Key(e) => write!(f, "identity provider key: {e}"),
        }
    }
}

impl std::error::Error for IdpError {}

impl From<io::Error> for IdpError {
    fn from(e: io::Error) -> Self {
        IdpError::Io(e)
    }
}

/// One ES256 key: its signer and public JWK.
struct Key {
    signer: SigningKey,
    jwk: Value,
}

fn new_key(kid: &str) -> Result<Key, IdpError> {
    let key_err = |e: &dyn std::fmt::Display| IdpError::Key(e.to_string());
    let pair =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| key_err(&e))?;
    let signer = SigningKey::from_pkcs8_pem(&pair.serialize_pem(), Algorithm::ES256)
        .map_err(|e| key_err(&e))?
        .with_kid(kid);
    let point = pair.public_key_raw();
    let (Some(x), Some(y)) = (point.get(1..33), point.get(33..65)) else {
        return Err(IdpError::Key("not an uncompressed P-256 point".to_owned()));
    };
    let jwk = json!({
        "kty": "EC", "crv": "P-256", "x": b64::encode(x), "y": b64::encode(y),
        "kid": kid, "alg": "ES256", "use": "sig"
    });
    Ok(Key { signer, jwk })
}

struct State {
    /// Published keys, oldest first.
    published: Vec<Key>,
    /// Index in `published` of the signing key.
    current: usize,
    /// Opaque token → introspection answer.
    opaque: HashMap<String, Value>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The running provider; stops on drop.
pub struct Idp {
    state: Arc<Mutex<State>>,
    server: TestServer,
}

impl Idp {
    /// The client id the introspection endpoint requires.
    pub const CLIENT_ID: &'static str = "portcullis";
    /// The client secret the introspection endpoint requires.
    pub const CLIENT_SECRET: &'static str = "s3cret-introspection";

    /// Starts on 127.0.0.1 (a kernel-picked port) with one ES256 key, kid `k1`, published.
    pub fn start() -> Result<Idp, IdpError> {
        let state = Arc::new(Mutex::new(State {
            published: vec![new_key("k1")?],
            current: 0,
            opaque: HashMap::new(),
        }));
        let st = Arc::clone(&state);
        let server = TestServer::start(move |req| answer(req, &st))?;
        Ok(Idp { state, server })
    }

    /// Where it listens (the address for an Envoy cluster).
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The advertised issuer, `http://idp.test`.
    pub fn issuer(&self) -> String {
        ISSUER.to_owned()
    }

    /// The issuer whose discovery document is at `prefix/.well-known/openid-configuration`
    /// (`prefix` starts with `/`).
    pub fn issuer_at(&self, prefix: &str) -> String {
        format!("{ISSUER}{prefix}")
    }

    /// The server, for its faults and counts.
    pub fn server(&self) -> &TestServer {
        &self.server
    }

    /// Breaks (`Some`) or heals (`None`) the answers to exactly this path.
    pub fn set_fault(&self, path: &str, fault: Option<Fault>) {
        self.server.set_fault(path, fault);
    }

    /// Breaks (`Some`) or heals (`None`) every endpoint without a fault of its own.
    pub fn set_fault_all(&self, fault: Option<Fault>) {
        self.server.set_fault_all(fault);
    }

    /// Requests received so far for exactly this path, whatever the answer.
    pub fn hits(&self, path: &str) -> usize {
        self.server.hits(path)
    }

    /// Signs `claims` with the current key (ES256, header `kid` = the current kid).
    pub fn mint(&self, claims: &Value) -> Result<String, IdpError> {
        let s = lock(&self.state);
        let key = s
            .published
            .get(s.current)
            .ok_or_else(|| IdpError::Key("no current key".to_owned()))?;
        key.signer
            .sign(claims)
            .map_err(|e| IdpError::Key(e.to_string()))
    }

    /// Publishes a new key `kid` (old keys stay published) and makes it the signing key.
    pub fn rotate(&self, kid: &str) -> Result<(), IdpError> {
        let key = new_key(kid)?;
        let mut s = lock(&self.state);
        s.published.push(key);
        s.current = s.published.len() - 1;
        Ok(())
    }

    /// Signs `claims` with a fresh key `kid` that is never published.
    pub fn mint_unpublished(&self, kid: &str, claims: &Value) -> Result<String, IdpError> {
        new_key(kid)?
            .signer
            .sign(claims)
            .map_err(|e| IdpError::Key(e.to_string()))
    }

    /// Unpublishes every key but the current one.
    pub fn retire_old_keys(&self) {
        let mut s = lock(&self.state);
        let current = s.current;
        s.published.drain(..current);
        s.published.truncate(1);
        s.current = 0;
    }

    /// Registers the introspection answer for an opaque token (unknown: `{"active":false}`).
    pub fn add_opaque(&self, token: &str, answer: Value) {
        lock(&self.state).opaque.insert(token.to_owned(), answer);
    }
}

fn answer(req: &Request, state: &Mutex<State>) -> Answer {
    const DISCOVERY: &str = "/.well-known/openid-configuration";
    match req.method.as_str() {
        "GET" if req.path.ends_with(DISCOVERY) => {
            let prefix = req.path.strip_suffix(DISCOVERY).unwrap_or_default();
            let issuer = format!("{ISSUER}{prefix}");
            Answer::json(
                200,
                &json!({
                    "issuer": issuer,
                    "jwks_uri": format!("{issuer}/jwks"),
                    "introspection_endpoint": format!("{issuer}/introspect"),
                    "token_endpoint": format!("{issuer}/token"),
                }),
            )
        }
        "GET" if req.path.ends_with("/jwks") => {
            let s = lock(state);
            let keys: Vec<&Value> = s.published.iter().map(|k| &k.jwk).collect();
            Answer::json(200, &json!({ "keys": keys })).with_header("cache-control", "max-age=300")
        }
        "POST" if req.path.ends_with("/introspect") => introspect(req, state),
        _ => Answer::empty(404),
    }
}

fn introspect(req: &Request, state: &Mutex<State>) -> Answer {
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
        return Answer::json(401, &json!({"error": "invalid_client"}))
            .with_header("www-authenticate", "Basic realm=\"idp\"");
    }
    // RFC 7662 §2.1: a form body with exactly one non-empty `token`.
    let form_type = req.header("content-type").is_some_and(|t| {
        t.to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
    });
    let tokens: Vec<_> = form.iter().filter(|(k, _)| k == "token").collect();
    match tokens.as_slice() {
        [(_, token)] if form_type && !token.is_empty() => {
            let known = lock(state).opaque.get(token).cloned();
            Answer::json(200, &known.unwrap_or(json!({"active": false})))
        }
        _ => Answer::json(400, &json!({"error": "invalid_request"})),
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
    let mut out = Vec::new();
    let mut bytes = s.bytes().enumerate();
    // Each round consumes one byte, or three for an escape.
    while let Some((i, b)) = bytes.next() {
        let hex = s
            .get(i + 1..i + 3)
            .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(v)) => {
                out.push(v);
                bytes.nth(1);
            }
            (b'+', _) => out.push(b' '),
            (c, _) => out.push(c),
        }
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
