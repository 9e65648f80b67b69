//! Envoy-style stats shared by every worker VM: counters, gauges and histograms by name.
//!
//! The ABI layer ([`crate::abi`]) creates wasm-defined metrics as `wasmcustom.<name>`, exactly
//! as Envoy does; the admin endpoints render them (`/stats`, `/stats/prometheus` with the
//! `wasmcustom` namespace stripped and `stats_config.stats_tags` applied).
//!
//! Fidelity notes (what differs from Envoy, on purpose or by simplification):
//! - Tags are extracted as Envoy's `TagProducerImpl` does: Envoy's default tag extractors
//!   (unless `stats_config.use_all_default_tags: false`) and the bootstrap's `stats_tags`, every
//!   extractor searched in the full stat name, the matched first groups removed (ranges united).
//!   Extractors without a prefix token run first, then those whose prefix token is the stat
//!   name's first `.`-separated token, each list in the order defaults-then-`stats_tags`; of
//!   several extractors with one tag name only the first that matches adds a tag. So
//!   `cluster.orders.upstream_rq_200` renders as
//!   `envoy_cluster_upstream_rq{envoy_response_code="200",envoy_cluster_name="orders"}`.
//! - Of Envoy's default extractors (`source/common/config/well_known_names.cc`) only those that
//!   can match a stat the host or a wasm module defines are implemented ([`DEFAULT_TAGS`]:
//!   response code and class, cluster name, HTTP connection manager prefix, listener address,
//!   worker id); the others name stats of filters the host does not have (Dynamo, Mongo, gRPC
//!   bridge, TLS ciphers, …). `\d` and `\w` are Unicode classes here, ASCII in Envoy's RE2;
//!   stat names are ASCII in practice. `stats_tags` regexes are Rust regexes (Envoy: ECMAScript
//!   `std::regex`), so lookarounds are refused at parse time.
//! - Native stats the host emits: `listener.<address>.downstream_cx_total`,
//!   `http.<stat_prefix>.downstream_cx_total`, `downstream_rq_total`, `downstream_rq_completed`,
//!   `downstream_rq_<N>xx`, `downstream_rq_time` (ms), and per cluster `upstream_rq_total`,
//!   `upstream_rq_completed`, `upstream_rq_<code>`, `upstream_rq_<N>xx`, `upstream_rq_time`
//!   (ms, from the end of the downstream request to the end of the upstream response, as the
//!   router's `chargeResponseTiming`), `upstream_rq_timeout`, `upstream_cx_connect_fail`; the
//!   per-cluster ones for wasm callouts too (JWKS, the rate-limit service), as Envoy's async
//!   client charges them. Envoy has many more (gauges, byte counts, retries, health checks, …).
//! - A stat is identified by its kind and full name, as in Envoy's per-type stat maps: a counter
//!   and a gauge may share a name.
//! - Gauges are `u64` and wrap below zero, as Envoy release builds do (`Gauge::sub` only asserts
//!   in debug builds).
//! - Histograms keep exact samples (up to [`MAX_SAMPLES`] per histogram) instead of Envoy's
//!   approximate log-linear histogram, so `_sum` and the percentiles are exact rather than
//!   approximated from bins; the Prometheus buckets are Envoy's default buckets.
//! - `/stats` text prints counters and gauges sorted by name, then histograms sorted by name as
//!   `name: P0(nan,v) P25(nan,v) … P100(nan,v)`; the interval value is always `nan` because the
//!   host has no stats flush interval, the second value is the cumulative percentile.
//! - Prometheus label values are escaped as the exposition format requires (`\\`, `\"`, `\n`).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use regex::Regex;

/// The three kinds of stat the ABI can define (`proxy_define_metric` type 0, 1, 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricKind {
    /// Only goes up.
    Counter,
    /// Goes up and down, or is set.
    Gauge,
    /// Records samples.
    Histogram,
}

/// Envoy's default histogram bucket upper bounds (`stats_config.histogram_bucket_settings`
/// unset), used for `_bucket{le=…}` in the Prometheus output. `+Inf` is implied.
pub const DEFAULT_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Samples kept per histogram for the `/stats` percentiles; beyond it only the count, sum and
/// buckets are updated (a test host never gets near it, but memory must stay bounded).
pub const MAX_SAMPLES: usize = 100_000;

/// The custom stat namespace Envoy registers for wasm-defined metrics.
const WASM_NAMESPACE: &str = "wasmcustom";

/// Percentiles Envoy prints in `/stats` text for histograms.
const QUANTILES: [(&str, f64); 10] = [
    ("P0", 0.0),
    ("P25", 0.25),
    ("P50", 0.5),
    ("P75", 0.75),
    ("P90", 0.9),
    ("P95", 0.95),
    ("P99", 0.99),
    ("P99.5", 0.995),
    ("P99.9", 0.999),
    ("P100", 1.0),
];

/// One `stats_config.stats_tags` entry: a regex whose first capture group is cut out of the
/// stat name and whose second group (or first, if there is only one) becomes the label value.
/// Searched anywhere in the full stat name, like Envoy's default extractors ([`DEFAULT_TAGS`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagSpecifier {
    /// The Prometheus label name (sanitised when rendered).
    pub tag_name: String,
    /// The regex, searched anywhere in the full stat name.
    pub regex: String,
}

/// Handle to one defined stat; only meaningful for the [`Stats`] that returned it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StatId(usize);

