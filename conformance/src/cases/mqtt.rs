//! MQTT devices (spec/15-mqtt.md), against a broker's MQTT listener (`--mqtt HOST:PORT`).

use super::{broker, Case};
use crate::case::{CaseFuture, Feature, Stop};
use crate::check;
use crate::cx::Cx;
use crate::mqtt::{self, kind, Got, Level, MqttPeer};

pub(super) const CASES: &[Case] = &[
    broker(
        "mqtt.connect.unsupported-level@broker",
        &["REQ-MQT-001"],
        "an MQTT 3.1 CONNECT gets CONNACK 0x01 and is closed",
        unsupported_level,
    )
    .needs(Feature::Mqtt),
    broker(
        "mqtt.connect.bad-token@broker",
        &["REQ-MQT-002"],
        "a wrong password is refused with 0x05 (3.1.1) and 0x87 (5)",
        bad_token,
    )
    .needs(Feature::Mqtt),
    broker(
        "mqtt.connect.identity@broker",
        &["REQ-MQT-003"],
        "a client id or user name other than the token's is refused with the code of each level",
        identity,
    )
    .needs(Feature::Mqtt),
    broker(
        "mqtt.session.takeover@broker",
        &["REQ-MQT-004"],
        "a second connection of the device closes the first with DISCONNECT 0x8E",
        takeover,
    )
    .needs(Feature::Mqtt),
    broker(
        "mqtt.publish.retain@broker",
        &["REQ-MQT-005"],
        "Retain Available is 0 and an MQTT 5 RETAIN gets DISCONNECT 0x9A",
        retain,
    )
    .needs(Feature::Mqtt),
    broker(
        "mqtt.publish.refused@broker",
        &["REQ-MQT-006"],
        "a forbidden PUBLISH gets 0x87 / 0x90 (5) or a plain PUBACK (3.1.1), stays open, and is not delivered",
        publish_refused,
    )
    .needs(Feature::Mqtt),
    broker(
        "mqtt.subscribe.refused@broker",
        &["REQ-MQT-007"],
        "forbidden filters get 0x87 (5) / 0x80 (3.1.1), allowed ones their QoS",
        subscribe_refused,
    )
    .needs(Feature::Mqtt),
    broker(
        "mqtt.qos2.once@broker",
        &["REQ-MQT-009"],
        "a QoS 2 PUBLISH retransmitted before PUBREL is stored and delivered once",
        qos2_once,
    )
    .needs(Feature::Mqtt),
    broker(
        "mqtt.delivery.ack-moves-position@broker",
        &["REQ-MQT-010"],
        "stored messages arrive in order; unacknowledged ones come again after a reconnect, acknowledged ones do not",
        ack_moves_position,
    )
    .needs(Feature::Mqtt),
    broker(
        "mqtt.session.persistent@broker",
        &["REQ-MQT-011"],
        "a persistent session keeps its subscription and gets what arrived while away, with Session Present",
        persistent,
    )
    .needs(Feature::Mqtt),
];

fn mqtt_addr(cx: &Cx) -> Result<&str, Stop> {
    cx.target.declared.mqtt.as_deref().ok_or_else(|| Stop::Unsupported("no MQTT listener declared (--mqtt)".into()))
}

/// Connects with a CONNECT the case shapes; returns the peer and the CONNACK packet.
async fn connect_with(cx: &Cx, label: &str, level: Level, c: &mqtt::Connect) -> Result<(MqttPeer, mqtt::Packet), Stop> {
    let mut peer = MqttPeer::open(mqtt_addr(cx)?, label, level, &cx.transcript).await?;
    peer.send(&mqtt::connect(level, c)).await;
    let ack = peer.expect(cx.prompt(), kind::CONNACK, "REQ-MQT-002").await?;
    Ok((peer, ack))
}

/// The CONNECT of a provisioned device.
async fn device_connect(cx: &Cx, user: &str, device: &str, clean: bool) -> Result<mqtt::Connect, Stop> {
    Ok(mqtt::Connect {
        client_id: device.into(),
        username: Some(user.into()),
        password: Some(cx.token(user, device).await?),
        clean,
        session_expiry: (!clean).then_some(3600),
    })
}

