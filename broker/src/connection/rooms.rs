//! Ephemeral routes: rooms and device telemetry. Members who SUBSCRIBE to `room/{room}` get
//! each message as a QoS 0 DELIVER on the room's conversation stream; a user's devices that
//! SUBSCRIBE below `device/{user}/` get the telemetry of that user's devices the same way.
//! Nothing is written to inboxes and no history is kept (spec 5.2, 10.3). The route checks
//! are shared with MQTT connections (spec chapter 15).

use tern_codec::ids::{check_identifier, ConversationId, StreamId};
use tern_codec::proto;
use tern_codec::ReasonCode;

use super::Conn;
use crate::server::{Outbox, Shared};

/// An ephemeral message as a device published it.
pub(crate) struct Ephemeral<'a> {
    pub(crate) user: &'a str,
    pub(crate) device: &'a str,
    pub(crate) topic: &'a str,
    pub(crate) payload: bytes::Bytes,
    pub(crate) content_type: String,
}

/// Whether a topic is routed without storage (rooms, telemetry).
pub(crate) fn is_ephemeral(topic: &str) -> bool {
    topic.starts_with("room/") || topic.starts_with("device/")
}

/// Checks, numbers and broadcasts a room or telemetry message; the DELIVER that went out.
pub(crate) fn publish_ephemeral(shared: &Shared, m: Ephemeral<'_>) -> Result<proto::Deliver, ReasonCode> {
    let store = &shared.store;
    let unavailable = |_| ReasonCode::StoreUnavailable;
    let conv = if let Some(room) = m.topic.strip_prefix("room/") {
        let conv = store.room(room, false).map_err(unavailable)?.ok_or(ReasonCode::NotFound)?;
        if !store.is_member(conv, m.user).map_err(unavailable)? {
            return Err(ReasonCode::NotAMember);
        }
        conv
    } else if let Some(rest) = m.topic.strip_prefix("device/") {
        // Telemetry: only the device itself publishes under its own prefix.
        let mut levels = rest.splitn(3, '/');
        let (owner, device, path) = (levels.next(), levels.next(), levels.next());
        if owner != Some(m.user) || device != Some(m.device) || path.is_none() {
            return Err(ReasonCode::NotAuthorized);
        }
        store.telemetry_conversation(m.user).map_err(unavailable)?
    } else {
        return Err(ReasonCode::NotFound);
    };
    let seq = shared.next_live_seq(conv).map_err(unavailable)?;
    let d = proto::Deliver {
        stream: Some(StreamId::Conversation(ConversationId(conv)).to_proto()),
        seq,
        msg_id: 0,
        conversation_id: conv,
        conversation_seq: seq,
        topic: m.topic.to_owned(),
        sender_user: m.user.to_owned(),
        sender_device: m.device.to_owned(),
        qos: 0,
        payload: m.payload,
        content_type: m.content_type,
        server_time_ms: crate::unix_now_ms(),
        ..Default::default()
    };
    let mut router = shared.router();
    if m.topic.starts_with("room/") {
        router.broadcast_room(conv, &d);
    } else {
        router.broadcast_telemetry(m.user, &d);
    }
    Ok(d)
}

/// An ephemeral SUBSCRIBE filter a user may hold.
pub(crate) enum EphemeralFilter {
    Room(u64),
    /// Telemetry of this owner's devices (always the subscriber's own user).
    Telemetry(String),
}

/// Checks a `room/…` or `device/…` filter for `user` (REQ-ACL-003).
pub(crate) fn check_ephemeral_filter(shared: &Shared, user: &str, filter: &str) -> Result<EphemeralFilter, ReasonCode> {
    if let Some(room) = filter.strip_prefix("room/") {
        let store = &shared.store;
        let Ok(Some(conv)) = store.room(room, false) else { return Err(ReasonCode::NotFound) };
        if !store.is_member(conv, user).unwrap_or(false) {
            return Err(ReasonCode::NotAMember);
        }
        return Ok(EphemeralFilter::Room(conv));
    }
    if let Some(rest) = filter.strip_prefix("device/") {
        let owner = rest.split('/').next().unwrap_or_default();
        // A user's own devices only (the owner level is never a wildcard: it must equal the
        // user), with at least one level below it.
        if owner == user && rest.len() > owner.len() {
            return Ok(EphemeralFilter::Telemetry(owner.to_owned()));
        }
    }
    Err(ReasonCode::NotAuthorized)
}

