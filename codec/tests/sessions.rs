//! Client and broker session machines against each other over a perfect link, and against
//! hand-written bytes: handshake, publish/ack, deliver/ack, keepalive, resume.
// Test code: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tern_codec::ids::StreamId;
use tern_codec::proto;
use tern_codec::session::{
    Accept, BrokerConfig, BrokerEvent, BrokerSession, ClientConfig, ClientEvent, ClientSession, LedgerSnapshot,
};
use tern_codec::{decode_frame, encode_frame, Frame, ReasonCode};

struct Pair {
    t0: Instant,
    client: ClientSession,
    broker: BrokerSession,
}

fn accept_for(user: &str) -> Accept {
    Accept {
        user_id: user.into(),
        session_id: Bytes::from_static(b"s1"),
        ledger: LedgerSnapshot::default(),
        inbox_acked_seq: 0,
        server_time_ms: 1,
    }
}

impl Pair {
    fn new() -> Pair {
        let t0 = Instant::now();
        let client = ClientSession::new(
            ClientConfig::new("phone", Bytes::from_static(b"tok")),
            Box::new(ChaCha8Rng::seed_from_u64(1)),
        );
        let broker = BrokerSession::new(t0, BrokerConfig::default());
        Pair { t0, client, broker }
    }

    /// Moves bytes both ways until quiet; returns broker events.
    fn pump(&mut self, now: Instant) -> (Vec<BrokerEvent>, Vec<ClientEvent>) {
        let (mut be, mut ce) = (vec![], vec![]);
        loop {
            let mut moved = false;
            if let Some(b) = self.client.poll_transmit() {
                self.broker.handle_bytes(now, &b);
                moved = true;
            }
            if let Some(b) = self.broker.poll_transmit() {
                self.client.handle_bytes(now, &b);
                moved = true;
            }
            while let Some(e) = self.broker.poll_event() {
                be.push(e);
            }
            while let Some(e) = self.client.poll_event() {
                ce.push(e);
            }
            if !moved {
                return (be, ce);
            }
        }
    }

    /// Connects and accepts; returns the broker's events after the accept (what the client
    /// sent on connecting).
    fn connect(&mut self) -> Vec<BrokerEvent> {
        self.client.connect(self.t0).unwrap();
        let (be, _) = self.pump(self.t0);
        assert!(matches!(be.as_slice(), [BrokerEvent::Connect(c)] if c.device_id == "phone"), "{be:?}");
        self.broker.accept(self.t0, accept_for("alice")).unwrap();
        let (be, ce) = self.pump(self.t0);
        assert_eq!(ce, vec![ClientEvent::Connected { session_present: false, user_id: "alice".into() }]);
        be
    }
}

#[test]
fn publish_is_released_once_and_acked_with_the_stored_outcome() {
    let mut p = Pair::new();
    p.connect();
    let cid = p.client.publish(p.t0, "user/bob", Bytes::from_static(b"hi"), 2).unwrap().unwrap();
    let (be, _) = p.pump(p.t0);
    let [BrokerEvent::Publish(pubf)] = be.as_slice() else { panic!("{be:?}") };
    assert_eq!((pubf.cid, &pubf.payload[..]), (cid.0, &b"hi"[..]));
    let ack = proto::PubAck { cid: cid.0, reason: 0, msg_id: 99, conversation_id: 5, seq: 1 };
    p.broker.ack_publish(ack).unwrap();
    let (_, ce) = p.pump(p.t0);
    assert_eq!(ce, vec![ClientEvent::Acked(ack)]);
    assert_eq!(p.client.unacknowledged(), 0);
}

/// Decodes every frame in a transmit.
fn frames(bytes: Option<Bytes>) -> Vec<Frame> {
    let mut buf = BytesMut::from(bytes.as_deref().unwrap_or_default());
    let mut out = Vec::new();
    while let Some(f) = decode_frame(&mut buf).unwrap() {
        out.push(f);
    }
    assert!(buf.is_empty());
    out
}

fn raw(frame: &Frame) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_frame(frame, &mut out).unwrap();
    out.to_vec()
}

