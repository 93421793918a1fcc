//! Unacknowledged items and their retransmission deadlines.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::limits::{INITIAL_RTO, MAX_RTO};

/// Retransmission timeout policy: `initial * 2^attempt`, capped [REQ-QOS-008].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rto {
    /// First timeout.
    pub initial: Duration,
    /// Ceiling.
    pub max: Duration,
}

impl Default for Rto {
    fn default() -> Self {
        Rto { initial: INITIAL_RTO, max: MAX_RTO }
    }
}

impl Rto {
    fn after(&self, attempts: u32) -> Duration {
        self.initial.saturating_mul(1u32 << attempts.min(16)).min(self.max)
    }
}

#[derive(Debug, Clone)]
struct InFlight<T> {
    key: u64,
    item: T,
    deadline: Instant,
    attempts: u32,
}

/// Items sent and not yet acknowledged, in ascending key order.
///
/// The queue is bounded by the receive window (at most 1024), so the linear scans below cost
/// at most one window per call; the cross-session scheduling that must be O(1) is the
/// [`crate::timer::TimerWheel`] a driver keeps over all sessions' `poll_timeout`s.
#[derive(Debug, Clone)]
pub struct RetransmitQueue<T> {
    items: VecDeque<InFlight<T>>,
    rto: Rto,
}

impl<T: Clone> RetransmitQueue<T> {
    /// An empty queue.
    pub fn new(rto: Rto) -> Self {
        RetransmitQueue { items: VecDeque::new(), rto }
    }

    /// Number of unacknowledged items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is outstanding.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Lowest outstanding key.
    pub fn lowest(&self) -> Option<u64> {
        self.items.front().map(|i| i.key)
    }

    /// Whether `key` is outstanding.
    pub fn contains(&self, key: u64) -> bool {
        self.position(key).is_some()
    }

    fn position(&self, key: u64) -> Option<usize> {
        self.items.binary_search_by_key(&key, |i| i.key).ok()
    }

    /// Records `item` as sent at `now`. Keys must be pushed in ascending order; a key already
    /// present is replaced.
    pub fn push(&mut self, now: Instant, key: u64, item: T) {
        let entry = InFlight { key, item, deadline: now + self.rto.after(0), attempts: 0 };
        match self.items.binary_search_by_key(&key, |i| i.key) {
            Ok(i) => {
                if let Some(slot) = self.items.get_mut(i) {
                    *slot = entry;
                }
            }
            Err(i) => self.items.insert(i, entry),
        }
    }

    /// Removes one key; returns its item.
    pub fn ack(&mut self, key: u64) -> Option<T> {
        let i = self.position(key)?;
        self.items.remove(i).map(|e| e.item)
    }

    /// Removes every key `<= key` (a cumulative acknowledgement); returns how many.
    pub fn ack_through(&mut self, key: u64) -> usize {
        let before = self.items.len();
        while self.items.front().is_some_and(|i| i.key <= key) {
            self.items.pop_front();
        }
        before - self.items.len()
    }

    /// Earliest deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.items.iter().map(|i| i.deadline).min()
    }

    /// Items whose deadline has passed, in key order; their deadlines back off.
    pub fn due(&mut self, now: Instant) -> Vec<T> {
        let rto = self.rto;
        let mut due = Vec::new();
        for entry in self.items.iter_mut().filter(|i| i.deadline <= now) {
            entry.attempts = entry.attempts.saturating_add(1);
            entry.deadline = now + rto.after(entry.attempts);
            due.push(entry.item.clone());
        }
        due
    }

    /// Every outstanding item, in key order, with fresh deadlines (a resumed link).
    pub fn all(&mut self, now: Instant) -> Vec<T> {
        let first = now + self.rto.after(0);
        self.items
            .iter_mut()
            .map(|entry| {
                entry.deadline = first;
                entry.item.clone()
            })
            .collect()
    }

    /// Removes and returns every outstanding item, in key order.
    pub fn take_all(&mut self) -> Vec<T> {
        self.items.drain(..).map(|e| e.item).collect()
    }

    /// Outstanding items for in-place changes, in key order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&mut u64, &mut T)> {
        self.items.iter_mut().map(|i| (&mut i.key, &mut i.item))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off_and_acks() {
        let t0 = Instant::now();
        let rto = Rto { initial: Duration::from_secs(1), max: Duration::from_secs(3) };
        let mut q = RetransmitQueue::new(rto);
        q.push(t0, 1, "a");
        q.push(t0, 2, "b");
        assert!(q.due(t0).is_empty());
        assert_eq!(q.due(t0 + Duration::from_secs(1)), vec!["a", "b"]);
        assert_eq!(q.next_deadline(), Some(t0 + Duration::from_secs(3)));
        assert_eq!(q.due(t0 + Duration::from_secs(3)).len(), 2);
        assert_eq!(q.next_deadline(), Some(t0 + Duration::from_secs(6)), "capped at max");
        assert_eq!(q.ack(1), Some("a"));
        assert_eq!(q.ack_through(5), 1);
        assert!(q.is_empty());
    }
}
