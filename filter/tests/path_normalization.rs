//! Path normalisation: every spelling of a path that an upstream could read as `/admin` becomes
//! `/admin` (or is refused), and accepted results are canonical and stable.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::borrow::Cow;

use portcullis::path::{
    EscapedSlashes, NormalizedPath, PathError, PathOptions, PathParameters, normalize,
};
use proptest::prelude::*;

const DEFAULT: PathOptions = PathOptions {
    escaped_slashes: EscapedSlashes::Refuse,
    path_parameters: PathParameters::Refuse,
};
const KEEP: PathOptions = PathOptions {
    escaped_slashes: EscapedSlashes::Keep,
    ..DEFAULT
};
const DECODE: PathOptions = PathOptions {
    escaped_slashes: EscapedSlashes::Decode,
    ..DEFAULT
};
const STRIP: PathOptions = PathOptions {
    path_parameters: PathParameters::Strip,
    ..DEFAULT
};
const KEEP_STRIP: PathOptions = PathOptions {
    escaped_slashes: EscapedSlashes::Keep,
    path_parameters: PathParameters::Strip,
};
const DECODE_STRIP: PathOptions = PathOptions {
    escaped_slashes: EscapedSlashes::Decode,
    path_parameters: PathParameters::Strip,
};
const ALL_OPTIONS: [PathOptions; 6] = [DEFAULT, KEEP, DECODE, STRIP, KEEP_STRIP, DECODE_STRIP];

fn norm(path: &str, options: &PathOptions) -> Result<String, PathError> {
    normalize(path, options).map(|n| n.path.into_owned())
}

#[test]
fn default_options_refuse_what_upstreams_disagree_on() {
    assert_eq!(PathOptions::default(), DEFAULT);
}

/// The spellings of `/admin` from the issue, each under the options that accept it.
#[test]
fn every_spelling_of_admin_is_admin() {
    let cases: &[(&str, PathOptions, &str)] = &[
        ("/admin", DEFAULT, "/admin"),
        ("//admin", DEFAULT, "/admin"),
        ("///admin", DEFAULT, "/admin"),
        ("/./admin", DEFAULT, "/admin"),
        ("/x/../admin", DEFAULT, "/admin"),
        ("/x/y/../../admin", DEFAULT, "/admin"),
        ("/%61dmin", DEFAULT, "/admin"),
        ("/%61%64%6D%69%6e", DEFAULT, "/admin"),
        ("/admin/.", DEFAULT, "/admin/"),
        ("/admin/", DEFAULT, "/admin/"),
        ("/admin//", DEFAULT, "/admin/"),
        ("/x/%2e%2e/admin", DEFAULT, "/admin"),
        ("/x/%2E%2e/admin", DEFAULT, "/admin"),
        ("/x/.%2E/admin", DEFAULT, "/admin"),
        ("/%2e/admin", DEFAULT, "/admin"),
        ("/x/..%2fadmin", KEEP, "/x/..%2Fadmin"),
        ("/x/..%2fadmin", DECODE, "/admin"),
        ("/x/..%5cadmin", DECODE, "/admin"),
        ("/x%2f..%2fadmin", DECODE, "/admin"),
        ("/x/%2e%2e%2fadmin", DECODE, "/admin"),
        ("/x\\..\\admin", DEFAULT, "/admin"),
        ("/\\admin", DEFAULT, "/admin"),
        ("/x\\.\\..\\admin", DEFAULT, "/admin"),
        ("/admin;param", STRIP, "/admin"),
        ("/admin;jsessionid=0123", STRIP, "/admin"),
        ("/..;/admin", STRIP, "/admin"),
        ("/x/..;/admin", STRIP, "/admin"),
        ("/x/..;jsessionid=1/admin", STRIP, "/admin"),
        ("/.;/admin", STRIP, "/admin"),
        ("/;x/admin", STRIP, "/admin"),
        ("/x;/..;/admin", STRIP, "/admin"),
        ("/x/%2e%2e;y/admin", STRIP, "/admin"),
        ("/x;a%2Fb/../admin", KEEP_STRIP, "/admin"),
        ("/x;a%2F../admin", DECODE_STRIP, "/admin"),
        ("/../admin", DEFAULT, "/admin"),
        ("/../../admin", DEFAULT, "/admin"),
        ("/%2e%2e/admin", DEFAULT, "/admin"),
    ];
    for (input, options, expected) in cases {
        assert_eq!(
            norm(input, options).as_deref(),
            Ok(*expected),
            "{input} under {options:?}"
        );
    }
}

