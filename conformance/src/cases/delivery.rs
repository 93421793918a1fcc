//! QoS flows, upstream dedup, cid order, windows, downstream retransmission, oversize
//! deliveries, packages and rooms, against a broker.

use bytes::Bytes;
use tern_codec::proto::{self, request::Op, StreamKind};
use tern_codec::{Frame, ReasonCode};

use super::{broker, Case};
use crate::case::{CaseFuture, Feature};
use crate::check;
use crate::cx::{publish, Cx};
use crate::peer::{reason_name, Event};

pub(super) const CASES: &[Case] = &[
    broker("qos.duplicate-cid.same-puback@broker", &["REQ-QOS-005"],
        "a PUBLISH repeating a cid gets the first PUBACK again and is delivered once", duplicate_cid),
    broker("qos.duplicate-cid.across-reconnect@broker", &["REQ-QOS-005", "REQ-HSK-012"],
        "a PUBLISH retransmitted after a lost link is not stored twice", dedup_across_reconnect),
    broker("qos.cid-order.gap-held@broker", &["REQ-QOS-007", "REQ-ORD-002"],
        "cid 2 sent before cid 1 is held until cid 1 arrives, and seqs follow cid order", cid_order),
    broker("qos.withdrawal.releases-later-cids@broker", &["REQ-QOS-020", "REQ-QOS-005"],
        "a withdrawn cid is answered MESSAGE_TOO_LARGE in cid order, stores nothing, and releases the cids after it", withdrawal),
    broker("qos.withdrawal.only-cid-and-qos@broker", &["REQ-FRM-011"],
        "a withdrawal that also carries a payload is refused with INVALID_FIELD", withdrawal_with_payload),
    broker("qos.receive-window.exceeded@broker", &["REQ-QOS-006"],
        "a cid at lowest-unprocessed + window is refused with RECEIVE_WINDOW_EXCEEDED", window_exceeded),
    broker("delivery.redeliver-after-resume@broker", &["REQ-HSK-012", "REQ-QOS-013"],
        "an unacknowledged DELIVER is sent again with dup set after the device resumes", redeliver_after_resume),
    broker("delivery.retransmit-timeout@broker", &["REQ-QOS-013"],
        "an unacknowledged DELIVER is sent again with dup set after the retransmission timeout", retransmit_timeout),
    broker("delivery.payload-omitted-when-too-large@broker", &["REQ-QOS-018"],
        "a message larger than the recipient's max_message_size is delivered with payload_omitted", payload_omitted),
    broker("delivery.ack-out-of-range@broker", &["REQ-QOS-014"],
        "a DELIVER_ACK above the stream's latest seq may be refused with ACK_OUT_OF_RANGE", ack_out_of_range),
    broker("e2ee.opaque-payload@broker", &["REQ-E2E-001"],
        "an application/tern-e2ee payload is stored and delivered byte for byte, live and through history", e2ee_opaque),
    broker("rooms.qos0-broadcast@broker", &["REQ-GRP-004", "REQ-QOS-016"],
        "a room message reaches subscribed members as a QoS 0 DELIVER on the room's conversation stream, not their inbox", room_broadcast).needs(Feature::Rooms),
];

fn duplicate_cid(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (s, r) = (cx.name("dup-s"), cx.name("dup-r"));
        let (mut rx, _) = cx.session("recipient", &r, "d1").await?;
        let (mut tx, _) = cx.session("sender", &s, "d1").await?;
        let topic = format!("user/{r}");
        let first = tx.publish_ok(cx.prompt(), 1, &topic, b"once").await?;
        let again = tx.publish(cx.prompt(), 1, &topic, b"once").await?;
        check!(
            again.msg_id == first.msg_id
                && again.seq == first.seq
                && again.conversation_id == first.conversation_id
                && (again.reason == first.reason || again.reason == ReasonCode::Duplicate as u32),
            "REQ-QOS-005",
            "second PUBACK for cid 1 differs: first {first:?}, second {again:?}"
        );
        tx.publish_ok(cx.prompt(), 2, &topic, b"barrier").await?;
        let d1 = rx.fresh_deliver(cx.prompt(), "REQ-QOS-005").await?;
        let d2 = rx.fresh_deliver(cx.prompt(), "REQ-QOS-005").await?;
        check!(
            d1.payload == Bytes::from_static(b"once") && d2.payload == Bytes::from_static(b"barrier"),
            "REQ-QOS-005",
            "recipient got {:?} then {:?}; expected the message once, then the barrier",
            d1.payload,
            d2.payload
        );
        rx.ack(d2.stream.unwrap_or_default(), d2.seq).await?;
        tx.close().await?;
        rx.close().await
    })
}

