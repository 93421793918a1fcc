//! One connection: a task that moves bytes between the socket and the codec's
//! [`BrokerSession`], and carries out what the session asks for (authenticate, store, deliver).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use tern_codec::ids::StreamId;
use tern_codec::proto;
use tern_codec::session::{Accept, BrokerEvent, BrokerSession};
use tern_codec::{Frame, ReasonCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::Instrument;

mod handlers;
mod keys;
mod notify;
mod rooms;

#[cfg(feature = "mqtt")]
pub(crate) use self::Bucket as PublishBudget;
#[cfg(feature = "mqtt")]
pub(crate) use handlers::route;
pub(crate) use keys::ClaimLimiter;
#[cfg(feature = "mqtt")]
pub(crate) use rooms::{
    check_ephemeral_filter, is_ephemeral, publish_ephemeral, subscribe_ephemeral, unsubscribe_ephemeral, Ephemeral,
    EphemeralFilter,
};

use crate::server::{Live, Parked, Shared, ToConnection};

/// Most inbox messages pushed at connect; beyond them the client is told by NOTIFY and pulls.
const CONNECT_PUSH: usize = 256;

/// Commands from the rest of the broker handled before one write to the link (a bound, so a
/// busy link still reads and answers its own device in between).
const COMMANDS_PER_WRITE: usize = 64;

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

fn wire(reason: ReasonCode) -> u32 {
    u32::from(reason as u8)
}

/// Who this connection is, once CONNECT is accepted.
struct Identity {
    user: String,
    device: String,
    session_id: Vec<u8>,
}

/// A token bucket: `rate` tokens per second up to `burst`.
pub(crate) struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: std::time::Instant,
}

impl Bucket {
    pub(crate) fn new((rate, burst): (f64, f64)) -> Self {
        Bucket { tokens: burst, rate, burst, at: now() }
    }

    /// Whether the bucket has refilled to its burst (an idle bucket that can be forgotten).
    fn is_full(&self) -> bool {
        self.tokens + self.at.elapsed().as_secs_f64() * self.rate >= self.burst
    }

