//! Scenario `mqtt-fanout`, the same for every MQTT 3.1.1 broker: M subscribers of one topic and
//! one publisher sending at a fixed rate, or closed loop with `--window` messages on their way
//! at most (QoS 1 PUBLISH, QoS 0 subscriptions, so every broker delivers at QoS 0). Reports deliveries per second (from the first measured send to the last
//! delivery), delivery latency percentiles, and the time for one message to reach all M
//! (percentiles over the messages that did; those that did not are counted).
//!
//! On Tern the subscribers are M devices of one user and the topic is that user's telemetry
//! (`device/{user}/pub/t`, the live path); the peers see the same topic string.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::BytesMut;
use hdrhistogram::Histogram;
use rumqttc::mqttbytes::{v4, QoS};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::mqtt_wire::{encode, next_packet, read_available, take_packet, write_available};
use crate::{token, CpuSample, Tokens};

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
    /// Closed loop instead of a rate: the publisher sends whenever fewer than this many of its
    /// messages are still on their way to some subscriber (saturation).
    #[arg(long)]
    window: Option<usize>,
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
    /// Per message number sent while measuring: how many subscribers have it, and the longest
    /// send-to-delivery time among them.
    messages: HashMap<u64, Message>,
}

impl Stats {
    /// A PUBLISH reached a subscriber: counted if it was sent while measuring. Returns its
    /// message number.
    fn delivered(&mut self, p: &v4::Publish, now_ns: u64) -> Option<u64> {
        let (Some(sent), Some(n)) = (p.payload.get(..8), p.payload.get(8..16)) else { return None };
        let sent_ns = u64::from_be_bytes(sent.try_into().unwrap_or_default());
        let n = u64::from_be_bytes(n.try_into().unwrap_or_default());
        // Only messages sent while measuring count (a warm-up message may arrive after it).
        let Some(m) = self.messages.get_mut(&n) else { return Some(n) };
        let took = now_ns.saturating_sub(sent_ns);
        m.received += 1;
        m.last_ns = m.last_ns.max(took);
        self.delivered += 1;
        self.last_delivery_ns = now_ns;
        let _ = self.latency_us.record(took / 1000);
        Some(n)
    }
}

/// How long a closed-loop message may take to reach every subscriber before its slot is freed
/// (it then counts as incomplete).
const SLOT_TIMEOUT: Duration = Duration::from_secs(1);

/// A connected, optionally subscribed client (its socket and what it read past the acks).
async fn client(
    args: &Args,
    user: &str,
    id: &str,
    password: Option<String>,
    filter: Option<&str>,
) -> anyhow::Result<(TcpStream, BytesMut)> {
    let mut stream = TcpStream::connect(args.target.addr).await?;
    stream.set_nodelay(true)?;
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
    stream.write_all(&out).await?;
    let mut input = BytesMut::new();
    match next_packet(&mut stream, &mut input).await? {
        v4::Packet::ConnAck(a) if a.code == v4::ConnectReturnCode::Success => {}
        other => bail!("{id}: {other:?}"),
    }
    if filter.is_some() {
        match next_packet(&mut stream, &mut input).await? {
            v4::Packet::SubAck(a)
                if a.return_codes.iter().all(|c| matches!(c, v4::SubscribeReasonCode::Success(_))) => {}
            other => bail!("{id}: SUBACK {other:?}"),
        }
    }
    Ok((stream, input))
}

/// Runs the scenario and prints one JSON line.
pub(crate) async fn run(args: Args, tokens: Option<Tokens>) -> anyhow::Result<()> {
    anyhow::ensure!(args.payload >= 16, "--payload must be at least 16 bytes");
    let user = format!("{}-u", args.prefix);
    let pw = |device: &str| -> anyhow::Result<Option<String>> {
        tokens.as_ref().map(|t| token(t, &user, device)).transpose()
    };
    eprintln!("connecting {} subscribers …", args.members);
    let mut subscribers = Vec::with_capacity(args.members);
    for i in 0..args.members {
        let id = format!("{}-m{i}", args.prefix);
        subscribers.push(client(&args, &user, &id, pw(&id)?, Some(&format!("device/{user}/+/t"))).await?);
    }
    let pub_id = "pub".to_string();
    let publisher = client(&args, &user, &pub_id, pw(&pub_id)?, None).await?;
    // From here on one poll loop on this thread does all the I/O: a task per subscriber cost
    // the generator as much CPU per delivery as the broker spent on it.
    let into_mio = |(s, input): (TcpStream, BytesMut)| {
        Ok::<_, anyhow::Error>((mio::net::TcpStream::from_std(s.into_std()?), input))
    };
    let subscribers = subscribers.into_iter().map(into_mio).collect::<anyhow::Result<Vec<_>>>()?;
    let result = measure(&args, &user, subscribers, into_mio(publisher)?)?;
    println!("{result}");
    std::process::exit(0)
}

