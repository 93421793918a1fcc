//! Deterministic simulation: a sending client, a receiving client and a broker (the codec's
//! machines plus a model store) over virtual links that drop, duplicate, reorder and cut
//! frames, with broker restarts, under a virtual clock. Thousands of seeded runs check that
//! every QoS 2 message is stored and delivered exactly once and in order, and every package
//! whole and in index order or reported failed to its sender, never partially.
// Test code: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tern_codec::decode_frame;
use tern_codec::ids::{Cid, StreamId};
use tern_codec::proto;
use tern_codec::session::{
    backoff, Accept, BrokerConfig, BrokerEvent, BrokerSession, ClientConfig, ClientEvent, ClientSession, LedgerSnapshot,
};
use tern_codec::{Frame, ReasonCode};

const SENDER: usize = 0;
const RECEIVER: usize = 1;

#[derive(Clone, Copy)]
struct Faults {
    drop: u32,
    duplicate: u32,
    reorder: u32,
    /// Per-mille chance per step of cutting a link.
    cut: u32,
    /// Per-mille chance per step of restarting the broker.
    restart: u32,
}

struct Stored {
    cid: u64,
    payload: Bytes,
    package: Option<proto::PackageRef>,
}

/// The broker's durable state: survives restarts.
#[derive(Default)]
struct Store {
    inbox: Vec<Stored>,
    ledger: BTreeMap<u64, proto::PubAck>,
    receiver_cursor: u64,
}

impl Store {
    fn snapshot(&self) -> LedgerSnapshot {
        let mut contiguous = 0;
        while self.ledger.contains_key(&(contiguous + 1)) {
            contiguous += 1;
        }
        LedgerSnapshot { contiguous, acks: self.ledger.values().cloned().collect() }
    }

    fn deliver_frame(&self, seq: u64) -> Option<proto::Deliver> {
        let s = self.inbox.get(usize::try_from(seq).ok()?.checked_sub(1)?)?;
        Some(proto::Deliver {
            stream: Some(StreamId::Inbox.to_proto()),
            seq,
            msg_id: seq,
            conversation_id: 1,
            conversation_seq: seq,
            topic: "user/bob".into(),
            sender_user: "alice".into(),
            sender_device: "phone".into(),
            qos: 2,
            payload: s.payload.clone(),
            package: s.package,
            ..Default::default()
        })
    }
}

struct Wire {
    /// (arrival ms, tiebreak, frame bytes)
    to_broker: Vec<(u64, u64, Bytes)>,
    to_client: Vec<(u64, u64, Bytes)>,
    broker: BrokerSession,
}

struct Peer {
    client: ClientSession,
    wire: Option<Wire>,
    parked: Option<BrokerSession>,
    reconnect_at: Option<u64>,
    attempts: u32,
}

struct World {
    rng: ChaCha8Rng,
    t0: Instant,
    now_ms: u64,
    order: u64,
    faults: Faults,
    faults_on: bool,
    /// A deliberately broken broker that loses its dedup ledger on restart.
    amnesia: bool,
    store: Store,
    peers: Vec<Peer>,
    config: BrokerConfig,
    // sender's view
    published: HashMap<u64, Bytes>,
    outcomes: HashMap<u64, u32>,
    package_of: HashMap<u64, u64>,
    packages_done: HashMap<u64, ReasonCode>,
    // receiver's view: (cid from payload, payload, package)
    received: Vec<(u64, Bytes)>,
    /// Guarantee breaches seen while running (checked with the final state).
    violations: Vec<String>,
    pending_connect: [Option<proto::Connect>; 2],
    stats: Stats,
}

/// How often each fault path ran, so a run that exercised nothing cannot pass unnoticed.
#[derive(Default, Debug, Clone, Copy)]
struct Stats {
    cuts: u64,
    restarts: u64,
    resumes: u64,
    expired_packages: u64,
    stored_packages: u64,
    fragmented: u64,
    gaps_synced: u64,
}

fn split_frames(mut bytes: Bytes, out: &mut Vec<Bytes>) {
    while bytes.len() >= 4 {
        let len = 4 + usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
        out.push(bytes.split_to(len.min(bytes.len())));
    }
}

fn cid_of(payload: &[u8]) -> u64 {
    let text = std::str::from_utf8(payload.get(..20).unwrap_or(payload)).unwrap_or("");
    text.split(';').next().and_then(|s| s.parse().ok()).unwrap_or(0)
}

