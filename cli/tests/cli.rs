//! The built `portcullis` binary, run as a user would: exit codes, stdout and stderr, and
//! tokens checked with the filter's own verifier.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::expect_used
)]

use portcullis::config::reader::Ctx;
use portcullis::jwt::jwk::{KeySet, read_jwk};
use portcullis::jwt::jws::{parse, verify_with_set};
use portcullis::jwt::{Algorithm, b64};
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn keys_dir(name: &str) -> PathBuf {
    repo("filter/tests/keys").join(name)
}

/// Runs the binary with `args` and, if given, `stdin` as standard input.
fn run(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// A failure: exit 2, one clear line on stderr, nothing on stdout, no panic.
#[track_caller]
fn failed(o: &Output) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(stdout(o), "");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("portcullis: "), "{err}");
    err.trim_end().to_owned()
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

// ---------------------------------------------------------------------------------------------
// check

#[test]
fn check_accepts_the_example_configuration() {
    let example = repo("examples/portcullis.json");
    let o = run(&["check", path_str(&example)], None);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stderr(&o), "");
    let out = stdout(&o);
    assert!(out.starts_with("ok: "), "{out}");
    assert_eq!(out.lines().count(), 1);
}

#[test]
fn check_prints_a_summary() {
    let o = run(&["check", path_str(&fixture("valid.json"))], None);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "ok: 3 routes, 2 providers (1 JWT, 1 API-key), 2 signing keys, 2 API keys\n"
    );
    // The same document on standard input.
    let text = std::fs::read(fixture("valid.json")).unwrap();
    let o = run(&["check", "-"], Some(&text));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("ok: 3 routes"));
}

#[test]
fn check_reports_every_error_with_its_path() {
    let o = run(&["check", path_str(&fixture("broken.json"))], None);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "");
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 8, "{err}");
    for line in &lines {
        let (path, reason) = line.split_once(": ").unwrap();
        assert!(!path.is_empty() && !path.contains(' '), "{line}");
        assert!(!reason.is_empty(), "{line}");
    }
    let paths: Vec<&str> = lines
        .iter()
        .map(|l| l.split_once(": ").unwrap().0)
        .collect();
    assert_eq!(
        paths,
        [
            "realm",
            "providers.corp.clock_skew_seconds",
            "providers.corp.local_jwks.keys[0].n",
            "providers.partners.keys[0].sha256",
            "routes[0].match",
            "routes[0].requires[0]",
            "routes[1].public",
            "unknown",
        ]
    );
    assert!(err.contains("routes[0].requires[0]: no provider is named \"crop\"\n"));
}

#[test]
fn check_reports_document_errors() {
    let o = run(&["check", "-"], Some(b"{\"routes\": [}"));
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.starts_with("(document): not valid JSON: "), "{err}");
    assert_eq!(err.lines().count(), 1);

    let o = run(&["check", "-"], Some(b"{}"));
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o), "routes: required field is missing\n");

    let missing = fixture("no-such-file.json");
    let err = failed(&run(&["check", path_str(&missing)], None));
    assert!(err.starts_with("portcullis: cannot read "), "{err}");
}

// ---------------------------------------------------------------------------------------------
// hash-key

const ABC_SHA256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

#[test]
fn hash_key_from_an_argument() {
    let o = run(&["hash-key", "abc"], None);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o), format!("{ABC_SHA256}\n"));
    let o = run(&["hash-key", "password"], None);
    assert_eq!(
        stdout(&o),
        "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8\n"
    );
}

#[test]
fn hash_key_from_standard_input() {
    for input in [&b"abc\n"[..], b"abc", b"abc\r\n", b"abc\nsecond line\n"] {
        let o = run(&["hash-key"], Some(input));
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert_eq!(stdout(&o), format!("{ABC_SHA256}\n"), "{input:?}");
        assert_eq!(stderr(&o), "");
    }
    let err = failed(&run(&["hash-key"], Some(b"")));
    assert!(err.contains("no key given"), "{err}");
    let err = failed(&run(&["hash-key"], Some(b"\n")));
    assert!(err.contains("no key given"), "{err}");
    let long = vec![b'k'; 5000];
    let err = failed(&run(&["hash-key"], Some(&long)));
    assert!(err.contains("longer than 4096 bytes"), "{err}");
    // The key itself is never echoed.
    let o = run(&["hash-key"], Some(b" padded \n"));
    assert_eq!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("whitespace"));
    assert!(!stderr(&o).contains("padded"));
}

