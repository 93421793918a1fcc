//! One MQTT connection: CONNECT and authentication, PUBLISH into Tern's routes, SUBSCRIBE,
//! and delivery of stored messages from the user's inbox (spec chapter 15).
//!
//! Stored messages are never pushed from memory: a router push only says "the inbox has news",
//! and the connection reads the inbox from its position, so offline backlog and live traffic are
//! one ordered stream, and the position moves only on acknowledgement (REQ-MQT-010).

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode;
use tern_codec::ids::topic_matches;
use tern_codec::proto;
use tern_codec::ReasonCode;

use super::outgoing::{live_match, pkid_for, presence_publish, publish_out, v4_live_publish};
use super::packets::{
    self, AckReason, ConnAckInfo, ConnectIn, ConnectOutcome, DecodeError, Incoming, Outgoing, PublishIn, PublishOut,
    Version, Will,
};
use super::topics::{check_filter, refusal, FilterKind, Subscription};
use super::{Mailbox, MqttIo};
use crate::connection::{
    is_ephemeral, publish_ephemeral, route, subscribe_ephemeral, unsubscribe_ephemeral, Ephemeral, PublishBudget,
};
use crate::server::{Live, LiveDeliver, Outbox, Shared, ToConnection};
use crate::store::{MqttSessionRecord, NewMessage};

/// Unacknowledged deliveries at once when the device names no Receive Maximum.
const DEFAULT_WINDOW: u16 = 32;
/// Most unacknowledged deliveries at once, whatever the device asks for.
const MAX_WINDOW: u16 = 1024;
/// Inbox messages read from the store at a time.
const READ_BATCH: usize = 64;

/// A delivery of a stored message not yet acknowledged (or done, behind one that is not).
struct Inflight {
    seq: u64,
    pkid: u16,
    done: bool,
}

/// The device, once CONNECT is accepted.
struct Device {
    user: String,
    device: String,
    /// The connection's PUBLISH budget, as for native connections (`BrokerOptions::publish_rate`).
    budget: PublishBudget,
    /// Seconds the session outlives the connection (`None`: a clean session).
    persistent: Option<u32>,
    will: Option<Box<Will>>,
}

/// What a parked connection keeps (`park`): the part of `Conn` that is not empty between
/// packets.
pub(super) struct Idle {
    shared: Arc<Shared>,
    conn_id: u64,
    version: Version,
    mailbox: Arc<Mailbox>,
    me: Option<Box<Device>>,
    subs: Vec<Subscription>,
    next_read: u64,
    saved_cursor: u64,
    window: u16,
    /// The device's Maximum Packet Size (`u32::MAX`: none).
    max_out: u32,
    /// How long the device may stay silent in ms, 1.5 × its keep alive (0: forever).
    keep_alive_ms: u32,
}

impl Idle {
    pub(super) fn mailbox(&self) -> &Arc<Mailbox> {
        &self.mailbox
    }

    /// The broker's runtime, to resume on.
    pub(super) fn runtime(&self) -> Option<&tokio::runtime::Handle> {
        self.shared.mqtt.runtime.get()
    }

    /// The broker's count of parked connections.
    pub(super) fn parked_gauge(&self) -> &super::ParkedGauge {
        self.shared.mqtt.parked()
    }
}

/// How `Conn::serve` stopped.
enum Served {
    Ended,
    /// Nothing in progress and nothing to do for a while: park.
    Quiet,
}

struct Conn {
    shared: Arc<Shared>,
    conn_id: u64,
    version: Version,
    mailbox: Arc<Mailbox>,
    me: Option<Box<Device>>,
    subs: Vec<Subscription>,
    /// Bytes received but not yet a whole packet.
    rbuf: BytesMut,
    /// Packets to send once the batch they answer is durable.
    wbuf: BytesMut,
    // Delivery from the inbox.
    next_read: u64,
    saved_cursor: u64,
    inflight: VecDeque<Inflight>,
    pending: usize,
    window: u16,
    /// The device's Maximum Packet Size (`u32::MAX`: none).
    max_out: u32,
    /// Store writes of this batch (commits with the members to notify, QoS 2 releases), in
    /// order; what they caused is sent and delivered once they are durable.
    committed: Vec<(crate::store::PendingCommit, Option<crate::members::MemberSet>)>,
    /// How long the device may stay silent in ms, 1.5 × its keep alive (0: forever).
    keep_alive_ms: u32,
    /// Set when the connection should end after writing what is queued.
    closing: bool,
    /// The device ended with DISCONNECT (no Will).
    clean_exit: bool,
    /// Park at the next moment with nothing in progress (just connected, or quiet a while).
    park_when_quiet: bool,
}

