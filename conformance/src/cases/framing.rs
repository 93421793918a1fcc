//! Framing, the 1400-byte limit, malformed input and fragmentation, against a broker. Every
//! negative frame is built by [`crate::raw`], never by the codec under test.

use tern_codec::ReasonCode;

use super::{broker, Case};
use crate::case::{CaseFuture, CaseResult};
use crate::check;
use crate::cx::Cx;
use crate::raw::{self, ty, Body};

pub(super) const CASES: &[Case] = &[
    broker(
        "framing.oversize.1401-bytes@broker",
        &["REQ-FRM-001", "REQ-FRM-002", "REQ-FRM-010", "REQ-ERR-003"],
        "a 1401-byte PUBLISH is refused with FRAME_TOO_LARGE and nothing after it is acted on",
        oversize,
    ),
    broker(
        "framing.oversize.header-only@broker",
        &["REQ-FRM-002"],
        "a header announcing 65535 bytes is refused before any body byte arrives",
        oversize_header_only,
    ),
    broker(
        "framing.limit.1400-bytes-accepted@broker",
        &["REQ-FRM-001"],
        "a PUBLISH of exactly 1400 bytes is accepted",
        exactly_1400,
    ),
    broker(
        "framing.reserved-flags@broker",
        &["REQ-FRM-003", "REQ-FRM-010"],
        "a PING with a flag bit set is refused with RESERVED_BITS_SET",
        reserved_flags,
    ),
    broker(
        "framing.unknown-type@broker",
        &["REQ-FRM-004", "REQ-FRM-010"],
        "frame type 0x7F is refused with UNKNOWN_FRAME_TYPE",
        unknown_type,
    ),
    broker(
        "framing.non-minimal-varint@broker",
        &["REQ-FRM-005", "REQ-FRM-010"],
        "a varint padded with a redundant byte is refused with NON_CANONICAL_ENCODING",
        non_minimal,
    ),
    broker(
        "framing.trailing-bytes@broker",
        &["REQ-FRM-006", "REQ-FRM-010"],
        "a body with a trailing byte after its last field is refused with MALFORMED_FRAME",
        trailing,
    ),
    broker(
        "framing.invalid-utf8@broker",
        &["REQ-FRM-006", "REQ-FRM-010"],
        "a topic that is not UTF-8 is refused with MALFORMED_FRAME",
        invalid_utf8,
    ),
    broker(
        "framing.wrong-direction@broker",
        &["REQ-FRM-007", "REQ-FRM-010", "REQ-ERR-003"],
        "a CONNACK sent by a client is refused with UNEXPECTED_FRAME",
        wrong_direction,
    ),
    broker(
        "framing.invalid-field.qos-3@broker",
        &["REQ-FRM-011", "REQ-QOS-001"],
        "a PUBLISH with qos 3 is refused with INVALID_FIELD",
        invalid_qos,
    ),
    broker(
        "fragments.reassembled-publish@broker",
        &["REQ-FRG-001"],
        "a 3000-byte PUBLISH sent as FRAGMENT frames is stored and delivered whole",
        fragmented_publish,
    ),
    broker(
        "fragments.truncated@broker",
        &["REQ-FRG-005", "REQ-FRM-010"],
        "pieces that end short of the announced total_length are refused with FRAGMENT_SEQUENCE_ERROR",
        truncated_fragments,
    ),
    broker(
        "fragments.first-piece-index-1@broker",
        &["REQ-FRG-002"],
        "a FRAGMENT with index 1 and no index 0 is refused with FRAGMENT_SEQUENCE_ERROR",
        fragment_without_start,
    ),
    broker(
        "fragments.discarded-on-close@broker",
        &["REQ-FRG-010", "REQ-FRG-002"],
        "the rest of a fragmented body sent on a new connection is not joined to the old start",
        fragment_across_connections,
    ),
];

