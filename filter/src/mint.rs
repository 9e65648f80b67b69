//! Token signing, for tests, the `portcullis` command-line tool and benchmarks.
//!
//! Native builds only: the wasm filter verifies and must never be able to sign, so this module
//! (and the signing and PEM features of the crypto crates it needs) are left out of it.
//!
//! Signatures use the JWS encodings the filter verifies ([`crate::jwt::jwk::Jwk::verify`]):
//! HMAC tags of full length, RSA PKCS#1 v1.5 (RS*) and PSS with MGF1 over the same hash and a
//! salt of the hash length (PS*), ECDSA as fixed-size `r ‖ s` with RFC 6979 deterministic
//! nonces, and Ed25519. Everything but PS* is deterministic: the same key, header and claims
//! give the same token.

use crate::jwt::{Algorithm, b64};
use ed25519_dalek::Signer as _;
use hmac::{Hmac, KeyInit, Mac};
use p256::pkcs8::DecodePrivateKey;
use serde_json::{Value, json};
use sha2::{Sha256, Sha384, Sha512};
use std::fmt;

/// Why a key could not be loaded or a token not be signed. The text never contains key
/// material.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// A private key was given for an HMAC algorithm.
    #[error("{0} is an HMAC algorithm: it needs a shared secret, not a private key")]
    NeedsSecret(Algorithm),
    /// A shared secret was given for a public-key algorithm.
    #[error("{0} needs a private key, not an HMAC secret")]
    NeedsPrivateKey(Algorithm),
    /// An HMAC secret shorter than the hash (RFC 7518 §3.2), which the filter would refuse.
    #[error("an {alg} secret must be at least {min} bytes long, this one has {len}")]
    SecretTooShort {
        /// The algorithm asked for.
        alg: Algorithm,
        /// Its hash size in bytes.
        min: usize,
        /// The length of the secret given.
        len: usize,
    },
    /// The text is not an unencrypted PKCS#8 private key in PEM form.
    #[error("{0}")]
    BadPem(String),
    /// A valid private key of a type that cannot make `alg` signatures.
    #[error("the key is {found}, which cannot sign {alg} (that needs {needed})")]
    KeyMismatch {
        /// What the key is, e.g. `an EC P-384 key`.
        found: &'static str,
        /// The algorithm asked for.
        alg: Algorithm,
        /// What that algorithm needs.
        needed: &'static str,
    },
    /// [`SigningKey::sign`] was given claims that are not a JSON object.
    #[error("JWT claims must be a JSON object")]
    ClaimsNotObject,
    /// The signature primitive failed (e.g. no system randomness for RSA).
    #[error("signing failed: {0}")]
    Signing(String),
}

/// A private key or shared secret, pinned to one algorithm, that signs compact JWS tokens.
pub struct SigningKey {
    alg: Algorithm,
    kid: Option<String>,
    key: Key,
}

/// Prepared signing material. HMAC keys are held as keyed MAC states, not as raw secrets.
enum Key {
    Hs256(Hmac<Sha256>),
    Hs384(Hmac<Sha384>),
    Hs512(Hmac<Sha512>),
    Rsa(Box<rsa::PrivateKey>),
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
    P521(p521::ecdsa::SigningKey),
    Ed25519(Box<ed25519_dalek::SigningKey>),
}

impl fmt::Debug for SigningKey {
    /// Names the key without printing any of its material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// The private-key types a PKCS#8 PEM can hold, for matching a key to an algorithm.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Rsa,
    P256,
    P384,
    P521,
    Ed25519,
}

impl Kind {
    const ALL: [Kind; 5] = [Kind::Rsa, Kind::P256, Kind::P384, Kind::P521, Kind::Ed25519];

