//! The request-protection checks of the header phase (limits, method, IP lists, burst guard,
//! body size and type) and of the body phase. Each returns a [`Stop`] when it refuses.

use crate::burst::{self, Outcome, SharedStore};
use crate::config::schemas;
use crate::config::{IpFilter, Limits, Route};
use crate::decision::Refusal;
use crate::inspect::{Finding, Location};
use crate::json_limits;
use crate::request::Request;
use crate::schema::Violation;
use std::net::{IpAddr, Ipv4Addr};

/// A refusal with its audit reason and rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    /// The reply.
    pub refusal: Refusal,
    /// Audit reason (one word).
    pub reason: &'static str,
    /// The rule that decided, if one did.
    pub rule: Option<String>,
}

impl Stop {
    /// A refusal whose error code is also its audit reason.
    pub fn new(status: u16, error: &'static str, message: String) -> Stop {
        Stop {
            refusal: Refusal {
                status,
                error,
                message,
                challenge: None,
                headers: Vec::new(),
                details: None,
                shadow: false,
            },
            reason: error,
            rule: None,
        }
    }

    fn header(mut self, name: &'static str, value: String) -> Stop {
        self.refusal.headers.push((name, value));
        self
    }

    fn shadow(mut self, shadow: bool) -> Stop {
        self.refusal.shadow = shadow;
        self
    }

    /// The same refusal, recorded only.
    pub fn shadowed(self) -> Stop {
        self.shadow(true)
    }
}

/// Whether a refusal is only recorded and the request passes: its own check runs in shadow
/// mode, or its route does. The one rule of every phase (headers, rate limit, body), so that a
/// shadowed route never refuses, whichever check fires.
pub fn is_shadowed(refusal: &Refusal, route: Option<&Route>) -> bool {
    refusal.shadow || route.is_some_and(|r| r.shadow)
}

/// An authority Envoy could read differently from the filter (see
/// [`crate::request::authority_is_unambiguous`]): 400 before any route is chosen.
pub fn authority(req: &Request<'_>) -> Option<Stop> {
    (!crate::request::authority_is_unambiguous(req.authority())).then(|| {
        Stop::new(
            400,
            "invalid_host",
            "the Host header is not a host name with an optional numeric port".to_owned(),
        )
    })
}

/// The refusal when the proxy would not give the filter what it needs to decide (a host call
/// failed): fail closed with 503 and let the client retry.
pub fn host_failure() -> Stop {
    Stop::new(
        503,
        "gateway_unavailable",
        "the gateway could not read the request; retry shortly".to_owned(),
    )
    .header("retry-after", "1".to_owned())
}

/// What the filter does with a request body that follows the headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyPlan {
    /// The route that decided the request.
    pub route: usize,
    /// Bytes beyond which the request is refused with 413.
    pub max_bytes: u64,
    /// Whether the whole body must be read before it goes on (JSON Schema, inspection);
    /// otherwise it streams through and is only counted.
    pub buffer: bool,
    /// The body's kind by its `content-type` (request headers are gone in the body phase).
    pub kind: BodyKind,
    /// The route's `body_schemas` entry the body must match.
    pub schema: Option<usize>,
}

/// How a body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `application/json`, `text/json` (which ASP.NET Core and others parse as JSON) or
    /// `*/*+json`.
    Json,
    /// `application/x-www-form-urlencoded`.
    Form,
    /// Anything else: only its size is checked.
    Other,
}

impl BodyKind {
    /// The kind of a `content-type` value.
    pub fn of(content_type: Option<&str>) -> BodyKind {
        let Some(media) = content_type.map(media_type) else {
            return BodyKind::Other;
        };
        let lower = media.to_ascii_lowercase();
        if lower == "application/json" || lower == "text/json" || lower.ends_with("+json") {
            BodyKind::Json
        } else if lower == "application/x-www-form-urlencoded" {
            BodyKind::Form
        } else {
            BodyKind::Other
        }
    }
}