/// Drives one accepted MQTT connection to its end.
/// (A plain function returning `drive`'s future: an `async fn` would hold the connection
/// twice, once in its own state and once in `drive`'s, doubling every idle task.)
pub(crate) fn run<S: MqttIo>(shared: Arc<Shared>, io: S, peer: SocketAddr) -> impl Future<Output = ()> + Send {
    let count = shared.gauge.count.fetch_add(1, Ordering::AcqRel) + 1;
    shared.metrics.connections_total.fetch_add(1, Ordering::Relaxed);
    let conn_id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%peer, conn_id, "MQTT connection open");
    let busy = count as usize > shared.options.max_connections;
    if S::PARKABLE {
        shared.mqtt.runtime.get_or_init(tokio::runtime::Handle::current);
    }
    let conn = Conn::from_idle(Idle {
        shared,
        conn_id,
        version: Version::V4,
        mailbox: Arc::new(Mailbox::default()),
        me: None,
        subs: Vec::new(),
        next_read: 0,
        saved_cursor: 0,
        window: DEFAULT_WINDOW,
        max_out: u32::MAX,
        keep_alive_ms: 0,
    });
    conn.shared.mqtt.add(conn_id, conn.mailbox.clone());
    conn.drive(io, busy)
}

/// Serves a parked connection again (`park` spawns this when it has news).
pub(super) fn resume(io: tokio::net::TcpStream, idle: Idle) -> impl Future<Output = ()> + Send {
    Conn::from_idle(idle).drive(io, false)
}

/// Ends a parked connection whose socket could not be resumed.
pub(super) async fn abandon(idle: Idle) {
    Conn::from_idle(idle).end().await;
}

impl Conn {
    fn from_idle(i: Idle) -> Conn {
        Conn {
            shared: i.shared,
            conn_id: i.conn_id,
            version: i.version,
            mailbox: i.mailbox,
            me: i.me,
            subs: i.subs,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            next_read: i.next_read,
            saved_cursor: i.saved_cursor,
            inflight: VecDeque::new(),
            pending: 0,
            window: i.window,
            max_out: i.max_out,
            committed: Vec::new(),
            keep_alive_ms: i.keep_alive_ms,
            closing: false,
            clean_exit: false,
            park_when_quiet: false,
        }
    }

    /// Only for a quiet connection: what `from_idle` needs to carry on.
    fn into_idle(self) -> Idle {
        Idle {
            shared: self.shared,
            conn_id: self.conn_id,
            version: self.version,
            mailbox: self.mailbox,
            me: self.me,
            subs: self.subs,
            next_read: self.next_read,
            saved_cursor: self.saved_cursor,
            window: self.window,
            max_out: self.max_out,
            keep_alive_ms: self.keep_alive_ms,
        }
    }

    /// Serves the connection until it ends, or parks it once it is quiet.
    async fn drive<S: MqttIo>(mut self, mut io: S, busy: bool) {
        if let Served::Quiet = self.serve(&mut io, busy).await {
            match io.into_socket() {
                Ok(socket) => return super::park::park(socket, self.into_idle()),
                Err(e) => tracing::info!(conn = self.conn_id, error = %e, "MQTT connection lost while parking"),
            }
        }
        // Boxed, like the flush: it runs once, at the end.
        Box::pin(self.end()).await;
    }

    /// The connection is over.
    async fn end(mut self) {
        self.shared.mqtt.remove(self.conn_id);
        self.finish().await;
        tracing::debug!(conn_id = self.conn_id, "MQTT connection closed");
        // The store handle goes before the connection counts itself out (shutdown then
        // closes the store).
        let gauge = self.shared.gauge.clone();
        drop(self);
        gauge.leave();
    }

    /// Nothing in progress: no partial packet, nothing to write, deliver, acknowledge or store.
    fn is_quiet(&self) -> bool {
        self.me.is_some()
            && !self.closing
            && self.rbuf.is_empty()
            && self.wbuf.is_empty()
            && self.inflight.is_empty()
            && self.committed.is_empty()
            && !self.mailbox.has_news()
    }