fn connect_frame(versions: Vec<u32>) -> Frame {
    Frame::Connect(proto::Connect { versions, device_id: "phone".into(), keepalive_secs: 10, ..Default::default() })
}

fn disconnect_reason(frames: &[Frame]) -> Option<ReasonCode> {
    frames.iter().find_map(|f| match f {
        Frame::Disconnect(d) => ReasonCode::from_u32(d.reason),
        _ => None,
    })
}

/// A broker machine that has accepted `phone` (keepalive 10 s) from raw bytes.
fn accepted_broker(t0: Instant) -> BrokerSession {
    let mut b = BrokerSession::new(t0, BrokerConfig::default());
    b.handle_bytes(t0, &raw(&connect_frame(vec![1])));
    assert!(matches!(b.poll_event(), Some(BrokerEvent::Connect(_))));
    b.accept(t0, accept_for("alice")).unwrap();
    let sent = frames(b.poll_transmit());
    assert!(matches!(sent.as_slice(), [Frame::ConnAck(a)] if a.reason == 0 && a.keepalive_secs == 10));
    b
}

fn publish_bytes(cid: u64) -> Vec<u8> {
    raw(&Frame::Publish(proto::Publish {
        cid,
        qos: 2,
        topic: "user/bob".into(),
        payload: Bytes::from(format!("m{cid}")),
        ..Default::default()
    }))
}

fn released_cids(b: &mut BrokerSession) -> Vec<u64> {
    std::iter::from_fn(|| b.poll_event())
        .filter_map(|e| match e {
            BrokerEvent::Publish(p) => Some(p.cid),
            _ => None,
        })
        .collect()
}

#[test]
fn first_frame_must_be_connect() {
    let t0 = Instant::now();
    let mut b = BrokerSession::new(t0, BrokerConfig::default());
    b.handle_bytes(t0, &raw(&Frame::Ping(proto::Ping { nonce: 1 })));
    assert_eq!(disconnect_reason(&frames(b.poll_transmit())), Some(ReasonCode::ProtocolError));
    assert!(matches!(b.poll_event(), Some(BrokerEvent::Closed { reason: Some(ReasonCode::ProtocolError), .. })));
}

#[test]
fn no_common_version_is_refused_in_connack() {
    let t0 = Instant::now();
    let mut b = BrokerSession::new(t0, BrokerConfig::default());
    b.handle_bytes(t0, &raw(&connect_frame(vec![7, 9])));
    let sent = frames(b.poll_transmit());
    assert!(matches!(sent.as_slice(), [Frame::ConnAck(a)] if a.reason == ReasonCode::UnsupportedVersion as u32));
}

#[test]
fn frames_before_connack_and_a_second_connect_are_violations() {
    let t0 = Instant::now();
    let mut b = BrokerSession::new(t0, BrokerConfig::default());
    let mut bytes = raw(&connect_frame(vec![1]));
    bytes.extend(publish_bytes(1));
    b.handle_bytes(t0, &bytes);
    assert_eq!(disconnect_reason(&frames(b.poll_transmit())), Some(ReasonCode::ProtocolError));

    let mut b = accepted_broker(t0);
    b.handle_bytes(t0, &raw(&connect_frame(vec![1])));
    assert_eq!(disconnect_reason(&frames(b.poll_transmit())), Some(ReasonCode::ProtocolError));
}

#[test]
fn a_client_only_frame_from_the_broker_side_is_unexpected() {
    let t0 = Instant::now();
    let mut b = accepted_broker(t0);
    let deliver = proto::Deliver {
        stream: Some(StreamId::Inbox.to_proto()),
        seq: 1,
        topic: "user/bob".into(),
        qos: 1,
        ..Default::default()
    };
    b.handle_bytes(t0, &raw(&Frame::Deliver(deliver)));
    assert_eq!(disconnect_reason(&frames(b.poll_transmit())), Some(ReasonCode::UnexpectedFrame));
}