/// URI length, header count and size, query parameter count. Checked with the global limits
/// before routing, and again with the route's (which can therefore only tighten these four).
pub fn request_limits(limits: &Limits, req: &Request<'_>) -> Option<Stop> {
    let uri = req.path_and_query().len() as u64;
    if uri > limits.max_uri_bytes {
        let msg = format!(
            "the request target is longer than {} bytes",
            limits.max_uri_bytes
        );
        return Some(Stop::new(414, "uri_too_long", msg));
    }
    let count = req.headers.len() as u64;
    if count > limits.max_headers {
        let msg = format!("the request has more than {} headers", limits.max_headers);
        return Some(Stop::new(431, "too_many_headers", msg));
    }
    let bytes: u64 = req
        .headers
        .iter()
        .map(|(n, v)| (n.len() + v.len()) as u64)
        .sum();
    if bytes > limits.max_header_bytes {
        let msg = format!(
            "the request headers are larger than {} bytes",
            limits.max_header_bytes
        );
        return Some(Stop::new(431, "headers_too_large", msg));
    }
    let params = req
        .query()
        .map_or(0, |q| q.split('&').filter(|p| !p.is_empty()).count()) as u64;
    if params > limits.max_query_params {
        let msg = format!(
            "the request has more than {} query parameters",
            limits.max_query_params
        );
        return Some(Stop::new(400, "too_many_query_parameters", msg));
    }
    None
}

/// `allowed_methods`: 405 with `Allow`.
pub fn method_allowed(route: &Route, req: &Request<'_>) -> Option<Stop> {
    if route.allowed_methods.is_empty() || route.allowed_methods.iter().any(|m| m == req.method()) {
        return None;
    }
    let stop = Stop::new(
        405,
        "method_not_allowed",
        format!("this route does not accept {}", safe_method(req.method())),
    );
    Some(stop.header("allow", route.allowed_methods.join(", ")))
}

/// The global IP lists, then the route's.
pub fn ip_filters(
    global: Option<&IpFilter>,
    route: &Route,
    client: Option<IpAddr>,
) -> Option<Stop> {
    [global, route.ip_filter.as_ref()]
        .into_iter()
        .flatten()
        .find(|f| !ip_passes(f, client))
        .map(|f| {
            let stop = Stop::new(
                403,
                "ip_denied",
                "requests from this address are not allowed".to_owned(),
            );
            stop.shadow(f.shadow)
        })
}

/// Whether a client passes one filter. An unknown address is in no list: it fails an allow
/// list and passes a deny list.
fn ip_passes(filter: &IpFilter, client: Option<IpAddr>) -> bool {
    match client {
        Some(ip) => {
            !filter.deny.contains(ip) && (filter.allow.is_empty() || filter.allow.contains(ip))
        }
        // An unknown client (no address, or one Envoy took from a header nobody vouches
        // for) passes no list: a deny list cannot be dodged by hiding the address.
        None => false,
    }
}

/// The burst guard of the route: 429 with `Retry-After`, or 429 when the shared data cannot be
/// updated (fail closed).
pub fn burst(
    store: &dyn SharedStore,
    route: &Route,
    index: usize,
    client: Option<IpAddr>,
    now_ns: u64,
) -> Option<Stop> {
    let guard = route.burst.as_ref()?;
    // Clients without a known address share one bucket.
    let client = client.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let stop = match burst::take(store, &guard.slots, &guard.spec, client, index, now_ns) {
        Outcome::Allowed => return None,
        Outcome::Limited {
            retry_after_seconds,
        } => Stop::new(
            429,
            "burst_limited",
            "too many requests from this address; slow down".to_owned(),
        )
        .header("retry-after", retry_after_seconds.to_string()),
        Outcome::Unavailable => {
            let mut stop = Stop::new(
                429,
                "burst_limited",
                "too many concurrent requests; retry shortly".to_owned(),
            )
            .header("retry-after", "1".to_owned());
            stop.reason = "burst_unavailable";
            stop
        }
    };
    Some(stop.shadow(guard.spec.shadow))
}

