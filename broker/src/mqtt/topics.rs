//! The MQTT side of the topic table (spec 15.2): which SUBSCRIBE filters a device's user may
//! hold, and how a refusal of the native access rules reads in MQTT.

use tern_codec::ids::{check_topic, TopicUse};
use tern_codec::ReasonCode;

use super::packets::{AckReason, SubRefusal};
use crate::connection::{check_ephemeral_filter, EphemeralFilter};
use crate::server::Shared;

/// Delivered messages whose topic matches a filter with this prefix come as JSON envelopes.
pub(crate) const ENVELOPE_PREFIX: &str = "envelope/";

/// What a granted filter selects.
pub(crate) enum FilterKind {
    /// Stored messages of the user's inbox whose topic matches (`user/…`, `group/…`).
    Inbox,
    /// Rooms and telemetry, routed live.
    Ephemeral(EphemeralFilter),
    /// The presence of one user.
    Presence(String),
}

/// One granted subscription of a connection.
pub(crate) struct Subscription {
    /// The filter as the device sent it (with `envelope/` if it had it).
    pub(crate) filter: String,
    /// The filter without the envelope prefix, matched against topics.
    pub(crate) matcher: String,
    pub(crate) qos: u8,
    pub(crate) envelope: bool,
    pub(crate) kind: FilterKind,
}

/// Checks a SUBSCRIBE filter for `user` (REQ-MQT-007).
pub(crate) fn check_filter(shared: &Shared, user: &str, filter: &str, qos: u8) -> Result<Subscription, SubRefusal> {
    let (matcher, envelope) = match filter.strip_prefix(ENVELOPE_PREFIX) {
        Some(rest) => (rest, true),
        None => (filter, false),
    };
    check_topic("filter", matcher, TopicUse::Filter).map_err(|_| SubRefusal::NotAuthorized)?;
    let mut levels = matcher.split('/');
    let first = levels.next().unwrap_or_default();
    let second = levels.next();
    let kind = match (first, second) {
        // The inbox holds only what the user may read: any filter below user/ or group/
        // selects from it, and a wildcard cannot widen access.
        ("user", Some(_)) => FilterKind::Inbox,
        ("group", Some("+" | "#")) => FilterKind::Inbox,
        ("group", Some(group)) => {
            let store = &shared.store;
            let conv = store.group_conversation(group).ok().flatten().ok_or(SubRefusal::NotAuthorized)?;
            if !store.is_member(conv, user).unwrap_or(false) {
                return Err(SubRefusal::NotAuthorized);
            }
            let members = store.members(conv).map(|m| m.len()).unwrap_or(0);
            if members > shared.options.write_fanout_threshold {
                // Read fan-out groups are not in inboxes; MQTT devices cannot pull them yet.
                return Err(SubRefusal::Unsupported);
            }
            FilterKind::Inbox
        }
        ("room" | "device", Some(_)) => {
            FilterKind::Ephemeral(check_ephemeral_filter(shared, user, matcher).map_err(|_| SubRefusal::NotAuthorized)?)
        }
        ("presence", Some(target)) if levels.next().is_none() && target != "+" && target != "#" => {
            if target != user && !shared.store.share_conversation(user, target).unwrap_or(false) {
                return Err(SubRefusal::NotAuthorized);
            }
            FilterKind::Presence(target.to_owned())
        }
        _ => return Err(SubRefusal::NotAuthorized),
    };
    Ok(Subscription { filter: filter.to_owned(), matcher: matcher.to_owned(), qos: qos.min(2), envelope, kind })
}

/// How a refused PUBLISH is answered under MQTT 5 (REQ-MQT-006): 0x90 for a first level the
/// table does not have, 0x87 for everything else.
pub(crate) fn refusal(topic: &str, reason: ReasonCode) -> AckReason {
    let known = ["user/", "group/", "room/", "device/"].iter().any(|p| topic.starts_with(p));
    if !known || reason == ReasonCode::InvalidField {
        AckReason::TopicNameInvalid
    } else {
        AckReason::NotAuthorized
    }
}