fn dedup_across_reconnect(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (s, r) = (cx.name("dup-s"), cx.name("dup-r"));
        let topic = format!("user/{r}");
        cx.register(&r, "d1").await?;
        let (mut tx, ack) = cx.session("sender", &s, "d1").await?;
        let first = tx.publish_ok(cx.prompt(), 1, &topic, b"retransmitted").await?;
        tx.shutdown().await;
        let mut connect = cx.connect_frame(&s, "d1").await?;
        connect.resume_session_id = ack.session_id;
        let (mut tx2, ack2) = cx.session_with("sender-again", connect).await?;
        check!(ack2.last_cid >= 1, "REQ-QOS-005", "CONNACK last_cid {} after cid 1 was acknowledged", ack2.last_cid);
        let again = tx2.publish(cx.prompt(), 1, &topic, b"retransmitted").await?;
        check!(
            again.msg_id == first.msg_id && again.seq == first.seq,
            "REQ-QOS-005",
            "retransmitted cid 1 got msg_id {} seq {}, first was msg_id {} seq {}",
            again.msg_id,
            again.seq,
            first.msg_id,
            first.seq
        );
        tx2.publish_ok(cx.prompt(), 2, &topic, b"barrier").await?;
        let (mut rx, _) = cx.session("recipient", &r, "d1").await?;
        let d1 = rx.deliver(cx.prompt(), "REQ-QOS-005").await?;
        let d2 = rx.deliver(cx.prompt(), "REQ-QOS-005").await?;
        check!(
            d1.payload.as_ref() == b"retransmitted" && d2.payload.as_ref() == b"barrier",
            "REQ-QOS-005",
            "recipient inbox holds {:?}, {:?}: the retransmission was stored twice",
            d1.payload,
            d2.payload
        );
        rx.ack(d2.stream.unwrap_or_default(), d2.seq).await?;
        tx2.close().await?;
        rx.close().await
    })
}

fn cid_order(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (s, r) = (cx.name("ord-s"), cx.name("ord-r"));
        let topic = format!("user/{r}");
        let (mut tx, _) = cx.session("sender", &s, "d1").await?;
        tx.send(&publish(2, &topic, b"second")).await?;
        // A PING round trip proves the broker has read cid 2; it must not have answered it.
        tx.send(&Frame::Ping(proto::Ping { nonce: 42 })).await?;
        tx.auto_pong = false;
        let early = tx
            .expect(cx.prompt(), "REQ-QOS-007", "PONG", |f| match f {
                Frame::PubAck(a) => Some(Some(a.cid)),
                Frame::Pong(_) => Some(None),
                _ => None,
            })
            .await?;
        check!(early.is_none(), "REQ-QOS-007", "cid 2 was answered before cid 1 arrived");
        tx.send(&publish(1, &topic, b"first")).await?;
        let a1 = tx.puback(cx.prompt(), 1).await?;
        let a2 = tx.puback(cx.prompt(), 2).await?;
        check!(
            a1.reason == 0 && a2.reason == 0,
            "REQ-QOS-007",
            "PUBACK reasons {} and {}",
            reason_name(a1.reason),
            reason_name(a2.reason)
        );
        check!(a1.seq < a2.seq, "REQ-ORD-002", "cid 1 got seq {}, cid 2 got seq {}", a1.seq, a2.seq);
        tx.close().await
    })
}

fn withdrawal_of(cid: u64) -> proto::Publish {
    proto::Publish { cid, qos: 2, withdrawn: true, ..Default::default() }
}

