//! `route_config`: virtual hosts, routes, and Envoy's route selection.

use std::time::Duration;

use regex::Regex;
use serde_yaml::Value;

use super::walk::{Obj, Walker, invalid};
use super::{BootstrapError, DataSource};

/// Envoy's default upstream request timeout (`route.timeout` unset).
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

/// `RouteConfiguration` (inline in the HTTP connection manager).
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// `name` (used in stats and logs only).
    pub name: String,
    /// `virtual_hosts`, in order.
    pub virtual_hosts: Vec<VirtualHost>,
    /// `ignore_port_in_host_matching`: drop `:port` from the authority before matching domains.
    pub ignore_port_in_host_matching: bool,
}

/// One `virtual_hosts[]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct VirtualHost {
    /// `name`.
    pub name: String,
    /// `domains`, lower-cased as Envoy matches them case-insensitively.
    pub domains: Vec<String>,
    /// `routes`, first match wins.
    pub routes: Vec<Route>,
}

/// One `routes[]` entry (routes with an unsupported action or path specifier are skipped with
/// a warning, so they never appear here).
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// `name` (may be empty).
    pub name: String,
    /// `match`.
    pub matcher: RouteMatch,
    /// `route` or `direct_response`.
    pub action: RouteAction,
}

/// `match`: path specifier, case sensitivity, header matchers (all must match).
#[derive(Debug, Clone, PartialEq)]
pub struct RouteMatch {
    /// `prefix` / `path` / `safe_regex`.
    pub path: PathMatch,
    /// `case_sensitive` (default true; does not apply to `safe_regex`, as in Envoy).
    pub case_sensitive: bool,
    /// `headers`.
    pub headers: Vec<HeaderMatcher>,
}

/// The path specifier, applied to the path without its query and fragment.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// `prefix`: the path starts with it.
    Prefix(String),
    /// `path`: the path equals it.
    Path(String),
    /// `safe_regex.regex`: the regex matches the whole path (compiled anchored).
    Regex(Regex),
}

