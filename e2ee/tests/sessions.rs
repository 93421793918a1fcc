//! X3DH and the Double Ratchet end to end, with deterministic randomness: both sides agree,
//! every validation refuses what it must, and a rejected message leaves the session unchanged.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tern_e2ee::primitives::{CryptoError, DhSecret, SigningKey, Suite};
use tern_e2ee::ratchet::{pad, unpad, Message, RatchetError, Session, MAX_SKIP};
use tern_e2ee::x3dh::{self, Bundle, DeviceIdentity, OneTimePrekey, SignedPrekey, X3dhError};

const NOW: u64 = 1_800_000_000_000;

struct Device {
    id: DeviceIdentity,
    sig: SigningKey,
    dh: DhSecret,
}

fn device(user: &str, name: &str, rng: &mut ChaCha20Rng) -> Device {
    let sig = SigningKey::generate(rng).unwrap();
    let dh = DhSecret::generate(rng);
    Device {
        id: DeviceIdentity { user: user.into(), device: name.into(), sig_pub: sig.public(), dh_pub: dh.public() },
        sig,
        dh,
    }
}

struct Published {
    bundle: Bundle,
    spk: DhSecret,
    opk: DhSecret,
}

fn publish(bob: &Device, rng: &mut ChaCha20Rng) -> Published {
    let (spk, opk) = (DhSecret::generate(rng), DhSecret::generate(rng));
    let mut signed = SignedPrekey { id: 7, public: spk.public(), created_ms: NOW - 1000, sig: [0; 64] };
    x3dh::sign_spk(&bob.sig, &bob.id.user, &bob.id.device, &mut signed).unwrap();
    let mut one = OneTimePrekey { id: 42, public: opk.public(), sig: [0; 64] };
    x3dh::sign_opk(&bob.sig, &bob.id.user, &bob.id.device, &mut one).unwrap();
    Published {
        bundle: Bundle { identity: bob.id.clone(), signed_prekey: signed, one_time_prekey: Some(one) },
        spk,
        opk,
    }
}

/// Alice and Bob with an established session; Alice has sent nothing yet.
fn pair(suite: Suite, seed: u64) -> (Session, Session, ChaCha20Rng) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let (alice, bob) = (device("alice", "phone", &mut rng), device("bob", "laptop", &mut rng));
    let p = publish(&bob, &mut rng);
    let init = x3dh::initiate(suite, &alice.id, &alice.dh, &p.bundle, NOW, &mut rng).unwrap();
    let (sk, ad) = x3dh::respond(suite, &bob.id, &bob.dh, &p.spk, Some(&p.opk), &alice.id, &init.ek_pub).unwrap();
    assert_eq!(*sk, *init.shared, "both sides derive the same secret");
    assert_eq!(ad, init.ad, "and the same associated data");
    let a = Session::initiator(suite, &init.shared, init.ad.clone(), &init.spk.public, &mut rng).unwrap();
    let b = Session::responder(suite, &sk, ad, p.spk.clone());
    (a, b, rng)
}

#[test]
fn x3dh_refuses_bad_signatures_stale_prekeys_and_bad_keys() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let (alice, bob) = (device("alice", "phone", &mut rng), device("bob", "laptop", &mut rng));
    let good = publish(&bob, &mut rng).bundle;
    let run = |b: &Bundle, now: u64, rng: &mut ChaCha20Rng| {
        x3dh::initiate(Suite::Aes256Gcm, &alice.id, &alice.dh, b, now, rng).map(|_| ())
    };
    assert_eq!(run(&good, NOW, &mut rng), Ok(()));

    let mut b = good.clone();
    b.signed_prekey.public[0] ^= 1; // the broker swapped the signed prekey
    assert_eq!(run(&b, NOW, &mut rng), Err(X3dhError::Crypto(CryptoError::BadSignature)));
    let mut b = good.clone();
    b.one_time_prekey.as_mut().unwrap().public[3] ^= 1; // ... or the one-time prekey
    assert_eq!(run(&b, NOW, &mut rng), Err(X3dhError::Crypto(CryptoError::BadSignature)));
    assert_eq!(run(&good, NOW + x3dh::SPK_MAX_AGE_MS + 1000, &mut rng), Err(X3dhError::StalePrekey));
    let mut b = good.clone();
    b.identity.sig_pub = [0u8; 32]; // a small-order Ed25519 key (the identity point's neighbour)
    b.identity.sig_pub[0] = 1;
    assert_eq!(run(&b, NOW, &mut rng), Err(X3dhError::Crypto(CryptoError::BadSigningKey)));
    let mut b = good.clone();
    b.identity.dh_pub[31] |= 0x80;
    assert_eq!(run(&b, NOW, &mut rng), Err(X3dhError::Crypto(CryptoError::HighBitKey)));
    // A low-order signed prekey gives an all-zero agreement (it must be signed to get there).
    let mut b = good.clone();
    b.signed_prekey.public = [0u8; 32];
    x3dh::sign_spk(&bob.sig, "bob", "laptop", &mut b.signed_prekey).unwrap();
    assert_eq!(run(&b, NOW, &mut rng), Err(X3dhError::Crypto(CryptoError::NonContributory)));
}

