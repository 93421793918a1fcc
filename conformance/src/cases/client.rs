//! Client cases: the runner plays the broker to the implementation's shim.

use bytes::Bytes;
use tern_codec::proto::{self, PackageRef};
use tern_codec::{Frame, ReasonCode};

use super::{client, Case};
use crate::case::{CaseFuture, Stop};
use crate::check;
use crate::client_cx::{connack, ClientCx};
use crate::cx::{conversation, inbox};
use crate::peer::{Event, Peer};
use crate::raw::{self, ty, Body};
use crate::shim::{Shim, ShimTask};

pub(super) const CASES: &[Case] = &[
    client(
        "handshake.version-not-offered@client",
        &["REQ-HSK-016"],
        "a CONNACK choosing a version the client did not offer is refused with UNSUPPORTED_VERSION",
        version_not_offered,
    ),
    client(
        "handshake.connack-timeout@client",
        &["REQ-HSK-006"],
        "with no CONNACK, the client closes with CONNECT_TIMEOUT within 10 s",
        connack_timeout,
    ),
    client(
        "handshake.nothing-before-connack@client",
        &["REQ-HSK-004", "REQ-HSK-001"],
        "the client sends CONNECT first and nothing else before CONNACK",
        nothing_before_connack,
    ),
    client(
        "handshake.renumber-after-lost-state@client",
        &["REQ-HSK-015", "REQ-QOS-003"],
        "when ConnAck.last_cid is not below its next cid, the client renumbers from last_cid + 1",
        renumber,
    ),
    client(
        "keepalive.ping-when-idle@client",
        &["REQ-KAL-001", "REQ-KAL-003"],
        "an idle client sends PING within the keepalive interval and answers PING with the same nonce",
        ping_when_idle,
    ),
    client(
        "keepalive.silent-link@client",
        &["REQ-KAL-005"],
        "a client that hears nothing for 1.5 keepalive intervals drops the link and reconnects",
        silent_link,
    ),
    client(
        "session.retry-after@client",
        &["REQ-KAL-007", "REQ-HSK-014", "REQ-HSK-012"],
        "after DISCONNECT with retry_after_ms the client waits that long, then resends its unacknowledged PUBLISH",
        retry_after,
    ),
    client(
        "delivery.resend-after-resume@client",
        &["REQ-HSK-012", "REQ-QOS-003"],
        "after a lost link the client resends every unacknowledged PUBLISH, in cid order, numbered without gaps",
        resend_after_resume,
    ),
    client(
        "delivery.retransmit-timeout@client",
        &["REQ-QOS-008"],
        "a PUBLISH without PUBACK is sent again after about 2 s",
        retransmit_timeout,
    ),
    client(
        "delivery.stale-puback-ignored@client",
        &["REQ-QOS-015"],
        "a PUBACK for a cid the client is not waiting for is ignored",
        stale_puback,
    ),
    client(
        "delivery.final-refusal@client",
        &["REQ-QOS-017", "REQ-ERR-001"],
        "a PUBACK refusal (an unknown code of the auth class) is final: the cid is not sent again",
        final_refusal,
    ),
    client(
        "delivery.withdraw-above-lowered-limit@client",
        &["REQ-QOS-019", "REQ-QOS-003"],
        "messages numbered under a larger max_message_size than a later CONNACK announces are withdrawn, not skipped",
        withdraw_above_lowered_limit,
    ),
    client(
        "delivery.ack-contiguous-prefix@client",
        &["REQ-QOS-010", "REQ-QOS-011", "REQ-ORD-001"],
        "the client acknowledges only its contiguous prefix, passes each seq once and in order",
        ack_prefix,
    ),
    client(
        "packages.whole-in-order@client",
        &["REQ-PKG-006"],
        "a package is handed to the application only whole and in index order",
        package_whole,
    ),
    client(
        "sync.notify-triggers-sync@client",
        &["REQ-SYN-001", "REQ-SYN-008"],
        "a NOTIFY above the sync point makes the client SYNC from its acked_seq",
        notify_sync,
    ),
    client(
        "framing.wrong-direction@client",
        &["REQ-FRM-007", "REQ-FRM-010", "REQ-ERR-003"],
        "a PUBLISH sent to a client is refused with UNEXPECTED_FRAME",
        wrong_direction,
    ),
    client(
        "framing.invalid-field@client",
        &["REQ-FRM-011"],
        "a DELIVER with seq 0 is refused with INVALID_FIELD",
        invalid_field,
    ),
];

