//! The rate-limit configuration: envoyproxy/ratelimit's YAML, compiled into per-domain trees.
//!
//! A file has a `domain` and nested `descriptors` (`key`, optional `value`, optional
//! `rate_limit`, nested `descriptors`). A request descriptor — a list of (key, value) entries —
//! walks the tree one level per entry; at each level the most specific rule wins: the exact
//! value, then the first wildcard value (`value: "foo*"`, `*` anywhere, in file order), then the
//! key alone. The rule applies only if the walk ends on the descriptor's last entry with a
//! `rate_limit` there (envoyproxy/ratelimit's "same level" rule).
//!
//! Our extension, inside `rate_limit`: `algorithm: fixed_window | gcra` (default fixed_window)
//! and `burst: N` for GCRA (default `requests_per_unit`).

use crate::algorithm::{Algorithm, Limit, Unit};
use crate::metrics::{Metrics, RuleCounters};
use crate::proto::rate_limit_descriptor::Entry;
use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Why a configuration was rejected: which file, where in it, and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or folder could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The YAML does not parse or has an unknown key (serde_yaml's message has the location).
    #[error("{path}: {message}")]
    Yaml {
        /// The file.
        path: PathBuf,
        /// Parser message with the key path and line.
        message: String,
    },
    /// The YAML parses but breaks a rule (empty key, bad unit, duplicate, ...).
    #[error("{path}: {at}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Where in the file, e.g. `descriptors[0].descriptors[1].rate_limit.unit`.
        at: String,
        /// What is wrong.
        message: String,
    },
}

