//! One test suite, run against every engine: whatever the broker relies on must hold on fjall,
//! sled and redb alike.

use std::time::Duration;

use prost::Message;
use tern_codec::proto;

use super::{device_key, read_u64, Engine, NewMessage, Retention, Store};

fn open(engine: Engine) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), engine).unwrap();
    (dir, store)
}

fn message(text: &str, sender: &str, topic: &str) -> proto::Deliver {
    proto::Deliver {
        topic: topic.into(),
        sender_user: sender.into(),
        qos: 2,
        payload: text.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

fn send(store: &Store, cid: u64, conv: u64, inboxes: &[&str], text: &str, at_ms: u64) -> proto::PubAck {
    let m = NewMessage {
        cid,
        conversation_id: conv,
        inboxes: inboxes.iter().map(|s| s.to_string()).collect(),
        message: message(text, "alice", "user/bob"),
    };
    store.commit("alice", "phone", &[m], at_ms).unwrap().remove(0).ack
}

fn conversations_and_ledger(engine: Engine) {
    let (_d, store) = open(engine);
    let conv = store.conversation_for_pair("alice", "bob").unwrap();
    assert_eq!(store.conversation_for_pair("bob", "alice").unwrap(), conv, "one id per pair, either order");
    let other = store.conversation_for_pair("alice", "carol").unwrap();
    assert_ne!(other, conv);
    assert_eq!(store.conversation_for_pair("carol", "alice").unwrap(), other);
    assert!(store.is_member(conv, "alice").unwrap() && !store.is_member(conv, "carol").unwrap());
    for cid in 1..=3 {
        let ack = send(&store, cid, conv, &["bob", "alice"], &format!("m{cid}"), cid * 10);
        assert_eq!((ack.cid, ack.seq), (cid, cid));
    }
    let refused = proto::PubAck { cid: 5, reason: 0xA0, ..Default::default() };
    store.record_outcome("alice", "phone", &refused).unwrap();
    // The first outcome of a cid stands.
    store.record_outcome("alice", "phone", &proto::PubAck { cid: 5, reason: 0, ..Default::default() }).unwrap();
    let ledger = store.ledger("alice", "phone").unwrap();
    assert_eq!(ledger.contiguous, 3);
    assert_eq!(ledger.acks.iter().map(|a| (a.cid, a.reason)).collect::<Vec<_>>(), [(1, 0), (2, 0), (3, 0), (5, 0xA0)]);
}

fn inboxes_history_and_cursors(engine: Engine) {
    let (_d, store) = open(engine);
    let conv = store.conversation_for_pair("alice", "bob").unwrap();
    // A device seen before any message starts at 0; one seen later starts at the latest seq.
    assert_eq!(store.cursor("bob", "old").unwrap(), 0);
    for cid in 1..=25 {
        send(&store, cid, conv, &["bob"], &format!("h{cid}"), cid);
    }
    assert_eq!(store.cursor("bob", "new").unwrap(), 25);
    assert_eq!(store.advance_cursor("bob", "old", 7).unwrap(), 0);
    assert_eq!(store.advance_cursor("bob", "old", 3).unwrap(), 7, "never backwards");
    assert_eq!(store.cursor("bob", "old").unwrap(), 7);
    // An advance held in memory (a native DELIVER_ACK) counts as the previous sync point of a
    // written one (MQTT), whether or not the committer has written it yet.
    store.advance_cursor_later("bob", "old", 20);
    assert_eq!(store.advance_cursor("bob", "old", 10).unwrap(), 20, "a held advance is the previous sync point");
    assert_eq!(store.cursor("bob", "old").unwrap(), 20);
    let inbox = store.inbox_after("bob", 20, 100).unwrap();
    assert_eq!(inbox.iter().map(|d| d.seq).collect::<Vec<_>>(), [21, 22, 23, 24, 25]);
    assert_eq!(&inbox[0].payload[..], b"h21");
    assert_eq!(store.inbox_latest("bob").unwrap(), 25);
    let (page, next) = store.history(conv, 0, 10).unwrap();
    assert_eq!((page.first().unwrap().seq, page.last().unwrap().seq, next), (25, 16, 16));
    let (page, next) = store.history(conv, 6, 10).unwrap();
    assert_eq!((page.len(), next), (5, 0));
}

fn groups_unread_and_recent(engine: Engine) {
    let (_d, store) = open(engine);
    let g = store.create_group("team", "alice", &["bob".into()]).unwrap().unwrap();
    assert_eq!(store.create_group("team", "carol", &[]).unwrap(), Err(tern_codec::ReasonCode::AlreadyExists));
    assert_eq!(
        store.change_members("team", Some("carol"), &["dave".into()], true).unwrap(),
        Err(tern_codec::ReasonCode::NotAMember)
    );
    store.change_members("team", Some("alice"), &["carol".into()], true).unwrap().unwrap();
    assert_eq!(store.members(g).unwrap(), ["alice", "bob", "carol"]);
    assert_eq!(store.groups_of("carol").unwrap(), ["team"]);
    assert!(store.share_conversation("bob", "carol").unwrap());
    for cid in 1..=3 {
        let m = NewMessage {
            cid,
            conversation_id: g,
            inboxes: vec!["alice".into(), "bob".into(), "carol".into()],
            message: message("x", "alice", "group/team"),
        };
        store.commit("alice", "phone", &[m], 100 + cid).unwrap();
    }
    let (counts, total) = store.unread("bob", &[]).unwrap();
    assert_eq!((counts, total), (vec![(g, 3)], 3));
    assert_eq!(store.mark_read("bob", g, 2).unwrap(), Some(2));
    assert_eq!(store.mark_read("bob", g, 1).unwrap(), None);
    assert_eq!(store.unread("bob", &[g]).unwrap(), (vec![(g, 1)], 1));
    assert_eq!(store.unread("alice", &[]).unwrap().1, 0, "own messages are not unread");
    let (recent, next) = store.recent("carol", 0, 10).unwrap();
    assert_eq!((recent.len(), recent[0].topic.as_str(), recent[0].unread, next), (1, "group/team", 3, 0));
}

/// The recent list is newest first, pages by activity time, and follows new messages.
fn recent_orders_by_activity_and_pages(engine: Engine) {
    let (_d, store) = open(engine);
    let mut cid = 0;
    let mut from = |peer: &str, at_ms: u64| {
        cid += 1;
        let conv = store.conversation_for_pair(peer, "bob").unwrap();
        let m = NewMessage {
            cid,
            conversation_id: conv,
            inboxes: vec!["bob".into(), peer.into()],
            message: message("hi", peer, "user/bob"),
        };
        store.commit(peer, "phone", &[m], at_ms).unwrap();
        conv
    };
    let (alice, carol, dave) = (from("alice", 10), from("carol", 30), from("dave", 20));
    let topics = |page: &[proto::ConversationSummary]| page.iter().map(|s| s.topic.clone()).collect::<Vec<_>>();
    let (page, next) = store.recent("bob", 0, 2).unwrap();
    assert_eq!((topics(&page), next), (vec!["user/carol".to_string(), "user/dave".into()], 20));
    assert_eq!((page[0].conversation_id, page[0].unread, page[0].last_activity_ms), (carol, 1, 30));
    let (page, next) = store.recent("bob", next, 2).unwrap();
    assert_eq!((topics(&page), next), (vec!["user/alice".to_string()], 0));
    assert_eq!(page[0].last_message.as_ref().map(|m| m.sender_user.as_str()), Some("alice"));
    assert_eq!(from("alice", 40), alice);
    let (page, _) = store.recent("bob", 0, 10).unwrap();
    assert_eq!(page.iter().map(|s| s.conversation_id).collect::<Vec<_>>(), [alice, carol, dave]);
    assert_eq!(page[0].unread, 2);
    // The sender's own list has the conversation as read.
    let (page, _) = store.recent("alice", 0, 10).unwrap();
    assert_eq!((topics(&page), page[0].unread), (vec!["user/bob".to_string()], 0));
}

/// A store written before the inbox head held the total unread kept it under `ut/{user}`: it is
/// read from there, and taken over (and the old key removed) by the next write.
fn legacy_unread_total_is_taken_over(engine: Engine) {
    let (_d, store) = open(engine);
    let conv = store.conversation_for_pair("alice", "bob").unwrap();
    for cid in 1..=3 {
        send(&store, cid, conv, &["bob", "alice"], "x", cid);
    }
    store
        .kv
        .transaction(|tx| {
            tx.insert(b"u/bob/last", super::be(3))?;
            tx.insert(b"ut/bob", super::be(3))
        })
        .unwrap();
    assert_eq!(store.unread("bob", &[conv]).unwrap(), (vec![(conv, 3)], 3));
    assert_eq!(store.unread("bob", &[]).unwrap(), (vec![(conv, 3)], 3));
    assert_eq!(store.inbox_latest("bob").unwrap(), 3);
    send(&store, 4, conv, &["bob", "alice"], "x", 4);
    assert_eq!(store.unread("bob", &[conv]).unwrap(), (vec![(conv, 4)], 4));
    assert_eq!(store.inbox_latest("bob").unwrap(), 4);
    assert_eq!(store.kv.get(b"ut/bob").unwrap(), None, "the old total's key is removed");
    assert_eq!(store.kv.get(b"u/bob/last").unwrap().map(|v| v.len()), Some(16));
}

fn retention(engine: Engine) {
    let (_d, store) = open(engine);
    let conv = store.conversation_for_pair("alice", "bob").unwrap();
    for (i, t) in [(1u64, 1_000u64), (2, 2_000), (3, 3_000), (4, 4_000), (5, 5_000)] {
        send(&store, i, conv, &["bob"], &format!("m{i}"), t);
    }
    // Keep the newest 3 (3, 4, 5), and nothing older than 1.5 s at t = 5 s: only 4 and 5 remain.
    let policy = Retention { max_age: Some(Duration::from_millis(1_500)), max_count: Some(3) };
    assert_eq!(store.compact(policy, 5_000).unwrap(), 3);
    let (page, _) = store.history(conv, 0, 10).unwrap();
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [5, 4]);
    let inbox = store.inbox_after("bob", 0, 10).unwrap();
    assert_eq!(inbox.iter().map(|d| d.seq).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    assert!(inbox[..3].iter().all(|d| d.payload_omitted && d.payload.is_empty()));
    assert_eq!(store.compact(policy, 5_000).unwrap(), 0);
}

fn durable_after_flush_and_reopen(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open_with(dir.path(), engine).unwrap();
        let conv = store.conversation_for_pair("alice", "bob").unwrap();
        send(&store, 1, conv, &["bob"], "kept", 1);
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(store.flush()).unwrap();
    }
    let store = Store::open_with(dir.path(), engine).unwrap();
    assert_eq!(&store.inbox_after("bob", 0, 10).unwrap()[0].payload[..], b"kept");
    assert_eq!(store.ledger("alice", "phone").unwrap().contiguous, 1);
}

fn outcome(cid: u64, reason: u32) -> proto::PubAck {
    proto::PubAck { cid, reason, ..Default::default() }
}

/// The ledger is a ring: it keeps the last `LEDGER_KEEP` outcomes in as many keys, in cid order
/// when read; the first outcome of a cid stands, below the floor and above it.
fn ledger_is_a_bounded_ring(engine: Engine) {
    use super::ledger::{record_outcome_tx, LEDGER_KEEP};
    let (_d, store) = open(engine);
    let last = LEDGER_KEEP + 100;
    for chunk in (1..=last).collect::<Vec<_>>().chunks(500) {
        store
            .kv
            .transaction(|tx| chunk.iter().try_for_each(|&c| record_outcome_tx(tx, "al", "ph", &outcome(c, 0))))
            .unwrap();
    }
    let ledger = store.ledger("al", "ph").unwrap();
    assert_eq!(ledger.contiguous, last);
    assert_eq!(
        ledger.acks.iter().map(|a| a.cid).collect::<Vec<_>>(),
        (last - LEDGER_KEEP + 1..=last).collect::<Vec<_>>()
    );
    assert_eq!(store.kv.scan_prefix(b"d/al/ph/cr/").unwrap().len(), usize::try_from(LEDGER_KEEP).unwrap());
    // Decided before, at the floor and far below it: nothing changes (no slot is overwritten).
    store.record_outcome("al", "ph", &outcome(last, 0xA0)).unwrap();
    store.record_outcome("al", "ph", &outcome(10, 0xA0)).unwrap();
    assert_eq!(store.ledger("al", "ph").unwrap(), ledger);
    // Out of order: the floor waits for the gap, then passes what was recorded above it.
    store.record_outcome("al", "ph", &outcome(last + 2, 0xA0)).unwrap();
    store.record_outcome("al", "ph", &outcome(last + 2, 0)).unwrap();
    assert_eq!(store.ledger("al", "ph").unwrap().contiguous, last);
    store.record_outcome("al", "ph", &outcome(last + 1, 0)).unwrap();
    let ledger = store.ledger("al", "ph").unwrap();
    assert_eq!(ledger.contiguous, last + 2);
    assert_eq!(ledger.acks.last().map(|a| (a.cid, a.reason)), Some((last + 2, 0xA0)), "the first outcome stands");
}

/// A store written before the ring kept one key per cid and an 8-byte floor: its outcomes still
/// count (a retransmission keeps its first PUBACK, the floor passes them), and a device's
/// connect moves them into the ring.
fn legacy_ledger_is_moved_into_the_ring(engine: Engine) {
    let (_d, store) = open(engine);
    let legacy = |cid: u64| super::key(&[b"d/al/ph/cid/", &super::be(cid)]);
    store
        .kv
        .transaction(|tx| {
            for (cid, reason) in [(1, 0), (2, 0), (3, 0), (5, 0xA0)] {
                tx.insert(legacy(cid), outcome(cid, reason).encode_to_vec())?;
            }
            tx.insert(b"d/al/ph/floor", super::be(3))
        })
        .unwrap();
    store.record_outcome("al", "ph", &outcome(5, 0)).unwrap();
    store.record_outcome("al", "ph", &outcome(2, 0xA0)).unwrap();
    store.record_outcome("al", "ph", &outcome(4, 0)).unwrap();
    let ledger = store.ledger("al", "ph").unwrap();
    assert_eq!(ledger.contiguous, 5, "the floor passed cid 5, recorded before the ring");
    assert_eq!(
        ledger.acks.iter().map(|a| (a.cid, a.reason)).collect::<Vec<_>>(),
        [(1, 0), (2, 0), (3, 0), (4, 0), (5, 0xA0)]
    );
    assert!(store.kv.scan_prefix(b"d/al/ph/cid/").unwrap().is_empty(), "the old keys are gone");
    assert_eq!(store.ledger("al", "ph").unwrap(), ledger, "and nothing was lost with them");
    store.record_outcome("al", "ph", &outcome(6, 0)).unwrap();
    assert_eq!(store.ledger("al", "ph").unwrap().contiguous, 6);
}

/// Racing claims on threads: every one-time prekey goes to exactly one claimant (REQ-E2E-002).
fn key_directory(engine: Engine) {
    let (_d, store) = open(engine);
    let store = std::sync::Arc::new(store);
    let publish = proto::KeyPublish {
        device_cert: Some(proto::DeviceCert { user_id: "bob".into(), device_id: "phone".into(), ..Default::default() }),
        signed_prekey: Some(proto::SignedPrekey { spk_id: 1, ..Default::default() }),
        one_time_prekeys: (1..=40).map(|i| proto::OneTimePrekey { opk_id: i, ..Default::default() }).collect(),
        ..Default::default()
    };
    assert_eq!(store.publish_keys("bob", "phone", &publish).unwrap(), Ok(40));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            std::thread::spawn(move || {
                (0..15)
                    .filter_map(|_| {
                        store.claim_bundle("bob", "phone").unwrap().unwrap().one_time_prekey.map(|k| k.opk_id)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut ids: Vec<u32> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=40).collect::<Vec<_>>(), "each one-time prekey handed out exactly once");
    assert_eq!(store.one_time_prekeys_left("bob", "phone").unwrap(), 0);
    // Material naming another user is refused; nothing of it is stored.
    let foreign = proto::KeyPublish {
        device_list: Some(proto::DeviceList { user_id: "eve".into(), version: 1, ..Default::default() }),
        ..Default::default()
    };
    assert_eq!(store.publish_keys("bob", "phone", &foreign).unwrap(), Err(tern_codec::ReasonCode::InvalidRequest));
    assert!(store.query_keys(&["bob".into()]).unwrap()[0].device_list.is_none());
    assert_eq!(store.claim_bundle("carol", "x").unwrap(), Err(tern_codec::ReasonCode::NotFound));
    assert_eq!(store.submit_group_op("g", 2, b"op").unwrap(), Err(tern_codec::ReasonCode::EpochMismatch));
    assert_eq!(store.submit_group_op("g", 1, b"op").unwrap(), Ok(1));
}

/// Commits queued by many senders at once (group commit: one transaction and one flush for
/// whatever queued meanwhile) are each answered, in each sender's order, with distinct msg_ids,
/// and all of them are stored.
fn queued_commits_from_many_senders(engine: Engine) {
    let (_d, store) = open(engine);
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let senders: Vec<String> = (0..10).map(|i| format!("s{i}")).collect();
    let mut queued = Vec::new();
    for cid in 1..=20u64 {
        for sender in &senders {
            let conv = store.conversation_for_pair(sender, "bob").unwrap();
            let m = NewMessage {
                cid,
                conversation_id: conv,
                inboxes: vec!["bob".into()],
                message: message(&format!("{sender}-{cid}"), sender, "user/bob"),
            };
            queued.push((sender.clone(), cid, store.commit_durable(sender, "d", vec![m], cid)));
        }
    }
    // Sync points advanced without waiting are read at once, never move backwards, and are in
    // the engine once a later flush is answered.
    let stored = |store: &Store| read_u64(store.kv.get(device_key("bob", "tablet", b"cursor")).unwrap());
    store.advance_cursor_later("bob", "tablet", 9);
    store.advance_cursor_later("bob", "tablet", 4);
    assert_eq!(store.cursor("bob", "tablet").unwrap(), 9, "held advances are read at once");
    runtime.block_on(store.flush()).unwrap();
    assert_eq!(stored(&store), 9);
    // A reader that must see them in the engine (a connecting device) waits until applied.
    store.advance_cursor_later("bob", "tablet", 12);
    runtime.block_on(store.applied());
    assert_eq!(stored(&store), 12);
    // Nobody flushes: the committer does once its queue is quiet (polled, with a watchdog that
    // turns a store left dirty for ever into a failure).
    store.advance_cursor_later("bob", "tablet", 13);
    runtime.block_on(store.applied());
    let watchdog = std::time::Instant::now() + Duration::from_secs(30);
    while store.kv.dirty() {
        assert!(std::time::Instant::now() < watchdog, "a write nobody waited for was never flushed");
        std::thread::yield_now();
    }
    // Nobody waits at all: the committer writes held advances once they have waited
    // SYNC_POINT_HOLD (with the next commit) or its queue has been quiet.
    store.advance_cursor_later("bob", "tablet", 15);
    assert_eq!(store.cursor("bob", "tablet").unwrap(), 15);
    while stored(&store) != 15 {
        assert!(std::time::Instant::now() < watchdog, "a held sync point was never written");
        std::thread::yield_now();
    }
    let mut msg_ids = std::collections::HashSet::new();
    runtime.block_on(async {
        for (sender, cid, pending) in queued {
            let ack = pending.await.unwrap().remove(0).ack;
            assert_eq!((ack.cid, ack.seq, ack.reason), (cid, cid, 0), "{sender}: conversation seq follows queue order");
            assert!(msg_ids.insert(ack.msg_id), "msg_id {} given twice", ack.msg_id);
        }
    });
    let inbox = store.inbox_after("bob", 0, 1000).unwrap();
    assert_eq!(inbox.len(), 200);
    for sender in &senders {
        assert_eq!(store.ledger(sender, "d").unwrap().contiguous, 20, "{sender}'s cid outcomes recorded");
    }
}

macro_rules! every_engine {
    ($($name:ident),*) => {
        mod sled_engine {
            $(#[test] fn $name() { super::$name(super::Engine::Sled) })*
        }
        mod redb_engine {
            $(#[test] fn $name() { super::$name(super::Engine::Redb) })*
        }
        mod fjall_engine {
            $(#[test] fn $name() { super::$name(super::Engine::Fjall) })*
        }
    };
}

every_engine!(
    conversations_and_ledger,
    inboxes_history_and_cursors,
    groups_unread_and_recent,
    recent_orders_by_activity_and_pages,
    legacy_unread_total_is_taken_over,
    ledger_is_a_bounded_ring,
    legacy_ledger_is_moved_into_the_ring,
    retention,
    durable_after_flush_and_reopen,
    queued_commits_from_many_senders,
    key_directory
);
