//! Replays `spec/vectors/e2ee/session_test.json`: every frozen transcript reproduces byte for
//! byte, and every negative case fails with its expected error, leaving the session usable.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use serde_json::Value;
use support::transcript::{Inputs, ScriptedRng};
use tern_e2ee::primitives::{CryptoError, DhSecret};
use tern_e2ee::ratchet::{RatchetError, Session};
use tern_e2ee::x3dh::{self, DeviceIdentity, X3dhError};

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../spec/vectors/e2ee/session_test.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn frozen_transcripts_reproduce_byte_for_byte() {
    let doc = vectors();
    let tests = doc["testGroups"][0]["tests"].as_array().unwrap();
    assert!(tests.len() >= 2);
    for t in tests {
        let inputs = Inputs::from_json(&t["input"]);
        assert_eq!(inputs.run(), t["output"], "tcId {}", t["tcId"]);
    }
}

fn error_name(e: X3dhError) -> String {
    match e {
        X3dhError::Crypto(c) => format!("{c:?}"),
        other => format!("{other:?}"),
    }
}

fn identity(user: &str, device: &str, sig_seed: [u8; 32], dh: [u8; 32]) -> DeviceIdentity {
    let sig = tern_e2ee::primitives::SigningKey::from_seed(sig_seed).unwrap();
    DeviceIdentity {
        user: user.into(),
        device: device.into(),
        sig_pub: sig.public(),
        dh_pub: DhSecret::from_bytes(dh).public(),
    }
}

#[test]
fn negative_cases_fail_as_the_vectors_say() {
    let doc = vectors();
    let bases = doc["testGroups"][0]["tests"].as_array().unwrap();
    let tests = doc["testGroups"][1]["tests"].as_array().unwrap();
    assert!(tests.len() >= 8);
    for t in tests {
        let base = bases.iter().find(|b| b["tcId"] == t["base"]).unwrap();
        let mut inputs = Inputs::from_json(&base["input"]);
        let expected = t["expected_error"].as_str().unwrap();
        let mutation = t["mutation"].as_str().unwrap();
        let alice = identity("alice", "phone", inputs.alice_sig_seed, inputs.alice_dh);
        let alice_dh = DhSecret::from_bytes(inputs.alice_dh);
        let mut rng = ScriptedRng::new(&inputs.alice_random);
        let got = match mutation {
            "ciphertext_flipped" | "message_replayed" => {
                let outcome = ratchet_mutation(&inputs, &base["output"], mutation);
                assert_eq!(outcome, expected, "tcId {}", t["tcId"]);
                continue;
            }
            "spk_stale" => {
                inputs.now_ms = inputs.spk_created_ms + x3dh::SPK_MAX_AGE_MS + 1;
                x3dh::initiate(inputs.suite, &alice, &alice_dh, &inputs.bundle(), inputs.now_ms, &mut rng)
            }
            _ => {
                let mut bundle = inputs.bundle();
                match mutation {
                    "spk_signature_flipped" => bundle.signed_prekey.sig[10] ^= 1,
                    "opk_signature_flipped" => bundle.one_time_prekey.as_mut().unwrap().sig[10] ^= 1,
                    "identity_dh_high_bit" => bundle.identity.dh_pub[31] |= 0x80,
                    "identity_sig_small_order" => {
                        bundle.identity.sig_pub = [0; 32];
                        bundle.identity.sig_pub[0] = 1;
                    }
                    "spk_small_order" => {
                        // Bob signs a small-order prekey himself: only the agreement check stops it.
                        bundle.signed_prekey.public = [0; 32];
                        let sig = tern_e2ee::primitives::SigningKey::from_seed(inputs.bob_sig_seed).unwrap();
                        x3dh::sign_spk(&sig, "bob", "laptop", &mut bundle.signed_prekey).unwrap();
                    }
                    other => panic!("unknown mutation {other}"),
                }
                x3dh::initiate(inputs.suite, &alice, &alice_dh, &bundle, inputs.now_ms, &mut rng)
            }
        };
        assert_eq!(got.map(|_| ()).map_err(error_name), Err(expected.to_string()), "tcId {} {mutation}", t["tcId"]);
    }
}