/// A body's declared size against the route's limit (413) and its media type against the
/// route's list (415), before any of it arrives.
pub fn body_headers(route: &Route, req: &Request<'_>, end_of_stream: bool) -> Option<Stop> {
    let declared = declared_length(req);
    if declared.is_some_and(|n| n > route.limits.max_body_bytes) {
        return Some(too_large(route.limits.max_body_bytes));
    }
    let has_body = !end_of_stream && declared != Some(0);
    if schemas::for_method(&route.body_schemas, req.method()).is_some() {
        if !has_body {
            let msg = "this request needs a JSON body".to_owned();
            return Some(Stop::new(400, "invalid_body", msg));
        }
        if BodyKind::of(req.header("content-type")) != BodyKind::Json {
            let stop = Stop::new(
                415,
                "unsupported_media_type",
                "the request body must be JSON (application/json)".to_owned(),
            );
            return Some(stop.header("accept", "application/json".to_owned()));
        }
    }
    if !has_body || route.content_types.is_empty() {
        return None;
    }
    let media = req.header("content-type").map(media_type);
    let accepted = media.is_some_and(|m| route.content_types.iter().any(|t| type_matches(t, m)));
    if accepted {
        return None;
    }
    let stop = Stop::new(
        415,
        "unsupported_media_type",
        format!(
            "the request body must be one of: {}",
            route.content_types.join(", ")
        ),
    );
    Some(stop.header("accept", route.content_types.join(", ")))
}

/// Attack signatures in the path, the query and the chosen headers.
pub fn inspect_request(route: &Route, req: &Request<'_>, path: &str) -> Option<Stop> {
    let inspection = route.inspection.as_ref()?;
    let inspector = &inspection.inspector;
    let finding = inspector
        .inspect_path(path)
        .or_else(|| req.query().and_then(|q| inspector.inspect_query(q)))
        .or_else(|| {
            inspection.headers.iter().find_map(|name| {
                req.headers_named(name).find_map(|value| {
                    if name == "cookie" {
                        inspector.inspect_cookie_header(value)
                    } else {
                        inspector.inspect(Location::Header, value)
                    }
                })
            })
        })?;
    Some(found(finding, inspection.shadow))
}

/// Request trailers, inspected as header values are (every trailer: trailers are rare, and
/// one that carries an attack must not pass because its name is not on the route's list).
pub fn inspect_trailers(route: &Route, trailers: &[(String, String)]) -> Option<Stop> {
    let inspection = route.inspection.as_ref()?;
    let finding = trailers
        .iter()
        .find_map(|(_, value)| inspection.inspector.inspect(Location::Header, value))?;
    Some(found(finding, inspection.shadow))
}

/// The refusal for an inspection finding: the category in the reply, the rule in the audit.
fn found(finding: Finding, shadow: bool) -> Stop {
    let mut stop = Stop::new(
        403,
        "suspicious_request",
        format!(
            "the request was refused by the {} protection rules",
            finding.category.as_str()
        ),
    );
    stop.rule = Some(finding.rule.to_owned());
    stop.shadow(shadow)
}

/// What to do with the body of a passing request on this route.
pub fn body_plan(route: &Route, index: usize, req: &Request<'_>) -> BodyPlan {
    let kind = BodyKind::of(req.header("content-type"));
    let inspected = kind != BodyKind::Other && route.inspection.as_ref().is_some_and(|i| i.body);
    let schema = schemas::for_method(&route.body_schemas, req.method()).map(|(i, _)| i);
    BodyPlan {
        route: index,
        max_bytes: route.limits.max_body_bytes,
        buffer: inspected || schema.is_some(),
        kind,
        schema,
    }
}

