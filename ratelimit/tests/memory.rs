//! The service with the in-memory store: the shared suite, plus what an injectable clock makes
//! exact (window roll-over for long units, GCRA timing), configuration reload, HTTP endpoints.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::*;
use portcullis_ratelimit::clock::{ManualClock, SystemClock};
use std::sync::Arc;
use std::time::Duration;

fn system() -> Backend {
    Backend::Memory(Arc::new(SystemClock))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_limit_under_concurrency() {
    suite::exact_limit_under_concurrency(&system(), 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_rolls_over() {
    suite::window_rolls_over(&system()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcra_burst_then_steady() {
    suite::gcra_burst_then_steady(&system()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_invalid() {
    suite::malformed_requests_are_invalid(&system()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_descriptors_keep_their_order() {
    suite::many_descriptors_keep_their_order(&system()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_and_overrides() {
    suite::hits_and_overrides(&system()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoyproxy_readme_examples() {
    suite::envoyproxy_readme_examples(&system()).await;
}

const SEC: u64 = 1_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_aligned_windows_with_a_manual_clock() {
    // 10 s past a whole minute and a whole hour.
    let t0 = 1_700_002_800 * SEC + 10 * SEC;
    let clock = Arc::new(ManualClock::new(t0));
    let config = "domain: d\ndescriptors:\n  - key: m\n    rate_limit: {unit: minute, requests_per_unit: 2}\n  - key: h\n    rate_limit: {unit: hour, requests_per_unit: 1}\n";
    let service = Service::start(config, &Backend::Memory(clock.clone())).await;
    let mut c = service.client().await;
    let m = || request("d", vec![descriptor(&[("m", "x")])]);
    let h = || request("d", vec![descriptor(&[("h", "x")])]);
    let r = ask(&mut c, m()).await;
    let reset = r.statuses[0].duration_until_reset.unwrap();
    assert_eq!(
        (reset.seconds, reset.nanos),
        (50, 0),
        "aligned to the minute"
    );
    assert!(is_ok(&ask(&mut c, m()).await));
    assert!(!is_ok(&ask(&mut c, m()).await));
    let r = ask(&mut c, h()).await;
    assert_eq!(r.statuses[0].duration_until_reset.unwrap().seconds, 3_590);
    assert!(!is_ok(&ask(&mut c, h()).await));
    clock.advance(50 * SEC - 1);
    assert!(
        !is_ok(&ask(&mut c, m()).await),
        "one microsecond before the minute ends"
    );
    clock.advance(1);
    let r = ask(&mut c, m()).await;
    assert!(is_ok(&r), "the next minute");
    assert_eq!(r.statuses[0].limit_remaining, 1);
    assert!(!is_ok(&ask(&mut c, h()).await), "the hour goes on");
    clock.advance(3_540 * SEC);
    assert!(is_ok(&ask(&mut c, h()).await), "the next hour");
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcra_timing_with_a_manual_clock() {
    let clock = Arc::new(ManualClock::new(1_700_000_000 * SEC));
    let config = "domain: d\ndescriptors:\n  - key: u\n    rate_limit: {unit: minute, requests_per_unit: 60, algorithm: gcra, burst: 3}\n";
    let service = Service::start(config, &Backend::Memory(clock.clone())).await;
    let mut c = service.client().await;
    let one = || request("d", vec![descriptor(&[("u", "x")])]);
    for _ in 0..3 {
        assert!(is_ok(&ask(&mut c, one()).await));
    }
    let r = ask(&mut c, one()).await;
    assert!(!is_ok(&r));
    let retry = r.statuses[0].duration_until_reset.unwrap();
    assert_eq!(
        (retry.seconds, retry.nanos),
        (1, 0),
        "one per second: retry in 1 s"
    );
    clock.advance(SEC);
    let r = ask(&mut c, one()).await;
    assert!(is_ok(&r));
    assert_eq!(r.statuses[0].limit_remaining, 0);
    let full = r.statuses[0].duration_until_reset.unwrap();
    assert_eq!(full.seconds, 3, "the bucket is whole again in 3 s");
    // Ten seconds at one per second: ten allowed, never more.
    let mut allowed = 0;
    for _ in 0..40 {
        clock.advance(250_000);
        if is_ok(&ask(&mut c, one()).await) {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 10);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_domain_and_unmatched_descriptors_are_ok() {
    let service = Service::start("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 0}\n", &system()).await;
    let mut c = service.client().await;
    let r = ask(&mut c, request("nope", vec![descriptor(&[("k", "v")])])).await;
    assert!(is_ok(&r));
    assert_eq!(r.statuses.len(), 1);
    assert!(r.statuses[0].current_limit.is_none());
    let r = ask(
        &mut c,
        request(
            "d",
            vec![descriptor(&[("other", "v")]), descriptor(&[("k", "v")])],
        ),
    )
    .await;
    assert!(!is_ok(&r));
    assert!(r.statuses[0].current_limit.is_none() && !over(&r.statuses[0]));
    assert!(over(&r.statuses[1]));
    let (_, metrics) = service.get("/metrics").await;
    assert!(
        metrics.contains("ratelimit_unknown_domain_requests_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains(r#"ratelimit_unmatched_descriptors_total{domain="d"} 1"#));
    assert!(
        metrics.contains(
            r#"ratelimit_decisions_total{domain="d",descriptor="k",code="over_limit"} 1"#
        )
    );
    assert!(metrics.contains(r#"ratelimit_responses_total{name="over_limit"} 1"#));
    assert!(metrics.contains("ratelimit_store_latency_seconds_count"));
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_mode_is_over_only_when_every_quota_descriptor_is() {
    let config = "domain: q\ndescriptors:\n  - key: a\n    quota_mode: true\n    rate_limit: {unit: hour, requests_per_unit: 1}\n  - key: b\n    quota_mode: true\n    rate_limit: {unit: hour, requests_per_unit: 2}\n";
    let service = Service::start(config, &system()).await;
    let mut c = service.client().await;
    let both = || {
        request(
            "q",
            vec![descriptor(&[("a", "x")]), descriptor(&[("b", "x")])],
        )
    };
    assert!(is_ok(&ask(&mut c, both()).await));
    let r = ask(&mut c, both()).await;
    assert!(over(&r.statuses[0]) && !over(&r.statuses[1]));
    assert!(is_ok(&r), "one quota descriptor left");
    assert!(
        !is_ok(&ask(&mut c, both()).await),
        "all quota descriptors over"
    );
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_reloads_and_a_bad_file_keeps_the_old_one() {
    let service = Service::start(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: 1}\n",
        &system(),
    )
    .await;
    let mut c = service.client().await;
    let limit_of = |r: &portcullis_ratelimit::proto::RateLimitResponse| {
        r.statuses[0]
            .current_limit
            .as_ref()
            .map(|l| l.requests_per_unit)
    };
    let one = || request("d", vec![descriptor(&[("k", "v")])]);
    assert_eq!(limit_of(&ask(&mut c, one()).await), Some(1));
    write_config(
        &service.config_path(),
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: 7}\n",
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while limit_of(&ask(&mut c, one()).await) != Some(7) {
        assert!(std::time::Instant::now() < deadline, "reload within 5 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    write_config(
        &service.config_path(),
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight, requests_per_unit: 9}\n",
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, metrics) = service.get("/metrics").await;
        if metrics.contains(r#"ratelimit_config_loads_total{name="error"} 1"#) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the bad file is seen within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        limit_of(&ask(&mut c, one()).await),
        Some(7),
        "the old configuration stays"
    );
    // A new file in the folder adds its domain.
    std::fs::write(
        service.config_dir.path().join("more.yaml"),
        "domain: e\ndescriptors:\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: 3}\n",
    )
    .unwrap();
    write_config(
        &service.config_path(),
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: 8}\n",
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = ask(&mut c, request("e", vec![descriptor(&[("k", "v")])])).await;
        if limit_of(&r) == Some(3) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new file is loaded within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(limit_of(&ask(&mut c, one()).await), Some(8));
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_unknown_paths() {
    let service = Service::start("domain: d\n", &system()).await;
    assert_eq!(service.get("/healthz").await.0, 200);
    assert_eq!(service.get("/healthcheck").await.0, 200);
    assert_eq!(service.get("/nope").await.0, 404);
    let (status, body) = service.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.contains(r#"ratelimit_config_loads_total{name="success"} 1"#),
        "{body}"
    );
    assert!(body.contains("ratelimit_config_domains 1"));
    service.stop().await;
}
