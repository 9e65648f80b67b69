//! Which metric series a finished request adds to, and their stat names: labels encoded in the
//! name as Istio does, recovered by the `stats_tags` regexes the way Envoy's tag extractor does.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use portcullis::cache::TokenCache;
use portcullis::config::Config;
use portcullis::decision::Decision;
use portcullis::metrics::{self, Kind, Outcome, Series};
use portcullis::request::Request;
use regex::Regex;
use serde_json::json;

const NOW: u64 = 1_800_000_000;

fn config() -> Config {
    let doc = json!({
        "providers": {
            "partners": { "type": "api_key", "from_headers": ["x-api-key"], "keys": [
                { "consumer": "acme", "sha256": "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8", "scopes": ["orders:read"] }
            ] }
        },
        "inspection": { "mode": "block", "level": "medium" },
        "routes": [
            { "name": "orders", "match": { "prefix": "/orders" }, "requires": ["partners"], "scopes": ["orders:read"] },
            { "name": "admin;x=.=y", "match": { "prefix": "/admin" }, "requires": ["partners"], "scopes": ["admin"] },
            { "name": "search", "match": { "prefix": "/search" }, "public": true }
        ]
    });
    Config::from_json(doc.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e:?}"))
}

fn decide(config: &Config, path: &str, key: Option<&str>) -> Decision {
    let mut headers = vec![
        (":method".to_owned(), "GET".to_owned()),
        (":path".to_owned(), path.to_owned()),
        (":authority".to_owned(), "api.test".to_owned()),
    ];
    if let Some(key) = key {
        headers.push(("x-api-key".to_owned(), key.to_owned()));
    }
    let mut cache = TokenCache::default();
    support::decide(config, &mut cache, &Request::new(&headers), NOW)
}

fn series_of(config: &Config, decision: &Decision) -> Vec<(Series, u64)> {
    metrics::of_request(
        config,
        &Outcome {
            decision: Some(decision),
            verdict: metrics::verdict_word(decision),
            reason: decision.reason,
            rate_limit: None,
            body_refused: false,
            latency_us: 42,
        },
    )
}

/// What Envoy's tag extraction makes of a stat name: the first group of each matching
/// `stats_tags` regex is cut out, the second is the label value.
fn extract(name: &str) -> (String, Vec<(String, String)>) {
    let mut name = name.to_owned();
    let mut labels = Vec::new();
    for (tag, regex) in metrics::stats_tags() {
        let re = Regex::new(&regex).unwrap();
        if let Some(c) = re.captures(&name) {
            let whole = c.get(1).unwrap().range();
            labels.push((tag.to_owned(), c[2].to_owned()));
            name.replace_range(whole, "");
        }
    }
    (name, labels)
}

#[test]
fn an_allowed_request_counts_once_and_records_its_latency() {
    let config = config();
    let d = decide(&config, "/orders/1", Some("password"));
    let series = series_of(&config, &d);
    assert_eq!(
        series,
        vec![
            (
                Series::Requests {
                    route: Some(0),
                    decision: "allow",
                    reason: "authenticated"
                },
                1
            ),
            (Series::DecisionDuration { route: Some(0) }, 42),
        ]
    );
    assert_eq!(series[0].0.kind(), Kind::Counter);
    assert_eq!(series[1].0.kind(), Kind::Histogram);
    assert_eq!(
        series[0].0.stat_name(&config),
        "route=.=orders;.;decision=.=allow;.;reason=.=authenticated;.;portcullis_requests_total"
    );
}

#[test]
fn refused_credentials_count_by_provider_and_reason() {
    let config = config();
    let wrong = decide(&config, "/orders/1", Some("not-the-key"));
    assert!(series_of(&config, &wrong).contains(&(
        Series::AuthFailures {
            provider: Some(0),
            reason: "invalid_api_key"
        },
        1
    )));
    let missing = decide(&config, "/orders/1", None);
    let series = series_of(&config, &missing);
    let auth = series
        .iter()
        .find(|(s, _)| matches!(s, Series::AuthFailures { .. }))
        .unwrap();
    assert_eq!(
        auth.0,
        Series::AuthFailures {
            provider: None,
            reason: "missing_credentials"
        }
    );
    assert_eq!(
        extract(&auth.0.stat_name(&config)),
        (
            metrics::AUTH_FAILURES.to_owned(),
            vec![
                ("reason".to_owned(), "missing_credentials".to_owned()),
                ("provider".to_owned(), "none".to_owned()),
            ]
        )
    );
}

