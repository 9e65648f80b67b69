//! JSON Web Keys (RFC 7517, RFC 7518 §6, RFC 8037) read strictly at configure time and turned
//! into prepared verifying keys, so that a request only does signature arithmetic.
//!
//! # What a JWK may contain
//!
//! | `kty` | members | default `alg` | other `alg` allowed |
//! | --- | --- | --- | --- |
//! | `RSA` | `n`, `e` (modulus 2048–8192 bits) | `RS256` | `RS384`, `RS512`, `PS256`, `PS384`, `PS512` |
//! | `EC` | `crv` (`P-256`, `P-384`, `P-521`), `x`, `y` | `ES256` / `ES384` / `ES512` by curve | none |
//! | `OKP` | `crv` (`Ed25519`), `x` | `EdDSA` | none |
//! | `oct` | `k` (at least the hash size: 32/48/64 bytes) | `HS256` | `HS384`, `HS512` |
//!
//! Every key is pinned to exactly one algorithm: its `alg` member if present, else the default
//! above. So an RSA key used with RS384, PS256 etc., or an HMAC key used with HS384/HS512,
//! needs an explicit `alg` on the JWK. Tokens whose `alg` differs from their key's are refused;
//! this is what makes algorithm-confusion attacks (an RS256 key used as an HMAC secret, …)
//! impossible by construction.
//!
//! Also accepted on any key: `kid` (non-empty string), `use` (must be `sig`), `key_ops` (must
//! include `verify`), and the certificate members `x5c`, `x5t`, `x5t#S256`, `x5u`, which
//! published key sets often carry. Those four are type-checked and otherwise ignored: the key
//! is always taken from its own members, never from a certificate or a URL.
//!
//! Refused: private keys (`d`, `p`, `q`, `dp`, `dq`, `qi`, `oth`), unknown members, keys that
//! are too small, off-curve or small-order points, RSA keys with the ROCA fingerprint
//! (CVE-2017-15361), and base64url that is padded, uses the standard alphabet or is not
//! canonical. Leading zero octets in `n` and `e` are tolerated (RFC 7518 asks for the minimal
//! encoding, but the integer is the same and some publishers add them).

use super::{Algorithm, JwtError, b64};
use crate::config::reader::{Ctx, Obj, as_array, child, index};
use hmac::{Hmac, KeyInit, Mac};
use p256::ecdsa::signature::Verifier;
use rsa::BoxedUint;
use serde_json::Value;
use sha2::{Sha256, Sha384, Sha512};
use std::fmt;
use subtle::ConstantTimeEq;

/// Smallest RSA modulus accepted (NIST SP 800-131A; RFC 7518 §3.3 requires 2048).
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted (the `rsa` crate's default limit; bounds verification cost).
pub const MAX_RSA_BITS: usize = 8192;

/// One verifying key, parsed and prepared, pinned to one algorithm.
#[derive(Clone)]
pub struct Jwk {
    /// The key id tokens name in their `kid` header.
    pub kid: Option<String>,
    /// The only algorithm this key verifies.
    pub alg: Algorithm,
    key: Key,
}

/// Prepared key material: everything that can be parsed or precomputed is, at configure time.
#[derive(Clone)]
enum Key {
    /// HMAC state already keyed (inner and outer pads absorbed); cloned per verification.
    Hs256(Hmac<Sha256>),
    Hs384(Hmac<Sha384>),
    Hs512(Hmac<Sha512>),
    /// Range-checked modulus and exponent with their Montgomery parameters.
    Rsa(rsa::PublicKey),
    /// Decoded, on-curve affine points.
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    P521(p521::ecdsa::VerifyingKey),
    /// Decompressed point, checked not to have small order.
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl fmt::Debug for Jwk {
    /// Names the key without printing any of its material (an HMAC key is a secret).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwk")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("kty", &self.kty())
            .finish_non_exhaustive()
    }
}

impl Jwk {
    /// The JWK key type (`RSA`, `EC`, `OKP` or `oct`).
    pub fn kty(&self) -> &'static str {
        match self.key {
            Key::Hs256(_) | Key::Hs384(_) | Key::Hs512(_) => "oct",
            Key::Rsa(_) => "RSA",
            Key::P256(_) | Key::P384(_) | Key::P521(_) => "EC",
            Key::Ed25519(_) => "OKP",
        }
    }

    /// Whether this is a shared secret (an HMAC key) rather than a public key.
    pub fn is_symmetric(&self) -> bool {
        matches!(self.key, Key::Hs256(_) | Key::Hs384(_) | Key::Hs512(_))
    }

    /// Verifies `signature` over `signing_input` (the ASCII `header.payload` of a compact JWS)
    /// with this key's pinned algorithm.
    ///
    /// Signatures use the JWS encodings only: HMAC tags of the full hash length, RSA signatures
    /// of exactly the modulus length, ECDSA as fixed-size `r ‖ s` (RFC 7518 §3.4; DER is
    /// refused), Ed25519 as 64 bytes. Anything else is [`JwtError::BadSignature`].
    pub fn verify(&self, signing_input: &[u8], signature: &[u8]) -> Result<(), JwtError> {
        use Algorithm as A;
        let ok = match (&self.key, self.alg) {
            (Key::Hs256(mac), A::HS256) => hmac_matches(mac.clone(), signing_input, signature),
            (Key::Hs384(mac), A::HS384) => hmac_matches(mac.clone(), signing_input, signature),
            (Key::Hs512(mac), A::HS512) => hmac_matches(mac.clone(), signing_input, signature),
            (Key::Rsa(pk), alg) => rsa_verify(pk, alg, signing_input, signature)?,
            (Key::P256(vk), A::ES256) => p256::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|sig| vk.verify(signing_input, &sig).is_ok()),
            (Key::P384(vk), A::ES384) => p384::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|sig| vk.verify(signing_input, &sig).is_ok()),
            (Key::P521(vk), A::ES512) => p521::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|sig| vk.verify(signing_input, &sig).is_ok()),
            // `verify_strict` also refuses small-order R (and keys, refused at configure time
            // anyway): no malleable or key-independent signatures. It accepts every valid
            // Wycheproof Ed25519 vector, so strictness costs no interoperability.
            (Key::Ed25519(vk), A::EdDSA) => ed25519_dalek::Signature::from_slice(signature)
                .is_ok_and(|sig| vk.verify_strict(signing_input, &sig).is_ok()),
            // `alg` is a public field: a caller that re-pins a key to another family gets a
            // refusal, never a verification under the wrong primitive.
            _ => return Err(JwtError::AlgMismatch),
        };
        if ok {
            Ok(())
        } else {
            Err(JwtError::BadSignature)
        }
    }
}

/// Full-length tag, compared in constant time.
fn hmac_matches<M: Mac>(mut mac: M, input: &[u8], tag: &[u8]) -> bool {
    mac.update(input);
    let expected = mac.finalize().into_bytes();
    // `ct_eq` on slices of different lengths is false (and the length is not secret).
    expected.as_slice().ct_eq(tag).into()
}

