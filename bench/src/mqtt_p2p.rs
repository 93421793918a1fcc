//! Scenario `mqtt-p2p`, the same for every MQTT 3.1.1 broker: N sender/receiver pairs, QoS 1,
//! closed loop (`--window` PUBLISHes awaiting PUBACK per sender) or a fixed total rate. Each
//! receiver subscribes to its own topic; the send time travels in the payload (one monotonic
//! clock), so latency is send-to-delivery.
//!
//! Topics (`--topics`): `telemetry` — sender and receiver are two devices of one user and the
//! topic is `device/{user}/{sender}/t`, Tern's live path (nothing stored); `stored` — the topic
//! is `user/{receiver}`, which Tern stores durably (fsync'd group commit) before PUBACK. Other
//! brokers treat both as plain topics.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::BytesMut;
use hdrhistogram::Histogram;
use rumqttc::mqttbytes::{v4, QoS};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::mqtt_wire::{encode, next_packet};
use crate::{cpu_ns, token, Tokens};

/// Command-line parameters.
#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) target: crate::mqtt_wire::Target,
    /// Sender/receiver pairs.
    #[arg(long, default_value_t = 100)]
    pairs: usize,
    /// Payload bytes (at least 8: the send time).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Closed loop: PUBLISHes awaiting PUBACK per sender.
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// Fixed total rate (messages per second) instead of the closed loop.
    #[arg(long)]
    rate: Option<u64>,
    /// `telemetry` (live) or `stored` (Tern: durable inbox).
    #[arg(long, default_value = "telemetry", value_parser = ["telemetry", "stored"])]
    topics: String,
    /// Measured seconds (after a one-second warm-up).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Prefix of user and client names.
    #[arg(long, default_value = "mp")]
    prefix: String,
}

struct Stats {
    latency_us: Histogram<u64>,
    delivered: u64,
    measuring: bool,
}

async fn connect(
    addr: SocketAddr,
    user: &str,
    client: &str,
    password: Option<String>,
) -> anyhow::Result<(OwnedReadHalf, OwnedWriteHalf, BytesMut)> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut rd, mut wr) = stream.into_split();
    let mut c = v4::Connect::new(client);
    c.keep_alive = 300;
    c.login = password.map(|p| v4::Login::new(user, p));
    let mut out = BytesMut::new();
    encode(v4::Packet::Connect(c), &mut out)?;
    wr.write_all(&out).await?;
    let mut input = BytesMut::new();
    match next_packet(&mut rd, &mut input).await? {
        v4::Packet::ConnAck(a) if a.code == v4::ConnectReturnCode::Success => Ok((rd, wr, input)),
        other => bail!("{client}: {other:?}"),
    }
}

/// Runs the scenario and prints one JSON line.
pub(crate) async fn run(args: Args, tokens: Option<Tokens>) -> anyhow::Result<()> {
    anyhow::ensure!(args.payload >= 8, "--payload must be at least 8 bytes (the send time)");
    let start = Instant::now();
    let stats = Rc::new(RefCell::new(Stats {
        latency_us: Histogram::new_with_bounds(1, 60_000_000, 3)?,
        delivered: 0,
        measuring: false,
    }));
    let pw = |user: &str, device: &str| -> anyhow::Result<Option<String>> {
        tokens.as_ref().map(|t| token(t, user, device)).transpose()
    };
    eprintln!("connecting {} MQTT pairs …", args.pairs);
    let mut senders = Vec::with_capacity(args.pairs);
    for i in 0..args.pairs {
        let (sender, receiver) = (format!("{}-s{i}", args.prefix), format!("{}-r{i}", args.prefix));
        // Telemetry: two devices of one user (the receiver's); stored: two users.
        let (s_user, topic, filter) = match args.topics.as_str() {
            "telemetry" => {
                (receiver.clone(), format!("device/{receiver}/{sender}/t"), format!("device/{receiver}/+/t"))
            }
            _ => (sender.clone(), format!("user/{receiver}"), format!("user/{receiver}")),
        };
        let (mut rd, mut wr, mut input) =
            connect(args.target.addr, &receiver, &receiver, pw(&receiver, &receiver)?).await?;
        let mut s = v4::Subscribe::new(filter, QoS::AtLeastOnce);
        s.pkid = 1;
        let mut out = BytesMut::new();
        encode(v4::Packet::Subscribe(s), &mut out)?;
        wr.write_all(&out).await?;
        match next_packet(&mut rd, &mut input).await? {
            v4::Packet::SubAck(a)
                if a.return_codes.iter().all(|c| matches!(c, v4::SubscribeReasonCode::Success(_))) => {}
            other => bail!("{receiver}: SUBACK {other:?}"),
        }
        tokio::task::spawn_local(receive(rd, wr, input, stats.clone(), start));
        let link = connect(args.target.addr, &s_user, &sender, pw(&s_user, &sender)?).await?;
        senders.push((link, topic));
    }
    let interval = args.rate.map(|r| Duration::from_secs_f64(args.pairs as f64 / r.max(1) as f64));
    for ((rd, wr, input), topic) in senders {
        tokio::task::spawn_local(send(rd, wr, input, topic, args.payload, args.window, interval, start));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = args.target.broker_pid.map(|p| p.to_string());
    let (broker0, self0) = (pid.as_deref().and_then(cpu_ns), cpu_ns("self"));
    {
        let mut s = stats.borrow_mut();
        s.latency_us.reset();
        s.delivered = 0;
        s.measuring = true;
    }
    let t0 = Instant::now();
    for second in 1..=args.duration {
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
        "scenario": "mqtt-p2p", "broker": args.target.broker, "qos": 1, "topics": args.topics, "pairs": args.pairs,
        "payload": args.payload, "mode": if args.rate.is_some() { "fixed-rate" } else { "closed-loop" },
        "window": args.window, "rate": args.rate, "seconds": elapsed, "delivered": s.delivered,
        "msgs_per_sec": s.delivered as f64 / elapsed,
        "latency_us": { "p50": s.latency_us.value_at_quantile(0.5), "p99": s.latency_us.value_at_quantile(0.99),
                        "p999": s.latency_us.value_at_quantile(0.999), "max": s.latency_us.max() },
        "broker_cpu_us_per_msg": per_msg(broker0, broker1),
        "generator_cpu_us_per_msg": per_msg(self0, self1),
    });
    println!("{result}");
    std::process::exit(0)
}

