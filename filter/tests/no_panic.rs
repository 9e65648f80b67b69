//! Property tests: no token, header value or configuration document makes the policy panic (a
//! panic in the wasm filter kills the VM for every request on that worker), and none of them
//! gets a request past a route that requires credentials. Random tokens, truncated tokens and
//! tokens with a random or altered signature are errors at verification and refusals at the
//! decision; a refused configuration always says why.
//!
//! Each property also has a positive control (a genuine token is accepted on the same route
//! with the same keys), so that a refusal cannot come from a broken fixture instead of the
//! verifier.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use portcullis::config::Config;
use portcullis::config::reader::Ctx;
mod support;

use portcullis::decision::{Decision, Verdict};
use portcullis::jwt::jwk::{KeySet, read_jwks};
use portcullis::jwt::jws;
use portcullis::jwt::{Algorithm, JwtError, b64};
use portcullis::mint::SigningKey;
use portcullis::request::Request;
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use std::sync::LazyLock;
use support::decide;

const EXAMPLE: &str = include_str!("../../examples/portcullis.json");
const JWKS: &str = include_str!("keys/jwks.json");
const RSA1: &str = include_str!("keys/rsa1.private.pem");
const EC256: &str = include_str!("keys/ec256.private.pem");
const EC384: &str = include_str!("keys/ec384.private.pem");
const EC521: &str = include_str!("keys/ec521.private.pem");
const ED1: &str = include_str!("keys/ed1.private.pem");
const NOW: u64 = 1_800_000_000;

/// The example configuration, read once: preparing it (its inspection rules above all) costs far
/// more than deciding a request, and decisions only read it.
static CONFIG: LazyLock<Config> = LazyLock::new(|| Config::from_json(EXAMPLE.as_bytes()).unwrap());

fn example() -> &'static Config {
    &CONFIG
}

/// A path of the example that requires credentials for GET (route `orders-read`: `demo-idp` or
/// `partners`, scope `orders:read`).
const PROTECTED: &str = "/api/orders/1";

/// Field names the configuration knows, so random documents reach deep into the reader.
const FIELDS: &[&str] = &[
    "routes",
    "providers",
    "realm",
    "identity_headers",
    "verified_token_cache",
    "max_entries",
    "name",
    "match",
    "hosts",
    "methods",
    "path",
    "prefix",
    "safe_regex",
    "public",
    "requires",
    "allow_missing",
    "scopes",
    "claims",
    "shadow",
    "equals",
    "one_of",
    "regex",
    "type",
    "issuer",
    "audiences",
    "local_jwks",
    "keys",
    "kty",
    "kid",
    "alg",
    "n",
    "e",
    "crv",
    "x",
    "y",
    "k",
    "d",
    "use",
    "key_ops",
    "from_headers",
    "value_prefix",
    "from_params",
    "from_cookies",
    "forward",
    "forward_payload_header",
    "claim_to_headers",
    "header_name",
    "claim_name",
    "clock_skew_seconds",
    "require_expiration",
    "max_lifetime_seconds",
    "required_claims",
    "consumer",
    "sha256",
    "subject",
    "jwt",
    "api_key",
    "RSA",
    "EC",
    "OKP",
    "oct",
    "P-256",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        prop::sample::select(FIELDS).prop_map(|s| json!(s)),
        ".{0,12}".prop_map(Value::String),
        "[A-Za-z0-9_-]{0,400}".prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(FIELDS), inner), 0..8).prop_map(|kv| {
                let map: Map<String, Value> =
                    kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
                Value::Object(map)
            }),
        ]
    })
}

/// Replaces the node at a pseudo-random position of `doc` with `replacement`.
fn mutate(doc: &mut Value, mut choice: usize, replacement: Value) {
    let mut node = doc;
    loop {
        let children = match node {
            Value::Object(m) => m.len(),
            Value::Array(a) => a.len(),
            _ => 0,
        };
        if children == 0 || choice.is_multiple_of(4) {
            *node = replacement;
            return;
        }
        let i = choice % children;
        choice /= 3;
        node = match node {
            Value::Object(m) => m.values_mut().nth(i).unwrap(),
            Value::Array(a) => &mut a[i],
            _ => unreachable!(),
        };
    }
}

