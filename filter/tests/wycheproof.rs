//! Wycheproof conformance: the JWS/JWK vectors through the public parse/verify path, and the
//! primitive vectors of every supported algorithm through a JWK built by `read_jwk`.
//!
//! `cargo test -p portcullis-filter --test wycheproof -- --nocapture` prints a summary table.
//! Nothing marked invalid may be accepted, except where listed below as a deliberate policy
//! difference; valid vectors must verify unless listed with the reason they cannot. How many
//! vectors of each file ran, by result, and how many were skipped, by reason, are exact
//! ([`EXPECTED`]): a file that stops loading, a group the test no longer understands or a new
//! reason to skip fails the test instead of quietly shrinking it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use portcullis::config::reader::Ctx;
use portcullis::jwt::Algorithm;
use portcullis::jwt::b64;
use portcullis::jwt::jwk::{Jwk, KeySet, read_jwk, read_jwks};
use portcullis::jwt::jws::{parse, verify_with_set};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The vectors live outside the repository: where `PORTCULLIS_CONFORMANCE_DIR` points, else in
/// `shared/conformance/` beside the checkout (the nearest ancestor of this crate that has one),
/// else in the workplace's `/work/shared/conformance`.
fn vectors_dir() -> std::path::PathBuf {
    const SUB: &str = "wycheproof/testvectors_v1";
    if let Ok(dir) = std::env::var("PORTCULLIS_CONFORMANCE_DIR") {
        return std::path::Path::new(&dir).join(SUB);
    }
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|a| a.join("shared/conformance").join(SUB))
        .chain([std::path::Path::new("/work/shared/conformance").join(SUB)])
        .find(|p| p.is_dir())
        .unwrap_or_else(|| {
            panic!(
                "no shared/conformance/{SUB} above {}: put the conformance suites beside the \
                 repository or set PORTCULLIS_CONFORMANCE_DIR",
                env!("CARGO_MANIFEST_DIR")
            )
        })
}

/// Valid JWS vectors we refuse on purpose, with why.
const JWS_VALID_REFUSED: &[(u64, &str)] = &[
    (
        346,
        "RFC 7520 fig. 20: token alg PS384 but the vector's JWK pins alg PS256",
    ),
    (
        347,
        "RFC 7520 fig. 27: the vector's JWK has alg \"ES521\", which is not a JOSE algorithm",
    ),
    (
        350,
        "RFC 7520 fig. 20 (key_ops variant): token PS384, JWK alg PS256",
    ),
    (351, "RFC 7520 fig. 27 (key_ops variant): JWK alg \"ES521\""),
    (
        372,
        "'?' inserted in the header segment: not base64url, and the signature covers the text",
    ),
    (
        373,
        "'?' inserted in the payload segment: not base64url, and the signature covers the text",
    ),
];

/// Invalid JWK-set vectors we accept on purpose, with why (none).
const JWK_INVALID_ACCEPTED: &[(u64, &str)] = &[];

/// Invalid JWS vectors that are byte for byte a valid vector with the same key (their names
/// speak of base64 padding that the v1 file no longer contains): (invalid tcId, valid tcId).
const JWS_INVALID_TWINS: &[(u64, u64)] = &[(367, 357), (370, 357)];

const SKIP_JSON: &str = "JSON serialisation";
const SKIP_JWE: &str = "JWE";
const SKIP_TWIN: &str = "marked invalid but identical to a valid vector";
const SKIP_TRUNCATED_TAG: &str = "truncated tag (JWS uses the full hash output)";
const SKIP_SHORT_HMAC_KEY: &str = "key shorter than the hash (refused by RFC 7518 §3.2)";
const SKIP_SMALL_RSA: &str = "RSA key under 2048 bits (refused by policy)";
const SKIP_PSS_HASH: &str = "PSS hash or MGF not the JWS combination";
const SKIP_PSS_SALT: &str = "PSS salt length not the hash length";