fn task(action: &'static str, count: u32) -> ShimTask {
    ShimTask { action, topic: "user/conformance-peer".into(), count, ..Default::default() }
}

/// A DELIVER on the inbox stream for conversation 7.
fn deliver(seq: u64, payload: &str) -> Frame {
    Frame::Deliver(proto::Deliver {
        stream: Some(inbox()),
        seq,
        msg_id: 1000 + seq,
        conversation_id: 7,
        conversation_seq: seq,
        topic: "user/conformance-peer".into(),
        sender_user: "conformance-peer".into(),
        sender_device: "d1".into(),
        qos: 2,
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        server_time_ms: 1,
        ..Default::default()
    })
}

fn puback(cid: u64, reason: u32) -> Frame {
    Frame::PubAck(proto::PubAck {
        cid,
        reason,
        msg_id: if reason == 0 { 500 + cid } else { 0 },
        conversation_id: if reason == 0 { 7 } else { 0 },
        seq: if reason == 0 { cid } else { 0 },
    })
}

/// The next PUBLISH from the client.
async fn next_publish(cx: &ClientCx, p: &mut Peer, req: &'static str) -> Result<proto::Publish, Stop> {
    p.expect(cx.prompt(), req, "PUBLISH", |f| match f {
        Frame::Publish(x) => Some(x.clone()),
        _ => None,
    })
    .await
}

/// Closes the shim's session normally: the shim's `idle` and `receive` actions then exit.
async fn dismiss(p: &mut Peer) -> Result<(), Stop> {
    let d = proto::Disconnect { reason: ReasonCode::NormalDisconnect as u32, ..Default::default() };
    p.send(&Frame::Disconnect(d)).await?;
    p.shutdown().await;
    Ok(())
}

async fn expect_client_close(cx: &ClientCx, p: &mut Peer, req: &'static str, reason: ReasonCode) -> Result<(), Stop> {
    p.expect_close(cx.prompt(), req, reason).await
}

fn version_not_offered(cx: &ClientCx) -> CaseFuture<'_> {
    Box::pin(async move {
        let mut shim = cx.start(task("connect", 0)).await?;
        let (mut p, connect) = cx.accept_session(&mut shim, proto::ConnAck { version: 99, ..connack() }).await?;
        check!(!connect.versions.contains(&99), "REQ-HSK-016", "the client offered version 99");
        expect_client_close(cx, &mut p, "REQ-HSK-016", ReasonCode::UnsupportedVersion).await?;
        shim.expect_failure(cx.prompt(), "REQ-HSK-016").await
    })
}

fn connack_timeout(cx: &ClientCx) -> CaseFuture<'_> {
    Box::pin(async move {
        let mut shim = cx.start(task("connect", 0)).await?;
        let mut p = cx.accept(&mut shim, "REQ-HSK-001").await?;
        cx.read_connect(&mut p).await?;
        p.expect_close(cx.wait(12.0), "REQ-HSK-006", ReasonCode::ConnectTimeout).await?;
        shim.finish(cx.prompt()).await;
        Ok(())
    })
}

