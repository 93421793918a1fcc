//! Group membership in memory: routing a message to a group needs its members (the inboxes of a
//! write fan-out group, the online members to NOTIFY in a read fan-out group), and reading
//! 100,000 member keys from the store for every message capped a large group at a few sends
//! per second (BENCHMARKS.md, "group-read"). The set is read from the store once and kept until
//! the group's membership changes.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::store::{Store, StoreError};

/// A group's members.
pub(crate) type MemberSet = Arc<HashSet<String>>;

/// Cached member sets by conversation.
#[derive(Debug, Default)]
pub(crate) struct MemberCache {
    sets: Mutex<HashMap<u64, MemberSet>>,
    /// Bumped on every membership change: a set read from the store while a change was being
    /// made is not cached, so a stale set never outlives the change.
    epoch: AtomicU64,
}

impl MemberCache {
    /// The members of conversation `conv`.
    pub(crate) fn get(&self, store: &Store, conv: u64) -> Result<MemberSet, StoreError> {
        if let Some(set) = self.sets.lock().unwrap_or_else(PoisonError::into_inner).get(&conv) {
            return Ok(set.clone());
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let set: MemberSet = Arc::new(store.members(conv)?.into_iter().collect());
        let mut sets = self.sets.lock().unwrap_or_else(PoisonError::into_inner);
        if self.epoch.load(Ordering::Acquire) == epoch {
            sets.insert(conv, set.clone());
        }
        Ok(set)
    }

    /// Call after the store committed a membership change of `conv`.
    pub(crate) fn changed(&self, conv: u64) {
        let mut sets = self.sets.lock().unwrap_or_else(PoisonError::into_inner);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        sets.remove(&conv);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::MemberCache;

    #[test]
    fn a_change_replaces_the_cached_set() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let conv = store.create_group("g", "alice", &["bob".into()]).unwrap().unwrap();
        let cache = MemberCache::default();
        assert_eq!(cache.get(&store, conv).unwrap().len(), 2);
        store.change_members("g", None, &["carol".into()], true).unwrap().unwrap();
        assert_eq!(cache.get(&store, conv).unwrap().len(), 2, "cached until told");
        cache.changed(conv);
        let now = cache.get(&store, conv).unwrap();
        assert!(now.contains("carol") && now.len() == 3);
    }
}