fn withdrawal(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (s, r) = (cx.name("wd-s"), cx.name("wd-r"));
        let (mut rx, _) = cx.session("recipient", &r, "d1").await?;
        let (mut tx, _) = cx.session("sender", &s, "d1").await?;
        let topic = format!("user/{r}");
        // cid 2 first: it is held until the withdrawal of cid 1 fills the gap (REQ-QOS-007).
        tx.send(&publish(2, &topic, b"after the withdrawal")).await?;
        tx.send(&Frame::Publish(withdrawal_of(1))).await?;
        let withdrawn = tx.puback(cx.prompt(), 1).await?;
        let after = tx.puback(cx.prompt(), 2).await?;
        let refused = proto::PubAck { cid: 1, reason: ReasonCode::MessageTooLarge as u32, ..Default::default() };
        check!(withdrawn == refused, "REQ-QOS-020", "the withdrawal of cid 1 was answered with {withdrawn:?}");
        check!(
            after.reason == 0,
            "REQ-QOS-020",
            "cid 2, behind the withdrawal, was answered {}",
            reason_name(after.reason)
        );
        tx.send(&Frame::Publish(withdrawal_of(1))).await?;
        let again = tx.puback(cx.prompt(), 1).await?;
        check!(
            again == withdrawn || again.reason == ReasonCode::Duplicate as u32,
            "REQ-QOS-005",
            "the repeated withdrawal of cid 1 was answered {again:?}, first {withdrawn:?}"
        );
        // cid 2 was stored: its withdrawal, come too late, gets the stored outcome.
        tx.send(&Frame::Publish(withdrawal_of(2))).await?;
        let late = tx.puback(cx.prompt(), 2).await?;
        check!(
            late == after || late.reason == ReasonCode::Duplicate as u32,
            "REQ-QOS-005",
            "the withdrawal of stored cid 2 was answered {late:?}, not its first outcome {after:?}"
        );
        // Nothing was stored for cid 1: the recipient's first message is cid 2's.
        let d = rx.fresh_deliver(cx.prompt(), "REQ-QOS-020").await?;
        check!(
            d.payload == Bytes::from_static(b"after the withdrawal") && d.msg_id == after.msg_id,
            "REQ-QOS-020",
            "the recipient's first message is {:?} (msg {}), not cid 2's",
            d.payload,
            d.msg_id
        );
        rx.ack(d.stream.unwrap_or_default(), d.seq).await?;
        tx.close().await?;
        rx.close().await
    })
}

fn withdrawal_with_payload(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (mut tx, _) = cx.session("sender", &cx.name("wd-bad"), "d1").await?;
        let bad = proto::Publish { payload: Bytes::from_static(b"not empty"), ..withdrawal_of(1) };
        tx.send(&Frame::Publish(bad)).await?;
        tx.expect_close(cx.prompt(), "REQ-FRM-011", ReasonCode::InvalidField).await
    })
}

fn window_exceeded(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (mut tx, ack) = cx.session("sender", &cx.name("win"), "d1").await?;
        let w = u64::from(ack.receive_window);
        tx.send(&publish(1 + w, &format!("user/{}", cx.name("win-r")), b"beyond the window")).await?;
        tx.expect_close(cx.prompt(), "REQ-QOS-006", ReasonCode::ReceiveWindowExceeded).await
    })
}

fn redeliver_after_resume(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (s, r) = (cx.name("rdl-s"), cx.name("rdl-r"));
        let (mut rx, ack) = cx.session("recipient", &r, "d1").await?;
        let (mut tx, _) = cx.session("sender", &s, "d1").await?;
        tx.publish_ok(cx.prompt(), 1, &format!("user/{r}"), b"unacknowledged").await?;
        let d = rx.fresh_deliver(cx.prompt(), "REQ-SYN-009").await?;
        rx.shutdown().await;
        let mut connect = cx.connect_frame(&r, "d1").await?;
        connect.resume_session_id = ack.session_id;
        let (mut rx2, _) = cx.session_with("recipient-resumed", connect).await?;
        let again = rx2.deliver(cx.prompt(), "REQ-HSK-012").await?;
        check!(
            again.seq == d.seq && again.msg_id == d.msg_id,
            "REQ-HSK-012",
            "after resuming, first DELIVER is seq {} (msg {}), expected the unacknowledged seq {}",
            again.seq,
            again.msg_id,
            d.seq
        );
        check!(again.dup, "REQ-QOS-013", "the DELIVER sent again after resume does not have dup set");
        rx2.ack(again.stream.unwrap_or_default(), again.seq).await?;
        tx.close().await?;
        rx2.close().await
    })
}

