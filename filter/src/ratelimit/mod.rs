//! The filter's side of global rate limits: the descriptors of a request, the call's message,
//! and what the answer means for the request and its response headers.

pub mod proto;

use crate::config::Config;
use crate::config::ratelimit::{Action, HeaderStyle, RateLimitService};
use crate::decision::{Decision, Identity};
use crate::guard::Stop;
use crate::request::Request;
use proto::{Code, Response};
use serde_json::Value;
use std::fmt::Write;

/// gRPC service and method of Envoy's rate-limit protocol.
pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
/// The only method.
pub const METHOD: &str = "ShouldRateLimit";

/// One descriptor: keys from the configuration, values from the request.
pub type Descriptor<'c> = Vec<(&'c str, String)>;

/// The descriptors of a request on its route. A policy whose action finds no value (no
/// subject on an anonymous request, a missing header) sends no descriptor, as Envoy's.
pub fn descriptors<'c>(
    config: &'c Config,
    decision: &Decision,
    req: &Request<'_>,
) -> Vec<Descriptor<'c>> {
    let Some(route) = decision.route.and_then(|i| config.routes.get(i)) else {
        return Vec::new();
    };
    let identity = decision.identity.as_ref();
    route
        .rate_limits
        .iter()
        .filter_map(|policy| {
            let mut entries = Vec::with_capacity(policy.actions.len());
            for action in &policy.actions {
                match entry(config, action, decision, identity, req, &route.name) {
                    Entry::Value(key, value) => entries.push((key, value)),
                    Entry::Skip => {}
                    Entry::Abandon => return None,
                }
            }
            (!entries.is_empty()).then_some(entries)
        })
        .collect()
}

enum Entry<'c> {
    Value(&'c str, String),
    /// Leave this entry out (`skip_if_absent`).
    Skip,
    /// Send no descriptor for this policy.
    Abandon,
}

