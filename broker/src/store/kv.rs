//! The two embedded key-value engines behind [`super::Store`]: sled and redb. Both give
//! ordered byte keys, serialisable transactions and an explicit durability point; the store's
//! logic is written once against this module.

use std::cell::RefCell;
use std::path::Path;

use redb::{ReadableTable, TableDefinition};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use super::StoreError;

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tern");

/// A key and its value.
pub(super) type Entry = (Vec<u8>, Vec<u8>);

/// Which engine a store uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Engine {
    /// sled 0.34 (the design card's choice).
    #[default]
    Sled,
    /// redb 2.
    Redb,
}

impl std::str::FromStr for Engine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sled" => Ok(Engine::Sled),
            "redb" => Ok(Engine::Redb),
            other => Err(format!("unknown store engine {other:?} (sled or redb)")),
        }
    }
}

pub(super) enum Kv {
    Sled { db: sled::Db, tree: sled::Tree },
    Redb(redb::Database),
}

impl std::fmt::Debug for Kv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kv::Sled { .. } => "Kv::Sled",
            Kv::Redb(_) => "Kv::Redb",
        })
    }
}

fn redb_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Engine(e.to_string())
}

/// A transaction's view: reads see the transaction's own writes.
pub(crate) enum Tx<'a> {
    Sled(&'a TransactionalTree),
    Redb(RefCell<redb::Table<'a, &'static [u8], &'static [u8]>>),
}

impl Tx<'_> {
    pub(super) fn get(&self, k: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Tx::Sled(t) => Ok(t.get(k.as_ref()).map_err(StoreError::Conflict)?.map(|v| v.to_vec())),
            Tx::Redb(t) => Ok(t.borrow().get(k.as_ref()).map_err(redb_err)?.map(|v| v.value().to_vec())),
        }
    }

    pub(super) fn insert(&self, k: impl AsRef<[u8]>, v: impl AsRef<[u8]>) -> Result<(), StoreError> {
        match self {
            Tx::Sled(t) => t.insert(k.as_ref(), v.as_ref()).map(|_| ()).map_err(StoreError::Conflict),
            Tx::Redb(t) => t.borrow_mut().insert(k.as_ref(), v.as_ref()).map(|_| ()).map_err(redb_err),
        }
    }

    pub(super) fn remove(&self, k: impl AsRef<[u8]>) -> Result<(), StoreError> {
        match self {
            Tx::Sled(t) => t.remove(k.as_ref()).map(|_| ()).map_err(StoreError::Conflict),
            Tx::Redb(t) => t.borrow_mut().remove(k.as_ref()).map(|_| ()).map_err(redb_err),
        }
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
    pub(super) fn open(dir: &Path, engine: Engine) -> Result<Kv, StoreError> {
        match engine {
            Engine::Sled => {
                let db = sled::Config::new().path(dir.join("sled")).open()?;
                let tree = db.open_tree("tern")?;
                Ok(Kv::Sled { db, tree })
            }
            Engine::Redb => {
                let db = redb::Database::create(dir.join("tern.redb")).map_err(redb_err)?;
                let w = db.begin_write().map_err(redb_err)?;
                w.open_table(TABLE).map_err(redb_err)?;
                w.commit().map_err(redb_err)?;
                Ok(Kv::Redb(db))
            }
        }
    }

    /// Runs `f` as one serialisable transaction (sled may run it more than once on conflict).
    /// Commits are not yet durable: see [`Kv::flush`].
    pub(super) fn transaction<R>(&self, f: impl Fn(&Tx<'_>) -> Result<R, StoreError>) -> Result<R, StoreError> {
        match self {
            Kv::Sled { tree, .. } => tree
                .transaction(|t| {
                    f(&Tx::Sled(t)).map_err(|e| match e {
                        StoreError::Conflict(c) => ConflictableTransactionError::from(c),
                        other => ConflictableTransactionError::Abort(other),
                    })
                })
                .map_err(|e| match e {
                    TransactionError::Abort(e) => e,
                    TransactionError::Storage(e) => StoreError::Sled(e),
                }),
            Kv::Redb(db) => {
                let mut w = db.begin_write().map_err(redb_err)?;
                // Durable only at the next flush, which group commit shares among callers.
                w.set_durability(redb::Durability::None);
                let result = {
                    let table = w.open_table(TABLE).map_err(redb_err)?;
                    f(&Tx::Redb(RefCell::new(table)))
                };
                match result {
                    Ok(r) => {
                        w.commit().map_err(redb_err)?;
                        Ok(r)
                    }
                    Err(e) => {
                        w.abort().map_err(redb_err)?;
                        Err(e)
                    }
                }
            }
        }
    }

    /// Makes every commit so far durable (fsync).
    pub(super) fn flush(&self) -> Result<(), StoreError> {
        match self {
            Kv::Sled { db, .. } => db.flush().map(|_| ()).map_err(StoreError::Sled),
            Kv::Redb(db) => {
                let w = db.begin_write().map_err(redb_err)?;
                // An immediate commit persists it and every earlier non-durable commit.
                w.commit().map_err(redb_err)
            }
        }
    }

    pub(super) fn get(&self, k: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Kv::Sled { tree, .. } => Ok(tree.get(k.as_ref())?.map(|v| v.to_vec())),
            Kv::Redb(db) => {
                let r = db.begin_read().map_err(redb_err)?;
                let t = r.open_table(TABLE).map_err(redb_err)?;
                Ok(t.get(k.as_ref()).map_err(redb_err)?.map(|v| v.value().to_vec()))
            }
        }
    }

    /// Keys in `[start, end)` (to the end of the keyspace when `end` is `None`), ascending or
    /// descending, at most `limit`.
    pub(super) fn range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::new();
        match self {
            Kv::Sled { tree, .. } => {
                let iter = match end {
                    Some(e) => tree.range(start..e),
                    None => tree.range(start..),
                };
                let iter: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> =
                    if reverse { Box::new(iter.rev()) } else { Box::new(iter) };
                for item in iter.take(limit) {
                    let (k, v) = item?;
                    out.push((k.to_vec(), v.to_vec()));
                }
            }
            Kv::Redb(db) => {
                let r = db.begin_read().map_err(redb_err)?;
                let t = r.open_table(TABLE).map_err(redb_err)?;
                let iter = match end {
                    Some(e) => t.range::<&[u8]>(start..e),
                    None => t.range::<&[u8]>(start..),
                }
                .map_err(redb_err)?;
                let iter: Box<dyn Iterator<Item = _>> = if reverse { Box::new(iter.rev()) } else { Box::new(iter) };
                for item in iter.take(limit) {
                    let (k, v) = item.map_err(redb_err)?;
                    out.push((k.value().to_vec(), v.value().to_vec()));
                }
            }
        }
        Ok(out)
    }

    /// Every key starting with `prefix`, ascending.
    pub(super) fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<Entry>, StoreError> {
        let end = prefix_end(prefix);
        self.range(prefix, end.as_deref(), false, usize::MAX)
    }

    /// Approximate size on disk.
    pub(super) fn size_on_disk(&self, dir: &Path) -> u64 {
        match self {
            Kv::Sled { db, .. } => db.size_on_disk().unwrap_or(0),
            Kv::Redb(_) => std::fs::metadata(dir.join("tern.redb")).map_or(0, |m| m.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[0x61, 0xFF]), Some(vec![0x62]));
        assert_eq!(prefix_end(&[0xFF, 0xFF]), None);
    }
}
