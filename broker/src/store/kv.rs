//! The embedded key-value engines behind [`super::Store`]: fjall, sled and redb. All give
//! ordered byte keys, serialisable transactions and an explicit durability point; the store's
//! logic is written once against this module.

use std::borrow::Cow;
use std::cell::RefCell;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use redb::{ReadableTable, TableDefinition};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use super::StoreError;

/// The maps a commit keeps its keys in ([`WriteSet`], [`HotValues`], held sync points). Hashing
/// was ~12% of the group committer's time with std's SipHash (BENCHMARKS.md, "Durable path");
/// foldhash is seeded at random per process and per map as std's `RandomState` is, so keys a
/// client chooses (user names) cannot be made to collide without learning the seed, and it
/// hashes short keys faster.
pub(super) type KeyMap<V> = std::collections::HashMap<Vec<u8>, V, foldhash::fast::RandomState>;

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tern");

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Which engine a store uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Engine {
    /// fjall 3 (an LSM tree: a journal plus sorted tables); the default for a new store, by
    /// measurement (BENCHMARKS.md, "fjall, sled or redb").
    #[default]
    Fjall,
    /// sled 0.34 (the design card's choice, the default before fjall).
    Sled,
    /// redb 2.
    Redb,
}

impl Engine {
    const ALL: [Engine; 3] = [Engine::Fjall, Engine::Sled, Engine::Redb];

    fn name(self) -> &'static str {
        match self {
            Engine::Fjall => "fjall",
            Engine::Sled => "sled",
            Engine::Redb => "redb",
        }
    }

    /// Where this engine keeps its files inside a data directory.
    fn path(self, dir: &Path) -> std::path::PathBuf {
        match self {
            Engine::Fjall => dir.join("fjall"),
            Engine::Sled => dir.join("sled"),
            Engine::Redb => dir.join("tern.redb"),
        }
    }

    /// The engine for the store in `dir`: the one asked for, or (`None`) the one whose store
    /// the directory already holds, or the default for a new directory. Asking for an engine
    /// other than the one holding the directory's data is an error, never a fresh empty store
    /// beside the old one.
    pub fn resolve(dir: &Path, wanted: Option<Engine>) -> Result<Engine, StoreError> {
        let found: Vec<Engine> = Engine::ALL.into_iter().filter(|e| e.path(dir).exists()).collect();
        let names = |engines: &[Engine]| engines.iter().map(|e| e.name()).collect::<Vec<_>>().join(" and ");
        match (wanted, found.as_slice()) {
            (Some(w), []) => Ok(w),
            (Some(w), found @ [first, ..]) if !found.contains(&w) => Err(StoreError::Engine(format!(
                "{} holds a {} store, not {}: start with --store {} (or store = \"{}\"), or use another --data-dir",
                dir.display(),
                names(found),
                w.name(),
                first.name(),
                first.name()
            ))),
            (Some(w), _) => Ok(w),
            (None, []) => Ok(Engine::default()),
            (None, [one]) => Ok(*one),
            (None, several) => Err(StoreError::Engine(format!(
                "{} holds {} stores: choose one with --store",
                dir.display(),
                names(several)
            ))),
        }
    }
}

impl std::str::FromStr for Engine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sled" => Ok(Engine::Sled),
            "redb" => Ok(Engine::Redb),
            "fjall" => Ok(Engine::Fjall),
            other => Err(format!("unknown store engine {other:?} (fjall, sled or redb)")),
        }
    }
}

fn redb_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Engine(e.to_string())
}