/// A connected device; a refused CONNECT is a harness error (the device was provisioned).
async fn device(
    cx: &Cx,
    label: &str,
    level: Level,
    user: &str,
    device: &str,
    clean: bool,
) -> Result<(MqttPeer, bool), Stop> {
    let c = device_connect(cx, user, device, clean).await?;
    let (peer, ack) = connect_with(cx, label, level, &c).await?;
    match ack.connack() {
        Some((present, 0)) => Ok((peer, present)),
        other => Err(Stop::Harness(format!("the broker refused a provisioned MQTT device: {other:?}"))),
    }
}

async fn subscribed(cx: &Cx, peer: &mut MqttPeer, filters: &[(&str, u8)]) -> Result<Vec<u8>, Stop> {
    peer.send(&mqtt::subscribe(peer.level, 1, filters)).await;
    let ack = peer.expect(cx.prompt(), kind::SUBACK, "REQ-MQT-007").await?;
    Ok(ack.suback_codes(peer.level))
}

/// Publishes at QoS 1 and waits for the PUBACK; its reason code.
async fn publish_q1(
    cx: &Cx,
    peer: &mut MqttPeer,
    topic: &str,
    pkid: u16,
    payload: &[u8],
    req: &'static str,
) -> Result<u8, Stop> {
    peer.send(&mqtt::publish(peer.level, topic, 1, pkid, payload, false, false)).await;
    Ok(peer.expect(cx.prompt(), kind::PUBACK, req).await?.ack_reason())
}

/// The payloads of the next `n` PUBLISHes, acknowledging those with QoS > 0 when `ack`.
async fn receive(cx: &Cx, peer: &mut MqttPeer, n: usize, ack: bool, req: &'static str) -> Result<Vec<String>, Stop> {
    let mut out = Vec::new();
    while out.len() < n {
        let p = peer.expect(cx.wait(10.0), kind::PUBLISH, req).await?;
        let Some((_, qos, pkid, payload)) = p.publish(peer.level) else {
            return Err(Stop::Harness("unreadable PUBLISH".into()));
        };
        if ack && qos == 1 {
            peer.send(&mqtt::ack(kind::PUBACK, pkid)).await;
        }
        out.push(String::from_utf8_lossy(&payload).into_owned());
    }
    Ok(out)
}

/// Whether a PUBLISH arrives within a short wait (for "nothing is delivered").
async fn nothing_arrives(cx: &Cx, peer: &mut MqttPeer) -> Result<Option<String>, Stop> {
    loop {
        match peer.recv(cx.wait(1.0)).await {
            Got::Packet(p) if p.kind == kind::PUBLISH => {
                return Ok(p
                    .publish(peer.level)
                    .map(|(t, _, _, body)| format!("{t}: {}", String::from_utf8_lossy(&body))))
            }
            Got::Packet(_) => continue,
            Got::Closed | Got::Nothing => return Ok(None),
        }
    }
}

fn unsupported_level(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let user = cx.name("mq31");
        let mut c = device_connect(cx, &user, "d1", true).await?;
        c.username = None;
        let (mut peer, ack) = connect_with(cx, "mqtt31", 3, &c).await?;
        check!(
            ack.connack().map(|a| a.1) == Some(0x01),
            "REQ-MQT-001",
            "CONNACK {:?}, expected return code 0x01",
            ack.connack()
        );
        check!(peer.closes(cx.prompt()).await, "REQ-MQT-001", "the connection stayed open after CONNACK 0x01");
        Ok(())
    })
}

fn bad_token(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let user = cx.name("mqbad");
        for (level, code) in [(4u8, 0x05u8), (5, 0x87)] {
            let mut c = device_connect(cx, &user, "d1", true).await?;
            c.password = Some(format!("{}x", c.password.unwrap_or_default()));
            let (mut peer, ack) = connect_with(cx, "bad-token", level, &c).await?;
            let got = ack.connack().map(|a| a.1);
            check!(got == Some(code), "REQ-MQT-002", "level {level}: CONNACK code {got:?}, expected {code:#04x}");
            check!(peer.closes(cx.prompt()).await, "REQ-MQT-002", "level {level}: the connection stayed open");
        }
        Ok(())
    })
}

