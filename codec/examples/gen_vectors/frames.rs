//! FRAME_CODEC vectors: every frame type, the size boundary, and every malformed-input rule.

use bytes::{Bytes, BytesMut};
use prost::Message;
use serde_json::{json, Value};
use tern_codec::fragment::Fragmenter;
use tern_codec::proto;
use tern_codec::Frame;

use prost_reflect::DescriptorPool;

use crate::{frame_bytes, publish, raw, stream_inbox, Tests};

fn every_frame_type() -> Vec<(&'static str, Frame)> {
    let deliver = proto::Deliver {
        stream: stream_inbox(),
        seq: 42,
        msg_id: 0x0123_4567_89AB_CDEF,
        conversation_id: 7,
        conversation_seq: 13,
        topic: "user/bob".into(),
        sender_user: "alice".into(),
        sender_device: "phone".into(),
        qos: 2,
        payload: Bytes::from_static(b"hello"),
        package: None,
        content_type: "text/plain".into(),
        server_time_ms: 1_767_225_600_000,
        dup: false,
        payload_omitted: false,
    };
    vec![
        (
            "CONNECT with a token and every negotiable value",
            Frame::Connect(proto::Connect {
                versions: vec![1],
                token: Bytes::from_static(b"tok"),
                device_id: "phone".into(),
                keepalive_secs: 30,
                max_message_size: 65_536,
                receive_window: 32,
                resume_session_id: Bytes::new(),
            }),
        ),
        (
            "CONNACK accepting a fresh session",
            Frame::ConnAck(proto::ConnAck {
                reason: 0,
                version: 1,
                session_id: Bytes::from_static(b"\x01\x02\x03\x04"),
                session_present: false,
                keepalive_secs: 30,
                max_message_size: 65_536,
                receive_window: 32,
                last_cid: 0,
                server_time_ms: 1_767_225_600_000,
                user_id: "alice".into(),
                backoff_min_ms: 1_000,
                backoff_max_ms: 60_000,
                inbox_acked_seq: 0,
            }),
        ),
        ("CONNACK refusing a bad token", Frame::ConnAck(proto::ConnAck { reason: 0xA1, ..Default::default() })),
        ("PING with a nonce", Frame::Ping(proto::Ping { nonce: 7 })),
        ("PONG echoing the nonce", Frame::Pong(proto::Ping { nonce: 7 })),
        ("PING with no nonce: an empty body", Frame::Ping(proto::Ping { nonce: 0 })),
        (
            "DISCONNECT for a keepalive timeout",
            Frame::Disconnect(proto::Disconnect { reason: 0x95, detail: "client silent".into(), ..Default::default() }),
        ),
        (
            "DISCONNECT redirecting with backoff",
            Frame::Disconnect(proto::Disconnect {
                reason: 0xC5,
                detail: String::new(),
                retry_after_ms: 5_000,
                server_reference: "10.0.0.2:7420".into(),
            }),
        ),
        ("PUBLISH QoS 2 to a user inbox", Frame::Publish(publish(1, b"hello"))),
        ("PUBLISH QoS 0 (cid 0)", Frame::Publish(publish(0, b"typing"))),
        (
            "PUBLISH as member 2 of a package of 3",
            Frame::Publish(proto::Publish {
                package: Some(proto::PackageRef { package_id: 9, index: 1, count: 3 }),
                ..publish(5, b"part")
            }),
        ),
        (
            "PUBACK: stored",
            Frame::PubAck(proto::PubAck {
                cid: 1,
                reason: 0,
                msg_id: 0x0123_4567_89AB_CDEF,
                conversation_id: 7,
                seq: 13,
            }),
        ),
        (
            "PUBACK: refused, not authorised",
            Frame::PubAck(proto::PubAck { cid: 2, reason: 0xA0, ..Default::default() }),
        ),
        ("DELIVER on the inbox stream", Frame::Deliver(deliver.clone())),
        (
            "DELIVER retransmitted on a conversation stream",
            Frame::Deliver(proto::Deliver {
                stream: Some(proto::StreamRef { kind: proto::StreamKind::Conversation as i32, id: 7 }),
                seq: 13,
                dup: true,
                ..deliver
            }),
        ),
        (
            "DELIVER whose payload was too large for the device",
            Frame::Deliver(proto::Deliver {
                stream: stream_inbox(),
                seq: 43,
                msg_id: 5,
                conversation_id: 7,
                conversation_seq: 14,
                topic: "user/bob".into(),
                sender_user: "alice".into(),
                qos: 2,
                payload_omitted: true,
                ..Default::default()
            }),
        ),
        (
            "DELIVER_ACK, cumulative through seq 42",
            Frame::DeliverAck(proto::DeliverAck { stream: stream_inbox(), seq: 42 }),
        ),
        (
            "NOTIFY: a conversation has news",
            Frame::Notify(proto::Notify {
                stream: Some(proto::StreamRef { kind: proto::StreamKind::Conversation as i32, id: 7 }),
                latest_seq: 120,
                acked_seq: 100,
            }),
        ),
        (
            "SYNC the inbox after seq 40",
            Frame::Sync(proto::Sync { request_id: 3, stream: stream_inbox(), after_seq: 40, limit: 100 }),
        ),
        (
            "SYNC_DONE with more to come",
            Frame::SyncDone(proto::SyncDone {
                request_id: 3,
                reason: 0,
                stream: stream_inbox(),
                last_seq: 140,
                more: true,
            }),
        ),
        (
            "HISTORY: the newest page",
            Frame::HistoryRequest(proto::HistoryRequest {
                request_id: 4,
                conversation_id: 7,
                before_seq: 0,
                limit: 10,
            }),
        ),
        (
            "HISTORY_PAGE with one entry",
            Frame::HistoryPage(proto::HistoryPage {
                request_id: 4,
                reason: 0,
                conversation_id: 7,
                entries: vec![proto::HistoryEntry {
                    seq: 13,
                    msg_id: 99,
                    sender_user: "alice".into(),
                    sender_device: "phone".into(),
                    payload: Bytes::from_static(b"hi"),
                    content_type: "text/plain".into(),
                    server_time_ms: 1_767_225_600_000,
                }],
                next_before_seq: 13,
            }),
        ),
        (
            "SUBSCRIBE to device telemetry with a wildcard",
            Frame::Subscribe(proto::Subscribe {
                request_id: 5,
                filters: vec!["device/alice/+/temp".into(), "room/lobby".into()],
            }),
        ),
        ("SUBACK: granted, refused", Frame::SubAck(proto::SubAck { request_id: 5, reasons: vec![0, 0xA0] })),
        ("UNSUBSCRIBE", Frame::Unsubscribe(proto::Unsubscribe { request_id: 6, filters: vec!["room/lobby".into()] })),
        ("UNSUBACK", Frame::UnsubAck(proto::SubAck { request_id: 6, reasons: vec![0] })),
        ("READ marker", Frame::ReadMark(proto::ReadMark { conversation_id: 7, seq: 13 })),
        ("RECEIPT", Frame::Receipt(proto::Receipt { conversation_id: 7, reader: "bob".into(), seq: 13 })),
        (
            "PRESENCE online",
            Frame::Presence(proto::Presence {
                user_id: "bob".into(),
                device_id: "laptop".into(),
                status: proto::PresenceStatus::Online as i32,
                since_ms: 1_767_225_600_000,
            }),
        ),
        (
            "REQUEST: open a 1:1 conversation",
            Frame::Request(proto::Request {
                request_id: 8,
                op: Some(proto::request::Op::OpenConversation(proto::OpenConversation { peer_user: "bob".into() })),
            }),
        ),
        (
            "REQUEST: claim a prekey bundle",
            Frame::Request(proto::Request {
                request_id: 9,
                op: Some(proto::request::Op::KeyClaim(proto::KeyClaim {
                    user_id: "bob".into(),
                    device_id: "laptop".into(),
                })),
            }),
        ),
        (
            "RESPONSE: unread counts",
            Frame::Response(proto::Response {
                request_id: 10,
                reason: 0,
                result: Some(proto::response::Result::Unread(proto::UnreadCounts {
                    conversations: vec![proto::UnreadCount { conversation_id: 7, unread: 3 }],
                    total: 3,
                })),
            }),
        ),
        ("FRAGMENT carrying the first piece of a PUBLISH", {
            let mut out = BytesMut::new();
            Fragmenter::new().encode(&Frame::Publish(publish(3, &[0x61; 2000])), 65_536, &mut out).expect("fragments");
            let mut first = out.clone();
            tern_codec::decode_frame(&mut first).expect("decode").expect("frame")
        }),
    ]
}

