//! Attack signatures: SQL injection, XSS, path traversal, command injection and CR/LF header
//! injection, looked for in the decoded path, query parameters, chosen headers and the strings
//! of JSON and form bodies.
//!
//! Why here and not in a WAF: Envoy has no such checks, and Coraza with the OWASP CRS costs
//! gigabytes and several times the latency. These rules aim at the attacks that matter, at a cost
//! of microseconds per request, with ordinary API traffic (prose with apostrophes, e-mail
//! addresses, URLs, arithmetic, code snippets, Markdown, tokens) passing at the default level.
//!
//! How a value is inspected ([`Inspector::inspect`]):
//! 1. a byte-class scan ([`prefilter`]) names the categories the value could possibly belong to;
//!    a value of letters, digits, spaces and `.,-_@:/?` (names, e-mails, URLs without a query)
//!    stops here, without allocating;
//! 2. a working copy undoes evasions ([`normalize`]): one or two more levels of percent-encoding,
//!    HTML entities, overlong UTF-8, full-width forms, null bytes; SQL comments and `+` count as
//!    whitespace inside the SQL patterns themselves;
//! 3. one `RegexSet` per category, compiled once in [`Inspector::new`], says whether any rule of
//!    that category matches; only then are the matching rules looked at one by one (location,
//!    extra verification). The first finding wins.

mod cmdi;
mod crlf;
mod normalize;
mod prefilter;
mod rules;
mod sqli;
mod traversal;
mod xss;

#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;

use regex::bytes::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};
use serde_json::Value;

use normalize::normalize;
pub use rules::RuleInfo;
use rules::{Matcher, Verify};

/// The kind of attack a rule detects; rules can be turned on and off per category.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    /// SQL injection: quote break-outs, tautologies, `UNION SELECT`, stacked queries, delays.
    Sqli,
    /// Cross-site scripting: script tags, event handlers, `javascript:` URLs, JS sinks.
    Xss,
    /// Path traversal and local file inclusion: `../`, sensitive files, stream wrappers.
    Traversal,
    /// OS command injection: shell separators followed by commands, substitutions, shellshock.
    CommandInjection,
    /// CR/LF injection: line breaks in values that end up in headers (response splitting).
    HeaderInjection,
}

impl Category {
    /// Every category, in the order the inspector tries them.
    pub const ALL: [Category; 5] = [
        Category::HeaderInjection,
        Category::Traversal,
        Category::CommandInjection,
        Category::Xss,
        Category::Sqli,
    ];

    /// The name used in configuration, audit records and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Sqli => "sqli",
            Category::Xss => "xss",
            Category::Traversal => "traversal",
            Category::CommandInjection => "command_injection",
            Category::HeaderInjection => "header_injection",
        }
    }

    /// One bit per category, for the masks of the pre-filter.
    fn bit(self) -> u8 {
        match self {
            Category::Sqli => prefilter::SQLI,
            Category::Xss => prefilter::XSS,
            Category::Traversal => prefilter::TRAVERSAL,
            Category::CommandInjection => prefilter::CMDI,
            Category::HeaderInjection => prefilter::CRLF,
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Category {
    type Err = InspectError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Category::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| InspectError::UnknownCategory(s.to_owned()))
    }
}

/// Sensitivity: higher levels add rules that catch more and risk more false positives.
/// `Medium` is the default and must let ordinary API traffic through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Level {
    /// Only rules that ordinary traffic practically never trips.
    Low,
    /// The default: the rules of `Low` plus those measured to pass the benign corpus.
    #[default]
    Medium,
    /// Everything, including rules that flag HTML tags, SQL snippets and shell paths in text.
    High,
}

impl Level {
    /// Every level, lowest first.
    pub const ALL: [Level; 3] = [Level::Low, Level::Medium, Level::High];

    /// The name used in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Low => "low",
            Level::Medium => "medium",
            Level::High => "high",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Level {
    type Err = InspectError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Level::ALL
            .into_iter()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| InspectError::UnknownLevel(s.to_owned()))
    }
}