/// The process-wide stat store; clones share the same stats (one per host, all workers).
#[derive(Clone)]
pub struct Stats(Arc<Inner>);

struct Inner {
    tags: TagProducer,
    registry: RwLock<Registry>,
}

#[derive(Default)]
struct Registry {
    cells: Vec<Arc<Cell>>,
    index: HashMap<(MetricKind, String), usize>,
}

/// One stat, with its tag extraction done once at definition.
struct Cell {
    name: String,
    kind: MetricKind,
    tag_extracted_name: String,
    tags: Vec<(String, String)>,
    /// Counter or gauge value.
    value: AtomicU64,
    /// Histogram data (unused for counters and gauges).
    hist: Mutex<HistData>,
}

#[derive(Default)]
struct HistData {
    count: u64,
    sum: u128,
    /// Non-cumulative counts per [`DEFAULT_BUCKETS`] entry (samples above the last bound are
    /// only in `count`).
    buckets: [u64; DEFAULT_BUCKETS.len()],
    samples: Vec<u64>,
}

impl Stats {
    /// A store applying only `tags` (in order) for Prometheus rendering, as Envoy with
    /// `stats_config.use_all_default_tags: false`.
    pub fn new(tags: Vec<TagSpecifier>) -> Result<Stats, regex::Error> {
        Stats::from_stats_config(tags, false)
    }

    /// A store applying a bootstrap's `stats_config`: Envoy's default tag extractors when
    /// `use_all_default_tags` (Envoy's default when unset), and `tags`.
    pub fn from_stats_config(
        tags: Vec<TagSpecifier>,
        use_all_default_tags: bool,
    ) -> Result<Stats, regex::Error> {
        Ok(Stats(Arc::new(Inner {
            tags: TagProducer::new(tags, use_all_default_tags)?,
            registry: RwLock::new(Registry::default()),
        })))
    }

    /// Get-or-create the stat of this kind and full name (e.g. `wasmcustom.x`).
    pub fn define(&self, kind: MetricKind, name: &str) -> StatId {
        let key = (kind, name.to_string());
        if let Some(&i) = self.read().index.get(&key) {
            return StatId(i);
        }
        let mut reg = self
            .0
            .registry
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(&i) = reg.index.get(&key) {
            return StatId(i);
        }
        let (tag_extracted_name, tags) = self.0.tags.extract(name);
        let i = reg.cells.len();
        reg.cells.push(Arc::new(Cell {
            name: name.to_string(),
            kind,
            tag_extracted_name,
            tags,
            value: AtomicU64::new(0),
            hist: Mutex::new(HistData::default()),
        }));
        reg.index.insert(key, i);
        StatId(i)
    }

    /// The kind the stat was defined with (`Counter` for an id this store never issued).
    pub fn kind(&self, id: StatId) -> MetricKind {
        self.cell(id).map_or(MetricKind::Counter, |c| c.kind)
    }

    /// Adds to a counter (wrapping); ignored for other kinds.
    pub fn add_counter(&self, id: StatId, delta: u64) {
        if let Some(c) = self.cell(id).filter(|c| c.kind == MetricKind::Counter) {
            c.value.fetch_add(delta, Ordering::Relaxed);
        }
    }

    /// Adds a signed delta to a gauge (wrapping below zero as Envoy release builds); ignored
    /// for other kinds.
    pub fn add_gauge(&self, id: StatId, delta: i64) {
        if let Some(c) = self.cell(id).filter(|c| c.kind == MetricKind::Gauge) {
            if delta >= 0 {
                c.value.fetch_add(delta.unsigned_abs(), Ordering::Relaxed);
            } else {
                c.value.fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
            }
        }
    }

    /// Sets a gauge (last writer wins across workers, as Envoy); ignored for other kinds.
    pub fn set_gauge(&self, id: StatId, value: u64) {
        if let Some(c) = self.cell(id).filter(|c| c.kind == MetricKind::Gauge) {
            c.value.store(value, Ordering::Relaxed);
        }
    }

    /// Records one histogram sample; ignored for other kinds (the ABI maps
    /// `proxy_record_metric` on counters and gauges to add/set itself).
    pub fn record(&self, id: StatId, value: u64) {
        let Some(c) = self.cell(id).filter(|c| c.kind == MetricKind::Histogram) else {
            return;
        };
        let mut h = c.hist.lock().unwrap_or_else(PoisonError::into_inner);
        h.count += 1;
        h.sum += u128::from(value);
        // Bucket bounds are exact integers or 0.5, so the f64 comparison is exact.
        #[allow(clippy::cast_precision_loss)]
        let v = value as f64;
        if let Some(b) = DEFAULT_BUCKETS.iter().position(|&bound| v <= bound) {
            h.buckets[b] += 1;
        }
        if h.samples.len() < MAX_SAMPLES {
            h.samples.push(value);
        }
    }

    /// Counter or gauge value; 0 for histograms and unknown ids.
    pub fn value(&self, id: StatId) -> u64 {
        self.cell(id)
            .filter(|c| c.kind != MetricKind::Histogram)
            .map_or(0, |c| c.value.load(Ordering::Relaxed))
    }

