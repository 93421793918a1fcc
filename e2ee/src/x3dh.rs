//! X3DH-style session setup (spec 9, design 6.6): the initiator claims the responder's bundle,
//! checks it, and both sides derive the same 32-byte secret and associated data from three or
//! four X25519 agreements.
//!
//! Encodings fed into signatures and KDFs: integers big-endian, variable strings with a u16
//! length prefix, keys raw 32 bytes, and a distinct ASCII label first in every signed object.

use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::primitives::{check_dh_public, hkdf_sha256, lp, verify, CryptoError, DhSecret, SigningKey, Suite};

/// Signed prekeys older than this are refused (35 days).
pub const SPK_MAX_AGE_MS: u64 = 35 * 24 * 3600 * 1000;

/// Why a session could not be set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum X3dhError {
    /// A signature, key or agreement failed a check.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The signed prekey is older than [`SPK_MAX_AGE_MS`] (or dated in the future).
    #[error("signed prekey too old")]
    StalePrekey,
}

/// The public identity of a device, as its (verified) device certificate states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdentity {
    /// The user.
    pub user: String,
    /// The device.
    pub device: String,
    /// DIK_sig: the device's Ed25519 key.
    pub sig_pub: [u8; 32],
    /// DIK_dh: the device's X25519 identity key.
    pub dh_pub: [u8; 32],
}

/// A signed prekey as published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedPrekey {
    /// Its id.
    pub id: u32,
    /// The X25519 public key.
    pub public: [u8; 32],
    /// Creation time, ms since the Unix epoch.
    pub created_ms: u64,
    /// DIK_sig's signature over [`spk_signed_bytes`].
    pub sig: [u8; 64],
}

/// A one-time prekey as published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OneTimePrekey {
    /// Its id.
    pub id: u32,
    /// The X25519 public key.
    pub public: [u8; 32],
    /// DIK_sig's signature over [`opk_signed_bytes`].
    pub sig: [u8; 64],
}

/// What a claim returned, once decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// The responder device.
    pub identity: DeviceIdentity,
    /// Its current signed prekey.
    pub signed_prekey: SignedPrekey,
    /// One one-time prekey, when the directory had one left.
    pub one_time_prekey: Option<OneTimePrekey>,
}

/// `"TERN-E2EE-v1/sig/spk" ‖ lp(user) ‖ lp(device) ‖ spk_id ‖ spk_pub ‖ created_ms`.
pub fn spk_signed_bytes(user: &str, device: &str, spk: &SignedPrekey) -> Result<Vec<u8>, CryptoError> {
    let mut out = b"TERN-E2EE-v1/sig/spk".to_vec();
    lp(&mut out, user.as_bytes())?;
    lp(&mut out, device.as_bytes())?;
    out.extend_from_slice(&spk.id.to_be_bytes());
    out.extend_from_slice(&spk.public);
    out.extend_from_slice(&spk.created_ms.to_be_bytes());
    Ok(out)
}

/// `"TERN-E2EE-v1/sig/opk" ‖ lp(user) ‖ lp(device) ‖ opk_id ‖ opk_pub`.
pub fn opk_signed_bytes(user: &str, device: &str, opk: &OneTimePrekey) -> Result<Vec<u8>, CryptoError> {
    let mut out = b"TERN-E2EE-v1/sig/opk".to_vec();
    lp(&mut out, user.as_bytes())?;
    lp(&mut out, device.as_bytes())?;
    out.extend_from_slice(&opk.id.to_be_bytes());
    out.extend_from_slice(&opk.public);
    Ok(out)
}

/// Signs a signed prekey with the device's DIK_sig.
pub fn sign_spk(key: &SigningKey, user: &str, device: &str, spk: &mut SignedPrekey) -> Result<(), CryptoError> {
    spk.sig = key.sign(&spk_signed_bytes(user, device, spk)?);
    Ok(())
}

/// Signs a one-time prekey with the device's DIK_sig.
pub fn sign_opk(key: &SigningKey, user: &str, device: &str, opk: &mut OneTimePrekey) -> Result<(), CryptoError> {
    opk.sig = key.sign(&opk_signed_bytes(user, device, opk)?);
    Ok(())
}

/// Associated data binding both devices' addresses and identity keys, initiator first.
fn associated_data(
    suite: Suite,
    initiator: &DeviceIdentity,
    responder: &DeviceIdentity,
) -> Result<Vec<u8>, CryptoError> {
    let mut ad = b"TERN-E2EE-v1/AD".to_vec();
    ad.extend_from_slice(&suite.id().to_be_bytes());
    for d in [initiator, responder] {
        lp(&mut ad, d.user.as_bytes())?;
        lp(&mut ad, d.device.as_bytes())?;
        ad.extend_from_slice(&d.sig_pub);
        ad.extend_from_slice(&d.dh_pub);
    }
    Ok(ad)
}