fn identity(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let user = cx.name("mqid");
        for (level, id_code, user_code) in [(4u8, 0x02u8, 0x04u8), (5, 0x85, 0x86)] {
            let mut c = device_connect(cx, &user, "d1", true).await?;
            c.client_id = "another-device".into();
            let (mut peer, ack) = connect_with(cx, "wrong-client-id", level, &c).await?;
            let got = ack.connack().map(|a| a.1);
            check!(got == Some(id_code), "REQ-MQT-003", "level {level}: client id of another device got {got:?}");
            check!(
                peer.closes(cx.prompt()).await,
                "REQ-MQT-003",
                "level {level}: stayed open after a refused client id"
            );
            let mut c = device_connect(cx, &user, "d1", true).await?;
            c.username = Some(format!("{user}-other"));
            let (mut peer, ack) = connect_with(cx, "wrong-user", level, &c).await?;
            let got = ack.connack().map(|a| a.1);
            check!(got == Some(user_code), "REQ-MQT-003", "level {level}: user name of another user got {got:?}");
            check!(
                peer.closes(cx.prompt()).await,
                "REQ-MQT-003",
                "level {level}: stayed open after a refused user name"
            );
            // The empty client id is the token's device.
            let mut c = device_connect(cx, &user, "d1", true).await?;
            c.client_id = String::new();
            let (_, ack) = connect_with(cx, "empty-client-id", level, &c).await?;
            check!(
                ack.connack().map(|a| a.1) == Some(0),
                "REQ-MQT-003",
                "level {level}: an empty client id was refused"
            );
        }
        Ok(())
    })
}

fn takeover(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let user = cx.name("mqtake");
        let (mut first, _) = device(cx, "first", 5, &user, "d1", true).await?;
        let (_second, _) = device(cx, "second", 5, &user, "d1", true).await?;
        let d = first.expect(cx.prompt(), kind::DISCONNECT, "REQ-MQT-004").await?;
        check!(
            d.disconnect_reason() == 0x8E,
            "REQ-MQT-004",
            "DISCONNECT reason {:#04x}, expected 0x8E",
            d.disconnect_reason()
        );
        check!(first.closes(cx.prompt()).await, "REQ-MQT-004", "the older connection stayed open");
        Ok(())
    })
}

fn retain(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let user = cx.name("mqret");
        let c = device_connect(cx, &user, "d1", true).await?;
        let (mut peer, ack) = connect_with(cx, "retain", 5, &c).await?;
        check!(ack.connack_property_byte(0x25, 0), "REQ-MQT-005", "CONNACK does not announce Retain Available = 0");
        peer.send(&mqtt::publish(5, &format!("device/{user}/d1/t"), 1, 1, b"kept?", true, false)).await;
        let d = peer.expect(cx.prompt(), kind::DISCONNECT, "REQ-MQT-005").await?;
        check!(
            d.disconnect_reason() == 0x9A,
            "REQ-MQT-005",
            "DISCONNECT reason {:#04x}, expected 0x9A",
            d.disconnect_reason()
        );
        Ok(())
    })
}

