//! Path normalisation: one spelling per path before any route rule looks at it.
//!
//! A rule for `/admin` is worthless if `//admin`, `/x/../admin`, `/%61dmin` or `/x\..\admin`
//! reach the same handler upstream without matching it. [`normalize`] turns every spelling of a
//! path into one canonical string, and refuses the spellings that upstream servers read in
//! incompatible ways (so that no canonical form can be right for all of them). The semantics
//! follow Envoy's `normalize_path` + `merge_slashes` + `path_with_escaped_slashes_action` and
//! RFC 3986 §6.2.2, with the refusals a policy filter needs on top:
//!
//! - the path must start with `/`; `#`, `?` (the caller removes the query), raw control
//!   characters and raw non-ASCII characters are refused;
//! - escapes of unreserved characters (`ALPHA DIGIT - . _ ~`) are decoded, and so are those of
//!   the characters a segment may hold raw with the same meaning (`! $ & ' ( ) * + , = : @`);
//!   other escapes keep their meaning and get upper-case hex; a raw character that is not allowed in a path
//!   (space, `"`, `<`, `>`, `[`, `]`, `^`, `` ` ``, `{`, `|`, `}`) is percent-encoded, so raw and
//!   encoded spellings agree;
//! - escaped control characters, malformed escapes and escaped bytes that are not valid,
//!   shortest-form UTF-8 are refused; valid UTF-8 stays encoded;
//! - `%2F` and `%5C` follow [`EscapedSlashes`]; a raw `\` is a separator, as in WHATWG URLs;
//! - `;` parameters follow [`PathParameters`]; `%3B` is always refused: some servers split
//!   parameters before decoding and some after, so no reading of it is safe;
//! - repeated separators are merged and `.`/`..` segments resolved, never above the root;
//! - **double encoding**: a `%25` followed by two hex digits in the result (`%252F`, `%2561`,
//!   also when built from escapes such as `%25%32%66`) is refused. An upstream that decodes twice
//!   would read a different path from the one the rules saw, and a legitimate literal `%XX` in a
//!   path is rare. Every other escape left in the result decodes to a character that is data in
//!   a path, so one extra decoding upstream cannot create a separator, a dot segment or a
//!   control character (except `%2F`/`%5C` under [`EscapedSlashes::Keep`], which is why it is
//!   not the default).
//!
//! The result is idempotent: normalising an accepted result again (with the same options)
//! returns it unchanged. When the path is already normal, or only loses a suffix (a trailing
//! `/.`, a stripped parameter), the result borrows the input and nothing is allocated.

use std::borrow::Cow;

/// What to do with `%2F` and `%5C` (an encoded `/` or `\`) in a path.
///
/// Servers disagree: most keep `%2F` as data inside a segment, some decode it into a separator
/// before routing, so `/public%2F..%2Fadmin` is a bypass for one and a file name for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EscapedSlashes {
    /// Refuse the request: the only choice that is safe for every upstream.
    #[default]
    Refuse,
    /// Keep them encoded, as data inside their segment (for upstreams that never decode them).
    Keep,
    /// Decode them to `/` (and `\` to `/`), so they separate segments, merge and take part in
    /// `.`/`..` resolution; the rewritten path is what the upstream must receive.
    Decode,
}

/// What to do with `;` path parameters (`/admin;jsessionid=1`).
///
/// Java servers (Tomcat, Spring) drop `;...` from each segment before routing, so
/// `/admin;x` and `/..;/admin` mean `/admin` to them and something else to a route rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathParameters {
    /// Refuse any `;` in the path.
    #[default]
    Refuse,
    /// Remove `;` up to the end of its segment before `.`/`..` resolution, as Tomcat does:
    /// `/admin;x/y` becomes `/admin/y` and `/x/..;/admin` becomes `/admin`.
    Strip,
}

/// How [`normalize`] treats the constructs that upstream servers read differently.
///
/// The default refuses both, which is safe whatever the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PathOptions {
    /// `%2F` and `%5C`.
    pub escaped_slashes: EscapedSlashes,
    /// `;` parameters.
    pub path_parameters: PathParameters,
}

/// A normalised path (without the query string).
///
/// `path` borrows the input when the normal form is the input or a prefix of it, so the common
/// already-normal request costs no allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath<'a> {
    /// The canonical path: starts with `/`, has no empty, `.` or `..` segment (but may end with
    /// `/`), no `\`, only printable ASCII, and percent-escapes with upper-case hex.
    pub path: Cow<'a, str>,
    /// Whether `path` differs from the input: the caller must then forward `path` (with the
    /// query appended) in place of the original, so that the upstream sees what the rules saw.
    pub changed: bool,
}

