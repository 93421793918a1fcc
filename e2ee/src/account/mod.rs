//! A device's whole E2EE state, sans-IO: its keys, what it has learnt of other users' devices,
//! its 1:1 sessions and its group chains. The caller moves the directory requests and the
//! envelopes over the network (`tern_broker::client` or any other transport).
//!
//! Trust: a peer's account key is pinned the first time it is seen (trust on first use; users
//! confirm it with the safety number); a device is used only when the pinned key's signed,
//! non-rolled-back device list names it with its certificate hash. Group keys go only to
//! devices of members that signed membership operations put in the roster.
//!
//! [`Account::to_bytes`] / [`Account::from_bytes`] persist the whole state (a key store file).

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use rand_core::{CryptoRng, RngCore};
use tern_codec::proto::{self, e2ee_envelope::Body};
use zeroize::Zeroizing;

use crate::devices::{self, DeviceError};
use crate::group::{
    Distribution, GroupError, GroupMessage, GroupOp, InboundGroupSession, OpKind, OutboundGroupSession, Roster,
};
use crate::primitives::{CryptoError, DhSecret, SigningKey, Suite};
use crate::ratchet::{Message, RatchetError, Session};
use crate::x3dh::{self, Bundle, DeviceIdentity, OneTimePrekey, SignedPrekey, X3dhError};

/// The content type of an E2EE payload.
pub const CONTENT_TYPE: &str = "application/tern-e2ee";
/// The content type of a signed group operation relayed to members.
pub const OP_CONTENT_TYPE: &str = "application/tern-e2ee-op";
/// One-time prekeys published at a time by a default device.
pub const PREKEY_POOL: u32 = 20;
/// One-time prekeys an IoT device keeps (design 6.12: small flash, few peers).
pub const IOT_PREKEY_POOL: u32 = 16;

/// Device profiles (design 6.12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// AES-256-GCM, [`PREKEY_POOL`] one-time prekeys.
    Default,
    /// ChaCha20-Poly1305 (no AES hardware needed), [`IOT_PREKEY_POOL`] one-time prekeys, and the
    /// certificate flag `iot`.
    Iot,
}

impl Profile {
    fn suite(self) -> Suite {
        match self {
            Profile::Default => Suite::Aes256Gcm,
            Profile::Iot => Suite::ChaCha20Poly1305,
        }
    }

    fn pool(self) -> usize {
        match self {
            Profile::Default => PREKEY_POOL as usize,
            Profile::Iot => IOT_PREKEY_POOL as usize,
        }
    }

    /// The device-certificate flag bit for IoT devices.
    pub const IOT_FLAG: u32 = 1;
}

const KIND_TEXT: u8 = 0x01;
/// Sender keys kept while their epoch's operation is on its way.
const MAX_PENDING_KEYS: usize = 256;

fn check_signing_key(d: &Distribution) -> Result<(), AccountError> {
    crate::primitives::check_signing_public(&d.sig_pub)?;
    Ok(())
}
const KIND_SENDER_KEY: u8 = 0x02;

