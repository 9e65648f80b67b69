//! The filter's metrics: which series a finished request adds to, and their stat names.
//!
//! Envoy stats have names, not labels. The labels travel inside the name the way Istio's wasm
//! stats encode them — `label=.=value;.;` per label, then the metric name — and one
//! `stats_config.stats_tags` entry per label (regex `(label=\.=(.*?);\.;)`, Istio's
//! `extraStatTags`) turns each back into a Prometheus label. Envoy creates a wasm-defined stat
//! as `wasmcustom.<name>` and prints it in `/stats/prometheus` without the `wasmcustom`
//! namespace, so
//! `route=.=orders;.;decision=.=allow;.;reason=.=authenticated;.;portcullis_requests_total`
//! becomes `portcullis_requests_total{route="orders",decision="allow",reason="authenticated"}`.
//!
//! Every label value is a route, provider or rule name from the configuration, or one word the
//! filter chose, so the number of series is bounded by the configuration.

use crate::config::Config;
use crate::decision::{Decision, Verdict};
use crate::inspect::Inspector;

/// The label names, in the order they appear in stat names (for `stats_tags`).
pub const LABELS: [&str; 7] = [
    "route", "decision", "reason", "provider", "outcome", "category", "rule",
];

/// Requests by route, decision and reason.
pub const REQUESTS: &str = "portcullis_requests_total";
/// Refused credentials by provider and reason.
pub const AUTH_FAILURES: &str = "portcullis_auth_failures_total";
/// The rate-limit service's answers by route and outcome.
pub const RATE_LIMIT: &str = "portcullis_rate_limit_decisions_total";
/// Request bodies refused (size, type, JSON, schema) by route and reason.
pub const BODY_REJECTIONS: &str = "portcullis_body_rejections_total";
/// Attack signatures that matched, by route, category and rule (blocked or shadowed).
pub const INSPECTION_HITS: &str = "portcullis_inspection_hits_total";
/// Time the filter spent deciding a request, by route (histogram, microseconds).
pub const DECISION_DURATION: &str = "portcullis_decision_duration_microseconds";

/// What kind of stat a series is (`proxy_define_metric`'s type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Counted up by one per request.
    Counter,
    /// Records one sample per request.
    Histogram,
}

/// One labelled series. Route and provider are configuration indices, so a series is `Copy`
/// and can key a per-worker map of stat ids without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Series {
    /// [`REQUESTS`].
    Requests {
        route: Option<usize>,
        decision: &'static str,
        reason: &'static str,
    },
    /// [`AUTH_FAILURES`].
    AuthFailures {
        provider: Option<usize>,
        reason: &'static str,
    },
    /// [`RATE_LIMIT`].
    RateLimit {
        route: Option<usize>,
        outcome: &'static str,
    },
    /// [`BODY_REJECTIONS`].
    BodyRejections {
        route: Option<usize>,
        reason: &'static str,
    },
    /// [`INSPECTION_HITS`].
    InspectionHits {
        route: Option<usize>,
        category: &'static str,
        rule: &'static str,
    },
    /// [`DECISION_DURATION`].
    DecisionDuration { route: Option<usize> },
}

/// Reasons that are a refused credential (counted in [`AUTH_FAILURES`] too).
const AUTH_REASONS: [&str; 6] = [
    "missing_credentials",
    "invalid_token",
    "invalid_api_key",
    "insufficient_scope",
    "claim_mismatch",
    "introspection_unavailable",
];

/// Reasons that are a refused body, whichever phase found them (the declared size and media
/// type are checked with the headers).
const BODY_REASONS: [&str; 4] = [
    "body_too_large",
    "unsupported_media_type",
    "invalid_body",
    "schema_violation",
];

/// What the filter knows about a finished request.
#[derive(Debug, Clone, Copy)]
pub struct Outcome<'a> {
    /// The decision, when the filter saw the request.
    pub decision: Option<&'a Decision>,
    /// `allow`, `deny`, `shadow_deny` or `none` (as in the audit record).
    pub verdict: &'static str,
    /// The reason (as in the audit record).
    pub reason: &'static str,
    /// The rate-limit service's answer, when it was asked.
    pub rate_limit: Option<&'static str>,
    /// A check of the body refused it (size as it streamed, JSON, schema, signatures in it).
    pub body_refused: bool,
    /// Time spent deciding, in microseconds.
    pub latency_us: u64,
}

/// The word for a decision's verdict in audit records and metrics.
pub fn verdict_word(decision: &Decision) -> &'static str {
    match &decision.verdict {
        Verdict::Allow => "allow",
        Verdict::Refuse(r) if r.shadow => "shadow_deny",
        Verdict::Refuse(_) => "deny",
    }
}