    fn for_alg(alg: Algorithm) -> Option<Kind> {
        use Algorithm as A;
        match alg {
            A::HS256 | A::HS384 | A::HS512 => None,
            A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512 => Some(Kind::Rsa),
            A::ES256 => Some(Kind::P256),
            A::ES384 => Some(Kind::P384),
            A::ES512 => Some(Kind::P521),
            A::EdDSA => Some(Kind::Ed25519),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Kind::Rsa => "an RSA key",
            Kind::P256 => "an EC P-256 key",
            Kind::P384 => "an EC P-384 key",
            Kind::P521 => "an EC P-521 key",
            Kind::Ed25519 => "an Ed25519 key",
        }
    }

    fn parse(self, pem: &str) -> Result<Key, String> {
        fn err(e: impl fmt::Display) -> String {
            e.to_string()
        }
        Ok(match self {
            Kind::Rsa => Key::Rsa(Box::new(rsa::PrivateKey::from_pkcs8_pem(pem).map_err(err)?)),
            Kind::P256 => Key::P256(p256::ecdsa::SigningKey::from_pkcs8_pem(pem).map_err(err)?),
            Kind::P384 => Key::P384(p384::ecdsa::SigningKey::from_pkcs8_pem(pem).map_err(err)?),
            Kind::P521 => Key::P521(p521::ecdsa::SigningKey::from_pkcs8_pem(pem).map_err(err)?),
            Kind::Ed25519 => Key::Ed25519(Box::new(
                ed25519_dalek::SigningKey::from_pkcs8_pem(pem).map_err(err)?,
            )),
        })
    }
}

impl SigningKey {
    /// Loads an unencrypted PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`: RSA, EC
    /// P-256/P-384/P-521 or Ed25519) to sign with `alg`, which must fit the key type.
    ///
    /// PKCS#1 (`BEGIN RSA PRIVATE KEY`), SEC1 (`BEGIN EC PRIVATE KEY`), encrypted and public
    /// keys are refused with a hint, since their only use here would be a mistake.
    pub fn from_pkcs8_pem(pem: &str, alg: Algorithm) -> Result<Self, MintError> {
        let Some(wanted) = Kind::for_alg(alg) else {
            return Err(MintError::NeedsSecret(alg));
        };
        check_label(pem)?;
        match wanted.parse(pem) {
            Ok(key) => Ok(SigningKey {
                alg,
                kid: None,
                key,
            }),
            Err(reason) => {
                // Say what the key is when it is valid but of another type: "an EC P-384 key
                // cannot sign ES256" is more useful than a decoding error.
                let found = Kind::ALL
                    .into_iter()
                    .filter(|k| *k != wanted)
                    .find(|k| k.parse(pem).is_ok());
                Err(match found {
                    Some(found) => MintError::KeyMismatch {
                        found: found.describe(),
                        alg,
                        needed: wanted.describe(),
                    },
                    None => MintError::BadPem(format!(
                        "not a PKCS#8 private key usable for {alg}: {reason}"
                    )),
                })
            }
        }
    }

    /// An HMAC secret for HS256/HS384/HS512. An empty secret, or one shorter than the hash
    /// (32/48/64 bytes), is refused: the filter refuses such `oct` keys too.
    pub fn hmac(secret: &[u8], alg: Algorithm) -> Result<Self, MintError> {
        let min = match alg {
            Algorithm::HS256 => 32,
            Algorithm::HS384 => 48,
            Algorithm::HS512 => 64,
            _ => return Err(MintError::NeedsPrivateKey(alg)),
        };
        if secret.len() < min {
            return Err(MintError::SecretTooShort {
                alg,
                min,
                len: secret.len(),
            });
        }
        let bad_length = |_| MintError::Signing("HMAC refused the key length".to_owned());
        let key = match alg {
            Algorithm::HS256 => Key::Hs256(Hmac::new_from_slice(secret).map_err(bad_length)?),
            Algorithm::HS384 => Key::Hs384(Hmac::new_from_slice(secret).map_err(bad_length)?),
            _ => Key::Hs512(Hmac::new_from_slice(secret).map_err(bad_length)?),
        };
        Ok(SigningKey {
            alg,
            kid: None,
            key,
        })
    }

