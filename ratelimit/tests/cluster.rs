//! A 3-master Redis Cluster on loopback (redis-server --cluster-enabled yes, created with
//! redis-cli --cluster create) serves the same suite; then a master is killed and restarted.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::*;
use std::time::{Duration, Instant};

/// One cluster for the whole suite (creating one takes seconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_serves_the_suite() {
    let mut cluster = RedisCluster::start();
    let backend = Backend::Cluster(cluster.urls());
    suite::malformed_requests_are_invalid(&backend).await;
    suite::many_descriptors_keep_their_order(&backend).await;
    suite::hits_and_overrides(&backend).await;
    suite::window_rolls_over(&backend).await;
    suite::gcra_burst_then_steady(&backend).await;
    suite::envoyproxy_readme_examples(&backend).await;
    suite::exact_limit_under_concurrency(&backend, 2).await;

    // The descriptors of one request are spread over the masters.
    let keys: usize = cluster
        .nodes
        .iter()
        .map(|n| n.cli(&["DBSIZE"]).unwrap().trim().parse::<usize>().unwrap())
        .filter(|n| *n > 0)
        .count();
    assert_eq!(keys, 3, "every master holds counters");

    // A master restarts (same port, same nodes.conf, data lost): its slots answer UNAVAILABLE
    // meanwhile and recover after.
    let domain = unique("ckill");
    let config = format!(
        "domain: {domain}\ndescriptors:\n  - key: k\n    rate_limit: {{unit: hour, requests_per_unit: 1000000}}\n"
    );
    let service = Service::start(&config, &backend).await;
    let mut c = service.client().await;
    // A value whose key's slot lives on node 0 (`myself` in its CLUSTER NODES line).
    let node0 = &cluster.nodes[0];
    let nodes = node0.cli(&["CLUSTER", "NODES"]).unwrap();
    let ranges: Vec<(u64, u64)> = nodes
        .lines()
        .find(|l| l.contains("myself"))
        .unwrap()
        .split_whitespace()
        .skip(8)
        .map(|r| match r.split_once('-') {
            Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
            None => (r.parse().unwrap(), r.parse().unwrap()),
        })
        .collect();
    let on_node0 = |key: &str| -> bool {
        let slot: u64 = node0
            .cli(&["CLUSTER", "KEYSLOT", key])
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot))
    };
    let mut value = None;
    for i in 0..200 {
        let v = format!("v{i}");
        let key = format!("rl:{{{domain}|k={v}}}:fw:hour");
        if on_node0(&key) {
            value = Some(v);
            break;
        }
    }
    let value = value.expect("a value hashing to node 0");
    let one = || request(&domain, vec![descriptor(&[("k", &value)])]);
    assert!(is_ok(&ask(&mut c, one()).await));
    cluster.nodes[0].kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match c.should_rate_limit(one()).await {
            Err(status) if status.code() == tonic::Code::Unavailable => break,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "UNAVAILABLE within 5 s: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    cluster.nodes[0].restart();
    let up = Instant::now();
    loop {
        match c.should_rate_limit(one()).await {
            Ok(r) if is_ok(r.get_ref()) => break,
            other => {
                assert!(
                    up.elapsed() < Duration::from_secs(15),
                    "recovered within 15 s: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    eprintln!(
        "cluster node recovered {:?} after the restart",
        up.elapsed()
    );
    service.stop().await;
}
