//! Strict base64url (RFC 4648 §5) as JOSE uses it (RFC 7515 §2): the URL-safe alphabet, no
//! padding, no whitespace, and canonical only.
//!
//! Canonical means the unused low bits of the last character are zero. Accepting other
//! encodings would let one token have several spellings that all verify (the signature covers
//! the text, not the bytes), which breaks replay caches and token-hash logging, and is a
//! classic parser-differential foothold; so both the token and the JWKs are held to it.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::fmt;

/// The input is not strict, canonical, unpadded base64url.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotBase64Url;

impl fmt::Display for NotBase64Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not base64url (unpadded, URL-safe alphabet, canonical)")
    }
}

impl std::error::Error for NotBase64Url {}

/// The exact decoded length of `len` base64url characters, or `None` for a length no
/// unpadded encoding has (`len % 4 == 1`).
pub fn decoded_len(len: usize) -> Option<usize> {
    let full = (len / 4).checked_mul(3)?;
    match len % 4 {
        0 => Some(full),
        2 => full.checked_add(1),
        3 => full.checked_add(2),
        _ => None,
    }
}

/// Decodes `s` into a new vector.
pub fn decode(s: &str) -> Result<Vec<u8>, NotBase64Url> {
    let mut out = Vec::new();
    decode_into(s, &mut out)?;
    Ok(out)
}

/// Decodes `s`, replacing the contents of `out` (whose capacity is reused, which keeps a
/// per-request buffer allocation-free). On error `out` is left empty.
pub fn decode_into(s: &str, out: &mut Vec<u8>) -> Result<(), NotBase64Url> {
    out.clear();
    let Some(len) = decoded_len(s.len()) else {
        return Err(NotBase64Url);
    };
    out.resize(len, 0);
    // The engine is configured for exactly our rules: URL-safe alphabet, padding refused
    // (`DecodePaddingMode::RequireNone`), non-zero trailing bits refused.
    match URL_SAFE_NO_PAD.decode_slice(s.as_bytes(), out.as_mut_slice()) {
        Ok(n) if n == len => Ok(()),
        _ => {
            out.clear();
            Err(NotBase64Url)
        }
    }
}

/// Encodes `bytes` as unpadded base64url (for the CLI and tests that mint tokens).
pub fn encode(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
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
    use proptest::prelude::*;

    #[test]
    fn decodes_valid_input() {
        assert_eq!(decode("").unwrap(), b"");
        assert_eq!(decode("Zg").unwrap(), b"f");
        assert_eq!(decode("Zm8").unwrap(), b"fo");
        assert_eq!(decode("Zm9v").unwrap(), b"foo");
        assert_eq!(decode("-_8").unwrap(), [0xfb, 0xff]);
        assert_eq!(decode("AQAB").unwrap(), [1, 0, 1]);
    }

    #[test]
    fn refuses_everything_not_strict() {
        for bad in [
            "Zg==",      // padding
            "Zm8=",      // padding
            "Zg=",       // partial padding
            "+/8",       // standard alphabet
            "Zm9v\n",    // whitespace
            " Zm9v",     // whitespace
            "Zm 9v",     // whitespace inside
            "Z",         // impossible length
            "Zm9vY",     // impossible length
            "Zh",        // non-zero trailing bits (canonical is "Zg")
            "Zm9",       // non-zero trailing bits (canonical is "Zm8")
            "AB",        // non-zero trailing bits (canonical is "AA")
            "Zm9v.",     // separator
            "Zm9v?",     // junk
            "Zm9\u{e9}", // non-ASCII
        ] {
            assert_eq!(decode(bad), Err(NotBase64Url), "{bad:?}");
        }
    }

    #[test]
    fn decode_into_reuses_and_clears_the_buffer() {
        let mut buf = Vec::with_capacity(64);
        decode_into("Zm9v", &mut buf).unwrap();
        assert_eq!(buf, b"foo");
        decode_into("Zg", &mut buf).unwrap();
        assert_eq!(buf, b"f");
        assert!(decode_into("Zh", &mut buf).is_err());
        assert!(buf.is_empty());
    }

    #[test]
    fn decoded_len_is_exact() {
        assert_eq!(decoded_len(0), Some(0));
        assert_eq!(decoded_len(1), None);
        assert_eq!(decoded_len(2), Some(1));
        assert_eq!(decoded_len(3), Some(2));
        assert_eq!(decoded_len(4), Some(3));
        assert_eq!(decoded_len(86), Some(64));
    }

    proptest! {
        #[test]
        fn round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let text = encode(&bytes);
            prop_assert_eq!(decode(&text).unwrap(), bytes);
        }

        #[test]
        fn only_the_canonical_text_decodes(text in "[A-Za-z0-9_-]{0,40}") {
            // Whatever decodes must re-encode to exactly the same text.
            if let Ok(bytes) = decode(&text) {
                prop_assert_eq!(encode(&bytes), text);
            }
        }
    }
}
