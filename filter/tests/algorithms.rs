//! Every signature algorithm end to end through [`decide`], with tokens minted by
//! [`portcullis::mint`], and the algorithm-confusion and key-substitution forgeries that must be
//! refused.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::expect_used
)]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use portcullis::config::Config;
mod support;

use portcullis::decision::{Decision, Verdict};
use portcullis::jwt::{Algorithm, b64};
use portcullis::mint::SigningKey;
use portcullis::request::Request;
use serde_json::{Value, json};
use support::decide;

const NOW: u64 = 1_800_000_000;
const RSA1: &str = include_str!("keys/rsa1.private.pem");
const RSA1_PUBLIC: &str = include_str!("keys/rsa1.public.pem");
const EC256: &str = include_str!("keys/ec256.private.pem");
const EC384: &str = include_str!("keys/ec384.private.pem");
const EC521: &str = include_str!("keys/ec521.private.pem");
const ED1: &str = include_str!("keys/ed1.private.pem");
const JWKS: &str = include_str!("keys/jwks.json");

/// The public JWK with this kid from `keys/jwks.json`.
fn public_jwk(kid: &str) -> Value {
    let jwks: Value = serde_json::from_str(JWKS).unwrap();
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap()
        .clone()
}

/// The same JWK pinned to `alg`.
fn pinned(kid: &str, alg: Algorithm) -> Value {
    let mut key = public_jwk(kid);
    key["alg"] = json!(alg.name());
    key
}

/// A secret of the hash length of `alg`, different for each algorithm.
fn hs_secret(alg: Algorithm) -> Vec<u8> {
    let len = match alg {
        Algorithm::HS256 => 32,
        Algorithm::HS384 => 48,
        _ => 64,
    };
    (0..len).map(|i| (i as u8) ^ 0x5a).collect()
}

fn oct_jwk(secret: &[u8], alg: Algorithm, kid: &str) -> Value {
    json!({"kty": "oct", "kid": kid, "alg": alg.name(), "k": b64::encode(secret)})
}

/// The signing key and the public JWK (pinned to `alg`) for each algorithm.
fn key_pair(alg: Algorithm) -> (SigningKey, Value) {
    use Algorithm as A;
    let from_pem = |pem: &str, kid: &str| {
        (
            SigningKey::from_pkcs8_pem(pem, alg).unwrap().with_kid(kid),
            pinned(kid, alg),
        )
    };
    match alg {
        A::HS256 | A::HS384 | A::HS512 => {
            let secret = hs_secret(alg);
            (
                SigningKey::hmac(&secret, alg).unwrap().with_kid("hs"),
                oct_jwk(&secret, alg, "hs"),
            )
        }
        A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512 => from_pem(RSA1, "rsa1"),
        A::ES256 => from_pem(EC256, "ec256"),
        A::ES384 => from_pem(EC384, "ec384"),
        A::ES512 => from_pem(EC521, "ec521"),
        A::EdDSA => from_pem(ED1, "ed1"),
    }
}

fn claims() -> Value {
    json!({
        "iss": "https://id.example.com", "aud": "api", "sub": "alice",
        "iat": NOW - 10, "exp": NOW + 600
    })
}

/// One provider `corp` with these public keys, required by the only route.
fn config(keys: &[Value]) -> Config {
    let doc = json!({
        "providers": {
            "corp": {
                "issuer": "https://id.example.com",
                "audiences": ["api"],
                "local_jwks": {"keys": keys}
            }
        },
        "routes": [{"name": "all", "requires": ["corp"]}]
    });
    Config::from_json(doc.to_string().as_bytes()).unwrap()
}

fn decide_token(keys: &[Value], token: &str) -> Decision {
    let config = config(keys);
    let mut cache = config.token_cache();
    let headers = vec![
        (":method".to_owned(), "GET".to_owned()),
        (":path".to_owned(), "/orders".to_owned()),
        (":authority".to_owned(), "api.example.com".to_owned()),
        ("authorization".to_owned(), format!("Bearer {token}")),
    ];
    decide(&config, &mut cache, &Request::new(&headers), NOW)
}

#[track_caller]
fn assert_allowed(keys: &[Value], token: &str) {
    let d = decide_token(keys, token);
    assert_eq!(d.verdict, Verdict::Allow, "{d:#?}");
    assert_eq!(d.reason, "authenticated");
}

/// Asserts a 401 `invalid_token` and returns its message.
#[track_caller]
fn assert_refused(keys: &[Value], token: &str) -> String {
    let d = decide_token(keys, token);
    match &d.verdict {
        Verdict::Refuse(r) => {
            assert_eq!((r.status, r.error), (401, "invalid_token"), "{d:#?}");
            assert!(!r.shadow);
            r.message.clone()
        }
        Verdict::Allow => panic!("a forged token was allowed: {token}"),
    }
}

