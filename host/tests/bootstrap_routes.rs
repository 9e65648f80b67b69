//! Route selection as Envoy does it: virtual host by domain precedence, first matching route,
//! path without query, case sensitivity, header matchers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use portcullis_host::bootstrap::{self, HttpConnectionManager, RouteConfig};

fn hcm(route_config: &str, extra: &str) -> HttpConnectionManager {
    let yaml = format!(
        r#"
static_resources:
  listeners:
    - address: {{ socket_address: {{ address: 0.0.0.0, port_value: 10000 }} }}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: x
                {extra}
                http_filters: [{{ name: envoy.filters.http.router }}]
                route_config:
{route_config}
  clusters:
    - {{ name: c, type: STRICT_DNS, load_assignment: {{ endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: c.local, port_value: 80 }} }} }} }}] }}] }} }}
"#
    );
    let b = bootstrap::parse(&yaml, "/").unwrap();
    assert!(b.warnings.is_empty(), "{:?}", b.warnings);
    b.listeners[0].filter_chains[0].http.clone()
}

fn rc(route_config: &str) -> RouteConfig {
    hcm(route_config, "").route_config
}

/// The name of the selected route (routes are named after their vhost and index).
fn pick(rc: &RouteConfig, authority: &str, path: &str, headers: &[(&str, &str)]) -> Option<String> {
    let headers: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect();
    rc.select(authority, path, &headers).map(|r| r.name.clone())
}

const DOMAINS: &str = r#"
                  virtual_hosts:
                    - { name: exact, domains: ["api.example.com", "api.example.com:8443"], routes: [{ name: exact, match: { prefix: / }, route: { cluster: c } }] }
                    - { name: suffix_short, domains: ["*.example.com"], routes: [{ name: suffix_short, match: { prefix: / }, route: { cluster: c } }] }
                    - { name: suffix_long, domains: ["*.eu.example.com"], routes: [{ name: suffix_long, match: { prefix: / }, route: { cluster: c } }] }
                    - { name: prefix, domains: ["api.*", "api.example.*"], routes: [{ name: prefix, match: { prefix: / }, route: { cluster: c } }] }
                    - { name: default, domains: ["*"], routes: [{ name: default, match: { prefix: / }, route: { cluster: c } }] }
"#;

#[test]
fn virtual_host_precedence() {
    let rc = rc(DOMAINS);
    let p = |a: &str| pick(&rc, a, "/", &[]);
    assert_eq!(p("api.example.com").as_deref(), Some("exact"));
    assert_eq!(p("API.Example.COM").as_deref(), Some("exact"));
    assert_eq!(p("www.example.com").as_deref(), Some("suffix_short"));
    // Longest suffix wins, whatever the order.
    assert_eq!(p("x.eu.example.com").as_deref(), Some("suffix_long"));
    // Suffix wildcards beat prefix wildcards.
    assert_eq!(p("api.eu.example.com").as_deref(), Some("suffix_long"));
    assert_eq!(p("api.example.org").as_deref(), Some("prefix"));
    assert_eq!(p("other.org").as_deref(), Some("default"));
    // A wildcard never matches the empty string.
    assert_eq!(p(".example.com").as_deref(), Some("default"));
    // The port is part of the authority (no strip_any_host_port).
    assert_eq!(p("api.example.com:8443").as_deref(), Some("exact"));
    assert_eq!(p("api.example.com:9000").as_deref(), Some("prefix"));
    assert_eq!(p("www.example.com:80").as_deref(), Some("default"));
}

