//! Context-free field rules of each frame type (spec/03-frames.md). A frame that breaks one is
//! malformed with INVALID_FIELD; rules that depend on session state live in the machines.

use crate::error::{DecodeError, ReqId};
use crate::ids::{check_identifier, check_topic, TopicUse};
use crate::limits::{
    MAX_FILTERS_PER_SUBSCRIBE, MAX_MESSAGE_SIZE, MAX_PACKAGE_COUNT, MAX_RECEIVE_WINDOW, MAX_TOKEN_LEN, MIN_MESSAGE_SIZE,
};
use crate::proto;
use crate::reason::{class_of, ReasonClass};

use super::Frame;

fn invalid(field: &'static str, why: &'static str, req: &'static str) -> DecodeError {
    DecodeError::InvalidField { field, why, req: ReqId(req) }
}

fn ensure(ok: bool, field: &'static str, why: &'static str, req: &'static str) -> Result<(), DecodeError> {
    if ok {
        Ok(())
    } else {
        Err(invalid(field, why, req))
    }
}

/// A withdrawal names a cid and nothing else (spec/06-delivery.md 6.2).
fn validate_withdrawal(p: &proto::Publish) -> Result<(), DecodeError> {
    ensure(p.qos != 0, "publish.withdrawn", "only a QoS 1/2 cid can be withdrawn", "REQ-QOS-019")?;
    let empty = p.topic.is_empty()
        && p.payload.is_empty()
        && p.package.is_none()
        && p.content_type.is_empty()
        && p.client_time_ms == 0;
    ensure(empty, "publish.withdrawn", "a withdrawal carries only cid and qos", "REQ-QOS-019")
}

fn check_reason(field: &'static str, reason: u32) -> Result<(), DecodeError> {
    ensure(class_of(reason) != ReasonClass::Unassigned, field, "reason code outside every class", "REQ-ERR-002")
}

fn check_stream(field: &'static str, s: Option<&proto::StreamRef>) -> Result<(), DecodeError> {
    ensure(
        crate::ids::StreamId::from_proto(s).is_some(),
        field,
        "stream must be INBOX/0 or CONVERSATION/non-zero",
        "REQ-SYN-007",
    )
}

fn check_package(field: &'static str, p: &proto::PackageRef, qos: u32) -> Result<(), DecodeError> {
    ensure(p.package_id != 0, field, "package_id must be non-zero", "REQ-PKG-001")?;
    ensure((1..=MAX_PACKAGE_COUNT).contains(&p.count), field, "count must be 1..=32", "REQ-PKG-001")?;
    ensure(p.index < p.count, field, "index must be below count", "REQ-PKG-001")?;
    ensure(qos >= 1, field, "package members need QoS 1 or 2", "REQ-PKG-002")
}

fn check_filters(filters: &[String]) -> Result<(), DecodeError> {
    ensure(!filters.is_empty(), "subscribe.filters", "must not be empty", "REQ-TOP-005")?;
    ensure(filters.len() <= MAX_FILTERS_PER_SUBSCRIBE, "subscribe.filters", "more than 16 filters", "REQ-TOP-005")?;
    filters.iter().try_for_each(|f| check_topic("subscribe.filters", f, TopicUse::Filter))
}

