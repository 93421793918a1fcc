//! The durable store's commit path alone, without sockets: `pairs` senders each commit one 1:1
//! message per round through the group committer (`Store::commit_durable`, fsync'd group
//! commit), as the broker does for a QoS 2 PUBLISH; every round is one group. Prints messages per
//! second and the wall time per message, which is the committer thread's time (the caller only
//! queues and waits). Run it to compare store changes without the noise of a whole broker and a
//! load generator sharing two cores.
//!
//! `cargo bench -p tern-broker --bench store_commit` (`TERN_BENCH_MESSAGES`, `TERN_BENCH_PAIRS`, `TERN_BENCH_WINDOW`,
//! `TERN_BENCH_STORE` = fjall | sled | redb)
// Benchmark code: a panic is a broken benchmark.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::time::Instant;

use tern_broker::store::{NewMessage, Store};
use tern_codec::proto;

#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// This process's CPU time (user + system) in seconds, where /proc tells it.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces): utime and stime are the 12th and
    // 13th, in clock ticks of 1/100 s on Linux.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Commits `messages` 1:1 messages from `pairs` senders with `window` commits each per round;
/// returns messages per second,
/// CPU µs per message (every thread of the process: caller, committer, fjall's flushes), and
/// then the wall µs per inbox entry of reading every receiver's inbox back in pages of 100 (a
/// range scan and one point read of the message per entry, as a device's sync does), right
/// after the writes, with whatever tables the engine has at that moment.
async fn run(pairs: usize, window: usize, messages: usize) -> (f64, Option<f64>, f64) {
    let dir = tempfile::tempdir().unwrap();
    let engine = std::env::var("TERN_BENCH_STORE").ok().map_or(Ok(Default::default()), |e| e.parse()).unwrap();
    let store = Store::open_with(dir.path(), engine).unwrap();
    let convs: Vec<u64> =
        (0..pairs).map(|i| store.conversation_for_pair(&format!("s{i}"), &format!("r{i}")).unwrap()).collect();
    let (start, cpu) = (Instant::now(), cpu_seconds());
    let mut cid: u64 = 0;
    let mut committed = 0;
    // Two rounds in flight: the next round is queued before the previous one's answers are
    // awaited, so the committer never waits for the caller.
    let mut previous = Vec::new();
    while committed < messages {
        let mut round = Vec::with_capacity(pairs * window);
        for _ in 0..window {
            cid += 1;
            for (i, &conv) in convs.iter().enumerate() {
                let (sender, receiver) = (format!("s{i}"), format!("r{i}"));
                let message = proto::Deliver {
                    topic: format!("user/{receiver}"),
                    sender_user: sender.clone(),
                    sender_device: "d".into(),
                    payload: vec![b'x'; 64].into(),
                    qos: 2,
                    ..Default::default()
                };
                let m = NewMessage { cid, conversation_id: conv, inboxes: vec![receiver, sender.clone()], message };
                round.push(store.commit_durable(&sender, "d", vec![m], 1_700_000_000_000 + cid));
            }
        }
        committed += round.len();
        for p in std::mem::replace(&mut previous, round) {
            p.await.unwrap();
        }
    }
    for p in previous {
        p.await.unwrap();
    }
    let cpu_us = cpu.zip(cpu_seconds()).map(|(a, b)| (b - a) * 1e6 / committed as f64);
    let rate = committed as f64 / start.elapsed().as_secs_f64();
    let (read_start, mut read) = (Instant::now(), 0usize);
    for i in 0..pairs {
        let mut after = 0;
        loop {
            let page = store.inbox_after(&format!("r{i}"), after, 100).unwrap();
            let Some(last) = page.last() else { break };
            after = last.seq;
            read += page.len();
        }
    }
    assert!(read >= committed, "read {read} of {committed} inbox entries");
    (rate, cpu_us, read_start.elapsed().as_secs_f64() * 1e6 / read as f64)
}

fn main() {
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (pairs, window) = (env("TERN_BENCH_PAIRS", 100), env("TERN_BENCH_WINDOW", 8));
    let messages = env("TERN_BENCH_MESSAGES", 300_000);
    let mut runs: Vec<(f64, Option<f64>, f64)> = (0..3).map(|_| rt.block_on(run(pairs, window, messages))).collect();
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut cpu: Vec<f64> = runs.iter().filter_map(|r| r.1).collect();
    cpu.sort_by(f64::total_cmp);
    let cpu = cpu.get(cpu.len() / 2).map_or("not measured here".into(), |c| format!("{c:.1} µs"));
    let mut reads: Vec<f64> = runs.iter().map(|r| r.2).collect();
    reads.sort_by(f64::total_cmp);
    println!(
        "store commit, {pairs} senders × {window}, {messages} messages: {:.0} msgs/s median ({:.0}–{:.0}), \
         {:.2} µs wall and {cpu} CPU per message; inbox read back: {:.2} µs per entry median ({:.2}–{:.2})",
        runs[1].0,
        runs[0].0,
        runs[2].0,
        1e6 / runs[1].0,
        reads[1],
        reads[0],
        reads[2]
    );
}
