//! Request protection in the header decision: limits, methods, IP lists and X-Forwarded-For,
//! the burst guard, body size and media type, shadow mode; and their configuration errors.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use portcullis::burst::MemoryStore;
use portcullis::config::Config;
use portcullis::decision::{self, Decision, Env, Verdict};
use portcullis::guard::{self, BodyKind};
use portcullis::reply;
use portcullis::request::Request;
use serde_json::{Value, json};

const SEC: u64 = 1_000_000_000;
const T0: u64 = 1_800_000_000 * SEC;

fn config(doc: Value) -> Config {
    Config::from_json(doc.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e:?}"))
}

fn errors(doc: Value) -> Vec<String> {
    Config::from_json(doc.to_string().as_bytes())
        .err()
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// A request: method, path, extra headers.
struct Req {
    headers: Vec<(String, String)>,
    peer: Option<&'static str>,
    end_of_stream: bool,
}

fn req(method: &str, path: &str) -> Req {
    Req {
        headers: vec![
            (":method".into(), method.into()),
            (":path".into(), path.into()),
            (":authority".into(), "api.example.com".into()),
        ],
        peer: Some("203.0.113.7"),
        end_of_stream: true,
    }
}

impl Req {
    fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.into(), value.into()));
        self
    }
    fn from(mut self, peer: &'static str) -> Req {
        self.peer = Some(peer);
        self
    }
    fn with_body(mut self) -> Req {
        self.end_of_stream = false;
        self
    }
}

struct Gateway {
    config: Config,
    store: MemoryStore,
}

impl Gateway {
    fn new(doc: Value) -> Gateway {
        Gateway {
            config: config(doc),
            store: MemoryStore::default(),
        }
    }

    fn at(&self, r: &Req, now_ns: u64) -> Decision {
        let mut cache = self.config.token_cache();
        let mut env = Env {
            cache: &mut cache,
            store: &self.store,
            now_ns,
            peer: r.peer.map(|p| p.parse().unwrap()),
            remote_keys: &portcullis::jwks::RemoteKeys::default(),
            introspected: &mut portcullis::introspect::IntrospectionCache::default(),
            answer: None,
            waited: Default::default(),
            end_of_stream: r.end_of_stream,
        };
        decision::decide(&self.config, &mut env, &Request::new(&r.headers))
    }

    fn run(&self, r: &Req) -> Decision {
        self.at(r, T0)
    }
}

/// Status, error code and the reply's extra headers of an enforced refusal.
#[track_caller]
fn refused(d: &Decision) -> (u16, &'static str, Vec<(&'static str, String)>) {
    match &d.verdict {
        Verdict::Refuse(r) if !r.shadow => {
            let extra = reply::headers(r)
                .into_iter()
                .filter(|(n, _)| !matches!(*n, "content-type" | "cache-control"))
                .collect();
            (r.status, r.error, extra)
        }
        other => panic!("expected an enforced refusal, got {other:?} ({})", d.reason),
    }
}

#[track_caller]
fn status(d: &Decision) -> u16 {
    refused(d).0
}

#[track_caller]
fn allowed(d: &Decision) {
    assert_eq!(d.verdict, Verdict::Allow, "{d:#?}");
}

fn public(extra: Value) -> Value {
    let mut route = json!({"name": "api", "public": true, "match": {"prefix": "/"}});
    for (k, v) in extra.as_object().unwrap() {
        route[k] = v.clone();
    }
    json!({"routes": [route]})
}

#[test]
fn global_limits_refuse_long_uris_many_headers_and_parameters() {
    let gw = Gateway::new(json!({
        "limits": {"max_uri_bytes": 32, "max_headers": 5, "max_header_bytes": 200,
                   "max_query_params": 3},
        "routes": [{"public": true}]
    }));
    allowed(&gw.run(&req("GET", "/a?x=1&y=2&z=3")));
    assert_eq!(
        refused(&gw.run(&req("GET", &format!("/{}", "a".repeat(40))))).1,
        "uri_too_long"
    );
    assert_eq!(
        status(&gw.run(&req("GET", &format!("/{}", "a".repeat(40))))),
        414
    );
    let many = req("GET", "/")
        .header("a", "1")
        .header("b", "2")
        .header("c", "3");
    assert_eq!(refused(&gw.run(&many)), (431, "too_many_headers", vec![]));
    let big = req("GET", "/").header("cookie", &"x".repeat(200));
    assert_eq!(refused(&gw.run(&big)).1, "headers_too_large");
    assert_eq!(
        refused(&gw.run(&req("GET", "/a?x=1&y=2&z=3&w=4"))).1,
        "too_many_query_parameters"
    );
    // Empty pieces (`&&`) are not parameters.
    allowed(&gw.run(&req("GET", "/a?x=1&&y=2&z=3&")));
}

