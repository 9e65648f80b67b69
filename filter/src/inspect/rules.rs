//! The rule catalogue: what a rule is, the shared pattern vocabulary, and the list of all rules.

use std::sync::OnceLock;

use regex::bytes::Captures;

use super::{Category, Level, Location, cmdi, crlf, sqli, traversal, xss};

/// Confirms a candidate found by a rule's regex (for checks a regex cannot express, such as
/// "both sides of the comparison are equal").
pub(super) type Verify = fn(&Captures<'_>) -> bool;

/// How a rule matches a normalised value.
#[derive(Debug, Clone, Copy)]
pub(super) enum Matcher {
    /// A pattern in the vocabulary of [`expand`].
    Pattern(&'static str),
    /// A pattern whose candidates a function must confirm.
    Verified(&'static str, Verify),
    /// The value contained a null byte (raw or encoded), which no text value needs.
    Nul,
}

/// One signature: a stable id, what it detects, from which level it is on, and where it applies.
#[derive(Debug, Clone)]
pub struct RuleInfo {
    /// Stable id, used in findings, audit records and `disabled_rules`.
    pub id: &'static str,
    /// The kind of attack.
    pub category: Category,
    /// The lowest level that enables the rule.
    pub level: Level,
    /// One line for docs and the CLI.
    pub description: &'static str,
    /// Where the rule applies.
    pub locations: &'static [Location],
    pub(super) matcher: Matcher,
}

impl RuleInfo {
    pub(super) fn location_bits(&self) -> u16 {
        self.locations.iter().fold(0, |bits, l| bits | l.bit())
    }
}

/// Every location.
pub(super) const ANYWHERE: &[Location] = &Location::ALL;
/// Where a line break is never legitimate: it would end up in a header, a URL or a name.
pub(super) const LINE_LOCATIONS: &[Location] = &[
    Location::Path,
    Location::QueryName,
    Location::QueryValue,
    Location::Header,
    Location::Cookie,
    Location::JsonKey,
    Location::FormName,
];
/// Free text of bodies, where line breaks, relative links and the like are ordinary.
pub(super) const BODY_VALUES: &[Location] = &[Location::JsonValue, Location::FormValue];
/// Everything but the request path (which always starts with `/`).
pub(super) const NOT_PATH: &[Location] = &[
    Location::QueryName,
    Location::QueryValue,
    Location::Header,
    Location::Cookie,
    Location::JsonKey,
    Location::JsonValue,
    Location::FormName,
    Location::FormValue,
];

/// Shorthands of the patterns, expanded once at construction. Every pattern is matched
/// ASCII-case-insensitively on bytes (`(?i-u)`): fast lazy-DFA matching, no Unicode tables.
///
/// - `{s}`: one unit of SQL whitespace: a space, tab, line break, `+` (a space once a query
///   string is decoded by the application), or a comment `/*…*/`; a MySQL executable comment
///   `/*!50000` … `*/` counts as whitespace around its content.
/// - `{w}` one or more of those, `{o}` zero or more, `{p}` one or more with `(` allowed too.
/// - `{q}` a quote of SQL or the shell.
/// - `{weak}`: shell commands that are also English words (`id`, `cat`, `echo`, `ping`, …);
///   `{strong}`: commands no prose uses (`whoami`, `ifconfig`, `wget`, …); `{arg}`: what may
///   follow a weak command for it to look like a command (end, a separator, a flag, a path, a
///   number, a URL, a quote).
pub(super) fn expand(pattern: &str) -> String {
    const SQL_SPACE: &str = r"(?:[\s+\x0b\x0c]|/\*!?[0-9]*|\*/|/\*(?s:.)*?\*/)";
    let replacements: [(&str, String); 8] = [
        ("{w}", format!("{SQL_SPACE}+")),
        ("{o}", format!("{SQL_SPACE}*")),
        ("{p}", format!(r"(?:{SQL_SPACE}|\()+")),
        ("{s}", SQL_SPACE.to_owned()),
        ("{q}", "['\"`]".to_owned()),
        ("{weak}", WEAK_COMMANDS.to_owned()),
        ("{strong}", STRONG_COMMANDS.to_owned()),
        ("{arg}", COMMAND_ARGUMENT.to_owned()),
    ];
    let mut out = format!("(?i-u){pattern}");
    for (token, replacement) in &replacements {
        out = out.replace(token, replacement);
    }
    out
}

/// Shell commands that are also words of prose or Markdown: only a command when what follows
/// looks like arguments ({arg}).
const WEAK_COMMANDS: &str = r"(?:id|ls|cat|pwd|dir|echo|ping|sleep|type|more|less|head|tail|find|env|net|reg|kill|ps|rm|cp|mv|touch|sh|nc|who|ver|route|curl|bash|python[0-9.]*|perl|ruby|php|node|telnet|ftp|sudo|su|grep|awk|sed|chmod|chown|uname|wget|nslookup|dig|host|nmap|time|set|copy|del|start|call|timeout|powershell|cmd|certutil|base64|xargs|printf)";
/// Shell commands that prose does not use.
const STRONG_COMMANDS: &str = r"(?:net\s+(?:user|localgroup|view|share|accounts)\b|reg\s+(?:add|delete|query|save|export)\b|whoami|ifconfig|ipconfig|netstat|ncat|netcat|socat|busybox|useradd|adduser|crontab|nohup|systeminfo|sysinfo|tasklist|taskkill|netsh|wmic|printenv|bitsadmin|mshta|rundll32|regsvr32|wscript|cscript|mkfifo|getent|lsb_release|hostname|whoami\.exe|cmd\.exe|powershell\.exe)";
/// What follows a weak command for it to read as a command: the end of the value, a shell
/// separator, a flag, a path, a number, a URL, a quote or a variable.
const COMMAND_ARGUMENT: &str = r##"(?:$|[;|&`\n\r'"#<>$]|[\s+]+(?:$|[;&`\n\r#<>$'"]|-{1,2}[a-z0-9]|[/\\~]|\.{1,2}/|[a-z]:\\|[0-9]|https?:|[a-z0-9_.-]+\.(?:sh|php|txt|pl|py|exe|bat|ps1)\b))"##;

/// Every rule, in a fixed order: within a category, lower levels and surer rules first.
pub(super) fn catalogue() -> &'static [RuleInfo] {
    static ALL: OnceLock<Vec<RuleInfo>> = OnceLock::new();
    ALL.get_or_init(|| {
        [
            crlf::RULES,
            traversal::RULES,
            cmdi::RULES,
            xss::RULES,
            sqli::RULES,
        ]
        .concat()
    })
}
