//! Global rate limits: the rate-limit service to call, and each route's descriptors, with the
//! names of Envoy's `envoy.filters.http.ratelimit` and route `rate_limits` actions where the
//! concept exists.

use super::provider::claim_path;
use super::reader::{self, Ctx, Obj};
use serde_json::Value;

/// Default deadline of one call to the service (Envoy's rate-limit filter: 20 ms).
pub const DEFAULT_TIMEOUT_MS: u64 = 20;

/// The service every route with `rate_limits` calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitService {
    /// Envoy cluster of the gRPC service.
    pub cluster: String,
    /// `domain` of every request.
    pub domain: String,
    /// Deadline of one call.
    pub timeout_ms: u64,
    /// Refuse with 503 when the service fails or is late (true), or let the request pass.
    pub failure_mode_deny: bool,
    /// Which limit headers go to clients.
    pub headers: HeaderStyle,
    /// Record over-limit answers without refusing.
    pub shadow: bool,
    /// The `proxy_grpc_call` target: a serialized GrpcService naming `cluster`.
    pub grpc_service: Vec<u8>,
}

/// The response headers that report limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderStyle {
    /// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers).
    Ietf,
    /// The above and the older `X-RateLimit-Limit` / `-Remaining` / `-Reset`.
    IetfAndLegacy,
    /// None (`Retry-After` on 429 is always sent).
    None,
}

/// One descriptor: its entries, in order. If an action cannot produce its entry, no descriptor
/// is sent for this policy (as Envoy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitPolicy {
    /// The entries' sources.
    pub actions: Vec<Action>,
}

/// Where a descriptor entry's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The client address (`remote_address`).
    RemoteAddress,
    /// A request header (`request_headers`).
    RequestHeader {
        /// Header name, lower case.
        header: String,
        /// Descriptor key.
        key: String,
        /// Leave this entry out, rather than the descriptor, when the header is absent.
        skip_if_absent: bool,
    },
    /// A fixed value (`generic_key`).
    GenericKey {
        /// Descriptor key (default `generic_key`).
        key: String,
        /// The value.
        value: String,
    },
    /// The verified token's `sub`.
    Subject {
        /// Descriptor key (default `subject`).
        key: String,
    },
    /// The API key's consumer.
    Consumer {
        /// Descriptor key (default `consumer`).
        key: String,
    },
    /// The route's name.
    RouteName {
        /// Descriptor key (default `route`).
        key: String,
    },
    /// A claim of the verified token (strings, numbers and booleans).
    Claim {
        /// Claim path.
        claim: Vec<String>,
        /// Descriptor key.
        key: String,
    },
}

/// Reads `rate_limit_service`.
pub fn read_service(cx: &mut Ctx, v: &Value, path: &str) -> Option<RateLimitService> {
    let mut o = Obj::new(cx, v, path)?;
    let cluster = o.required_str(cx, "cluster").map(str::to_owned);
    let domain = o.required_str(cx, "domain").map(str::to_owned);
    for (value, key) in [(&cluster, "cluster"), (&domain, "domain")] {
        if value.as_deref() == Some("") {
            cx.error(&o.field_path(key), "must not be empty");
        }
    }
    let timeout_ms = o
        .u64(cx, "timeout_ms", 60_000)
        .unwrap_or(DEFAULT_TIMEOUT_MS);
    if timeout_ms == 0 {
        cx.error(&o.field_path("timeout_ms"), "must be at least 1");
    }
    let failure_mode_deny = o.bool(cx, "failure_mode_deny", true);
    let headers = match o.str(cx, "response_headers") {
        None | Some("ietf") => HeaderStyle::Ietf,
        Some("ietf_and_legacy") => HeaderStyle::IetfAndLegacy,
        Some("none") => HeaderStyle::None,
        Some(other) => {
            cx.error(
                &o.field_path("response_headers"),
                format!("{other:?} is not one of \"ietf\", \"ietf_and_legacy\", \"none\""),
            );
            HeaderStyle::Ietf
        }
    };
    let shadow = o.bool(cx, "shadow", false);
    o.finish(cx);
    let cluster = cluster.filter(|c| !c.is_empty())?;
    Some(RateLimitService {
        grpc_service: crate::ratelimit::proto::encode_grpc_service(&cluster),
        cluster,
        domain: domain.filter(|d| !d.is_empty())?,
        timeout_ms: timeout_ms.max(1),
        failure_mode_deny,
        headers,
        shadow,
    })
}

