//! Reassembly vectors: valid fragment sequences and every fragmentation error.

use bytes::{Bytes, BytesMut};
use prost::Message;
use prost_reflect::DescriptorPool;
use serde_json::{json, Value};
use tern_codec::fragment::Fragmenter;
use tern_codec::proto;
use tern_codec::Frame;

use crate::{body_json, frame_bytes, publish};

pub(crate) fn fragments(pool: &DescriptorPool) -> Vec<Value> {
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
    push("PUBLISH of 2012 bytes in 2 fragments", &["REQ-FRG-001", "REQ-FRG-002"], split(&two), valid(&two));
    let three = Frame::Publish(publish(2, &[0x62; 3500]));
    push("PUBLISH in 3 fragments", &["REQ-FRG-001", "REQ-FRG-005"], split(&three), valid(&three));
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
    push("HISTORY_PAGE of 10 entries", &["REQ-FRG-001", "REQ-FRG-007"], split(&page), valid(&page));
    // The payload length that makes the body exactly max_message_size.
    let overhead = Frame::Publish(publish(3, &vec![0x64; max - 100])).body_len() - (max - 100);
    let at_max = Frame::Publish(publish(3, &vec![0x64; max - overhead]));
    assert_eq!(at_max.body_len(), max);
    push("body exactly max_message_size (8192)", &["REQ-FRG-003"], split(&at_max), valid(&at_max));

    let ping = frame_bytes(&Frame::Ping(proto::Ping { nonce: 1 }));
    let mut with_ping = split(&two);
    with_ping.insert(1, ping.clone());
    push("a PING between fragments is processed normally", &["REQ-FRG-002"], with_ping, valid(&two));

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
    let first =
        proto::Fragment { fragment_id: 1, index: 0, count: 2, frame_type: 6, total_length: 2100, chunk: chunk(1200) };
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
            frag(proto::Fragment { fragment_id: 2, index: 1, total_length: 0, chunk: chunk(900), ..first.clone() }),
        ],
        invalid("FRAGMENT_SEQUENCE_ERROR", 1),
    );
    push(
        "second fragment changes count",
        &["REQ-FRG-002"],
        vec![
            frag(first.clone()),
            frag(proto::Fragment { index: 1, count: 3, total_length: 0, chunk: chunk(900), ..first.clone() }),
        ],
        invalid("FRAGMENT_SEQUENCE_ERROR", 1),
    );
    push(
        "chunks add up to less than total_length",
        &["REQ-FRG-005"],
        vec![
            frag(first.clone()),
            frag(proto::Fragment { index: 1, total_length: 0, chunk: chunk(800), ..first.clone() }),
        ],
        invalid("FRAGMENT_SEQUENCE_ERROR", 1),
    );
    push(
        "chunks run past total_length (trailing bytes)",
        &["REQ-FRG-005"],
        vec![
            frag(first.clone()),
            frag(proto::Fragment { index: 1, total_length: 0, chunk: chunk(901), ..first.clone() }),
        ],
        invalid("FRAGMENT_SEQUENCE_ERROR", 1),
    );
    push(
        "non-final chunk of 1023 bytes",
        &["REQ-FRG-004"],
        vec![frag(proto::Fragment { chunk: chunk(1023), ..first.clone() })],
        invalid("FRAGMENT_SEQUENCE_ERROR", 0),
    );
    push(
        "a body of 1396 bytes must not be fragmented",
        &["REQ-FRG-001"],
        vec![frag(proto::Fragment { total_length: 1396, chunk: chunk(1024), ..first.clone() })],
        invalid("FRAGMENT_SEQUENCE_ERROR", 0),
    );
    push(
        "CONNECT cannot be fragmented",
        &["REQ-FRG-007"],
        vec![frag(proto::Fragment { frame_type: 1, ..first.clone() })],
        invalid("FRAGMENT_SEQUENCE_ERROR", 0),
    );
    push(
        "FRAGMENT of a FRAGMENT",
        &["REQ-FRG-007"],
        vec![frag(proto::Fragment { frame_type: 0x13, ..first.clone() })],
        invalid("FRAGMENT_SEQUENCE_ERROR", 0),
    );
    push(
        "count larger than total_length allows",
        &["REQ-FRG-006"],
        vec![frag(proto::Fragment { count: 4, ..first.clone() })],
        invalid("FRAGMENT_SEQUENCE_ERROR", 0),
    );
    let second_body = split(&two);
    let mut reused = split(&two);
    reused.extend(second_body);
    push("fragment_id reused for the next body", &["REQ-FRG-008"], reused, invalid("FRAGMENT_SEQUENCE_ERROR", 2));
    // A 1500-byte PUBLISH body whose cid is the overlong varint 81 00.
    let mut body = vec![0x08, 0x81, 0x00, 0x10, 0x02, 0x1A, 0x08];
    body.extend_from_slice(b"user/bob");
    let payload_len = 1500 - body.len() - 3;
    body.extend_from_slice(&[0x22, 0x80 | (payload_len & 0x7F) as u8, (payload_len >> 7) as u8]);
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