#[test]
fn an_attack_counts_its_category_and_rule() {
    let config = config();
    let d = decide(
        &config,
        "/search?q=1%27%20UNION%20SELECT%20password%20FROM%20users--",
        None,
    );
    assert_eq!(d.reason, "suspicious_request");
    let hit = series_of(&config, &d)
        .into_iter()
        .find(|(s, _)| matches!(s, Series::InspectionHits { .. }))
        .unwrap()
        .0;
    let Series::InspectionHits { category, rule, .. } = hit else {
        unreachable!()
    };
    assert_eq!(category, "sqli");
    assert_eq!(Some(rule), d.rule.as_deref());
    let (name, labels) = extract(&hit.stat_name(&config));
    assert_eq!(name, metrics::INSPECTION_HITS);
    assert!(labels.contains(&("route".to_owned(), "search".to_owned())));
    assert!(labels.contains(&("category".to_owned(), "sqli".to_owned())));
}

#[test]
fn rate_limit_answers_and_body_refusals_have_their_own_series() {
    let config = config();
    let d = decide(&config, "/orders/1", Some("password"));
    let series = metrics::of_request(
        &config,
        &Outcome {
            decision: Some(&d),
            verdict: "deny",
            reason: "body_too_large",
            rate_limit: Some("over_limit"),
            body_refused: true,
            latency_us: 7,
        },
    );
    assert!(series.contains(&(
        Series::RateLimit {
            route: Some(0),
            outcome: "over_limit"
        },
        1
    )));
    assert!(series.contains(&(
        Series::BodyRejections {
            route: Some(0),
            reason: "body_too_large"
        },
        1
    )));
}

#[test]
fn a_request_the_filter_never_saw_is_counted_without_a_route() {
    let config = config();
    let series = metrics::of_request(
        &config,
        &Outcome {
            decision: None,
            verdict: "none",
            reason: "not_seen",
            rate_limit: None,
            body_refused: false,
            latency_us: 0,
        },
    );
    assert_eq!(series.len(), 1);
    assert_eq!(
        series[0].0.stat_name(&config),
        "route=.=none;.;decision=.=none;.;reason=.=not_seen;.;portcullis_requests_total"
    );
}

#[test]
fn label_values_cannot_forge_other_labels() {
    let config = config();
    let d = decide(&config, "/admin/x", Some("password"));
    assert_eq!(d.reason, "insufficient_scope");
    let name = series_of(&config, &d)[0].0.stat_name(&config);
    let (metric, labels) = extract(&name);
    assert_eq!(metric, metrics::REQUESTS);
    assert!(
        labels.contains(&("route".to_owned(), "admin_x_._y".to_owned())),
        "{labels:?}"
    );
    assert_eq!(labels.len(), 3);
}

#[test]
fn body_rejections_are_body_checks_only() {
    let config = config();
    let d = decide(&config, "/orders/1", Some("password"));
    let outcome = |reason, body_refused| Outcome {
        decision: Some(&d),
        verdict: "deny",
        reason,
        rate_limit: Some("over_limit"),
        body_refused,
        latency_us: 7,
    };
    let has_body_series = |o: Outcome<'_>| {
        metrics::of_request(&config, &o)
            .iter()
            .any(|(s, _)| matches!(s, Series::BodyRejections { .. }))
    };
    // A 429 or 503 decided after the headers is not a body refusal.
    assert!(!has_body_series(outcome("rate_limited", false)));
    assert!(!has_body_series(outcome("rate_limit_unavailable", false)));
    // The media type and declared size are checked with the headers, and still count.
    assert!(has_body_series(outcome("unsupported_media_type", false)));
    assert!(has_body_series(outcome("body_too_large", false)));
    // A signature found in the body counts; the same reason from the query does not.
    assert!(has_body_series(outcome("suspicious_request", true)));
    assert!(!has_body_series(outcome("suspicious_request", false)));
}