/// A file's top level, with envoyproxy/ratelimit's keys (unknown keys are errors, as there).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct YamlRoot {
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    descriptors: Option<Vec<YamlDescriptor>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct YamlDescriptor {
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    rate_limit: Option<YamlRateLimit>,
    #[serde(default)]
    descriptors: Option<Vec<YamlDescriptor>>,
    #[serde(default)]
    shadow_mode: bool,
    #[serde(default)]
    quota_mode: bool,
    #[serde(default)]
    detailed_metric: bool,
    #[serde(default)]
    value_to_metric: bool,
    #[serde(default)]
    share_threshold: bool,
    /// Accepted for compatibility; response dynamic metadata is not produced.
    #[serde(default)]
    metadata: Option<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct YamlRateLimit {
    #[serde(default)]
    requests_per_unit: u32,
    #[serde(default)]
    unit: Option<String>,
    #[serde(default)]
    unlimited: bool,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    replaces: Option<Vec<YamlReplaces>>,
    #[serde(default)]
    algorithm: Option<String>,
    #[serde(default)]
    burst: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct YamlReplaces {
    #[serde(default)]
    name: Option<String>,
}

/// What a matched rule does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleKind {
    /// `unlimited: true`: answered OK without touching the store.
    Unlimited,
    /// A limit to check in the store.
    Limited(Limit),
}

/// A configured `rate_limit`, with what the service needs to apply and count it.
#[derive(Debug)]
pub struct Rule {
    /// The metrics label: the rule's key path without the domain, e.g.
    /// `message_type_marketing.to_number` (envoyproxy/ratelimit's stats key).
    pub descriptor: String,
    /// `rate_limit.name`, which other rules may replace.
    pub name: Option<String>,
    /// Names of rules this one replaces when both match in one request.
    pub replaces: Vec<String>,
    /// The limit, or unlimited.
    pub kind: RuleKind,
    /// Over-limit decisions are answered OK (and counted as `shadow_over_limit`).
    pub shadow_mode: bool,
    /// envoyproxy/ratelimit's quota mode: the request is over the limit only when every
    /// quota-mode descriptor of it is.
    pub quota_mode: bool,
    /// Metrics label built from the request's values (unbounded cardinality, opt-in).
    pub detailed_metric: bool,
    /// Counters under [`Rule::descriptor`].
    pub counters: RuleCounters,
}

/// How an entry matched at one level.
#[derive(Debug, Clone, Copy)]
enum How<'c> {
    Exact,
    Wildcard(&'c str),
    Default,
}

/// A `*` pattern, split once at load.
#[derive(Debug)]
struct Wildcard {
    pattern: String,
    parts: Vec<String>,
}

impl Wildcard {
    fn new(pattern: &str) -> Self {
        Self {
            pattern: pattern.to_owned(),
            parts: pattern.split('*').map(str::to_owned).collect(),
        }
    }

    /// Whether `value` matches: each `*` stands for zero or more characters.
    fn matches(&self, value: &str) -> bool {
        let Some((first, rest)) = self.parts.split_first() else {
            return value.is_empty();
        };
        let Some((last, middle)) = rest.split_last() else {
            return first == value;
        };
        let Some(mut remaining) = value.strip_prefix(first.as_str()) else {
            return false;
        };
        let Some(body) = remaining.strip_suffix(last.as_str()) else {
            return false;
        };
        remaining = body;
        for part in middle {
            match remaining.find(part.as_str()) {
                Some(at) => remaining = remaining.get(at + part.len()..).unwrap_or(""),
                None => return false,
            }
        }
        true
    }
}

/// One configured descriptor.
#[derive(Debug)]
struct Node {
    rule: Option<Rule>,
    children: Level,
    value_to_metric: bool,
    share_threshold: bool,
}

/// The rules of one key at one level.
#[derive(Debug, Default)]
struct KeyRules {
    exact: HashMap<String, Node>,
    wildcards: Vec<(Wildcard, Node)>,
    any: Option<Node>,
}

/// One level of the tree: rules by key.
#[derive(Debug, Default)]
struct Level {
    by_key: HashMap<String, KeyRules>,
}

impl Level {
    fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The most specific node for (key, value): exact value, first matching wildcard, key only.
    fn find(&self, key: &str, value: &str) -> Option<(&Node, How<'_>)> {
        let rules = self.by_key.get(key)?;
        if let Some(node) = rules.exact.get(value) {
            return Some((node, How::Exact));
        }
        if let Some((w, node)) = rules.wildcards.iter().find(|(w, _)| w.matches(value)) {
            return Some((node, How::Wildcard(w.pattern.as_str())));
        }
        rules.any.as_ref().map(|node| (node, How::Default))
    }
}

/// One domain's rules.
#[derive(Debug)]
pub struct Domain {
    name: String,
    root: Level,
    /// Whether any rule needs request values for its metric label or storage key (then a
    /// lookup records its path; otherwise it allocates nothing).
    dynamic: bool,
    /// `ratelimit_unmatched_descriptors_total{domain}`.
    pub unmatched: Counter,
    /// Decisions made with a request's own limit override (`descriptor="override"`).
    pub override_counters: RuleCounters,
}

/// A descriptor's matching rule, with what depends on the request's values.
#[derive(Debug)]
pub struct Match<'c> {
    /// The rule.
    pub rule: &'c Rule,
    /// The metrics label when it depends on the request (detailed_metric, value_to_metric);
    /// `None` means [`Rule::descriptor`].
    pub label: Option<String>,
    /// Entries whose value is replaced by its wildcard pattern in the storage key
    /// (`share_threshold`: all values matching the pattern share one counter).
    pub shared: Vec<(usize, &'c str)>,
}

impl Domain {
    /// The domain's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The rule for a request descriptor's entries, if any (envoyproxy/ratelimit's GetLimit).
    pub fn lookup<'c>(&'c self, entries: &[Entry]) -> Option<Match<'c>> {
        if !self.dynamic {
            return self.walk(entries, |_, _, _, _| {}).map(|rule| Match {
                rule,
                label: None,
                shared: Vec::new(),
            });
        }
        let mut steps: Vec<(How<'c>, bool, bool)> = Vec::with_capacity(entries.len());
        let rule = self.walk(entries, |_, _, node, how| {
            steps.push((how, node.value_to_metric, node.share_threshold));
        })?;
        let shared: Vec<(usize, &'c str)> = steps
            .iter()
            .enumerate()
            .filter_map(|(i, (how, _, share))| match how {
                How::Wildcard(pattern) if *share => Some((i, *pattern)),
                _ => None,
            })
            .collect();
        let any_value_to_metric = steps.iter().any(|(_, v, _)| *v);
        let label = if rule.detailed_metric {
            let mut label = String::new();
            for (i, entry) in entries.iter().enumerate() {
                if i > 0 {
                    label.push('.');
                }
                let value = shared
                    .iter()
                    .find(|(at, _)| *at == i)
                    .map_or(entry.value.as_str(), |(_, p)| p);
                let _ = write!(label, "{}_{}", entry.key, value);
            }
            Some(label)
        } else if any_value_to_metric {
            let mut label = String::new();
            for (i, (entry, (how, value_to_metric, share))) in
                entries.iter().zip(steps.iter()).enumerate()
            {
                if i > 0 {
                    label.push('.');
                }
                label.push_str(&entry.key);
                let value = match how {
                    How::Wildcard(pattern) if *share || !*value_to_metric => *pattern,
                    How::Wildcard(_) | How::Exact => entry.value.as_str(),
                    How::Default if *value_to_metric => entry.value.as_str(),
                    How::Default => "",
                };
                if !value.is_empty() {
                    label.push('_');
                    label.push_str(value);
                }
            }
            Some(label)
        } else {
            None
        };
        Some(Match {
            rule,
            label,
            shared,
        })
    }

    /// Walks the tree along `entries`, calling `visit` for each matched level; returns the rule
    /// when the walk ends on the last entry at a node with a `rate_limit`.
    fn walk<'c>(
        &'c self,
        entries: &[Entry],
        mut visit: impl FnMut(usize, &Entry, &'c Node, How<'c>),
    ) -> Option<&'c Rule> {
        let mut level = &self.root;
        let last = entries.len().checked_sub(1)?;
        for (i, entry) in entries.iter().enumerate() {
            let (node, how) = level.find(&entry.key, &entry.value)?;
            visit(i, entry, node, how);
            if i == last {
                return node.rule.as_ref();
            }
            if node.children.is_empty() {
                return None;
            }
            level = &node.children;
        }
        None
    }
}

