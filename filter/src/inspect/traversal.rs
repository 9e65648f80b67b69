//! Path traversal and local file inclusion: climbing out of a directory, naming the files
//! attackers read, stream wrappers of PHP, and null bytes that cut off an extension.

use super::rules::{ANYWHERE, BODY_VALUES, LINE_LOCATIONS, Matcher, NOT_PATH, RuleInfo};
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
        category: Category::Traversal,
        level,
        description,
        locations,
        matcher: m,
    }
}

pub(super) const RULES: &[RuleInfo] = &[
    rule(
        "traversal-dotdot",
        Level::Low,
        "a .. path segment (/ or \\, encoded, overlong or full-width) in a path, parameter, header or name",
        LINE_LOCATIONS,
        Matcher::Pattern(r"(?:^|[/\\])\.{2,}(?:[/\\;]|$)"),
    ),
    rule(
        "traversal-dotdot-repeated",
        Level::Low,
        "two or more .. segments in a row, anywhere (../../)",
        ANYWHERE,
        Matcher::Pattern(r"(?:^|[/\\])\.{2,}[/\\]+\.{2,}(?:[/\\;]|$)"),
    ),
    rule(
        "traversal-sensitive-file",
        Level::Medium,
        "files attackers read: /etc/passwd, /etc/shadow, /proc/self/, win.ini, boot.ini, system32, .htpasswd",
        ANYWHERE,
        Matcher::Pattern(
            r"(?:^|[/\\:])etc[/\\]+(?:passwd|shadow|master\.passwd|sudoers)\b|(?:^|[/\\])proc[/\\]+(?:self|[0-9]+)[/\\]|\b(?:win|system|boot)\.ini\b|(?:windows|winnt)[/\\]+system32\b|\.htpasswd\b|\bglobal\.asa\b|\blocalstart\.asp\b|(?:^|[/\\])inetpub[/\\]",
        ),
    ),
    rule(
        "traversal-stream-wrapper",
        Level::Medium,
        "PHP stream wrappers used for file inclusion: php://filter, phar://, zip://, expect://",
        ANYWHERE,
        Matcher::Pattern(
            r"\b(?:php|phar|zip|expect|glob|zlib|compress\.zlib|compress\.bzip2|rar|ogg|ssh2\.[a-z]+)://",
        ),
    ),
    rule(
        "traversal-null-byte",
        Level::Medium,
        "a null byte (raw, %00 or &#0;), which cuts a file name short in C-based file APIs",
        ANYWHERE,
        Matcher::Nul,
    ),
    rule(
        "traversal-dotdot-body",
        Level::High,
        "a single .. segment in a body value (also relative Markdown links)",
        BODY_VALUES,
        Matcher::Pattern(r"(?:^|[^a-z0-9._-])\.{2,}[/\\]"),
    ),
    rule(
        "traversal-config-file",
        Level::High,
        "configuration and key files: /etc/hosts, .htaccess, web.config, wp-config.php, id_rsa, .git/, .env",
        ANYWHERE,
        Matcher::Pattern(
            r"(?:^|[/\\:])etc[/\\]+(?:hosts|group|issue|crontab|fstab)\b|\.htaccess\b|\bweb\.config\b|\bwp-config\.php\b|\bid_(?:rsa|dsa|ecdsa|ed25519)\b|(?:^|[/\\])\.(?:ssh|git|aws|env)\b",
        ),
    ),
    rule(
        "traversal-absolute-path",
        Level::High,
        "a parameter that is an absolute system path or file: URL: /etc/…, C:\\Windows, \\\\host\\share, file:///",
        NOT_PATH,
        Matcher::Pattern(
            r"^\s*(?:/|[a-z]:[/\\]|\\\\)(?:etc|proc|var|usr|root|home|windows|winnt|boot|sys|dev|tmp|opt|inetpub)\b|\bfile:/",
        ),
    ),
];
