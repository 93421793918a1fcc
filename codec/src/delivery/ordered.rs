//! In-order, exactly-once release of numbered items.

use std::collections::BTreeMap;

/// What happened to an arriving item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Already released (or skipped): dropped; the receiver should re-acknowledge.
    Duplicate,
    /// Released, possibly together with buffered successors (see the `out` argument).
    Released,
    /// Held because earlier numbers are missing: `missing_from..=missing_to` [REQ-ORD-001].
    /// `first` is true the first time this gap is seen, so repair is asked for once.
    Buffered {
        /// First missing number.
        missing_from: u64,
        /// Last missing number.
        missing_to: u64,
        /// Whether this arrival opened the gap.
        first: bool,
    },
    /// Too far ahead of the next expected number: dropped.
    BeyondWindow,
}

/// Releases items numbered `1, 2, 3 ...` in order, each once.
///
/// Items that arrive early (up to `window` ahead) are held and released when the gap closes.
/// State: `next` (the lowest number not yet released) and the held items; everything below
/// `next` is a duplicate.
#[derive(Debug, Clone)]
pub struct OrderedReceiver<T> {
    next: u64,
    window: u64,
    held: BTreeMap<u64, T>,
}

impl<T> OrderedReceiver<T> {
    /// A receiver expecting `first` next, holding at most `window` numbers ahead of it.
    pub fn new(first: u64, window: u64) -> Self {
        OrderedReceiver { next: first, window: window.max(1), held: BTreeMap::new() }
    }

    /// The lowest number not yet released.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// The highest number released so far (0 when none).
    pub fn released(&self) -> u64 {
        self.next.saturating_sub(1)
    }

    /// How many items are held waiting for a gap to close.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Takes item `n`; released items are appended to `out` in order.
    pub fn receive(&mut self, n: u64, item: T, out: &mut Vec<(u64, T)>) -> Arrival {
        if n < self.next || self.held.contains_key(&n) {
            return Arrival::Duplicate;
        }
        if n >= self.next.saturating_add(self.window) {
            return Arrival::BeyondWindow;
        }
        if n > self.next {
            let first = self.held.range(..n).next().is_none();
            self.held.insert(n, item);
            return Arrival::Buffered { missing_from: self.next, missing_to: n - 1, first };
        }
        out.push((n, item));
        self.next += 1;
        self.drain(out);
        Arrival::Released
    }

    /// Treats every number below `n` as released without items (their outcome is known from
    /// elsewhere, e.g. a broker restored from its store); held items that become due are
    /// released into `out`.
    pub fn skip_to(&mut self, n: u64, out: &mut Vec<(u64, T)>) {
        if n <= self.next {
            return;
        }
        self.held = self.held.split_off(&n);
        self.next = n;
        self.drain(out);
    }

    fn drain(&mut self, out: &mut Vec<(u64, T)>) {
        while let Some(entry) = self.held.first_entry() {
            if *entry.key() != self.next {
                break;
            }
            out.push((self.next, entry.remove()));
            self.next += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_in_order_and_drops_duplicates() {
        let mut r = OrderedReceiver::new(1, 8);
        let mut out = vec![];
        assert_eq!(r.receive(2, 'b', &mut out), Arrival::Buffered { missing_from: 1, missing_to: 1, first: true });
        assert_eq!(r.receive(3, 'c', &mut out), Arrival::Buffered { missing_from: 1, missing_to: 2, first: false });
        assert!(out.is_empty());
        assert_eq!(r.receive(1, 'a', &mut out), Arrival::Released);
        assert_eq!(out, vec![(1, 'a'), (2, 'b'), (3, 'c')]);
        assert_eq!(r.receive(2, 'x', &mut out), Arrival::Duplicate);
        assert_eq!(r.receive(12, 'x', &mut out), Arrival::BeyondWindow);
        assert_eq!(r.released(), 3);
    }

    #[test]
    fn skip_releases_held_successors() {
        let mut r = OrderedReceiver::new(1, 8);
        let mut out = vec![];
        r.receive(4, 'd', &mut out);
        r.skip_to(4, &mut out);
        assert_eq!(out, vec![(4, 'd')]);
        assert_eq!(r.next(), 5);
    }
}