fn nothing_before_connack(cx: &ClientCx) -> CaseFuture<'_> {
    Box::pin(async move {
        let mut shim = cx.start(task("publish", 1)).await?;
        let mut p = cx.accept(&mut shim, "REQ-HSK-001").await?;
        let first = p.recv(cx.prompt()).await;
        check!(
            matches!(first, Event::Frame(Frame::Connect(_))),
            "REQ-HSK-001",
            "the first frame was {first:?}, not CONNECT"
        );
        // Hold the CONNACK back for a moment: anything the client sends now is early.
        match p.recv(cx.wait(0.5)).await {
            Event::Silent => {}
            other => return Err(crate::violated!("REQ-HSK-004", "the client sent {other:?} before CONNACK")),
        }
        p.send(&Frame::ConnAck(connack())).await?;
        let publish = next_publish(cx, &mut p, "REQ-QOS-003").await?;
        p.send(&puback(publish.cid, 0)).await?;
        shim.expect_success(cx.prompt(), "REQ-HSK-004").await
    })
}

fn renumber(cx: &ClientCx) -> CaseFuture<'_> {
    Box::pin(async move {
        let mut shim = cx.start(task("publish", 2)).await?;
        let (mut p, _) = cx.accept_session(&mut shim, proto::ConnAck { last_cid: 5, ..connack() }).await?;
        let a = next_publish(cx, &mut p, "REQ-HSK-015").await?;
        let b = next_publish(cx, &mut p, "REQ-HSK-015").await?;
        check!(
            a.cid == 6 && b.cid == 7,
            "REQ-HSK-015",
            "after last_cid 5 the client sent cids {} and {}, expected 6 and 7",
            a.cid,
            b.cid
        );
        p.send(&puback(6, 0)).await?;
        p.send(&puback(7, 0)).await?;
        shim.expect_success(cx.prompt(), "REQ-HSK-015").await
    })
}

fn ping_when_idle(cx: &ClientCx) -> CaseFuture<'_> {
    Box::pin(async move {
        let mut shim = cx.start(task("idle", 0)).await?;
        let (mut p, _) = cx.accept_session(&mut shim, proto::ConnAck { keepalive_secs: 5, ..connack() }).await?;
        p.auto_pong = false;
        let ping = p
            .expect(cx.wait(5.5), "REQ-KAL-001", "a frame within the 5 s keepalive", |f| match f {
                Frame::Ping(x) => Some(x.nonce),
                _ => None,
            })
            .await?;
        p.send(&Frame::Pong(proto::Ping { nonce: ping })).await?;
        let nonce = 0x7e57_0000 ^ cx.seed;
        p.send_raw(&raw::ping(nonce)).await?;
        let got = p
            .expect(cx.prompt(), "REQ-KAL-003", "PONG", |f| match f {
                Frame::Pong(x) => Some(x.nonce),
                _ => None,
            })
            .await?;
        check!(got == nonce, "REQ-KAL-003", "PONG nonce {got}, PING nonce {nonce}");
        dismiss(&mut p).await?;
        shim.expect_success(cx.prompt(), "REQ-KAL-001").await
    })
}

fn silent_link(cx: &ClientCx) -> CaseFuture<'_> {
    Box::pin(async move {
        let mut shim = cx.start(task("idle", 0)).await?;
        let (mut p, _) = cx.accept_session(&mut shim, proto::ConnAck { keepalive_secs: 5, ..connack() }).await?;
        // Swallow everything, answer nothing: the client must give the link up by 7.5 s.
        p.auto_pong = false;
        let reconnect = tokio::select! {
            // Cancel-safe: a pending accept holds no connection.
            r = shim.accept(cx.wait(10.0)) => r?,
            () = async { while !matches!(p.recv(cx.wait(10.0)).await, Event::Closed | Event::Silent) {} } => shim.accept(cx.wait(3.0)).await?,
        };
        let Some(mut again) = reconnect else {
            return Err(crate::violated!(
                "REQ-KAL-005",
                "the client did not reconnect after 1.5 silent keepalive intervals"
            ));
        };
        cx.read_connect(&mut again).await?;
        again.send(&Frame::ConnAck(connack())).await?;
        dismiss(&mut again).await?;
        shim.expect_success(cx.prompt(), "REQ-KAL-005").await
    })
}