#[test]
fn normal_forms() {
    let cases: &[(&str, PathOptions, &str)] = &[
        ("/", DEFAULT, "/"),
        ("//", DEFAULT, "/"),
        ("/.", DEFAULT, "/"),
        ("/..", DEFAULT, "/"),
        ("/../../a/b/../../..", DEFAULT, "/"),
        ("/a/b/c/../../d", DEFAULT, "/a/d"),
        ("/a/b/..", DEFAULT, "/a/"),
        ("/a/b/../", DEFAULT, "/a/"),
        ("/a//b///c", DEFAULT, "/a/b/c"),
        ("/a/./b/./", DEFAULT, "/a/b/"),
        ("/a\\", DEFAULT, "/a/"),
        ("/a/...", DEFAULT, "/a/..."),
        ("/a/.../b", DEFAULT, "/a/.../b"),
        ("/a/..b/.c/b..", DEFAULT, "/a/..b/.c/b.."),
        ("/a/.%2e.", DEFAULT, "/a/..."),
        ("/%7euser", DEFAULT, "/~user"),
        ("/a%2db%5fc%2E%7E", DEFAULT, "/a-b_c.~"),
        ("/%41%5A%30%39", DEFAULT, "/AZ09"),
        // Characters a segment holds raw with the same meaning are decoded (a rule for
        // `/v1/things:delete` holds for `%3A`); other escapes are kept, with upper-case hex.
        ("/a%3ab", DEFAULT, "/a:b"),
        ("/a%3Ab", DEFAULT, "/a:b"),
        ("/v1/things%3Adelete", DEFAULT, "/v1/things:delete"),
        (
            "/%23%3f%40%21%2b%26%3d%2c%24%27%28%29%2a",
            DEFAULT,
            "/%23%3F@!+&=,$'()*",
        ),
        ("/a%3fb%2fc", KEEP, "/a%3Fb%2Fc"),
        ("/a%20b", DEFAULT, "/a%20b"),
        ("/100%25", DEFAULT, "/100%25"),
        ("/%25zz/%25", DEFAULT, "/%25zz/%25"),
        ("/%25%25", DEFAULT, "/%25%25"),
        // Characters that may not appear raw in a path are encoded, as their escapes are kept.
        ("/a b", DEFAULT, "/a%20b"),
        ("/a{b}|c", DEFAULT, "/a%7Bb%7D%7Cc"),
        ("/\"<>[]^`", DEFAULT, "/%22%3C%3E%5B%5D%5E%60"),
        // Sub-delimiters, ':' and '@' are allowed raw.
        ("/a:b@c!$&'()*+,=", DEFAULT, "/a:b@c!$&'()*+,="),
        // Valid UTF-8 stays encoded, with upper-case hex.
        ("/caf%c3%a9", DEFAULT, "/caf%C3%A9"),
        ("/%C2%A0", DEFAULT, "/%C2%A0"),
        ("/%DF%BF", DEFAULT, "/%DF%BF"),
        ("/%E0%A0%80", DEFAULT, "/%E0%A0%80"),
        ("/%e2%82%ac", DEFAULT, "/%E2%82%AC"),
        ("/%ED%9F%BF", DEFAULT, "/%ED%9F%BF"),
        ("/%EE%80%80", DEFAULT, "/%EE%80%80"),
        ("/%EF%BF%BD", DEFAULT, "/%EF%BF%BD"),
        ("/%F0%90%80%80", DEFAULT, "/%F0%90%80%80"),
        ("/%F0%9F%98%80", DEFAULT, "/%F0%9F%98%80"),
        ("/%F4%8F%BF%BF", DEFAULT, "/%F4%8F%BF%BF"),
        // Escaped slashes under Keep stay data; under Decode they separate.
        ("/a%2fb", KEEP, "/a%2Fb"),
        ("/a%5cb", KEEP, "/a%5Cb"),
        ("/a%2F%2F/b", KEEP, "/a%2F%2F/b"),
        ("/a%2F%2Fb", DECODE, "/a/b"),
        ("/a%5c..%5cb", DECODE, "/b"),
        ("/a%2F", DECODE, "/a/"),
        // Parameters under Strip.
        ("/admin;x/y", STRIP, "/admin/y"),
        ("/admin;a;b", STRIP, "/admin"),
        ("/admin/;x", STRIP, "/admin/"),
        ("/admin;/", STRIP, "/admin/"),
        ("/admin/.;/", STRIP, "/admin/"),
        ("/a;x\\b", STRIP, "/a/b"),
        ("/x/.;/admin", STRIP, "/x/admin"),
        ("/a;x%2Fy/b", KEEP_STRIP, "/a/b"),
    ];
    for (input, options, expected) in cases {
        assert_eq!(
            norm(input, options).as_deref(),
            Ok(*expected),
            "{input} under {options:?}"
        );
        check_canonical(expected, options);
    }
}

