//! Shared setup for the broker's integration tests: a broker on 127.0.0.1:0 with a
//! throwaway data directory, and clients with tokens it minted.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

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
