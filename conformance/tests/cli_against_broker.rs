//! The `tern-conformance` binary itself against this repository's broker: HTTP provisioning,
//! the report files, and the exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use tern_broker::{Broker, BrokerOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_tests_a_broker_with_http_provisioning_and_writes_every_report() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = BrokerOptions::new("127.0.0.1:0".parse().unwrap(), dir.path().to_path_buf());
    options.http = Some("127.0.0.1:0".parse().unwrap());
    let broker = Broker::start(options).await.unwrap();
    let secret = tern_broker::token::load_or_create_secret(dir.path()).unwrap();
    let reports = tempfile::tempdir().unwrap();
    let args = [
        "server".to_string(),
        "--addr".into(),
        broker.local_addr().to_string(),
        "--provision-http".into(),
        format!("http://{}", broker.http_addr().unwrap()),
        "--admin-key".into(),
        tern_broker::admin::admin_key(&secret),
        "--test".into(),
        "framing.*".into(),
        "--test".into(),
        "keepalive.ping-pong@broker".into(),
        "--seed".into(),
        "42".into(),
        "--report-dir".into(),
        reports.path().to_str().unwrap().into(),
    ];
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tern-conformance")).args(&args).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("PASS") && stderr.contains("seed 42"), "progress and seed on the terminal: {stderr}");

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(reports.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(report["schema"], "tern-conformance-report/1");
    assert_eq!(report["verdict"], "CONFORMANT");
    assert_eq!(report["seed"], 42);
    let cases = report["cases"].as_array().unwrap();
    assert!(cases.len() >= 10, "{} cases", cases.len());
    assert!(cases.iter().all(|c| c["outcome"] == "PASS" && c["requirements"][0]["text"].is_string()));
    assert!(report["coverage"]["wire_total"].as_u64().unwrap() > 50);
    let junit = std::fs::read_to_string(reports.path().join("junit.xml")).unwrap();
    assert_eq!(junit.matches("<testcase ").count(), cases.len());
    assert!(junit.contains("failures=\"0\""));
    let summary = std::fs::read_to_string(reports.path().join("summary.md")).unwrap();
    assert!(summary.starts_with("# Tern conformance: CONFORMANT"), "{summary}");

    // A wrong admin key is a harness error (exit 2), not a verdict on the broker.
    let mut bad = args.to_vec();
    bad[6] = "00".into();
    bad[8] = "keepalive.ping-pong@broker".into();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tern-conformance")).args(&bad).output().await.unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(reports.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(report["verdict"], "HARNESS_ERROR");
    assert!(report["cases"][0]["detail"].as_str().unwrap().contains("provisioning"), "{}", report["cases"][0]);
}