/// Checks every context-free rule of a decoded frame.
pub fn validate(frame: &Frame) -> Result<(), DecodeError> {
    match frame {
        Frame::Connect(c) => {
            ensure(!c.versions.is_empty(), "connect.versions", "must list at least one version", "REQ-HSK-003")?;
            ensure(c.token.len() <= MAX_TOKEN_LEN, "connect.token", "longer than 512 bytes", "REQ-HSK-005")?;
            check_identifier("connect.device_id", &c.device_id)?;
            let size_ok =
                c.max_message_size == 0 || (MIN_MESSAGE_SIZE..=MAX_MESSAGE_SIZE).contains(&c.max_message_size);
            ensure(size_ok, "connect.max_message_size", "must be 0 or 1396..=1048576", "REQ-HSK-007")?;
            ensure(
                c.receive_window <= MAX_RECEIVE_WINDOW,
                "connect.receive_window",
                "must be at most 1024",
                "REQ-HSK-007",
            )
        }
        Frame::ConnAck(a) => check_reason("connack.reason", a.reason),
        Frame::Ping(_) | Frame::Pong(_) => Ok(()),
        Frame::Disconnect(d) => check_reason("disconnect.reason", d.reason),
        Frame::Publish(p) => {
            ensure(p.qos <= 2, "publish.qos", "qos must be 0, 1 or 2", "REQ-QOS-001")?;
            ensure((p.qos == 0) == (p.cid == 0), "publish.cid", "cid is 0 exactly when qos is 0", "REQ-QOS-002")?;
            if p.withdrawn {
                return validate_withdrawal(p);
            }
            check_topic("publish.topic", &p.topic, TopicUse::Name)?;
            match &p.package {
                Some(pkg) => check_package("publish.package", pkg, p.qos),
                None => Ok(()),
            }
        }
        Frame::PubAck(a) => {
            ensure(a.cid != 0, "puback.cid", "must be non-zero", "REQ-QOS-002")?;
            check_reason("puback.reason", a.reason)
        }
        Frame::Deliver(d) => validate_deliver(d),
        Frame::DeliverAck(a) => {
            check_stream("deliver_ack.stream", a.stream.as_ref())?;
            ensure(a.seq != 0, "deliver_ack.seq", "seq starts at 1", "REQ-QOS-010")
        }
        Frame::Notify(n) => check_stream("notify.stream", n.stream.as_ref()),
        Frame::Sync(s) => check_stream("sync.stream", s.stream.as_ref()),
        Frame::SyncDone(s) => {
            check_stream("sync_done.stream", s.stream.as_ref())?;
            check_reason("sync_done.reason", s.reason)
        }
        Frame::HistoryRequest(h) => {
            ensure(h.conversation_id != 0, "history.conversation_id", "must be non-zero", "REQ-SYN-004")
        }
        Frame::HistoryPage(h) => check_reason("history_page.reason", h.reason),
        Frame::Subscribe(s) => check_filters(&s.filters),
        Frame::Unsubscribe(s) => check_filters(&s.filters),
        Frame::SubAck(s) | Frame::UnsubAck(s) => s.reasons.iter().try_for_each(|&r| check_reason("suback.reasons", r)),
        Frame::Fragment(f) => {
            ensure(f.count >= 2, "fragment.count", "a fragmented body has at least 2 pieces", "REQ-FRG-006")?;
            ensure(f.index < f.count, "fragment.index", "index must be below count", "REQ-FRG-006")?;
            ensure(!f.chunk.is_empty(), "fragment.chunk", "must not be empty", "REQ-FRG-004")?;
            ensure(
                (f.index == 0) == (f.total_length != 0),
                "fragment.total_length",
                "set on index 0 only",
                "REQ-FRG-003",
            )
        }
        Frame::ReadMark(r) => ensure(r.conversation_id != 0, "read.conversation_id", "must be non-zero", "REQ-GRP-006"),
        Frame::Receipt(r) => check_identifier("receipt.reader", &r.reader),
        Frame::Presence(p) => {
            check_identifier("presence.user_id", &p.user_id)?;
            let known =
                proto::PresenceStatus::try_from(p.status).is_ok_and(|s| s != proto::PresenceStatus::Unspecified);
            ensure(known, "presence.status", "must be ONLINE, AWAY or OFFLINE", "REQ-PRS-002")
        }
        Frame::Request(r) => ensure(r.op.is_some(), "request.op", "must name an operation", "REQ-GRP-007"),
        Frame::Response(r) => check_reason("response.reason", r.reason),
    }
}

/// [`validate`] for a DELIVER the broker is about to send, without wrapping it in a [`Frame`].
pub(crate) fn validate_deliver(d: &proto::Deliver) -> Result<(), DecodeError> {
    check_stream("deliver.stream", d.stream.as_ref())?;
    ensure(d.seq != 0, "deliver.seq", "seq starts at 1", "REQ-QOS-009")?;
    ensure(d.qos <= 2, "deliver.qos", "qos must be 0, 1 or 2", "REQ-QOS-001")?;
    check_topic("deliver.topic", &d.topic, TopicUse::Name)?;
    match &d.package {
        Some(pkg) => check_package("deliver.package", pkg, d.qos),
        None => Ok(()),
    }
}
