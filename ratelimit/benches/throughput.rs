//! `make bench`: decisions per second and p50/p99 latency of the service over gRPC on loopback,
//! with the memory store and with a Redis the bench starts, at several concurrency levels;
//! next to `redis-benchmark`'s raw throughput for the same Lua script (EVALSHA) on the same
//! Redis in the same run, and the ratio service / raw.
//!
//! Client and service share this process and the machine's cores, so the figures include the
//! client's cost; they compare runs on one machine, they are not a capacity claim.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use portcullis_ratelimit::clock::SystemClock;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

const LEVELS: [usize; 4] = [1, 8, 32, 128];
const RUN: Duration = Duration::from_secs(2);
const USERS: u64 = 1000;
const CONFIG: &str = "domain: bench\ndescriptors:\n  - key: user\n    rate_limit: {unit: hour, requests_per_unit: 1000000000}\n";

struct Figures {
    rps: f64,
    p50: Duration,
    p99: Duration,
}

async fn measure(service: &Service, concurrency: usize) -> Figures {
    // One HTTP/2 connection per 8 callers, as a proxy's workers would hold a few.
    let mut channels = Vec::new();
    for _ in 0..concurrency.div_ceil(8) {
        channels.push(service.client().await);
    }
    // Warm up (connections, script load).
    for c in &mut channels {
        ask(c, request("bench", vec![descriptor(&[("user", "warm")])])).await;
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let mut client = channels[i % channels.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = i as u64;
            while start.elapsed() < RUN {
                n = (n * 7 + 13) % USERS;
                let req = request("bench", vec![descriptor(&[("user", &n.to_string())])]);
                let t = Instant::now();
                let r = client.should_rate_limit(req).await;
                latencies.push(t.elapsed());
                assert!(r.is_ok(), "{r:?}");
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed();
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Figures {
        rps: all.len() as f64 / elapsed.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
    }
}

/// `redis-benchmark` running the decision script as the service calls it (one fixed-window
/// key per request, 1000 distinct keys), with `clients` connections.
fn redis_benchmark(redis: &RedisServer, sha: &str, clients: usize) -> Option<f64> {
    let requests = (clients * 10_000).clamp(30_000, 300_000).to_string();
    let out = Command::new("redis-benchmark")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &redis.port.to_string(),
            "-q",
            "-c",
            &clients.to_string(),
        ])
        .args(["-n", &requests, "-r", &USERS.to_string()])
        .args([
            "EVALSHA",
            sha,
            "1",
            "rl:{bench|user=__rand_int__}:fw:hour",
            "1",
            "1000000000",
            "3600000000",
            "0",
            "1",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "EVALSHA ...: 123456.78 requests per second, p50=0.151 msec"
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("requests per second"))?;
    let (_, rest) = line.rsplit_once(": ")?;
    rest.split_whitespace().next()?.parse().ok()
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        println!("portcullis-ratelimit: ShouldRateLimit over gRPC on loopback, 1 descriptor, {USERS} keys, {}s per level", RUN.as_secs());
        println!("{:<8} {:>11} {:>12} {:>9} {:>9}", "store", "concurrency", "decisions/s", "p50 ms", "p99 ms");
        let memory = Service::start(CONFIG, &Backend::Memory(Arc::new(SystemClock))).await;
        for level in LEVELS {
            let f = measure(&memory, level).await;
            println!("{:<8} {:>11} {:>12.0} {:>9} {:>9}", "memory", level, f.rps, ms(f.p50), ms(f.p99));
        }
        memory.stop().await;

        let installed = Command::new("redis-server").arg("--version").output().is_ok_and(|o| o.status.success());
        if !installed {
            println!("redis-server not available: Redis figures skipped (make setup installs it)");
            return;
        }
        let redis = RedisServer::start();
        let script = include_str!("../src/store/decide.lua");
        let sha = redis.cli(&["SCRIPT", "LOAD", script]).unwrap().trim().to_owned();
        let service = Service::start(CONFIG, &Backend::Redis(redis.url())).await;
        let mut rows = Vec::new();
        for level in LEVELS {
            let f = measure(&service, level).await;
            let raw = redis_benchmark(&redis, &sha, level);
            println!("{:<8} {:>11} {:>12.0} {:>9} {:>9}", "redis", level, f.rps, ms(f.p50), ms(f.p99));
            rows.push((level, f.rps, raw));
        }
        service.stop().await;
        println!();
        println!("redis-benchmark, same script (EVALSHA decide.lua, 1 key), same Redis, same run:");
        println!("{:>11} {:>16} {:>16} {:>8}", "clients", "raw EVALSHA/s", "service/s", "ratio");
        for (level, rps, raw) in rows {
            match raw {
                Some(raw) => println!("{:>11} {:>16.0} {:>16.0} {:>7.2}", level, raw, rps, rps / raw),
                None => println!("{level:>11} {:>16} {rps:>16.0} {:>8}", "n/a", "n/a"),
            }
        }
    });
}