/// Opens a session, sends `bad` followed (in the same write) by a valid PUBLISH, expects the
/// broker to close with `reason`, and checks that the PUBLISH was not processed.
async fn refused(cx: &Cx, bad: Vec<u8>, req: &'static str, reason: ReasonCode) -> CaseResult {
    let (user, peer_user) = (cx.name("frm"), cx.name("frm-peer"));
    let (mut p, _) = cx.session("client", &user, "d1").await?;
    let mut bytes = bad;
    bytes.extend(raw::publish(1, 2, &format!("user/{peer_user}"), b"after the refused bytes").frame(ty::PUBLISH));
    p.send_raw(&bytes).await?;
    p.expect_close(cx.prompt(), req, reason).await?;
    let (mut again, ack) = cx.session("client-again", &user, "d1").await?;
    check!(
        ack.last_cid == 0,
        "REQ-FRM-010",
        "a PUBLISH sent after the refused bytes was processed (last_cid {})",
        ack.last_cid
    );
    again.close().await
}

/// Bytes of a PUBLISH body other than a payload of 128..16383 bytes (whose length takes two
/// varint bytes, one more than the empty payload's).
fn publish_overhead(topic: &str) -> usize {
    raw::publish(1, 2, topic, b"").into_bytes().len() + 1
}

fn oversize(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        // A PUBLISH whose body is 1397 bytes: one over the limit.
        let topic = format!("user/{}", cx.name("frm-peer"));
        let body = raw::publish(1, 2, &topic, &vec![b'x'; 1397 - publish_overhead(&topic)]).into_bytes();
        check!(body.len() == 1397, "REQ-FRM-001", "harness built {} bytes", body.len());
        refused(cx, raw::frame_with(ty::PUBLISH, 0, &body), "REQ-FRM-002", ReasonCode::FrameTooLarge).await
    })
}

fn oversize_header_only(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (mut p, _) = cx.session("client", &cx.name("frm"), "d1").await?;
        p.send_raw(&raw::header(ty::PUBLISH, 0, u16::MAX)).await?;
        p.expect_close(cx.prompt(), "REQ-FRM-002", ReasonCode::FrameTooLarge).await
    })
}

fn exactly_1400(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let topic = format!("user/{}", cx.name("frm-peer"));
        let body = raw::publish(1, 2, &topic, &vec![b'y'; 1396 - publish_overhead(&topic)]).into_bytes();
        check!(body.len() == 1396, "REQ-FRM-001", "harness built {} bytes", body.len());
        let (mut p, _) = cx.session("client", &cx.name("frm"), "d1").await?;
        p.send_raw(&raw::frame_with(ty::PUBLISH, 0, &body)).await?;
        let ack = p.puback(cx.prompt(), 1).await?;
        check!(
            ack.reason == ReasonCode::Success as u32,
            "REQ-FRM-001",
            "a 1400-byte PUBLISH got PUBACK reason {}",
            ack.reason
        );
        p.close().await
    })
}

fn reserved_flags(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let bad = raw::frame_with(ty::PING, 0x01, &Body::new().uint(1, 9).into_bytes());
        refused(cx, bad, "REQ-FRM-003", ReasonCode::ReservedBitsSet).await
    })
}

fn unknown_type(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        refused(cx, Body::new().uint(1, 9).frame(0x7F), "REQ-FRM-004", ReasonCode::UnknownFrameType).await
    })
}

fn non_minimal(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        refused(cx, Body::new().uint_padded(1, 1, 1).frame(ty::PING), "REQ-FRM-005", ReasonCode::NonCanonicalEncoding)
            .await
    })
}

fn trailing(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        refused(cx, Body::new().uint(1, 9).raw(&[0x00]).frame(ty::PING), "REQ-FRM-006", ReasonCode::MalformedFrame)
            .await
    })
}

fn invalid_utf8(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let bad = Body::new().uint(1, 1).uint(2, 2).bytes(3, b"user/\xff\xfe").bytes(4, b"x").frame(ty::PUBLISH);
        refused(cx, bad, "REQ-FRM-006", ReasonCode::MalformedFrame).await
    })
}