    async fn serve<S: MqttIo>(&mut self, io: &mut S, busy: bool) -> Served {
        let mut connected = self.me.is_some();
        if !connected {
            self.mailbox.expect_within(Some(tern_codec::limits::CONNECT_TIMEOUT));
        }
        loop {
            if !self.wbuf.is_empty() {
                let out = std::mem::take(&mut self.wbuf);
                self.shared.metrics.bytes_out.fetch_add(out.len() as u64, Ordering::Relaxed);
                if io.write_all(&out).await.is_err() {
                    return Served::Ended;
                }
            }
            if self.closing {
                io.shutdown().await;
                return Served::Ended;
            }
            if S::PARKABLE && self.park_when_quiet && self.is_quiet() && super::park::available() {
                return Served::Quiet;
            }
            // One small future for an idle connection: its mailbox (router messages, timers,
            // shutdown, all raised by others) or its socket.
            let (mailbox, rbuf) = (&self.mailbox, &mut self.rbuf);
            let event = std::future::poll_fn(|cx| {
                if mailbox.poll_news(cx).is_ready() {
                    return Poll::Ready(None);
                }
                io.poll_read_more(cx, rbuf).map(Some)
            })
            .await;
            let read = match event {
                None => {
                    self.on_mail();
                    continue;
                }
                Some(read) => read,
            };
            self.mailbox.active();
            self.park_when_quiet = false;
            match read {
                Ok(0) | Err(_) => return Served::Ended,
                Ok(n) => {
                    self.shared.metrics.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                    if !connected {
                        match packets::peek_level(&self.rbuf) {
                            Ok(None) => continue,
                            Ok(Some(4)) => self.version = Version::V4,
                            Ok(Some(5)) => self.version = Version::V5,
                            Ok(Some(_)) => {
                                // REQ-MQT-001: an answer any MQTT client understands.
                                self.wbuf.extend_from_slice(&packets::CONNACK_UNSUPPORTED_LEVEL);
                                self.closing = true;
                                continue;
                            }
                            Err(_) => return Served::Ended,
                        }
                        connected = true;
                        if busy {
                            self.send(Outgoing::ConnAck(ConnectOutcome::Busy, ConnAckInfo::default()));
                            self.closing = true;
                            continue;
                        }
                    }
                    self.on_bytes().await;
                    if self.me.is_some() {
                        self.mailbox.expect_within(
                            (self.keep_alive_ms > 0).then(|| Duration::from_millis(self.keep_alive_ms.into())),
                        );
                    }
                }
            }
        }
    }

    fn send(&mut self, p: Outgoing) {
        if let Err(e) = packets::encode(self.version, p, &mut self.wbuf) {
            tracing::warn!(error = %e, "MQTT packet not encoded");
        }
    }

    /// Ends the connection: MQTT 5 says why first; 3.1.1 just closes.
    fn disconnect(&mut self, reason: DisconnectReasonCode) {
        if self.me.is_some() {
            self.send(Outgoing::Disconnect(reason));
        }
        self.closing = true;
    }

    /// Handles every whole packet received, then makes their stores durable before anything
    /// they caused is sent (REQ-MQT-008).
    async fn on_bytes(&mut self) {
        let max = self.max_packet();
        while !self.closing {
            match packets::decode(self.version, &mut self.rbuf, max) {
                Ok(None) => break,
                Ok(Some(p)) => self.on_packet(p),
                Err(DecodeError::TooLarge) => self.disconnect(DisconnectReasonCode::PacketTooLarge),
                Err(e) => {
                    tracing::info!(conn = self.conn_id, error = ?e, "malformed MQTT packet");
                    self.disconnect(DisconnectReasonCode::MalformedPacket);
                }
            }
        }
        if self.rbuf.is_empty() {
            // Idle connections keep no buffer.
            self.rbuf = BytesMut::new();
        }
        self.complete().await;
    }

    /// Waits for this batch's store writes to be durable (group commit), then lets the router
    /// deliver the messages; the acknowledgements wait in `wbuf` until then.
    async fn complete(&mut self) {
        if self.committed.is_empty() {
            return;
        }
        // Boxed: this wait is rarely live, so it stays out of every idle connection's task.
        let durable = match Box::pin(wait_durable(std::mem::take(&mut self.committed))).await {
            Ok(durable) => durable,
            Err(e) => {
                tracing::error!(error = %e, "MQTT commit failed");
                // Nothing acknowledged: the device retransmits after reconnecting. MQTT 5 is
                // told why (as for any store failure); 3.1.1 is just closed.
                self.wbuf.clear();
                self.disconnect(DisconnectReasonCode::ImplementationSpecificError);
                return;
            }
        };
        let now = tokio::time::Instant::now().into_std();
        for (committed, notify) in durable {
            for c in committed {
                self.shared.metrics.stored(c.ack.conversation_id);
                let mut router = self.shared.router();
                if let Some(members) = &notify {
                    router.notify(members, c.ack.conversation_id);
                }
                for (to, d) in c.deliveries {
                    router.push(&to, None, d, now);
                }
            }
        }
    }

    fn max_packet(&self) -> usize {
        self.shared.options.session.max_message_size as usize + 1024
    }