/// Why an envelope or operation could not be handled. State is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// The sender device is not (yet) known and verified: fetch its user's keys, then retry.
    #[error("unknown device {0}/{1}")]
    UnknownDevice(String, String),
    /// No session with the device and no bundle was given.
    #[error("no session with {0}/{1}: claim a bundle")]
    NeedBundle(String, String),
    /// The account key of a user changed since it was pinned.
    #[error("the account key of {0} changed")]
    IdentityChanged(String),
    /// A device certificate or list failed its checks.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// Session setup failed.
    #[error(transparent)]
    X3dh(#[from] X3dhError),
    /// A 1:1 message failed.
    #[error(transparent)]
    Ratchet(#[from] RatchetError),
    /// A group message or operation failed.
    #[error(transparent)]
    Group(#[from] GroupError),
    /// A primitive failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The prekey the message names is unknown or already used.
    #[error("unknown or used prekey")]
    UnknownPrekey,
    /// The envelope is malformed or of an unknown version.
    #[error("malformed envelope: {0}")]
    Malformed(&'static str),
    /// The group is unknown, or the sender is not in its roster.
    #[error("not a member of group {0}")]
    NotAMember(String),
}

/// What a received envelope turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// Addressed to another device of this user (or of the conversation).
    NotForThisDevice,
    /// A 1:1 application message.
    Text(Vec<u8>),
    /// A sender key for `group`; group messages from that sender can now be read.
    GroupKey(String),
    /// A group application message.
    GroupText {
        /// The group.
        group: String,
        /// The plaintext.
        text: Vec<u8>,
    },
}

/// The X3DH header an initiator repeats until the peer answers.
struct PendingSetup {
    spk_id: u32,
    opk_id: Option<u32>,
    ek_pub: [u8; 32],
}

struct PeerSession {
    session: Session,
    /// While no message from the peer was decrypted, every message repeats the X3DH header
    /// so the peer can set the session up from any of them.
    pending: Option<PendingSetup>,
}

/// A sender-key distribution to encrypt for one device (see [`Account::group_encrypt`]).
pub struct KeyDistribution {
    /// The member.
    pub user: String,
    /// The member's device.
    pub device: String,
    /// The inner plaintext to send with [`Account::encrypt_distribution`].
    pub inner: Zeroizing<Vec<u8>>,
}

struct Peer {
    aik: [u8; 32],
    list_version: u64,
    devices: BTreeMap<String, DeviceIdentity>,
}

struct Outbound {
    chain: OutboundGroupSession,
    given: BTreeSet<(String, String)>,
}

/// One device's E2EE state.
pub struct Account {
    suite: Suite,
    me: DeviceIdentity,
    sig: SigningKey,
    dh: DhSecret,
    aik: Option<SigningKey>,
    aik_pub: [u8; 32],
    cert: proto::DeviceCert,
    list: proto::DeviceList,
    /// The account's device certificates (on the device holding the account key).
    own_certs: Vec<proto::DeviceCert>,
    spks: Vec<(SignedPrekey, DhSecret)>,
    opks: BTreeMap<u32, (OneTimePrekey, DhSecret)>,
    next_opk: u32,
    /// One-time prekeys to keep published.
    pool: usize,
    /// The highest one-time prekey id already sent to the directory: a claimed prekey must
    /// never be published again, so later publishes carry only newer ones.
    opk_published: u32,
    peers: BTreeMap<String, Peer>,
    sessions: BTreeMap<(String, String), PeerSession>,
    rosters: BTreeMap<String, Roster>,
    outbound: BTreeMap<String, Outbound>,
    inbound: Vec<InboundGroupSession>,
    /// Sender keys for an epoch whose membership operation has not arrived yet (the key
    /// and the operation travel on different streams); installed when it is applied.
    pending_keys: Vec<(String, String, Distribution)>,
    /// Hashes of the session setups (signed prekey id and ephemeral key) already accepted: a
    /// replayed first message must not reset a session, with or without a one-time prekey.
    seen_setups: std::collections::VecDeque<[u8; 32]>,
}

/// Session setups remembered against replay.
const MAX_SEEN_SETUPS: usize = 2000;

impl Account {
    fn device(
        suite: Suite,
        user: &str,
        device: &str,
        aik_pub: [u8; 32],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Account, AccountError> {
        let sig = SigningKey::generate(rng)?;
        let dh = DhSecret::generate(rng);
        let me =
            DeviceIdentity { user: user.into(), device: device.into(), sig_pub: sig.public(), dh_pub: dh.public() };
        Ok(Account {
            suite,
            me,
            sig,
            dh,
            aik: None,
            aik_pub,
            cert: proto::DeviceCert::default(),
            list: proto::DeviceList::default(),
            own_certs: Vec::new(),
            spks: Vec::new(),
            opks: BTreeMap::new(),
            next_opk: 1,
            pool: PREKEY_POOL as usize,
            opk_published: 0,
            peers: BTreeMap::new(),
            sessions: BTreeMap::new(),
            rosters: BTreeMap::new(),
            outbound: BTreeMap::new(),
            inbound: Vec::new(),
            pending_keys: Vec::new(),
            seen_setups: std::collections::VecDeque::new(),
        })
    }

    /// The first device of a new account: it holds the account key and certifies itself.
    pub fn new_primary(
        suite: Suite,
        user: &str,
        device: &str,
        now_ms: u64,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Account, AccountError> {
        Account::primary(suite, PREKEY_POOL as usize, 0, user, device, now_ms, rng)
    }

    /// The first device of a new account with a [`Profile`] (an IoT device: ChaCha20-Poly1305,
    /// a smaller prekey pool, the `iot` certificate flag).
    pub fn new_primary_with(
        profile: Profile,
        user: &str,
        device: &str,
        now_ms: u64,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Account, AccountError> {
        let flags = if profile == Profile::Iot { Profile::IOT_FLAG } else { 0 };
        Account::primary(profile.suite(), profile.pool(), flags, user, device, now_ms, rng)
    }

    fn primary(
        suite: Suite,
        pool: usize,
        flags: u32,
        user: &str,
        device: &str,
        now_ms: u64,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Account, AccountError> {
        let aik = SigningKey::generate(rng)?;
        let mut a = Account::device(suite, user, device, aik.public(), rng)?;
        a.pool = pool;
        a.cert = devices::issue_cert(&aik, &a.sig, &a.me, &[suite.id()], now_ms, flags)?;
        a.own_certs = vec![a.cert.clone()];
        a.list = devices::sign_list(&aik, user, 1, now_ms, &a.own_certs)?;
        a.aik = Some(aik);
        a.rotate_prekeys(now_ms, rng)?;
        Ok(a)
    }

    /// Links a new device to this (primary) account: certifies it and signs the next device
    /// list naming every device. Both must publish their keys afterwards.
    pub fn link(
        &mut self,
        device: &str,
        now_ms: u64,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Account, AccountError> {
        let aik = self
            .aik
            .as_ref()
            .ok_or(AccountError::Malformed("only the device holding the account key links devices"))?;
        let mut new = Account::device(self.suite, &self.me.user, device, self.aik_pub, rng)?;
        new.cert = devices::issue_cert(aik, &new.sig, &new.me, &[self.suite.id()], now_ms, 0)?;
        self.own_certs.retain(|c| c.device_id != device);
        self.own_certs.push(new.cert.clone());
        self.list = devices::sign_list(aik, &self.me.user, self.list.version + 1, now_ms, &self.own_certs)?;
        new.list = self.list.clone();
        new.pool = self.pool;
        new.rotate_prekeys(now_ms, rng)?;
        Ok(new)
    }

    /// Records that the directory accepted [`Account::key_publish`].
    pub fn published(&mut self) {
        self.opk_published =
            self.opks.keys().next_back().copied().unwrap_or(self.opk_published).max(self.opk_published);
    }

    /// Refills the directory's pool when it reports fewer than half of [`PREKEY_POOL`] (or the
    /// profile's pool) one-time prekeys left: makes enough new ones for a full pool and returns
    /// how many; publish again afterwards. Private keys of older prekeys are kept (a claim may
    /// still be in flight), at most four pools' worth.
    pub fn top_up_prekeys(
        &mut self,
        remaining: u32,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<usize, AccountError> {
        let remaining = remaining as usize;
        if remaining * 2 >= self.pool {
            return Ok(0);
        }
        let fresh = self.pool - remaining;
        for _ in 0..fresh {
            self.new_opk(rng)?;
        }
        while self.opks.len() > 4 * self.pool {
            self.opks.pop_first();
        }
        Ok(fresh)
    }

    fn new_opk(&mut self, rng: &mut (impl RngCore + CryptoRng)) -> Result<(), AccountError> {
        let secret = DhSecret::generate(rng);
        let mut opk = OneTimePrekey { id: self.next_opk, public: secret.public(), sig: [0; 64] };
        x3dh::sign_opk(&self.sig, &self.me.user, &self.me.device, &mut opk)?;
        self.opks.insert(opk.id, (opk, secret));
        self.next_opk += 1;
        Ok(())
    }

    fn rotate_prekeys(&mut self, now_ms: u64, rng: &mut (impl RngCore + CryptoRng)) -> Result<(), AccountError> {
        let spk_secret = DhSecret::generate(rng);
        let id = self.spks.first().map_or(1, |(s, _)| s.id + 1);
        let mut spk = SignedPrekey { id, public: spk_secret.public(), created_ms: now_ms, sig: [0; 64] };
        x3dh::sign_spk(&self.sig, &self.me.user, &self.me.device, &mut spk)?;
        self.spks.insert(0, (spk, spk_secret));
        self.spks.truncate(2);
        while self.opks.len() < self.pool {
            self.new_opk(rng)?;
        }
        Ok(())
    }

    /// This device's identity.
    pub fn identity(&self) -> &DeviceIdentity {
        &self.me
    }

    /// The account key (for safety numbers).
    pub fn account_key(&self) -> [u8; 32] {
        self.aik_pub
    }

    /// What to publish to the key directory: account key, certificate, the device list when
    /// this device holds the account key, signed prekey and the one-time prekeys not yet sent.
    /// Publishing it again is harmless (the directory ignores an identical device list).
    pub fn key_publish(&self) -> proto::KeyPublish {
        let (spk, _) = self.spks.first().map(|(s, d)| (s.clone(), d)).unzip();
        proto::KeyPublish {
            account_key: Bytes::copy_from_slice(&self.aik_pub),
            device_cert: Some(self.cert.clone()),
            device_list: self.aik.as_ref().map(|_| self.list.clone()),
            signed_prekey: spk.map(|s| proto::SignedPrekey {
                spk_id: s.id,
                spk_pub: Bytes::copy_from_slice(&s.public),
                created_ms: s.created_ms,
                sig: Bytes::copy_from_slice(&s.sig),
            }),
            one_time_prekeys: self
                .opks
                .values()
                .filter(|(o, _)| o.id > self.opk_published)
                .map(|(o, _)| proto::OneTimePrekey {
                    opk_id: o.id,
                    opk_pub: Bytes::copy_from_slice(&o.public),
                    sig: Bytes::copy_from_slice(&o.sig),
                })
                .collect(),
        }
    }

    /// Learns a user's devices from a KeyListing entry: pins the account key on first sight,
    /// refuses a changed one, and keeps only devices the signed, current list vouches for.
    pub fn learn(&mut self, keys: &proto::UserKeys) -> Result<Vec<String>, AccountError> {
        let aik: [u8; 32] = keys.account_key.as_ref().try_into().map_err(|_| AccountError::Malformed("account key"))?;
        let pinned = self.peers.get(&keys.user_id);
        if let Some(p) = pinned {
            if p.aik != aik {
                return Err(AccountError::IdentityChanged(keys.user_id.clone()));
            }
        }
        let list = keys.device_list.as_ref().ok_or(AccountError::Malformed("no device list"))?;
        devices::verify_list(&aik, &keys.user_id, list, pinned.map_or(0, |p| p.list_version))?;
        let mut found = BTreeMap::new();
        for cert in &keys.device_certs {
            // Certificates the list does not name are ignored: the broker cannot add devices.
            if let Ok(id) = devices::verify_device(&aik, list, cert) {
                found.insert(id.device.clone(), id);
            }
        }
        let names = found.keys().cloned().collect();
        // A device that left the list loses its sessions and group chains, and every group
        // chain of this device rotates so the departed device cannot read what follows.
        let gone: Vec<String> =
            pinned.map(|p| p.devices.keys().filter(|d| !found.contains_key(*d)).cloned().collect()).unwrap_or_default();
        if !gone.is_empty() {
            let user = keys.user_id.clone();
            self.sessions.retain(|(u, d), _| !(*u == user && gone.contains(d)));
            self.inbound.retain(|s| !(s.sender().0 == user && gone.iter().any(|d| d == s.sender().1)));
            let groups_with_user: Vec<String> =
                self.rosters.iter().filter(|(_, r)| r.contains(&user)).map(|(g, _)| g.clone()).collect();
            for g in groups_with_user {
                self.outbound.remove(&g);
            }
        }
        self.peers.insert(keys.user_id.clone(), Peer { aik, list_version: list.version, devices: found });
        Ok(names)
    }

    /// Removes a device from this (primary) account: signs the next device list without it.
    /// Publish the keys afterwards; peers that learn the new list stop encrypting for it and
    /// rotate their group keys.
    pub fn unlink(&mut self, device: &str, now_ms: u64) -> Result<(), AccountError> {
        let aik = self
            .aik
            .as_ref()
            .ok_or(AccountError::Malformed("only the device holding the account key unlinks devices"))?;
        self.own_certs.retain(|c| c.device_id != device);
        self.list = devices::sign_list(aik, &self.me.user, self.list.version + 1, now_ms, &self.own_certs)?;
        Ok(())
    }

    /// The verified devices of `user` (without this device).
    pub fn devices_of(&self, user: &str) -> Vec<String> {
        self.peers
            .get(user)
            .map(|p| p.devices.keys().filter(|d| !(user == self.me.user && **d == self.me.device)).cloned().collect())
            .unwrap_or_default()
    }

    /// Whether a 1:1 message to this device needs a claimed bundle first.
    pub fn needs_bundle(&self, user: &str, device: &str) -> bool {
        !self.sessions.contains_key(&(user.to_owned(), device.to_owned()))
    }

    fn known(&self, user: &str, device: &str) -> Result<&DeviceIdentity, AccountError> {
        self.peers
            .get(user)
            .and_then(|p| p.devices.get(device))
            .ok_or_else(|| AccountError::UnknownDevice(user.into(), device.into()))
    }

    /// Encrypts an application message for one device.
    pub fn encrypt(
        &mut self,
        user: &str,
        device: &str,
        bundle: Option<&proto::KeyBundle>,
        text: &[u8],
        now_ms: u64,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<proto::E2eeEnvelope, AccountError> {
        let mut inner = vec![KIND_TEXT];
        inner.extend_from_slice(text);
        self.encrypt_inner(user, device, bundle, &inner, now_ms, rng)
    }

    fn encrypt_inner(
        &mut self,
        user: &str,
        device: &str,
        bundle: Option<&proto::KeyBundle>,
        inner: &[u8],
        now_ms: u64,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<proto::E2eeEnvelope, AccountError> {
        let key = (user.to_owned(), device.to_owned());
        if !self.sessions.contains_key(&key) {
            let identity = self.known(user, device)?.clone();
            let bundle = bundle.ok_or_else(|| AccountError::NeedBundle(user.into(), device.into()))?;
            // The bundle's certificate must be the one the signed list vouches for.
            let cert = bundle.device_cert.as_ref().ok_or(AccountError::Malformed("bundle without certificate"))?;
            if cert.dik_sig_pub.as_ref() != identity.sig_pub || cert.dik_dh_pub.as_ref() != identity.dh_pub {
                return Err(AccountError::Device(DeviceError::NotListed(device.into())));
            }
            let spk = bundle.signed_prekey.as_ref().ok_or(AccountError::Malformed("bundle without signed prekey"))?;
            let b = Bundle {
                identity,
                signed_prekey: SignedPrekey {
                    id: spk.spk_id,
                    public: spk.spk_pub.as_ref().try_into().map_err(|_| AccountError::Malformed("prekey"))?,
                    created_ms: spk.created_ms,
                    sig: spk.sig.as_ref().try_into().map_err(|_| AccountError::Malformed("signature"))?,
                },
                one_time_prekey: bundle
                    .one_time_prekey
                    .as_ref()
                    .map(|o| -> Result<OneTimePrekey, AccountError> {
                        Ok(OneTimePrekey {
                            id: o.opk_id,
                            public: o.opk_pub.as_ref().try_into().map_err(|_| AccountError::Malformed("prekey"))?,
                            sig: o.sig.as_ref().try_into().map_err(|_| AccountError::Malformed("signature"))?,
                        })
                    })
                    .transpose()?,
            };
            let init = x3dh::initiate(self.suite, &self.me, &self.dh, &b, now_ms, rng)?;
            let session = Session::initiator(self.suite, &init.shared, init.ad.clone(), &init.spk.public, rng)?;
            let pending = Some(PendingSetup { spk_id: init.spk.id, opk_id: init.opk_id, ek_pub: init.ek_pub });
            self.sessions.insert(key.clone(), PeerSession { session, pending });
        }
        let entry = self.sessions.get_mut(&key).ok_or_else(|| AccountError::NeedBundle(user.into(), device.into()))?;
        let m = entry.session.encrypt(inner)?;
        let ratchet = proto::RatchetMessage {
            dh_pub: Bytes::copy_from_slice(&m.dh_pub),
            pn: m.pn,
            n: m.n,
            ciphertext: m.ciphertext.into(),
        };
        let body = match &entry.pending {
            Some(setup) => Body::Prekey(proto::PrekeyMessage {
                ik_pub: Bytes::copy_from_slice(&self.me.dh_pub),
                ek_pub: Bytes::copy_from_slice(&setup.ek_pub),
                spk_id: setup.spk_id,
                opk_id: setup.opk_id.unwrap_or(0),
                has_opk: setup.opk_id.is_some(),
                message: Some(ratchet),
            }),
            None => Body::Ratchet(ratchet),
        };
        Ok(proto::E2eeEnvelope {
            version: 1,
            suite: u32::from(entry.session.suite().id()),
            sender_device: self.me.device.clone(),
            body: Some(body),
            recipient_device: device.into(),
            recipient_user: user.into(),
        })
    }

    /// Handles an envelope `sender_user` sent (the broker-authenticated DELIVER sender).
    pub fn decrypt(
        &mut self,
        sender_user: &str,
        env: &proto::E2eeEnvelope,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Received, AccountError> {
        if env.version != 1 {
            return Err(AccountError::Malformed("version"));
        }
        let suite = Suite::from_id(u16::try_from(env.suite).map_err(|_| AccountError::Malformed("suite"))?)?;
        match &env.body {
            Some(Body::SenderKey(sk)) => self.decrypt_group(sender_user, &env.sender_device, suite, sk),
            _ if env.recipient_device != self.me.device || env.recipient_user != self.me.user => {
                Ok(Received::NotForThisDevice)
            }
            Some(Body::Prekey(p)) => {
                let key = (sender_user.to_owned(), env.sender_device.clone());
                let ratchet = p.message.as_ref().ok_or(AccountError::Malformed("prekey message without body"))?;
                let msg = ratchet_message(ratchet)?;
                // A repeated X3DH header for a session already set up is an ordinary message.
                if let Some(existing) = self.sessions.get_mut(&key) {
                    if let Ok(plain) = existing.session.decrypt(&msg, rng) {
                        existing.pending = None;
                        return self.inner(sender_user, &env.sender_device, plain);
                    }
                }
                let initiator = self.known(sender_user, &env.sender_device)?.clone();
                if p.ik_pub.as_ref() != initiator.dh_pub {
                    return Err(AccountError::Device(DeviceError::NotListed(env.sender_device.clone())));
                }
                let spk = self
                    .spks
                    .iter()
                    .find(|(s, _)| s.id == p.spk_id)
                    .map(|(_, d)| d.clone())
                    .ok_or(AccountError::UnknownPrekey)?;
                let opk = if p.has_opk {
                    Some(self.opks.get(&p.opk_id).map(|(_, d)| d.clone()).ok_or(AccountError::UnknownPrekey)?)
                } else {
                    None
                };
                let ek: [u8; 32] =
                    p.ek_pub.as_ref().try_into().map_err(|_| AccountError::Malformed("ephemeral key"))?;
                let mut setup = p.spk_id.to_be_bytes().to_vec();
                setup.extend_from_slice(&ek);
                let setup = crate::primitives::sha256(&setup);
                if self.seen_setups.contains(&setup) {
                    return Err(AccountError::Ratchet(RatchetError::Duplicate));
                }
                let (sk, ad) = x3dh::respond(suite, &self.me, &self.dh, &spk, opk.as_ref(), &initiator, &ek)?;
                let mut session = Session::responder(suite, &sk, ad, spk);
                let plain = session.decrypt(&msg, rng)?;
                // Only now, after a successful decryption, is the one-time prekey used up.
                if p.has_opk {
                    self.opks.remove(&p.opk_id);
                }
                self.sessions.insert(key, PeerSession { session, pending: None });
                self.seen_setups.push_back(setup);
                if self.seen_setups.len() > MAX_SEEN_SETUPS {
                    self.seen_setups.pop_front();
                }
                self.inner(sender_user, &env.sender_device, plain)
            }
            Some(Body::Ratchet(r)) => {
                let key = (sender_user.to_owned(), env.sender_device.clone());
                let entry = self
                    .sessions
                    .get_mut(&key)
                    .ok_or_else(|| AccountError::NeedBundle(key.0.clone(), key.1.clone()))?;
                let plain = entry.session.decrypt(&ratchet_message(r)?, rng)?;
                entry.pending = None;
                self.inner(sender_user, &env.sender_device, plain)
            }
            None => Err(AccountError::Malformed("no body")),
        }
    }

    fn inner(&mut self, sender_user: &str, sender_device: &str, plain: Vec<u8>) -> Result<Received, AccountError> {
        match plain.split_first() {
            Some((&KIND_TEXT, text)) => Ok(Received::Text(text.to_vec())),
            Some((&KIND_SENDER_KEY, bytes)) => {
                let d = Distribution::from_bytes(bytes)?;
                let group = d.group_id.clone();
                let epoch = self.rosters.get(&group).map_or(0, Roster::epoch);
                if d.epoch > epoch {
                    // The operation that makes this epoch has not been applied yet: keep the
                    // key until it is (bounded; the oldest is dropped first).
                    check_signing_key(&d)?;
                    self.pending_keys.push((sender_user.to_owned(), sender_device.to_owned(), d));
                    if self.pending_keys.len() > MAX_PENDING_KEYS {
                        self.pending_keys.remove(0);
                    }
                    return Ok(Received::GroupKey(group));
                }
                self.install_key(sender_user, sender_device, d)?;
                Ok(Received::GroupKey(group))
            }
            _ => Err(AccountError::Malformed("inner kind")),
        }
    }

    /// Installs a sender key for the roster's current epoch, from one of its members.
    fn install_key(&mut self, sender_user: &str, sender_device: &str, d: Distribution) -> Result<(), AccountError> {
        let roster = self.rosters.get(&d.group_id).ok_or_else(|| AccountError::NotAMember(d.group_id.clone()))?;
        if !roster.contains(sender_user) || d.epoch != roster.epoch() {
            return Err(AccountError::NotAMember(d.group_id.clone()));
        }
        let session = InboundGroupSession::new(sender_user, sender_device, &d)?;
        self.inbound.retain(|s| !(s.sender() == (sender_user, sender_device) && s.matches_group(&d.group_id)));
        self.inbound.push(session);
        Ok(())
    }

    fn decrypt_group(
        &mut self,
        sender_user: &str,
        sender_device: &str,
        suite: Suite,
        sk: &proto::SenderKeyMessage,
    ) -> Result<Received, AccountError> {
        let group = String::from_utf8(sk.group_id.to_vec()).map_err(|_| AccountError::Malformed("group id"))?;
        let msg = GroupMessage {
            suite,
            group_id: group.clone(),
            epoch: sk.epoch,
            sender_user: sender_user.into(),
            sender_device: sender_device.into(),
            chain_id: sk.chain_id,
            iteration: sk.iteration,
            ciphertext: sk.ciphertext.to_vec(),
            signature: sk.signature.as_ref().try_into().map_err(|_| AccountError::Malformed("signature"))?,
        };
        if !self.rosters.get(&group).is_some_and(|r| r.contains(sender_user)) {
            return Err(AccountError::NotAMember(group));
        }
        let chain = self.inbound.iter_mut().find(|s| s.matches(&msg)).ok_or(GroupError::UnknownChain)?;
        let text = chain.decrypt(&msg)?;
        Ok(Received::GroupText { group, text })
    }

    /// Creates an E2EE group roster with this user as admin; returns the signed operation to
    /// submit (GroupOpSubmit, epoch 1) and relay to the members.
    pub fn create_group(&mut self, group: &str, members: &[String], now_ms: u64) -> Result<GroupOp, AccountError> {
        let mut op = Roster::propose_create(group, &self.me.user, &self.me.device, members, now_ms)?;
        op.sign(&self.sig)?;
        self.rosters.insert(group.into(), Roster::create(&op, &self.sig.public())?);
        Ok(op)
    }

    /// Proposes and applies a membership change; returns the operation to submit and relay.
    pub fn change_group(&mut self, group: &str, kind: OpKind, now_ms: u64) -> Result<GroupOp, AccountError> {
        let roster = self.rosters.get(group).ok_or_else(|| AccountError::NotAMember(group.into()))?;
        let mut op = roster.propose(&self.me.user, &self.me.device, kind, now_ms)?;
        op.sign(&self.sig)?;
        self.apply_group_op(&op.to_bytes()?)?;
        Ok(op)
    }

    /// Applies a relayed operation after checking it against the roster and the issuing
    /// device's verified key. A removal drops the removed user's chains and forces a new
    /// outbound chain.
    pub fn apply_group_op(&mut self, bytes: &[u8]) -> Result<(), AccountError> {
        let op = GroupOp::from_bytes(bytes)?;
        let issuer = if op.issuer_user == self.me.user && op.issuer_device == self.me.device {
            self.me.sig_pub
        } else {
            self.known(&op.issuer_user, &op.issuer_device)?.sig_pub
        };
        match self.rosters.get_mut(&op.group_id) {
            Some(roster) if roster.epoch() >= op.epoch => return Ok(()), // already applied
            Some(roster) => roster.apply(&op, &issuer)?,
            None => {
                let roster = Roster::create(&op, &issuer)?;
                self.rosters.insert(op.group_id.clone(), roster);
            }
        }
        if let OpKind::Remove(user) = &op.kind {
            self.inbound.retain(|s| !(s.sender().0 == user && s.matches_group(&op.group_id)));
        }
        // Keys that waited for this epoch can be installed now; keys for older epochs are dead.
        let epoch = self.rosters.get(&op.group_id).map_or(0, Roster::epoch);
        let waiting = std::mem::take(&mut self.pending_keys);
        for (user, device, d) in waiting {
            if d.group_id != op.group_id || d.epoch > epoch {
                self.pending_keys.push((user, device, d));
            } else if d.epoch == epoch {
                // A sender no longer in the roster is simply not installed.
                let _ = self.install_key(&user, &device, d);
            }
        }
        Ok(())
    }

    /// The roster members of `group`, if known.
    pub fn group_members(&self, group: &str) -> Option<Vec<String>> {
        self.rosters.get(group).map(|r| r.members().iter().cloned().collect())
    }

    /// Encrypts a group message. Returns, first, the sender-key distributions to send over
    /// pairwise sessions (one envelope per device that does not have this chain yet: only the
    /// verified devices of roster members), then the group envelope.
    pub fn group_encrypt(
        &mut self,
        group: &str,
        text: &[u8],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(Vec<KeyDistribution>, proto::E2eeEnvelope), AccountError> {
        let roster = self.rosters.get(group).ok_or_else(|| AccountError::NotAMember(group.into()))?;
        let epoch = roster.epoch();
        let members: Vec<String> = roster.members().iter().cloned().collect();
        let fresh = self.outbound.get(group).is_none_or(|o| o.chain.epoch() != epoch || o.chain.needs_rotation());
        if fresh {
            let chain = OutboundGroupSession::new(self.suite, group, epoch, &self.me.user, &self.me.device, rng)?;
            self.outbound.insert(group.into(), Outbound { chain, given: BTreeSet::new() });
        }
        let mut targets = Vec::new();
        for member in &members {
            for device in self.devices_of(member) {
                targets.push((member.clone(), device));
            }
        }
        let out = self.outbound.get_mut(group).ok_or_else(|| AccountError::NotAMember(group.into()))?;
        let mut distributions = Vec::new();
        for (user, device) in targets {
            if out.given.insert((user.clone(), device.clone())) {
                let mut inner = Zeroizing::new(vec![KIND_SENDER_KEY]);
                inner.extend_from_slice(&out.chain.distribution().to_bytes()?);
                distributions.push(KeyDistribution { user, device, inner });
            }
        }
        let m = out.chain.encrypt(text)?;
        let env = proto::E2eeEnvelope {
            version: 1,
            suite: u32::from(self.suite.id()),
            sender_device: self.me.device.clone(),
            body: Some(Body::SenderKey(proto::SenderKeyMessage {
                group_id: Bytes::copy_from_slice(group.as_bytes()),
                chain_id: m.chain_id,
                iteration: m.iteration,
                ciphertext: m.ciphertext.into(),
                signature: Bytes::copy_from_slice(&m.signature),
                epoch: m.epoch,
            })),
            recipient_device: String::new(),
            recipient_user: String::new(),
        };
        Ok((distributions, env))
    }

    /// Encrypts a prepared sender-key distribution for one device (see [`Account::group_encrypt`]).
    pub fn encrypt_distribution(
        &mut self,
        user: &str,
        device: &str,
        bundle: Option<&proto::KeyBundle>,
        inner: &[u8],
        now_ms: u64,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<proto::E2eeEnvelope, AccountError> {
        self.encrypt_inner(user, device, bundle, inner, now_ms, rng)
    }
}

fn ratchet_message(r: &proto::RatchetMessage) -> Result<Message, AccountError> {
    Ok(Message {
        dh_pub: r.dh_pub.as_ref().try_into().map_err(|_| AccountError::Malformed("ratchet key"))?,
        pn: r.pn,
        n: r.n,
        ciphertext: r.ciphertext.to_vec(),
    })
}

mod encoding;
