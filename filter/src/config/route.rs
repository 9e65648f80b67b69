//! Routes: what a request must look like to match, and what it then needs to pass.

use super::protection::{self, Burst, IpFilter, Limits};
use super::provider::{Provider, claim_path};
use super::reader::{self, Ctx, Obj};
use regex::Regex;
use serde_json::Value;
use std::sync::Arc;

/// What routes inherit from the top of the configuration.
#[derive(Debug, Clone, Default)]
pub struct RouteDefaults {
    /// Global limits (a route's `limits` override them field by field).
    pub limits: Limits,
    /// The global burst guard (a route's `burst` replaces it, or `false` turns it off).
    pub burst: Option<Arc<Burst>>,
    /// Whether a rate-limit service is configured (routes' `rate_limits` need one).
    pub rate_limit_service: bool,
    /// Path normalisation: `path` and `prefix` rules must be written in normal form.
    pub path_options: crate::path::PathOptions,
    /// The global `inspection` block, if any.
    pub inspection: Option<super::inspection::InspectionSpec>,
    /// The named schemas of the top-level `schemas` map.
    pub schemas: super::schemas::Schemas,
}

/// One route; the first route that matches a request decides it.
#[derive(Debug)]
pub struct Route {
    /// Name for audit records and metrics (defaults to `route-<index>`).
    pub name: String,
    /// Hosts (`:authority` without port); empty = any host.
    pub hosts: Vec<HostMatch>,
    /// Methods (upper case); empty = any method.
    pub methods: Vec<String>,
    /// The path rule (the query string is never part of the match).
    pub path: PathMatch,
    /// Whether `path` and `prefix` compare case-sensitively (Envoy's `case_sensitive`, default
    /// true; as in Envoy it does not apply to `safe_regex`).
    pub case_sensitive: bool,
    /// Methods the route accepts once matched; others get 405 with `Allow` (empty = any).
    pub allowed_methods: Vec<String>,
    /// The route's own IP lists, checked after the global ones.
    pub ip_filter: Option<IpFilter>,
    /// The burst guard that applies (the global one unless the route replaces or disables it).
    pub burst: Option<Arc<Burst>>,
    /// Limits, resolved over the global ones.
    pub limits: Limits,
    /// Media types a request body may have (empty = any); others get 415.
    pub content_types: Vec<String>,
    /// Descriptors sent to the rate-limit service, one per policy.
    pub rate_limits: Vec<super::ratelimit::RateLimitPolicy>,
    /// Attack signatures looked for in this route's requests.
    pub inspection: Option<super::inspection::Inspection>,
    /// JSON Schemas request bodies must match, by method.
    pub body_schemas: Vec<super::schemas::BodySchema>,
    /// No authentication at all: credentials are not even looked at.
    pub public: bool,
    /// Indexes of the providers that may authenticate the request (any of them).
    pub requires: Vec<usize>,
    /// The providers whose verdict counts: those of `requires` not in shadow mode, or all of
    /// them when every one is in shadow mode. A shadow provider beside enforcing ones never
    /// lets a request in.
    pub deciding: Vec<usize>,
    /// Every required provider is in shadow mode, so every refusal is only recorded.
    pub shadow_providers_only: bool,
    /// A request without any credential passes anonymously (a bad credential still fails).
    pub allow_missing: bool,
    /// Scopes the identity must hold, all of them.
    pub scopes: Vec<String>,
    /// Claim rules the identity must satisfy, all of them.
    pub claims: Vec<ClaimRule>,
    /// Decide and record, but let refused requests pass.
    pub shadow: bool,
}

/// How a host name is matched (as Envoy's virtual host `domains`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// `*`.
    Any,
    /// `api.example.com` (lower case).
    Exact(String),
    /// `*.example.com`: the stored suffix is `.example.com`.
    Suffix(String),
}

/// How the path is matched.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// Every path.
    Any,
    /// The whole path.
    Exact(String),
    /// A leading part of the path.
    Prefix(String),
    /// A regex that must match the whole path (Envoy's `safe_regex`).
    Regex(Regex),
}

/// A rule on one claim of the verified identity.
#[derive(Debug, Clone)]
pub struct ClaimRule {
    /// Claim path, split on `.`.
    pub claim: Vec<String>,
    /// The test applied to the claim's value (or to any element of an array claim).
    pub test: ClaimTest,
}

