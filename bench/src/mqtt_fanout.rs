//! Scenario `mqtt-fanout`, the same for every MQTT 3.1.1 broker: M subscribers of one topic and
//! one publisher sending at a fixed rate (QoS 1 PUBLISH, QoS 0 subscriptions, so every broker
//! delivers at QoS 0). Reports deliveries per second (from the first measured send to the last
//! delivery), delivery latency percentiles, and the time for one message to reach all M
//! (percentiles over the messages that did; those that did not are counted).
//!
//! On Tern the subscribers are M devices of one user and the topic is that user's telemetry
//! (`device/{user}/pub/t`, the live path); the peers see the same topic string.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::BytesMut;
use hdrhistogram::Histogram;
use rumqttc::mqttbytes::{v4, QoS};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;

use crate::mqtt_wire::{encode, next_packet};
use crate::{cpu_ns, token, Tokens};

/// Command-line parameters.
#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) target: crate::mqtt_wire::Target,
    /// Subscribers.
    #[arg(long, default_value_t = 1000)]
    members: usize,
    /// Messages per second from the publisher.
    #[arg(long, default_value_t = 10)]
    rate: u64,
    /// Payload bytes (at least 16: send time and message number).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Measured seconds (after a one-second warm-up).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Prefix of the user and client names.
    #[arg(long, default_value = "mf")]
    prefix: String,
}

#[derive(Default)]
struct Message {
    received: usize,
    last_ns: u64,
}

struct Stats {
    latency_us: Histogram<u64>,
    delivered: u64,
    /// When the last delivery arrived (ns since the start).
    last_delivery_ns: u64,
    measuring: bool,
    /// Per message number sent while measuring: how many subscribers have it, and the longest
    /// send-to-delivery time among them.
    messages: HashMap<u64, Message>,
}

/// A connected, optionally subscribed client.
async fn client(
    args: &Args,
    user: &str,
    id: &str,
    password: Option<String>,
    filter: Option<&str>,
) -> anyhow::Result<(OwnedReadHalf, tokio::net::tcp::OwnedWriteHalf, BytesMut)> {
    let stream = TcpStream::connect(args.target.addr).await?;
    stream.set_nodelay(true)?;
    let (mut rd, mut wr) = stream.into_split();
    let mut c = v4::Connect::new(id);
    c.keep_alive = 300;
    c.login = password.map(|p| v4::Login::new(user, p));
    let mut out = BytesMut::new();
    encode(v4::Packet::Connect(c), &mut out)?;
    if let Some(f) = filter {
        let mut s = v4::Subscribe::new(f, QoS::AtMostOnce);
        s.pkid = 1;
        encode(v4::Packet::Subscribe(s), &mut out)?;
    }
    wr.write_all(&out).await?;
    let mut input = BytesMut::new();
    match next_packet(&mut rd, &mut input).await? {
        v4::Packet::ConnAck(a) if a.code == v4::ConnectReturnCode::Success => {}
        other => bail!("{id}: {other:?}"),
    }
    if filter.is_some() {
        match next_packet(&mut rd, &mut input).await? {
            v4::Packet::SubAck(a)
                if a.return_codes.iter().all(|c| matches!(c, v4::SubscribeReasonCode::Success(_))) => {}
            other => bail!("{id}: SUBACK {other:?}"),
        }
    }
    Ok((rd, wr, input))
}