impl PartialEq for PathMatch {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (PathMatch::Prefix(a), PathMatch::Prefix(b))
            | (PathMatch::Path(a), PathMatch::Path(b)) => a == b,
            (PathMatch::Regex(a), PathMatch::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

/// One `headers[]` matcher.
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderMatcher {
    /// Header name, lower-cased (pseudo-headers such as `:method` work if the caller passes them).
    pub name: String,
    /// How the value is tested.
    pub kind: HeaderMatch,
    /// `invert_match`: negates the result.
    pub invert: bool,
}

/// The header test. Multiple headers of one name are joined with `,` first, as Envoy does.
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderMatch {
    /// `present_match` (or no specifier: present). `false` matches when the header is absent.
    Present(bool),
    /// `exact_match` / `prefix_match` / … or `string_match`; an absent header never matches.
    Value(StringMatcher),
}

/// `type.matcher.v3.StringMatcher`.
#[derive(Debug, Clone)]
pub enum StringMatcher {
    /// `exact` (with `ignore_case`).
    Exact(String, bool),
    /// `prefix` (with `ignore_case`).
    Prefix(String, bool),
    /// `suffix` (with `ignore_case`).
    Suffix(String, bool),
    /// `contains` (with `ignore_case`).
    Contains(String, bool),
    /// `safe_regex`: the whole value must match.
    Regex(Regex),
}

impl PartialEq for StringMatcher {
    fn eq(&self, other: &Self) -> bool {
        use StringMatcher::*;
        match (self, other) {
            (Exact(a, x), Exact(b, y))
            | (Prefix(a, x), Prefix(b, y))
            | (Suffix(a, x), Suffix(b, y))
            | (Contains(a, x), Contains(b, y)) => a == b && x == y,
            (Regex(a), Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl StringMatcher {
    /// Tests a value.
    pub fn matches(&self, value: &str) -> bool {
        let fold = |s: &str, ic: bool| {
            if ic {
                s.to_ascii_lowercase()
            } else {
                s.to_string()
            }
        };
        match self {
            StringMatcher::Exact(p, ic) => fold(value, *ic) == fold(p, *ic),
            StringMatcher::Prefix(p, ic) => fold(value, *ic).starts_with(&fold(p, *ic)),
            StringMatcher::Suffix(p, ic) => fold(value, *ic).ends_with(&fold(p, *ic)),
            StringMatcher::Contains(p, ic) => fold(value, *ic).contains(&fold(p, *ic)),
            StringMatcher::Regex(re) => re.is_match(value),
        }
    }
}

/// What a matched route does.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteAction {
    /// `route`: forward upstream.
    Forward {
        /// `cluster`.
        cluster: String,
        /// `prefix_rewrite`: replaces the matched prefix (or the whole matched path).
        prefix_rewrite: Option<String>,
        /// `timeout`: `None` when set to `0s` (disabled); default 15 s.
        timeout: Option<Duration>,
    },
    /// `direct_response`: answer locally.
    Direct(DirectResponse),
    /// `redirect`: answer with a redirect.
    Redirect(Redirect),
}

/// `redirect` (Envoy's `RedirectAction`; `prefix_rewrite`, `regex_rewrite` are not implemented).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// `https_redirect: true` → `https`, or `scheme_redirect`.
    pub scheme: Option<String>,
    /// `host_redirect`.
    pub host: Option<String>,
    /// `port_redirect`.
    pub port: Option<u16>,
    /// `path_redirect` (replaces the path; the query is kept unless it has its own).
    pub path: Option<String>,
    /// `response_code`: 301 (`MOVED_PERMANENTLY`, the default), 302, 303, 307 or 308.
    pub status: u16,
    /// `strip_query`.
    pub strip_query: bool,
}

impl Redirect {
    /// The `location` for a request (Envoy `RouteEntryImplBase::newUri`): `port_redirect` sets
    /// the port; without it, `host_redirect` drops the request's port, and a scheme change drops
    /// it only when it is the old scheme's default (80 for http, 443 for https).
    pub fn location(&self, scheme: &str, authority: &str, path: &str) -> String {
        let new_scheme = self.scheme.as_deref().unwrap_or(scheme);
        let (host, port) = split_authority(authority);
        let default_port = match scheme {
            "http" => Some("80"),
            "https" => Some("443"),
            _ => None,
        };
        let port = match (self.port, &self.host, port) {
            (Some(p), _, _) => Some(p.to_string()),
            (None, Some(_), _) => None,
            (None, None, Some(p)) if new_scheme != scheme && Some(p) == default_port => None,
            (None, None, p) => p.map(str::to_owned),
        };
        let host = self.host.as_deref().unwrap_or(host);
        let (old_path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        let mut out = format!("{new_scheme}://{host}");
        if let Some(p) = port {
            out.push(':');
            out.push_str(&p);
        }
        match &self.path {
            Some(p) => {
                if !p.starts_with('/') {
                    out.push('/');
                }
                out.push_str(p);
                if !p.contains('?')
                    && let Some(q) = query.filter(|_| !self.strip_query)
                {
                    out.push('?');
                    out.push_str(q);
                }
            }
            None => {
                out.push_str(old_path);
                if let Some(q) = query.filter(|_| !self.strip_query) {
                    out.push('?');
                    out.push_str(q);
                }
            }
        }
        out
    }
}

/// `host[:port]` (IPv6 literals in brackets keep their colons).
fn split_authority(authority: &str) -> (&str, Option<&str>) {
    match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => (&authority[..i], Some(&authority[i + 1..])),
        _ => (authority, None),
    }
}

/// `direct_response`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectResponse {
    /// `status` (200–599).
    pub status: u16,
    /// `body` (`inline_string`, `inline_bytes` or `filename`).
    pub body: Option<DataSource>,
}

impl RouteConfig {
    /// Envoy's route selection: the virtual host by domain (exact, then the longest `*suffix`
    /// wildcard, then the longest `prefix*` wildcard, then `*`), case-insensitively on the
    /// authority; then the first route of that host whose path specifier (on the path without
    /// query and fragment) and header matchers all match.
    ///
    /// The port is part of the authority, as in Envoy without `strip_any_host_port` /
    /// `strip_matching_host_port` / `ignore_port_in_host_matching`: `example.com:8080` does not
    /// match the domain `example.com` (only `*` or `example.com:8080`). The route config's
    /// `ignore_port_in_host_matching` is honoured here; the connection manager's stripping
    /// options are applied by [`super::HttpConnectionManager::select_route`].
    pub fn select(
        &self,
        authority: &str,
        path: &str,
        headers: &[(String, Vec<u8>)],
    ) -> Option<&Route> {
        let authority = if self.ignore_port_in_host_matching {
            strip_port(authority)
        } else {
            authority
        };
        let vh = self.virtual_host(authority)?;
        let path = path.split(['?', '#']).next().unwrap_or(path);
        vh.routes.iter().find(|r| r.matcher.matches(path, headers))
    }

    /// The virtual host for an authority, per Envoy's domain precedence.
    pub fn virtual_host(&self, authority: &str) -> Option<&VirtualHost> {
        let host = authority.to_ascii_lowercase();
        let domains = || {
            self.virtual_hosts
                .iter()
                .flat_map(|vh| vh.domains.iter().map(move |d| (d.as_str(), vh)))
        };
        if let Some((_, vh)) = domains().find(|(d, _)| *d == host) {
            return Some(vh);
        }
        let best = |suffix: bool| {
            domains()
                .filter_map(|(d, vh)| {
                    let part = if suffix {
                        d.strip_prefix('*')?
                    } else {
                        d.strip_suffix('*')?
                    };
                    if part.is_empty() || host.len() <= part.len() {
                        return None;
                    }
                    let ok = if suffix {
                        host.ends_with(part)
                    } else {
                        host.starts_with(part)
                    };
                    ok.then_some((part.len(), vh))
                })
                // Longest wildcard wins; on equal length the first configured one.
                .fold(
                    None,
                    |acc: Option<(usize, &VirtualHost)>, (n, vh)| match acc {
                        Some((m, _)) if m >= n => acc,
                        _ => Some((n, vh)),
                    },
                )
                .map(|(_, vh)| vh)
        };
        best(true)
            .or_else(|| best(false))
            .or_else(|| domains().find(|(d, _)| *d == "*").map(|(_, vh)| vh))
    }
}

/// Drops a trailing `:port` (keeps bracketed IPv6 literals intact, leaves bare IPv6 alone).
pub(crate) fn strip_port(authority: &str) -> &str {
    if authority.ends_with(']') {
        return authority;
    }
    match authority.rsplit_once(':') {
        Some((host, port))
            if !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!host.contains(':') || host.ends_with(']')) =>
        {
            host
        }
        _ => authority,
    }
}

impl RouteMatch {
    /// Path specifier and all header matchers.
    pub fn matches(&self, path: &str, headers: &[(String, Vec<u8>)]) -> bool {
        let path_ok = match &self.path {
            PathMatch::Prefix(p) if self.case_sensitive => path.starts_with(p.as_str()),
            PathMatch::Prefix(p) => path
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p)),
            PathMatch::Path(p) if self.case_sensitive => path == p,
            PathMatch::Path(p) => path.eq_ignore_ascii_case(p),
            PathMatch::Regex(re) => re.is_match(path),
        };
        path_ok && self.headers.iter().all(|h| h.matches(headers))
    }
}