/// What must run from one vector file.
struct Expected {
    /// The file's `numberOfTests`: every vector is either run or skipped.
    total: usize,
    /// Vectors marked `valid` that ran (accepted, or refused as listed).
    valid: usize,
    /// Vectors marked `invalid` that ran (all refused, unless listed).
    invalid: usize,
    /// Vectors marked `acceptable` that ran (either outcome is allowed).
    acceptable: usize,
    /// Vectors not run, by reason.
    skipped: &'static [(&'static str, usize)],
}

const fn ran(valid: usize, invalid: usize, acceptable: usize) -> Expected {
    Expected {
        total: valid + invalid + acceptable,
        valid,
        invalid,
        acceptable,
        skipped: &[],
    }
}

/// The HMAC files: full-length tags with keys at least as long as the hash run; 87 truncated
/// tags and 3 short keys are skipped.
const HMAC: Expected = Expected {
    total: 174,
    valid: 30,
    invalid: 54,
    acceptable: 0,
    skipped: &[(SKIP_SHORT_HMAC_KEY, 3), (SKIP_TRUNCATED_TAG, 87)],
};

/// Every file of `testvectors_v1` and what must run from it (C2SP/wycheproof @ dac1dd47).
const EXPECTED: &[(&str, Expected)] = &[
    // ES256
    ("ecdsa_secp256r1_sha256_p1363_test.json", ran(173, 89, 0)),
    // ES384
    ("ecdsa_secp384r1_sha384_p1363_test.json", ran(193, 87, 0)),
    // EdDSA
    ("ed25519_test.json", ran(88, 63, 0)),
    // HS256, HS384, HS512
    ("hmac_sha256_test.json", HMAC),
    ("hmac_sha384_test.json", HMAC),
    ("hmac_sha512_test.json", HMAC),
    // JWK sets through the configuration reader.
    ("json_web_key_test.json", ran(5, 21, 0)),
    // Compact JWS through parse and verify; 46 valid, 355 invalid in the file.
    (
        "json_web_signature_test.json",
        Expected {
            total: 401,
            valid: 46,
            invalid: 352,
            acceptable: 0,
            skipped: &[(SKIP_JSON, 1), (SKIP_TWIN, 2)],
        },
    ),
    // PS256, PS384, PS512
    ("rsa_pss_2048_sha256_mgf1_32_test.json", ran(63, 45, 0)),
    ("rsa_pss_2048_sha384_mgf1_48_test.json", ran(95, 46, 0)),
    ("rsa_pss_4096_sha512_mgf1_64_test.json", ran(132, 47, 0)),
    // RS256, RS384, RS512
    ("rsa_signature_2048_sha256_test.json", ran(9, 249, 1)),
    ("rsa_signature_2048_sha384_test.json", ran(7, 250, 1)),
    ("rsa_signature_2048_sha512_test.json", ran(8, 250, 1)),
];

#[derive(Default)]
struct Tally {
    valid_accepted: usize,
    valid_refused: Vec<(u64, String)>,
    invalid_refused: usize,
    invalid_accepted: Vec<(u64, String)>,
    acceptable_accepted: usize,
    acceptable_refused: usize,
    skipped: BTreeMap<String, usize>,
}

impl Tally {
    fn record(&mut self, id: u64, result: &str, outcome: Result<(), String>, what: &str) {
        match (result, outcome) {
            ("valid", Ok(())) => self.valid_accepted += 1,
            ("valid", Err(e)) => self.valid_refused.push((id, format!("{what}: {e}"))),
            ("invalid", Err(_)) => self.invalid_refused += 1,
            ("invalid", Ok(())) => self.invalid_accepted.push((id, what.to_owned())),
            ("acceptable", Ok(())) => self.acceptable_accepted += 1,
            ("acceptable", Err(_)) => self.acceptable_refused += 1,
            (other, _) => panic!("unknown result {other:?} in tcId {id}"),
        }
    }

    fn skip(&mut self, reason: &str) {
        *self.skipped.entry(reason.to_owned()).or_default() += 1;
    }

