//! Behaviour every store must show: run against memory, standalone Redis and Redis Cluster.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use super::*;
use portcullis_ratelimit::proto::UInt64Value;
use portcullis_ratelimit::proto::rate_limit_response::rate_limit::Unit as ProtoUnit;
use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

fn reset_micros(s: &DescriptorStatus) -> u64 {
    let d = s
        .duration_until_reset
        .as_ref()
        .expect("duration_until_reset");
    u64::try_from(d.seconds).unwrap() * 1_000_000 + u64::try_from(d.nanos).unwrap() / 1_000
}

fn unix_micros() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros(),
    )
    .unwrap()
}

/// Waits until at least `margin` is left in the current one-second window, so that a short
/// sequence of requests falls in one window. Asks with hits_addend 0 (counts nothing).
async fn early_in_window(
    client: &mut RateLimitServiceClient<Channel>,
    domain: &str,
    pairs: &[(&str, &str)],
    margin: Duration,
) {
    let mut d = descriptor(pairs);
    d.hits_addend = Some(UInt64Value { value: 0 });
    let r = ask(client, request(domain, vec![d])).await;
    let left = Duration::from_micros(reset_micros(&r.statuses[0]));
    if left < margin {
        tokio::time::sleep(left + Duration::from_millis(20)).await;
    }
}

/// 2 service replicas (1 for memory) × 8 concurrent callers hammer one `second` limit for about
/// 2.5 s: every window allows at most the limit, and each window wholly inside the run exactly
/// the limit (demand exceeds it many times over). Windows are told apart by the reset time each
/// answer carries.
pub async fn exact_limit_under_concurrency(backend: &Backend, replicas: usize) {
    const LIMIT: u32 = 20;
    let domain = unique("exact");
    let config = format!(
        "domain: {domain}\ndescriptors:\n  - key: user\n    rate_limit:\n      unit: second\n      requests_per_unit: {LIMIT}\n"
    );
    let mut services = Vec::new();
    for _ in 0..replicas {
        services.push(Service::start(&config, backend).await);
    }
    let run_for = Duration::from_millis(2_500);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for service in &services {
        for _ in 0..8 {
            let mut client = service.client().await;
            let domain = domain.clone();
            tasks.push(tokio::spawn(async move {
                let mut seen: Vec<(u64, bool)> = Vec::new();
                while started.elapsed() < run_for {
                    let sent = unix_micros();
                    let r = ask(
                        &mut client,
                        request(&domain, vec![descriptor(&[("user", "alice")])]),
                    )
                    .await;
                    let received = unix_micros();
                    let s = &r.statuses[0];
                    assert_eq!(s.current_limit.as_ref().unwrap().requests_per_unit, LIMIT);
                    let end = (sent + received) / 2 + reset_micros(s);
                    // Window ends are whole seconds: round to the nearest.
                    let window = (end + 500_000) / 1_000_000;
                    if over(s) {
                        assert_eq!(s.limit_remaining, 0);
                    }
                    seen.push((window, is_ok(&r)));
                }
                seen
            }));
        }
    }
    let mut allowed: BTreeMap<u64, u32> = BTreeMap::new();
    let mut asked: BTreeMap<u64, u32> = BTreeMap::new();
    for t in tasks {
        for (window, ok) in t.await.unwrap() {
            *asked.entry(window).or_default() += 1;
            if ok {
                *allowed.entry(window).or_default() += 1;
            }
        }
    }
    eprintln!(
        "exact limit {LIMIT}/s, {replicas} replica(s): allowed per window {allowed:?}, asked {asked:?}"
    );
    let windows: Vec<u64> = asked.keys().copied().collect();
    assert!(
        windows.len() >= 3,
        "the run spans at least 3 windows: {asked:?}"
    );
    for (i, w) in windows.iter().enumerate() {
        let a = allowed.get(w).copied().unwrap_or(0);
        assert!(
            a <= LIMIT,
            "window {w}: {a} allowed > {LIMIT} ({allowed:?})"
        );
        let inner = i > 0 && i + 1 < windows.len();
        if inner {
            assert!(
                asked[w] > 2 * LIMIT,
                "demand exceeds the limit in window {w}: {asked:?}"
            );
            assert_eq!(
                a, LIMIT,
                "window {w} wholly inside the run allows exactly the limit: {allowed:?}"
            );
        }
    }
    for s in services {
        s.stop().await;
    }
}

