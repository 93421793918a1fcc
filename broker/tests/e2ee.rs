//! End-to-end encryption over real sockets: two users with two devices each and a group of
//! five exchange encrypted messages through the broker; a removed member cannot read what
//! follows; neither the broker's data directory nor its log holds any plaintext.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tern_broker::e2ee::{E2eeClient, Event};
use tern_codec::proto::{self, request::Op, response::Result as R};
use tern_e2ee::account::{Account, AccountError};
use tern_e2ee::group::{GroupError, OpKind};
use tern_e2ee::Suite;

const WAIT: Duration = Duration::from_secs(20);

/// The next application event of a device (bounded, so a lost message fails the test).
async fn receive(d: &mut E2eeClient) -> Event {
    tokio::time::timeout(WAIT, d.receive()).await.expect("nothing arrived").expect("connection ended").unwrap()
}

async fn expect_text(d: &mut E2eeClient, want: &str) {
    match receive(d).await {
        Event::Text { text, .. } => assert_eq!(text, want.as_bytes(), "{}", d.account.identity().device),
        other => panic!("{}: expected a 1:1 message, got {other:?}", d.account.identity().device),
    }
}

async fn expect_group(d: &mut E2eeClient, group: &str, want: &str) {
    match receive(d).await {
        Event::Group { group: g, text, .. } => assert_eq!((g.as_str(), text.as_slice()), (group, want.as_bytes())),
        other => panic!("expected a group message, got {other:?}"),
    }
}

async fn device(t: &common::TestBroker, account: Account, seed: u8) -> E2eeClient {
    let (user, device) = (account.identity().user.clone(), account.identity().device.clone());
    let client = t.client(&user, &device).await;
    let mut dev = E2eeClient::new(client, account, [seed; 32]);
    dev.publish_keys().await.unwrap();
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

    // A fan-out threshold of 4: the group of five uses read fan-out (NOTIFY, then SYNC of the
    // conversation stream) and, after a removal, write fan-out (inboxes).
    let t = common::start_with(|o| o.write_fanout_threshold = 4).await;
    // Prekeys are dated with the clock that checks them (the client library's).
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let mut rng = ChaCha20Rng::seed_from_u64(99);
    let mut alice_primary = Account::new_primary(Suite::Aes256Gcm, "alice", "phone", now, &mut rng).unwrap();
    let alice_laptop = alice_primary.link("laptop", now, &mut rng).unwrap();
    let mut bob_primary = Account::new_primary(Suite::ChaCha20Poly1305, "bob", "laptop", now, &mut rng).unwrap();
    let bob_phone = bob_primary.link("phone", now, &mut rng).unwrap();
    let mut alice = device(&t, alice_primary, 1).await;
    let mut alice2 = device(&t, alice_laptop, 2).await;
    let mut bob = device(&t, bob_primary, 3).await;
    let mut bob2 = device(&t, bob_phone, 4).await;

    // 1:1, both ways, reaching every device of both users (the sender's own other device too).
    alice.send("bob", b"secret one: the vault code is 4711").await.unwrap();
    for d in [&mut bob, &mut bob2, &mut alice2] {
        expect_text(d, "secret one: the vault code is 4711").await;
    }
    bob2.send("alice", b"secret two: meet at dawn").await.unwrap();
    for d in [&mut alice, &mut alice2, &mut bob] {
        expect_text(d, "secret two: meet at dawn").await;
    }
    // Bob's phone is offline while alice writes; it gets the message when it reconnects.
    let (phone_state, phone_client) = bob2.into_parts();
    phone_client.close().await;
    alice.send("bob", b"secret three: ratchet onwards").await.unwrap();
    let mut bob2 = E2eeClient::new(t.client("bob", "phone").await, phone_state, [44; 32]);
    for d in [&mut bob, &mut alice2, &mut bob2] {
        expect_text(d, "secret three: ratchet onwards").await;
    }

    // A group of five: alice, bob, carol, dave, erin.
    let mut others = Vec::new();
    for (i, name) in ["carol", "dave", "erin"].iter().enumerate() {
        let account = Account::new_primary(Suite::Aes256Gcm, name, "phone", now, &mut rng).unwrap();
        others.push(device(&t, account, 10 + i as u8).await);
    }
    let members: Vec<String> = ["bob", "carol", "dave", "erin"].iter().map(|s| s.to_string()).collect();
    let create = proto::GroupCreate { group_id: "crew".into(), members: members.clone() };
    let created = alice.request(Op::GroupCreate(create)).await.unwrap();
    assert!(matches!(created.result, Some(R::Group(ref g)) if g.read_fanout), "five members: read fan-out {created:?}");
    let op = alice.account.create_group("crew", &members, now).unwrap();
    alice.submit_group_op(&op).await.unwrap(); // the broker sequences epoch 1
    alice.send_group("crew", b"secret four: the crew meets on friday").await.unwrap();
    for d in [&mut bob, &mut bob2, &mut alice2].into_iter().chain(others.iter_mut()) {
        expect_group(d, "crew", "secret four: the crew meets on friday").await;
    }

    // Bob's laptop restarts from its key store: sessions, roster and group chains survive.
    bob.account = Account::from_bytes(&bob.account.to_bytes()).unwrap();

    // Erin is removed: a signed operation at epoch 2, relayed to the group, then the broker
    // drops her from the group; alice's next message uses a new chain.
    let op = alice.account.change_group("crew", OpKind::Remove("erin".into()), now).unwrap();
    alice.submit_group_op(&op).await.unwrap();
    let remove = proto::GroupMembers { group_id: "crew".into(), members: vec!["erin".into()] };
    let removed = alice.request(Op::GroupRemove(remove)).await.unwrap();
    assert!(
        matches!(removed.result, Some(R::Group(ref g)) if !g.read_fanout),
        "four members: write fan-out {removed:?}"
    );
    let after = alice.send_group("crew", b"secret five: erin must not read this").await.unwrap();
    let mut erin = others.pop().unwrap();
    for d in [&mut bob, &mut bob2, &mut alice2].into_iter().chain(others.iter_mut()) {
        expect_group(d, "crew", "secret five: erin must not read this").await;
    }
    // Erin, even knowing the operation that removed her and handed the ciphertext, cannot
    // decrypt: she never received the new chain's key. (With read fan-out she may not even
    // fetch the relayed operation before the broker drops her, so it is applied directly.)
    erin.account.apply_group_op(&op.to_bytes().unwrap()).unwrap();
    let refused = erin.account.decrypt("alice", &after, &mut ChaCha20Rng::seed_from_u64(5)).unwrap_err();
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