    /// Asserts that the vectors of `name` (read as `doc`) ran and were skipped exactly as
    /// [`EXPECTED`] says.
    #[track_caller]
    fn assert_counts(&self, name: &str, doc: &Value) {
        let expected = expected(name);
        let in_file: usize = groups(doc).iter().map(|g| tests(g).len()).sum();
        assert_eq!(
            doc["numberOfTests"].as_u64(),
            Some(expected.total as u64),
            "{name}: numberOfTests"
        );
        assert_eq!(in_file, expected.total, "{name}: vectors in the groups");
        assert_eq!(
            self.valid_accepted + self.valid_refused.len(),
            expected.valid,
            "{name}: valid vectors run"
        );
        assert_eq!(
            self.invalid_refused + self.invalid_accepted.len(),
            expected.invalid,
            "{name}: invalid vectors run"
        );
        assert_eq!(
            self.acceptable_accepted + self.acceptable_refused,
            expected.acceptable,
            "{name}: acceptable vectors run"
        );
        let skipped: BTreeMap<String, usize> = expected
            .skipped
            .iter()
            .map(|(r, n)| ((*r).to_owned(), *n))
            .collect();
        assert_eq!(self.skipped, skipped, "{name}: skipped vectors");
        let skipped: usize = skipped.values().sum();
        assert_eq!(
            expected.valid + expected.invalid + expected.acceptable + skipped,
            expected.total,
            "{name}: every vector is run or skipped"
        );
    }

    fn row(&self, name: &str) -> String {
        let skipped: Vec<String> = self
            .skipped
            .iter()
            .map(|(r, n)| format!("{n} {r}"))
            .collect();
        format!(
            "{name:<42} valid {:>3}/{:<3} invalid refused {:>3}/{:<3} acceptable acc/ref {}/{} skipped {}",
            self.valid_accepted,
            self.valid_accepted + self.valid_refused.len(),
            self.invalid_refused,
            self.invalid_refused + self.invalid_accepted.len(),
            self.acceptable_accepted,
            self.acceptable_refused,
            if skipped.is_empty() {
                "0".to_owned()
            } else {
                skipped.join("; ")
            }
        )
    }
}

fn load(name: &str) -> Value {
    let path = vectors_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn expected(name: &str) -> &'static Expected {
    EXPECTED
        .iter()
        .find(|(file, _)| *file == name)
        .map(|(_, e)| e)
        .unwrap_or_else(|| panic!("{name} is not in EXPECTED"))
}

/// Every vector file of the suite is run by a test here, and every file named here exists: a
/// new file (or a renamed one) fails until it is given a test and its counts.
#[test]
fn every_vector_file_is_expected() {
    let mut found: Vec<String> = std::fs::read_dir(vectors_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".json"))
        .collect();
    found.sort();
    let mut named: Vec<&str> = EXPECTED.iter().map(|(f, _)| *f).collect();
    named.sort_unstable();
    assert_eq!(found, named);
}

fn groups(doc: &Value) -> &Vec<Value> {
    doc["testGroups"].as_array().unwrap()
}

fn tests(group: &Value) -> &Vec<Value> {
    group["tests"].as_array().unwrap()
}

fn id(test: &Value) -> u64 {
    test["tcId"].as_u64().unwrap()
}

fn result(test: &Value) -> &str {
    test["result"].as_str().unwrap()
}

fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn strip_zeros(mut b: &[u8]) -> &[u8] {
    while let [0, rest @ ..] = b {
        b = rest;
    }
    b
}