fn entry<'c>(
    config: &'c Config,
    action: &'c Action,
    decision: &Decision,
    identity: Option<&Identity>,
    req: &Request<'_>,
    route_name: &str,
) -> Entry<'c> {
    let value = |key: &'c str, v: Option<String>| match v {
        Some(v) => Entry::Value(key, v),
        None => Entry::Abandon,
    };
    match action {
        Action::RemoteAddress => value(
            "remote_address",
            decision.client_ip.map(|ip| ip.to_string()),
        ),
        Action::RequestHeader {
            header,
            key,
            skip_if_absent,
        } => match req.header(header) {
            Some(v) => Entry::Value(key, v.to_owned()),
            None if *skip_if_absent => Entry::Skip,
            None => Entry::Abandon,
        },
        Action::GenericKey { key, value: v } => Entry::Value(key, v.clone()),
        Action::Subject { key } => {
            value(key, identity.and_then(|i| i.subject()).map(str::to_owned))
        }
        Action::Consumer { key } => value(
            key,
            identity.and_then(|i| i.consumer(config)).map(str::to_owned),
        ),
        Action::RouteName { key } => Entry::Value(key, route_name.to_owned()),
        Action::Claim { claim, key } => value(
            key,
            identity
                .and_then(|i| i.claim(config, claim))
                .and_then(|v| scalar_text(&v)),
        ),
    }
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The gRPC message for a request's descriptors.
pub fn request_message(service: &RateLimitService, descriptors: &[Descriptor<'_>]) -> Vec<u8> {
    proto::encode_request(&service.domain, descriptors, 1)
}

/// What the answer means for the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Within every limit; the headers go on the response.
    Allowed {
        /// Limit headers for the response.
        headers: Vec<(&'static str, String)>,
    },
    /// Over a limit: the refusal (429 with `Retry-After` and the limit headers).
    OverLimit(Stop),
}

/// Reads the service's answer.
pub fn verdict(service: &RateLimitService, response: &Response) -> Verdict {
    let headers = limit_headers(service.headers, response);
    if response.overall_code != Code::OverLimit {
        return Verdict::Allowed { headers };
    }
    let retry_after = response
        .statuses
        .iter()
        .filter(|s| s.code == Code::OverLimit)
        .filter_map(|s| s.until_reset_ms)
        .max()
        .map_or(1, |ms| ms.div_ceil(1000).max(1));
    let mut stop = Stop::new(
        429,
        "rate_limited",
        "the rate limit for this request is exhausted".to_owned(),
    );
    stop.refusal
        .headers
        .push(("retry-after", retry_after.to_string()));
    stop.refusal.headers.extend(headers);
    stop.refusal.shadow = service.shadow;
    Verdict::OverLimit(stop)
}

/// The refusal when the service failed or was late and the failure mode denies (recorded only
/// when the service is in shadow mode: a service being tried out must not block by failing).
pub fn unavailable(service: &RateLimitService) -> Stop {
    let mut stop = Stop::new(
        503,
        "rate_limit_unavailable",
        "the rate-limit service is unavailable; retry shortly".to_owned(),
    );
    stop.refusal.headers.push(("retry-after", "1".to_owned()));
    stop.refusal.shadow = service.shadow;
    stop
}

/// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers: a structured list
/// with one member per limit, `"name";q=quota;w=window` and `"name";r=remaining;t=reset`), and
/// the older `X-RateLimit-*` for the most constraining limit when asked.
pub fn limit_headers(style: HeaderStyle, response: &Response) -> Vec<(&'static str, String)> {
    if style == HeaderStyle::None {
        return Vec::new();
    }
    let mut policy = String::new();
    let mut state = String::new();
    let mut tightest: Option<(u32, u32, u64)> = None;
    for (i, status) in response.statuses.iter().enumerate() {
        let Some(limit) = &status.current_limit else {
            continue;
        };
        let name = policy_name(&limit.name, i);
        let reset = status
            .until_reset_ms
            .map_or(limit.unit_seconds, |ms| ms.div_ceil(1000));
        let sep = if policy.is_empty() { "" } else { ", " };
        let _ = write!(policy, "{sep}\"{name}\";q={}", limit.requests_per_unit);
        if limit.unit_seconds > 0 {
            let _ = write!(policy, ";w={}", limit.unit_seconds);
        }
        let _ = write!(
            state,
            "{sep}\"{name}\";r={};t={reset}",
            status.limit_remaining
        );
        if tightest.is_none_or(|(_, remaining, _)| status.limit_remaining < remaining) {
            tightest = Some((limit.requests_per_unit, status.limit_remaining, reset));
        }
    }
    let mut headers = Vec::new();
    if policy.is_empty() {
        return headers;
    }
    headers.push(("ratelimit-policy", policy));
    headers.push(("ratelimit", state));
    if let (HeaderStyle::IetfAndLegacy, Some((limit, remaining, reset))) = (style, tightest) {
        headers.push(("x-ratelimit-limit", limit.to_string()));
        headers.push(("x-ratelimit-remaining", remaining.to_string()));
        headers.push(("x-ratelimit-reset", reset.to_string()));
    }
    headers
}

/// A policy name as a structured-field string: the limit's name with only safe characters, or
/// `limit-<index>`.
fn policy_name(name: &str, index: usize) -> String {
    let safe: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/'))
        .take(64)
        .collect();
    if safe.is_empty() {
        format!("limit-{index}")
    } else {
        safe
    }
}

#[cfg(test)]
mod tests {
    use super::proto::{CurrentLimit, DescriptorStatus};
    use super::*;

    fn status(code: Code, q: u32, w: u64, r: u32, reset_ms: u64, name: &str) -> DescriptorStatus {
        DescriptorStatus {
            code,
            current_limit: Some(CurrentLimit {
                requests_per_unit: q,
                unit_seconds: w,
                name: name.into(),
            }),
            limit_remaining: r,
            until_reset_ms: Some(reset_ms),
        }
    }

    fn service(headers: HeaderStyle) -> RateLimitService {
        RateLimitService {
            cluster: "rl".into(),
            domain: "edge".into(),
            timeout_ms: 20,
            failure_mode_deny: true,
            headers,
            shadow: false,
            grpc_service: proto::encode_grpc_service("rl"),
        }
    }

    #[test]
    fn a_failure_is_shadowed_exactly_when_the_service_is() {
        let enforced = unavailable(&service(HeaderStyle::Ietf));
        assert_eq!(enforced.refusal.status, 503);
        assert_eq!(enforced.refusal.error, "rate_limit_unavailable");
        assert!(
            enforced
                .refusal
                .headers
                .contains(&("retry-after", "1".to_owned()))
        );
        assert!(!crate::guard::is_shadowed(&enforced.refusal, None));
        let shadow = RateLimitService {
            shadow: true,
            ..service(HeaderStyle::Ietf)
        };
        assert!(crate::guard::is_shadowed(
            &unavailable(&shadow).refusal,
            None
        ));
    }

    #[test]
    fn headers_list_every_limit_and_the_legacy_ones_name_the_tightest() {
        let r = Response {
            overall_code: Code::Ok,
            statuses: vec![
                status(Code::Ok, 100, 60, 42, 30_000, "per-user"),
                status(Code::Ok, 1000, 3600, 7, 1_200_500, "per \"ip\""),
            ],
        };
        let h = limit_headers(HeaderStyle::IetfAndLegacy, &r);
        assert_eq!(
            h,
            vec![
                (
                    "ratelimit-policy",
                    "\"per-user\";q=100;w=60, \"perip\";q=1000;w=3600".to_owned()
                ),
                (
                    "ratelimit",
                    "\"per-user\";r=42;t=30, \"perip\";r=7;t=1201".to_owned()
                ),
                ("x-ratelimit-limit", "1000".to_owned()),
                ("x-ratelimit-remaining", "7".to_owned()),
                ("x-ratelimit-reset", "1201".to_owned()),
            ]
        );
        assert_eq!(limit_headers(HeaderStyle::Ietf, &r).len(), 2);
        assert!(limit_headers(HeaderStyle::None, &r).is_empty());
    }

    #[test]
    fn over_limit_is_429_with_retry_after_of_the_exhausted_limit() {
        let r = Response {
            overall_code: Code::OverLimit,
            statuses: vec![
                status(Code::Ok, 100, 60, 42, 59_000, ""),
                status(Code::OverLimit, 10, 1, 0, 400, ""),
            ],
        };
        let Verdict::OverLimit(stop) = verdict(&service(HeaderStyle::Ietf), &r) else {
            panic!("not over limit");
        };
        assert_eq!((stop.refusal.status, stop.reason), (429, "rate_limited"));
        assert_eq!(stop.refusal.headers[0], ("retry-after", "1".to_owned()));
        assert_eq!(
            stop.refusal.headers[1],
            (
                "ratelimit-policy",
                "\"limit-0\";q=100;w=60, \"limit-1\";q=10;w=1".to_owned()
            )
        );
    }
}
