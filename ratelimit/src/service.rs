//! `ShouldRateLimit`: validates a request, matches each descriptor against the configuration,
//! asks the store, and answers with an overall code and one status per descriptor.
//!
//! Semantics follow envoyproxy/ratelimit: a descriptor without a matching rule, or of an unknown
//! domain, is OK; `unlimited` is OK with `limit_remaining` = 2³²−1 and never reaches the store;
//! a request limit override replaces the configured rule (fixed window, no shadow mode);
//! `replaces` drops the named rules of the same request; the request is OVER_LIMIT when any
//! descriptor is (shadow-mode ones answer OK), or when every quota-mode descriptor is.

use crate::algorithm::{Algorithm, Hits, Limit, Outcome, Unit};
use crate::config::{Domain, Match, RateLimitConfig, RuleKind};
use crate::metrics::{Metrics, ResponseCode, RuleCounters};
use crate::proto::rate_limit_response::{Code, DescriptorStatus, RateLimit};
use crate::proto::{
    Duration as ProtoDuration, RateLimitRequest, RateLimitResponse, RateLimitService,
};
use crate::store::{Check, Store, StoreError, storage_key};
use arc_swap::ArcSwap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};

/// What to answer when the store cannot decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailureMode {
    /// gRPC UNAVAILABLE, so the caller's own failure mode decides (envoyproxy/ratelimit answers
    /// an error too; Envoy's `failure_mode_deny` then applies). The default.
    #[default]
    Unavailable,
    /// OK for the descriptors that needed the store.
    Allow,
    /// OVER_LIMIT for the descriptors that needed the store.
    Deny,
}

impl FailureMode {
    /// Parses `unavailable`, `allow` or `deny`.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "unavailable" | "error" => Self::Unavailable,
            "allow" => Self::Allow,
            "deny" => Self::Deny,
            _ => return None,
        })
    }
}

/// The service's fixed settings.
#[derive(Debug, Clone, Default)]
pub struct ServiceOptions {
    /// What to answer while the store is down.
    pub failure_mode: FailureMode,
    /// Prepended to every storage key (outside the hash tag).
    pub key_prefix: String,
    /// Answer OK whatever the decision (envoyproxy/ratelimit's global SHADOW_MODE); decisions
    /// are still counted.
    pub global_shadow_mode: bool,
}

/// The gRPC service.
#[derive(Debug)]
pub struct RateLimiter {
    config: Arc<ArcSwap<RateLimitConfig>>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    options: ServiceOptions,
    /// When a store failure was last logged (ms since start), to log at most once a second.
    last_failure_log: AtomicU64,
    started: Instant,
}

/// What one descriptor needs.
enum Plan<'c> {
    /// No rule (or replaced): OK without a limit.
    Pass,
    /// `unlimited: true`.
    Unlimited(RuleRef<'c>),
    /// A limit to check; `check` indexes the store's outcomes.
    Limited {
        rule: RuleRef<'c>,
        limit: Limit,
        check: usize,
    },
}

/// The rule-dependent parts of a plan (an override has no configured rule).
struct RuleRef<'c> {
    counters: std::borrow::Cow<'c, RuleCounters>,
    name: Option<&'c str>,
    shadow_mode: bool,
    quota_mode: bool,
}

fn invalid(message: String, metrics: &Metrics) -> Status {
    metrics.response(ResponseCode::InvalidArgument);
    Status::invalid_argument(message)
}

