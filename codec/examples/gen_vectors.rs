//! Reference generator for `spec/vectors/`: `cargo run -p tern-codec --example gen_vectors`.
//!
//! Valid vectors are built with the codec's encoder and described in the proto3 JSON mapping;
//! invalid ones are byte-level edits written out by hand here, so each names exactly the rule
//! it breaks. `codec/tests/vectors.rs` verifies every file independently of this program.
// Test code: a panic is how it reports a failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::{json, Value};
use tern_codec::fragment::Fragmenter;
use tern_codec::proto;
use tern_codec::{encode_frame, Frame, FrameType};

const SPEC_VERSION: &str = "1.0-draft";

fn pool() -> DescriptorPool {
    DescriptorPool::decode(tern_codec::FILE_DESCRIPTOR_SET).expect("descriptor set")
}

/// The proto3 JSON mapping of a frame body.
fn body_json(pool: &DescriptorPool, ty: FrameType, body: &[u8]) -> Value {
    let desc = pool
        .get_message_by_name(&format!("tern.v1.{}", ty.message_name()))
        .expect("message");
    let msg = DynamicMessage::decode(desc, body).expect("decode");
    serde_json::to_value(&msg).expect("json")
}

fn frame_bytes(f: &Frame) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_frame(f, &mut out).expect("fits one frame");
    out.to_vec()
}

fn raw(ty: u8, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![ty, flags];
    v.extend_from_slice(&u16::try_from(body.len()).unwrap_or(u16::MAX).to_be_bytes());
    v.extend_from_slice(body);
    v
}

struct Tests {
    pool: DescriptorPool,
    tests: Vec<Value>,
}

impl Tests {
    fn push(&mut self, mut t: Value) {
        let id = self.tests.len() + 1;
        t["tcId"] = json!(id);
        if t.get("flags").is_none() {
            t["flags"] = json!([]);
        }
        self.tests.push(t);
    }

    fn valid(&mut self, comment: &str, covers: &[&str], f: &Frame) {
        let bytes = frame_bytes(f);
        let body = body_json(
            &self.pool,
            f.frame_type(),
            bytes.get(4..).unwrap_or_default(),
        );
        self.push(json!({
            "comment": comment, "covers": covers, "input": hex::encode(&bytes),
            "result": "valid", "frame_type": f.frame_type().name(), "body": body,
        }));
    }

    fn invalid(&mut self, comment: &str, covers: &[&str], input: &[u8], error: &str) {
        self.push(json!({
            "comment": comment, "covers": covers, "input": hex::encode(input), "result": "invalid", "expected_error": error,
        }));
    }

    fn incomplete(&mut self, comment: &str, covers: &[&str], input: &[u8]) {
        self.push(json!({ "comment": comment, "covers": covers, "input": hex::encode(input), "result": "incomplete" }));
    }
}

fn write(dir: &Path, name: &str, schema: &str, notes: Value, groups: Vec<Value>) {
    let count: usize = groups
        .iter()
        .map(|g| g["tests"].as_array().map_or(0, Vec::len))
        .sum();
    let doc = json!({
        "schema": schema,
        "spec_version": SPEC_VERSION,
        "generator": { "name": "tern-codec/examples/gen_vectors.rs", "version": env!("CARGO_PKG_VERSION") },
        "numberOfTests": count,
        "notes": notes,
        "testGroups": groups,
    });
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&doc).expect("json") + "\n",
    )
    .expect("write");
    println!("{} ({count} tests)", path.display());
}

fn stream_inbox() -> Option<proto::StreamRef> {
    Some(proto::StreamRef {
        kind: proto::StreamKind::Inbox as i32,
        id: 0,
    })
}

