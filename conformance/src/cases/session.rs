//! Handshake, version negotiation, auth, resumption, takeover, keepalive and closing, against a
//! broker.

use bytes::Bytes;
use tern_codec::{proto, Frame, ReasonCode};

use super::{broker, Case};
use crate::case::{CaseFuture, CaseResult, Stop};
use crate::check;
use crate::cx::Cx;
use crate::peer::{reason_name, Event};
use crate::raw::{self, ty, Body};

pub(super) const CASES: &[Case] = &[
    broker(
        "handshake.first-frame-not-connect@broker",
        &["REQ-HSK-001", "REQ-ERR-003"],
        "a connection that opens with PING is closed with PROTOCOL_ERROR",
        first_not_connect,
    ),
    broker(
        "handshake.connect-timeout@broker",
        &["REQ-HSK-018"],
        "a connection on which no CONNECT arrives is closed with CONNECT_TIMEOUT within 10 s",
        connect_timeout,
    ),
    broker(
        "handshake.second-connect@broker",
        &["REQ-HSK-002"],
        "a second CONNECT on a connection is refused with PROTOCOL_ERROR",
        second_connect,
    ),
    broker(
        "handshake.version.highest-common@broker",
        &["REQ-HSK-003"],
        "versions [7, 1] negotiate version 1",
        version_common,
    ),
    broker(
        "handshake.version.none-in-common@broker",
        &["REQ-HSK-003"],
        "versions [7] are refused with CONNACK UNSUPPORTED_VERSION and a close",
        version_none,
    ),
    broker(
        "handshake.auth.bad-token@broker",
        &["REQ-HSK-005"],
        "a token that does not verify is refused with CONNACK BAD_TOKEN and a close",
        bad_token,
    ),
    broker(
        "session.resume@broker",
        &["REQ-HSK-011"],
        "a reconnect naming the session resumes it; an unknown session id starts a fresh one",
        resume,
    ),
    broker(
        "session.resume-while-live@broker",
        &["REQ-HSK-011", "REQ-HSK-013"],
        "a reconnect naming the session while its old link is still open takes it over and resumes it",
        resume_while_live,
    ),
    broker(
        "session.takeover@broker",
        &["REQ-HSK-013", "REQ-HSK-014"],
        "a second connection of the same device takes the session over: the first gets SESSION_TAKEN_OVER",
        takeover,
    ),
    broker(
        "keepalive.ping-pong@broker",
        &["REQ-KAL-003"],
        "PING is answered with PONG carrying the same nonce",
        ping_pong,
    ),
    broker(
        "keepalive.timeout@broker",
        &["REQ-KAL-002"],
        "a silent client is closed with KEEPALIVE_TIMEOUT after 1.5 keepalive intervals",
        keepalive_timeout,
    ),
    broker(
        "close.disconnect-is-last@broker",
        &["REQ-HSK-014"],
        "after the client's DISCONNECT the broker sends nothing and closes",
        disconnect_is_last,
    ),
    broker(
        "errors.unknown-code-by-class@broker",
        &["REQ-ERR-001"],
        "a DISCONNECT carrying an unassigned code of an assigned range (0xCF) is treated by its class, not refused",
        unknown_code,
    ),
    broker(
        "limits.granted-window@broker",
        &["REQ-LIM-001", "REQ-PKG-008"],
        "CONNACK grants a receive window of at least 32 and a package of 32 members is stored",
        granted_window,
    ),
];

fn first_not_connect(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let mut p = cx.open("client").await?;
        p.send_raw(&raw::ping(5)).await?;
        p.expect_close(cx.prompt(), "REQ-HSK-001", ReasonCode::ProtocolError).await
    })
}

fn connect_timeout(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let mut p = cx.open("silent").await?;
        // 10 s, plus 2 s for the broker's timer granularity.
        p.expect_close(cx.wait(12.0), "REQ-HSK-018", ReasonCode::ConnectTimeout).await
    })
}

