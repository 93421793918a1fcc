//! Requirement coverage: which requirements marked `testable = "wire"` in
//! `spec/requirements.toml` are covered by at least one case.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::requirements::Requirement;

/// Wire-testable requirements whose feature no implementation in this repository provides
/// yet, so no case can be checked against anything: each names the work that brings it.
/// The coverage test fails if one of these gains a case (remove it from here then).
pub const PENDING: &[(&str, &str)] = &[];

/// The coverage figures of a case list.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Coverage {
    /// Active wire-testable requirements.
    pub wire_total: usize,
    /// Of those, covered by at least one case.
    pub wire_covered: usize,
    /// Neither covered nor pending: a gap.
    pub uncovered: Vec<String>,
    /// Pending (feature not built yet), with why.
    pub pending: Vec<(String, String)>,
    /// Cited by a case but not in the index (a typo or a retired ID).
    pub unknown_citations: Vec<String>,
}

impl Coverage {
    /// Coverage of `cited` (every requirement ID any case declares) against `index`.
    pub fn compute<'a>(index: &[Requirement], cited: impl IntoIterator<Item = &'a str>) -> Coverage {
        let cited: BTreeSet<&str> = cited.into_iter().collect();
        let known: BTreeSet<&str> = index.iter().map(|r| r.id.as_str()).collect();
        let wire: Vec<&Requirement> = index.iter().filter(|r| r.testable == "wire" && r.status == "active").collect();
        let pending_ids: BTreeSet<&str> = PENDING.iter().map(|(id, _)| *id).collect();
        Coverage {
            wire_total: wire.len(),
            wire_covered: wire.iter().filter(|r| cited.contains(r.id.as_str())).count(),
            uncovered: wire
                .iter()
                .filter(|r| !cited.contains(r.id.as_str()) && !pending_ids.contains(r.id.as_str()))
                .map(|r| r.id.clone())
                .collect(),
            pending: PENDING
                .iter()
                .filter(|(id, _)| !cited.contains(id))
                .map(|(id, why)| (id.to_string(), why.to_string()))
                .collect(),
            unknown_citations: cited.iter().filter(|id| !known.contains(*id)).map(|s| s.to_string()).collect(),
        }
    }

    /// Covered share of the wire-testable requirements, in percent.
    pub fn percent(&self) -> f64 {
        if self.wire_total == 0 {
            return 100.0;
        }
        self.wire_covered as f64 * 100.0 / self.wire_total as f64
    }
}