fn headers(path: &str, extra: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut h = vec![
        (":method".to_owned(), "GET".to_owned()),
        (":path".to_owned(), path.to_owned()),
        (":authority".to_owned(), "api.example.com".to_owned()),
    ];
    h.extend(extra);
    h
}

fn bearer(token: &str) -> Vec<(String, String)> {
    vec![("authorization".to_owned(), format!("Bearer {token}"))]
}

/// Asserts that `d` refuses the request for good (no shadow, nothing to wait for) with a client
/// error, without an identity, and returns the status.
#[track_caller]
fn assert_refused(d: &Decision, what: &str) -> u16 {
    let Verdict::Refuse(r) = &d.verdict else {
        panic!("{what}: let through: {d:#?}");
    };
    assert!(!r.shadow, "{what}: refusal only recorded: {d:#?}");
    assert!((400..500).contains(&r.status), "{what}: {d:#?}");
    assert!(d.identity.is_none(), "{what}: {d:#?}");
    assert!(d.wait.is_none(), "{what}: {d:#?}");
    r.status
}

/// A refusal of the credential itself: 401 `invalid_token`.
#[track_caller]
fn assert_invalid_token(d: &Decision, what: &str) {
    assert_refused(d, what);
    let Verdict::Refuse(r) = &d.verdict else {
        unreachable!()
    };
    assert_eq!(
        (r.status, r.error),
        (401, "invalid_token"),
        "{what}: {d:#?}"
    );
}

/// The test keys of `keys/jwks.json` as the filter reads them: the public keys in one set and
/// the secret in another (a set may not mix them).
struct TestKeys {
    public: KeySet,
    secret: KeySet,
}

impl TestKeys {
    fn for_alg(&self, alg: Algorithm) -> &KeySet {
        if alg.name().starts_with("HS") {
            &self.secret
        } else {
            &self.public
        }
    }
}

static KEYS: LazyLock<TestKeys> = LazyLock::new(|| {
    let jwks: Value = serde_json::from_str(JWKS).unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    let read = |secret: bool| {
        let chosen: Vec<&Value> = keys
            .iter()
            .filter(|k| (k["kty"] == "oct") == secret)
            .collect();
        let mut cx = Ctx::default();
        let set = read_jwks(&mut cx, &json!({ "keys": chosen }), "jwks");
        let errors = cx.into_errors();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(set.len(), chosen.len());
        set
    };
    TestKeys {
        public: read(false),
        secret: read(true),
    }
});

/// One genuine token per test key, with claims the example's `demo-idp` accepts on
/// [`PROTECTED`] at [`NOW`].
static GENUINE: LazyLock<Vec<(Algorithm, String)>> = LazyLock::new(|| {
    let jwks: Value = serde_json::from_str(JWKS).unwrap();
    let hs1 = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == "hs1")
        .unwrap();
    let secret = b64::decode(hs1["k"].as_str().unwrap()).unwrap();
    let signers = [
        SigningKey::hmac(&secret, Algorithm::HS256)
            .unwrap()
            .with_kid("hs1"),
        SigningKey::from_pkcs8_pem(RSA1, Algorithm::RS256)
            .unwrap()
            .with_kid("rsa1"),
        SigningKey::from_pkcs8_pem(EC256, Algorithm::ES256)
            .unwrap()
            .with_kid("ec256"),
        SigningKey::from_pkcs8_pem(EC384, Algorithm::ES384)
            .unwrap()
            .with_kid("ec384"),
        SigningKey::from_pkcs8_pem(EC521, Algorithm::ES512)
            .unwrap()
            .with_kid("ec521"),
        SigningKey::from_pkcs8_pem(ED1, Algorithm::EdDSA)
            .unwrap()
            .with_kid("ed1"),
    ];
    let claims = json!({
        "iss": "https://id.portcullis.test", "aud": "portcullis-demo", "sub": "alice",
        "scope": "orders:read", "iat": NOW - 10, "exp": NOW + 600
    });
    signers
        .iter()
        .map(|k| (k.alg(), k.sign(&claims).unwrap()))
        .collect()
});

