//! The context a broker-mode case runs in: the target, the transcript, the seed, unique names
//! for this run, and the client roles the runner plays (each one a [`Peer`]).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tern_codec::proto::{self, request::Op, StreamKind, StreamRef};
use tern_codec::{Frame, ReasonCode};

use crate::case::Stop;
use crate::peer::{reason_name, Peer};
use crate::target::Target;
use crate::transcript::Transcript;

/// The receive window the runner announces for its clients.
pub const CLIENT_WINDOW: u32 = 64;

/// Everything a broker-mode case needs.
pub struct Cx {
    /// The broker under test.
    pub target: Arc<Target>,
    /// This case's transcript.
    pub transcript: Transcript,
    /// The run's seed (for randomised cases); printed in every report.
    pub seed: u64,
    /// Unique suffix for user, group and room names of this case run.
    pub tag: String,
    /// `--timeout-scale`.
    pub scale: f64,
    next_request: AtomicU32,
}

impl Cx {
    /// A context for one run of one case.
    pub fn new(target: Arc<Target>, seed: u64, tag: String, scale: f64) -> Cx {
        Cx { target, transcript: Transcript::default(), seed, tag, scale, next_request: AtomicU32::new(1) }
    }

    /// `secs` seconds, scaled by `--timeout-scale`.
    pub fn wait(&self, secs: f64) -> Duration {
        Duration::from_secs_f64(secs * self.scale)
    }

    /// The default wait for an answer that should come promptly.
    pub fn prompt(&self) -> Duration {
        self.wait(5.0)
    }

    /// A name unique to this case run (users, groups, rooms never collide between cases).
    pub fn name(&self, base: &str) -> String {
        format!("{base}-{}", self.tag)
    }

    /// A fresh request id.
    pub fn request_id(&self) -> u32 {
        self.next_request.fetch_add(1, Ordering::Relaxed)
    }

    /// Opens a transport connection, sending nothing.
    pub async fn open(&self, label: &str) -> Result<Peer, Stop> {
        self.target.open(label, &self.transcript).await
    }

    /// A token for `user`'s `device`.
    pub async fn token(&self, user: &str, device: &str) -> Result<String, Stop> {
        self.target.provision.token(user, device).await
    }

    /// The CONNECT the runner sends unless a case changes it.
    pub async fn connect_frame(&self, user: &str, device: &str) -> Result<proto::Connect, Stop> {
        Ok(proto::Connect {
            versions: vec![1],
            token: Bytes::from(self.token(user, device).await?),
            device_id: device.to_string(),
            keepalive_secs: 60,
            max_message_size: 256 * 1024,
            receive_window: CLIENT_WINDOW,
            resume_session_id: Bytes::new(),
        })
    }

    /// Opens a session for `user`'s `device`: CONNECT, then a successful CONNACK.
    pub async fn session(&self, label: &str, user: &str, device: &str) -> Result<(Peer, proto::ConnAck), Stop> {
        let connect = self.connect_frame(user, device).await?;
        self.session_with(label, connect).await
    }

    /// Connects `user`'s `device` once and closes, so the broker knows the device: a device's
    /// inbox sync point starts at the inbox's latest seq when it first connects (spec 8.1), so
    /// a case that sends to an offline device registers it first.
    pub async fn register(&self, user: &str, device: &str) -> Result<(), Stop> {
        let (mut p, _) = self.session("register", user, device).await?;
        p.close().await?;
        // The close is processed when the broker reads it; a round trip on a new connection of
        // another device proves nothing, so wait for the broker to close this one.
        p.expect_eof(self.prompt()).await
    }

    /// Opens a session with a given CONNECT.
    pub async fn session_with(&self, label: &str, connect: proto::Connect) -> Result<(Peer, proto::ConnAck), Stop> {
        let mut peer = self.open(label).await?;
        peer.send(&Frame::Connect(connect)).await?;
        let ack = peer.connack(self.prompt(), "REQ-HSK-011").await?;
        if ack.reason != ReasonCode::Success as u32 {
            return Err(Stop::Harness(format!(
                "the broker refused a provisioned session: CONNACK {}",
                reason_name(ack.reason)
            )));
        }
        Ok((peer, ack))
    }
}

/// The connected user's inbox stream.
pub fn inbox() -> StreamRef {
    StreamRef { kind: StreamKind::Inbox as i32, id: 0 }
}