/// RS* is PKCS#1 v1.5; PS* is PSS with MGF1 over the same hash and a salt of the hash length
/// (RFC 7518 §3.5), which is what `pss_verify` enforces.
fn rsa_verify(
    pk: &rsa::PublicKey,
    alg: Algorithm,
    input: &[u8],
    sig: &[u8],
) -> Result<bool, JwtError> {
    use Algorithm as A;
    let result = match alg {
        A::RS256 => pk.pkcs1v15_verify::<Sha256>(input, sig),
        A::RS384 => pk.pkcs1v15_verify::<Sha384>(input, sig),
        A::RS512 => pk.pkcs1v15_verify::<Sha512>(input, sig),
        A::PS256 => pk.pss_verify::<Sha256>(input, sig),
        A::PS384 => pk.pss_verify::<Sha384>(input, sig),
        A::PS512 => pk.pss_verify::<Sha512>(input, sig),
        _ => return Err(JwtError::AlgMismatch),
    };
    Ok(result.is_ok())
}

/// A set of verifying keys, e.g. a provider's `local_jwks`.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<Jwk>,
}

impl KeySet {
    /// Wraps keys that were read one by one.
    pub fn from_keys(keys: Vec<Jwk>) -> Self {
        KeySet { keys }
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is usable.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// All keys, in document order.
    pub fn iter(&self) -> impl Iterator<Item = &Jwk> {
        self.keys.iter()
    }

    /// The keys a token may be verified with: with a `kid`, exactly the keys with that `kid`
    /// (a key without `kid` never matches a token that names one); without a `kid`, all keys.
    /// The caller still has to match the algorithm ([`crate::jwt::jws::verify_with`] does).
    pub fn candidates<'s, 'k>(
        &'s self,
        kid: Option<&'k str>,
    ) -> impl Iterator<Item = &'s Jwk> + use<'s, 'k> {
        self.keys.iter().filter(move |k| match kid {
            Some(kid) => k.kid.as_deref() == Some(kid),
            None => true,
        })
    }
}

/// Reads a JWK Set (`{"keys": [...]}`, RFC 7517 §5) from the configuration.
///
/// Each refused key is reported with its path and skipped, so one reading shows every mistake.
/// Two keys with the same `kid` and the same pinned `alg` are refused (which one a token meant
/// would be ambiguous); the same `kid` on keys of different algorithms is allowed (RFC 7517
/// §4.5), since the algorithm then tells them apart. A set that mixes secret (oct) keys with
/// public keys is refused (Wycheproof calls it ambiguous): a provider is one issuer.
pub fn read_jwks(cx: &mut Ctx, value: &Value, path: &str) -> KeySet {
    let Some(mut obj) = Obj::new(cx, value, path) else {
        return KeySet::default();
    };
    let keys_path = obj.field_path("keys");
    let items = obj
        .required(cx, "keys")
        .and_then(|v| as_array(cx, v, &keys_path));
    let mut accepted: Vec<(usize, Jwk)> = Vec::new();
    if let Some(items) = items {
        if items.is_empty() {
            cx.error(&keys_path, "a key set needs at least one key");
        }
        for (i, item) in items.iter().enumerate() {
            let key_path = index(&keys_path, i);
            let Some(jwk) = read_jwk(cx, item, &key_path) else {
                continue;
            };
            let clash = accepted
                .iter()
                .find(|(_, k)| jwk.kid.is_some() && k.kid == jwk.kid && k.alg == jwk.alg);
            if let Some((j, _)) = clash {
                cx.error(
                    &child(&key_path, "kid"),
                    format!(
                        "{} is also the kid of {} for the same algorithm {}; kids must tell keys apart",
                        quoted(jwk.kid.as_deref().unwrap_or_default()),
                        index(&keys_path, *j),
                        jwk.alg
                    ),
                );
                continue;
            }
            accepted.push((i, jwk));
        }
    }
    let symmetric = accepted.iter().filter(|(_, k)| k.is_symmetric()).count();
    if symmetric > 0 && symmetric < accepted.len() {
        // Wycheproof flags such sets as ambiguous: one secret shared with every token issuer
        // beside public keys invites confusion. Pinning would keep them apart, but a provider
        // is one issuer, which signs either with a secret or with a key pair.
        cx.error(
            &keys_path,
            "a key set must not mix secret (oct) keys with public keys; use two providers",
        );
    }
    obj.finish(cx);
    KeySet::from_keys(accepted.into_iter().map(|(_, k)| k).collect())
}

/// Reads one JWK from the configuration. Every problem is reported at its path; `None` if the
/// key is refused.
pub fn read_jwk(cx: &mut Ctx, value: &Value, path: &str) -> Option<Jwk> {
    let errors_before = cx.error_count();
    let mut obj = Obj::new(cx, value, path)?;
    let kty = obj.required_str(cx, "kty");
    let kid = obj.non_empty_str(cx, "kid").map(str::to_owned);
    let alg = read_alg(cx, &mut obj);
    read_use(cx, &mut obj);
    read_key_ops(cx, &mut obj);
    read_certificate_members(cx, &mut obj);

    let key = match kty {
        Some("RSA") => read_rsa(cx, &mut obj, alg),
        Some("EC") => read_ec(cx, &mut obj, alg),
        Some("OKP") => read_okp(cx, &mut obj, alg),
        Some("oct") => read_oct(cx, &mut obj, alg),
        Some(other) => {
            cx.error(
                &obj.field_path("kty"),
                format!(
                    "unsupported key type {} (expected RSA, EC, OKP or oct)",
                    quoted(other)
                ),
            );
            None
        }
        None => None,
    };
    // Without a known kty we cannot tell key members from unknown ones; don't guess.
    if matches!(kty, Some("RSA" | "EC" | "OKP" | "oct")) {
        obj.finish(cx);
    }
    if cx.error_count() != errors_before {
        return None;
    }
    let (alg, key) = key?;
    Some(Jwk { kid, alg, key })
}

/// The `alg` member: absent, a supported algorithm, or refused (already reported).
#[derive(Clone, Copy)]
enum AlgMember {
    Absent,
    Given(Algorithm),
    Refused,
}

fn read_alg(cx: &mut Ctx, obj: &mut Obj<'_>) -> AlgMember {
    let Some(name) = obj.str(cx, "alg") else {
        return if obj.has("alg") {
            AlgMember::Refused
        } else {
            AlgMember::Absent
        };
    };
    match Algorithm::from_name(name) {
        Some(alg) => AlgMember::Given(alg),
        None => {
            let known: Vec<&str> = Algorithm::ALL.iter().map(|a| a.name()).collect();
            cx.error(
                &obj.field_path("alg"),
                format!(
                    "unsupported signature algorithm {} (expected one of: {})",
                    quoted(name),
                    known.join(", ")
                ),
            );
            AlgMember::Refused
        }
    }
}