/// An ordered key-value engine with serialisable transactions and an explicit durability
/// point: all the store needs from a backend. sled and redb implement it here; a clustered
/// backend implements it to carry the whole store.
pub trait KvEngine: Send + Sync + 'static {
    /// Runs `f` as one serialisable transaction and commits it (not yet durably: see
    /// [`KvEngine::flush`]). An engine may run `f` more than once (optimistic retries); an
    /// error from `f` aborts the transaction and is returned.
    fn transact(&self, f: &mut dyn FnMut(&dyn KvTx) -> Result<(), StoreError>) -> Result<(), StoreError>;
    /// Reads one key outside any transaction.
    fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Keys in `[start, end)` (`None`: to the end), ascending or descending, at most `limit`.
    fn range(&self, start: &[u8], end: Option<&[u8]>, reverse: bool, limit: usize) -> Result<Vec<Entry>, StoreError>;
    /// Makes every commit so far durable.
    fn flush(&self) -> Result<(), StoreError>;
    /// Approximate bytes on disk.
    fn size_on_disk(&self) -> u64;
    /// Whether every write to this engine goes through this process's [`KvEngine::transact`]
    /// (an embedded engine): then the store may keep values read in transactions in memory
    /// (see `HotValues`). A shared or clustered backend written by others says no.
    fn exclusive(&self) -> bool {
        false
    }
}

/// A transaction's view: reads see the transaction's own writes.
pub trait KvTx {
    /// Reads a key.
    fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Writes a key.
    fn insert(&self, k: &[u8], v: &[u8]) -> Result<(), StoreError>;
    /// Writes a key, taking what the caller owns (a key just built, an encoded record): a
    /// transaction that keeps its writes until the end then copies neither.
    fn insert_owned(&self, k: Cow<'_, [u8]>, v: Vec<u8>) -> Result<(), StoreError> {
        self.insert(&k, &v)
    }
    /// Deletes a key.
    fn remove(&self, k: &[u8]) -> Result<(), StoreError>;
}

/// The store's handle on its engine, with the conveniences the store logic uses.
pub(super) struct Kv {
    engine: Box<dyn KvEngine>,
    /// A transaction committed since the last flush began: the committer flushes it within
    /// [`super::flush::IDLE_FLUSH`] even when nobody waits for durability.
    dirty: std::sync::atomic::AtomicBool,
    /// Held through every transaction: values read in transactions, kept current by every
    /// commit (`None` for an engine others write to, where the lock only serialises).
    hot: Mutex<Option<HotValues>>,
}

/// Values that transactions read (counters, sync points, unread state, the cid floor), kept in
/// memory so the next transaction that reads them does not search the engine again: every
/// message reads about a dozen such keys, and in a small group commit (one message per
/// sender) each read was a search of the engine's memtable and tables. Coherent because every
/// write goes through [`Kv::transaction`], which holds the lock around the engine's commit and
/// the update here; absent keys are remembered too. Keys only written (messages, inbox entries)
/// are not taken in. Two generations bound it: lookups promote from the older one, and when
/// the newer fills up the older is dropped (an approximate least-recently-used).
#[derive(Default)]
pub(super) struct HotValues {
    young: KeyMap<Option<Vec<u8>>>,
    old: KeyMap<Option<Vec<u8>>>,
}

/// Keys per generation of [`HotValues`] (about 100 bytes each with their values: ~6 MB for both
/// generations at most).
const HOT_GENERATION: usize = 32 * 1024;

impl HotValues {
    /// The value known for `k`: `None` when not known, `Some(None)` when known absent.
    fn get(&mut self, k: &[u8]) -> Option<Option<Vec<u8>>> {
        if let Some(v) = self.young.get(k) {
            return Some(v.clone());
        }
        let (k, v) = self.old.remove_entry(k)?;
        self.put(k, v.clone());
        Some(v)
    }

    fn put(&mut self, k: Vec<u8>, v: Option<Vec<u8>>) {
        if self.young.len() >= HOT_GENERATION && !self.young.contains_key(&k) {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(k, v);
    }

    /// Whether `k` is held (in either generation).
    fn holds(&self, k: &[u8]) -> bool {
        self.young.contains_key(k) || self.old.contains_key(k)
    }

    /// After a commit: what the transaction read is kept; what it wrote replaces what is held.
    fn learn(&mut self, keys: KeyMap<Seen>) {
        for (k, (v, written, read)) in keys {
            if read || (written && self.holds(&k)) {
                self.old.remove(&k);
                self.put(k, v);
            }
        }
    }
}

impl std::fmt::Debug for Kv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kv(..)")
    }
}