/// A conversation stream.
pub fn conversation(id: u64) -> StreamRef {
    StreamRef { kind: StreamKind::Conversation as i32, id }
}

/// A QoS 2 PUBLISH.
pub fn publish(cid: u64, topic: &str, payload: &[u8]) -> Frame {
    Frame::Publish(proto::Publish {
        cid,
        qos: 2,
        topic: topic.to_string(),
        payload: Bytes::copy_from_slice(payload),
        ..Default::default()
    })
}

impl Peer {
    /// Waits for CONNACK; its absence is a violation of `req`.
    pub async fn connack(&mut self, wait: Duration, req: &'static str) -> Result<proto::ConnAck, Stop> {
        self.expect(wait, req, "CONNACK", |f| match f {
            Frame::ConnAck(a) => Some(a.clone()),
            _ => None,
        })
        .await
    }

    /// Sends a QoS 2 PUBLISH and returns its PUBACK.
    pub async fn publish(
        &mut self,
        wait: Duration,
        cid: u64,
        topic: &str,
        payload: &[u8],
    ) -> Result<proto::PubAck, Stop> {
        self.send(&publish(cid, topic, payload)).await?;
        self.puback(wait, cid).await
    }

    /// Waits for the PUBACK of `cid`.
    pub async fn puback(&mut self, wait: Duration, cid: u64) -> Result<proto::PubAck, Stop> {
        self.expect(wait, "REQ-QOS-005", &format!("PUBACK for cid {cid}"), |f| match f {
            Frame::PubAck(a) if a.cid == cid => Some(*a),
            _ => None,
        })
        .await
    }

    /// Sends a PUBLISH that must be stored, returning its PUBACK.
    pub async fn publish_ok(
        &mut self,
        wait: Duration,
        cid: u64,
        topic: &str,
        payload: &[u8],
    ) -> Result<proto::PubAck, Stop> {
        let ack = self.publish(wait, cid, topic, payload).await?;
        if ack.reason != ReasonCode::Success as u32 {
            return Err(Stop::Harness(format!(
                "setup PUBLISH cid {cid} to {topic} refused: {}",
                reason_name(ack.reason)
            )));
        }
        Ok(ack)
    }

    /// Sends a REQUEST and returns its RESPONSE.
    pub async fn request(&mut self, wait: Duration, request_id: u32, op: Op) -> Result<proto::Response, Stop> {
        self.send(&Frame::Request(proto::Request { request_id, op: Some(op) })).await?;
        self.expect(wait, "REQ-GRP-007", &format!("RESPONSE to request {request_id}"), |f| match f {
            Frame::Response(r) if r.request_id == request_id => Some(r.clone()),
            _ => None,
        })
        .await
    }

    /// Sends a REQUEST that must succeed (setup).
    pub async fn request_ok(&mut self, wait: Duration, request_id: u32, op: Op) -> Result<proto::Response, Stop> {
        let r = self.request(wait, request_id, op).await?;
        if r.reason != ReasonCode::Success as u32 {
            return Err(Stop::Harness(format!("setup request {request_id} refused: {}", reason_name(r.reason))));
        }
        Ok(r)
    }

    /// The next DELIVER on any stream, attributed to `req` if it does not come.
    pub async fn deliver(&mut self, wait: Duration, req: &'static str) -> Result<proto::Deliver, Stop> {
        self.expect(wait, req, "DELIVER", |f| match f {
            Frame::Deliver(d) => Some(d.clone()),
            _ => None,
        })
        .await
    }

    /// The next DELIVER that is not a retransmission (`dup` unset).
    pub async fn fresh_deliver(&mut self, wait: Duration, req: &'static str) -> Result<proto::Deliver, Stop> {
        self.expect(wait, req, "DELIVER", |f| match f {
            Frame::Deliver(d) if !d.dup => Some(d.clone()),
            _ => None,
        })
        .await
    }

    /// Acknowledges a stream up to `seq`.
    pub async fn ack(&mut self, stream: StreamRef, seq: u64) -> Result<(), Stop> {
        self.send(&Frame::DeliverAck(proto::DeliverAck { stream: Some(stream), seq })).await
    }

    /// Sends DISCONNECT NORMAL_DISCONNECT and closes.
    pub async fn close(&mut self) -> Result<(), Stop> {
        let d = proto::Disconnect { reason: ReasonCode::NormalDisconnect as u32, ..Default::default() };
        self.send(&Frame::Disconnect(d)).await?;
        self.shutdown().await;
        Ok(())
    }
}