/// Resolves the pinned algorithm: `alg` if given and allowed for this key, else `default`.
fn pin_alg(
    cx: &mut Ctx,
    obj: &Obj<'_>,
    alg: AlgMember,
    allowed: &[Algorithm],
    default: Algorithm,
    what: &str,
) -> Option<Algorithm> {
    match alg {
        AlgMember::Absent => Some(default),
        AlgMember::Refused => None,
        AlgMember::Given(a) if allowed.contains(&a) => Some(a),
        AlgMember::Given(a) => {
            let names: Vec<&str> = allowed.iter().map(|a| a.name()).collect();
            cx.error(
                &obj.field_path("alg"),
                format!(
                    "{a} cannot be used with {what} (allowed: {})",
                    names.join(", ")
                ),
            );
            None
        }
    }
}

fn read_use(cx: &mut Ctx, obj: &mut Obj<'_>) {
    if let Some(u) = obj.str(cx, "use")
        && u != "sig"
    {
        cx.error(
            &obj.field_path("use"),
            format!(
                "key use is {}; only \"sig\" keys can verify tokens",
                quoted(u)
            ),
        );
    }
}

fn read_key_ops(cx: &mut Ctx, obj: &mut Obj<'_>) {
    let present = obj.has("key_ops");
    let ops = obj.str_list(cx, "key_ops");
    if present && !ops.contains(&"verify") {
        cx.error(
            &obj.field_path("key_ops"),
            "key_ops does not include \"verify\"; this key may not verify tokens",
        );
    }
}

/// `x5c`, `x5t`, `x5t#S256`, `x5u`: type-checked, then ignored (see the module docs).
fn read_certificate_members(cx: &mut Ctx, obj: &mut Obj<'_>) {
    let _ = obj.str_list(cx, "x5c");
    let _ = obj.str(cx, "x5t");
    let _ = obj.str(cx, "x5t#S256");
    let _ = obj.str(cx, "x5u");
}

/// Refuses private-key members with one clear error.
fn refuse_private(cx: &mut Ctx, obj: &mut Obj<'_>, members: &[&'static str]) {
    let found: Vec<&str> = members.iter().copied().filter(|m| obj.has(m)).collect();
    if !found.is_empty() {
        cx.error(
            obj.path(),
            format!(
                "this is a private key (it has {}); configure only the public key",
                found.join(", ")
            ),
        );
    }
}

/// A required base64url member, decoded.
fn required_bytes(cx: &mut Ctx, obj: &mut Obj<'_>, key: &'static str) -> Option<Vec<u8>> {
    let text = obj.required_str(cx, key)?;
    match b64::decode(text) {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            cx.error(&obj.field_path(key), e.to_string());
            None
        }
    }
}

fn read_rsa(cx: &mut Ctx, obj: &mut Obj<'_>, alg: AlgMember) -> Option<(Algorithm, Key)> {
    use Algorithm as A;
    refuse_private(cx, obj, &["d", "p", "q", "dp", "dq", "qi", "oth"]);
    let n = required_bytes(cx, obj, "n");
    let e = required_bytes(cx, obj, "e");
    let alg = pin_alg(
        cx,
        obj,
        alg,
        &[A::RS256, A::RS384, A::RS512, A::PS256, A::PS384, A::PS512],
        A::RS256,
        "an RSA key",
    );

    let n = n.map(|n| strip_leading_zeros(&n).to_vec());
    let e = e.map(|e| strip_leading_zeros(&e).to_vec());
    let n = n.filter(|n| {
        let bits = bit_len(n);
        let reason = if bits < MIN_RSA_BITS {
            format!("the RSA modulus has {bits} bits; at least {MIN_RSA_BITS} are required")
        } else if bits > MAX_RSA_BITS {
            format!("the RSA modulus has {bits} bits; at most {MAX_RSA_BITS} are supported")
        } else {
            return true;
        };
        cx.error(&obj.field_path("n"), reason);
        false
    });
    let e = e.filter(|e| {
        // The `rsa` crate bounds e to 2^33 - 1; a longer encoding cannot be valid.
        let ok = !e.is_empty() && e.len() <= 8;
        if !ok {
            cx.error(&obj.field_path("e"), "the public exponent is out of range");
        }
        ok
    });
    let (n, e, alg) = (n?, e?, alg?);

    let n_int = BoxedUint::from_be_slice(&n, precision_bits(&n)?);
    let e_int = BoxedUint::from_be_slice(&e, precision_bits(&e)?);
    let (Ok(n_int), Ok(e_int)) = (n_int, e_int) else {
        cx.error(obj.path(), "the RSA key cannot be represented");
        return None;
    };
    let pk = match rsa::PublicKey::new_with_size_limits(n_int, e_int, MIN_RSA_BITS..=MAX_RSA_BITS) {
        Ok(pk) => pk,
        Err(err) => {
            cx.error(obj.path(), format!("not a usable RSA public key: {err}"));
            return None;
        }
    };
    if has_roca_fingerprint(&n) {
        cx.error(
            &obj.field_path("n"),
            "this modulus has the ROCA fingerprint (CVE-2017-15361): it was made by a \
             vulnerable key generator and its private key can be computed; replace the key",
        );
        return None;
    }
    Some((alg, Key::Rsa(pk)))
}

fn read_ec(cx: &mut Ctx, obj: &mut Obj<'_>, alg: AlgMember) -> Option<(Algorithm, Key)> {
    refuse_private(cx, obj, &["d"]);
    let crv = obj.required_str(cx, "crv");
    let x = required_bytes(cx, obj, "x");
    let y = required_bytes(cx, obj, "y");
    let (size, pinned) = match crv? {
        "P-256" => (32, Algorithm::ES256),
        "P-384" => (48, Algorithm::ES384),
        "P-521" => (66, Algorithm::ES512),
        other => {
            cx.error(
                &obj.field_path("crv"),
                format!(
                    "unsupported curve {} (expected P-256, P-384 or P-521)",
                    quoted(other)
                ),
            );
            return None;
        }
    };
    let crv = crv?;
    let alg = pin_alg(cx, obj, alg, &[pinned], pinned, &format!("a {crv} key"));
    let mut exact = |name: &'static str, v: Option<Vec<u8>>| {
        v.filter(|v| {
            let ok = v.len() == size;
            if !ok {
                cx.error(
                    &obj.field_path(name),
                    format!("a {crv} coordinate is {size} bytes, found {}", v.len()),
                );
            }
            ok
        })
    };
    let x = exact("x", x);
    let y = exact("y", y);
    let (x, y, alg) = (x?, y?, alg?);

    // Uncompressed SEC1 point: the crates check both coordinates are field elements and that
    // the point is on the curve (and not the identity).
    let mut sec1 = Vec::with_capacity(1 + 2 * size);
    sec1.push(0x04);
    sec1.extend_from_slice(&x);
    sec1.extend_from_slice(&y);
    let key = match alg {
        Algorithm::ES256 => p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1)
            .ok()
            .map(Key::P256),
        Algorithm::ES384 => p384::ecdsa::VerifyingKey::from_sec1_bytes(&sec1)
            .ok()
            .map(Key::P384),
        _ => p521::ecdsa::VerifyingKey::from_sec1_bytes(&sec1)
            .ok()
            .map(Key::P521),
    };
    if key.is_none() {
        cx.error(
            obj.path(),
            format!("the point (x, y) is not on the curve {crv}"),
        );
    }
    Some((alg, key?))
}