/// The measured phase: sends at the rate, reads every subscriber, returns the result line.
fn measure(
    args: &Args,
    user: &str,
    mut subscribers: Vec<(mio::net::TcpStream, BytesMut)>,
    (mut publisher, _): (mio::net::TcpStream, BytesMut),
) -> anyhow::Result<serde_json::Value> {
    let topic = format!("device/{user}/pub/t");
    let start = Instant::now();
    let mut stats = Stats {
        latency_us: Histogram::new_with_bounds(1, 60_000_000, 3)?,
        delivered: 0,
        last_delivery_ns: 0,
        messages: HashMap::new(),
    };
    let mut poll = mio::Poll::new()?;
    let mut events = mio::Events::with_capacity(1024);
    for (i, (s, _)) in subscribers.iter_mut().enumerate() {
        poll.registry().register(s, mio::Token(i), mio::Interest::READABLE)?;
    }
    let pub_token = mio::Token(subscribers.len());
    poll.registry().register(&mut publisher, pub_token, mio::Interest::READABLE | mio::Interest::WRITABLE)?;
    let mut scratch = vec![0u8; 64 * 1024];
    let (mut pub_in, mut pub_out) = (BytesMut::new(), BytesMut::new());

    let every = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let measure_at = start + Duration::from_secs(1);
    let send_until = measure_at + Duration::from_secs(args.duration);
    // Closed loop: messages not yet at every subscriber, with when they were sent.
    let mut in_flight: HashMap<u64, (Instant, usize)> = HashMap::new();
    let pid = args.target.broker_pid.map(|p| p.to_string());
    let (mut broker0, mut self0, mut t0) = (None, None, start);
    let mut measuring = false;
    let mut n = 0u64;
    // Sending ends at `send_until`; reading goes on for a second to let the last arrive.
    let mut end = None;
    loop {
        let now = Instant::now();
        let next_send = match args.window {
            _ if end.is_some() => None,
            None => Some(start + every * u32::try_from(n).unwrap_or(u32::MAX)),
            Some(window) => {
                // A message some subscriber never gets (a broker that drops) frees its slot.
                in_flight.retain(|_, (sent, _)| now.duration_since(*sent) < SLOT_TIMEOUT);
                (in_flight.len() < window.max(1)).then_some(now)
            }
        };
        if let Some(due) = next_send.filter(|due| *due <= now) {
            if due >= send_until {
                end = Some(now + Duration::from_secs(1));
                continue;
            }
            if !measuring && due >= measure_at {
                // Warm-up over: measure from here.
                measuring = true;
                (broker0, self0, t0) = (pid.as_deref().and_then(CpuSample::of), CpuSample::of("self"), now);
            }
            let mut body = vec![0u8; args.payload];
            let sent_ns = start.elapsed().as_nanos() as u64;
            body.get_mut(..8).unwrap_or_default().copy_from_slice(&sent_ns.to_be_bytes());
            body.get_mut(8..16).unwrap_or_default().copy_from_slice(&n.to_be_bytes());
            if measuring {
                stats.messages.insert(n, Message::default());
            }
            if args.window.is_some() {
                in_flight.insert(n, (now, 0));
            }
            let mut p = v4::Publish::new(topic.as_str(), QoS::AtLeastOnce, body);
            p.pkid = u16::try_from(n % 65000 + 1).unwrap_or(1);
            encode(v4::Packet::Publish(p), &mut pub_out)?;
            write_available(&mut publisher, &mut pub_out).context("writing to the publisher's connection")?;
            n += 1;
            continue;
        }
        if end.is_some_and(|e| e <= now) {
            break;
        }
        let oldest_slot = in_flight.values().map(|(sent, _)| *sent + SLOT_TIMEOUT).min();
        let wake_at = [next_send, end, oldest_slot, Some(send_until)].into_iter().flatten().min().unwrap_or(now);
        poll.poll(&mut events, Some(wake_at.saturating_duration_since(now)))?;
        for event in events.iter() {
            if event.token() == pub_token {
                // PUBACKs are read and dropped; a full send buffer is flushed when it drains.
                if read_available(&mut publisher, &mut pub_in, &mut scratch)? {
                    bail!("the broker closed the publisher's connection");
                }
                while take_packet(&mut pub_in)?.is_some() {}
                write_available(&mut publisher, &mut pub_out).context("writing to the publisher's connection")?;
                continue;
            }
            let Some((socket, input)) = subscribers.get_mut(event.token().0) else { continue };
            if read_available(socket, input, &mut scratch)? {
                bail!("the broker closed subscriber {}'s connection", event.token().0);
            }
            let now_ns = start.elapsed().as_nanos() as u64;
            while let Some(p) = take_packet(input)? {
                let v4::Packet::Publish(p) = p else { continue };
                let Some(n) = stats.delivered(&p, now_ns) else { continue };
                if let Some((_, received)) = in_flight.get_mut(&n) {
                    *received += 1;
                    if *received == args.members {
                        in_flight.remove(&n);
                    }
                }
            }
        }
    }
    let (broker1, self1) = (pid.as_deref().and_then(CpuSample::of), CpuSample::of("self"));
    let s = &stats;
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
    let per_msg = |a: &Option<CpuSample>, b: &Option<CpuSample>| CpuSample::us_per(a.as_ref(), b.as_ref(), s.delivered);
    Ok(serde_json::json!({
        "scenario": "mqtt-fanout", "broker": args.target.broker, "members": args.members,
        "rate": if args.window.is_some() { None } else { Some(args.rate) }, "window": args.window,
        "payload": args.payload, "seconds": elapsed, "delivered": s.delivered,
        "deliveries_per_sec": s.delivered as f64 / elapsed,
        "latency_us": { "p50": s.latency_us.value_at_quantile(0.5), "p99": s.latency_us.value_at_quantile(0.99),
                        "max": s.latency_us.max() },
        "all_reached_us": { "p50": complete_us.value_at_quantile(0.5), "p99": complete_us.value_at_quantile(0.99),
                            "max": complete_us.max() },
        "messages": s.messages.len(), "incomplete_messages": incomplete,
        "broker_cpu_us_per_delivery": per_msg(&broker0, &broker1),
        "generator_cpu_us_per_delivery": per_msg(&self0, &self1),
    }))
}
