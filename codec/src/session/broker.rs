//! The broker session machine.
//!
//! ```text
//!   new()        CONNECT            accept()
//!  ───────▶ AwaitConnect ──────▶ Authenticating ──────▶ Up
//!                │ other frame,        │ reject()          │ DISCONNECT, keepalive timeout,
//!                │ timeout             ▼                   │ malformed input, close(),
//!                └──────────────────▶ Closed ◀─────────────┘ link_lost()
//! ```
//!
//! One machine per session. A new connection gets a fresh machine; after its
//! [`BrokerEvent::Connect`], the driver authenticates and either calls [`BrokerSession::accept`]
//! on it, or, when the CONNECT resumes a live session, [`BrokerSession::resume_from`] on the old
//! machine, which takes the new link over and keeps its in-flight state.
//!
//! The machine enforces the upstream rules (cid order, dedup, window, packages) and tracks
//! downstream DELIVERs until acknowledged; the driver stores messages and calls
//! [`BrokerSession::ack_publish`] when a message is durable, and [`BrokerSession::deliver`]
//! to push one.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::link::{disconnect_reason, wire, Link};
use crate::delivery::{Arrival, OrderedReceiver, PackageBuffer, PackageInsert, RetransmitQueue, Rto};
use crate::error::{ApiError, PeerError, ProtocolViolation};
use crate::frame::{Direction, Frame};
use crate::ids::{Cid, PackageId, StreamId};
use crate::limits::{
    CONNECT_TIMEOUT, DEFAULT_KEEPALIVE_SECS, DEFAULT_MESSAGE_SIZE, DEFAULT_RECEIVE_WINDOW, KEEPALIVE_TIMEOUT_TENTHS,
    MAX_KEEPALIVE_SECS, MAX_PACKAGE_COUNT, MIN_KEEPALIVE_SECS, PACKAGE_TIMEOUT,
};
use crate::proto;
use crate::reason::ReasonCode;

/// Broker-wide session settings.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Protocol versions served.
    pub versions: Vec<u32>,
    /// Receive window granted to clients (at least 32, the largest package) [REQ-PKG-008].
    pub receive_window: u32,
    /// Largest reassembled message accepted.
    pub max_message_size: u32,
    /// Keepalive granted when the client asks for 0.
    pub default_keepalive_secs: u32,
    /// Retransmission timeouts for DELIVER.
    pub rto: Rto,
    /// Package completion timeout.
    pub package_timeout: Duration,
    /// Reconnect backoff guidance sent in CONNACK.
    pub backoff_ms: (u32, u32),
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            versions: vec![1],
            receive_window: DEFAULT_RECEIVE_WINDOW.max(MAX_PACKAGE_COUNT),
            max_message_size: DEFAULT_MESSAGE_SIZE,
            default_keepalive_secs: DEFAULT_KEEPALIVE_SECS,
            rto: Rto::default(),
            package_timeout: PACKAGE_TIMEOUT,
            backoff_ms: (1_000, 60_000),
        }
    }
}

/// What the store knows of a device's upstream cids, to rebuild dedup after a restart.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LedgerSnapshot {
    /// Every cid `<=` this has its outcome recorded.
    pub contiguous: u64,
    /// Recorded outcomes of recent cids (at least the last window's worth, and every one
    /// above `contiguous`).
    pub acks: Vec<proto::PubAck>,
}

/// The driver's answer to [`BrokerEvent::Connect`].
#[derive(Debug, Clone)]
pub struct Accept {
    /// Authenticated user.
    pub user_id: String,
    /// Session id for later resumption.
    pub session_id: Bytes,
    /// Upstream state from the store (ignored by `resume_from`, which keeps its own).
    pub ledger: LedgerSnapshot,
    /// The device's inbox sync point.
    pub inbox_acked_seq: u64,
    /// Wall clock for CONNACK.
    pub server_time_ms: u64,
}