#[test]
fn malformed_bytes_close_and_nothing_after_them_is_processed() {
    let t0 = Instant::now();
    let mut b = accepted_broker(t0);
    let mut bytes = vec![0x03, 0x00, 0x00, 0x03, 0x08, 0x81, 0x00]; // non-canonical PING
    bytes.extend(publish_bytes(1));
    b.handle_bytes(t0, &bytes);
    assert_eq!(disconnect_reason(&frames(b.poll_transmit())), Some(ReasonCode::NonCanonicalEncoding));
    assert!(released_cids(&mut b).is_empty());
    b.handle_bytes(t0, &publish_bytes(2));
    assert!(b.poll_transmit().is_none());
}

#[test]
fn ping_is_answered_with_the_same_nonce() {
    let t0 = Instant::now();
    let mut b = accepted_broker(t0);
    b.handle_bytes(t0, &raw(&Frame::Ping(proto::Ping { nonce: 0xDEAD })));
    assert_eq!(frames(b.poll_transmit()), vec![Frame::Pong(proto::Ping { nonce: 0xDEAD })]);
}

#[test]
fn broker_closes_after_one_and_a_half_keepalives_of_silence() {
    let t0 = Instant::now();
    let mut b = accepted_broker(t0);
    let deadline = b.poll_timeout().unwrap();
    assert_eq!(deadline, t0 + Duration::from_secs(15));
    b.handle_timeout(deadline - Duration::from_millis(1));
    assert!(b.poll_transmit().is_none());
    // Any frame resets the clock.
    let t1 = t0 + Duration::from_secs(10);
    b.handle_bytes(t1, &raw(&Frame::Ping(proto::Ping { nonce: 1 })));
    let _ = b.poll_transmit();
    assert_eq!(b.poll_timeout(), Some(t1 + Duration::from_secs(15)));
    b.handle_timeout(t1 + Duration::from_secs(15));
    assert_eq!(disconnect_reason(&frames(b.poll_transmit())), Some(ReasonCode::KeepaliveTimeout));
}

#[test]
fn client_pings_within_the_interval_with_jitter() {
    let mut p = Pair::new();
    p.connect();
    let ping_at = p.client.poll_timeout().unwrap();
    let after = ping_at - p.t0;
    assert!(after >= Duration::from_millis(22_500) && after < Duration::from_secs(30), "{after:?}");
    p.client.handle_timeout(ping_at);
    assert!(matches!(frames(p.client.poll_transmit()).as_slice(), [Frame::Ping(_)]));
}

#[test]
fn retransmitted_publish_gets_the_original_ack_and_is_not_released_again() {
    let t0 = Instant::now();
    let mut b = accepted_broker(t0);
    b.handle_bytes(t0, &publish_bytes(1));
    assert_eq!(released_cids(&mut b), vec![1]);
    let ack = proto::PubAck { cid: 1, reason: 0, msg_id: 77, conversation_id: 3, seq: 9 };
    b.ack_publish(ack).unwrap();
    assert_eq!(frames(b.poll_transmit()), vec![Frame::PubAck(ack)]);
    b.handle_bytes(t0, &publish_bytes(1));
    assert!(released_cids(&mut b).is_empty());
    assert_eq!(frames(b.poll_transmit()), vec![Frame::PubAck(ack)]);
}

#[test]
fn publishes_are_released_in_cid_order_and_the_window_is_enforced() {
    let t0 = Instant::now();
    let mut b = accepted_broker(t0);
    b.handle_bytes(t0, &publish_bytes(3));
    b.handle_bytes(t0, &publish_bytes(2));
    assert!(released_cids(&mut b).is_empty(), "held until cid 1 arrives");
    b.handle_bytes(t0, &publish_bytes(1));
    assert_eq!(released_cids(&mut b), vec![1, 2, 3]);
    // Window 32 from cid 4: cid 36 is out.
    b.handle_bytes(t0, &publish_bytes(36));
    assert_eq!(disconnect_reason(&frames(b.poll_transmit())), Some(ReasonCode::ReceiveWindowExceeded));
}