#[test]
fn route_limits_tighten_the_global_ones() {
    let gw = Gateway::new(json!({
        "routes": [
            {"name": "small", "public": true, "match": {"prefix": "/small"},
             "limits": {"max_uri_bytes": 10, "max_body_bytes": 100}},
            {"name": "rest", "public": true}
        ]
    }));
    allowed(&gw.run(&req("GET", "/rest/long/enough/path")));
    assert_eq!(status(&gw.run(&req("GET", "/small/long/path"))), 414);
    let post = |n: &str| {
        req("POST", "/small")
            .header("content-length", n)
            .with_body()
    };
    allowed(&gw.run(&post("100")));
    assert_eq!(refused(&gw.run(&post("101"))).1, "body_too_large");
    assert_eq!(status(&gw.run(&post("101"))), 413);
    // The global limit (1 MiB by default) is checked before routing.
    let huge = req("POST", "/rest")
        .header("content-length", "1048577")
        .with_body();
    assert_eq!(status(&gw.run(&huge)), 413);
}

#[test]
fn allowed_methods_answer_405_with_allow() {
    let gw = Gateway::new(public(json!({"allowed_methods": ["GET", "POST"]})));
    allowed(&gw.run(&req("GET", "/x")));
    let (s, e, h) = refused(&gw.run(&req("DELETE", "/x")));
    assert_eq!((s, e), (405, "method_not_allowed"));
    assert_eq!(h, vec![("allow", "GET, POST".to_owned())]);
}

#[test]
fn content_types_are_checked_only_when_a_body_follows() {
    let gw = Gateway::new(public(
        json!({"content_types": ["application/json", "text/*"]}),
    ));
    let post = |ct: Option<&str>| {
        let r = req("POST", "/x").with_body();
        match ct {
            Some(ct) => r.header("content-type", ct),
            None => r,
        }
    };
    allowed(&gw.run(&post(Some("application/json"))));
    allowed(&gw.run(&post(Some("Application/JSON; charset=utf-8"))));
    allowed(&gw.run(&post(Some("text/csv"))));
    let (s, e, h) = refused(&gw.run(&post(Some("application/xml"))));
    assert_eq!((s, e), (415, "unsupported_media_type"));
    assert_eq!(h, vec![("accept", "application/json, text/*".to_owned())]);
    assert_eq!(status(&gw.run(&post(None))), 415);
    // No body: no type needed; a declared empty body is no body either.
    allowed(&gw.run(&req("POST", "/x")));
    allowed(&gw.run(&req("POST", "/x").header("content-length", "0").with_body()));
}