fn proto_duration(d: Duration) -> ProtoDuration {
    ProtoDuration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn ok_status() -> DescriptorStatus {
    DescriptorStatus {
        code: Code::Ok as i32,
        ..Default::default()
    }
}

impl RateLimiter {
    /// A service answering from `config` (swapped by the watcher) and `store`.
    pub fn new(
        config: Arc<ArcSwap<RateLimitConfig>>,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        options: ServiceOptions,
    ) -> Self {
        Self {
            config,
            store,
            metrics,
            options,
            last_failure_log: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// Rejects what the protocol requires and envoyproxy/ratelimit rejects: an empty domain,
    /// no descriptors, a descriptor without entries or with an empty key, an unknown override
    /// unit.
    fn validate(&self, request: &RateLimitRequest) -> Result<(), Status> {
        if request.domain.is_empty() {
            return Err(invalid(
                "rate limit domain must not be empty".into(),
                &self.metrics,
            ));
        }
        if request.descriptors.is_empty() {
            return Err(invalid(
                "rate limit descriptor list must not be empty".into(),
                &self.metrics,
            ));
        }
        for (i, d) in request.descriptors.iter().enumerate() {
            if d.entries.is_empty() {
                return Err(invalid(
                    format!("descriptor {i} has no entries"),
                    &self.metrics,
                ));
            }
            if let Some(j) = d.entries.iter().position(|e| e.key.is_empty()) {
                return Err(invalid(
                    format!("descriptor {i} entry {j} has an empty key"),
                    &self.metrics,
                ));
            }
            if let Some(o) = &d.limit
                && Unit::from_proto(o.unit).is_none()
            {
                return Err(invalid(
                    format!(
                        "descriptor {i} limit override has an unknown unit {}",
                        o.unit
                    ),
                    &self.metrics,
                ));
            }
        }
        Ok(())
    }

    /// Decides a request (the gRPC method without the transport).
    pub async fn decide(&self, request: &RateLimitRequest) -> Result<RateLimitResponse, Status> {
        self.validate(request)?;
        let config = self.config.load();
        let Some(domain) = config.domain(&request.domain) else {
            self.metrics.unknown_domain();
            self.metrics.response(ResponseCode::Ok);
            tracing::debug!(domain = %request.domain, "unknown domain: no limits apply");
            return Ok(RateLimitResponse {
                overall_code: Code::Ok as i32,
                statuses: request.descriptors.iter().map(|_| ok_status()).collect(),
                ..Default::default()
            });
        };
        let mut checks: Vec<Check> = Vec::new();
        let mut plans: Vec<Plan<'_>> = Vec::with_capacity(request.descriptors.len());
        let mut matches: Vec<Option<Match<'_>>> = Vec::with_capacity(request.descriptors.len());
        for d in &request.descriptors {
            matches.push(if d.limit.is_some() {
                None
            } else {
                domain.lookup(&d.entries)
            });
        }
        let replaced = |name: Option<&str>| -> bool {
            let Some(name) = name else { return false };
            matches
                .iter()
                .flatten()
                .any(|m| m.rule.replaces.iter().any(|r| r == name))
        };
        for (d, m) in request.descriptors.iter().zip(matches.iter()) {
            let hits = Hits {
                count: d
                    .hits_addend
                    .as_ref()
                    .map_or(u64::from(request.hits_addend.max(1)), |h| h.value)
                    .min(u64::from(u32::MAX)),
                refund: d.is_negative_hits,
            };
            if let Some(o) = &d.limit {
                let limit = Limit {
                    requests_per_unit: o.requests_per_unit,
                    unit: Unit::from_proto(o.unit).unwrap_or(Unit::Second),
                    algorithm: Algorithm::FixedWindow,
                };
                let key = storage_key(
                    &self.options.key_prefix,
                    &request.domain,
                    d.entries.iter().map(|e| (e.key.as_str(), e.value.as_str())),
                    &limit,
                );
                plans.push(Plan::Limited {
                    rule: RuleRef {
                        counters: std::borrow::Cow::Borrowed(&domain.override_counters),
                        name: None,
                        shadow_mode: false,
                        quota_mode: false,
                    },
                    limit,
                    check: checks.len(),
                });
                checks.push(Check { key, limit, hits });
                continue;
            }
            let Some(m) = m else {
                domain.unmatched.inc();
                plans.push(Plan::Pass);
                continue;
            };
            let rule = m.rule;
            if replaced(rule.name.as_deref()) {
                plans.push(Plan::Pass);
                continue;
            }
            let counters = match &m.label {
                Some(label) => {
                    std::borrow::Cow::Owned(self.metrics.rule_counters(domain.name(), label))
                }
                None => std::borrow::Cow::Borrowed(&rule.counters),
            };
            let rule_ref = RuleRef {
                counters,
                name: rule.name.as_deref(),
                shadow_mode: rule.shadow_mode,
                quota_mode: rule.quota_mode,
            };
            match &rule.kind {
                RuleKind::Unlimited => plans.push(Plan::Unlimited(rule_ref)),
                RuleKind::Limited(limit) => {
                    let entries = d.entries.iter().enumerate().map(|(i, e)| {
                        let value = m
                            .shared
                            .iter()
                            .find(|(at, _)| *at == i)
                            .map_or(e.value.as_str(), |(_, pattern)| pattern);
                        (e.key.as_str(), value)
                    });
                    let key =
                        storage_key(&self.options.key_prefix, &request.domain, entries, limit);
                    plans.push(Plan::Limited {
                        rule: rule_ref,
                        limit: *limit,
                        check: checks.len(),
                    });
                    checks.push(Check {
                        key,
                        limit: *limit,
                        hits,
                    });
                }
            }
        }
        let outcomes = if checks.is_empty() {
            Vec::new()
        } else {
            let started = Instant::now();
            let result = self.store.check(&checks).await;
            self.metrics.store_latency(started.elapsed());
            match result {
                Ok(outcomes) => outcomes,
                Err(error) => return self.store_failed(domain, &plans, &error),
            }
        };
        Ok(self.respond(&plans, &outcomes))
    }

    /// Builds the response from the plans and the store's outcomes.
    fn respond(&self, plans: &[Plan<'_>], outcomes: &[Outcome]) -> RateLimitResponse {
        let mut statuses = Vec::with_capacity(plans.len());
        let mut over = false;
        let (mut quota_total, mut quota_over) = (0usize, 0usize);
        for plan in plans {
            let status = match plan {
                Plan::Pass => ok_status(),
                Plan::Unlimited(rule) => {
                    rule.counters.unlimited.inc();
                    DescriptorStatus {
                        code: Code::Ok as i32,
                        limit_remaining: u32::MAX,
                        ..Default::default()
                    }
                }
                Plan::Limited { rule, limit, check } => {
                    let outcome = outcomes.get(*check).copied().unwrap_or(Outcome {
                        allowed: false,
                        remaining: 0,
                        reset: Duration::ZERO,
                    });
                    let mut code = Code::Ok;
                    if outcome.allowed {
                        rule.counters.ok.inc();
                    } else if rule.shadow_mode {
                        rule.counters.shadow_over_limit.inc();
                    } else {
                        rule.counters.over_limit.inc();
                        code = Code::OverLimit;
                    }
                    if rule.quota_mode {
                        quota_total += 1;
                        if code == Code::OverLimit {
                            quota_over += 1;
                        }
                    } else if code == Code::OverLimit {
                        over = true;
                    }
                    DescriptorStatus {
                        code: code as i32,
                        current_limit: Some(RateLimit {
                            name: rule.name.unwrap_or_default().to_owned(),
                            requests_per_unit: limit.requests_per_unit,
                            unit: limit.unit.to_proto() as i32,
                        }),
                        limit_remaining: u32::try_from(outcome.remaining).unwrap_or(u32::MAX),
                        duration_until_reset: Some(proto_duration(outcome.reset)),
                        quota: None,
                    }
                }
            };
            statuses.push(status);
        }
        if quota_total > 0 && quota_total == quota_over {
            over = true;
        }
        if over && self.options.global_shadow_mode {
            over = false;
        }
        let code = if over { Code::OverLimit } else { Code::Ok };
        self.metrics.response(if over {
            ResponseCode::OverLimit
        } else {
            ResponseCode::Ok
        });
        RateLimitResponse {
            overall_code: code as i32,
            statuses,
            ..Default::default()
        }
    }

    /// The answer when the store failed: per the failure mode.
    fn store_failed(
        &self,
        domain: &Domain,
        plans: &[Plan<'_>],
        error: &StoreError,
    ) -> Result<RateLimitResponse, Status> {
        self.metrics.store_error(error.kind());
        let now_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_failure_log.load(Ordering::Relaxed);
        if (now_ms >= last.saturating_add(1000) || last == 0)
            && self
                .last_failure_log
                .compare_exchange(last, now_ms.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                domain = %domain.name(),
                %error,
                failure_mode = ?self.options.failure_mode,
                "rate limit store failed"
            );
        }
        let code = match self.options.failure_mode {
            FailureMode::Unavailable => {
                self.metrics.response(ResponseCode::Unavailable);
                return Err(Status::unavailable(format!(
                    "rate limit store unavailable: {error}"
                )));
            }
            FailureMode::Allow => {
                self.metrics.response(ResponseCode::FailureModeAllow);
                Code::Ok
            }
            FailureMode::Deny => {
                self.metrics.response(ResponseCode::FailureModeDeny);
                Code::OverLimit
            }
        };
        let statuses = plans
            .iter()
            .map(|plan| match plan {
                Plan::Pass => ok_status(),
                Plan::Unlimited(_) => DescriptorStatus {
                    code: Code::Ok as i32,
                    limit_remaining: u32::MAX,
                    ..Default::default()
                },
                Plan::Limited { rule, limit, .. } => DescriptorStatus {
                    code: code as i32,
                    current_limit: Some(RateLimit {
                        name: rule.name.unwrap_or_default().to_owned(),
                        requests_per_unit: limit.requests_per_unit,
                        unit: limit.unit.to_proto() as i32,
                    }),
                    ..Default::default()
                },
            })
            .collect();
        let overall = if code == Code::OverLimit && !self.options.global_shadow_mode {
            Code::OverLimit
        } else {
            Code::Ok
        };
        Ok(RateLimitResponse {
            overall_code: overall as i32,
            statuses,
            ..Default::default()
        })
    }
}

#[tonic::async_trait]
impl RateLimitService for RateLimiter {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        self.decide(request.get_ref()).await.map(Response::new)
    }
}
