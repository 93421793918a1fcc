//! The client session machine.
//!
//! ```text
//!            connect()                CONNACK(SUCCESS)
//!   Down ───────────────▶ Connecting ───────────────────▶ Up
//!    ▲                        │ CONNACK(refused),             │ DISCONNECT, keepalive
//!    │                        │ connect timeout,              │ timeout, malformed input,
//!    └────────────────────────┴─ link_lost() ◀────────────────┘ close(), link_lost()
//! ```
//!
//! The machine outlives connections: unacknowledged PUBLISHes, cid and package counters and
//! stream sync points carry over, so a reconnect resumes where the last link stopped.
//!
//! Call order for a driver: `connect(now)` when a transport is up; then, in any order,
//! `handle_bytes` for received bytes, `handle_timeout` when `poll_timeout` passes, commands;
//! after each, drain `poll_transmit` (write it) and `poll_event`. On
//! [`ClientEvent::Disconnected`] write what is left and close the transport; when the transport
//! closes by itself, call `link_lost`. Reconnect after [`backoff`].

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand_core::RngCore;

use super::link::{disconnect_reason, wire, Link};
use crate::delivery::{Arrival, OrderedReceiver, PackageBuffer, PackageInsert, RetransmitQueue, Rto};
use crate::error::{ApiError, PeerError, ProtocolViolation};
use crate::frame::{Direction, Frame};
use crate::ids::{check_topic, Cid, PackageId, StreamId, TopicUse};
use crate::limits::{
    CONNECT_TIMEOUT, DEFAULT_KEEPALIVE_SECS, DEFAULT_MESSAGE_SIZE, DEFAULT_RECEIVE_WINDOW, DEFAULT_SYNC_LIMIT,
    KEEPALIVE_TIMEOUT_TENTHS, MAX_PACKAGE_COUNT, PACKAGE_TIMEOUT, SAFETY_SYNC_INTERVAL,
};
use crate::proto;
use crate::reason::ReasonCode;

/// Client settings and persisted counters.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Device id, stable across reconnects.
    pub device_id: String,
    /// Auth token.
    pub token: Bytes,
    /// Requested keepalive.
    pub keepalive_secs: u32,
    /// Largest reassembled message accepted.
    pub max_message_size: u32,
    /// DELIVER frames accepted in flight.
    pub receive_window: u32,
    /// First cid to use (persisted by a real client; 1 for a new device).
    pub first_cid: u64,
    /// First package id to use.
    pub first_package_id: u64,
    /// Known sync points, `(stream, highest seq released)`.
    pub sync_points: Vec<(StreamId, u64)>,
    /// Retransmission timeouts.
    pub rto: Rto,
}

impl ClientConfig {
    /// Defaults for a new device.
    pub fn new(device_id: impl Into<String>, token: impl Into<Bytes>) -> Self {
        ClientConfig {
            device_id: device_id.into(),
            token: token.into(),
            keepalive_secs: DEFAULT_KEEPALIVE_SECS,
            max_message_size: DEFAULT_MESSAGE_SIZE,
            receive_window: DEFAULT_RECEIVE_WINDOW,
            first_cid: 1,
            first_package_id: 1,
            sync_points: Vec::new(),
            rto: Rto::default(),
        }
    }
}

