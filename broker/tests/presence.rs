//! Presence per device: online on connect, offline on disconnect and on a keepalive timeout
//! of a link that went silent; only users who share a conversation may watch.
// Test code: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::{request, start};
use tern_broker::client::{Client, Incoming};
use tern_codec::proto::request::Op;
use tern_codec::proto::{self, response::Result as Answer, PresenceStatus};
use tern_codec::{Frame, ReasonCode};

async fn next_presence(c: &mut Client) -> proto::Presence {
    loop {
        if let Some(Incoming::Frame(f)) = c.next().await {
            if let Frame::Presence(p) = *f {
                return p;
            }
        }
    }
}

fn status(p: &proto::Presence) -> (&str, &str, PresenceStatus) {
    (p.user_id.as_str(), p.device_id.as_str(), PresenceStatus::try_from(p.status).unwrap())
}

#[tokio::test]
async fn presence_follows_connections_including_a_silent_dead_link() {
    let t = start().await;
    let mut alice = t.client("alice", "phone").await;
    alice.publish("user/bob", "hi").await.unwrap();
    let r = request(
        &mut alice,
        Op::PresenceQuery(proto::PresenceQuery { user_ids: vec!["bob".into(), "stranger".into()] }),
    )
    .await;
    let Some(Answer::Presence(listing)) = r.result else { panic!("{r:?}") };
    // Bob is offline; the stranger shares no conversation with alice and is not listed.
    assert_eq!(listing.entries.len(), 1);
    assert_eq!(status(&listing.entries[0]), ("bob", "", PresenceStatus::Offline));

    let bob = t.client("bob", "laptop").await;
    assert_eq!(status(&next_presence(&mut alice).await), ("bob", "laptop", PresenceStatus::Online));
    // Bob's laptop goes idle and comes back; a status other than ONLINE/AWAY is refused.
    let mut bob = bob;
    for (want, reason) in [
        (PresenceStatus::Away, 0),
        (PresenceStatus::Online, 0),
        (PresenceStatus::Offline, ReasonCode::InvalidRequest as u32),
    ] {
        let r = request(&mut bob, Op::SetPresence(proto::SetPresence { status: want as i32 })).await;
        assert_eq!(r.reason, reason);
        if reason == 0 {
            assert_eq!(status(&next_presence(&mut alice).await), ("bob", "laptop", want));
        }
    }
    bob.close().await;
    assert_eq!(status(&next_presence(&mut alice).await), ("bob", "laptop", PresenceStatus::Offline));

    // A device that connects with a 5 s keepalive and then goes silent (no PING, no close).
    let mut raw = common::Raw::connect(&t, "bob", "tablet", 5).await;
    assert_eq!(status(&next_presence(&mut alice).await), ("bob", "tablet", PresenceStatus::Online));
    // The broker declares it offline after 1.5 keepalives of silence, with KEEPALIVE_TIMEOUT.
    assert_eq!(status(&next_presence(&mut alice).await), ("bob", "tablet", PresenceStatus::Offline));
    let frames = raw.rest().await;
    let reason = frames.iter().find_map(|f| if let Frame::Disconnect(d) = f { Some(d.reason) } else { None });
    assert_eq!(reason, Some(tern_codec::ReasonCode::KeepaliveTimeout as u32));
}