#[test]
fn a_passing_request_with_a_body_gets_a_body_plan() {
    let gw = Gateway::new(public(json!({"limits": {"max_body_bytes": 4096}})));
    let d = gw.run(
        &req("POST", "/x")
            .header("content-type", "application/merge-patch+json")
            .with_body(),
    );
    let plan = d.body.unwrap();
    assert_eq!(
        (plan.route, plan.max_bytes, plan.kind),
        (0, 4096, BodyKind::Json)
    );
    assert!(gw.run(&req("GET", "/x")).body.is_none());
    // The body phase: size, JSON shape and syntax.
    let route = &gw.config.routes[0];
    assert!(guard::check_body(route, &plan, br#"{"a": [1, 2]}"#).is_none());
    let stop = guard::check_body(route, &plan, b"{\"a\": ").unwrap();
    assert_eq!((stop.refusal.status, stop.reason), (400, "invalid_body"));
    let deep = "[".repeat(40) + &"]".repeat(40);
    let stop = guard::check_body(route, &plan, deep.as_bytes()).unwrap();
    assert!(stop.refusal.message.contains("deeper than 32"), "{stop:?}");
    let stop = guard::check_body(route, &plan, &vec![b' '; 4097]).unwrap();
    assert_eq!(stop.refusal.status, 413);
}

#[test]
fn ip_lists_global_and_per_route() {
    let gw = Gateway::new(json!({
        "ip_filter": {"deny": ["198.51.100.0/24", "2001:db8:bad::/48"]},
        "routes": [
            {"name": "admin", "public": true, "match": {"prefix": "/admin"},
             "ip_filter": {"allow": ["10.0.0.0/8", "192.0.2.1", "fd00::/8"]}},
            {"name": "rest", "public": true}
        ]
    }));
    allowed(&gw.run(&req("GET", "/x").from("203.0.113.9")));
    assert_eq!(
        refused(&gw.run(&req("GET", "/x").from("198.51.100.20"))),
        (403, "ip_denied", vec![])
    );
    assert_eq!(
        status(&gw.run(&req("GET", "/x").from("2001:db8:bad::1"))),
        403
    );
    // IPv4-mapped IPv6 peers are their IPv4 address.
    assert_eq!(
        status(&gw.run(&req("GET", "/x").from("::ffff:198.51.100.20"))),
        403
    );
    allowed(&gw.run(&req("GET", "/admin").from("10.1.2.3")));
    allowed(&gw.run(&req("GET", "/admin").from("::ffff:10.1.2.3")));
    allowed(&gw.run(&req("GET", "/admin").from("192.0.2.1")));
    allowed(&gw.run(&req("GET", "/admin").from("fd12::1")));
    assert_eq!(
        status(&gw.run(&req("GET", "/admin").from("192.0.2.2"))),
        403
    );
    let d = gw.run(&req("GET", "/admin").from("192.0.2.2"));
    assert_eq!((d.route, d.client_ip), (Some(0), "192.0.2.2".parse().ok()));
    // No peer at all: outside every allow list.
    let mut anonymous = req("GET", "/admin");
    anonymous.peer = None;
    assert_eq!(status(&gw.run(&anonymous)), 403);
}

#[test]
fn x_forwarded_for_counts_only_trusted_hops() {
    let gw = Gateway::new(json!({
        "client_ip": {"xff_num_trusted_hops": 1},
        "ip_filter": {"allow": ["192.0.2.0/24"]},
        "routes": [{"public": true}]
    }));
    // client 192.0.2.5 → trusted LB 10.0.0.2 → Envoy, which appended the LB.
    let via_lb = |xff: &str| {
        req("GET", "/")
            .from("10.0.0.2")
            .header("x-forwarded-for", xff)
    };
    allowed(&gw.run(&via_lb("192.0.2.5, 10.0.0.2")));
    assert_eq!(
        gw.run(&via_lb("192.0.2.5, 10.0.0.2")).client_ip,
        "192.0.2.5".parse().ok()
    );
    // A client that prepends an allowed address gains nothing.
    assert_eq!(
        status(&gw.run(&via_lb("192.0.2.5, 198.51.100.1, 10.0.0.2"))),
        403
    );
    // Too short or malformed: the peer (the LB, not allowed) is the client.
    assert_eq!(status(&gw.run(&via_lb("10.0.0.2"))), 403);
    assert_eq!(status(&gw.run(&via_lb("192.0.2.5:443, 10.0.0.2"))), 403);
    // Without trusted hops the header is ignored.
    let gw = Gateway::new(json!({
        "ip_filter": {"allow": ["192.0.2.0/24"]},
        "routes": [{"public": true}]
    }));
    assert_eq!(status(&gw.run(&via_lb("192.0.2.5, 10.0.0.2"))), 403);
}

#[test]
fn the_burst_guard_refuses_with_retry_after_and_refills() {
    let gw = Gateway::new(json!({
        "burst": {"requests_per_second": 0.5, "burst": 2},
        "routes": [
            {"name": "open", "public": true, "match": {"prefix": "/open"}, "burst": false},
            {"name": "api", "public": true}
        ]
    }));
    let r = req("GET", "/x");
    allowed(&gw.at(&r, T0));
    allowed(&gw.at(&r, T0));
    let (s, e, h) = refused(&gw.at(&r, T0));
    assert_eq!((s, e), (429, "burst_limited"));
    assert_eq!(h, vec![("retry-after", "2".to_owned())]);
    // Another client has its own bucket; a route without the guard is not counted.
    allowed(&gw.at(&req("GET", "/x").from("203.0.113.8"), T0));
    for _ in 0..5 {
        allowed(&gw.at(&req("GET", "/open"), T0));
    }
    // Two seconds at 0.5/s is one more request.
    allowed(&gw.at(&r, T0 + 2 * SEC));
    assert_eq!(status(&gw.at(&r, T0 + 2 * SEC)), 429);
}

#[test]
fn a_route_burst_is_its_own_bucket() {
    let gw = Gateway::new(json!({
        "burst": {"requests_per_second": 100, "burst": 100},
        "routes": [
            {"name": "login", "public": true, "match": {"path": "/login"},
             "burst": {"requests_per_second": 1, "burst": 1}},
            {"name": "api", "public": true}
        ]
    }));
    allowed(&gw.run(&req("POST", "/login")));
    assert_eq!(status(&gw.run(&req("POST", "/login"))), 429);
    allowed(&gw.run(&req("GET", "/other")));
}

#[test]
fn shadowed_checks_record_and_let_enforcing_checks_decide() {
    let gw = Gateway::new(json!({
        "ip_filter": {"deny": ["203.0.113.0/24"], "shadow": true},
        "providers": {"keys": {"type": "api_key",
            "keys": [{"consumer": "acme", "sha256": portcullis::apikey::hash_hex("k-123")}]}},
        "routes": [{"name": "api", "requires": ["keys"]}]
    }));
    // The shadowed IP refusal does not open the route: the missing key still refuses.
    let d = gw.run(&req("GET", "/x"));
    assert_eq!(refused(&d).0, 401);
    // With a key, the request passes, and the IP refusal is what the record shows.
    let d = gw.run(&req("GET", "/x").header("x-api-key", "k-123"));
    match &d.verdict {
        Verdict::Refuse(r) => assert!(r.shadow && r.status == 403, "{r:?}"),
        Verdict::Allow => panic!("the shadowed refusal was lost"),
    }
    assert_eq!(d.reason, "ip_denied");
    assert!(d.identity.is_some());
}

#[test]
fn a_shadow_route_records_every_protection_refusal() {
    let gw = Gateway::new(public(json!({"shadow": true, "allowed_methods": ["GET"],
        "burst": {"requests_per_second": 1, "burst": 1}})));
    let d = gw.run(&req("PUT", "/x"));
    assert!(matches!(&d.verdict, Verdict::Refuse(r) if r.shadow && r.status == 405));
    assert_eq!(d.reason, "method_not_allowed");
}

#[test]
fn case_insensitive_routes_match_any_case() {
    let gw = Gateway::new(json!({"routes": [
        {"name": "admin", "match": {"prefix": "/Admin", "case_sensitive": false},
         "public": true, "ip_filter": {"allow": ["10.0.0.0/8"]}},
        {"name": "rest", "public": true}
    ]}));
    for p in ["/admin", "/ADMIN/x", "/aDmIn"] {
        assert_eq!(gw.run(&req("GET", p)).route, Some(0), "{p}");
    }
    let gw = Gateway::new(json!({"routes": [
        {"name": "admin", "match": {"prefix": "/admin"}, "public": true},
        {"name": "rest", "public": true}
    ]}));
    assert_eq!(gw.run(&req("GET", "/ADMIN")).route, Some(1));
}

#[test]
fn protection_settings_are_checked_with_paths() {
    let errs = errors(json!({
        "client_ip": {"xff_num_trusted_hops": 99},
        "ip_filter": {"allow": ["10.0.0.1/8", "nonsense", "::1/129"]},
        "burst": {"requests_per_second": 0, "burst": 0, "max_clients": 2},
        "limits": {"max_uri_bytes": 0, "max_bodies": 1},
        "path_normalization": {"escaped_slashes": "unescape"},
        "routes": [{"public": true, "content_types": ["json"], "allowed_methods": ["get"],
                    "ip_filter": {}, "burst": {"burst": 3}},
                   {"public": true, "match": {"prefix": "/a//b"}},
                   {"public": true, "match": {"path": "/a%00"}}]
    }));
    let expected = [
        "client_ip.xff_num_trusted_hops: 99 is larger than the maximum 16",
        "ip_filter.allow[0]: \"10.0.0.1/8\" has host bits set; the network is 10.0.0.0/8",
        "ip_filter.allow[1]: \"nonsense\" is not an IP address or CIDR network",
        "ip_filter.allow[2]: \"::1/129\" is not an IP address or CIDR network",
        "limits.max_uri_bytes: must be at least 1",
        "limits.max_bodies: unknown field",
        "burst.requests_per_second: must be between 0.001 and 1000000",
        "burst.burst: must be at least 1",
        "burst.max_clients: must be at least 4",
        "routes[0].allowed_methods[0]: \"get\" is not an upper-case HTTP method",
        "routes[0].ip_filter: give \"allow\", \"deny\" or both",
        "routes[0].burst.requests_per_second: required field is missing",
        "routes[0].content_types[0]: \"json\" is not a media type",
        "path_normalization.escaped_slashes: \"unescape\" is not one of \"refuse\", \"keep\", \"decode\"",
        "routes[1].match.prefix: \"/a//b\" is not a normalised path; requests are matched in the form \"/a/b\"",
        "routes[2].match.path: \"/a%00\" can never match: the path holds a NUL or control character",
    ];
    for want in expected {
        assert!(
            errs.iter().any(|e| e.starts_with(want)),
            "missing {want:?} in {errs:#?}"
        );
    }
}

#[test]
fn inspection_refuses_attacks_in_path_query_headers_and_bodies() {
    let gw = Gateway::new(json!({
        "inspection": {"headers": ["user-agent", "cookie", "x-search"]},
        "routes": [
            {"name": "watch", "public": true, "match": {"prefix": "/watch"},
             "inspection": {"mode": "shadow"}},
            {"name": "raw", "public": true, "match": {"prefix": "/raw"}, "inspection": false},
            {"name": "api", "public": true}
        ]
    }));
    allowed(&gw.run(&req("GET", "/search?q=O%27Brien%27s%20order&page=2")));
    let attacks = [
        req(
            "GET",
            "/search?q=1%27%20UNION%20SELECT%20password%20FROM%20users--",
        ),
        req("GET", "/files?name=..%2F..%2F..%2Fetc%2Fpasswd"),
        req("GET", "/x").header("user-agent", "() { :; }; /bin/bash -c 'id'"),
        req("GET", "/x").header("x-search", "<script>alert(1)</script>"),
        req("GET", "/x").header("cookie", "session=abc; q=%3Cscript%3Ealert(1)%3C/script%3E"),
    ];
    for r in &attacks {
        let d = gw.run(r);
        let (status, error, _) = refused(&d);
        assert_eq!(
            (status, error),
            (403, "suspicious_request"),
            "{:?}",
            r.headers
        );
        assert!(d.rule.is_some());
    }
    // Shadow mode records; a route without inspection does not look.
    let d = gw.run(&req(
        "GET",
        "/watch?q=1%27%20UNION%20SELECT%20password%20FROM%20users--",
    ));
    assert!(
        matches!(&d.verdict, Verdict::Refuse(r) if r.shadow),
        "{d:?}"
    );
    assert_eq!(d.reason, "suspicious_request");
    allowed(&gw.run(&req(
        "GET",
        "/raw?q=1%27%20UNION%20SELECT%20password%20FROM%20users--",
    )));

    // Bodies: JSON and form values, read whole.
    let post = |ct: &str| req("POST", "/api").header("content-type", ct).with_body();
    let d = gw.run(&post("application/json"));
    let plan = d.body.unwrap();
    assert!(plan.buffer);
    let route = &gw.config.routes[2];
    let ok = br#"{"note": "don't ship before 5 - 3 = 2 days; mail bob@example.com", "n": [1, 2]}"#;
    assert!(guard::check_body(route, &plan, ok).is_none());
    let bad = br#"{"items": [{"note": "<img src=x onerror=alert(1)>"}]}"#;
    let stop = guard::check_body(route, &plan, bad).unwrap();
    assert_eq!(
        (stop.refusal.status, stop.reason),
        (403, "suspicious_request")
    );
    let plan = gw
        .run(&post("application/x-www-form-urlencoded"))
        .body
        .unwrap();
    assert!(plan.buffer);
    assert!(guard::check_body(route, &plan, b"a=1&b=hello+world").is_none());
    assert!(guard::check_body(route, &plan, b"a=1;cat%20/etc/passwd").is_some());
    // Other bodies stream through.
    assert!(
        !gw.run(&post("application/octet-stream"))
            .body
            .unwrap()
            .buffer
    );
}

#[test]
fn inspection_settings_are_checked() {
    let errs = errors(json!({
        "inspection": {"mode": "loud", "level": "extreme", "categories": ["sqli", "csrf"],
                       "disabled_rules": ["no-such-rule"]},
        "routes": [{"public": true}]
    }));
    for want in [
        "inspection.mode: \"loud\" is not \"block\" or \"shadow\"",
        "inspection.level: unknown inspection level \"extreme\"",
        "inspection.categories[1]: unknown inspection category \"csrf\"",
        "inspection: unknown inspection rule \"no-such-rule\"",
    ] {
        assert!(
            errs.iter().any(|e| e.starts_with(want)),
            "missing {want:?} in {errs:#?}"
        );
    }
    assert_eq!(errs.len(), 4, "{errs:#?}");
}

fn order_schema() -> Value {
    json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "required": ["customer", "items"],
        "additionalProperties": false,
        "properties": {
            "customer": {"type": "string", "format": "email"},
            "items": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["sku", "quantity"],
                "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
                               "quantity": {"type": "integer", "minimum": 1}}}}
        }
    })
}

