//! Inbox push after CONNACK, sync points, SYNC ranges and limits, history and retention,
//! against a broker.

use tern_codec::proto::{self, StreamRef};
use tern_codec::Frame;

use super::{broker, Case};
use crate::case::{CaseFuture, Feature, Stop};
use crate::check;
use crate::cx::{conversation, inbox, publish, Cx};
use crate::peer::{reason_name, Peer};

pub(super) const CASES: &[Case] = &[
    broker(
        "sync.inbox-after-connack@broker",
        &["REQ-SYN-009", "REQ-SYN-008"],
        "a device gets its inbox after its sync point on CONNACK, and ConnAck.inbox_acked_seq reports the point",
        inbox_after_connack,
    ),
    broker(
        "sync.range-and-limit@broker",
        &["REQ-SYN-002"],
        "SYNC returns the seqs after after_seq, in order, at most limit, then SYNC_DONE with last_seq and more",
        sync_range,
    ),
    broker(
        "sync.limit-defaults-and-cap@broker",
        &["REQ-SYN-003"],
        "SYNC limit 0 returns 100 messages and a limit above 500 returns 500",
        sync_limits,
    ),
    broker(
        "sync.not-authorized@broker",
        &["REQ-SYN-006"],
        "SYNC of a conversation the user is not in gets SYNC_DONE NOT_AUTHORIZED and no DELIVER",
        sync_not_authorized,
    ),
    broker(
        "history.pages@broker",
        &["REQ-SYN-004"],
        "HISTORY pages newest first with next_before_seq, and NOT_AUTHORIZED for a stranger",
        history_pages,
    ),
    broker(
        "retention.removed-message-keeps-its-seq@broker",
        &["REQ-SYN-010"],
        "a message removed by retention is delivered as payload_omitted with its seq",
        retention,
    )
    .needs(Feature::Retention),
];

/// Publishes `n` QoS 2 messages `p{i}` from cid `first`, pipelined within `window`, and
/// returns the PUBACKs.
pub(super) async fn publish_many(
    cx: &Cx,
    p: &mut Peer,
    topic: &str,
    first: u64,
    n: u64,
    window: u64,
) -> Result<Vec<proto::PubAck>, Stop> {
    let mut acks = Vec::new();
    let mut sent = first;
    let end = first + n;
    while acks.len() < n as usize {
        while sent < end && sent < first + acks.len() as u64 + window.max(1) {
            p.send(&publish(sent, topic, format!("p{}", sent - first + 1).as_bytes())).await?;
            sent += 1;
        }
        let cid = first + acks.len() as u64;
        let ack = p.puback(cx.prompt(), cid).await?;
        if ack.reason != 0 {
            return Err(Stop::Harness(format!("setup PUBLISH cid {cid} refused: {}", reason_name(ack.reason))));
        }
        acks.push(ack);
    }
    Ok(acks)
}

/// Sends SYNC and collects the DELIVERs of `stream` (acknowledging them) until its SYNC_DONE.
pub(super) async fn sync(
    cx: &Cx,
    p: &mut Peer,
    stream: StreamRef,
    after_seq: u64,
    limit: u32,
) -> Result<(Vec<proto::Deliver>, proto::SyncDone), Stop> {
    let id = cx.request_id();
    p.send(&Frame::Sync(proto::Sync { request_id: id, stream: Some(stream), after_seq, limit })).await?;
    let mut got: Vec<proto::Deliver> = Vec::new();
    loop {
        let f = p
            .expect(cx.wait(10.0), "REQ-SYN-002", "DELIVER or SYNC_DONE", |f| match f {
                Frame::Deliver(_) => Some(f.clone()),
                Frame::SyncDone(s) if s.request_id == id => Some(f.clone()),
                _ => None,
            })
            .await?;
        match f {
            // Pushes on other streams are acknowledged too, or they would fill the window.
            Frame::Deliver(d) if d.stream != Some(stream) => p.ack(d.stream.unwrap_or_default(), d.seq).await?,
            Frame::Deliver(d) if !got.iter().any(|g| g.seq == d.seq) => {
                p.ack(stream, d.seq).await?;
                got.push(d);
            }
            Frame::SyncDone(done) => return Ok((got, done)),
            _ => {}
        }
    }
}