/// A transaction handle with byte-slice conveniences.
pub(crate) struct Tx<'a>(&'a dyn KvTx);

impl Tx<'_> {
    pub(super) fn get(&self, k: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.get(k.as_ref())
    }

    /// Writes a key; owned keys and values (a key just built, an encoded record) are moved in,
    /// and a borrowed key is copied only if the transaction has not seen it yet.
    pub(super) fn insert<'k>(&self, k: impl Into<Cow<'k, [u8]>>, v: impl Into<Vec<u8>>) -> Result<(), StoreError> {
        self.0.insert_owned(k.into(), v.into())
    }

    pub(super) fn remove(&self, k: impl AsRef<[u8]>) -> Result<(), StoreError> {
        self.0.remove(k.as_ref())
    }
}

/// A transaction's reads and writes, kept in memory and handed to the engine once at the end:
/// a group commit touches the same keys many times (the msg_id counter, a busy conversation's
/// seq, a user's inbox counter), and each key then costs the engine one read and one write per
/// transaction instead of one per message.
struct WriteSet<'a> {
    engine: &'a dyn KvTx,
    hot: Option<RefCell<&'a mut HotValues>>,
    keys: RefCell<KeyMap<Seen>>,
}

/// A key's current value in a transaction (`None`: absent), whether the transaction wrote it,
/// and whether it read it before (from the engine or the hot values).
type Seen = (Option<Vec<u8>>, bool, bool);

impl WriteSet<'_> {
    /// Hands the writes to the engine; whether there were any, and every key seen (for the
    /// hot values, once the engine has committed).
    fn apply(self) -> Result<(bool, KeyMap<Seen>), StoreError> {
        let keys = self.keys.into_inner();
        // In key order: consecutive inserts into the engine's memtable (a skip list) then walk
        // nearby nodes, which are still in the CPU's cache.
        let mut writes: Vec<(&Vec<u8>, &Option<Vec<u8>>)> =
            keys.iter().filter(|(_, (_, written, _))| *written).map(|(k, (v, _, _))| (k, v)).collect();
        writes.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (k, v) in &writes {
            match v {
                Some(v) => self.engine.insert(k, v)?,
                None => self.engine.remove(k)?,
            }
        }
        let wrote = !writes.is_empty();
        drop(writes);
        Ok((wrote, keys))
    }

    fn write(&self, k: Cow<'_, [u8]>, v: Option<Vec<u8>>) {
        let mut keys = self.keys.borrow_mut();
        match keys.get_mut(k.as_ref()) {
            Some(seen) => {
                seen.0 = v;
                seen.1 = true;
            }
            None => {
                keys.insert(k.into_owned(), (v, true, false));
            }
        }
    }
}

impl KvTx for WriteSet<'_> {
    fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some((v, _, _)) = self.keys.borrow().get(k) {
            return Ok(v.clone());
        }
        let held = self.hot.as_ref().and_then(|hot| hot.borrow_mut().get(k));
        let v = match held {
            Some(v) => v,
            None => self.engine.get(k)?,
        };
        self.keys.borrow_mut().insert(k.to_vec(), (v.clone(), false, true));
        Ok(v)
    }
    fn insert(&self, k: &[u8], v: &[u8]) -> Result<(), StoreError> {
        self.write(Cow::Borrowed(k), Some(v.to_vec()));
        Ok(())
    }
    fn insert_owned(&self, k: Cow<'_, [u8]>, v: Vec<u8>) -> Result<(), StoreError> {
        self.write(k, Some(v));
        Ok(())
    }
    fn remove(&self, k: &[u8]) -> Result<(), StoreError> {
        self.write(Cow::Borrowed(k), None);
        Ok(())
    }
}

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

impl Kv {
    pub(super) fn new(engine: Box<dyn KvEngine>) -> Kv {
        let hot = Mutex::new(engine.exclusive().then(HotValues::default));
        Kv { engine, dirty: std::sync::atomic::AtomicBool::new(false), hot }
    }