/// The algorithms whose keys the example's `demo-idp` provider holds.
const EXAMPLE_ALGS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// Parses and verifies `token` with the test keys of `alg`'s kind.
fn verify(alg: Algorithm, token: &str) -> Result<(), JwtError> {
    let jws = jws::parse(token)?;
    jws::verify_with_set(&jws, KEYS.for_alg(alg)).map(|_| ())
}

/// `token` with its signature replaced by `signature`.
fn with_signature(token: &str, signature: &[u8]) -> String {
    let (input, _) = token.rsplit_once('.').unwrap();
    format!("{input}.{}", B64.encode(signature))
}

/// Three segments built from arbitrary JSON-ish text, so parsing gets past base64.
fn token_like() -> impl Strategy<Value = String> {
    (
        json_value(),
        json_value(),
        prop::collection::vec(any::<u8>(), 0..80),
    )
        .prop_map(|(h, p, s)| {
            format!(
                "{}.{}.{}",
                B64.encode(h.to_string()),
                B64.encode(p.to_string()),
                B64.encode(s)
            )
        })
}

/// A well-formed token that names a real key and algorithm, with arbitrary claims or the genuine
/// ones, and a random signature: these reach the signature check.
fn forged_token() -> impl Strategy<Value = (Algorithm, String)> {
    (
        0..GENUINE.len(),
        prop_oneof![Just(None), json_value().prop_map(Some)],
        prop::collection::vec(any::<u8>(), 1..600),
    )
        .prop_map(|(i, claims, signature)| {
            let (alg, genuine) = &GENUINE[i];
            let mut parts = genuine.split('.');
            let header = parts.next().unwrap();
            let payload = match claims {
                Some(c) => B64.encode(c.to_string()),
                None => parts.next().unwrap().to_owned(),
            };
            (
                *alg,
                format!("{header}.{payload}.{}", B64.encode(signature)),
            )
        })
}