fn inbox_after_connack(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (s, r) = (cx.name("inb-s"), cx.name("inb-r"));
        cx.register(&r, "d1").await?;
        let (mut tx, _) = cx.session("sender", &s, "d1").await?;
        publish_many(cx, &mut tx, &format!("user/{r}"), 1, 3, 3).await?;
        let (mut rx, ack) = cx.session("recipient", &r, "d1").await?;
        check!(ack.inbox_acked_seq == 0, "REQ-SYN-008", "a new device's inbox_acked_seq is {}", ack.inbox_acked_seq);
        let mut seqs = Vec::new();
        for _ in 0..3 {
            seqs.push(rx.deliver(cx.prompt(), "REQ-SYN-009").await?.seq);
        }
        check!(seqs == vec![1, 2, 3], "REQ-SYN-009", "inbox pushed seqs {seqs:?}, expected [1, 2, 3]");
        rx.ack(inbox(), 2).await?;
        rx.ping(cx.prompt(), "REQ-SYN-008", 1).await?;
        rx.shutdown().await;
        // A fresh session (no resume): the broker's recorded sync point decides.
        let (mut rx2, ack2) = cx.session("recipient-again", &r, "d1").await?;
        check!(
            ack2.inbox_acked_seq == 2,
            "REQ-SYN-008",
            "inbox_acked_seq {} after acknowledging seq 2",
            ack2.inbox_acked_seq
        );
        let d = rx2.deliver(cx.prompt(), "REQ-SYN-009").await?;
        check!(d.seq == 3, "REQ-SYN-009", "first DELIVER after the sync point is seq {}, expected 3", d.seq);
        rx2.ack(inbox(), 3).await?;
        tx.publish_ok(cx.prompt(), 4, &format!("user/{r}"), b"live").await?;
        let live = rx2.deliver(cx.prompt(), "REQ-SYN-009").await?;
        check!(
            live.seq == 4 && live.payload.as_ref() == b"live",
            "REQ-SYN-009",
            "live push was seq {} {:?}",
            live.seq,
            live.payload
        );
        rx2.ack(inbox(), 4).await?;
        tx.close().await?;
        rx2.close().await
    })
}

fn sync_range(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (s, r) = (cx.name("syn-s"), cx.name("syn-r"));
        let (mut tx, _) = cx.session("sender", &s, "d1").await?;
        let acks = publish_many(cx, &mut tx, &format!("user/{r}"), 1, 5, 5).await?;
        let conv = acks.first().map_or(0, |a| a.conversation_id);
        let (got, done) = sync(cx, &mut tx, conversation(conv), 1, 2).await?;
        let seqs: Vec<u64> = got.iter().map(|d| d.seq).collect();
        check!(seqs == vec![2, 3], "REQ-SYN-002", "SYNC after 1 limit 2 returned seqs {seqs:?}");
        check!(
            done.last_seq == 3 && done.more && done.reason == 0,
            "REQ-SYN-002",
            "SYNC_DONE last_seq {} more {} reason {}",
            done.last_seq,
            done.more,
            reason_name(done.reason)
        );
        let (got, done) = sync(cx, &mut tx, conversation(conv), 3, 10).await?;
        let seqs: Vec<u64> = got.iter().map(|d| d.seq).collect();
        check!(
            seqs == vec![4, 5] && done.last_seq == 5 && !done.more,
            "REQ-SYN-002",
            "SYNC after 3 returned {seqs:?}, last_seq {}, more {}",
            done.last_seq,
            done.more
        );
        let (got, done) = sync(cx, &mut tx, conversation(conv), 5, 10).await?;
        check!(
            got.is_empty() && done.last_seq == 5 && !done.more,
            "REQ-SYN-002",
            "SYNC after the latest seq returned {} messages, last_seq {}",
            got.len(),
            done.last_seq
        );
        tx.close().await
    })
}

fn sync_limits(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        if cx.target.declared.retention_max_count.is_some_and(|keep| keep < 501) {
            return Err(Stop::Skipped(
                "needs 501 messages in one conversation; the declared retention keeps fewer".into(),
            ));
        }
        let (s, r) = (cx.name("lim-s"), cx.name("lim-r"));
        let (mut tx, ack) = cx.session("sender", &s, "d1").await?;
        let acks = publish_many(cx, &mut tx, &format!("user/{r}"), 1, 501, u64::from(ack.receive_window)).await?;
        let conv = acks.first().map_or(0, |a| a.conversation_id);
        let (got, done) = sync(cx, &mut tx, conversation(conv), 0, 0).await?;
        check!(
            got.len() == 100 && done.more,
            "REQ-SYN-003",
            "SYNC limit 0 returned {} messages (more {})",
            got.len(),
            done.more
        );
        let (got, done) = sync(cx, &mut tx, conversation(conv), 0, 1000).await?;
        check!(
            got.len() == 500 && done.more && done.last_seq == 500,
            "REQ-SYN-003",
            "SYNC limit 1000 returned {} messages, last_seq {} (more {})",
            got.len(),
            done.last_seq,
            done.more
        );
        tx.close().await
    })
}