#[test]
fn no_default_host_means_no_route() {
    let rc = rc(r#"
                  virtual_hosts:
                    - { name: a, domains: ["localhost"], routes: [{ name: a, match: { prefix: / }, route: { cluster: c } }] }
"#);
    assert_eq!(pick(&rc, "localhost", "/", &[]).as_deref(), Some("a"));
    assert_eq!(pick(&rc, "localhost:10000", "/", &[]), None);
    assert_eq!(pick(&rc, "elsewhere", "/", &[]), None);
}

#[test]
fn port_handling_options() {
    let vhosts = r#"
                  virtual_hosts:
                    - { name: a, domains: ["localhost", "[::1]"], routes: [{ name: a, match: { prefix: / }, route: { cluster: c } }] }
"#;
    let ignore = rc(&format!(
        "                  ignore_port_in_host_matching: true\n{vhosts}"
    ));
    assert_eq!(
        pick(&ignore, "localhost:10000", "/", &[]).as_deref(),
        Some("a")
    );
    assert_eq!(pick(&ignore, "[::1]:10000", "/", &[]).as_deref(), Some("a"));

    let any = hcm(vhosts, "strip_any_host_port: true");
    assert!(any.select_route("localhost:1", 10000, "/", &[]).is_some());
    let matching = hcm(vhosts, "strip_matching_host_port: true");
    assert!(
        matching
            .select_route("localhost:10000", 10000, "/", &[])
            .is_some()
    );
    assert!(
        matching
            .select_route("localhost:10001", 10000, "/", &[])
            .is_none()
    );
    let neither = hcm(vhosts, "");
    assert!(
        neither
            .select_route("localhost:10000", 10000, "/", &[])
            .is_none()
    );
    assert!(neither.select_route("localhost", 10000, "/", &[]).is_some());
}

const ROUTES: &str = r#"
                  virtual_hosts:
                    - name: v
                      domains: ["*"]
                      routes:
                        - { name: exact_path, match: { path: /exact }, route: { cluster: c } }
                        - { name: insensitive, match: { prefix: /CI/, case_sensitive: false }, route: { cluster: c } }
                        - { name: regex, match: { safe_regex: { regex: "/v[0-9]+/items" } }, route: { cluster: c } }
                        - name: grpc
                          match:
                            prefix: /pkg.Service/
                            headers:
                              - { name: Content-Type, string_match: { prefix: application/grpc } }
                              - { name: te, exact_match: trailers }
                          route: { cluster: c }
                        - name: no_debug
                          match:
                            prefix: /h/
                            headers: [{ name: x-debug, present_match: true, invert_match: true }]
                          route: { cluster: c }
                        - name: absent_ok
                          match:
                            prefix: /h/
                            headers: [{ name: x-mode, present_match: false }]
                          route: { cluster: c }
                        - name: joined
                          match:
                            prefix: /h/
                            headers: [{ name: x-mode, string_match: { exact: "a,b" } }]
                          route: { cluster: c }
                        - name: regex_header
                          match:
                            prefix: /h/
                            headers: [{ name: x-mode, safe_regex_match: { regex: "z+" } }]
                          route: { cluster: c }
                        - name: icase_header
                          match:
                            prefix: /h/
                            headers: [{ name: x-mode, string_match: { suffix: MODE, ignore_case: true } }]
                          route: { cluster: c }
                        - name: any_header
                          match:
                            prefix: /h/
                            headers: [{ name: x-mode }]
                          route: { cluster: c }
                        - { name: fallback, match: { prefix: / }, direct_response: { status: 404 } }
"#;

#[test]
fn route_matching() {
    let rc = rc(ROUTES);
    let p = |path: &str, h: &[(&str, &str)]| pick(&rc, "host", path, h).unwrap();
    assert_eq!(p("/exact", &[]), "exact_path");
    assert_eq!(p("/exact?x=1", &[]), "exact_path");
    assert_eq!(p("/exact#frag", &[]), "exact_path");
    assert_eq!(p("/exact/more", &[]), "fallback");
    assert_eq!(p("/Exact", &[]), "fallback");
    assert_eq!(p("/ci/x", &[]), "insensitive");
    assert_eq!(p("/Ci/x", &[]), "insensitive");
    // safe_regex must match the whole path (not the query).
    assert_eq!(p("/v2/items", &[]), "regex");
    assert_eq!(p("/v2/items?page=2", &[]), "regex");
    assert_eq!(p("/v2/items/1", &[]), "fallback");
    // Header matchers: all must match; names are case-insensitive.
    let grpc = [
        ("content-type", "application/grpc+proto"),
        ("TE", "trailers"),
    ];
    assert_eq!(p("/pkg.Service/Check", &grpc), "grpc");
    assert_eq!(
        p(
            "/pkg.Service/Check",
            &[("content-type", "application/grpc")]
        ),
        "fallback"
    );
    // invert_match of present_match: matches when the header is absent.
    assert_eq!(p("/h/", &[]), "no_debug");
    assert_eq!(p("/h/", &[("x-debug", "1")]), "absent_ok");
    // Multiple values are joined with "," before matching.
    assert_eq!(
        p("/h/", &[("x-debug", "1"), ("x-mode", "a"), ("x-mode", "b")]),
        "joined"
    );
    assert_eq!(
        p("/h/", &[("x-debug", "1"), ("x-mode", "zzz")]),
        "regex_header"
    );
    assert_eq!(
        p("/h/", &[("x-debug", "1"), ("x-mode", "fast-Mode")]),
        "icase_header"
    );
    assert_eq!(
        p("/h/", &[("x-debug", "1"), ("x-mode", "other")]),
        "any_header"
    );
}

#[test]
fn redirects_build_envoys_location() {
    let rc = rc(r#"
                  virtual_hosts:
                    - name: v
                      domains: ["*"]
                      routes:
                        - { name: https, match: { prefix: /a }, redirect: { https_redirect: true, port_redirect: 8443 } }
                        - { name: other, match: { prefix: /b }, redirect: { host_redirect: example.net, path_redirect: /new, response_code: PERMANENT_REDIRECT, strip_query: true } }
                        - { name: scheme, match: { prefix: /c }, redirect: { scheme_redirect: HTTPS } }
"#);
    let redirect = |path: &str| {
        let r = rc.select("gw.test:8080", path, &[]).unwrap();
        match &r.action {
            bootstrap::RouteAction::Redirect(r) => {
                (r.status, r.location("http", "gw.test:8080", path))
            }
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        redirect("/a/x?q=1"),
        (301, "https://gw.test:8443/a/x?q=1".to_owned())
    );
    // host_redirect drops the request's port unless port_redirect sets one.
    assert_eq!(
        redirect("/b?q=1"),
        (308, "http://example.net/new".to_owned())
    );
    // A scheme change keeps a port that is not the old scheme's default...
    assert_eq!(redirect("/c"), (301, "https://gw.test:8080/c".to_owned()));
    // ...and drops the default one.
    let r = rc.select("gw.test:80", "/c", &[]).unwrap();
    let bootstrap::RouteAction::Redirect(r) = &r.action else {
        panic!("{:?}", r.action)
    };
    assert_eq!(r.location("http", "gw.test:80", "/c"), "https://gw.test/c");
}