    /// Looks a stat up by full name (counter first, then gauge, then histogram); a histogram's
    /// value is its sample count.
    pub fn find(&self, name: &str) -> Option<(MetricKind, u64)> {
        let reg = self.read();
        for kind in [
            MetricKind::Counter,
            MetricKind::Gauge,
            MetricKind::Histogram,
        ] {
            if let Some(&i) = reg.index.get(&(kind, name.to_string())) {
                let cell = reg.cells.get(i)?;
                let v = match kind {
                    MetricKind::Histogram => {
                        cell.hist
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .count
                    }
                    _ => cell.value.load(Ordering::Relaxed),
                };
                return Some((kind, v));
            }
        }
        None
    }

    /// Envoy's `/stats` text: `name: value` for counters and gauges sorted by name, then
    /// histograms sorted by name with their percentiles (or `No recorded values`).
    pub fn render_text(&self) -> String {
        let cells = self.snapshot();
        let mut numeric: Vec<&Arc<Cell>> = cells
            .iter()
            .filter(|c| c.kind != MetricKind::Histogram)
            .collect();
        numeric.sort_by(|a, b| a.name.cmp(&b.name).then(kind_order(a.kind, b.kind)));
        let mut hists: Vec<&Arc<Cell>> = cells
            .iter()
            .filter(|c| c.kind == MetricKind::Histogram)
            .collect();
        hists.sort_by(|a, b| a.name.cmp(&b.name));
        let mut out = String::new();
        for c in numeric {
            let _ = writeln!(out, "{}: {}", c.name, c.value.load(Ordering::Relaxed));
        }
        for c in hists {
            let h = c.hist.lock().unwrap_or_else(PoisonError::into_inner);
            if h.count == 0 {
                let _ = writeln!(out, "{}: No recorded values", c.name);
                continue;
            }
            let mut sorted = h.samples.clone();
            drop(h);
            sorted.sort_unstable();
            let parts: Vec<String> = QUANTILES
                .iter()
                .map(|(label, q)| format!("{label}(nan,{})", fmt_g(percentile(&sorted, *q))))
                .collect();
            let _ = writeln!(out, "{}: {}", c.name, parts.join(" "));
        }
        out
    }

    /// Envoy's `/stats/prometheus`: counters, then gauges, then histograms; within each type one
    /// `# TYPE` group per tag-extracted name (sorted), its series sorted by full stat name, and
    /// a blank line after each group.
    pub fn render_prometheus(&self) -> String {
        let cells = self.snapshot();
        let mut out = String::new();
        for (kind, type_name) in [
            (MetricKind::Counter, "counter"),
            (MetricKind::Gauge, "gauge"),
            (MetricKind::Histogram, "histogram"),
        ] {
            let mut groups: BTreeMap<&str, Vec<&Arc<Cell>>> = BTreeMap::new();
            for c in cells.iter().filter(|c| c.kind == kind) {
                groups.entry(&c.tag_extracted_name).or_default().push(c);
            }
            for (extracted, mut members) in groups {
                let Some(name) = prometheus_name(extracted) else {
                    continue;
                };
                members.sort_by(|a, b| a.name.cmp(&b.name));
                let _ = writeln!(out, "# TYPE {name} {type_name}");
                for c in members {
                    let tags = formatted_tags(&c.tags);
                    if kind == MetricKind::Histogram {
                        render_histogram(&mut out, &name, &tags, c);
                    } else {
                        let v = c.value.load(Ordering::Relaxed);
                        let _ = writeln!(out, "{name}{{{tags}}} {v}");
                    }
                }
                out.push('\n');
            }
        }
        out
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.0
            .registry
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn cell(&self, id: StatId) -> Option<Arc<Cell>> {
        self.read().cells.get(id.0).cloned()
    }

    fn snapshot(&self) -> Vec<Arc<Cell>> {
        self.read().cells.clone()
    }
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stats")
            .field("tags", &self.0.tags.len())
            .field("stats", &self.read().cells.len())
            .finish()
    }
}

/// Orders a counter before a gauge of the same name in `/stats` text.
fn kind_order(a: MetricKind, b: MetricKind) -> std::cmp::Ordering {
    let rank = |k| match k {
        MetricKind::Counter => 0,
        MetricKind::Gauge => 1,
        MetricKind::Histogram => 2,
    };
    rank(a).cmp(&rank(b))
}