/// Something the application should know.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// CONNACK accepted the session.
    Connected {
        /// The broker kept the previous session's state.
        session_present: bool,
        /// The authenticated user.
        user_id: String,
    },
    /// The link is over; close the transport (after writing pending bytes).
    Disconnected {
        /// Why; `None` when the transport closed without a DISCONNECT.
        reason: Option<ReasonCode>,
        /// Whether the broker said so (DISCONNECT or refused CONNACK).
        by_peer: bool,
        /// Broker guidance: wait at least this long.
        retry_after: Option<Duration>,
    },
    /// The broker's outcome for one cid: stored (SUCCESS, or DUPLICATE for a retransmission
    /// of something stored before) or refused (any other reason).
    Acked(proto::PubAck),
    /// Every member of a package has its outcome: `Success` when all were stored, otherwise
    /// the first failure (for example PACKAGE_TIMEOUT: nothing of it was stored).
    PackageDone {
        /// The package.
        package_id: PackageId,
        /// Overall outcome.
        reason: ReasonCode,
    },
    /// A message, in stream order, once.
    Message(proto::Deliver),
    /// A whole package, members in index order.
    Package(Vec<proto::Deliver>),
    /// The broker had stored cids this machine never assigned (its state was lost): every
    /// unacknowledged message was renumbered by adding `offset` [REQ-HSK-015].
    CidsRenumbered {
        /// Added to every unacknowledged cid.
        offset: u64,
    },
    /// Any other frame for the application: SYNC_DONE, HISTORY_PAGE, SUBACK, UNSUBACK,
    /// RESPONSE, RECEIPT, PRESENCE, NOTIFY.
    Frame(Box<Frame>),
}

#[derive(Debug, Clone, Copy)]
enum State {
    Down,
    Connecting { deadline: Instant },
    Up(Live),
}

#[derive(Debug, Clone, Copy)]
struct Live {
    ping_interval: Duration,
    dead_after: Duration,
    next_ping: Instant,
    dead_at: Instant,
    next_safety_sync: Instant,
}

#[derive(Debug)]
struct StreamState {
    receiver: OrderedReceiver<proto::Deliver>,
    sync_outstanding: bool,
    ack_due: bool,
}

#[derive(Debug, Default)]
struct PackageProgress {
    outstanding: u32,
    failure: Option<ReasonCode>,
}

/// The client side of a Tern session. See the module docs for the call order.
pub struct ClientSession {
    config: ClientConfig,
    rng: Box<dyn RngCore + Send>,
    state: State,
    link: Option<Link>,
    events: VecDeque<ClientEvent>,
    session_id: Bytes,
    broker_window: u64,
    next_cid: u64,
    next_package_id: u64,
    unsent: VecDeque<proto::Publish>,
    inflight: RetransmitQueue<proto::Publish>,
    packages: HashMap<u64, PackageProgress>,
    streams: HashMap<StreamId, StreamState>,
    qos0_high: HashMap<StreamId, u64>,
    package_rx: PackageBuffer<proto::Deliver>,
    next_request_id: u32,
    backoff: (u32, u32),
    /// The broker's `max_message_size` from the last CONNACK (the default before one).
    peer_max_message_size: usize,
}

impl std::fmt::Debug for ClientSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSession")
            .field("state", &self.state)
            .field("next_cid", &self.next_cid)
            .finish_non_exhaustive()
    }
}

impl ClientSession {
    /// A disconnected session; `rng` supplies keepalive jitter.
    pub fn new(config: ClientConfig, rng: Box<dyn RngCore + Send>) -> Self {
        let window = u64::from(config.receive_window.max(1));
        let streams = config
            .sync_points
            .iter()
            .map(|&(s, seq)| {
                (
                    s,
                    StreamState {
                        receiver: OrderedReceiver::new(seq + 1, window),
                        sync_outstanding: false,
                        ack_due: false,
                    },
                )
            })
            .collect();
        ClientSession {
            next_cid: config.first_cid.max(1),
            next_package_id: config.first_package_id.max(1),
            inflight: RetransmitQueue::new(config.rto),
            config,
            rng,
            state: State::Down,
            link: None,
            events: VecDeque::new(),
            session_id: Bytes::new(),
            broker_window: 0,
            unsent: VecDeque::new(),
            packages: HashMap::new(),
            streams,
            qos0_high: HashMap::new(),
            package_rx: PackageBuffer::new(PACKAGE_TIMEOUT),
            next_request_id: 1,
            backoff: (1_000, 60_000),
            peer_max_message_size: DEFAULT_MESSAGE_SIZE as usize,
        }
    }

    /// Whether CONNACK has accepted the current link.
    pub fn is_connected(&self) -> bool {
        matches!(self.state, State::Up(_))
    }

