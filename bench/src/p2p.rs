//! Scenario `p2p`: N sender/receiver pairs over Tern's native protocol, QoS 2 (exactly once,
//! durable), closed loop (`--window` messages in flight per sender) or a fixed total rate.
//!
//! One poll loop on this thread does all the I/O. Each connection is the codec's sans-IO client
//! machine (`ClientSession`) beside a non-blocking socket: what the socket holds is fed to the
//! machine, and what the machine has to send waits in the connection's buffer until the end of
//! the loop's turn, so a turn that handles many events writes once per connection. (With a
//! tokio task and channels per client, the generator spent 41–45 µs of CPU per message at
//! 10,000/s, taking from the two cores it shares with the broker.)

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::{Bytes, BytesMut};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tern_codec::session::{ClientConfig, ClientEvent, ClientSession};
use tern_codec::ReasonCode;

use crate::mqtt_wire::{read_available, write_available};
use crate::pairs::{print_result, stamped, Load, Stats, Window};
use crate::{token, Tokens};

/// How long the pairs may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The `p2p` scenario.
pub(crate) fn run(
    addr: SocketAddr,
    cmd: Tokens,
    load: Load,
    broker_pid: Option<u32>,
    prefix: String,
) -> anyhow::Result<()> {
    anyhow::ensure!(load.payload >= 8, "--payload must be at least 8 bytes (the send time)");
    anyhow::ensure!(load.pairs >= 1, "--pairs must be at least 1");
    eprintln!("connecting {} pairs …", load.pairs);
    let mut conns = Vec::with_capacity(2 * load.pairs);
    for i in 0..load.pairs {
        let (s, r) = (format!("{prefix}-s{i}"), format!("{prefix}-r{i}"));
        // Receiver 2i, sender 2i + 1.
        conns.push(Conn::open(addr, &token(&cmd, &r, "d")?, None)?);
        conns.push(Conn::open(addr, &token(&cmd, &s, "d")?, Some(format!("user/{r}")))?);
    }
    let mut pairs = Pairs::new(conns, load, Stats::new()?)?;
    pairs.wait_connected()?;
    let measured = pairs.load(broker_pid)?;
    print_result(&[serde_json::json!({"scenario": "p2p", "broker": "tern", "qos": 2}), pairs.load.fields(), measured]);
    std::process::exit(0)
}

/// One client: its machine, its socket, and what waits to be written.
struct Conn {
    socket: mio::net::TcpStream,
    session: ClientSession,
    out: BytesMut,
    /// A sender's topic (its receiver's inbox).
    topic: Option<String>,
    /// A sender's unacknowledged cids with their send times.
    sent: HashMap<u64, Instant>,
    connected: bool,
}

impl Conn {
    /// Connects (blocking) and queues CONNECT.
    fn open(addr: SocketAddr, token: &str, topic: Option<String>) -> anyhow::Result<Conn> {
        let socket = std::net::TcpStream::connect(addr)?;
        socket.set_nodelay(true)?;
        socket.set_nonblocking(true)?;
        let seed = token.bytes().fold(0u64, |h, b| h.rotate_left(5) ^ u64::from(b));
        let config = ClientConfig::new("d", Bytes::copy_from_slice(token.as_bytes()));
        let mut session = ClientSession::new(config, Box::new(ChaCha8Rng::seed_from_u64(seed)));
        session.connect(Instant::now()).map_err(|e| anyhow!("{e}"))?;
        let mut conn = Conn {
            socket: mio::net::TcpStream::from_std(socket),
            session,
            out: BytesMut::new(),
            topic,
            sent: HashMap::new(),
            connected: false,
        };
        conn.take_transmit();
        Ok(conn)
    }

    /// Moves what the machine has to send into the write buffer.
    fn take_transmit(&mut self) {
        while let Some(bytes) = self.session.poll_transmit() {
            self.out.extend_from_slice(&bytes);
        }
    }
}

/// The pairs and the loop that drives them.
struct Pairs {
    conns: Vec<Conn>,
    load: Load,
    stats: Stats,
    poll: mio::Poll,
    events: mio::Events,
    /// Connections with bytes to write at the end of this turn.
    dirty: Vec<usize>,
    scratch: Vec<u8>,
    /// What one connection's socket held, on its way to its machine.
    input: BytesMut,
    /// The send times in payloads are nanoseconds since this instant.
    start: Instant,
    /// Closed loop: senders publish again as their PUBACKs come in.
    refill: bool,
}

impl Pairs {
    fn new(mut conns: Vec<Conn>, load: Load, stats: Stats) -> anyhow::Result<Pairs> {
        let poll = mio::Poll::new()?;
        for (i, c) in conns.iter_mut().enumerate() {
            poll.registry().register(
                &mut c.socket,
                mio::Token(i),
                mio::Interest::READABLE | mio::Interest::WRITABLE,
            )?;
        }
        let dirty = (0..conns.len()).collect();
        Ok(Pairs {
            conns,
            load,
            stats,
            poll,
            events: mio::Events::with_capacity(1024),
            dirty,
            scratch: vec![0u8; 64 * 1024],
            input: BytesMut::new(),
            start: Instant::now(),
            refill: false,
        })
    }

    /// Turns the loop until every session is up.
    fn wait_connected(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        while !self.conns.iter().all(|c| c.connected) {
            if Instant::now() >= deadline {
                bail!("the pairs did not connect within {CONNECT_TIMEOUT:?}");
            }
            self.turn(deadline)?;
        }
        Ok(())
    }

