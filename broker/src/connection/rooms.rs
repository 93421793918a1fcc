//! Rooms: live, possibly huge audiences. Members who SUBSCRIBE to `room/{room}` get each
//! message as a QoS 0 DELIVER on the room's conversation stream; nothing is written to
//! inboxes and no history is kept (spec 10.3).

use tern_codec::ids::{ConversationId, StreamId};
use tern_codec::proto;
use tern_codec::ReasonCode;

use super::Conn;

impl Conn {
    /// `room_join` / `room_leave`: a room is created by its first member.
    pub(super) fn room_membership(&mut self, user: &str, room: &str, join: bool) -> Result<(), ReasonCode> {
        tern_codec::ids::check_identifier("room_id", room).map_err(|_| ReasonCode::InvalidRequest)?;
        let store = &self.shared.store;
        let conv = store.room(room, join).map_err(|_| ReasonCode::StoreUnavailable)?.ok_or(ReasonCode::NotFound)?;
        let result = if join { store.join(conv, user) } else { store.leave(conv, user) };
        result.map_err(|_| ReasonCode::StoreUnavailable)?;
        if !join {
            self.shared.router().unsubscribe_room(conv, self.conn_id);
        }
        Ok(())
    }

    /// A SUBSCRIBE filter: `room/{room}` for members; nothing else is routed yet.
    pub(super) fn subscribe(&mut self, user: &str, filter: &str) -> ReasonCode {
        let Some(room) = filter.strip_prefix("room/") else { return ReasonCode::NotAuthorized };
        let store = &self.shared.store;
        let Ok(Some(conv)) = store.room(room, false) else { return ReasonCode::NotFound };
        if !store.is_member(conv, user).unwrap_or(false) {
            return ReasonCode::NotAMember;
        }
        self.shared.router().subscribe_room(conv, self.conn_id, self.tx.clone());
        ReasonCode::Success
    }

    /// An UNSUBSCRIBE filter.
    pub(super) fn unsubscribe(&mut self, filter: &str) -> ReasonCode {
        let Some(conv) =
            filter.strip_prefix("room/").and_then(|room| self.shared.store.room(room, false).ok().flatten())
        else {
            return ReasonCode::NotFound;
        };
        if self.shared.router().unsubscribe_room(conv, self.conn_id) {
            ReasonCode::Success
        } else {
            ReasonCode::NotFound
        }
    }

    /// A message to a room: broadcast to the subscribed members now; QoS 1/2 senders get a
    /// PUBACK once it is numbered (nothing else is stored).
    pub(super) async fn on_room_publish(&mut self, user: &str, device: &str, messages: Vec<proto::Publish>) {
        for p in messages {
            let room = p.topic.strip_prefix("room/").unwrap_or_default();
            let store = &self.shared.store;
            let conv = match store.room(room, false) {
                Ok(Some(conv)) if store.is_member(conv, user).unwrap_or(false) => conv,
                Ok(Some(_)) => return self.refuse_one(&p, ReasonCode::NotAMember).await,
                Ok(None) => return self.refuse_one(&p, ReasonCode::NotFound).await,
                Err(_) => return self.refuse_one(&p, ReasonCode::StoreUnavailable).await,
            };
            if p.package.is_some() {
                // Packages need storage; rooms keep none.
                return self.refuse_one(&p, ReasonCode::InvalidRequest).await;
            }
            let Ok(seq) = store.next_room_seq(conv) else {
                return self.refuse_one(&p, ReasonCode::StoreUnavailable).await;
            };
            let d = proto::Deliver {
                stream: Some(StreamId::Conversation(ConversationId(conv)).to_proto()),
                seq,
                msg_id: 0,
                conversation_id: conv,
                conversation_seq: seq,
                topic: p.topic.clone(),
                sender_user: user.to_owned(),
                sender_device: device.to_owned(),
                qos: 0,
                payload: p.payload.clone(),
                content_type: p.content_type.clone(),
                server_time_ms: crate::unix_now_ms(),
                ..Default::default()
            };
            self.shared.router().broadcast_room(conv, &d);
            if p.qos > 0 {
                let ack = proto::PubAck { cid: p.cid, reason: 0, msg_id: 0, conversation_id: conv, seq };
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