/// The test a [`ClaimRule`] applies.
#[derive(Debug, Clone)]
pub enum ClaimTest {
    /// Equal to this JSON scalar.
    Equals(Value),
    /// Equal to one of these JSON scalars.
    OneOf(Vec<Value>),
    /// A string claim that the regex matches in full.
    Regex(Regex),
}

/// Longest regex source accepted, and the compiled-size cap that keeps regexes cheap to run.
const MAX_REGEX_LEN: usize = 1024;
const REGEX_SIZE_LIMIT: usize = 1 << 20;

pub(super) fn read_routes(
    cx: &mut Ctx,
    v: &Value,
    path: &str,
    providers: &[Provider],
    defaults: &RouteDefaults,
    inspectors: &mut super::inspection::InspectorCache,
) -> Vec<Route> {
    let Some(items) = reader::as_array(cx, v, path) else {
        return Vec::new();
    };
    if items.is_empty() {
        cx.error(path, "at least one route is required");
    }
    items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| {
            read_route(
                cx,
                item,
                &reader::index(path, i),
                i,
                providers,
                defaults,
                inspectors,
            )
        })
        .collect()
}

fn read_route(
    cx: &mut Ctx,
    v: &Value,
    path: &str,
    index: usize,
    providers: &[Provider],
    defaults: &RouteDefaults,
    inspectors: &mut super::inspection::InspectorCache,
) -> Option<Route> {
    let mut o = Obj::new(cx, v, path)?;
    let name = o
        .non_empty_str(cx, "name")
        .map_or_else(|| format!("route-{index}"), str::to_owned);
    let (hosts, methods, path_match, case_sensitive) = match o.get("match") {
        Some(m) => read_match(cx, m, &o.field_path("match"), &defaults.path_options)?,
        None => (Vec::new(), Vec::new(), PathMatch::Any, true),
    };
    let allowed_methods = read_methods(cx, &mut o, "allowed_methods");
    let ip_filter = o
        .get("ip_filter")
        .map(|v| protection::read_ip_filter(cx, v, &o.field_path("ip_filter")));
    let burst = match o.get("burst") {
        None => defaults.burst.clone(),
        Some(Value::Bool(false)) => None,
        Some(v) => {
            let prefix = format!("portcullis.burst.route.{name}.");
            protection::read_burst(cx, v, &o.field_path("burst"), &prefix).map(|mut b| {
                // A route's own bucket is never shared with other routes.
                b.spec.per_route = true;
                Arc::new(b)
            })
        }
    };
    let limits = match o.get("limits") {
        Some(v) => protection::read_limits(cx, v, &o.field_path("limits"), defaults.limits),
        None => defaults.limits,
    };
    let content_types = protection::read_content_types(cx, &mut o, "content_types");
    let rate_limits = super::ratelimit::read_policies(cx, &mut o, "rate_limits");
    let body_schemas =
        super::schemas::read_body_schemas(cx, &mut o, "body_schemas", &defaults.schemas);
    let inspection_path = o.field_path("inspection");
    let spec = match o.get("inspection") {
        None => defaults.inspection.clone(),
        Some(Value::Bool(false)) => None,
        Some(v) => {
            let base = defaults.inspection.clone().unwrap_or_default();
            Some(super::inspection::read_spec(cx, v, &inspection_path, &base))
        }
    };
    let inspection = spec.and_then(|s| {
        let at = if o.has("inspection") {
            inspection_path.clone()
        } else {
            "inspection".to_owned()
        };
        inspectors.resolve(cx, &s, &at)
    });
    if !rate_limits.is_empty() && !defaults.rate_limit_service {
        cx.error(
            &o.field_path("rate_limits"),
            "needs a top-level \"rate_limit_service\" to call",
        );
    }
    let public = o.bool(cx, "public", false);
    let requires_path = o.field_path("requires");
    let required_names = o.str_list(cx, "requires");
    let requires: Vec<usize> = required_names
        .iter()
        .enumerate()
        .filter_map(|(i, name)| {
            let found = providers.iter().position(|p| p.name == *name);
            if found.is_none() {
                cx.error(
                    &reader::index(&requires_path, i),
                    format!("no provider is named {name:?}"),
                );
            }
            found
        })
        .collect();
    let allow_missing = o.bool(cx, "allow_missing", false);
    let scopes = super::scope_list(cx, &mut o, "scopes");
    let claims: Vec<ClaimRule> = o
        .array(cx, "claims")
        .into_iter()
        .filter_map(|(v, p)| read_claim_rule(cx, v, &p))
        .collect();
    let shadow = o.bool(cx, "shadow", false);
    if public
        && (!required_names.is_empty() || allow_missing || !scopes.is_empty() || !claims.is_empty())
    {
        cx.error(
            &o.field_path("public"),
            "a public route cannot also have requires, allow_missing, scopes or claims",
        );
    }
    if !public && required_names.is_empty() {
        cx.error(
            &requires_path,
            "a route must name the providers it requires, or be \"public\": true",
        );
    }
    o.finish(cx);
    let is_shadow = |i: &usize| providers.get(*i).is_some_and(|p| p.shadow);
    let enforcing: Vec<usize> = requires.iter().copied().filter(|i| !is_shadow(i)).collect();
    let shadow_providers_only = !requires.is_empty() && enforcing.is_empty();
    let deciding = if shadow_providers_only {
        requires.clone()
    } else {
        enforcing
    };
    Some(Route {
        name,
        hosts,
        methods,
        path: path_match,
        case_sensitive,
        allowed_methods,
        ip_filter,
        burst,
        limits,
        content_types,
        rate_limits,
        inspection,
        body_schemas,
        public,
        requires,
        deciding,
        shadow_providers_only,
        allow_missing,
        scopes,
        claims,
        shadow,
    })
}