    /// PUBLISHes not yet acknowledged (sent or waiting for window).
    pub fn unacknowledged(&self) -> usize {
        self.inflight.len() + self.unsent.len()
    }

    /// The next cid this machine will assign (persist it).
    pub fn next_cid(&self) -> Cid {
        Cid(self.next_cid)
    }

    /// Highest seq released to the application on a stream (its sync point).
    pub fn sync_point(&self, stream: StreamId) -> u64 {
        self.streams.get(&stream).map_or(0, |s| s.receiver.released())
    }

    /// Reconnect backoff bounds from the last CONNACK, in milliseconds.
    pub fn backoff_hint(&self) -> (u32, u32) {
        self.backoff
    }

    /// Starts a new link: queues CONNECT (resuming the previous session if there was one).
    pub fn connect(&mut self, now: Instant) -> Result<(), ApiError> {
        if !matches!(self.state, State::Down) {
            return Err(ApiError::LinkOpen);
        }
        let mut link = Link::new(self.config.max_message_size as usize, Direction::ToClient);
        let connect = proto::Connect {
            versions: vec![1],
            token: self.config.token.clone(),
            device_id: self.config.device_id.clone(),
            keepalive_secs: self.config.keepalive_secs,
            max_message_size: self.config.max_message_size,
            receive_window: self.config.receive_window,
            resume_session_id: self.session_id.clone(),
        };
        link.send(&Frame::Connect(connect))?;
        self.link = Some(link);
        self.state = State::Connecting { deadline: now + CONNECT_TIMEOUT };
        Ok(())
    }

    /// The transport closed under us.
    pub fn link_lost(&mut self, _now: Instant) {
        if !matches!(self.state, State::Down) {
            self.go_down(None, false, None);
        }
    }

    /// Closes the link normally with DISCONNECT.
    pub fn close(&mut self, _now: Instant) {
        if let Some(link) = self.link.as_mut() {
            link.close(ReasonCode::NormalDisconnect, String::new());
        }
        if !matches!(self.state, State::Down) {
            self.go_down(Some(ReasonCode::NormalDisconnect), false, None);
        }
    }

    fn go_down(&mut self, reason: Option<ReasonCode>, by_peer: bool, retry_after: Option<Duration>) {
        self.state = State::Down;
        for s in self.streams.values_mut() {
            s.sync_outstanding = false;
        }
        self.events.push_back(ClientEvent::Disconnected { reason, by_peer, retry_after });
    }

    /// Publishes one message; returns its cid (`None` for QoS 0). QoS 1/2 messages are kept
    /// and sent, or resent, until acknowledged, across reconnects.
    pub fn publish(&mut self, now: Instant, topic: &str, payload: Bytes, qos: u32) -> Result<Option<Cid>, ApiError> {
        self.publish_inner(now, topic, payload, qos, None, "")
    }

    /// As [`ClientSession::publish`], with a payload media type (e.g. `application/tern-e2ee`).
    pub fn publish_typed(
        &mut self,
        now: Instant,
        topic: &str,
        payload: Bytes,
        qos: u32,
        content_type: &str,
    ) -> Result<Option<Cid>, ApiError> {
        self.publish_inner(now, topic, payload, qos, None, content_type)
    }

    /// Publishes a package: the members are stored whole and in order, or not at all
    /// [REQ-PKG-003]. Returns the package id; [`ClientEvent::PackageDone`] reports the outcome.
    pub fn publish_package(
        &mut self,
        now: Instant,
        topic: &str,
        payloads: Vec<Bytes>,
        qos: u32,
    ) -> Result<PackageId, ApiError> {
        let count = payloads.len();
        if qos == 0 || qos > 2 {
            return Err(ApiError::InvalidQos(qos));
        }
        if count == 0 || count > MAX_PACKAGE_COUNT as usize {
            return Err(ApiError::PackageSize { got: count, max: MAX_PACKAGE_COUNT as usize });
        }
        check_topic("publish.topic", topic, TopicUse::Name)?;
        let package_id = self.next_package_id;
        self.next_package_id += 1;
        let count32 = u32::try_from(count).unwrap_or(MAX_PACKAGE_COUNT);
        self.packages.insert(package_id, PackageProgress { outstanding: count32, failure: None });
        for (index, payload) in payloads.into_iter().enumerate() {
            let index = u32::try_from(index).unwrap_or(0);
            let pkg = proto::PackageRef { package_id, index, count: count32 };
            self.publish_inner(now, topic, payload, qos, Some(pkg), "")?;
        }
        Ok(PackageId(package_id))
    }