/// Rebuilds Bob's session from the transcript and feeds it the first message, mutated; then
/// checks that the genuine message still decrypts (the session was left unchanged).
fn ratchet_mutation(inputs: &Inputs, output: &Value, mutation: &str) -> String {
    let bob = identity("bob", "laptop", inputs.bob_sig_seed, inputs.bob_dh);
    let alice = identity("alice", "phone", inputs.alice_sig_seed, inputs.alice_dh);
    let spk = DhSecret::from_bytes(inputs.spk);
    let opk = inputs.opk.map(|(_, s)| DhSecret::from_bytes(s));
    let ek: [u8; 32] = hex::decode(output["ek_pub"].as_str().unwrap()).unwrap().try_into().unwrap();
    let (sk, ad) =
        x3dh::respond(inputs.suite, &bob, &DhSecret::from_bytes(inputs.bob_dh), &spk, opk.as_ref(), &alice, &ek)
            .unwrap();
    let mut session = Session::responder(inputs.suite, &sk, ad, spk);
    let mut rng = ScriptedRng::new(&inputs.bob_random);
    let m = &output["messages"][0];
    let genuine = tern_e2ee::ratchet::Message {
        dh_pub: hex::decode(m["dh_pub"].as_str().unwrap()).unwrap().try_into().unwrap(),
        pn: m["pn"].as_u64().unwrap() as u32,
        n: m["n"].as_u64().unwrap() as u32,
        ciphertext: hex::decode(m["ciphertext"].as_str().unwrap()).unwrap(),
    };
    let err = if mutation == "ciphertext_flipped" {
        let mut bad = genuine.clone();
        bad.ciphertext[3] ^= 1;
        let err = session.decrypt(&bad, &mut rng).unwrap_err();
        // A fresh randomness script: the failed attempt's draw was rolled back with the state.
        let mut rng = ScriptedRng::new(&inputs.bob_random);
        assert_eq!(session.decrypt(&genuine, &mut rng).unwrap(), inputs.messages[0].1.as_bytes());
        err
    } else {
        session.decrypt(&genuine, &mut rng).unwrap();
        session.decrypt(&genuine, &mut rng).unwrap_err()
    };
    match err {
        RatchetError::Crypto(CryptoError::Decrypt) => "Decrypt".into(),
        other => format!("{other:?}"),
    }
}

fn group_vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../spec/vectors/e2ee/group_test.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

mod group {
    use super::*;
    use support::group_transcript::GroupInputs;
    use tern_e2ee::devices::{self, DeviceError};
    use tern_e2ee::group::{Distribution, GroupError, GroupMessage, GroupOp, InboundGroupSession, OpKind, Roster};

    #[test]
    fn the_group_transcript_reproduces_and_decrypts() {
        let doc = group_vectors();
        let t = &doc["testGroups"][0]["tests"][0];
        let inputs = GroupInputs::from_json(&t["input"]);
        assert_eq!(inputs.run(), t["output"]);
        // A member given the distribution reads every message.
        let d = Distribution::from_bytes(&hex::decode(t["output"]["distribution"].as_str().unwrap()).unwrap()).unwrap();
        let mut member = InboundGroupSession::new("alice", "phone", &d).unwrap();
        for (m, text) in t["output"]["messages"].as_array().unwrap().iter().zip(&inputs.messages) {
            let msg = GroupMessage::from_bytes(&hex::decode(m.as_str().unwrap()).unwrap()).unwrap();
            assert_eq!(member.decrypt(&msg).unwrap(), text.as_bytes());
        }
    }

    fn name(e: impl std::fmt::Debug) -> String {
        let s = format!("{e:?}");
        let s = s.trim_start_matches("Crypto(").trim_start_matches("Device(").trim_start_matches("Group(");
        s.split(['(', ' ', ')', '{']).next().unwrap().to_string()
    }