/// Where a value came from. Rules apply per location: CR/LF matters in values that end up in
/// headers, not in a multi-line description; a single `../` matters in a path or parameter, not
/// in a Markdown link of a JSON body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Location {
    /// The request path, percent-decoded.
    Path,
    /// The name of a query parameter, percent-decoded.
    QueryName,
    /// The value of a query parameter, percent-decoded.
    QueryValue,
    /// The value of a chosen header (User-Agent, Referer, custom ones), as received.
    Header,
    /// The value of one cookie.
    Cookie,
    /// A key of a JSON object, at any depth.
    JsonKey,
    /// A string value of a JSON body, at any depth.
    JsonValue,
    /// The name of a field of a form body, decoded.
    FormName,
    /// The value of a field of a form body, decoded.
    FormValue,
}

impl Location {
    /// Every location.
    pub const ALL: [Location; 9] = [
        Location::Path,
        Location::QueryName,
        Location::QueryValue,
        Location::Header,
        Location::Cookie,
        Location::JsonKey,
        Location::JsonValue,
        Location::FormName,
        Location::FormValue,
    ];

    /// The name used in audit records and in the corpus files.
    pub fn as_str(self) -> &'static str {
        match self {
            Location::Path => "path",
            Location::QueryName => "query_name",
            Location::QueryValue => "query_value",
            Location::Header => "header",
            Location::Cookie => "cookie",
            Location::JsonKey => "json_key",
            Location::JsonValue => "json_value",
            Location::FormName => "form_name",
            Location::FormValue => "form_value",
        }
    }

    /// One bit per location, for the location sets of rules.
    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Location {
    type Err = InspectError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Location::ALL
            .into_iter()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| InspectError::UnknownLocation(s.to_owned()))
    }
}

/// What was found: the rule that matched, its category and where. Enough for an audit record
/// and a metric, without echoing attacker input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    /// The stable id of the rule, e.g. `sqli-union-select`.
    pub rule: &'static str,
    /// The rule's category.
    pub category: Category,
    /// Where the value came from.
    pub location: Location,
}

/// What to inspect for, as configured per route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectorOptions {
    /// Rules of this level and below are enabled.
    pub level: Level,
    /// Enabled categories; all by default.
    pub categories: Vec<Category>,
    /// Rule ids to turn off (a known false positive of one application).
    pub disabled_rules: Vec<String>,
}

impl Default for InspectorOptions {
    fn default() -> Self {
        InspectorOptions {
            level: Level::default(),
            categories: Category::ALL.to_vec(),
            disabled_rules: Vec::new(),
        }
    }
}

/// Why an inspector could not be built or an option not parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InspectError {
    /// `disabled_rules` names a rule that does not exist (a typo would silently keep it on).
    #[error("unknown inspection rule {0:?}")]
    UnknownRule(String),
    /// Not `low`, `medium` or `high`.
    #[error("unknown inspection level {0:?} (low, medium or high)")]
    UnknownLevel(String),
    /// Not one of the category names.
    #[error(
        "unknown inspection category {0:?} (sqli, xss, traversal, command_injection, header_injection)"
    )]
    UnknownCategory(String),
    /// Not one of the location names.
    #[error("unknown inspection location {0:?}")]
    UnknownLocation(String),
    /// A built-in pattern did not compile: a bug of this crate, caught by its tests.
    #[error("inspection rule {rule}: pattern does not compile: {message}")]
    Pattern {
        /// The rule id.
        rule: &'static str,
        /// The regex compiler's message.
        message: String,
    },
}

/// A rule of one category's set.
#[derive(Debug)]
struct Member {
    rule: &'static RuleInfo,
    locations: u16,
    /// For rules whose regex finds candidates that code then confirms (e.g. that both sides of
    /// `or x=y` are equal).
    verify: Option<(Regex, Verify)>,
}

/// The enabled rules of one category: a set to answer "any?" in one pass, and its members.
#[derive(Debug)]
struct Group {
    category: Category,
    set: RegexSet,
    members: Vec<Member>,
}

/// The rules that are code rather than patterns.
#[derive(Debug)]
struct Builtin {
    rule: &'static RuleInfo,
    locations: u16,
}

/// Compiled attack signatures, built once at configure time and shared by every request.
#[derive(Debug)]
pub struct Inspector {
    groups: Vec<Group>,
    builtins: Vec<Builtin>,
    /// Per location (index = `Location as usize`), the categories with an enabled rule there.
    location_categories: [u8; 9],
    /// Words that make a value of otherwise plain characters worth a closer look
    /// (`union select`, `/etc/passwd`, `/bin/sh`, …).
    keywords: Regex,
    /// Off only in tests, to check that the pre-filter never hides a match.
    prefilter: bool,
}