/// A key (a JWK or a JWK Set) through the configuration reader: the set, or the config errors.
fn key_set(value: &Value) -> Result<KeySet, String> {
    let mut cx = Ctx::default();
    let set = if value.get("keys").is_some() {
        read_jwks(&mut cx, value, "jwks")
    } else {
        KeySet::from_keys(read_jwk(&mut cx, value, "jwk").into_iter().collect())
    };
    let errors = cx.into_errors();
    if errors.is_empty() {
        Ok(set)
    } else {
        Err(errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "))
    }
}

fn one_key(value: &Value) -> Result<Jwk, String> {
    let mut cx = Ctx::default();
    let key = read_jwk(&mut cx, value, "jwk");
    let errors = cx.into_errors();
    match key {
        Some(k) if errors.is_empty() => Ok(k),
        _ => Err(errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")),
    }
}

/// Refused at config, at parse or at verification; `Ok` only if a configured key verified it.
fn verify_token(keys: &Result<KeySet, String>, token: &str) -> Result<(), String> {
    let keys = keys.as_ref().map_err(|e| format!("key refused: {e}"))?;
    let jws = parse(token).map_err(|e| format!("parse: {e}"))?;
    verify_with_set(&jws, keys)
        .map(|_| ())
        .map_err(|e| format!("verify: {e}"))
}

/// Runs a file of compact JWS vectors with their keys; returns the invalid vectors skipped as
/// twins of a valid one, as (invalid tcId, valid tcId).
fn jose_file(name: &str, tally: &mut Tally) -> Vec<(u64, u64)> {
    let doc = load(name);
    // Some vectors marked invalid are byte-for-byte a token marked valid with the same key
    // (their names speak of padding that the v1 files no longer contain); they cannot be both.
    // Counted apart.
    let key_of = |group: &'_ Value| group.get("public").unwrap_or(&group["private"]).clone();
    let valid_tokens: Vec<(Value, &str, u64)> = groups(&doc)
        .iter()
        .flat_map(|g| tests(g).iter().map(move |t| (g, t)))
        .filter(|(_, t)| result(t) == "valid")
        .filter_map(|(g, t)| Some((key_of(g), t["jws"].as_str()?, id(t))))
        .collect();
    let mut twins = Vec::new();
    for group in groups(&doc) {
        let key_json = key_of(group);
        let keys = key_set(&key_json);
        for test in tests(group) {
            let token = test["jws"].as_str().unwrap();
            if token.trim_start().starts_with('{') {
                // JSON serialisation: not what a bearer token is. We refuse it anyway.
                assert!(parse(token).is_err());
                tally.skip(SKIP_JSON);
                continue;
            }
            if token.split('.').count() == 5 {
                assert!(parse(token).is_err());
                tally.skip(SKIP_JWE);
                continue;
            }
            let what = test["comment"].as_str().unwrap_or_default().to_owned();
            let twin = valid_tokens
                .iter()
                .find(|(k, t, _)| *t == token && *k == key_json);
            if let (Some((_, _, valid_id)), "invalid") = (twin, result(test)) {
                tally.skip(SKIP_TWIN);
                twins.push((id(test), *valid_id));
                continue;
            }
            tally.record(id(test), result(test), verify_token(&keys, token), &what);
        }
    }
    report(name, tally);
    tally.assert_counts(name, &doc);
    twins
}

#[test]
fn json_web_signature() {
    let mut t = Tally::default();
    let twins = jose_file("json_web_signature_test.json", &mut t);
    assert_eq!(twins, JWS_INVALID_TWINS, "invalid vectors skipped as twins");
    // So those tokens are accepted although labelled invalid: they are the bytes of a valid
    // vector, which must be (and was) accepted.
    for (_, valid) in JWS_INVALID_TWINS {
        assert!(!t.valid_refused.iter().any(|(i, _)| i == valid), "{valid}");
    }
    assert!(
        t.invalid_accepted.is_empty(),
        "invalid JWS accepted: {:?}",
        t.invalid_accepted
    );
    expect_only(&t.valid_refused, JWS_VALID_REFUSED, "valid JWS refused");
}

#[test]
fn json_web_key() {
    let mut t = Tally::default();
    let twins = jose_file("json_web_key_test.json", &mut t);
    assert!(twins.is_empty(), "{twins:?}");
    expect_only(
        &t.invalid_accepted,
        JWK_INVALID_ACCEPTED,
        "invalid JWK vector accepted",
    );
    assert!(
        t.valid_refused.is_empty(),
        "valid JWK vectors refused: {:?}",
        t.valid_refused
    );
}

/// `found` must be exactly the listed exceptions.
fn expect_only(found: &[(u64, String)], allowed: &[(u64, &str)], what: &str) {
    let found_ids: Vec<u64> = found.iter().map(|(i, _)| *i).collect();
    let allowed_ids: Vec<u64> = allowed.iter().map(|(i, _)| *i).collect();
    assert_eq!(found_ids, allowed_ids, "{what}: {found:?}");
}

fn report(name: &str, t: &Tally) {
    let mut out = t.row(name);
    for (id, why) in &t.valid_refused {
        let _ = write!(out, "\n    valid refused    tcId {id}: {why}");
    }
    for (id, why) in &t.invalid_accepted {
        let _ = write!(out, "\n    invalid accepted tcId {id}: {why}");
    }
    println!("{out}");
}

/// Runs primitive vectors: `key` builds a JWK JSON for a group (or says why it is skipped);
/// each test's `sig` over `msg` must verify exactly when the vector says so.
fn primitive_file(
    name: &str,
    sig_field: &str,
    key: impl Fn(&Value) -> Result<Value, &'static str>,
) -> Tally {
    let doc = load(name);
    let mut t = Tally::default();
    for group in groups(&doc) {
        let jwk = match key(group) {
            Ok(jwk) => jwk,
            Err(reason) => {
                for _ in tests(group) {
                    t.skip(reason);
                }
                continue;
            }
        };
        let jwk = one_key(&jwk);
        for test in tests(group) {
            let msg = hex(test["msg"].as_str().unwrap());
            let sig = hex(test[sig_field].as_str().unwrap());
            let outcome = match &jwk {
                Ok(k) => k.verify(&msg, &sig).map_err(|e| e.to_string()),
                Err(e) => Err(format!("key refused: {e}")),
            };
            let what = test["comment"].as_str().unwrap_or_default().to_owned();
            t.record(id(test), result(test), outcome, &what);
        }
    }
    report(name, &t);
    t.assert_counts(name, &doc);
    assert!(
        t.invalid_accepted.is_empty(),
        "{name}: invalid accepted: {:?}",
        t.invalid_accepted
    );
    assert!(
        t.valid_refused.is_empty(),
        "{name}: valid refused: {:?}",
        t.valid_refused
    );
    t
}

fn ec_key(crv: &'static str, size: usize) -> impl Fn(&Value) -> Result<Value, &'static str> {
    move |group| {
        let point = hex(group["publicKey"]["uncompressed"].as_str().unwrap());
        assert_eq!(point.len(), 1 + 2 * size);
        Ok(json!({
            "kty": "EC",
            "crv": crv,
            "x": b64::encode(&point[1..=size]),
            "y": b64::encode(&point[1 + size..]),
        }))
    }
}

#[test]
fn ecdsa_p256_p1363() {
    primitive_file(
        "ecdsa_secp256r1_sha256_p1363_test.json",
        "sig",
        ec_key("P-256", 32),
    );
}

#[test]
fn ecdsa_p384_p1363() {
    primitive_file(
        "ecdsa_secp384r1_sha384_p1363_test.json",
        "sig",
        ec_key("P-384", 48),
    );
}

#[test]
fn ed25519() {
    primitive_file("ed25519_test.json", "sig", |group| {
        let pk = hex(group["publicKey"]["pk"].as_str().unwrap());
        Ok(json!({"kty": "OKP", "crv": "Ed25519", "x": b64::encode(pk)}))
    });
}

/// HMAC keys are per test, so HMAC vectors get their own loop.
fn hmac_tests(name: &str, alg: Algorithm, bits: u64) {
    let doc = load(name);
    let mut t = Tally::default();
    for group in groups(&doc) {
        let skip = if group["tagSize"].as_u64() != Some(bits) {
            Some(SKIP_TRUNCATED_TAG)
        } else if group["keySize"].as_u64().unwrap() < bits {
            Some(SKIP_SHORT_HMAC_KEY)
        } else {
            None
        };
        for test in tests(group) {
            if let Some(reason) = skip {
                t.skip(reason);
                continue;
            }
            let key = hex(test["key"].as_str().unwrap());
            let jwk = json!({"kty": "oct", "alg": alg.name(), "k": b64::encode(key)});
            let msg = hex(test["msg"].as_str().unwrap());
            let tag = hex(test["tag"].as_str().unwrap());
            let outcome = one_key(&jwk)
                .map_err(|e| format!("key refused: {e}"))
                .and_then(|k| k.verify(&msg, &tag).map_err(|e| e.to_string()));
            let what = test["comment"].as_str().unwrap_or_default().to_owned();
            t.record(id(test), result(test), outcome, &what);
        }
    }
    report(name, &t);
    t.assert_counts(name, &doc);
    assert!(
        t.invalid_accepted.is_empty(),
        "{name}: {:?}",
        t.invalid_accepted
    );
    assert!(t.valid_refused.is_empty(), "{name}: {:?}", t.valid_refused);
}

#[test]
fn hmac_sha256() {
    hmac_tests("hmac_sha256_test.json", Algorithm::HS256, 256);
}

#[test]
fn hmac_sha384() {
    hmac_tests("hmac_sha384_test.json", Algorithm::HS384, 384);
}

#[test]
fn hmac_sha512() {
    hmac_tests("hmac_sha512_test.json", Algorithm::HS512, 512);
}

fn rsa_key(alg: Algorithm) -> impl Fn(&Value) -> Result<Value, &'static str> {
    move |group| {
        if group["keySize"].as_u64().unwrap() < 2048 {
            return Err(SKIP_SMALL_RSA);
        }
        let n = hex(group["publicKey"]["modulus"].as_str().unwrap());
        let e = hex(group["publicKey"]["publicExponent"].as_str().unwrap());
        Ok(json!({
            "kty": "RSA",
            "alg": alg.name(),
            "n": b64::encode(strip_zeros(&n)),
            "e": b64::encode(strip_zeros(&e)),
        }))
    }
}

#[test]
fn rsa_pkcs1_2048_sha256() {
    primitive_file(
        "rsa_signature_2048_sha256_test.json",
        "sig",
        rsa_key(Algorithm::RS256),
    );
}

#[test]
fn rsa_pkcs1_2048_sha384() {
    primitive_file(
        "rsa_signature_2048_sha384_test.json",
        "sig",
        rsa_key(Algorithm::RS384),
    );
}

#[test]
fn rsa_pkcs1_2048_sha512() {
    primitive_file(
        "rsa_signature_2048_sha512_test.json",
        "sig",
        rsa_key(Algorithm::RS512),
    );
}

fn pss_key(
    alg: Algorithm,
    sha: &'static str,
    salt: u64,
) -> impl Fn(&Value) -> Result<Value, &'static str> {
    let rsa = rsa_key(alg);
    move |group| {
        if group["sha"] != sha || group["mgfSha"] != sha || group["mgf"] != "MGF1" {
            return Err(SKIP_PSS_HASH);
        }
        if group["sLen"].as_u64() != Some(salt) {
            return Err(SKIP_PSS_SALT);
        }
        rsa(group)
    }
}

#[test]
fn rsa_pss_2048_sha256() {
    primitive_file(
        "rsa_pss_2048_sha256_mgf1_32_test.json",
        "sig",
        pss_key(Algorithm::PS256, "SHA-256", 32),
    );
}

#[test]
fn rsa_pss_2048_sha384() {
    primitive_file(
        "rsa_pss_2048_sha384_mgf1_48_test.json",
        "sig",
        pss_key(Algorithm::PS384, "SHA-384", 48),
    );
}

#[test]
fn rsa_pss_4096_sha512() {
    primitive_file(
        "rsa_pss_4096_sha512_mgf1_64_test.json",
        "sig",
        pss_key(Algorithm::PS512, "SHA-512", 64),
    );
}
