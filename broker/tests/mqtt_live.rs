//! Live (telemetry) messages to many MQTT 3.1.1 devices: each message is encoded once and the
//! same bytes go to every device subscribed to its raw topic (`server::LiveDeliver`), while the
//! envelope presentation is still built per device.
// Test code: a panic is how it reports a failure.
#![cfg(feature = "mqtt")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::raw_mqtt::RawMqtt;
use common::{start_with, TestBroker};
use rumqttc::mqttbytes::{v4, QoS};

async fn mqtt_broker() -> TestBroker {
    start_with(|o| o.mqtt_listen = Some("127.0.0.1:0".parse().unwrap())).await
}

async fn device_subscribed(t: &TestBroker, device: &str, filters: &[&str]) -> RawMqtt {
    let (mut dev, ack) = RawMqtt::connect(t, "alice", device, true).await;
    assert_eq!(ack.code, v4::ConnectReturnCode::Success);
    dev.send(v4::Packet::Subscribe(v4::Subscribe {
        pkid: 1,
        filters: filters.iter().map(|f| v4::SubscribeFilter::new((*f).into(), QoS::AtMostOnce)).collect(),
    }))
    .await;
    let v4::Packet::SubAck(ack) = dev.next().await else { panic!("no SUBACK") };
    assert!(ack.return_codes.iter().all(|c| matches!(c, v4::SubscribeReasonCode::Success(_))), "{ack:?}");
    dev
}

async fn next_publish(dev: &mut RawMqtt) -> v4::Publish {
    match dev.next().await {
        v4::Packet::Publish(p) => p,
        other => panic!("expected a PUBLISH, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_telemetry_message_reaches_every_subscriber_once_in_its_presentation() {
    let t = mqtt_broker().await;
    let mut raw = Vec::new();
    for i in 0..3 {
        raw.push(device_subscribed(&t, &format!("panel{i}"), &["device/alice/+/t"]).await);
    }
    // Two filters matching the same topic: still one delivery.
    let mut both = device_subscribed(&t, "panel-both", &["device/alice/+/t", "device/alice/#"]).await;
    let mut envelope = device_subscribed(&t, "panel-env", &["envelope/device/alice/+/t"]).await;
    let (mut sensor, ack) = RawMqtt::connect(&t, "alice", "sensor", true).await;
    assert_eq!(ack.code, v4::ConnectReturnCode::Success);

    // Two messages: each one's shared bytes are its own.
    for (pkid, reading) in [(1u16, "21.5"), (2, "22.0")] {
        let mut p = v4::Publish::new("device/alice/sensor/t", QoS::AtLeastOnce, reading.as_bytes().to_vec());
        p.pkid = pkid;
        sensor.send(v4::Packet::Publish(p)).await;
        assert!(matches!(sensor.next().await, v4::Packet::PubAck(a) if a.pkid == pkid));
        for dev in raw.iter_mut().chain(std::iter::once(&mut both)) {
            let p = next_publish(dev).await;
            assert_eq!(
                (p.topic.as_str(), &p.payload[..], p.qos),
                ("device/alice/sensor/t", reading.as_bytes(), QoS::AtMostOnce)
            );
        }
        let e = next_publish(&mut envelope).await;
        assert_eq!(e.topic, "envelope/device/alice/sensor/t");
        let json: serde_json::Value = serde_json::from_slice(&e.payload).unwrap();
        assert_eq!(
            (json["topic"].as_str(), json["sender_device"].as_str()),
            (Some("device/alice/sensor/t"), Some("sensor"))
        );
        use base64::Engine as _;
        let payload =
            base64::engine::general_purpose::STANDARD.decode(json["payload_base64"].as_str().unwrap()).unwrap();
        assert_eq!(payload, reading.as_bytes());
    }
    // Nothing more for the device with two filters: a PINGREQ's answer comes next.
    both.send(v4::Packet::PingReq).await;
    assert!(matches!(both.next().await, v4::Packet::PingResp), "a telemetry message came twice");
}
