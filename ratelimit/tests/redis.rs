//! The service on a real standalone Redis that the tests start (redis-server on a free port):
//! the shared suite with two replicas, and Redis killed and restarted mid-run.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::*;
use portcullis_ratelimit::service::FailureMode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_limit_with_two_replicas() {
    let redis = RedisServer::start();
    suite::exact_limit_under_concurrency(&Backend::Redis(redis.url()), 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_rolls_over() {
    let redis = RedisServer::start();
    suite::window_rolls_over(&Backend::Redis(redis.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcra_burst_then_steady() {
    let redis = RedisServer::start();
    suite::gcra_burst_then_steady(&Backend::Redis(redis.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_invalid() {
    let redis = RedisServer::start();
    suite::malformed_requests_are_invalid(&Backend::Redis(redis.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_descriptors_and_hits() {
    let redis = RedisServer::start();
    let backend = Backend::Redis(redis.url());
    suite::many_descriptors_keep_their_order(&backend).await;
    suite::hits_and_overrides(&backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoyproxy_readme_examples() {
    let redis = RedisServer::start();
    suite::envoyproxy_readme_examples(&Backend::Redis(redis.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_carry_the_hash_tag_and_expire() {
    let redis = RedisServer::start();
    let backend = Backend::Redis(redis.url());
    let config = "domain: d\ndescriptors:\n  - key: user\n    rate_limit: {unit: minute, requests_per_unit: 5}\n  - key: api\n    rate_limit: {unit: second, requests_per_unit: 5, algorithm: gcra}\n";
    let service = Service::start(config, &backend).await;
    let mut c = service.client().await;
    ask(
        &mut c,
        request(
            "d",
            vec![descriptor(&[("user", "a{b}")]), descriptor(&[("api", "k")])],
        ),
    )
    .await;
    let keys = redis.cli(&["--raw", "KEYS", "*"]).unwrap();
    let mut keys: Vec<&str> = keys.lines().collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        vec!["rl:{d|api=k}:gcra:second", "rl:{d|user=a%7Bb%7D}:fw:minute"]
    );
    let ttl: i64 = redis
        .cli(&["PTTL", "rl:{d|user=a%7Bb%7D}:fw:minute"])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        ttl > 0 && ttl <= 61_000,
        "the window's key expires after the window: {ttl}"
    );
    let ttl: i64 = redis
        .cli(&["PTTL", "rl:{d|api=k}:gcra:second"])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        ttl > 0 && ttl <= 1_000,
        "a GCRA key lives until its bucket is full: {ttl}"
    );
    service.stop().await;
}

/// Redis is killed under load and restarted on the same port: while it is down the service
/// answers per its failure mode (UNAVAILABLE by default, or OK / OVER_LIMIT) within the store
/// timeout, /healthz is 503, and within seconds of the restart everything answers again. No
/// panic: every service stops cleanly at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted() {
    let mut redis = RedisServer::start();
    let backend = Backend::Redis(redis.url());
    let domain = unique("kill");
    let config = format!(
        "domain: {domain}\ndescriptors:\n  - key: k\n    rate_limit: {{unit: hour, requests_per_unit: 1000000}}\n"
    );
    let unavailable = Service::start(&config, &backend).await;
    let allow = Service::start_with(&config, &backend, FailureMode::Allow, "rl:").await;
    let deny = Service::start_with(&config, &backend, FailureMode::Deny, "rl:").await;
    let one = || request(&domain, vec![descriptor(&[("k", "v")])]);
    let mut c = unavailable.client().await;
    let mut ca = allow.client().await;
    let mut cd = deny.client().await;
    assert!(is_ok(&ask(&mut c, one()).await));
    assert!(is_ok(&ask(&mut cd, one()).await));
    assert_eq!(unavailable.get("/healthz").await.0, 200);

    // Background load on the default service throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok_count, err_count) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let mut client = unavailable.client().await;
        let (stop, ok_count, err_count, req) =
            (stop.clone(), ok_count.clone(), err_count.clone(), one());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let r = tokio::time::timeout(
                    Duration::from_secs(3),
                    client.should_rate_limit(req.clone()),
                )
                .await;
                let r = r.expect("every answer within 3 s, Redis up or down");
                assert!(started.elapsed() < Duration::from_secs(2));
                match r {
                    Ok(_) => ok_count.fetch_add(1, Ordering::Relaxed),
                    Err(status) => {
                        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                        err_count.fetch_add(1, Ordering::Relaxed)
                    }
                };
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.kill();
    let down_at = Instant::now();
    let deadline = down_at + Duration::from_secs(5);
    loop {
        match c.should_rate_limit(one()).await {
            Err(status) if status.code() == tonic::Code::Unavailable => break,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "UNAVAILABLE within 5 s of the kill: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let started = Instant::now();
    let status = c.should_rate_limit(one()).await.expect_err("Redis is down");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "bounded by the store timeout"
    );
    let r = ask(&mut ca, one()).await;
    assert!(is_ok(&r), "failure mode allow");
    let r = ask(&mut cd, one()).await;
    assert!(!is_ok(&r) && over(&r.statuses[0]), "failure mode deny");
    assert_eq!(unavailable.get("/healthz").await.0, 503);
    tokio::time::sleep(Duration::from_millis(500)).await;

    redis.restart();
    let up_at = Instant::now();
    let deadline = up_at + Duration::from_secs(10);
    for client in [&mut c, &mut ca, &mut cd] {
        loop {
            match client.should_rate_limit(one()).await {
                Ok(r) if is_ok(r.get_ref()) => break,
                other => {
                    assert!(
                        Instant::now() < deadline,
                        "recovered within 10 s of the restart: {other:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    let recovery = up_at.elapsed();
    assert!(
        recovery < Duration::from_secs(5),
        "recovery took {recovery:?}"
    );
    eprintln!("recovered {recovery:?} after the restart");
    assert_eq!(unavailable.get("/healthz").await.0, 200);
    let ok_before = ok_count.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert!(
        err_count.load(Ordering::Relaxed) > 0,
        "the load saw the outage"
    );
    assert!(
        ok_count.load(Ordering::Relaxed) > ok_before,
        "and the recovery"
    );
    let (_, metrics) = unavailable.get("/metrics").await;
    assert!(
        metrics.contains(r#"ratelimit_responses_total{name="unavailable"}"#),
        "{metrics}"
    );
    assert!(metrics.contains("ratelimit_store_errors_total"));
    for s in [unavailable, allow, deny] {
        s.stop().await;
    }
}
