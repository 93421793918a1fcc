//! Accounts and devices (design 6.9): device certificates signed by the account identity key
//! (AIK) and countersigned by the device, signed device lists with strictly increasing versions,
//! and safety numbers.
//!
//! A device is trusted for a user only when the user's device list is signed by the user's
//! AIK, is not older than the newest list this client has seen (rollback), names the device
//! with the hash of its certificate, and the certificate's two signatures verify. The broker
//! cannot forge any of these; it can only withhold updates.

use tern_codec::proto;

use crate::primitives::{check_dh_public, lp, sha256, verify, CryptoError, SigningKey};
use crate::x3dh::DeviceIdentity;

/// Why a device or list is not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// A signature or key failed its check.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The list is older than one already seen for this user (a rollback).
    #[error("device list version {got} is older than {pinned}")]
    Rollback {
        /// The list's version.
        got: u64,
        /// The newest version seen.
        pinned: u64,
    },
    /// The certificate is not in the user's device list (or its hash differs).
    #[error("device {0} is not in the signed device list")]
    NotListed(String),
    /// The certificate or list names another user, or a key field has the wrong length.
    #[error("malformed: {0}")]
    Malformed(&'static str),
}

fn key32(bytes: &[u8]) -> Result<[u8; 32], DeviceError> {
    bytes.try_into().map_err(|_| DeviceError::Malformed("key is not 32 bytes"))
}

fn sig64(bytes: &[u8]) -> Result<[u8; 64], DeviceError> {
    bytes.try_into().map_err(|_| DeviceError::Malformed("signature is not 64 bytes"))
}

/// What the AIK signs in a device certificate.
pub fn cert_signed_bytes(c: &proto::DeviceCert) -> Result<Vec<u8>, CryptoError> {
    let mut out = b"TERN-E2EE-v1/sig/device-cert".to_vec();
    lp(&mut out, c.user_id.as_bytes())?;
    lp(&mut out, c.device_id.as_bytes())?;
    let suites = u16::try_from(c.suites.len()).map_err(|_| CryptoError::Malformed("too many suites"))?;
    out.extend_from_slice(&suites.to_be_bytes());
    for s in &c.suites {
        out.extend_from_slice(&u16::try_from(*s).map_err(|_| CryptoError::Malformed("suite id"))?.to_be_bytes());
    }
    lp(&mut out, &c.dik_sig_pub)?;
    lp(&mut out, &c.dik_dh_pub)?;
    out.extend_from_slice(&c.created_ms.to_be_bytes());
    out.extend_from_slice(&c.flags.to_be_bytes());
    Ok(out)
}

/// What the device signs to accept the account: `label ‖ lp(user) ‖ AIK ‖ DIK_dh`.
pub fn accept_signed_bytes(user: &str, aik_pub: &[u8; 32], dik_dh_pub: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let mut out = b"TERN-E2EE-v1/sig/device-accept".to_vec();
    lp(&mut out, user.as_bytes())?;
    out.extend_from_slice(aik_pub);
    lp(&mut out, dik_dh_pub)?;
    Ok(out)
}

/// The hash a device list records for a certificate: SHA-256 over its signed bytes and both
/// signatures.
pub fn cert_hash(c: &proto::DeviceCert) -> Result<[u8; 32], CryptoError> {
    let mut bytes = cert_signed_bytes(c)?;
    bytes.extend_from_slice(&c.aik_sig);
    bytes.extend_from_slice(&c.dev_sig);
    Ok(sha256(&bytes))
}

/// What the AIK signs in a device list.
pub fn list_signed_bytes(l: &proto::DeviceList) -> Result<Vec<u8>, CryptoError> {
    let mut out = b"TERN-E2EE-v1/sig/device-list".to_vec();
    lp(&mut out, l.user_id.as_bytes())?;
    out.extend_from_slice(&l.version.to_be_bytes());
    out.extend_from_slice(&l.issued_at_ms.to_be_bytes());
    let n = u16::try_from(l.entries.len()).map_err(|_| CryptoError::Malformed("too many devices"))?;
    out.extend_from_slice(&n.to_be_bytes());
    for e in &l.entries {
        lp(&mut out, e.device_id.as_bytes())?;
        lp(&mut out, &e.cert_hash)?;
    }
    Ok(out)
}