fn retry_after(cx: &ClientCx) -> CaseFuture<'_> {
    Box::pin(async move {
        let mut shim = cx.start(task("publish", 1)).await?;
        let (mut p, _) = cx.accept_session(&mut shim, connack()).await?;
        let first = next_publish(cx, &mut p, "REQ-QOS-003").await?;
        let d = proto::Disconnect { reason: ReasonCode::ServerBusy as u32, retry_after_ms: 1500, ..Default::default() };
        p.send(&Frame::Disconnect(d)).await?;
        let sent_at = std::time::Instant::now();
        p.shutdown().await;
        match p.recv(cx.prompt()).await {
            Event::Closed | Event::Silent => {}
            Event::Frame(f) => {
                return Err(crate::violated!(
                    "REQ-HSK-014",
                    "the client sent {} after receiving DISCONNECT",
                    f.frame_type().name()
                ))
            }
            Event::Garbage(e) => return Err(crate::violated!("REQ-HSK-014", "bytes after DISCONNECT: {e}")),
        }
        let mut again = cx.accept(&mut shim, "REQ-KAL-007").await?;
        let waited = sent_at.elapsed();
        check!(
            waited.as_millis() >= 1500,
            "REQ-KAL-007",
            "the client reconnected after {} ms; retry_after_ms was 1500",
            waited.as_millis()
        );
        cx.read_connect(&mut again).await?;
        again.send(&Frame::ConnAck(proto::ConnAck { session_present: true, ..connack() })).await?;
        let resent = next_publish(cx, &mut again, "REQ-HSK-012").await?;
        check!(
            resent.cid == first.cid && resent.payload == first.payload,
            "REQ-HSK-012",
            "resent cid {} differs from cid {}",
            resent.cid,
            first.cid
        );
        again.send(&puback(resent.cid, 0)).await?;
        shim.expect_success(cx.prompt(), "REQ-HSK-012").await
    })
}

fn resend_after_resume(cx: &ClientCx) -> CaseFuture<'_> {
    Box::pin(async move {
        let mut shim = cx.start(task("publish", 3)).await?;
        let (mut p, _) = cx.accept_session(&mut shim, connack()).await?;
        let mut cids = Vec::new();
        for _ in 0..3 {
            cids.push(next_publish(cx, &mut p, "REQ-QOS-003").await?.cid);
        }
        check!(cids == vec![1, 2, 3], "REQ-QOS-003", "a fresh client numbered its PUBLISH frames {cids:?}");
        p.send(&puback(1, 0)).await?;
        p.shutdown().await;
        let mut again = cx.accept(&mut shim, "REQ-HSK-012").await?;
        let connect = cx.read_connect(&mut again).await?;
        check!(
            connect.resume_session_id.as_ref() == b"conformance-session",
            "REQ-HSK-012",
            "the client did not ask to resume its session"
        );
        again.send(&Frame::ConnAck(proto::ConnAck { session_present: true, last_cid: 1, ..connack() })).await?;
        let mut resent = Vec::new();
        for _ in 0..2 {
            resent.push(next_publish(cx, &mut again, "REQ-HSK-012").await?.cid);
        }
        check!(
            resent == vec![2, 3],
            "REQ-HSK-012",
            "after resuming the client resent cids {resent:?}, expected [2, 3]"
        );
        again.send(&puback(2, 0)).await?;
        again.send(&puback(3, 0)).await?;
        shim.expect_success(cx.prompt(), "REQ-HSK-012").await
    })
}

