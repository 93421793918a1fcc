//! `tern-conformance`: tooling that third parties use to check implementations against
//! `spec/`.
//!
//! # Layout
//! - [`requirements`]: loads `spec/requirements.toml` and checks it against the Markdown
//!   chapters and the test vectors (every ID defined once, indexed, and covered as declared).
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
//!
//! The conformance runner (`tern-conformance server|client|list`) is built on this by the
//! conformance-suite work.
#![forbid(unsafe_code)]

pub mod requirements;