    fn on_packet(&mut self, p: Incoming) {
        if self.me.is_none() {
            return match p {
                Incoming::Connect(c) => self.on_connect(*c),
                _ => self.closing = true,
            };
        }
        match p {
            Incoming::Connect(_) => self.disconnect(DisconnectReasonCode::ProtocolError),
            Incoming::Publish(p) => self.on_publish(p),
            Incoming::PubAck(pkid) | Incoming::PubComp(pkid) => {
                self.acknowledged(pkid);
                self.pump();
            }
            Incoming::PubRec(pkid) => self.send(Outgoing::PubRel(pkid)),
            Incoming::PubRel(pkid) => {
                if let Some(me) = &self.me {
                    // PUBCOMP goes out once the release is durable (complete()).
                    let released = self.shared.store.release_mqtt_pkid(&me.user, &me.device, pkid);
                    self.committed.push((released, None));
                }
                self.send(Outgoing::PubComp(pkid, AckReason::Success));
            }
            Incoming::Subscribe { pkid, filters } => self.on_subscribe(pkid, filters),
            Incoming::Unsubscribe { pkid, filters } => self.on_unsubscribe(pkid, filters),
            Incoming::PingReq => self.send(Outgoing::PingResp),
            Incoming::Disconnect => {
                self.clean_exit = true;
                self.closing = true;
            }
            Incoming::Unexpected(what) => {
                tracing::info!(conn = self.conn_id, what, "unexpected MQTT packet");
                self.disconnect(DisconnectReasonCode::ProtocolError);
            }
        }
    }

    /// CONNECT: authenticate with the token in the password (REQ-MQT-002, REQ-MQT-003), take
    /// the device over, open or resume the session (REQ-MQT-011).
    fn on_connect(&mut self, c: ConnectIn) {
        let password = c.password.as_deref().unwrap_or_default();
        let claims = match self.shared.tokens.verify_token(password.as_bytes(), crate::unix_now()) {
            Ok(claims) => claims,
            Err(reason) => {
                tracing::info!(conn = self.conn_id, %reason, "MQTT CONNECT refused");
                self.send(Outgoing::ConnAck(ConnectOutcome::NotAuthorized, ConnAckInfo::default()));
                self.closing = true;
                return;
            }
        };
        if !c.client_id.is_empty() && c.client_id != claims.device {
            self.send(Outgoing::ConnAck(ConnectOutcome::BadClientId, ConnAckInfo::default()));
            self.closing = true;
            return;
        }
        if c.username.as_ref().is_some_and(|u| *u != claims.user) {
            self.send(Outgoing::ConnAck(ConnectOutcome::BadUserName, ConnAckInfo::default()));
            self.closing = true;
            return;
        }
        let (user, device) = (claims.user, claims.device);
        // Take the device over before reading its session: from here the older connection
        // leaves the stored session alone (see `finish`).
        self.take_over(&user, &device);
        let store = &self.shared.store;
        // 3.1.1: Clean Session = 0 is a session that never expires; 5: the expiry interval.
        let persistent = match self.version {
            Version::V4 => (!c.clean).then_some(u32::MAX),
            Version::V5 => (c.session_expiry > 0).then_some(c.session_expiry),
        };
        let now_ms = crate::unix_now_ms();
        let stored = if c.clean { None } else { store.mqtt_session(&user, &device).ok().flatten() };
        let stored = stored.filter(|s| !s.expired(now_ms));
        if stored.is_none() {
            if let Err(e) = store.drop_mqtt_session(&user, &device) {
                tracing::error!(error = %e, "MQTT session not dropped");
            }
        }
        let session_present = stored.is_some();
        let latest = store.inbox_latest(&user).unwrap_or(0);
        self.next_read = if session_present { store.cursor(&user, &device).unwrap_or(latest) } else { latest };
        if persistent.is_some() && !session_present {
            let _ = store.advance_cursor(&user, &device, latest);
        }
        self.saved_cursor = self.next_read;
        self.window = c.receive_max.map_or(DEFAULT_WINDOW, |w| w.clamp(1, MAX_WINDOW));
        self.max_out = c.max_packet_size.unwrap_or(u32::MAX);
        // Silent for 1.5 × keep alive: the connection is over (MQTT 3.1.1 3.1.2.10).
        self.keep_alive_ms = u32::from(c.keep_alive) * 1500;
        self.me = Some(Box::new(Device {
            user: user.clone(),
            device: device.clone(),
            budget: PublishBudget::new(self.shared.options.publish_rate),
            persistent,
            will: c.will.map(Box::new),
        }));
        self.send(Outgoing::ConnAck(
            ConnectOutcome::Accepted,
            ConnAckInfo {
                session_present,
                receive_max: u16::try_from(tern_codec::limits::MAX_RECEIVE_WINDOW).unwrap_or(u16::MAX),
                max_packet_size: u32::try_from(self.max_packet()).unwrap_or(u32::MAX),
                session_expiry: None,
            },
        ));
        // Debug, not info: fleets reconnect by the thousand.
        tracing::debug!(%user, %device, mqtt = ?self.version, session_present, "MQTT session open");
        // Most devices go quiet after connecting: park at once, so a storm of connections does
        // not hold a task each until the sweeper finds them quiet.
        self.park_when_quiet = true;
        self.shared.metrics.sessions_total.fetch_add(1, Ordering::Relaxed);
        // The stored record needs rewriting unless it already says what this connection would
        // write: a session that never expires, with every subscription still allowed (its
        // disconnect time only matters to sessions that expire). Saves a store write per resume
        // in a reconnect storm.
        let mut unchanged = false;
        if let Some(s) = stored {
            let (count, expiry) = (s.subscriptions.len(), s.expiry_secs);
            // Restore the subscriptions, each checked again: membership may have changed.
            for (filter, qos) in s.subscriptions {
                if let Ok(sub) = check_filter(&self.shared, &user, &filter, qos) {
                    self.register(&sub);
                    self.subs.push(sub);
                }
            }
            unchanged = self.subs.len() == count && persistent == Some(u32::MAX) && expiry == u32::MAX;
        }
        if !unchanged {
            self.save_session(0);
        }
        self.pump();
    }