impl Inspector {
    /// Compiles the rules of `options`. Fails on an unknown id in `disabled_rules`.
    pub fn new(options: &InspectorOptions) -> Result<Inspector, InspectError> {
        let catalogue = Inspector::rules();
        if let Some(unknown) = options
            .disabled_rules
            .iter()
            .find(|id| !catalogue.iter().any(|r| r.id == id.as_str()))
        {
            return Err(InspectError::UnknownRule(unknown.clone()));
        }
        let enabled = |rule: &RuleInfo| {
            rule.level <= options.level
                && options.categories.contains(&rule.category)
                && !options.disabled_rules.iter().any(|id| id == rule.id)
        };

        let mut groups = Vec::new();
        let mut builtins = Vec::new();
        let mut location_categories = [0u8; 9];
        for category in Category::ALL {
            let mut patterns = Vec::new();
            let mut members = Vec::new();
            for rule in catalogue
                .iter()
                .filter(|r| r.category == category && enabled(r))
            {
                let locations = rule.location_bits();
                for location in Location::ALL {
                    if locations & location.bit() != 0
                        && let Some(slot) = location_categories.get_mut(location as usize)
                    {
                        *slot |= category.bit();
                    }
                }
                match rule.matcher {
                    Matcher::Nul => builtins.push(Builtin { rule, locations }),
                    Matcher::Pattern(pattern) => {
                        patterns.push(rules::expand(pattern));
                        members.push(Member {
                            rule,
                            locations,
                            verify: None,
                        });
                    }
                    Matcher::Verified(pattern, verify) => {
                        let expanded = rules::expand(pattern);
                        let regex = compile(rule.id, &expanded)?;
                        patterns.push(expanded);
                        members.push(Member {
                            rule,
                            locations,
                            verify: Some((regex, verify)),
                        });
                    }
                }
            }
            if members.is_empty() {
                continue;
            }
            // Each pattern alone first, so that an error names its rule.
            for (pattern, member) in patterns.iter().zip(&members) {
                compile(member.rule.id, pattern)?;
            }
            let set = RegexSetBuilder::new(&patterns)
                .size_limit(SIZE_LIMIT)
                .dfa_size_limit(SIZE_LIMIT)
                .build()
                .map_err(|e| InspectError::Pattern {
                    rule: "(set)",
                    message: e.to_string(),
                })?;
            groups.push(Group {
                category,
                set,
                members,
            });
        }
        Ok(Inspector {
            groups,
            builtins,
            location_categories,
            keywords: compile("(keywords)", prefilter::KEYWORDS)?,
            prefilter: true,
        })
    }

    /// Inspects one decoded value (the caller percent-decodes query parameters, form fields and
    /// the path; header values are passed as received). `None`: nothing found.
    pub fn inspect(&self, location: Location, value: &str) -> Option<Finding> {
        self.inspect_bytes(location, value.as_bytes())
    }

    /// Every string (keys and values, at any depth) of a JSON body; the first finding wins.
    /// Numbers, booleans and null carry no attack and are skipped.
    pub fn inspect_json(&self, body: &Value) -> Option<Finding> {
        // Depth-first in document order with an explicit stack: no recursion on attacker input.
        let mut stack = vec![body];
        while let Some(value) = stack.pop() {
            match value {
                Value::String(s) => {
                    if let Some(found) = self.inspect(Location::JsonValue, s) {
                        return Some(found);
                    }
                }
                Value::Array(items) => stack.extend(items.iter().rev()),
                Value::Object(map) => {
                    for key in map.keys() {
                        if let Some(found) = self.inspect(Location::JsonKey, key) {
                            return Some(found);
                        }
                    }
                    stack.extend(map.values().rev());
                }
                Value::Null | Value::Bool(_) | Value::Number(_) => {}
            }
        }
        None
    }

    /// An `application/x-www-form-urlencoded` body: names and values decoded (`+` is a space,
    /// `%XX` a byte) and inspected as [`Location::FormName`] / [`Location::FormValue`].
    pub fn inspect_form(&self, body: &[u8]) -> Option<Finding> {
        self.inspect_pairs(body, Location::FormName, Location::FormValue)
    }

