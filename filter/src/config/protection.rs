//! Request protection settings: client address, IP lists, the burst guard and size limits.
//! Each has a global value, and routes may tighten or replace it.

use super::reader::{self, Ctx, Obj};
use crate::burst::{BucketSpec, Slots};
use crate::ipset::IpSet;
use ipnet::IpNet;
use serde_json::Value;

/// Largest accepted `xff_num_trusted_hops`.
const MAX_TRUSTED_HOPS: u64 = 16;
/// Largest `max_clients` of the burst guard (memory: about 100 bytes per client in shared data).
const MAX_BURST_CLIENTS: u64 = 1 << 20;

/// Allow and deny lists. A client in `deny` is refused; with a non-empty `allow`, a client
/// outside it is refused too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpFilter {
    /// Networks allowed (empty = every address).
    pub allow: IpSet,
    /// Networks refused, checked first.
    pub deny: IpSet,
    /// Record refusals without refusing.
    pub shadow: bool,
}

/// The burst guard of a route: its bucket and the slots it lives in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Burst {
    /// Rate and capacity.
    pub spec: BucketSpec,
    /// Shared-data slots.
    pub slots: Slots,
}

/// Size and shape limits. Resolved per route at configure time (route values over global ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of `:path` including the query string → 414.
    pub max_uri_bytes: u64,
    /// Number of header entries, pseudo-headers included → 431.
    pub max_headers: u64,
    /// Bytes of all header names and values → 431.
    pub max_header_bytes: u64,
    /// Number of query parameters → 400.
    pub max_query_params: u64,
    /// Bytes of the request body → 413.
    pub max_body_bytes: u64,
    /// Nesting depth of a JSON body → 400.
    pub max_json_depth: u64,
    /// Bytes of one JSON string (key or value, as written) → 400.
    pub max_json_string_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_uri_bytes: 8192,
            max_headers: 100,
            // Envoy's default max_request_headers_kb.
            max_header_bytes: 60 * 1024,
            max_query_params: 128,
            // Envoy's default per-connection buffer limit: a larger body cannot be buffered.
            max_body_bytes: 1024 * 1024,
            max_json_depth: 32,
            max_json_string_bytes: 64 * 1024,
        }
    }
}

/// Reads `client_ip`: `{"xff_num_trusted_hops": N, "trust_envoy_xff": false}`; the hops and
/// whether an address Envoy took from `X-Forwarded-For` is trusted.
pub fn read_client_ip(cx: &mut Ctx, v: &Value, path: &str) -> (u32, bool) {
    let Some(mut o) = Obj::new(cx, v, path) else {
        return (0, false);
    };
    let hops = o.u64(cx, "xff_num_trusted_hops", MAX_TRUSTED_HOPS);
    let trust_envoy_xff = o.bool(cx, "trust_envoy_xff", false);
    o.finish(cx);
    (
        hops.and_then(|h| u32::try_from(h).ok()).unwrap_or(0),
        trust_envoy_xff,
    )
}

/// Reads an `ip_filter` block: `{"allow": [CIDR…], "deny": [CIDR…], "shadow": false}`.
pub fn read_ip_filter(cx: &mut Ctx, v: &Value, path: &str) -> IpFilter {
    let Some(mut o) = Obj::new(cx, v, path) else {
        return IpFilter::default();
    };
    let allow = read_networks(cx, &mut o, "allow");
    let deny = read_networks(cx, &mut o, "deny");
    let shadow = o.bool(cx, "shadow", false);
    if allow.is_empty() && deny.is_empty() {
        cx.error(path, "give \"allow\", \"deny\" or both");
    }
    o.finish(cx);
    IpFilter {
        allow: IpSet::new(&allow),
        deny: IpSet::new(&deny),
        shadow,
    }
}

/// A list of networks: `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a /32 or /128).
fn read_networks(cx: &mut Ctx, o: &mut Obj<'_>, key: &'static str) -> Vec<IpNet> {
    let path = o.field_path(key);
    o.str_list(cx, key)
        .into_iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let parsed = s
                .parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) if net != net.trunc() => {
                    cx.error(
                        &reader::index(&path, i),
                        format!("{s:?} has host bits set; the network is {}", net.trunc()),
                    );
                    None
                }
                Ok(net) => Some(net),
                Err(_) => {
                    cx.error(
                        &reader::index(&path, i),
                        format!("{s:?} is not an IP address or CIDR network"),
                    );
                    None
                }
            }
        })
        .collect()
}