/// The body phase: a whole buffered body against the route's limits and rules.
pub fn check_body(route: &Route, plan: &BodyPlan, body: &[u8]) -> Option<Stop> {
    if body.len() as u64 > plan.max_bytes {
        return Some(too_large(plan.max_bytes));
    }
    let inspection = route.inspection.as_ref().filter(|i| i.body);
    match plan.kind {
        BodyKind::Json => {
            let limits = &route.limits;
            if let Err(e) =
                json_limits::check(body, limits.max_json_depth, limits.max_json_string_bytes)
            {
                return Some(Stop::new(400, "invalid_body", e.to_string()));
            }
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
                let msg = "the request body is not valid JSON".to_owned();
                return Some(Stop::new(400, "invalid_body", msg));
            };
            if let Some(body_schema) = plan.schema.and_then(|i| route.body_schemas.get(i)) {
                let violations = body_schema.schema.validate(&value, MAX_VIOLATIONS);
                if !violations.is_empty() {
                    return Some(schema_refusal(&body_schema.name, &violations));
                }
            }
            let finding = inspection.and_then(|i| i.inspector.inspect_json(&value));
            finding.map(|f| found(f, inspection.is_some_and(|i| i.shadow)))
        }
        BodyKind::Form => {
            let finding = inspection.and_then(|i| i.inspector.inspect_form(body));
            finding.map(|f| found(f, inspection.is_some_and(|i| i.shadow)))
        }
        BodyKind::Other => None,
    }
}

/// Violations listed in a refusal; the validator stops looking after this many.
pub const MAX_VIOLATIONS: usize = 10;

/// 400 with the violations as `details`.
fn schema_refusal(name: &str, violations: &[Violation]) -> Stop {
    let mut stop = Stop::new(
        400,
        "schema_violation",
        format!(
            "the request body does not match the schema ({} violation{})",
            violations.len(),
            if violations.len() == 1 { "" } else { "s" }
        ),
    );
    stop.rule = Some(name.to_owned());
    stop.refusal.details = serde_json::to_value(violations).ok();
    stop
}

/// The 413 refusal for a body over `max` bytes.
pub fn too_large(max: u64) -> Stop {
    Stop::new(
        413,
        "body_too_large",
        format!("the request body is larger than {max} bytes"),
    )
}

/// `content-length` as a number (`None` when absent or not a plain decimal).
fn declared_length(req: &Request<'_>) -> Option<u64> {
    req.header("content-length")?.trim().parse().ok()
}

/// The media type of a `content-type` value, lower-cased comparison left to the caller:
/// `Application/JSON; charset=utf-8` → `Application/JSON`.
fn media_type(value: &str) -> &str {
    value.split(';').next().unwrap_or("").trim()
}

/// `application/json` against a configured type, which may be `text/*` or `*/*`.
fn type_matches(configured: &str, media: &str) -> bool {
    match configured.strip_suffix("/*") {
        Some("*") => true,
        Some(ty) => media
            .split_once('/')
            .is_some_and(|(t, sub)| !sub.is_empty() && t.eq_ignore_ascii_case(ty)),
        None => configured.eq_ignore_ascii_case(media),
    }
}

/// A method for a message: printable token characters only, bounded.
fn safe_method(m: &str) -> String {
    m.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn a_refusal_is_shadowed_by_its_own_mode_or_its_route() {
        let config = Config::from_json(
            br#"{"routes": [
                {"name": "enforced", "match": {"prefix": "/a"}, "public": true},
                {"name": "watched", "match": {"prefix": "/b"}, "public": true, "shadow": true}
            ]}"#,
        )
        .map_err(|e| format!("{e:?}"))
        .unwrap_or_else(|e| unreachable!("{e}"));
        let (enforced, watched) = (config.routes.first(), config.routes.get(1));
        let refusal = too_large(10).refusal;
        assert!(!is_shadowed(&refusal, enforced));
        assert!(!is_shadowed(&refusal, None));
        assert!(is_shadowed(&refusal, watched));
        let own = too_large(10).shadowed().refusal;
        assert!(is_shadowed(&own, enforced));
        assert!(is_shadowed(&own, None));
    }

    #[test]
    fn media_types_match_with_wildcards_and_parameters() {
        assert_eq!(
            media_type("Application/JSON; charset=utf-8"),
            "Application/JSON"
        );
        assert!(type_matches("application/json", "Application/JSON"));
        assert!(type_matches("text/*", "text/plain"));
        assert!(!type_matches("text/*", "text/"));
        assert!(!type_matches("text/*", "application/text"));
        assert!(type_matches("*/*", "anything/else"));
        assert!(!type_matches("application/json", "application/json-patch"));
    }
}