/// `token` with its header replaced (the signature is kept).
fn with_header(token: &str, header: &Value) -> String {
    let (_, rest) = token.split_once('.').unwrap();
    format!("{}.{rest}", b64::encode(header.to_string()))
}

#[test]
fn every_algorithm_is_accepted_with_its_key() {
    for alg in Algorithm::ALL {
        let (key, jwk) = key_pair(alg);
        let token = key.sign(&claims()).unwrap();
        assert_allowed(std::slice::from_ref(&jwk), &token);
        // Also found among all the other keys of its kind (one kid may name keys of several
        // algorithms; secret and public keys never share a set).
        let symmetric = |a: &Algorithm| a.name().starts_with("HS");
        let all: Vec<Value> = Algorithm::ALL
            .iter()
            .filter(|a| symmetric(a) == symmetric(&alg))
            .map(|a| key_pair(*a).1)
            .collect();
        assert_allowed(&all, &token);
        let no_kid = key
            .sign_with_header(&json!({"alg": alg.name(), "typ": "JWT"}), &claims())
            .unwrap();
        assert_allowed(&[jwk], &no_kid);
    }
}

#[test]
fn rsa_and_hmac_keys_without_alg_default_to_rs256_and_hs256() {
    let mut rsa = public_jwk("rsa1");
    rsa.as_object_mut().unwrap().remove("alg");
    let token = SigningKey::from_pkcs8_pem(RSA1, Algorithm::RS256)
        .unwrap()
        .with_kid("rsa1")
        .sign(&claims())
        .unwrap();
    assert_allowed(&[rsa.clone()], &token);
    let ps = SigningKey::from_pkcs8_pem(RSA1, Algorithm::PS256)
        .unwrap()
        .with_kid("rsa1")
        .sign(&claims())
        .unwrap();
    assert_eq!(
        assert_refused(&[rsa], &ps),
        "token algorithm does not match its key"
    );

    let mut hs = public_jwk("hs1");
    hs.as_object_mut().unwrap().remove("alg");
    let secret = b64::decode(hs["k"].as_str().unwrap()).unwrap();
    let token = SigningKey::hmac(&secret, Algorithm::HS256)
        .unwrap()
        .with_kid("hs1")
        .sign(&claims())
        .unwrap();
    assert_allowed(&[hs], &token);
}

#[test]
fn changing_the_header_alg_after_signing_is_refused() {
    for alg in Algorithm::ALL {
        let (key, jwk) = key_pair(alg);
        let token = key.sign(&claims()).unwrap();
        for other in Algorithm::ALL.into_iter().filter(|a| *a != alg) {
            let forged = with_header(
                &token,
                &json!({"alg": other.name(), "typ": "JWT", "kid": key.kid()}),
            );
            assert_refused(std::slice::from_ref(&jwk), &forged);
        }
    }
    // Even when the key set also holds the same RSA key pinned to PS256 (one kid, two
    // algorithms): the PKCS#1 v1.5 signature does not verify as PSS.
    let rs = SigningKey::from_pkcs8_pem(RSA1, Algorithm::RS256)
        .unwrap()
        .with_kid("rsa1")
        .sign(&claims())
        .unwrap();
    let keys = [
        pinned("rsa1", Algorithm::RS256),
        pinned("rsa1", Algorithm::PS256),
    ];
    assert_allowed(&keys, &rs);
    let forged = with_header(&rs, &json!({"alg": "PS256", "typ": "JWT", "kid": "rsa1"}));
    assert_eq!(assert_refused(&keys, &forged), "token signature is invalid");
    // And `none` in any spelling.
    for none in ["none", "None", "NONE", "nOnE"] {
        let forged = with_header(&rs, &json!({"alg": none, "kid": "rsa1"}));
        assert_refused(&keys, &forged);
        let (unsigned, _) = forged.rsplit_once('.').unwrap();
        assert_refused(&keys, &format!("{unsigned}."));
    }
}

#[test]
fn rs256_key_refuses_a_ps256_token() {
    let token = SigningKey::from_pkcs8_pem(RSA1, Algorithm::PS256)
        .unwrap()
        .with_kid("rsa1")
        .sign(&claims())
        .unwrap();
    let message = assert_refused(&[pinned("rsa1", Algorithm::RS256)], &token);
    assert_eq!(message, "token algorithm does not match its key");
    // The same key pinned to PS256 accepts it: the signature itself was fine.
    assert_allowed(&[pinned("rsa1", Algorithm::PS256)], &token);
}