/// Why a path was refused. Messages are fixed (they never echo the input), so they can be used
/// as the body of a 400 reply; [`PathError::reason`] names the variant for audit records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Empty, `*`, or anything else not starting with `/`.
    #[error("the path must start with '/'")]
    NotAbsolute,
    /// A raw or percent-encoded NUL or control character (C0, DEL, or an encoded C1).
    #[error("the path holds a NUL or control character")]
    NulOrControl,
    /// A raw character outside ASCII (including U+FFFD from a lossy conversion of bytes).
    #[error("the path holds a character outside ASCII that is not percent-encoded")]
    NonAscii,
    /// `%` not followed by two hex digits.
    #[error("the path holds a malformed percent-escape")]
    BadEscape,
    /// Percent-encoded bytes that are not UTF-8: a stray continuation byte, a truncated
    /// sequence, a surrogate, or a code point above U+10FFFF.
    #[error("the path percent-encodes bytes that are not valid UTF-8")]
    InvalidUtf8,
    /// A percent-encoded UTF-8 sequence longer than needed (`%C0%AF` for `/`).
    #[error("the path percent-encodes an overlong UTF-8 sequence")]
    OverlongUtf8,
    /// `%2F` or `%5C` under [`EscapedSlashes::Refuse`].
    #[error("the path holds an encoded '/' or '\\'")]
    EncodedSlash,
    /// `%3B`, which servers read either as data or as a parameter delimiter.
    #[error("the path holds an encoded ';'")]
    EncodedSemicolon,
    /// A `;` under [`PathParameters::Refuse`].
    #[error("the path holds a ';' parameter")]
    PathParameter,
    /// `%25` followed by two hex digits: a second decoding would change the path.
    #[error("the path holds a double percent-encoding")]
    DoubleEncoding,
    /// A `#`: fragments are never sent in a request.
    #[error("the path holds a '#'")]
    Fragment,
    /// A `?`: the caller passes the path without its query.
    #[error("the path holds a '?'")]
    Query,
}

impl PathError {
    /// A stable, distinct name for audit records and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotAbsolute => "not_absolute",
            Self::NulOrControl => "nul_or_control",
            Self::NonAscii => "non_ascii",
            Self::BadEscape => "bad_escape",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::OverlongUtf8 => "overlong_utf8",
            Self::EncodedSlash => "encoded_slash",
            Self::EncodedSemicolon => "encoded_semicolon",
            Self::PathParameter => "path_parameter",
            Self::DoubleEncoding => "double_encoding",
            Self::Fragment => "fragment",
            Self::Query => "query",
        }
    }
}

/// Normalises `path` (the `:path` before its first `?`) under `options`.
///
/// A quick scan returns a plainly normal path as it is; anything else takes one full pass over
/// the bytes, which allocates only when the result is not a prefix of `path`.
pub fn normalize<'a>(
    path: &'a str,
    options: &PathOptions,
) -> Result<NormalizedPath<'a>, PathError> {
    let Some((b'/', mut rest)) = path.as_bytes().split_first() else {
        return Err(PathError::NotAbsolute);
    };
    if is_plainly_normal(path.as_bytes()) {
        return Ok(NormalizedPath {
            path: Cow::Borrowed(path),
            changed: false,
        });
    }
    let mut n = Normalizer {
        out: Output {
            input: path,
            len: 0,
            owned: None,
        },
        options: *options,
        segment_start: 1,
        in_parameter: false,
    };
    n.out.push(b'/');
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        match b {
            b'/' | b'\\' => n.separator(),
            b'%' => rest = n.escape(rest)?,
            b';' => match options.path_parameters {
                PathParameters::Refuse => return Err(PathError::PathParameter),
                PathParameters::Strip => n.in_parameter = true,
            },
            b'#' => return Err(PathError::Fragment),
            b'?' => return Err(PathError::Query),
            0x00..=0x1f | 0x7f => return Err(PathError::NulOrControl),
            0x80..=0xff => return Err(PathError::NonAscii),
            b' ' | b'"' | b'<' | b'>' | b'[' | b']' | b'^' | b'`' | b'{' | b'|' | b'}' => {
                n.emit_escaped(b);
            }
            _ => n.emit(b),
        }
    }
    n.end_segment(true);
    if has_double_encoding(n.out.bytes()) {
        return Err(PathError::DoubleEncoding);
    }
    Ok(n.out.finish())
}