#[test]
fn restored_ledger_answers_old_cids_and_skips_decided_ones() {
    let t0 = Instant::now();
    let mut b = BrokerSession::new(t0, BrokerConfig::default());
    b.handle_bytes(t0, &raw(&connect_frame(vec![1])));
    let _ = b.poll_event();
    let five = proto::PubAck { cid: 5, reason: 0, msg_id: 5, conversation_id: 1, seq: 5 };
    let ledger = LedgerSnapshot { contiguous: 3, acks: vec![five] };
    b.accept(t0, Accept { ledger, ..accept_for("alice") }).unwrap();
    let connack = frames(b.poll_transmit());
    assert!(matches!(connack.as_slice(), [Frame::ConnAck(a)] if a.last_cid == 5));
    b.handle_bytes(t0, &publish_bytes(5));
    assert_eq!(frames(b.poll_transmit()), vec![Frame::PubAck(five)]);
    b.handle_bytes(t0, &publish_bytes(6));
    assert!(released_cids(&mut b).is_empty(), "6 waits for 4");
    b.handle_bytes(t0, &publish_bytes(4));
    assert_eq!(released_cids(&mut b), vec![4, 6], "5 was decided before the restart");
}

fn inbox_deliver(seq: u64) -> proto::Deliver {
    proto::Deliver {
        stream: Some(StreamId::Inbox.to_proto()),
        seq,
        msg_id: seq,
        topic: "user/alice".into(),
        qos: 2,
        payload: Bytes::from(format!("d{seq}")),
        ..Default::default()
    }
}

/// A broker machine that has accepted `connect` (sent as raw bytes); CONNACK is discarded.
fn broker_accepting(t0: Instant, connect: proto::Connect) -> BrokerSession {
    let mut b = BrokerSession::new(t0, BrokerConfig::default());
    b.handle_bytes(t0, &raw(&Frame::Connect(connect)));
    assert!(matches!(b.poll_event(), Some(BrokerEvent::Connect(_))));
    b.accept(t0, accept_for("alice")).unwrap();
    let _ = b.poll_transmit();
    b
}

#[test]
fn broker_respects_the_client_window_and_retransmits_with_dup() {
    let t0 = Instant::now();
    let connect =
        proto::Connect { versions: vec![1], device_id: "phone".into(), receive_window: 2, ..Default::default() };
    let mut b = broker_accepting(t0, connect);
    for seq in 1..=4 {
        b.deliver(t0, inbox_deliver(seq)).unwrap();
    }
    let sent: Vec<u64> = frames(b.poll_transmit())
        .iter()
        .filter_map(|f| if let Frame::Deliver(d) = f { Some(d.seq) } else { None })
        .collect();
    assert_eq!(sent, vec![1, 2]);
    let ack = Frame::DeliverAck(proto::DeliverAck { stream: Some(StreamId::Inbox.to_proto()), seq: 1 });
    b.handle_bytes(t0, &raw(&ack));
    assert!(matches!(b.poll_event(), Some(BrokerEvent::StreamAcked { seq: 1, .. })));
    let sent: Vec<u64> = frames(b.poll_transmit())
        .iter()
        .filter_map(|f| if let Frame::Deliver(d) = f { Some(d.seq) } else { None })
        .collect();
    assert_eq!(sent, vec![3]);
    let rto = b.poll_timeout().unwrap();
    assert_eq!(rto, t0 + Duration::from_secs(2));
    b.handle_timeout(rto);
    let again: Vec<(u64, bool)> = frames(b.poll_transmit())
        .iter()
        .filter_map(|f| if let Frame::Deliver(d) = f { Some((d.seq, d.dup)) } else { None })
        .collect();
    assert_eq!(again, vec![(2, true), (3, true)]);
    let counters = b.take_counters();
    assert_eq!(counters.retransmits, 2);
    assert_eq!(counters.frames.sent[tern_codec::FrameType::Deliver as usize], 5, "3 first sends, 2 resends");
    assert_eq!(counters.frames.received[tern_codec::FrameType::DeliverAck as usize], 1);
    assert_eq!(b.take_counters().retransmits, 0, "taking resets");
}

