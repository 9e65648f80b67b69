//! JSON Web Tokens: a thin, strict JWS layer over RustCrypto primitives, and claim checks.
//!
//! The algorithm is always pinned by the key ([`jwk::Jwk::alg`]); the token's `alg` header
//! only has to agree with it. Parsing refuses everything a verifier could be tricked by before
//! any signature arithmetic runs.

pub mod alg;
pub mod authenticate;
pub mod b64;
pub mod claims;
pub mod jwk;
pub mod jws;

pub use alg::Algorithm;

/// Why a token was refused. The `Display` text is safe to send to the client (it never
/// contains the token or key material).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url segments, bad base64url (incl. non-canonical), bad JSON, …
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    /// `alg` is `none` in any spelling.
    #[error("unsigned tokens (alg none) are not accepted")]
    AlgNone,
    /// `alg` is not one the filter knows.
    #[error("token algorithm is not supported")]
    UnsupportedAlg,
    /// A header that could point the verifier at another key (`jwk`, `jku`, `x5u`, `x5c`).
    #[error("token header parameter {0} is not accepted")]
    ForbiddenHeader(&'static str),
    /// A `crit` header (we understand no extensions, so every critical one is unknown).
    #[error("token has critical header parameters that are not understood")]
    UnknownCrit,
    /// No configured key has the token's `kid` (or, without `kid`, none fits its `alg`).
    #[error("no key matches the token")]
    UnknownKid,
    /// The introspection endpoint says the token is not active (RFC 7662 `active: false`).
    #[error("token is not active")]
    Inactive,
    /// The provider fetches its keys and has none yet (or could not fetch them in time).
    #[error("the issuer's signing keys are not available")]
    KeysUnavailable,
    /// The matching key is pinned to another algorithm than the token's `alg`.
    #[error("token algorithm does not match its key")]
    AlgMismatch,
    /// The signature does not verify (or has the wrong length or encoding).
    #[error("token signature is invalid")]
    BadSignature,
    /// `exp` is in the past (beyond the clock skew).
    #[error("token has expired")]
    Expired,
    /// `nbf` is in the future (beyond the clock skew).
    #[error("token is not valid yet")]
    NotYetValid,
    /// `iss` is not the provider's issuer.
    #[error("token issuer is not accepted")]
    BadIssuer,
    /// No `aud` is one of the provider's audiences.
    #[error("token audience is not accepted")]
    BadAudience,
    /// `exp` is missing although the provider requires it.
    #[error("token has no expiration time")]
    MissingExpiration,
    /// `exp - iat` (or `exp - now`) is longer than the provider allows.
    #[error("token lifetime is longer than allowed")]
    LifetimeTooLong,
    /// A claim the provider requires is absent.
    #[error("token lacks a required claim")]
    MissingClaim,
}
