//! `floor-broker`: the least a broker can do for the fan-out scenario, to show what this machine
//! allows. It accepts MQTT 3.1.1 connections (any CONNECT is accepted, every SUBSCRIBE granted
//! at QoS 0, no topic matching, a subscriber's socket not read after its SUBSCRIBE), and forwards each PUBLISH it receives, encoded once, to every
//! subscribed connection: one `write` per subscriber, the subscribers split over `--threads`
//! writer threads. No sessions, no queues, no routing, nothing stored.
//!
//! Run `mqtt-fanout` against it like against any broker. Its time for one message to reach all
//! M subscribers is the floor that the kernel's loopback TCP path (one send and one receive per
//! subscriber) and the generator set on this machine: no broker that writes each subscriber's
//! socket separately can beat it here.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::mpsc;

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::{v4, QoS};

use crate::mqtt_wire::{encode, read_available, take_packet};

/// Command-line parameters.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Where to listen for MQTT connections.
    #[arg(long, default_value = "127.0.0.1:1883")]
    listen: SocketAddr,
    /// Writer threads; each writes to its share of the subscribers.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// What the reading thread hands a writer thread, in order.
enum ToWriter {
    /// A new subscriber's socket.
    Subscriber(TcpStream),
    /// A message, already encoded, for every subscriber.
    Publish(Bytes),
}

struct Connection {
    socket: TcpStream,
    input: BytesMut,
}

const LISTENER: mio::Token = mio::Token(usize::MAX);

/// Serves until killed.
pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.threads >= 1, "--threads must be at least 1");
    let listener = TcpListener::bind(args.listen)?;
    listener.set_nonblocking(true)?;
    let writers: Vec<mpsc::Sender<ToWriter>> = (0..args.threads)
        .map(|i| {
            let (tx, rx) = mpsc::channel();
            std::thread::Builder::new().name(format!("floor-writer-{i}")).spawn(move || write_loop(&rx))?;
            Ok(tx)
        })
        .collect::<std::io::Result<_>>()?;
    eprintln!("floor-broker listening on {}", listener.local_addr()?);

    let mut poll = mio::Poll::new()?;
    let mut events = mio::Events::with_capacity(1024);
    poll.registry().register(&mut mio::unix::SourceFd(&listener.as_raw_fd()), LISTENER, mio::Interest::READABLE)?;
    let mut connections: Vec<Option<Connection>> = Vec::new();
    let mut scratch = vec![0u8; 64 * 1024];
    let mut subscribers = 0usize;
    loop {
        poll.poll(&mut events, None)?;
        for event in events.iter() {
            if event.token() == LISTENER {
                accept_all(&listener, &poll, &mut connections)?;
                continue;
            }
            let id = event.token().0;
            let Some(conn) = connections.get_mut(id).and_then(Option::as_mut) else { continue };
            // A read error ends the connection like a close does.
            let closed = read_available(&mut conn.socket, &mut conn.input, &mut scratch).unwrap_or(true);
            let mut out = BytesMut::new();
            let mut keep = !closed;
            let mut subscribed = false;
            while keep {
                let packet = match take_packet(&mut conn.input) {
                    Ok(Some(p)) => p,
                    Ok(None) => break,
                    Err(_) => {
                        keep = false;
                        break;
                    }
                };
                match packet {
                    v4::Packet::Connect(_) => {
                        encode(v4::Packet::ConnAck(v4::ConnAck::new(v4::ConnectReturnCode::Success, false)), &mut out)?;
                    }
                    v4::Packet::Subscribe(s) => {
                        let codes = s.filters.iter().map(|_| v4::SubscribeReasonCode::Success(QoS::AtMostOnce));
                        encode(v4::Packet::SubAck(v4::SubAck::new(s.pkid, codes.collect())), &mut out)?;
                        subscribed = true;
                        break;
                    }
                    v4::Packet::Publish(p) => {
                        if p.qos == QoS::AtLeastOnce {
                            encode(v4::Packet::PubAck(v4::PubAck::new(p.pkid)), &mut out)?;
                        }
                        let mut forward = BytesMut::new();
                        encode(
                            v4::Packet::Publish(v4::Publish::new(p.topic, QoS::AtMostOnce, p.payload)),
                            &mut forward,
                        )?;
                        let forward = forward.freeze();
                        for w in &writers {
                            w.send(ToWriter::Publish(forward.clone()))?;
                        }
                    }
                    v4::Packet::PingReq => encode(v4::Packet::PingResp, &mut out)?,
                    v4::Packet::Disconnect => keep = false,
                    _ => {}
                }
            }
            if !out.is_empty() && write_fully(&mut conn.socket, &out).is_err() {
                keep = false;
            }
            if !keep || subscribed {
                let _ = poll.registry().deregister(&mut mio::unix::SourceFd(&conn.socket.as_raw_fd()));
                let conn = connections.get_mut(id).and_then(Option::take);
                // A subscriber's socket moves to a writer thread and is not read again (the
                // scenario's keep alive outlasts the run); its writer drops it when a write fails.
                if let (true, Some(conn)) = (keep, conn) {
                    if let Some(w) = writers.get(subscribers % writers.len()) {
                        w.send(ToWriter::Subscriber(conn.socket))?;
                    }
                    subscribers += 1;
                }
            }
        }
    }
}

fn accept_all(
    listener: &TcpListener,
    poll: &mio::Poll,
    connections: &mut Vec<Option<Connection>>,
) -> anyhow::Result<()> {
    loop {
        let socket = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // Out of descriptors and the like: this connection is lost, the next may not be.
            Err(e) => {
                eprintln!("accept: {e}");
                return Ok(());
            }
        };
        socket.set_nonblocking(true)?;
        socket.set_nodelay(true)?;
        let id = connections.len();
        poll.registry().register(
            &mut mio::unix::SourceFd(&socket.as_raw_fd()),
            mio::Token(id),
            mio::Interest::READABLE,
        )?;
        connections.push(Some(Connection { socket, input: BytesMut::new() }));
    }
}

/// A writer thread: its subscribers get every message in order, one write each.
fn write_loop(rx: &mpsc::Receiver<ToWriter>) {
    let mut subscribers: Vec<TcpStream> = Vec::new();
    while let Ok(m) = rx.recv() {
        match m {
            ToWriter::Subscriber(s) => subscribers.push(s),
            ToWriter::Publish(bytes) => subscribers.retain_mut(|s| write_fully(s, &bytes).is_ok()),
        }
    }
}

/// Writes all of `bytes` to a non-blocking socket. The sockets here carry a few small packets
/// and their readers keep up, so a full send buffer is rare: it is waited out by yielding.
fn write_fully(socket: &mut TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        match socket.write(bytes) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::yield_now(),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
