//! End-to-end encryption over real sockets: two users with two devices each and a group of
//! five exchange encrypted messages through the broker; a removed member cannot read what
//! follows; neither the broker's data directory nor its log holds any plaintext.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tern_broker::client::{Client, Incoming};
use tern_codec::proto::{self, request::Op, response::Result as R};
use tern_codec::Frame;
use tern_e2ee::account::{Account, AccountError, Received, CONTENT_TYPE, OP_CONTENT_TYPE};
use tern_e2ee::group::{GroupError, OpKind};
use tern_e2ee::Suite;

const NOW: u64 = 1_800_000_000_000;

/// A device: its E2EE state, its connection, and messages read while waiting for a response.
struct Dev {
    account: Account,
    client: Client,
    rng: ChaCha20Rng,
    backlog: VecDeque<proto::Deliver>,
}

impl Dev {
    fn user(&self) -> String {
        self.account.identity().user.clone()
    }

    async fn request(&mut self, op: Op) -> proto::Response {
        let id = self.client.send(Frame::Request(proto::Request { request_id: 0, op: Some(op) })).await.unwrap();
        loop {
            match tokio::time::timeout(Duration::from_secs(20), self.client.next()).await.expect("no response").unwrap()
            {
                Incoming::Frame(f) => {
                    if let Frame::Response(r) = *f {
                        if r.request_id == id {
                            return r;
                        }
                    }
                }
                Incoming::Message(m) => self.backlog.push_back(m),
                _ => {}
            }
        }
    }

    async fn publish_keys(&mut self) {
        let r = self.request(Op::KeyPublish(self.account.key_publish())).await;
        assert_eq!(r.reason, 0, "KeyPublish refused");
        self.account.published();
    }

    async fn learn(&mut self, users: &[String]) {
        let r = self.request(Op::KeyQuery(proto::KeyQuery { user_ids: users.to_vec() })).await;
        let Some(R::Keys(listing)) = r.result else { panic!("no key listing") };
        for keys in &listing.users {
            self.account.learn(keys).unwrap();
        }
    }

    async fn bundle(&mut self, user: &str, device: &str) -> Option<proto::KeyBundle> {
        if !self.account.needs_bundle(user, device) {
            return None;
        }
        let r = self.request(Op::KeyClaim(proto::KeyClaim { user_id: user.into(), device_id: device.into() })).await;
        match r.result {
            Some(R::KeyBundle(b)) => Some(b),
            other => panic!("claim for {user}/{device}: {other:?}"),
        }
    }

    /// Encrypts `text` for every device of `peer` and this user's other devices, one PUBLISH
    /// each, all on the conversation's topic.
    async fn send(&mut self, peer: &str, text: &str) {
        let me = self.user();
        self.learn(&[peer.to_string(), me.clone()]).await;
        let mut targets: Vec<(String, String)> =
            self.account.devices_of(peer).into_iter().map(|d| (peer.to_string(), d)).collect();
        targets.extend(self.account.devices_of(&me).into_iter().map(|d| (me.clone(), d)));
        for (user, device) in targets {
            let bundle = self.bundle(&user, &device).await;
            let env =
                self.account.encrypt(&user, &device, bundle.as_ref(), text.as_bytes(), NOW, &mut self.rng).unwrap();
            self.client.publish_typed(&format!("user/{peer}"), env.encode_to_vec(), 2, CONTENT_TYPE).await.unwrap();
        }
    }

    /// Sends a group message, distributing the sender key first where needed.
    async fn send_group(&mut self, group: &str, text: &str) -> proto::E2eeEnvelope {
        let members = self.account.group_members(group).unwrap();
        self.learn(&members).await;
        let (distributions, env) = self.account.group_encrypt(group, text.as_bytes(), &mut self.rng).unwrap();
        for d in distributions {
            let bundle = self.bundle(&d.user, &d.device).await;
            let skdm = self
                .account
                .encrypt_distribution(&d.user, &d.device, bundle.as_ref(), &d.inner, NOW, &mut self.rng)
                .unwrap();
            self.client
                .publish_typed(&format!("user/{}", d.user), skdm.encode_to_vec(), 2, CONTENT_TYPE)
                .await
                .unwrap();
        }
        self.client.publish_typed(&format!("group/{group}"), env.encode_to_vec(), 2, CONTENT_TYPE).await.unwrap();
        env
    }

    async fn next_deliver(&mut self) -> proto::Deliver {
        if let Some(m) = self.backlog.pop_front() {
            return m;
        }
        loop {
            match tokio::time::timeout(Duration::from_secs(20), self.client.next())
                .await
                .expect("nothing arrived")
                .unwrap()
            {
                Incoming::Message(m) => return m,
                _ => continue,
            }
        }
    }

