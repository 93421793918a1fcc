//! Groups (design 6.8): sender keys for messages, and client-signed membership operations that
//! the broker only sequences (REQ-E2E-005) but cannot forge.
//!
//! Each sender device keeps an outbound chain `(chain_id, iteration, CK, signing key)` and hands
//! its state to every current member device as a [`Distribution`], sent inside the pairwise
//! Double Ratchet session. `MK_i = HMAC(CK_i, 0x01)`, `CK_{i+1} = HMAC(CK_i, 0x02)`, message keys
//! come from HKDF over MK bound to the suite, group, epoch and chain, and every message is signed
//! with the chain's Ed25519 key so members cannot impersonate each other. When a member or
//! device leaves, every remaining sender starts a new chain ([`OutboundGroupSession::new`]) and
//! distributes it to the new roster only; receivers drop the leaver's chains.

use std::collections::{BTreeSet, VecDeque};

use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::primitives::{check_signing_public, hmac_sha256, lp, sha256, verify, CryptoError, SigningKey, Suite};

/// Most message keys one receiving chain may skip.
pub const MAX_GROUP_SKIP: u32 = 1000;
/// A sender rotates its chain after this many messages (some post-compromise security).
pub const ROTATE_AFTER: u32 = 1000;

type Key = Zeroizing<[u8; 32]>;

/// Why a group message or operation was refused. Receiving state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// A primitive failed (tag, signature, key).
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// No chain is known for this (group, epoch, sender device, chain id).
    #[error("unknown sender chain")]
    UnknownChain,
    /// The iteration was already decrypted.
    #[error("duplicate message")]
    Duplicate,
    /// The message skips more than [`MAX_GROUP_SKIP`] keys.
    #[error("too many skipped messages")]
    TooManySkipped,
    /// A membership operation does not follow the roster (epoch, previous hash, issuer rights,
    /// resulting roster).
    #[error("membership operation refused: {0}")]
    BadOperation(&'static str),
    /// Bytes that do not decode.
    #[error("malformed: {0}")]
    Malformed(&'static str),
}

/// Reads the encodings written with [`lp`] and fixed-width integers.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], GroupError> {
        if self.0.len() < n {
            return Err(GroupError::Malformed("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], GroupError> {
        self.take(N)?.try_into().map_err(|_| GroupError::Malformed("length"))
    }
    fn u8(&mut self) -> Result<u8, GroupError> {
        Ok(u8::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, GroupError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, GroupError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn string(&mut self) -> Result<String, GroupError> {
        let len = usize::from(u16::from_be_bytes(self.array()?));
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| GroupError::Malformed("not UTF-8"))
    }
    fn label(&mut self, label: &[u8]) -> Result<(), GroupError> {
        if self.take(label.len())? != label {
            return Err(GroupError::Malformed("wrong label"));
        }
        Ok(())
    }
    fn end(&self) -> Result<(), GroupError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(GroupError::Malformed("trailing bytes"))
        }
    }
}

/// A sender chain's state, as handed to one member device (inside a pairwise session).
pub struct Distribution {
    /// The group.
    pub group_id: String,
    /// The group epoch the chain belongs to.
    pub epoch: u64,
    /// The chain.
    pub chain_id: u32,
    /// The next iteration the sender will use.
    pub iteration: u32,
    /// The chain key at that iteration.
    pub chain_key: Key,
    /// The chain's signature key.
    pub sig_pub: [u8; 32],
}

const SKDM_LABEL: &[u8] = b"TERN-E2EE-v1/skdm";

impl Distribution {
    /// `label ‖ lp(group) ‖ epoch ‖ chain_id ‖ iteration ‖ CK ‖ sig_pub`, zeroized on drop.
    pub fn to_bytes(&self) -> Result<Zeroizing<Vec<u8>>, GroupError> {
        let mut out = Zeroizing::new(SKDM_LABEL.to_vec());
        lp(&mut out, self.group_id.as_bytes())?;
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.chain_id.to_be_bytes());
        out.extend_from_slice(&self.iteration.to_be_bytes());
        out.extend_from_slice(self.chain_key.as_ref());
        out.extend_from_slice(&self.sig_pub);
        Ok(out)
    }

    /// Parses [`Distribution::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Distribution, GroupError> {
        let mut r = Reader(bytes);
        r.label(SKDM_LABEL)?;
        let d = Distribution {
            group_id: r.string()?,
            epoch: r.u64()?,
            chain_id: r.u32()?,
            iteration: r.u32()?,
            chain_key: Zeroizing::new(r.array()?),
            sig_pub: r.array()?,
        };
        r.end()?;
        Ok(d)
    }
}