#[test]
fn client_dedups_reorders_and_acks_cumulatively() {
    let mut p = Pair::new();
    p.connect();
    let deliver = |seq| raw(&Frame::Deliver(inbox_deliver(seq)));
    p.client.handle_bytes(p.t0, &deliver(2));
    let sent = frames(p.client.poll_transmit());
    assert!(matches!(sent.as_slice(), [Frame::Sync(s)] if s.after_seq == 0), "gap asks for a SYNC once: {sent:?}");
    assert!(p.client.poll_event().is_none());
    p.client.handle_bytes(p.t0, &deliver(1));
    p.client.handle_bytes(p.t0, &deliver(1));
    let got: Vec<u64> = std::iter::from_fn(|| p.client.poll_event())
        .filter_map(|e| if let ClientEvent::Message(d) = e { Some(d.seq) } else { None })
        .collect();
    assert_eq!(got, vec![1, 2]);
    let acks: Vec<u64> = frames(p.client.poll_transmit())
        .iter()
        .filter_map(|f| if let Frame::DeliverAck(a) = f { Some(a.seq) } else { None })
        .collect();
    assert_eq!(acks, vec![2, 2], "cumulative, and a duplicate is acknowledged again");
}

#[test]
fn a_client_that_lost_its_state_renumbers_after_last_cid() {
    let t0 = Instant::now();
    let mut client = ClientSession::new(
        ClientConfig::new("phone", Bytes::from_static(b"t")),
        Box::new(ChaCha8Rng::seed_from_u64(3)),
    );
    let cid = client.publish(t0, "user/bob", Bytes::from_static(b"x"), 2).unwrap();
    assert_eq!(cid.map(|c| c.0), Some(1));
    client.connect(t0).unwrap();
    let _ = client.poll_transmit();
    let connack = proto::ConnAck {
        version: 1,
        keepalive_secs: 30,
        receive_window: 32,
        last_cid: 10,
        session_id: Bytes::from_static(b"s"),
        ..Default::default()
    };
    client.handle_bytes(t0, &raw(&Frame::ConnAck(connack)));
    let events: Vec<ClientEvent> = std::iter::from_fn(|| client.poll_event()).collect();
    assert!(events.contains(&ClientEvent::CidsRenumbered { offset: 10 }), "{events:?}");
    let sent = frames(client.poll_transmit());
    assert!(matches!(sent.as_slice(), [Frame::Publish(p)] if p.cid == 11), "{sent:?}");
    assert_eq!(client.next_cid().0, 12);
}

#[test]
fn resume_resends_unacknowledged_delivers_with_dup() {
    let t0 = Instant::now();
    let mut old = accepted_broker(t0);
    old.deliver(t0, inbox_deliver(1)).unwrap();
    let _ = old.poll_transmit();
    old.link_lost(t0);
    let mut fresh = BrokerSession::new(t0, BrokerConfig::default());
    let connect = Frame::Connect(proto::Connect {
        versions: vec![1],
        device_id: "phone".into(),
        resume_session_id: Bytes::from_static(b"s1"),
        ..Default::default()
    });
    fresh.handle_bytes(t0, &raw(&connect));
    assert!(fresh.awaiting_accept());
    old.resume_from(t0, fresh, accept_for("alice")).unwrap();
    let sent = frames(old.poll_transmit());
    assert!(matches!(&sent[0], Frame::ConnAck(a) if a.session_present));
    assert!(matches!(&sent[1], Frame::Deliver(d) if d.seq == 1 && d.dup));
}

#[test]
fn package_members_are_released_whole_in_index_order_or_expire() {
    let t0 = Instant::now();
    let mut b = accepted_broker(t0);
    let member = |cid: u64, index: u32| {
        raw(&Frame::Publish(proto::Publish {
            cid,
            qos: 2,
            topic: "user/bob".into(),
            payload: Bytes::from(format!("i{index}")),
            package: Some(proto::PackageRef { package_id: 1, index, count: 3 }),
            ..Default::default()
        }))
    };
    // Members sent in reverse index order, with cids in send order.
    b.handle_bytes(t0, &member(1, 2));
    b.handle_bytes(t0, &member(2, 1));
    assert!(b.poll_event().is_none());
    b.handle_bytes(t0, &member(3, 0));
    match b.poll_event() {
        Some(BrokerEvent::Package(members)) => {
            let order: Vec<u32> = members.iter().map(|m| m.package.unwrap().index).collect();
            assert_eq!(order, vec![0, 1, 2]);
        }
        other => panic!("{other:?}"),
    }
    // A second package that never completes.
    let lone = raw(&Frame::Publish(proto::Publish {
        cid: 4,
        qos: 2,
        topic: "user/bob".into(),
        package: Some(proto::PackageRef { package_id: 2, index: 0, count: 2 }),
        ..Default::default()
    }));
    b.handle_bytes(t0, &lone);
    let deadline = b.poll_timeout().unwrap();
    assert_eq!(deadline, t0 + Duration::from_secs(15), "keepalive comes first");
    b.handle_timeout(t0 + Duration::from_secs(30));
    let expired = std::iter::from_fn(|| b.poll_event()).find(|e| matches!(e, BrokerEvent::PackageExpired { .. }));
    assert!(matches!(expired, Some(BrokerEvent::PackageExpired { cids, .. }) if cids.len() == 1 && cids[0].0 == 4));
}

