//! The key store encoding of an [`Account`]: every field, private keys included, in the
//! [`crate::persist`] format. Decoding refuses truncated, padded or inconsistent input.

use std::collections::{BTreeMap, BTreeSet};

use zeroize::Zeroizing;

use super::{Account, Outbound, Peer, PeerSession, PendingSetup};
use crate::group::{Distribution, InboundGroupSession, OutboundGroupSession, Roster};
use crate::persist::{Dec, Enc, PersistError};
use crate::primitives::{DhSecret, SigningKey, Suite};
use crate::ratchet::Session;
use crate::x3dh::{DeviceIdentity, OneTimePrekey, SignedPrekey};

const STORE_MAGIC: &[u8] = b"TERN-E2EE-STORE-1";

fn put_identity(e: &mut Enc, id: &DeviceIdentity) {
    e.str(&id.user);
    e.str(&id.device);
    e.key(&id.sig_pub);
    e.key(&id.dh_pub);
}

fn get_identity(d: &mut Dec<'_>) -> Result<DeviceIdentity, PersistError> {
    Ok(DeviceIdentity { user: d.str()?, device: d.str()?, sig_pub: d.key()?, dh_pub: d.key()? })
}

fn put_proto(e: &mut Enc, m: &impl prost::Message) {
    e.bytes(&m.encode_to_vec());
}

fn get_proto<M: prost::Message + Default>(d: &mut Dec<'_>) -> Result<M, PersistError> {
    M::decode(d.bytes()?).map_err(|_| PersistError("protobuf"))
}