fn read_okp(cx: &mut Ctx, obj: &mut Obj<'_>, alg: AlgMember) -> Option<(Algorithm, Key)> {
    refuse_private(cx, obj, &["d"]);
    let crv = obj.required_str(cx, "crv");
    let x = required_bytes(cx, obj, "x");
    match crv? {
        "Ed25519" => {}
        other => {
            cx.error(
                &obj.field_path("crv"),
                format!(
                    "unsupported curve {} (only Ed25519 is supported)",
                    quoted(other)
                ),
            );
            return None;
        }
    }
    let alg = pin_alg(
        cx,
        obj,
        alg,
        &[Algorithm::EdDSA],
        Algorithm::EdDSA,
        "an Ed25519 key",
    );
    let x = x?;
    let Ok(bytes) = <[u8; 32]>::try_from(x.as_slice()) else {
        cx.error(
            &obj.field_path("x"),
            format!("an Ed25519 public key is 32 bytes, found {}", x.len()),
        );
        return None;
    };
    let Ok(vk) = ed25519_dalek::VerifyingKey::from_bytes(&bytes) else {
        cx.error(&obj.field_path("x"), "not a valid Ed25519 public key");
        return None;
    };
    if vk.is_weak() {
        cx.error(
            &obj.field_path("x"),
            "this Ed25519 public key has small order; signatures from it prove nothing",
        );
        return None;
    }
    Some((alg?, Key::Ed25519(vk)))
}

fn read_oct(cx: &mut Ctx, obj: &mut Obj<'_>, alg: AlgMember) -> Option<(Algorithm, Key)> {
    use Algorithm as A;
    let k = required_bytes(cx, obj, "k");
    let alg = pin_alg(
        cx,
        obj,
        alg,
        &[A::HS256, A::HS384, A::HS512],
        A::HS256,
        "an oct (HMAC) key",
    );
    let (k, alg) = (k?, alg?);
    if k.is_empty() {
        cx.error(&obj.field_path("k"), "the HMAC key is empty");
        return None;
    }
    // RFC 7518 §3.2: a key of the same size as the hash output or larger MUST be used.
    let min = match alg {
        A::HS384 => 48,
        A::HS512 => 64,
        _ => 32,
    };
    if k.len() < min {
        cx.error(
            &obj.field_path("k"),
            format!(
                "an HMAC key for {alg} must be at least {min} bytes (RFC 7518 §3.2), found {}",
                k.len()
            ),
        );
        return None;
    }
    let key = match alg {
        A::HS384 => Hmac::<Sha384>::new_from_slice(&k).ok().map(Key::Hs384),
        A::HS512 => Hmac::<Sha512>::new_from_slice(&k).ok().map(Key::Hs512),
        _ => Hmac::<Sha256>::new_from_slice(&k).ok().map(Key::Hs256),
    };
    if key.is_none() {
        cx.error(&obj.field_path("k"), "the HMAC key cannot be used");
    }
    Some((alg, key?))
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    bytes.get(first..).unwrap_or_default()
}

/// Bit length of a big-endian unsigned integer without leading zero octets.
fn bit_len(bytes: &[u8]) -> usize {
    match bytes.first() {
        None => 0,
        Some(top) => (bytes.len() - 1) * 8 + (8 - top.leading_zeros() as usize),
    }
}

fn precision_bits(bytes: &[u8]) -> Option<u32> {
    u32::try_from(bytes.len()).ok()?.checked_mul(8)
}

/// The primes whose residues reveal ROCA keys: an Infineon-generated modulus is, modulo each of
/// them, a power of 65537 (Nemec et al., "The Return of Coppersmith's Attack", CCS 2017).
/// For an honest 2048-bit key the chance of matching all of them is about 2^-28.
const ROCA_PRIMES: [u32; 38] = [
    3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97,
    101, 103, 107, 109, 113, 127, 131, 137, 139, 149, 151, 157, 163, 167,
];

fn has_roca_fingerprint(n: &[u8]) -> bool {
    ROCA_PRIMES.iter().all(|&p| {
        let residue = n
            .iter()
            .fold(0u32, |acc, &b| (acc * 256 + u32::from(b)) % p);
        is_power_of_65537(residue, p)
    })
}

/// Whether `r` lies in the subgroup of (Z/pZ)* generated by 65537.
fn is_power_of_65537(r: u32, p: u32) -> bool {
    let g = 65537 % p;
    let mut x = 1 % p;
    // The subgroup has at most p - 1 elements; the bound makes termination obvious.
    for _ in 0..p {
        if x == r {
            return true;
        }
        x = x * g % p;
        if x == 1 {
            break;
        }
    }
    false
}

/// A config string in an error message, quoted and escaped (it is never key material).
fn quoted(s: &str) -> String {
    format!("{s:?}")
}

/// Test keys (`tests/keys/`, test-only) and token minting, shared by the jwt unit tests.
#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
pub(crate) mod test_support {
    use super::*;
    use crate::jwt::b64;
    use ed25519_dalek::pkcs8::DecodePrivateKey as _;
    use p256::ecdsa::signature::Signer as _;
    use std::sync::OnceLock;

    pub(crate) const JWKS: &str = include_str!("../../tests/keys/jwks.json");
    pub(crate) const RSA_PRIVATE: &str = include_str!("../../tests/keys/rsa1.private.pem");
    pub(crate) const RSA_PUBLIC: &str = include_str!("../../tests/keys/rsa1.public.pem");
    const EC256: &str = include_str!("../../tests/keys/ec256.private.pem");
    const EC384: &str = include_str!("../../tests/keys/ec384.private.pem");
    const EC521: &str = include_str!("../../tests/keys/ec521.private.pem");
    const ED1: &str = include_str!("../../tests/keys/ed1.private.pem");
    /// Secret for the HS384/HS512 test keys (64 bytes; HS384 uses the first 48).
    pub(crate) const LONG_SECRET: [u8; 64] = [7; 64];

    pub(crate) fn jwks_json() -> Value {
        serde_json::from_str(JWKS).unwrap()
    }

