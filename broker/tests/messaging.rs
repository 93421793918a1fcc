//! 1:1 messaging over loopback TCP: online, offline, several devices, resume, takeover,
//! history, refusals, and a malformed frame that must not disturb anyone else.
// Test code: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::{next_message, payloads, start};
use tern_broker::client::{Client, ClientError, Incoming};
use tern_codec::{proto, Frame, ReasonCode};
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn one_to_one_with_the_recipient_online() {
    let t = start().await;
    let alice = t.client("alice", "phone").await;
    let mut bob = t.client("bob", "laptop").await;
    let ack = alice.publish("user/bob", "hi bob").await.unwrap();
    assert!(ack.conversation_id > 0 && ack.seq == 1 && ack.msg_id > 0);
    let m = next_message(&mut bob).await;
    assert_eq!((&m.payload[..], m.sender_user.as_str(), m.sender_device.as_str()), (&b"hi bob"[..], "alice", "phone"));
    assert_eq!((m.conversation_id, m.conversation_seq, m.seq), (ack.conversation_id, 1, 1));
    // The reply lands in the same conversation (one id per pair, either direction).
    let back = bob.publish("user/alice", "hi alice").await.unwrap();
    assert_eq!(back.conversation_id, ack.conversation_id);
    assert_eq!(back.seq, 2);
}

#[tokio::test]
async fn offline_messages_arrive_in_order_on_connect() {
    let t = start().await;
    // Bob's device is registered before the messages, so they are after its sync point.
    t.client("bob", "laptop").await.close().await;
    let alice = t.client("alice", "phone").await;
    for i in 0..5 {
        alice.publish("user/bob", format!("m{i}")).await.unwrap();
    }
    let mut bob = t.client("bob", "laptop").await;
    assert_eq!(payloads(&mut bob, 5).await, ["m0", "m1", "m2", "m3", "m4"]);
}

#[tokio::test]
async fn every_device_of_both_users_gets_the_message() {
    let t = start().await;
    let alice = t.client("alice", "phone").await;
    let mut alice_laptop = t.client("alice", "laptop").await;
    let mut bob_phone = t.client("bob", "phone").await;
    let mut bob_tablet = t.client("bob", "tablet").await;
    alice.publish("user/bob", "to all").await.unwrap();
    for c in [&mut bob_phone, &mut bob_tablet, &mut alice_laptop] {
        let m = next_message(c).await;
        assert_eq!(&m.payload[..], b"to all");
        assert_eq!(m.sender_device, "phone");
    }
}

