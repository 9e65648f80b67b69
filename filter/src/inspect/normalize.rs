//! The working copy the rules read: evasions undone, so that one pattern covers the encoded,
//! entity-escaped, full-width and null-split spellings of an attack.
//!
//! The caller has decoded a value once (as the application will). Attackers encode once more
//! (`%2527` → `%27` → `'`) or use forms that a browser, a database or a Windows file API folds
//! back to ASCII. A value with no `%`, `&`, null byte or non-ASCII byte needs none of this and is
//! borrowed as it is; case is handled by the patterns (`(?i)`), SQL comments and `+` by the SQL
//! whitespace of the patterns.

use std::borrow::Cow;

/// Percent-decoding rounds after the caller's: `%252e` (`%2e` after the caller) and `%%32%65`.
const PERCENT_ROUNDS: usize = 3;
/// Entity-decoding rounds: `&amp;lt;` → `&lt;` → `<`.
const ENTITY_ROUNDS: usize = 2;

/// A normalised value.
#[derive(Debug)]
pub(super) struct Work<'a> {
    /// The text the rules match.
    pub bytes: Cow<'a, [u8]>,
    /// The value held a null byte (raw, percent-encoded or as an entity); the copy has it removed.
    pub had_nul: bool,
}

/// Builds the working copy of `value`.
pub(super) fn normalize(value: &[u8]) -> Work<'_> {
    let needs_work = value
        .iter()
        .any(|&b| matches!(b, b'%' | b'&' | 0 | 0x80..=0xff));
    if !needs_work {
        return Work {
            bytes: Cow::Borrowed(value),
            had_nul: false,
        };
    }
    let mut bytes = value.to_vec();
    for _ in 0..PERCENT_ROUNDS {
        if !bytes.contains(&b'%') {
            break;
        }
        let decoded = percent_decode(&bytes);
        if decoded == bytes {
            break;
        }
        bytes = decoded;
    }
    for _ in 0..ENTITY_ROUNDS {
        if !bytes.contains(&b'&') {
            break;
        }
        let decoded = entity_decode(&bytes);
        if decoded == bytes {
            break;
        }
        bytes = decoded;
    }
    if bytes.iter().any(|&b| b >= 0x80) {
        bytes = fold_unicode(&bytes);
    }
    let had_nul = bytes.contains(&0);
    if had_nul {
        bytes.retain(|&b| b != 0);
    }
    Work {
        bytes: Cow::Owned(bytes),
        had_nul,
    }
}

