//! The account layer's trust decisions: pinned account keys, rollback, and devices the broker
//! adds on its own never receiving messages or group keys.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use bytes::Bytes;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tern_codec::proto;
use tern_e2ee::account::{Account, AccountError};
use tern_e2ee::devices::DeviceError;
use tern_e2ee::Suite;

const NOW: u64 = 1_800_000_000_000;

/// What the directory would return for an account, from its own KeyPublish.
fn listing(published: &[proto::KeyPublish], list_from: usize) -> proto::UserKeys {
    proto::UserKeys {
        user_id: published[0].device_cert.as_ref().unwrap().user_id.clone(),
        account_key: published[0].account_key.clone(),
        device_list: published[list_from].device_list.clone(),
        device_certs: published.iter().filter_map(|p| p.device_cert.clone()).collect(),
    }
}

#[test]
fn only_devices_in_the_signed_list_are_used_and_identity_changes_are_refused() {
    let mut rng = ChaCha20Rng::seed_from_u64(21);
    let mut alice = Account::new_primary(Suite::Aes256Gcm, "alice", "phone", NOW, &mut rng).unwrap();
    let mut bob = Account::new_primary(Suite::Aes256Gcm, "bob", "laptop", NOW, &mut rng).unwrap();
    let v1 = bob.key_publish();
    let bob_phone = bob.link("phone", NOW, &mut rng).unwrap();
    let v2 = bob.key_publish();

    // The broker adds a device of its own making to bob's listing: it is ignored.
    let mallory = Account::new_primary(Suite::Aes256Gcm, "bob", "evil", NOW, &mut rng).unwrap();
    let mut keys = listing(&[v2.clone(), bob_phone.key_publish(), mallory.key_publish()], 0);
    assert_eq!(alice.learn(&keys).unwrap(), vec!["laptop".to_string(), "phone".to_string()]);
    assert_eq!(alice.devices_of("bob"), vec!["laptop".to_string(), "phone".to_string()]);
    assert!(matches!(alice.encrypt("bob", "evil", None, b"x", NOW, &mut rng), Err(AccountError::UnknownDevice(..))));

    // Serving the older list again is a rollback.
    let old = listing(&[v1], 0);
    assert!(matches!(alice.learn(&old), Err(AccountError::Device(DeviceError::Rollback { got: 1, pinned: 2 }))));
    // Another account key for bob is refused (the safety number would change).
    keys.account_key = Bytes::copy_from_slice(&mallory.account_key());
    assert_eq!(alice.learn(&keys), Err(AccountError::IdentityChanged("bob".into())));
    assert_eq!(alice.devices_of("bob").len(), 2, "the pinned view is unchanged");
}

