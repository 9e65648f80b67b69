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
/// §4.5), since the algorithm then tells them apart. A set may mix HMAC and public keys: each
/// key only ever verifies its own algorithm.
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

#[cfg(test)]
mod tests {}