    /// Names the key in the `kid` header of the tokens [`SigningKey::sign`] makes.
    #[must_use]
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    /// The algorithm every signature of this key uses.
    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// The `kid` set by [`SigningKey::with_kid`].
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// A compact JWS with the header `{"alg", "typ": "JWT", "kid"?}` over `claims`, which must
    /// be a JSON object.
    pub fn sign(&self, claims: &Value) -> Result<String, MintError> {
        if !claims.is_object() {
            return Err(MintError::ClaimsNotObject);
        }
        let mut header = json!({"alg": self.alg.name(), "typ": "JWT"});
        if let (Some(kid), Some(h)) = (&self.kid, header.as_object_mut()) {
            h.insert("kid".to_owned(), Value::String(kid.clone()));
        }
        self.sign_with_header(&header, claims)
    }

    /// A compact JWS with exactly the given header and claims, signed with this key's
    /// algorithm whatever the header says: neither value is checked or completed, so tests can
    /// forge headers (another `alg`, a foreign `kid`, `crit`, …).
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> Result<String, MintError> {
        self.sign_parts(header.to_string().as_bytes(), claims.to_string().as_bytes())
    }

    /// A compact JWS over raw header and payload bytes, for forgeries JSON values cannot
    /// express (repeated members, invalid JSON, a non-JSON payload).
    pub fn sign_parts(&self, header: &[u8], payload: &[u8]) -> Result<String, MintError> {
        let signing_input = format!("{}.{}", b64::encode(header), b64::encode(payload));
        let signature = self.signature(signing_input.as_bytes())?;
        Ok(format!("{signing_input}.{}", b64::encode(signature)))
    }

    /// The raw JWS signature of `input` with this key's algorithm.
    fn signature(&self, input: &[u8]) -> Result<Vec<u8>, MintError> {
        use Algorithm as A;
        let failed = |e: rsa::Error| MintError::Signing(e.to_string());
        Ok(match (&self.key, self.alg) {
            (Key::Hs256(mac), _) => tag(mac.clone(), input),
            (Key::Hs384(mac), _) => tag(mac.clone(), input),
            (Key::Hs512(mac), _) => tag(mac.clone(), input),
            // `pkcs1v15_sign` blinds with system randomness; the signature is deterministic.
            (Key::Rsa(k), A::RS256) => k.pkcs1v15_sign::<Sha256>(input).map_err(failed)?,
            (Key::Rsa(k), A::RS384) => k.pkcs1v15_sign::<Sha384>(input).map_err(failed)?,
            (Key::Rsa(k), A::RS512) => k.pkcs1v15_sign::<Sha512>(input).map_err(failed)?,
            // Salt of the hash length, MGF1 over the same hash (RFC 7518 §3.5).
            (Key::Rsa(k), A::PS256) => k.pss_sign::<Sha256>(input).map_err(failed)?,
            (Key::Rsa(k), A::PS384) => k.pss_sign::<Sha384>(input).map_err(failed)?,
            (Key::Rsa(k), A::PS512) => k.pss_sign::<Sha512>(input).map_err(failed)?,
            // RFC 6979 nonces; `to_bytes` is the fixed-size r ‖ s that JWS uses.
            (Key::P256(k), _) => {
                let sig: p256::ecdsa::Signature = k.sign(input);
                sig.to_bytes().to_vec()
            }
            (Key::P384(k), _) => {
                let sig: p384::ecdsa::Signature = k.sign(input);
                sig.to_bytes().to_vec()
            }
            (Key::P521(k), _) => {
                let sig: p521::ecdsa::Signature = k.sign(input);
                sig.to_bytes().to_vec()
            }
            (Key::Ed25519(k), _) => k.sign(input).to_bytes().to_vec(),
            // The constructors only pair RSA keys with RS*/PS*.
            (Key::Rsa(_), alg) => {
                return Err(MintError::Signing(format!("an RSA key cannot sign {alg}")));
            }
        })
    }
}

fn tag<M: Mac>(mut mac: M, input: &[u8]) -> Vec<u8> {
    mac.update(input);
    mac.finalize().into_bytes().to_vec()
}