impl HeaderMatcher {
    /// Tests the request headers (names compared case-insensitively).
    pub fn matches(&self, headers: &[(String, Vec<u8>)]) -> bool {
        let values: Vec<String> = headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(&self.name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect();
        let result = match &self.kind {
            HeaderMatch::Present(want) => values.is_empty() != *want,
            HeaderMatch::Value(m) => !values.is_empty() && m.matches(&values.join(",")),
        };
        result != self.invert
    }
}

/// Compiles an RE2-style regex that must match the whole input.
fn full_regex(path: &str, re: &str) -> Result<Regex, BootstrapError> {
    Regex::new(&format!("^(?:{re})$")).map_err(|e| invalid(path, format!("invalid regex: {e}")))
}

/// `type.matcher.v3.RegexMatcher` (`google_re2` accepted and ignored, as it is a no-op).
fn regex_matcher(w: &mut Walker, path: &str, v: &Value) -> Result<Regex, BootstrapError> {
    let mut o = Obj::new(path, v)?;
    o.consume("google_re2");
    let re = o.req_str("regex")?;
    let re = full_regex(&o.child("regex"), &re)?;
    o.finish(w);
    Ok(re)
}

fn string_matcher(w: &mut Walker, path: &str, v: &Value) -> Result<StringMatcher, BootstrapError> {
    let mut o = Obj::new(path, v)?;
    let ic = o.bool("ignore_case")?.unwrap_or(false);
    let m = if let Some(s) = o.str("exact")? {
        StringMatcher::Exact(s, ic)
    } else if let Some(s) = o.str("prefix")? {
        StringMatcher::Prefix(s, ic)
    } else if let Some(s) = o.str("suffix")? {
        StringMatcher::Suffix(s, ic)
    } else if let Some(s) = o.str("contains")? {
        StringMatcher::Contains(s, ic)
    } else if let Some((p, v)) = o.get("safe_regex") {
        StringMatcher::Regex(regex_matcher(w, &p, v)?)
    } else {
        return Err(invalid(
            path,
            "expected one of exact, prefix, suffix, contains, safe_regex",
        ));
    };
    o.finish(w);
    Ok(m)
}

fn header_matcher(w: &mut Walker, path: &str, v: &Value) -> Result<HeaderMatcher, BootstrapError> {
    let mut o = Obj::new(path, v)?;
    let name = o.req_str("name")?.to_ascii_lowercase();
    let invert = o.bool("invert_match")?.unwrap_or(false);
    let value = |m| Ok::<_, BootstrapError>(HeaderMatch::Value(m));
    let kind = if let Some(s) = o.str("exact_match")? {
        value(StringMatcher::Exact(s, false))?
    } else if let Some(s) = o.str("prefix_match")? {
        value(StringMatcher::Prefix(s, false))?
    } else if let Some(s) = o.str("suffix_match")? {
        value(StringMatcher::Suffix(s, false))?
    } else if let Some(s) = o.str("contains_match")? {
        value(StringMatcher::Contains(s, false))?
    } else if let Some((p, v)) = o.get("safe_regex_match") {
        value(StringMatcher::Regex(regex_matcher(w, &p, v)?))?
    } else if let Some((p, v)) = o.get("string_match") {
        value(string_matcher(w, &p, v)?)?
    } else if let Some(b) = o.bool("present_match")? {
        HeaderMatch::Present(b)
    } else {
        HeaderMatch::Present(true)
    };
    o.finish(w);
    Ok(HeaderMatcher { name, kind, invert })
}

/// Reads `route_config`.
pub(crate) fn read_route_config(
    w: &mut Walker,
    mut o: Obj<'_>,
) -> Result<RouteConfig, BootstrapError> {
    let name = o.str("name")?.unwrap_or_default();
    let ignore_port_in_host_matching = o.bool("ignore_port_in_host_matching")?.unwrap_or(false);
    let validate_clusters = o.bool("validate_clusters")?.unwrap_or(true);
    let mut virtual_hosts = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for (p, v) in o.list("virtual_hosts")? {
        let mut vo = Obj::new(&p, v)?;
        let vname = vo.req_str("name")?;
        let domains_path = vo.child("domains");
        let domains: Vec<String> = vo
            .str_list("domains")?
            .into_iter()
            .map(|d| d.to_ascii_lowercase())
            .collect();
        if domains.is_empty() {
            return Err(invalid(&domains_path, "at least one domain is required"));
        }
        for d in &domains {
            if seen.contains(d) {
                return Err(invalid(
                    &domains_path,
                    format!("duplicate domain {d:?} (domains must be unique across virtual hosts)"),
                ));
            }
            seen.push(d.clone());
        }
        let mut routes = Vec::new();
        for (rp, rv) in vo.list("routes")? {
            if let Some(r) = read_route(w, &rp, rv, validate_clusters)? {
                routes.push(r);
            }
        }
        vo.finish(w);
        virtual_hosts.push(VirtualHost {
            name: vname,
            domains,
            routes,
        });
    }
    o.finish(w);
    Ok(RouteConfig {
        name,
        virtual_hosts,
        ignore_port_in_host_matching,
    })
}

/// Reads one route; `None` (with a warning) when it relies on something not implemented.
fn read_route(
    w: &mut Walker,
    path: &str,
    v: &Value,
    validate_clusters: bool,
) -> Result<Option<Route>, BootstrapError> {
    let mut o = Obj::new(path, v)?;
    let name = o.str("name")?.unwrap_or_default();
    let mut m = o.req_obj("match")?;
    let path_match = if let Some(p) = m.str("prefix")? {
        Some(PathMatch::Prefix(p))
    } else if let Some(p) = m.str("path")? {
        Some(PathMatch::Path(p))
    } else if let Some((p, v)) = m.get("safe_regex") {
        Some(PathMatch::Regex(regex_matcher(w, &p, v)?))
    } else {
        None
    };
    let path_match = match path_match {
        Some(pm) => pm,
        None => {
            let mut skipped = false;
            for key in [
                "path_separated_prefix",
                "path_match_policy",
                "connect_matcher",
                "regex",
            ] {
                skipped |= m.skip(
                    w,
                    key,
                    "path specifier not implemented by portcullis-host (route skipped)",
                );
            }
            if skipped {
                m.finish(w);
                for key in ["route", "direct_response", "redirect"] {
                    o.consume(key);
                }
                o.finish(w);
                return Ok(None);
            }
            return Err(invalid(
                &m.path,
                "one of prefix, path, safe_regex is required",
            ));
        }
    };
    let case_sensitive = m.bool("case_sensitive")?.unwrap_or(true);
    let mut headers = Vec::new();
    for (hp, hv) in m.list("headers")? {
        headers.push(header_matcher(w, &hp, hv)?);
    }
    let matcher = RouteMatch {
        path: path_match,
        case_sensitive,
        headers,
    };
    let action = if let Some(mut r) = o.obj("route")? {
        let Some(cluster) = r.str("cluster")? else {
            for key in [
                "cluster_header",
                "weighted_clusters",
                "cluster_specifier_plugin",
            ] {
                r.skip(
                    w,
                    key,
                    "cluster specifier not implemented by portcullis-host (route skipped)",
                );
            }
            r.finish(w);
            m.finish(w);
            o.finish(w);
            return Ok(None);
        };
        let prefix_rewrite = r.str("prefix_rewrite")?;
        let timeout = match r.duration("timeout")? {
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
            None => Some(DEFAULT_ROUTE_TIMEOUT),
        };
        if validate_clusters && !w.cluster_names.contains(&cluster) {
            return Err(invalid(
                &r.child("cluster"),
                format!(
                    "unknown cluster {cluster:?} (route_config.validate_clusters is on by default)"
                ),
            ));
        }
        r.finish(w);
        RouteAction::Forward {
            cluster,
            prefix_rewrite,
            timeout,
        }
    } else if let Some(mut d) = o.obj("direct_response")? {
        let status_path = d.child("status");
        let status = d
            .u32("status")?
            .ok_or_else(|| invalid(&status_path, "required field is missing"))?;
        let status = u16::try_from(status)
            .ok()
            .filter(|s| (200..=599).contains(s))
            .ok_or_else(|| invalid(&status_path, "must be between 200 and 599"))?;
        let body = d.data_source(w, "body")?;
        d.finish(w);
        RouteAction::Direct(DirectResponse { status, body })
    } else if let Some(mut r) = o.obj("redirect")? {
        let https = r.bool("https_redirect")?.unwrap_or(false);
        let scheme = r.str("scheme_redirect")?;
        let scheme = if https {
            Some("https".to_owned())
        } else {
            scheme.map(|s| s.to_ascii_lowercase())
        };
        let host = r.str("host_redirect")?;
        let port_path = r.child("port_redirect");
        let port = match r.u32("port_redirect")? {
            None | Some(0) => None,
            Some(p) => {
                Some(u16::try_from(p).map_err(|_| invalid(&port_path, "must be at most 65535"))?)
            }
        };
        let path_redirect = r.str("path_redirect")?;
        let code_path = r.child("response_code");
        let status = match r.str("response_code")?.as_deref() {
            None | Some("MOVED_PERMANENTLY") => 301,
            Some("FOUND") => 302,
            Some("SEE_OTHER") => 303,
            Some("TEMPORARY_REDIRECT") => 307,
            Some("PERMANENT_REDIRECT") => 308,
            Some(other) => {
                return Err(invalid(
                    &code_path,
                    format!("unknown response code {other:?}"),
                ));
            }
        };
        let strip_query = r.bool("strip_query")?.unwrap_or(false);
        r.finish(w);
        RouteAction::Redirect(Redirect {
            scheme,
            host,
            port,
            path: path_redirect,
            status,
            strip_query,
        })
    } else {
        let mut skipped = false;
        for key in ["filter_action", "non_forwarding_action"] {
            skipped |= o.skip(
                w,
                key,
                "route action not implemented by portcullis-host (route skipped)",
            );
        }
        if skipped {
            m.finish(w);
            o.finish(w);
            return Ok(None);
        }
        return Err(invalid(
            path,
            "one of route, direct_response, redirect is required",
        ));
    };
    m.finish(w);
    o.finish(w);
    Ok(Some(Route {
        name,
        matcher,
        action,
    }))
}