fn retransmit_timeout(cx: &ClientCx) -> CaseFuture<'_> {
    Box::pin(async move {
        let mut shim = cx.start(task("publish", 1)).await?;
        let (mut p, _) = cx.accept_session(&mut shim, connack()).await?;
        let first = next_publish(cx, &mut p, "REQ-QOS-003").await?;
        let started = std::time::Instant::now();
        let again = p
            .expect(cx.wait(6.0), "REQ-QOS-008", "a retransmitted PUBLISH", |f| match f {
                Frame::Publish(x) if x.cid == first.cid => Some(()),
                _ => None,
            })
            .await;
        if let Err(e) = again {
            p.send(&puback(first.cid, 0)).await?;
            return Err(e);
        }
        check!(
            started.elapsed().as_millis() >= 1500,
            "REQ-QOS-008",
            "retransmitted after {} ms, before the 2 s timeout",
            started.elapsed().as_millis()
        );
        p.send(&puback(first.cid, 0)).await?;
        shim.expect_success(cx.prompt(), "REQ-QOS-008").await
    })
}

fn stale_puback(cx: &ClientCx) -> CaseFuture<'_> {
    Box::pin(async move {
        let mut shim = cx.start(task("publish", 2)).await?;
        let (mut p, _) = cx.accept_session(&mut shim, connack()).await?;
        next_publish(cx, &mut p, "REQ-QOS-003").await?;
        next_publish(cx, &mut p, "REQ-QOS-003").await?;
        p.send(&puback(1, 0)).await?;
        p.send(&puback(1, 0)).await?;
        p.send(&puback(9, 0)).await?;
        p.ping(cx.prompt(), "REQ-QOS-015", 5).await?;
        p.send(&puback(2, 0)).await?;
        shim.expect_success(cx.prompt(), "REQ-QOS-015").await
    })
}

fn final_refusal(cx: &ClientCx) -> CaseFuture<'_> {
    Box::pin(async move {
        let mut shim = cx.start(task("publish", 2)).await?;
        let (mut p, _) = cx.accept_session(&mut shim, connack()).await?;
        next_publish(cx, &mut p, "REQ-QOS-003").await?;
        next_publish(cx, &mut p, "REQ-QOS-003").await?;
        // 0xAF: unassigned, in the auth class (0xA0-0xAF): a refusal by class. cid 2 stays
        // unacknowledged, so the client resumes, and must resend cid 2 but never cid 1.
        p.send(&puback(1, 0xAF)).await?;
        p.ping(cx.prompt(), "REQ-ERR-001", 6).await?;
        p.shutdown().await;
        let mut again = cx.accept(&mut shim, "REQ-HSK-012").await?;
        cx.read_connect(&mut again).await?;
        again.send(&Frame::ConnAck(proto::ConnAck { session_present: true, last_cid: 1, ..connack() })).await?;
        let resent = next_publish(cx, &mut again, "REQ-HSK-012").await?;
        check!(resent.cid == 2, "REQ-QOS-017", "after a final refusal of cid 1 the client resent cid {}", resent.cid);
        again.send(&puback(2, 0)).await?;
        // The application was told of the refusal: the shim's publish action fails.
        shim.expect_failure(cx.prompt(), "REQ-ERR-001").await
    })
}

fn withdraw_above_lowered_limit(cx: &ClientCx) -> CaseFuture<'_> {
    Box::pin(async move {
        // Two messages of 3000 bytes: fragmented under the first CONNACK's 64 KiB limit.
        let mut shim = cx.start(ShimTask { payload_bytes: 3000, ..task("publish", 2) }).await?;
        let (mut p, _) = cx.accept_session(&mut shim, connack()).await?;
        let first = next_publish(cx, &mut p, "REQ-QOS-003").await?;
        next_publish(cx, &mut p, "REQ-QOS-003").await?;
        check!(first.payload.len() >= 3000, "REQ-QOS-019", "the shim sent {} bytes, not 3000", first.payload.len());
        p.shutdown().await;
        // The broker comes back with the smallest limit: neither message can be sent now.
        let mut again = cx.accept(&mut shim, "REQ-HSK-012").await?;
        cx.read_connect(&mut again).await?;
        let lowered = proto::ConnAck { session_present: true, max_message_size: 1396, ..connack() };
        again.send(&Frame::ConnAck(lowered)).await?;
        for cid in [1, 2] {
            let sent = next_publish(cx, &mut again, "REQ-QOS-019").await?;
            let withdrawal = proto::Publish { cid, qos: first.qos, withdrawn: true, ..Default::default() };
            check!(
                sent == withdrawal,
                "REQ-QOS-019",
                "expected the withdrawal of cid {cid} (only cid, qos and withdrawn), got cid {} withdrawn {} with a                  {}-byte payload on topic {:?}",
                sent.cid,
                sent.withdrawn,
                sent.payload.len(),
                sent.topic
            );
        }
        again.send(&puback(1, ReasonCode::MessageTooLarge as u32)).await?;
        again.send(&puback(2, ReasonCode::MessageTooLarge as u32)).await?;
        // The application is told the messages were refused: the shim's publish action fails.
        shim.expect_failure(cx.prompt(), "REQ-QOS-019").await
    })
}