/// Registers a checked ephemeral filter for a connection.
pub(crate) fn subscribe_ephemeral(shared: &Shared, f: &EphemeralFilter, filter: &str, conn_id: u64, tx: Outbox) {
    let mut router = shared.router();
    match f {
        EphemeralFilter::Room(conv) => router.subscribe_room(*conv, conn_id, tx),
        EphemeralFilter::Telemetry(owner) => router.subscribe_telemetry(owner, conn_id, filter, tx),
    }
}

/// Removes an ephemeral filter of a connection; whether it was there.
pub(crate) fn unsubscribe_ephemeral(shared: &Shared, user: &str, filter: &str, conn_id: u64) -> bool {
    if let Some(room) = filter.strip_prefix("room/") {
        let Some(conv) = shared.store.room(room, false).ok().flatten() else { return false };
        return shared.router().unsubscribe_room(conv, conn_id);
    }
    if filter.starts_with("device/") {
        return shared.router().unsubscribe_telemetry(user, conn_id, filter);
    }
    false
}

impl Conn {
    /// `room_join` / `room_leave`: a room is created by its first member.
    pub(super) fn room_membership(&mut self, user: &str, room: &str, join: bool) -> Result<(), ReasonCode> {
        check_identifier("room_id", room).map_err(|_| ReasonCode::InvalidRequest)?;
        let store = &self.shared.store;
        let conv = store.room(room, join).map_err(|_| ReasonCode::StoreUnavailable)?.ok_or(ReasonCode::NotFound)?;
        let result = if join { store.join(conv, user) } else { store.leave(conv, user) };
        result.map_err(|_| ReasonCode::StoreUnavailable)?;
        if !join {
            self.shared.router().unsubscribe_room(conv, self.conn_id);
        }
        Ok(())
    }

    /// A SUBSCRIBE filter: `room/{room}` for members, `device/{self}/…` for the user's devices.
    pub(super) fn subscribe(&mut self, user: &str, filter: &str) -> ReasonCode {
        match check_ephemeral_filter(&self.shared, user, filter) {
            Ok(f) => {
                subscribe_ephemeral(&self.shared, &f, filter, self.conn_id, self.tx.clone());
                ReasonCode::Success
            }
            Err(reason) => reason,
        }
    }

    /// An UNSUBSCRIBE filter.
    pub(super) fn unsubscribe(&mut self, user: &str, filter: &str) -> ReasonCode {
        if unsubscribe_ephemeral(&self.shared, user, filter, self.conn_id) {
            ReasonCode::Success
        } else {
            ReasonCode::NotFound
        }
    }

    /// A room or telemetry message: broadcast to the subscribers now; QoS 1/2 senders get a
    /// PUBACK once it is numbered (nothing else is stored).
    pub(super) async fn on_ephemeral_publish(&mut self, user: &str, device: &str, messages: Vec<proto::Publish>) {
        for p in messages {
            if p.package.is_some() {
                // Packages need storage; rooms and telemetry keep none.
                return self.refuse_one(&p, ReasonCode::InvalidRequest).await;
            }
            let m = Ephemeral {
                user,
                device,
                topic: &p.topic,
                payload: p.payload.clone(),
                content_type: p.content_type.clone(),
            };
            let d = match publish_ephemeral(&self.shared, m) {
                Ok(d) => d,
                Err(reason) => return self.refuse_one(&p, reason).await,
            };
            if p.qos > 0 {
                let ack =
                    proto::PubAck { cid: p.cid, reason: 0, msg_id: 0, conversation_id: d.conversation_id, seq: d.seq };
                if let Some(me) = &self.me {
                    if let Err(e) = self.shared.store.record_outcome(&me.user, &me.device, &ack) {
                        tracing::error!(error = %e, "outcome not recorded");
                        continue;
                    }
                }
                let _ = self.shared.store.flush().await;
                let _ = self.machine.ack_publish(ack);
            }
        }
    }

    async fn refuse_one(&mut self, p: &proto::Publish, reason: ReasonCode) {
        if p.qos > 0 {
            self.refuse(&[tern_codec::ids::Cid(p.cid)], reason).await;
        }
    }
}