/// What the driver must act on.
#[derive(Debug, Clone, PartialEq)]
pub enum BrokerEvent {
    /// A CONNECT with a version in common: authenticate it, then `accept` / `resume_from` /
    /// `reject`.
    Connect(proto::Connect),
    /// A message in cid order, never twice. QoS 1/2: store it, then `ack_publish`.
    Publish(proto::Publish),
    /// A whole package in index order: store every member atomically with consecutive seqs,
    /// then `ack_publish` each [REQ-PKG-003].
    Package(Vec<proto::Publish>),
    /// A package timed out: record PACKAGE_TIMEOUT for each cid with `ack_publish`; store none.
    PackageExpired {
        /// The package.
        package_id: PackageId,
        /// Its members received so far (or the late member refused).
        cids: Vec<Cid>,
    },
    /// A withdrawn cid, in cid order: record MESSAGE_TOO_LARGE for it with `ack_publish`;
    /// store nothing [REQ-QOS-020].
    Withdrawn(Cid),
    /// The client has everything through `seq` on `stream`: persist the sync point.
    StreamAcked {
        /// Stream.
        stream: StreamId,
        /// Cumulative seq.
        seq: u64,
    },
    /// A frame for the driver: SYNC, HISTORY, SUBSCRIBE, UNSUBSCRIBE, READ, REQUEST.
    Frame(Box<Frame>),
    /// The link is over: write what is left, then close the transport.
    Closed {
        /// Why (`None`: the transport closed without DISCONNECT).
        reason: Option<ReasonCode>,
        /// Whether the client said so.
        by_peer: bool,
    },
}

#[derive(Debug, Clone, Copy)]
enum State {
    AwaitConnect { deadline: Instant },
    Authenticating,
    Up { dead_after: Duration, dead_at: Instant },
    Closed,
}

/// Upstream: cid order, dedup and outcomes.
#[derive(Debug)]
struct Ledger {
    receiver: OrderedReceiver<proto::Publish>,
    acks: BTreeMap<u64, proto::PubAck>,
    awaiting: BTreeSet<u64>,
    packages: PackageBuffer<proto::Publish>,
    window: u64,
}

/// Frames waiting to go out in order: DELIVERs wait for window, and a SYNC_DONE waits for
/// the DELIVERs queued before it.
#[derive(Debug)]
enum Outgoing {
    Deliver(Box<proto::Deliver>),
    After(Box<Frame>),
}

/// The broker side of one Tern session. See the module docs.
#[derive(Debug)]
pub struct BrokerSession {
    config: BrokerConfig,
    state: State,
    link: Link,
    events: VecDeque<BrokerEvent>,
    connect: Option<proto::Connect>,
    ledger: Ledger,
    client_window: usize,
    streams: HashMap<StreamId, RetransmitQueue<proto::Deliver>>,
    inflight: usize,
    pending: VecDeque<Outgoing>,
    pending_keys: HashSet<(StreamId, u64)>,
    accepted: bool,
    retransmits: u64,
}

impl BrokerSession {
    /// A machine for a new connection, waiting for CONNECT.
    pub fn new(now: Instant, config: BrokerConfig) -> Self {
        let window = u64::from(config.receive_window.max(MAX_PACKAGE_COUNT));
        BrokerSession {
            link: Link::new(config.max_message_size as usize, Direction::ToBroker),
            state: State::AwaitConnect { deadline: now + CONNECT_TIMEOUT },
            events: VecDeque::new(),
            connect: None,
            ledger: Ledger {
                receiver: OrderedReceiver::new(1, window),
                acks: BTreeMap::new(),
                awaiting: BTreeSet::new(),
                packages: PackageBuffer::new(config.package_timeout),
                window,
            },
            client_window: DEFAULT_RECEIVE_WINDOW as usize,
            streams: HashMap::new(),
            inflight: 0,
            pending: VecDeque::new(),
            pending_keys: HashSet::new(),
            accepted: false,
            retransmits: 0,
            config,
        }
    }

    /// Whether the session is accepted and its link open.
    pub fn is_up(&self) -> bool {
        matches!(self.state, State::Up { .. })
    }

    /// Frames sent and received by type, and retransmissions, since the last call.
    pub fn take_counters(&mut self) -> super::SessionCounters {
        super::SessionCounters {
            frames: std::mem::take(&mut self.link.counts),
            retransmits: std::mem::take(&mut self.retransmits),
        }
    }

    /// Whether the link is over (closed, refused or lost): nothing more happens on it.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Whether this machine holds an accepted session (which a later CONNECT may resume).
    pub fn has_session(&self) -> bool {
        self.accepted
    }

    /// Whether a CONNECT is waiting for `accept`, `resume_from` or `reject` (a link that
    /// failed in the meantime is not).
    pub fn awaiting_accept(&self) -> bool {
        matches!(self.state, State::Authenticating)
    }

    /// DELIVERs sent and not yet acknowledged.
    pub fn inflight(&self) -> usize {
        self.inflight
    }

    /// The CONNECT this session was opened with.
    pub fn connect_frame(&self) -> Option<&proto::Connect> {
        self.connect.as_ref()
    }