impl World {
    fn new(seed: u64, faults: Faults) -> World {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let peers = ["phone", "laptop"]
            .iter()
            .map(|dev| {
                let mut cfg = ClientConfig::new(*dev, Bytes::from(dev.to_string()));
                cfg.receive_window = 8;
                Peer {
                    client: ClientSession::new(cfg, Box::new(ChaCha8Rng::seed_from_u64(rng.next_u64()))),
                    wire: None,
                    parked: None,
                    reconnect_at: Some(0),
                    attempts: 0,
                }
            })
            .collect();
        let config = BrokerConfig { package_timeout: Duration::from_secs(20), ..BrokerConfig::default() };
        World {
            rng,
            t0: Instant::now(),
            now_ms: 0,
            order: 0,
            faults,
            faults_on: true,
            amnesia: false,
            store: Store::default(),
            peers,
            config,
            published: HashMap::new(),
            outcomes: HashMap::new(),
            package_of: HashMap::new(),
            packages_done: HashMap::new(),
            received: Vec::new(),
            violations: Vec::new(),
            pending_connect: [None, None],
            stats: Stats::default(),
        }
    }

    fn now(&self) -> Instant {
        self.t0 + Duration::from_millis(self.now_ms)
    }

    fn chance(&mut self, per_mille: u32) -> bool {
        self.faults_on && self.rng.next_u32() % 1000 < per_mille
    }

    /// Moves bytes a machine wants to send onto the wire, frame by frame, with faults.
    fn transmit(&mut self, i: usize) {
        let now = self.now();
        let mut frames = Vec::new();
        if let Some(b) = self.peers[i].client.poll_transmit() {
            split_frames(b, &mut frames);
        }
        let mut up = Vec::new();
        for f in frames {
            up.push(f);
        }
        let mut down = Vec::new();
        if let Some(w) = self.peers[i].wire.as_mut() {
            if let Some(b) = w.broker.poll_transmit() {
                split_frames(b, &mut down);
            }
        }
        let _ = now;
        for (frames, to_broker) in [(up, true), (down, false)] {
            for f in frames {
                if self.chance(self.faults.drop) {
                    continue;
                }
                let copies = if self.chance(self.faults.duplicate) { 2 } else { 1 };
                for _ in 0..copies {
                    let delay =
                        if self.chance(self.faults.reorder) { 5 + u64::from(self.rng.next_u32() % 200) } else { 5 };
                    self.order += 1;
                    let entry = (self.now_ms + delay, self.order, f.clone());
                    if let Some(w) = self.peers[i].wire.as_mut() {
                        if to_broker {
                            w.to_broker.push(entry)
                        } else {
                            w.to_client.push(entry)
                        }
                    }
                }
            }
        }
    }

    fn cut(&mut self, i: usize) {
        let now = self.now();
        self.stats.cuts += 1;
        if let Some(mut w) = self.peers[i].wire.take() {
            w.broker.link_lost(now);
            self.drain_broker(i, &mut w.broker);
            if w.broker.has_session() {
                self.peers[i].parked = Some(w.broker);
            }
        }
        self.peers[i].client.link_lost(now);
        self.drain_client(i);
    }

    fn restart_broker(&mut self) {
        self.stats.restarts += 1;
        for i in 0..self.peers.len() {
            self.cut(i);
            self.peers[i].parked = None;
        }
        if self.amnesia {
            self.store.ledger.clear();
        }
    }

    fn deliver_to_receiver(&mut self, seq: u64) {
        let now = self.now();
        let Some(d) = self.store.deliver_frame(seq) else {
            return;
        };
        let peer = &mut self.peers[RECEIVER];
        let machine = match (peer.wire.as_mut(), peer.parked.as_mut()) {
            (Some(w), _) if w.broker.is_up() => &mut w.broker,
            (_, Some(p)) => p,
            _ => return,
        };
        machine.deliver(now, d).expect("deliver");
    }