    /// Makes this connection the device's live one, closing any other (REQ-MQT-004).
    fn take_over(&mut self, user: &str, device: &str) {
        let now_ms = crate::unix_now_ms();
        let mut router = self.shared.router();
        if let Some(old) = router.live.get_mut(user).and_then(|d| d.remove(device)) {
            let _ = old.tx.send(ToConnection::Close(ReasonCode::SessionTakenOver));
        }
        router.live.entry(user.to_owned()).or_default().insert(
            device.to_owned(),
            Live {
                conn_id: self.conn_id,
                tx: Outbox::Mqtt(self.mailbox.clone()),
                session_id: Vec::new(),
                since_ms: now_ms,
                status: proto::PresenceStatus::Online,
            },
        );
        router.announce(user, device, proto::PresenceStatus::Online, now_ms);
    }

    fn on_publish(&mut self, p: PublishIn) {
        if p.retain && self.version == Version::V5 {
            // REQ-MQT-005: retained messages are not offered.
            return self.disconnect(DisconnectReasonCode::RetainNotSupported);
        }
        let Some(me) = self.me.as_deref_mut() else { return };
        if !me.budget.take(1.0) {
            // Over the rate: nothing stored (spec 15.3). MQTT 5 says so; 3.1.1 cannot, so the
            // connection closes unacknowledged and the device retransmits later.
            self.shared.metrics.refused(ReasonCode::RateLimited);
            return match (self.version, p.qos) {
                (Version::V5, 1 | 2) => self.acknowledge(&p, AckReason::QuotaExceeded),
                (Version::V5, _) => {}
                (Version::V4, _) => self.disconnect(DisconnectReasonCode::MessageRateTooHigh),
            };
        }
        let (user, device) = (me.user.clone(), me.device.clone());
        match self.publish_as(&user, &device, &p) {
            Ok(()) | Err(_) if p.qos == 0 => {}
            Ok(_) => self.acknowledge(&p, AckReason::Success),
            Err(ReasonCode::StoreUnavailable) => {
                // Not stored, so not acknowledged (REQ-MQT-008): the device retransmits after
                // reconnecting.
                self.disconnect(DisconnectReasonCode::ImplementationSpecificError);
            }
            Err(reason) => {
                tracing::debug!(conn = self.conn_id, topic = %p.topic, ?reason, "MQTT PUBLISH refused");
                self.shared.metrics.refused(reason);
                // 3.1.1 has no reason codes: acknowledged as usual and dropped (REQ-MQT-006).
                let ack = if self.version == Version::V5 { refusal(&p.topic, reason) } else { AckReason::Success };
                self.acknowledge(&p, ack);
            }
        }
    }

    /// Routes a PUBLISH of the device (also its Will), or queues it for the store (a QoS 2
    /// retransmission already stored is not stored again); its outcome is awaited in complete().
    fn publish_as(&mut self, user: &str, device: &str, p: &PublishIn) -> Result<(), ReasonCode> {
        if tern_codec::ids::check_topic("topic", &p.topic, tern_codec::ids::TopicUse::Name).is_err() {
            return Err(ReasonCode::InvalidField);
        }
        if is_ephemeral(&p.topic) {
            let m = Ephemeral {
                user,
                device,
                topic: &p.topic,
                payload: p.payload.clone(),
                content_type: p.content_type.clone(),
            };
            return publish_ephemeral(&self.shared, m).map(|_| ());
        }
        let r = route(&self.shared, user, &p.topic)?;
        let message = NewMessage {
            cid: 0,
            conversation_id: r.conversation_id,
            inboxes: r.inboxes,
            message: proto::Deliver {
                topic: p.topic.clone(),
                sender_user: user.to_owned(),
                sender_device: device.to_owned(),
                // Stored messages reach native devices at least once, whatever the MQTT QoS.
                qos: u32::from(p.qos.max(1)),
                payload: p.payload.clone(),
                content_type: p.content_type.clone(),
                ..Default::default()
            },
        };
        let pkid = (p.qos == 2).then_some(p.pkid);
        let pending = self.shared.store.commit_mqtt(user, device, message, pkid, crate::unix_now_ms());
        self.committed.push((pending, r.notify));
        Ok(())
    }

