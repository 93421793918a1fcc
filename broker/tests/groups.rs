//! Groups: membership, write fan-out into inboxes, read fan-out through NOTIFY and SYNC above
//! the threshold, and refusals for non-members.
// Test code: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::{next_message, payloads, request, start_with};
use tern_broker::client::{ClientError, Incoming};
use tern_codec::ids::StreamId;
use tern_codec::proto::request::Op;
use tern_codec::proto::{self, response::Result as Answer};
use tern_codec::{Frame, ReasonCode};

fn members(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

async fn create(c: &mut tern_broker::client::Client, group: &str, with: &[&str]) -> proto::GroupInfo {
    let r = request(c, Op::GroupCreate(proto::GroupCreate { group_id: group.into(), members: members(with) })).await;
    assert_eq!(r.reason, 0, "{r:?}");
    match r.result {
        Some(Answer::Group(g)) => g,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_small_group_writes_to_every_members_inbox() {
    let t = start_with(|_| {}).await;
    let mut alice = t.client("alice", "phone").await;
    let mut bob = t.client("bob", "phone").await;
    let mut carol = t.client("carol", "phone").await;
    let g = create(&mut alice, "team", &["bob", "carol"]).await;
    assert_eq!(g.members, ["alice", "bob", "carol"]);
    assert!(!g.read_fanout);
    let ack = alice.publish("group/team", "standup").await.unwrap();
    assert_eq!(ack.conversation_id, g.conversation_id);
    for c in [&mut bob, &mut carol] {
        let m = next_message(c).await;
        assert_eq!(
            (&m.payload[..], m.conversation_id, m.stream.unwrap().kind),
            (&b"standup"[..], g.conversation_id, proto::StreamKind::Inbox as i32)
        );
    }
    // Dave is not a member: refused, nothing stored.
    let dave = t.client("dave", "phone").await;
    assert!(matches!(
        dave.publish("group/team", "let me in").await,
        Err(ClientError::Rejected(ReasonCode::NotAMember))
    ));
    // A removed member gets nothing after the removal.
    let r = request(
        &mut alice,
        Op::GroupRemove(proto::GroupMembers { group_id: "team".into(), members: members(&["carol"]) }),
    )
    .await;
    assert_eq!(r.reason, 0);
    alice.publish("group/team", "after carol left").await.unwrap();
    assert_eq!(payloads(&mut bob, 1).await, ["after carol left"]);
    assert!(matches!(
        carol.publish("group/team", "still here?").await,
        Err(ClientError::Rejected(ReasonCode::NotAMember))
    ));
    // Listing shows alice's groups.
    let r = request(&mut alice, Op::GroupList(proto::GroupList {})).await;
    assert!(
        matches!(r.result, Some(Answer::Groups(ref l)) if l.groups.len() == 1 && l.groups[0].members == ["alice", "bob"])
    );
    // Creating it again is refused.
    let r = request(&mut alice, Op::GroupCreate(proto::GroupCreate { group_id: "team".into(), members: vec![] })).await;
    assert_eq!(r.reason, ReasonCode::AlreadyExists as u32);
}

#[tokio::test]
async fn a_group_above_the_threshold_is_read_by_notify_and_sync() {
    // Threshold 2: a group of three is in read fan-out.
    let t = start_with(|o| o.write_fanout_threshold = 2).await;
    let mut alice = t.client("alice", "phone").await;
    let mut bob = t.client("bob", "phone").await;
    let g = create(&mut alice, "town", &["bob", "carol"]).await;
    assert!(g.read_fanout);
    // Bob's client gets NOTIFY, pulls with SYNC (the client machine does that itself) and
    // receives the messages on the conversation stream, in order, once. News that comes within
    // the stream's NOTIFY window after the first is announced when the window ends (spec 8.2):
    // Bob has pulled "news 0" before the next two are sent, so only that held NOTIFY can bring
    // them (a watchdog turns a lost one into a failure instead of a hang).
    let stream = Some(StreamId::Conversation(tern_codec::ids::ConversationId(g.conversation_id)).to_proto());
    let mut got = Vec::new();
    for (i, until) in [(0..1, 1), (1..3, 3)] {
        for n in i {
            alice.publish("group/town", format!("news {n}")).await.unwrap();
        }
        let pulled = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            while got.len() < until {
                if let Incoming::Message(m) = bob.next().await.unwrap() {
                    assert_eq!(m.stream, stream);
                    got.push(String::from_utf8_lossy(&m.payload).into_owned());
                }
            }
        });
        pulled.await.expect("news announced within a NOTIFY window was never announced");
    }
    assert_eq!(got, ["news 0", "news 1", "news 2"]);
    // Carol was offline: she pulls from her join point with SYNC and gets all three.
    let mut carol = t.client("carol", "phone").await;
    let stream = Some(StreamId::Conversation(tern_codec::ids::ConversationId(g.conversation_id)).to_proto());
    carol.send(Frame::Sync(proto::Sync { request_id: 0, stream, after_seq: 0, limit: 0 })).await.unwrap();
    assert_eq!(payloads(&mut carol, 3).await, ["news 0", "news 1", "news 2"]);
    // Dave may not read the stream.
    let mut dave = t.client("dave", "phone").await;
    dave.send(Frame::Sync(proto::Sync { request_id: 0, stream, after_seq: 0, limit: 0 })).await.unwrap();
    loop {
        if let Some(Incoming::Frame(f)) = dave.next().await {
            if let Frame::SyncDone(d) = *f {
                assert_eq!(d.reason, ReasonCode::NotAuthorized as u32);
                break;
            }
        }
    }
}
