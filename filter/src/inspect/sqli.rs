//! SQL injection: the shapes an injected fragment must take to change a query (break out of a
//! quote, add a tautology, a `UNION`, a second statement, a delay), not SQL words alone — a
//! description may well say "use SELECT carefully".

use regex::bytes::Captures;

use super::rules::{ANYWHERE, Matcher, RuleInfo};
use super::{Category, Level};

const fn rule(id: &'static str, level: Level, description: &'static str, m: Matcher) -> RuleInfo {
    RuleInfo {
        id,
        category: Category::Sqli,
        level,
        description,
        locations: ANYWHERE,
        matcher: m,
    }
}

pub(super) const RULES: &[RuleInfo] = &[
    rule(
        "sqli-union-select",
        Level::Low,
        "UNION [ALL|DISTINCT] SELECT, with comments, parentheses or + as separators",
        Matcher::Pattern(r"(?:\b|[0-9])union(?:{p}(?:all|distinct))?{p}select\b"),
    ),
    rule(
        "sqli-time-delay",
        Level::Low,
        "WAITFOR DELAY, BENCHMARK(n, …), DBMS_LOCK.SLEEP and other deliberate delays",
        Matcher::Pattern(
            r"\bwaitfor{w}(?:delay|time){w}{q}|\bbenchmark{o}\({o}[0-9]+{o},|\bdbms_(?:pipe\.receive_message|lock\.sleep)\b|\brandomblob{o}\({o}[0-9]{6,}",
        ),
    ),
    rule(
        "sqli-stacked-admin",
        Level::Low,
        "a second statement that drops, shuts down or runs system procedures",
        Matcher::Pattern(
            r";{o}(?:drop{w}(?:table|database|user)\b|shutdown\b|exec(?:ute)?{w}(?:master\.|xp_|sp_)|declare{w}@|truncate{w}table\b)",
        ),
    ),
    rule(
        "sqli-tautology-quoted",
        Level::Medium,
        "a quote closed, then OR/AND and a comparison, TRUE or a comment: ' or 'a'='a, \" or 1=1--",
        Matcher::Pattern(
            r#"{q}(?:{s}|\))*(?:(?:or|and|xor|div)\b|\|\||&&)(?:{s}|\()*(?:{q}?[a-z0-9_@.$%-]*{q}?(?:{s}|\))*(?:=|<>|!=|<=?|>=?|\blike\b|\bis{w}(?:not{w})?null\b|\bin{o}\(|\bbetween{w}[0-9]|\b(?:r|not{w})?regexp?\b|\brlike\b|\bsounds{w}like\b)|(?:true|false|not|exists|null)\b|[0-9]+{o}(?:--|#|/\*|;|$)|{q}{q}(?:{s}|[-&^*|/%])*{q}|(?:substring|substr|mid|ascii|ord|length|char|concat|if|isnull|case|select|exists|updatexml|extractvalue|sleep|benchmark|pg_sleep)\b{o}\()"#,
        ),
    ),
    rule(
        "sqli-tautology",
        Level::Medium,
        "OR/AND followed by a comparison that is always true (or 1=1, or x=x, or 2>1)",
        Matcher::Verified(
            r#"(?:^|[^a-z0-9_])(?:or|and|xor|\|\||&&)(?:{s}|\()+(?P<a>[0-9]+|[a-z]+|'[^']*'|"[^"]*")(?:{s}|\))*(?P<op>=|<>|!=|<=|>=|<|>|like\b)(?:{s}|\()*(?P<b>[0-9]+|[a-z]+|'[^']*'?|"[^"]*"?)(?:[^a-z0-9_]|$)"#,
            always_true,
        ),
    ),
    rule(
        "sqli-comment-breakout",
        Level::Medium,
        "a quote closed and the rest of the query commented out: admin'--, admin' #, ')/*",
        Matcher::Pattern(r#"{q}\)*[\s+]*;?[\s+]*(?:--[\s+-]*$|#[\s+]*$|/\*[^'"`]*$)"#),
    ),
    rule(
        "sqli-stacked-query",
        Level::Medium,
        "a quote, number or parenthesis, then ; and a new statement",
        Matcher::Pattern(
            r"(?:^|{q}|[0-9)]){o};{o}(?:select|insert|update|delete|create|alter|grant|copy|exec|execute|begin)\b",
        ),
    ),
    rule(
        "sqli-sleep-call",
        Level::Medium,
        "SLEEP(n) / PG_SLEEP(n) called as a function, not as a method (time.sleep(5) passes)",
        Matcher::Pattern(r"(?:^|[^a-z0-9_.$])(?:pg_)?sleep\({o}[0-9_(@]"),
    ),
    rule(
        "sqli-db-probe",
        Level::Medium,
        "catalogue tables, server variables and file or network functions of SQL servers",
        Matcher::Pattern(
            r"@@(?:version|datadir|hostname|servername|basedir|tmpdir)\b|\binformation_schema\b|\bxp_(?:cmdshell|regread|dirtree|fileexist|servicecontrol)\b|\bsp_(?:executesql|oacreate|addlogin|addsrvrolemember|configure|makewebtask|password)\b|\bload_file{o}\(|\binto{w}(?:out|dump)file\b|\butl_(?:http|inaddr|file)\b|\b(?:extractvalue|updatexml){o}\(|\bmysql\.(?:user|db)\b|\bpg_(?:shadow|user|group|read_file|ls_dir)\b|\bsys(?:objects|columns|databases|logins)\b|\bsqlite_master\b|\bexec(?:ute)?{o}\({o}@|\bdeclare{w}@[a-z_][a-z0-9_]*{w}(?:n?varchar|int|table|cursor)\b",
        ),
    ),
    rule(
        "sqli-subquery",
        Level::Medium,
        "a parenthesised SELECT of functions, columns or constants: (select count(*) …), (select @@version)",
        Matcher::Pattern(
            r"\({o}select{p}(?:(?:case|count|top|substring|substr|mid|ascii|char|concat|group_concat|if|sleep|benchmark|user|database|version|schema_name|table_name|column_name|load_file|null)\b|@@|\*|[0-9]+{o}(?:,|\)|from\b))",
        ),
    ),
    rule(
        "sqli-order-probe",
        Level::Medium,
        "ORDER BY / GROUP BY after a closed quote, or ORDER BY n followed by a comment",
        Matcher::Pattern(
            r"(?:{q}|\))(?:{s}|\))*(?:order|group){w}by{w}[a-z0-9_]|\b(?:order|group){w}by{w}[0-9]+{o}(?:--|#|/\*)",
        ),
    ),
    rule(
        "sqli-having",
        Level::Medium,
        "HAVING n=n, the probe for column counts",
        Matcher::Pattern(r"\bhaving{w}[0-9]+{o}(?:=|>|<)"),
    ),
    rule(
        "sqli-char-encoding",
        Level::Medium,
        "strings built from character codes: CHAR(47,101,…), CHAR(0x70)+CHAR(0x65)",
        Matcher::Pattern(
            r"\b(?:n?char|chr){o}\({o}(?:[0-9]+|0x[0-9a-f]+){o}(?:,{o}(?:[0-9]+|0x[0-9a-f]+){o})+\)|\b(?:n?char|chr){o}\({o}(?:[0-9]+|0x[0-9a-f]+){o}\){o}(?:\+|\|\|){o}(?:n?char|chr){o}\(",
        ),
    ),
    rule(
        "sqli-keyword-after-quote",
        Level::High,
        "a quote closed and followed by an SQL keyword or operator",
        Matcher::Pattern(
            r"{q}(?:{s}|\))*(?:union|select|insert|update|delete|drop|exec|execute|having|order{w}by|group{w}by|and|or|xor|waitfor|like|limit|procedure|into)\b",
        ),
    ),
    rule(
        "sqli-select-from",
        Level::High,
        "SELECT … FROM anywhere in a value",
        Matcher::Pattern(r"\bselect{w}[^;]*?\bfrom{w}[a-z_@(]"),
    ),
];

/// `a op b` with literal operands is always true: `1=1`, `'a'='a'`, `x=x`, `2>1`, `1<>2`.
/// Prose such as `2 and 2 = 4` or `x or y = z` is not.
fn always_true(caps: &Captures<'_>) -> bool {
    let (Some(a), Some(op), Some(b)) = (caps.name("a"), caps.name("op"), caps.name("b")) else {
        return false;
    };
    let quoted = is_quoted(a.as_bytes()) && is_quoted(b.as_bytes());
    let a = unquote(a.as_bytes());
    let b = unquote(b.as_bytes());
    match op.as_bytes() {
        b"=" => a.eq_ignore_ascii_case(b),
        op if op.eq_ignore_ascii_case(b"like") => a.eq_ignore_ascii_case(b),
        b"<>" | b"!=" => !a.eq_ignore_ascii_case(b),
        op => {
            // Numbers compare as numbers, quoted strings as strings; identifiers (`y > 0` in
            // code) are not literals.
            let ordering = match (numeric(a), numeric(b)) {
                (Some(x), Some(y)) => x.cmp(&y),
                _ if quoted => a.to_ascii_lowercase().cmp(&b.to_ascii_lowercase()),
                _ => return false,
            };
            match op {
                b"<" => ordering.is_lt(),
                b">" => ordering.is_gt(),
                b"<=" => ordering.is_le(),
                b">=" => ordering.is_ge(),
                _ => false,
            }
        }
    }
}

fn is_quoted(s: &[u8]) -> bool {
    matches!(s.first(), Some(b'\'' | b'"'))
}

/// Strips the quotes of an operand; the closing one may be missing (the application's own query
/// supplies it: `' or 'a'='a`).
fn unquote(s: &[u8]) -> &[u8] {
    let s = s
        .strip_prefix(b"'")
        .or_else(|| s.strip_prefix(b"\""))
        .unwrap_or(s);
    s.strip_suffix(b"'")
        .or_else(|| s.strip_suffix(b"\""))
        .unwrap_or(s)
}

/// A string of digits as a comparable key: no leading zeros, then (length, digits). No overflow
/// whatever its length.
fn numeric(s: &[u8]) -> Option<(usize, &[u8])> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let start = s.iter().position(|&d| d != b'0').unwrap_or(s.len());
    let digits = s.get(start..).unwrap_or_default();
    Some((digits.len(), digits))
}
