//! Unread counts, read markers synced across devices, read receipts, and the
//! recent-conversations list.
// Test code: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::{next_message, request, start};
use tern_broker::client::{Client, Incoming};
use tern_codec::proto::request::Op;
use tern_codec::proto::{self, response::Result as Answer};
use tern_codec::Frame;

async fn unread(c: &mut Client, convs: &[u64]) -> proto::UnreadCounts {
    match request(c, Op::UnreadQuery(proto::UnreadQuery { conversation_ids: convs.to_vec() })).await.result {
        Some(Answer::Unread(u)) => u,
        other => panic!("{other:?}"),
    }
}

async fn next_receipt(c: &mut Client) -> proto::Receipt {
    loop {
        if let Some(Incoming::Frame(f)) = c.next().await {
            if let Frame::Receipt(r) = *f {
                return r;
            }
        }
    }
}

#[tokio::test]
async fn unread_counts_follow_messages_and_read_markers_on_every_device() {
    let t = start().await;
    let alice = t.client("alice", "phone").await;
    let carol = t.client("carol", "phone").await;
    let mut bob_phone = t.client("bob", "phone").await;
    let mut bob_laptop = t.client("bob", "laptop").await;
    let mut conv_a = 0;
    for i in 0..3 {
        conv_a = alice.publish("user/bob", format!("a{i}")).await.unwrap().conversation_id;
    }
    let conv_c = carol.publish("user/bob", "c0").await.unwrap().conversation_id;
    let u = unread(&mut bob_phone, &[]).await;
    assert_eq!(u.total, 4);
    let mut per: Vec<(u64, u64)> = u.conversations.iter().map(|c| (c.conversation_id, c.unread)).collect();
    per.sort();
    assert_eq!(per, [(conv_a, 3), (conv_c, 1)]);

    // Bob reads alice's conversation up to seq 2 on his phone.
    bob_phone.send(Frame::ReadMark(proto::ReadMark { conversation_id: conv_a, seq: 2 })).await.unwrap();
    // His laptop hears about it (the marker syncs), and so does alice (a receipt).
    let r = next_receipt(&mut bob_laptop).await;
    assert_eq!((r.conversation_id, r.reader.as_str(), r.seq), (conv_a, "bob", 2));
    let u = unread(&mut bob_laptop, &[conv_a]).await;
    assert_eq!((u.conversations[0].unread, u.total), (1, 2));
    // A lower marker changes nothing; a marker past the end stops at the last message.
    bob_laptop.send(Frame::ReadMark(proto::ReadMark { conversation_id: conv_a, seq: 1 })).await.unwrap();
    bob_laptop.send(Frame::ReadMark(proto::ReadMark { conversation_id: conv_a, seq: 99 })).await.unwrap();
    assert_eq!(next_receipt(&mut bob_phone).await.seq, 3);
    assert_eq!(unread(&mut bob_phone, &[]).await.total, 1);
    // Bob replying counts as having read.
    bob_phone.publish("user/carol", "seen").await.unwrap();
    assert_eq!(unread(&mut bob_phone, &[]).await.total, 0);
}

#[tokio::test]
async fn the_sender_gets_a_receipt_when_the_recipient_reads() {
    let t = start().await;
    let mut alice = t.client("alice", "phone").await;
    let mut bob = t.client("bob", "phone").await;
    let ack = alice.publish("user/bob", "did you read this?").await.unwrap();
    let m = next_message(&mut bob).await;
    bob.send(Frame::ReadMark(proto::ReadMark { conversation_id: m.conversation_id, seq: m.conversation_seq }))
        .await
        .unwrap();
    let r = next_receipt(&mut alice).await;
    assert_eq!((r.conversation_id, r.reader.as_str(), r.seq), (ack.conversation_id, "bob", ack.seq));
}

#[tokio::test]
async fn unread_total_stays_the_sum_under_concurrent_sends_and_reads() {
    let t = start().await;
    let mut bob = t.client("bob", "phone").await;
    let senders: Vec<Client> = futures_join(["s1", "s2", "s3"].iter().map(|u| t.client(u, "phone"))).await;
    let senders = std::sync::Arc::new(senders);
    let mut tasks = Vec::new();
    for (i, _) in senders.iter().enumerate() {
        let senders = senders.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..20 {
                senders[i].publish("user/bob", format!("{n}")).await.unwrap();
            }
        }));
    }
    // Read and query while the senders are busy: every answer is internally consistent.
    for _ in 0..20 {
        let u = unread(&mut bob, &[]).await;
        assert_eq!(u.total, u.conversations.iter().map(|c| c.unread).sum::<u64>());
        for c in &u.conversations {
            bob.send(Frame::ReadMark(proto::ReadMark { conversation_id: c.conversation_id, seq: u64::MAX }))
                .await
                .unwrap();
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let u = unread(&mut bob, &[]).await;
    assert_eq!(u.total, u.conversations.iter().map(|c| c.unread).sum::<u64>());
    assert_eq!(u.conversations.len(), 3);
}

async fn futures_join<F: std::future::Future<Output = Client>>(futs: impl Iterator<Item = F>) -> Vec<Client> {
    let mut out = Vec::new();
    for f in futs {
        out.push(f.await);
    }
    out
}

#[tokio::test]
async fn recent_conversations_newest_first_with_last_message_and_unread() {
    let t = start().await;
    let alice = t.client("alice", "phone").await;
    let carol = t.client("carol", "phone").await;
    let mut bob = t.client("bob", "phone").await;
    alice.publish("user/bob", "old news").await.unwrap();
    carol.publish("user/bob", "carol 1").await.unwrap();
    carol.publish("user/bob", "carol 2").await.unwrap();
    alice.publish("user/bob", "latest").await.unwrap();
    let list = match request(&mut bob, Op::RecentConversations(proto::RecentConversations { before_ms: 0, limit: 0 }))
        .await
        .result
    {
        Some(Answer::RecentConversations(l)) => l,
        other => panic!("{other:?}"),
    };
    let summary: Vec<(&str, u64, String)> = list
        .conversations
        .iter()
        .map(|c| {
            (
                c.topic.as_str(),
                c.unread,
                String::from_utf8_lossy(&c.last_message.as_ref().unwrap().payload).into_owned(),
            )
        })
        .collect();
    assert_eq!(summary, [("user/alice", 2, "latest".to_string()), ("user/carol", 2, "carol 2".to_string())]);
    assert_eq!(list.next_before_ms, 0);
    // The same list on another device, paged one at a time.
    let mut laptop = t.client("bob", "laptop").await;
    let first =
        request(&mut laptop, Op::RecentConversations(proto::RecentConversations { before_ms: 0, limit: 1 })).await;
    let Some(Answer::RecentConversations(page)) = first.result else { panic!() };
    assert_eq!(page.conversations.len(), 1);
    assert_eq!(page.conversations[0].topic, "user/alice");
    assert!(page.next_before_ms > 0);
}