#[test]
fn hash_key_generates_labelled_keys() {
    let generate = || {
        let o = run(&["hash-key", "--generate"], None);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let out = stdout(&o);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        let key = lines[0].strip_prefix("key:    ").unwrap().to_owned();
        let hash = lines[1].strip_prefix("sha256: ").unwrap().to_owned();
        (key, hash)
    };
    let (key, hash) = generate();
    let random = key.strip_prefix("pk_").unwrap();
    assert_eq!(b64::decode(random).unwrap().len(), 32);
    assert_eq!(hash, portcullis::apikey::hash_hex(&key));
    // The printed hash is what hash-key prints for that key.
    let o = run(&["hash-key"], Some(format!("{key}\n").as_bytes()));
    assert_eq!(stdout(&o), format!("{hash}\n"));
    assert_ne!(generate().0, key);

    let o = run(&["hash-key", "--generate", "--prefix", "acme_"], None);
    assert!(stdout(&o).starts_with("key:    acme_"));
    // A key and --generate together make no sense.
    let o = run(&["hash-key", "--generate", "abc"], None);
    assert_eq!(o.status.code(), Some(2));
}

// ---------------------------------------------------------------------------------------------
// token

/// Every committed test key. The file mixes the HMAC key with public keys, which a provider
/// may not (`read_jwks` refuses it), so the keys are read one by one.
fn jwks() -> KeySet {
    let text = std::fs::read_to_string(keys_dir("jwks.json")).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let mut cx = Ctx::default();
    let keys = doc["keys"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, k)| read_jwk(&mut cx, k, &format!("keys[{i}]")).unwrap())
        .collect();
    assert_eq!(cx.error_count(), 0);
    KeySet::from_keys(keys)
}

/// Runs `token` and returns the verified token's header alg and kid, and its claims.
#[track_caller]
fn mint_and_verify(args: &[&str], keys: &KeySet) -> (Algorithm, Option<String>, Value) {
    let mut argv = vec!["token"];
    argv.extend_from_slice(args);
    let o = run(&argv, None);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let token = out.strip_suffix('\n').unwrap();
    assert!(!token.contains(char::is_whitespace));
    let jws = parse(token).unwrap();
    let key = verify_with_set(&jws, keys).unwrap();
    assert_eq!(key.alg, jws.header.alg);
    let claims: Value = serde_json::from_slice(&jws.payload).unwrap();
    (jws.header.alg, jws.header.kid.clone(), claims)
}

#[test]
fn tokens_for_every_key_type_verify_with_the_filter() {
    let keys = jwks();
    let cases = [
        ("rsa1.private.pem", "RS256", "rsa1"),
        ("ec256.private.pem", "ES256", "ec256"),
        ("ec384.private.pem", "ES384", "ec384"),
        ("ec521.private.pem", "ES512", "ec521"),
        ("ed1.private.pem", "EdDSA", "ed1"),
    ];
    for (file, alg, kid) in cases {
        let pem = keys_dir(file);
        let (got_alg, got_kid, claims) = mint_and_verify(
            &[
                "--key",
                path_str(&pem),
                "--alg",
                alg,
                "--kid",
                kid,
                "--iss",
                "https://id.example.com",
                "--sub",
                "alice",
                "--aud",
                "api",
            ],
            &keys,
        );
        assert_eq!(got_alg.name(), alg);
        assert_eq!(got_kid.as_deref(), Some(kid));
        assert_eq!(claims["iss"], "https://id.example.com");
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["aud"], "api");
        let (iat, exp) = (
            claims["iat"].as_u64().unwrap(),
            claims["exp"].as_u64().unwrap(),
        );
        assert_eq!(exp - iat, 3600);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(iat.abs_diff(now) < 120, "iat {iat}, now {now}");
    }
}

#[test]
fn ps256_tokens_verify_against_an_rsa_key_pinned_to_ps256() {
    let text = std::fs::read_to_string(keys_dir("jwks.json")).unwrap();
    let mut doc: Value = serde_json::from_str(&text).unwrap();
    doc["keys"][0]["alg"] = json!("PS256");
    let mut cx = Ctx::default();
    let rsa = read_jwk(&mut cx, &doc["keys"][0], "keys[0]").unwrap();
    let keys = KeySet::from_keys(vec![rsa]);
    let pem = keys_dir("rsa1.private.pem");
    let (alg, _, _) = mint_and_verify(
        &["--key", path_str(&pem), "--alg", "PS256", "--kid", "rsa1"],
        &keys,
    );
    assert_eq!(alg, Algorithm::PS256);
}

