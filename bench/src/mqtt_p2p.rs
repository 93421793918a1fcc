//! Scenario `mqtt-p2p`, the same for every MQTT 3.1.1 broker: N sender/receiver pairs, QoS 1 or
//! 2, closed loop (`--window` PUBLISHes awaiting PUBACK per sender) or a fixed total rate. Each
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
use rumqttc::mqttbytes::{v4, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::mqtt_wire::{encode, next_packet};
use crate::pairs::{measure, print_result, stamped, Load, Stats};
use crate::{token, Tokens};

/// Command-line parameters.
#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) target: crate::mqtt_wire::Target,
    #[command(flatten)]
    load: Load,
    /// `telemetry` (live) or `stored` (Tern: durable inbox).
    #[arg(long, default_value = "telemetry", value_parser = ["telemetry", "stored"])]
    topics: String,
    /// QoS of the PUBLISHes and subscriptions: 1 (PUBACK) or 2 (PUBREC, PUBREL, PUBCOMP).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    qos: u8,
    /// Prefix of user and client names.
    #[arg(long, default_value = "mp")]
    prefix: String,
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
    anyhow::ensure!(args.load.payload >= 8, "--payload must be at least 8 bytes (the send time)");
    let start = Instant::now();
    let stats = Stats::shared()?;
    let pw = |user: &str, device: &str| -> anyhow::Result<Option<String>> {
        tokens.as_ref().map(|t| token(t, user, device)).transpose()
    };
    let qos = if args.qos == 2 { QoS::ExactlyOnce } else { QoS::AtLeastOnce };
    eprintln!("connecting {} MQTT pairs …", args.load.pairs);
    let mut senders = Vec::with_capacity(args.load.pairs);
    for i in 0..args.load.pairs {
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
        let mut s = v4::Subscribe::new(filter, qos);
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
    for (i, ((rd, wr, input), topic)) in senders.into_iter().enumerate() {
        let schedule = args.load.schedule(i);
        tokio::task::spawn_local(send(rd, wr, input, topic, qos, args.load.payload, args.load.window, schedule, start));
    }
    let measured = measure(&stats, args.load.duration, args.target.broker_pid).await;
    let own = serde_json::json!({"scenario": "mqtt-p2p", "broker": args.target.broker, "qos": args.qos, "topics": args.topics});
    print_result(&[own, args.load.fields(), measured]);
    std::process::exit(0)
}

/// One sender: keeps `window` PUBLISHes unacknowledged, or (`schedule`: interval and first
/// delay) sends one every interval whatever is acknowledged; batches what is ready into one
/// write. A QoS 1 PUBLISH is done at its PUBACK, a QoS 2 one at its PUBCOMP (after PUBREC and
/// our PUBREL).
#[allow(clippy::too_many_arguments)]
async fn send(
    mut rd: OwnedReadHalf,
    mut wr: OwnedWriteHalf,
    mut input: BytesMut,
    topic: String,
    qos: QoS,
    payload: usize,
    window: usize,
    schedule: Option<(Duration, Duration)>,
    start: Instant,
) -> anyhow::Result<()> {
    let mut in_flight = 0usize;
    let mut pkid: u16 = 0;
    let mut next_at = tokio::time::Instant::now() + schedule.map_or(Duration::ZERO, |(_, first)| first);
    let interval = schedule.map(|(every, _)| every);
    let mut out = BytesMut::new();
    loop {
        let quota = match interval {
            None => window.saturating_sub(in_flight),
            Some(every) => {
                tokio::time::sleep_until(next_at).await;
                next_at += every;
                // Fixed rate: take whatever arrived, without waiting.
                loop {
                    match rd.try_read_buf(&mut input) {
                        Ok(0) => bail!("connection closed"),
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e.into()),
                    }
                }
                1
            }
        };
        for _ in 0..quota {
            pkid = pkid % 65000 + 1;
            let mut p = v4::Publish::new(topic.as_str(), qos, stamped(payload, start));
            p.pkid = pkid;
            encode(v4::Packet::Publish(p), &mut out)?;
            in_flight += 1;
        }
        loop {
            while let Ok(p) = v4::Packet::read(&mut input, 1 << 20) {
                match p {
                    v4::Packet::PubAck(_) | v4::Packet::PubComp(_) => in_flight = in_flight.saturating_sub(1),
                    v4::Packet::PubRec(r) => encode(v4::Packet::PubRel(v4::PubRel::new(r.pkid)), &mut out)?,
                    _ => {}
                }
            }
            if !out.is_empty() {
                wr.write_all(&out).await?;
                out.clear();
            }
            // Closed loop: wait for acknowledgements while the window is full.
            if interval.is_some() || in_flight < window {
                break;
            }
            if rd.read_buf(&mut input).await? == 0 {
                bail!("connection closed");
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
            match p {
                v4::Packet::Publish(p) => {
                    match p.qos {
                        QoS::AtMostOnce => {}
                        QoS::AtLeastOnce => encode(v4::Packet::PubAck(v4::PubAck::new(p.pkid)), &mut out)?,
                        QoS::ExactlyOnce => encode(v4::Packet::PubRec(v4::PubRec::new(p.pkid)), &mut out)?,
                    }
                    stats.borrow_mut().delivered(&p.payload, start);
                }
                v4::Packet::PubRel(r) => encode(v4::Packet::PubComp(v4::PubComp::new(r.pkid)), &mut out)?,
                _ => {}
            }
        }
        if !out.is_empty() {
            wr.write_all(&out).await?;
            out.clear();
        }
    }
}