#[tokio::test]
async fn a_dropped_link_resumes_without_loss_or_duplicates() {
    let t = start().await;
    let alice = t.client("alice", "phone").await;
    let mut bob = t.client("bob", "laptop").await;
    for i in 0..10 {
        alice.publish("user/bob", format!("a{i}")).await.unwrap();
        if i == 4 {
            bob.drop_link();
        }
    }
    alice.drop_link();
    for i in 10..20 {
        alice.publish("user/bob", format!("a{i}")).await.unwrap();
    }
    let got = payloads(&mut bob, 20).await;
    let want: Vec<String> = (0..20).map(|i| format!("a{i}")).collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn the_same_device_connecting_again_takes_the_session_over() {
    let t = start().await;
    let mut first = Client::connect(t.options("bob", "laptop")).await.unwrap();
    let mut second = t.client("bob", "laptop").await;
    let alice = t.client("alice", "phone").await;
    alice.publish("user/bob", "after takeover").await.unwrap();
    assert_eq!(&next_message(&mut second).await.payload[..], b"after takeover");
    // The first client was told SESSION_TAKEN_OVER; it reconnects, which takes over again.
    loop {
        match first.next().await.unwrap() {
            Incoming::Connected { .. } => break,
            _ => continue,
        }
    }
}

#[tokio::test]
async fn a_bad_token_is_refused_with_its_reason() {
    let t = start().await;
    let mut opts = t.options("alice", "phone");
    opts.session.token = bytes::Bytes::from_static(b"tern1:alice:phone:99999999999:00");
    match Client::connect(opts).await {
        Err(ClientError::Refused(ReasonCode::BadToken)) => {}
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a forged token was accepted"),
    }
}

#[tokio::test]
async fn unroutable_topics_are_refused_and_nothing_is_stored() {
    let t = start().await;
    let alice = t.client("alice", "phone").await;
    match alice.publish("nowhere/x", "lost?").await {
        Err(ClientError::Rejected(ReasonCode::NotFound)) => {}
        other => panic!("{other:?}"),
    }
    // The next message is the first in its conversation.
    assert_eq!(alice.publish("user/bob", "real").await.unwrap().seq, 1);
}

#[tokio::test]
async fn history_pages_newest_first() {
    let t = start().await;
    let alice = t.client("alice", "phone").await;
    let mut conv = 0;
    for i in 1..=25 {
        conv = alice.publish("user/bob", format!("h{i}")).await.unwrap().conversation_id;
    }
    let mut bob = t.client("bob", "laptop").await;
    let mut before = 0;
    let mut seen = Vec::new();
    loop {
        let req = proto::HistoryRequest { request_id: 0, conversation_id: conv, before_seq: before, limit: 10 };
        bob.send(Frame::HistoryRequest(req)).await.unwrap();
        let page = loop {
            if let Some(Incoming::Frame(f)) = bob.next().await {
                if let Frame::HistoryPage(p) = *f {
                    break p;
                }
            }
        };
        assert_eq!(page.reason, 0);
        seen.extend(page.entries.iter().map(|e| e.seq));
        if page.next_before_seq == 0 {
            break;
        }
        before = page.next_before_seq;
    }
    assert_eq!(seen, (1..=25).rev().collect::<Vec<u64>>());
    // Carol is not in the conversation.
    let mut carol = t.client("carol", "phone").await;
    let req = proto::HistoryRequest { request_id: 0, conversation_id: conv, before_seq: 0, limit: 10 };
    carol.send(Frame::HistoryRequest(req)).await.unwrap();
    loop {
        if let Some(Incoming::Frame(f)) = carol.next().await {
            if let Frame::HistoryPage(p) = *f {
                assert_eq!(p.reason, ReasonCode::NotAuthorized as u32);
                assert!(p.entries.is_empty());
                break;
            }
        }
    }
}

#[tokio::test]
async fn a_malformed_frame_closes_only_its_own_connection() {
    let t = start().await;
    let alice = t.client("alice", "phone").await;
    let mut bob = t.client("bob", "laptop").await;
    // A raw connection: valid CONNECT, wait for CONNACK, then a PING whose nonce is an
    // overlong varint.
    let mut raw = common::Raw::connect(&t, "mallory", "pc", 0).await;
    let connack = raw.next().await;
    assert!(matches!(&connack, Some(Frame::ConnAck(a)) if a.reason == 0), "{connack:?}");
    raw.stream.write_all(&[0x03, 0x00, 0x00, 0x03, 0x08, 0x81, 0x00]).await.unwrap();
    let frames = raw.rest().await;
    assert!(
        matches!(frames.last(), Some(Frame::Disconnect(d)) if d.reason == ReasonCode::NonCanonicalEncoding as u32),
        "{frames:?}"
    );
    // The bystanders' conversation carries on.
    alice.publish("user/bob", "still here").await.unwrap();
    assert_eq!(&next_message(&mut bob).await.payload[..], b"still here");
}

#[tokio::test]
async fn a_package_is_stored_whole_and_arrives_whole_in_order() {
    let t = start().await;
    let alice = t.client("alice", "phone").await;
    let mut bob = t.client("bob", "laptop").await;
    let parts: Vec<bytes::Bytes> = (0..4).map(|i| bytes::Bytes::from(format!("part {i}"))).collect();
    let acks = alice.publish_package("user/bob", parts).await.unwrap();
    let seqs: Vec<u64> = acks.iter().map(|a| a.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4], "consecutive seqs in index order");
    loop {
        match bob.next().await.unwrap() {
            Incoming::Package(members) => {
                let got: Vec<String> =
                    members.iter().map(|m| String::from_utf8_lossy(&m.payload).into_owned()).collect();
                assert_eq!(got, ["part 0", "part 1", "part 2", "part 3"]);
                break;
            }
            Incoming::Message(m) => panic!("a package member arrived alone: {m:?}"),
            _ => {}
        }
    }
    // A package to a topic that cannot be routed is refused whole.
    let parts = vec![bytes::Bytes::from_static(b"a"), bytes::Bytes::from_static(b"b")];
    assert!(matches!(
        alice.publish_package("nowhere/x", parts).await,
        Err(ClientError::Rejected(ReasonCode::NotFound))
    ));
}

#[tokio::test]
async fn publishing_beyond_the_rate_limit_is_refused_and_not_stored() {
    // A burst of 3 that practically never refills.
    let t = common::start_with(|o| o.publish_rate = (0.0001, 3.0)).await;
    let alice = t.client("alice", "phone").await;
    for i in 0..3 {
        assert_eq!(alice.publish("user/bob", format!("ok {i}")).await.unwrap().seq, i + 1);
    }
    assert!(matches!(alice.publish("user/bob", "too many").await, Err(ClientError::Rejected(ReasonCode::RateLimited))));
    // Others are unaffected.
    let carol = t.client("carol", "phone").await;
    assert_eq!(carol.publish("user/bob", "fine").await.unwrap().seq, 1);
}