    pub(super) fn open(dir: &Path, engine: Engine) -> Result<Kv, StoreError> {
        Ok(Kv::new(match engine {
            Engine::Sled => Box::new(SledEngine::open(dir)?),
            Engine::Redb => Box::new(RedbEngine::open(dir)?),
            Engine::Fjall => Box::new(FjallEngine::open(dir)?),
        }))
    }

    /// Whether a transaction committed since the last flush began.
    pub(super) fn dirty(&self) -> bool {
        self.dirty.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Runs `f` as one transaction and returns its result.
    pub(super) fn transaction<R>(&self, f: impl Fn(&Tx<'_>) -> Result<R, StoreError>) -> Result<R, StoreError> {
        let mut out = None;
        let mut wrote = false;
        let mut seen = KeyMap::default();
        let mut hot = self.hot.lock().unwrap_or_else(PoisonError::into_inner);
        let done = self.engine.transact(&mut |tx| {
            // A fresh buffer for every try (an engine may retry after a conflict).
            let buffered = WriteSet { engine: tx, hot: hot.as_mut().map(RefCell::new), keys: RefCell::default() };
            out = Some(f(&Tx(&buffered))?);
            (wrote, seen) = buffered.apply()?;
            Ok(())
        });
        match (done, hot.as_mut()) {
            (Ok(()), Some(hot)) => hot.learn(seen),
            (Ok(()), None) => {}
            (Err(e), hot) => {
                // Whatever the engine kept of a failed commit, nothing held may contradict it.
                if let Some(hot) = hot {
                    *hot = HotValues::default();
                }
                return Err(e);
            }
        }
        drop(hot);
        if wrote {
            // Read-only transactions leave nothing to flush.
            self.dirty.store(true, std::sync::atomic::Ordering::Release);
        }
        out.ok_or_else(|| StoreError::Engine("transaction produced no result".into()))
    }

    pub(super) fn flush(&self) -> Result<(), StoreError> {
        // Cleared first: a commit racing with this flush leaves the store dirty again.
        self.dirty.store(false, std::sync::atomic::Ordering::Release);
        self.engine.flush().inspect_err(|_| self.dirty.store(true, std::sync::atomic::Ordering::Release))
    }

    pub(super) fn get(&self, k: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, StoreError> {
        self.engine.get(k.as_ref())
    }

    pub(super) fn range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        self.engine.range(start, end, reverse, limit)
    }

    /// Every key starting with `prefix`, ascending.
    pub(super) fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<Entry>, StoreError> {
        let end = prefix_end(prefix);
        self.engine.range(prefix, end.as_deref(), false, usize::MAX)
    }

    pub(super) fn size_on_disk(&self) -> u64 {
        self.engine.size_on_disk()
    }
}

/// sled 0.34: one tree; optimistic transactions.
struct SledEngine {
    db: sled::Db,
    tree: sled::Tree,
}

impl SledEngine {
    fn open(dir: &Path) -> Result<SledEngine, StoreError> {
        // sled releases its file lock from its own IO threads, some time after the last handle
        // of a closed store is dropped (sled's own tests block on the lock for that reason): a
        // restart in the same process, or right after a shutdown, can find it still held. Wait
        // for it up to 5 s, then report it (another process holding the store, say).
        let mut attempts = 0;
        let db = loop {
            match sled::Config::new().path(Engine::Sled.path(dir)).open() {
                Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") && attempts < 250 => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other?,
            }
        };
        let tree = db.open_tree("tern")?;
        Ok(SledEngine { db, tree })
    }
}

struct SledTx<'a>(&'a TransactionalTree);

impl KvTx for SledTx<'_> {
    fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.0.get(k).map_err(StoreError::Conflict)?.map(|v| v.to_vec()))
    }
    fn insert(&self, k: &[u8], v: &[u8]) -> Result<(), StoreError> {
        self.0.insert(k, v).map(|_| ()).map_err(StoreError::Conflict)
    }
    fn remove(&self, k: &[u8]) -> Result<(), StoreError> {
        self.0.remove(k).map(|_| ()).map_err(StoreError::Conflict)
    }
}