    /// The next text (1:1 or group) for this device, handling keys and operations on the way.
    async fn receive(&mut self) -> Received {
        loop {
            let m = self.next_deliver().await;
            if m.content_type == OP_CONTENT_TYPE {
                let issuer = m.sender_user.clone();
                self.learn(&[issuer]).await;
                self.account.apply_group_op(&m.payload).unwrap();
                continue;
            }
            assert_eq!(m.content_type, CONTENT_TYPE, "only encrypted payloads in this test");
            let env = proto::E2eeEnvelope::decode(m.payload.as_ref()).unwrap();
            let got = match self.account.decrypt(&m.sender_user, &env, &mut self.rng) {
                Err(AccountError::UnknownDevice(user, _)) => {
                    self.learn(&[user]).await;
                    self.account.decrypt(&m.sender_user, &env, &mut self.rng).unwrap_or_else(|e| {
                        panic!(
                            "{}/{} decrypting {} from {}: {e:?}",
                            self.user(),
                            self.account.identity().device,
                            env.recipient_device,
                            m.sender_user
                        )
                    })
                }
                other => other.unwrap_or_else(|e| {
                    panic!(
                        "{}/{} decrypting {env:?} from {}: {e:?}",
                        self.user(),
                        self.account.identity().device,
                        m.sender_user
                    )
                }),
            };
            match got {
                Received::NotForThisDevice | Received::GroupKey(_) => continue,
                text => return text,
            }
        }
    }

    async fn expect_text(&mut self, want: &str) {
        assert_eq!(
            self.receive().await,
            Received::Text(want.as_bytes().to_vec()),
            "{}",
            self.account.identity().device
        );
    }

    async fn expect_group(&mut self, group: &str, want: &str) {
        let got = self.receive().await;
        assert_eq!(got, Received::GroupText { group: group.into(), text: want.as_bytes().to_vec() });
    }
}

async fn device(t: &common::TestBroker, account: Account, seed: u64) -> Dev {
    let (user, device) = (account.identity().user.clone(), account.identity().device.clone());
    let client = t.client(&user, &device).await;
    let mut dev = Dev { account, client, rng: ChaCha20Rng::seed_from_u64(seed), backlog: VecDeque::new() };
    dev.publish_keys().await;
    dev
}

/// Collects every log line the broker writes during the test.
#[derive(Clone, Default)]
struct LogSink(Arc<Mutex<Vec<u8>>>);

impl Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_conversations_and_groups_through_the_broker_leave_no_plaintext() {
    let logs = LogSink::default();
    let sink = logs.clone();
    let subscriber =
        tracing_subscriber::fmt().with_max_level(tracing::Level::TRACE).with_writer(move || sink.clone()).finish();
    // Global, so the broker's tasks on the runtime's worker threads log here too.
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let t = common::start().await;
    let mut rng = ChaCha20Rng::seed_from_u64(99);
    let mut alice_primary = Account::new_primary(Suite::Aes256Gcm, "alice", "phone", NOW, &mut rng).unwrap();
    let alice_laptop = alice_primary.link("laptop", NOW, &mut rng).unwrap();
    let mut bob_primary = Account::new_primary(Suite::ChaCha20Poly1305, "bob", "laptop", NOW, &mut rng).unwrap();
    let bob_phone = bob_primary.link("phone", NOW, &mut rng).unwrap();
    let mut alice = device(&t, alice_primary, 1).await;
    let mut alice2 = device(&t, alice_laptop, 2).await;
    let mut bob = device(&t, bob_primary, 3).await;
    let mut bob2 = device(&t, bob_phone, 4).await;

    // 1:1, both ways, reaching every device of both users (the sender's own other device too).
    alice.send("bob", "secret one: the vault code is 4711").await;
    bob.expect_text("secret one: the vault code is 4711").await;
    bob2.expect_text("secret one: the vault code is 4711").await;
    alice2.expect_text("secret one: the vault code is 4711").await;
    bob2.send("alice", "secret two: meet at dawn").await;
    alice.expect_text("secret two: meet at dawn").await;
    alice2.expect_text("secret two: meet at dawn").await;
    bob.expect_text("secret two: meet at dawn").await;
    alice.send("bob", "secret three: ratchet onwards").await;
    for d in [&mut bob2, &mut bob, &mut alice2] {
        d.expect_text("secret three: ratchet onwards").await;
    }