#[test]
fn a_deliver_larger_than_the_client_accepts_keeps_its_seq_without_payload() {
    let t0 = Instant::now();
    let connect =
        proto::Connect { versions: vec![1], device_id: "sensor".into(), max_message_size: 1396, ..Default::default() };
    let mut b = broker_accepting(t0, connect);
    let mut big = inbox_deliver(1);
    big.payload = Bytes::from(vec![7u8; 5000]);
    b.deliver(t0, big).unwrap();
    b.deliver(t0, inbox_deliver(2)).unwrap();
    let sent = frames(b.poll_transmit());
    assert!(
        matches!(&sent[0], Frame::Deliver(d) if d.seq == 1 && d.payload_omitted && d.payload.is_empty()),
        "{sent:?}"
    );
    assert!(matches!(&sent[1], Frame::Deliver(d) if d.seq == 2 && !d.payload_omitted && &d.payload[..] == b"d2"));
}

#[test]
fn an_invalid_deliver_is_refused_and_nothing_is_sent_or_kept() {
    let t0 = Instant::now();
    let connect = proto::Connect { versions: vec![1], device_id: "phone".into(), ..Default::default() };
    let mut b = broker_accepting(t0, connect);
    let no_seq = inbox_deliver(0);
    let mut bad_topic = inbox_deliver(1);
    bad_topic.topic = "user/#".into();
    let mut bad_qos = inbox_deliver(1);
    bad_qos.qos = 3;
    for d in [no_seq, bad_topic, bad_qos] {
        assert!(b.deliver(t0, d.clone()).is_err(), "accepted {d:?}");
    }
    assert!(frames(b.poll_transmit()).is_empty(), "an invalid DELIVER went out");
    // Nothing of them is kept for retransmission: a valid seq 1 goes out as itself.
    b.deliver(t0, inbox_deliver(1)).unwrap();
    let sent = frames(b.poll_transmit());
    assert!(
        matches!(&sent[..], [Frame::Deliver(d)] if d.seq == 1 && d.qos == 2 && d.topic == "user/alice"),
        "{sent:?}"
    );
}

#[test]
fn package_members_that_disagree_on_topic_are_invalid() {
    let t0 = Instant::now();
    let mut b = accepted_broker(t0);
    for (cid, index, topic) in [(1, 0, "user/bob"), (2, 1, "user/carol")] {
        let p = proto::Publish {
            cid,
            qos: 2,
            topic: topic.into(),
            package: Some(proto::PackageRef { package_id: 1, index, count: 2 }),
            ..Default::default()
        };
        b.handle_bytes(t0, &raw(&Frame::Publish(p)));
    }
    assert_eq!(disconnect_reason(&frames(b.poll_transmit())), Some(ReasonCode::PackageInvalid));
    assert!(!std::iter::from_fn(|| b.poll_event()).any(|e| matches!(e, BrokerEvent::Package(_))));
}