/// Whether `path` (which starts with `/`) is normal on sight: only characters that stand for
/// themselves and no segment that is empty (but the last) or starts with `.`. The full pass
/// would write such a path out unchanged; this check just does it faster for most requests.
fn is_plainly_normal(path: &[u8]) -> bool {
    let mut previous = b'/';
    path.iter().skip(1).all(|&b| {
        let plain = match b {
            b'/' | b'.' => previous != b'/',
            _ => b.is_ascii_alphanumeric() || b"-_~!$&'()*+,=:@".contains(&b),
        };
        previous = b;
        plain
    })
}

/// The state of one normalisation.
struct Normalizer<'a> {
    out: Output<'a>,
    options: PathOptions,
    /// Where the current segment starts in the output (just after its `/`).
    segment_start: usize,
    /// Inside a `;` parameter being stripped: input is validated but not written.
    in_parameter: bool,
}

impl Normalizer<'_> {
    /// Writes one byte of the current segment, unless it belongs to a stripped parameter.
    fn emit(&mut self, b: u8) {
        if !self.in_parameter {
            self.out.push(b);
        }
    }

    /// Writes `%XX` for `b`, with upper-case hex.
    fn emit_escaped(&mut self, b: u8) {
        self.emit(b'%');
        self.emit(hex_digit(b >> 4));
        self.emit(hex_digit(b));
    }

    /// A `/`, `\` or decoded `%2F`/`%5C`: closes the segment and ends any parameter.
    fn separator(&mut self) {
        self.in_parameter = false;
        self.end_segment(false);
        self.segment_start = self.out.len();
    }

    /// Closes the segment just written: drops it if empty or `.`, drops it and its parent if
    /// `..` (never above the root), otherwise adds the `/` that follows it. After the last
    /// segment (`last`) no `/` is added, so a path keeps or gains a trailing slash exactly when
    /// it ends with a separator, `.` or `..`.
    fn end_segment(&mut self, last: bool) {
        let start = self.segment_start;
        match self.out.bytes().get(start..).unwrap_or_default() {
            [] => {}
            [b'.'] => self.out.truncate(start),
            [b'.', b'.'] => {
                let parent = self
                    .out
                    .bytes()
                    .get(..start.saturating_sub(1))
                    .and_then(|before| before.iter().rposition(|&c| c == b'/'))
                    .map_or(1, |slash| slash.saturating_add(1));
                self.out.truncate(parent);
            }
            _ => {
                if !last {
                    self.out.push(b'/');
                }
            }
        }
    }

    /// Handles the escape whose `%` was just read; `rest` follows the `%`. Returns the input
    /// after the escape (and after the rest of a UTF-8 sequence).
    fn escape<'r>(&mut self, rest: &'r [u8]) -> Result<&'r [u8], PathError> {
        let (value, rest) = escaped_byte(rest)?;
        match value {
            0x00..=0x1f | 0x7f => Err(PathError::NulOrControl),
            0x80..=0xff => self.utf8_sequence(value, rest),
            b'/' | b'\\' => {
                match self.options.escaped_slashes {
                    EscapedSlashes::Refuse => return Err(PathError::EncodedSlash),
                    EscapedSlashes::Keep => self.emit_escaped(value),
                    EscapedSlashes::Decode => self.separator(),
                }
                Ok(rest)
            }
            b';' => Err(PathError::EncodedSemicolon),
            _ if is_unreserved(value) || is_path_data(value) => {
                self.emit(value);
                Ok(rest)
            }
            _ => {
                self.emit_escaped(value);
                Ok(rest)
            }
        }
    }

    /// Checks that the escaped byte `lead` (≥ 0x80) starts a valid, shortest-form UTF-8
    /// sequence whose continuation bytes are the escapes at the start of `rest`, and writes the
    /// sequence, still encoded. Returns the input after the sequence.
    fn utf8_sequence<'r>(&mut self, lead: u8, mut rest: &'r [u8]) -> Result<&'r [u8], PathError> {
        // How many continuation bytes follow, and the range of the first one (RFC 3629 §4).
        let (count, first): (usize, std::ops::RangeInclusive<u8>) = match lead {
            0xc0 | 0xc1 => return Err(PathError::OverlongUtf8),
            0xc2..=0xdf => (1, 0x80..=0xbf),
            0xe0 => (2, 0xa0..=0xbf),
            0xe1..=0xec | 0xee..=0xef => (2, 0x80..=0xbf),
            0xed => (2, 0x80..=0x9f),
            0xf0 => (3, 0x90..=0xbf),
            0xf1..=0xf3 => (3, 0x80..=0xbf),
            0xf4 => (3, 0x80..=0x8f),
            _ => return Err(PathError::InvalidUtf8),
        };
        self.emit_escaped(lead);
        for i in 0..count {
            let Some((b'%', after)) = rest.split_first() else {
                return Err(PathError::InvalidUtf8);
            };
            let (byte, after) = escaped_byte(after)?;
            if i == 0 && !first.contains(&byte) {
                // Below the range after E0 or F0 is an overlong form; anything else is invalid
                // (a surrogate after ED, above U+10FFFF after F4, or not a continuation byte).
                let overlong = matches!((lead, byte), (0xe0, 0x80..=0x9f) | (0xf0, 0x80..=0x8f));
                return Err(if overlong {
                    PathError::OverlongUtf8
                } else {
                    PathError::InvalidUtf8
                });
            }
            if !(0x80..=0xbf).contains(&byte) {
                return Err(PathError::InvalidUtf8);
            }
            // U+0080..U+009F are the C1 control characters.
            if lead == 0xc2 && byte <= 0x9f {
                return Err(PathError::NulOrControl);
            }
            self.emit_escaped(byte);
            rest = after;
        }
        Ok(rest)
    }
}