/// Runs the scenario and prints one JSON line.
pub(crate) async fn run(args: Args, tokens: Option<Tokens>) -> anyhow::Result<()> {
    anyhow::ensure!(args.payload >= 16, "--payload must be at least 16 bytes");
    let user = format!("{}-u", args.prefix);
    let topic = format!("device/{user}/pub/t");
    let pw = |device: &str| -> anyhow::Result<Option<String>> {
        tokens.as_ref().map(|t| token(t, &user, device)).transpose()
    };
    let start = Instant::now();
    let stats = Rc::new(RefCell::new(Stats {
        latency_us: Histogram::new_with_bounds(1, 60_000_000, 3)?,
        delivered: 0,
        last_delivery_ns: 0,
        measuring: false,
        messages: HashMap::new(),
    }));
    eprintln!("connecting {} subscribers …", args.members);
    let mut writers = Vec::with_capacity(args.members);
    for i in 0..args.members {
        let id = format!("{}-m{i}", args.prefix);
        let (rd, wr, input) = client(&args, &user, &id, pw(&id)?, Some(&format!("device/{user}/+/t"))).await?;
        writers.push(wr);
        tokio::task::spawn_local(receive(rd, input, stats.clone(), start));
    }
    let pub_id = "pub".to_string();
    let (mut prd, mut pwr, mut pinput) = client(&args, &user, &pub_id, pw(&pub_id)?, None).await?;
    // PUBACKs are read and dropped.
    tokio::task::spawn_local(async move { while next_packet(&mut prd, &mut pinput).await.is_ok() {} });
    let every = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let total = (args.duration + 1) * args.rate.max(1);
    let measure_from = args.rate.max(1);
    let t_start = tokio::time::Instant::now();
    let pid = args.target.broker_pid.map(|p| p.to_string());
    let (mut broker0, mut self0, mut t0) = (None, None, Instant::now());
    for n in 0..total {
        tokio::time::sleep_until(t_start + every * u32::try_from(n).unwrap_or(u32::MAX)).await;
        if n == measure_from {
            // Warm-up over: measure from here.
            let mut s = stats.borrow_mut();
            s.latency_us.reset();
            s.delivered = 0;
            s.measuring = true;
            (broker0, self0, t0) = (pid.as_deref().and_then(cpu_ns), cpu_ns("self"), Instant::now());
        }
        let mut body = vec![0u8; args.payload];
        let sent_ns = start.elapsed().as_nanos() as u64;
        body.get_mut(..8).unwrap_or_default().copy_from_slice(&sent_ns.to_be_bytes());
        body.get_mut(8..16).unwrap_or_default().copy_from_slice(&n.to_be_bytes());
        if n >= measure_from {
            stats.borrow_mut().messages.insert(n, Message::default());
        }
        let mut p = v4::Publish::new(topic.as_str(), QoS::AtLeastOnce, body);
        p.pkid = u16::try_from(n % 65000 + 1).unwrap_or(1);
        let mut out = BytesMut::new();
        encode(v4::Packet::Publish(p), &mut out)?;
        pwr.write_all(&out).await?;
    }
    // Let the last message arrive, then stop counting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (broker1, self1) = (pid.as_deref().and_then(cpu_ns), cpu_ns("self"));
    let s = stats.borrow();
    // From the first measured send to the last delivery.
    let t0_ns = u64::try_from(t0.duration_since(start).as_nanos()).unwrap_or(0);
    let elapsed = s.last_delivery_ns.saturating_sub(t0_ns) as f64 / 1e9;
    let mut complete_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut incomplete = 0;
    for m in s.messages.values() {
        // `last_ns` is the send-to-delivery time of the last subscriber to get it.
        if m.received == args.members {
            let _ = complete_us.record(m.last_ns / 1000);
        } else {
            incomplete += 1;
        }
    }
    let per_msg = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) if s.delivered > 0 => Some((b - a) as f64 / 1000.0 / s.delivered as f64),
        _ => None,
    };
    let result = serde_json::json!({
        "scenario": "mqtt-fanout", "broker": args.target.broker, "members": args.members, "rate": args.rate,
        "payload": args.payload, "seconds": elapsed, "delivered": s.delivered,
        "deliveries_per_sec": s.delivered as f64 / elapsed,
        "latency_us": { "p50": s.latency_us.value_at_quantile(0.5), "p99": s.latency_us.value_at_quantile(0.99),
                        "max": s.latency_us.max() },
        "all_reached_us": { "p50": complete_us.value_at_quantile(0.5), "p99": complete_us.value_at_quantile(0.99),
                            "max": complete_us.max() },
        "messages": s.messages.len(), "incomplete_messages": incomplete,
        "broker_cpu_us_per_delivery": per_msg(broker0, broker1),
        "generator_cpu_us_per_delivery": per_msg(self0, self1),
    });
    println!("{result}");
    drop(writers);
    std::process::exit(0)
}

async fn receive(
    mut rd: OwnedReadHalf,
    mut input: BytesMut,
    stats: Rc<RefCell<Stats>>,
    start: Instant,
) -> anyhow::Result<()> {
    loop {
        if let v4::Packet::Publish(p) = next_packet(&mut rd, &mut input).await? {
            let (Some(sent), Some(n)) = (p.payload.get(..8), p.payload.get(8..16)) else { continue };
            let sent_ns = u64::from_be_bytes(sent.try_into()?);
            let n = u64::from_be_bytes(n.try_into()?);
            let now_ns = start.elapsed().as_nanos() as u64;
            let took = now_ns.saturating_sub(sent_ns);
            let mut s = stats.borrow_mut();
            if !s.measuring {
                continue;
            }
            s.delivered += 1;
            s.last_delivery_ns = now_ns;
            let _ = s.latency_us.record(took / 1000);
            if let Some(m) = s.messages.get_mut(&n) {
                m.received += 1;
                m.last_ns = m.last_ns.max(took);
            }
        }
    }
}