fn second_connect(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let user = cx.name("hsk");
        let connect = cx.connect_frame(&user, "d1").await?;
        let (mut p, _) = cx.session_with("client", connect.clone()).await?;
        p.send(&Frame::Connect(connect)).await?;
        p.expect_close(cx.prompt(), "REQ-HSK-002", ReasonCode::ProtocolError).await
    })
}

fn version_common(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let mut connect = cx.connect_frame(&cx.name("ver"), "d1").await?;
        connect.versions = vec![7, 1];
        let (mut p, ack) = cx.session_with("client", connect).await?;
        check!(ack.version == 1, "REQ-HSK-003", "CONNACK chose version {}, the only common one is 1", ack.version);
        p.close().await
    })
}

fn version_none(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let mut connect = cx.connect_frame(&cx.name("ver"), "d1").await?;
        connect.versions = vec![7];
        refused_connect(cx, connect, "REQ-HSK-003", ReasonCode::UnsupportedVersion).await
    })
}

/// Sends `connect` on a new connection and expects CONNACK with `reason`, then the close.
async fn refused_connect(cx: &Cx, connect: proto::Connect, req: &'static str, reason: ReasonCode) -> CaseResult {
    let mut p = cx.open("client").await?;
    p.send(&Frame::Connect(connect)).await?;
    let ack = p.connack(cx.prompt(), req).await?;
    check!(ack.reason == reason as u32, req, "CONNACK reason {}, expected {reason}", reason_name(ack.reason));
    p.expect_eof(cx.prompt()).await
}

fn bad_token(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let mut connect = cx.connect_frame(&cx.name("auth"), "d1").await?;
        connect.token = Bytes::from_static(b"not-a-token");
        refused_connect(cx, connect, "REQ-HSK-005", ReasonCode::BadToken).await
    })
}

fn resume(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let user = cx.name("res");
        let (mut first, ack) = cx.session("first", &user, "d1").await?;
        check!(!ack.session_present, "REQ-HSK-011", "a fresh session reported session_present");
        check!(!ack.session_id.is_empty(), "REQ-HSK-011", "CONNACK carried no session_id");
        first.shutdown().await;
        let mut connect = cx.connect_frame(&user, "d1").await?;
        connect.resume_session_id = ack.session_id.clone();
        let (mut second, ack2) = cx.session_with("resumed", connect.clone()).await?;
        check!(
            ack2.session_present,
            "REQ-HSK-011",
            "resuming the session the broker just held gave session_present false"
        );
        second.shutdown().await;
        connect.resume_session_id = Bytes::from_static(b"no-such-session");
        let (mut third, ack3) = cx.session_with("unknown-id", connect).await?;
        check!(!ack3.session_present, "REQ-HSK-011", "an unknown resume_session_id gave session_present true");
        third.close().await
    })
}

fn resume_while_live(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let user = cx.name("rwl");
        let (mut old, ack) = cx.session("old-link", &user, "d1").await?;
        // The old link stays open, as a dead NAT binding would look to the broker.
        let mut connect = cx.connect_frame(&user, "d1").await?;
        connect.resume_session_id = ack.session_id.clone();
        let (mut new, ack2) = cx.session_with("new-link", connect).await?;
        check!(ack2.session_present, "REQ-HSK-011", "the session the old link still held was not resumed");
        check!(ack2.session_id == ack.session_id, "REQ-HSK-011", "the resumed session has another id");
        old.expect_close(cx.prompt(), "REQ-HSK-013", ReasonCode::SessionTakenOver).await?;
        new.close().await
    })
}

fn takeover(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let user = cx.name("take");
        let (mut old, _) = cx.session("old", &user, "d1").await?;
        let (mut new, _) = cx.session("new", &user, "d1").await?;
        old.expect_close(cx.prompt(), "REQ-HSK-013", ReasonCode::SessionTakenOver).await?;
        new.ping(cx.prompt(), "REQ-HSK-013", 77).await?;
        new.close().await
    })
}