/// One group message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMessage {
    /// The suite.
    pub suite: Suite,
    /// The group.
    pub group_id: String,
    /// The epoch the sender was in.
    pub epoch: u64,
    /// Sender user and device.
    pub sender_user: String,
    /// See `sender_user`.
    pub sender_device: String,
    /// The sender chain.
    pub chain_id: u32,
    /// The message's position in the chain.
    pub iteration: u32,
    /// AEAD output.
    pub ciphertext: Vec<u8>,
    /// Ed25519 over the header and ciphertext with the chain's key.
    pub signature: [u8; 64],
}

const MSG_LABEL: &[u8] = b"TERN-E2EE-v1/group-msg";

impl GroupMessage {
    /// `version ‖ suite ‖ lp(group) ‖ epoch ‖ lp(user) ‖ lp(device) ‖ chain_id ‖ iteration`:
    /// the AEAD's associated data.
    fn header(&self) -> Result<Vec<u8>, CryptoError> {
        let mut h = vec![1u8];
        h.extend_from_slice(&self.suite.id().to_be_bytes());
        lp(&mut h, self.group_id.as_bytes())?;
        h.extend_from_slice(&self.epoch.to_be_bytes());
        lp(&mut h, self.sender_user.as_bytes())?;
        lp(&mut h, self.sender_device.as_bytes())?;
        h.extend_from_slice(&self.chain_id.to_be_bytes());
        h.extend_from_slice(&self.iteration.to_be_bytes());
        Ok(h)
    }

    /// What the chain key signs: `"TERN-E2EE-v1/sig/group-msg" ‖ header ‖ ciphertext`.
    fn signed(&self) -> Result<Vec<u8>, CryptoError> {
        let mut s = b"TERN-E2EE-v1/sig/group-msg".to_vec();
        s.extend_from_slice(&self.header()?);
        s.extend_from_slice(&self.ciphertext);
        Ok(s)
    }

    /// `label ‖ header ‖ u32 length ‖ ciphertext ‖ signature`.
    pub fn to_bytes(&self) -> Result<Vec<u8>, GroupError> {
        let mut out = MSG_LABEL.to_vec();
        out.extend_from_slice(&self.header()?);
        let len = u32::try_from(self.ciphertext.len()).map_err(|_| GroupError::Malformed("ciphertext too long"))?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&self.ciphertext);
        out.extend_from_slice(&self.signature);
        Ok(out)
    }

    /// Parses [`GroupMessage::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<GroupMessage, GroupError> {
        let mut r = Reader(bytes);
        r.label(MSG_LABEL)?;
        if r.u8()? != 1 {
            return Err(GroupError::Malformed("version"));
        }
        let suite = Suite::from_id(u16::from_be_bytes(r.array()?))?;
        let group_id = r.string()?;
        let epoch = r.u64()?;
        let (sender_user, sender_device) = (r.string()?, r.string()?);
        let (chain_id, iteration) = (r.u32()?, r.u32()?);
        let len = usize::try_from(r.u32()?).map_err(|_| GroupError::Malformed("length"))?;
        let ciphertext = r.take(len)?.to_vec();
        let signature = r.array()?;
        r.end()?;
        Ok(GroupMessage {
            suite,
            group_id,
            epoch,
            sender_user,
            sender_device,
            chain_id,
            iteration,
            ciphertext,
            signature,
        })
    }
}

fn chain_step(ck: &[u8; 32]) -> (Key, Key) {
    (Zeroizing::new(hmac_sha256(ck, &[0x02])), Zeroizing::new(hmac_sha256(ck, &[0x01])))
}

fn message_keys(
    suite: Suite,
    group: &str,
    epoch: u64,
    chain_id: u32,
    mk: &[u8; 32],
) -> Result<(Key, [u8; 12]), CryptoError> {
    let mut info = b"TERN-E2EE-v1/SK-msg".to_vec();
    info.extend_from_slice(&suite.id().to_be_bytes());
    lp(&mut info, group.as_bytes())?;
    info.extend_from_slice(&epoch.to_be_bytes());
    info.extend_from_slice(&chain_id.to_be_bytes());
    crate::primitives::aead_key_nonce(mk, &[&info])
}