/// `SK = HKDF(salt 0³², 0xFF³² ‖ DH1 ‖ DH2 ‖ DH3 [‖ DH4], "TERN-E2EE-v1/X3DH" ‖ suite)`.
fn shared_key(suite: Suite, dhs: &[&[u8; 32]]) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
    let mut ikm = Zeroizing::new(vec![0xFFu8; 32]);
    for dh in dhs {
        ikm.extend_from_slice(dh.as_slice());
    }
    let mut sk = Zeroizing::new([0u8; 32]);
    hkdf_sha256(&[0u8; 32], &ikm, &[b"TERN-E2EE-v1/X3DH", &suite.id().to_be_bytes()], sk.as_mut())?;
    Ok(sk)
}

/// The initiator's result: the secret, the associated data, and what the first message must
/// carry so the responder can repeat the computation.
pub struct Initiated {
    /// SK, the Double Ratchet's first root key.
    pub shared: Zeroizing<[u8; 32]>,
    /// AD, bound into every message of the session.
    pub ad: Vec<u8>,
    /// The ephemeral public key (EK_A).
    pub ek_pub: [u8; 32],
    /// The signed prekey used (also the responder's first ratchet key).
    pub spk: SignedPrekey,
    /// The one-time prekey used, if any.
    pub opk_id: Option<u32>,
}

/// Runs the initiator's side against `bundle` at `now_ms`: checks the prekey signatures and
/// age and every key (design 6.6 step 2, items 4–6; the device certificate and list are
/// checked by the caller against the account key), then derives SK and AD.
pub fn initiate(
    suite: Suite,
    me: &DeviceIdentity,
    my_dh: &DhSecret,
    bundle: &Bundle,
    now_ms: u64,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<Initiated, X3dhError> {
    let peer = &bundle.identity;
    let spk = &bundle.signed_prekey;
    verify(&peer.sig_pub, &spk_signed_bytes(&peer.user, &peer.device, spk)?, &spk.sig)?;
    if spk.created_ms > now_ms || now_ms - spk.created_ms > SPK_MAX_AGE_MS {
        return Err(X3dhError::StalePrekey);
    }
    if let Some(opk) = &bundle.one_time_prekey {
        verify(&peer.sig_pub, &opk_signed_bytes(&peer.user, &peer.device, opk)?, &opk.sig)?;
    }
    check_dh_public(&peer.dh_pub)?;
    let ek = DhSecret::generate(rng);
    let dh1 = my_dh.dh(&spk.public)?;
    let dh2 = ek.dh(&peer.dh_pub)?;
    let dh3 = ek.dh(&spk.public)?;
    let dh4 = bundle.one_time_prekey.as_ref().map(|o| ek.dh(&o.public)).transpose()?;
    let mut dhs = vec![&*dh1, &*dh2, &*dh3];
    if let Some(dh4) = &dh4 {
        dhs.push(dh4);
    }
    Ok(Initiated {
        shared: shared_key(suite, &dhs)?,
        ad: associated_data(suite, me, peer)?,
        ek_pub: ek.public(),
        spk: spk.clone(),
        opk_id: bundle.one_time_prekey.as_ref().map(|o| o.id),
    })
}

/// Runs the responder's side: the same agreements mirrored with its signed prekey and the
/// one-time prekey the initiator named. Returns SK and AD.
pub fn respond(
    suite: Suite,
    me: &DeviceIdentity,
    my_dh: &DhSecret,
    spk: &DhSecret,
    opk: Option<&DhSecret>,
    initiator: &DeviceIdentity,
    ek_pub: &[u8; 32],
) -> Result<(Zeroizing<[u8; 32]>, Vec<u8>), X3dhError> {
    check_dh_public(&initiator.dh_pub)?;
    let dh1 = spk.dh(&initiator.dh_pub)?;
    let dh2 = my_dh.dh(ek_pub)?;
    let dh3 = spk.dh(ek_pub)?;
    let dh4 = opk.map(|o| o.dh(ek_pub)).transpose()?;
    let mut dhs = vec![&*dh1, &*dh2, &*dh3];
    if let Some(dh4) = &dh4 {
        dhs.push(dh4);
    }
    Ok((shared_key(suite, &dhs)?, associated_data(suite, initiator, me)?))
}
