//! Sync-point advances held in memory and written in batches.
//!
//! Every DELIVER_ACK moves a device's sync point forward (spec 8.1), and a sync point is a
//! "highest seq" that only grows: of all the advances to one key, only the last matters. Writing
//! each into the next group commit cost the committer one engine write per acknowledgement (two
//! per message at a fixed rate: the receiver's and the sender's own copy), about a sixth of its
//! memtable inserts. Held here for up to [`SYNC_POINT_HOLD`], a device acknowledging 100 messages
//! a second costs ten writes a second instead.
//!
//! Readers see held advances at once ([`HeldAdvances::get`], overlaid on the stored value by
//! `Store::cursor` and `Store::conversation_cursor`). Durability is as before, within a bound:
//! the committer writes what is held once the oldest advance is [`SYNC_POINT_HOLD`] old, when
//! anyone waits for applied or durable writes, when its queue has been quiet for `IDLE_FLUSH`,
//! and when the store closes; a crash takes back at most about that long of advances, which
//! makes the broker redeliver messages the device already has (it drops them by seq).

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::kv::{KeyMap, Tx};
use super::{be, read_u64, TxResult};

/// How long an advance may wait in memory before the committer writes it.
pub(super) const SYNC_POINT_HOLD: Duration = Duration::from_millis(100);

/// The advances not yet written (see the module docs).
#[derive(Debug, Default)]
pub(super) struct HeldAdvances(Mutex<Held>);

#[derive(Debug, Default)]
struct Held {
    /// The highest seq per key, not yet taken into a transaction.
    pending: KeyMap<u64>,
    /// Taken into the transaction the committer is applying: still read from here until that
    /// transaction has committed, so a reader always finds an advance here or in the engine.
    applying: KeyMap<u64>,
    /// When the oldest pending advance was held.
    since: Option<Instant>,
}

impl HeldAdvances {
    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Holds `seq` for the sync point under `key` (never moving it backwards).
    pub(super) fn advance(&self, key: Vec<u8>, seq: u64) {
        let mut held = self.lock();
        held.since.get_or_insert_with(Instant::now);
        let slot = held.pending.entry(key).or_default();
        *slot = (*slot).max(seq);
    }

    /// The highest seq held for `key`, if any.
    pub(super) fn get(&self, key: &[u8]) -> Option<u64> {
        let held = self.lock();
        held.pending.get(key).copied().max(held.applying.get(key).copied())
    }

    /// Whether the oldest pending advance has waited `hold`.
    pub(super) fn due(&self, hold: Duration) -> bool {
        self.lock().since.is_some_and(|since| since.elapsed() >= hold)
    }

    /// Moves the pending advances to `applying` and returns them, to be written by
    /// [`write_advances`] and released by [`HeldAdvances::written`] once committed.
    pub(super) fn take(&self) -> Vec<(Vec<u8>, u64)> {
        let mut held = self.lock();
        held.since = None;
        // `applying` is empty here: the committer releases each batch before it takes the next.
        held.applying = std::mem::take(&mut held.pending);
        held.applying.iter().map(|(k, &seq)| (k.clone(), seq)).collect()
    }

    /// The advances taken last are committed (or failed and were reported): readers find them
    /// in the engine now.
    pub(super) fn written(&self) {
        self.lock().applying.clear();
    }
}

/// Writes taken advances inside a transaction, each only where it moves the stored sync point
/// forward.
pub(super) fn write_advances(tx: &Tx<'_>, advances: &[(Vec<u8>, u64)]) -> TxResult<()> {
    for (k, seq) in advances {
        if *seq > read_u64(tx.get(k)?) {
            tx.insert(k, be(*seq))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::HeldAdvances;
    use std::time::Duration;

    #[test]
    fn an_advance_is_read_until_written_and_never_moves_back() {
        let held = HeldAdvances::default();
        assert_eq!(held.get(b"k"), None);
        assert!(!held.due(Duration::ZERO), "nothing held, nothing due");
        held.advance(b"k".to_vec(), 9);
        held.advance(b"k".to_vec(), 4);
        assert_eq!(held.get(b"k"), Some(9), "the highest advance stands");
        assert!(held.due(Duration::ZERO));
        assert!(!held.due(Duration::from_secs(3600)), "held less than an hour");

        assert_eq!(held.take(), vec![(b"k".to_vec(), 9)]);
        assert!(!held.due(Duration::ZERO), "taken: nothing pending");
        // Being written: still read from here; a newer advance meanwhile wins.
        assert_eq!(held.get(b"k"), Some(9));
        held.advance(b"k".to_vec(), 11);
        assert_eq!(held.get(b"k"), Some(11));
        held.written();
        assert_eq!(held.get(b"k"), Some(11), "the newer advance is still pending");
        assert_eq!(held.take(), vec![(b"k".to_vec(), 11)]);
        held.written();
        assert_eq!(held.get(b"k"), None);
    }
}