fn publish_refused(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (alice, bob) = (cx.name("mqpa"), cx.name("mqpb"));
        let (mut watcher, _) = device(cx, "bob-watch", 4, &bob, "w", true).await?;
        let codes = subscribed(cx, &mut watcher, &[(&format!("device/{bob}/#"), 0)]).await?;
        check!(codes == [0], "REQ-MQT-007", "bob's own telemetry filter got {codes:?}");
        let forged = format!("device/{bob}/w/x");
        let (mut v5, _) = device(cx, "alice-v5", 5, &alice, "d5", true).await?;
        let r = publish_q1(cx, &mut v5, &forged, 1, b"forged v5", "REQ-MQT-006").await?;
        check!(r == 0x87, "REQ-MQT-006", "MQTT 5 PUBACK for another user's device topic: {r:#04x}, expected 0x87");
        let r = publish_q1(cx, &mut v5, &format!("nowhere/{alice}"), 2, b"?", "REQ-MQT-006").await?;
        check!(r == 0x90, "REQ-MQT-006", "MQTT 5 PUBACK for an unknown first level: {r:#04x}, expected 0x90");
        let (mut v4, _) = device(cx, "alice-v4", 4, &alice, "d4", true).await?;
        let r = publish_q1(cx, &mut v4, &forged, 1, b"forged v4", "REQ-MQT-006").await?;
        check!(r == 0, "REQ-MQT-006", "a 3.1.1 PUBACK carries no reason code, got {r:#04x}");
        // Both connections are still usable, and nothing forged was delivered.
        let r = publish_q1(cx, &mut v5, &format!("device/{alice}/d5/ok"), 3, b"fine", "REQ-MQT-006").await?;
        check!(r == 0, "REQ-MQT-006", "an allowed PUBLISH after a refusal got {r:#04x}");
        let got = nothing_arrives(cx, &mut watcher).await?;
        check!(got.is_none(), "REQ-MQT-006", "a refused PUBLISH was delivered: {got:?}");
        Ok(())
    })
}

fn subscribe_refused(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (alice, bob) = (cx.name("mqsa"), cx.name("mqsb"));
        for (level, refused) in [(4u8, 0x80u8), (5, 0x87)] {
            let (mut peer, _) = device(cx, "alice", level, &alice, "d1", true).await?;
            let theirs = format!("device/{bob}/#");
            let mine = format!("device/{alice}/#");
            let codes = subscribed(cx, &mut peer, &[(&theirs, 1), (&mine, 1), ("#", 0)]).await?;
            check!(
                codes == [refused, 1, refused],
                "REQ-MQT-007",
                "level {level}: SUBACK {codes:02x?}, expected [{refused:#04x}, 0x01, {refused:#04x}]"
            );
            // Through the refused filter nothing comes: bob's device publishes telemetry.
            let (mut bobdev, _) = device(cx, "bob", 4, &bob, "w", true).await?;
            let r = publish_q1(cx, &mut bobdev, &format!("device/{bob}/w/t"), 1, b"bob's", "REQ-MQT-007").await?;
            check!(r == 0, "REQ-MQT-007", "bob's own telemetry was refused ({r:#04x})");
            let got = nothing_arrives(cx, &mut peer).await?;
            check!(got.is_none(), "REQ-MQT-007", "level {level}: delivered through a refused filter: {got:?}");
        }
        Ok(())
    })
}

fn qos2_once(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (alice, bob) = (cx.name("mqqa"), cx.name("mqqb"));
        let (mut rx, _) = device(cx, "bob", 4, &bob, "d1", true).await?;
        let codes = subscribed(cx, &mut rx, &[(&format!("user/{bob}"), 1)]).await?;
        check!(codes == [1], "REQ-MQT-007", "bob's inbox filter got {codes:?}");
        let (mut tx, _) = device(cx, "alice", 4, &alice, "d1", false).await?;
        let topic = format!("user/{bob}");
        tx.send(&mqtt::publish(4, &topic, 2, 9, b"exactly once", false, false)).await;
        let rec = tx.expect(cx.prompt(), kind::PUBREC, "REQ-MQT-009").await?;
        check!(rec.pkid() == 9, "REQ-MQT-009", "PUBREC for {} instead of 9", rec.pkid());
        tx.send(&mqtt::publish(4, &topic, 2, 9, b"exactly once", false, true)).await;
        let rec = tx.expect(cx.prompt(), kind::PUBREC, "REQ-MQT-009").await?;
        check!(rec.pkid() == 9, "REQ-MQT-009", "second PUBREC for {} instead of 9", rec.pkid());
        tx.send(&mqtt::ack(6, 9)).await;
        tx.expect(cx.prompt(), kind::PUBCOMP, "REQ-MQT-009").await?;
        let r = publish_q1(cx, &mut tx, &topic, 10, b"marker", "REQ-MQT-009").await?;
        check!(r == 0, "REQ-MQT-009", "the marker was refused ({r:#04x})");
        let got = receive(cx, &mut rx, 2, true, "REQ-MQT-009").await?;
        check!(got == ["exactly once", "marker"], "REQ-MQT-009", "bob received {got:?}");
        Ok(())
    })
}