/// The output, held as a length into the input for as long as it is a prefix of the input, and
/// copied into a `String` the first time it is not.
struct Output<'a> {
    input: &'a str,
    /// The output's length; while `owned` is `None`, the output is `input[..len]`.
    len: usize,
    owned: Option<String>,
}

impl<'a> Output<'a> {
    /// Appends an ASCII byte (every byte the normaliser writes is ASCII).
    fn push(&mut self, b: u8) {
        match &mut self.owned {
            Some(s) => s.push(char::from(b)),
            None if self.input.as_bytes().get(self.len) == Some(&b) => {
                self.len = self.len.saturating_add(1);
            }
            None => {
                let mut s = String::with_capacity(self.input.len().saturating_add(16));
                s.extend(self.bytes().iter().map(|&c| char::from(c)));
                s.push(char::from(b));
                self.owned = Some(s);
            }
        }
    }

    fn len(&self) -> usize {
        self.owned.as_ref().map_or(self.len, String::len)
    }

    fn bytes(&self) -> &[u8] {
        match &self.owned {
            Some(s) => s.as_bytes(),
            None => self.input.as_bytes().get(..self.len).unwrap_or_default(),
        }
    }

    /// Shortens the output to `len` bytes (a prefix stays a prefix of the input).
    fn truncate(&mut self, len: usize) {
        match &mut self.owned {
            Some(s) => s.truncate(len),
            None => self.len = self.len.min(len),
        }
    }

    fn finish(self) -> NormalizedPath<'a> {
        match self.owned {
            Some(s) => NormalizedPath {
                changed: s != self.input,
                path: Cow::Owned(s),
            },
            None => NormalizedPath {
                changed: self.len != self.input.len(),
                // The prefix is ASCII, so it ends on a character boundary.
                path: match self.input.get(..self.len) {
                    Some(prefix) => Cow::Borrowed(prefix),
                    None => Cow::Owned(self.bytes().iter().map(|&c| char::from(c)).collect()),
                },
            },
        }
    }
}

/// Reads the two hex digits after a `%` (either case); returns the byte and the input after.
fn escaped_byte(rest: &[u8]) -> Result<(u8, &[u8]), PathError> {
    match rest {
        [high, low, after @ ..] => match (hex_value(*high), hex_value(*low)) {
            (Some(high), Some(low)) => Ok(((high << 4) | low, after)),
            _ => Err(PathError::BadEscape),
        },
        _ => Err(PathError::BadEscape),
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The upper-case hex digit for the low four bits of `n`.
fn hex_digit(n: u8) -> u8 {
    match n & 0x0f {
        d @ 0..=9 => b'0' + d,
        d => b'A' + (d - 10),
    }
}

/// RFC 3986 §2.3: characters whose percent-encoding means the same as the character.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Sub-delimiters (but `;`), `:` and `@`: allowed raw in a segment (RFC 3986 `pchar`), where
/// every framework reads `%3A` and `:` alike. Decoding them gives one spelling, so a rule for
/// `/v1/things:delete` also holds for `/v1/things%3Adelete`; the upstream receives the decoded
/// form with the rewritten path.
fn is_path_data(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@'
    )
}

/// Whether `out` holds `%25` followed by two hex digits, which a second decoding would turn
/// into an escape the first pass never saw.
fn has_double_encoding(out: &[u8]) -> bool {
    out.windows(5).any(|w| {
        matches!(w, [b'%', b'2', b'5', high, low]
            if high.is_ascii_hexdigit() && low.is_ascii_hexdigit())
    })
}