    fn acknowledge(&mut self, p: &PublishIn, reason: AckReason) {
        match p.qos {
            1 => self.send(Outgoing::PubAck(p.pkid, reason)),
            2 => self.send(Outgoing::PubRec(p.pkid, reason)),
            _ => {}
        }
    }

    fn on_subscribe(&mut self, pkid: u16, filters: Vec<(String, u8)>) {
        let Some(user) = self.me.as_ref().map(|m| m.user.clone()) else { return };
        let mut granted = Vec::with_capacity(filters.len());
        for (filter, qos) in filters {
            match check_filter(&self.shared, &user, &filter, qos) {
                Ok(sub) => {
                    granted.push(Ok(sub.qos));
                    self.drop_subscription(&filter);
                    self.register(&sub);
                    if let FilterKind::Presence(target) = &sub.kind {
                        // The current state first, then changes (spec 15.6).
                        let now = self.shared.router().presence_of(target);
                        for p in now {
                            self.presence(&sub, &p);
                        }
                    }
                    self.subs.push(sub);
                }
                Err(refused) => granted.push(Err(refused)),
            }
        }
        self.send(Outgoing::SubAck(pkid, granted));
        self.save_session(0);
        // Messages already read past while nothing matched stay behind; new ones match now.
        self.pump();
    }

    fn on_unsubscribe(&mut self, pkid: u16, filters: Vec<String>) {
        let existed = filters.iter().map(|f| self.drop_subscription(f)).collect();
        self.send(Outgoing::UnsubAck(pkid, existed));
        self.save_session(0);
    }

    /// Registers a granted subscription with the router where it routes live messages.
    fn register(&self, sub: &Subscription) {
        let tx = Outbox::Mqtt(self.mailbox.clone());
        match &sub.kind {
            FilterKind::Inbox => {}
            FilterKind::Ephemeral(f) => subscribe_ephemeral(&self.shared, f, &sub.matcher, self.conn_id, tx),
            FilterKind::Presence(target) => {
                self.shared.router().watchers.entry(target.clone()).or_default().insert(self.conn_id, tx);
            }
        }
    }

    /// Removes a subscription by its filter; whether it existed.
    fn drop_subscription(&mut self, filter: &str) -> bool {
        let Some(i) = self.subs.iter().position(|s| s.filter == filter) else { return false };
        let sub = self.subs.remove(i);
        let user = self.me.as_ref().map(|m| m.user.clone()).unwrap_or_default();
        let still_used = self.subs.iter().any(|s| s.matcher == sub.matcher);
        match &sub.kind {
            FilterKind::Ephemeral(_) if !still_used => {
                unsubscribe_ephemeral(&self.shared, &user, &sub.matcher, self.conn_id);
            }
            FilterKind::Presence(target) if !still_used => {
                if let Some(w) = self.shared.router().watchers.get_mut(target) {
                    w.remove(&self.conn_id);
                }
            }
            _ => {}
        }
        true
    }

    /// Stores the persistent session (`disconnected_ms` 0 while connected).
    fn save_session(&self, disconnected_ms: u64) {
        let Some(me) = self.me.as_deref() else { return };
        let Some(expiry_secs) = me.persistent else { return };
        let record = MqttSessionRecord {
            subscriptions: self.subs.iter().map(|s| (s.filter.clone(), s.qos)).collect(),
            expiry_secs,
            disconnected_ms,
        };
        if let Err(e) = self.shared.store.save_mqtt_session(&me.user, &me.device, &record) {
            tracing::error!(error = %e, "MQTT session not stored");
        }
    }

    /// What the router left: inbox news, live room and telemetry messages, presence, closes.
    fn on_mail(&mut self) {
        let (news, queue) = self.mailbox.take();
        if news == super::NEWS_QUIET {
            // Only the sweeper's suggestion: not activity.
            self.park_when_quiet = true;
            return;
        }
        self.mailbox.active();
        if news & super::NEWS_SHUTDOWN != 0 {
            return self.disconnect(DisconnectReasonCode::ServerShuttingDown);
        }
        if news & super::NEWS_EXPIRED != 0 {
            // Silent past 1.5 × keep alive, or no CONNECT in time.
            return self.disconnect(DisconnectReasonCode::KeepAliveTimeout);
        }
        for m in queue {
            match m {
                ToConnection::Deliver(d) => self.deliver_live(&d, None),
                ToConnection::Live(l) => self.deliver_live(&l.deliver, Some(&l)),
                ToConnection::Close(reason) => {
                    let code = match reason {
                        ReasonCode::SessionTakenOver => DisconnectReasonCode::SessionTakenOver,
                        ReasonCode::ServerShuttingDown => DisconnectReasonCode::ServerShuttingDown,
                        _ => DisconnectReasonCode::AdministrativeAction,
                    };
                    self.disconnect(code);
                }
                // A native connection cannot resume an MQTT session: dropping the sender tells it.
                ToConnection::HandOver(_) => self.disconnect(DisconnectReasonCode::SessionTakenOver),
                ToConnection::Frame(f) => {
                    if let tern_codec::Frame::Presence(p) = *f {
                        let subs: Vec<usize> = (0..self.subs.len())
                            .filter(|&i| {
                                self.subs
                                    .get(i)
                                    .is_some_and(|s| matches!(&s.kind, FilterKind::Presence(t) if *t == p.user_id))
                            })
                            .collect();
                        for i in subs {
                            if let Some(sub) = self.subs.get(i) {
                                let out = presence_publish(sub, &p);
                                self.send(Outgoing::Publish(Box::new(out)));
                            }
                        }
                    }
                }
                // Read fan-out groups are refused at SUBSCRIBE (spec 15.2).
                ToConnection::Notify { .. } => {}
            }
        }
        if news & super::NEWS_INBOX != 0 {
            self.pump();
        }
    }