pub(crate) fn frame_codec(pool: DescriptorPool) -> Vec<Value> {
    let mut t = Tests { pool, tests: Vec::new() };
    for (comment, f) in every_frame_type() {
        t.valid(comment, &["REQ-FRM-001", "REQ-FRM-005"], &f);
    }
    // The 1400-byte boundary: a PUBLISH padded to exactly 1400 bytes, then one byte more.
    let base = publish(1, b"").encoded_len();
    let payload_len = 1396 - base - 3; // tag + 2-byte length
    let exact = Frame::Publish(publish(1, &vec![0x5A; payload_len]));
    assert_eq!(frame_bytes(&exact).len(), 1400);
    t.valid("1400 bytes in all: the largest frame", &["REQ-FRM-001"], &exact);
    let mut over = raw(0x06, 0, &[]);
    over[2..4].copy_from_slice(&1397u16.to_be_bytes());
    over.extend(std::iter::repeat_n(0u8, 1397));
    t.invalid(
        "1401 bytes: body length 1397 is refused from the header alone",
        &["REQ-FRM-001", "REQ-FRM-002"],
        &over,
        "FRAME_TOO_LARGE",
    );
    t.invalid(
        "header announcing 65535 bytes, body not sent",
        &["REQ-FRM-002"],
        &[0x08, 0, 0xFF, 0xFF],
        "FRAME_TOO_LARGE",
    );
    // Header rules.
    t.invalid("reserved flag bit 0 set on PING", &["REQ-FRM-003"], &raw(0x03, 0x01, &[]), "RESERVED_BITS_SET");
    t.invalid(
        "reserved flag bit 7 set on PUBLISH",
        &["REQ-FRM-003"],
        &raw(0x06, 0x80, &frame_bytes(&Frame::Publish(publish(1, b"x")))[4..]),
        "RESERVED_BITS_SET",
    );
    t.invalid("frame type 0x00 is not assigned", &["REQ-FRM-004"], &raw(0x00, 0, &[]), "UNKNOWN_FRAME_TYPE");
    t.invalid("frame type 0x7F is not assigned", &["REQ-FRM-004"], &raw(0x7F, 0, &[]), "UNKNOWN_FRAME_TYPE");
    t.invalid(
        "frame type 0x17 (between assigned ranges)",
        &["REQ-FRM-004"],
        &raw(0x17, 0, &[0x08, 0x01]),
        "UNKNOWN_FRAME_TYPE",
    );
    // Canonical bodies.
    t.invalid(
        "non-minimal varint: nonce 1 as 81 00",
        &["REQ-FRM-005"],
        &raw(0x03, 0, &[0x08, 0x81, 0x00]),
        "NON_CANONICAL_ENCODING",
    );
    t.invalid(
        "explicit default value: nonce 0 encoded",
        &["REQ-FRM-005"],
        &raw(0x03, 0, &[0x08, 0x00]),
        "NON_CANONICAL_ENCODING",
    );
    t.invalid(
        "fields out of order: PUBACK reason before cid",
        &["REQ-FRM-005"],
        &raw(0x07, 0, &[0x10, 0xA0, 0x01, 0x08, 0x01]),
        "NON_CANONICAL_ENCODING",
    );
    t.invalid(
        "field repeated: PING nonce twice",
        &["REQ-FRM-005"],
        &raw(0x03, 0, &[0x08, 0x01, 0x08, 0x02]),
        "NON_CANONICAL_ENCODING",
    );
    t.invalid(
        "unknown field 15 in PING",
        &["REQ-FRM-008"],
        &raw(0x03, 0, &[0x08, 0x01, 0x78, 0x01]),
        "NON_CANONICAL_ENCODING",
    );
    t.invalid(
        "trailing byte after the last field of PUBACK",
        &["REQ-FRM-005", "REQ-FRM-006"],
        &raw(0x07, 0, &[0x08, 0x01, 0x00]),
        "MALFORMED_FRAME",
    );
    t.invalid(
        "length-delimited field runs past the body",
        &["REQ-FRM-006"],
        &raw(0x06, 0, &[0x1A, 0x10, b'u']),
        "MALFORMED_FRAME",
    );
    t.invalid(
        "truncated varint at the end of the body",
        &["REQ-FRM-006"],
        &raw(0x03, 0, &[0x08, 0x80]),
        "MALFORMED_FRAME",
    );
    t.invalid(
        "invalid UTF-8 in a string field",
        &["REQ-FRM-006"],
        &raw(0x06, 0, &[0x1A, 0x02, 0xC3, 0x28]),
        "MALFORMED_FRAME",
    );
    t.invalid("wire type 7 does not exist", &["REQ-FRM-006"], &raw(0x03, 0, &[0x0F]), "MALFORMED_FRAME");
    // Field rules.
    let bad = |p: proto::Publish| raw(0x06, 0, &p.encode_to_vec());
    t.invalid("PUBLISH qos 3", &["REQ-QOS-001"], &bad(proto::Publish { qos: 3, ..publish(1, b"x") }), "INVALID_FIELD");
    t.invalid(
        "PUBLISH QoS 2 with cid 0",
        &["REQ-QOS-002"],
        &bad(proto::Publish { cid: 0, ..publish(1, b"x") }),
        "INVALID_FIELD",
    );
    t.invalid(
        "PUBLISH QoS 0 with a cid",
        &["REQ-QOS-002"],
        &bad(proto::Publish { qos: 0, ..publish(1, b"x") }),
        "INVALID_FIELD",
    );
    t.invalid(
        "PUBLISH topic with a + wildcard",
        &["REQ-TOP-002"],
        &bad(proto::Publish { topic: "device/+/t".into(), ..publish(1, b"x") }),
        "INVALID_FIELD",
    );
    t.invalid(
        "PUBLISH topic with an empty level",
        &["REQ-TOP-001"],
        &bad(proto::Publish { topic: "user//bob".into(), ..publish(1, b"x") }),
        "INVALID_FIELD",
    );
    t.invalid(
        "PUBLISH with an empty topic",
        &["REQ-TOP-001"],
        &bad(proto::Publish { topic: String::new(), ..publish(1, b"x") }),
        "INVALID_FIELD",
    );
    let pkg = |id, index, count| Some(proto::PackageRef { package_id: id, index, count });
    t.invalid(
        "package index equal to count",
        &["REQ-PKG-001"],
        &bad(proto::Publish { package: pkg(1, 3, 3), ..publish(1, b"x") }),
        "INVALID_FIELD",
    );
    t.invalid(
        "package of 33 members",
        &["REQ-PKG-001"],
        &bad(proto::Publish { package: pkg(1, 0, 33), ..publish(1, b"x") }),
        "INVALID_FIELD",
    );
    t.invalid(
        "package id 0",
        &["REQ-PKG-001"],
        &bad(proto::Publish { package: pkg(0, 0, 2), ..publish(1, b"x") }),
        "INVALID_FIELD",
    );
    t.invalid(
        "package member at QoS 0",
        &["REQ-PKG-002"],
        &bad(proto::Publish { package: pkg(1, 0, 2), ..publish(0, b"x") }),
        "INVALID_FIELD",
    );
    let connect = proto::Connect { versions: vec![1], device_id: "phone".into(), ..Default::default() };
    t.invalid(
        "CONNECT without versions",
        &["REQ-HSK-003"],
        &raw(0x01, 0, &proto::Connect { versions: vec![], ..connect.clone() }.encode_to_vec()),
        "INVALID_FIELD",
    );
    t.invalid(
        "CONNECT with an empty device id",
        &["REQ-TOP-004"],
        &raw(0x01, 0, &proto::Connect { device_id: String::new(), ..connect.clone() }.encode_to_vec()),
        "INVALID_FIELD",
    );
    t.invalid(
        "CONNECT device id containing '/'",
        &["REQ-TOP-004"],
        &raw(0x01, 0, &proto::Connect { device_id: "a/b".into(), ..connect.clone() }.encode_to_vec()),
        "INVALID_FIELD",
    );
    t.invalid(
        "CONNECT token of 513 bytes",
        &["REQ-HSK-005"],
        &raw(0x01, 0, &proto::Connect { token: Bytes::from(vec![1u8; 513]), ..connect.clone() }.encode_to_vec()),
        "INVALID_FIELD",
    );
    t.invalid(
        "CONNECT max_message_size 1395",
        &["REQ-HSK-007"],
        &raw(0x01, 0, &proto::Connect { max_message_size: 1395, ..connect.clone() }.encode_to_vec()),
        "INVALID_FIELD",
    );
    t.invalid(
        "CONNECT max_message_size 1048577",
        &["REQ-HSK-007"],
        &raw(0x01, 0, &proto::Connect { max_message_size: 1_048_577, ..connect.clone() }.encode_to_vec()),
        "INVALID_FIELD",
    );
    t.invalid(
        "CONNECT receive_window 1025",
        &["REQ-HSK-007"],
        &raw(0x01, 0, &proto::Connect { receive_window: 1025, ..connect.clone() }.encode_to_vec()),
        "INVALID_FIELD",
    );
    t.valid(
        "CONNECT at the smallest max_message_size and largest window",
        &["REQ-HSK-007"],
        &Frame::Connect(proto::Connect { max_message_size: 1396, receive_window: 1024, ..connect }),
    );
    let deliver = |seq, kind: proto::StreamKind, id| {
        raw(
            0x08,
            0,
            &proto::Deliver {
                stream: Some(proto::StreamRef { kind: kind as i32, id }),
                seq,
                topic: "user/bob".into(),
                qos: 1,
                ..Default::default()
            }
            .encode_to_vec(),
        )
    };
    t.invalid("DELIVER seq 0", &["REQ-QOS-009"], &deliver(0, proto::StreamKind::Inbox, 0), "INVALID_FIELD");
    t.invalid(
        "DELIVER on an inbox stream with a non-zero id",
        &["REQ-SYN-007"],
        &deliver(1, proto::StreamKind::Inbox, 9),
        "INVALID_FIELD",
    );
    t.invalid(
        "DELIVER on a conversation stream with id 0",
        &["REQ-SYN-007"],
        &deliver(1, proto::StreamKind::Conversation, 0),
        "INVALID_FIELD",
    );
    t.invalid(
        "DELIVER with no stream kind",
        &["REQ-SYN-007"],
        &deliver(1, proto::StreamKind::Unspecified, 0),
        "INVALID_FIELD",
    );
    t.invalid(
        "DISCONNECT with an unassigned reason code 0x50",
        &["REQ-ERR-002"],
        &raw(0x05, 0, &proto::Disconnect { reason: 0x50, ..Default::default() }.encode_to_vec()),
        "INVALID_FIELD",
    );
    t.invalid(
        "SUBSCRIBE with no filters",
        &["REQ-TOP-005"],
        &raw(0x0F, 0, &proto::Subscribe { request_id: 1, filters: vec![] }.encode_to_vec()),
        "INVALID_FIELD",
    );
    t.invalid(
        "SUBSCRIBE filter with # not last",
        &["REQ-TOP-002"],
        &raw(0x0F, 0, &proto::Subscribe { request_id: 1, filters: vec!["device/#/x".into()] }.encode_to_vec()),
        "INVALID_FIELD",
    );
    t.invalid(
        "REQUEST naming no operation",
        &["REQ-GRP-007"],
        &raw(0x20, 0, &proto::Request { request_id: 1, op: None }.encode_to_vec()),
        "INVALID_FIELD",
    );
    t.invalid(
        "FRAGMENT with count 1",
        &["REQ-FRG-006"],
        &raw(
            0x13,
            0,
            &proto::Fragment {
                fragment_id: 1,
                count: 1,
                frame_type: 6,
                total_length: 2000,
                chunk: Bytes::from_static(b"x"),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        "INVALID_FIELD",
    );
    t.invalid(
        "FRAGMENT index 1 carrying total_length",
        &["REQ-FRG-003"],
        &raw(
            0x13,
            0,
            &proto::Fragment {
                fragment_id: 1,
                index: 1,
                count: 2,
                frame_type: 6,
                total_length: 2000,
                chunk: Bytes::from_static(b"x"),
            }
            .encode_to_vec(),
        ),
        "INVALID_FIELD",
    );
    // A withdrawal (06-delivery 6.2) names a cid and its qos, nothing else.
    let withdrawal = proto::Publish { cid: 3, qos: 2, withdrawn: true, ..Default::default() };
    t.valid("PUBLISH withdrawing cid 3", &["REQ-QOS-019"], &Frame::Publish(withdrawal.clone()));
    t.invalid(
        "PUBLISH withdrawing cid 3 but carrying a payload",
        &["REQ-QOS-019"],
        &raw(0x06, 0, &proto::Publish { payload: Bytes::from_static(b"x"), ..withdrawal }.encode_to_vec()),
        "INVALID_FIELD",
    );
    // Incomplete input is not an error.
    let ping = frame_bytes(&Frame::Ping(proto::Ping { nonce: 7 }));
    t.incomplete("empty input", &["REQ-FRM-009"], &[]);
    t.incomplete("three bytes of a header", &["REQ-FRM-009"], &ping[..3]);
    t.incomplete("header and part of the body", &["REQ-FRM-009"], &ping[..ping.len() - 1]);
    vec![json!({ "type": "FrameDecode", "tests": t.tests })]
}