/// The whole configuration in force: domains from every file.
#[derive(Debug, Default)]
pub struct RateLimitConfig {
    domains: HashMap<String, Domain>,
}

impl RateLimitConfig {
    /// Loads a file, or every `*.yaml` / `*.yml` file of a folder (not hidden ones), as
    /// envoyproxy/ratelimit loads its runtime folder. Two files may not define the same domain.
    pub fn load(path: &Path, metrics: &Metrics) -> Result<Self, ConfigError> {
        let mut sources = Vec::new();
        for file in config_files(path)? {
            let text = std::fs::read_to_string(&file).map_err(|source| ConfigError::Io {
                path: file.clone(),
                source,
            })?;
            sources.push((file, text));
        }
        Self::from_sources(&sources, metrics)
    }

    /// Compiles already-read files (`(name, YAML text)`).
    pub fn from_sources(
        sources: &[(PathBuf, String)],
        metrics: &Metrics,
    ) -> Result<Self, ConfigError> {
        let mut domains: HashMap<String, Domain> = HashMap::new();
        for (path, text) in sources {
            let root: YamlRoot = serde_yaml::from_str(text).map_err(|e| ConfigError::Yaml {
                path: path.clone(),
                message: e.to_string(),
            })?;
            let invalid = |at: &str, message: String| ConfigError::Invalid {
                path: path.clone(),
                at: at.to_owned(),
                message,
            };
            let name = root.domain.unwrap_or_default();
            if name.is_empty() {
                return Err(invalid(
                    "domain",
                    "config file cannot have empty domain".into(),
                ));
            }
            if domains.contains_key(&name) {
                return Err(invalid(
                    "domain",
                    format!("duplicate domain '{name}' (already defined by another file)"),
                ));
            }
            let mut builder = Builder {
                domain: &name,
                metrics,
                path,
                dynamic: false,
            };
            let root_level =
                builder.level(root.descriptors.unwrap_or_default(), "descriptors", "")?;
            let dynamic = builder.dynamic;
            domains.insert(
                name.clone(),
                Domain {
                    unmatched: metrics.unmatched_counter(&name),
                    override_counters: metrics.rule_counters(&name, "override"),
                    name,
                    root: root_level,
                    dynamic,
                },
            );
        }
        Ok(Self { domains })
    }