    fn publish_inner(
        &mut self,
        now: Instant,
        topic: &str,
        payload: Bytes,
        qos: u32,
        package: Option<proto::PackageRef>,
        content_type: &str,
    ) -> Result<Option<Cid>, ApiError> {
        check_topic("publish.topic", topic, TopicUse::Name)?;
        if qos > 2 {
            return Err(ApiError::InvalidQos(qos));
        }
        let mut publish = proto::Publish {
            cid: 0,
            qos,
            topic: topic.to_owned(),
            payload,
            package,
            content_type: content_type.to_owned(),
            client_time_ms: 0,
            withdrawn: false,
        };
        // Room for the cid that is filled in below (a varint of at most 10 bytes).
        let size = prost::Message::encoded_len(&publish) + 11;
        if size > self.peer_max_message_size {
            return Err(ApiError::MessageTooLarge { size, max: self.peer_max_message_size });
        }
        if qos == 0 {
            let link =
                self.link.as_mut().filter(|_| matches!(self.state, State::Up(_))).ok_or(ApiError::NotConnected)?;
            link.send(&Frame::Publish(publish))?;
            self.sent(now);
            return Ok(None);
        }
        publish.cid = self.next_cid;
        self.next_cid += 1;
        self.unsent.push_back(publish);
        self.flush_unsent(now);
        Ok(Some(Cid(self.next_cid - 1)))
    }

    /// Sends a frame other than PUBLISH (SYNC, HISTORY, SUBSCRIBE, READ, REQUEST ...). Request
    /// ids of 0 are filled in; the id used is returned.
    pub fn send(&mut self, now: Instant, mut frame: Frame) -> Result<u32, ApiError> {
        if frame.frame_type().direction() == Direction::ToClient {
            return Err(ApiError::WrongDirection(frame.frame_type().name()));
        }
        let id = self.next_request_id;
        let used = match &mut frame {
            Frame::Sync(s) => fill(&mut s.request_id, id),
            Frame::HistoryRequest(h) => fill(&mut h.request_id, id),
            Frame::Subscribe(s) => fill(&mut s.request_id, id),
            Frame::Unsubscribe(s) => fill(&mut s.request_id, id),
            Frame::Request(r) => fill(&mut r.request_id, id),
            _ => 0,
        };
        if used == id {
            self.next_request_id = self.next_request_id.wrapping_add(1).max(1);
        }
        crate::frame::validate(&frame)?;
        let link = self.link.as_mut().filter(|_| matches!(self.state, State::Up(_))).ok_or(ApiError::NotConnected)?;
        link.send(&frame)?;
        self.sent(now);
        Ok(used)
    }