fn publish(cid: u64, payload: &[u8]) -> proto::Publish {
    proto::Publish {
        cid,
        qos: if cid == 0 { 0 } else { 2 },
        topic: "user/bob".into(),
        payload: Bytes::copy_from_slice(payload),
        ..Default::default()
    }
}

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
        (
            "CONNACK refusing a bad token",
            Frame::ConnAck(proto::ConnAck {
                reason: 0xA1,
                ..Default::default()
            }),
        ),
        ("PING with a nonce", Frame::Ping(proto::Ping { nonce: 7 })),
        (
            "PONG echoing the nonce",
            Frame::Pong(proto::Ping { nonce: 7 }),
        ),
        (
            "PING with no nonce: an empty body",
            Frame::Ping(proto::Ping { nonce: 0 }),
        ),
        (
            "DISCONNECT for a keepalive timeout",
            Frame::Disconnect(proto::Disconnect {
                reason: 0x95,
                detail: "client silent".into(),
                ..Default::default()
            }),
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
        (
            "PUBLISH QoS 2 to a user inbox",
            Frame::Publish(publish(1, b"hello")),
        ),
        (
            "PUBLISH QoS 0 (cid 0)",
            Frame::Publish(publish(0, b"typing")),
        ),
        (
            "PUBLISH as member 2 of a package of 3",
            Frame::Publish(proto::Publish {
                package: Some(proto::PackageRef {
                    package_id: 9,
                    index: 1,
                    count: 3,
                }),
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
            Frame::PubAck(proto::PubAck {
                cid: 2,
                reason: 0xA0,
                ..Default::default()
            }),
        ),
        (
            "DELIVER on the inbox stream",
            Frame::Deliver(deliver.clone()),
        ),
        (
            "DELIVER retransmitted on a conversation stream",
            Frame::Deliver(proto::Deliver {
                stream: Some(proto::StreamRef {
                    kind: proto::StreamKind::Conversation as i32,
                    id: 7,
                }),
                seq: 13,
                dup: true,
                ..deliver
            }),
        ),
        (
            "DELIVER_ACK, cumulative through seq 42",
            Frame::DeliverAck(proto::DeliverAck {
                stream: stream_inbox(),
                seq: 42,
            }),
        ),
        (
            "NOTIFY: a conversation has news",
            Frame::Notify(proto::Notify {
                stream: Some(proto::StreamRef {
                    kind: proto::StreamKind::Conversation as i32,
                    id: 7,
                }),
                latest_seq: 120,
                acked_seq: 100,
            }),
        ),
        (
            "SYNC the inbox after seq 40",
            Frame::Sync(proto::Sync {
                request_id: 3,
                stream: stream_inbox(),
                after_seq: 40,
                limit: 100,
            }),
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
        (
            "SUBACK: granted, refused",
            Frame::SubAck(proto::SubAck {
                request_id: 5,
                reasons: vec![0, 0xA0],
            }),
        ),
        (
            "UNSUBSCRIBE",
            Frame::Unsubscribe(proto::Unsubscribe {
                request_id: 6,
                filters: vec!["room/lobby".into()],
            }),
        ),
        (
            "UNSUBACK",
            Frame::UnsubAck(proto::SubAck {
                request_id: 6,
                reasons: vec![0],
            }),
        ),
        (
            "READ marker",
            Frame::ReadMark(proto::ReadMark {
                conversation_id: 7,
                seq: 13,
            }),
        ),
        (
            "RECEIPT",
            Frame::Receipt(proto::Receipt {
                conversation_id: 7,
                reader: "bob".into(),
                seq: 13,
            }),
        ),
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
                op: Some(proto::request::Op::OpenConversation(
                    proto::OpenConversation {
                        peer_user: "bob".into(),
                    },
                )),
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
                    conversations: vec![proto::UnreadCount {
                        conversation_id: 7,
                        unread: 3,
                    }],
                    total: 3,
                })),
            }),
        ),
        ("FRAGMENT carrying the first piece of a PUBLISH", {
            let mut out = BytesMut::new();
            Fragmenter::new()
                .encode(&Frame::Publish(publish(3, &[0x61; 2000])), 65_536, &mut out)
                .expect("fragments");
            let mut first = out.clone();
            tern_codec::decode_frame(&mut first)
                .expect("decode")
                .expect("frame")
        }),
    ]
}

