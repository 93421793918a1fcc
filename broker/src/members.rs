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

/// How many member names the cache holds at most, over all groups (about 50 MB of names): a
/// set that would go over the bound evicts others first.
const MAX_CACHED_MEMBERS: usize = 1_000_000;

/// Cached member sets by conversation.
#[derive(Debug)]
pub(crate) struct MemberCache {
    sets: Mutex<HashMap<u64, MemberSet>>,
    /// Bumped on every membership change: a set read from the store while a change was being
    /// made is not cached, so a stale set never outlives the change.
    epoch: AtomicU64,
    max_members: usize,
}

impl Default for MemberCache {
    fn default() -> Self {
        MemberCache::with_bound(MAX_CACHED_MEMBERS)
    }
}

impl MemberCache {
    /// A cache of at most `max_members` names.
    pub(crate) fn with_bound(max_members: usize) -> Self {
        MemberCache { sets: Mutex::default(), epoch: AtomicU64::new(0), max_members }
    }

    /// The members of conversation `conv`.
    pub(crate) fn get(&self, store: &Store, conv: u64) -> Result<MemberSet, StoreError> {
        if let Some(set) = self.sets.lock().unwrap_or_else(PoisonError::into_inner).get(&conv) {
            return Ok(set.clone());
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let set: MemberSet = Arc::new(store.members(conv)?.into_iter().collect());
        let mut sets = self.sets.lock().unwrap_or_else(PoisonError::into_inner);
        if self.epoch.load(Ordering::Acquire) == epoch && set.len() <= self.max_members {
            let mut cached: usize = sets.values().map(|s| s.len()).sum();
            while cached + set.len() > self.max_members {
                let Some(&victim) = sets.keys().next() else { break };
                cached -= sets.remove(&victim).map_or(0, |s| s.len());
            }
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

    #[test]
    fn the_cache_stays_within_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let a = store.create_group("a", "alice", &["bob".into()]).unwrap().unwrap();
        let b = store.create_group("b", "carol", &["dave".into()]).unwrap().unwrap();
        let big = store.create_group("big", "erin", &["f".into(), "g".into(), "h".into()]).unwrap().unwrap();
        let cache = MemberCache::with_bound(3);
        cache.get(&store, a).unwrap();
        cache.get(&store, b).unwrap();
        let cached = |c: &MemberCache| c.sets.lock().unwrap().values().map(|s| s.len()).sum::<usize>();
        assert_eq!(cached(&cache), 2, "b would exceed the bound: a made room for it");
        assert_eq!(cache.get(&store, big).unwrap().len(), 4, "a set above the bound is served");
        assert!(cached(&cache) <= 3 && !cache.sets.lock().unwrap().contains_key(&big), "but not kept");
    }
}
