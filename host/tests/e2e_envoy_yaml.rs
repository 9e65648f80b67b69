//! `envoy/envoy.yaml`, the demo stack's Envoy configuration, end to end through
//! `portcullis-host` (support::demo): the HTTP listener redirects, the HTTPS listener serves
//! the demo CA's certificate, routes rewrite prefixes and reach the services over TLS, the two
//! orders replicas share the traffic, a tenant's requests are routed to the second version by the
//! identity the filter verified, limits come from the rate-limit service, and the filter's
//! metrics come out of `/stats/prometheus` with the labels the file's `stats_tags` make.
//! Also: the parts of the file that must agree with each other and with the filter do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use portcullis::config::Config;
use portcullis::metrics;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::{Duration, Instant};
use support::demo::{self, DEMO_API_KEY, Demo, sample};
use support::*;

#[test]
fn the_demo_configuration_agrees_with_itself_and_the_filter() {
    let doc = demo::envoy_yaml();
    let text = demo::filter_configuration(&doc);
    let config = Config::from_json(text.as_bytes()).unwrap_or_else(|e| panic!("{e:?}"));
    let filter: Value = serde_json::from_str(&text).unwrap();

    let clusters: HashSet<String> = doc["static_resources"]["clusters"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    // The clusters the filter calls exist.
    let rls = filter["rate_limit_service"]["cluster"].as_str().unwrap();
    assert!(clusters.contains(rls), "{rls}");
    for (name, p) in filter["providers"].as_object().unwrap() {
        if let Some(c) = p["remote_jwks"]["http_uri"]["cluster"].as_str() {
            assert!(clusters.contains(c), "provider {name}: cluster {c}");
        }
    }
    // Envoy and the filter agree on whom X-Forwarded-For is trusted from.
    let https = &doc["static_resources"]["listeners"][1];
    assert_eq!(https["name"].as_str(), Some("https"));
    let hcm = &https["filter_chains"][0]["filters"][0]["typed_config"];
    assert_eq!(hcm["use_remote_address"].as_bool(), Some(true));
    assert_eq!(
        hcm["xff_num_trusted_hops"].as_u64(),
        Some(u64::from(config.xff_num_trusted_hops))
    );
    // Every label the filter encodes has its stats_tags entry, with the filter's regex.
    let tags: Vec<(String, String)> = doc["stats_config"]["stats_tags"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["tag_name"].as_str().unwrap().to_owned(),
                t["regex"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (label, regex) in metrics::stats_tags() {
        assert!(
            tags.contains(&(label.to_owned(), regex.clone())),
            "stats_tags lacks {label}: {regex}"
        );
    }
    // The rate-limit service's file serves the filter's domain.
    let limits: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(demo::repo_file("deploy/ratelimit/config.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        limits["domain"].as_str(),
        filter["rate_limit_service"]["domain"].as_str()
    );
    // Every route's cluster exists.
    for route in hcm["route_config"]["virtual_hosts"][0]["routes"]
        .as_sequence()
        .unwrap()
    {
        if let Some(c) = route["route"]["cluster"].as_str() {
            assert!(clusters.contains(c), "route cluster {c}");
        }
    }
}

/// Waits (bounded) until the Prometheus text satisfies `ok`; returns the last text.
fn prometheus_until(demo: &Demo, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = demo.prometheus();
        if ok(&text) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_demo_stack_end_to_end() {
    let demo = Demo::start();
    // Everything the demo relies on is implemented by the host (what it ignores are Envoy's
    // health checks, outlier detection, retries, circuit breakers and the access log).
    let skipped: Vec<String> = demo
        .host
        .stderr()
        .into_iter()
        .filter(|l| l.contains("skipped"))
        .collect();
    assert!(skipped.is_empty(), "{skipped:?}");

    // Plain HTTP redirects to HTTPS, query kept.
    let r = request(demo.http, "GET", "/api/orders/1?page=2", &[], b"");
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location").as_deref(),
        Some(
            format!(
                "https://127.0.0.1:{}/api/orders/1?page=2",
                demo.https.port()
            )
            .as_str()
        )
    );

    // HTTPS with the demo CA; Envoy answers the health check route itself.
    let r = demo.https("GET", "/healthz", &[], b"");
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));

    // No credentials on a protected route.
    let r = demo.https("GET", "/api/orders/1", &[], b"");
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    let refused_id = r.json()["request_id"].as_str().unwrap().to_owned();

    // A verified user: the prefix is rewritten, the service is reached over TLS, identity
    // headers are set, and both orders replicas serve (the first request waits for the JWKS).
    let alice = demo.token("alice", "orders:read", json!({"tenant": "acme"}));
    let mut replicas = HashSet::new();
    for _ in 0..16 {
        let r = demo.get_as(&alice, "/api/orders/42?x=1");
        assert_eq!(r.status, 200, "{}", r.text());
        let echo = r.json();
        assert_eq!(echo["path"], "/orders/42?x=1");
        assert_eq!(echo["headers"]["x-portcullis-subject"], "alice");
        assert_eq!(echo["headers"]["x-tenant"], "acme");
        // The token stays at the gateway (Envoy jwt_authn's forward: false).
        assert!(echo["headers"].get("authorization").is_none());
        replicas.insert(echo["name"].as_str().unwrap().to_owned());
        assert!(r.header("ratelimit-policy").is_some());
    }
    assert_eq!(
        replicas,
        HashSet::from(["orders-1".to_owned(), "orders-2".to_owned()])
    );

    // Routing by identity: tenant globex reaches the second version; a client cannot pick it by
    // sending the header itself.
    let bob = demo.token("bob", "orders:read", json!({"tenant": "globex"}));
    let r = demo.get_as(&bob, "/api/orders/7");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["name"], "orders-beta");
    assert_eq!(r.json()["path"], "/orders/7");
    let r = demo.https(
        "GET",
        "/api/orders/7",
        &[
            ("authorization", &format!("Bearer {alice}")),
            ("x-tenant", "globex"),
        ],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_ne!(r.json()["name"], "orders-beta");
    assert_eq!(r.json()["headers"]["x-tenant"], "acme");
    let r = demo.https("GET", "/api/catalog/items", &[("x-tenant", "globex")], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["name"], "catalog");
    assert_eq!(r.json()["path"], "/catalog/items");
    assert!(r.json()["headers"].get("x-tenant").is_none());

    // An API key reads orders; writing needs a token with orders:write.
    let r = demo.https("GET", "/api/orders/9", &[("x-api-key", DEMO_API_KEY)], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["headers"]["x-portcullis-consumer"], "acme-partner");
    let r = demo.https(
        "POST",
        "/api/orders",
        &[
            ("authorization", &format!("Bearer {alice}")),
            ("content-type", "application/json"),
        ],
        b"{}",
    );
    assert_eq!(r.status, 403);

    // An attack signature on the anonymous catalog route.
    let r = demo.https(
        "GET",
        "/api/catalog/search?q=1%27%20UNION%20SELECT%20password%20FROM%20users--",
        &[],
        b"",
    );
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "suspicious_request");

    // The per-user limit of the rate-limit service's file (60 per minute on orders).
    let carol = demo.token("carol", "orders:read", json!({"tenant": "acme"}));
    let mut allowed = 0;
    let limited = loop {
        let r = demo.get_as(&carol, "/api/orders/1");
        if r.status != 200 {
            break r;
        }
        allowed += 1;
        // Windows are aligned to the minute: a loop that crosses one may need two of them.
        assert!(allowed <= 120, "no 429 after 120 requests");
    };
    assert_eq!(limited.status, 429);
    assert!(limited.header("retry-after").is_some());
    assert!(
        limited
            .header("ratelimit-policy")
            .unwrap()
            .contains("\"per-user\";q=60;w=60"),
        "{:?}",
        limited.header("ratelimit-policy")
    );
    // Some of carol's minute may have been in the window before (fixed windows).
    assert!(allowed >= 1);

    // The filter's metrics, labelled by envoy.yaml's stats_tags.
    let text = prometheus_until(&demo, |t| {
        sample(
            t,
            "portcullis_rate_limit_decisions_total",
            &[("route", "orders-read"), ("outcome", "over_limit")],
        )
        .is_some()
    });
    let allowed_orders = sample(
        &text,
        "portcullis_requests_total",
        &[
            ("route", "orders-read"),
            ("decision", "allow"),
            ("reason", "authenticated"),
        ],
    )
    .unwrap_or(0.0);
    assert!(allowed_orders >= 19.0, "{allowed_orders}\n{text}");
    for (name, labels) in [
        (
            "portcullis_requests_total",
            vec![
                ("route", "orders-read"),
                ("decision", "deny"),
                ("reason", "missing_credentials"),
            ],
        ),
        (
            "portcullis_auth_failures_total",
            vec![("provider", "none"), ("reason", "missing_credentials")],
        ),
        (
            "portcullis_auth_failures_total",
            vec![("provider", "demo-idp"), ("reason", "insufficient_scope")],
        ),
        (
            "portcullis_rate_limit_decisions_total",
            vec![("route", "orders-read"), ("outcome", "ok")],
        ),
        (
            "portcullis_inspection_hits_total",
            vec![("route", "catalog"), ("category", "sqli")],
        ),
        (
            "portcullis_decision_duration_microseconds_count",
            vec![("route", "orders-read")],
        ),
    ] {
        assert!(
            sample(&text, name, &labels).is_some_and(|v| v >= 1.0),
            "{name} {labels:?} missing:\n{text}"
        );
    }
    assert!(text.contains(
        "portcullis_decision_duration_microseconds_bucket{route=\"orders-read\",le=\"1000\"}"
    ));

    // One audit line per request; the refused one carries the id its refusal body named.
    let audit = demo.host.wait_lines(
        |l| l.contains(&format!("\"request_id\":\"{refused_id}\"")),
        1,
        Duration::from_secs(5),
    );
    assert_eq!(audit.len(), 1, "{audit:?}");
    let line = &audit[0];
    let record: Value = serde_json::from_str(&line[line.find('{').unwrap()..]).unwrap();
    assert_eq!(record["decision"], "deny");
    assert_eq!(record["reason"], "missing_credentials");
    assert_eq!(record["route"], "orders-read");
    assert!(!demo.host.stderr().iter().any(|l| l.contains(&alice)));
}
