//! Cases, their outcomes, and how a case says what went wrong.
//!
//! A case is a stable hierarchical id (`area.topic.detail@role`), the requirement IDs it
//! covers, and an async function. The function returns `Ok(())` when every check held, or a
//! [`Stop`] naming what did not: a violated requirement (its level decides FAIL, NON_STRICT or
//! INFORMATIONAL), a feature the implementation does not claim (UNSUPPORTED), a precondition
//! the run does not meet (SKIPPED), or a harness problem (ERROR).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::Serialize;

/// What a case concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Outcome {
    /// Every check held.
    Pass,
    /// A MUST or MUST NOT was violated.
    Fail,
    /// A SHOULD or SHOULD NOT was not followed.
    NonStrict,
    /// A MAY behaviour was not taken; recorded, never a failure.
    Informational,
    /// The implementation does not claim the feature the case needs.
    Unsupported,
    /// Not run: deselected, or a precondition of the run is missing.
    Skipped,
    /// The case did not finish within its (scaled) time budget.
    Timeout,
    /// The harness could not run the case (setup, provisioning, I/O to the runner itself).
    Error,
}

impl Outcome {
    /// The report name (`PASS`, `NON_STRICT`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Pass => "PASS",
            Outcome::Fail => "FAIL",
            Outcome::NonStrict => "NON_STRICT",
            Outcome::Informational => "INFORMATIONAL",
            Outcome::Unsupported => "UNSUPPORTED",
            Outcome::Skipped => "SKIPPED",
            Outcome::Timeout => "TIMEOUT",
            Outcome::Error => "ERROR",
        }
    }

    /// Whether this outcome makes the implementation non-conformant.
    pub fn is_failure(self) -> bool {
        matches!(self, Outcome::Fail | Outcome::Timeout)
    }
}

/// Why a case stopped before passing.
#[derive(Debug, Clone, PartialEq)]
pub enum Stop {
    /// The implementation broke `req`.
    Violation {
        /// The requirement ID.
        req: &'static str,
        /// What was seen.
        detail: String,
    },
    /// The implementation does not claim a feature the case needs.
    Unsupported(String),
    /// A precondition of this run is missing (for example a limit the runner was not told).
    Skipped(String),
    /// The harness failed (not the implementation's fault).
    Harness(String),
}

/// What a case function returns.
pub type CaseResult = Result<(), Stop>;

/// A violation of `req`, with a formatted detail.
#[macro_export]
macro_rules! violated {
    ($req:expr, $($fmt:tt)+) => {
        $crate::case::Stop::Violation { req: $req, detail: format!($($fmt)+) }
    };
}

/// Returns a violation of `req` unless `cond` holds.
#[macro_export]
macro_rules! check {
    ($cond:expr, $req:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($crate::violated!($req, $($fmt)+));
        }
    };
}

/// A boxed case future.
pub type CaseFuture<'a> = Pin<Box<dyn Future<Output = CaseResult> + Send + 'a>>;

/// Which side of the protocol a case tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The runner plays clients against a broker (`tern-conformance server`).
    Broker,
    /// The runner plays the broker against a client shim (`tern-conformance client`).
    Client,
}

/// An optional feature a case needs; without the claim the case is UNSUPPORTED (spec 14.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Feature {
    /// A TLS listener (`--tls`).
    Tls,
    /// Rooms (`room/{room}` broadcast).
    Rooms,
    /// Read fan-out for large groups (needs `--read-fanout-threshold`).
    ReadFanout,
    /// A retention policy (needs `--retention-max-count`).
    Retention,
    /// The E2EE key directory (spec 9.2).
    KeyDirectory,
    /// MQTT devices (spec chapter 15; needs `--mqtt`).
    Mqtt,
}

impl Feature {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Feature::Tls => "tls",
            Feature::Rooms => "rooms",
            Feature::ReadFanout => "read-fanout",
            Feature::Retention => "retention",
            Feature::KeyDirectory => "key-directory",
            Feature::Mqtt => "mqtt",
        }
    }
}

/// The static description of one case.
#[derive(Debug, Clone, Copy)]
pub struct CaseInfo {
    /// Stable id, e.g. `framing.oversize.1401-bytes@broker`.
    pub id: &'static str,
    /// Requirement IDs the case covers (the first is the one it is mainly about).
    pub reqs: &'static [&'static str],
    /// One line on what the case does.
    pub summary: &'static str,
    /// Time budget before `--timeout-scale`.
    pub timeout: Duration,
    /// A feature the implementation must claim, if any.
    pub feature: Option<Feature>,
}

impl CaseInfo {
    /// The role the case tests, from the id suffix.
    pub fn role(&self) -> Role {
        if self.id.ends_with("@client") {
            Role::Client
        } else {
            Role::Broker
        }
    }
}

/// Shell-style glob: `*` any run of characters, `?` one character.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match (p.split_first(), t.split_first()) {
            (None, None) => true,
            (Some((b'*', rest)), _) => go(rest, t) || t.split_first().is_some_and(|(_, tr)| go(p, tr)),
            (Some((b'?', rest)), Some((_, tr))) => go(rest, tr),
            (Some((a, rest)), Some((b, tr))) if a == b => go(rest, tr),
            _ => false,
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

/// Whether a case id passes `--test` (any pattern, or none given) and `--skip` (no pattern).
pub fn selected(id: &str, tests: &[String], skips: &[String]) -> bool {
    (tests.is_empty() || tests.iter().any(|p| glob_match(p, id))) && !skips.iter().any(|p| glob_match(p, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_select_and_skip() {
        assert!(glob_match("framing.*", "framing.oversize.1401-bytes@broker"));
        assert!(glob_match("*@client", "keepalive.ping@client"));
        assert!(!glob_match("*@client", "keepalive.ping@broker"));
        assert!(glob_match("a?c", "abc"));
        assert!(selected("x.y@broker", &[], &[]));
        assert!(!selected("x.y@broker", &[], &["x.*".into()]));
        assert!(!selected("x.y@broker", &["z.*".into()], &[]));
    }
}