#[test]
fn hs256_tokens_from_a_jwk_set_or_a_secret_file() {
    let keys = jwks();
    // --jwk picks the only oct key and takes its kid.
    let jwks_path = keys_dir("jwks.json");
    let (alg, kid, claims) = mint_and_verify(
        &[
            "--jwk",
            path_str(&jwks_path),
            "--alg",
            "HS256",
            "--scope",
            "orders:read orders:write",
            "--aud",
            "a",
            "--aud",
            "b",
            "--ttl",
            "60",
            "--claim",
            "admin=true",
            "--claim",
            "tenant=acme",
            "--claims",
            r#"{"org": {"region": "eu"}, "sub": "overridden"}"#,
            "--sub",
            "bob",
        ],
        &keys,
    );
    assert_eq!((alg, kid.as_deref()), (Algorithm::HS256, Some("hs1")));
    assert_eq!(claims["scope"], "orders:read orders:write");
    assert_eq!(claims["aud"], json!(["a", "b"]));
    assert_eq!(claims["admin"], json!(true));
    assert_eq!(claims["tenant"], "acme");
    assert_eq!(claims["org"]["region"], "eu");
    assert_eq!(claims["sub"], "bob");
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        60
    );

    // A file holding the raw secret (the `k` of hs1, decoded).
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&jwks_path).unwrap()).unwrap();
    let secret = b64::decode(doc["keys"][5]["k"].as_str().unwrap()).unwrap();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let secret_file = dir.join("hs1.secret");
    std::fs::write(&secret_file, &secret).unwrap();
    let claims_file = dir.join("claims.json");
    std::fs::write(&claims_file, r#"{"exp": 4102444800, "role": "admin"}"#).unwrap();
    let (alg, kid, claims) = mint_and_verify(
        &[
            "--key",
            path_str(&secret_file),
            "--alg",
            "HS256",
            "--kid",
            "hs1",
            "--claims",
            path_str(&claims_file),
        ],
        &keys,
    );
    assert_eq!((alg, kid.as_deref()), (Algorithm::HS256, Some("hs1")));
    assert_eq!(claims["exp"], 4_102_444_800u64);
    assert_eq!(claims["role"], "admin");
}

#[test]
fn token_errors_are_one_line_and_name_no_secret() {
    let rsa = keys_dir("rsa1.private.pem");
    let ec384 = keys_dir("ec384.private.pem");
    let public = keys_dir("rsa1.public.pem");
    let jwks_path = keys_dir("jwks.json");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--key", path_str(&ec384), "--alg", "ES256"],
            "the key is an EC P-384 key, which cannot sign ES256",
        ),
        (
            vec!["--key", path_str(&public), "--alg", "RS256"],
            "public key",
        ),
        (
            vec!["--jwk", path_str(&jwks_path), "--alg", "HS384"],
            "pinned to HS256",
        ),
        (
            vec!["--jwk", path_str(&jwks_path), "--alg", "RS256"],
            "--jwk only provides HMAC secrets",
        ),
        (
            vec![
                "--jwk",
                path_str(&jwks_path),
                "--alg",
                "HS256",
                "--kid",
                "nope",
            ],
            "no oct key with kid \"nope\"",
        ),
        (
            vec!["--key", "/no/such/key.pem", "--alg", "RS256"],
            "cannot read /no/such/key.pem",
        ),
        (
            vec!["--key", path_str(&rsa), "--alg", "RS256", "--claim", "x"],
            "is not NAME=VALUE",
        ),
        (
            vec!["--key", path_str(&rsa), "--alg", "RS256", "--claims", "[1]"],
            "cannot read [1]",
        ),
        (
            vec![
                "--key",
                path_str(&rsa),
                "--alg",
                "RS256",
                "--claims",
                "{\"a\":",
            ],
            "--claims is not valid JSON",
        ),
    ];
    for (args, expected) in cases {
        let mut argv = vec!["token"];
        argv.extend(args);
        let err = failed(&run(&argv, None));
        assert!(err.contains(expected), "{argv:?}: {err}");
        assert!(!err.contains("PRIVATE"), "{err}");
    }
    // A refused secret is never printed.
    let short = Path::new(env!("CARGO_TARGET_TMPDIR")).join("short.secret");
    std::fs::write(&short, b"tiny-secret").unwrap();
    let err = failed(&run(
        &["token", "--key", path_str(&short), "--alg", "HS256"],
        None,
    ));
    assert!(err.contains("at least 32 bytes"), "{err}");
    assert!(!err.contains("tiny-secret"), "{err}");
    // Usage errors come from clap with its exit code 2.
    let o = run(&["token", "--alg", "RS256"], None);
    assert_eq!(o.status.code(), Some(2));
    let o = run(&["token", "--key", path_str(&rsa), "--alg", "rs256"], None);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("expected one of: HS256"));
}