    /// Accepts a new session: sends CONNACK(SUCCESS) with the negotiated values.
    pub fn accept(&mut self, now: Instant, accept: Accept) -> Result<(), ApiError> {
        if !matches!(self.state, State::Authenticating) {
            return Err(ApiError::NotConnected);
        }
        let mut ready = Vec::new();
        self.ledger.receiver.skip_to(accept.ledger.contiguous + 1, &mut ready);
        for ack in accept.ledger.acks.iter().cloned() {
            self.ledger.acks.insert(ack.cid, ack);
        }
        self.ledger.skip_recorded(&mut ready);
        self.finish_accept(now, &accept, false)
    }

    /// Resumes this (older) session on `fresh`'s link: the state here is kept and every
    /// unacknowledged DELIVER is sent again with `dup` [REQ-HSK-011] [REQ-HSK-012].
    pub fn resume_from(&mut self, now: Instant, fresh: BrokerSession, accept: Accept) -> Result<(), ApiError> {
        if !matches!(fresh.state, State::Authenticating) || !self.accepted {
            return Err(ApiError::NotConnected);
        }
        self.link = fresh.link;
        self.connect = fresh.connect;
        self.state = State::Authenticating;
        self.finish_accept(now, &accept, true)?;
        let mut resend = Vec::new();
        for queue in self.streams.values_mut() {
            resend.extend(queue.all(now));
        }
        resend.sort_by_key(|d| d.seq);
        for mut d in resend {
            d.dup = true;
            self.retransmits += 1;
            self.link.send(&Frame::Deliver(d))?;
        }
        self.flush_pending(now);
        Ok(())
    }

    fn finish_accept(&mut self, now: Instant, accept: &Accept, session_present: bool) -> Result<(), ApiError> {
        let connect = self.connect.as_ref().ok_or(ApiError::NotConnected)?;
        let keepalive = match connect.keepalive_secs {
            0 => self.config.default_keepalive_secs,
            k => k.clamp(MIN_KEEPALIVE_SECS, MAX_KEEPALIVE_SECS),
        };
        self.client_window = match connect.receive_window {
            0 => DEFAULT_RECEIVE_WINDOW as usize,
            w => w as usize,
        };
        self.link.peer_max_message_size = match connect.max_message_size {
            0 => DEFAULT_MESSAGE_SIZE as usize,
            m => m as usize,
        };
        let ack = proto::ConnAck {
            reason: wire(ReasonCode::Success),
            version: 1,
            session_id: accept.session_id.clone(),
            session_present,
            keepalive_secs: keepalive,
            max_message_size: self.config.max_message_size,
            receive_window: u32::try_from(self.ledger.window).unwrap_or(u32::MAX),
            last_cid: self.ledger.last_cid(),
            server_time_ms: accept.server_time_ms,
            user_id: accept.user_id.clone(),
            backoff_min_ms: self.config.backoff_ms.0,
            backoff_max_ms: self.config.backoff_ms.1,
            inbox_acked_seq: accept.inbox_acked_seq,
        };
        self.link.send(&Frame::ConnAck(ack))?;
        let dead_after = Duration::from_secs(u64::from(keepalive)) * KEEPALIVE_TIMEOUT_TENTHS / 10;
        self.state = State::Up { dead_after, dead_at: now + dead_after };
        self.accepted = true;
        Ok(())
    }

    /// Refuses the CONNECT with `reason` and closes [REQ-HSK-005].
    pub fn reject(&mut self, reason: ReasonCode) {
        let ack = proto::ConnAck { reason: wire(reason), ..Default::default() };
        let _ = self.link.send(&Frame::ConnAck(ack));
        self.link.closed = true;
        self.state = State::Closed;
        self.events.push_back(BrokerEvent::Closed { reason: Some(reason), by_peer: false });
    }

    /// Closes the link with DISCONNECT(reason) (shutdown, takeover, a ban ...).
    pub fn close(&mut self, reason: ReasonCode, detail: &str) {
        if matches!(self.state, State::Closed) {
            return;
        }
        self.link.close(reason, detail.to_owned());
        self.state = State::Closed;
        self.events.push_back(BrokerEvent::Closed { reason: Some(reason), by_peer: false });
    }

    /// The transport closed under us. The session state stays for `resume_from`.
    pub fn link_lost(&mut self, _now: Instant) {
        if !matches!(self.state, State::Closed) {
            self.link.closed = true;
            self.state = State::Closed;
            self.events.push_back(BrokerEvent::Closed { reason: None, by_peer: false });
        }
    }