    /// Feeds received bytes.
    pub fn handle_bytes(&mut self, now: Instant, bytes: &[u8]) {
        let Some(link) = self.link.as_mut() else {
            return;
        };
        link.extend(bytes);
        loop {
            let next = match self.link.as_mut() {
                Some(link) => link.next_frame(),
                None => return,
            };
            match next {
                Ok(Some(frame)) => {
                    if let Err(e) = self.on_frame(now, frame) {
                        self.fail(e);
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    self.fail(e);
                    break;
                }
            }
            if matches!(self.state, State::Down) {
                break;
            }
        }
        if let State::Up(live) = &mut self.state {
            live.dead_at = now + live.dead_after;
        }
        self.flush_acks(now);
    }

    fn fail(&mut self, e: PeerError) {
        if let Some(link) = self.link.as_mut() {
            link.close(e.reason(), e.to_string());
        }
        self.go_down(Some(e.reason()), false, None);
    }

    fn on_frame(&mut self, now: Instant, frame: Frame) -> Result<(), PeerError> {
        if let Frame::Disconnect(d) = &frame {
            if let Some(link) = self.link.as_mut() {
                link.closed = true;
            }
            let retry = (d.retry_after_ms > 0).then(|| Duration::from_millis(u64::from(d.retry_after_ms)));
            self.go_down(Some(disconnect_reason(d)), true, retry);
            return Ok(());
        }
        match self.state {
            State::Down => Ok(()),
            State::Connecting { .. } => match frame {
                Frame::ConnAck(ack) => self.on_connack(now, ack),
                other => Err(unexpected(&other, "REQ-HSK-001")),
            },
            State::Up(_) => self.on_live_frame(now, frame),
        }
    }

    fn on_connack(&mut self, now: Instant, ack: proto::ConnAck) -> Result<(), PeerError> {
        if ack.reason != wire(ReasonCode::Success) {
            if let Some(link) = self.link.as_mut() {
                link.closed = true;
            }
            let reason = ReasonCode::from_u32(ack.reason).unwrap_or(ReasonCode::ProtocolError);
            self.go_down(Some(reason), true, None);
            return Ok(());
        }
        if ack.version != 1 {
            return Err(ProtocolViolation::new(
                "REQ-HSK-016",
                ReasonCode::UnsupportedVersion,
                "broker chose a version not offered",
            )
            .into());
        }
        let keepalive = Duration::from_secs(u64::from(ack.keepalive_secs.max(1)));
        // A per-connection random phase in [0.75, 1.0) of the interval spreads heartbeat tides.
        let ping_interval = keepalive.mul_f64(0.75 + f64::from(self.rng.next_u32() % 250) / 1000.0);
        let dead_after = keepalive * KEEPALIVE_TIMEOUT_TENTHS / 10;
        self.state = State::Up(Live {
            ping_interval,
            dead_after,
            next_ping: now + ping_interval,
            dead_at: now + dead_after,
            next_safety_sync: now + SAFETY_SYNC_INTERVAL,
        });
        self.session_id = ack.session_id.clone();
        self.broker_window = u64::from(ack.receive_window.max(1));
        self.backoff = (ack.backoff_min_ms.max(100), ack.backoff_max_ms.max(ack.backoff_min_ms.max(100)));
        self.peer_max_message_size = ack.max_message_size.max(crate::limits::MIN_MESSAGE_SIZE) as usize;
        if let Some(link) = self.link.as_mut() {
            link.peer_max_message_size = self.peer_max_message_size;
        }
        if ack.last_cid >= self.next_cid {
            self.renumber(ack.last_cid + 1);
        }
        let window = u64::from(self.config.receive_window.max(1));
        let inbox = self.streams.entry(StreamId::Inbox).or_insert_with(|| StreamState {
            receiver: OrderedReceiver::new(1, window),
            sync_outstanding: false,
            ack_due: false,
        });
        let mut released = Vec::new();
        inbox.receiver.skip_to(ack.inbox_acked_seq + 1, &mut released);
        self.release(now, StreamId::Inbox, released)?;
        self.events.push_back(ClientEvent::Connected { session_present: ack.session_present, user_id: ack.user_id });
        // Whatever is unacknowledged goes again, in cid order, within the new window
        // [REQ-HSK-012].
        for p in self.inflight.take_all().into_iter().rev() {
            self.unsent.push_front(p);
        }
        self.flush_unsent(now);
        Ok(())
    }

    /// The broker already stored cids up to `first - 1` that were not ours: shift every
    /// unacknowledged message so none collides.
    fn renumber(&mut self, first: u64) {
        let lowest = self.inflight.lowest().or_else(|| self.unsent.front().map(|p| p.cid)).unwrap_or(self.next_cid);
        let offset = first.saturating_sub(lowest);
        for (key, p) in self.inflight.iter_mut() {
            *key += offset;
            p.cid += offset;
        }
        for p in &mut self.unsent {
            p.cid += offset;
        }
        self.next_cid += offset;
        self.events.push_back(ClientEvent::CidsRenumbered { offset });
    }

    fn on_live_frame(&mut self, now: Instant, frame: Frame) -> Result<(), PeerError> {
        match frame {
            Frame::Ping(p) => {
                if let Some(link) = self.link.as_mut() {
                    link.send_control(&Frame::Pong(p));
                }
                self.sent(now);
            }
            Frame::Pong(_) => {}
            Frame::PubAck(ack) => self.on_puback(now, ack),
            Frame::Deliver(d) => self.on_deliver(now, d)?,
            Frame::Notify(n) => {
                if let Some(stream) = StreamId::from_proto(n.stream.as_ref()) {
                    let window = u64::from(self.config.receive_window.max(1));
                    let state = self.streams.entry(stream).or_insert_with(|| StreamState {
                        receiver: OrderedReceiver::new(n.acked_seq + 1, window),
                        sync_outstanding: false,
                        ack_due: false,
                    });
                    // Pull when the stream is ahead of us [REQ-SYN-001].
                    if n.latest_seq > state.receiver.released() {
                        self.request_sync(now, stream)?;
                    }
                }
                self.events.push_back(ClientEvent::Frame(Box::new(Frame::Notify(n))));
            }
            Frame::SyncDone(done) => {
                if let Some(stream) = StreamId::from_proto(done.stream.as_ref()) {
                    if let Some(s) = self.streams.get_mut(&stream) {
                        s.sync_outstanding = false;
                    }
                    if done.more {
                        self.request_sync(now, stream)?;
                    }
                }
                self.events.push_back(ClientEvent::Frame(Box::new(Frame::SyncDone(done))));
            }
            Frame::ConnAck(_) => return Err(unexpected(&frame, "REQ-HSK-002")),
            other => self.events.push_back(ClientEvent::Frame(Box::new(other))),
        }
        Ok(())
    }

    fn on_puback(&mut self, now: Instant, ack: proto::PubAck) {
        // An ack for a cid not outstanding is a late duplicate: ignored [REQ-QOS-015].
        let Some(publish) = self.inflight.ack(ack.cid) else {
            return;
        };
        let reason = ReasonCode::from_u32(ack.reason).unwrap_or(ReasonCode::ProtocolError);
        self.events.push_back(ClientEvent::Acked(ack));
        if let Some(pkg) = publish.package {
            if let Some(progress) = self.packages.get_mut(&pkg.package_id) {
                progress.outstanding = progress.outstanding.saturating_sub(1);
                if !matches!(reason, ReasonCode::Success | ReasonCode::Duplicate) && progress.failure.is_none() {
                    progress.failure = Some(reason);
                }
                if progress.outstanding == 0 {
                    let failure = progress.failure;
                    self.packages.remove(&pkg.package_id);
                    self.events.push_back(ClientEvent::PackageDone {
                        package_id: PackageId(pkg.package_id),
                        reason: failure.unwrap_or(ReasonCode::Success),
                    });
                }
            }
        }
        self.flush_unsent(now);
    }

    fn on_deliver(&mut self, now: Instant, d: proto::Deliver) -> Result<(), PeerError> {
        let Some(stream) = StreamId::from_proto(d.stream.as_ref()) else {
            return Ok(());
        };
        if d.qos == 0 {
            // QoS 0 (rooms): newest wins, nothing is acknowledged or repaired [REQ-QOS-016].
            let high = self.qos0_high.entry(stream).or_insert(0);
            if d.seq > *high {
                *high = d.seq;
                self.events.push_back(ClientEvent::Message(d));
            }
            return Ok(());
        }
        let window = u64::from(self.config.receive_window.max(1));
        // A stream first seen through DELIVER starts at that seq (no NOTIFY gave a sync point).
        let state = self.streams.entry(stream).or_insert_with(|| StreamState {
            receiver: OrderedReceiver::new(d.seq, window),
            sync_outstanding: false,
            ack_due: false,
        });
        let mut released = Vec::new();
        let seq = d.seq;
        match state.receiver.receive(seq, d, &mut released) {
            // A duplicate is acknowledged again so the broker stops resending it [REQ-QOS-011].
            Arrival::Duplicate | Arrival::Released => state.ack_due = true,
            Arrival::Buffered { first, .. } => {
                if first {
                    self.request_sync(now, stream)?;
                }
            }
            Arrival::BeyondWindow => {}
        }
        self.release(now, stream, released)
    }

    fn release(
        &mut self,
        now: Instant,
        stream: StreamId,
        released: Vec<(u64, proto::Deliver)>,
    ) -> Result<(), PeerError> {
        if let (false, Some(s)) = (released.is_empty(), self.streams.get_mut(&stream)) {
            s.ack_due = true;
        }
        for (_, d) in released {
            let Some(pkg) = d.package else {
                self.events.push_back(ClientEvent::Message(d));
                continue;
            };
            // Members arrive consecutively (REQ-PKG-006); the buffer checks and holds them.
            match self.package_rx.insert(now, &pkg, d).map_err(PeerError::from)? {
                PackageInsert::Complete(members) => self.events.push_back(ClientEvent::Package(members)),
                PackageInsert::Pending | PackageInsert::Expired => {}
            }
        }
        Ok(())
    }

    fn request_sync(&mut self, now: Instant, stream: StreamId) -> Result<(), PeerError> {
        let Some(s) = self.streams.get_mut(&stream) else {
            return Ok(());
        };
        if s.sync_outstanding {
            return Ok(());
        }
        s.sync_outstanding = true;
        let after_seq = s.receiver.released();
        let sync = proto::Sync { request_id: 0, stream: Some(stream.to_proto()), after_seq, limit: DEFAULT_SYNC_LIMIT };
        // SYNC is a small control frame; it can only fail on a closed link, where the sync
        // point is sent again after the next CONNACK anyway.
        let _ = self.send(now, Frame::Sync(sync));
        Ok(())
    }

    fn flush_acks(&mut self, now: Instant) {
        let due: Vec<(StreamId, u64)> = self
            .streams
            .iter_mut()
            .filter(|(_, s)| s.ack_due && s.receiver.released() > 0)
            .map(|(&id, s)| {
                s.ack_due = false;
                (id, s.receiver.released())
            })
            .collect();
        for (stream, seq) in due {
            // Cumulative: everything through the released point [REQ-QOS-010].
            let ack = proto::DeliverAck { stream: Some(stream.to_proto()), seq };
            if self.link_send(&Frame::DeliverAck(ack)).is_ok() {
                self.sent(now);
            }
        }
    }

    fn flush_unsent(&mut self, now: Instant) {
        if !matches!(self.state, State::Up(_)) {
            return;
        }
        while let Some(front) = self.unsent.front() {
            // The window is a range: nothing beyond lowest-unacknowledged + window [REQ-QOS-006].
            let lowest = self.inflight.lowest().unwrap_or(front.cid);
            if front.cid >= lowest + self.broker_window {
                break;
            }
            let Some(p) = self.unsent.pop_front() else {
                break;
            };
            let (p, sent) = match self.send_publish(p) {
                // Numbered while the broker accepted it, above the limit it announces now.
                // Skipping the cid would hold every later one at the broker (REQ-QOS-007):
                // withdraw it instead [REQ-QOS-019].
                (p, Err(ApiError::MessageTooLarge { .. })) => self.send_publish(withdrawal(p)),
                sent => sent,
            };
            self.inflight.push(now, p.cid, p);
            if sent.is_ok() {
                self.sent(now);
            }
        }
    }

    /// Sends a PUBLISH and gives it back, to be kept for retransmission. A withdrawal goes as
    /// its cid and qos only; the package it keeps is for its outcome (`on_puback`).
    fn send_publish(&mut self, p: proto::Publish) -> (proto::Publish, Result<(), ApiError>) {
        if p.withdrawn {
            let wire = proto::Publish { cid: p.cid, qos: p.qos, withdrawn: true, ..Default::default() };
            let sent = self.link_send(&Frame::Publish(wire));
            return (p, sent);
        }
        // Sent as a frame and moved back out, without a copy.
        let frame = Frame::Publish(p);
        let sent = self.link_send(&frame);
        let Frame::Publish(p) = frame else { unreachable!("built as a PUBLISH just above") };
        (p, sent)
    }

    fn link_send(&mut self, frame: &Frame) -> Result<(), ApiError> {
        match self.link.as_mut() {
            Some(link) => link.send(frame),
            None => Err(ApiError::NotConnected),
        }
    }

    fn sent(&mut self, now: Instant) {
        if let State::Up(live) = &mut self.state {
            live.next_ping = now + live.ping_interval;
        }
    }

    /// Drives timers: connect timeout, keepalive, retransmission, periodic sync.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Down => {}
            State::Connecting { deadline } => {
                if now >= deadline {
                    self.fail(ProtocolViolation::new("REQ-HSK-006", ReasonCode::ConnectTimeout, "no CONNACK").into());
                }
            }
            State::Up(live) => {
                if now >= live.dead_at {
                    // Nothing heard for 1.5 intervals: the link is dead, even if TCP says not [REQ-KAL-005].
                    self.fail(
                        ProtocolViolation::new("REQ-KAL-005", ReasonCode::KeepaliveTimeout, "broker silent").into(),
                    );
                    return;
                }
                for p in self.inflight.due(now) {
                    if self.send_publish(p).1.is_ok() {
                        self.sent(now);
                    }
                }
                if now >= live.next_safety_sync {
                    if let State::Up(l) = &mut self.state {
                        l.next_safety_sync = now + SAFETY_SYNC_INTERVAL;
                    }
                    let _ = self.request_sync(now, StreamId::Inbox);
                }
                if let State::Up(l) = self.state {
                    if now >= l.next_ping {
                        let nonce = self.rng.next_u64();
                        if self.link_send(&Frame::Ping(proto::Ping { nonce })).is_ok() {
                            self.sent(now);
                        }
                    }
                }
            }
        }
    }

    /// When `handle_timeout` next needs to run.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Down => None,
            State::Connecting { deadline } => Some(deadline),
            State::Up(live) => {
                let mut t = live.next_ping.min(live.dead_at).min(live.next_safety_sync);
                if let Some(r) = self.inflight.next_deadline() {
                    t = t.min(r);
                }
                Some(t)
            }
        }
    }

    /// Bytes to write to the transport.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.link.as_mut().and_then(Link::take_transmit)
    }

    /// The next event for the application.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }
}