/// A sender device's chain for one group epoch.
pub struct OutboundGroupSession {
    suite: Suite,
    group_id: String,
    epoch: u64,
    user: String,
    device: String,
    chain_id: u32,
    iteration: u32,
    chain_key: Key,
    sig: SigningKey,
}

impl OutboundGroupSession {
    /// A new chain: random id, chain key and signing key.
    pub fn new(
        suite: Suite,
        group_id: &str,
        epoch: u64,
        user: &str,
        device: &str,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<OutboundGroupSession, GroupError> {
        let mut ck = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(ck.as_mut());
        Ok(OutboundGroupSession {
            suite,
            group_id: group_id.into(),
            epoch,
            user: user.into(),
            device: device.into(),
            chain_id: rng.next_u32(),
            iteration: 0,
            chain_key: ck,
            sig: SigningKey::generate(rng)?,
        })
    }

    /// The state to hand to a member device: it can read from the next message on, not before.
    pub fn distribution(&self) -> Distribution {
        Distribution {
            group_id: self.group_id.clone(),
            epoch: self.epoch,
            chain_id: self.chain_id,
            iteration: self.iteration,
            chain_key: self.chain_key.clone(),
            sig_pub: self.sig.public(),
        }
    }

    /// Whether the chain is due for rotation ([`ROTATE_AFTER`] messages).
    pub fn needs_rotation(&self) -> bool {
        self.iteration >= ROTATE_AFTER
    }

    /// The epoch this chain belongs to.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The group.
    pub fn group_id(&self) -> &str {
        &self.group_id
    }

    pub(crate) fn encode(&self, e: &mut crate::persist::Enc) {
        e.u16(self.suite.id());
        e.str(&self.group_id);
        e.u64(self.epoch);
        e.str(&self.user);
        e.str(&self.device);
        e.u32(self.chain_id);
        e.u32(self.iteration);
        e.key(&self.chain_key);
        e.key(self.sig.seed());
    }

    pub(crate) fn decode(
        d: &mut crate::persist::Dec<'_>,
    ) -> Result<OutboundGroupSession, crate::persist::PersistError> {
        use crate::persist::PersistError;
        Ok(OutboundGroupSession {
            suite: Suite::from_id(d.u16()?).map_err(|_| PersistError("suite"))?,
            group_id: d.str()?,
            epoch: d.u64()?,
            user: d.str()?,
            device: d.str()?,
            chain_id: d.u32()?,
            iteration: d.u32()?,
            chain_key: Zeroizing::new(d.key()?),
            sig: SigningKey::from_seed(d.key()?).map_err(|_| PersistError("signing key"))?,
        })
    }

    /// Encrypts and signs one message (padded like 1:1 messages).
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<GroupMessage, GroupError> {
        let (next, mk) = chain_step(&self.chain_key);
        let (key, nonce) = message_keys(self.suite, &self.group_id, self.epoch, self.chain_id, &mk)?;
        let mut msg = GroupMessage {
            suite: self.suite,
            group_id: self.group_id.clone(),
            epoch: self.epoch,
            sender_user: self.user.clone(),
            sender_device: self.device.clone(),
            chain_id: self.chain_id,
            iteration: self.iteration,
            ciphertext: Vec::new(),
            signature: [0; 64],
        };
        msg.ciphertext = self.suite.seal(&key, &nonce, &msg.header()?, &crate::ratchet::pad(plaintext))?;
        msg.signature = self.sig.sign(&msg.signed()?);
        self.chain_key = next;
        self.iteration = self.iteration.checked_add(1).ok_or(GroupError::Malformed("iteration exhausted"))?;
        Ok(msg)
    }
}

/// A receiving chain for one sender device.
#[derive(Clone)]
pub struct InboundGroupSession {
    group_id: String,
    epoch: u64,
    sender_user: String,
    sender_device: String,
    chain_id: u32,
    next: u32,
    chain_key: Key,
    sig_pub: [u8; 32],
    skipped: VecDeque<(u32, Key)>,
}

impl InboundGroupSession {
    /// A chain from a distribution received over the pairwise session with `sender_user`'s
    /// `sender_device` (the pairwise session authenticates who sent it).
    pub fn new(sender_user: &str, sender_device: &str, d: &Distribution) -> Result<InboundGroupSession, GroupError> {
        check_signing_public(&d.sig_pub)?;
        Ok(InboundGroupSession {
            group_id: d.group_id.clone(),
            epoch: d.epoch,
            sender_user: sender_user.into(),
            sender_device: sender_device.into(),
            chain_id: d.chain_id,
            next: d.iteration,
            chain_key: d.chain_key.clone(),
            sig_pub: d.sig_pub,
            skipped: VecDeque::new(),
        })
    }

