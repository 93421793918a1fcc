//! The Double Ratchet for 1:1 messages (design 6.7; Signal's specification, without header
//! encryption).
//!
//! ```text
//! KDF_RK(RK, dh)  = HKDF(salt RK, ikm dh, "TERN-E2EE-v1/DR-root")  -> RK' ‖ CK      (64 bytes)
//! KDF_CK(CK)      : MK = HMAC(CK, 0x01), CK' = HMAC(CK, 0x02)
//! MsgKeys(MK)     = HKDF(salt 0³², ikm MK, "TERN-E2EE-v1/DR-msg" ‖ suite) -> key ‖ nonce (44)
//! header          = dh_pub ‖ pn (u32) ‖ n (u32)                                     (40 bytes)
//! ciphertext      = AEAD(key, nonce, pad(plaintext), AD ‖ version ‖ suite ‖ header)
//! ```
//!
//! Decryption works on a copy of the state and commits only when the AEAD tag verifies, so a
//! forged, replayed or corrupted message leaves the session exactly as it was. Message keys are
//! used once and dropped (zeroized); keys of skipped messages are kept, bounded per chain
//! ([`MAX_SKIP`]) and in total ([`MAX_STORED_SKIPPED`], oldest evicted first).

use std::collections::VecDeque;

use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::primitives::{hkdf_sha256, hmac_sha256, CryptoError, DhSecret, Suite};

/// Most message keys skipped in one receiving chain.
pub const MAX_SKIP: u32 = 1000;
/// Most skipped message keys kept per session.
pub const MAX_STORED_SKIPPED: usize = 2000;
/// The message format version.
pub const VERSION: u8 = 1;

/// Why a message could not be encrypted or decrypted. The session is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RatchetError {
    /// A primitive failed: most often the tag did not verify (tampering, wrong session).
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The message would skip more than [`MAX_SKIP`] keys.
    #[error("too many skipped messages")]
    TooManySkipped,
    /// The message was already decrypted (or its key expired).
    #[error("duplicate or expired message")]
    Duplicate,
    /// The responder cannot send before it has received the first message.
    #[error("no sending chain yet")]
    NotReady,
    /// A counter reached 2³²−1: start a new session.
    #[error("counter exhausted")]
    Exhausted,
}

/// One encrypted message: the header in clear, the ciphertext with its tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The sender's current ratchet public key.
    pub dh_pub: [u8; 32],
    /// Messages in the sender's previous sending chain.
    pub pn: u32,
    /// This message's number in its chain.
    pub n: u32,
    /// AEAD output.
    pub ciphertext: Vec<u8>,
}

impl Message {
    fn header(&self) -> [u8; 40] {
        let mut h = [0u8; 40];
        let (dh, counters) = h.split_at_mut(32);
        let (pn, n) = counters.split_at_mut(4);
        dh.copy_from_slice(&self.dh_pub);
        pn.copy_from_slice(&self.pn.to_be_bytes());
        n.copy_from_slice(&self.n.to_be_bytes());
        h
    }
}

type Key = Zeroizing<[u8; 32]>;

/// A Double Ratchet session.
#[derive(Clone)]
pub struct Session {
    suite: Suite,
    ad: Vec<u8>,
    root: Key,
    dh_self: DhSecret,
    /// `dh_self`'s public key, computed once per ratchet step (a base-point multiplication).
    dh_self_pub: [u8; 32],
    dh_remote: Option<[u8; 32]>,
    send_chain: Option<Key>,
    recv_chain: Option<Key>,
    ns: u32,
    nr: u32,
    pn: u32,
    skipped: VecDeque<(([u8; 32], u32), Key)>,
}

fn kdf_rk(root: &[u8; 32], dh: &[u8; 32]) -> Result<(Key, Key), CryptoError> {
    let mut out = Zeroizing::new([0u8; 64]);
    hkdf_sha256(root, dh, &[b"TERN-E2EE-v1/DR-root"], out.as_mut())?;
    let (rk, ck) = out.split_at(32);
    let (mut root, mut chain) = (Zeroizing::new([0u8; 32]), Zeroizing::new([0u8; 32]));
    root.copy_from_slice(rk);
    chain.copy_from_slice(ck);
    Ok((root, chain))
}

fn kdf_ck(ck: &[u8; 32]) -> (Key, Key) {
    (Zeroizing::new(hmac_sha256(ck, &[0x02])), Zeroizing::new(hmac_sha256(ck, &[0x01])))
}

