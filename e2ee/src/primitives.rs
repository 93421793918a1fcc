//! Cryptographic primitives of the E2EE suites, with the key-validity rules of spec 9:
//! X25519 public keys with bit 255 set are refused, an all-zero (non-contributory) DH output is
//! refused, and Ed25519 public keys must be canonical and not of small order (ring accepts
//! both, so they are checked here with curve25519-dalek before ring verifies).

use rand_core::{CryptoRng, RngCore};
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::signature::{self, Ed25519KeyPair, KeyPair};
use zeroize::{Zeroize, Zeroizing};

/// Why a cryptographic operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The AEAD tag did not verify: the message was altered, or the key is wrong.
    #[error("decryption failed")]
    Decrypt,
    /// An X25519 public key has its high bit set.
    #[error("X25519 public key has bit 255 set")]
    HighBitKey,
    /// A DH output was all zeros (the peer key is of small order).
    #[error("non-contributory X25519 output")]
    NonContributory,
    /// An Ed25519 public key is not a canonical encoding of a point of large order.
    #[error("invalid Ed25519 public key")]
    BadSigningKey,
    /// A signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// An unknown suite id.
    #[error("unknown suite {0}")]
    UnknownSuite(u16),
    /// A length or field does not fit the encoding.
    #[error("malformed input: {0}")]
    Malformed(&'static str),
}

/// A cipher suite (spec 9.4): X25519, Ed25519 and HKDF-SHA-256 with one AEAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Suite {
    /// 0x0001, the default: AES-256-GCM.
    Aes256Gcm,
    /// 0x0002, the IoT profile: ChaCha20-Poly1305 (no AES hardware needed).
    ChaCha20Poly1305,
}

impl Suite {
    /// The suite for a wire id.
    pub fn from_id(id: u16) -> Result<Suite, CryptoError> {
        match id {
            1 => Ok(Suite::Aes256Gcm),
            2 => Ok(Suite::ChaCha20Poly1305),
            other => Err(CryptoError::UnknownSuite(other)),
        }
    }

    /// The wire id.
    pub fn id(self) -> u16 {
        match self {
            Suite::Aes256Gcm => 1,
            Suite::ChaCha20Poly1305 => 2,
        }
    }

    fn aead(self) -> &'static aead::Algorithm {
        match self {
            Suite::Aes256Gcm => &aead::AES_256_GCM,
            Suite::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }

    fn key(self, key: &[u8; 32]) -> Result<LessSafeKey, CryptoError> {
        UnboundKey::new(self.aead(), key).map(LessSafeKey::new).map_err(|_| CryptoError::Malformed("AEAD key"))
    }

    /// Encrypts `plaintext` and appends the 16-byte tag. Every key/nonce pair is used once:
    /// callers derive both per message.
    pub fn seal(self, key: &[u8; 32], nonce: &[u8; 12], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut buf = plaintext.to_vec();
        self.key(key)?
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), &mut buf)
            .map_err(|_| CryptoError::Malformed("plaintext too long"))?;
        Ok(buf)
    }

    /// Decrypts and checks the tag; the full 16-byte tag is always required.
    pub fn open(
        self,
        key: &[u8; 32],
        nonce: &[u8; 12],
        aad: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let mut buf = Zeroizing::new(ciphertext.to_vec());
        let len = self
            .key(key)?
            .open_in_place(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), &mut buf)
            .map_err(|_| CryptoError::Decrypt)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

/// HKDF-SHA-256 (RFC 5869) into `out` (at most 255 × 32 bytes).
pub fn hkdf_sha256(salt: &[u8], ikm: &[u8], info: &[&[u8]], out: &mut [u8]) -> Result<(), CryptoError> {
    struct Len(usize);
    impl ring::hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, salt)
        .extract(ikm)
        .expand(info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .map_err(|_| CryptoError::Malformed("HKDF output length"))
}

/// Appends `bytes` with a u16 length prefix (the `lp(x)` of spec 9.4).
pub fn lp(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), CryptoError> {
    let len = u16::try_from(bytes.len()).map_err(|_| CryptoError::Malformed("field longer than 65535 bytes"))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// An AEAD key and nonce from HKDF-SHA-256 over a message key (`L = 44`: key ‖ nonce), as the
/// 1:1 and group message keys are derived (spec 9.6, 9.8).
pub fn aead_key_nonce(mk: &[u8; 32], info: &[&[u8]]) -> Result<(Zeroizing<[u8; 32]>, [u8; 12]), CryptoError> {
    let mut out = Zeroizing::new([0u8; 44]);
    hkdf_sha256(&[0u8; 32], mk, info, out.as_mut())?;
    let (k, n) = out.split_at(32);
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(k);
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(n);
    Ok((key, nonce))
}

/// HMAC-SHA-256.
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), data);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// SHA-256.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Refuses an X25519 public key with bit 255 set (spec 9: a canonical u-coordinate never has
/// it, and accepting it would let two encodings name one key).
pub fn check_dh_public(public: &[u8; 32]) -> Result<(), CryptoError> {
    if public[31] & 0x80 != 0 {
        return Err(CryptoError::HighBitKey);
    }
    Ok(())
}