type MatchParts = (Vec<HostMatch>, Vec<String>, PathMatch, bool);

fn read_match(
    cx: &mut Ctx,
    v: &Value,
    path: &str,
    options: &crate::path::PathOptions,
) -> Option<MatchParts> {
    let mut o = Obj::new(cx, v, path)?;
    let hosts_path = o.field_path("hosts");
    let hosts = o
        .str_list(cx, "hosts")
        .into_iter()
        .enumerate()
        .filter_map(|(i, h)| read_host(cx, h, &reader::index(&hosts_path, i)))
        .collect();
    let methods = read_methods(cx, &mut o, "methods");
    let case_sensitive = o.bool(cx, "case_sensitive", true);
    let mut rules = Vec::new();
    if let Some(p) = o.str(cx, "path") {
        rules.push(read_literal_path(cx, p, &o.field_path("path"), options).map(PathMatch::Exact));
    }
    if let Some(p) = o.str(cx, "prefix") {
        rules.push(
            read_literal_path(cx, p, &o.field_path("prefix"), options).map(PathMatch::Prefix),
        );
    }
    if let Some(r) = o.str(cx, "safe_regex") {
        rules.push(compile_regex(cx, r, &o.field_path("safe_regex")).map(PathMatch::Regex));
    }
    if rules.len() > 1 {
        cx.error(
            path,
            "use only one of \"path\", \"prefix\" and \"safe_regex\"",
        );
    }
    o.finish(cx);
    let path_match = match rules.pop() {
        None => PathMatch::Any,
        Some(rule) => rule?,
    };
    let path_match = match path_match {
        PathMatch::Exact(p) if !case_sensitive => PathMatch::Exact(p.to_ascii_lowercase()),
        PathMatch::Prefix(p) if !case_sensitive => PathMatch::Prefix(p.to_ascii_lowercase()),
        other => other,
    };
    Some((hosts, methods, path_match, case_sensitive))
}

/// A list of HTTP methods (upper-case tokens).
pub(super) fn read_methods(cx: &mut Ctx, o: &mut Obj<'_>, key: &'static str) -> Vec<String> {
    let path = o.field_path(key);
    o.str_list(cx, key)
        .into_iter()
        .enumerate()
        .filter_map(|(i, m)| {
            if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) {
                Some(m.to_owned())
            } else {
                cx.error(
                    &reader::index(&path, i),
                    format!("{m:?} is not an upper-case HTTP method"),
                );
                None
            }
        })
        .collect()
}

