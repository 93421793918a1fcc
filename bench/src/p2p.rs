//! Scenario `p2p`: N sender/receiver pairs over Tern's native protocol, QoS 2 (exactly once,
//! durable), closed loop (`--window` messages in flight per sender) or a fixed total rate.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_broker::client::{Client, ClientOptions, Incoming};

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
    let interval = load.interval();
    for (sender, topic) in &senders {
        let lanes = if interval.is_some() { 1 } else { load.window };
        for _ in 0..lanes {
            tokio::task::spawn_local(send(sender.clone(), topic.clone(), load.payload, start, interval));
        }
    }
    let measured = measure(&stats, load.duration, broker_pid).await;
    print_result(&[serde_json::json!({"scenario": "p2p", "broker": "tern", "qos": 2}), load.fields(), measured]);
    std::process::exit(0)
}

async fn send(client: Arc<Client>, topic: String, payload: usize, start: Instant, interval: Option<Duration>) {
    let mut next = tokio::time::Instant::now();
    loop {
        if let Some(every) = interval {
            next += every;
            tokio::time::sleep_until(next).await;
        }
        if client.publish(&topic, stamped(payload, start)).await.is_err() {
            return;
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