    /// Records the outcome of a PUBLISH released by [`BrokerEvent::Publish`],
    /// [`BrokerEvent::Package`], [`BrokerEvent::PackageExpired`] or [`BrokerEvent::Withdrawn`],
    /// and sends the PUBACK. The same outcome answers every retransmission of that cid
    /// [REQ-QOS-005].
    pub fn ack_publish(&mut self, ack: proto::PubAck) -> Result<(), ApiError> {
        if !self.ledger.awaiting.remove(&ack.cid) {
            return Err(ApiError::NotAwaitingOutcome(ack.cid));
        }
        let floor = self.ledger.receiver.next().saturating_sub(2 * self.ledger.window);
        // Forget outcomes below the floor in place (split_off would build a new tree per ack).
        while let Some(oldest) = self.ledger.acks.first_entry() {
            if *oldest.key() >= floor {
                break;
            }
            oldest.remove();
        }
        self.ledger.acks.insert(ack.cid, ack);
        if matches!(self.state, State::Up { .. }) {
            self.link.send(&Frame::PubAck(ack))?;
        }
        Ok(())
    }

    /// Pushes a message. QoS 1/2 DELIVERs are kept until acknowledged, sent within the
    /// client's window [REQ-QOS-012] and retransmitted with `dup` [REQ-QOS-013]; QoS 0 is sent
    /// once if the link is up.
    pub fn deliver(&mut self, now: Instant, d: proto::Deliver) -> Result<(), ApiError> {
        crate::frame::validate_deliver(&d)?;
        if d.qos == 0 {
            if self.is_up() {
                self.link.send(&Frame::Deliver(d))?;
            }
            return Ok(());
        }
        let Some(stream) = StreamId::from_proto(d.stream.as_ref()) else {
            return Ok(());
        };
        let in_flight = self.streams.get(&stream).is_some_and(|q| q.contains(d.seq));
        if in_flight || !self.pending_keys.insert((stream, d.seq)) {
            return Ok(());
        }
        self.pending.push_back(Outgoing::Deliver(Box::new(d)));
        self.flush_pending(now);
        Ok(())
    }

    /// Sends any other broker frame (SUBACK, SYNC_DONE, HISTORY_PAGE, RESPONSE, NOTIFY ...).
    pub fn send(&mut self, frame: &Frame) -> Result<(), ApiError> {
        if frame.frame_type().direction() == Direction::ToBroker {
            return Err(ApiError::WrongDirection(frame.frame_type().name()));
        }
        if !self.is_up() {
            return Err(ApiError::NotConnected);
        }
        if matches!(frame, Frame::SyncDone(_)) && !self.pending.is_empty() {
            // SYNC_DONE follows the DELIVERs that answer the SYNC (REQ-SYN-002), even those
            // still waiting for window.
            self.pending.push_back(Outgoing::After(Box::new(frame.clone())));
            return Ok(());
        }
        self.link.send(frame)
    }

    fn flush_pending(&mut self, now: Instant) {
        while self.is_up() {
            match self.pending.front() {
                None => break,
                Some(Outgoing::After(_)) => {
                    if let Some(Outgoing::After(frame)) = self.pending.pop_front() {
                        self.link.send_control(&frame);
                    }
                    continue;
                }
                Some(Outgoing::Deliver(_)) if self.inflight >= self.client_window => break,
                Some(Outgoing::Deliver(_)) => {}
            }
            let Some(Outgoing::Deliver(boxed)) = self.pending.pop_front() else {
                break;
            };
            let mut d = *boxed;
            let Some(stream) = StreamId::from_proto(d.stream.as_ref()) else {
                continue;
            };
            self.pending_keys.remove(&(stream, d.seq));
            if prost::Message::encoded_len(&d) > self.link.peer_max_message_size {
                // Too large for this device: it keeps its seq, without the payload [REQ-QOS-018].
                d.payload = Bytes::new();
                d.payload_omitted = true;
            }
            // Sized to the peer's limit above, so only a closed link can refuse it; the
            // DELIVER stays in flight and goes again on resume.
            // Sent as a frame and moved back out (no copy) to be kept for retransmission.
            let frame = Frame::Deliver(d);
            self.link.send_control(&frame);
            if let Frame::Deliver(d) = frame {
                let rto = self.config.rto;
                self.streams.entry(stream).or_insert_with(|| RetransmitQueue::new(rto)).push(now, d.seq, d);
                self.inflight += 1;
            }
        }
    }