/// How one of Envoy's default tag extractors finds its value.
#[derive(Debug, Clone, Copy)]
pub enum DefaultTag {
    /// A regex (Envoy's `addRe2`): first group removed, second group the value; a value equal
    /// to the second field adds no tag (Envoy's negative match).
    Regex(&'static str, Option<&'static str>),
    /// A token pattern (Envoy's `addTokenized`): `.`-separated tokens, `*` one token, `**` any
    /// number of tokens, `$` the one token that is the value (removed with one adjacent dot).
    Tokens(&'static str),
}

/// One IPv4 or bracketed IPv6 address with `_port`, as Envoy writes a listener address in stat
/// names (`127.0.0.1_8443`, `[__1]_8443`).
const ADDRESS: &str = r"(?:(?:\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[[a-fA-F_\d]+\])_\d+)";
/// A tag value: anything but a dot.
const TAG_VALUE: &str = r"[^\.]+";

/// Envoy's default tag extractors (`source/common/config/well_known_names.cc`, in its order)
/// that can match the stats the host and wasm modules define; `<ADDRESS>` and `<TAG_VALUE>`
/// are expanded as Envoy's `expandRegex` does.
pub const DEFAULT_TAGS: [(&str, DefaultTag); 8] = [
    // *_rq(_<response_code>)
    (
        "envoy.response_code",
        DefaultTag::Regex(r"_rq(_(\d{3}))$", None),
    ),
    // *_rq_(<response_code_class>)xx
    (
        "envoy.response_code_class",
        DefaultTag::Regex(r"_rq_((\d))xx$", None),
    ),
    // cluster.(<cluster_name>.)*
    ("envoy.cluster_name", DefaultTag::Tokens("cluster.$.**")),
    // listener.[<address>.]http.(<stat_prefix>.)*
    (
        "envoy.http_conn_manager_prefix",
        DefaultTag::Regex(r"^listener\..*?\.http\.((<TAG_VALUE>)\.)", None),
    ),
    // http.(<stat_prefix>.)*
    (
        "envoy.http_conn_manager_prefix",
        DefaultTag::Tokens("http.$.**"),
    ),
    // listener.<address|stat_prefix>.(worker_<id>.)*, listener_manager.(worker_<id>.)*,
    // server.(worker_<id>.)*
    (
        "envoy.worker_id",
        DefaultTag::Regex(
            r"^(?:listener\.(?:<ADDRESS>|<TAG_VALUE>)\.|server\.|listener_manager\.)worker_((\d+)\.)",
            None,
        ),
    ),
    // listener.(<address|stat_prefix>.)*, except "admin"
    (
        "envoy.listener_address",
        DefaultTag::Regex(r"^listener\.((<ADDRESS>|<TAG_VALUE>)\.)", Some("admin")),
    ),
    // vhost.(<virtual host name>.)*
    ("envoy.virtual_host", DefaultTag::Tokens("vhost.$.**")),
];

/// One tag extractor.
struct Extractor {
    name: String,
    matcher: Matcher,
    /// Another extractor has the same tag name (only the first that matches adds a tag).
    shared_name: bool,
}

enum Matcher {
    /// `re2`: a default extractor (Envoy's RE2 extractor: empty groups do not count); else a
    /// `stats_tags` regex (Envoy's `std::regex` extractor: a participating first group does).
    Regex {
        re: Regex,
        negative: Option<&'static str>,
        re2: bool,
    },
    Tokens {
        tokens: Vec<&'static str>,
        /// Index of `$` in `tokens`.
        at: usize,
    },
}

/// Envoy's `TagProducerImpl`: extractors without a prefix token, then per prefix token.
struct TagProducer {
    without_prefix: Vec<Extractor>,
    by_prefix: HashMap<String, Vec<Extractor>>,
}

impl TagProducer {
    fn new(custom: Vec<TagSpecifier>, defaults: bool) -> Result<TagProducer, regex::Error> {
        let mut all: Vec<(String, Option<String>, Matcher)> = Vec::new();
        if defaults {
            for (name, tag) in DEFAULT_TAGS {
                let (prefix, matcher) = match tag {
                    DefaultTag::Regex(re, negative) => {
                        let re = re
                            .replace("<ADDRESS>", ADDRESS)
                            .replace("<TAG_VALUE>", TAG_VALUE);
                        (
                            regex_prefix(&re),
                            Matcher::Regex {
                                re: Regex::new(&re)?,
                                negative,
                                re2: true,
                            },
                        )
                    }
                    DefaultTag::Tokens(pattern) => {
                        let tokens: Vec<&'static str> = pattern.split('.').collect();
                        let at = tokens.iter().position(|t| *t == "$").unwrap_or(0);
                        let prefix = tokens
                            .first()
                            .filter(|t| !matches!(**t, "$" | "*" | "**"))
                            .map(|t| (*t).to_string());
                        (prefix, Matcher::Tokens { tokens, at })
                    }
                };
                all.push((name.to_string(), prefix, matcher));
            }
        }
        for t in custom {
            let re = Regex::new(&t.regex)?;
            all.push((
                t.tag_name,
                regex_prefix(&t.regex),
                Matcher::Regex {
                    re,
                    negative: None,
                    re2: false,
                },
            ));
        }
        let mut producer = TagProducer {
            without_prefix: Vec::new(),
            by_prefix: HashMap::new(),
        };
        let names: Vec<String> = all.iter().map(|(n, _, _)| n.clone()).collect();
        for (name, prefix, matcher) in all {
            let extractor = Extractor {
                shared_name: names.iter().filter(|n| **n == name).count() > 1,
                name,
                matcher,
            };
            match prefix {
                Some(p) => producer.by_prefix.entry(p).or_default().push(extractor),
                None => producer.without_prefix.push(extractor),
            }
        }
        Ok(producer)
    }

    fn len(&self) -> usize {
        self.without_prefix.len() + self.by_prefix.values().map(Vec::len).sum::<usize>()
    }

