//! Compact JWS (RFC 7515 §7.1): `base64url(header) . base64url(payload) . base64url(signature)`.
//!
//! [`parse`] refuses, before any signature arithmetic, everything a verifier could be tricked by:
//! other serialisations (JWE's five segments, JSON serialisation), loose base64url, `alg: none`
//! in any spelling, unknown algorithms, `crit` (we understand no extension), headers that
//! point at other keys (`jwk`, `jku`, `x5u`, `x5c`) and the unencoded-payload option
//! (`b64` other than `true`, RFC 7797). The key, and with it the algorithm, always comes from
//! the configuration: [`verify_with`] only checks that the token's `alg` agrees with it.

use super::jwk::{Jwk, KeySet};
use super::{Algorithm, JwtError, b64};
use serde::{Deserialize, Deserializer};

/// Longest token accepted. Real tokens are well under 4 KiB; the cap bounds the work an
/// anonymous client can cause before the signature is checked.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The protected header members the filter uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The algorithm the token claims; must equal its key's pinned algorithm.
    pub alg: Algorithm,
    /// Names the key to verify with.
    pub kid: Option<String>,
    /// Media type of the whole token (e.g. `JWT`), for claim checks that care.
    pub typ: Option<String>,
}

/// A parsed, not yet verified, compact JWS.
#[derive(Debug, Clone)]
pub struct Jws<'t> {
    /// The decoded protected header.
    pub header: Header,
    /// `header.payload` exactly as received: what the signature covers.
    pub signing_input: &'t str,
    /// The decoded payload (the JWT claims JSON; not inspected here).
    pub payload: Vec<u8>,
    /// The decoded signature.
    pub signature: Vec<u8>,
}

/// Parses a compact JWS. Does not verify it.
pub fn parse(token: &str) -> Result<Jws<'_>, JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::Malformed("token is too large"));
    }
    let (signing_input, signature_b64) = token
        .rsplit_once('.')
        .ok_or(JwtError::Malformed("token does not have three segments"))?;
    let (header_b64, payload_b64) = signing_input
        .split_once('.')
        .ok_or(JwtError::Malformed("token does not have three segments"))?;
    if payload_b64.contains('.') {
        return Err(JwtError::Malformed(
            "token has more than three segments (JWE is not accepted)",
        ));
    }
    if header_b64.is_empty() {
        return Err(JwtError::Malformed("token header is empty"));
    }
    let header_json = b64::decode(header_b64)
        .map_err(|_| JwtError::Malformed("token header is not base64url"))?;
    let header = parse_header(&header_json)?;
    let payload = b64::decode(payload_b64)
        .map_err(|_| JwtError::Malformed("token payload is not base64url"))?;
    let signature = b64::decode(signature_b64)
        .map_err(|_| JwtError::Malformed("token signature is not base64url"))?;
    if signature.is_empty() {
        return Err(JwtError::Malformed("token has no signature"));
    }
    Ok(Jws {
        header,
        signing_input,
        payload,
        signature,
    })
}

/// Verifies `jws` with `key`, refusing a token whose `alg` is not the key's pinned algorithm.
pub fn verify_with(jws: &Jws<'_>, key: &Jwk) -> Result<(), JwtError> {
    if jws.header.alg != key.alg {
        return Err(JwtError::AlgMismatch);
    }
    key.verify(jws.signing_input.as_bytes(), &jws.signature)
}

/// The keys that may verify `jws`: those with the token's `kid` (every key when it has none),
/// narrowed to those pinned to the token's `alg`. Cheap: no signature arithmetic, so callers
/// can refuse on it before checking claims.
///
/// Errors: no key has the `kid` (or, without one, fits the `alg`) → [`JwtError::UnknownKid`];
/// the `kid` matched only keys of another algorithm → [`JwtError::AlgMismatch`].
pub fn usable_keys<'k>(jws: &Jws<'_>, keys: &'k KeySet) -> Result<Vec<&'k Jwk>, JwtError> {
    let mut named = false;
    let mut usable = Vec::new();
    for key in keys.candidates(jws.header.kid.as_deref()) {
        named = true;
        if key.alg == jws.header.alg {
            usable.push(key);
        }
    }
    if usable.is_empty() {
        return Err(if named && jws.header.kid.is_some() {
            JwtError::AlgMismatch
        } else {
            JwtError::UnknownKid
        });
    }
    Ok(usable)
}