/// Reads MESSAGE lines from the shim: (conversation seq, payload).
async fn messages(cx: &ClientCx, shim: &mut Shim, n: usize, req: &'static str) -> Result<Vec<String>, Stop> {
    let mut out = Vec::new();
    while out.len() < n {
        let Some(line) = shim.line(cx.prompt()).await else {
            return Err(Stop::Violation {
                req,
                detail: format!("the application received {} of {n} messages: {out:?}", out.len()),
            });
        };
        if line.starts_with("MESSAGE ") {
            out.push(line);
        }
    }
    Ok(out)
}

fn ack_prefix(cx: &ClientCx) -> CaseFuture<'_> {
    Box::pin(async move {
        let mut shim = cx.start(task("receive", 3)).await?;
        let (mut p, _) = cx.accept_session(&mut shim, connack()).await?;
        p.send(&deliver(1, "one")).await?;
        p.send(&deliver(3, "three")).await?;
        let mut highest = 0;
        let ack = |f: &Frame| match f {
            Frame::DeliverAck(a) => Some(a.seq),
            _ => None,
        };
        highest = highest.max(p.expect(cx.prompt(), "REQ-QOS-010", "DELIVER_ACK", ack).await?);
        p.ping(cx.prompt(), "REQ-QOS-010", 8).await?;
        check!(highest == 1, "REQ-QOS-010", "the client acknowledged seq {highest} across a gap at seq 2");
        p.send(&deliver(2, "two")).await?;
        p.send(&Frame::Deliver(match deliver(2, "two") {
            Frame::Deliver(d) => proto::Deliver { dup: true, ..d },
            f => return Err(Stop::Harness(format!("{f:?}"))),
        }))
        .await?;
        while highest < 3 {
            let seq = p.expect(cx.prompt(), "REQ-QOS-010", "DELIVER_ACK for seq 3", ack).await?;
            check!(seq <= 3, "REQ-QOS-010", "acknowledged seq {seq}, never sent");
            highest = highest.max(seq);
        }
        let got = messages(cx, &mut shim, 3, "REQ-QOS-011").await?;
        let payloads: Vec<&str> = got.iter().filter_map(|l| l.rsplit(' ').next()).collect();
        check!(payloads == vec!["one", "two", "three"], "REQ-ORD-001", "the application received {payloads:?}");
        dismiss(&mut p).await?;
        let extra = shim.lines_now().into_iter().filter(|l| l.starts_with("MESSAGE ")).count();
        check!(extra == 0, "REQ-QOS-011", "a duplicate DELIVER reached the application ({extra} extra)");
        shim.expect_success(cx.prompt(), "REQ-QOS-011").await
    })
}