    /// A domain's rules.
    pub fn domain(&self, name: &str) -> Option<&Domain> {
        self.domains.get(name)
    }

    /// The number of domains.
    pub fn domain_count(&self) -> usize {
        self.domains.len()
    }
}

/// The files a configuration path stands for, sorted by name.
pub fn config_files(path: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let io = |source| ConfigError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let entry = entry.map_err(io)?;
        let file = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        if name.starts_with('.') || !yaml {
            continue;
        }
        // Follows symlinks (a Kubernetes ConfigMap's files are links into `..data/`).
        if std::fs::metadata(&file)
            .map(|m| m.is_file())
            .unwrap_or(false)
        {
            files.push(file);
        }
    }
    files.sort();
    Ok(files)
}

/// Compiles one file's descriptors.
struct Builder<'a> {
    domain: &'a str,
    metrics: &'a Metrics,
    path: &'a Path,
    dynamic: bool,
}

impl Builder<'_> {
    fn invalid(&self, at: &str, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            at: at.to_owned(),
            message,
        }
    }

    fn level(
        &mut self,
        descriptors: Vec<YamlDescriptor>,
        at: &str,
        parent_key: &str,
    ) -> Result<Level, ConfigError> {
        let mut level = Level::default();
        for (i, mut d) in descriptors.into_iter().enumerate() {
            let here = format!("{at}[{i}]");
            let key = d.key.clone().unwrap_or_default();
            if key.is_empty() {
                return Err(self.invalid(&here, "descriptor has empty key".into()));
            }
            let value = d.value.clone().unwrap_or_default();
            let composite = if value.is_empty() {
                key.clone()
            } else {
                format!("{key}_{value}")
            };
            let full_key = if parent_key.is_empty() {
                composite.clone()
            } else {
                format!("{parent_key}.{composite}")
            };
            let wildcard = value.contains('*');
            if d.share_threshold && !wildcard {
                return Err(self.invalid(
                    &format!("{here}.share_threshold"),
                    format!("share_threshold needs a wildcard value, found '{composite}'"),
                ));
            }
            let rule = match d.rate_limit.take() {
                Some(r) => Some(self.rule(r, &d, &here, &full_key)?),
                None => None,
            };
            if d.value_to_metric || d.detailed_metric || d.share_threshold {
                self.dynamic = true;
            }
            if d.metadata.is_some() {
                tracing::warn!(
                    file = %self.path.display(),
                    at = %here,
                    "metadata is accepted but not returned (no response dynamic metadata)"
                );
            }
            let children = self.level(
                d.descriptors.unwrap_or_default(),
                &format!("{here}.descriptors"),
                &full_key,
            )?;
            let node = Node {
                rule,
                children,
                value_to_metric: d.value_to_metric,
                share_threshold: d.share_threshold,
            };
            let rules = level.by_key.entry(key).or_default();
            let duplicate = if value.is_empty() {
                rules.any.replace(node).is_some()
            } else if wildcard {
                if rules.wildcards.iter().any(|(w, _)| w.pattern == value) {
                    true
                } else {
                    rules.wildcards.push((Wildcard::new(&value), node));
                    false
                }
            } else {
                rules.exact.insert(value, node).is_some()
            };
            if duplicate {
                return Err(self.invalid(
                    &here,
                    format!(
                        "duplicate descriptor composite key '{}.{full_key}'",
                        self.domain
                    ),
                ));
            }
        }
        Ok(level)
    }

    fn rule(
        &self,
        r: YamlRateLimit,
        d: &YamlDescriptor,
        here: &str,
        full_key: &str,
    ) -> Result<Rule, ConfigError> {
        let at = format!("{here}.rate_limit");
        let unit_name = r.unit.unwrap_or_default();
        let unit = Unit::parse(&unit_name);
        let kind = if r.unlimited {
            if unit.is_some() {
                return Err(self.invalid(
                    &format!("{at}.unit"),
                    "should not specify rate limit unit when unlimited".into(),
                ));
            }
            if r.algorithm.is_some() || r.burst.is_some() {
                return Err(self.invalid(
                    &at,
                    "algorithm and burst do not apply to an unlimited rule".into(),
                ));
            }
            RuleKind::Unlimited
        } else {
            let Some(unit) = unit else {
                return Err(self.invalid(
                    &format!("{at}.unit"),
                    format!(
                        "invalid rate limit unit '{unit_name}' (second, minute, hour, day, week, month or year)"
                    ),
                ));
            };
            let algorithm = match r.algorithm.as_deref().unwrap_or("fixed_window") {
                "fixed_window" => {
                    if r.burst.is_some() {
                        return Err(self.invalid(
                            &format!("{at}.burst"),
                            "burst applies to algorithm: gcra only".into(),
                        ));
                    }
                    Algorithm::FixedWindow
                }
                "gcra" => {
                    let burst = r.burst.unwrap_or(r.requests_per_unit).max(1);
                    if r.burst == Some(0) {
                        return Err(
                            self.invalid(&format!("{at}.burst"), "burst must be at least 1".into())
                        );
                    }
                    Algorithm::Gcra { burst }
                }
                other => {
                    return Err(self.invalid(
                        &format!("{at}.algorithm"),
                        format!("unknown algorithm '{other}' (fixed_window or gcra)"),
                    ));
                }
            };
            RuleKind::Limited(Limit {
                requests_per_unit: r.requests_per_unit,
                unit,
                algorithm,
            })
        };
        let name = r.name.filter(|n| !n.is_empty());
        let mut replaces = Vec::new();
        for (i, rep) in r.replaces.unwrap_or_default().into_iter().enumerate() {
            let rep_name = rep.name.unwrap_or_default();
            if rep_name.is_empty() {
                return Err(self.invalid(
                    &format!("{at}.replaces[{i}]"),
                    "should not have an empty replaces entry".into(),
                ));
            }
            if name.as_deref() == Some(rep_name.as_str()) {
                return Err(self.invalid(
                    &format!("{at}.replaces[{i}]"),
                    "replaces should not contain name of same descriptor".into(),
                ));
            }
            replaces.push(rep_name);
        }
        Ok(Rule {
            counters: self.metrics.rule_counters(self.domain, full_key),
            descriptor: full_key.to_owned(),
            name,
            replaces,
            kind,
            shadow_mode: d.shadow_mode,
            quota_mode: d.quota_mode,
            detailed_metric: d.detailed_metric,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(yaml: &str) -> Result<RateLimitConfig, ConfigError> {
        RateLimitConfig::from_sources(
            &[(PathBuf::from("test.yaml"), yaml.to_owned())],
            &Metrics::new(),
        )
    }

    fn entries(pairs: &[(&str, &str)]) -> Vec<Entry> {
        pairs
            .iter()
            .map(|(k, v)| Entry {
                key: (*k).to_owned(),
                value: (*v).to_owned(),
            })
            .collect()
    }

    fn limit_of(config: &RateLimitConfig, domain: &str, pairs: &[(&str, &str)]) -> Option<u32> {
        let m = config.domain(domain)?.lookup(&entries(pairs))?;
        match &m.rule.kind {
            RuleKind::Limited(l) => Some(l.requests_per_unit),
            RuleKind::Unlimited => Some(u32::MAX),
        }
    }

    #[test]
    fn most_specific_match_and_same_level_rule() {
        let c = compile(
            "domain: edge\ndescriptors:\n  - key: remote_address\n    rate_limit: {unit: second, requests_per_unit: 10}\n  - key: remote_address\n    value: 50.0.0.5\n    rate_limit: {unit: second, requests_per_unit: 0}\n  - key: key\n    value: value\n    rate_limit: {unit: second, requests_per_unit: 300}\n",
        )
        .unwrap();
        assert_eq!(
            limit_of(&c, "edge", &[("remote_address", "50.0.0.1")]),
            Some(10)
        );
        assert_eq!(
            limit_of(&c, "edge", &[("remote_address", "50.0.0.5")]),
            Some(0)
        );
        assert_eq!(limit_of(&c, "edge", &[("key", "value")]), Some(300));
        assert_eq!(
            limit_of(&c, "edge", &[("key", "value"), ("subkey", "x")]),
            None,
            "more entries than levels: no match"
        );
        assert_eq!(limit_of(&c, "edge", &[("other", "x")]), None);
        assert_eq!(limit_of(&c, "nope", &[("key", "value")]), None);
    }

    #[test]
    fn wildcards_anywhere_in_file_order_after_exact() {
        let c = compile(
            "domain: w\ndescriptors:\n  - key: path\n    value: /api/*\n    rate_limit: {unit: minute, requests_per_unit: 1}\n  - key: path\n    value: /api/v*/users\n    rate_limit: {unit: minute, requests_per_unit: 2}\n  - key: path\n    value: /api/exact\n    rate_limit: {unit: minute, requests_per_unit: 3}\n  - key: path\n    value: '*/tail'\n    rate_limit: {unit: minute, requests_per_unit: 4}\n",
        )
        .unwrap();
        assert_eq!(limit_of(&c, "w", &[("path", "/api/exact")]), Some(3));
        assert_eq!(
            limit_of(&c, "w", &[("path", "/api/v2/users")]),
            Some(1),
            "first wildcard wins"
        );
        assert_eq!(limit_of(&c, "w", &[("path", "/x/tail")]), Some(4));
        assert_eq!(limit_of(&c, "w", &[("path", "/x/tails")]), None);
        let w = Wildcard::new("a*b*c");
        assert!(w.matches("abc"));
        assert!(w.matches("a-b-c"));
        assert!(!w.matches("ac"));
        assert!(!w.matches("abcx"));
        assert!(Wildcard::new("ab*ab").matches("abab"));
        assert!(!Wildcard::new("ab*ab").matches("aba"));
    }

    #[test]
    fn nested_descriptors_and_documented_errors() {
        let c = compile(
            "domain: messaging\ndescriptors:\n  - key: message_type\n    value: marketing\n    descriptors:\n      - key: to_number\n        rate_limit:\n          unit: day\n          requests_per_unit: 5\n  - key: to_number\n    rate_limit:\n      unit: day\n      requests_per_unit: 100\n",
        )
        .unwrap();
        assert_eq!(
            limit_of(
                &c,
                "messaging",
                &[("message_type", "marketing"), ("to_number", "2061111111")]
            ),
            Some(5)
        );
        assert_eq!(
            limit_of(&c, "messaging", &[("to_number", "2061111111")]),
            Some(100)
        );
        assert_eq!(
            limit_of(&c, "messaging", &[("message_type", "marketing")]),
            None
        );
        let m = c
            .domain("messaging")
            .unwrap()
            .lookup(&entries(&[
                ("message_type", "marketing"),
                ("to_number", "1"),
            ]))
            .unwrap();
        assert_eq!(m.rule.descriptor, "message_type_marketing.to_number");

        let err = |yaml: &str| compile(yaml).unwrap_err().to_string();
        assert!(err("descriptors: []\n").contains("empty domain"));
        let e = err(
            "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: minutes, requests_per_unit: 1}\n",
        );
        assert!(
            e.contains(
                "test.yaml: descriptors[0].rate_limit.unit: invalid rate limit unit 'minutes'"
            ),
            "{e}"
        );
        let e = err("domain: d\ndescriptors:\n  - key: a\n    rate_limt: {unit: minute}\n");
        assert!(e.contains("unknown field `rate_limt`"), "{e}");
        assert!(
            err("domain: d\ndescriptors:\n  - value: a\n")
                .contains("descriptors[0]: descriptor has empty key")
        );
        assert!(
            err("domain: d\ndescriptors:\n  - key: a\n  - key: a\n")
                .contains("duplicate descriptor composite key 'd.a'")
        );
        assert!(err("domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unlimited: true, unit: second}\n").contains("unlimited"));
        assert!(err("domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: 1, algorithm: leaky}\n").contains("unknown algorithm"));
        assert!(err("domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: 1, burst: 3}\n").contains("gcra only"));
        assert!(
            err("domain: d\ndescriptors:\n  - key: a\n    share_threshold: true\n")
                .contains("wildcard")
        );
        let two = RateLimitConfig::from_sources(
            &[
                (PathBuf::from("a.yaml"), "domain: d\n".into()),
                (PathBuf::from("b.yaml"), "domain: d\n".into()),
            ],
            &Metrics::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            two.starts_with("b.yaml: domain: duplicate domain 'd'"),
            "{two}"
        );
    }

    #[test]
    fn gcra_extension_and_unlimited() {
        let c = compile(
            "domain: d\ndescriptors:\n  - key: user\n    rate_limit: {unit: second, requests_per_unit: 10, algorithm: gcra, burst: 20}\n  - key: plan\n    rate_limit: {unit: minute, requests_per_unit: 6, algorithm: gcra}\n  - key: ldap\n    rate_limit: {unlimited: true}\n",
        )
        .unwrap();
        let d = c.domain("d").unwrap();
        let kind = |k: &str| d.lookup(&entries(&[(k, "x")])).unwrap().rule.kind.clone();
        assert_eq!(
            kind("user"),
            RuleKind::Limited(Limit {
                requests_per_unit: 10,
                unit: Unit::Second,
                algorithm: Algorithm::Gcra { burst: 20 }
            })
        );
        assert_eq!(
            kind("plan"),
            RuleKind::Limited(Limit {
                requests_per_unit: 6,
                unit: Unit::Minute,
                algorithm: Algorithm::Gcra { burst: 6 }
            })
        );
        assert_eq!(kind("ldap"), RuleKind::Unlimited);
    }

    #[test]
    fn metric_labels_detailed_value_to_metric_and_share_threshold() {
        let c = compile(
            "domain: m\ndescriptors:\n  - key: key1\n    detailed_metric: true\n    rate_limit: {unit: minute, requests_per_unit: 10}\n  - key: key1\n    value: value1\n    rate_limit: {unit: minute, requests_per_unit: 20}\n  - key: route\n    value_to_metric: true\n    descriptors:\n      - key: user\n        rate_limit: {unit: minute, requests_per_unit: 1}\n  - key: files\n    value: 'f*'\n    share_threshold: true\n    rate_limit: {unit: minute, requests_per_unit: 1}\n",
        )
        .unwrap();
        let d = c.domain("m").unwrap();
        let m = d.lookup(&entries(&[("key1", "other")])).unwrap();
        assert_eq!(m.label.as_deref(), Some("key1_other"));
        let m = d.lookup(&entries(&[("key1", "value1")])).unwrap();
        assert_eq!(m.label, None);
        assert_eq!(m.rule.descriptor, "key1_value1");
        let m = d
            .lookup(&entries(&[("route", "r1"), ("user", "u")]))
            .unwrap();
        assert_eq!(m.label.as_deref(), Some("route_r1.user"));
        let m = d.lookup(&entries(&[("files", "f123")])).unwrap();
        assert_eq!(m.shared, vec![(0, "f*")]);
    }

    #[test]
    fn folder_loads_yaml_files_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), "domain: a\n").unwrap();
        std::fs::write(dir.path().join("b.yml"), "domain: b\n").unwrap();
        std::fs::write(dir.path().join("c.txt"), "not yaml: [").unwrap();
        std::fs::write(dir.path().join(".hidden.yaml"), "not yaml: [").unwrap();
        let c = RateLimitConfig::load(dir.path(), &Metrics::new()).unwrap();
        assert_eq!(c.domain_count(), 2);
        let missing = RateLimitConfig::load(&dir.path().join("nope"), &Metrics::new()).unwrap_err();
        assert!(missing.to_string().contains("nope"));
    }
}