#[test]
fn refusals() {
    use PathError::*;
    let cases: &[(&str, PathOptions, PathError)] = &[
        ("", DEFAULT, NotAbsolute),
        ("*", DEFAULT, NotAbsolute),
        ("admin", DEFAULT, NotAbsolute),
        ("\\admin", DEFAULT, NotAbsolute),
        ("%2Fadmin", DECODE, NotAbsolute),
        ("http://example.com/admin", DEFAULT, NotAbsolute),
        ("/a%", DEFAULT, BadEscape),
        ("/%", DEFAULT, BadEscape),
        ("/a%4", DEFAULT, BadEscape),
        ("/a%zz", DEFAULT, BadEscape),
        ("/a%4g", DEFAULT, BadEscape),
        ("/a%g4", DEFAULT, BadEscape),
        ("/a%%41", DEFAULT, BadEscape),
        ("/a%-1", DEFAULT, BadEscape),
        ("/a%+1", DEFAULT, BadEscape),
        ("/%C3%", DEFAULT, BadEscape),
        ("/%E2%82%4", DEFAULT, BadEscape),
        ("/a%00", DEFAULT, NulOrControl),
        ("/a%00b", DECODE_STRIP, NulOrControl),
        ("/a%0a", DEFAULT, NulOrControl),
        ("/a%0D%0A", DEFAULT, NulOrControl),
        ("/a%1f", DEFAULT, NulOrControl),
        ("/a%7F", DEFAULT, NulOrControl),
        ("/a\0", DEFAULT, NulOrControl),
        ("/a\r\nx: y", DEFAULT, NulOrControl),
        ("/a\tb", DEFAULT, NulOrControl),
        ("/a\u{7f}", DEFAULT, NulOrControl),
        ("/%C2%80", DEFAULT, NulOrControl),
        ("/%c2%85", DEFAULT, NulOrControl),
        ("/%C2%9F", DEFAULT, NulOrControl),
        ("/caf\u{e9}", DEFAULT, NonAscii),
        ("/a\u{fffd}", DEFAULT, NonAscii),
        ("/\u{202e}", DEFAULT, NonAscii),
        ("/\u{85}", DEFAULT, NonAscii),
        ("/%C0%AF", DEFAULT, OverlongUtf8),
        ("/%c0%ae%c0%ae/admin", DEFAULT, OverlongUtf8),
        ("/%C1%BF", DEFAULT, OverlongUtf8),
        ("/%E0%80%AF", DEFAULT, OverlongUtf8),
        ("/%E0%9F%BF", DEFAULT, OverlongUtf8),
        ("/%F0%80%80%AF", DEFAULT, OverlongUtf8),
        ("/%F0%8F%BF%BF", DEFAULT, OverlongUtf8),
        ("/%80", DEFAULT, InvalidUtf8),
        ("/%BF", DEFAULT, InvalidUtf8),
        ("/%ff", DEFAULT, InvalidUtf8),
        ("/%F5%80%80%80", DEFAULT, InvalidUtf8),
        ("/%F8%88%80%80%80", DEFAULT, InvalidUtf8),
        ("/%ED%A0%80", DEFAULT, InvalidUtf8),
        ("/%ED%BF%BF", DEFAULT, InvalidUtf8),
        ("/%F4%90%80%80", DEFAULT, InvalidUtf8),
        ("/%C3", DEFAULT, InvalidUtf8),
        ("/%C3a", DEFAULT, InvalidUtf8),
        ("/%C3/", DEFAULT, InvalidUtf8),
        ("/%E2%82", DEFAULT, InvalidUtf8),
        ("/%E2%82/", DEFAULT, InvalidUtf8),
        ("/%F0%9F%98", DEFAULT, InvalidUtf8),
        ("/%C3%28", DEFAULT, InvalidUtf8),
        ("/%C3%C3%A9", DEFAULT, InvalidUtf8),
        ("/%E2%28%A1", DEFAULT, InvalidUtf8),
        ("/%E2%82%28", DEFAULT, InvalidUtf8),
        ("/x/..%2fadmin", DEFAULT, EncodedSlash),
        ("/a%2Fb", DEFAULT, EncodedSlash),
        ("/a%5cb", DEFAULT, EncodedSlash),
        ("/a%5Cb", STRIP, EncodedSlash),
        ("/a;x%2F/b", STRIP, EncodedSlash),
        ("/admin%3bx", DEFAULT, EncodedSemicolon),
        ("/admin%3Bx", STRIP, EncodedSemicolon),
        ("/admin%3Bx", DECODE_STRIP, EncodedSemicolon),
        ("/admin;param", DEFAULT, PathParameter),
        ("/..;/admin", DEFAULT, PathParameter),
        ("/a;b", DECODE, PathParameter),
        ("/a%252e", DEFAULT, DoubleEncoding),
        ("/a%252E%252E/admin", DEFAULT, DoubleEncoding),
        ("/%2561dmin", DEFAULT, DoubleEncoding),
        ("/a%252f", KEEP, DoubleEncoding),
        ("/a%2500", DEFAULT, DoubleEncoding),
        ("/a%25%32%66", DEFAULT, DoubleEncoding),
        ("/a%25%34%31", DEFAULT, DoubleEncoding),
        ("/a%25a%62", DEFAULT, DoubleEncoding),
        ("/a%2541;x", STRIP, DoubleEncoding),
        ("/a#b", DEFAULT, Fragment),
        ("/a#", DEFAULT, Fragment),
        ("/a?b=1", DEFAULT, Query),
    ];
    for (input, options, expected) in cases {
        assert_eq!(
            normalize(input, options),
            Err(*expected),
            "{input:?} under {options:?}"
        );
    }
}