    /// Whether `msg` belongs to this chain.
    pub fn matches(&self, msg: &GroupMessage) -> bool {
        self.group_id == msg.group_id
            && self.epoch == msg.epoch
            && self.sender_user == msg.sender_user
            && self.sender_device == msg.sender_device
            && self.chain_id == msg.chain_id
    }

    pub(crate) fn encode(&self, e: &mut crate::persist::Enc) {
        e.str(&self.group_id);
        e.u64(self.epoch);
        e.str(&self.sender_user);
        e.str(&self.sender_device);
        e.u32(self.chain_id);
        e.u32(self.next);
        e.key(&self.chain_key);
        e.key(&self.sig_pub);
        e.len(self.skipped.len());
        for (n, mk) in &self.skipped {
            e.u32(*n);
            e.key(mk);
        }
    }

    pub(crate) fn decode(d: &mut crate::persist::Dec<'_>) -> Result<InboundGroupSession, crate::persist::PersistError> {
        let mut s = InboundGroupSession {
            group_id: d.str()?,
            epoch: d.u64()?,
            sender_user: d.str()?,
            sender_device: d.str()?,
            chain_id: d.u32()?,
            next: d.u32()?,
            chain_key: Zeroizing::new(d.key()?),
            sig_pub: d.key()?,
            skipped: VecDeque::new(),
        };
        for _ in 0..d.len()? {
            s.skipped.push_back((d.u32()?, Zeroizing::new(d.key()?)));
        }
        Ok(s)
    }

    /// Whether this chain belongs to `group`.
    pub fn matches_group(&self, group: &str) -> bool {
        self.group_id == group
    }

    /// The sender this chain belongs to.
    pub fn sender(&self) -> (&str, &str) {
        (&self.sender_user, &self.sender_device)
    }

    /// Checks, in order: chain, signature, iteration (duplicate, skip bound); then decrypts on
    /// a copy and commits only on success.
    pub fn decrypt(&mut self, msg: &GroupMessage) -> Result<Vec<u8>, GroupError> {
        if !self.matches(msg) {
            return Err(GroupError::UnknownChain);
        }
        verify(&self.sig_pub, &msg.signed()?, &msg.signature)?;
        let mut next = self.clone();
        let mk = if msg.iteration < next.next {
            let i = next.skipped.iter().position(|(n, _)| *n == msg.iteration).ok_or(GroupError::Duplicate)?;
            next.skipped.remove(i).map(|(_, k)| k).ok_or(GroupError::Duplicate)?
        } else {
            if msg.iteration - next.next > MAX_GROUP_SKIP {
                return Err(GroupError::TooManySkipped);
            }
            while next.next < msg.iteration {
                let (ck, mk) = chain_step(&next.chain_key);
                next.skipped.push_back((next.next, mk));
                if next.skipped.len() > MAX_GROUP_SKIP as usize {
                    next.skipped.pop_front();
                }
                next.chain_key = ck;
                next.next += 1;
            }
            let (ck, mk) = chain_step(&next.chain_key);
            next.chain_key = ck;
            next.next += 1;
            mk
        };
        let (key, nonce) = message_keys(msg.suite, &msg.group_id, msg.epoch, msg.chain_id, &mk)?;
        let padded = msg.suite.open(&key, &nonce, &msg.header()?, &msg.ciphertext)?;
        let plaintext = crate::ratchet::unpad(&padded)?.to_vec();
        *self = next;
        Ok(plaintext)
    }
}

/// What a membership operation does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpKind {
    /// Creates the group with these members (the issuer included); the issuer is its admin.
    Create(Vec<String>),
    /// Adds a user (admin only).
    Add(String),
    /// Removes a user (admin, or the user itself).
    Remove(String),
}

