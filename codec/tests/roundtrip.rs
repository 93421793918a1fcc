//! Property tests: every frame type survives encode → decode byte for byte, invalid field
//! values are refused with INVALID_FIELD (never a panic or another error), and fragmentation
//! round-trips every body size from 0 to the negotiated maximum.
// Test code: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tern_codec::fragment::{Fragmenter, FrameReader};
use tern_codec::limits::MAX_BODY_LEN;
use tern_codec::{decode_frame, encode_frame, proto, DecodeError, Frame, FrameType};

const IDS: &[&str] = &["alice", "bob", "phone", "g-1", "lobby", "x@y.z"];
const TOPICS: &[&str] =
    &["user/bob", "conv/7", "group/g-1", "room/lobby", "device/alice/phone/temp", "user//x", "device/+/x"];
const FILTERS: &[&str] = &["device/alice/#", "room/lobby", "device/+/phone/temp", "device/#/x", "a+"];

fn pick<'a>(rng: &mut ChaCha8Rng, from: &[&'a str]) -> &'a str {
    from[(rng.next_u32() as usize) % from.len()]
}

fn scalar_u64(rng: &mut ChaCha8Rng) -> u64 {
    match rng.next_u32() % 6 {
        0 => 0,
        1 => 1,
        2 => 2,
        3 => u64::from(rng.next_u32() % 40),
        4 => rng.next_u64() >> (rng.next_u32() % 64),
        _ => u64::MAX,
    }
}

fn value(rng: &mut ChaCha8Rng, field: &FieldDescriptor, depth: u32) -> Option<Value> {
    let name = field.name();
    Some(match field.kind() {
        Kind::String if name.contains("topic") => Value::String(pick(rng, TOPICS).to_owned()),
        Kind::String if name.contains("filter") => Value::String(pick(rng, FILTERS).to_owned()),
        Kind::String => Value::String(pick(rng, IDS).to_owned()),
        Kind::Bytes => {
            let mut b = vec![0u8; (rng.next_u32() % 48) as usize];
            rng.fill_bytes(&mut b);
            Value::Bytes(Bytes::from(b))
        }
        Kind::Uint64 => Value::U64(scalar_u64(rng)),
        Kind::Uint32 if name == "qos" => Value::U32(rng.next_u32() % 4),
        Kind::Uint32 if name == "reason" || name == "reasons" => {
            Value::U32([0, 1, 0x80, 0xA0, 0xD3, 0x50][(rng.next_u32() % 6) as usize])
        }
        Kind::Uint32 if name == "count" || name == "index" => Value::U32(rng.next_u32() % 5),
        Kind::Uint32 => Value::U32(scalar_u64(rng) as u32),
        Kind::Bool => Value::Bool(rng.next_u32() % 2 == 0),
        Kind::Enum(e) => {
            let values: Vec<i32> = e.values().map(|v| v.number()).collect();
            Value::EnumNumber(values[(rng.next_u32() as usize) % values.len()])
        }
        Kind::Message(m) if depth < 3 => Value::Message(random_message(rng, &m, depth + 1)),
        _ => return None,
    })
}

/// A message with random, mostly plausible field values (a oneof gets one member).
fn random_message(rng: &mut ChaCha8Rng, desc: &MessageDescriptor, depth: u32) -> DynamicMessage {
    let mut msg = DynamicMessage::new(desc.clone());
    for field in desc.fields() {
        if rng.next_u32() % 4 == 0 {
            continue;
        }
        if field.containing_oneof().is_some() && rng.next_u32() % 3 != 0 {
            continue;
        }
        if field.is_list() {
            let n = rng.next_u32() % 4;
            let items: Vec<Value> = (0..n).filter_map(|_| value(rng, &field, depth)).collect();
            msg.set_field(&field, Value::List(items));
        } else if let Some(v) = value(rng, &field, depth) {
            msg.set_field(&field, v);
        }
    }
    msg
}