fn retransmit_timeout(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (s, r) = (cx.name("rto-s"), cx.name("rto-r"));
        let (mut rx, _) = cx.session("recipient", &r, "d1").await?;
        let (mut tx, _) = cx.session("sender", &s, "d1").await?;
        tx.publish_ok(cx.prompt(), 1, &format!("user/{r}"), b"not acknowledged").await?;
        let d = rx.fresh_deliver(cx.prompt(), "REQ-SYN-009").await?;
        // First timeout 2 s (6.2); allow for timer granularity.
        let again = rx
            .expect(cx.wait(6.0), "REQ-QOS-013", "a retransmitted DELIVER", |f| match f {
                Frame::Deliver(x) if x.seq == d.seq => Some(x.clone()),
                _ => None,
            })
            .await?;
        check!(again.dup, "REQ-QOS-013", "the retransmitted DELIVER does not have dup set");
        rx.ack(again.stream.unwrap_or_default(), again.seq).await?;
        tx.close().await?;
        rx.close().await
    })
}

fn payload_omitted(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (s, r) = (cx.name("big-s"), cx.name("big-r"));
        let mut connect = cx.connect_frame(&r, "d1").await?;
        connect.max_message_size = 1396;
        let (mut rx, _) = cx.session_with("small-recipient", connect).await?;
        let (mut tx, _) = cx.session("sender", &s, "d1").await?;
        tx.publish_ok(cx.prompt(), 1, &format!("user/{r}"), &vec![b'z'; 3000]).await?;
        let d = rx.fresh_deliver(cx.prompt(), "REQ-QOS-018").await?;
        check!(
            d.payload_omitted && d.payload.is_empty(),
            "REQ-QOS-018",
            "DELIVER of a 3000-byte message to a 1396-byte client: payload {} bytes, payload_omitted {}",
            d.payload.len(),
            d.payload_omitted
        );
        rx.ack(d.stream.unwrap_or_default(), d.seq).await?;
        tx.close().await?;
        rx.close().await
    })
}

fn ack_out_of_range(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (mut p, _) = cx.session("client", &cx.name("aor"), "d1").await?;
        p.ack(crate::cx::inbox(), 1_000_000).await?;
        p.send(&Frame::Ping(proto::Ping { nonce: 3 })).await?;
        p.auto_pong = false;
        loop {
            match p.recv(cx.prompt()).await {
                Event::Frame(Frame::Disconnect(d)) if d.reason == ReasonCode::AckOutOfRange as u32 => {
                    return p.expect_eof(cx.prompt()).await
                }
                Event::Frame(Frame::Disconnect(d)) => {
                    return Err(crate::violated!(
                        "REQ-ERR-003",
                        "closed with {} instead of ACK_OUT_OF_RANGE",
                        reason_name(d.reason)
                    ))
                }
                Event::Frame(Frame::Pong(_)) => {
                    return Err(crate::violated!(
                        "REQ-QOS-014",
                        "the broker tolerated a DELIVER_ACK above the stream's latest seq"
                    ))
                }
                Event::Frame(_) => continue,
                other => return Err(crate::violated!("REQ-ERR-003", "after an out-of-range ack: {other:?}")),
            }
        }
    })
}