    /// One second of warm-up, then the measured window, with progress on stderr.
    fn load(&mut self, broker_pid: Option<u32>) -> anyhow::Result<serde_json::Value> {
        let origin = Instant::now();
        let every = self.load.rate.map(|r| 1.0 / r.max(1) as f64);
        if every.is_none() {
            self.refill = true;
            for i in 0..self.load.pairs {
                for _ in 0..self.load.window.max(1) {
                    self.publish(2 * i + 1, origin)?;
                }
            }
        }
        // Once a second: the machines' timers, then the window opens (after the warm-up) or
        // progress is shown.
        let mut next_tick = origin + Duration::from_secs(1);
        let (mut window, mut second, mut n) = (None::<Window>, 0u64, 0u64);
        loop {
            let now = Instant::now();
            // Fixed rate: send n goes out at origin + n / rate, from sender n mod pairs (each
            // sender at its share of the rate, the senders evenly staggered).
            let next_send = every.map(|e| origin + Duration::from_secs_f64(e * n as f64));
            if next_send.is_some_and(|due| due <= now) {
                let sender = 2 * (n % self.load.pairs.max(1) as u64) as usize + 1;
                self.publish(sender, now)?;
                n += 1;
                continue;
            }
            if now >= next_tick {
                next_tick += Duration::from_secs(1);
                self.timers(now);
                if window.is_none() {
                    window = Some(Window::open(&mut self.stats, broker_pid));
                } else {
                    second += 1;
                    eprintln!("{}", self.stats.progress(second));
                    if second >= self.load.duration {
                        break;
                    }
                }
            }
            self.turn(next_send.map_or(next_tick, |s| s.min(next_tick)))?;
        }
        let window = window.ok_or_else(|| anyhow!("the measured window never opened"))?;
        Ok(window.close(&self.stats))
    }

    /// Runs the machines' due timers (keepalive, retransmission, periodic sync).
    fn timers(&mut self, now: Instant) {
        for (i, c) in self.conns.iter_mut().enumerate() {
            if c.session.poll_timeout().is_some_and(|t| t <= now) {
                c.session.handle_timeout(now);
                c.take_transmit();
                self.dirty.push(i);
            }
        }
    }

    /// Publishes one message from sender `i` at `now`.
    fn publish(&mut self, i: usize, now: Instant) -> anyhow::Result<()> {
        let payload = Bytes::from(stamped(self.load.payload, self.start));
        let Some(c) = self.conns.get_mut(i) else { bail!("no connection {i}") };
        let Some(topic) = &c.topic else { bail!("connection {i} is not a sender") };
        if let Some(cid) = c.session.publish(now, topic, payload, 2).map_err(|e| anyhow!("{e}"))? {
            c.sent.insert(cid.0, now);
        }
        self.stats.count("sends");
        c.take_transmit();
        self.dirty.push(i);
        Ok(())
    }

    /// Writes what is waiting, waits for the sockets until `wake_at` at most, and handles what
    /// they bring.
    fn turn(&mut self, wake_at: Instant) -> anyhow::Result<()> {
        for i in std::mem::take(&mut self.dirty) {
            if let Some(c) = self.conns.get_mut(i) {
                write_available(&mut c.socket, &mut c.out).with_context(|| format!("writing to connection {i}"))?;
            }
        }
        let timeout = wake_at.saturating_duration_since(Instant::now());
        self.poll.poll(&mut self.events, Some(timeout))?;
        let now = Instant::now();
        let ready: Vec<usize> = self.events.iter().map(|e| e.token().0).collect();
        for i in ready {
            let Some(c) = self.conns.get_mut(i) else { continue };
            let closed = read_available(&mut c.socket, &mut self.input, &mut self.scratch)?;
            c.session.handle_bytes(now, &self.input);
            self.input.clear();
            if closed {
                bail!("the broker closed connection {i}");
            }
            self.handle_events(i, now)?;
            if let Some(c) = self.conns.get_mut(i) {
                c.take_transmit();
            }
            self.dirty.push(i);
        }
        Ok(())
    }

    /// Handles what connection `i`'s machine has to tell.
    fn handle_events(&mut self, i: usize, now: Instant) -> anyhow::Result<()> {
        let mut resend = 0;
        let Some(c) = self.conns.get_mut(i) else { return Ok(()) };
        while let Some(event) = c.session.poll_event() {
            match event {
                ClientEvent::Connected { .. } => c.connected = true,
                ClientEvent::Disconnected { reason, .. } => bail!("connection {i} ended: {reason:?}"),
                ClientEvent::Acked(ack) => {
                    if let Some(sent) = c.sent.remove(&ack.cid) {
                        self.stats.acked(sent);
                    }
                    let stored =
                        matches!(ReasonCode::from_u32(ack.reason), Some(ReasonCode::Success | ReasonCode::Duplicate));
                    // A refusal (over the broker's rate limit, say) is counted and the lane goes on.
                    self.stats.count(if stored { "sends_acked" } else { "sends_refused" });
                    resend += 1;
                }
                ClientEvent::CidsRenumbered { offset } => {
                    c.sent = c.sent.drain().map(|(cid, t)| (cid + offset, t)).collect();
                }
                // A sender gets its own copy too (its user's other devices would): only the
                // receivers' deliveries count.
                ClientEvent::Message(d) if c.topic.is_none() => self.stats.delivered(&d.payload, self.start),
                _ => {}
            }
        }
        if self.refill {
            for _ in 0..resend {
                self.publish(i, now)?;
            }
        }
        Ok(())
    }
}