/// One sender: keeps `window` PUBLISHes unacknowledged (or sends at `interval`), batching what
/// is ready into one write.
#[allow(clippy::too_many_arguments)]
async fn send(
    mut rd: OwnedReadHalf,
    mut wr: OwnedWriteHalf,
    mut input: BytesMut,
    topic: String,
    payload: usize,
    window: usize,
    interval: Option<Duration>,
    start: Instant,
) -> anyhow::Result<()> {
    let mut in_flight = 0usize;
    let mut pkid: u16 = 0;
    let mut next_at = tokio::time::Instant::now();
    let mut out = BytesMut::new();
    loop {
        let quota = match interval {
            None => window.saturating_sub(in_flight),
            Some(every) => {
                tokio::time::sleep_until(next_at).await;
                next_at += every;
                1
            }
        };
        for _ in 0..quota {
            pkid = pkid % 65000 + 1;
            let mut body = vec![0u8; payload];
            let sent_ns = start.elapsed().as_nanos() as u64;
            if let Some(stamp) = body.get_mut(..8) {
                stamp.copy_from_slice(&sent_ns.to_be_bytes());
            }
            let mut p = v4::Publish::new(topic.as_str(), QoS::AtLeastOnce, body);
            p.pkid = pkid;
            encode(v4::Packet::Publish(p), &mut out)?;
            in_flight += 1;
        }
        if !out.is_empty() {
            wr.write_all(&out).await?;
            out.clear();
        }
        if interval.is_none() {
            // Closed loop: wait for a PUBACK while the window is full.
            while in_flight >= window {
                if let v4::Packet::PubAck(_) = next_packet(&mut rd, &mut input).await? {
                    in_flight -= 1;
                }
            }
        } else {
            // Fixed rate: take whatever arrived, without waiting.
            loop {
                match rd.try_read_buf(&mut input) {
                    Ok(0) => bail!("connection closed"),
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        while let Ok(p) = v4::Packet::read(&mut input, 1 << 20) {
            if let v4::Packet::PubAck(_) = p {
                in_flight = in_flight.saturating_sub(1);
            }
        }
    }
}

async fn receive(
    mut rd: OwnedReadHalf,
    mut wr: OwnedWriteHalf,
    mut input: BytesMut,
    stats: Rc<RefCell<Stats>>,
    start: Instant,
) -> anyhow::Result<()> {
    let mut out = BytesMut::new();
    loop {
        let p = next_packet(&mut rd, &mut input).await?;
        // Everything already buffered is handled before one batched write of the PUBACKs.
        let mut batch = vec![p];
        while let Ok(p) = v4::Packet::read(&mut input, 1 << 20) {
            batch.push(p);
        }
        for p in batch {
            if let v4::Packet::Publish(p) = p {
                if p.qos != QoS::AtMostOnce {
                    encode(v4::Packet::PubAck(v4::PubAck::new(p.pkid)), &mut out)?;
                }
                let Some(stamp) = p.payload.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) else { continue };
                let now_ns = start.elapsed().as_nanos() as u64;
                let mut s = stats.borrow_mut();
                if s.measuring {
                    s.delivered += 1;
                    let _ = s.latency_us.record(now_ns.saturating_sub(u64::from_be_bytes(stamp)) / 1000);
                }
            }
        }
        if !out.is_empty() {
            wr.write_all(&out).await?;
            out.clear();
        }
    }
}