fn sync_not_authorized(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (a, b, stranger) = (cx.name("na-a"), cx.name("na-b"), cx.name("na-x"));
        let (mut pa, _) = cx.session("member", &a, "d1").await?;
        let ack = pa.publish_ok(cx.prompt(), 1, &format!("user/{b}"), b"private").await?;
        let (mut px, _) = cx.session("stranger", &stranger, "d1").await?;
        let (got, done) = sync(cx, &mut px, conversation(ack.conversation_id), 0, 10).await?;
        check!(got.is_empty(), "REQ-SYN-006", "a stranger's SYNC returned {} messages", got.len());
        check!(
            done.reason == tern_codec::ReasonCode::NotAuthorized as u32,
            "REQ-SYN-006",
            "SYNC_DONE reason {} for a stranger",
            reason_name(done.reason)
        );
        pa.close().await?;
        px.close().await
    })
}

fn history_pages(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (a, b, stranger) = (cx.name("his-a"), cx.name("his-b"), cx.name("his-x"));
        let (mut pa, _) = cx.session("member", &a, "d1").await?;
        let acks = publish_many(cx, &mut pa, &format!("user/{b}"), 1, 5, 5).await?;
        let conv = acks.first().map_or(0, |x| x.conversation_id);
        let page = history(cx, &mut pa, conv, 0, 2).await?;
        let seqs: Vec<u64> = page.entries.iter().map(|e| e.seq).collect();
        check!(
            seqs == vec![5, 4] && page.next_before_seq == 4,
            "REQ-SYN-004",
            "newest page of 2: seqs {seqs:?}, next_before_seq {}",
            page.next_before_seq
        );
        let page = history(cx, &mut pa, conv, 4, 10).await?;
        let seqs: Vec<u64> = page.entries.iter().map(|e| e.seq).collect();
        check!(
            seqs == vec![3, 2, 1] && page.next_before_seq == 0,
            "REQ-SYN-004",
            "page before 4: seqs {seqs:?}, next_before_seq {} (0 when nothing older)",
            page.next_before_seq
        );
        let (mut px, _) = cx.session("stranger", &stranger, "d1").await?;
        let page = history(cx, &mut px, conv, 0, 10).await?;
        check!(
            page.reason == tern_codec::ReasonCode::NotAuthorized as u32 && page.entries.is_empty(),
            "REQ-SYN-004",
            "a stranger's HISTORY: reason {}, {} entries",
            reason_name(page.reason),
            page.entries.len()
        );
        pa.close().await?;
        px.close().await
    })
}

pub(super) async fn history(
    cx: &Cx,
    p: &mut Peer,
    conversation_id: u64,
    before_seq: u64,
    limit: u32,
) -> Result<proto::HistoryPage, Stop> {
    let id = cx.request_id();
    p.send(&Frame::HistoryRequest(proto::HistoryRequest { request_id: id, conversation_id, before_seq, limit }))
        .await?;
    p.expect(cx.prompt(), "REQ-SYN-004", "HISTORY_PAGE", |f| match f {
        Frame::HistoryPage(h) if h.request_id == id => Some(h.clone()),
        _ => None,
    })
    .await
}

fn retention(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let keep = cx.target.declared.retention_max_count.unwrap_or(0);
        let (s, r) = (cx.name("ret-s"), cx.name("ret-r"));
        cx.register(&r, "d1").await?;
        let (mut tx, ack) = cx.session("sender", &s, "d1").await?;
        let n = keep + 3;
        publish_many(cx, &mut tx, &format!("user/{r}"), 1, n, u64::from(ack.receive_window)).await?;
        // The broker compacts on its own schedule: wait (event-driven, by SYNC rounds on the
        // recipient's inbox) until seq 1 comes back omitted, within the case budget.
        let (mut rx, _) = cx.session("recipient", &r, "d1").await?;
        loop {
            let (got, _) = sync(cx, &mut rx, inbox(), 0, 1).await?;
            let Some(first) = got.first() else {
                return Err(crate::violated!("REQ-SYN-010", "the inbox lost seq 1 entirely"));
            };
            check!(first.seq == 1, "REQ-SYN-010", "the inbox starts at seq {} after retention", first.seq);
            if first.payload_omitted {
                check!(
                    first.payload.is_empty() && first.conversation_seq == 1,
                    "REQ-SYN-010",
                    "removed message: payload {} bytes, conversation_seq {}",
                    first.payload.len(),
                    first.conversation_seq
                );
                break;
            }
            rx.ping(cx.prompt(), "REQ-SYN-010", 9).await?;
        }
        tx.close().await?;
        rx.close().await
    })
}