    /// The committed test keys as one set. It mixes the HMAC key with public keys, which
    /// [`read_jwks`] refuses for a provider, so it is assembled key by key through the real
    /// reader.
    pub(crate) fn test_keys() -> KeySet {
        let keys = jwks_json()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| jwk(k.clone()))
            .collect();
        KeySet::from_keys(keys)
    }

    /// The committed public keys only (without `hs1`): a set a provider may hold.
    pub(crate) fn public_jwks_json() -> Value {
        let mut doc = jwks_json();
        doc["keys"]
            .as_array_mut()
            .unwrap()
            .retain(|k| k["kty"] != "oct");
        doc
    }

    pub(crate) fn key(kid: &str) -> Jwk {
        test_keys().candidates(Some(kid)).next().unwrap().clone()
    }

    /// Reads one JWK, panicking with the errors if it is refused.
    pub(crate) fn jwk(value: Value) -> Jwk {
        let mut cx = Ctx::default();
        let key = read_jwk(&mut cx, &value, "k");
        assert_eq!(cx.into_errors(), vec![]);
        key.unwrap()
    }

    /// The test RSA key with another pinned algorithm.
    pub(crate) fn rsa_with(alg: Algorithm) -> Jwk {
        let mut v = jwks_json()["keys"][0].clone();
        v["alg"] = Value::from(alg.name());
        jwk(v)
    }

    pub(crate) fn hmac_with(alg: Algorithm) -> Jwk {
        let len = if alg == Algorithm::HS384 { 48 } else { 64 };
        jwk(serde_json::json!({
            "kty": "oct", "alg": alg.name(), "k": b64::encode(&LONG_SECRET[..len])
        }))
    }

    pub(crate) fn hs1_secret() -> Vec<u8> {
        b64::decode(jwks_json()["keys"][5]["k"].as_str().unwrap()).unwrap()
    }

    fn rsa_private() -> &'static rsa::PrivateKey {
        static KEY: OnceLock<rsa::PrivateKey> = OnceLock::new();
        KEY.get_or_init(|| rsa::PrivateKey::from_pkcs8_pem(RSA_PRIVATE).unwrap())
    }

    pub(crate) fn hmac(alg: Algorithm, secret: &[u8], input: &[u8]) -> Vec<u8> {
        fn run<M: Mac + KeyInit>(secret: &[u8], input: &[u8]) -> Vec<u8> {
            let mut mac = <M as KeyInit>::new_from_slice(secret).unwrap();
            mac.update(input);
            mac.finalize().into_bytes().to_vec()
        }
        match alg {
            Algorithm::HS256 => run::<Hmac<Sha256>>(secret, input),
            Algorithm::HS384 => run::<Hmac<Sha384>>(secret, input),
            Algorithm::HS512 => run::<Hmac<Sha512>>(secret, input),
            other => panic!("{other} is not HMAC"),
        }
    }

    /// Signs with the test key of `alg`'s family (`hs1` for HS256, `LONG_SECRET` for HS384/512).
    pub(crate) fn sign(alg: Algorithm, input: &[u8]) -> Vec<u8> {
        use Algorithm as A;
        let rsa = rsa_private();
        match alg {
            A::HS256 => hmac(alg, &hs1_secret(), input),
            A::HS384 => hmac(alg, &LONG_SECRET[..48], input),
            A::HS512 => hmac(alg, &LONG_SECRET, input),
            A::RS256 => rsa.pkcs1v15_sign::<Sha256>(input).unwrap(),
            A::RS384 => rsa.pkcs1v15_sign::<Sha384>(input).unwrap(),
            A::RS512 => rsa.pkcs1v15_sign::<Sha512>(input).unwrap(),
            A::PS256 => rsa.pss_sign::<Sha256>(input).unwrap(),
            A::PS384 => rsa.pss_sign::<Sha384>(input).unwrap(),
            A::PS512 => rsa.pss_sign::<Sha512>(input).unwrap(),
            A::ES256 => {
                let sk = p256::ecdsa::SigningKey::from_pkcs8_pem(EC256).unwrap();
                let sig: p256::ecdsa::Signature = sk.sign(input);
                sig.to_bytes().to_vec()
            }
            A::ES384 => {
                let sk = p384::ecdsa::SigningKey::from_pkcs8_pem(EC384).unwrap();
                let sig: p384::ecdsa::Signature = sk.sign(input);
                sig.to_bytes().to_vec()
            }
            A::ES512 => {
                let sk = p521::ecdsa::SigningKey::from_pkcs8_pem(EC521).unwrap();
                let sig: p521::ecdsa::Signature = sk.sign(input);
                sig.to_bytes().to_vec()
            }
            A::EdDSA => {
                let sk = ed25519_dalek::SigningKey::from_pkcs8_pem(ED1).unwrap();
                sk.sign(input).to_bytes().to_vec()
            }
        }
    }

    /// The same ES256 signature, DER-encoded (as JWS must not carry it).
    pub(crate) fn es256_der(input: &[u8]) -> Vec<u8> {
        let sk = p256::ecdsa::SigningKey::from_pkcs8_pem(EC256).unwrap();
        let sig: p256::ecdsa::Signature = sk.sign(input);
        sig.to_der().as_bytes().to_vec()
    }

    /// A compact JWS over `header` (JSON text) and `payload`, signed with `sig(input)`.
    pub(crate) fn token_with(
        header: &str,
        payload: &[u8],
        sig: impl FnOnce(&[u8]) -> Vec<u8>,
    ) -> String {
        let input = format!("{}.{}", b64::encode(header), b64::encode(payload));
        let signature = sig(input.as_bytes());
        format!("{input}.{}", b64::encode(signature))
    }

    /// A compact JWS signed with the test key of `alg`.
    pub(crate) fn token(header: &str, payload: &[u8], alg: Algorithm) -> String {
        token_with(header, payload, |input| sign(alg, input))
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests {
    use super::test_support::*;
    use super::*;
    use serde_json::json;

    /// Reads one JWK; returns it or the error texts.
    fn read(value: Value) -> Result<Jwk, Vec<String>> {
        let mut cx = Ctx::default();
        let key = read_jwk(&mut cx, &value, "providers.corp.local_jwks.keys[1]");
        let errors: Vec<String> = cx.into_errors().iter().map(|e| e.to_string()).collect();
        match key {
            Some(k) if errors.is_empty() => Ok(k),
            Some(_) => panic!("key returned despite errors: {errors:?}"),
            None => {
                assert!(!errors.is_empty(), "refused without an error");
                Err(errors)
            }
        }
    }

    /// Asserts the JWK is refused with an error containing `needle`.
    #[track_caller]
    fn refused(value: Value, needle: &str) {
        match read(value) {
            Ok(k) => panic!("accepted {k:?}; expected an error with {needle:?}"),
            Err(errors) => assert!(
                errors.iter().any(|e| e.contains(needle)),
                "{errors:?} does not mention {needle:?}"
            ),
        }
    }

    fn rsa_json() -> Value {
        jwks_json()["keys"][0].clone()
    }

    fn ec_json(i: usize) -> Value {
        jwks_json()["keys"][i].clone()
    }

    fn ed_json() -> Value {
        jwks_json()["keys"][4].clone()
    }

    fn without(mut v: Value, key: &str) -> Value {
        v.as_object_mut().unwrap().remove(key);
        v
    }

    fn with(mut v: Value, key: &str, value: Value) -> Value {
        v[key] = value;
        v
    }

    fn oct(len: usize, alg: Option<&str>) -> Value {
        let mut v = json!({"kty": "oct", "k": b64::encode(vec![0x5a; len])});
        if let Some(alg) = alg {
            v["alg"] = json!(alg);
        }
        v
    }

    #[test]
    fn the_test_key_set_reads_cleanly() {
        let keys = test_keys();
        assert_eq!(keys.len(), 6);
        let summary: Vec<(Option<&str>, Algorithm, &str)> = keys
            .iter()
            .map(|k| (k.kid.as_deref(), k.alg, k.kty()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (Some("rsa1"), Algorithm::RS256, "RSA"),
                (Some("ec256"), Algorithm::ES256, "EC"),
                (Some("ec384"), Algorithm::ES384, "EC"),
                (Some("ec521"), Algorithm::ES512, "EC"),
                (Some("ed1"), Algorithm::EdDSA, "OKP"),
                (Some("hs1"), Algorithm::HS256, "oct"),
            ]
        );
        assert!(key("hs1").is_symmetric());
        assert!(!key("rsa1").is_symmetric());
    }

    #[test]
    fn every_algorithm_verifies_and_detects_tampering() {
        use Algorithm as A;
        let keys: Vec<Jwk> = vec![
            key("hs1"),
            hmac_with(A::HS384),
            hmac_with(A::HS512),
            key("rsa1"),
            rsa_with(A::RS384),
            rsa_with(A::RS512),
            rsa_with(A::PS256),
            rsa_with(A::PS384),
            rsa_with(A::PS512),
            key("ec256"),
            key("ec384"),
            key("ec521"),
            key("ed1"),
        ];
        for k in &keys {
            let input = b"eyJhbGciOiJ4In0.eyJzdWIiOiJhIn0";
            let sig = sign(k.alg, input);
            assert_eq!(k.verify(input, &sig), Ok(()), "{:?}", k.alg);
            assert_eq!(
                k.verify(b"eyJhbGciOiJ4In0.eyJzdWIiOiJiIn0", &sig),
                Err(JwtError::BadSignature),
                "{:?} tampered input",
                k.alg
            );
            let mut flipped = sig.clone();
            if let Some(last) = flipped.last_mut() {
                *last ^= 1;
            }
            assert_eq!(k.verify(input, &flipped), Err(JwtError::BadSignature));
            assert_eq!(k.verify(input, &[]), Err(JwtError::BadSignature));
            let mut longer = sig.clone();
            longer.push(0);
            assert_eq!(k.verify(input, &longer), Err(JwtError::BadSignature));
            assert_eq!(
                k.verify(input, sig.get(..sig.len() - 1).unwrap()),
                Err(JwtError::BadSignature)
            );
        }
    }

    #[test]
    fn a_key_repinned_to_another_family_refuses() {
        let mut k = key("rsa1");
        let input = b"a.b";
        k.alg = Algorithm::HS256;
        let forged = hmac(Algorithm::HS256, RSA_PUBLIC.as_bytes(), input);
        assert_eq!(k.verify(input, &forged), Err(JwtError::AlgMismatch));
        let mut k = key("hs1");
        k.alg = Algorithm::HS512;
        assert_eq!(k.verify(input, &[0; 64]), Err(JwtError::AlgMismatch));
        let mut k = key("ec256");
        k.alg = Algorithm::ES384;
        assert_eq!(k.verify(input, &[1; 96]), Err(JwtError::AlgMismatch));
    }

    #[test]
    fn ecdsa_accepts_only_fixed_size_nonzero_r_and_s() {
        let k = key("ec256");
        let input = b"header.payload";
        // DER-encoded signatures (what OpenSSL and Java produce) are not JWS.
        assert_eq!(
            k.verify(input, &es256_der(input)),
            Err(JwtError::BadSignature)
        );
        let good = sign(Algorithm::ES256, input);
        let (r, s) = good.split_at(32);
        let zero = [0u8; 32];
        for sig in [
            [zero, zero].concat(),
            [r, &zero].concat(),
            [&zero, s].concat(),
            vec![0xff; 64], // r, s >= n
        ] {
            assert_eq!(k.verify(input, &sig), Err(JwtError::BadSignature));
        }
        assert_eq!(k.verify(input, &good), Ok(()));
    }

    #[test]
    fn keys_without_alg_are_pinned_by_type() {
        let pins = [
            (without(rsa_json(), "alg"), Algorithm::RS256),
            (without(ec_json(1), "alg"), Algorithm::ES256),
            (without(ec_json(2), "alg"), Algorithm::ES384),
            (without(ec_json(3), "alg"), Algorithm::ES512),
            (without(ed_json(), "alg"), Algorithm::EdDSA),
            (oct(32, None), Algorithm::HS256),
        ];
        for (v, alg) in pins {
            assert_eq!(read(v).unwrap().alg, alg);
        }
        // Other algorithms need an explicit alg.
        assert_eq!(read(oct(64, Some("HS512"))).unwrap().alg, Algorithm::HS512);
        let ps = with(rsa_json(), "alg", json!("PS256"));
        assert_eq!(read(ps).unwrap().alg, Algorithm::PS256);
    }

    #[test]
    fn alg_must_fit_the_key() {
        for (v, alg) in [
            (rsa_json(), "HS256"),
            (rsa_json(), "ES256"),
            (rsa_json(), "EdDSA"),
            (ec_json(1), "ES384"),
            (ec_json(1), "ES512"),
            (ec_json(2), "ES256"),
            (ec_json(3), "ES384"),
            (ec_json(1), "RS256"),
            (ec_json(1), "HS256"),
            (ed_json(), "ES256"),
            (ed_json(), "HS256"),
            (oct(64, None), "RS256"),
            (oct(64, None), "PS256"),
            (oct(64, None), "ES256"),
            (oct(64, None), "EdDSA"),
        ] {
            refused(with(v, "alg", json!(alg)), "cannot be used with");
        }
        for alg in [
            "ES521", "ES224", "A256GCM", "A256KW", "none", "RSA1_5", "hs256",
        ] {
            refused(
                with(oct(64, None), "alg", json!(alg)),
                "unsupported signature algorithm",
            );
        }
        refused(
            with(rsa_json(), "alg", json!(256)),
            "keys[1].alg: expected a string",
        );
    }

    #[test]
    fn errors_carry_the_json_path() {
        let v = with(rsa_json(), "n", json!("AQAB="));
        assert_eq!(
            read(v).unwrap_err(),
            vec![
                "providers.corp.local_jwks.keys[1].n: not base64url (unpadded, URL-safe alphabet, canonical)"
            ]
        );
    }

    #[test]
    fn base64url_in_keys_is_strict() {
        let n = rsa_json()["n"].as_str().unwrap().to_owned();
        for bad in [
            format!("{n}="),
            n.replace('-', "+").replace('_', "/"),
            format!(" {n}"),
            format!("{n}\n"),
        ] {
            if bad != n {
                refused(
                    with(rsa_json(), "n", json!(bad)),
                    "keys[1].n: not base64url",
                );
            }
        }
        // Three characters carry 18 bits for 2 bytes: the last 2 bits must be zero.
        refused(
            with(rsa_json(), "e", json!("AQB")),
            "keys[1].e: not base64url",
        );
        refused(
            with(ed_json(), "x", json!(123)),
            "keys[1].x: expected a string",
        );
        // A 32-byte key is 43 characters; setting an unused low bit of the last one.
        const ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let k = oct(32, None)["k"].as_str().unwrap().to_owned();
        let (head, last) = k.split_at(k.len() - 1);
        let value = ALPHABET.find(last).unwrap();
        assert_eq!(value & 3, 0);
        let non_canonical = format!("{head}{}", &ALPHABET[value + 1..value + 2]);
        refused(
            with(oct(32, None), "k", json!(non_canonical)),
            "keys[1].k: not base64url",
        );
    }

    #[test]
    fn rsa_keys_are_checked() {
        // Private keys do not belong in the configuration.
        for member in ["d", "p", "q", "dp", "dq", "qi", "oth"] {
            refused(
                with(rsa_json(), member, json!("AQAB")),
                "this is a private key",
            );
        }
        // Too small: a 1024-bit modulus (Wycheproof's keysize_too_small vector).
        let small = "rJBIp6T1YK-RtPyvYqFFlcucqewSAA_IReSFchE8qyiQrbARqRlXWkB2DR8j_pJQnIpYELbQWZC5Cd0PTGAU8rMbar2AW6zpmBbi7aQf17lUBdt8XI9M9rq7FPVQ1dDdUXm1SVH_9qqWhvMPR422SbfHBEzCAtzK0ANDRo6qz78";
        refused(
            with(rsa_json(), "n", json!(small)),
            "has 1024 bits; at least 2048",
        );
        // Too large: 8200 bits.
        let mut huge = vec![0xff; 1025];
        huge[0] = 0x01;
        refused(
            with(rsa_json(), "n", json!(b64::encode(&huge))),
            "at most 8192 are supported",
        );
        // Even modulus, bad exponents.
        let mut n = b64::decode(rsa_json()["n"].as_str().unwrap()).unwrap();
        *n.last_mut().unwrap() &= 0xfe;
        refused(
            with(rsa_json(), "n", json!(b64::encode(&n))),
            "not a usable RSA public key",
        );
        for e in ["AQ", "Ag", "AQAA", "AA"] {
            refused(with(rsa_json(), "e", json!(e)), "keys[1]");
        }
        refused(
            with(rsa_json(), "e", json!(b64::encode([1u8; 9]))),
            "public exponent is out of range",
        );
        refused(
            without(rsa_json(), "n"),
            "keys[1].n: required field is missing",
        );
        refused(
            without(rsa_json(), "e"),
            "keys[1].e: required field is missing",
        );
        // EC members on an RSA key are unknown members.
        refused(
            with(rsa_json(), "crv", json!("P-256")),
            "keys[1].crv: unknown field",
        );
        // A leading zero octet is tolerated: same integer.
        let mut padded = vec![0u8];
        padded.extend(b64::decode(rsa_json()["n"].as_str().unwrap()).unwrap());
        let k = read(with(rsa_json(), "n", json!(b64::encode(&padded)))).unwrap();
        let sig = sign(Algorithm::RS256, b"x.y");
        assert_eq!(k.verify(b"x.y", &sig), Ok(()));
    }

    #[test]
    fn roca_keys_are_refused() {
        // Wycheproof's jws_rsa_roca_key modulus.
        let roca = "AanFpofbj7KjD4Lf-N2hVMKR7yewSyXhhbirIMTGpfYEhZ_lnt5UoK98DnKIgArXGTu3MaW_HhFw16HGaTDUHqPrId7fe4r11CqRw09yBFuW79V8sYIwHdzCaWflUI6auImYbVfoN9_nD5n8N8SY9DwXw7mwZM9wREPXoDPgOoIWl6q_MPsp7n0zs3Z5ZaiQWOOzl1S9OhwAfSiiOwz6efnXEaxuTEtPd7BjSx7NaFka8Dx9U7YqXy2RFj1O9PjyaDGuRh7YXsX3iMUSP_wSyHQg_c_qHRtKUsNSGCT7OZg0hzm2KphtjnayKJvC64vAbROBR4Ubg6Bxg9IQVZ-QYyE";
        refused(with(rsa_json(), "n", json!(roca)), "ROCA");
        assert!(!has_roca_fingerprint(
            &b64::decode(rsa_json()["n"].as_str().unwrap()).unwrap()
        ));
        assert!(is_power_of_65537(1, 3) && !is_power_of_65537(0, 3));
    }

    #[test]
    fn ec_keys_are_checked() {
        refused(
            with(ec_json(1), "d", json!("AQAB")),
            "this is a private key",
        );
        refused(
            with(ec_json(1), "crv", json!("secp256k1")),
            "unsupported curve",
        );
        refused(
            with(ec_json(1), "crv", json!("P-384")),
            "keys[1].x: a P-384 coordinate is 48 bytes, found 32",
        );
        refused(
            without(ec_json(1), "y"),
            "keys[1].y: required field is missing",
        );
        refused(
            without(ec_json(1), "crv"),
            "keys[1].crv: required field is missing",
        );
        // Off the curve: change y.
        let mut y = b64::decode(ec_json(1)["y"].as_str().unwrap()).unwrap();
        y[31] ^= 1;
        refused(
            with(ec_json(1), "y", json!(b64::encode(&y))),
            "not on the curve P-256",
        );
        // A coordinate >= p is not a field element.
        refused(
            with(ec_json(1), "x", json!(b64::encode([0xff; 32]))),
            "not on the curve",
        );
        // Compressed or leading-zero-stripped coordinates have the wrong length.
        let x = b64::decode(ec_json(3)["x"].as_str().unwrap()).unwrap();
        refused(
            with(ec_json(3), "x", json!(b64::encode(&x[1..]))),
            "a P-521 coordinate is 66 bytes, found 65",
        );
        refused(
            with(ec_json(1), "n", json!("AQAB")),
            "keys[1].n: unknown field",
        );
    }

    #[test]
    fn okp_keys_are_checked() {
        refused(with(ed_json(), "d", json!("AQAB")), "this is a private key");
        for crv in ["Ed448", "X25519", "X448", "ed25519"] {
            refused(with(ed_json(), "crv", json!(crv)), "unsupported curve");
        }
        refused(
            with(ed_json(), "x", json!(b64::encode([9u8; 31]))),
            "an Ed25519 public key is 32 bytes, found 31",
        );
        // The identity (y = 1) has small order.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        refused(
            with(ed_json(), "x", json!(b64::encode(identity))),
            "small order",
        );
        // y = 2 is not the y of any curve point.
        let mut not_a_point = [0u8; 32];
        not_a_point[0] = 2;
        refused(
            with(ed_json(), "x", json!(b64::encode(not_a_point))),
            "not a valid Ed25519 public key",
        );
    }

    #[test]
    fn hmac_keys_are_checked() {
        refused(json!({"kty": "oct", "k": ""}), "the HMAC key is empty");
        refused(oct(31, None), "at least 32 bytes (RFC 7518 §3.2), found 31");
        refused(oct(47, Some("HS384")), "at least 48 bytes");
        refused(oct(63, Some("HS512")), "at least 64 bytes");
        assert!(read(oct(32, None)).is_ok());
        assert!(read(oct(48, Some("HS384"))).is_ok());
        assert!(read(oct(100, Some("HS512"))).is_ok());
        refused(
            json!({"kty": "oct"}),
            "keys[1].k: required field is missing",
        );
    }

    #[test]
    fn use_key_ops_and_certificate_members() {
        refused(with(rsa_json(), "use", json!("enc")), "only \"sig\" keys");
        refused(
            with(rsa_json(), "key_ops", json!(["encrypt"])),
            "does not include \"verify\"",
        );
        refused(
            with(rsa_json(), "key_ops", json!([])),
            "does not include \"verify\"",
        );
        refused(
            with(rsa_json(), "key_ops", json!("verify")),
            "expected an array",
        );
        assert!(read(with(rsa_json(), "key_ops", json!(["sign", "verify"]))).is_ok());
        let mut v = rsa_json();
        v["x5c"] = json!(["MIIB"]);
        v["x5t"] = json!("abc");
        v["x5t#S256"] = json!("abc");
        v["x5u"] = json!("https://example.com/cert.pem");
        assert!(read(v).is_ok());
        refused(
            with(rsa_json(), "x5c", json!("MIIB")),
            "keys[1].x5c: expected an array",
        );
        refused(
            with(rsa_json(), "ext", json!(true)),
            "keys[1].ext: unknown field",
        );
        refused(
            with(rsa_json(), "kid", json!("")),
            "keys[1].kid: must not be empty",
        );
    }

    #[test]
    fn kty_is_required_and_known() {
        refused(
            without(rsa_json(), "kty"),
            "keys[1].kty: required field is missing",
        );
        refused(
            with(rsa_json(), "kty", json!("rsa")),
            "unsupported key type \"rsa\"",
        );
        refused(with(rsa_json(), "kty", json!(["RSA"])), "expected a string");
        refused(json!("RSA"), "keys[1]: expected an object");
        // An unknown kty yields one error, not one per member.
        let errors = read(with(rsa_json(), "kty", json!("EC2"))).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
    }

    #[test]
    fn error_messages_never_contain_key_material() {
        let secret = b64::encode([0x41; 31]);
        let errors = read(json!({"kty": "oct", "k": secret.clone()})).unwrap_err();
        assert!(errors.iter().all(|e| !e.contains(&secret)));
        let debug = format!("{:?}", key("hs1"));
        let k = jwks_json()["keys"][5]["k"].as_str().unwrap().to_owned();
        assert!(!debug.contains(&k), "{debug}");
        assert!(debug.contains("hs1") && debug.contains("HS256"));
    }

    #[test]
    fn secret_and_public_keys_do_not_mix_in_one_set() {
        let (_, errors) = read_set(jwks_json());
        assert_eq!(
            errors,
            vec![
                "providers.corp.local_jwks.keys: a key set must not mix secret (oct) keys with public keys; use two providers"
            ]
        );
        assert!(read_set(public_jwks_json()).1.is_empty());
        assert!(
            read_set(json!({"keys": [jwks_json()["keys"][5].clone()]}))
                .1
                .is_empty()
        );
    }

    fn read_set(value: Value) -> (KeySet, Vec<String>) {
        let mut cx = Ctx::default();
        let set = read_jwks(&mut cx, &value, "providers.corp.local_jwks");
        (
            set,
            cx.into_errors().iter().map(|e| e.to_string()).collect(),
        )
    }

    #[test]
    fn key_sets_report_each_bad_key_and_keep_the_rest() {
        let mut doc = public_jwks_json();
        doc["keys"][1]["y"] = json!("AQAB=");
        doc["keys"][4]["use"] = json!("enc");
        let (set, errors) = read_set(doc);
        assert_eq!(set.len(), 3);
        assert_eq!(
            errors,
            vec![
                "providers.corp.local_jwks.keys[1].y: not base64url (unpadded, URL-safe alphabet, canonical)",
                "providers.corp.local_jwks.keys[4].use: key use is \"enc\"; only \"sig\" keys can verify tokens",
            ]
        );
    }

    #[test]
    fn key_set_shape_is_strict() {
        assert_eq!(
            read_set(json!([])).1,
            vec!["providers.corp.local_jwks: expected an object, found an array"]
        );
        assert_eq!(
            read_set(json!({})).1,
            vec!["providers.corp.local_jwks.keys: required field is missing"]
        );
        assert_eq!(
            read_set(json!({"keys": []})).1,
            vec!["providers.corp.local_jwks.keys: a key set needs at least one key"]
        );
        assert_eq!(
            read_set(json!({"keys": {}})).1,
            vec!["providers.corp.local_jwks.keys: expected an array, found an object"]
        );
        let mut doc = public_jwks_json();
        doc["extra"] = json!(1);
        assert_eq!(
            read_set(doc).1,
            vec!["providers.corp.local_jwks.extra: unknown field (expected one of: keys)"]
        );
    }

    #[test]
    fn duplicate_kids_are_refused_unless_the_algorithms_differ() {
        let first = jwks_json()["keys"][5].clone();
        let mut second = oct(32, None);
        second["kid"] = json!("hs1");
        let (set, errors) = read_set(json!({"keys": [first.clone(), second]}));
        assert_eq!(set.len(), 1);
        assert_eq!(
            errors,
            vec![
                "providers.corp.local_jwks.keys[1].kid: \"hs1\" is also the kid of providers.corp.local_jwks.keys[0] for the same algorithm HS256; kids must tell keys apart"
            ]
        );
        // Same kid, different pinned algorithms: allowed (RFC 7517 §4.5).
        let mut ps = rsa_json();
        ps["alg"] = json!("PS256");
        let (set, errors) = read_set(json!({"keys": [rsa_json(), ps]}));
        assert_eq!(errors, Vec::<String>::new());
        let algs: Vec<Algorithm> = set.candidates(Some("rsa1")).map(|k| k.alg).collect();
        assert_eq!(algs, vec![Algorithm::RS256, Algorithm::PS256]);
    }

    #[test]
    fn candidates_follow_the_kid() {
        let mut no_kid = oct(32, None);
        no_kid.as_object_mut().unwrap().remove("kid");
        let mut keys: Vec<Jwk> = test_keys().iter().cloned().collect();
        keys.push(jwk(no_kid));
        let set = KeySet::from_keys(keys);
        let kids = |kid: Option<&str>| -> Vec<Option<String>> {
            set.candidates(kid).map(|k| k.kid.clone()).collect()
        };
        assert_eq!(kids(Some("ec384")), vec![Some("ec384".to_owned())]);
        assert_eq!(kids(Some("nope")), Vec::<Option<String>>::new());
        assert_eq!(kids(Some("")), Vec::<Option<String>>::new());
        assert_eq!(kids(None).len(), 7);
        assert!(KeySet::default().is_empty());
        assert_eq!(KeySet::from_keys(vec![key("ed1")]).len(), 1);
    }
}