/// The series one finished request adds to (at most five), and the value for each: 1 for a
/// counter, the latency for the histogram.
pub fn of_request(config: &Config, outcome: &Outcome<'_>) -> Vec<(Series, u64)> {
    let route = outcome.decision.and_then(|d| d.route);
    let mut out = Vec::with_capacity(5);
    out.push((
        Series::Requests {
            route,
            decision: outcome.verdict,
            reason: outcome.reason,
        },
        1,
    ));
    let Some(decision) = outcome.decision else {
        return out;
    };
    out.push((Series::DecisionDuration { route }, outcome.latency_us));
    if AUTH_REASONS.contains(&outcome.reason) {
        let provider = decision.identity.as_ref().map(|i| i.provider).or_else(|| {
            let named = decision.rule.as_deref()?;
            config.providers.iter().position(|p| p.name == named)
        });
        out.push((
            Series::AuthFailures {
                provider,
                reason: outcome.reason,
            },
            1,
        ));
    }
    if let Some(answer) = outcome.rate_limit {
        out.push((
            Series::RateLimit {
                route,
                outcome: answer,
            },
            1,
        ));
    }
    if outcome.reason == "suspicious_request" {
        let rule = decision.rule.as_deref().and_then(|id| {
            Inspector::rules()
                .iter()
                .find(|r| r.id == id)
                .map(|r| (r.id, r.category.as_str()))
        });
        if let Some((rule, category)) = rule {
            out.push((
                Series::InspectionHits {
                    route,
                    category,
                    rule,
                },
                1,
            ));
        }
    }
    if outcome.body_refused || BODY_REASONS.contains(&outcome.reason) {
        out.push((
            Series::BodyRejections {
                route,
                reason: outcome.reason,
            },
            1,
        ));
    }
    out
}

impl Series {
    /// Counter or histogram.
    pub fn kind(&self) -> Kind {
        match self {
            Series::DecisionDuration { .. } => Kind::Histogram,
            _ => Kind::Counter,
        }
    }

    /// The stat name to define (Envoy adds `wasmcustom.`), labels encoded as Istio does.
    pub fn stat_name(&self, config: &Config) -> String {
        let route_name = |route: &Option<usize>| {
            route
                .and_then(|i| config.routes.get(i))
                .map_or("none", |r| r.name.as_str())
        };
        let mut name = String::with_capacity(96);
        let (metric, labels): (&str, Vec<(&str, &str)>) = match self {
            Series::Requests {
                route,
                decision,
                reason,
            } => (
                REQUESTS,
                vec![
                    ("route", route_name(route)),
                    ("decision", decision),
                    ("reason", reason),
                ],
            ),
            Series::AuthFailures { provider, reason } => (
                AUTH_FAILURES,
                vec![
                    (
                        "provider",
                        provider
                            .and_then(|i| config.providers.get(i))
                            .map_or("none", |p| p.name.as_str()),
                    ),
                    ("reason", reason),
                ],
            ),
            Series::RateLimit { route, outcome } => (
                RATE_LIMIT,
                vec![("route", route_name(route)), ("outcome", outcome)],
            ),
            Series::BodyRejections { route, reason } => (
                BODY_REJECTIONS,
                vec![("route", route_name(route)), ("reason", reason)],
            ),
            Series::InspectionHits {
                route,
                category,
                rule,
            } => (
                INSPECTION_HITS,
                vec![
                    ("route", route_name(route)),
                    ("category", category),
                    ("rule", rule),
                ],
            ),
            Series::DecisionDuration { route } => {
                (DECISION_DURATION, vec![("route", route_name(route))])
            }
        };
        for (label, value) in labels {
            name.push_str(label);
            name.push_str("=.=");
            push_value(&mut name, value);
            name.push_str(";.;");
        }
        name.push_str(metric);
        name
    }
}

/// A label value, with `;` and `=` (which could end it early) and control characters
/// replaced by `_`.
fn push_value(name: &mut String, value: &str) {
    if value.is_empty() {
        name.push_str("none");
        return;
    }
    name.extend(value.chars().map(|c| match c {
        ';' | '=' => '_',
        c if c.is_control() => '_',
        c => c,
    }));
}

/// The `stats_config.stats_tags` entries Envoy needs to turn the encoded labels into
/// Prometheus labels (`envoy/envoy.yaml` has them): tag name and regex.
pub fn stats_tags() -> Vec<(&'static str, String)> {
    LABELS
        .iter()
        .map(|label| (*label, format!(r"({label}=\.=(.*?);\.;)")))
        .collect()
}