    fn presence(&mut self, sub: &Subscription, p: &proto::Presence) {
        let out = presence_publish(sub, p);
        self.send(Outgoing::Publish(Box::new(out)));
    }

    /// A room or telemetry message: QoS 0 to each matching presentation (raw, envelope). A
    /// 3.1.1 device's raw PUBLISH is the same for all its subscribers: `shared` holds it.
    fn deliver_live(&mut self, d: &proto::Deliver, shared: Option<&LiveDeliver>) {
        let raw =
            self.subs.iter().any(|s| !s.envelope && matches!(s.kind, FilterKind::Ephemeral(_)) && live_match(s, d));
        let env =
            self.subs.iter().any(|s| s.envelope && matches!(s.kind, FilterKind::Ephemeral(_)) && live_match(s, d));
        if let (true, Version::V4, Some(shared)) = (raw, self.version, shared) {
            // 3.1.1 has no Maximum Packet Size to check (`send_publish` checks MQTT 5's).
            self.wbuf.extend_from_slice(shared.encoded(v4_live_publish));
        } else if raw {
            let out = publish_out(self.version, d, 0, false);
            self.send_publish(out);
        }
        if env {
            let out = publish_out(self.version, d, 0, true);
            self.send_publish(out);
        }
    }

    /// Reads the inbox from the last position read and delivers what matches, up to the
    /// window (REQ-MQT-010, REQ-MQT-011).
    fn pump(&mut self) {
        let Some(user) = self.me.as_ref().map(|m| m.user.clone()) else { return };
        let window = usize::from(self.window);
        while self.pending < window && !self.closing {
            let want = READ_BATCH.min(window - self.pending);
            let batch = match self.shared.store.inbox_after(&user, self.next_read, want) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "inbox read failed");
                    break;
                }
            };
            if batch.is_empty() {
                break;
            }
            for d in batch {
                self.next_read = d.seq;
                self.offer(&d);
            }
        }
        self.advance();
    }

    /// One stored message: delivered once, at the best QoS of the filters that match, as an
    /// envelope when an `envelope/` filter matches; skipped when none does.
    fn offer(&mut self, d: &proto::Deliver) {
        let matching =
            self.subs.iter().filter(|s| matches!(s.kind, FilterKind::Inbox) && topic_matches(&s.matcher, &d.topic));
        let (mut best, mut envelope) = (None::<u8>, false);
        for s in matching {
            best = Some(best.map_or(s.qos, |b| b.max(s.qos)));
            envelope |= s.envelope;
        }
        let qos = best.map(|q| q.min(u8::try_from(d.qos).unwrap_or(2)));
        let Some(qos) = qos.filter(|_| !d.payload_omitted) else {
            return self.inflight_done(d.seq);
        };
        let out = publish_out(self.version, d, qos, envelope);
        if !self.send_publish(out) || qos == 0 {
            return self.inflight_done(d.seq);
        }
        self.inflight.push_back(Inflight { seq: d.seq, pkid: pkid_for(d.seq), done: false });
        self.pending += 1;
    }

    /// A message that needs no acknowledgement keeps its place behind unacknowledged ones.
    fn inflight_done(&mut self, seq: u64) {
        if !self.inflight.is_empty() {
            self.inflight.push_back(Inflight { seq, pkid: 0, done: true });
        }
    }

    /// PUBACK / PUBCOMP of a delivery.
    fn acknowledged(&mut self, pkid: u16) {
        if let Some(f) = self.inflight.iter_mut().find(|f| !f.done && f.pkid == pkid) {
            f.done = true;
            self.pending = self.pending.saturating_sub(1);
        }
    }

    /// Moves the stored inbox position past everything acknowledged or skipped.
    fn advance(&mut self) {
        while self.inflight.front().is_some_and(|f| f.done) {
            self.inflight.pop_front();
        }
        let position = match self.inflight.front() {
            Some(f) => f.seq - 1,
            None => self.next_read,
        };
        if position <= self.saved_cursor {
            return;
        }
        self.saved_cursor = position;
        let Some(me) = self.me.as_deref() else { return };
        if me.persistent.is_some() {
            // Held in memory and written by the group committer, as a native device's sync
            // point is: no store transaction (and no wait for the committer's lock) on this
            // task. A session resuming right after reads it through `Store::cursor`, which
            // counts held advances.
            self.shared.store.advance_cursor_later(&me.user, &me.device, position);
        }
    }

    /// Queues a PUBLISH unless it exceeds the device's Maximum Packet Size; whether it went.
    fn send_publish(&mut self, out: PublishOut) -> bool {
        let before = self.wbuf.len();
        self.send(Outgoing::Publish(Box::new(out)));
        if self.wbuf.len() - before > usize::try_from(self.max_out).unwrap_or(usize::MAX) {
            self.wbuf.truncate(before);
            return false;
        }
        true
    }

    /// The connection is over: leave the router, publish the Will, store the session.
    async fn finish(&mut self) {
        self.mailbox.close();
        let Some(me) = self.me.take() else { return };
        if !self.clean_exit {
            if let Some(w) = &me.will {
                let p = PublishIn {
                    qos: w.qos,
                    retain: false,
                    pkid: 0,
                    topic: w.topic.clone(),
                    payload: w.payload.clone(),
                    content_type: w.content_type.clone(),
                };
                if let Err(reason) = self.publish_as(&me.user, &me.device, &p) {
                    tracing::info!(user = %me.user, device = %me.device, ?reason, "Will refused");
                }
                self.complete().await;
            }
        }
        let now_ms = crate::unix_now_ms();
        let mut router = self.shared.router();
        router.leave_all_rooms(self.conn_id);
        for w in router.watchers.values_mut() {
            w.remove(&self.conn_id);
        }
        if router.leave(&me.user, &me.device, self.conn_id, now_ms) {
            // The session state is written under the router lock, so a connection of the same
            // device that takes over (under the same lock) reads it whole. A connection that was
            // taken over leaves the state to its successor.
            self.me = Some(me);
            match self.me.as_deref().and_then(|m| m.persistent) {
                Some(_) => self.save_session(now_ms),
                None => {
                    if let Some(me) = self.me.as_deref() {
                        let _ = self.shared.store.drop_mqtt_session(&me.user, &me.device);
                    }
                }
            }
        } else {
            self.me = Some(me);
        }
        drop(router);
        if let Some(me) = self.me.as_deref() {
            tracing::debug!(user = %me.user, device = %me.device, "MQTT session closed");
        }
    }
}