    /// A raw query string (after `?`, not decoded): names and values decoded like a form and
    /// inspected as [`Location::QueryName`] / [`Location::QueryValue`].
    pub fn inspect_query(&self, query: &str) -> Option<Finding> {
        self.inspect_pairs(query.as_bytes(), Location::QueryName, Location::QueryValue)
    }

    /// A raw request path (without the query string): percent-decoded once and inspected as
    /// [`Location::Path`]. `+` stays a plus: it is not a space in a path.
    pub fn inspect_path(&self, path: &str) -> Option<Finding> {
        let raw = path.as_bytes();
        if !raw.contains(&b'%') {
            return self.inspect_bytes(Location::Path, raw);
        }
        let mut decoded = Vec::with_capacity(raw.len());
        normalize::form_decode_into(raw, false, &mut decoded);
        self.inspect_bytes(Location::Path, &decoded)
    }

    /// The value of a `cookie` header: each cookie's value is inspected as
    /// [`Location::Cookie`] (names are the application's own and not inspected).
    pub fn inspect_cookie_header(&self, header: &str) -> Option<Finding> {
        header.split(';').find_map(|cookie| {
            let value = cookie.split_once('=').map_or("", |(_, v)| v.trim());
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            self.inspect(Location::Cookie, value)
        })
    }

    /// The rule catalogue, for docs and the CLI.
    pub fn rules() -> &'static [RuleInfo] {
        rules::catalogue()
    }

    /// `name=value&…` pairs, each decoded into one reused buffer.
    fn inspect_pairs(&self, raw: &[u8], names: Location, values: Location) -> Option<Finding> {
        let mut buffer = Vec::new();
        for pair in raw.split(|&b| b == b'&') {
            let (name, value) = match pair.iter().position(|&b| b == b'=') {
                Some(eq) => (
                    pair.get(..eq).unwrap_or_default(),
                    pair.get(eq + 1..).unwrap_or_default(),
                ),
                None => (pair, &[][..]),
            };
            for (part, location) in [(name, names), (value, values)] {
                if part.is_empty() {
                    continue;
                }
                buffer.clear();
                normalize::form_decode_into(part, true, &mut buffer);
                if let Some(found) = self.inspect_bytes(location, &buffer) {
                    return Some(found);
                }
            }
        }
        None
    }

    /// The engine: pre-filter, working copy, category sets, then the members that matched.
    fn inspect_bytes(&self, location: Location, value: &[u8]) -> Option<Finding> {
        let mut candidates = self
            .location_categories
            .get(location as usize)
            .copied()
            .unwrap_or(0);
        if self.prefilter {
            let mut found = prefilter::scan(value);
            if found & candidates != candidates && self.keywords.is_match(value) {
                found = prefilter::ALL;
            }
            candidates &= found;
        }
        if candidates == 0 {
            return None;
        }
        let work = normalize(value);
        for group in &self.groups {
            if candidates & group.category.bit() == 0 || !group.set.is_match(&work.bytes) {
                continue;
            }
            for index in group.set.matches(&work.bytes).iter() {
                let Some(member) = group.members.get(index) else {
                    continue;
                };
                if member.locations & location.bit() == 0 {
                    continue;
                }
                if let Some((regex, verify)) = &member.verify
                    && !regex.captures_iter(&work.bytes).any(|c| verify(&c))
                {
                    continue;
                }
                return Some(Finding {
                    rule: member.rule.id,
                    category: group.category,
                    location,
                });
            }
        }
        self.builtins
            .iter()
            .find(|b| {
                candidates & b.rule.category.bit() != 0
                    && b.locations & location.bit() != 0
                    && work.had_nul
            })
            .map(|b| Finding {
                rule: b.rule.id,
                category: b.rule.category,
                location,
            })
    }
}

/// Generous limits: the sets are compiled once, and a larger lazy-DFA cache avoids thrashing.
const SIZE_LIMIT: usize = 32 << 20;

fn compile(rule: &'static str, pattern: &str) -> Result<Regex, InspectError> {
    RegexBuilder::new(pattern)
        .size_limit(SIZE_LIMIT)
        .dfa_size_limit(SIZE_LIMIT)
        .build()
        .map_err(|e| InspectError::Pattern {
            rule,
            message: e.to_string(),
        })
}
