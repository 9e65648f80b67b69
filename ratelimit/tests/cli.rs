//! The binary: a bad configuration at start is a clear error and a non-zero exit; a running
//! service logs JSON lines, answers, and stops cleanly on SIGTERM.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis-ratelimit");

#[test]
fn bad_configuration_at_start_names_file_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("limits.yaml");
    std::fs::write(&file, "domain: d\ndescriptors:\n  - key: a\n    descriptors:\n      - key: b\n        rate_limit: {unit: fortnight, requests_per_unit: 1}\n").unwrap();
    let out = Command::new(BIN)
        .args([
            "--config",
            file.to_str().unwrap(),
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("limits.yaml: descriptors[0].descriptors[0].rate_limit.unit: invalid rate limit unit 'fortnight'"),
        "{stderr}"
    );
    let out = Command::new(BIN)
        .args([
            "--config",
            dir.path().join("missing.yaml").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.yaml"));
    let out = Command::new(BIN)
        .args([
            "--config",
            file.to_str().unwrap(),
            "--failure-mode",
            "maybe",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a bad flag is a usage error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_logs_json_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("limits.yaml");
    std::fs::write(&file, "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 1}\n").unwrap();
    let (grpc, http) = (free_port(), free_port());
    let mut child = Command::new(BIN)
        .args([
            "--config",
            file.to_str().unwrap(),
            "--grpc-listen",
            &format!("127.0.0.1:{grpc}"),
            "--http-listen",
            &format!("127.0.0.1:{http}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let http_addr = format!("127.0.0.1:{http}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if tokio::net::TcpStream::connect(http_addr).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "listening within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(http_get(http_addr, "/healthz").await.0, 200);
    let mut client = portcullis_ratelimit::proto::RateLimitServiceClient::connect(format!(
        "http://127.0.0.1:{grpc}"
    ))
    .await
    .unwrap();
    assert!(is_ok(
        &ask(&mut client, request("d", vec![descriptor(&[("k", "v")])])).await
    ));
    assert!(!is_ok(
        &ask(&mut client, request("d", vec![descriptor(&[("k", "v")])])).await
    ));
    let (_, metrics) = http_get(http_addr, "/metrics").await;
    assert!(
        metrics.contains(
            r#"ratelimit_decisions_total{domain="d",descriptor="k",code="over_limit"} 1"#
        ),
        "{metrics}"
    );
    drop(client);

    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "exits within 10 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "a clean exit: {status}");
    let mut logs = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut logs).unwrap();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let messages: Vec<&str> = lines.iter().filter_map(|l| l["message"].as_str()).collect();
    assert!(messages.contains(&"configuration loaded"), "{logs}");
    assert!(messages.contains(&"shutdown requested"), "{logs}");
    assert!(messages.contains(&"stopped"), "{logs}");
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string())
    );
}
