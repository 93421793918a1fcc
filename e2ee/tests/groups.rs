//! Device certificates and lists, safety numbers, sender keys and signed membership operations.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tern_e2ee::devices::{self, DeviceError};
use tern_e2ee::group::{
    Distribution, GroupError, GroupMessage, GroupOp, InboundGroupSession, OpKind, OutboundGroupSession, Roster,
    MAX_GROUP_SKIP,
};
use tern_e2ee::primitives::{CryptoError, DhSecret, SigningKey, Suite};
use tern_e2ee::x3dh::DeviceIdentity;

fn identity(user: &str, device: &str, rng: &mut ChaCha20Rng) -> (SigningKey, DeviceIdentity) {
    let sig = SigningKey::generate(rng).unwrap();
    let dh = DhSecret::generate(rng);
    let id = DeviceIdentity { user: user.into(), device: device.into(), sig_pub: sig.public(), dh_pub: dh.public() };
    (sig, id)
}

#[test]
fn devices_are_trusted_only_through_the_account_key_and_the_latest_list() {
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let aik = SigningKey::generate(&mut rng).unwrap();
    let (phone_sig, phone) = identity("alice", "phone", &mut rng);
    let (laptop_sig, laptop) = identity("alice", "laptop", &mut rng);
    let phone_cert = devices::issue_cert(&aik, &phone_sig, &phone, &[1], 1, 0).unwrap();
    let laptop_cert = devices::issue_cert(&aik, &laptop_sig, &laptop, &[1, 2], 2, 0).unwrap();
    let v1 = devices::sign_list(&aik, "alice", 1, 1, std::slice::from_ref(&phone_cert)).unwrap();
    let v2 = devices::sign_list(&aik, "alice", 2, 2, &[phone_cert.clone(), laptop_cert.clone()]).unwrap();

    devices::verify_list(&aik.public(), "alice", &v2, 1).unwrap();
    assert_eq!(devices::verify_device(&aik.public(), &v2, &laptop_cert).unwrap(), laptop);
    // The laptop is not in version 1, and version 1 is a rollback once version 2 was seen.
    assert_eq!(devices::verify_device(&aik.public(), &v1, &laptop_cert), Err(DeviceError::NotListed("laptop".into())));
    assert_eq!(devices::verify_list(&aik.public(), "alice", &v1, 2), Err(DeviceError::Rollback { got: 1, pinned: 2 }));
    // A device the broker adds on its own: a certificate signed by another key is refused.
    let mallory_aik = SigningKey::generate(&mut rng).unwrap();
    let (evil_sig, evil) = identity("alice", "evil", &mut rng);
    let evil_cert = devices::issue_cert(&mallory_aik, &evil_sig, &evil, &[1], 3, 0).unwrap();
    let forged = devices::sign_list(&mallory_aik, "alice", 3, 3, &[phone_cert.clone(), evil_cert.clone()]).unwrap();
    assert_eq!(
        devices::verify_list(&aik.public(), "alice", &forged, 2),
        Err(DeviceError::Crypto(CryptoError::BadSignature))
    );
    assert!(devices::verify_device(&aik.public(), &v2, &evil_cert).is_err());
    // A tampered certificate no longer matches its listed hash.
    let mut tampered = laptop_cert.clone();
    tampered.flags = 1;
    assert_eq!(devices::verify_device(&aik.public(), &v2, &tampered), Err(DeviceError::NotListed("laptop".into())));
}

#[test]
fn safety_numbers_are_symmetric_sixty_digits_and_change_with_the_key() {
    let mut rng = ChaCha20Rng::seed_from_u64(12);
    let (a, b) = (SigningKey::generate(&mut rng).unwrap().public(), SigningKey::generate(&mut rng).unwrap().public());
    let n = devices::safety_number(&a, "alice", &b, "bob");
    assert_eq!(n.len(), 60);
    assert!(n.bytes().all(|c| c.is_ascii_digit()));
    assert_eq!(n, devices::safety_number(&b, "bob", &a, "alice"), "both sides see the same number");
    let c = SigningKey::generate(&mut rng).unwrap().public();
    assert_ne!(n, devices::safety_number(&a, "alice", &c, "bob"), "a new account key changes it");
}

fn group_message(out: &mut OutboundGroupSession, text: &str) -> GroupMessage {
    let m = out.encrypt(text.as_bytes()).unwrap();
    // Through the wire encoding, as receivers get it.
    GroupMessage::from_bytes(&m.to_bytes().unwrap()).unwrap()
}

