//! The cheap first look: one pass over the bytes of a value names the categories whose rules
//! could match it, so that ordinary values (names, e-mails, URLs without a query, numbers, dates,
//! tokens) never reach a regex or an allocation.
//!
//! Soundness (a rule never matches a value the pre-filter cleared) is checked by the tests over
//! the whole corpus and over random strings, with the pre-filter on and off.

/// Category bits.
pub(super) const SQLI: u8 = 1;
pub(super) const XSS: u8 = 2;
pub(super) const TRAVERSAL: u8 = 4;
pub(super) const CMDI: u8 = 8;
pub(super) const CRLF: u8 = 16;
pub(super) const ALL: u8 = SQLI | XSS | TRAVERSAL | CMDI | CRLF;

/// Words that make a value of otherwise plain characters (letters, digits, `.,-_@:/?`, spaces)
/// worth inspecting: the rules that need no punctuation look for these.
pub(super) const KEYWORDS: &str = r"(?i-u)union|select|passwd|shadow|\.ini|system32|/proc/|/etc/|/bin/|/dev/|information_schema|xp_|sp_|waitfor|benchmark|sleep|pg_|sys(?:objects|columns|databases|logins)|sqlite_master|dbms_|utl_|outfile|dumpfile|load_file|mysql\.|\.ht(?:access|passwd)|web\.config|global\.asa|localstart|sudoers|id_[rde]|://|\.ssh|\.git|\.env|wp-config|inetpub|data:|script:|mocha:|adw-|document\.|window\.|location\.|fromcharcode|bash|nc|ncat|netcat|mkfifo|socat|powershell|cmd|order|group|having|declare";

/// Which categories a byte can start or be part of (a `match` compiles to a lookup table).
const fn class(b: u8) -> u8 {
    match b {
        // Anything decoded later (percent-escapes, entities, escapes, other scripts) and control
        // characters (tabs and line breaks inside keywords, null bytes) can hide any attack.
        b'%' | b'&' | b'\\' => ALL,
        0x00..=0x1f | 0x7f => ALL,
        0x80..=0xff => ALL,
        // Every command-injection rule needs a separator, a substitution, `{`, `#` or a keyword;
        // every XSS rule a `<`, `=`, `(`, `:`, `{`, a double quote, a backtick or a keyword.
        b'"' | b'`' => SQLI | XSS | CMDI,
        b'(' | b'<' | b'>' => SQLI | XSS,
        b'\'' | b')' => SQLI,
        b';' => SQLI | CMDI,
        b'|' => SQLI | CMDI,
        b'=' => SQLI | XSS,
        b'#' => SQLI | CMDI,
        b'$' | b'{' | b'}' => CMDI | XSS,
        b':' => XSS | TRAVERSAL,
        _ => 0,
    }
}

/// The categories that `value` could belong to, from single bytes and from the pairs `..`
/// (traversal), `--` (SQL comment) and `@@` (SQL server variables).
pub(super) fn scan(value: &[u8]) -> u8 {
    let mut found = 0u8;
    let mut previous = 0u8;
    for &b in value {
        found |= class(b);
        match (previous, b) {
            (b'.', b'.') => found |= TRAVERSAL,
            (b'-', b'-') | (b'@', b'@') => found |= SQLI,
            _ => {}
        }
        if found == ALL {
            break;
        }
        previous = b;
    }
    found
}
