//! A raw MQTT 3.1.1 client for the MQTT tests: packets exactly as a test needs them,
//! including retransmissions and silences a real client only produces after a failure.

use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::{v4, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::TestBroker;

/// Bounds every wait on an external client, so a broken broker fails instead of hanging.
pub const PATIENCE: Duration = Duration::from_secs(20);

fn token(t: &TestBroker, user: &str, device: &str) -> String {
    t.broker.issue_token(user, device, Duration::from_secs(3600)).unwrap()
}

/// A raw MQTT 3.1.1 connection.
pub struct RawMqtt {
    stream: tokio::net::TcpStream,
    input: BytesMut,
}

impl RawMqtt {
    pub async fn connect(t: &TestBroker, user: &str, device: &str, clean: bool) -> (RawMqtt, v4::ConnAck) {
        RawMqtt::connect_with_keep_alive(t, user, device, clean, 60).await
    }

    pub async fn connect_with_keep_alive(
        t: &TestBroker,
        user: &str,
        device: &str,
        clean: bool,
        keep_alive: u16,
    ) -> (RawMqtt, v4::ConnAck) {
        let stream = tokio::net::TcpStream::connect(t.broker.mqtt_addr().unwrap()).await.unwrap();
        let mut raw = RawMqtt { stream, input: BytesMut::new() };
        let mut connect = v4::Connect::new(device);
        connect.clean_session = clean;
        connect.keep_alive = keep_alive;
        connect.login = Some(v4::Login::new(user, token(t, user, device)));
        raw.send(v4::Packet::Connect(connect)).await;
        match raw.next().await {
            v4::Packet::ConnAck(a) => (raw, a),
            other => panic!("{other:?}"),
        }
    }

    pub async fn send(&mut self, p: v4::Packet) {
        let mut buf = BytesMut::new();
        p.write(&mut buf, usize::MAX).unwrap();
        self.stream.write_all(&buf).await.unwrap();
    }

    pub async fn next(&mut self) -> v4::Packet {
        loop {
            match v4::Packet::read(&mut self.input, usize::MAX) {
                Ok(p) => return p,
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("{e}"),
            }
            let n = tokio::time::timeout(PATIENCE, self.stream.read_buf(&mut self.input)).await.unwrap().unwrap();
            assert!(n > 0, "connection closed");
        }
    }

    /// Whether the broker closes the connection (within the test's patience).
    pub async fn closed(&mut self) -> bool {
        let mut buf = [0u8; 64];
        loop {
            match tokio::time::timeout(PATIENCE, self.stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    pub fn qos2(topic: &str, pkid: u16, payload: &str, dup: bool) -> v4::Packet {
        let mut p = v4::Publish::new(topic, QoS::ExactlyOnce, payload.as_bytes().to_vec());
        p.pkid = pkid;
        p.dup = dup;
        v4::Packet::Publish(p)
    }
}