impl KvEngine for SledEngine {
    fn transact(&self, f: &mut dyn FnMut(&dyn KvTx) -> Result<(), StoreError>) -> Result<(), StoreError> {
        // sled wants a Fn it may call again on conflict; the RefCell lends `f` to each try.
        let f = RefCell::new(f);
        self.tree
            .transaction(|t| {
                (f.borrow_mut())(&SledTx(t)).map_err(|e| match e {
                    StoreError::Conflict(c) => ConflictableTransactionError::from(c),
                    other => ConflictableTransactionError::Abort(other),
                })
            })
            .map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => StoreError::Sled(e),
            })
    }

    fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree.get(k)?.map(|v| v.to_vec()))
    }

    fn range(&self, start: &[u8], end: Option<&[u8]>, reverse: bool, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let iter = match end {
            Some(e) => self.tree.range(start..e),
            None => self.tree.range(start..),
        };
        let iter: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> =
            if reverse { Box::new(iter.rev()) } else { Box::new(iter) };
        let mut out = Vec::new();
        for item in iter.take(limit) {
            let (k, v) = item?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(StoreError::Sled)
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    fn exclusive(&self) -> bool {
        true
    }
}

/// redb 2: one table; a single writer at a time; commits made durable by the next flush.
struct RedbEngine {
    db: redb::Database,
    file: std::path::PathBuf,
}

impl RedbEngine {
    fn open(dir: &Path) -> Result<RedbEngine, StoreError> {
        let file = Engine::Redb.path(dir);
        let db = redb::Database::create(&file).map_err(redb_err)?;
        let w = db.begin_write().map_err(redb_err)?;
        w.open_table(TABLE).map_err(redb_err)?;
        w.commit().map_err(redb_err)?;
        Ok(RedbEngine { db, file })
    }
}

struct RedbTx<'a>(RefCell<redb::Table<'a, &'static [u8], &'static [u8]>>);

impl KvTx for RedbTx<'_> {
    fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.0.borrow().get(k).map_err(redb_err)?.map(|v| v.value().to_vec()))
    }
    fn insert(&self, k: &[u8], v: &[u8]) -> Result<(), StoreError> {
        self.0.borrow_mut().insert(k, v).map(|_| ()).map_err(redb_err)
    }
    fn remove(&self, k: &[u8]) -> Result<(), StoreError> {
        self.0.borrow_mut().remove(k).map(|_| ()).map_err(redb_err)
    }
}

impl KvEngine for RedbEngine {
    fn transact(&self, f: &mut dyn FnMut(&dyn KvTx) -> Result<(), StoreError>) -> Result<(), StoreError> {
        let mut w = self.db.begin_write().map_err(redb_err)?;
        // Durable only at the next flush, which group commit shares among callers.
        w.set_durability(redb::Durability::None);
        let result = {
            let table = w.open_table(TABLE).map_err(redb_err)?;
            f(&RedbTx(RefCell::new(table)))
        };
        match result {
            Ok(()) => w.commit().map_err(redb_err),
            Err(e) => {
                w.abort().map_err(redb_err)?;
                Err(e)
            }
        }
    }

    fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let r = self.db.begin_read().map_err(redb_err)?;
        let t = r.open_table(TABLE).map_err(redb_err)?;
        Ok(t.get(k).map_err(redb_err)?.map(|v| v.value().to_vec()))
    }

    fn range(&self, start: &[u8], end: Option<&[u8]>, reverse: bool, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let r = self.db.begin_read().map_err(redb_err)?;
        let t = r.open_table(TABLE).map_err(redb_err)?;
        let iter = match end {
            Some(e) => t.range::<&[u8]>(start..e),
            None => t.range::<&[u8]>(start..),
        }
        .map_err(redb_err)?;
        let iter: Box<dyn Iterator<Item = _>> = if reverse { Box::new(iter.rev()) } else { Box::new(iter) };
        let mut out = Vec::new();
        for item in iter.take(limit) {
            let (k, v) = item.map_err(redb_err)?;
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn flush(&self) -> Result<(), StoreError> {
        // An immediate-durability commit persists itself and every earlier non-durable one.
        self.db.begin_write().map_err(redb_err)?.commit().map_err(redb_err)
    }

    fn size_on_disk(&self) -> u64 {
        std::fs::metadata(&self.file).map_or(0, |m| m.len())
    }

    fn exclusive(&self) -> bool {
        true
    }
}

/// fjall 3: one keyspace. A transaction holds the engine's writer lock, reads the keyspace
/// directly (no other writer can run meanwhile) and hands its writes to one atomic write batch:
/// [`Kv::transaction`] already buffers a transaction's writes, so fjall's own transaction layer
/// (a second buffer, a skip list per transaction) would only add work. A commit appends to
/// fjall's journal (no fsync); [`KvEngine::flush`] fdatasyncs the journal, so a group of commits
/// costs one sequential write and one sync, and the sorted tables are written in the background.
struct FjallEngine {
    db: fjall::Database,
    keyspace: fjall::Keyspace,
    /// Serialises transactions: a transaction's reads see every earlier commit and no other
    /// writer runs between its reads and its batch.
    writer: Mutex<()>,
    /// Frees flushed memtables where no commit waits for it (see `reclaim.rs`).
    memtables: super::reclaim::Reclaimer,
}

/// The size at which fjall writes a memtable out (see [`FjallEngine::open`]).
const MEMTABLE_BYTES: u64 = 16 << 20;

/// Level-0 tables that start a compaction into level 1 (see [`FjallEngine::open`]).
const LEVEL0_TABLES_BEFORE_COMPACTION: u8 = 16;

/// The size of the tables compaction writes (see [`FjallEngine::open`]).
const TABLE_TARGET_BYTES: u64 = 16 << 20;

fn fjall_err(e: fjall::Error) -> StoreError {
    StoreError::Engine(e.to_string())
}

impl FjallEngine {
    fn open(dir: &Path) -> Result<FjallEngine, StoreError> {
        let db = fjall::Database::builder(Engine::Fjall.path(dir))
            // Durability comes from the group commit's explicit flush, never per commit.
            .manual_journal_persist(true)
            .open()
            .map_err(fjall_err)?;
        // 16 MiB memtables instead of fjall's 64: writing a memtable out as a sorted table
        // makes the next journal fdatasync wait for the device to take the whole table (on the
        // benchmark machine ~150 ms for 64 MiB, ~40 ms for 16), which was the tail of durable
        // send-to-acknowledgement latency (BENCHMARKS.md). fjall keeps a keyspace's setting:
        // stores created before keep theirs.
        //
        // Compaction into level 1 waits for 16 such tables instead of fjall's 4: with 16 MiB
        // memtables, 4 meant merging into level 1 four times as often as fjall's defaults do
        // (64 MiB × 4), and every merge rewrites the overlapping part of level 1 (all of it:
        // conversations and inboxes are spread over the key space). 16 × 16 MiB is fjall's own
        // cadence again. The cost is reads that look through more level-0 tables; writes halt
        // only at 30 (BENCHMARKS.md has both sides). Like the memtable size, the keyspace keeps it.
        //
        // Level 1's size is the table target size × that threshold. With fjall's 64 MiB tables
        // it grew to 1 GiB, and each compaction into it rewrote all of it. 16 MiB tables keep it
        // at 256 MiB, fjall's own default. Over a 60-s closed loop this halved fjall's
        // compaction CPU and raised throughput 11% (median of 7 alternated runs,
        // bench/history/durable-path.md, seventeenth session). There are more table files, but
        // open descriptors stay bounded by fjall's descriptor cache.
        let options = || {
            fjall::KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES).compaction_strategy(Arc::new(
                fjall::compaction::Leveled::default()
                    .with_l0_threshold(LEVEL0_TABLES_BEFORE_COMPACTION)
                    .with_table_target_size(TABLE_TARGET_BYTES),
            ))
        };
        let keyspace = db.keyspace("tern", options).map_err(fjall_err)?;
        let memtables = super::reclaim::Reclaimer::start().map_err(|e| StoreError::Engine(e.to_string()))?;
        Ok(FjallEngine { db, keyspace, writer: Mutex::new(()), memtables })
    }
}