#[test]
fn sync_done_waits_for_the_delivers_held_back_by_the_window() {
    let t0 = Instant::now();
    let connect =
        proto::Connect { versions: vec![1], device_id: "phone".into(), receive_window: 1, ..Default::default() };
    let mut b = broker_accepting(t0, connect);
    b.deliver(t0, inbox_deliver(1)).unwrap();
    b.deliver(t0, inbox_deliver(2)).unwrap();
    let done =
        proto::SyncDone { request_id: 1, stream: Some(StreamId::Inbox.to_proto()), last_seq: 2, ..Default::default() };
    b.send(&Frame::SyncDone(done)).unwrap();
    let sent = frames(b.poll_transmit());
    assert!(matches!(sent.as_slice(), [Frame::Deliver(d)] if d.seq == 1), "{sent:?}");
    b.handle_bytes(
        t0,
        &raw(&Frame::DeliverAck(proto::DeliverAck { stream: Some(StreamId::Inbox.to_proto()), seq: 1 })),
    );
    let sent = frames(b.poll_transmit());
    assert!(matches!(sent.as_slice(), [Frame::Deliver(d), Frame::SyncDone(_)] if d.seq == 2), "{sent:?}");
}

/// A pair whose broker announces the smallest `max_message_size` (1396), with the client holding
/// QoS 2 messages numbered before it heard that limit (under the 64 KiB default).
fn pair_with_lowered_limit(payloads: &[usize]) -> (Pair, Vec<u64>) {
    let mut p = Pair::new();
    p.broker = BrokerSession::new(p.t0, BrokerConfig { max_message_size: 1396, ..BrokerConfig::default() });
    let cids = payloads
        .iter()
        .map(|&n| p.client.publish(p.t0, "user/bob", Bytes::from(vec![b'x'; n]), 2).unwrap().unwrap().0)
        .collect();
    (p, cids)
}

#[test]
fn a_message_above_a_lowered_limit_is_withdrawn_and_the_cids_after_it_are_released() {
    let (mut p, cids) = pair_with_lowered_limit(&[5000, 2]);
    assert_eq!(cids, vec![1, 2]);
    let be = p.connect();
    // The withdrawal fills cid 1's place, so cid 2 is released behind it [REQ-QOS-019].
    let [BrokerEvent::Withdrawn(withdrawn), BrokerEvent::Publish(second)] = be.as_slice() else { panic!("{be:?}") };
    assert_eq!((withdrawn.0, second.cid, &second.payload[..]), (1, 2, &b"xx"[..]));
    let refused = proto::PubAck { cid: 1, reason: ReasonCode::MessageTooLarge as u32, ..Default::default() };
    let stored = proto::PubAck { cid: 2, reason: 0, msg_id: 7, conversation_id: 5, seq: 1 };
    p.broker.ack_publish(refused).unwrap();
    p.broker.ack_publish(stored).unwrap();
    let (_, ce) = p.pump(p.t0);
    assert_eq!(ce, vec![ClientEvent::Acked(refused), ClientEvent::Acked(stored)]);
    assert_eq!(p.client.unacknowledged(), 0);
}

#[test]
fn a_withdrawal_carries_only_its_cid_and_is_what_the_client_retransmits() {
    let (mut p, _) = pair_with_lowered_limit(&[5000]);
    let be = p.connect();
    assert!(matches!(be.as_slice(), [BrokerEvent::Withdrawn(c)] if c.0 == 1), "{be:?}");
    // The link drops before the outcome; on resume the client sends the withdrawal again, not
    // the message.
    p.client.link_lost(p.t0);
    p.client.connect(p.t0).unwrap();
    let sent = frames(p.client.poll_transmit());
    assert!(matches!(sent.as_slice(), [Frame::Connect(_)]), "{sent:?}");
    let connack = proto::ConnAck { version: 1, session_present: true, max_message_size: 1396, ..Default::default() };
    p.client.handle_bytes(p.t0, &raw(&Frame::ConnAck(connack)));
    let sent = frames(p.client.poll_transmit());
    let expected = proto::Publish { cid: 1, qos: 2, withdrawn: true, ..Default::default() };
    assert_eq!(sent, vec![Frame::Publish(expected)]);
}