    /// Feeds received bytes.
    pub fn handle_bytes(&mut self, now: Instant, bytes: &[u8]) {
        self.link.extend(bytes);
        let mut got_any = false;
        loop {
            if matches!(self.state, State::Closed) {
                break;
            }
            match self.link.next_frame() {
                Ok(Some(frame)) => {
                    got_any = true;
                    if let Err(e) = self.on_frame(now, frame) {
                        self.fail(e);
                    }
                }
                Ok(None) => break,
                Err(e) => self.fail(e),
            }
        }
        if let (true, State::Up { dead_after, dead_at }) = (got_any, &mut self.state) {
            *dead_at = now + *dead_after;
        }
    }

    fn fail(&mut self, e: PeerError) {
        self.link.close(e.reason(), e.to_string());
        self.state = State::Closed;
        self.events.push_back(BrokerEvent::Closed { reason: Some(e.reason()), by_peer: false });
    }

    fn on_frame(&mut self, now: Instant, frame: Frame) -> Result<(), PeerError> {
        if let Frame::Disconnect(d) = &frame {
            self.link.closed = true;
            self.state = State::Closed;
            self.events.push_back(BrokerEvent::Closed { reason: Some(disconnect_reason(d)), by_peer: true });
            return Ok(());
        }
        match self.state {
            State::AwaitConnect { .. } => match frame {
                Frame::Connect(c) => self.on_connect(c),
                other => {
                    Err(violation("REQ-HSK-001", ReasonCode::ProtocolError, &other, "the first frame must be CONNECT"))
                }
            },
            State::Authenticating => {
                Err(violation("REQ-HSK-004", ReasonCode::ProtocolError, &frame, "sent before CONNACK"))
            }
            State::Up { .. } => self.on_live_frame(now, frame),
            State::Closed => Ok(()),
        }
    }

    fn on_connect(&mut self, c: proto::Connect) -> Result<(), PeerError> {
        let common = c.versions.iter().copied().filter(|v| self.config.versions.contains(v)).max();
        if common.is_none() {
            let ack = proto::ConnAck { reason: wire(ReasonCode::UnsupportedVersion), ..Default::default() };
            let _ = self.link.send(&Frame::ConnAck(ack));
            self.link.closed = true;
            self.state = State::Closed;
            self.events.push_back(BrokerEvent::Closed { reason: Some(ReasonCode::UnsupportedVersion), by_peer: false });
            return Ok(());
        }
        self.connect = Some(c.clone());
        self.state = State::Authenticating;
        self.events.push_back(BrokerEvent::Connect(c));
        Ok(())
    }

    fn on_live_frame(&mut self, now: Instant, frame: Frame) -> Result<(), PeerError> {
        match frame {
            Frame::Connect(_) => Err(violation("REQ-HSK-002", ReasonCode::ProtocolError, &frame, "second CONNECT")),
            Frame::Ping(p) => {
                self.link.send_control(&Frame::Pong(p));
                Ok(())
            }
            Frame::Pong(_) => Ok(()),
            Frame::Publish(p) => self.on_publish(now, p),
            Frame::DeliverAck(a) => {
                if let Some(stream) = StreamId::from_proto(a.stream.as_ref()) {
                    if let Some(q) = self.streams.get_mut(&stream) {
                        self.inflight -= q.ack_through(a.seq);
                    }
                    self.events.push_back(BrokerEvent::StreamAcked { stream, seq: a.seq });
                    self.flush_pending(now);
                }
                Ok(())
            }
            other => {
                self.events.push_back(BrokerEvent::Frame(Box::new(other)));
                Ok(())
            }
        }
    }

    fn on_publish(&mut self, now: Instant, p: proto::Publish) -> Result<(), PeerError> {
        if p.qos == 0 {
            self.events.push_back(BrokerEvent::Publish(p));
            return Ok(());
        }
        let cid = p.cid;
        if let Some(ack) = self.ledger.acks.get(&cid) {
            // A retransmission of a decided cid gets the original outcome [REQ-QOS-005].
            let ack = *ack;
            self.link.send_control(&Frame::PubAck(ack));
            return Ok(());
        }
        if self.ledger.awaiting.contains(&cid) {
            return Ok(());
        }
        let mut released = Vec::new();
        match self.ledger.receiver.receive(cid, p, &mut released) {
            Arrival::Duplicate => {
                if cid < self.ledger.receiver.next() {
                    // Decided so long ago its record is gone: the client broke the window.
                    let ack = proto::PubAck { cid, reason: wire(ReasonCode::Duplicate), ..Default::default() };
                    self.link.send_control(&Frame::PubAck(ack));
                }
                return Ok(());
            }
            Arrival::BeyondWindow => {
                return Err(ProtocolViolation::new(
                    "REQ-QOS-006",
                    ReasonCode::ReceiveWindowExceeded,
                    format!("cid {cid} beyond window from {}", self.ledger.receiver.next()),
                )
                .into());
            }
            Arrival::Released | Arrival::Buffered { .. } => {}
        }
        self.ledger.skip_recorded(&mut released);
        for (_, p) in released {
            self.release(now, p)?;
        }
        Ok(())
    }