    /// The tag-extracted name and the tags, in extraction order.
    fn extract(&self, name: &str) -> (String, Vec<(String, String)>) {
        let mut tags: Vec<(String, String)> = Vec::new();
        let mut remove = vec![false; name.len()];
        let first_token = name.find('.').map(|dot| &name[..dot]);
        let prefixed = first_token
            .and_then(|t| self.by_prefix.get(t))
            .map_or(&[][..], Vec::as_slice);
        for e in self.without_prefix.iter().chain(prefixed) {
            if e.shared_name && tags.iter().any(|(n, _)| *n == e.name) {
                continue;
            }
            let Some((range, value)) = e.matcher.find(name) else {
                continue;
            };
            tags.push((e.name.clone(), value.to_string()));
            for flag in remove.iter_mut().take(range.end).skip(range.start) {
                *flag = true;
            }
        }
        let extracted: String = name
            .char_indices()
            .filter(|(i, _)| !remove.get(*i).copied().unwrap_or(false))
            .map(|(_, ch)| ch)
            .collect();
        (extracted, tags)
    }
}

impl Matcher {
    /// The byte range to remove and the tag value, when this extractor matches `name`.
    fn find<'n>(&self, name: &'n str) -> Option<(std::ops::Range<usize>, &'n str)> {
        match self {
            Matcher::Regex { re, negative, re2 } => {
                let caps = re.captures(name)?;
                let removed = caps.get(1).filter(|m| !*re2 || !m.is_empty())?;
                let value = caps
                    .get(2)
                    .filter(|m| !*re2 || !m.is_empty())
                    .unwrap_or(removed);
                if negative.is_some_and(|n| n == value.as_str()) {
                    return None;
                }
                Some((removed.range(), value.as_str()))
            }
            Matcher::Tokens { tokens, at } => {
                let input: Vec<&str> = name.split('.').collect();
                let (index, start) = match_tokens(tokens, *at, &input, 0, 0, 0)??;
                let value = input.get(index)?;
                let mut range = start..start + value.len();
                if index + 1 < input.len() {
                    range.end += 1;
                } else if range.start > 0 {
                    range.start -= 1;
                }
                Some((range, value))
            }
        }
    }
}

/// Envoy's `TagExtractorTokensImpl::searchTags`: whether `input[i..]` matches `pattern[p..]`
/// (`c` is the byte offset of `input[i]`), and if so the index and byte offset of the input
/// token that `$` matched, when `$` is in that part of the pattern.
fn match_tokens(
    pattern: &[&str],
    at: usize,
    input: &[&str],
    mut i: usize,
    mut p: usize,
    mut c: usize,
) -> Option<Option<(usize, usize)>> {
    let mut found = None;
    while let (Some(token), Some(&expected)) = (input.get(i), pattern.get(p)) {
        if p == at {
            found = Some((i, c));
        } else if expected == "**" {
            if p + 1 == pattern.len() {
                return Some(found);
            }
            // The rest of the pattern must match from this token or a later one.
            while let Some(skipped) = input.get(i) {
                if let Some(rest) = match_tokens(pattern, at, input, i, p + 1, c) {
                    return Some(found.or(rest));
                }
                c += skipped.len() + 1;
                i += 1;
            }
            return None;
        } else if expected != "*" && expected != *token {
            return None;
        }
        c += token.len() + 1;
        i += 1;
        p += 1;
    }
    (p == pattern.len() && i == input.len()).then_some(found)
}

/// Envoy's `extractRegexPrefix`: the literal first token of a regex anchored with `^` and
/// followed by `\.` (or `(?=\.)`), or making up the whole regex before `$`.
fn regex_prefix(regex: &str) -> Option<String> {
    let rest = regex.strip_prefix('^')?;
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    if end == 0 {
        return None;
    }
    let after = &rest[end..];
    let ok = (after.len() > 1 && (after.starts_with(r"\.") || after.starts_with(r"(?=\.)")))
        || after == "$";
    ok.then(|| rest[..end].to_string())
}

/// `[^a-zA-Z0-9_]` → `_`, per character.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Envoy's `PrometheusStatsFormatter::metricName`: `wasmcustom.` stripped and no `envoy_`
/// prefix (omitted if empty or digit-leading), otherwise `envoy_` + sanitised name.
fn prometheus_name(extracted: &str) -> Option<String> {
    if let Some(rest) = extracted
        .strip_prefix(WASM_NAMESPACE)
        .and_then(|r| r.strip_prefix('.'))
    {
        let s = sanitize(rest);
        return match s.chars().next() {
            None => None,
            Some(c) if c.is_ascii_digit() => None,
            Some(_) => Some(s),
        };
    }
    Some(format!("envoy_{}", sanitize(extracted)))
}

/// `name="value",…` with sanitised names and exposition-format escaped values.
fn formatted_tags(tags: &[(String, String)]) -> String {
    tags.iter()
        .map(|(k, v)| format!("{}=\"{}\"", sanitize(k), escape_label_value(v)))
        .collect::<Vec<_>>()
        .join(",")
}

fn escape_label_value(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            _ => s.push(c),
        }
    }
    s
}

fn render_histogram(out: &mut String, name: &str, tags: &str, c: &Cell) {
    let h = c.hist.lock().unwrap_or_else(PoisonError::into_inner);
    let hist_tags = if tags.is_empty() {
        String::new()
    } else {
        format!("{tags},")
    };
    let mut cumulative = 0u64;
    for (bound, n) in DEFAULT_BUCKETS.iter().zip(h.buckets.iter()) {
        cumulative += n;
        let _ = writeln!(
            out,
            "{name}_bucket{{{hist_tags}le=\"{bound}\"}} {cumulative}"
        );
    }
    let _ = writeln!(out, "{name}_bucket{{{hist_tags}le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum{{{tags}}} {}", h.sum);
    let _ = writeln!(out, "{name}_count{{{tags}}} {}", h.count);
}

/// Linear interpolation between the closest ranks of sorted samples.
#[allow(clippy::cast_precision_loss)]
fn percentile(sorted: &[u64], q: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0] as f64,
        n => {
            let pos = q * (n - 1) as f64;
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let lo = pos.floor() as usize;
            let hi = (lo + 1).min(n - 1);
            let frac = pos - pos.floor();
            let a = sorted.get(lo).copied().unwrap_or(0) as f64;
            let b = sorted.get(hi).copied().unwrap_or(0) as f64;
            a + (b - a) * frac
        }
    }
}