    fn drain_broker(&mut self, i: usize, machine: &mut BrokerSession) {
        let now = self.now();
        while let Some(ev) = machine.poll_event() {
            match ev {
                BrokerEvent::Connect(c) => self.pending_connect[i] = Some(c),
                BrokerEvent::Publish(p) => {
                    let seq = self.store_msg(&p);
                    machine.ack_publish(self.stored_ack(p.cid, seq)).expect("ack");
                    self.deliver_to_receiver(seq);
                }
                BrokerEvent::Package(members) => {
                    self.stats.stored_packages += 1;
                    let seqs: Vec<u64> = members.iter().map(|p| self.store_msg(p)).collect();
                    for (p, &seq) in members.iter().zip(&seqs) {
                        machine.ack_publish(self.stored_ack(p.cid, seq)).expect("ack");
                    }
                    for seq in seqs {
                        self.deliver_to_receiver(seq);
                    }
                }
                BrokerEvent::PackageExpired { cids, .. } => {
                    self.stats.expired_packages += 1;
                    for Cid(cid) in cids {
                        let ack =
                            proto::PubAck { cid, reason: ReasonCode::PackageTimeout as u32, ..Default::default() };
                        self.store.ledger.insert(cid, ack);
                        machine.ack_publish(ack).expect("ack");
                    }
                }
                BrokerEvent::Withdrawn(cid) => {
                    panic!("the simulated broker never lowers its limit, yet {cid:?} was withdrawn")
                }
                BrokerEvent::StreamAcked { seq, .. } => {
                    assert_eq!(i, RECEIVER);
                    assert!(seq <= self.store.inbox.len() as u64, "acked a seq never stored");
                    self.store.receiver_cursor = self.store.receiver_cursor.max(seq);
                }
                BrokerEvent::Frame(f) if matches!(*f, Frame::Sync(_)) => {
                    let Frame::Sync(s) = *f else { continue };
                    self.stats.gaps_synced += 1;
                    // Only the receiver's inbox has messages; the sender's is empty.
                    let stored = if i == RECEIVER { self.store.inbox.len() as u64 } else { 0 };
                    let last = stored.min(s.after_seq + u64::from(s.limit));
                    for seq in s.after_seq + 1..=last {
                        if let Some(d) = self.store.deliver_frame(seq) {
                            machine.deliver(now, d).expect("deliver");
                        }
                    }
                    let done = proto::SyncDone {
                        request_id: s.request_id,
                        reason: 0,
                        stream: s.stream,
                        last_seq: last.max(s.after_seq),
                        more: last < stored,
                    };
                    let _ = machine.send(&Frame::SyncDone(done));
                }
                BrokerEvent::Frame(_) => {}
                BrokerEvent::Closed { .. } => {}
            }
        }
    }

    fn store_msg(&mut self, p: &proto::Publish) -> u64 {
        self.store.inbox.push(Stored { cid: p.cid, payload: p.payload.clone(), package: p.package });
        self.store.inbox.len() as u64
    }

    fn stored_ack(&mut self, cid: u64, seq: u64) -> proto::PubAck {
        let ack = proto::PubAck { cid, reason: 0, msg_id: seq, conversation_id: 1, seq };
        self.store.ledger.insert(cid, ack);
        ack
    }

    fn drain_client(&mut self, i: usize) {
        let now = self.now();
        while let Some(ev) = self.peers[i].client.poll_event() {
            match ev {
                ClientEvent::Connected { .. } => self.peers[i].attempts = 0,
                ClientEvent::Disconnected { .. } => {
                    if let Some(mut w) = self.peers[i].wire.take() {
                        w.broker.link_lost(now);
                        self.drain_broker(i, &mut w.broker);
                        if w.broker.has_session() {
                            self.peers[i].parked = Some(w.broker);
                        }
                    }
                    let attempt = self.peers[i].attempts;
                    self.peers[i].attempts += 1;
                    let wait = backoff(attempt, 100, 5_000, &mut self.rng);
                    self.peers[i].reconnect_at = Some(self.now_ms + wait.as_millis() as u64);
                }
                ClientEvent::Acked(ack) => {
                    assert_eq!(i, SENDER);
                    if self.outcomes.insert(ack.cid, ack.reason).is_some() {
                        self.violations.push(format!("two outcomes for cid {}", ack.cid));
                    }
                }
                ClientEvent::PackageDone { package_id, reason } => {
                    assert!(self.packages_done.insert(package_id.0, reason).is_none());
                }
                ClientEvent::Message(d) => self.received.push((cid_of(&d.payload), d.payload)),
                ClientEvent::Package(members) => {
                    for d in members {
                        self.received.push((cid_of(&d.payload), d.payload));
                    }
                }
                ClientEvent::CidsRenumbered { .. } => panic!("sender state is never lost here"),
                ClientEvent::Frame(_) => {}
            }
        }
    }