/// A `second` fixed window: exhausted, then open again once the reset it announced has passed.
pub async fn window_rolls_over(backend: &Backend) {
    let domain = unique("roll");
    let config = format!(
        "domain: {domain}\ndescriptors:\n  - key: k\n    rate_limit: {{unit: second, requests_per_unit: 3}}\n"
    );
    let service = Service::start(&config, backend).await;
    let mut c = service.client().await;
    let pairs = [("k", "v")];
    early_in_window(&mut c, &domain, &pairs, Duration::from_millis(400)).await;
    for left in [2, 1, 0] {
        let r = ask(&mut c, request(&domain, vec![descriptor(&pairs)])).await;
        assert!(is_ok(&r));
        assert_eq!(r.statuses[0].limit_remaining, left);
        assert!(reset_micros(&r.statuses[0]) <= 1_000_000);
    }
    let r = ask(&mut c, request(&domain, vec![descriptor(&pairs)])).await;
    assert!(!is_ok(&r) && over(&r.statuses[0]));
    let wait = reset_micros(&r.statuses[0]);
    tokio::time::sleep(Duration::from_micros(wait) + Duration::from_millis(30)).await;
    let r = ask(&mut c, request(&domain, vec![descriptor(&pairs)])).await;
    assert!(is_ok(&r), "a new window opens after the announced reset");
    assert_eq!(r.statuses[0].limit_remaining, 2);
    service.stop().await;
}

