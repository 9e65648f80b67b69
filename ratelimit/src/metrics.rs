//! Prometheus metrics (`GET /metrics`): decisions by domain, descriptor and code, responses by
//! code, store latency and errors, configuration reloads.
//!
//! Counters for configured rules are resolved once when the configuration is compiled
//! ([`RuleCounters`]), so a decision increments an atomic without building a label set; only
//! `detailed_metric` / `value_to_metric` rules, whose label depends on the request, look their
//! counters up per request (as envoyproxy/ratelimit warns, their cardinality is the caller's).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::time::Duration;

/// Labels of `ratelimit_decisions_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// The configured domain.
    pub domain: String,
    /// The rule's key path without the domain, e.g. `message_type_marketing.to_number`.
    pub descriptor: String,
    /// `ok`, `over_limit`, `shadow_over_limit` (answered OK) or `unlimited`.
    pub code: &'static str,
}

/// A single `code`/`kind`/`result` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NameLabel {
    /// The label's value.
    pub name: &'static str,
}

/// A `domain` label (configured domains only, so its cardinality is the configuration's).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DomainLabel {
    /// The configured domain.
    pub domain: String,
}

/// The process's metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    decisions: Family<DecisionLabels, Counter>,
    responses: Family<NameLabel, Counter>,
    store_latency: Histogram,
    store_errors: Family<NameLabel, Counter>,
    unmatched: Family<DomainLabel, Counter>,
    unknown_domain: Counter,
    config_reloads: Family<NameLabel, Counter>,
    config_domains: Gauge,
}

/// The four decision counters of one configured rule, resolved at configuration load.
#[derive(Debug, Clone, Default)]
pub struct RuleCounters {
    /// Within the limit.
    pub ok: Counter,
    /// Over the limit (answered OVER_LIMIT).
    pub over_limit: Counter,
    /// Over the limit, answered OK because of shadow mode.
    pub shadow_over_limit: Counter,
    /// An `unlimited` rule matched.
    pub unlimited: Counter,
}

/// What an overall response was, for `ratelimit_responses_total{code}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseCode {
    /// OK.
    Ok,
    /// OVER_LIMIT.
    OverLimit,
    /// gRPC INVALID_ARGUMENT (malformed request).
    InvalidArgument,
    /// gRPC UNAVAILABLE (store down, failure mode `error`).
    Unavailable,
    /// Store down, answered OK by failure mode `allow`.
    FailureModeAllow,
    /// Store down, answered OVER_LIMIT by failure mode `deny`.
    FailureModeDeny,
}

impl ResponseCode {
    fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::OverLimit => "over_limit",
            Self::InvalidArgument => "invalid_argument",
            Self::Unavailable => "unavailable",
            Self::FailureModeAllow => "failure_mode_allow",
            Self::FailureModeDeny => "failure_mode_deny",
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `ratelimit_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ratelimit");
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Descriptor decisions by domain, matched rule and code",
            decisions.clone(),
        );
        let responses = Family::<NameLabel, Counter>::default();
        registry.register(
            "responses",
            "ShouldRateLimit answers by overall code (or gRPC error)",
            responses.clone(),
        );
        let store_latency = Histogram::new([
            0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
            0.25, 1.0,
        ]);
        registry.register(
            "store_latency_seconds",
            "Time of one store round trip (all descriptors of a request)",
            store_latency.clone(),
        );
        let store_errors = Family::<NameLabel, Counter>::default();
        registry.register(
            "store_errors",
            "Failed store round trips by kind (timeout, connection, script, ...)",
            store_errors.clone(),
        );
        let unmatched = Family::<DomainLabel, Counter>::default();
        registry.register(
            "unmatched_descriptors",
            "Descriptors of a configured domain that matched no rule (answered OK)",
            unmatched.clone(),
        );
        let unknown_domain = Counter::default();
        registry.register(
            "unknown_domain_requests",
            "Requests for a domain that no configuration file defines (answered OK)",
            unknown_domain.clone(),
        );
        let config_reloads = Family::<NameLabel, Counter>::default();
        registry.register(
            "config_loads",
            "Configuration loads by result (success, error)",
            config_reloads.clone(),
        );
        let config_domains = Gauge::default();
        registry.register(
            "config_domains",
            "Domains in the configuration in force",
            config_domains.clone(),
        );
        Self {
            registry,
            decisions,
            responses,
            store_latency,
            store_errors,
            unmatched,
            unknown_domain,
            config_reloads,
            config_domains,
        }
    }

    /// The counters of one rule; called when a configuration is compiled (or, for detailed
    /// rules, per request).
    pub fn rule_counters(&self, domain: &str, descriptor: &str) -> RuleCounters {
        let get = |code| {
            self.decisions
                .get_or_create(&DecisionLabels {
                    domain: domain.to_owned(),
                    descriptor: descriptor.to_owned(),
                    code,
                })
                .clone()
        };
        RuleCounters {
            ok: get("ok"),
            over_limit: get("over_limit"),
            shadow_over_limit: get("shadow_over_limit"),
            unlimited: get("unlimited"),
        }
    }

    /// Counts one overall answer.
    pub fn response(&self, code: ResponseCode) {
        self.responses
            .get_or_create(&NameLabel { name: code.name() })
            .inc();
    }

    /// Records one store round trip's latency.
    pub fn store_latency(&self, elapsed: Duration) {
        self.store_latency.observe(elapsed.as_secs_f64());
    }

    /// Counts one failed store round trip.
    pub fn store_error(&self, kind: &'static str) {
        self.store_errors
            .get_or_create(&NameLabel { name: kind })
            .inc();
    }

    /// The counter of descriptors that matched no rule in `domain`, resolved at configuration
    /// load.
    pub fn unmatched_counter(&self, domain: &str) -> Counter {
        self.unmatched
            .get_or_create(&DomainLabel {
                domain: domain.to_owned(),
            })
            .clone()
    }

    /// Counts a request for an unknown domain.
    pub fn unknown_domain(&self) {
        self.unknown_domain.inc();
    }

    /// Counts a configuration load and, on success, records the number of domains.
    pub fn config_load(&self, result: Result<usize, ()>) {
        let name = match result {
            Ok(domains) => {
                self.config_domains
                    .set(i64::try_from(domains).unwrap_or(i64::MAX));
                "success"
            }
            Err(()) => "error",
        };
        self.config_reloads.get_or_create(&NameLabel { name }).inc();
    }

    /// The text exposition (OpenMetrics, which Prometheus scrapes).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