    fn release(&mut self, now: Instant, p: proto::Publish) -> Result<(), PeerError> {
        self.ledger.awaiting.insert(p.cid);
        if p.withdrawn {
            self.events.push_back(BrokerEvent::Withdrawn(Cid(p.cid)));
            return Ok(());
        }
        let Some(pkg) = p.package else {
            self.events.push_back(BrokerEvent::Publish(p));
            return Ok(());
        };
        let cid = Cid(p.cid);
        match self.ledger.packages.insert(now, &pkg, p)? {
            PackageInsert::Pending => {}
            PackageInsert::Complete(members) => {
                let first = members.first().map(|m| (&m.topic, m.qos));
                if members.iter().any(|m| Some((&m.topic, m.qos)) != first) {
                    let why = "package members differ in topic or qos";
                    return Err(ProtocolViolation::new("REQ-PKG-002", ReasonCode::PackageInvalid, why).into());
                }
                self.events.push_back(BrokerEvent::Package(members));
            }
            PackageInsert::Expired => {
                self.events
                    .push_back(BrokerEvent::PackageExpired { package_id: PackageId(pkg.package_id), cids: vec![cid] });
            }
        }
        Ok(())
    }

    /// Drives timers: CONNECT timeout, keepalive, DELIVER retransmission, package expiry.
    pub fn handle_timeout(&mut self, now: Instant) {
        for (package_id, members) in self.ledger.packages.handle_timeout(now) {
            let cids = members.iter().map(|m| Cid(m.cid)).collect();
            self.events.push_back(BrokerEvent::PackageExpired { package_id, cids });
        }
        match self.state {
            State::AwaitConnect { deadline } if now >= deadline => {
                self.fail(ProtocolViolation::new("REQ-HSK-018", ReasonCode::ConnectTimeout, "no CONNECT").into());
            }
            State::Up { dead_at, .. } if now >= dead_at => {
                self.fail(ProtocolViolation::new("REQ-KAL-002", ReasonCode::KeepaliveTimeout, "client silent").into());
            }
            State::Up { .. } => {
                let mut due = Vec::new();
                for q in self.streams.values_mut() {
                    due.extend(q.due(now));
                }
                for mut d in due {
                    d.dup = true;
                    self.retransmits += 1;
                    let _ = self.link.send(&Frame::Deliver(d));
                }
            }
            _ => {}
        }
    }

    /// When `handle_timeout` next needs to run.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let state = match self.state {
            State::AwaitConnect { deadline } => Some(deadline),
            State::Up { dead_at, .. } => {
                let retransmit = self.streams.values().filter_map(RetransmitQueue::next_deadline).min();
                Some(retransmit.map_or(dead_at, |r| r.min(dead_at)))
            }
            State::Authenticating | State::Closed => None,
        };
        match (state, self.ledger.packages.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Bytes to write to the transport.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.link.take_transmit()
    }

    /// The next event for the driver.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<BrokerEvent> {
        self.events.pop_front()
    }
}

impl Ledger {
    /// Highest cid with a decided or pending outcome.
    fn last_cid(&self) -> u64 {
        let recorded = self.acks.keys().next_back().copied().unwrap_or(0);
        recorded.max(self.receiver.released())
    }

    /// After a restart, cids above the contiguous point may already be decided: step over
    /// them so later cids are not held waiting for a retransmission that may never come.
    fn skip_recorded(&mut self, released: &mut Vec<(u64, proto::Publish)>) {
        while self.acks.contains_key(&self.receiver.next()) {
            let next = self.receiver.next() + 1;
            self.receiver.skip_to(next, released);
        }
    }
}

fn violation(req: &'static str, reason: ReasonCode, frame: &Frame, why: &str) -> PeerError {
    ProtocolViolation::new(req, reason, format!("{}: {why}", frame.frame_type().name())).into()
}