impl Account {
    /// The whole state, for a key store file (private keys included: protect the file).
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut e = Enc::default();
        e.0.extend_from_slice(STORE_MAGIC);
        e.u16(self.suite.id());
        put_identity(&mut e, &self.me);
        e.key(self.sig.seed());
        e.key(&self.dh.to_bytes());
        e.opt_key(self.aik.as_ref().map(SigningKey::seed));
        e.key(&self.aik_pub);
        put_proto(&mut e, &self.cert);
        put_proto(&mut e, &self.list);
        e.len(self.own_certs.len());
        for c in &self.own_certs {
            put_proto(&mut e, c);
        }
        e.len(self.spks.len());
        for (s, secret) in &self.spks {
            e.u32(s.id);
            e.u64(s.created_ms);
            e.bytes(&s.sig);
            e.key(&secret.to_bytes());
        }
        e.len(self.opks.len());
        for (o, secret) in self.opks.values() {
            e.u32(o.id);
            e.bytes(&o.sig);
            e.key(&secret.to_bytes());
        }
        e.u32(self.next_opk);
        e.len(self.pool);
        e.u32(self.opk_published);
        e.len(self.peers.len());
        for (user, p) in &self.peers {
            e.str(user);
            e.key(&p.aik);
            e.u64(p.list_version);
            e.len(p.devices.len());
            for id in p.devices.values() {
                put_identity(&mut e, id);
            }
        }
        e.len(self.sessions.len());
        for ((user, device), s) in &self.sessions {
            e.str(user);
            e.str(device);
            s.session.encode(&mut e);
            match &s.pending {
                Some(p) => {
                    e.u8(1);
                    e.u32(p.spk_id);
                    e.u32(p.opk_id.unwrap_or(0));
                    e.u8(u8::from(p.opk_id.is_some()));
                    e.key(&p.ek_pub);
                }
                None => e.u8(0),
            }
        }
        e.len(self.rosters.len());
        for r in self.rosters.values() {
            r.encode(&mut e);
        }
        e.len(self.outbound.len());
        for o in self.outbound.values() {
            o.chain.encode(&mut e);
            e.len(o.given.len());
            for (user, device) in &o.given {
                e.str(user);
                e.str(device);
            }
        }
        e.len(self.inbound.len());
        for s in &self.inbound {
            s.encode(&mut e);
        }
        e.len(self.pending_keys.len());
        for (user, device, d) in &self.pending_keys {
            e.str(user);
            e.str(device);
            match d.to_bytes() {
                Ok(bytes) => e.bytes(&bytes),
                Err(_) => e.bytes(&[]),
            }
        }
        e.len(self.seen_setups.len());
        for h in &self.seen_setups {
            e.key(h);
        }
        e.0
    }

    /// Restores [`Account::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Account, PersistError> {
        let mut d = Dec(bytes);
        if d.0.get(..STORE_MAGIC.len()) != Some(STORE_MAGIC) {
            return Err(PersistError("not a Tern key store"));
        }
        d.0 = d.0.get(STORE_MAGIC.len()..).unwrap_or_default();
        let suite = Suite::from_id(d.u16()?).map_err(|_| PersistError("suite"))?;
        let me = get_identity(&mut d)?;
        let sig = SigningKey::from_seed(d.key()?).map_err(|_| PersistError("signing key"))?;
        let dh = DhSecret::from_bytes(d.key()?);
        let aik = d.opt_key()?.map(SigningKey::from_seed).transpose().map_err(|_| PersistError("account key"))?;
        let aik_pub = d.key()?;
        let (cert, list) = (get_proto(&mut d)?, get_proto(&mut d)?);
        let mut own_certs = Vec::new();
        for _ in 0..d.len()? {
            own_certs.push(get_proto(&mut d)?);
        }
        let mut spks = Vec::new();
        for _ in 0..d.len()? {
            let (id, created_ms) = (d.u32()?, d.u64()?);
            let sig_bytes: [u8; 64] = d.bytes()?.try_into().map_err(|_| PersistError("signature"))?;
            let secret = DhSecret::from_bytes(d.key()?);
            spks.push((SignedPrekey { id, public: secret.public(), created_ms, sig: sig_bytes }, secret));
        }
        let mut opks = BTreeMap::new();
        for _ in 0..d.len()? {
            let id = d.u32()?;
            let sig_bytes: [u8; 64] = d.bytes()?.try_into().map_err(|_| PersistError("signature"))?;
            let secret = DhSecret::from_bytes(d.key()?);
            opks.insert(id, (OneTimePrekey { id, public: secret.public(), sig: sig_bytes }, secret));
        }
        let next_opk = d.u32()?;
        let pool = usize::try_from(d.u32()?).map_err(|_| PersistError("pool"))?;
        let opk_published = d.u32()?;
        let mut peers = BTreeMap::new();
        for _ in 0..d.len()? {
            let (user, aik, list_version) = (d.str()?, d.key()?, d.u64()?);
            let mut devices = BTreeMap::new();
            for _ in 0..d.len()? {
                let id = get_identity(&mut d)?;
                devices.insert(id.device.clone(), id);
            }
            peers.insert(user, Peer { aik, list_version, devices });
        }
        let mut sessions = BTreeMap::new();
        for _ in 0..d.len()? {
            let key = (d.str()?, d.str()?);
            let session = Session::decode(&mut d)?;
            let pending = match d.u8()? {
                0 => None,
                _ => {
                    let (spk_id, opk, has_opk, ek_pub) = (d.u32()?, d.u32()?, d.u8()?, d.key()?);
                    Some(PendingSetup { spk_id, opk_id: (has_opk == 1).then_some(opk), ek_pub })
                }
            };
            sessions.insert(key, PeerSession { session, pending });
        }
        let mut rosters = BTreeMap::new();
        for _ in 0..d.len()? {
            let r = Roster::decode(&mut d)?;
            rosters.insert(r.group_id().to_owned(), r);
        }
        let mut outbound = BTreeMap::new();
        for _ in 0..d.len()? {
            let chain = OutboundGroupSession::decode(&mut d)?;
            let mut given = BTreeSet::new();
            for _ in 0..d.len()? {
                given.insert((d.str()?, d.str()?));
            }
            outbound.insert(chain.group_id().to_owned(), Outbound { chain, given });
        }
        let mut inbound = Vec::new();
        for _ in 0..d.len()? {
            inbound.push(InboundGroupSession::decode(&mut d)?);
        }
        let mut pending_keys = Vec::new();
        for _ in 0..d.len()? {
            let (user, device) = (d.str()?, d.str()?);
            if let Ok(dist) = Distribution::from_bytes(d.bytes()?) {
                pending_keys.push((user, device, dist));
            }
        }
        let mut seen_setups = std::collections::VecDeque::new();
        for _ in 0..d.len()? {
            seen_setups.push_back(d.key()?);
        }
        d.end()?;
        Ok(Account {
            suite,
            me,
            sig,
            dh,
            aik,
            aik_pub,
            cert,
            list,
            own_certs,
            spks,
            opks,
            next_opk,
            pool,
            opk_published,
            peers,
            sessions,
            rosters,
            outbound,
            inbound,
            pending_keys,
            seen_setups,
        })
    }
}
