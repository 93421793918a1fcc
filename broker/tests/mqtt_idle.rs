//! Idle MQTT connections wait without a task (`broker/src/mqtt/park.rs`): a device that has
//! nothing in progress is parked, and everything that concerns it — its own packets, messages
//! for it, its keep-alive running out, a takeover, shutdown — brings it back.
// Test code: a panic is how it reports a failure.
#![cfg(feature = "mqtt")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::raw_mqtt::{RawMqtt, PATIENCE};
use common::{start_with, TestBroker};
use rumqttc::mqttbytes::{v4, QoS};

async fn mqtt_broker() -> TestBroker {
    start_with(|o| o.mqtt_listen = Some("127.0.0.1:0".parse().unwrap())).await
}

/// Waits until exactly `n` MQTT connections are parked (parking happens on the broker's own
/// schedule: at once after CONNACK, or after a quiet second).
async fn until_parked(t: &TestBroker, n: u64) {
    let parked = tokio::time::timeout(PATIENCE, t.broker.until_mqtt_parked(n)).await;
    assert!(parked.is_ok(), "parked: {} (expected {n})", t.broker.mqtt_parked());
}

async fn subscribe(dev: &mut RawMqtt, filter: &str) {
    dev.send(v4::Packet::Subscribe(v4::Subscribe {
        pkid: 1,
        filters: vec![v4::SubscribeFilter::new(filter.into(), QoS::AtLeastOnce)],
    }))
    .await;
    assert!(matches!(dev.next().await, v4::Packet::SubAck(_)));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_parked_device_wakes_for_its_own_packets_and_for_messages_to_it() {
    let t = mqtt_broker().await;
    let (mut dev, ack) = RawMqtt::connect(&t, "alice", "sensor1", true).await;
    assert_eq!(ack.code, v4::ConnectReturnCode::Success);
    // Parked as soon as CONNACK is out; SUBSCRIBE revives it; a quiet second parks it again.
    until_parked(&t, 1).await;
    subscribe(&mut dev, "user/alice").await;
    until_parked(&t, 1).await;

    // Its own packet: PINGREQ answered.
    dev.send(v4::Packet::PingReq).await;
    assert!(matches!(dev.next().await, v4::Packet::PingResp));
    until_parked(&t, 1).await;

    // A message for it: the router's news revives it, the message arrives, its PUBACK counts.
    let bob = t.client("bob", "laptop").await;
    bob.publish("user/alice", "while parked").await.unwrap();
    let v4::Packet::Publish(p) = dev.next().await else { panic!("no PUBLISH") };
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("user/alice", &b"while parked"[..]));
    dev.send(v4::Packet::PubAck(v4::PubAck::new(p.pkid))).await;
    until_parked(&t, 1).await;

    // Acknowledged while it was active: a new connection of the same device does not get it
    // again, and taking the device over closes the parked one.
    let (mut again, ack) = RawMqtt::connect(&t, "alice", "sensor1", false).await;
    assert_eq!(ack.code, v4::ConnectReturnCode::Success);
    assert!(dev.closed().await, "the parked connection was not closed by the takeover");
    subscribe(&mut again, "user/alice").await;
    again.send(v4::Packet::PingReq).await;
    assert!(matches!(again.next().await, v4::Packet::PingResp), "a message was delivered twice");
}

#[tokio::test(flavor = "multi_thread")]
async fn parked_devices_time_out_and_are_closed_by_shutdown() {
    let t = mqtt_broker().await;
    let (mut silent, _) = RawMqtt::connect_with_keep_alive(&t, "alice", "sensor1", true, 1).await;
    let (mut quiet, _) = RawMqtt::connect(&t, "alice", "sensor2", true).await;
    until_parked(&t, 2).await;
    assert!(silent.closed().await, "a parked device silent past 1.5 × keep alive stayed connected");
    until_parked(&t, 1).await;
    assert_eq!(t.broker.connections(), 1);
    tokio::time::timeout(PATIENCE, t.broker.shutdown()).await.expect("shutdown waited on a parked device").unwrap();
    assert!(quiet.closed().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn many_parked_devices_each_get_their_own_message_once() {
    let t = mqtt_broker().await;
    let n = 200;
    let mut devices = Vec::new();
    for i in 0..n {
        let (mut dev, _) = RawMqtt::connect(&t, &format!("u{i}"), "d", true).await;
        subscribe(&mut dev, &format!("user/u{i}")).await;
        devices.push(dev);
    }
    until_parked(&t, n).await;
    // Slots are reused as devices wake and park again: each message must still reach its
    // own device, and only that one.
    let sender = t.client("sender", "s").await;
    for round in 0..2 {
        for i in 0..n {
            sender.publish(&format!("user/u{i}"), format!("{round} for u{i}")).await.unwrap();
        }
        for (i, dev) in devices.iter_mut().enumerate() {
            let v4::Packet::Publish(p) = dev.next().await else { panic!("no PUBLISH") };
            assert_eq!(p.payload, format!("{round} for u{i}").as_bytes());
            dev.send(v4::Packet::PubAck(v4::PubAck::new(p.pkid))).await;
        }
        until_parked(&t, n).await;
    }
    for dev in &mut devices {
        dev.send(v4::Packet::PingReq).await;
        assert!(matches!(dev.next().await, v4::Packet::PingResp), "a message was delivered twice");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_qos2_exchange_spans_a_park_without_a_second_copy() {
    let t = mqtt_broker().await;
    let mut bob = t.client("bob", "laptop").await;
    let (mut dev, _) = RawMqtt::connect(&t, "alice", "sensor1", false).await;
    until_parked(&t, 1).await;
    dev.send(RawMqtt::qos2("user/bob", 7, "once", false)).await;
    assert!(matches!(dev.next().await, v4::Packet::PubRec(r) if r.pkid == 7));
    // PUBREC out, PUBREL not yet in: the identifier is held in the store, not in the parked
    // connection, so a retransmission after the park is recognised.
    until_parked(&t, 1).await;
    dev.send(RawMqtt::qos2("user/bob", 7, "once", true)).await;
    assert!(matches!(dev.next().await, v4::Packet::PubRec(r) if r.pkid == 7));
    until_parked(&t, 1).await;
    dev.send(v4::Packet::PubRel(v4::PubRel { pkid: 7 })).await;
    assert!(matches!(dev.next().await, v4::Packet::PubComp(r) if r.pkid == 7));
    let m = common::next_message(&mut bob).await;
    assert_eq!(&m.payload[..], b"once");
    // Released while active; the identifier now carries a new message, after another park.
    until_parked(&t, 1).await;
    dev.send(RawMqtt::qos2("user/bob", 7, "second", false)).await;
    assert!(matches!(dev.next().await, v4::Packet::PubRec(r) if r.pkid == 7));
    let m = common::next_message(&mut bob).await;
    assert_eq!(&m.payload[..], b"second", "the first message was delivered twice");
}