/// The first of `keys` (from [`usable_keys`]) whose signature check passes, else
/// [`JwtError::BadSignature`].
pub fn verify_any<'k>(jws: &Jws<'_>, keys: &[&'k Jwk]) -> Result<&'k Jwk, JwtError> {
    keys.iter()
        .copied()
        .find(|key| verify_with(jws, key).is_ok())
        .ok_or(JwtError::BadSignature)
}

/// Verifies `jws` with the keys of a set and returns the key that verified it: [`usable_keys`]
/// then [`verify_any`].
pub fn verify_with_set<'k>(jws: &Jws<'_>, keys: &'k KeySet) -> Result<&'k Jwk, JwtError> {
    verify_any(jws, &usable_keys(jws, keys)?)
}

/// The header as sent. serde's derived visitor refuses a repeated member among these (so
/// `{"alg":"RS256","alg":"none"}` cannot be read two ways); repeats of members we ignore
/// cannot change what we do.
#[derive(Deserialize)]
struct RawHeader {
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default, deserialize_with = "present")]
    crit: bool,
    #[serde(default, deserialize_with = "present")]
    jwk: bool,
    #[serde(default, deserialize_with = "present")]
    jku: bool,
    #[serde(default, deserialize_with = "present")]
    x5u: bool,
    #[serde(default, deserialize_with = "present")]
    x5c: bool,
    #[serde(default, deserialize_with = "b64_member")]
    b64: B64Member,
}

#[derive(Default, PartialEq, Eq)]
enum B64Member {
    #[default]
    Absent,
    True,
    Other,
}

/// A member counts as present whatever its value, `null` included.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

fn b64_member<'de, D: Deserializer<'de>>(d: D) -> Result<B64Member, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Bool(true) => B64Member::True,
        _ => B64Member::Other,
    })
}

