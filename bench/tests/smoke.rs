//! `tern-bench p2p` against an in-process broker: it connects, loads, and reports figures that
//! describe the run (no threshold on the figures: speed is for BENCHMARKS.md).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use tern_broker::{Broker, BrokerOptions};

/// The figures of one `p2p` run (2 pairs, one measured second, closed loop with window 2 unless
/// `load` says otherwise) against an in-process broker started with `options` adjusted by `adjust`.
fn p2p(load: &[&str], adjust: impl FnOnce(&mut BrokerOptions)) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    // The broker runs on its own runtime's worker threads while this thread waits on the tool.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut options = BrokerOptions::new("127.0.0.1:0".parse().unwrap(), dir.path().to_path_buf());
    adjust(&mut options);
    let broker = runtime.block_on(Broker::start(options)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tern-bench"))
        .args(["p2p", "--addr", &broker.local_addr().to_string(), "--data-dir", dir.path().to_str().unwrap()])
        .args(["--pairs", "2", "--window", "2", "--duration", "1", "--broker-pid", &std::process::id().to_string()])
        .args(load)
        .output()
        .unwrap();
    drop(broker);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn p2p_reports_deliveries_latency_and_cpu() {
    let report = p2p(&[], |_| {});
    assert_eq!(report["scenario"], "p2p");
    assert!(report["delivered"].as_u64().unwrap() > 0, "{report}");
    // Every stored message counts once, at its receiver (the sender's own copy does not): the
    // counts differ only by what was in flight at the window's two edges (2 pairs × 2 each).
    let acked = report["events"]["sends_acked_per_sec"].as_f64().unwrap() * report["seconds"].as_f64().unwrap();
    let delivered = report["delivered"].as_f64().unwrap();
    assert!((delivered - acked).abs() <= 8.5, "{report}");
    assert!(report["ack_latency_us"]["p50"].as_u64().unwrap() > 0, "{report}");
    assert!(report["broker_cpu_us_per_msg"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["generator_cpu_us_per_msg"].as_f64().unwrap() > 0.0, "{report}");
}

#[test]
fn p2p_goes_on_through_refusals() {
    // 20 PUBLISHes per second per connection: the warm-up second spends the burst.
    let report = p2p(&[], |o| o.publish_rate = (20.0, 20.0));
    // Refused sends are counted and their senders keep sending: the refill still gets through.
    assert!(report["events"]["sends_refused_per_sec"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["delivered"].as_u64().unwrap() > 0, "{report}");
}

#[test]
fn p2p_at_a_fixed_rate_sends_no_more_than_the_rate() {
    let report = p2p(&["--rate", "100"], |_| {});
    assert_eq!(report["mode"], "fixed-rate");
    let seconds = report["seconds"].as_f64().unwrap();
    // 100 per second offered: the sends in the window cannot exceed that (one more where the
    // window's edges cut between two), however fast or slow the broker was. (Deliveries in the
    // window also count messages sent before it, as many as were in flight when it opened.)
    let sent = report["events"]["sends_per_sec"].as_f64().unwrap() * seconds;
    assert!(sent > 0.0 && sent <= 100.0 * seconds + 1.0, "{report}");
    assert!(report["delivered"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["ack_latency_us"]["p99"].as_u64().unwrap() > 0, "{report}");
}

/// The figures of one `mqtt-fanout` run of `rate` msgs/s for one measured second to `members`.
fn fanout(addr: &str, broker: &str, extra: &[&str], members: u64, rate: u64) -> serde_json::Value {
    let (members, rate) = (members.to_string(), rate.to_string());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tern-bench"))
        .args(["mqtt-fanout", "--addr", addr, "--broker", broker, "--members", &members, "--rate", &rate])
        .args(["--duration", "1"])
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn mqtt_fanout_counts_every_delivery_to_every_subscriber() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut options = BrokerOptions::new("127.0.0.1:0".parse().unwrap(), dir.path().to_path_buf());
    options.mqtt_listen = Some("127.0.0.1:0".parse().unwrap());
    let broker = runtime.block_on(Broker::start(options)).unwrap();
    let addr = broker.mqtt_addr().unwrap().to_string();
    let pid = std::process::id().to_string();
    let report = fanout(&addr, "tern", &["--data-dir", dir.path().to_str().unwrap(), "--broker-pid", &pid], 30, 20);
    // One measured second at 20 msgs/s: 20 messages, each to all 30 subscribers.
    assert_eq!(report["messages"], 20, "{report}");
    assert_eq!(report["incomplete_messages"], 0, "{report}");
    assert_eq!(report["delivered"], 600, "{report}");
    assert!(report["all_reached_us"]["p99"].as_u64().unwrap() > 0, "{report}");
    assert!(report["broker_cpu_us_per_delivery"].as_f64().unwrap() > 0.0, "{report}");
    drop(broker);
}

/// A floor broker on a free port, and its address.
fn floor_broker() -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut floor = std::process::Command::new(env!("CARGO_BIN_EXE_tern-bench"))
        .args(["floor-broker", "--listen", "127.0.0.1:0", "--threads", "2"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(floor.stderr.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().rsplit(' ').next().unwrap().to_string();
    (floor, addr)
}

#[test]
fn floor_broker_forwards_each_publish_to_every_subscriber() {
    let (mut floor, addr) = floor_broker();
    let report = fanout(&addr, "floor", &[], 25, 20);
    floor.kill().unwrap();
    let _ = floor.wait();
    assert_eq!(report["messages"], 20, "{report}");
    assert_eq!(report["incomplete_messages"], 0, "{report}");
    assert_eq!(report["delivered"], 500, "{report}");
}

#[test]
fn mqtt_fanout_in_closed_loop_sends_as_messages_complete() {
    let (mut floor, addr) = floor_broker();
    let report = fanout(&addr, "floor", &["--window", "2"], 25, 1);
    floor.kill().unwrap();
    let _ = floor.wait();
    assert_eq!(report["window"], 2, "{report}");
    assert!(report["rate"].is_null(), "{report}");
    // Far more than the 1 msg/s a rate would send; every one reached all 25.
    let messages = report["messages"].as_u64().unwrap();
    assert!(messages > 10, "{report}");
    assert_eq!(report["incomplete_messages"], 0, "{report}");
    assert_eq!(report["delivered"].as_u64().unwrap(), messages * 25, "{report}");
}

#[test]
fn disk_floor_commits_every_record_at_the_rate() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tern-bench"))
        .args(["disk-floor", "--dir", dir.path().to_str().unwrap(), "--rate", "400", "--duration", "1"])
        .args(["--background-mb-per-sec", "4", "--table-mib", "1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // One measured second at 400/s: every record arrived and was made durable.
    assert_eq!(report["records"], 400, "{report}");
    let groups = report["groups"].as_u64().unwrap();
    assert!((1..=400).contains(&groups), "{report}");
    assert!(report["ack_latency_us"]["p50"].as_u64().unwrap() > 0, "{report}");
    assert!(report["fdatasync_us"]["p50"].as_u64().unwrap() > 0, "{report}");
    // The journal and the background files are removed.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "{report}");
}