/// Issues a certificate for a device (signed by the AIK, countersigned by the device).
pub fn issue_cert(
    aik: &SigningKey,
    device_sig: &SigningKey,
    identity: &DeviceIdentity,
    suites: &[u16],
    created_ms: u64,
    flags: u32,
) -> Result<proto::DeviceCert, CryptoError> {
    let mut cert = proto::DeviceCert {
        user_id: identity.user.clone(),
        device_id: identity.device.clone(),
        suites: suites.iter().map(|&s| u32::from(s)).collect(),
        dik_sig_pub: identity.sig_pub.to_vec().into(),
        dik_dh_pub: identity.dh_pub.to_vec().into(),
        created_ms,
        flags,
        ..Default::default()
    };
    cert.aik_sig = aik.sign(&cert_signed_bytes(&cert)?).to_vec().into();
    cert.dev_sig =
        device_sig.sign(&accept_signed_bytes(&identity.user, &aik.public(), &identity.dh_pub)?).to_vec().into();
    Ok(cert)
}

/// Signs a device list naming `certs`.
pub fn sign_list(
    aik: &SigningKey,
    user: &str,
    version: u64,
    issued_at_ms: u64,
    certs: &[proto::DeviceCert],
) -> Result<proto::DeviceList, CryptoError> {
    let mut list = proto::DeviceList { user_id: user.into(), version, issued_at_ms, ..Default::default() };
    for c in certs {
        list.entries
            .push(proto::DeviceListEntry { device_id: c.device_id.clone(), cert_hash: cert_hash(c)?.to_vec().into() });
    }
    list.aik_sig = aik.sign(&list_signed_bytes(&list)?).to_vec().into();
    Ok(list)
}

/// Checks a user's device list against the AIK and the newest version seen (`pinned`).
pub fn verify_list(aik_pub: &[u8; 32], user: &str, list: &proto::DeviceList, pinned: u64) -> Result<(), DeviceError> {
    if list.user_id != user {
        return Err(DeviceError::Malformed("device list names another user"));
    }
    verify(aik_pub, &list_signed_bytes(list)?, &sig64(&list.aik_sig)?)?;
    if list.version < pinned {
        return Err(DeviceError::Rollback { got: list.version, pinned });
    }
    Ok(())
}

/// Checks one device's certificate against a verified list and the AIK; returns the device's
/// identity for X3DH.
pub fn verify_device(
    aik_pub: &[u8; 32],
    list: &proto::DeviceList,
    cert: &proto::DeviceCert,
) -> Result<DeviceIdentity, DeviceError> {
    if cert.user_id != list.user_id {
        return Err(DeviceError::Malformed("certificate names another user"));
    }
    let hash = cert_hash(cert)?;
    if !list.entries.iter().any(|e| e.device_id == cert.device_id && e.cert_hash.as_ref() == hash) {
        return Err(DeviceError::NotListed(cert.device_id.clone()));
    }
    verify(aik_pub, &cert_signed_bytes(cert)?, &sig64(&cert.aik_sig)?)?;
    let (sig_pub, dh_pub) = (key32(&cert.dik_sig_pub)?, key32(&cert.dik_dh_pub)?);
    check_dh_public(&dh_pub)?;
    verify(&sig_pub, &accept_signed_bytes(&cert.user_id, aik_pub, &dh_pub)?, &sig64(&cert.dev_sig)?)?;
    Ok(DeviceIdentity { user: cert.user_id.clone(), device: cert.device_id.clone(), sig_pub, dh_pub })
}

/// One party's 30-digit half of a safety number (Signal's construction over the AIK and the
/// user id: version 0, SHA-512 iterated 5 200 times, six 5-digit groups).
pub fn safety_digits(aik_pub: &[u8; 32], user: &str) -> String {
    // hash₀ = version ‖ key ‖ id; hashᵢ₊₁ = SHA-512(hashᵢ ‖ key).
    let mut hash = vec![0u8, 0u8];
    hash.extend_from_slice(aik_pub);
    hash.extend_from_slice(user.as_bytes());
    for _ in 0..5200 {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA512);
        ctx.update(&hash);
        ctx.update(aik_pub);
        hash = ctx.finish().as_ref().to_vec();
    }
    hash.chunks(5)
        .take(6)
        .map(|c| {
            let v = c.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
            format!("{:05}", v % 100_000)
        })
        .collect()
}

/// The 60-digit safety number two users compare: both halves, the smaller first.
pub fn safety_number(a_aik: &[u8; 32], a_user: &str, b_aik: &[u8; 32], b_user: &str) -> String {
    let (a, b) = (safety_digits(a_aik, a_user), safety_digits(b_aik, b_user));
    if a <= b {
        a + &b
    } else {
        b + &a
    }
}