/// Decodes an `application/x-www-form-urlencoded` name or value (or, without `plus_is_space`, a
/// path) into `out`: `%XX` → byte, `+` → space; malformed escapes stay as they are.
pub(super) fn form_decode_into(raw: &[u8], plus_is_space: bool, out: &mut Vec<u8>) {
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        match b {
            b'%' => match hex_byte(raw.get(i + 1), raw.get(i + 2)) {
                Some(decoded) => {
                    out.push(decoded);
                    i += 3;
                }
                None => {
                    out.push(b);
                    i += 1;
                }
            },
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
}

fn hex_digit(b: Option<&u8>) -> Option<u8> {
    let b = *b?;
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn hex_byte(hi: Option<&u8>, lo: Option<&u8>) -> Option<u8> {
    Some(hex_digit(hi)? << 4 | hex_digit(lo)?)
}

/// One round of `%XX` and IIS's `%uXXXX`; malformed escapes stay.
fn percent_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while let Some(&b) = input.get(i) {
        if b == b'%' {
            if let Some(decoded) = hex_byte(input.get(i + 1), input.get(i + 2)) {
                out.push(decoded);
                i += 3;
                continue;
            }
            if matches!(input.get(i + 1), Some(b'u' | b'U'))
                && let Some(c) = unicode_escape(input.get(i + 2..i + 6))
            {
                push_char(&mut out, c);
                i += 6;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    out
}

fn unicode_escape(digits: Option<&[u8]>) -> Option<char> {
    let mut value = 0u32;
    for d in digits? {
        value = value << 4 | u32::from(hex_digit(Some(d))?);
    }
    char::from_u32(value)
}

fn push_char(out: &mut Vec<u8>, c: char) {
    let mut buffer = [0u8; 4];
    out.extend_from_slice(c.encode_utf8(&mut buffer).as_bytes());
}

/// Named entities that decode to ASCII an attack can use (HTML5 names, case-insensitive).
const NAMED: &[(&[u8], u8)] = &[
    (b"lt", b'<'),
    (b"gt", b'>'),
    (b"quot", b'"'),
    (b"apos", b'\''),
    (b"amp", b'&'),
    (b"colon", b':'),
    (b"tab", b'\t'),
    (b"newline", b'\n'),
    (b"lpar", b'('),
    (b"rpar", b')'),
    (b"sol", b'/'),
    (b"bsol", b'\\'),
    (b"semi", b';'),
    (b"equals", b'='),
    (b"period", b'.'),
    (b"comma", b','),
    (b"excl", b'!'),
    (b"num", b'#'),
    (b"percnt", b'%'),
    (b"grave", b'`'),
    (b"lsqb", b'['),
    (b"rsqb", b']'),
    (b"lcub", b'{'),
    (b"rcub", b'}'),
    (b"nbsp", b' '),
    (b"plus", b'+'),
    (b"dollar", b'$'),
    (b"ast", b'*'),
    (b"lowbar", b'_'),
    (b"hyphen", b'-'),
    (b"quest", b'?'),
    (b"vert", b'|'),
    (b"verbar", b'|'),
];

/// Longest numeric entity read (`&#0000106` is a real evasion); longer runs stay as they are.
const MAX_ENTITY_DIGITS: usize = 10;

/// One round of HTML entity decoding: `&#NN;`, `&#xHH;` (the `;` optional, as browsers accept)
/// and the named entities of [`NAMED`].
fn entity_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while let Some(&b) = input.get(i) {
        if b == b'&'
            && let Some((decoded, used)) = entity_at(input.get(i + 1..).unwrap_or_default())
        {
            out.extend_from_slice(&decoded);
            i += 1 + used;
            continue;
        }
        out.push(b);
        i += 1;
    }
    out
}

/// The entity after a `&`: its bytes and how many input bytes it took.
fn entity_at(rest: &[u8]) -> Option<(Vec<u8>, usize)> {
    if let Some(numeric) = rest.strip_prefix(b"#") {
        let (hex, digits_start) = match numeric.first() {
            Some(b'x' | b'X') => (true, 2),
            _ => (false, 1),
        };
        let digits = rest.get(digits_start..)?;
        let count = digits
            .iter()
            .take_while(|d| {
                if hex {
                    d.is_ascii_hexdigit()
                } else {
                    d.is_ascii_digit()
                }
            })
            .count();
        if count == 0 || count > MAX_ENTITY_DIGITS {
            return None;
        }
        let text = std::str::from_utf8(digits.get(..count)?).ok()?;
        let value = u32::from_str_radix(text, if hex { 16 } else { 10 }).ok()?;
        let c = char::from_u32(value)?;
        let mut used = digits_start + count;
        if digits.get(count) == Some(&b';') {
            used += 1;
        }
        let mut decoded = Vec::with_capacity(4);
        push_char(&mut decoded, c);
        return Some((decoded, used));
    }
    NAMED.iter().find_map(|(name, byte)| {
        let candidate = rest.get(..name.len())?;
        if !candidate.eq_ignore_ascii_case(name) {
            return None;
        }
        let used = if rest.get(name.len()) == Some(&b';') {
            name.len() + 1
        } else {
            name.len()
        };
        Some((vec![*byte], used))
    })
}

/// Folds what browsers, databases and Windows' best-fit mappings read as ASCII: overlong UTF-8
/// (`%c0%ae` is `.`), full-width forms (`＜script＞`), the ideographic space, and the slashes,
/// dots and angle brackets of other blocks.
fn fold_unicode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while let Some(&b) = input.get(i) {
        let b1 = input.get(i + 1).copied();
        let b2 = input.get(i + 2).copied();
        let cont = |x: Option<u8>| x.filter(|c| (0x80..=0xbf).contains(c));
        let (folded, used) = match (b, cont(b1), cont(b2)) {
            // Overlong two-byte forms of ASCII.
            (0xc0 | 0xc1, Some(c1), _) => (Some(((b & 0x1f) << 6) | (c1 & 0x3f)), 2),
            // Overlong three-byte forms of ASCII.
            (0xe0, Some(c1 @ 0x80..=0x81), Some(c2)) => (Some(((c1 & 0x3f) << 6) | (c2 & 0x3f)), 3),
            // Full-width U+FF01..U+FF3F and U+FF40..U+FF5E.
            (0xef, Some(0xbc), Some(c2 @ 0x81..=0xbf)) => (Some(c2 - 0x60), 3),
            (0xef, Some(0xbd), Some(c2 @ 0x80..=0x9e)) => (Some(c2 - 0x20), 3),
            // Small full stop, small less-than and greater-than.
            (0xef, Some(0xb9), Some(0x92)) => (Some(b'.'), 3),
            (0xef, Some(0xb9), Some(0xa4)) => (Some(b'<'), 3),
            (0xef, Some(0xb9), Some(0xa5)) => (Some(b'>'), 3),
            // Ideographic space.
            (0xe3, Some(0x80), Some(0x80)) => (Some(b' '), 3),
            // One dot leader, fraction slash, division slash, set minus.
            (0xe2, Some(0x80), Some(0xa4)) => (Some(b'.'), 3),
            (0xe2, Some(0x81), Some(0x84)) => (Some(b'/'), 3),
            (0xe2, Some(0x88), Some(0x95)) => (Some(b'/'), 3),
            (0xe2, Some(0x88), Some(0x96)) => (Some(b'\\'), 3),
            _ => (None, 1),
        };
        match folded {
            Some(ascii) if ascii < 0x80 => {
                out.push(ascii);
                i += used;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn norm(s: &[u8]) -> Vec<u8> {
        normalize(s).bytes.into_owned()
    }

    #[test]
    fn plain_values_are_borrowed() {
        assert!(matches!(
            normalize(b"O'Brien's order; 5 - 3 = 2").bytes,
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn encodings_are_undone() {
        assert_eq!(norm(b"%2527%20or%201=1"), b"' or 1=1");
        assert_eq!(norm(b"%%32%65%%32%65%%32%66"), b"../");
        assert_eq!(norm(b"%u003cscript"), b"<script");
        assert_eq!(norm(b"&#x3C;script&gt;"), b"<script>");
        assert_eq!(norm(b"&#0000106&#0000097va"), b"java");
        assert_eq!(norm(b"&amp;lt;b"), b"<b");
        assert_eq!(norm(b"jav&#x09;ascript&colon;"), b"jav\tascript:");
        assert_eq!(norm(b"..%c0%af..%c0%afetc"), b"../../etc");
        assert_eq!(norm("＜ｓｃｒｉｐｔ＞".as_bytes()), b"<script>");
        assert_eq!(norm("ＵＮＩＯＮ　ＳＥＬＥＣＴ".as_bytes()), b"UNION SELECT");
    }

    #[test]
    fn null_bytes_are_removed_and_remembered() {
        let work = normalize(b"<scr%00ipt>");
        assert_eq!(&*work.bytes, b"<script>");
        assert!(work.had_nul);
        assert!(!normalize(b"100%").had_nul);
    }

    #[test]
    fn malformed_escapes_stay() {
        assert_eq!(
            norm(b"100% & more &#; &#xZZ; %u12"),
            b"100% & more &#; &#xZZ; %u12"
        );
        assert_eq!(norm("café – naïve".as_bytes()), "café – naïve".as_bytes());
    }

    #[test]
    fn form_decoding() {
        let mut out = Vec::new();
        form_decode_into(b"a+b%27%zz", true, &mut out);
        assert_eq!(out, b"a b'%zz");
        out.clear();
        form_decode_into(b"a+b%2F", false, &mut out);
        assert_eq!(out, b"a+b/");
    }
}
