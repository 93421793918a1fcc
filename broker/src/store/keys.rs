//! The E2EE key directory (spec 9.2): public key material only. The broker stores what
//! clients publish and hands it out; it cannot verify signatures (clients do, REQ-E2E-006).
//!
//! Keys:
//! - `k/acct/{user}` → the account identity key (set once)
//! - `k/list/{user}` → the latest signed `DeviceList`
//! - `k/cert/{user}/{device}` → the `DeviceCert`
//! - `k/pre/{user}/{device}` → [`DevicePrekeys`]: current and previous signed prekey, and the
//!   one-time prekeys not yet handed out
//! - `k/gop/{group}/epoch` → the group's E2EE epoch; `k/gop/{group}/op/{epoch}` → the signed op

use prost::Message;
use tern_codec::proto;
use tern_codec::ReasonCode;

use super::{be, key, read_u64, Store, StoreError};

/// Most one-time prekeys kept per device; a publish beyond it is QUOTA_EXCEEDED.
pub(super) const MAX_ONE_TIME_PREKEYS: usize = 500;

/// A device's prekeys as stored.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct DevicePrekeys {
    /// Newest first: the current signed prekey and the previous one (kept for in-flight
    /// handshakes).
    #[prost(message, repeated, tag = "1")]
    pub(super) signed: Vec<proto::SignedPrekey>,
    /// One-time prekeys in publication order; each is handed out once.
    #[prost(message, repeated, tag = "2")]
    pub(super) one_time: Vec<proto::OneTimePrekey>,
}

fn acct_key(user: &str) -> Vec<u8> {
    key(&[b"k/acct/", user.as_bytes()])
}

fn list_key(user: &str) -> Vec<u8> {
    key(&[b"k/list/", user.as_bytes()])
}

fn cert_prefix(user: &str) -> Vec<u8> {
    key(&[b"k/cert/", user.as_bytes(), b"/"])
}

fn prekeys_key(user: &str, device: &str) -> Vec<u8> {
    key(&[b"k/pre/", user.as_bytes(), b"/", device.as_bytes()])
}

fn epoch_key(group: &str) -> Vec<u8> {
    key(&[b"k/gop/", group.as_bytes(), b"/epoch"])
}

fn decode<M: Message + Default>(v: Option<Vec<u8>>, what: &str) -> Result<Option<M>, StoreError> {
    v.map(|b| M::decode(b.as_slice()).map_err(|_| StoreError::Corrupt(what.to_string()))).transpose()
}

impl Store {
    /// Applies a KeyPublish from `user`'s `device`; returns the one-time prekeys it has left,
    /// or the refusal: a different account key (ALREADY_EXISTS: an identity reset is an
    /// operator action), material naming another user (INVALID_REQUEST), a device list whose
    /// version is not above the stored one (INVALID_REQUEST, REQ-E2E-004), or too many
    /// one-time prekeys (QUOTA_EXCEEDED). Nothing is stored unless everything is accepted.
    pub fn publish_keys(
        &self,
        user: &str,
        device: &str,
        p: &proto::KeyPublish,
    ) -> Result<Result<u32, ReasonCode>, StoreError> {
        let foreign = p.device_cert.as_ref().is_some_and(|c| c.user_id != user)
            || p.device_list.as_ref().is_some_and(|l| l.user_id != user);
        if foreign {
            return Ok(Err(ReasonCode::InvalidRequest));
        }
        let pre_key = prekeys_key(user, device);
        self.kv.transaction(|tx| {
            if !p.account_key.is_empty() {
                match tx.get(acct_key(user))? {
                    Some(stored) if stored != p.account_key.as_ref() => return Ok(Err(ReasonCode::AlreadyExists)),
                    Some(_) => {}
                    None => tx.insert(acct_key(user), p.account_key.as_ref())?,
                }
            }
            if let Some(list) = &p.device_list {
                let stored: Option<proto::DeviceList> = decode(tx.get(list_key(user))?, "device list")?;
                match stored {
                    // The same list again (a device re-publishing its keys): nothing to do.
                    Some(s) if s == *list => {}
                    Some(s) if list.version <= s.version => return Ok(Err(ReasonCode::InvalidRequest)),
                    _ => tx.insert(list_key(user), list.encode_to_vec())?,
                }
            }
            if let Some(cert) = &p.device_cert {
                let k = key(&[&cert_prefix(user), cert.device_id.as_bytes()]);
                tx.insert(k, cert.encode_to_vec())?;
            }
            let mut pre: DevicePrekeys = decode(tx.get(&pre_key)?, "prekeys")?.unwrap_or_default();
            if let Some(spk) = &p.signed_prekey {
                if pre.signed.first().is_none_or(|cur| cur.spk_id != spk.spk_id) {
                    pre.signed.insert(0, spk.clone());
                    pre.signed.truncate(2);
                }
            }
            for opk in &p.one_time_prekeys {
                if !pre.one_time.iter().any(|o| o.opk_id == opk.opk_id) {
                    pre.one_time.push(opk.clone());
                }
            }
            if pre.one_time.len() > MAX_ONE_TIME_PREKEYS {
                return Ok(Err(ReasonCode::QuotaExceeded));
            }
            tx.insert(&pre_key, pre.encode_to_vec())?;
            Ok(Ok(pre.one_time.len() as u32))
        })
    }