#[test]
fn a_withdrawn_package_member_fails_its_package() {
    let mut p = Pair::new();
    p.broker = BrokerSession::new(p.t0, BrokerConfig { max_message_size: 1396, ..BrokerConfig::default() });
    let payloads = vec![Bytes::from_static(b"small"), Bytes::from(vec![b'x'; 5000])];
    let package = p.client.publish_package(p.t0, "user/bob", payloads, 2).unwrap();
    let be = p.connect();
    // The withdrawn member names no package, so the other one waits alone until it expires.
    assert!(matches!(be.as_slice(), [BrokerEvent::Withdrawn(c)] if c.0 == 2), "{be:?}");
    let refused = proto::PubAck { cid: 2, reason: ReasonCode::MessageTooLarge as u32, ..Default::default() };
    p.broker.ack_publish(refused).unwrap();
    let (_, ce) = p.pump(p.t0);
    assert_eq!(ce, vec![ClientEvent::Acked(refused)], "the package is not done while a member is open");
    // Time passes with the link kept alive by the client's pings, until the package expires.
    let mut expired_cids = Vec::new();
    let mut now = p.t0;
    while expired_cids.is_empty() {
        assert!(now < p.t0 + Duration::from_secs(60), "the package never expired");
        now += Duration::from_secs(1);
        p.client.handle_timeout(now);
        p.broker.handle_timeout(now);
        let (be, _) = p.pump(now);
        for e in be {
            if let BrokerEvent::PackageExpired { cids, .. } = e {
                expired_cids.extend(cids);
            }
        }
    }
    assert_eq!(expired_cids, vec![tern_codec::ids::Cid(1)]);
    let expired = proto::PubAck { cid: 1, reason: ReasonCode::PackageTimeout as u32, ..Default::default() };
    p.broker.ack_publish(expired).unwrap();
    let (_, ce) = p.pump(now);
    let done = ClientEvent::PackageDone { package_id: package, reason: ReasonCode::MessageTooLarge };
    assert_eq!(ce, vec![ClientEvent::Acked(expired), done]);
}

#[test]
fn a_withdrawal_with_qos_0_or_any_other_field_is_an_invalid_field() {
    let withdrawal = proto::Publish { cid: 1, qos: 2, withdrawn: true, ..Default::default() };
    let broken = [
        proto::Publish { cid: 0, qos: 0, ..withdrawal.clone() },
        proto::Publish { topic: "user/bob".into(), ..withdrawal.clone() },
        proto::Publish { payload: Bytes::from_static(b"x"), ..withdrawal.clone() },
        proto::Publish { content_type: "text/plain".into(), ..withdrawal.clone() },
        proto::Publish { client_time_ms: 1, ..withdrawal.clone() },
        proto::Publish { package: Some(proto::PackageRef { package_id: 1, index: 0, count: 2 }), ..withdrawal.clone() },
    ];
    for publish in broken {
        let mut b = accepted_broker(Instant::now());
        b.handle_bytes(Instant::now(), &raw(&Frame::Publish(publish.clone())));
        let sent = frames(b.poll_transmit());
        assert_eq!(disconnect_reason(&sent), Some(ReasonCode::InvalidField), "{publish:?}");
    }
    let mut b = accepted_broker(Instant::now());
    b.handle_bytes(Instant::now(), &raw(&Frame::Publish(withdrawal)));
    assert!(matches!(b.poll_event(), Some(BrokerEvent::Withdrawn(c)) if c.0 == 1));
}

#[test]
fn a_withdrawn_member_answered_with_its_stored_outcome_completes_its_package() {
    // The package was stored before the limit fell; only its PUBACK was lost. The withdrawal
    // gets the first outcome (REQ-QOS-005), and the client settles the package with it.
    let mut p = Pair::new();
    p.broker = BrokerSession::new(p.t0, BrokerConfig { max_message_size: 1396, ..BrokerConfig::default() });
    let package = p.client.publish_package(p.t0, "user/bob", vec![Bytes::from(vec![b'x'; 5000])], 2).unwrap();
    let be = p.connect();
    assert!(matches!(be.as_slice(), [BrokerEvent::Withdrawn(c)] if c.0 == 1), "{be:?}");
    let stored = proto::PubAck { cid: 1, reason: 0, msg_id: 3, conversation_id: 5, seq: 9 };
    p.broker.ack_publish(stored).unwrap();
    let (_, ce) = p.pump(p.t0);
    let done = ClientEvent::PackageDone { package_id: package, reason: ReasonCode::Success };
    assert_eq!(ce, vec![ClientEvent::Acked(stored), done]);
}