    fn handle_connect(&mut self, i: usize) {
        let now = self.now();
        let Some(c) = self.pending_connect[i].take() else {
            return;
        };
        let Some(mut w) = self.peers[i].wire.take() else {
            return;
        };
        if !w.broker.awaiting_accept() {
            self.peers[i].wire = Some(w);
            return;
        }
        let user = if i == SENDER { "alice" } else { "bob" };
        let accept = Accept {
            user_id: user.into(),
            session_id: Bytes::from(format!("s-{user}")),
            ledger: if i == SENDER { self.store.snapshot() } else { LedgerSnapshot::default() },
            inbox_acked_seq: if i == RECEIVER { self.store.receiver_cursor } else { 0 },
            server_time_ms: self.now_ms,
        };
        let fresh = std::mem::replace(&mut w.broker, BrokerSession::new(now, self.config.clone()));
        match self.peers[i].parked.take().filter(|_| !c.resume_session_id.is_empty()) {
            Some(mut old) => {
                old.resume_from(now, fresh, accept).expect("resume");
                self.stats.resumes += 1;
                w.broker = old;
                self.peers[i].wire = Some(w);
            }
            None => {
                w.broker = fresh;
                w.broker.accept(now, accept).expect("accept");
                self.peers[i].wire = Some(w);
                if i == RECEIVER {
                    for seq in self.store.receiver_cursor + 1..=self.store.inbox.len() as u64 {
                        self.deliver_to_receiver(seq);
                    }
                }
            }
        }
    }

    fn step(&mut self) {
        let now = self.now();
        for i in 0..self.peers.len() {
            if self.peers[i].reconnect_at.is_some_and(|t| t <= self.now_ms) && self.peers[i].wire.is_none() {
                self.peers[i].reconnect_at = None;
                self.peers[i].wire = Some(Wire {
                    to_broker: vec![],
                    to_client: vec![],
                    broker: BrokerSession::new(now, self.config.clone()),
                });
                self.peers[i].client.connect(now).expect("connect");
            }
            // Arrivals, in arrival order.
            if let Some(w) = self.peers[i].wire.as_mut() {
                let mut up: Vec<_> = Vec::new();
                w.to_broker.retain(|e| {
                    if e.0 <= self.now_ms {
                        up.push(e.clone());
                        false
                    } else {
                        true
                    }
                });
                up.sort();
                for (_, _, f) in up {
                    if std::env::var("TERN_SIM_TRACE").is_ok() {
                        eprintln!("{} c{i}->b {:.300?}", self.now_ms, decode_frame(&mut BytesMut::from(&f[..])));
                    }
                    w.broker.handle_bytes(now, &f);
                }
            }
            if let Some(mut w) = self.peers[i].wire.take() {
                self.drain_broker(i, &mut w.broker);
                self.peers[i].wire = Some(w);
            }
            self.handle_connect(i);
            if let Some(w) = self.peers[i].wire.as_mut() {
                let mut down: Vec<_> = Vec::new();
                w.to_client.retain(|e| {
                    if e.0 <= self.now_ms {
                        down.push(e.clone());
                        false
                    } else {
                        true
                    }
                });
                down.sort();
                for (_, _, f) in down {
                    if std::env::var("TERN_SIM_TRACE").is_ok() {
                        eprintln!("{} b->c{i} {:.300?}", self.now_ms, decode_frame(&mut BytesMut::from(&f[..])));
                    }
                    self.peers[i].client.handle_bytes(now, &f);
                }
            }
            if self.peers[i].client.poll_timeout().is_some_and(|t| t <= now) {
                self.peers[i].client.handle_timeout(now);
            }
            if let Some(mut w) = self.peers[i].wire.take() {
                if w.broker.poll_timeout().is_some_and(|t| t <= now) {
                    w.broker.handle_timeout(now);
                }
                self.drain_broker(i, &mut w.broker);
                self.peers[i].wire = Some(w);
            }
            if let Some(mut p) = self.peers[i].parked.take() {
                if p.poll_timeout().is_some_and(|t| t <= now) {
                    p.handle_timeout(now);
                }
                self.drain_broker(i, &mut p);
                self.peers[i].parked = Some(p);
            }
            self.transmit(i);
            self.drain_client(i);
            self.transmit(i);
            let closed = self.peers[i].wire.as_ref().is_some_and(|w| {
                !w.broker.is_up() && !w.broker.awaiting_accept() && w.broker.connect_frame().is_some()
            });
            if closed {
                self.cut(i);
            }
        }
        if self.chance(self.faults.cut) {
            let i = (self.rng.next_u32() % 2) as usize;
            self.cut(i);
        }
        if self.chance(self.faults.restart) {
            self.restart_broker();
        }
    }

