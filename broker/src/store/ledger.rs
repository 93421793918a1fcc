//! A device's upstream ledger: the outcome (PUBACK) of each cid it sent, so a retransmission is
//! answered with the first PUBACK and never stored twice (REQ-QOS-004, REQ-QOS-005).
//!
//! Keys:
//! - `d/{user}/{device}/floor` → the contiguous floor (every cid up to it has an outcome), then
//!   the highest cid recorded (8 bytes each)
//! - `d/{user}/{device}/cr/{cid mod LEDGER_KEEP}` → that cid's PUBACK (which carries the cid): a
//!   ring of slots, so recording an outcome overwrites the one [`LEDGER_KEEP`] cids older and
//!   never writes a deletion
//!
//! Because a broker processes a device's PUBLISHes in cid order (REQ-QOS-007), the next cid is
//! normally the floor plus one and above the highest recorded: it is recorded without reading any
//! slot. Only a cid at or below the highest recorded one (out of order) is looked up.
//!
//! Stores written before the ring kept one key per cid (`d/{user}/{device}/cid/{cid}`, pruned
//! with a deletion per message) and a floor of 8 bytes. Such a floor is read as the floor with a
//! highest cid [`LEDGER_KEEP`] above it (an overestimate only costs lookups), lookups fall back to
//! the old keys, and [`Store::ledger`] moves a device's old keys into its ring when it connects.

use prost::Message;
use tern_codec::proto;
use tern_codec::session::LedgerSnapshot;

use super::kv::Tx;
use super::{be, device_key, key, read_u64, Store, StoreError, TxResult};

/// How many decided cids per device are kept (at least twice the largest receive window,
/// REQ-QOS-005): the ring's size.
pub(super) const LEDGER_KEEP: u64 = 2 * 1024;

fn floor_key(user: &str, device: &str) -> Vec<u8> {
    device_key(user, device, b"floor")
}

fn slot_key(user: &str, device: &str, cid: u64) -> Vec<u8> {
    device_key(user, device, &key(&[b"cr/", &be(cid % LEDGER_KEEP)]))
}

/// Where a store written before the ring kept a cid's outcome.
fn legacy_key(user: &str, device: &str, cid: u64) -> Vec<u8> {
    device_key(user, device, &key(&[b"cid/", &be(cid)]))
}

/// The floor and the highest cid recorded, from the floor key's value.
fn decode_floor(v: Option<&[u8]>) -> (u64, u64) {
    let floor = read_u64(v.and_then(|v| v.get(..8)));
    match v.map(|v| v.get(8..16)) {
        Some(Some(high)) => (floor, read_u64(Some(high))),
        // Written before the ring: cids above the floor may have been recorded out of order.
        Some(None) => (floor, floor + LEDGER_KEEP),
        None => (0, 0),
    }
}

/// Whether `cid` has an outcome (it is above the floor: looked up in its slot, then in the old
/// layout).
fn recorded(tx: &Tx<'_>, user: &str, device: &str, cid: u64) -> TxResult<bool> {
    let in_slot = tx
        .get(slot_key(user, device, cid))?
        .is_some_and(|v| proto::PubAck::decode(v.as_slice()).is_ok_and(|a| a.cid == cid));
    Ok(in_slot || tx.get(legacy_key(user, device, cid))?.is_some())
}

/// Records a cid's outcome unless it has one (the first outcome stands, REQ-QOS-005) and
/// advances the device's floor.
pub(super) fn record_outcome_tx(tx: &Tx<'_>, user: &str, device: &str, ack: &proto::PubAck) -> TxResult<()> {
    let floor_key = floor_key(user, device);
    let (mut floor, high) = decode_floor(tx.get(&floor_key)?.as_deref());
    let cid = ack.cid;
    if cid <= floor || (cid <= high && recorded(tx, user, device, cid)?) {
        return Ok(());
    }
    tx.insert(slot_key(user, device, cid), ack.encode_to_vec())?;
    let high = high.max(cid);
    if cid == floor + 1 {
        floor = cid;
        while floor < high && recorded(tx, user, device, floor + 1)? {
            floor += 1;
        }
    }
    tx.insert(floor_key, key(&[&be(floor), &be(high)]))
}

impl Store {
    /// Records an outcome that stored nothing (refused, package timeout) for dedup.
    pub fn record_outcome(&self, user: &str, device: &str, ack: &proto::PubAck) -> Result<(), StoreError> {
        self.kv.transaction(|tx| record_outcome_tx(tx, user, device, ack))?;
        Ok(())
    }

    /// The device's upstream ledger, to restore a session's dedup state (outcomes in cid
    /// order). Moves outcomes kept in the layout before the ring into it.
    pub fn ledger(&self, user: &str, device: &str) -> Result<LedgerSnapshot, StoreError> {
        let decode = |(k, v): &(Vec<u8>, Vec<u8>)| {
            proto::PubAck::decode(v.as_slice())
                .map_err(|_| StoreError::Corrupt(String::from_utf8_lossy(k).into_owned()))
        };
        let legacy = self.kv.scan_prefix(&device_key(user, device, b"cid/"))?;
        if !legacy.is_empty() {
            let acks = legacy.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
            self.kv.transaction(|tx| {
                for ack in &acks {
                    let slot = slot_key(user, device, ack.cid);
                    let held = tx.get(&slot)?.and_then(|v| proto::PubAck::decode(v.as_slice()).ok());
                    if held.is_none_or(|h| h.cid < ack.cid) {
                        tx.insert(slot, ack.encode_to_vec())?;
                    }
                    tx.remove(legacy_key(user, device, ack.cid))?;
                }
                Ok(())
            })?;
        }
        let contiguous = decode_floor(self.kv.get(floor_key(user, device))?.as_deref()).0;
        let mut acks = self
            .kv
            .scan_prefix(&device_key(user, device, b"cr/"))?
            .iter()
            .map(decode)
            .collect::<Result<Vec<_>, _>>()?;
        acks.sort_by_key(|a| a.cid);
        Ok(LedgerSnapshot { contiguous, acks })
    }
}
