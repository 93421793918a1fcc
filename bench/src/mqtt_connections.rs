//! Scenario `mqtt-connections`, the same for every MQTT 3.1.1 broker (Tern's MQTT listener,
//! Mosquitto, rumqttd):
//!
//! 1. connect K persistent sessions (Clean Session = 0, keep alive 300 s), at most
//!    `--concurrency` handshakes at once: the accept
//!    rate is K over the time from the first connect to the last CONNACK;
//! 2. each subscribes to its own topic `user/{client}` at QoS 1; after `--settle` seconds the
//!    broker's resident memory is read again: (RSS now − RSS before) / K per idle connection;
//! 3. all K drop their links at once (no DISCONNECT); one publisher stores one QoS 1 message for
//!    each of them;
//! 4. all K reconnect at once: the time until every session has resumed (CONNACK with Session
//!    Present) and until every client has its message; then `--settle` more seconds to catch
//!    duplicates. Missing and duplicated messages are counted, not assumed.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::BytesMut;
use rumqttc::mqttbytes::{v4, QoS};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;

use crate::{rss_bytes, token, Tokens};

/// Command-line parameters.
#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) target: crate::mqtt_wire::Target,
    /// Connections.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 500)]
    concurrency: usize,
    /// Seconds to wait before reading memory, and for duplicates at the end.
    #[arg(long, default_value_t = 2)]
    settle: u64,
    /// Prefix of client ids and topics (vary it between runs against one broker).
    #[arg(long, default_value = "mc")]
    prefix: String,
    /// Clean sessions, no subscription and no storm: connection memory and accept rate only.
    #[arg(long)]
    clean: bool,
    /// Source addresses 127.0.0.1 … 127.0.0.N, in turn (like devices on several networks).
    /// With more than one, each socket is bound to its address with IP_BIND_ADDRESS_NO_PORT, so
    /// the kernel picks the port at connect time per 4-tuple; with 1 the kernel picks both.
    #[arg(long, default_value_t = 1)]
    sources: u8,
}

/// One client's link and its unread bytes.
struct Link {
    stream: TcpStream,
    input: BytesMut,
}

impl Link {
    /// Connects, from `source` when given.
    async fn open(addr: SocketAddr, source: Option<SocketAddr>) -> anyhow::Result<Link> {
        let socket = TcpSocket::new_v4()?;
        if let Some(source) = source {
            // Without it, bind() reserves a port for every destination and the search through
            // a nearly full range becomes the generator's bottleneck.
            #[cfg(target_os = "linux")]
            nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::IpBindAddressNoPort, &true)?;
            socket.bind(source)?;
        }
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Link { stream, input: BytesMut::new() })
    }

    async fn send(&mut self, p: v4::Packet) -> anyhow::Result<()> {
        let mut buf = BytesMut::new();
        crate::mqtt_wire::encode(p, &mut buf)?;
        self.stream.write_all(&buf).await?;
        Ok(())
    }

    async fn next(&mut self) -> anyhow::Result<v4::Packet> {
        crate::mqtt_wire::next_packet(&mut self.stream, &mut self.input).await
    }

    /// CONNECT with Clean Session = 0; whether the session was present.
    async fn connect(&mut self, client: &str, password: Option<&str>, clean: bool) -> anyhow::Result<bool> {
        let mut c = v4::Connect::new(client);
        c.clean_session = clean;
        c.keep_alive = 300;
        c.login = password.map(|p| v4::Login::new(client, p));
        self.send(v4::Packet::Connect(c)).await?;
        match self.next().await? {
            v4::Packet::ConnAck(a) if a.code == v4::ConnectReturnCode::Success => Ok(a.session_present),
            other => bail!("{client}: {other:?}"),
        }
    }
}

#[derive(Default)]
struct Tally {
    resumed: usize,
    received: usize,
    duplicates: usize,
    wrong: usize,
    last_resumed: Option<Instant>,
    last_received: Option<Instant>,
}

