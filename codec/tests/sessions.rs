//! Client and broker session machines against each other over a perfect link, and against
//! hand-written bytes: handshake, publish/ack, deliver/ack, keepalive, resume.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tern_codec::ids::StreamId;
use tern_codec::proto;
use tern_codec::session::{Accept, BrokerConfig, BrokerEvent, BrokerSession, ClientConfig, ClientEvent, ClientSession, LedgerSnapshot};
use tern_codec::{decode_frame, encode_frame, Frame, ReasonCode};

struct Pair {
    t0: Instant,
    client: ClientSession,
    broker: BrokerSession,
}

fn accept_for(user: &str) -> Accept {
    Accept { user_id: user.into(), session_id: Bytes::from_static(b"s1"), ledger: LedgerSnapshot::default(), inbox_acked_seq: 0, server_time_ms: 1 }
}

impl Pair {
    fn new() -> Pair {
        let t0 = Instant::now();
        let client = ClientSession::new(ClientConfig::new("phone", Bytes::from_static(b"tok")), Box::new(ChaCha8Rng::seed_from_u64(1)));
        let broker = BrokerSession::new(t0, BrokerConfig::default());
        Pair { t0, client, broker }
    }

    /// Moves bytes both ways until quiet; returns broker events.
    fn pump(&mut self, now: Instant) -> (Vec<BrokerEvent>, Vec<ClientEvent>) {
        let (mut be, mut ce) = (vec![], vec![]);
        loop {
            let mut moved = false;
            if let Some(b) = self.client.poll_transmit() {
                self.broker.handle_bytes(now, &b);
                moved = true;
            }
            if let Some(b) = self.broker.poll_transmit() {
                self.client.handle_bytes(now, &b);
                moved = true;
            }
            while let Some(e) = self.broker.poll_event() {
                be.push(e);
            }
            while let Some(e) = self.client.poll_event() {
                ce.push(e);
            }
            if !moved {
                return (be, ce);
            }
        }
    }

    fn connect(&mut self) {
        self.client.connect(self.t0).unwrap();
        let (be, _) = self.pump(self.t0);
        assert!(matches!(be.as_slice(), [BrokerEvent::Connect(c)] if c.device_id == "phone"), "{be:?}");
        self.broker.accept(self.t0, accept_for("alice")).unwrap();
        let (_, ce) = self.pump(self.t0);
        assert_eq!(ce, vec![ClientEvent::Connected { session_present: false, user_id: "alice".into() }]);
    }
}

#[test]
fn publish_is_released_once_and_acked_with_the_stored_outcome() {
    let mut p = Pair::new();
    p.connect();
    let cid = p.client.publish(p.t0, "user/bob", Bytes::from_static(b"hi"), 2).unwrap().unwrap();
    let (be, _) = p.pump(p.t0);
    let [BrokerEvent::Publish(pubf)] = be.as_slice() else { panic!("{be:?}") };
    assert_eq!((pubf.cid, &pubf.payload[..]), (cid.0, &b"hi"[..]));
    let ack = proto::PubAck { cid: cid.0, reason: 0, msg_id: 99, conversation_id: 5, seq: 1 };
    p.broker.ack_publish(ack.clone()).unwrap();
    let (_, ce) = p.pump(p.t0);
    assert_eq!(ce, vec![ClientEvent::Acked(ack)]);
    assert_eq!(p.client.unacknowledged(), 0);
}