fn parse_header(json: &[u8]) -> Result<Header, JwtError> {
    // serde would also read a struct from a JSON array; the header must be an object.
    let first = json
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(&b'{') {
        return Err(JwtError::Malformed("token header is not a JSON object"));
    }
    let raw: RawHeader = serde_json::from_slice(json).map_err(|e| {
        JwtError::Malformed(match e.classify() {
            serde_json::error::Category::Data => "token header repeats or mistypes a member",
            _ => "token header is not valid JSON",
        })
    })?;
    let alg = raw
        .alg
        .ok_or(JwtError::Malformed("token header has no alg"))?;
    if alg.eq_ignore_ascii_case("none") {
        return Err(JwtError::AlgNone);
    }
    if raw.crit {
        return Err(JwtError::UnknownCrit);
    }
    for (present, name) in [
        (raw.jwk, "jwk"),
        (raw.jku, "jku"),
        (raw.x5u, "x5u"),
        (raw.x5c, "x5c"),
    ] {
        if present {
            return Err(JwtError::ForbiddenHeader(name));
        }
    }
    if raw.b64 == B64Member::Other {
        return Err(JwtError::ForbiddenHeader("b64"));
    }
    let alg = Algorithm::from_name(&alg).ok_or(JwtError::UnsupportedAlg)?;
    Ok(Header {
        alg,
        kid: raw.kid,
        typ: raw.typ,
    })
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests {
    use super::*;
    use crate::jwt::jwk::test_support::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde_json::json;

    const CLAIMS: &[u8] = br#"{"sub":"alice","exp":4102444800}"#;

    fn header(alg: &str, kid: &str) -> String {
        json!({"alg": alg, "kid": kid, "typ": "JWT"}).to_string()
    }

    /// A valid token for the test key `kid` (whose pinned alg is `alg`).
    fn valid(alg: Algorithm, kid: &str) -> String {
        token(&header(alg.name(), kid), CLAIMS, alg)
    }

    fn verify_token(token: &str) -> Result<(), JwtError> {
        let jws = parse(token)?;
        verify_with_set(&jws, &test_keys()).map(|_| ())
    }

    /// `t` with segment `i` replaced.
    fn replace_segment(t: &str, i: usize, new: &str) -> String {
        let mut parts: Vec<&str> = t.split('.').collect();
        parts[i] = new;
        parts.join(".")
    }

    #[test]
    fn valid_tokens_of_every_test_key_parse_and_verify() {
        use Algorithm as A;
        for (alg, kid) in [
            (A::HS256, "hs1"),
            (A::RS256, "rsa1"),
            (A::ES256, "ec256"),
            (A::ES384, "ec384"),
            (A::ES512, "ec521"),
            (A::EdDSA, "ed1"),
        ] {
            let t = valid(alg, kid);
            let jws = parse(&t).unwrap();
            assert_eq!(
                jws.header,
                Header {
                    alg,
                    kid: Some(kid.to_owned()),
                    typ: Some("JWT".to_owned())
                }
            );
            assert_eq!(jws.payload, CLAIMS);
            assert_eq!(jws.signing_input, t.rsplit_once('.').unwrap().0);
            assert_eq!(verify_with(&jws, &key(kid)), Ok(()));
            let keys = test_keys();
            let used = verify_with_set(&jws, &keys).unwrap();
            assert_eq!(used.kid.as_deref(), Some(kid));
        }
        // Explicitly pinned algorithms.
        for alg in [A::RS384, A::RS512, A::PS256, A::PS384, A::PS512] {
            let t = token(&header(alg.name(), "rsa1"), CLAIMS, alg);
            assert_eq!(verify_with(&parse(&t).unwrap(), &rsa_with(alg)), Ok(()));
            // The configured rsa1 is pinned to RS256.
            assert_eq!(verify_token(&t), Err(JwtError::AlgMismatch));
        }
        for alg in [A::HS384, A::HS512] {
            let t = token(&header(alg.name(), "x"), CLAIMS, alg);
            assert_eq!(verify_with(&parse(&t).unwrap(), &hmac_with(alg)), Ok(()));
        }
    }

    #[test]
    fn header_members_and_whitespace() {
        let t = token(
            r#" { "alg" : "ES256" , "cty":"JWT", "x-custom": [1, {"a": null}] } "#,
            b"",
            Algorithm::ES256,
        );
        let jws = parse(&t).unwrap();
        assert_eq!(jws.header.alg, Algorithm::ES256);
        assert_eq!(jws.header.kid, None);
        assert_eq!(jws.header.typ, None);
        assert!(jws.payload.is_empty());
        // Without kid every key is a candidate; the alg picks ec256.
        assert_eq!(verify_token(&t), Ok(()));
        // b64: true changes nothing and is accepted.
        let t = token(r#"{"alg":"EdDSA","b64":true}"#, CLAIMS, Algorithm::EdDSA);
        assert_eq!(verify_token(&t), Ok(()));
    }

    #[test]
    fn segment_structure() {
        let t = valid(Algorithm::HS256, "hs1");
        let (h, rest) = t.split_once('.').unwrap();
        let (p, sig) = rest.split_once('.').unwrap();
        let malformed = |s: &str| matches!(parse(s), Err(JwtError::Malformed(_)));
        for bad in [
            String::new(),
            ".".to_owned(),
            "..".to_owned(),
            "...".to_owned(),
            h.to_owned(),
            format!("{h}.{p}"),
            format!("{h}.{p}."),       // signature stripped
            format!("{h}.{p}.{sig}."), // extra empty segment
            format!("{h}.{p}.{sig}.{sig}"),
            format!("{h}.{p}.{sig}.{p}.{sig}"), // JWE shape
            format!(".{p}.{sig}"),
            format!("{p}.{sig}"),
            format!("{h}..{sig}.x"),
        ] {
            assert!(malformed(&bad), "{bad:?} → {:?}", parse(&bad).err());
        }
        // An empty payload segment is a (signed) empty payload.
        let t = token(&header("HS256", "hs1"), b"", Algorithm::HS256);
        assert!(t.contains(".."));
        assert_eq!(verify_token(&t), Ok(()));
    }

    #[test]
    fn tokens_are_size_capped() {
        let big = vec![b'a'; MAX_TOKEN_LEN];
        let t = token(&header("HS256", "hs1"), &big, Algorithm::HS256);
        assert!(t.len() > MAX_TOKEN_LEN);
        assert_eq!(
            parse(&t).err(),
            Some(JwtError::Malformed("token is too large"))
        );
        let fits = vec![b'a'; MAX_TOKEN_LEN / 2];
        assert!(parse(&token(&header("HS256", "hs1"), &fits, Algorithm::HS256)).is_ok());
    }

    #[test]
    fn every_segment_is_strict_base64url() {
        let t = valid(Algorithm::HS256, "hs1");
        let parts: Vec<&str> = t.split('.').collect();
        for (i, &seg) in parts.iter().enumerate() {
            let bytes = b64::decode(seg).unwrap();
            let mut variants = vec![
                format!("{seg}="),
                format!("{seg}=="),
                format!(" {seg}"),
                format!("{seg}\n"),
                STANDARD.encode(&bytes).trim_end_matches('=').to_owned(),
                format!("{seg}?"),
            ];
            // Non-canonical: set an unused low bit of the last character.
            if !seg.len().is_multiple_of(4) {
                const ALPHABET: &str =
                    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
                let (head, last) = seg.split_at(seg.len() - 1);
                let v = ALPHABET.find(last).unwrap();
                variants.push(format!("{head}{}", &ALPHABET[v + 1..v + 2]));
            }
            for v in variants {
                if v == seg {
                    continue; // the standard alphabet may coincide
                }
                let bad = replace_segment(&t, i, &v);
                assert!(
                    matches!(parse(&bad), Err(JwtError::Malformed(_))),
                    "segment {i} variant {v:?}: {:?}",
                    parse(&bad).err()
                );
            }
        }
    }

    fn header_error(header_json: &str) -> Option<JwtError> {
        parse(&token(header_json, CLAIMS, Algorithm::HS256)).err()
    }

    #[test]
    fn header_must_be_a_json_object_without_repeats() {
        for bad in [
            r#"["HS256"]"#,
            r#""HS256""#,
            "256",
            "null",
            "",
            " ",
            r#"{"alg":"HS256""#,
            r#"{"alg":"HS256"} x"#,
            r#"{"alg":"HS256"}{}"#,
            r#"{"alg":"HS256","alg":"HS256"}"#,
            r#"{"alg":"none","alg":"HS256"}"#,
            r#"{"alg":"HS256","alg":"none"}"#,
            r#"{"alg":"HS256","kid":"a","kid":"b"}"#,
            r#"{"alg":"HS256","jwk":{},"jwk":{}}"#,
            r#"{"alg":256}"#,
            r#"{"alg":["HS256"]}"#,
            r#"{"alg":"HS256","kid":7}"#,
            r#"{"alg":"HS256","typ":{}}"#,
            r#"{}"#,
            r#"{"alg":null}"#,
            r#"{"kid":"hs1"}"#,
        ] {
            assert!(
                matches!(header_error(bad), Some(JwtError::Malformed(_))),
                "{bad:?}: {:?}",
                header_error(bad)
            );
        }
        // Invalid UTF-8 inside the header JSON.
        let t = format!(
            "{}.{}.{}",
            b64::encode(b"{\"alg\":\"HS256\",\"kid\":\"\xff\"}"),
            b64::encode(CLAIMS),
            b64::encode([1u8; 32])
        );
        assert!(matches!(parse(&t), Err(JwtError::Malformed(_))));
    }

    #[test]
    fn alg_none_in_any_spelling_is_refused() {
        for none in ["none", "NONE", "None", "nOnE", "NoNe"] {
            let h = json!({"alg": none}).to_string();
            let unsigned = format!("{}.{}.", b64::encode(&h), b64::encode(CLAIMS));
            assert_eq!(parse(&unsigned).err(), Some(JwtError::AlgNone), "{none}");
            // Even with a signature attached.
            assert_eq!(header_error(&h), Some(JwtError::AlgNone), "{none}");
        }
    }

    #[test]
    fn unknown_algorithms_are_refused() {
        for alg in [
            "HS1",
            "hs256",
            "Hs256",
            "ES256K",
            "RS256 ",
            "EdDSA25519",
            "Ed25519",
            "A256GCM",
            "RSA-OAEP",
            "",
        ] {
            assert_eq!(
                header_error(&json!({"alg": alg}).to_string()),
                Some(JwtError::UnsupportedAlg),
                "{alg:?}"
            );
        }
    }

    #[test]
    fn crit_and_key_pointing_headers_are_refused() {
        for crit in [json!(["exp"]), json!([]), json!(null), json!("b64")] {
            let h = json!({"alg": "HS256", "crit": crit}).to_string();
            assert_eq!(header_error(&h), Some(JwtError::UnknownCrit), "{h}");
        }
        for name in ["jwk", "jku", "x5u", "x5c"] {
            for value in [
                json!({}),
                json!("https://attacker.example/keys"),
                json!(null),
                json!(["MIIB"]),
            ] {
                let mut h = json!({"alg": "HS256"});
                h[name] = value;
                assert_eq!(
                    header_error(&h.to_string()),
                    Some(JwtError::ForbiddenHeader(name)),
                    "{h}"
                );
            }
        }
        for b64 in [json!(false), json!("true"), json!(null), json!(1)] {
            let h = json!({"alg": "HS256", "b64": b64}).to_string();
            assert_eq!(
                header_error(&h),
                Some(JwtError::ForbiddenHeader("b64")),
                "{h}"
            );
        }
    }

    #[test]
    fn embedded_jwk_signed_by_the_attacker_is_refused() {
        // The attacker signs with their own HMAC key and ships it in the header.
        let secret = [0x42u8; 32];
        let h = json!({
            "alg": "HS256",
            "kid": "hs1",
            "jwk": {"kty": "oct", "k": b64::encode(secret)}
        })
        .to_string();
        let t = token_with(&h, CLAIMS, |input| hmac(Algorithm::HS256, &secret, input));
        assert_eq!(verify_token(&t), Err(JwtError::ForbiddenHeader("jwk")));
        let h = json!({"alg": "ES256", "kid": "ec256", "jku": "https://attacker.example/jwks"});
        assert_eq!(
            verify_token(&token(&h.to_string(), CLAIMS, Algorithm::ES256)),
            Err(JwtError::ForbiddenHeader("jku"))
        );
    }

    #[test]
    fn alg_changed_after_signing_is_refused() {
        let t = valid(Algorithm::RS256, "rsa1");
        for alg in ["PS256", "RS384", "HS256", "ES256"] {
            let forged = replace_segment(&t, 0, &b64::encode(header(alg, "rsa1")));
            assert_eq!(verify_token(&forged), Err(JwtError::AlgMismatch), "{alg}");
            assert_eq!(
                verify_with(&parse(&forged).unwrap(), &key("rsa1")),
                Err(JwtError::AlgMismatch)
            );
        }
        // Re-pointing the kid instead breaks the signature (the header is signed).
        let t = valid(Algorithm::ES256, "ec256");
        let moved = replace_segment(
            &t,
            0,
            &b64::encode(r#"{"alg":"ES256","kid":"ec256","typ":"at+jwt"}"#),
        );
        assert_eq!(verify_token(&moved), Err(JwtError::BadSignature));
    }

    #[test]
    fn tampered_payload_and_stripped_signature_are_refused() {
        for (alg, kid) in [
            (Algorithm::HS256, "hs1"),
            (Algorithm::RS256, "rsa1"),
            (Algorithm::ES384, "ec384"),
            (Algorithm::EdDSA, "ed1"),
        ] {
            let t = valid(alg, kid);
            let tampered =
                replace_segment(&t, 1, &b64::encode(br#"{"sub":"admin","exp":4102444800}"#));
            assert_eq!(verify_token(&tampered), Err(JwtError::BadSignature));
            let (input, _) = t.rsplit_once('.').unwrap();
            assert!(matches!(
                parse(&format!("{input}.")),
                Err(JwtError::Malformed(_))
            ));
            assert!(matches!(parse(input), Err(JwtError::Malformed(_))));
            // A signature from another key of the same family.
            let other = replace_segment(
                &t,
                2,
                &b64::encode(vec![0x11; parse(&t).unwrap().signature.len()]),
            );
            assert_eq!(verify_token(&other), Err(JwtError::BadSignature));
        }
    }

    #[test]
    fn hmac_keyed_with_our_rsa_public_key_is_refused() {
        // The classic confusion attack: the attacker knows our RSA public key and uses some
        // encoding of it as an HS256 secret, hoping the verifier follows the token's alg.
        let pem_body: String = RSA_PUBLIC
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let der = STANDARD.decode(pem_body).unwrap();
        let n = b64::decode(jwks_json()["keys"][0]["n"].as_str().unwrap()).unwrap();
        let jwk_text = jwks_json()["keys"][0].to_string();
        let secrets: Vec<Vec<u8>> = vec![
            RSA_PUBLIC.as_bytes().to_vec(),
            RSA_PUBLIC.trim_end().as_bytes().to_vec(),
            der,
            n,
            jwk_text.into_bytes(),
        ];
        for secret in secrets {
            for kid in [Some("rsa1"), None] {
                let mut h = json!({"alg": "HS256"});
                if let Some(kid) = kid {
                    h["kid"] = json!(kid);
                }
                let t = token_with(&h.to_string(), CLAIMS, |input| {
                    hmac(Algorithm::HS256, &secret, input)
                });
                let jws = parse(&t).unwrap();
                assert_eq!(verify_with(&jws, &key("rsa1")), Err(JwtError::AlgMismatch));
                // Through the set: with kid rsa1 the only candidate is RS256-pinned; without a
                // kid the HS256 candidate is hs1, whose secret the attacker does not have.
                let expected = if kid.is_some() {
                    JwtError::AlgMismatch
                } else {
                    JwtError::BadSignature
                };
                assert_eq!(verify_with_set(&jws, &test_keys()).err(), Some(expected));
            }
        }
    }

    #[test]
    fn unknown_kid_is_refused() {
        let t = token(
            &header("ES256", "ec-rotated-away"),
            CLAIMS,
            Algorithm::ES256,
        );
        assert_eq!(verify_token(&t), Err(JwtError::UnknownKid));
        // No kid and no key of that algorithm.
        let t = token(r#"{"alg":"PS256"}"#, CLAIMS, Algorithm::PS256);
        assert_eq!(verify_token(&t), Err(JwtError::UnknownKid));
        // Empty set.
        let jws_text = valid(Algorithm::HS256, "hs1");
        let jws = parse(&jws_text).unwrap();
        assert_eq!(
            verify_with_set(&jws, &KeySet::default()).err(),
            Some(JwtError::UnknownKid)
        );
    }

    #[test]
    fn ecdsa_zero_and_der_signatures_are_refused() {
        let h = header("ES256", "ec256");
        let zero = token_with(&h, CLAIMS, |_| vec![0; 64]);
        assert_eq!(verify_token(&zero), Err(JwtError::BadSignature));
        let der = token_with(&h, CLAIMS, es256_der);
        assert_eq!(verify_token(&der), Err(JwtError::BadSignature));
        // P-521 signatures are 2 × 66 bytes.
        let t = valid(Algorithm::ES512, "ec521");
        assert_eq!(parse(&t).unwrap().signature.len(), 132);
    }

    /// Whether `token` parses and verifies against the test keys.
    fn accepted(token: &str) -> bool {
        parse(token).is_ok_and(|jws| verify_with_set(&jws, &test_keys()).is_ok())
    }

    #[test]
    fn truncated_and_junk_tokens_are_refused() {
        let t = valid(Algorithm::HS256, "hs1");
        for cut in 1..t.len() {
            assert!(!accepted(t.get(..cut).unwrap()), "prefix of {cut} bytes");
            assert!(!accepted(t.get(cut..).unwrap()), "suffix from byte {cut}");
        }
        for junk in [
            "\u{0}",
            "é.é.é",
            "a.b.c",
            "e30.e30.e30",
            "eyJhbGciOiJIUzI1NiJ9.e30.AA",
        ] {
            assert!(!accepted(junk), "{junk:?} verified");
        }
        assert!(accepted(&t), "the whole token verifies");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_is_never_accepted(s in "\\PC{0,300}") {
            proptest::prop_assert!(!accepted(&s));
        }

        #[test]
        fn arbitrary_segments_are_never_accepted(
            h in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            p in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            s in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..140),
        ) {
            let t = format!("{}.{}.{}", b64::encode(h), b64::encode(p), b64::encode(s));
            // Random signatures never verify, whatever the header names.
            proptest::prop_assert!(!accepted(&t));
        }
    }
}
