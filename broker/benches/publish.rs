//! Durable publish throughput through the whole broker over loopback TCP: N senders, each in a
//! closed loop (one QoS 2 PUBLISH in flight, the next after its PUBACK, i.e. after the store
//! commit and flush), to N receivers. Prints messages/s and PUBACK latency percentiles.
//!
//! `cargo bench -p tern-broker --bench publish`
// Benchmark code: a panic is a broken benchmark.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::time::{Duration, Instant};

use tern_broker::client::{Client, ClientOptions};
use tern_broker::{Broker, BrokerOptions};

async fn run(senders: usize, per_sender: usize) -> (f64, Vec<Duration>) {
    let dir = tempfile::tempdir().unwrap();
    let mut options = BrokerOptions::new("127.0.0.1:0".parse().unwrap(), dir.path().to_path_buf());
    options.engine = std::env::var("TERN_BENCH_STORE").ok().map(|e| e.parse().unwrap());
    let broker = Broker::start(options).await.unwrap();
    let addr = broker.local_addr();
    let mut clients = Vec::new();
    for i in 0..senders {
        let token = broker.issue_token(&format!("s{i}"), "d", Duration::from_secs(600)).unwrap();
        clients.push(Client::connect(ClientOptions::new(addr, "d", &token)).await.unwrap());
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_sender);
            for n in 0..per_sender {
                let t = Instant::now();
                c.publish(&format!("user/r{i}"), vec![b'x'; 64 + n % 8]).await.unwrap();
                lat.push(t.elapsed());
            }
            c.close().await;
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let rate = (senders * per_sender) as f64 / start.elapsed().as_secs_f64();
    broker.shutdown().await.unwrap();
    all.sort();
    (rate, all)
}

fn main() {
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    println!("| senders | messages | msgs/s (median of 3) | PUBACK p50 | p99 |");
    println!("|---:|---:|---:|---:|---:|");
    let counts: Vec<usize> = std::env::var("TERN_BENCH_SENDERS")
        .ok()
        .map_or(vec![1, 10, 100], |v| v.split(',').filter_map(|s| s.parse().ok()).collect());
    for senders in counts {
        let per: usize =
            std::env::var("TERN_BENCH_PER").ok().and_then(|v| v.parse().ok()).unwrap_or(2000 / senders.min(20));
        let mut runs: Vec<(f64, Vec<Duration>)> = (0..3).map(|_| rt.block_on(run(senders, per))).collect();
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (rate, lat) = &runs[1];
        let p = |q: f64| lat[((lat.len() as f64 - 1.0) * q) as usize];
        println!(
            "| {senders} | {} | {rate:.0} | {:.2} ms | {:.2} ms |",
            senders * per,
            p(0.5).as_secs_f64() * 1e3,
            p(0.99).as_secs_f64() * 1e3
        );
    }
}