    // A group of five: alice, bob, carol, dave, erin.
    let mut others = Vec::new();
    for (i, name) in ["carol", "dave", "erin"].iter().enumerate() {
        let account = Account::new_primary(Suite::Aes256Gcm, name, "phone", NOW, &mut rng).unwrap();
        others.push(device(&t, account, 10 + i as u64).await);
    }
    let members: Vec<String> = ["bob", "carol", "dave", "erin"].iter().map(|s| s.to_string()).collect();
    let r =
        alice.request(Op::GroupCreate(proto::GroupCreate { group_id: "crew".into(), members: members.clone() })).await;
    assert_eq!(r.reason, 0);
    let op = alice.account.create_group("crew", &members, NOW).unwrap();
    let r = alice
        .request(Op::GroupOpSubmit(proto::GroupOpSubmit {
            group_id: "crew".into(),
            epoch: op.epoch,
            signed_op: op.to_bytes().unwrap().into(),
        }))
        .await;
    assert_eq!(r.reason, 0, "the broker sequences epoch 1");
    alice.client.publish_typed("group/crew", op.to_bytes().unwrap(), 2, OP_CONTENT_TYPE).await.unwrap();
    alice.send_group("crew", "secret four: the crew meets on friday").await;
    for d in [&mut bob, &mut bob2, &mut alice2] {
        d.expect_group("crew", "secret four: the crew meets on friday").await;
    }
    for d in others.iter_mut() {
        d.expect_group("crew", "secret four: the crew meets on friday").await;
    }

    // Bob's laptop restarts from its key store: sessions, roster and group chains survive.
    bob.account = Account::from_bytes(&bob.account.to_bytes()).unwrap();

    // Erin is removed: a signed operation at epoch 2, relayed to the group, then the broker
    // drops her from the group; alice's next message uses a new chain.
    let op = alice.account.change_group("crew", OpKind::Remove("erin".into()), NOW).unwrap();
    let r = alice
        .request(Op::GroupOpSubmit(proto::GroupOpSubmit {
            group_id: "crew".into(),
            epoch: op.epoch,
            signed_op: op.to_bytes().unwrap().into(),
        }))
        .await;
    assert_eq!(r.reason, 0, "the broker sequences epoch 2");
    alice.client.publish_typed("group/crew", op.to_bytes().unwrap(), 2, OP_CONTENT_TYPE).await.unwrap();
    let r = alice
        .request(Op::GroupRemove(proto::GroupMembers { group_id: "crew".into(), members: vec!["erin".into()] }))
        .await;
    assert_eq!(r.reason, 0);
    let after = alice.send_group("crew", "secret five: erin must not read this").await;
    for d in [&mut bob, &mut bob2, &mut alice2] {
        d.expect_group("crew", "secret five: erin must not read this").await;
    }
    let mut erin = others.pop().unwrap();
    for d in others.iter_mut() {
        d.expect_group("crew", "secret five: erin must not read this").await;
    }
    // Erin applies the operation that removed her (relayed before the broker dropped her), and
    // even handed the ciphertext she cannot decrypt it: she has no key for the new chain.
    let op_msg = erin.next_deliver().await;
    assert_eq!(op_msg.content_type, OP_CONTENT_TYPE);
    erin.account.apply_group_op(&op_msg.payload).unwrap();
    let refused = erin.account.decrypt("alice", &after, &mut erin.rng).unwrap_err();
    assert!(
        matches!(refused, AccountError::NotAMember(_) | AccountError::Group(GroupError::UnknownChain)),
        "{refused:?}"
    );

    // Neither the store nor the log holds any plaintext. A control message sent without E2EE
    // shows that the scan would find one.
    alice.client.publish("user/bob", b"control canary in the clear".to_vec()).await.unwrap();
    let secrets = ["vault code", "meet at dawn", "ratchet onwards", "crew meets", "must not read"];
    t.broker.shutdown().await.unwrap();
    let mut scanned = 0;
    for path in files_under(t.dir.path()) {
        let bytes = std::fs::read(&path).unwrap();
        scanned += bytes.len();
        for s in secrets {
            assert!(!contains(&bytes, s), "{} holds plaintext {s:?}", path.display());
        }
    }
    assert!(scanned > 0, "the data directory was empty");
    assert!(
        files_under(t.dir.path()).iter().any(|p| contains(&std::fs::read(p).unwrap(), "control canary")),
        "the scan cannot see stored payloads"
    );
    let log = logs.0.lock().unwrap().clone();
    assert!(contains(&log, "listening"), "the broker's log was not captured");
    for s in secrets {
        assert!(!contains(&log, s), "the broker log holds plaintext {s:?}");
    }
}