/// Input that a stripped parameter drops is still validated: it is never a place to hide bytes.
#[test]
fn stripped_parameters_are_still_validated() {
    for bad in [
        "/a;%00/b",
        "/a;\u{e9}/b",
        "/a;%zz/b",
        "/a;%C0%AF/b",
        "/a;#/b",
        "/a;%3B/b",
    ] {
        assert!(normalize(bad, &STRIP).is_err(), "{bad:?}");
    }
    assert_eq!(norm("/a;x=1,y=%20/b", &STRIP).as_deref(), Ok("/a/b"));
}

#[test]
fn changed_and_borrowing() {
    let unchanged = normalize("/api/v1/orders/12345/items", &DEFAULT).unwrap();
    assert!(!unchanged.changed);
    assert!(matches!(
        unchanged.path,
        Cow::Borrowed("/api/v1/orders/12345/items")
    ));

    // Results that are a prefix of the input borrow it too, but are changed.
    let trailing_dot = normalize("/admin/.", &DEFAULT).unwrap();
    assert_eq!(
        trailing_dot,
        NormalizedPath {
            path: Cow::Borrowed("/admin/"),
            changed: true
        }
    );
    assert!(matches!(trailing_dot.path, Cow::Borrowed(_)));
    let stripped = normalize("/admin;jsessionid=1", &STRIP).unwrap();
    assert!(matches!(stripped.path, Cow::Borrowed("/admin")));
    assert!(stripped.changed);

    let rewritten = normalize("//admin", &DEFAULT).unwrap();
    assert!(rewritten.changed);
    assert!(matches!(rewritten.path, Cow::Owned(_)));
    assert_eq!(rewritten.path, "/admin");

    // Lower-case hex is a change even though it means the same.
    assert!(normalize("/a%3f", &DEFAULT).unwrap().changed);
    assert!(!normalize("/a%3F", &DEFAULT).unwrap().changed);
    assert!(normalize("/a%3A", &DEFAULT).unwrap().changed);
    assert!(!normalize("/a%2F", &KEEP).unwrap().changed);
    assert!(normalize("/a%2f", &KEEP).unwrap().changed);
    assert!(!normalize("/", &DEFAULT).unwrap().changed);
    assert!(!normalize("/a/", &DEFAULT).unwrap().changed);
}