/// A client-signed membership operation: the `signed_op` of GroupOpSubmit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupOp {
    /// The group.
    pub group_id: String,
    /// The epoch this operation creates (the previous epoch plus one).
    pub epoch: u64,
    /// Hash of the previous operation (zeros for Create).
    pub prev_op_hash: [u8; 32],
    /// Who issued it.
    pub issuer_user: String,
    /// The issuing device, whose DIK_sig signs.
    pub issuer_device: String,
    /// The change.
    pub kind: OpKind,
    /// SHA-256 of the sorted roster after the change.
    pub roster_hash: [u8; 32],
    /// Issue time.
    pub issued_at_ms: u64,
    /// DIK_sig of the issuing device.
    pub signature: [u8; 64],
}

const OP_LABEL: &[u8] = b"TERN-E2EE-v1/sig/group-op";

fn roster_hash(members: &BTreeSet<String>) -> Result<[u8; 32], CryptoError> {
    let mut bytes = b"TERN-E2EE-v1/roster".to_vec();
    for m in members {
        lp(&mut bytes, m.as_bytes())?;
    }
    Ok(sha256(&bytes))
}

impl GroupOp {
    fn signed(&self) -> Result<Vec<u8>, GroupError> {
        let mut s = OP_LABEL.to_vec();
        lp(&mut s, self.group_id.as_bytes())?;
        s.extend_from_slice(&self.epoch.to_be_bytes());
        s.extend_from_slice(&self.prev_op_hash);
        lp(&mut s, self.issuer_user.as_bytes())?;
        lp(&mut s, self.issuer_device.as_bytes())?;
        match &self.kind {
            OpKind::Create(members) => {
                s.push(1);
                let n = u16::try_from(members.len()).map_err(|_| GroupError::Malformed("too many members"))?;
                s.extend_from_slice(&n.to_be_bytes());
                for m in members {
                    lp(&mut s, m.as_bytes())?;
                }
            }
            OpKind::Add(u) => {
                s.push(2);
                lp(&mut s, u.as_bytes())?;
            }
            OpKind::Remove(u) => {
                s.push(3);
                lp(&mut s, u.as_bytes())?;
            }
        }
        s.extend_from_slice(&self.roster_hash);
        s.extend_from_slice(&self.issued_at_ms.to_be_bytes());
        Ok(s)
    }

    /// Signs the operation with the issuing device's DIK_sig.
    pub fn sign(&mut self, key: &SigningKey) -> Result<(), GroupError> {
        self.signature = key.sign(&self.signed()?);
        Ok(())
    }

    /// The signed bytes followed by the signature (what the broker stores and relays).
    pub fn to_bytes(&self) -> Result<Vec<u8>, GroupError> {
        let mut b = self.signed()?;
        b.extend_from_slice(&self.signature);
        Ok(b)
    }

    /// Parses [`GroupOp::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<GroupOp, GroupError> {
        let mut r = Reader(bytes);
        r.label(OP_LABEL)?;
        let group_id = r.string()?;
        let epoch = r.u64()?;
        let prev_op_hash = r.array()?;
        let (issuer_user, issuer_device) = (r.string()?, r.string()?);
        let kind = match r.u8()? {
            1 => {
                let n = u16::from_be_bytes(r.array()?);
                OpKind::Create((0..n).map(|_| r.string()).collect::<Result<_, _>>()?)
            }
            2 => OpKind::Add(r.string()?),
            3 => OpKind::Remove(r.string()?),
            _ => return Err(GroupError::Malformed("operation kind")),
        };
        let op = GroupOp {
            group_id,
            epoch,
            prev_op_hash,
            issuer_user,
            issuer_device,
            kind,
            roster_hash: r.array()?,
            issued_at_ms: r.u64()?,
            signature: r.array()?,
        };
        r.end()?;
        Ok(op)
    }

    /// The hash the next operation chains to.
    pub fn hash(&self) -> Result<[u8; 32], GroupError> {
        Ok(sha256(&self.to_bytes()?))
    }
}

/// A group's roster as a client derives it from signed operations only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roster {
    group_id: String,
    epoch: u64,
    last_op: [u8; 32],
    admin: String,
    members: BTreeSet<String>,
}

impl Roster {
    /// An operation for the next epoch, with the roster hash it will produce, ready to sign.
    pub fn propose(
        &self,
        issuer_user: &str,
        issuer_device: &str,
        kind: OpKind,
        now_ms: u64,
    ) -> Result<GroupOp, GroupError> {
        let after = self.after(issuer_user, &kind)?;
        Ok(GroupOp {
            group_id: self.group_id.clone(),
            epoch: self.epoch + 1,
            prev_op_hash: self.last_op,
            issuer_user: issuer_user.into(),
            issuer_device: issuer_device.into(),
            kind,
            roster_hash: roster_hash(&after)?,
            issued_at_ms: now_ms,
            signature: [0; 64],
        })
    }