fn package_whole(cx: &ClientCx) -> CaseFuture<'_> {
    Box::pin(async move {
        let mut shim = cx.start(task("receive", 3)).await?;
        let (mut p, _) = cx.accept_session(&mut shim, connack()).await?;
        let member = |i: u32| match deliver(u64::from(i) + 1, &format!("member{i}")) {
            Frame::Deliver(d) => {
                Frame::Deliver(proto::Deliver { package: Some(PackageRef { package_id: 4, index: i, count: 3 }), ..d })
            }
            f => f,
        };
        p.send(&member(0)).await?;
        p.send(&member(1)).await?;
        p.ping(cx.prompt(), "REQ-PKG-006", 9).await?;
        let early = shim.lines_now();
        check!(
            early.iter().all(|l| !l.starts_with("MESSAGE ")),
            "REQ-PKG-006",
            "part of a package reached the application: {early:?}"
        );
        p.send(&member(2)).await?;
        let got = messages(cx, &mut shim, 3, "REQ-PKG-006").await?;
        let payloads: Vec<&str> = got.iter().filter_map(|l| l.rsplit(' ').next()).collect();
        check!(
            payloads == vec!["member0", "member1", "member2"],
            "REQ-PKG-006",
            "the application received {payloads:?}"
        );
        dismiss(&mut p).await?;
        shim.expect_success(cx.prompt(), "REQ-PKG-006").await
    })
}

fn notify_sync(cx: &ClientCx) -> CaseFuture<'_> {
    Box::pin(async move {
        let mut shim = cx.start(task("receive", 1)).await?;
        let (mut p, _) = cx.accept_session(&mut shim, connack()).await?;
        let stream = conversation(40);
        p.send(&Frame::Notify(proto::Notify { stream: Some(stream), latest_seq: 6, acked_seq: 5 })).await?;
        let sync = p
            .expect(cx.prompt(), "REQ-SYN-001", "SYNC after NOTIFY", |f| match f {
                Frame::Sync(s) => Some(*s),
                _ => None,
            })
            .await?;
        check!(
            sync.stream == Some(stream) && sync.after_seq == 5,
            "REQ-SYN-008",
            "SYNC for {:?} after {}, expected conversation 40 after its acked_seq 5",
            sync.stream,
            sync.after_seq
        );
        let d = match deliver(6, "synced") {
            Frame::Deliver(d) => proto::Deliver {
                stream: Some(stream),
                conversation_id: 40,
                conversation_seq: 6,
                topic: "group/g".into(),
                ..d
            },
            f => return Err(Stop::Harness(format!("{f:?}"))),
        };
        p.send(&Frame::Deliver(d)).await?;
        p.send(&Frame::SyncDone(proto::SyncDone {
            request_id: sync.request_id,
            reason: 0,
            stream: Some(stream),
            last_seq: 6,
            more: false,
        }))
        .await?;
        messages(cx, &mut shim, 1, "REQ-SYN-001").await?;
        dismiss(&mut p).await?;
        shim.expect_success(cx.prompt(), "REQ-SYN-001").await
    })
}

fn wrong_direction(cx: &ClientCx) -> CaseFuture<'_> {
    Box::pin(async move {
        let mut shim = cx.start(task("idle", 0)).await?;
        let (mut p, _) = cx.accept_session(&mut shim, connack()).await?;
        p.send_raw(&raw::publish(1, 2, "user/x", b"wrong way").frame(ty::PUBLISH)).await?;
        expect_client_close(cx, &mut p, "REQ-FRM-007", ReasonCode::UnexpectedFrame).await?;
        shim.finish(cx.prompt()).await;
        Ok(())
    })
}

fn invalid_field(cx: &ClientCx) -> CaseFuture<'_> {
    Box::pin(async move {
        let mut shim = cx.start(task("idle", 0)).await?;
        let (mut p, _) = cx.accept_session(&mut shim, connack()).await?;
        // DELIVER: stream {kind INBOX}, seq 0 left out (so 0), msg_id 1, conversation_id 7.
        let body = Body::new().msg(1, Body::new().uint(1, 1)).uint(3, 1).uint(4, 7).str(6, "user/x").uint(9, 2);
        p.send_raw(&body.frame(ty::DELIVER)).await?;
        expect_client_close(cx, &mut p, "REQ-FRM-011", ReasonCode::InvalidField).await?;
        shim.finish(cx.prompt()).await;
        Ok(())
    })
}
