//! Envoy-style stats shared by every worker VM: counters, gauges and histograms by name.
//!
//! The ABI layer ([`crate::abi`]) creates wasm-defined metrics as `wasmcustom.<name>`, exactly
//! as Envoy does; the admin endpoints render them (`/stats`, `/stats/prometheus` with the
//! `wasmcustom` namespace stripped and `stats_config.stats_tags` applied).
//!
//! Fidelity notes (what differs from Envoy, on purpose or by simplification):
//! - Only the bootstrap's `stats_tags` are applied; Envoy's built-in default tag extractors
//!   (`envoy.cluster_name`, `envoy.http_conn_manager_prefix`, `envoy.response_code`, …) are not,
//!   so native stats such as `cluster.c.upstream_rq_total` keep the cluster name in the
//!   Prometheus metric name (`envoy_cluster_c_upstream_rq_total{}`) instead of a label.
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
    tags: Vec<(String, Regex)>,
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
    /// A store applying `tags` (in order) for Prometheus rendering.
    pub fn new(tags: Vec<TagSpecifier>) -> Result<Stats, regex::Error> {
        let tags = tags
            .into_iter()
            .map(|t| Regex::new(&t.regex).map(|re| (t.tag_name, re)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Stats(Arc::new(Inner {
            tags,
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
        let (tag_extracted_name, tags) = extract_tags(&self.0.tags, name);
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

/// Envoy's regex tag extraction: every specifier is searched in the full name, matched first
/// groups are removed (ranges united), tags keep the specifiers' order.
fn extract_tags(specs: &[(String, Regex)], name: &str) -> (String, Vec<(String, String)>) {
    let mut tags = Vec::new();
    let mut remove = vec![false; name.len()];
    for (tag_name, re) in specs {
        let Some(caps) = re.captures(name) else {
            continue;
        };
        let Some(removed) = caps.get(1) else {
            continue;
        };
        let value = caps.get(2).unwrap_or(removed);
        tags.push((tag_name.clone(), value.as_str().to_string()));
        for flag in remove.iter_mut().take(removed.end()).skip(removed.start()) {
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
