//! OS command injection: a shell separator or substitution followed by a command. Commands that
//! are also words (`id`, `cat`, `ping`, `sleep`) count only when followed by what reads as
//! arguments, and a Markdown table cell (`| id |`) is not a pipe.

use super::rules::{ANYWHERE, BODY_VALUES, LINE_LOCATIONS, Matcher, RuleInfo};
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
        category: Category::CommandInjection,
        level,
        description,
        locations,
        matcher: m,
    }
}

pub(super) const RULES: &[RuleInfo] = &[
    rule(
        "cmdi-shellshock",
        Level::Low,
        "a value starting with a bash function definition: () { :; };",
        ANYWHERE,
        Matcher::Pattern(r"^\s*\(\s*\)\s*\{"),
    ),
    rule(
        "cmdi-ifs",
        Level::Low,
        "$IFS / ${IFS}, the shell's field separator used instead of spaces",
        ANYWHERE,
        Matcher::Pattern(r"\$(?:\{ifs\}|ifs\b)"),
    ),
    rule(
        "cmdi-reverse-shell",
        Level::Low,
        "reverse shells and downloaders: /dev/tcp/, nc -e, bash -i, mkfifo, curl … | sh, cmd /c, powershell -enc",
        ANYWHERE,
        Matcher::Pattern(
            r"/dev/(?:tcp|udp)/|\b(?:nc|ncat|netcat)\b[^\n|;&]*\s-[a-z]*[ec]\b|\b(?:ba)?sh\s+-i\b|\bmkfifo\b|\bsocat\b[^\n]*\bexec:|\bpowershell(?:\.exe)?\b[^\n]*\s-(?:enc|encodedcommand|e|nop|noprofile|w|windowstyle|c|command)\b|\bcmd(?:\.exe)?\s+/[ck]\s|\b(?:wget|curl)\b[^\n|;]*\|\s*(?:ba|z|da)?sh\b",
        ),
    ),
    rule(
        "cmdi-ssi",
        Level::Low,
        "server-side include directives: <!--#exec cmd=…-->",
        ANYWHERE,
        Matcher::Pattern(r"<!--\s*#\s*(?:exec|include|echo|config|fsize|flastmod)\b"),
    ),
    rule(
        "cmdi-shell-chain",
        Level::Medium,
        "a separator (; | &) or $( followed by a command: ; cat /etc/passwd, | id, && ping -c 10 …",
        ANYWHERE,
        Matcher::Pattern(
            r"[;|&][\s+]*(?:/(?:usr/)?s?bin/)?(?:{strong}\b|{weak}{arg})|\$\([\s+]*(?:/(?:usr/)?s?bin/)?(?:{strong}|{weak})\b",
        ),
    ),
    rule(
        "cmdi-newline-command",
        Level::Medium,
        "a line break followed by a command in a path, parameter, header or name",
        LINE_LOCATIONS,
        Matcher::Pattern(r"[\n\r][\s+]*(?:/(?:usr/)?s?bin/)?(?:{strong}\b|{weak}{arg})"),
    ),
    rule(
        "cmdi-backtick",
        Level::Medium,
        "a backtick command substitution at the start of a value or after a separator, quote or =",
        ANYWHERE,
        Matcher::Pattern(
            r#"(?:^|[;|&'"=(])[\s+]*`[\s+]*(?:/(?:usr/)?s?bin/)?(?:{strong}|{weak})(?:[\s+][^`]*)?`"#,
        ),
    ),
    rule(
        "cmdi-newline-command-body",
        Level::High,
        "a line break followed by a command in a body value",
        BODY_VALUES,
        Matcher::Pattern(r"[\n\r][\s+]*(?:/(?:usr/)?s?bin/)?(?:{strong}\b|{weak}{arg})"),
    ),
    rule(
        "cmdi-backtick-anywhere",
        Level::High,
        "any backtick span that starts with a command (also Markdown code such as `ls -la`)",
        ANYWHERE,
        Matcher::Pattern(r"`[\s+]*(?:/(?:usr/)?s?bin/)?(?:{strong}|{weak})(?:[\s+][^`]*)?`"),
    ),
    rule(
        "cmdi-shell-path",
        Level::High,
        "a shell or interpreter named by path: /bin/sh, /bin/bash, cmd.exe, powershell.exe",
        ANYWHERE,
        Matcher::Pattern(r"/bin/(?:ba|z|k|da|c)?sh\b|\bcmd\.exe\b|\bpowershell\.exe\b"),
    ),
    rule(
        "cmdi-shell-chain-any",
        Level::High,
        "a separator followed by any command word, whatever follows",
        ANYWHERE,
        Matcher::Pattern(r"(?:[;|&`]|\$\()[\s+]*(?:/(?:usr/)?s?bin/)?(?:{strong}|{weak})\b"),
    ),
];