    #[test]
    fn group_negative_cases_fail_as_the_vectors_say() {
        let doc = group_vectors();
        let base = &doc["testGroups"][0]["tests"][0];
        let inputs = GroupInputs::from_json(&base["input"]);
        let b = inputs.build();
        let out = &base["output"];
        let create = GroupOp::from_bytes(&hex::decode(out["create_op"].as_str().unwrap()).unwrap()).unwrap();
        let msg0 = GroupMessage::from_bytes(&hex::decode(out["messages"][0].as_str().unwrap()).unwrap()).unwrap();
        let tests = doc["testGroups"][1]["tests"].as_array().unwrap();
        assert!(tests.len() >= 8);
        for t in tests {
            let got = match t["mutation"].as_str().unwrap() {
                "list_signed_by_another_key" => {
                    let other = tern_e2ee::primitives::SigningKey::from_seed([7; 32]).unwrap();
                    let forged = devices::sign_list(&other, "alice", 2, 1, std::slice::from_ref(&b.cert)).unwrap();
                    name(devices::verify_list(&b.aik.public(), "alice", &forged, 1).unwrap_err())
                }
                "list_rollback" => name(devices::verify_list(&b.aik.public(), "alice", &b.list, 2).unwrap_err()),
                "cert_not_in_list" => {
                    let mut cert = b.cert.clone();
                    cert.device_id = "evil".into();
                    match devices::verify_device(&b.aik.public(), &b.list, &cert).unwrap_err() {
                        DeviceError::NotListed(_) => "NotListed".into(),
                        other => name(other),
                    }
                }
                "op_signed_by_another_key" => {
                    let mut op = create.clone();
                    op.sign(&tern_e2ee::primitives::SigningKey::from_seed([8; 32]).unwrap()).unwrap();
                    name(Roster::create(&op, &b.identity.sig_pub).unwrap_err())
                }
                "op_wrong_epoch" => {
                    let mut roster = Roster::create(&create, &b.identity.sig_pub).unwrap();
                    let mut op = roster.propose("alice", "phone", OpKind::Add("zed".into()), 2).unwrap();
                    op.epoch = 3;
                    op.sign(&b.device_sig).unwrap();
                    name(roster.apply(&op, &b.identity.sig_pub).unwrap_err())
                }
                "op_add_by_non_admin" => {
                    let roster = Roster::create(&create, &b.identity.sig_pub).unwrap();
                    match roster.propose("bob", "laptop", OpKind::Add("zed".into()), 2).unwrap_err() {
                        GroupError::BadOperation(_) => "BadOperation".into(),
                        other => name(other),
                    }
                }
                "group_message_signature_flipped" => {
                    let mut member =
                        InboundGroupSession::new("alice", "phone", &inputs.sender().distribution()).unwrap();
                    let mut bad = msg0.clone();
                    bad.ciphertext[0] ^= 1;
                    let err = name(member.decrypt(&bad).unwrap_err());
                    assert!(member.decrypt(&msg0).is_ok(), "the refused message changed the chain");
                    err
                }
                "group_message_replayed" => {
                    let mut member =
                        InboundGroupSession::new("alice", "phone", &inputs.sender().distribution()).unwrap();
                    member.decrypt(&msg0).unwrap();
                    name(member.decrypt(&msg0).unwrap_err())
                }
                other => panic!("unknown mutation {other}"),
            };
            assert_eq!(got, t["expected_error"].as_str().unwrap(), "tcId {}", t["tcId"]);
        }
    }
}

/// The primitives' known-answer vectors in `spec/vectors/e2ee/primitives_test.json`.
#[test]
fn primitive_known_answers_hold() {
    use tern_e2ee::primitives::{hkdf_sha256, verify, Suite};
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../spec/vectors/e2ee/primitives_test.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let hx = |v: &Value| hex::decode(v.as_str().unwrap()).unwrap();
    let mut ran = 0;
    for g in doc["testGroups"].as_array().unwrap() {
        for t in g["tests"].as_array().unwrap() {
            ran += 1;
            match g["type"].as_str().unwrap() {
                "X25519" => {
                    let shared = DhSecret::from_bytes(hx(&t["private"]).try_into().unwrap())
                        .dh(&hx(&t["public"]).try_into().unwrap())
                        .unwrap();
                    assert_eq!(shared.to_vec(), hx(&t["shared"]), "tcId {}", t["tcId"]);
                }
                "Ed25519Verify" => {
                    let sig: Option<[u8; 64]> = hx(&t["sig"]).try_into().ok();
                    let ok =
                        sig.is_some_and(|s| verify(&hx(&t["public"]).try_into().unwrap(), &hx(&t["msg"]), &s).is_ok());
                    assert_eq!(ok, t["result"] == "valid", "tcId {}", t["tcId"]);
                }
                "Aead" => {
                    let suite = Suite::from_id(t["suite"].as_u64().unwrap() as u16).unwrap();
                    let (key, nonce) = (hx(&t["key"]).try_into().unwrap(), hx(&t["nonce"]).try_into().unwrap());
                    assert_eq!(
                        suite.seal(&key, &nonce, &hx(&t["aad"]), &hx(&t["pt"])).unwrap(),
                        hx(&t["ct_and_tag"]),
                        "tcId {}",
                        t["tcId"]
                    );
                }
                "HkdfSha256" => {
                    let okm = hx(&t["okm"]);
                    let mut out = vec![0u8; okm.len()];
                    hkdf_sha256(&hx(&t["salt"]), &hx(&t["ikm"]), &[&hx(&t["info"])], &mut out).unwrap();
                    assert_eq!(out, okm, "tcId {}", t["tcId"]);
                }
                other => panic!("unknown group {other}"),
            }
        }
    }
    assert_eq!(json_count(&doc), ran);
}

fn json_count(doc: &Value) -> usize {
    doc["numberOfTests"].as_u64().unwrap() as usize
}