/// Shortest plain decimal form of a percentile (Envoy prints `{:g}`-like values).
fn fmt_g(v: f64) -> String {
    if v.is_nan() {
        "nan".to_string()
    } else {
        let s = format!("{v:.6}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn istio() -> Stats {
        Stats::new(vec![
            TagSpecifier {
                tag_name: "reporter".into(),
                regex: r"(reporter=\.=(.*?);\.;)".into(),
            },
            TagSpecifier {
                tag_name: "response_code".into(),
                regex: r"(response_code=\.=(.*?);\.;)".into(),
            },
        ])
        .unwrap()
    }

    #[test]
    fn istio_walk_through() {
        let s = istio();
        let id = s.define(
            MetricKind::Counter,
            "wasmcustom.reporter=.=destination;.;response_code=.=200;.;istio_requests_total",
        );
        s.add_counter(id, 3);
        assert_eq!(
            s.render_prometheus(),
            "# TYPE istio_requests_total counter\n\
             istio_requests_total{reporter=\"destination\",response_code=\"200\"} 3\n\n"
        );
    }

    #[test]
    fn one_family_several_label_sets_under_one_type_line() {
        let s = istio();
        for (code, n) in [("503", 1), ("200", 7), ("404", 2)] {
            let id = s.define(
                MetricKind::Counter,
                &format!(
                    "wasmcustom.reporter=.=destination;.;response_code=.={code};.;istio_requests_total"
                ),
            );
            s.add_counter(id, n);
        }
        let other = s.define(MetricKind::Counter, "wasmcustom.a_total");
        s.add_counter(other, 1);
        assert_eq!(
            s.render_prometheus(),
            "# TYPE a_total counter\na_total{} 1\n\n\
             # TYPE istio_requests_total counter\n\
             istio_requests_total{reporter=\"destination\",response_code=\"200\"} 7\n\
             istio_requests_total{reporter=\"destination\",response_code=\"404\"} 2\n\
             istio_requests_total{reporter=\"destination\",response_code=\"503\"} 1\n\n"
        );
    }

    #[test]
    fn plain_wasmcustom_counter_and_native_stat() {
        let s = Stats::new(vec![]).unwrap();
        let id = s.define(MetricKind::Counter, "wasmcustom.my.requests_total");
        s.add_counter(id, 2);
        s.add_counter(id, 3);
        let native = s.define(MetricKind::Counter, "cluster.up-stream.upstream_rq_total");
        s.add_counter(native, 1);
        let p = s.render_prometheus();
        assert_eq!(
            p,
            "# TYPE envoy_cluster_up_stream_upstream_rq_total counter\n\
             envoy_cluster_up_stream_upstream_rq_total{} 1\n\n\
             # TYPE my_requests_total counter\nmy_requests_total{} 5\n\n"
        );
        assert_eq!(s.value(id), 5);
        assert_eq!(
            s.find("wasmcustom.my.requests_total"),
            Some((MetricKind::Counter, 5))
        );
        assert_eq!(s.find("nope"), None);
    }

    #[test]
    fn define_is_get_or_create_and_shared_by_clones() {
        let s = Stats::new(vec![]).unwrap();
        let a = s.define(MetricKind::Gauge, "wasmcustom.g");
        let b = s.clone().define(MetricKind::Gauge, "wasmcustom.g");
        assert_eq!(a, b);
        let c = s.define(MetricKind::Counter, "wasmcustom.g");
        assert_ne!(a, c);
        assert_eq!(s.kind(a), MetricKind::Gauge);
        assert_eq!(s.kind(c), MetricKind::Counter);
        s.add_gauge(a, 5);
        s.add_gauge(b, -2);
        assert_eq!(s.value(a), 3);
        s.set_gauge(a, 42);
        assert_eq!(s.value(b), 42);
        // Kind-mismatched operations are ignored.
        s.add_counter(a, 1);
        s.record(a, 1);
        assert_eq!(s.value(a), 42);
        assert_eq!(s.value(c), 0);
    }

    #[test]
    fn omitted_names_and_sanitising() {
        let s = Stats::new(vec![]).unwrap();
        s.define(MetricKind::Counter, "wasmcustom.");
        s.define(MetricKind::Counter, "wasmcustom.9lives");
        s.define(MetricKind::Gauge, "wasmcustom.a-b/c");
        assert_eq!(s.render_prometheus(), "# TYPE a_b_c gauge\na_b_c{} 0\n\n");
    }

    #[test]
    fn label_escaping_and_label_name_sanitising() {
        let s = Stats::new(vec![TagSpecifier {
            tag_name: "my-tag".into(),
            regex: r"(?s)^wasmcustom\.(v=(.*?);)".into(),
        }])
        .unwrap();
        s.define(MetricKind::Counter, "wasmcustom.v=a\"b\\c\nd;x");
        assert_eq!(
            s.render_prometheus(),
            "# TYPE x counter\nx{my_tag=\"a\\\"b\\\\c\\nd\"} 0\n\n"
        );
    }

    #[test]
    fn single_group_is_both_removed_and_value() {
        let s = Stats::new(vec![TagSpecifier {
            tag_name: "code".into(),
            regex: r"_(\d{3})$".into(),
        }])
        .unwrap();
        s.define(MetricKind::Counter, "wasmcustom.resp_200");
        assert_eq!(
            s.render_prometheus(),
            "# TYPE resp_ counter\nresp_{code=\"200\"} 0\n\n"
        );
    }

    #[test]
    fn histogram_prometheus() {
        let s = Stats::new(vec![]).unwrap();
        let h = s.define(MetricKind::Histogram, "wasmcustom.latency");
        for v in [0, 1, 7, 4_000_000] {
            s.record(h, v);
        }
        let p = s.render_prometheus();
        let expected_buckets = [
            ("0.5", 1),
            ("1", 2),
            ("5", 2),
            ("10", 3),
            ("3600000", 3),
            ("+Inf", 4),
        ];
        assert!(p.starts_with("# TYPE latency histogram\n"));
        for (le, n) in expected_buckets {
            assert!(
                p.contains(&format!("latency_bucket{{le=\"{le}\"}} {n}\n")),
                "{le}: {p}"
            );
        }
        assert_eq!(p.matches("latency_bucket").count(), 20);
        assert!(p.contains("latency_sum{} 4000008\n"));
        assert!(p.contains("latency_count{} 4\n"));
        assert_eq!(s.value(h), 0);
        assert_eq!(
            s.find("wasmcustom.latency"),
            Some((MetricKind::Histogram, 4))
        );
    }

    #[test]
    fn histogram_with_tags_and_type_order() {
        let s = istio();
        let h = s.define(
            MetricKind::Histogram,
            "wasmcustom.reporter=.=source;.;istio_request_duration_milliseconds",
        );
        s.record(h, 3);
        let g = s.define(MetricKind::Gauge, "server.live");
        s.set_gauge(g, 1);
        let c = s.define(MetricKind::Counter, "wasmcustom.z_total");
        s.add_counter(c, 1);
        let p = s.render_prometheus();
        let ci = p.find("# TYPE z_total counter").unwrap();
        let gi = p.find("# TYPE envoy_server_live gauge").unwrap();
        let hi = p
            .find("# TYPE istio_request_duration_milliseconds histogram")
            .unwrap();
        assert!(ci < gi && gi < hi);
        assert!(p.contains(
            "istio_request_duration_milliseconds_bucket{reporter=\"source\",le=\"5\"} 1\n"
        ));
        assert!(p.contains("istio_request_duration_milliseconds_sum{reporter=\"source\"} 3\n"));
    }

    #[test]
    fn text_rendering() {
        let s = Stats::new(vec![]).unwrap();
        let b = s.define(MetricKind::Counter, "b.count");
        s.add_counter(b, 2);
        let a = s.define(MetricKind::Gauge, "a.gauge");
        s.set_gauge(a, 9);
        s.define(MetricKind::Histogram, "a.empty");
        let h = s.define(MetricKind::Histogram, "z.hist");
        for v in 1..=5 {
            s.record(h, v);
        }
        assert_eq!(
            s.render_text(),
            "a.gauge: 9\nb.count: 2\na.empty: No recorded values\n\
             z.hist: P0(nan,1) P25(nan,2) P50(nan,3) P75(nan,4) P90(nan,4.6) P95(nan,4.8) \
             P99(nan,4.96) P99.5(nan,4.98) P99.9(nan,4.996) P100(nan,5)\n"
        );
    }

    /// Envoy's defaults, as with a bootstrap without `use_all_default_tags: false`.
    fn envoy(custom: Vec<TagSpecifier>) -> Stats {
        Stats::from_stats_config(custom, true).unwrap()
    }

    fn rendered(s: &Stats, kind: MetricKind, name: &str) -> String {
        let id = s.define(kind, name);
        match kind {
            MetricKind::Counter => s.add_counter(id, 1),
            MetricKind::Gauge => s.set_gauge(id, 1),
            MetricKind::Histogram => s.record(id, 3),
        }
        s.render_prometheus()
    }

    #[test]
    fn default_tags_make_envoy_labels() {
        for (stat, line) in [
            (
                "cluster.orders.upstream_rq_200",
                "envoy_cluster_upstream_rq{envoy_response_code=\"200\",envoy_cluster_name=\"orders\"} 1",
            ),
            (
                "cluster.orders.upstream_rq_5xx",
                "envoy_cluster_upstream_rq_xx{envoy_response_code_class=\"5\",envoy_cluster_name=\"orders\"} 1",
            ),
            (
                "cluster.orders_beta.upstream_rq_completed",
                "envoy_cluster_upstream_rq_completed{envoy_cluster_name=\"orders_beta\"} 1",
            ),
            (
                "http.ingress.downstream_rq_4xx",
                "envoy_http_downstream_rq_xx{envoy_response_code_class=\"4\",envoy_http_conn_manager_prefix=\"ingress\"} 1",
            ),
            (
                "http.ingress.downstream_rq_total",
                "envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix=\"ingress\"} 1",
            ),
            (
                "listener.127.0.0.1_8443.downstream_cx_total",
                "envoy_listener_downstream_cx_total{envoy_listener_address=\"127.0.0.1_8443\"} 1",
            ),
            (
                "listener.[__1]_8443.downstream_cx_total",
                "envoy_listener_downstream_cx_total{envoy_listener_address=\"[__1]_8443\"} 1",
            ),
            (
                "listener.127.0.0.1_8443.http.ingress.downstream_rq_2xx",
                "envoy_listener_http_downstream_rq_xx{envoy_response_code_class=\"2\",\
                 envoy_http_conn_manager_prefix=\"ingress\",envoy_listener_address=\"127.0.0.1_8443\"} 1",
            ),
            // The admin listener keeps its name (Envoy's negative match).
            (
                "listener.admin.downstream_cx_total",
                "envoy_listener_admin_downstream_cx_total{} 1",
            ),
            // Only the id is cut out (`worker_((\d+)\.)`).
            (
                "server.worker_1.watchdog_miss",
                "envoy_server_worker_watchdog_miss{envoy_worker_id=\"1\"} 1",
            ),
            // `**` needs at least one token: nothing follows the cluster name here.
            ("cluster.lonely", "envoy_cluster_lonely{} 1"),
        ] {
            let p = rendered(&envoy(vec![]), MetricKind::Counter, stat);
            assert!(p.contains(&format!("{line}\n")), "{stat}:\n{p}");
        }
    }

    #[test]
    fn default_tags_on_histograms() {
        let p = rendered(
            &envoy(vec![]),
            MetricKind::Histogram,
            "cluster.orders.upstream_rq_time",
        );
        assert!(p.starts_with("# TYPE envoy_cluster_upstream_rq_time histogram\n"));
        assert!(p.contains(
            "envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=\"orders\",le=\"5\"} 1\n"
        ));
        assert!(
            p.contains("envoy_cluster_upstream_rq_time_sum{envoy_cluster_name=\"orders\"} 3\n")
        );
    }

    #[test]
    fn stats_tags_and_defaults_together() {
        let filter = |custom| {
            rendered(
                &envoy(custom),
                MetricKind::Counter,
                "wasmcustom.reporter=.=destination;.;response_code=.=200;.;istio_requests_total",
            )
        };
        let custom = || {
            vec![
                TagSpecifier {
                    tag_name: "reporter".into(),
                    regex: r"(reporter=\.=(.*?);\.;)".into(),
                },
                TagSpecifier {
                    tag_name: "response_code".into(),
                    regex: r"(response_code=\.=(.*?);\.;)".into(),
                },
            ]
        };
        // No default matches a wasm stat of the filter's shape.
        assert_eq!(
            filter(custom()),
            "# TYPE istio_requests_total counter\n\
             istio_requests_total{reporter=\"destination\",response_code=\"200\"} 1\n\n"
        );
        // A stats_tags entry with a default's name: the first that matches adds the tag
        // (defaults come first), so Envoy's cluster name wins here.
        let s = envoy(vec![TagSpecifier {
            tag_name: "envoy.cluster_name".into(),
            regex: r"^cluster\.[^.]+\.(upstream_)".into(),
        }]);
        let p = rendered(&s, MetricKind::Counter, "cluster.c.upstream_rq_total");
        assert!(
            p.contains("envoy_cluster_upstream_rq_total{envoy_cluster_name=\"c\"} 1\n"),
            "{p}"
        );
    }

    #[test]
    fn regex_prefix_tokens() {
        assert_eq!(
            regex_prefix(r"^cluster\.((.*?)\.)").as_deref(),
            Some("cluster")
        );
        assert_eq!(regex_prefix(r"^http(?=\.).*").as_deref(), Some("http"));
        assert_eq!(regex_prefix(r"^(?:listener|cluster)\..*"), None);
        assert_eq!(regex_prefix(r"(route=\.=(.*?);\.;)"), None);
        assert_eq!(regex_prefix(r"^foo$").as_deref(), Some("foo"));
        assert_eq!(regex_prefix(r"^foo_(x)"), None);
    }

    #[test]
    fn token_patterns() {
        let find = |pattern: &'static str, name: &'static str| {
            let tokens: Vec<&'static str> = pattern.split('.').collect();
            let at = tokens.iter().position(|t| *t == "$").unwrap();
            Matcher::Tokens { tokens, at }
                .find(name)
                .map(|(r, v)| (&name[r], v))
        };
        assert_eq!(find("cluster.$.**", "cluster.c.a.b"), Some(("c.", "c")));
        assert_eq!(find("cluster.$.**", "cluster.c"), None);
        assert_eq!(find("cluster.$.**", "http.c.a"), None);
        // `$` last: the dot before it goes.
        assert_eq!(find("a.*.$", "a.b.c"), Some((".c", "c")));
        // `**` inside the pattern.
        assert_eq!(
            find(
                "mongo.*.collection.$.**.query.*",
                "mongo.p.collection.col.x.y.query.n"
            ),
            Some(("col.", "col"))
        );
        assert_eq!(
            find(
                "mongo.*.collection.$.**.query.*",
                "mongo.p.collection.col.x.y.n"
            ),
            None
        );
        assert_eq!(
            find("$.http_local_rate_limit.**", "p.http_local_rate_limit.ok"),
            Some(("p.", "p"))
        );
    }

    #[test]
    fn bad_regex_is_an_error() {
        assert!(
            Stats::new(vec![TagSpecifier {
                tag_name: "x".into(),
                regex: "(".into()
            }])
            .is_err()
        );
    }

    #[test]
    fn concurrent_increments() {
        let s = Stats::new(vec![]).unwrap();
        let id = s.define(MetricKind::Counter, "wasmcustom.c");
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        let id = s.define(MetricKind::Counter, "wasmcustom.c");
                        s.add_counter(id, 1);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(s.value(id), 4000);
    }
}