fn e2ee_opaque(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (s, r) = (cx.name("e2e-s"), cx.name("e2e-r"));
        // Every byte value, in a seed-dependent order: nothing a broker could "clean up".
        let mut payload: Vec<u8> = (0..=255u8).collect();
        let mut x = cx.seed | 1;
        for i in (1..payload.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            payload.swap(i, (x % (i as u64 + 1)) as usize);
        }
        cx.register(&r, "d1").await?;
        let (mut tx, _) = cx.session("sender", &s, "d1").await?;
        let frame = Frame::Publish(proto::Publish {
            cid: 1,
            qos: 2,
            topic: format!("user/{r}"),
            payload: Bytes::from(payload.clone()),
            content_type: "application/tern-e2ee".into(),
            ..Default::default()
        });
        tx.send(&frame).await?;
        let ack = tx.puback(cx.prompt(), 1).await?;
        check!(
            ack.reason == 0,
            "REQ-E2E-001",
            "an application/tern-e2ee PUBLISH was refused: {}",
            reason_name(ack.reason)
        );
        let (mut rx, _) = cx.session("recipient", &r, "d1").await?;
        let d = rx.deliver(cx.prompt(), "REQ-E2E-001").await?;
        check!(
            d.payload.as_ref() == payload.as_slice() && d.content_type == "application/tern-e2ee",
            "REQ-E2E-001",
            "offline delivery changed the payload or content type ({} bytes, {:?})",
            d.payload.len(),
            d.content_type
        );
        rx.ack(d.stream.unwrap_or_default(), d.seq).await?;
        let id = cx.request_id();
        rx.send(&Frame::HistoryRequest(proto::HistoryRequest {
            request_id: id,
            conversation_id: ack.conversation_id,
            before_seq: 0,
            limit: 5,
        }))
        .await?;
        let page = rx
            .expect(cx.prompt(), "REQ-SYN-004", "HISTORY_PAGE", |f| match f {
                Frame::HistoryPage(p) if p.request_id == id => Some(p.clone()),
                _ => None,
            })
            .await?;
        check!(
            page.entries.first().is_some_and(|e| e.payload.as_ref() == payload.as_slice()),
            "REQ-E2E-001",
            "history does not return the payload byte for byte"
        );
        tx.close().await?;
        rx.close().await
    })
}

fn room_broadcast(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (a, b, room) = (cx.name("room-a"), cx.name("room-b"), cx.name("room"));
        let (mut pa, _) = cx.session("member-a", &a, "d1").await?;
        let (mut pb, _) = cx.session("member-b", &b, "d1").await?;
        for (p, label) in [(&mut pa, "a"), (&mut pb, "b")] {
            let id = cx.request_id();
            let r = p.request(cx.prompt(), id, Op::RoomJoin(proto::RoomJoin { room_id: room.clone() })).await?;
            check!(r.reason == 0, "REQ-GRP-004", "room_join for member {label} refused: {}", reason_name(r.reason));
            let id = cx.request_id();
            p.send(&Frame::Subscribe(proto::Subscribe { request_id: id, filters: vec![format!("room/{room}")] }))
                .await?;
            let sub = p
                .expect(cx.prompt(), "REQ-ACL-003", "SUBACK", |f| match f {
                    Frame::SubAck(s) if s.request_id == id => Some(s.clone()),
                    _ => None,
                })
                .await?;
            check!(sub.reasons == vec![0], "REQ-ACL-003", "SUBACK for a member's room: {:?}", sub.reasons);
        }
        let topic = format!("room/{room}");
        let frame = Frame::Publish(proto::Publish {
            cid: 0,
            qos: 0,
            topic,
            payload: Bytes::from_static(b"live"),
            ..Default::default()
        });
        pa.send(&frame).await?;
        let d = pb.deliver(cx.prompt(), "REQ-GRP-004").await?;
        let stream = d.stream.unwrap_or_default();
        check!(
            d.qos == 0 && stream.kind == StreamKind::Conversation as i32 && d.payload.as_ref() == b"live",
            "REQ-GRP-004",
            "room message arrived as qos {} on stream kind {} with payload {:?}",
            d.qos,
            stream.kind,
            d.payload
        );
        // The inbox must not hold it: a SYNC of the inbox returns nothing.
        let id = cx.request_id();
        pb.send(&Frame::Sync(proto::Sync {
            request_id: id,
            stream: Some(crate::cx::inbox()),
            after_seq: 0,
            limit: 10,
        }))
        .await?;
        let mut inbox = 0;
        pb.expect(cx.prompt(), "REQ-SYN-002", "SYNC_DONE", |f| match f {
            Frame::Deliver(x) if x.stream.unwrap_or_default().kind == StreamKind::Inbox as i32 => {
                inbox += 1;
                None
            }
            Frame::SyncDone(s) if s.request_id == id => Some(()),
            _ => None,
        })
        .await?;
        check!(inbox == 0, "REQ-GRP-004", "the room message was written to a member's inbox");
        pa.close().await?;
        pb.close().await
    })
}