fn ack_moves_position(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (alice, bob) = (cx.name("mqaa"), cx.name("mqab"));
        let (mut rx, _) = device(cx, "bob-1", 4, &bob, "d1", false).await?;
        let codes = subscribed(cx, &mut rx, &[(&format!("user/{bob}"), 1)]).await?;
        check!(codes == [1], "REQ-MQT-007", "bob's inbox filter got {codes:?}");
        let (mut tx, _) = device(cx, "alice", 4, &alice, "d1", true).await?;
        for (i, m) in ["m1", "m2", "m3"].iter().enumerate() {
            publish_q1(
                cx,
                &mut tx,
                &format!("user/{bob}"),
                u16::try_from(i + 1).unwrap_or(1),
                m.as_bytes(),
                "REQ-MQT-010",
            )
            .await?;
        }
        // Acknowledge only the first.
        let mut got = Vec::new();
        for i in 0..3 {
            let p = rx.expect(cx.wait(10.0), kind::PUBLISH, "REQ-MQT-010").await?;
            let Some((_, qos, pkid, payload)) = p.publish(4) else {
                return Err(Stop::Harness("unreadable PUBLISH".into()));
            };
            check!(qos == 1, "REQ-MQT-010", "delivered at QoS {qos}, granted 1");
            if i == 0 {
                rx.send(&mqtt::ack(kind::PUBACK, pkid)).await;
            }
            got.push(String::from_utf8_lossy(&payload).into_owned());
        }
        check!(got == ["m1", "m2", "m3"], "REQ-MQT-010", "delivered {got:?}, expected m1, m2, m3 in order");
        rx.send(&mqtt::disconnect()).await;
        check!(rx.closes(cx.prompt()).await, "REQ-MQT-010", "the broker kept the connection after DISCONNECT");
        let (mut rx, present) = device(cx, "bob-2", 4, &bob, "d1", false).await?;
        check!(present, "REQ-MQT-011", "Session Present = 0 on reconnecting a persistent session");
        let again = receive(cx, &mut rx, 2, true, "REQ-MQT-010").await?;
        check!(
            again == ["m2", "m3"],
            "REQ-MQT-010",
            "after reconnecting got {again:?}, expected the unacknowledged m2, m3"
        );
        let more = nothing_arrives(cx, &mut rx).await?;
        check!(more.is_none(), "REQ-MQT-010", "an acknowledged message came again: {more:?}");
        Ok(())
    })
}

fn persistent(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (alice, bob) = (cx.name("mqka"), cx.name("mqkb"));
        let (mut rx, present) = device(cx, "bob-1", 5, &bob, "d1", false).await?;
        check!(!present, "REQ-MQT-011", "a new session reported Session Present = 1");
        let codes = subscribed(cx, &mut rx, &[(&format!("user/{bob}"), 1)]).await?;
        check!(codes == [1], "REQ-MQT-007", "bob's inbox filter got {codes:?}");
        rx.send(&mqtt::disconnect()).await;
        check!(rx.closes(cx.prompt()).await, "REQ-MQT-011", "the broker kept the connection after DISCONNECT");
        let (mut tx, _) = device(cx, "alice", 5, &alice, "d1", true).await?;
        for (i, m) in ["away 1", "away 2"].iter().enumerate() {
            let r = publish_q1(
                cx,
                &mut tx,
                &format!("user/{bob}"),
                u16::try_from(i + 1).unwrap_or(1),
                m.as_bytes(),
                "REQ-MQT-011",
            )
            .await?;
            check!(r == 0, "REQ-MQT-011", "a message to bob was refused ({r:#04x})");
        }
        let (mut rx, present) = device(cx, "bob-2", 5, &bob, "d1", false).await?;
        check!(present, "REQ-MQT-011", "Session Present = 0 on reconnecting a persistent session");
        let got = receive(cx, &mut rx, 2, true, "REQ-MQT-011").await?;
        check!(got == ["away 1", "away 2"], "REQ-MQT-011", "after reconnecting got {got:?}");
        Ok(())
    })
}
