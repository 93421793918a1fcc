//! E2EE throughput on one core: session setups, and Double Ratchet encrypt+decrypt in one
//! chain and with a DH ratchet step on every message (the worst case: strict ping-pong).
//! `cargo bench -p tern-e2ee --bench e2ee`; figures go into BENCHMARKS.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::time::Instant;

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tern_e2ee::primitives::{DhSecret, SigningKey, Suite};
use tern_e2ee::ratchet::Session;
use tern_e2ee::x3dh::{self, Bundle, DeviceIdentity, OneTimePrekey, SignedPrekey};

const NOW: u64 = 1_800_000_000_000;

fn rate(label: &str, n: u32, f: impl FnMut()) {
    let mut f = f;
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    let secs = start.elapsed().as_secs_f64();
    println!("{label:<58} {:>10.0} /s  ({:.2} µs each)", f64::from(n) / secs, secs * 1e6 / f64::from(n));
}

fn main() {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let a_sig = SigningKey::generate(&mut rng).unwrap();
    let a_dh = DhSecret::generate(&mut rng);
    let alice =
        DeviceIdentity { user: "alice".into(), device: "phone".into(), sig_pub: a_sig.public(), dh_pub: a_dh.public() };
    let b_sig = SigningKey::generate(&mut rng).unwrap();
    let b_dh = DhSecret::generate(&mut rng);
    let bob =
        DeviceIdentity { user: "bob".into(), device: "laptop".into(), sig_pub: b_sig.public(), dh_pub: b_dh.public() };
    let (spk, opk) = (DhSecret::generate(&mut rng), DhSecret::generate(&mut rng));
    let mut signed = SignedPrekey { id: 1, public: spk.public(), created_ms: NOW, sig: [0; 64] };
    x3dh::sign_spk(&b_sig, "bob", "laptop", &mut signed).unwrap();
    let mut one = OneTimePrekey { id: 1, public: opk.public(), sig: [0; 64] };
    x3dh::sign_opk(&b_sig, "bob", "laptop", &mut one).unwrap();
    let bundle = Bundle { identity: bob.clone(), signed_prekey: signed, one_time_prekey: Some(one) };

    rate("session setup (initiate + respond + both ratchets, OPK)", 2_000, || {
        let init = x3dh::initiate(Suite::Aes256Gcm, &alice, &a_dh, &bundle, NOW, &mut rng).unwrap();
        let (sk, ad) = x3dh::respond(Suite::Aes256Gcm, &bob, &b_dh, &spk, Some(&opk), &alice, &init.ek_pub).unwrap();
        let _a = Session::initiator(Suite::Aes256Gcm, &init.shared, init.ad, &init.spk.public, &mut rng).unwrap();
        let _b = Session::responder(Suite::Aes256Gcm, &sk, ad, spk.clone());
    });

    for suite in [Suite::Aes256Gcm, Suite::ChaCha20Poly1305] {
        let init = x3dh::initiate(suite, &alice, &a_dh, &bundle, NOW, &mut rng).unwrap();
        let (sk, ad) = x3dh::respond(suite, &bob, &b_dh, &spk, Some(&opk), &alice, &init.ek_pub).unwrap();
        let mut a = Session::initiator(suite, &init.shared, init.ad, &init.spk.public, &mut rng).unwrap();
        let mut b = Session::responder(suite, &sk, ad, spk.clone());
        for size in [64usize, 1024] {
            let payload = vec![0x42u8; size];
            rate(&format!("{suite:?} {size} B: encrypt + decrypt, same chain"), 20_000, || {
                let m = a.encrypt(&payload).unwrap();
                b.decrypt(&m, &mut rng).unwrap();
            });
        }
        let payload = vec![0x42u8; 64];
        rate(&format!("{suite:?} 64 B: encrypt + decrypt, DH step every message"), 2_000, || {
            let m = a.encrypt(&payload).unwrap();
            b.decrypt(&m, &mut rng).unwrap();
            let m = b.encrypt(&payload).unwrap();
            a.decrypt(&m, &mut rng).unwrap();
        });
    }
}
