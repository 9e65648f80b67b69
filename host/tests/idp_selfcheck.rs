//! The test identity provider (`support::idp`) answers as the end-to-end tests expect.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use portcullis::config::reader::Ctx;
use portcullis::jwt::{jwk, jws};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::idp::{Idp, Mode};
use support::request;

const DISCO: &str = "/.well-known/openid-configuration";
const FORM: (&str, &[u8]) = ("content-type", b"application/x-www-form-urlencoded");
const AUTH: &[u8] = b"Basic cG9ydGN1bGxpczpzM2NyZXQtaW50cm9zcGVjdGlvbg==";
const REALM: &str = "Basic realm=\"idp\"";
const BASIC: (&str, &[u8]) = ("authorization", AUTH);

fn jwks(addr: SocketAddr) -> (Value, Value) {
    let jwks = request(addr, "GET", "/jwks", &[], b"").json();
    let kids = jwks["keys"].as_array().unwrap();
    let kids = kids.iter().map(|k| k["kid"].clone()).collect();
    (jwks, kids)
}

/// Whether the filter's own verifier accepts `token` with the keys of `jwks`.
fn verifies(jwks: &Value, token: &str) -> bool {
    let mut cx = Ctx::default();
    let set = jwk::read_jwks(&mut cx, jwks, "jwks");
    assert_eq!(cx.error_count(), 0, "{:?}", cx.into_errors());
    jws::verify_with_set(&jws::parse(token).unwrap(), &set).is_ok()
}

fn introspect(addr: SocketAddr, headers: &[(&str, &[u8])], body: &str) -> (u16, Value) {
    let r = request(addr, "POST", "/introspect", headers, body.as_bytes());
    let challenge = r.header("www-authenticate");
    assert_eq!(challenge.is_some_and(|c| c == REALM), r.status == 401);
    (r.status, r.json())
}

#[test]
fn discovery_keys_and_rotation() {
    let idp = Idp::start();
    let addr = idp.addr();
    let disco = request(addr, "GET", DISCO, &[], b"").json();
    let i = idp.issuer();
    assert_eq!(disco["issuer"], "http://idp.test");
    assert_eq!(disco["jwks_uri"], format!("{i}/jwks"));
    assert_eq!(disco["introspection_endpoint"], format!("{i}/introspect"));
    assert_eq!(disco["token_endpoint"], format!("{i}/token"));
    let r = request(addr, "GET", "/jwks?a=b", &[], b"");
    assert_eq!(r.header("cache-control").unwrap(), "max-age=300");
    assert_eq!(r.header("content-type").unwrap(), "application/json");

    let (keys, kids) = jwks(addr);
    assert_eq!(kids, json!(["k1"]));
    let claims = json!({"sub": "u1", "iss": idp.issuer()});
    let t1 = idp.mint(&claims);
    assert!(verifies(&keys, &t1));
    assert!(!verifies(&keys, &idp.mint_unpublished("k9", &claims)));
    idp.rotate("k2");
    let (keys, kids) = jwks(addr);
    assert_eq!(kids, json!(["k1", "k2"]));
    let t2 = idp.mint(&claims);
    assert!(verifies(&keys, &t1) && verifies(&keys, &t2));
    idp.retire_old_keys();
    let (keys, kids) = jwks(addr);
    assert_eq!(kids, json!(["k2"]));
    assert!(!verifies(&keys, &t1) && verifies(&keys, &t2));
    assert_eq!((idp.hits("/jwks"), idp.hits(DISCO)), (4, 1));
    assert_eq!(request(addr, "GET", "/nope", &[], b"").status, 404);
}

#[test]
fn introspection_and_modes() {
    let idp = Idp::start();
    let addr = idp.addr();
    let active = json!({"active": true, "sub": "u1", "scope": "orders:read"});
    idp.add_opaque("opaque one/+", active.clone());
    let hint = "token=opaque+one%2F%2B&token_type_hint=access_token";
    let ok = (200, active);
    assert_eq!(introspect(addr, &[FORM, BASIC], hint), ok);
    let creds = "client_id=portcullis&client_secret=s3cret-introspection";
    let in_body = format!("token=opaque%20one/%2B&{creds}");
    assert_eq!(introspect(addr, &[FORM], &in_body), ok);
    let unknown = introspect(addr, &[FORM, BASIC], "token=other");
    assert_eq!(unknown, (200, json!({"active": false})));
    let wrong = "token=x&client_id=portcullis&client_secret=nope";
    let denied = (401, json!({"error": "invalid_client"}));
    assert_eq!(introspect(addr, &[FORM], wrong), denied);
    assert_eq!(introspect(addr, &[FORM], "token=x"), denied);
    let missing = introspect(addr, &[FORM, BASIC], "token_type_hint=x");
    assert_eq!(missing, (400, json!({"error": "invalid_request"})));
    assert_eq!(idp.hits("/introspect"), 6);

    idp.set_mode(Mode::Down);
    let r = request(addr, "GET", "/jwks", &[], b"");
    assert_eq!((r.status, r.body.len()), (503, 0));
    idp.set_mode(Mode::Garbage);
    assert_eq!(request(addr, "GET", "/jwks", &[], b"").text(), "not json");
    idp.set_mode(Mode::Slow(Duration::from_millis(300)));
    let started = Instant::now();
    assert_eq!(request(addr, "GET", "/jwks", &[], b"").status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(idp.hits("/jwks"), 3);

    // Keep-alive: two requests on one connection, the second closing it.
    idp.set_mode(Mode::Up);
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let two = "GET /jwks HTTP/1.1\r\nhost: a\r\n\r\nGET /x HTTP/1.1\r\nconnection: close\r\n\r\n";
    s.write_all(two.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert_eq!(raw.matches("HTTP/1.1 ").count(), 2, "{raw}");
    assert!(raw.contains("\r\n\r\n{\"keys\"") && raw.contains("HTTP/1.1 404"));
}
