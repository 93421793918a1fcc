//! A hashed timing wheel: O(1) insert and cancel, O(1) amortised per expiry. The broker keeps
//! one over all sessions' `poll_timeout` deadlines (millions of them), as the seed articles
//! recommend over a heap.
//!
//! Time is cut into ticks of `tick` length; slot `i` holds the timers due in ticks congruent to
//! `i` modulo the wheel size, each with the number of whole turns still to wait. Timers fire at
//! the end of their tick, never early.

use std::time::{Duration, Instant};

/// Handle of a scheduled timer, for cancelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerId {
    index: usize,
    generation: u64,
}

#[derive(Debug)]
struct Entry<K> {
    key: K,
    tick: u64,
    generation: u64,
    slot: usize,
    slot_pos: usize,
}

/// A timing wheel of keys `K`.
#[derive(Debug)]
pub struct TimerWheel<K> {
    origin: Instant,
    tick: Duration,
    current: u64,
    slots: Vec<Vec<usize>>,
    entries: Vec<Option<Entry<K>>>,
    free: Vec<usize>,
    generation: u64,
    len: usize,
}

impl<K> TimerWheel<K> {
    /// A wheel starting at `origin` with `slots` slots of `tick` each.
    pub fn new(origin: Instant, tick: Duration, slots: usize) -> Self {
        TimerWheel {
            origin,
            tick: tick.max(Duration::from_millis(1)),
            current: 0,
            slots: (0..slots.max(1)).map(|_| Vec::new()).collect(),
            entries: Vec::new(),
            free: Vec::new(),
            generation: 0,
            len: 0,
        }
    }

    /// Number of scheduled timers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no timer is scheduled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn tick_of(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.origin);
        // Round up so a timer never fires before its deadline.
        let ticks = since.as_nanos().div_ceil(self.tick.as_nanos());
        u64::try_from(ticks).unwrap_or(u64::MAX)
    }

    /// Schedules `key` at `deadline` (a past deadline fires on the next advance).
    pub fn insert(&mut self, deadline: Instant, key: K) -> TimerId {
        let tick = self.tick_of(deadline).max(self.current);
        let slot = usize::try_from(tick % self.slots.len() as u64).unwrap_or(0);
        self.generation += 1;
        let generation = self.generation;
        let index = self.free.pop().unwrap_or(self.entries.len());
        let slot_pos = self.slots.get(slot).map_or(0, Vec::len);
        let entry = Some(Entry { key, tick, generation, slot, slot_pos });
        if index == self.entries.len() {
            self.entries.push(entry);
        } else if let Some(e) = self.entries.get_mut(index) {
            *e = entry;
        }
        if let Some(s) = self.slots.get_mut(slot) {
            s.push(index);
        }
        self.len += 1;
        TimerId { index, generation }
    }

    /// Cancels a timer; returns its key if it was still scheduled.
    pub fn cancel(&mut self, id: TimerId) -> Option<K> {
        let live = self.entries.get(id.index)?.as_ref()?.generation == id.generation;
        if !live {
            return None;
        }
        self.remove(id.index)
    }

    fn remove(&mut self, index: usize) -> Option<K> {
        let entry = self.entries.get_mut(index)?.take()?;
        if let Some(slot) = self.slots.get_mut(entry.slot) {
            slot.swap_remove(entry.slot_pos);
            // The entry swapped into the hole needs its new position.
            if let Some(&moved) = slot.get(entry.slot_pos) {
                if let Some(Some(m)) = self.entries.get_mut(moved) {
                    m.slot_pos = entry.slot_pos;
                }
            }
        }
        self.free.push(index);
        self.len -= 1;
        Some(entry.key)
    }

    /// Fires every timer due at or before `now`, appending keys to `out` in tick order. A timer
    /// fires at the first advance at or after the end of its tick.
    pub fn advance(&mut self, now: Instant, out: &mut Vec<K>) {
        let elapsed = now.saturating_duration_since(self.origin).as_nanos() / self.tick.as_nanos();
        let reached = u64::try_from(elapsed).unwrap_or(u64::MAX);
        if reached < self.current {
            return;
        }
        let size = self.slots.len() as u64;
        // A jump longer than one turn visits each slot once instead of each tick.
        let ticks: Vec<u64> =
            if reached - self.current >= size { (0..size).collect() } else { (self.current..=reached).collect() };
        let mut fired: Vec<(u64, usize)> = Vec::new();
        for t in ticks {
            let slot = usize::try_from(t % size).unwrap_or(0);
            if let Some(s) = self.slots.get(slot) {
                fired.extend(s.iter().filter_map(|&i| {
                    let e = self.entries.get(i)?.as_ref()?;
                    (e.tick <= reached).then_some((e.tick, i))
                }));
            }
        }
        fired.sort_unstable();
        for (_, index) in fired {
            if let Some(key) = self.remove(index) {
                out.push(key);
            }
        }
        self.current = reached;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The wheel agrees with a naive list: every timer fires exactly once, never before
        /// its deadline, and by the first advance a tick after it; cancelled ones never fire.
        #[test]
        fn agrees_with_naive_model(
            ops in proptest::collection::vec((0u64..5_000, any::<bool>()), 1..200),
            steps in proptest::collection::vec(1u64..700, 1..40),
        ) {
            let t0 = Instant::now();
            let tick = Duration::from_millis(10);
            let mut wheel = TimerWheel::new(t0, tick, 64);
            let mut live = Vec::new();
            for (n, (at, cancel)) in ops.iter().enumerate() {
                let id = wheel.insert(t0 + Duration::from_millis(*at), n);
                if *cancel { prop_assert_eq!(wheel.cancel(id), Some(n)); } else { live.push((*at, n)); }
            }
            let mut now_ms = 0;
            let mut fired = Vec::new();
            for step in steps.iter().chain(std::iter::once(&6_000)) {
                now_ms += step;
                let mut out = Vec::new();
                wheel.advance(t0 + Duration::from_millis(now_ms), &mut out);
                for key in out {
                    let (at, _) = live.iter().copied().find(|&(_, k)| k == key).ok_or_else(|| TestCaseError::fail("cancelled timer fired"))?;
                    prop_assert!(at <= now_ms, "fired early");
                    fired.push(key);
                }
                for &(at, key) in &live {
                    if at.div_ceil(10) * 10 <= now_ms {
                        prop_assert!(fired.contains(&key), "timer at {} not fired by {}", at, now_ms);
                    }
                }
            }
            prop_assert_eq!(fired.len(), live.len());
            prop_assert!(wheel.is_empty());
        }
    }
}