#[test]
fn json_schemas_check_bodies_by_method() {
    let gw = Gateway::new(json!({
        "schemas": {"order": order_schema()},
        "routes": [
            {"name": "orders", "public": true, "match": {"prefix": "/orders"},
             "body_schemas": [
                 {"methods": ["POST"], "schema": "order"},
                 {"methods": ["PATCH"], "schema": {"type": "object", "maxProperties": 1}}
             ]}
        ]
    }));
    let post = |method: &str, ct: &str| {
        req(method, "/orders")
            .header("content-type", ct)
            .with_body()
    };
    // Header time: the body must be JSON, and present.
    let (s, e, h) = refused(&gw.run(&post("POST", "text/plain")));
    assert_eq!((s, e), (415, "unsupported_media_type"));
    assert_eq!(h, vec![("accept", "application/json".to_owned())]);
    assert_eq!(refused(&gw.run(&req("POST", "/orders"))).1, "invalid_body");
    // GET has no schema.
    allowed(&gw.run(&req("GET", "/orders")));

    let d = gw.run(&post("POST", "application/json"));
    let plan = d.body.unwrap();
    assert!(plan.buffer && plan.schema == Some(0));
    let route = &gw.config.routes[0];
    let good =
        json!({"customer": "ann@example.com", "items": [{"sku": "ABC-1234", "quantity": 2}]});
    assert!(guard::check_body(route, &plan, good.to_string().as_bytes()).is_none());
    let bad = json!({"customer": "not-an-email", "items": [{"sku": "abc", "quantity": 0}], "x": 1});
    let stop = guard::check_body(route, &plan, bad.to_string().as_bytes()).unwrap();
    assert_eq!(
        (stop.refusal.status, stop.reason),
        (400, "schema_violation")
    );
    assert_eq!(stop.rule.as_deref(), Some("order"));
    let details = stop.refusal.details.clone().unwrap();
    let list = details.as_array().unwrap();
    let keywords: Vec<&str> = list
        .iter()
        .map(|v| v["keyword"].as_str().unwrap())
        .collect();
    for k in ["format", "pattern", "minimum", "additionalProperties"] {
        assert!(keywords.contains(&k), "{k} in {details}");
    }
    assert!(
        list.iter()
            .any(|v| v["instance_path"] == "/items/0/quantity"),
        "{details}"
    );
    // The reply body carries them.
    let body: Value = serde_json::from_str(&reply::body(&stop.refusal, "rid")).unwrap();
    assert_eq!(body["details"], details);
    assert!(
        !body.to_string().contains("not-an-email"),
        "values are not echoed: {body}"
    );

    // An inline schema for PATCH.
    let plan = gw.run(&post("PATCH", "application/json")).body.unwrap();
    assert!(guard::check_body(route, &plan, br#"{"a": 1}"#).is_none());
    assert!(guard::check_body(route, &plan, br#"{"a": 1, "b": 2}"#).is_some());
}

#[test]
fn schema_settings_are_checked() {
    let errs = errors(json!({
        "schemas": {"bad": {"type": "no-such-type"}, "remote": {"$ref": "https://example.com/s.json"}},
        "routes": [{"public": true, "body_schemas": [{"schema": "missing"}, {"schema": 3}]}]
    }));
    for want in [
        "schemas.bad: ",
        "schemas.remote: ",
        "routes[0].body_schemas[0].schema: no schema is named \"missing\"",
        "routes[0].body_schemas[1].schema: expected a schema name or a schema, found a number",
    ] {
        assert!(
            errs.iter().any(|e| e.starts_with(want)),
            "missing {want:?} in {errs:#?}"
        );
    }
}