fn ping_pong(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (mut p, _) = cx.session("client", &cx.name("kal"), "d1").await?;
        let nonce = cx.seed ^ 0x5eed_0000_1234;
        p.send_raw(&raw::ping(nonce)).await?;
        p.auto_pong = false;
        p.expect(cx.prompt(), "REQ-KAL-003", "PONG", |f| match f {
            Frame::Pong(q) => Some(q.nonce),
            _ => None,
        })
        .await
        .and_then(|got| {
            if got == nonce {
                Ok(())
            } else {
                Err(crate::violated!("REQ-KAL-003", "PONG nonce {got}, PING nonce {nonce}"))
            }
        })?;
        p.close().await
    })
}

fn keepalive_timeout(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let mut connect = cx.connect_frame(&cx.name("kal"), "d1").await?;
        connect.keepalive_secs = 5;
        let (mut p, ack) = cx.session_with("silent", connect).await?;
        let limit = f64::from(ack.keepalive_secs.max(1)) * 1.5;
        // Allowed: 1.5 intervals, plus 2 s for the broker's timer granularity.
        p.expect_close(cx.wait(limit + 2.0), "REQ-KAL-002", ReasonCode::KeepaliveTimeout).await
    })
}

fn disconnect_is_last(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (mut p, _) = cx.session("client", &cx.name("cls"), "d1").await?;
        let d = proto::Disconnect { reason: ReasonCode::NormalDisconnect as u32, ..Default::default() };
        p.send(&Frame::Disconnect(d)).await?;
        p.expect_eof(cx.prompt()).await
    })
}

fn unknown_code(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (mut p, _) = cx.session("client", &cx.name("err"), "d1").await?;
        p.send_raw(&Body::new().uint(1, 0xCF).frame(ty::DISCONNECT)).await?;
        match p.recv(cx.prompt()).await {
            Event::Closed => Ok(()),
            Event::Frame(Frame::Disconnect(d)) => Err(crate::violated!(
                "REQ-ERR-001",
                "the broker refused a DISCONNECT with code 0xCF (Server class) with {}",
                reason_name(d.reason)
            )),
            Event::Frame(f) => {
                Err(crate::violated!("REQ-HSK-014", "{} sent after the client's DISCONNECT", f.frame_type().name()))
            }
            Event::Silent => {
                Err(crate::violated!("REQ-HSK-014", "connection still open after the client's DISCONNECT"))
            }
            Event::Garbage(e) => Err(Stop::Violation { req: "REQ-ERR-001", detail: e }),
        }
    })
}

fn granted_window(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (sender, recipient) = (cx.name("win-s"), cx.name("win-r"));
        let (mut p, ack) = cx.session("sender", &sender, "d1").await?;
        check!(ack.receive_window >= 32, "REQ-LIM-001", "CONNACK receive_window {} is below 32", ack.receive_window);
        let topic = format!("user/{recipient}");
        let mut bytes = Vec::new();
        for i in 0..32u64 {
            let package = Body::new().uint(1, 1).uint(2, i).uint(3, 32);
            // Canonical: index 0 is the default and is left out.
            let package = if i == 0 { Body::new().uint(1, 1).uint(3, 32) } else { package };
            bytes.extend(
                raw::publish(i + 1, 2, &topic, format!("member {i}").as_bytes()).msg(5, package).frame(ty::PUBLISH),
            );
        }
        p.send_raw(&bytes).await?;
        for cid in 1..=32 {
            let a = p.puback(cx.prompt(), cid).await?;
            check!(
                a.reason == ReasonCode::Success as u32,
                "REQ-PKG-008",
                "member cid {cid} of a 32-member package got {}",
                reason_name(a.reason)
            );
        }
        p.close().await
    })
}