#[test]
fn a_persisted_account_carries_on_and_corrupt_stores_are_refused() {
    let mut rng = ChaCha20Rng::seed_from_u64(22);
    let mut alice = Account::new_primary(Suite::Aes256Gcm, "alice", "phone", NOW, &mut rng).unwrap();
    let mut bob = Account::new_primary(Suite::ChaCha20Poly1305, "bob", "laptop", NOW, &mut rng).unwrap();
    let (a_pub, b_pub) = (alice.key_publish(), bob.key_publish());
    alice.learn(&listing(std::slice::from_ref(&b_pub), 0)).unwrap();
    bob.learn(&listing(&[a_pub], 0)).unwrap();
    // Alice claims bob's bundle as the directory would hand it out.
    let bundle = proto::KeyBundle {
        device_cert: b_pub.device_cert.clone(),
        signed_prekey: b_pub.signed_prekey.clone(),
        one_time_prekey: b_pub.one_time_prekeys.first().cloned(),
    };
    let env = alice.encrypt("bob", "laptop", Some(&bundle), b"before the restart", NOW, &mut rng).unwrap();
    assert_eq!(
        bob.decrypt("alice", &env, &mut rng).unwrap(),
        tern_e2ee::account::Received::Text(b"before the restart".to_vec())
    );

    // Both restart from their key stores.
    let (a_bytes, b_bytes) = (alice.to_bytes(), bob.to_bytes());
    let mut alice = Account::from_bytes(&a_bytes).unwrap();
    let mut bob = Account::from_bytes(&b_bytes).unwrap();
    assert_eq!(alice.to_bytes(), a_bytes, "decode and encode agree");
    let env = bob.encrypt("alice", "phone", None, b"after the restart", NOW, &mut rng).unwrap();
    assert_eq!(
        alice.decrypt("bob", &env, &mut rng).unwrap(),
        tern_e2ee::account::Received::Text(b"after the restart".to_vec())
    );
    let env = alice.encrypt("bob", "laptop", None, b"and onwards", NOW, &mut rng).unwrap();
    assert!(
        matches!(env.body, Some(proto::e2ee_envelope::Body::Ratchet(_))),
        "the session is established: no X3DH header"
    );
    assert_eq!(
        bob.decrypt("alice", &env, &mut rng).unwrap(),
        tern_e2ee::account::Received::Text(b"and onwards".to_vec())
    );

    // Every truncation of a store is refused with an error, never a panic.
    for cut in (0..b_bytes.len()).step_by(7) {
        assert!(Account::from_bytes(&b_bytes[..cut]).is_err(), "cut at {cut}");
    }
    let mut extra = b_bytes.to_vec();
    extra.push(0);
    assert!(Account::from_bytes(&extra).is_err());
}

#[test]
fn an_iot_device_uses_chacha_and_a_small_prekey_pool_and_talks_to_a_phone() {
    use tern_e2ee::account::{Profile, Received, IOT_PREKEY_POOL};
    let mut rng = ChaCha20Rng::seed_from_u64(23);
    let mut sensor = Account::new_primary_with(Profile::Iot, "plant", "sensor-7", NOW, &mut rng).unwrap();
    let mut owner = Account::new_primary(Suite::Aes256Gcm, "owner", "phone", NOW, &mut rng).unwrap();
    let published = sensor.key_publish();
    assert_eq!(published.one_time_prekeys.len(), IOT_PREKEY_POOL as usize);
    assert_eq!(published.device_cert.as_ref().unwrap().flags, Profile::IOT_FLAG);
    assert_eq!(published.device_cert.as_ref().unwrap().suites, vec![2], "ChaCha20-Poly1305");
    let o_pub = owner.key_publish();
    sensor.learn(&listing(std::slice::from_ref(&o_pub), 0)).unwrap();
    owner.learn(&listing(std::slice::from_ref(&published), 0)).unwrap();
    let bundle = proto::KeyBundle {
        device_cert: o_pub.device_cert.clone(),
        signed_prekey: o_pub.signed_prekey.clone(),
        one_time_prekey: o_pub.one_time_prekeys.first().cloned(),
    };
    let env = sensor.encrypt("owner", "phone", Some(&bundle), b"soil moisture 31%", NOW, &mut rng).unwrap();
    assert_eq!(env.suite, 2);
    assert_eq!(owner.decrypt("plant", &env, &mut rng).unwrap(), Received::Text(b"soil moisture 31%".to_vec()));
    let back = owner.encrypt("plant", "sensor-7", None, b"water now", NOW, &mut rng).unwrap();
    assert_eq!(back.suite, 2, "the session keeps the initiator's suite");
    assert_eq!(sensor.decrypt("owner", &back, &mut rng).unwrap(), Received::Text(b"water now".to_vec()));
}