#[test]
fn reasons_are_distinct_and_messages_fixed() {
    use PathError::*;
    let all = [
        NotAbsolute,
        NulOrControl,
        NonAscii,
        BadEscape,
        InvalidUtf8,
        OverlongUtf8,
        EncodedSlash,
        EncodedSemicolon,
        PathParameter,
        DoubleEncoding,
        Fragment,
        Query,
    ];
    let mut reasons: Vec<_> = all.iter().map(PathError::reason).collect();
    let mut messages: Vec<_> = all.iter().map(ToString::to_string).collect();
    reasons.sort_unstable();
    reasons.dedup();
    messages.sort_unstable();
    messages.dedup();
    assert_eq!(reasons.len(), all.len());
    assert_eq!(messages.len(), all.len());
    for reason in reasons {
        assert!(
            reason
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "{reason}"
        );
    }
    for message in messages {
        assert!(message.starts_with("the path "), "{message}");
    }
}

/// Checks everything a normal path promises, and that normalising it again changes nothing.
fn check_canonical(path: &str, options: &PathOptions) {
    assert!(path.starts_with('/'), "{path:?}");
    assert!(!path.contains("//"), "{path:?}");
    assert!(!path.contains('\\'), "{path:?}");
    assert!(!path.contains(';'), "{path:?}");
    assert!(path.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{path:?}");
    assert!(
        path.split('/')
            .all(|segment| segment != "." && segment != ".."),
        "{path:?}"
    );
    let bytes = path.as_bytes();
    for (i, _) in path.match_indices('%') {
        let hex = &bytes[i + 1..i + 3];
        assert!(
            hex.iter()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b)),
            "{path:?}"
        );
        let value = u8::from_str_radix(std::str::from_utf8(hex).unwrap(), 16).unwrap();
        assert!(
            !(value.is_ascii_alphanumeric() || b"-._~".contains(&value)),
            "{path:?}"
        );
        assert!(value >= 0x20 && value != 0x7f && value != b';', "{path:?}");
        if value == b'/' || value == b'\\' {
            assert_eq!(options.escaped_slashes, EscapedSlashes::Keep, "{path:?}");
        }
        if value == b'%' {
            let next = bytes.get(i + 3..i + 5).unwrap_or_default();
            assert!(
                !(next.len() == 2 && next.iter().all(u8::is_ascii_hexdigit)),
                "{path:?}"
            );
        }
    }
    let again = normalize(path, options).unwrap();
    assert_eq!(again.path, path, "not idempotent under {options:?}");
    assert!(!again.changed);
    assert!(matches!(again.path, Cow::Borrowed(_)));
}

/// Checks one normalisation: no panic (by returning), and an accepted result is canonical.
fn check_any(input: &str, options: &PathOptions) {
    if let Ok(n) = normalize(input, options) {
        check_canonical(&n.path, options);
        assert_eq!(n.changed, n.path != input, "{input:?}");
    }
}

/// Pieces that path attacks are made of, so random paths hit the interesting branches.
const PIECES: &[&str] = &[
    "/",
    "//",
    "\\",
    ".",
    "..",
    "a",
    "admin",
    "x",
    "%2e",
    "%2E",
    "%2f",
    "%2F",
    "%5c",
    "%5C",
    ";",
    ";x=1",
    "%3b",
    "%25",
    "%2525",
    "%41",
    "%61",
    "%7e",
    "%3a",
    "%00",
    "%0a",
    "%",
    "%4",
    "%zz",
    "%C3%A9",
    "%c0%af",
    "%E0%80%AF",
    "%ED%A0%80",
    "%F0%9F%98%80",
    "%F4%90%80%80",
    "%C3",
    "%80",
    " ",
    "{",
    "|",
    "#",
    "?",
    "\u{e9}",
    "\u{fffd}",
    "~",
    "-",
    ":",
    "@",
    "%20",
    "%7B",
];