fn message_keys(suite: Suite, mk: &[u8; 32]) -> Result<(Key, [u8; 12]), CryptoError> {
    crate::primitives::aead_key_nonce(mk, &[b"TERN-E2EE-v1/DR-msg", &suite.id().to_be_bytes()])
}

/// Pads to a size bucket (multiples of 64 bytes up to 1 KiB, then of 256) with `0x80 0x00…`,
/// so the broker learns only the bucket.
pub fn pad(plaintext: &[u8]) -> Vec<u8> {
    let len = plaintext.len() + 1;
    let step = if len <= 1024 { 64 } else { 256 };
    let target = len.div_ceil(step) * step;
    let mut out = Vec::with_capacity(target);
    out.extend_from_slice(plaintext);
    out.push(0x80);
    out.resize(target, 0);
    out
}

/// Removes [`pad`]'s padding.
pub fn unpad(padded: &[u8]) -> Result<&[u8], CryptoError> {
    let end = padded.iter().rposition(|&b| b != 0).ok_or(CryptoError::Malformed("padding"))?;
    match padded.get(end) {
        Some(0x80) => Ok(padded.get(..end).unwrap_or_default()),
        _ => Err(CryptoError::Malformed("padding")),
    }
}

impl Session {
    /// The initiator's session after X3DH: `shared` is SK, `responder_ratchet` the
    /// responder's signed prekey.
    pub fn initiator(
        suite: Suite,
        shared: &[u8; 32],
        ad: Vec<u8>,
        responder_ratchet: &[u8; 32],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Session, RatchetError> {
        let dh_self = DhSecret::generate(rng);
        let (root, send) = kdf_rk(shared, &*dh_self.dh(responder_ratchet)?)?;
        Ok(Session {
            suite,
            ad,
            root,
            dh_self_pub: dh_self.public(),
            dh_self,
            dh_remote: Some(*responder_ratchet),
            send_chain: Some(send),
            recv_chain: None,
            ns: 0,
            nr: 0,
            pn: 0,
            skipped: VecDeque::new(),
        })
    }

    /// The responder's session after X3DH: its signed prekey is its first ratchet key.
    pub fn responder(suite: Suite, shared: &[u8; 32], ad: Vec<u8>, signed_prekey: DhSecret) -> Session {
        Session {
            suite,
            ad,
            root: Zeroizing::new(*shared),
            dh_self_pub: signed_prekey.public(),
            dh_self: signed_prekey,
            dh_remote: None,
            send_chain: None,
            recv_chain: None,
            ns: 0,
            nr: 0,
            pn: 0,
            skipped: VecDeque::new(),
        }
    }

    fn aad(&self, header: &[u8; 40]) -> Vec<u8> {
        let mut aad = self.ad.clone();
        aad.push(VERSION);
        aad.extend_from_slice(&self.suite.id().to_be_bytes());
        aad.extend_from_slice(header);
        aad
    }

    /// Encrypts one message (padded to its bucket).
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<Message, RatchetError> {
        let chain = self.send_chain.as_ref().ok_or(RatchetError::NotReady)?;
        if self.ns == u32::MAX {
            return Err(RatchetError::Exhausted);
        }
        let (next, mk) = kdf_ck(chain);
        let (key, nonce) = message_keys(self.suite, &mk)?;
        let mut msg = Message { dh_pub: self.dh_self_pub, pn: self.pn, n: self.ns, ciphertext: Vec::new() };
        msg.ciphertext = self.suite.seal(&key, &nonce, &self.aad(&msg.header()), &pad(plaintext))?;
        self.send_chain = Some(next);
        self.ns += 1;
        Ok(msg)
    }

    /// Decrypts one message. On any error the session is unchanged.
    pub fn decrypt(&mut self, msg: &Message, rng: &mut (impl RngCore + CryptoRng)) -> Result<Vec<u8>, RatchetError> {
        let mut next = self.clone();
        let plaintext = next.decrypt_in_place(msg, rng)?;
        *self = next;
        Ok(plaintext)
    }

    fn decrypt_in_place(
        &mut self,
        msg: &Message,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Vec<u8>, RatchetError> {
        if let Some(i) = self.skipped.iter().position(|(id, _)| *id == (msg.dh_pub, msg.n)) {
            let (_, mk) = self.skipped.remove(i).ok_or(RatchetError::Duplicate)?;
            return self.open(msg, &mk);
        }
        if self.dh_remote == Some(msg.dh_pub) {
            if msg.n < self.nr {
                return Err(RatchetError::Duplicate);
            }
        } else {
            self.skip_until(msg.pn)?;
            self.dh_step(&msg.dh_pub, rng)?;
        }
        self.skip_until(msg.n)?;
        let chain = self.recv_chain.as_ref().ok_or(RatchetError::NotReady)?;
        let (next, mk) = kdf_ck(chain);
        self.recv_chain = Some(next);
        self.nr = self.nr.checked_add(1).ok_or(RatchetError::Exhausted)?;
        self.open(msg, &mk)
    }

    fn open(&self, msg: &Message, mk: &[u8; 32]) -> Result<Vec<u8>, RatchetError> {
        let (key, nonce) = message_keys(self.suite, mk)?;
        let padded = self.suite.open(&key, &nonce, &self.aad(&msg.header()), &msg.ciphertext)?;
        Ok(unpad(&padded)?.to_vec())
    }

    /// Stores the keys of the current receiving chain's messages below `until`.
    fn skip_until(&mut self, until: u32) -> Result<(), RatchetError> {
        let Some(mut chain) = self.recv_chain.clone() else { return Ok(()) };
        let Some(remote) = self.dh_remote else { return Ok(()) };
        if until.saturating_sub(self.nr) > MAX_SKIP {
            return Err(RatchetError::TooManySkipped);
        }
        while self.nr < until {
            let (next, mk) = kdf_ck(&chain);
            self.skipped.push_back(((remote, self.nr), mk));
            if self.skipped.len() > MAX_STORED_SKIPPED {
                self.skipped.pop_front();
            }
            chain = next;
            self.nr += 1;
        }
        self.recv_chain = Some(chain);
        Ok(())
    }

    /// A DH ratchet step on a new remote ratchet key.
    fn dh_step(&mut self, remote: &[u8; 32], rng: &mut (impl RngCore + CryptoRng)) -> Result<(), RatchetError> {
        self.pn = self.ns;
        self.ns = 0;
        self.nr = 0;
        self.dh_remote = Some(*remote);
        let (root, recv) = kdf_rk(&self.root, &*self.dh_self.dh(remote)?)?;
        self.dh_self = DhSecret::generate(rng);
        self.dh_self_pub = self.dh_self.public();
        let (root, send) = kdf_rk(&root, &*self.dh_self.dh(remote)?)?;
        self.root = root;
        self.recv_chain = Some(recv);
        self.send_chain = Some(send);
        Ok(())
    }

    pub(crate) fn encode(&self, e: &mut crate::persist::Enc) {
        e.u16(self.suite.id());
        e.bytes(&self.ad);
        e.key(&self.root);
        e.key(&self.dh_self.to_bytes());
        e.opt_key(self.dh_remote.as_ref());
        e.opt_key(self.send_chain.as_deref());
        e.opt_key(self.recv_chain.as_deref());
        e.u32(self.ns);
        e.u32(self.nr);
        e.u32(self.pn);
        e.len(self.skipped.len());
        for ((dh, n), mk) in &self.skipped {
            e.key(dh);
            e.u32(*n);
            e.key(mk);
        }
    }

    pub(crate) fn decode(d: &mut crate::persist::Dec<'_>) -> Result<Session, crate::persist::PersistError> {
        use crate::persist::PersistError;
        let suite = Suite::from_id(d.u16()?).map_err(|_| PersistError("suite"))?;
        let ad = d.bytes()?.to_vec();
        let root = Zeroizing::new(d.key()?);
        let dh_self = DhSecret::from_bytes(d.key()?);
        let (dh_remote, send_chain, recv_chain) =
            (d.opt_key()?, d.opt_key()?.map(Zeroizing::new), d.opt_key()?.map(Zeroizing::new));
        let (ns, nr, pn) = (d.u32()?, d.u32()?, d.u32()?);
        let mut skipped = VecDeque::new();
        for _ in 0..d.len()? {
            skipped.push_back(((d.key()?, d.u32()?), Zeroizing::new(d.key()?)));
        }
        Ok(Session {
            suite,
            ad,
            root,
            dh_self_pub: dh_self.public(),
            dh_self,
            dh_remote,
            send_chain,
            recv_chain,
            ns,
            nr,
            pn,
            skipped,
        })
    }

    /// The session's suite (chosen by the initiator).
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// Message keys currently kept for skipped messages.
    pub fn skipped_keys(&self) -> usize {
        self.skipped.len()
    }
}