#[test]
fn one_time_prekeys_are_published_once_and_topped_up_when_low() {
    let mut rng = ChaCha20Rng::seed_from_u64(24);
    let mut a = Account::new_primary(Suite::Aes256Gcm, "alice", "phone", NOW, &mut rng).unwrap();
    let first = a.key_publish();
    assert_eq!(first.one_time_prekeys.len(), tern_e2ee::account::PREKEY_POOL as usize);
    a.published();
    assert!(
        a.key_publish().one_time_prekeys.is_empty(),
        "a prekey the directory may have handed out is never sent again"
    );
    assert_eq!(a.top_up_prekeys(15, &mut rng).unwrap(), 0, "half the pool left: nothing to do");
    assert_eq!(a.top_up_prekeys(3, &mut rng).unwrap(), 17);
    let again = a.key_publish();
    assert_eq!(again.one_time_prekeys.len(), 17);
    let max_first = first.one_time_prekeys.iter().map(|o| o.opk_id).max().unwrap();
    assert!(again.one_time_prekeys.iter().all(|o| o.opk_id > max_first), "new ids only");
}

#[test]
fn a_device_that_leaves_gets_no_new_group_keys() {
    use tern_e2ee::account::Received;
    let mut rng = ChaCha20Rng::seed_from_u64(25);
    let mut alice = Account::new_primary(Suite::Aes256Gcm, "alice", "phone", NOW, &mut rng).unwrap();
    let mut laptop = alice.link("laptop", NOW, &mut rng).unwrap();
    let mut bob = Account::new_primary(Suite::Aes256Gcm, "bob", "pc", NOW, &mut rng).unwrap();
    let (a_pub, l_pub, b_pub) = (alice.key_publish(), laptop.key_publish(), bob.key_publish());
    bob.learn(&listing(&[a_pub.clone(), l_pub.clone()], 0)).unwrap();
    for d in [&mut alice, &mut laptop] {
        d.learn(&listing(std::slice::from_ref(&b_pub), 0)).unwrap();
    }
    let op = bob.create_group("g", &["alice".to_string()], NOW).unwrap();
    for d in [&mut alice, &mut laptop] {
        d.apply_group_op(&op.to_bytes().unwrap()).unwrap();
    }
    let bundle = |p: &proto::KeyPublish| proto::KeyBundle {
        device_cert: p.device_cert.clone(),
        signed_prekey: p.signed_prekey.clone(),
        one_time_prekey: p.one_time_prekeys.first().cloned(),
    };
    // Bob's first group message: his sender key goes to both of alice's devices.
    let (dists, env) = bob.group_encrypt("g", b"one", &mut rng).unwrap();
    assert_eq!(dists.iter().map(|d| d.device.as_str()).collect::<Vec<_>>(), vec!["laptop", "phone"]);
    for d in &dists {
        let b = if d.device == "phone" { bundle(&a_pub) } else { bundle(&l_pub) };
        let skdm = bob.encrypt_distribution(&d.user, &d.device, Some(&b), &d.inner, NOW, &mut rng).unwrap();
        let target = if d.device == "phone" { &mut alice } else { &mut laptop };
        target.decrypt("bob", &skdm, &mut rng).unwrap();
    }
    assert!(matches!(laptop.decrypt("bob", &env, &mut rng).unwrap(), Received::GroupText { .. }));

    // Alice unlinks the laptop; once bob learns the new list his next message uses a new
    // chain that only the phone receives.
    alice.unlink("laptop", NOW).unwrap();
    let v3 = alice.key_publish();
    bob.learn(&listing(&[v3], 0)).unwrap();
    let (dists, env) = bob.group_encrypt("g", b"two", &mut rng).unwrap();
    assert_eq!(dists.iter().map(|d| d.device.as_str()).collect::<Vec<_>>(), vec!["phone"]);
    let skdm = bob.encrypt_distribution("alice", "phone", None, &dists[0].inner, NOW, &mut rng).unwrap();
    alice.decrypt("bob", &skdm, &mut rng).unwrap();
    assert_eq!(
        alice.decrypt("bob", &env, &mut rng).unwrap(),
        Received::GroupText { group: "g".into(), text: b"two".to_vec() }
    );
    assert!(laptop.decrypt("bob", &env, &mut rng).is_err(), "the unlinked laptop cannot read the new chain");
}