/// Noise that may precede a segment without changing the path.
const NOISE: &[&str] = &[
    "/",
    "//",
    "/./",
    "\\",
    "/x/../",
    "/%2e/",
    "/zz/%2E%2e/",
    "\\.\\",
    "/q/.%2E/",
    "/y/z/../../",
];

/// Noise that may end a path; all but the first leave a trailing slash.
const TRAILING: &[&str] = &["", "/", "/.", "//", "/x/..", "\\", "/%2e", "/./"];

fn options() -> impl Strategy<Value = PathOptions> {
    prop::sample::select(ALL_OPTIONS.to_vec())
}

/// Writes `segment` with each character raw, or percent-encoded in lower or upper case, as the
/// successive two-bit fields of `choices` say.
fn spell(segment: &str, mut choices: u64) -> String {
    let mut out = String::new();
    for c in segment.chars() {
        match choices & 3 {
            1 => out.push_str(&format!("%{:02x}", c as u32)),
            2 => out.push_str(&format!("%{:02X}", c as u32)),
            _ => out.push(c),
        }
        choices >>= 2;
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_string(input in any::<String>(), options in options()) {
        check_any(&input, &options);
        check_any(&format!("/{input}"), &options);
    }

    #[test]
    fn any_printable_ascii(input in "/[ -~]{0,40}", options in options()) {
        check_any(&input, &options);
    }

    #[test]
    fn attack_pieces(
        pieces in prop::collection::vec(prop::sample::select(PIECES), 0..24),
        options in options(),
    ) {
        check_any(&format!("/{}", pieces.concat()), &options);
    }

    /// Every spelling of a path made of unreserved characters, with noise segments, repeated
    /// and back slashes and random percent-encoding, normalises to that path.
    #[test]
    fn spellings_agree(
        segments in prop::collection::vec(
            ("[a-zA-Z0-9_~-][a-zA-Z0-9._~-]{0,7}", prop::sample::select(NOISE), any::<u64>()),
            1..6,
        ),
        trailing in prop::sample::select(TRAILING),
        options in options(),
    ) {
        let mut spelled = String::from("/");
        let mut expected = String::new();
        for (segment, noise, choices) in &segments {
            spelled.push_str(noise);
            spelled.push_str(&spell(segment, *choices));
            expected.push('/');
            expected.push_str(segment);
        }
        spelled.push_str(trailing);
        if !trailing.is_empty() {
            expected.push('/');
        }
        let n = normalize(&spelled, &options).unwrap();
        prop_assert_eq!(&n.path, &expected, "{}", spelled);
        prop_assert_eq!(n.changed, spelled != expected);
    }

    /// What the default options accept, every other option reads the same way.
    #[test]
    fn options_agree_on_unambiguous_paths(
        pieces in prop::collection::vec(prop::sample::select(PIECES), 0..24),
    ) {
        let input = format!("/{}", pieces.concat());
        if let Ok(expected) = normalize(&input, &DEFAULT) {
            for options in &ALL_OPTIONS {
                prop_assert_eq!(&normalize(&input, options), &Ok(expected.clone()));
            }
        }
    }

    /// Decoding `%2F` means exactly what a raw `/` means.
    #[test]
    fn decoded_slash_is_a_slash(
        pieces in prop::collection::vec(prop::sample::select(PIECES), 0..16),
    ) {
        let raw = format!("/{}", pieces.concat());
        let encoded = raw.replace('/', "%2F");
        let encoded = format!("/{}", encoded.get(3..).unwrap_or_default());
        prop_assert_eq!(normalize(&raw, &DECODE_STRIP), normalize(&encoded, &DECODE_STRIP)
            .map(|n| NormalizedPath { changed: n.path != raw, ..n }));
    }
}