/// A host rule: `*`, `*.example.com`, a name, or a bracketed IPv6 address. Names are lower-cased
/// and a trailing dot dropped, as the request side does; ports are refused, since the request's
/// port is never part of the match.
fn read_host(cx: &mut Ctx, h: &str, path: &str) -> Option<HostMatch> {
    let lower = h.to_ascii_lowercase();
    let lower = lower.strip_suffix('.').unwrap_or(&lower);
    let is_name = |s: &str| {
        !s.is_empty()
            && !s.starts_with('.')
            && !s.contains("..")
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    };
    let is_ipv6 = |s: &str| {
        s.strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .is_some_and(|inner| {
                !inner.is_empty()
                    && inner
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() || b":.".contains(&b))
            })
    };
    if lower == "*" {
        Some(HostMatch::Any)
    } else if let Some(rest) = lower.strip_prefix("*.").filter(|r| is_name(r)) {
        Some(HostMatch::Suffix(format!(".{rest}")))
    } else if is_name(lower) || is_ipv6(lower) {
        Some(HostMatch::Exact(lower.to_owned()))
    } else {
        cx.error(
            path,
            format!(
                "{h:?} is not a host name (no port; \"*\" and \"*.example.com\" are the wildcards; IPv6 in brackets)"
            ),
        );
        None
    }
}

/// A `path` or `prefix` rule: it must be in the normal form requests are brought to, or it
/// could never match (or match less than its author meant).
fn read_literal_path(
    cx: &mut Ctx,
    p: &str,
    path: &str,
    options: &crate::path::PathOptions,
) -> Option<String> {
    if !p.starts_with('/') {
        cx.error(path, format!("{p:?} must start with '/'"));
        return None;
    }
    if p.contains(['?', '#']) || p.chars().any(char::is_control) {
        cx.error(
            path,
            format!("{p:?} must not contain '?', '#' or control characters"),
        );
        return None;
    }
    match crate::path::normalize(p, options) {
        Ok(n) if !n.changed => Some(p.to_owned()),
        Ok(n) => {
            cx.error(
                path,
                format!(
                    "{p:?} is not a normalised path; requests are matched in the form {:?}",
                    n.path
                ),
            );
            None
        }
        Err(e) => {
            cx.error(path, format!("{p:?} can never match: {e}"));
            None
        }
    }
}

/// Compiles a regex that must match a whole value, with bounded size.
pub fn compile_regex(cx: &mut Ctx, source: &str, path: &str) -> Option<Regex> {
    if source.len() > MAX_REGEX_LEN {
        cx.error(
            path,
            format!("regex is longer than {MAX_REGEX_LEN} characters"),
        );
        return None;
    }
    match regex::RegexBuilder::new(&format!("^(?:{source})$"))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
    {
        Ok(r) => Some(r),
        Err(e) => {
            cx.error(path, format!("invalid regex: {}", one_line(&e.to_string())));
            None
        }
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn read_claim_rule(cx: &mut Ctx, v: &Value, path: &str) -> Option<ClaimRule> {
    let mut o = Obj::new(cx, v, path)?;
    let claim = o
        .required(cx, "name")
        .and_then(|v| claim_path(cx, v, &o.field_path("name")));
    let mut tests = Vec::new();
    if let Some(v) = o.get("equals") {
        tests.push(scalar(cx, v, &o.field_path("equals")).map(ClaimTest::Equals));
    }
    if let Some(v) = o.get("one_of") {
        let p = o.field_path("one_of");
        let list = reader::as_array(cx, v, &p).map(|items| {
            items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| scalar(cx, item, &reader::index(&p, i)))
                .collect::<Vec<_>>()
        });
        if list.as_ref().is_some_and(Vec::is_empty) {
            cx.error(&p, "must list at least one value");
        }
        tests.push(list.map(ClaimTest::OneOf));
    }
    if let Some(r) = o.str(cx, "regex") {
        tests.push(compile_regex(cx, r, &o.field_path("regex")).map(ClaimTest::Regex));
    }
    if tests.len() != 1 {
        cx.error(
            path,
            "a claim rule needs exactly one of \"equals\", \"one_of\" and \"regex\"",
        );
    }
    o.finish(cx);
    Some(ClaimRule {
        claim: claim?,
        test: tests.pop()??,
    })
}

fn scalar(cx: &mut Ctx, v: &Value, path: &str) -> Option<Value> {
    match v {
        Value::String(_) | Value::Number(_) | Value::Bool(_) => Some(v.clone()),
        other => {
            cx.error(
                path,
                format!(
                    "expected a string, number or boolean, found {}",
                    reader::type_name(other)
                ),
            );
            None
        }
    }
}