/// Runs the scenario and prints one JSON line.
pub(crate) async fn run(args: Args, tokens: Option<Tokens>) -> anyhow::Result<()> {
    let k = args.connections;
    let ids: Vec<String> = (0..k).map(|i| format!("{}-c{i}", args.prefix)).collect();
    let passwords: Vec<Option<String>> = match &tokens {
        Some(t) => ids.iter().map(|id| token(t, id, id).map(Some)).collect::<anyhow::Result<_>>()?,
        None => vec![None; k],
    };
    // One source address: the kernel picks the source port (loopback reuses TIME_WAIT ports).
    // Binding explicit addresses without IP_BIND_ADDRESS_NO_PORT made the generator the limit:
    // about 8k connections per second against 21k, against Mosquitto.
    let sources = args.sources.max(1);
    let source = move |_phase: usize, i: usize| {
        (sources > 1).then(|| {
            let host = u8::try_from(i % usize::from(sources)).unwrap_or(0) + 1;
            SocketAddr::from(([127, 0, 0, host], 0))
        })
    };
    let rss0 = args.target.broker_pid.and_then(rss_bytes);
    let gate = Rc::new(Semaphore::new(args.concurrency.max(1)));
    let clean = args.clean;

    // 1. Connect storm.
    eprintln!("connecting {k} MQTT sessions …");
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(k);
    for (i, (id, pw)) in ids.iter().zip(&passwords).enumerate() {
        let (gate, id, pw, src) = (gate.clone(), id.clone(), pw.clone(), source(0, i));
        tasks.push(tokio::task::spawn_local(async move {
            let _permit = gate.acquire().await?;
            let mut link = Link::open(args.target.addr, src).await.with_context(|| format!("{id}: connect"))?;
            link.connect(&id, pw.as_deref(), clean).await?;
            anyhow::Ok(link)
        }));
    }
    let mut links = Vec::with_capacity(k);
    for t in tasks {
        links.push(t.await??);
    }
    let connect_secs = t0.elapsed().as_secs_f64();
    eprintln!("{k} connected in {connect_secs:.3} s; subscribing …");

    if clean {
        tokio::time::sleep(Duration::from_secs(args.settle)).await;
        let rss1 = args.target.broker_pid.and_then(rss_bytes);
        let per_conn = rss0.zip(rss1).map(|(a, b)| b.saturating_sub(a) as f64 / k as f64);
        let result = serde_json::json!({
            "scenario": "mqtt-connections", "broker": args.target.broker, "connections": k, "clean": true,
            "concurrency": args.concurrency, "sources": sources, "connect_seconds": connect_secs,
            "connections_per_sec": k as f64 / connect_secs, "broker_rss_before": rss0, "broker_rss_idle": rss1,
            "rss_bytes_per_connection": per_conn,
        });
        println!("{result}");
        return Ok(());
    }

    // 2. Subscribe, settle, measure memory.
    let mut tasks = Vec::with_capacity(k);
    for (mut link, id) in links.into_iter().zip(&ids) {
        let id = id.clone();
        tasks.push(tokio::task::spawn_local(async move {
            let mut s = v4::Subscribe::new(format!("user/{id}"), QoS::AtLeastOnce);
            s.pkid = 1;
            link.send(v4::Packet::Subscribe(s)).await?;
            match link.next().await? {
                v4::Packet::SubAck(_) => anyhow::Ok(link),
                other => bail!("{id}: {other:?}"),
            }
        }));
    }
    let mut links = Vec::with_capacity(k);
    for t in tasks {
        links.push(t.await??);
    }
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    let rss1 = args.target.broker_pid.and_then(rss_bytes);
    eprintln!("{k} idle sessions; broker RSS {rss0:?} → {rss1:?}");

    // 3. Every link drops; one message is stored for each session.
    drop(links);
    let publisher_id = format!("{}-pub", args.prefix);
    let publisher_pw = match &tokens {
        Some(t) => Some(token(t, &publisher_id, &publisher_id)?),
        None => None,
    };
    let mut publisher = Link::open(args.target.addr, None).await?;
    publisher.connect(&publisher_id, publisher_pw.as_deref(), false).await?;
    let mut acked = 0;
    let window = 100;
    for (n, id) in ids.iter().enumerate() {
        let mut p = v4::Publish::new(format!("user/{id}"), QoS::AtLeastOnce, format!("m-{id}").into_bytes());
        p.pkid = u16::try_from(n % 65000 + 1).unwrap_or(1);
        publisher.send(v4::Packet::Publish(p)).await?;
        while n + 1 - acked > window {
            if let v4::Packet::PubAck(_) = publisher.next().await? {
                acked += 1;
            }
        }
    }
    while acked < k {
        if let v4::Packet::PubAck(_) = publisher.next().await? {
            acked += 1;
        }
    }
    eprintln!("{k} messages stored; reconnect storm …");

    // 4. Reconnect storm.
    let tally = Rc::new(RefCell::new(Tally::default()));
    let t1 = Instant::now();
    let mut tasks = Vec::with_capacity(k);
    for (i, (id, pw)) in ids.iter().zip(&passwords).enumerate() {
        let (gate, id, pw, tally, src) = (gate.clone(), id.clone(), pw.clone(), tally.clone(), source(1, i));
        let hold = Duration::from_secs(args.settle);
        tasks.push(tokio::task::spawn_local(async move {
            let mut link = {
                let _permit = gate.acquire().await?;
                let mut link = Link::open(args.target.addr, src).await.with_context(|| format!("{id}: reconnect"))?;
                let present = link.connect(&id, pw.as_deref(), false).await?;
                let mut t = tally.borrow_mut();
                if present {
                    t.resumed += 1;
                    t.last_resumed = Some(Instant::now());
                }
                link
            };
            let expected = format!("m-{id}");
            let mut seen = 0;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                let wait = if seen == 0 { deadline } else { tokio::time::Instant::now() + hold };
                let Ok(p) = tokio::time::timeout_at(wait, link.next()).await else { break };
                if let v4::Packet::Publish(p) = p? {
                    if p.qos != QoS::AtMostOnce {
                        link.send(v4::Packet::PubAck(v4::PubAck::new(p.pkid))).await?;
                    }
                    let mut t = tally.borrow_mut();
                    seen += 1;
                    if p.payload != expected.as_bytes() {
                        t.wrong += 1;
                    } else if seen == 1 {
                        t.received += 1;
                        t.last_received = Some(Instant::now());
                    } else {
                        t.duplicates += 1;
                    }
                }
            }
            anyhow::Ok(link)
        }));
    }
    let mut links = Vec::with_capacity(k);
    for t in tasks {
        links.push(t.await??);
    }
    let t = tally.borrow();
    let since = |at: Option<Instant>| at.map(|a| a.duration_since(t1).as_secs_f64());
    let per_conn = match (rss0, rss1) {
        (Some(a), Some(b)) => Some((b.saturating_sub(a)) as f64 / k as f64),
        _ => None,
    };
    let result = serde_json::json!({
        "scenario": "mqtt-connections", "broker": args.target.broker, "connections": k,
        "concurrency": args.concurrency, "sources": sources,
        "connect_seconds": connect_secs, "connections_per_sec": k as f64 / connect_secs,
        "broker_rss_before": rss0, "broker_rss_idle": rss1, "rss_bytes_per_connection": per_conn,
        "storm": { "resumed": t.resumed, "resumed_seconds": since(t.last_resumed),
                   "received": t.received, "received_seconds": since(t.last_received),
                   "missing": k - t.received, "duplicates": t.duplicates, "wrong": t.wrong },
    });
    println!("{result}");
    drop(links);
    Ok(())
}