#[test]
fn sender_keys_decrypt_in_any_order_once_and_refuse_forgeries() {
    let mut rng = ChaCha20Rng::seed_from_u64(13);
    let mut out = OutboundGroupSession::new(Suite::ChaCha20Poly1305, "team", 1, "alice", "phone", &mut rng).unwrap();
    let dist = Distribution::from_bytes(&out.distribution().to_bytes().unwrap()).unwrap();
    let mut bob = InboundGroupSession::new("alice", "phone", &dist).unwrap();
    let msgs: Vec<GroupMessage> = (0..5).map(|i| group_message(&mut out, &format!("m{i}"))).collect();
    for i in [2usize, 0, 4, 1, 3] {
        assert_eq!(bob.decrypt(&msgs[i]).unwrap(), format!("m{i}").as_bytes());
    }
    assert_eq!(bob.decrypt(&msgs[1]), Err(GroupError::Duplicate));
    // A member who knows the chain key cannot impersonate the sender: the signature fails.
    let mut forged = group_message(&mut out, "genuine");
    forged.ciphertext[0] ^= 1;
    assert_eq!(bob.decrypt(&forged), Err(GroupError::Crypto(CryptoError::BadSignature)));
    let mut other_sender = forged.clone();
    other_sender.sender_device = "laptop".into();
    assert_eq!(bob.decrypt(&other_sender), Err(GroupError::UnknownChain));
    // A newcomer given the current state cannot read what came before.
    let late = InboundGroupSession::new("alice", "phone", &out.distribution()).unwrap();
    assert_eq!(late.clone().decrypt(&msgs[0]), Err(GroupError::Duplicate));
    // Skips are bounded; a refused message leaves the chain usable.
    for _ in 0..=MAX_GROUP_SKIP + 1 {
        out.encrypt(b"x").unwrap();
    }
    let far = group_message(&mut out, "far");
    assert_eq!(bob.decrypt(&far), Err(GroupError::TooManySkipped));
    assert!(GroupMessage::from_bytes(&far.to_bytes().unwrap()[..40]).is_err(), "truncated bytes are refused");
}

#[test]
fn membership_follows_signed_operations_only_and_removal_rotates_keys() {
    let mut rng = ChaCha20Rng::seed_from_u64(14);
    let alice = SigningKey::generate(&mut rng).unwrap();
    let carol = SigningKey::generate(&mut rng).unwrap();
    let members: Vec<String> = ["bob", "carol", "dave", "erin"].iter().map(|s| s.to_string()).collect();
    let mut create = Roster::propose_create("team", "alice", "phone", &members, 1).unwrap();
    create.sign(&alice).unwrap();
    let create = GroupOp::from_bytes(&create.to_bytes().unwrap()).unwrap();
    let mut roster = Roster::create(&create, &alice.public()).unwrap();
    assert_eq!(roster.members().len(), 5);
    assert_eq!(roster.epoch(), 1);

    // Carol (not the admin) cannot add a member; a broker-injected op without a valid
    // signature is refused; a stale epoch is refused.
    assert!(matches!(
        roster.propose("carol", "pc", OpKind::Add("mallory".into()), 2),
        Err(GroupError::BadOperation(_))
    ));
    let mut unsigned = roster.propose("alice", "phone", OpKind::Add("mallory".into()), 2).unwrap();
    unsigned.sign(&carol).unwrap(); // signed with the wrong device key
    assert_eq!(roster.apply(&unsigned, &alice.public()), Err(GroupError::Crypto(CryptoError::BadSignature)));
    assert!(!roster.contains("mallory"));
    let mut remove = roster.propose("alice", "phone", OpKind::Remove("erin".into()), 3).unwrap();
    remove.sign(&alice).unwrap();
    let mut stale = remove.clone();
    stale.epoch = 1;
    assert!(matches!(roster.apply(&stale, &alice.public()), Err(GroupError::BadOperation(_))));
    roster.apply(&remove, &alice.public()).unwrap();
    assert!(!roster.contains("erin") && roster.epoch() == 2);
    assert!(matches!(roster.apply(&remove, &alice.public()), Err(GroupError::BadOperation(_))), "an op applies once");

    // Erin held the epoch-1 chain; the sender rotates for epoch 2 and distributes to the new
    // roster only, so Erin cannot read the new messages.
    let old = OutboundGroupSession::new(Suite::Aes256Gcm, "team", 1, "alice", "phone", &mut rng).unwrap();
    let mut erin = InboundGroupSession::new("alice", "phone", &old.distribution()).unwrap();
    let mut new =
        OutboundGroupSession::new(Suite::Aes256Gcm, "team", roster.epoch(), "alice", "phone", &mut rng).unwrap();
    let mut bob = InboundGroupSession::new("alice", "phone", &new.distribution()).unwrap();
    let m = group_message(&mut new, "after erin left");
    assert_eq!(bob.decrypt(&m).unwrap(), b"after erin left");
    assert_eq!(erin.decrypt(&m), Err(GroupError::UnknownChain));
}