    /// Jumps the clock to the next thing that can happen.
    fn advance(&mut self) {
        let mut next = self.now_ms + 500;
        for p in &self.peers {
            let timers = [
                p.client.poll_timeout(),
                p.wire.as_ref().and_then(|w| w.broker.poll_timeout()),
                p.parked.as_ref().and_then(BrokerSession::poll_timeout),
            ];
            for t in timers.into_iter().flatten() {
                next = next.min(t.saturating_duration_since(self.t0).as_millis() as u64);
            }
            if let Some(r) = p.reconnect_at {
                next = next.min(r);
            }
            if let Some(w) = &p.wire {
                for e in w.to_broker.iter().chain(&w.to_client) {
                    next = next.min(e.0);
                }
            }
        }
        self.now_ms = next.max(self.now_ms + 1);
    }

    fn publish(&mut self, n: u64) {
        let now = self.now();
        let roll = self.rng.next_u32() % 10;
        let big = self.rng.next_u32() % 8 == 0;
        let body = |cid: u64| {
            let pad = if big { 3000 } else { 16 };
            // Bodies over 1396 bytes travel as FRAGMENT frames.
            Bytes::from(format!("{cid};{}", "x".repeat(pad)))
        };
        if big {
            self.stats.fragmented += 1;
        }
        let client = &mut self.peers[SENDER].client;
        if roll < 2 {
            let count = 2 + self.rng.next_u32() % 4;
            let first = client.next_cid().0;
            let payloads: Vec<Bytes> = (0..count).map(|k| body(first + u64::from(k))).collect();
            let pkg = client.publish_package(now, "user/bob", payloads.clone(), 2).expect("package");
            for (k, p) in payloads.into_iter().enumerate() {
                self.published.insert(first + k as u64, p);
                self.package_of.insert(first + k as u64, pkg.0);
            }
        } else {
            let cid = client.next_cid().0;
            let got = client.publish(now, "user/bob", body(cid), 2).expect("publish");
            assert_eq!(got, Some(Cid(cid)));
            self.published.insert(cid, body(cid));
        }
        let _ = n;
    }
}

/// Runs one seeded scenario to quiescence (or a step bound).
fn run_world(seed: u64, faults: Faults, amnesia: bool, max_steps: usize) -> World {
    let mut w = World::new(seed, faults);
    w.amnesia = amnesia;
    let messages = 12 + seed % 12;
    let mut sent = 0;
    let fault_until = 60_000;
    for _ in 0..max_steps {
        if w.now_ms >= fault_until {
            w.faults_on = false;
        }
        if sent < messages && w.rng.next_u32() % 4 == 0 {
            w.publish(sent);
            sent += 1;
        }
        w.step();
        let settled = sent >= messages
            && !w.faults_on
            && w.peers[SENDER].client.unacknowledged() == 0
            && w.received.len() == w.store.inbox.len()
            && w.peers[RECEIVER].client.is_connected();
        if settled {
            break;
        }
        w.advance();
    }
    w
}

fn run(seed: u64, faults: Faults) -> Stats {
    let w = run_world(seed, faults, false, 200_000);
    if std::env::var("TERN_SIM_DEBUG").is_ok() {
        eprintln!(
            "t={} unacked={} inbox={} received={} outcomes={:?} sender={:?} conn={:?}",
            w.now_ms,
            w.peers[SENDER].client.unacknowledged(),
            w.store.inbox.len(),
            w.received.len(),
            w.outcomes,
            w.peers[SENDER].client,
            w.peers.iter().map(|p| (p.wire.is_some(), p.parked.is_some(), p.reconnect_at)).collect::<Vec<_>>()
        );
    }
    if let Err(e) = check(&w) {
        panic!("seed {seed}: {e}");
    }
    w.stats
}

