//! The package reorder buffer: members are released only as a whole package, in index order,
//! or the package times out [REQ-PKG-003] [REQ-PKG-004].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::error::ProtocolViolation;
use crate::ids::PackageId;
use crate::proto::PackageRef;
use crate::reason::ReasonCode;

#[derive(Debug)]
struct Open<T> {
    members: Vec<Option<T>>,
    received: usize,
    deadline: Instant,
}

/// Outcome of adding a member.
#[derive(Debug, PartialEq)]
pub enum PackageInsert<T> {
    /// Held; the package is not yet whole.
    Pending,
    /// The package is whole: every member, in index order.
    Complete(Vec<T>),
    /// The package already timed out; the member is refused with PACKAGE_TIMEOUT.
    Expired,
}

/// Holds the members of open packages from one sender.
#[derive(Debug)]
pub struct PackageBuffer<T> {
    open: BTreeMap<u64, Open<T>>,
    highest_opened: u64,
    timeout: Duration,
}

fn invalid(detail: &str) -> ProtocolViolation {
    ProtocolViolation::new("REQ-PKG-007", ReasonCode::PackageInvalid, detail)
}

impl<T> PackageBuffer<T> {
    /// A buffer whose packages time out `timeout` after their first member arrives.
    pub fn new(timeout: Duration) -> Self {
        PackageBuffer { open: BTreeMap::new(), highest_opened: 0, timeout }
    }

    /// Number of open packages.
    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    /// Adds a member. Package ids must increase per sender [REQ-PKG-005]; a member of a lower,
    /// no longer open id belongs to a package that already timed out.
    pub fn insert(&mut self, now: Instant, pkg: &PackageRef, item: T) -> Result<PackageInsert<T>, ProtocolViolation> {
        let count = pkg.count as usize;
        let index = pkg.index as usize;
        if !self.open.contains_key(&pkg.package_id) {
            if pkg.package_id <= self.highest_opened {
                return Ok(PackageInsert::Expired);
            }
            self.highest_opened = pkg.package_id;
            let members = std::iter::repeat_with(|| None).take(count).collect();
            self.open.insert(pkg.package_id, Open { members, received: 0, deadline: now + self.timeout });
        }
        let Some(open) = self.open.get_mut(&pkg.package_id) else {
            return Err(invalid("package vanished"));
        };
        if open.members.len() != count {
            return Err(invalid("members disagree on count"));
        }
        let Some(slot) = open.members.get_mut(index) else {
            return Err(invalid("index out of range"));
        };
        if slot.is_some() {
            return Err(invalid("two members with the same index"));
        }
        *slot = Some(item);
        open.received += 1;
        if open.received < count {
            return Ok(PackageInsert::Pending);
        }
        let Some(done) = self.open.remove(&pkg.package_id) else {
            return Err(invalid("package vanished"));
        };
        Ok(PackageInsert::Complete(done.members.into_iter().flatten().collect()))
    }

    /// Earliest package deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.open.values().map(|o| o.deadline).min()
    }

    /// Removes every package whose deadline has passed, with the members it had.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<(PackageId, Vec<T>)> {
        let expired: Vec<u64> = self.open.iter().filter(|(_, o)| o.deadline <= now).map(|(&id, _)| id).collect();
        expired
            .into_iter()
            .filter_map(|id| self.open.remove(&id).map(|o| (PackageId(id), o.members.into_iter().flatten().collect())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(id: u64, index: u32, count: u32) -> PackageRef {
        PackageRef { package_id: id, index, count }
    }

    #[test]
    fn releases_whole_in_index_order() {
        let t0 = Instant::now();
        let mut b = PackageBuffer::new(Duration::from_secs(30));
        assert_eq!(b.insert(t0, &pkg(1, 2, 3), 'c'), Ok(PackageInsert::Pending));
        assert_eq!(b.insert(t0, &pkg(1, 0, 3), 'a'), Ok(PackageInsert::Pending));
        assert_eq!(b.insert(t0, &pkg(1, 1, 3), 'b'), Ok(PackageInsert::Complete(vec!['a', 'b', 'c'])));
        assert_eq!(b.open_count(), 0);
    }

    #[test]
    fn times_out_and_refuses_late_members() {
        let t0 = Instant::now();
        let mut b = PackageBuffer::new(Duration::from_secs(30));
        b.insert(t0, &pkg(4, 0, 2), 'a').unwrap();
        assert_eq!(b.poll_timeout(), Some(t0 + Duration::from_secs(30)));
        assert!(b.handle_timeout(t0 + Duration::from_secs(29)).is_empty());
        assert_eq!(b.handle_timeout(t0 + Duration::from_secs(30)), vec![(PackageId(4), vec!['a'])]);
        assert_eq!(b.insert(t0, &pkg(4, 1, 2), 'b'), Ok(PackageInsert::Expired));
    }

    #[test]
    fn inconsistent_members_are_violations() {
        let t0 = Instant::now();
        let mut b = PackageBuffer::new(Duration::from_secs(30));
        b.insert(t0, &pkg(1, 0, 3), 'a').unwrap();
        assert!(b.insert(t0, &pkg(1, 0, 3), 'x').is_err());
        assert!(b.insert(t0, &pkg(1, 1, 2), 'x').is_err());
    }
}