/// Refuses the PEM kinds people often have instead of PKCS#8, with the command that converts
/// them, before the parsers give a less helpful error.
fn check_label(pem: &str) -> Result<(), MintError> {
    let label = pem
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("-----BEGIN ")?.strip_suffix("-----"));
    let problem = match label {
        None => "not a PEM file (no \"-----BEGIN PRIVATE KEY-----\" line)",
        Some("PRIVATE KEY") => return Ok(()),
        Some("RSA PRIVATE KEY") => {
            "this is a PKCS#1 RSA key; convert it to PKCS#8 with `openssl pkcs8 -topk8 -nocrypt`"
        }
        Some("EC PRIVATE KEY") => {
            "this is a SEC1 EC key; convert it to PKCS#8 with `openssl pkcs8 -topk8 -nocrypt`"
        }
        Some("ENCRYPTED PRIVATE KEY") => {
            "this PKCS#8 key is encrypted; decrypt it with `openssl pkcs8 -nocrypt`"
        }
        Some(l) if l.contains("PUBLIC KEY") || l.contains("CERTIFICATE") => {
            "this is a public key or certificate; signing needs the private key"
        }
        Some(_) => "expected a PKCS#8 private key (\"-----BEGIN PRIVATE KEY-----\")",
    };
    Err(MintError::BadPem(problem.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::reader::Ctx;
    use crate::jwt::JwtError;
    use crate::jwt::jwk::{Jwk, read_jwk};
    use crate::jwt::jws::{parse, verify_with};

    const RSA1: &str = include_str!("../tests/keys/rsa1.private.pem");
    const RSA1_PUBLIC: &str = include_str!("../tests/keys/rsa1.public.pem");
    const EC256: &str = include_str!("../tests/keys/ec256.private.pem");
    const EC384: &str = include_str!("../tests/keys/ec384.private.pem");
    const EC521: &str = include_str!("../tests/keys/ec521.private.pem");
    const ED1: &str = include_str!("../tests/keys/ed1.private.pem");
    const JWKS: &str = include_str!("../tests/keys/jwks.json");

    /// The public JWK with this kid from `tests/keys/jwks.json`, re-pinned to `alg`.
    fn jwk_json(kid: &str, alg: Algorithm) -> Value {
        let jwks: Value = serde_json::from_str(JWKS).unwrap();
        let mut key = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == kid)
            .unwrap()
            .clone();
        key["alg"] = json!(alg.name());
        key
    }

    fn jwk(kid: &str, alg: Algorithm) -> Jwk {
        let mut cx = Ctx::default();
        let key = read_jwk(&mut cx, &jwk_json(kid, alg), "key");
        assert!(cx.error_count() == 0, "{:?}", cx.into_errors());
        key.unwrap()
    }

    fn hs_secret(len: usize) -> Vec<u8> {
        (0..len).map(|i| u8::try_from(i).unwrap()).collect()
    }

    fn oct_jwk(secret: &[u8], alg: Algorithm) -> Jwk {
        let mut cx = Ctx::default();
        let doc = json!({"kty": "oct", "kid": "hs", "alg": alg.name(), "k": b64::encode(secret)});
        read_jwk(&mut cx, &doc, "key").unwrap()
    }

    fn claims() -> Value {
        json!({"iss": "https://id.example.com", "sub": "alice", "exp": 1_800_000_000u64})
    }

    /// Every (signing key, verifying key) pair the test keys allow.
    fn pairs() -> Vec<(SigningKey, Jwk)> {
        use Algorithm as A;
        let mut out = Vec::new();
        for (alg, len) in [(A::HS256, 32), (A::HS384, 48), (A::HS512, 64)] {
            let secret = hs_secret(len);
            out.push((
                SigningKey::hmac(&secret, alg).unwrap(),
                oct_jwk(&secret, alg),
            ));
        }
        for alg in [A::RS256, A::RS384, A::RS512, A::PS256, A::PS384, A::PS512] {
            out.push((
                SigningKey::from_pkcs8_pem(RSA1, alg).unwrap(),
                jwk("rsa1", alg),
            ));
        }
        for (pem, kid, alg) in [
            (EC256, "ec256", A::ES256),
            (EC384, "ec384", A::ES384),
            (EC521, "ec521", A::ES512),
            (ED1, "ed1", A::EdDSA),
        ] {
            out.push((SigningKey::from_pkcs8_pem(pem, alg).unwrap(), jwk(kid, alg)));
        }
        out
    }

    #[test]
    fn every_algorithm_verifies_with_the_filters_own_code() {
        let pairs = pairs();
        assert_eq!(pairs.len(), Algorithm::ALL.len());
        for (key, public) in pairs {
            let key = key.with_kid("k");
            let token = key.sign(&claims()).unwrap();
            let jws = parse(&token).unwrap();
            assert_eq!(jws.header.alg, key.alg());
            assert_eq!(jws.header.kid.as_deref(), Some("k"));
            assert_eq!(jws.header.typ.as_deref(), Some("JWT"));
            let payload: Value = serde_json::from_slice(&jws.payload).unwrap();
            assert_eq!(payload, claims());
            assert_eq!(verify_with(&jws, &public), Ok(()), "{}", key.alg());
        }
    }

    #[test]
    fn signature_sizes_are_the_jws_ones() {
        use Algorithm as A;
        for (key, _) in pairs() {
            let token = key.sign(&claims()).unwrap();
            let sig = parse(&token).unwrap().signature.len();
            let expected = match key.alg() {
                A::HS256 => 32,
                A::HS384 => 48,
                A::HS512 | A::ES256 | A::EdDSA => 64,
                A::ES384 => 96,
                A::ES512 => 132,
                // RSA-2048: the modulus length.
                _ => 256,
            };
            assert_eq!(sig, expected, "{}", key.alg());
        }
    }

    #[test]
    fn everything_but_pss_is_deterministic() {
        for (key, _) in pairs() {
            let same = key.sign(&claims()).unwrap() == key.sign(&claims()).unwrap();
            let pss = key.alg().name().starts_with("PS");
            assert_eq!(same, !pss, "{}", key.alg());
        }
    }

    #[test]
    fn a_tampered_token_does_not_verify() {
        for (key, public) in pairs() {
            let token = key.sign(&claims()).unwrap();
            let other = key.sign(&json!({"sub": "mallory"})).unwrap();
            let (head, _) = token.rsplit_once('.').unwrap();
            let (_, other_sig) = other.rsplit_once('.').unwrap();
            let forged = format!("{head}.{other_sig}");
            let jws = parse(&forged).unwrap();
            assert_eq!(
                verify_with(&jws, &public),
                Err(JwtError::BadSignature),
                "{}",
                key.alg()
            );
        }
    }

    #[test]
    fn sign_with_header_keeps_the_header_as_given() {
        let key = SigningKey::from_pkcs8_pem(EC256, Algorithm::ES256).unwrap();
        let token = key
            .sign_with_header(&json!({"alg": "ES384", "kid": "x"}), &json!([1]))
            .unwrap();
        let jws = parse(&token).unwrap();
        assert_eq!(jws.header.alg, Algorithm::ES384);
        assert_eq!(jws.header.typ, None);
        assert_eq!(jws.payload, b"[1]");
        // Signed with ES256 all the same.
        let mut public = jwk("ec256", Algorithm::ES256);
        assert_eq!(verify_with(&jws, &public), Err(JwtError::AlgMismatch));
        public.alg = Algorithm::ES384;
        assert_eq!(verify_with(&jws, &public), Err(JwtError::AlgMismatch));

        let raw = key
            .sign_parts(br#"{"alg":"ES256","alg":"none"}"#, b"not json")
            .unwrap();
        let (head, _) = raw.split_once('.').unwrap();
        assert_eq!(
            b64::decode(head).unwrap(),
            br#"{"alg":"ES256","alg":"none"}"#
        );
    }

    #[test]
    fn sign_requires_object_claims() {
        let key = SigningKey::hmac(&hs_secret(32), Algorithm::HS256).unwrap();
        for claims in [json!([]), json!("x"), json!(null), json!(1)] {
            assert!(matches!(key.sign(&claims), Err(MintError::ClaimsNotObject)));
        }
        let token = key.sign(&json!({})).unwrap();
        let jws = parse(&token).unwrap();
        assert_eq!(jws.header.kid, None);
    }

    #[test]
    fn hmac_secrets_must_be_as_long_as_the_hash() {
        use Algorithm as A;
        for (alg, min) in [(A::HS256, 32), (A::HS384, 48), (A::HS512, 64)] {
            assert!(SigningKey::hmac(&hs_secret(min), alg).is_ok());
            let err = SigningKey::hmac(&hs_secret(min - 1), alg).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "an {alg} secret must be at least {min} bytes long, this one has {}",
                    min - 1
                )
            );
            assert!(matches!(
                SigningKey::hmac(b"", alg),
                Err(MintError::SecretTooShort { len: 0, .. })
            ));
        }
        for alg in [A::RS256, A::PS256, A::ES256, A::EdDSA] {
            assert!(matches!(
                SigningKey::hmac(&hs_secret(64), alg),
                Err(MintError::NeedsPrivateKey(_))
            ));
        }
    }

    #[test]
    fn keys_must_fit_the_algorithm() {
        use Algorithm as A;
        let mismatch = |pem: &str, alg| match SigningKey::from_pkcs8_pem(pem, alg) {
            Err(MintError::KeyMismatch { found, needed, .. }) => (found, needed),
            other => panic!("{alg}: {other:?}"),
        };
        assert_eq!(
            mismatch(EC384, A::ES256),
            ("an EC P-384 key", "an EC P-256 key")
        );
        assert_eq!(mismatch(RSA1, A::EdDSA), ("an RSA key", "an Ed25519 key"));
        assert_eq!(mismatch(ED1, A::PS256), ("an Ed25519 key", "an RSA key"));
        assert_eq!(
            mismatch(EC521, A::ES384),
            ("an EC P-521 key", "an EC P-384 key")
        );
        assert_eq!(
            SigningKey::from_pkcs8_pem(EC256, A::ES512)
                .unwrap_err()
                .to_string(),
            "the key is an EC P-256 key, which cannot sign ES512 (that needs an EC P-521 key)"
        );
        for alg in [A::HS256, A::HS384, A::HS512] {
            assert!(matches!(
                SigningKey::from_pkcs8_pem(RSA1, alg),
                Err(MintError::NeedsSecret(_))
            ));
        }
    }

    #[test]
    fn other_pem_kinds_get_a_hint() {
        let message = |pem: &str| {
            SigningKey::from_pkcs8_pem(pem, Algorithm::RS256)
                .unwrap_err()
                .to_string()
        };
        assert!(message(RSA1_PUBLIC).contains("public key"));
        assert!(message("").contains("not a PEM file"));
        let pkcs1 = RSA1.replace("PRIVATE KEY", "RSA PRIVATE KEY");
        assert!(message(&pkcs1).contains("openssl pkcs8 -topk8 -nocrypt"));
        let encrypted = RSA1.replace("PRIVATE KEY", "ENCRYPTED PRIVATE KEY");
        assert!(message(&encrypted).contains("encrypted"));
        let garbage = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(message(garbage).starts_with("not a PKCS#8 private key usable for RS256: "));
    }

    #[test]
    fn debug_shows_no_key_material() {
        let secret = [0x41u8; 32];
        let key = SigningKey::hmac(&secret, Algorithm::HS256)
            .unwrap()
            .with_kid("hs1");
        let text = format!("{key:?}");
        assert_eq!(text, "SigningKey { alg: HS256, kid: Some(\"hs1\"), .. }");
        assert_eq!(key.kid(), Some("hs1"));
        let rsa = format!(
            "{:?}",
            SigningKey::from_pkcs8_pem(RSA1, Algorithm::RS256).unwrap()
        );
        assert_eq!(rsa, "SigningKey { alg: RS256, kid: None, .. }");
    }
}
