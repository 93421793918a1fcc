//! `tern-bench p2p` against an in-process broker: it connects, loads, and reports figures that
//! describe the run (no threshold on the figures: speed is for BENCHMARKS.md).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use tern_broker::{Broker, BrokerOptions};

#[test]
fn p2p_reports_deliveries_latency_and_cpu() {
    let dir = tempfile::tempdir().unwrap();
    // The broker runs on its own runtime's worker threads while this thread waits on the tool.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let options = BrokerOptions::new("127.0.0.1:0".parse().unwrap(), dir.path().to_path_buf());
    let broker = runtime.block_on(Broker::start(options)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tern-bench"))
        .args(["p2p", "--addr", &broker.local_addr().to_string(), "--data-dir", dir.path().to_str().unwrap()])
        .args(["--pairs", "2", "--window", "2", "--duration", "1", "--broker-pid", &std::process::id().to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["scenario"], "p2p");
    assert!(report["delivered"].as_u64().unwrap() > 0, "{report}");
    assert!(report["latency_us"]["p50"].as_u64().unwrap() > 0, "{report}");
    assert!(report["broker_cpu_us_per_msg"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["generator_cpu_us_per_msg"].as_f64().unwrap() > 0.0, "{report}");
    drop(broker);
}