#[test]
fn messages_flow_both_ways_with_ratchet_steps() {
    for suite in [Suite::Aes256Gcm, Suite::ChaCha20Poly1305] {
        let (mut a, mut b, mut rng) = pair(suite, 2);
        assert_eq!(b.encrypt(b"too early").unwrap_err(), RatchetError::NotReady);
        for round in 0..5 {
            let m = a.encrypt(format!("a{round}").as_bytes()).unwrap();
            assert_eq!(b.decrypt(&m, &mut rng).unwrap(), format!("a{round}").as_bytes());
            let m = b.encrypt(format!("b{round}").as_bytes()).unwrap();
            assert_eq!(a.decrypt(&m, &mut rng).unwrap(), format!("b{round}").as_bytes());
        }
    }
}

#[test]
fn out_of_order_messages_decrypt_once_and_skipping_is_bounded() {
    let (mut a, mut b, mut rng) = pair(Suite::Aes256Gcm, 3);
    let msgs: Vec<Message> = (0..6).map(|i| a.encrypt(&[i]).unwrap()).collect();
    for i in [5usize, 0, 3, 1, 4, 2] {
        assert_eq!(b.decrypt(&msgs[i], &mut rng).unwrap(), vec![i as u8]);
    }
    assert_eq!(b.skipped_keys(), 0, "message keys are deleted after use");
    assert_eq!(b.decrypt(&msgs[2], &mut rng).unwrap_err(), RatchetError::Duplicate, "a replay is refused");
    assert_eq!(b.decrypt(&msgs[5], &mut rng).unwrap_err(), RatchetError::Duplicate);
    // Messages from an old chain still open after the sender ratcheted on.
    let late = a.encrypt(b"late").unwrap();
    let reply = b.encrypt(b"reply").unwrap();
    a.decrypt(&reply, &mut rng).unwrap();
    let fresh = a.encrypt(b"fresh").unwrap();
    assert_eq!(b.decrypt(&fresh, &mut rng).unwrap(), b"fresh");
    assert_eq!(b.decrypt(&late, &mut rng).unwrap(), b"late");
    // A sender that skips more than MAX_SKIP messages is refused, and the session survives.
    let mut far = None;
    for _ in 0..=MAX_SKIP + 1 {
        far = Some(a.encrypt(b"far").unwrap());
    }
    assert_eq!(b.decrypt(&far.unwrap(), &mut rng).unwrap_err(), RatchetError::TooManySkipped);
    let next = b.encrypt(b"still works").unwrap();
    assert_eq!(a.decrypt(&next, &mut rng).unwrap(), b"still works");
}

#[test]
fn a_tampered_message_is_refused_and_leaves_the_session_unchanged() {
    let (mut a, mut b, mut rng) = pair(Suite::Aes256Gcm, 4);
    let good = a.encrypt(b"hello").unwrap();
    for tamper in 0..4 {
        let mut bad = good.clone();
        match tamper {
            0 => bad.ciphertext[0] ^= 1,
            1 => bad.n += 1,
            2 => bad.pn += 1,
            _ => bad.dh_pub[5] ^= 1,
        }
        let before = b.skipped_keys();
        let err = b.decrypt(&bad, &mut rng).unwrap_err();
        assert!(matches!(err, RatchetError::Crypto(_)), "tamper {tamper}: {err:?}");
        assert_eq!(b.skipped_keys(), before, "tamper {tamper} changed the state");
    }
    assert_eq!(b.decrypt(&good, &mut rng).unwrap(), b"hello", "the genuine message still opens");
}

#[test]
fn padding_hides_lengths_to_buckets_and_round_trips() {
    assert_eq!(pad(b"").len(), 64);
    assert_eq!(pad(&[7; 63]).len(), 64);
    assert_eq!(pad(&[7; 64]).len(), 128);
    assert_eq!(pad(&[7; 1100]).len(), 1280);
    for n in [0usize, 1, 63, 64, 500, 1023, 1024, 3000] {
        let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
        assert_eq!(unpad(&pad(&data)).unwrap(), &data[..]);
    }
    assert!(unpad(&[0u8; 64]).is_err());
    assert!(unpad(&[1, 2, 3, 0]).is_err());
}