fn fill(slot: &mut u32, id: u32) -> u32 {
    if *slot == 0 {
        *slot = id;
    }
    *slot
}

/// The withdrawal that takes `p`'s place [REQ-QOS-019]: its cid and qos, and, kept here only,
/// the package it belonged to, so the broker's answer (MESSAGE_TOO_LARGE, or the first outcome
/// if the message was stored before the limit fell) settles that package too.
fn withdrawal(p: proto::Publish) -> proto::Publish {
    proto::Publish { cid: p.cid, qos: p.qos, withdrawn: true, package: p.package, ..Default::default() }
}

fn unexpected(frame: &Frame, req: &'static str) -> PeerError {
    ProtocolViolation::new(req, ReasonCode::UnexpectedFrame, format!("{} not allowed now", frame.frame_type().name()))
        .into()
}

/// Reconnect delay after `attempt` failures: uniform in `[min, min(max, min * 2^attempt)]`
/// (exponential backoff with jitter, so a broker restart does not cause a reconnect storm)
/// [REQ-KAL-006].
pub fn backoff(attempt: u32, min_ms: u32, max_ms: u32, rng: &mut dyn RngCore) -> Duration {
    let min = u64::from(min_ms.max(1));
    let cap = u64::from(max_ms).max(min).min(min.saturating_mul(1u64 << attempt.min(20)));
    Duration::from_millis(min + rng.next_u64() % (cap - min + 1))
}