fn wrong_direction(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        refused(cx, Body::new().uint(2, 1).frame(ty::CONNACK), "REQ-FRM-007", ReasonCode::UnexpectedFrame).await
    })
}

fn invalid_qos(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let topic = format!("user/{}", cx.name("frm-peer"));
        refused(cx, raw::publish(1, 3, &topic, b"x").frame(ty::PUBLISH), "REQ-FRM-011", ReasonCode::InvalidField).await
    })
}

/// The two FRAGMENT frames of a PUBLISH (cid 1) with a `len`-byte payload, built by hand.
fn fragments(topic: &str, len: usize) -> (Vec<u8>, Vec<u8>) {
    fragments_claiming(topic, len, 0)
}

/// As [`fragments`], with the first piece's `total_length` overstated by `extra` bytes.
fn fragments_claiming(topic: &str, len: usize, extra: usize) -> (Vec<u8>, Vec<u8>) {
    let body = raw::publish(1, 2, topic, &vec![b'f'; len]).into_bytes();
    let (first, rest) = body.split_at(1200);
    let total = (body.len() + extra) as u64;
    // Canonical encoding leaves index 0 out of the first piece (proto3 default).
    let a = Body::new().uint(1, 1).uint(3, 2).uint(4, u64::from(ty::PUBLISH)).uint(5, total).bytes(6, first);
    let b = Body::new().uint(1, 1).uint(2, 1).uint(3, 2).uint(4, u64::from(ty::PUBLISH)).bytes(6, rest);
    (a.frame(ty::FRAGMENT), b.frame(ty::FRAGMENT))
}

fn fragmented_publish(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (sender, recipient) = (cx.name("frg-s"), cx.name("frg-r"));
        let (mut r, _) = cx.session("recipient", &recipient, "d1").await?;
        let (mut s, _) = cx.session("sender", &sender, "d1").await?;
        let (a, b) = fragments(&format!("user/{recipient}"), 2000);
        s.send_raw(&[a, b].concat()).await?;
        let ack = s.puback(cx.prompt(), 1).await?;
        check!(
            ack.reason == ReasonCode::Success as u32,
            "REQ-FRG-001",
            "fragmented PUBLISH got PUBACK reason {}",
            ack.reason
        );
        let d = r.deliver(cx.prompt(), "REQ-FRG-001").await?;
        check!(
            d.payload.len() == 2000 && d.payload.iter().all(|&c| c == b'f'),
            "REQ-FRG-001",
            "delivered payload is {} bytes, expected the 2000 sent",
            d.payload.len()
        );
        r.ack(d.stream.unwrap_or_default(), d.seq).await?;
        s.close().await?;
        r.close().await
    })
}

fn truncated_fragments(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (a, b) = fragments_claiming(&format!("user/{}", cx.name("frm-peer")), 2000, 100);
        refused(cx, [a, b].concat(), "REQ-FRG-005", ReasonCode::FragmentSequenceError).await
    })
}

fn fragment_without_start(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (_, b) = fragments(&format!("user/{}", cx.name("frm-peer")), 2000);
        refused(cx, b, "REQ-FRG-002", ReasonCode::FragmentSequenceError).await
    })
}

fn fragment_across_connections(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let user = cx.name("frg");
        let (a, b) = fragments(&format!("user/{}", cx.name("frg-peer")), 2000);
        let (mut first, _) = cx.session("first", &user, "d1").await?;
        first.send_raw(&a).await?;
        first.shutdown().await;
        let (mut second, _) = cx.session("second", &user, "d1").await?;
        second.send_raw(&b).await?;
        second.expect_close(cx.prompt(), "REQ-FRG-010", ReasonCode::FragmentSequenceError).await?;
        let (mut third, ack) = cx.session("third", &user, "d1").await?;
        check!(
            ack.last_cid == 0,
            "REQ-FRG-010",
            "the pieces of two connections were joined and stored (last_cid {})",
            ack.last_cid
        );
        third.close().await
    })
}
