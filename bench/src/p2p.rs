//! Scenario `p2p`: N sender/receiver pairs over Tern's native protocol, QoS 2 (exactly once,
//! durable), closed loop (`--window` messages in flight per sender) or a fixed total rate.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tern_broker::client::{Client, ClientOptions, Incoming};

use crate::{cpu_ns, token, Tokens};

/// Shared counters of the run (one thread: `Rc<RefCell<…>>`).
struct Stats {
    latency_us: Histogram<u64>,
    delivered: u64,
    measuring: bool,
}

/// The `p2p` scenario.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    addr: std::net::SocketAddr,
    cmd: Tokens,
    pairs: usize,
    payload: usize,
    window: usize,
    rate: Option<u64>,
    duration: u64,
    broker_pid: Option<u32>,
    prefix: String,
) -> anyhow::Result<()> {
    anyhow::ensure!(payload >= 8, "--payload must be at least 8 bytes (the send time)");
    let start = Instant::now();
    let stats = Rc::new(RefCell::new(Stats {
        latency_us: Histogram::new_with_bounds(1, 60_000_000, 3)?,
        delivered: 0,
        measuring: false,
    }));
    eprintln!("connecting {pairs} pairs …");
    let mut senders = Vec::with_capacity(pairs);
    for i in 0..pairs {
        let (s, r) = (format!("{prefix}-s{i}"), format!("{prefix}-r{i}"));
        let receiver = Client::connect(ClientOptions::new(addr, "d", &token(&cmd, &r, "d")?)).await?;
        let sender = Client::connect(ClientOptions::new(addr, "d", &token(&cmd, &s, "d")?)).await?;
        let stats = stats.clone();
        tokio::task::spawn_local(receive(receiver, stats, start));
        senders.push((Arc::new(sender), format!("user/{r}")));
    }
    let per_sender_interval = rate.map(|r| Duration::from_secs_f64(pairs as f64 / r.max(1) as f64));
    for (sender, topic) in &senders {
        let lanes = if per_sender_interval.is_some() { 1 } else { window };
        for _ in 0..lanes {
            tokio::task::spawn_local(send(sender.clone(), topic.clone(), payload, start, per_sender_interval));
        }
    }
    // Warm-up, then the measured window.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = broker_pid.map(|p| p.to_string());
    let (broker0, self0) = (pid.as_deref().and_then(cpu_ns), cpu_ns("self"));
    {
        let mut s = stats.borrow_mut();
        s.latency_us.reset();
        s.delivered = 0;
        s.measuring = true;
    }
    let t0 = Instant::now();
    for second in 1..=duration {
        tokio::time::sleep_until((t0 + Duration::from_secs(second)).into()).await;
        eprintln!("{second:>3} s: {} delivered", stats.borrow().delivered);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let (broker1, self1) = (pid.as_deref().and_then(cpu_ns), cpu_ns("self"));
    let s = stats.borrow();
    let per_msg = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) if s.delivered > 0 => Some((b - a) as f64 / 1000.0 / s.delivered as f64),
        _ => None,
    };
    let result = serde_json::json!({
        "scenario": "p2p", "broker": "tern", "qos": 2, "pairs": pairs, "payload": payload,
        "mode": if rate.is_some() { "fixed-rate" } else { "closed-loop" }, "window": window, "rate": rate,
        "seconds": elapsed, "delivered": s.delivered, "msgs_per_sec": s.delivered as f64 / elapsed,
        "latency_us": { "p50": s.latency_us.value_at_quantile(0.5), "p99": s.latency_us.value_at_quantile(0.99),
                        "p999": s.latency_us.value_at_quantile(0.999), "max": s.latency_us.max() },
        "broker_cpu_us_per_msg": per_msg(broker0, broker1),
        "generator_cpu_us_per_msg": per_msg(self0, self1),
    });
    println!("{result}");
    std::process::exit(0)
}

async fn send(client: Arc<Client>, topic: String, payload: usize, start: Instant, interval: Option<Duration>) {
    let mut next = tokio::time::Instant::now();
    loop {
        if let Some(every) = interval {
            next += every;
            tokio::time::sleep_until(next).await;
        }
        let mut body = vec![0u8; payload];
        let sent_ns = start.elapsed().as_nanos() as u64;
        if let Some(stamp) = body.get_mut(..8) {
            stamp.copy_from_slice(&sent_ns.to_be_bytes());
        }
        if client.publish(&topic, body).await.is_err() {
            return;
        }
    }
}

async fn receive(mut client: Client, stats: Rc<RefCell<Stats>>, start: Instant) {
    while let Some(event) = client.next().await {
        if let Incoming::Message(m) = event {
            let Some(stamp) = m.payload.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) else { continue };
            let sent_ns = u64::from_be_bytes(stamp);
            let now_ns = start.elapsed().as_nanos() as u64;
            let mut s = stats.borrow_mut();
            if s.measuring {
                s.delivered += 1;
                let _ = s.latency_us.record(now_ns.saturating_sub(sent_ns) / 1000);
            }
        }
    }
}