#[test]
fn every_frame_type_round_trips_or_is_refused_with_invalid_field() {
    let pool = DescriptorPool::decode(tern_codec::FILE_DESCRIPTOR_SET).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0x7E57);
    for &ty in FrameType::ALL {
        let desc = pool.get_message_by_name(&format!("tern.v1.{}", ty.message_name())).unwrap();
        let (mut valid, mut invalid) = (0, 0);
        for _ in 0..3000 {
            let msg = random_message(&mut rng, &desc, 0);
            let body = msg.encode_to_vec();
            if body.len() > MAX_BODY_LEN {
                continue;
            }
            let mut bytes = BytesMut::new();
            bytes.extend_from_slice(&[ty as u8, 0]);
            bytes.extend_from_slice(&(body.len() as u16).to_be_bytes());
            bytes.extend_from_slice(&body);
            let input = bytes.clone();
            match decode_frame(&mut bytes) {
                Ok(Some(frame)) => {
                    valid += 1;
                    assert_eq!(frame.frame_type(), ty);
                    let mut again = BytesMut::new();
                    encode_frame(&frame, &mut again).unwrap();
                    // Byte equality of the re-encoding is the round trip: the body is canonical.
                    assert_eq!(again, input, "{}: re-encoding differs", ty.name());
                }
                Err(DecodeError::InvalidField { .. }) => invalid += 1,
                other => panic!("{}: canonical body {} gave {other:?}", ty.name(), hex::encode(&input)),
            }
        }
        assert!(valid >= 25, "{}: only {valid} valid samples", ty.name());
        let _ = invalid;
    }
}

fn publish(payload_len: usize) -> Frame {
    Frame::Publish(proto::Publish {
        cid: 9,
        qos: 2,
        topic: "user/bob".into(),
        payload: Bytes::from(vec![0xA5; payload_len]),
        ..Default::default()
    })
}

fn through_the_wire(frame: &Frame, max: usize) -> Result<(usize, Frame), tern_codec::ApiError> {
    let mut out = BytesMut::new();
    let written = Fragmenter::new().encode(frame, max, &mut out)?;
    assert!(out.len() <= written * 1400);
    let mut reader = FrameReader::new(max);
    reader.extend(&out);
    let got = reader.next_frame().unwrap().expect("a whole frame");
    assert!(reader.next_frame().unwrap().is_none());
    Ok((written, got))
}

proptest! {
    #[test]
    fn fragmentation_round_trips_every_size_up_to_the_maximum(payload_len in 0usize..65_500, max_kib in 2usize..=64) {
        let max = max_kib * 1024;
        let frame = publish(payload_len);
        let len = frame.body_len();
        match through_the_wire(&frame, max) {
            Ok((written, got)) => {
                prop_assert!(len <= max);
                prop_assert_eq!(written == 1, len <= MAX_BODY_LEN);
                prop_assert_eq!(got, frame);
            }
            Err(_) => prop_assert!(len > max),
        }
    }
}

#[test]
fn fragmentation_boundaries() {
    let sized = |body: usize| (0..body).map(publish).find(|f| f.body_len() == body).unwrap();
    // Body of exactly 1396 (one frame), 1397 (two fragments), and exactly the maximum.
    let one = sized(MAX_BODY_LEN);
    assert_eq!(through_the_wire(&one, 65_536).unwrap().0, 1);
    let two = sized(MAX_BODY_LEN + 1);
    assert_eq!(two.body_len(), MAX_BODY_LEN + 1);
    assert_eq!(through_the_wire(&two, 65_536).unwrap().0, 2);
    let overhead = publish(60_000).body_len() - 60_000;
    let exact = publish(65_536 - overhead);
    assert_eq!(exact.body_len(), 65_536);
    assert_eq!(through_the_wire(&exact, 65_536).unwrap().1, exact);
    assert!(through_the_wire(&publish(65_537 - overhead), 65_536).is_err());
    // An empty message body is a zero-length frame and round-trips too.
    let (n, got) = through_the_wire(&Frame::Ping(proto::Ping { nonce: 0 }), 65_536).unwrap();
    assert_eq!((n, got), (1, Frame::Ping(proto::Ping { nonce: 0 })));
    let _ = proto::Ping::default().encoded_len();
}