/// Whether an allowed request is explained by its route: only a public route, or one that lets
/// anonymous callers through, may pass a request whose credentials are noise.
fn open_route(config: &Config, d: &Decision) -> bool {
    d.route
        .and_then(|i| config.routes.get(i))
        .is_some_and(|r| r.public || r.allow_missing)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A refused document always says why (an `Err` without a reason would leave the operator
    /// with nothing to fix); anything that is not a JSON object is refused.
    #[test]
    fn arbitrary_documents_are_accepted_or_refused_with_reasons(doc in json_value()) {
        match Config::from_json(doc.to_string().as_bytes()) {
            Ok(_) => prop_assert!(doc.is_object(), "accepted a non-object: {doc}"),
            Err(errors) => {
                prop_assert!(!errors.is_empty(), "refused without a reason: {doc}");
                prop_assert!(errors.iter().all(|e| !e.reason.is_empty()), "{errors:?}");
            }
        }
    }

    #[test]
    fn mutated_example_is_accepted_or_refused_with_reasons(
        choice in any::<usize>(),
        replacement in json_value(),
    ) {
        let mut doc: Value = serde_json::from_str(EXAMPLE).unwrap();
        mutate(&mut doc, choice, replacement);
        match Config::from_json(doc.to_string().as_bytes()) {
            Ok(_) => prop_assert!(doc.is_object(), "accepted a non-object: {doc}"),
            Err(errors) => {
                prop_assert!(!errors.is_empty(), "refused without a reason: {doc}");
                prop_assert!(errors.iter().all(|e| !e.reason.is_empty()), "{errors:?}");
            }
        }
    }

    /// Bytes that are not JSON are refused, with the reason.
    #[test]
    fn arbitrary_bytes_as_config_are_refused_unless_json(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let is_json = serde_json::from_slice::<Value>(&bytes).is_ok();
        match Config::from_json(&bytes) {
            Ok(_) => prop_assert!(is_json, "accepted bytes that are not JSON: {bytes:?}"),
            Err(errors) => {
                prop_assert!(!errors.is_empty());
                prop_assert!(errors.iter().all(|e| !e.reason.is_empty()), "{errors:?}");
            }
        }
    }

    /// Random text and random three-segment tokens never verify, and never get a request onto
    /// the protected route: 401 (or 400 for a header value that cannot be a credential).
    #[test]
    fn arbitrary_tokens_are_refused(token in prop_oneof![".{0,300}", token_like()]) {
        for alg in [Algorithm::HS256, Algorithm::RS256] {
            prop_assert!(verify(alg, &token).is_err(), "{token:?} verified");
        }
        let config = example();
        let mut cache = config.token_cache();
        let h = headers(PROTECTED, bearer(&token));
        let d = decide(config, &mut cache, &Request::new(&h), NOW);
        let status = assert_refused(&d, &token);
        prop_assert!(status == 401 || status == 400, "{token:?}: {d:#?}");
    }

    /// A real header and payload with a random signature: a bad signature at verification, an
    /// invalid token at the decision.
    #[test]
    fn random_signatures_are_refused((alg, token) in forged_token()) {
        prop_assert_eq!(verify(alg, &token), Err(JwtError::BadSignature), "{}", token);
        if EXAMPLE_ALGS.contains(&alg) {
            let config = example();
            let mut cache = config.token_cache();
            let h = headers(PROTECTED, bearer(&token));
            assert_invalid_token(&decide(config, &mut cache, &Request::new(&h), NOW), &token);
        }
    }

    /// One flipped bit anywhere in a genuine signature makes it a bad signature.
    #[test]
    fn altered_signatures_are_refused(
        i in 0..6usize,
        byte in any::<prop::sample::Index>(),
        bit in 0..8u32,
    ) {
        let (alg, genuine) = &GENUINE[i];
        let mut signature = jws::parse(genuine).unwrap().signature;
        let at = byte.index(signature.len());
        signature[at] ^= 1 << bit;
        let token = with_signature(genuine, &signature);
        prop_assert_eq!(verify(*alg, &token), Err(JwtError::BadSignature));
    }

    /// Random values in the credential headers, the query and other headers never get a
    /// request onto the protected route, at any time.
    #[test]
    fn arbitrary_header_values_are_refused_on_a_protected_route(
        query in ".{0,64}",
        auth in ".{0,64}",
        cookie in ".{0,64}",
        key in ".{0,64}",
        forwarded in ".{0,32}",
        extra in prop::collection::vec(("[a-z][a-z0-9-]{0,15}", ".{0,64}"), 0..4),
        now in prop_oneof![Just(0), Just(NOW), Just(u64::MAX), any::<u64>()],
    ) {
        let config = example();
        let mut cache = config.token_cache();
        let mut h = headers(
            &format!("{PROTECTED}?{query}"),
            vec![
                ("authorization".to_owned(), auth),
                ("cookie".to_owned(), cookie),
                ("x-api-key".to_owned(), key),
                ("x-forwarded-for".to_owned(), forwarded),
            ],
        );
        h.extend(extra);
        let d = decide(config, &mut cache, &Request::new(&h), now);
        assert_refused(&d, &format!("{h:?}"));
    }

    /// Random everything, the path and method included: no identity ever comes out of noise,
    /// and whatever passes went to a route that lets anonymous callers through.
    #[test]
    fn arbitrary_requests_pass_only_where_anonymous_callers_may(
        path in ".{0,64}",
        query in ".{0,64}",
        auth in ".{0,64}",
        cookie in ".{0,64}",
        key in ".{0,64}",
        authority in ".{0,32}",
        method in ".{0,8}",
    ) {
        let config = example();
        let mut cache = config.token_cache();
        let h = vec![
            (":method".to_owned(), method),
            (":path".to_owned(), format!("{path}?{query}")),
            (":authority".to_owned(), authority),
            ("authorization".to_owned(), auth),
            ("cookie".to_owned(), cookie),
            ("x-api-key".to_owned(), key),
        ];
        for now in [0, u64::MAX] {
            let d = decide(config, &mut cache, &Request::new(&h), now);
            prop_assert!(d.identity.is_none(), "{h:?}: {d:#?}");
            match &d.verdict {
                Verdict::Allow => prop_assert!(open_route(config, &d), "{h:?}: {d:#?}"),
                Verdict::Refuse(r) => {
                    prop_assert!(!r.shadow, "{h:?}: {d:#?}");
                    prop_assert!((400..500).contains(&r.status), "{h:?}: {d:#?}");
                }
            }
        }
    }
}

/// The positive control of the properties above: each genuine token verifies with the test keys
/// and, for the example's algorithms, passes the protected route.
#[test]
fn genuine_tokens_are_accepted() {
    assert_eq!(GENUINE.len(), 6);
    for (alg, token) in GENUINE.iter() {
        assert_eq!(verify(*alg, token), Ok(()), "{alg}");
    }
    let config = example();
    for alg in EXAMPLE_ALGS {
        let (_, token) = GENUINE.iter().find(|(a, _)| *a == alg).unwrap();
        let mut cache = config.token_cache();
        let h = headers(PROTECTED, bearer(token));
        let d = decide(config, &mut cache, &Request::new(&h), NOW);
        assert_eq!(d.verdict, Verdict::Allow, "{alg}: {d:#?}");
        assert_eq!(d.reason, "authenticated", "{alg}");
        assert_eq!(d.identity.unwrap().subject(), Some("alice"), "{alg}");
    }
}

/// Every proper prefix and every proper suffix of a genuine token is an error, whatever the cut
/// (inside the header, the payload or the signature), and a refusal, even with the genuine
/// token already in the worker's cache.
#[test]
fn truncated_tokens_are_refused() {
    let config = example();
    for (alg, token) in GENUINE.iter() {
        let mut cache = config.token_cache();
        let in_example = EXAMPLE_ALGS.contains(alg);
        if in_example {
            let h = headers(PROTECTED, bearer(token));
            let d = decide(config, &mut cache, &Request::new(&h), NOW);
            assert_eq!(d.verdict, Verdict::Allow, "{alg}: {d:#?}");
        }
        let mut cuts = 0;
        for cut in 1..token.len() {
            for part in [&token[..cut], &token[cut..]] {
                assert!(verify(*alg, part).is_err(), "{alg}: {part} verified");
                if in_example {
                    let h = headers(PROTECTED, bearer(part));
                    let d = decide(config, &mut cache, &Request::new(&h), NOW);
                    assert_eq!(assert_refused(&d, part), 401, "{alg}: {part}");
                }
                cuts += 1;
            }
        }
        assert_eq!(cuts, 2 * (token.len() - 1));
    }
}

/// Cut inside the signature, the token still parses: the shortened signature must fail as a
/// signature (not be padded or ignored).
#[test]
fn truncated_signatures_are_bad_signatures() {
    for (alg, token) in GENUINE.iter() {
        let signature = jws::parse(token).unwrap().signature;
        for len in 1..signature.len() {
            let shorter = with_signature(token, &signature[..len]);
            assert_eq!(
                verify(*alg, &shorter),
                Err(JwtError::BadSignature),
                "{alg}, {len} of {} bytes",
                signature.len()
            );
        }
        // And with a byte appended.
        let mut longer = signature.clone();
        longer.push(0);
        assert_eq!(
            verify(*alg, &with_signature(token, &longer)),
            Err(JwtError::BadSignature),
            "{alg}"
        );
    }
}

#[test]
fn the_example_configuration_is_valid() {
    let config = example();
    assert!(config.routes.len() >= 4);
    assert!(config.providers.len() >= 2);
}