    /// Each user's account key, latest device list and device certificates.
    pub fn query_keys(&self, users: &[String]) -> Result<Vec<proto::UserKeys>, StoreError> {
        let mut out = Vec::with_capacity(users.len());
        for user in users {
            let mut device_certs = Vec::new();
            for (_, v) in self.kv.scan_prefix(&cert_prefix(user))? {
                device_certs.push(decode(Some(v), "device cert")?.unwrap_or_default());
            }
            out.push(proto::UserKeys {
                user_id: user.clone(),
                account_key: self.kv.get(acct_key(user))?.unwrap_or_default().into(),
                device_list: decode(self.kv.get(list_key(user))?, "device list")?,
                device_certs,
            });
        }
        Ok(out)
    }

    /// A bundle for `user`'s `device`: its certificate, current signed prekey and one one-time
    /// prekey, removed in the same transaction that reads it so that no two claims, however
    /// they race, get the same one (REQ-E2E-002). NOT_FOUND when the device has published no
    /// certificate or signed prekey; the one-time prekey is absent when none are left.
    pub fn claim_bundle(&self, user: &str, device: &str) -> Result<Result<proto::KeyBundle, ReasonCode>, StoreError> {
        let cert_key = key(&[&cert_prefix(user), device.as_bytes()]);
        let pre_key = prekeys_key(user, device);
        self.kv.transaction(|tx| {
            let cert: Option<proto::DeviceCert> = decode(tx.get(&cert_key)?, "device cert")?;
            let mut pre: DevicePrekeys = decode(tx.get(&pre_key)?, "prekeys")?.unwrap_or_default();
            let (Some(cert), Some(spk)) = (cert, pre.signed.first().cloned()) else {
                return Ok(Err(ReasonCode::NotFound));
            };
            let one_time_prekey = (!pre.one_time.is_empty()).then(|| pre.one_time.remove(0));
            if one_time_prekey.is_some() {
                tx.insert(&pre_key, pre.encode_to_vec())?;
            }
            Ok(Ok(proto::KeyBundle { device_cert: Some(cert), signed_prekey: Some(spk), one_time_prekey }))
        })
    }

    /// One-time prekeys `user`'s `device` has left.
    pub fn one_time_prekeys_left(&self, user: &str, device: &str) -> Result<usize, StoreError> {
        let pre: DevicePrekeys = decode(self.kv.get(prekeys_key(user, device))?, "prekeys")?.unwrap_or_default();
        Ok(pre.one_time.len())
    }

    /// Sequences a signed group operation: accepted only at the current epoch plus one
    /// (EPOCH_MISMATCH otherwise, REQ-E2E-005), stored under its epoch.
    pub fn submit_group_op(
        &self,
        group: &str,
        epoch: u64,
        signed_op: &[u8],
    ) -> Result<Result<u64, ReasonCode>, StoreError> {
        self.kv.transaction(|tx| {
            let current = read_u64(tx.get(epoch_key(group))?);
            if epoch != current + 1 {
                return Ok(Err(ReasonCode::EpochMismatch));
            }
            tx.insert(epoch_key(group), be(epoch))?;
            tx.insert(key(&[b"k/gop/", group.as_bytes(), b"/op/", &be(epoch)]), signed_op)?;
            Ok(Ok(epoch))
        })
    }
}