fn check(w: &World) -> Result<(), String> {
    if let Some(v) = w.violations.first() {
        return Err(v.clone());
    }
    // Each cid is stored at most once.
    let mut seen = HashSet::new();
    for s in &w.store.inbox {
        if !seen.insert(s.cid) {
            return Err(format!("cid {} stored twice", s.cid));
        }
    }
    // Every cid the sender used has exactly one outcome.
    for cid in w.published.keys() {
        let reason = *w.outcomes.get(cid).ok_or(format!("cid {cid} never acknowledged"))?;
        let ok = reason == 0 || reason == ReasonCode::Duplicate as u32;
        let expired = reason == ReasonCode::PackageTimeout as u32;
        if !(ok || (expired && w.package_of.contains_key(cid))) {
            return Err(format!("cid {cid} outcome {reason}"));
        }
    }
    // Singles in cid order; packages contiguous, in index order, reported stored.
    let mut last_single = 0;
    let mut i = 0;
    while let Some(s) = w.store.inbox.get(i) {
        match s.package {
            None => {
                if s.cid <= last_single {
                    return Err(format!("single cid {} stored after {}", s.cid, last_single));
                }
                last_single = s.cid;
                i += 1;
            }
            Some(pkg) => {
                for k in 0..pkg.count as usize {
                    let mp = w.store.inbox.get(i + k).and_then(|m| m.package);
                    if mp.map(|p| (p.package_id, p.index as usize)) != Some((pkg.package_id, k)) {
                        return Err(format!("package {} split in the store", pkg.package_id));
                    }
                }
                if w.packages_done.get(&pkg.package_id) != Some(&ReasonCode::Success) {
                    return Err(format!("stored package {} not reported stored", pkg.package_id));
                }
                i += pkg.count as usize;
            }
        }
    }
    for (pkg, reason) in &w.packages_done {
        let partial = w.store.inbox.iter().any(|s| s.package.map(|p| p.package_id) == Some(*pkg));
        if *reason != ReasonCode::Success && partial {
            return Err(format!("failed package {pkg} partly stored"));
        }
    }
    let stored_ok = w.outcomes.values().filter(|&&r| r == 0 || r == ReasonCode::Duplicate as u32).count();
    if stored_ok != w.store.inbox.len() {
        return Err(format!("{stored_ok} acknowledged as stored, {} in the store", w.store.inbox.len()));
    }
    // The receiver got exactly the store, in order, once each, with the sent payloads.
    let got: Vec<u64> = w.received.iter().map(|(cid, _)| *cid).collect();
    let want: Vec<u64> = w.store.inbox.iter().map(|s| s.cid).collect();
    if got != want {
        return Err(format!("receiver saw {got:?}, store holds {want:?}"));
    }
    for (cid, payload) in &w.received {
        if Some(payload) != w.published.get(cid) {
            return Err(format!("payload of cid {cid} changed"));
        }
    }
    Ok(())
}

const HARSH: Faults = Faults { drop: 30, duplicate: 30, reorder: 80, cut: 4, restart: 1 };

#[test]
fn exactly_once_in_order_under_loss_duplication_reordering_and_disconnects() {
    let runs: u64 = std::env::var("TERN_SIM_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let first: u64 = std::env::var("TERN_SIM_FIRST").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut total = Stats::default();
    for seed in first..first + runs {
        let s = run(seed, HARSH);
        total.cuts += s.cuts;
        total.restarts += s.restarts;
        total.resumes += s.resumes;
        total.expired_packages += s.expired_packages;
        total.stored_packages += s.stored_packages;
        total.fragmented += s.fragmented;
        total.gaps_synced += s.gaps_synced;
    }
    eprintln!("{runs} runs: {total:?}");
    if runs >= 500 {
        let t = total;
        let all = [t.cuts, t.restarts, t.resumes, t.expired_packages, t.stored_packages, t.fragmented, t.gaps_synced];
        assert!(all.iter().all(|&n| n > 0), "a fault path was never exercised: {t:?}");
    }
}

#[test]
fn clean_links_deliver_everything_without_retransmission() {
    for seed in 0..50 {
        let s = run(seed, Faults { drop: 0, duplicate: 0, reorder: 0, cut: 0, restart: 0 });
        assert_eq!((s.cuts, s.restarts, s.expired_packages), (0, 0, 0), "seed {seed}");
    }
}

#[test]
fn frequent_broker_restarts_keep_exactly_once() {
    let restarts: u64 = (0..300)
        .map(|seed| run(10_000 + seed, Faults { drop: 10, duplicate: 10, reorder: 20, cut: 10, restart: 8 }).restarts)
        .sum();
    assert!(restarts > 300, "only {restarts} restarts in 300 runs");
}

/// The simulator itself must be able to fail: a broker that loses its dedup ledger on
/// restart stores retransmissions twice, and the checks say so.
#[test]
fn checks_catch_a_broker_that_forgets_dedup_state() {
    let faults = Faults { drop: 50, duplicate: 0, reorder: 0, cut: 5, restart: 10 };
    let caught =
        (0..200).filter_map(|seed| check(&run_world(seed, faults, true, 20_000)).err()).find(|e| e.contains("twice"));
    assert!(caught.is_some(), "a broker without durable dedup must be caught");
}