/// The classic confusion: the verifier's public key, in some encoding, used as an HMAC secret.
#[test]
fn hmac_signed_with_the_rsa_public_key_is_refused() {
    let jwk = public_jwk("rsa1");
    let der_b64: String = RSA1_PUBLIC
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let der = STANDARD.decode(der_b64).unwrap();
    let n_text = jwk["n"].as_str().unwrap();
    let modulus = b64::decode(n_text).unwrap();
    assert_eq!(modulus.len(), 256);
    let secrets: [(&str, &[u8]); 5] = [
        ("PEM text", RSA1_PUBLIC.as_bytes()),
        (
            "PEM text without the final newline",
            RSA1_PUBLIC.trim_end().as_bytes(),
        ),
        ("DER", &der),
        ("modulus", &modulus),
        ("modulus as base64url text", n_text.as_bytes()),
    ];
    let mut no_alg = jwk.clone();
    no_alg.as_object_mut().unwrap().remove("alg");
    for (what, secret) in secrets {
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            for kid in [Some("rsa1"), None] {
                let key = match kid {
                    Some(kid) => SigningKey::hmac(secret, alg).unwrap().with_kid(kid),
                    None => SigningKey::hmac(secret, alg).unwrap(),
                };
                let token = key.sign(&claims()).unwrap();
                for keys in [[jwk.clone()], [no_alg.clone()]] {
                    let message = assert_refused(&keys, &token);
                    assert!(
                        message == "token algorithm does not match its key"
                            || message == "no key matches the token",
                        "{what} {alg} {kid:?}: {message}"
                    );
                }
            }
        }
    }
}

#[test]
fn es256_token_signed_with_the_p384_key_is_refused() {
    // The mint refuses to make an ES256 signature with a P-384 key, so sign ES384 under a
    // forged ES256 header that names the P-256 key.
    assert!(SigningKey::from_pkcs8_pem(EC384, Algorithm::ES256).is_err());
    let p384 = SigningKey::from_pkcs8_pem(EC384, Algorithm::ES384).unwrap();
    let forged = p384
        .sign_with_header(
            &json!({"alg": "ES256", "typ": "JWT", "kid": "ec256"}),
            &claims(),
        )
        .unwrap();
    let message = assert_refused(&[public_jwk("ec256")], &forged);
    assert_eq!(message, "token signature is invalid");
    // Also when both keys are configured.
    assert_refused(&[public_jwk("ec256"), public_jwk("ec384")], &forged);
}

#[test]
fn another_key_with_the_same_kid_is_refused() {
    // HMAC: another secret of the right length.
    let (_, hs_jwk) = key_pair(Algorithm::HS256);
    let other = SigningKey::hmac(&[0x42; 32], Algorithm::HS256)
        .unwrap()
        .with_kid("hs");
    let message = assert_refused(&[hs_jwk], &other.sign(&claims()).unwrap());
    assert_eq!(message, "token signature is invalid");

    // P-256 and Ed25519: keys made from fixed seeds, written as PKCS#8 like the test keys.
    let p256_pem = p256::ecdsa::SigningKey::from_slice(&[7; 32])
        .unwrap()
        .to_pkcs8_pem(LineEnding::LF)
        .unwrap();
    let ed_pem = ed25519_dalek::SigningKey::from_bytes(&[7; 32])
        .to_pkcs8_pem(LineEnding::LF)
        .unwrap();
    for (pem, alg, kid) in [
        (p256_pem.as_str(), Algorithm::ES256, "ec256"),
        (ed_pem.as_str(), Algorithm::EdDSA, "ed1"),
    ] {
        let impostor = SigningKey::from_pkcs8_pem(pem, alg).unwrap().with_kid(kid);
        let token = impostor.sign(&claims()).unwrap();
        assert_eq!(
            assert_refused(&[public_jwk(kid)], &token),
            "token signature is invalid"
        );
        // The genuine key with the same claims passes.
        let (genuine, jwk) = key_pair(alg);
        assert_allowed(&[jwk], &genuine.sign(&claims()).unwrap());
    }
}

#[test]
fn tokens_are_checked_against_the_whole_text() {
    // Changing a claim after signing breaks every algorithm's signature.
    for alg in Algorithm::ALL {
        let (key, jwk) = key_pair(alg);
        let token = key.sign(&claims()).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let mut edited = claims();
        edited["sub"] = json!("mallory");
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64::encode(edited.to_string()),
            parts[2]
        );
        assert_eq!(
            assert_refused(&[jwk], &forged),
            "token signature is invalid",
            "{alg}"
        );
    }
}