    /// Takes `n` tokens if there are enough.
    pub(crate) fn take(&mut self, n: f64) -> bool {
        let t = now();
        self.tokens = (self.tokens + t.saturating_duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = t;
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

struct Conn {
    /// Set when a resuming connection asked for this session: `finish` hands it over.
    handover: Option<tokio::sync::oneshot::Sender<crate::server::Parked>>,
    shared: Arc<Shared>,
    conn_id: u64,
    machine: BrokerSession,
    me: Option<Identity>,
    tx: crate::server::Outbox,
    publish_budget: Bucket,
    notify_windows: notify::NotifyWindows,
    /// Seq and stored time (ms) of the newest inbox message this link delivered.
    last_inbox_delivery: (u64, u64),
    /// The inbox sync point as this link last knew or advanced it (read at CONNECT): the device
    /// has one link at a time, so acknowledgements compare with it instead of the store.
    inbox_cursor: u64,
}

/// How long a resuming connection waits for the live one to hand its session over.
const HANDOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Drives one accepted TCP connection to its end.
pub(crate) async fn run<S>(shared: Arc<Shared>, stream: S, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let gauge = shared.gauge.clone();
    let count = gauge.count.fetch_add(1, Ordering::AcqRel) + 1;
    let conn_id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
    shared.metrics.connections_total.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("conn", id = conn_id, %peer);
    let (tx, rx) = mpsc::unbounded_channel();
    let mut conn = Conn {
        handover: None,
        machine: BrokerSession::new(now(), shared.options.session.clone()),
        shared: shared.clone(),
        conn_id,
        me: None,
        tx: crate::server::Outbox::Native(tx),
        publish_budget: Bucket::new(shared.options.publish_rate),
        notify_windows: notify::NotifyWindows::default(),
        last_inbox_delivery: (0, 0),
        inbox_cursor: 0,
    };
    if count as usize > shared.options.max_connections {
        conn.machine.close(ReasonCode::ServerBusy, "too many connections");
    }
    async {
        let mut rx = rx;
        conn.serve(stream, &mut rx).await;
        conn.finish(&mut rx);
    }
    .instrument(span)
    .await;
    // Let go of the store before counting out, so a shutdown that waits for the count
    // finds the store free to close.
    drop(conn);
    drop(shared);
    gauge.leave();
}

impl Conn {
    async fn serve<S>(&mut self, stream: S, rx: &mut mpsc::UnboundedReceiver<ToConnection>)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin,
    {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let mut buf = vec![0u8; 16 * 1024];
        let mut shutdown = self.shared.shutdown.clone();
        // Made once and kept, like the timer below: a `changed()` made anew each turn joined the
        // watch's list of waiters and left it again, under a lock every connection shares.
        let shutdown_changed = shutdown.changed();
        tokio::pin!(shutdown_changed);
        let mut stopping = false;
        // One timer for the machine's deadline, moved rather than made anew each turn: a new
        // `Sleep` registers with the runtime's timer wheel and its drop deregisters, both under
        // the wheel's lock, and this loop turns several times per message. Moving a deadline
        // later (the keepalive, on every frame received) is lock-free.
        let timer = tokio::time::sleep_until(tokio::time::Instant::now());
        tokio::pin!(timer);
        let mut armed = None;
        loop {
            let over = self.process_events().await;
            self.shared.metrics.add_session(&self.machine.take_counters());
            if let Some(bytes) = self.machine.poll_transmit() {
                self.shared.metrics.bytes_out.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                if wr.write_all(&bytes).await.is_err() {
                    self.machine.link_lost(now());
                    continue;
                }
            }
            // A closed machine has nothing more to do on this link, whatever closed it (its
            // Closed event may have been handled before a resume or a hand-over replaced it).
            if over || self.machine.is_closed() {
                let _ = wr.shutdown().await;
                return;
            }
            let deadline = self.machine.poll_timeout().map(tokio::time::Instant::from_std);
            if let Some(d) = deadline.filter(|d| armed != Some(*d)) {
                timer.as_mut().reset(d);
            }
            armed = deadline;
            let notify_due = self.notify_windows.due().map(tokio::time::Instant::from_std);
            tokio::select! {
                // Cancel-safe: a read that loses the race has consumed nothing.
                read = rd.read(&mut buf) => match read {
                    Ok(0) | Err(_) => self.machine.link_lost(now()),
                    Ok(n) => {
                        self.shared.metrics.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                        self.machine.handle_bytes(now(), buf.get(..n).unwrap_or_default());
                    }
                },
                // Cancel-safe: mpsc::recv keeps unreceived messages in the channel.
                Some(cmd) = rx.recv() => {
                    self.command(cmd);
                    // What else is already queued goes out in the same write: a sender's
                    // group commit pushes its messages one by one, and a write per message
                    // cost a system call each on the receiver's link.
                    for _ in 1..COMMANDS_PER_WRITE {
                        if self.machine.is_closed() {
                            break;
                        }
                        let Ok(cmd) = rx.try_recv() else { break };
                        self.command(cmd);
                    }
                }
                // Cancel-safe: the timer is polled by reference and outlives the select.
                () = &mut timer, if armed.is_some() => {
                    // Fired: whatever the deadline is next, the timer is set again for it.
                    armed = None;
                    self.machine.handle_timeout(now());
                }
                // Cancel-safe: a sleep can be dropped and recreated.
                _ = crate::sleep_until(notify_due) => {
                    for conversation_id in self.notify_windows.take_due(std::time::Instant::now()) {
                        self.send_notify(conversation_id);
                    }
                }
                // Cancel-safe: polled by reference, it outlives the select. Once seen (or once
                // the sender is gone, when changed() returns at once) the branch is off, so a
                // finished future is never polled again.
                _ = &mut shutdown_changed, if !stopping => {
                    stopping = true;
                    self.machine.close(ReasonCode::ServerShuttingDown, "shutting down");
                }
            }
        }
    }

    /// Applies one command from the rest of the broker.
    fn command(&mut self, cmd: ToConnection) {
        match cmd {
            ToConnection::Deliver(d) => self.deliver(*d),
            ToConnection::Live(l) => self.deliver(l.deliver.clone()),
            ToConnection::Close(reason) => self.machine.close(reason, ""),
            ToConnection::HandOver(to) => {
                self.handover = Some(to);
                self.machine.close(ReasonCode::SessionTakenOver, "");
            }
            ToConnection::Notify { conversation_id } => self.notify(conversation_id),
            ToConnection::Frame(frame) => {
                let _ = self.machine.send(&frame);
            }
        }
    }

    /// Handles the machine's events; returns true when the connection is over.
    async fn process_events(&mut self) -> bool {
        // PUBLISHes that arrived together share one flush (group commit within a connection).
        let mut staged = Vec::new();
        while let Some(event) = self.machine.poll_event() {
            if !matches!(event, BrokerEvent::Publish(_) | BrokerEvent::Package(_)) {
                self.complete_publishes(&mut staged).await;
            }
            match event {
                BrokerEvent::Connect(c) => self.on_connect(c).await,
                BrokerEvent::Publish(p) => self.stage_publish(vec![p], &mut staged).await,
                BrokerEvent::Package(members) => self.stage_publish(members, &mut staged).await,
                BrokerEvent::PackageExpired { cids, .. } => self.refuse(&cids, ReasonCode::PackageTimeout).await,
                BrokerEvent::Withdrawn(cid) => self.refuse(&[cid], ReasonCode::MessageTooLarge).await,
                BrokerEvent::StreamAcked { stream: StreamId::Inbox, seq } => {
                    if let Some(me) = &self.me {
                        let store = &self.shared.store;
                        let (last_seq, last_stored_ms) = self.last_inbox_delivery;
                        // No further than the inbox goes. Up to what this link delivered that is
                        // known without reading the store (one read less per acknowledgement).
                        let seq =
                            if seq <= last_seq { seq } else { seq.min(store.inbox_latest(&me.user).unwrap_or(0)) };
                        let previous = self.inbox_cursor;
                        if seq > previous {
                            store.advance_cursor_later(&me.user, &me.device, seq);
                            self.inbox_cursor = seq;
                        }
                        // Store-to-acknowledgement time, observed when the acknowledgement
                        // covers the newest message this link delivered (its stored time is at
                        // hand; reading it back from the store cost two reads per ack).
                        if seq > previous && seq >= last_seq && last_seq > previous {
                            let ms = crate::unix_now_ms().saturating_sub(last_stored_ms);
                            self.shared.metrics.deliver_seconds.observe(std::time::Duration::from_millis(ms));
                        }
                    }
                }
                BrokerEvent::StreamAcked { stream: StreamId::Conversation(conv), seq } => {
                    if let Some(me) = &self.me {
                        let store = &self.shared.store;
                        let latest = store.conversation_latest(conv.0).unwrap_or(0);
                        store.advance_conversation_cursor(&me.user, &me.device, conv.0, seq.min(latest));
                    }
                }
                BrokerEvent::Frame(frame) => self.on_frame(*frame),
                BrokerEvent::Closed { reason, by_peer } => {
                    self.shared.metrics.closed(reason);
                    tracing::debug!(?reason, by_peer, "closed");
                    return true;
                }
            }
        }
        self.complete_publishes(&mut staged).await;
        false
    }

    async fn on_connect(&mut self, c: proto::Connect) {
        let claims = match self.shared.tokens.verify(&c.token, &c.device_id, crate::unix_now()) {
            Ok(claims) => claims,
            Err(reason) => {
                tracing::info!(device = %c.device_id, %reason, "CONNECT refused");
                self.machine.reject(reason);
                return;
            }
        };
        let (user, device) = (claims.user, claims.device);
        let ledger = match self.shared.store.ledger(&user, &device) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "ledger read failed");
                self.machine.reject(ReasonCode::StoreUnavailable);
                return;
            }
        };
        // Acknowledgements of an earlier connection advance the sync point without waiting;
        // CONNACK reports it only once they are applied (REQ-SYN-008).
        self.shared.store.applied().await;
        let cursor = self.shared.store.cursor(&user, &device).unwrap_or(0);
        self.inbox_cursor = cursor;
        let mut session_id = [0u8; 16];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut session_id);
        let mut accept = Accept {
            user_id: user.clone(),
            session_id: Bytes::copy_from_slice(&session_id),
            ledger,
            inbox_acked_seq: cursor,
            server_time_ms: crate::unix_now_ms(),
        };
        let (parked, handover) = {
            let mut router = self.shared.router();
            // Takeover: the same device connected again while still live (REQ-HSK-013). When
            // it names that live session, the session moves here (REQ-HSK-011).
            let mut handover = None;
            if let Some(old) = router.live.get_mut(&user).and_then(|d| d.remove(&device)) {
                if !c.resume_session_id.is_empty() && old.session_id == c.resume_session_id.as_ref() {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    let _ = old.tx.send(ToConnection::HandOver(tx));
                    handover = Some(rx);
                } else {
                    let _ = old.tx.send(ToConnection::Close(ReasonCode::SessionTakenOver));
                }
            }
            router.live.entry(user.clone()).or_default().insert(
                device.clone(),
                Live {
                    conn_id: self.conn_id,
                    tx: self.tx.clone(),
                    session_id: session_id.to_vec(),
                    since_ms: crate::unix_now_ms(),
                    status: proto::PresenceStatus::Online,
                },
            );
            router.announce(&user, &device, proto::PresenceStatus::Online, crate::unix_now_ms());
            let parked = router.parked.get_mut(&user).and_then(|d| d.remove(&device));
            router.parked.retain(|_, devices| !devices.is_empty());
            (parked, handover)
        };
        // The old connection closes and sends its session; a task that is already gone sends
        // nothing (the sender drops) and this connection starts fresh.
        let parked = match handover {
            Some(rx) => tokio::time::timeout(HANDOVER_WAIT, rx).await.ok().and_then(Result::ok),
            None => parked,
        };
        let grace = self.shared.options.resume_grace;
        let previous = parked.filter(|p| {
            !c.resume_session_id.is_empty()
                && p.session_id == c.resume_session_id.as_ref()
                && p.parked_at.elapsed() < grace
        });
        let resumed = previous.is_some();
        if let Some(live) = self.shared.router().live.get_mut(&user).and_then(|d| d.get_mut(&device)) {
            if live.conn_id == self.conn_id {
                live.session_id = previous.as_ref().map_or_else(|| session_id.to_vec(), |p| p.session_id.clone());
            }
        }
        if let Some(mut old) = previous {
            accept.session_id = Bytes::from(old.session_id.clone());
            let fresh =
                std::mem::replace(&mut self.machine, BrokerSession::new(now(), self.shared.options.session.clone()));
            match old.machine.resume_from(now(), fresh, accept.clone()) {
                Ok(()) => self.machine = old.machine,
                Err(e) => tracing::error!(error = %e, "resume failed"),
            }
        } else if let Err(e) = self.machine.accept(now(), accept.clone()) {
            tracing::warn!(error = %e, "accept failed (link gone)");
            return;
        }
        tracing::info!(%user, %device, resumed, "session open");
        self.shared.metrics.sessions_total.fetch_add(1, Ordering::Relaxed);
        if resumed {
            self.shared.metrics.resumes_total.fetch_add(1, Ordering::Relaxed);
        }
        self.me = Some(Identity { user: user.clone(), device, session_id: accept.session_id.to_vec() });
        if !resumed {
            self.push_backlog(&user, cursor);
        }
    }

    /// Offline messages: push the first part of the backlog, announce the rest (REQ-SYN-009).
    fn push_backlog(&mut self, user: &str, cursor: u64) {
        let store = &self.shared.store;
        let latest = store.inbox_latest(user).unwrap_or(0);
        match store.inbox_after(user, cursor, CONNECT_PUSH) {
            Ok(batch) => {
                for d in batch {
                    self.deliver(d);
                }
            }
            Err(e) => tracing::error!(error = %e, "backlog read failed"),
        }
        if latest > cursor + CONNECT_PUSH as u64 {
            let notify =
                proto::Notify { stream: Some(StreamId::Inbox.to_proto()), latest_seq: latest, acked_seq: cursor };
            let _ = self.machine.send(&Frame::Notify(notify));
        }
    }

    /// Hands a DELIVER to the session (which windows, sends and retransmits it).
    fn deliver(&mut self, d: proto::Deliver) {
        self.shared.metrics.deliveries.fetch_add(1, Ordering::Relaxed);
        if StreamId::from_proto(d.stream.as_ref()) == Some(StreamId::Inbox) && d.seq > self.last_inbox_delivery.0 {
            self.last_inbox_delivery = (d.seq, d.server_time_ms);
        }
        if let Err(e) = self.machine.deliver(now(), d) {
            tracing::warn!(error = %e, "DELIVER refused by the session");
        }
    }

    /// The connection is over: drop the live entry (if still ours) and park the session for
    /// resume.
    fn finish(&mut self, rx: &mut mpsc::UnboundedReceiver<ToConnection>) {
        let Some(me) = self.me.take() else { return };
        let mut router = self.shared.router();
        // A resuming connection may have asked for the session after this link died but
        // before this task got here; it did so under the router lock, so it is in the channel.
        while let Ok(cmd) = rx.try_recv() {
            if let ToConnection::HandOver(to) = cmd {
                self.handover = Some(to);
            }
        }
        router.leave_all_rooms(self.conn_id);
        if let Some(to) = self.handover.take() {
            // A resuming connection of the same device asked for this session.
            let machine =
                std::mem::replace(&mut self.machine, BrokerSession::new(now(), self.shared.options.session.clone()));
            let parked = crate::server::Parked {
                session_id: me.session_id.clone(),
                machine,
                parked_at: tokio::time::Instant::now(),
            };
            let _ = to.send(parked);
            tracing::info!(user = %me.user, device = %me.device, "session handed over");
            return;
        }
        // Offline once the connection is gone, whatever ended it: DISCONNECT, takeover, or a
        // keepalive timeout that caught a silent dead link. After a takeover the live entry
        // belongs to the new connection: left alone.
        if router.leave(&me.user, &me.device, self.conn_id, crate::unix_now_ms()) {
            let machine =
                std::mem::replace(&mut self.machine, BrokerSession::new(now(), self.shared.options.session.clone()));
            // Sessions past their grace period can no longer be resumed: drop them.
            let grace = self.shared.options.resume_grace;
            router.parked.retain(|_, devices| {
                devices.retain(|_, p| p.parked_at.elapsed() < grace);
                !devices.is_empty()
            });
            if machine.has_session() {
                let parked = Parked { session_id: me.session_id, machine, parked_at: tokio::time::Instant::now() };
                router.parked.entry(me.user.clone()).or_default().insert(me.device.clone(), parked);
            }
        }
        tracing::info!(user = %me.user, device = %me.device, "session closed");
    }
}
