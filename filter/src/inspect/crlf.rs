//! CR/LF injection: line breaks in values that end up in response headers (a redirect target, a
//! cookie, a custom header), which let an attacker add headers or split the response.

use super::rules::{BODY_VALUES, LINE_LOCATIONS, Matcher, RuleInfo};
use super::{Category, Level, Location};

const fn rule(
    id: &'static str,
    level: Level,
    description: &'static str,
    locations: &'static [Location],
    m: Matcher,
) -> RuleInfo {
    RuleInfo {
        id,
        category: Category::HeaderInjection,
        level,
        description,
        locations,
        matcher: m,
    }
}

pub(super) const RULES: &[RuleInfo] = &[
    rule(
        "crlf-header",
        Level::Low,
        "a CR or LF (raw or encoded) in a path, parameter, header, cookie or name",
        LINE_LOCATIONS,
        Matcher::Pattern(r"[\r\n]"),
    ),
    rule(
        "crlf-header-line",
        Level::Medium,
        "in a body value: a line break followed by a response header that splits a response",
        BODY_VALUES,
        Matcher::Pattern(
            r"[\r\n][\t ]*(?:set-cookie|location|content-(?:type|length|security-policy|disposition)|refresh|x-xss-protection|access-control-allow-[a-z-]+|transfer-encoding|remote-addr|x-forwarded-[a-z]+)[\t ]*:|[\r\n][\t ]*http/[0-9]",
        ),
    ),
    rule(
        "crlf-unicode-newline",
        Level::Medium,
        "a Unicode line break (NEL, LINE/PARAGRAPH SEPARATOR) that some stacks turn into a newline",
        LINE_LOCATIONS,
        Matcher::Pattern(r"\xc2\x85|\xe2\x80[\xa8\xa9]"),
    ),
    rule(
        "crlf-truncated-newline",
        Level::High,
        "U+560A / U+560D, whose low byte is LF / CR when a stack truncates characters to bytes",
        LINE_LOCATIONS,
        Matcher::Pattern(r"\xe5\x98[\x8a\x8d]"),
    ),
];