/// A transaction on fjall: reads from the keyspace, writes into a batch committed at the end.
struct FjallTx<'a> {
    batch: RefCell<fjall::OwnedWriteBatch>,
    keyspace: &'a fjall::Keyspace,
}

impl KvTx for FjallTx<'_> {
    fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.keyspace.get(k).map_err(fjall_err)?.map(|v| v.to_vec()))
    }
    fn insert(&self, k: &[u8], v: &[u8]) -> Result<(), StoreError> {
        self.batch.borrow_mut().insert(self.keyspace, k, v);
        Ok(())
    }
    fn remove(&self, k: &[u8]) -> Result<(), StoreError> {
        self.batch.borrow_mut().remove(self.keyspace, k);
        Ok(())
    }
}

impl KvEngine for FjallEngine {
    fn transact(&self, f: &mut dyn FnMut(&dyn KvTx) -> Result<(), StoreError>) -> Result<(), StoreError> {
        // One writer at a time: the closure runs once, without conflicts. A panicking writer
        // committed nothing (its batch is dropped), so a poisoned lock guards nothing broken.
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let tx = FjallTx { batch: RefCell::new(self.db.batch()), keyspace: &self.keyspace };
        f(&tx)?;
        tx.batch.into_inner().commit().map_err(fjall_err)?;
        self.memtables.observe(fjall::AbstractTree::active_memtable(&self.keyspace.tree));
        Ok(())
    }

    fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.keyspace.get(k).map_err(fjall_err)?.map(|v| v.to_vec()))
    }

    fn range(&self, start: &[u8], end: Option<&[u8]>, reverse: bool, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let iter = match end {
            Some(e) => self.keyspace.range(start..e),
            None => self.keyspace.range(start..),
        };
        let iter: Box<dyn Iterator<Item = fjall::Guard>> = if reverse { Box::new(iter.rev()) } else { Box::new(iter) };
        let mut out = Vec::new();
        for guard in iter.take(limit) {
            let (k, v) = guard.into_inner().map_err(fjall_err)?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.persist(fjall::PersistMode::SyncData).map_err(fjall_err)
    }

    fn size_on_disk(&self) -> u64 {
        self.db.disk_space().unwrap_or(0)
    }

    fn exclusive(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::{prefix_end, Engine, HotValues, Kv, SledEngine, HOT_GENERATION};

    /// A new directory gets the default engine; an existing store keeps its engine; asking for
    /// another engine than the one holding the data is refused with a message naming both.
    #[test]
    #[allow(clippy::unwrap_used)]
    fn the_engine_follows_the_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Engine::resolve(dir.path(), None).unwrap(), Engine::Fjall);
        assert_eq!(Engine::resolve(dir.path(), Some(Engine::Redb)).unwrap(), Engine::Redb);
        drop(Kv::open(dir.path(), Engine::Sled).unwrap());
        assert_eq!(Engine::resolve(dir.path(), None).unwrap(), Engine::Sled);
        assert_eq!(Engine::resolve(dir.path(), Some(Engine::Sled)).unwrap(), Engine::Sled);
        let refused = Engine::resolve(dir.path(), Some(Engine::Fjall)).unwrap_err().to_string();
        assert!(refused.contains("holds a sled store, not fjall") && refused.contains("--store sled"), "{refused}");
        drop(Kv::open(dir.path(), Engine::Redb).unwrap());
        let ambiguous = Engine::resolve(dir.path(), None).unwrap_err().to_string();
        assert!(ambiguous.contains("sled and redb stores"), "{ambiguous}");
    }

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[0x61, 0xFF]), Some(vec![0x62]));
        assert_eq!(prefix_end(&[0xFF, 0xFF]), None);
    }

    /// A transaction reads its own writes and removals; one that fails leaves nothing behind;
    /// on every engine.
    #[test]
    #[allow(clippy::unwrap_used)]
    fn transactions_read_their_writes_and_abort_whole() {
        for engine in Engine::ALL {
            let dir = tempfile::tempdir().unwrap();
            let kv = Kv::open(dir.path(), engine).unwrap();
            kv.transaction(|tx| tx.insert(b"gone", b"x")).unwrap();
            let seen = kv
                .transaction(|tx| {
                    tx.insert(b"a", b"1")?;
                    tx.insert(b"a", b"2")?;
                    tx.remove(b"gone")?;
                    Ok((tx.get(b"a")?, tx.get(b"gone")?))
                })
                .unwrap();
            assert_eq!(seen, (Some(b"2".to_vec()), None), "{engine:?}");
            assert_eq!(kv.get(b"a").unwrap(), Some(b"2".to_vec()), "{engine:?}");
            assert_eq!(kv.get(b"gone").unwrap(), None, "{engine:?}");
            let failed = kv.transaction(|tx| {
                tx.insert(b"b", b"1")?;
                Err::<(), _>(super::StoreError::Corrupt("planted".into()))
            });
            assert!(failed.is_err());
            assert_eq!(kv.get(b"b").unwrap(), None, "{engine:?}");
        }
    }

    /// Values held in memory follow every commit: a key read absent, then written, then read
    /// again gives the written value; a failed transaction's writes are not held; on every
    /// engine.
    #[test]
    #[allow(clippy::unwrap_used)]
    fn held_values_follow_commits() {
        for engine in Engine::ALL {
            let dir = tempfile::tempdir().unwrap();
            let kv = Kv::open(dir.path(), engine).unwrap();
            assert_eq!(kv.transaction(|tx| tx.get(b"n")).unwrap(), None);
            kv.transaction(|tx| tx.insert(b"n", b"1")).unwrap();
            assert_eq!(kv.transaction(|tx| tx.get(b"n")).unwrap(), Some(b"1".to_vec()), "{engine:?}");
            let failed = kv.transaction(|tx| {
                tx.insert(b"n", b"2")?;
                tx.get(b"n")?;
                Err::<(), _>(super::StoreError::Corrupt("planted".into()))
            });
            assert!(failed.is_err());
            assert_eq!(kv.transaction(|tx| tx.get(b"n")).unwrap(), Some(b"1".to_vec()), "{engine:?}");
            kv.transaction(|tx| tx.remove(b"n")).unwrap();
            assert_eq!(kv.transaction(|tx| tx.get(b"n")).unwrap(), None, "{engine:?}");
            assert_eq!(kv.get(b"n").unwrap(), None, "{engine:?}");
        }
    }

    /// The held values are bounded: a key not used for two generations is dropped, one used in
    /// between is kept.
    #[test]
    fn held_values_are_bounded() {
        let mut hot = HotValues::default();
        hot.put(b"kept".to_vec(), Some(b"k".to_vec()));
        hot.put(b"dropped".to_vec(), None);
        for i in 0..HOT_GENERATION {
            hot.put(i.to_be_bytes().to_vec(), None);
        }
        // One generation later both are still held (in the older one); using one promotes it.
        assert_eq!(hot.get(b"kept"), Some(Some(b"k".to_vec())));
        for i in HOT_GENERATION..2 * HOT_GENERATION {
            hot.put(i.to_be_bytes().to_vec(), None);
        }
        assert_eq!(hot.get(b"kept"), Some(Some(b"k".to_vec())));
        assert_eq!(hot.get(b"dropped"), None);
        assert!(hot.young.len() + hot.old.len() <= 2 * HOT_GENERATION);
    }

    /// A store whose lock is released shortly after the open starts (as sled does from its IO
    /// threads after a close) opens once the lock is free, instead of failing at once.
    #[test]
    #[allow(clippy::unwrap_used)]
    fn sled_open_waits_for_a_lock_that_is_being_released() {
        let dir = tempfile::tempdir().unwrap();
        let first = SledEngine::open(dir.path()).unwrap();
        let release = std::thread::spawn(move || {
            // The holder lets go while the second open is already waiting for the lock.
            std::thread::sleep(std::time::Duration::from_millis(200));
            drop(first);
        });
        let second = SledEngine::open(dir.path());
        release.join().unwrap();
        assert!(second.is_ok(), "{:?}", second.err());
    }
}