/// Reads a `burst` block: `{"requests_per_second": 10, "burst": 20, "per_route": false,
/// "ipv4_prefix_len": 32, "ipv6_prefix_len": 64, "max_clients": 16384, "shadow": false}`. `key_prefix` names its shared-data slots.
pub fn read_burst(cx: &mut Ctx, v: &Value, path: &str, key_prefix: &str) -> Option<Burst> {
    let mut o = Obj::new(cx, v, path)?;
    let rate = match o.required(cx, "requests_per_second") {
        Some(Value::Number(n)) => match n.as_f64() {
            Some(r) if (0.001..=1_000_000.0).contains(&r) => Some(r),
            _ => {
                cx.error(
                    &o.field_path("requests_per_second"),
                    "must be between 0.001 and 1000000",
                );
                None
            }
        },
        Some(other) => {
            cx.error(
                &o.field_path("requests_per_second"),
                format!("expected a number, found {}", reader::type_name(other)),
            );
            None
        }
        None => None,
    };
    let burst = o.u64(cx, "burst", 1_000_000);
    if burst == Some(0) {
        cx.error(&o.field_path("burst"), "must be at least 1");
    }
    let per_route = o.bool(cx, "per_route", false);
    let ipv4_prefix = o.u64(cx, "ipv4_prefix_len", 32).unwrap_or(32);
    let ipv6_prefix = o.u64(cx, "ipv6_prefix_len", 128).unwrap_or(64);
    let max_clients = o
        .u64(cx, "max_clients", MAX_BURST_CLIENTS)
        .unwrap_or(16_384);
    if max_clients < crate::burst::WAYS as u64 {
        cx.error(
            &o.field_path("max_clients"),
            format!("must be at least {}", crate::burst::WAYS),
        );
    }
    let shadow = o.bool(cx, "shadow", false);
    o.finish(cx);
    let rate = rate?;
    // At least one request's worth, so a fractional rate below 1/s still holds a request.
    let burst = burst.unwrap_or_else(|| (rate.ceil() as u64).max(1)).max(1);
    Some(Burst {
        spec: BucketSpec {
            rate_milli: ((rate * 1000.0).round() as u64).max(1),
            capacity_milli: burst.saturating_mul(1000),
            per_route,
            ipv4_prefix: u8::try_from(ipv4_prefix).unwrap_or(32),
            ipv6_prefix: u8::try_from(ipv6_prefix).unwrap_or(64),
            shadow,
        },
        slots: Slots::new(key_prefix, usize::try_from(max_clients).unwrap_or(16_384)),
    })
}

/// Reads a `limits` block over `base` (fields left out keep the base value).
pub fn read_limits(cx: &mut Ctx, v: &Value, path: &str, base: Limits) -> Limits {
    let Some(mut o) = Obj::new(cx, v, path) else {
        return base;
    };
    let mut one = |key: &'static str, current: u64| {
        let value = o.u64(cx, key, u64::from(u32::MAX)).unwrap_or(current);
        if value == 0 {
            cx.error(&o.field_path(key), "must be at least 1");
            return current;
        }
        value
    };
    let limits = Limits {
        max_uri_bytes: one("max_uri_bytes", base.max_uri_bytes),
        max_headers: one("max_headers", base.max_headers),
        max_header_bytes: one("max_header_bytes", base.max_header_bytes),
        max_query_params: one("max_query_params", base.max_query_params),
        max_body_bytes: one("max_body_bytes", base.max_body_bytes),
        max_json_depth: one("max_json_depth", base.max_json_depth),
        max_json_string_bytes: one("max_json_string_bytes", base.max_json_string_bytes),
    };
    o.finish(cx);
    limits
}

/// Reads a list of media types (`application/json`, `text/*`): lower-cased, no parameters.
pub fn read_content_types(cx: &mut Ctx, o: &mut Obj<'_>, key: &'static str) -> Vec<String> {
    let path = o.field_path(key);
    o.str_list(cx, key)
        .into_iter()
        .enumerate()
        .filter_map(|(i, t)| {
            let lower = t.trim().to_ascii_lowercase();
            let token = |s: &str| {
                !s.is_empty()
                    && s.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b) || b == b'*'
                    })
            };
            match lower.split_once('/') {
                Some((ty, sub)) if token(ty) && token(sub) && (ty != "*" || sub == "*") => {
                    Some(lower)
                }
                _ => {
                    cx.error(
                        &reader::index(&path, i),
                        format!(
                            "{t:?} is not a media type such as \"application/json\" (no parameters)"
                        ),
                    );
                    None
                }
            }
        })
        .collect()
}

/// How paths are normalised, and what the upstream receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathNormalization {
    /// `escaped_slashes` and `path_parameters`.
    pub options: crate::path::PathOptions,
    /// Send the normalised path upstream (true), or the path as the client sent it.
    pub forward_normalized: bool,
}

impl Default for PathNormalization {
    fn default() -> Self {
        PathNormalization {
            options: crate::path::PathOptions::default(),
            forward_normalized: true,
        }
    }
}

/// Reads `path_normalization`: `{"escaped_slashes": "refuse"|"keep"|"decode",
/// "path_parameters": "refuse"|"strip", "forward": "normalized"|"original"}`.
pub fn read_path_normalization(cx: &mut Ctx, v: &Value, path: &str) -> PathNormalization {
    use crate::path::{EscapedSlashes, PathParameters};
    let mut out = PathNormalization::default();
    let Some(mut o) = Obj::new(cx, v, path) else {
        return out;
    };
    let mut choice = |key: &'static str, allowed: &[&str]| -> Option<usize> {
        let value = o.str(cx, key)?;
        let found = allowed.iter().position(|a| *a == value);
        if found.is_none() {
            let list: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
            cx.error(
                &o.field_path(key),
                format!("{value:?} is not one of {}", list.join(", ")),
            );
        }
        found
    };
    if let Some(i) = choice("escaped_slashes", &["refuse", "keep", "decode"]) {
        out.options.escaped_slashes = match i {
            0 => EscapedSlashes::Refuse,
            1 => EscapedSlashes::Keep,
            _ => EscapedSlashes::Decode,
        };
    }
    if let Some(i) = choice("path_parameters", &["refuse", "strip"]) {
        out.options.path_parameters = match i {
            0 => PathParameters::Refuse,
            _ => PathParameters::Strip,
        };
    }
    if let Some(i) = choice("forward", &["normalized", "original"]) {
        out.forward_normalized = i == 0;
    }
    o.finish(cx);
    out
}
