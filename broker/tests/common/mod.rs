//! Shared setup for the broker's integration tests: a broker on 127.0.0.1:0 with a
//! throwaway data directory, and clients with tokens it minted.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

#[cfg(feature = "mqtt")]
pub mod raw_mqtt;

use tern_broker::client::{Client, ClientOptions, Incoming};
use tern_broker::{Broker, BrokerOptions};
use tern_codec::proto;

pub struct TestBroker {
    pub broker: Broker,
    pub dir: tempfile::TempDir,
}

pub async fn start() -> TestBroker {
    start_with(|_| {}).await
}

pub async fn start_with(tune: impl FnOnce(&mut BrokerOptions)) -> TestBroker {
    let dir = tempfile::tempdir().unwrap();
    let mut options = BrokerOptions::new("127.0.0.1:0".parse().unwrap(), dir.path().to_path_buf());
    tune(&mut options);
    let broker = Broker::start(options).await.unwrap();
    TestBroker { broker, dir }
}

impl TestBroker {
    pub fn options(&self, user: &str, device: &str) -> ClientOptions {
        let token = self.broker.issue_token(user, device, Duration::from_secs(3600)).unwrap();
        ClientOptions::new(self.broker.local_addr(), device, &token)
    }

    pub async fn client(&self, user: &str, device: &str) -> Client {
        Client::connect(self.options(user, device)).await.unwrap()
    }
}

/// The next message, skipping other events.
pub async fn next_message(c: &mut Client) -> proto::Deliver {
    loop {
        match c.next().await.expect("client stopped") {
            Incoming::Message(m) => return m,
            _ => continue,
        }
    }
}

/// The next `n` messages' payloads, as strings.
pub async fn payloads(c: &mut Client, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(String::from_utf8_lossy(&next_message(c).await.payload).into_owned());
    }
    out
}

/// Sends a REQUEST and waits for its RESPONSE, skipping other events.
pub async fn request(c: &mut Client, op: proto::request::Op) -> proto::Response {
    let id = c.send(tern_codec::Frame::Request(proto::Request { request_id: 0, op: Some(op) })).await.unwrap();
    loop {
        if let Some(Incoming::Frame(f)) = c.next().await {
            if let tern_codec::Frame::Response(r) = *f {
                if r.request_id == id {
                    return r;
                }
            }
        }
    }
}

/// A raw protocol connection, for sending bytes no well-behaved client would.
pub struct Raw {
    pub stream: tokio::net::TcpStream,
    input: bytes::BytesMut,
}

impl Raw {
    /// Connects and sends a valid CONNECT for `user`'s `device` with `keepalive_secs`.
    pub async fn connect(t: &TestBroker, user: &str, device: &str, keepalive_secs: u32) -> Raw {
        use tokio::io::AsyncWriteExt;
        let token = t.broker.issue_token(user, device, Duration::from_secs(60)).unwrap();
        let mut stream = tokio::net::TcpStream::connect(t.broker.local_addr()).await.unwrap();
        let connect = proto::Connect {
            versions: vec![1],
            token: token.into_bytes().into(),
            device_id: device.into(),
            keepalive_secs,
            ..Default::default()
        };
        let mut out = bytes::BytesMut::new();
        tern_codec::encode_frame(&tern_codec::Frame::Connect(connect), &mut out).unwrap();
        stream.write_all(&out).await.unwrap();
        Raw { stream, input: bytes::BytesMut::new() }
    }

    /// The next frame from the broker, or `None` once it has closed the connection.
    pub async fn next(&mut self) -> Option<tern_codec::Frame> {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(f) = tern_codec::decode_frame(&mut self.input).unwrap() {
                return Some(f);
            }
            let mut buf = [0u8; 1024];
            let n = self.stream.read(&mut buf).await.unwrap();
            if n == 0 {
                return None;
            }
            self.input.extend_from_slice(&buf[..n]);
        }
    }

    /// Every frame until the broker closes the connection.
    pub async fn rest(&mut self) -> Vec<tern_codec::Frame> {
        let mut frames = Vec::new();
        while let Some(f) = self.next().await {
            frames.push(f);
        }
        frames
    }
}