    /// The first operation of a group.
    pub fn propose_create(
        group_id: &str,
        issuer_user: &str,
        issuer_device: &str,
        members: &[String],
        now_ms: u64,
    ) -> Result<GroupOp, GroupError> {
        let empty = Roster {
            group_id: group_id.into(),
            epoch: 0,
            last_op: [0; 32],
            admin: issuer_user.into(),
            members: BTreeSet::new(),
        };
        empty.propose(issuer_user, issuer_device, OpKind::Create(members.to_vec()), now_ms)
    }

    /// The roster a Create operation establishes, after every check.
    pub fn create(op: &GroupOp, issuer_sig_pub: &[u8; 32]) -> Result<Roster, GroupError> {
        let empty = Roster {
            group_id: op.group_id.clone(),
            epoch: 0,
            last_op: [0; 32],
            admin: op.issuer_user.clone(),
            members: BTreeSet::new(),
        };
        let mut roster = empty;
        roster.apply(op, issuer_sig_pub)?;
        Ok(roster)
    }

    fn after(&self, issuer: &str, kind: &OpKind) -> Result<BTreeSet<String>, GroupError> {
        let mut members = self.members.clone();
        match kind {
            OpKind::Create(list) if self.epoch == 0 => {
                members.extend(list.iter().cloned());
                members.insert(issuer.to_owned());
            }
            OpKind::Create(_) => return Err(GroupError::BadOperation("the group exists")),
            _ if !self.members.contains(issuer) => return Err(GroupError::BadOperation("issuer is not a member")),
            OpKind::Add(_) if issuer != self.admin => {
                return Err(GroupError::BadOperation("only the admin adds members"))
            }
            OpKind::Add(u) => {
                members.insert(u.clone());
            }
            OpKind::Remove(u) if issuer != self.admin && issuer != u => {
                return Err(GroupError::BadOperation("only the admin removes others"))
            }
            OpKind::Remove(u) => {
                if !members.remove(u) {
                    return Err(GroupError::BadOperation("not a member"));
                }
            }
        }
        Ok(members)
    }

    /// Applies a signed operation: right group, next epoch, chained to the last operation,
    /// issued by a member allowed to make it, signed by the issuing device (whose key the
    /// caller took from that user's verified device list), and producing the roster it claims.
    pub fn apply(&mut self, op: &GroupOp, issuer_sig_pub: &[u8; 32]) -> Result<(), GroupError> {
        if op.group_id != self.group_id {
            return Err(GroupError::BadOperation("another group"));
        }
        if op.epoch != self.epoch + 1 {
            return Err(GroupError::BadOperation("not the next epoch"));
        }
        if op.prev_op_hash != self.last_op {
            return Err(GroupError::BadOperation("does not chain to the last operation"));
        }
        let after = self.after(&op.issuer_user, &op.kind)?;
        if roster_hash(&after)? != op.roster_hash {
            return Err(GroupError::BadOperation("roster hash mismatch"));
        }
        verify(issuer_sig_pub, &op.signed()?, &op.signature)?;
        self.epoch = op.epoch;
        self.last_op = op.hash()?;
        self.members = after;
        Ok(())
    }

    pub(crate) fn encode(&self, e: &mut crate::persist::Enc) {
        e.str(&self.group_id);
        e.u64(self.epoch);
        e.key(&self.last_op);
        e.str(&self.admin);
        e.len(self.members.len());
        for m in &self.members {
            e.str(m);
        }
    }

    pub(crate) fn decode(d: &mut crate::persist::Dec<'_>) -> Result<Roster, crate::persist::PersistError> {
        let (group_id, epoch, last_op, admin) = (d.str()?, d.u64()?, d.key()?, d.str()?);
        let mut members = BTreeSet::new();
        for _ in 0..d.len()? {
            members.insert(d.str()?);
        }
        Ok(Roster { group_id, epoch, last_op, admin, members })
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The group.
    pub fn group_id(&self) -> &str {
        &self.group_id
    }

    /// The members.
    pub fn members(&self) -> &BTreeSet<String> {
        &self.members
    }

    /// Whether `user` is a member.
    pub fn contains(&self, user: &str) -> bool {
        self.members.contains(user)
    }
}
