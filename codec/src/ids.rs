//! Domain identifiers as newtypes, and the syntax rules for identifiers and topics
//! (spec/01-conventions.md, spec/05-topics.md).

use crate::error::{DecodeError, ReqId};
use crate::limits::{MAX_ID_LEN, MAX_TOPIC_LEN, MAX_TOPIC_LEVELS};

macro_rules! u64_newtype {
    ($($(#[$doc:meta])* $name:ident;)*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub u64);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    )*};
}

u64_newtype! {
    /// Client message id: numbers a device's QoS 1/2 PUBLISH frames 1, 2, 3 ...
    Cid;
    /// Position in a downstream stream, continuous from 1.
    Seq;
    /// Globally unique message id assigned by the broker.
    MsgId;
    /// Sender-chosen package id, strictly increasing per device.
    PackageId;
    /// Conversation id assigned by the broker's registry.
    ConversationId;
}

/// A downstream stream: the user's inbox or one conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StreamId {
    /// The connected user's inbox (write fan-out).
    Inbox,
    /// One conversation's own sequence (read fan-out, rooms).
    Conversation(ConversationId),
}

impl StreamId {
    /// Wire form.
    pub fn to_proto(self) -> crate::proto::StreamRef {
        use crate::proto::{StreamKind, StreamRef};
        match self {
            StreamId::Inbox => StreamRef { kind: StreamKind::Inbox as i32, id: 0 },
            StreamId::Conversation(c) => StreamRef { kind: StreamKind::Conversation as i32, id: c.0 },
        }
    }

    /// Parses the wire form; frame validation has already rejected bad kinds.
    pub fn from_proto(r: Option<&crate::proto::StreamRef>) -> Option<StreamId> {
        use crate::proto::StreamKind;
        let r = r?;
        match StreamKind::try_from(r.kind).ok()? {
            StreamKind::Inbox if r.id == 0 => Some(StreamId::Inbox),
            StreamKind::Conversation if r.id != 0 => Some(StreamId::Conversation(ConversationId(r.id))),
            _ => None,
        }
    }
}

fn invalid(field: &'static str, why: &'static str, req: &'static str) -> DecodeError {
    DecodeError::InvalidField { field, why, req: ReqId(req) }
}

/// Checks an identifier (user, device, group, room): 1..=64 bytes of `A-Z a-z 0-9 . _ - @`
/// [REQ-TOP-004].
pub fn check_identifier(field: &'static str, id: &str) -> Result<(), DecodeError> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(invalid(field, "identifier must be 1..=64 bytes", "REQ-TOP-004"));
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@')) {
        return Err(invalid(field, "identifier has a character outside A-Za-z0-9._-@", "REQ-TOP-004"));
    }
    Ok(())
}

/// Whether a topic may carry wildcards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicUse {
    /// A PUBLISH topic: no wildcards [REQ-TOP-002].
    Name,
    /// A SUBSCRIBE filter: `+` as a whole level, `#` as the whole last level.
    Filter,
}

/// Checks topic syntax [REQ-TOP-001] [REQ-TOP-002]: 1..=256 bytes, at most 8 levels split by
/// `/`, no empty level, no NUL; wildcards only in filters and only as whole levels.
pub fn check_topic(field: &'static str, topic: &str, usage: TopicUse) -> Result<(), DecodeError> {
    if topic.is_empty() || topic.len() > MAX_TOPIC_LEN {
        return Err(invalid(field, "topic must be 1..=256 bytes", "REQ-TOP-001"));
    }
    if topic.contains('\0') {
        return Err(invalid(field, "topic contains NUL", "REQ-TOP-001"));
    }
    let levels = topic.split('/').count();
    if levels > MAX_TOPIC_LEVELS {
        return Err(invalid(field, "topic has more than 8 levels", "REQ-TOP-001"));
    }
    for (i, level) in topic.split('/').enumerate() {
        if level.is_empty() {
            return Err(invalid(field, "topic has an empty level", "REQ-TOP-001"));
        }
        let wild = level.contains('+') || level.contains('#');
        if !wild {
            continue;
        }
        if usage == TopicUse::Name {
            return Err(invalid(field, "wildcards are not allowed in a topic name", "REQ-TOP-002"));
        }
        let whole = level == "+" || (level == "#" && i + 1 == levels);
        if !whole {
            return Err(invalid(field, "a wildcard must be a whole level, and # the last", "REQ-TOP-002"));
        }
    }
    Ok(())
}

/// Whether a topic name matches a filter (MQTT semantics for `+` and `#`).
pub fn topic_matches(filter: &str, name: &str) -> bool {
    let mut names = name.split('/');
    for f in filter.split('/') {
        if f == "#" {
            return true;
        }
        match names.next() {
            Some(n) if f == "+" || f == n => {}
            _ => return false,
        }
    }
    names.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert!(check_identifier("x", "alice.b-1_2@corp").is_ok());
        assert!(check_identifier("x", "").is_err());
        assert!(check_identifier("x", "a/b").is_err());
        assert!(check_identifier("x", &"a".repeat(65)).is_err());
    }

    #[test]
    fn topics_and_wildcards() {
        assert!(check_topic("t", "user/bob", TopicUse::Name).is_ok());
        assert!(check_topic("t", "device/alice/+/temp", TopicUse::Name).is_err());
        assert!(check_topic("t", "device/alice/+/temp", TopicUse::Filter).is_ok());
        assert!(check_topic("t", "device/#", TopicUse::Filter).is_ok());
        assert!(check_topic("t", "device/#/x", TopicUse::Filter).is_err());
        assert!(check_topic("t", "device/a+", TopicUse::Filter).is_err());
        assert!(check_topic("t", "a//b", TopicUse::Name).is_err());
        assert!(check_topic("t", "a/b/c/d/e/f/g/h/i", TopicUse::Name).is_err());
        assert!(topic_matches("device/alice/#", "device/alice/k/temp"));
        assert!(topic_matches("device/+/k", "device/alice/k"));
        assert!(!topic_matches("device/+/k", "device/alice/k/x"));
        assert!(!topic_matches("room/a", "room/b"));
    }
}