fn frame_codec(pool: DescriptorPool) -> Vec<Value> {
    let mut t = Tests {
        pool,
        tests: Vec::new(),
    };
    for (comment, f) in every_frame_type() {
        t.valid(comment, &["REQ-FRM-001", "REQ-FRM-005"], &f);
    }
    // The 1400-byte boundary: a PUBLISH padded to exactly 1400 bytes, then one byte more.
    let base = publish(1, b"").encoded_len();
    let payload_len = 1396 - base - 3; // tag + 2-byte length
    let exact = Frame::Publish(publish(1, &vec![0x5A; payload_len]));
    assert_eq!(frame_bytes(&exact).len(), 1400);
    t.valid(
        "1400 bytes in all: the largest frame",
        &["REQ-FRM-001"],
        &exact,
    );
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
    t.invalid(
        "reserved flag bit 0 set on PING",
        &["REQ-FRM-003"],
        &raw(0x03, 0x01, &[]),
        "RESERVED_BITS_SET",
    );
    t.invalid(
        "reserved flag bit 7 set on PUBLISH",
        &["REQ-FRM-003"],
        &raw(
            0x06,
            0x80,
            &frame_bytes(&Frame::Publish(publish(1, b"x")))[4..],
        ),
        "RESERVED_BITS_SET",
    );
    t.invalid(
        "frame type 0x00 is not assigned",
        &["REQ-FRM-004"],
        &raw(0x00, 0, &[]),
        "UNKNOWN_FRAME_TYPE",
    );
    t.invalid(
        "frame type 0x7F is not assigned",
        &["REQ-FRM-004"],
        &raw(0x7F, 0, &[]),
        "UNKNOWN_FRAME_TYPE",
    );
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
    t.invalid(
        "wire type 7 does not exist",
        &["REQ-FRM-006"],
        &raw(0x03, 0, &[0x0F]),
        "MALFORMED_FRAME",
    );
    // Field rules.
    let bad = |p: proto::Publish| raw(0x06, 0, &p.encode_to_vec());
    t.invalid(
        "PUBLISH qos 3",
        &["REQ-QOS-001"],
        &bad(proto::Publish {
            qos: 3,
            ..publish(1, b"x")
        }),
        "INVALID_FIELD",
    );
    t.invalid(
        "PUBLISH QoS 2 with cid 0",
        &["REQ-QOS-002"],
        &bad(proto::Publish {
            cid: 0,
            ..publish(1, b"x")
        }),
        "INVALID_FIELD",
    );
    t.invalid(
        "PUBLISH QoS 0 with a cid",
        &["REQ-QOS-002"],
        &bad(proto::Publish {
            qos: 0,
            ..publish(1, b"x")
        }),
        "INVALID_FIELD",
    );
    t.invalid(
        "PUBLISH topic with a + wildcard",
        &["REQ-TOP-002"],
        &bad(proto::Publish {
            topic: "device/+/t".into(),
            ..publish(1, b"x")
        }),
        "INVALID_FIELD",
    );
    t.invalid(
        "PUBLISH topic with an empty level",
        &["REQ-TOP-001"],
        &bad(proto::Publish {
            topic: "user//bob".into(),
            ..publish(1, b"x")
        }),
        "INVALID_FIELD",
    );
    t.invalid(
        "PUBLISH with an empty topic",
        &["REQ-TOP-001"],
        &bad(proto::Publish {
            topic: String::new(),
            ..publish(1, b"x")
        }),
        "INVALID_FIELD",
    );
    let pkg = |id, index, count| {
        Some(proto::PackageRef {
            package_id: id,
            index,
            count,
        })
    };
    t.invalid(
        "package index equal to count",
        &["REQ-PKG-001"],
        &bad(proto::Publish {
            package: pkg(1, 3, 3),
            ..publish(1, b"x")
        }),
        "INVALID_FIELD",
    );
    t.invalid(
        "package of 33 members",
        &["REQ-PKG-001"],
        &bad(proto::Publish {
            package: pkg(1, 0, 33),
            ..publish(1, b"x")
        }),
        "INVALID_FIELD",
    );
    t.invalid(
        "package id 0",
        &["REQ-PKG-001"],
        &bad(proto::Publish {
            package: pkg(0, 0, 2),
            ..publish(1, b"x")
        }),
        "INVALID_FIELD",
    );
    t.invalid(
        "package member at QoS 0",
        &["REQ-PKG-002"],
        &bad(proto::Publish {
            package: pkg(1, 0, 2),
            ..publish(0, b"x")
        }),
        "INVALID_FIELD",
    );
    let connect = proto::Connect {
        versions: vec![1],
        device_id: "phone".into(),
        ..Default::default()
    };
    t.invalid(
        "CONNECT without versions",
        &["REQ-HSK-003"],
        &raw(
            0x01,
            0,
            &proto::Connect {
                versions: vec![],
                ..connect.clone()
            }
            .encode_to_vec(),
        ),
        "INVALID_FIELD",
    );
    t.invalid(
        "CONNECT with an empty device id",
        &["REQ-TOP-004"],
        &raw(
            0x01,
            0,
            &proto::Connect {
                device_id: String::new(),
                ..connect.clone()
            }
            .encode_to_vec(),
        ),
        "INVALID_FIELD",
    );
    t.invalid(
        "CONNECT device id containing '/'",
        &["REQ-TOP-004"],
        &raw(
            0x01,
            0,
            &proto::Connect {
                device_id: "a/b".into(),
                ..connect.clone()
            }
            .encode_to_vec(),
        ),
        "INVALID_FIELD",
    );
    t.invalid(
        "CONNECT token of 513 bytes",
        &["REQ-HSK-005"],
        &raw(
            0x01,
            0,
            &proto::Connect {
                token: Bytes::from(vec![1u8; 513]),
                ..connect.clone()
            }
            .encode_to_vec(),
        ),
        "INVALID_FIELD",
    );
    t.invalid(
        "CONNECT max_message_size 1395",
        &["REQ-HSK-007"],
        &raw(
            0x01,
            0,
            &proto::Connect {
                max_message_size: 1395,
                ..connect.clone()
            }
            .encode_to_vec(),
        ),
        "INVALID_FIELD",
    );
    t.invalid(
        "CONNECT max_message_size 1048577",
        &["REQ-HSK-007"],
        &raw(
            0x01,
            0,
            &proto::Connect {
                max_message_size: 1_048_577,
                ..connect.clone()
            }
            .encode_to_vec(),
        ),
        "INVALID_FIELD",
    );
    t.invalid(
        "CONNECT receive_window 1025",
        &["REQ-HSK-007"],
        &raw(
            0x01,
            0,
            &proto::Connect {
                receive_window: 1025,
                ..connect.clone()
            }
            .encode_to_vec(),
        ),
        "INVALID_FIELD",
    );
    t.valid(
        "CONNECT at the smallest max_message_size and largest window",
        &["REQ-HSK-007"],
        &Frame::Connect(proto::Connect {
            max_message_size: 1396,
            receive_window: 1024,
            ..connect
        }),
    );
    let deliver = |seq, kind: proto::StreamKind, id| {
        raw(
            0x08,
            0,
            &proto::Deliver {
                stream: Some(proto::StreamRef {
                    kind: kind as i32,
                    id,
                }),
                seq,
                topic: "user/bob".into(),
                qos: 1,
                ..Default::default()
            }
            .encode_to_vec(),
        )
    };
    t.invalid(
        "DELIVER seq 0",
        &["REQ-QOS-009"],
        &deliver(0, proto::StreamKind::Inbox, 0),
        "INVALID_FIELD",
    );
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
        &raw(
            0x05,
            0,
            &proto::Disconnect {
                reason: 0x50,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        "INVALID_FIELD",
    );
    t.invalid(
        "SUBSCRIBE with no filters",
        &["REQ-TOP-005"],
        &raw(
            0x0F,
            0,
            &proto::Subscribe {
                request_id: 1,
                filters: vec![],
            }
            .encode_to_vec(),
        ),
        "INVALID_FIELD",
    );
    t.invalid(
        "SUBSCRIBE filter with # not last",
        &["REQ-TOP-002"],
        &raw(
            0x0F,
            0,
            &proto::Subscribe {
                request_id: 1,
                filters: vec!["device/#/x".into()],
            }
            .encode_to_vec(),
        ),
        "INVALID_FIELD",
    );
    t.invalid(
        "REQUEST naming no operation",
        &["REQ-GRP-007"],
        &raw(
            0x20,
            0,
            &proto::Request {
                request_id: 1,
                op: None,
            }
            .encode_to_vec(),
        ),
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
    // Incomplete input is not an error.
    let ping = frame_bytes(&Frame::Ping(proto::Ping { nonce: 7 }));
    t.incomplete("empty input", &["REQ-FRM-009"], &[]);
    t.incomplete("three bytes of a header", &["REQ-FRM-009"], &ping[..3]);
    t.incomplete(
        "header and part of the body",
        &["REQ-FRM-009"],
        &ping[..ping.len() - 1],
    );
    vec![json!({ "type": "FrameDecode", "tests": t.tests })]
}

fn fragments(pool: &DescriptorPool) -> Vec<Value> {
    let max = 8_192usize;
    let mut tests = Vec::new();
    let mut push = |comment: &str, covers: &[&str], frames: Vec<Vec<u8>>, result: Value| {
        let mut t = json!({
            "tcId": tests.len() + 1, "comment": comment, "covers": covers, "flags": [],
            "frames": frames.iter().map(hex::encode).collect::<Vec<_>>(),
        });
        if let (Value::Object(dst), Value::Object(src)) = (&mut t, result) {
            dst.extend(src);
        }
        tests.push(t);
    };
    let split = |f: &Frame| -> Vec<Vec<u8>> {
        let mut out = BytesMut::new();
        Fragmenter::new().encode(f, max, &mut out).expect("encode");
        let mut frames = Vec::new();
        while !out.is_empty() {
            let len = 4 + usize::from(u16::from_be_bytes([out[2], out[3]]));
            frames.push(out.split_to(len).to_vec());
        }
        frames
    };
    let valid = |f: &Frame| {
        let body = match f {
            Frame::Publish(p) => p.encode_to_vec(),
            Frame::HistoryPage(h) => h.encode_to_vec(),
            _ => unreachable!("only these are fragmented here"),
        };
        json!({ "result": "valid", "frame_type": f.frame_type().name(), "body": body_json(pool, f.frame_type(), &body) })
    };
    let invalid = |error: &str, at: usize| json!({ "result": "invalid", "expected_error": error, "error_at": at });

    let two = Frame::Publish(publish(1, &[0x61; 2000]));
    push(
        "PUBLISH of 2012 bytes in 2 fragments",
        &["REQ-FRG-001", "REQ-FRG-002"],
        split(&two),
        valid(&two),
    );
    let three = Frame::Publish(publish(2, &[0x62; 3500]));
    push(
        "PUBLISH in 3 fragments",
        &["REQ-FRG-001", "REQ-FRG-005"],
        split(&three),
        valid(&three),
    );
    let page = Frame::HistoryPage(proto::HistoryPage {
        request_id: 1,
        conversation_id: 7,
        entries: (1..=10)
            .map(|seq| proto::HistoryEntry {
                seq,
                msg_id: seq,
                sender_user: "alice".into(),
                payload: Bytes::from(vec![0x63; 300]),
                ..Default::default()
            })
            .collect(),
        next_before_seq: 1,
        ..Default::default()
    });
    push(
        "HISTORY_PAGE of 10 entries",
        &["REQ-FRG-001", "REQ-FRG-007"],
        split(&page),
        valid(&page),
    );
    // The payload length that makes the body exactly max_message_size.
    let overhead = Frame::Publish(publish(3, &vec![0x64; max - 100])).body_len() - (max - 100);
    let at_max = Frame::Publish(publish(3, &vec![0x64; max - overhead]));
    assert_eq!(at_max.body_len(), max);
    push(
        "body exactly max_message_size (8192)",
        &["REQ-FRG-003"],
        split(&at_max),
        valid(&at_max),
    );

    let ping = frame_bytes(&Frame::Ping(proto::Ping { nonce: 1 }));
    let mut with_ping = split(&two);
    with_ping.insert(1, ping.clone());
    push(
        "a PING between fragments is processed normally",
        &["REQ-FRG-002"],
        with_ping,
        valid(&two),
    );

    let frags = split(&three);
    push(
        "fragment index 1 missing",
        &["REQ-FRG-002"],
        vec![frags[0].clone(), frags[2].clone()],
        invalid("FRAGMENT_SEQUENCE_ERROR", 1),
    );
    push(
        "fragment index 1 twice",
        &["REQ-FRG-002"],
        vec![frags[0].clone(), frags[1].clone(), frags[1].clone()],
        invalid("FRAGMENT_SEQUENCE_ERROR", 2),
    );
    push(
        "first fragment with index 1",
        &["REQ-FRG-002"],
        vec![frags[1].clone()],
        invalid("FRAGMENT_SEQUENCE_ERROR", 0),
    );
    let frag = |f: proto::Fragment| frame_bytes(&Frame::Fragment(f));
    let chunk = |n: usize| Bytes::from(vec![0x61u8; n]);
    let first = proto::Fragment {
        fragment_id: 1,
        index: 0,
        count: 2,
        frame_type: 6,
        total_length: 2100,
        chunk: chunk(1200),
    };
    let over = proto::Fragment {
        total_length: u32::try_from(max + 1).unwrap_or(0),
        count: 7,
        chunk: chunk(1300),
        ..first.clone()
    };
    push(
        "body one past max_message_size, refused at the first fragment",
        &["REQ-FRG-003"],
        vec![frag(over)],
        invalid("MESSAGE_TOO_LARGE", 0),
    );
    push(
        "second fragment names another fragment_id",
        &["REQ-FRG-002"],
        vec![
            frag(first.clone()),
            frag(proto::Fragment {
                fragment_id: 2,
                index: 1,
                total_length: 0,
                chunk: chunk(900),
                ..first.clone()
            }),
        ],
        invalid("FRAGMENT_SEQUENCE_ERROR", 1),
    );
    push(
        "second fragment changes count",
        &["REQ-FRG-002"],
        vec![
            frag(first.clone()),
            frag(proto::Fragment {
                index: 1,
                count: 3,
                total_length: 0,
                chunk: chunk(900),
                ..first.clone()
            }),
        ],
        invalid("FRAGMENT_SEQUENCE_ERROR", 1),
    );
    push(
        "chunks add up to less than total_length",
        &["REQ-FRG-005"],
        vec![
            frag(first.clone()),
            frag(proto::Fragment {
                index: 1,
                total_length: 0,
                chunk: chunk(800),
                ..first.clone()
            }),
        ],
        invalid("FRAGMENT_SEQUENCE_ERROR", 1),
    );
    push(
        "chunks run past total_length (trailing bytes)",
        &["REQ-FRG-005"],
        vec![
            frag(first.clone()),
            frag(proto::Fragment {
                index: 1,
                total_length: 0,
                chunk: chunk(901),
                ..first.clone()
            }),
        ],
        invalid("FRAGMENT_SEQUENCE_ERROR", 1),
    );
    push(
        "non-final chunk of 1023 bytes",
        &["REQ-FRG-004"],
        vec![frag(proto::Fragment {
            chunk: chunk(1023),
            ..first.clone()
        })],
        invalid("FRAGMENT_SEQUENCE_ERROR", 0),
    );
    push(
        "a body of 1396 bytes must not be fragmented",
        &["REQ-FRG-001"],
        vec![frag(proto::Fragment {
            total_length: 1396,
            chunk: chunk(1024),
            ..first.clone()
        })],
        invalid("FRAGMENT_SEQUENCE_ERROR", 0),
    );
    push(
        "CONNECT cannot be fragmented",
        &["REQ-FRG-007"],
        vec![frag(proto::Fragment {
            frame_type: 1,
            ..first.clone()
        })],
        invalid("FRAGMENT_SEQUENCE_ERROR", 0),
    );
    push(
        "FRAGMENT of a FRAGMENT",
        &["REQ-FRG-007"],
        vec![frag(proto::Fragment {
            frame_type: 0x13,
            ..first.clone()
        })],
        invalid("FRAGMENT_SEQUENCE_ERROR", 0),
    );
    push(
        "count larger than total_length allows",
        &["REQ-FRG-006"],
        vec![frag(proto::Fragment {
            count: 4,
            ..first.clone()
        })],
        invalid("FRAGMENT_SEQUENCE_ERROR", 0),
    );
    let second_body = split(&two);
    let mut reused = split(&two);
    reused.extend(second_body);
    push(
        "fragment_id reused for the next body",
        &["REQ-FRG-008"],
        reused,
        invalid("FRAGMENT_SEQUENCE_ERROR", 2),
    );
    // A 1500-byte PUBLISH body whose cid is the overlong varint 81 00.
    let mut body = vec![0x08, 0x81, 0x00, 0x10, 0x02, 0x1A, 0x08];
    body.extend_from_slice(b"user/bob");
    let payload_len = 1500 - body.len() - 3;
    body.extend_from_slice(&[
        0x22,
        0x80 | (payload_len & 0x7F) as u8,
        (payload_len >> 7) as u8,
    ]);
    body.extend(std::iter::repeat_n(0x61u8, payload_len));
    assert_eq!(body.len(), 1500);
    let piece = |index: u32, total_length: u32, range: std::ops::Range<usize>| {
        frag(proto::Fragment {
            fragment_id: 1,
            index,
            count: 2,
            frame_type: 6,
            total_length,
            chunk: Bytes::copy_from_slice(&body[range]),
        })
    };
    let bad_inner = vec![piece(0, 1500, 0..1100), piece(1, 0, 1100..1500)];
    push(
        "reassembled body is not canonical (overlong cid varint)",
        &["REQ-FRG-009"],
        bad_inner,
        invalid("NON_CANONICAL_ENCODING", 1),
    );
    vec![json!({ "type": "Reassembly", "max_message_size": max, "tests": tests })]
}

fn ordered() -> Vec<Value> {
    use tern_codec::delivery::{Arrival, OrderedReceiver};
    let cases: Vec<(&str, &[&str], u64, Vec<u64>)> = vec![
        ("in order", &["REQ-QOS-011"], 8, vec![1, 2, 3, 4]),
        (
            "duplicates are dropped",
            &["REQ-QOS-011"],
            8,
            vec![1, 1, 2, 1, 2, 3],
        ),
        ("one swapped pair", &["REQ-ORD-001"], 8, vec![2, 1, 3]),
        (
            "reversed within the window",
            &["REQ-ORD-001"],
            8,
            vec![5, 4, 3, 2, 1],
        ),
        (
            "gap repaired later",
            &["REQ-ORD-001"],
            8,
            vec![1, 2, 5, 6, 3, 4, 7],
        ),
        (
            "duplicate of a held item",
            &["REQ-ORD-001", "REQ-QOS-011"],
            8,
            vec![1, 3, 3, 2],
        ),
        (
            "beyond the window is dropped",
            &["REQ-ORD-001", "REQ-QOS-012"],
            4,
            vec![1, 6, 2, 5, 3, 4, 6],
        ),
        ("two gaps", &["REQ-ORD-001"], 16, vec![2, 4, 6, 1, 3, 5]),
    ];
    let tests: Vec<Value> = cases
        .into_iter()
        .enumerate()
        .map(|(i, (comment, covers, window, arrivals))| {
            let mut r = OrderedReceiver::new(1, window);
            let mut released = Vec::new();
            let mut outcomes = Vec::new();
            let mut gaps = Vec::new();
            for &n in &arrivals {
                let mut out = Vec::new();
                let a = r.receive(n, n, &mut out);
                released.extend(out.into_iter().map(|(k, _)| k));
                outcomes.push(match a {
                    Arrival::Duplicate => "duplicate",
                    Arrival::Released => "released",
                    Arrival::Buffered {
                        missing_from,
                        missing_to,
                        first,
                    } => {
                        if first {
                            gaps.push(json!([missing_from, missing_to]));
                        }
                        "held"
                    }
                    Arrival::BeyondWindow => "beyond_window",
                });
            }
            json!({
                "tcId": i + 1, "comment": comment, "covers": covers, "flags": [],
                "window": window, "arrivals": arrivals, "outcomes": outcomes,
                "released": released, "gaps_reported": gaps, "acked_through": r.released(),
            })
        })
        .collect();
    vec![json!({ "type": "OrderedReceive", "first": 1, "tests": tests })]
}

fn packages() -> Vec<Value> {
    use std::time::{Duration, Instant};
    use tern_codec::delivery::{PackageBuffer, PackageInsert};
    type Step = (u64, Option<(u64, u32, u32)>);
    let cases: Vec<(&str, &[&str], Vec<Step>)> = vec![
        (
            "in index order",
            &["REQ-PKG-003"],
            vec![
                (0, Some((1, 0, 3))),
                (1, Some((1, 1, 3))),
                (2, Some((1, 2, 3))),
            ],
        ),
        (
            "reversed arrival, released in index order",
            &["REQ-PKG-003"],
            vec![
                (0, Some((1, 2, 3))),
                (5, Some((1, 1, 3))),
                (9, Some((1, 0, 3))),
            ],
        ),
        (
            "single-member package",
            &["REQ-PKG-003"],
            vec![(0, Some((4, 0, 1)))],
        ),
        (
            "two packages interleaved",
            &["REQ-PKG-003"],
            vec![
                (0, Some((1, 1, 2))),
                (0, Some((2, 0, 2))),
                (1, Some((1, 0, 2))),
                (2, Some((2, 1, 2))),
            ],
        ),
        (
            "timeout with one member missing",
            &["REQ-PKG-004"],
            vec![
                (0, Some((1, 0, 2))),
                (30_000, None),
                (30_001, Some((1, 1, 2))),
            ],
        ),
        (
            "not yet timed out one millisecond before",
            &["REQ-PKG-004"],
            vec![
                (0, Some((1, 0, 2))),
                (29_999, None),
                (29_999, Some((1, 1, 2))),
            ],
        ),
        (
            "duplicate index",
            &["REQ-PKG-007"],
            vec![(0, Some((1, 0, 3))), (1, Some((1, 0, 3)))],
        ),
        (
            "count changes between members",
            &["REQ-PKG-007"],
            vec![(0, Some((1, 0, 3))), (1, Some((1, 1, 2)))],
        ),
        (
            "an id below the highest opened is closed",
            &["REQ-PKG-005"],
            vec![(0, Some((5, 0, 1))), (1, Some((3, 0, 2)))],
        ),
    ];
    let tests: Vec<Value> = cases
        .into_iter()
        .enumerate()
        .map(|(i, (comment, covers, steps))| {
            let t0 = Instant::now();
            let mut b = PackageBuffer::new(Duration::from_secs(30));
            let mut item = 0u32;
            let mut out_steps = Vec::new();
            for (at, member) in steps {
                let now = t0 + Duration::from_millis(at);
                match member {
                    Some((id, index, count)) => {
                        item += 1;
                        let pkg = proto::PackageRef { package_id: id, index, count };
                        let expect = match b.insert(now, &pkg, format!("m{item}")) {
                            Ok(PackageInsert::Pending) => json!("pending"),
                            Ok(PackageInsert::Complete(items)) => json!({ "complete": id, "items": items }),
                            Ok(PackageInsert::Expired) => json!("refused_expired"),
                            Err(v) => json!({ "error": v.reason.name() }),
                        };
                        out_steps.push(json!({ "at_ms": at, "insert": { "package_id": id, "index": index, "count": count, "item": format!("m{item}") }, "expect": expect }));
                    }
                    None => {
                        let expired: Vec<Value> = b.handle_timeout(now).into_iter().map(|(id, items)| json!({ "package_id": id.0, "items": items })).collect();
                        out_steps.push(json!({ "at_ms": at, "tick": true, "expect": { "expired": expired } }));
                    }
                }
            }
            json!({ "tcId": i + 1, "comment": comment, "covers": covers, "flags": [], "steps": out_steps })
        })
        .collect();
    vec![json!({ "type": "PackageReorder", "timeout_ms": 30_000, "tests": tests })]
}

fn main() {
    let root: PathBuf = std::env::args().nth(1).map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec/vectors"),
        PathBuf::from,
    );
    let pool = pool();
    let notes = json!({
        "result": "valid: decodes to frame_type and body (proto3 JSON mapping) and re-encodes to input; invalid: the receiver closes with expected_error; incomplete: more bytes are needed, nothing is consumed",
    });
    write(
        &root,
        "frames/frame_codec_test.json",
        "frame_codec_v1",
        notes,
        frame_codec(pool.clone()),
    );
    write(
        &root,
        "fragments/reassembly_test.json",
        "reassembly_v1",
        json!({
            "frames": "FRAGMENT (and other) frames in arrival order on one connection",
            "error_at": "index into frames of the frame whose arrival is refused",
        }),
        fragments(&pool),
    );
    write(
        &root,
        "delivery/ordered_receive_test.json",
        "ordered_receive_v1",
        json!({
            "outcomes": "per arrival: released, held (a gap precedes it), duplicate, beyond_window",
            "gaps_reported": "[first missing, last missing] for each gap when first seen (one SYNC each)",
            "acked_through": "the cumulative DELIVER_ACK value after the last arrival",
        }),
        ordered(),
    );
    write(
        &root,
        "packages/package_reorder_test.json",
        "package_reorder_v1",
        json!({
            "steps": "insert a member at at_ms, or tick: let at_ms pass and expire packages",
        }),
        packages(),
    );
}