/// Reads a route's `rate_limits`: `[{"actions": [{"remote_address": {}}, …]}, …]`.
pub fn read_policies(cx: &mut Ctx, o: &mut Obj<'_>, key: &'static str) -> Vec<RateLimitPolicy> {
    o.array(cx, key)
        .into_iter()
        .filter_map(|(v, path)| {
            let mut p = Obj::new(cx, v, &path)?;
            let actions: Vec<Action> = p
                .array(cx, "actions")
                .into_iter()
                .filter_map(|(a, apath)| read_action(cx, a, &apath))
                .collect();
            if actions.is_empty() && p.get("actions").is_none() {
                cx.error(&p.field_path("actions"), "required field is missing");
            } else if actions.is_empty() {
                cx.error(&p.field_path("actions"), "must list at least one action");
            }
            p.finish(cx);
            Some(RateLimitPolicy { actions })
        })
        .collect()
}

fn read_action(cx: &mut Ctx, v: &Value, path: &str) -> Option<Action> {
    let Value::Object(map) = v else {
        cx.error(
            path,
            format!("expected an object, found {}", reader::type_name(v)),
        );
        return None;
    };
    if map.len() != 1 {
        cx.error(
            path,
            "an action is an object with exactly one of: remote_address, request_headers, \
             generic_key, subject, consumer, route_name, claim",
        );
        return None;
    }
    let mut outer = Obj::new(cx, v, path)?;
    let action = if let Some(b) = outer.get("remote_address") {
        let o = Obj::new(cx, b, &outer.field_path("remote_address"))?;
        o.finish(cx);
        Some(Action::RemoteAddress)
    } else if let Some(b) = outer.get("request_headers") {
        let bpath = outer.field_path("request_headers");
        let mut o = Obj::new(cx, b, &bpath)?;
        let header = o
            .required(cx, "header_name")
            .and_then(|h| super::header_name(cx, h, &o.field_path("header_name")));
        let key = descriptor_key(cx, &mut o, None);
        let skip_if_absent = o.bool(cx, "skip_if_absent", false);
        o.finish(cx);
        Some(Action::RequestHeader {
            header: header?,
            key: key?,
            skip_if_absent,
        })
    } else if let Some(b) = outer.get("generic_key") {
        let mut o = Obj::new(cx, b, &outer.field_path("generic_key"))?;
        let value = o.required_str(cx, "descriptor_value").map(str::to_owned);
        let key = descriptor_key(cx, &mut o, Some("generic_key"));
        o.finish(cx);
        Some(Action::GenericKey {
            key: key?,
            value: value?,
        })
    } else if let Some(b) = outer.get("subject") {
        let mut o = Obj::new(cx, b, &outer.field_path("subject"))?;
        let key = descriptor_key(cx, &mut o, Some("subject"));
        o.finish(cx);
        Some(Action::Subject { key: key? })
    } else if let Some(b) = outer.get("consumer") {
        let mut o = Obj::new(cx, b, &outer.field_path("consumer"))?;
        let key = descriptor_key(cx, &mut o, Some("consumer"));
        o.finish(cx);
        Some(Action::Consumer { key: key? })
    } else if let Some(b) = outer.get("route_name") {
        let mut o = Obj::new(cx, b, &outer.field_path("route_name"))?;
        let key = descriptor_key(cx, &mut o, Some("route"));
        o.finish(cx);
        Some(Action::RouteName { key: key? })
    } else if let Some(b) = outer.get("claim") {
        let mut o = Obj::new(cx, b, &outer.field_path("claim"))?;
        let claim = o
            .required(cx, "name")
            .and_then(|c| claim_path(cx, c, &o.field_path("name")));
        let key = descriptor_key(cx, &mut o, None);
        o.finish(cx);
        Some(Action::Claim {
            claim: claim?,
            key: key?,
        })
    } else {
        None
    };
    outer.finish(cx);
    action
}

/// `descriptor_key`, required when there is no default.
fn descriptor_key(cx: &mut Ctx, o: &mut Obj<'_>, default: Option<&str>) -> Option<String> {
    let key = match default {
        Some(d) => Some(o.non_empty_str(cx, "descriptor_key").unwrap_or(d)),
        None => o.required_str(cx, "descriptor_key"),
    }?;
    if key.is_empty() {
        cx.error(&o.field_path("descriptor_key"), "must not be empty");
        return None;
    }
    Some(key.to_owned())
}