/// A reusable X25519 private key (zeroized on drop).
pub struct DhSecret(x25519_dalek::StaticSecret);

impl DhSecret {
    /// The key whose scalar is built from these 32 bytes (clamped as RFC 7748 says).
    pub fn from_bytes(bytes: [u8; 32]) -> DhSecret {
        DhSecret(x25519_dalek::StaticSecret::from(bytes))
    }

    /// A fresh key from `rng`.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> DhSecret {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(bytes.as_mut());
        DhSecret::from_bytes(*bytes)
    }

    /// The public key.
    pub fn public(&self) -> [u8; 32] {
        x25519_dalek::PublicKey::from(&self.0).to_bytes()
    }

    /// The private key's bytes, for persisting (zeroized on drop).
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// X25519 with `peer`, refusing high-bit peer keys and all-zero outputs.
    pub fn dh(&self, peer: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
        check_dh_public(peer)?;
        let shared = self.0.diffie_hellman(&x25519_dalek::PublicKey::from(*peer));
        if !shared.was_contributory() {
            return Err(CryptoError::NonContributory);
        }
        Ok(Zeroizing::new(shared.to_bytes()))
    }
}

impl Clone for DhSecret {
    fn clone(&self) -> Self {
        DhSecret(self.0.clone())
    }
}

/// Refuses an Ed25519 public key that is not the canonical encoding of a point, or whose
/// point has small order (a key that would verify forged signatures for many messages).
pub fn check_signing_public(public: &[u8; 32]) -> Result<(), CryptoError> {
    let compressed = curve25519_dalek::edwards::CompressedEdwardsY(*public);
    let point = compressed.decompress().ok_or(CryptoError::BadSigningKey)?;
    if point.compress().to_bytes() != *public || point.is_small_order() {
        return Err(CryptoError::BadSigningKey);
    }
    Ok(())
}

/// An Ed25519 signing key (the seed is kept, zeroized on drop, so the key can be persisted).
pub struct SigningKey {
    pair: Ed25519KeyPair,
    seed: Zeroizing<[u8; 32]>,
}

impl SigningKey {
    /// The key of a 32-byte seed (RFC 8032 private key).
    pub fn from_seed(seed: [u8; 32]) -> Result<SigningKey, CryptoError> {
        let seed = Zeroizing::new(seed);
        let pair = Ed25519KeyPair::from_seed_unchecked(seed.as_ref()).map_err(|_| CryptoError::BadSigningKey)?;
        Ok(SigningKey { pair, seed })
    }

    /// A fresh key from `rng`.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Result<SigningKey, CryptoError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        SigningKey::from_seed(*seed)
    }

    /// The public key.
    pub fn public(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.pair.public_key().as_ref());
        out
    }

    /// The seed, for persisting.
    pub fn seed(&self) -> &[u8; 32] {
        &self.seed
    }

    /// Signs `msg` (deterministic, RFC 8032).
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        let mut out = [0u8; 64];
        out.copy_from_slice(self.pair.sign(msg).as_ref());
        out
    }
}

/// Verifies an Ed25519 signature strictly: the public key is checked first.
pub fn verify(public: &[u8; 32], msg: &[u8], sig: &[u8; 64]) -> Result<(), CryptoError> {
    check_signing_public(public)?;
    signature::UnparsedPublicKey::new(&signature::ED25519, public)
        .verify(msg, sig)
        .map_err(|_| CryptoError::BadSignature)
}

/// Randomness from the operating system, through ring's `SystemRandom`.
#[derive(Debug)]
pub struct SystemRng(ring::rand::SystemRandom);

impl SystemRng {
    /// The system source.
    pub fn new() -> SystemRng {
        SystemRng(ring::rand::SystemRandom::new())
    }
}

impl Default for SystemRng {
    fn default() -> Self {
        SystemRng::new()
    }
}

impl RngCore for SystemRng {
    fn next_u32(&mut self) -> u32 {
        rand_core::impls::next_u32_via_fill(self)
    }
    fn next_u64(&mut self) -> u64 {
        rand_core::impls::next_u64_via_fill(self)
    }
    #[allow(clippy::panic)] // as rand's OsRng: a machine without randomness cannot do E2EE at all
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        if ring::rand::SecureRandom::fill(&self.0, dest).is_err() {
            dest.zeroize();
            panic!("the operating system's random source failed");
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        ring::rand::SecureRandom::fill(&self.0, dest).map_err(|_| rand_core::Error::new("system random source failed"))
    }
}

impl CryptoRng for SystemRng {}
