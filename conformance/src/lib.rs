//! `tern-conformance`: the conformance suite of the Tern protocol, which third parties run
//! against their own brokers and clients, and the requirement index it is built on.
//!
//! # Layout
//! - [`requirements`]: loads `spec/requirements.toml` and checks it against the Markdown
//!   chapters and the test vectors (every ID defined once, indexed, and covered as declared).
//! - [`case`]: case ids, outcomes, and how a case reports a violated requirement.
//! - [`cases`]: the cases, by area; [`cases::all`] is the registry.
//! - [`cx`] / [`client_cx`]: what a case runs with in server mode (the runner plays clients)
//!   and client mode (the runner plays the broker to a shim, [`shim`]).
//! - [`peer`]: one connection: raw bytes, frames, transcript. [`raw`]: the hand-written frame
//!   builder for negative cases, independent of `tern-codec`'s encoder.
//! - [`target`]: the broker under test, TLS and the provisioning contract.
//! - [`runner`], [`report`], [`expectations`], [`coverage`]: running, reporting (JSON, JUnit,
//!   Markdown, transcripts), known deviations and requirement coverage.
//! - [`vectors`]: the spec's test vectors, embedded for `tern-conformance vectors`.
//!
//! ```
//! use tern_conformance::requirements::{defined_ids, is_valid_id};
//!
//! assert!(is_valid_id("REQ-E2E-001"));
//! assert!(!is_valid_id("REQ-FRM-1"));
//! // Inline code shows the notation without defining a requirement.
//! let ids = defined_ids("A frame MUST fit [REQ-FRM-001]; written `[REQ-XXX-000]`.");
//! assert_eq!(ids, vec!["REQ-FRM-001".to_string()]);
//! ```
#![forbid(unsafe_code)]

pub mod case;
pub mod cases;
pub mod client_cx;
pub mod coverage;
pub mod cx;
pub mod expectations;
pub mod mqtt;
pub mod peer;
pub mod raw;
pub mod report;
pub mod requirements;
pub mod runner;
pub mod shim;
pub mod target;
pub mod transcript;
pub mod vectors;

use std::sync::OnceLock;

/// The requirement index this runner was built with (`spec/requirements.toml`).
pub const REQUIREMENTS_TOML: &str = include_str!("../../spec/requirements.toml");

/// The parsed index (empty if it failed to parse, which the index tests rule out).
pub fn requirement_index() -> &'static [requirements::Requirement] {
    static INDEX: OnceLock<Vec<requirements::Requirement>> = OnceLock::new();
    INDEX.get_or_init(|| requirements::parse_index(REQUIREMENTS_TOML).unwrap_or_default())
}
