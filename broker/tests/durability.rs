//! Durability: what a sender was told is stored survives a broker restart and a SIGKILL, and
//! is delivered exactly once; a restarted broker keeps deduplicating cids.
// Test code: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::payloads;
use tern_broker::client::{Client, ClientOptions, Incoming};
use tern_broker::token::{load_or_create_secret, TokenKey};
use tern_broker::BrokerOptions;

#[tokio::test]
async fn acknowledged_messages_survive_a_graceful_restart_and_cids_stay_deduplicated() {
    let dir = tempfile::tempdir().unwrap();
    let opts = || BrokerOptions::new("127.0.0.1:0".parse().unwrap(), dir.path().to_path_buf());
    let broker = tern_broker::Broker::start(opts()).await.unwrap();
    let token = |b: &tern_broker::Broker, u: &str, d: &str| b.issue_token(u, d, Duration::from_secs(600)).unwrap();
    // Register bob's device first so the messages are after its sync point.
    Client::connect(ClientOptions::new(broker.local_addr(), "laptop", &token(&broker, "bob", "laptop")))
        .await
        .unwrap()
        .close()
        .await;
    let alice = Client::connect(ClientOptions::new(broker.local_addr(), "phone", &token(&broker, "alice", "phone")))
        .await
        .unwrap();
    for i in 0..5 {
        alice.publish("user/bob", format!("before-{i}")).await.unwrap();
    }
    alice.close().await;
    broker.shutdown().await.unwrap();

    let broker = tern_broker::Broker::start(opts()).await.unwrap();
    // A fresh client machine for the same device starts at cid 1; CONNACK's last_cid makes it
    // renumber, so its message is stored, not mistaken for a duplicate.
    let alice = Client::connect(ClientOptions::new(broker.local_addr(), "phone", &token(&broker, "alice", "phone")))
        .await
        .unwrap();
    let ack = alice.publish("user/bob", "after").await.unwrap();
    assert_eq!(ack.seq, 6);
    let mut bob = Client::connect(ClientOptions::new(broker.local_addr(), "laptop", &token(&broker, "bob", "laptop")))
        .await
        .unwrap();
    assert_eq!(payloads(&mut bob, 6).await, ["before-0", "before-1", "before-2", "before-3", "before-4", "after"]);
}

/// A child broker that is killed (SIGKILL) when dropped, even if the test panics.
struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `tern serve` as a child process; its first stdout line names the bound address, and its
/// stdout is drained for as long as it runs.
fn spawn_broker(dir: &std::path::Path, engine: &str) -> (Broker, std::net::SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--mqtt-listen",
            "127.0.0.1:0",
            "--store",
            engine,
            "--data-dir",
        ])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut line).unwrap();
    // Keep draining stdout so the broker never writes into a closed pipe.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let addr = line.split_whitespace().find_map(|w| w.parse().ok()).unwrap_or_else(|| panic!("no address in {line:?}"));
    (Broker(child), addr)
}

#[tokio::test]
async fn sigkill_mid_stream_loses_nothing_acknowledged_and_duplicates_nothing_on_sled() {
    // A watchdog, not a timing assertion: a broken run fails instead of hanging CI.
    tokio::time::timeout(Duration::from_secs(300), sigkill_mid_stream("sled")).await.expect("the test hung");
}

#[tokio::test]
async fn sigkill_mid_stream_loses_nothing_acknowledged_and_duplicates_nothing_on_fjall() {
    tokio::time::timeout(Duration::from_secs(300), sigkill_mid_stream("fjall")).await.expect("the test hung");
}

#[tokio::test]
async fn sigkill_mid_stream_loses_nothing_acknowledged_and_duplicates_nothing_on_redb() {
    tokio::time::timeout(Duration::from_secs(300), sigkill_mid_stream("redb")).await.expect("the test hung");
}

async fn sigkill_mid_stream(engine: &str) {
    let dir = tempfile::tempdir().unwrap();
    let key = TokenKey::new(&load_or_create_secret(dir.path()).unwrap());
    let token = |u: &str, d: &str| key.issue(u, d, u64::MAX / 2).unwrap();
    let (child, addr) = spawn_broker(dir.path(), engine);
    Client::connect(ClientOptions::new(addr, "laptop", &token("bob", "laptop"))).await.unwrap().close().await;
    let alice = Client::connect(ClientOptions::new(addr, "phone", &token("alice", "phone"))).await.unwrap();
    // Publish concurrently so commits are in flight when the broker dies.
    let alice = std::sync::Arc::new(alice);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let alice = alice.clone();
        tasks.push(tokio::spawn(async move {
            alice.publish("user/bob", format!("m{i}")).await.ok().map(|_| format!("m{i}"))
        }));
    }
    // Kill once a first batch is acknowledged (the rest race with the kill).
    let mut acked = HashSet::new();
    let mut pending = tasks.into_iter();
    for task in pending.by_ref().take(50) {
        if let Some(p) = task.await.unwrap() {
            acked.insert(p);
        }
    }
    drop(child); // SIGKILL
    for task in pending {
        task.abort();
        if let Ok(Some(p)) = task.await {
            acked.insert(p);
        }
    }
    assert!(acked.len() >= 50, "only {} acknowledged before the kill", acked.len());
    let (_child, addr) = spawn_broker(dir.path(), engine);
    let mut bob = Client::connect(ClientOptions::new(addr, "laptop", &token("bob", "laptop"))).await.unwrap();
    // Drain what bob gets until a SYNC shows nothing more.
    let mut got = Vec::new();
    bob.send(tern_codec::Frame::Sync(tern_codec::proto::Sync {
        request_id: 0,
        stream: Some(tern_codec::ids::StreamId::Inbox.to_proto()),
        after_seq: 0,
        limit: 500,
    }))
    .await
    .unwrap();
    loop {
        match bob.next().await.unwrap() {
            Incoming::Message(m) => got.push(String::from_utf8_lossy(&m.payload).into_owned()),
            Incoming::Frame(f) if matches!(*f, tern_codec::Frame::SyncDone(ref d) if !d.more) => break,
            _ => {}
        }
    }
    let unique: HashSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "a message was delivered twice: {got:?}");
    for p in &acked {
        assert!(unique.contains(p), "acknowledged {p} was lost");
    }
    for p in &got {
        assert!(p.starts_with('m') && p[1..].parse::<u32>().is_ok_and(|n| n < 200), "garbage {p:?}");
    }
}
