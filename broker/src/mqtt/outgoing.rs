//! What the broker sends MQTT devices, built from its own messages: the PUBLISH of a delivery
//! (raw or in the JSON envelope; MQTT 5 metadata in properties), of a presence change, and the
//! bytes of a live message shared by every MQTT 3.1.1 subscriber of its raw topic.

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use tern_codec::ids::topic_matches;
use tern_codec::proto;

use super::packets::{self, Outgoing, PublishOut, Version};
use super::topics::{FilterKind, Subscription};
use crate::connection::EphemeralFilter;

/// The packet identifier of the delivery of inbox seq `seq` (spec 15.3): the same after a
/// reconnect or a restart, unique among at most 65535 unacknowledged deliveries.
pub(crate) fn pkid_for(seq: u64) -> u16 {
    u16::try_from(seq.saturating_sub(1) % 65535 + 1).unwrap_or(1)
}

/// The PUBLISH of a message; MQTT 5 metadata in properties (spec 15.5).
pub(super) fn publish_out(version: Version, d: &proto::Deliver, qos: u8, envelope: bool) -> PublishOut {
    let stored = d.msg_id != 0;
    if envelope {
        let json = serde_json::json!({
            "topic": d.topic,
            "sender_user": d.sender_user,
            "sender_device": d.sender_device,
            "msg_id": d.msg_id,
            "conversation_id": if stored { d.conversation_id } else { 0 },
            "seq": if stored { d.conversation_seq } else { 0 },
            "server_time_ms": d.server_time_ms,
            "content_type": d.content_type,
            "payload_base64": base64::engine::general_purpose::STANDARD.encode(&d.payload),
        });
        return PublishOut {
            qos,
            pkid: pkid_for(d.seq),
            topic: format!("{}{}", super::topics::ENVELOPE_PREFIX, d.topic),
            payload: bytes::Bytes::from(json.to_string().into_bytes()),
            content_type: "application/json".into(),
            ..Default::default()
        };
    }
    // Properties exist only in MQTT 5: a 3.1.1 device's deliveries build none.
    let mut props = Vec::new();
    if version == Version::V5 {
        props.push(("tern-sender".to_owned(), format!("{}/{}", d.sender_user, d.sender_device)));
    }
    if stored && version == Version::V5 {
        props.push(("tern-msg-id".into(), d.msg_id.to_string()));
        props.push(("tern-conversation".into(), d.conversation_id.to_string()));
        props.push(("tern-seq".into(), d.conversation_seq.to_string()));
        props.push(("tern-time-ms".into(), d.server_time_ms.to_string()));
    }
    PublishOut {
        qos,
        dup: false,
        pkid: pkid_for(d.seq),
        topic: d.topic.clone(),
        payload: d.payload.clone(),
        content_type: d.content_type.clone(),
        user_properties: props,
    }
}

/// The MQTT 3.1.1 QoS 0 PUBLISH of a room or telemetry message on its raw topic: the same
/// bytes for every 3.1.1 subscriber (no packet identifier at QoS 0, no properties), so encoded
/// once per message ([`crate::server::LiveDeliver::encoded`]).
pub(super) fn v4_live_publish(d: &proto::Deliver) -> Bytes {
    let mut out = BytesMut::new();
    if let Err(e) =
        packets::encode(Version::V4, Outgoing::Publish(Box::new(publish_out(Version::V4, d, 0, false))), &mut out)
    {
        tracing::warn!(error = %e, "MQTT packet not encoded");
    }
    out.freeze()
}

pub(super) fn live_match(s: &Subscription, d: &proto::Deliver) -> bool {
    match &s.kind {
        FilterKind::Ephemeral(EphemeralFilter::Room(conv)) => *conv == d.conversation_id,
        FilterKind::Ephemeral(EphemeralFilter::Telemetry(_)) => topic_matches(&s.matcher, &d.topic),
        _ => false,
    }
}

/// A presence change as MQTT sees it (spec 15.6).
pub(super) fn presence_publish(sub: &Subscription, p: &proto::Presence) -> PublishOut {
    let status = match proto::PresenceStatus::try_from(p.status) {
        Ok(proto::PresenceStatus::Online) => "online",
        Ok(proto::PresenceStatus::Away) => "away",
        _ => "offline",
    };
    let json = serde_json::json!({"user": p.user_id, "device": p.device_id, "status": status, "since_ms": p.since_ms});
    let prefix = if sub.envelope { super::topics::ENVELOPE_PREFIX } else { "" };
    PublishOut {
        qos: 0,
        topic: format!("{prefix}presence/{}", p.user_id),
        payload: bytes::Bytes::from(json.to_string().into_bytes()),
        content_type: "application/json".into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::pkid_for;

    #[test]
    fn packet_identifiers_follow_the_inbox_seq_and_skip_zero() {
        assert_eq!(pkid_for(1), 1);
        assert_eq!(pkid_for(65535), 65535);
        assert_eq!(pkid_for(65536), 1);
        assert_ne!(pkid_for(0), 0);
    }
}
