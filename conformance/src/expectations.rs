//! Expectations files: an implementation's known deviations, each with a reason.
//!
//! ```toml
//! [[deviation]]
//! case = "keepalive.timeout@broker"   # a case id or a glob
//! reason = "keepalive timer not implemented yet (issue 12)"
//! ```
//!
//! A failing case that matches an entry is reported with the reason and does not make the run
//! non-conformant. An entry whose cases all pass is reported as stale (remove it); an entry
//! that matches no case of the run is warned about.

use serde::Deserialize;

use crate::case::glob_match;

/// One known deviation.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Deviation {
    /// Case id or glob.
    pub case: String,
    /// Why the implementation deviates.
    pub reason: String,
}

/// A parsed expectations file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Expectations {
    /// The entries.
    #[serde(default)]
    pub deviation: Vec<Deviation>,
}

impl Expectations {
    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Expectations, String> {
        let e: Expectations = toml::from_str(text).map_err(|e| e.to_string())?;
        if let Some(d) = e.deviation.iter().find(|d| d.reason.trim().is_empty()) {
            return Err(format!("deviation for {} has no reason", d.case));
        }
        Ok(e)
    }

    /// The entry covering `case_id`, if any.
    pub fn find(&self, case_id: &str) -> Option<&Deviation> {
        self.deviation.iter().find(|d| glob_match(&d.case, case_id))
    }
}
