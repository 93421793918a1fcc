//! Rooms: members who subscribe get live QoS 0 broadcasts; non-members can neither subscribe
//! nor publish; nothing is kept for later.
// Test code: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::{next_message, request, start};
use tern_broker::client::{Client, ClientError, Incoming};
use tern_codec::proto::request::Op;
use tern_codec::{proto, Frame, ReasonCode};

async fn subscribe(c: &mut Client, filter: &str) -> u32 {
    let id = c.send(Frame::Subscribe(proto::Subscribe { request_id: 0, filters: vec![filter.into()] })).await.unwrap();
    loop {
        if let Some(Incoming::Frame(f)) = c.next().await {
            if let Frame::SubAck(a) = *f {
                assert_eq!(a.request_id, id);
                return a.reasons[0];
            }
        }
    }
}

#[tokio::test]
async fn room_members_get_live_broadcasts_and_outsiders_get_nothing() {
    let t = start().await;
    let mut alice = t.client("alice", "phone").await;
    let mut bob = t.client("bob", "phone").await;
    let mut carol = t.client("carol", "phone").await;
    for c in [&mut alice, &mut bob] {
        let r = request(c, Op::RoomJoin(proto::RoomJoin { room_id: "lobby".into() })).await;
        assert_eq!(r.reason, 0);
        assert_eq!(subscribe(c, "room/lobby").await, 0);
    }
    assert_eq!(subscribe(&mut carol, "room/lobby").await, ReasonCode::NotAMember as u32);
    assert_eq!(subscribe(&mut carol, "room/nowhere").await, ReasonCode::NotFound as u32);
    assert_eq!(subscribe(&mut carol, "device/alice/#").await, ReasonCode::NotAuthorized as u32);

    alice.publish_qos("room/lobby", "live 1", 0).await.unwrap();
    let ack = alice.publish("room/lobby", "live 2").await.unwrap();
    assert_eq!(ack.seq, 2);
    for c in [&mut bob, &mut alice] {
        let m = next_message(c).await;
        assert_eq!((&m.payload[..], m.qos, m.sender_user.as_str()), (&b"live 1"[..], 0, "alice"));
        assert_eq!(&next_message(c).await.payload[..], b"live 2");
    }
    assert!(matches!(
        carol.publish("room/lobby", "let me in").await,
        Err(ClientError::Rejected(ReasonCode::NotAMember))
    ));

    // Bob leaves: he gets nothing more, and there is no history to catch up on.
    let r = request(&mut bob, Op::RoomLeave(proto::RoomJoin { room_id: "lobby".into() })).await;
    assert_eq!(r.reason, 0);
    alice.publish("room/lobby", "after bob left").await.unwrap();
    assert_eq!(&next_message(&mut alice).await.payload[..], b"after bob left");
    bob.publish("user/bob", "marker").await.unwrap();
    // The next thing bob receives is his own marker, not the room message.
    assert_eq!(&next_message(&mut bob).await.payload[..], b"marker");
}