/// The outcomes of a batch's store writes, in order, once all are durable.
async fn wait_durable(
    pending: Vec<(crate::store::PendingCommit, Option<crate::members::MemberSet>)>,
) -> Result<Vec<(Vec<crate::store::Committed>, Option<crate::members::MemberSet>)>, crate::store::StoreError> {
    let mut durable = Vec::with_capacity(pending.len());
    for (commit, notify) in pending {
        durable.push((commit.await?, notify));
    }
    Ok(durable)
}

#[cfg(test)]
mod size_tests {
    #![allow(clippy::unwrap_used)]

    /// What an idle connection keeps while parked, and what a busy one costs in its task's
    /// future: regression guards for the memory per MQTT connection (BENCHMARKS.md).
    #[test]
    fn a_parked_connection_stays_small() {
        // With the socket, 92 bytes: one 96-byte jemalloc size class. The mailbox is shared
        // with the router (80 bytes + the Arc's counts: 96).
        assert!(std::mem::size_of::<super::Idle>() <= 88, "Idle: {}", std::mem::size_of::<super::Idle>());
        assert!(std::mem::size_of::<super::Mailbox>() <= 80, "Mailbox: {}", std::mem::size_of::<super::Mailbox>());
    }

    #[tokio::test]
    async fn a_connection_future_stays_small() {
        let dir = tempfile::tempdir().unwrap();
        let b = crate::Broker::start(crate::BrokerOptions::new("127.0.0.1:0".parse().unwrap(), dir.path().into()))
            .await
            .unwrap();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let f = super::run(b.shared.clone(), s, addr);
        let size = std::mem::size_of_val(&f);
        eprintln!("connection future: {size} bytes; Conn: {} bytes", std::mem::size_of::<super::Conn>());
        // 1024 bytes before the flush and finish futures were boxed and select! gave way to one
        // poll_fn; 568 on Rust 1.95; 712 since `drive` owns the connection so it can park it
        // (an idle connection is parked without its task now, so this bounds a busy one).
        assert!(size <= 768, "an MQTT connection's future grew to {size} bytes");
    }
}
