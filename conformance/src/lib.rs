//! `tern-conformance`: tooling that third parties use to check implementations against
//! `spec/`.
//!
//! # Layout
//! - [`requirements`]: loads `spec/requirements.toml` and checks it against the Markdown
//!   chapters and the test vectors (every ID defined once, indexed, and covered as declared).
//!
//! The conformance runner (`tern-conformance server|client|list`) is built on this by the
//! conformance-suite work.
#![forbid(unsafe_code)]

pub mod requirements;