/// GCRA, 2 per second with a burst of 5: 5 at once, then one per 500 ms, and a denial tells how
/// long to wait.
pub async fn gcra_burst_then_steady(backend: &Backend) {
    let domain = unique("gcra");
    let config = format!(
        "domain: {domain}\ndescriptors:\n  - key: api_key\n    rate_limit: {{unit: second, requests_per_unit: 2, algorithm: gcra, burst: 5}}\n"
    );
    let service = Service::start(&config, backend).await;
    let mut c = service.client().await;
    let one = || request(&domain, vec![descriptor(&[("api_key", "k1")])]);
    let started = Instant::now();
    let mut remaining = Vec::new();
    let mut allowed = 0;
    for _ in 0..8 {
        let r = ask(&mut c, one()).await;
        if is_ok(&r) {
            allowed += 1;
            remaining.push(r.statuses[0].limit_remaining);
        }
    }
    assert!(
        started.elapsed() < Duration::from_millis(450),
        "burst sent within one interval"
    );
    assert_eq!(allowed, 5, "exactly the burst");
    assert_eq!(remaining, vec![4, 3, 2, 1, 0]);
    let r = ask(&mut c, one()).await;
    assert!(over(&r.statuses[0]));
    let retry = Duration::from_micros(reset_micros(&r.statuses[0]));
    assert!(
        retry <= Duration::from_millis(500) && retry > Duration::ZERO,
        "{retry:?}"
    );
    tokio::time::sleep(retry + Duration::from_millis(20)).await;
    assert!(
        is_ok(&ask(&mut c, one()).await),
        "allowed once the retry time passed"
    );
    assert!(
        !is_ok(&ask(&mut c, one()).await),
        "and then not again at once"
    );
    // Steady rate: asking every 50 ms for 2 s lets about 4 through (2/s).
    let steady_start = Instant::now();
    let mut steady = 0;
    while steady_start.elapsed() < Duration::from_secs(2) {
        if is_ok(&ask(&mut c, one()).await) {
            steady += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        (3..=5).contains(&steady),
        "steady rate 2/s over 2 s: {steady}"
    );
    service.stop().await;
}

/// Malformed requests are INVALID_ARGUMENT.
pub async fn malformed_requests_are_invalid(backend: &Backend) {
    let domain = unique("bad");
    let config = format!(
        "domain: {domain}\ndescriptors:\n  - key: k\n    rate_limit: {{unit: second, requests_per_unit: 3}}\n"
    );
    let service = Service::start(&config, backend).await;
    let mut c = service.client().await;
    let mut empty_key = descriptor(&[("k", "v")]);
    empty_key
        .entries
        .push(portcullis_ratelimit::proto::rate_limit_descriptor::Entry {
            key: String::new(),
            value: "x".into(),
        });
    let cases = vec![
        ("empty domain", request("", vec![descriptor(&[("k", "v")])])),
        ("no descriptors", request(&domain, vec![])),
        ("empty key", request(&domain, vec![empty_key])),
        ("no entries", request(&domain, vec![descriptor(&[])])),
        (
            "unknown override unit",
            request(&domain, vec![descriptor_override(&[("k", "v")], 1, 0)]),
        ),
    ];
    for (what, req) in cases {
        let err = c.should_rate_limit(req).await.expect_err(what);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{what}: {err:?}");
    }
    // The service still answers well-formed requests.
    assert!(is_ok(
        &ask(&mut c, request(&domain, vec![descriptor(&[("k", "v")])])).await
    ));
    service.stop().await;
}

/// Several descriptors in one request (in different Cluster slots): statuses in request order.
pub async fn many_descriptors_keep_their_order(backend: &Backend) {
    let domain = unique("many");
    let mut config = format!("domain: {domain}\ndescriptors:\n");
    for i in 1..=6 {
        config.push_str(&format!(
            "  - key: k{i}\n    rate_limit: {{unit: hour, requests_per_unit: {i}}}\n"
        ));
    }
    let service = Service::start(&config, backend).await;
    let mut c = service.client().await;
    let all = || {
        request(
            &domain,
            (1..=6)
                .map(|i| descriptor(&[(&format!("k{i}"), "v")]))
                .collect(),
        )
    };
    let r = ask(&mut c, all()).await;
    assert!(is_ok(&r));
    let remaining: Vec<u32> = r.statuses.iter().map(|s| s.limit_remaining).collect();
    assert_eq!(remaining, vec![0, 1, 2, 3, 4, 5]);
    let limits: Vec<u32> = r
        .statuses
        .iter()
        .map(|s| s.current_limit.as_ref().unwrap().requests_per_unit)
        .collect();
    assert_eq!(limits, vec![1, 2, 3, 4, 5, 6]);
    let r = ask(&mut c, all()).await;
    assert!(!is_ok(&r), "k1 is over: the request is over");
    assert!(over(&r.statuses[0]));
    let remaining: Vec<u32> = r
        .statuses
        .iter()
        .skip(1)
        .map(|s| s.limit_remaining)
        .collect();
    assert_eq!(remaining, vec![0, 1, 2, 3, 4]);
    service.stop().await;
}

/// hits_addend (request and descriptor level, 0 = check only), is_negative_hits, and a
/// request's limit override.
pub async fn hits_and_overrides(backend: &Backend) {
    let domain = unique("hits");
    let config = format!(
        "domain: {domain}\ndescriptors:\n  - key: k\n    rate_limit: {{unit: hour, requests_per_unit: 10}}\n"
    );
    let service = Service::start(&config, backend).await;
    let mut c = service.client().await;
    let mut req = request(&domain, vec![descriptor(&[("k", "a")])]);
    req.hits_addend = 4;
    let r = ask(&mut c, req.clone()).await;
    assert_eq!(r.statuses[0].limit_remaining, 6);
    let mut check_only = descriptor(&[("k", "a")]);
    check_only.hits_addend = Some(UInt64Value { value: 0 });
    let r = ask(&mut c, request(&domain, vec![check_only.clone()])).await;
    assert_eq!(
        r.statuses[0].limit_remaining, 6,
        "hits_addend 0 only checks"
    );
    let mut refund = descriptor(&[("k", "a")]);
    refund.hits_addend = Some(UInt64Value { value: 2 });
    refund.is_negative_hits = true;
    let r = ask(&mut c, request(&domain, vec![refund])).await;
    assert_eq!(
        r.statuses[0].limit_remaining, 8,
        "negative hits give quota back"
    );
    req.hits_addend = 9;
    let r = ask(&mut c, req).await;
    assert!(over(&r.statuses[0]), "2 + 9 > 10");
    // An override replaces the configured limit (and applies even to an unconfigured key).
    let o = descriptor_override(&[("other", "x")], 2, ProtoUnit::Minute as i32);
    let r = ask(&mut c, request(&domain, vec![o.clone()])).await;
    let s = &r.statuses[0];
    assert_eq!(s.current_limit.as_ref().unwrap().requests_per_unit, 2);
    assert_eq!(
        s.current_limit.as_ref().unwrap().unit,
        ProtoUnit::Minute as i32
    );
    assert_eq!(s.limit_remaining, 1);
    ask(&mut c, request(&domain, vec![o.clone()])).await;
    assert!(!is_ok(&ask(&mut c, request(&domain, vec![o])).await));
    service.stop().await;
}

/// The examples of envoyproxy/ratelimit's README, one file each in a config folder, behave as
/// its README describes.
pub async fn envoyproxy_readme_examples(backend: &Backend) {
    let dir = tempfile::tempdir().unwrap();
    let examples =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/envoyproxy-examples");
    for entry in std::fs::read_dir(&examples).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let prefix = format!("{}:", unique("ex"));
    let service = Service::start_dir(dir, backend, FailureMode::Unavailable, &prefix).await;
    let mut c = service.client().await;
    let limit = |s: &DescriptorStatus| {
        s.current_limit
            .as_ref()
            .map(|l| (l.requests_per_unit, l.unit))
    };

    // Example 1: 500 per second for database=users.
    let r = ask(
        &mut c,
        request("mongo_cps", vec![descriptor(&[("database", "users")])]),
    )
    .await;
    assert_eq!(limit(&r.statuses[0]), Some((500, ProtoUnit::Second as i32)));

    // Example 2: 5 marketing messages a day per number, 100 messages a day per number, in one
    // request: a logical OR.
    let marketing = descriptor(&[("message_type", "marketing"), ("to_number", "2061111111")]);
    let number = descriptor(&[("to_number", "2061111111")]);
    for i in 0..5u32 {
        let r = ask(
            &mut c,
            request("messaging", vec![marketing.clone(), number.clone()]),
        )
        .await;
        assert!(is_ok(&r));
        assert_eq!(r.statuses[0].limit_remaining, 4 - i);
        assert_eq!(r.statuses[1].limit_remaining, 99 - i);
        assert_eq!(limit(&r.statuses[0]), Some((5, ProtoUnit::Day as i32)));
    }
    let r = ask(
        &mut c,
        request("messaging", vec![marketing.clone(), number.clone()]),
    )
    .await;
    assert!(!is_ok(&r));
    assert!(over(&r.statuses[0]) && !over(&r.statuses[1]));
    let other = descriptor(&[("message_type", "marketing"), ("to_number", "2062222222")]);
    assert!(
        is_ok(&ask(&mut c, request("messaging", vec![other])).await),
        "each number has its own 5"
    );

    // Example 3: the most specific match; 50.0.0.5 is blocked (0 per second).
    let r = ask(
        &mut c,
        request(
            "edge_proxy_per_ip",
            vec![descriptor(&[("remote_address", "50.0.0.1")])],
        ),
    )
    .await;
    assert!(is_ok(&r));
    assert_eq!(limit(&r.statuses[0]), Some((10, ProtoUnit::Second as i32)));
    let r = ask(
        &mut c,
        request(
            "edge_proxy_per_ip",
            vec![descriptor(&[("remote_address", "50.0.0.5")])],
        ),
    )
    .await;
    assert!(!is_ok(&r));
    assert_eq!(limit(&r.statuses[0]), Some((0, ProtoUnit::Second as i32)));

    // Example 4: two entries do not match a one-level rule; they match the nested one.
    let r = ask(
        &mut c,
        request(
            "example4",
            vec![descriptor(&[("key", "value"), ("subkey", "subvalue")])],
        ),
    )
    .await;
    assert_eq!(limit(&r.statuses[0]), Some((300, ProtoUnit::Second as i32)));
    let r = ask(
        &mut c,
        request("example4", vec![descriptor(&[("key", "value")])]),
    )
    .await;
    assert!(is_ok(&r));
    assert_eq!(
        limit(&r.statuses[0]),
        None,
        "a placeholder level has no limit"
    );

    // Example 5: unlimited answers OK with limit_remaining = MaxUint32 and no limit.
    let r = ask(
        &mut c,
        request(
            "internal",
            vec![descriptor(&[("ldap", "x")]), descriptor(&[("azure", "y")])],
        ),
    )
    .await;
    assert!(is_ok(&r));
    assert_eq!(r.statuses[0].limit_remaining, u32::MAX);
    assert_eq!(limit(&r.statuses[0]), None);
    assert_eq!(limit(&r.statuses[1]), Some((100, ProtoUnit::Minute as i32)));
    assert_eq!(r.statuses[1].limit_remaining, 99);

    // Example 6: user-a is in shadow mode (never limited), user-b limited at 20/s.
    let user = |u: &str| descriptor(&[("service", "auth-service"), ("user", u)]);
    let mut burst = request("example6", vec![user("user-a")]);
    burst.hits_addend = 15;
    let r = ask(&mut c, burst).await;
    assert!(is_ok(&r), "shadow mode answers OK over the limit");
    assert_eq!(
        r.statuses[0].code,
        portcullis_ratelimit::proto::rate_limit_response::Code::Ok as i32
    );
    let mut burst = request("example6", vec![user("user-b")]);
    burst.hits_addend = 21;
    let r = ask(&mut c, burst).await;
    assert!(!is_ok(&r), "21 > 20 per second");

    // Example 7: replaces.
    let both = request(
        "example7",
        vec![
            descriptor(&[("key_1", "value_1"), ("user", "bkthomps")]),
            descriptor(&[("key_2", "value_2"), ("user", "bkthomps")]),
        ],
    );
    let r = ask(&mut c, both).await;
    assert!(is_ok(&r));
    assert_eq!(
        limit(&r.statuses[0]),
        None,
        "specific_limit is replaced in this request"
    );
    assert_eq!(limit(&r.statuses[1]), Some((10, ProtoUnit::Second as i32)));
    let alone = request(
        "example7",
        vec![descriptor(&[("key_1", "value_1"), ("user", "bkthomps")])],
    );
    let r = ask(&mut c, alone).await;
    assert_eq!(
        limit(&r.statuses[0]),
        Some((5, ProtoUnit::Second as i32)),
        "not replaced alone"
    );

    // Example 8: detailed_metric rolls each value into its own metric.
    let r = ask(
        &mut c,
        request(
            "example8",
            vec![descriptor(&[("key1", "unspecified_value")])],
        ),
    )
    .await;
    assert_eq!(limit(&r.statuses[0]), Some((10, ProtoUnit::Minute as i32)));
    let r = ask(
        &mut c,
        request("example8", vec![descriptor(&[("key1", "value1")])]),
    )
    .await;
    assert_eq!(limit(&r.statuses[0]), Some((20, ProtoUnit::Minute as i32)));
    let (_, metrics) = service.get("/metrics").await;
    assert!(
        metrics.contains(r#"ratelimit_decisions_total{domain="example8",descriptor="key1_unspecified_value",code="ok"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(
        r#"ratelimit_decisions_total{domain="example8",descriptor="key1_value1",code="ok"} 1"#
    ));
    assert!(metrics.contains(r#"ratelimit_decisions_total{domain="example6",descriptor="service.user_user-a",code="shadow_over_limit"} 1"#));

    // Example 9: wildcard values.
    let r = ask(
        &mut c,
        request("example9", vec![descriptor(&[("key1", "value_1")])]),
    )
    .await;
    assert_eq!(limit(&r.statuses[0]), Some((20, ProtoUnit::Minute as i32)));
    let r = ask(
        &mut c,
        request("example9", vec![descriptor(&[("key1", "other")])]),
    )
    .await;
    assert_eq!(limit(&r.statuses[0]), None);
    service.stop().await;
}
