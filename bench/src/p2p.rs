//! Scenario `p2p`: N sender/receiver pairs over Tern's native protocol, QoS 2 (exactly once,
//! durable), closed loop (`--window` messages in flight per sender) or a fixed total rate.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use tern_broker::client::{Client, ClientError, ClientOptions, Incoming};

use crate::pairs::{measure, print_result, stamped, Load, Stats};
use crate::{token, Tokens};

/// The `p2p` scenario.
pub(crate) async fn run(
    addr: std::net::SocketAddr,
    cmd: Tokens,
    load: Load,
    broker_pid: Option<u32>,
    prefix: String,
) -> anyhow::Result<()> {
    anyhow::ensure!(load.payload >= 8, "--payload must be at least 8 bytes (the send time)");
    let start = Instant::now();
    let stats = Stats::shared()?;
    eprintln!("connecting {} pairs …", load.pairs);
    let mut senders = Vec::with_capacity(load.pairs);
    for i in 0..load.pairs {
        let (s, r) = (format!("{prefix}-s{i}"), format!("{prefix}-r{i}"));
        let receiver = Client::connect(ClientOptions::new(addr, "d", &token(&cmd, &r, "d")?)).await?;
        let sender = Client::connect(ClientOptions::new(addr, "d", &token(&cmd, &s, "d")?)).await?;
        tokio::task::spawn_local(receive(receiver, stats.clone(), start));
        senders.push((Arc::new(sender), format!("user/{r}")));
    }
    for (i, (sender, topic)) in senders.iter().enumerate() {
        start_sender(sender, topic, &load, i, &stats, start);
    }
    let measured = measure(&stats, load.duration, broker_pid).await;
    print_result(&[serde_json::json!({"scenario": "p2p", "broker": "tern", "qos": 2}), load.fields(), measured]);
    std::process::exit(0)
}

/// Starts sender `i` of `load` publishing to `topic`: closed loop (`window` lanes, each
/// publishing again once its PUBACK is in) or open loop at its share of the fixed rate. PUBACKs
/// are counted as `sends_acked` / `sends_refused` events, and timed from the send.
pub(crate) fn start_sender(
    client: &Arc<Client>,
    topic: &str,
    load: &Load,
    i: usize,
    stats: &Rc<RefCell<Stats>>,
    start: Instant,
) {
    let payload = load.payload;
    let publish = {
        let (client, topic, stats) = (client.clone(), topic.to_owned(), stats.clone());
        move || {
            let (client, topic, stats) = (client.clone(), topic.clone(), stats.clone());
            async move {
                let sent = Instant::now();
                let result = client.publish(&topic, stamped(payload, start)).await;
                let mut stats = stats.borrow_mut();
                match result {
                    Ok(ack) => {
                        stats.acked(sent);
                        stats.count(if ack.reason == 0 { "sends_acked" } else { "sends_refused" });
                    }
                    // Refused (over the broker's rate limit, say): counted, and the lane goes on.
                    Err(ClientError::Rejected(_)) => stats.count("sends_refused"),
                    // The connection is gone: this lane ends.
                    Err(_) => return None,
                }
                Some(())
            }
        }
    };
    match load.schedule(i) {
        None => {
            for _ in 0..load.window.max(1) {
                let publish = publish.clone();
                tokio::task::spawn_local(async move { while publish().await.is_some() {} });
            }
        }
        // Open loop: one PUBLISH every interval, whether or not the earlier ones are
        // acknowledged (each awaits its PUBACK in its own task), the first after the stagger.
        Some((every, first)) => {
            tokio::task::spawn_local(async move {
                let mut next = tokio::time::Instant::now() + first;
                loop {
                    tokio::time::sleep_until(next).await;
                    next += every;
                    tokio::task::spawn_local(publish());
                }
            });
        }
    }
}

async fn receive(mut client: Client, stats: Rc<RefCell<Stats>>, start: Instant) {
    while let Some(event) = client.next().await {
        if let Incoming::Message(m) = event {
            stats.borrow_mut().delivered(&m.payload, start);
        }
    }
}