#[test]
fn a_sender_key_that_overtakes_its_membership_operation_waits_for_it() {
    use tern_e2ee::account::Received;
    use tern_e2ee::group::OpKind;
    let mut rng = ChaCha20Rng::seed_from_u64(26);
    let mut alice = Account::new_primary(Suite::Aes256Gcm, "alice", "phone", NOW, &mut rng).unwrap();
    let mut bob = Account::new_primary(Suite::Aes256Gcm, "bob", "pc", NOW, &mut rng).unwrap();
    let (a_pub, b_pub) = (alice.key_publish(), bob.key_publish());
    alice.learn(&listing(std::slice::from_ref(&b_pub), 0)).unwrap();
    bob.learn(&listing(std::slice::from_ref(&a_pub), 0)).unwrap();
    let create = alice.create_group("g", &["bob".to_string(), "carol".to_string()], NOW).unwrap();
    bob.apply_group_op(&create.to_bytes().unwrap()).unwrap();
    // Epoch 2 (carol leaves): bob receives alice's new sender key before the operation.
    let remove = alice.change_group("g", OpKind::Remove("carol".into()), NOW).unwrap();
    let (dists, env) = alice.group_encrypt("g", b"after carol", &mut rng).unwrap();
    let b = proto::KeyBundle {
        device_cert: b_pub.device_cert.clone(),
        signed_prekey: b_pub.signed_prekey.clone(),
        one_time_prekey: b_pub.one_time_prekeys.first().cloned(),
    };
    let skdm = alice.encrypt_distribution("bob", "pc", Some(&b), &dists[0].inner, NOW, &mut rng).unwrap();
    assert_eq!(bob.decrypt("alice", &skdm, &mut rng).unwrap(), Received::GroupKey("g".into()));
    assert!(bob.decrypt("alice", &env, &mut rng).is_err(), "not readable before the operation");
    bob.apply_group_op(&remove.to_bytes().unwrap()).unwrap();
    assert_eq!(
        bob.decrypt("alice", &env, &mut rng).unwrap(),
        Received::GroupText { group: "g".into(), text: b"after carol".to_vec() }
    );
}

#[test]
fn a_replayed_first_message_does_not_reset_the_session() {
    use tern_e2ee::account::Received;
    let mut rng = ChaCha20Rng::seed_from_u64(27);
    let mut alice = Account::new_primary(Suite::Aes256Gcm, "alice", "phone", NOW, &mut rng).unwrap();
    let mut bob = Account::new_primary(Suite::Aes256Gcm, "bob", "pc", NOW, &mut rng).unwrap();
    let (a_pub, b_pub) = (alice.key_publish(), bob.key_publish());
    alice.learn(&listing(std::slice::from_ref(&b_pub), 0)).unwrap();
    bob.learn(&listing(std::slice::from_ref(&a_pub), 0)).unwrap();
    // No one-time prekey left at the directory: the setup rests on the signed prekey alone.
    let bundle = proto::KeyBundle {
        device_cert: b_pub.device_cert.clone(),
        signed_prekey: b_pub.signed_prekey.clone(),
        one_time_prekey: None,
    };
    let first = alice.encrypt("bob", "pc", Some(&bundle), b"hello", NOW, &mut rng).unwrap();
    assert_eq!(bob.decrypt("alice", &first, &mut rng).unwrap(), Received::Text(b"hello".to_vec()));
    let reply = bob.encrypt("alice", "phone", None, b"hi", NOW, &mut rng).unwrap();
    alice.decrypt("bob", &reply, &mut rng).unwrap();
    // The broker (or anyone) replays alice's first message: refused, and the session lives on.
    assert!(bob.decrypt("alice", &first, &mut rng).is_err());
    let next = alice.encrypt("bob", "pc", None, b"still the same session", NOW, &mut rng).unwrap();
    assert_eq!(bob.decrypt("alice", &next, &mut rng).unwrap(), Received::Text(b"still the same session".to_vec()));
}
