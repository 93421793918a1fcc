//! The bodies of the fuzz targets, shared by `fuzz_targets/*` (libFuzzer) and
//! `codec/tests/fuzz_corpus.rs`, which runs every target over its seed corpus in the ordinary
//! test suite. Each one feeds arbitrary bytes to a decoder or session machine and checks that
//! it never panics and that what it accepts is consistent.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tern_codec::fragment::FrameReader;
use tern_codec::proto;
use tern_codec::session::{
    Accept, BrokerConfig, BrokerEvent, BrokerSession, ClientConfig, ClientSession, LedgerSnapshot,
};
use tern_codec::{decode_frame, encode_frame, Frame};

/// Decodes frames from the input; every accepted frame re-encodes to exactly the bytes it came
/// from, and the reassembling reader never panics.
pub(crate) fn frame_decode(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.clone();
        match decode_frame(&mut buf) {
            Ok(Some(frame)) => {
                let used = before.len() - buf.len();
                let mut again = BytesMut::new();
                encode_frame(&frame, &mut again).expect("a decoded frame fits one frame");
                assert_eq!(&again[..], &before[..used], "decode/encode disagree");
            }
            Ok(None) | Err(_) => break,
        }
    }
    let mut reader = FrameReader::new(16 * 1024);
    reader.extend(data);
    while let Ok(Some(_)) = reader.next_frame() {}
}

/// Splits the input into chunks whose sizes come from the input itself, so the fuzzer also
/// explores how bytes are cut across reads.
fn chunks(data: &[u8]) -> impl Iterator<Item = (u64, &[u8])> {
    let mut rest = data;
    std::iter::from_fn(move || {
        let (&head, tail) = rest.split_first()?;
        let len = usize::from(head).min(tail.len());
        let (chunk, after) = tail.split_at(len);
        rest = after;
        Some((u64::from(head) * 97, chunk))
    })
}

/// A broker session fed a valid CONNECT, then the input as client bytes, with time advancing;
/// the driver stores every released message, so acks and deliveries flow too.
pub(crate) fn broker_session(data: &[u8]) {
    let t0 = Instant::now();
    let mut b = BrokerSession::new(t0, BrokerConfig::default());
    let mut connect = BytesMut::new();
    let c = proto::Connect { versions: vec![1], device_id: "fuzz".into(), ..Default::default() };
    encode_frame(&Frame::Connect(c), &mut connect).expect("fits");
    b.handle_bytes(t0, &connect);
    let mut now = t0;
    let mut seq = 0;
    for (ms, chunk) in chunks(data) {
        now += Duration::from_millis(ms);
        b.handle_bytes(now, chunk);
        if b.poll_timeout().is_some_and(|t| t <= now) {
            b.handle_timeout(now);
        }
        while let Some(ev) = b.poll_event() {
            match ev {
                // The link may already have failed after the CONNECT (a frame sent too early).
                BrokerEvent::Connect(_) if b.awaiting_accept() => {
                    let accept = Accept {
                        user_id: "u".into(),
                        session_id: Bytes::from_static(b"s"),
                        ledger: LedgerSnapshot::default(),
                        inbox_acked_seq: 0,
                        server_time_ms: 0,
                    };
                    b.accept(now, accept).expect("awaiting accept");
                }
                BrokerEvent::Publish(p) if p.qos > 0 => {
                    seq = store(&mut b, p.cid, seq);
                    let d = proto::Deliver {
                        stream: Some(tern_codec::ids::StreamId::Inbox.to_proto()),
                        seq,
                        topic: p.topic,
                        qos: p.qos,
                        payload: p.payload,
                        ..Default::default()
                    };
                    let _ = b.deliver(now, d);
                }
                BrokerEvent::Package(members) => {
                    for p in members {
                        seq = store(&mut b, p.cid, seq);
                    }
                }
                BrokerEvent::PackageExpired { cids, .. } => {
                    for cid in cids {
                        b.ack_publish(proto::PubAck { cid: cid.0, reason: 0xD3, ..Default::default() })
                            .expect("awaiting");
                    }
                }
                BrokerEvent::Withdrawn(cid) => {
                    b.ack_publish(proto::PubAck { cid: cid.0, reason: 0xB0, ..Default::default() }).expect("awaiting");
                }
                _ => {}
            }
        }
        let _ = b.poll_transmit();
    }
}

/// The driver's part of storing a message: the next seq, recorded as the cid's outcome.
fn store(b: &mut BrokerSession, cid: u64, last_seq: u64) -> u64 {
    let seq = last_seq + 1;
    let ack = proto::PubAck { cid, reason: 0, msg_id: seq, conversation_id: 1, seq };
    b.ack_publish(ack).expect("the machine released this cid");
    seq
}

/// A client session that connects and then gets the input as broker bytes, with a publish and
/// time advancing between chunks.
pub(crate) fn client_session(data: &[u8]) {
    let t0 = Instant::now();
    let config = ClientConfig::new("fuzz", Bytes::from_static(b"t"));
    let mut c = ClientSession::new(config, Box::new(ChaCha8Rng::seed_from_u64(1)));
    c.connect(t0).expect("down");
    let _ = c.publish(t0, "user/bob", Bytes::from_static(b"hi"), 2);
    let mut now = t0;
    for (ms, chunk) in chunks(data) {
        now += Duration::from_millis(ms);
        c.handle_bytes(now, chunk);
        if c.poll_timeout().is_some_and(|t| t <= now) {
            c.handle_timeout(now);
        }
        while c.poll_event().is_some() {}
        let _ = c.poll_transmit();
        if !c.is_connected() && c.poll_timeout().is_none() {
            let _ = c.connect(now);
        }
    }
}
