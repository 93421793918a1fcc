//! The requirement index (`spec/requirements.toml`) and the consistency checks between it, the
//! Markdown chapters and the test vectors.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;

/// One entry of the index.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    /// `REQ-<AREA>-<NNN>`.
    pub id: String,
    /// MUST, MUST NOT, SHOULD, SHOULD NOT or MAY.
    pub level: String,
    /// client, broker or both.
    pub target: String,
    /// The `<AREA>` part of the id.
    pub area: String,
    /// Chapter file that states it.
    pub chapter: String,
    /// The normative text.
    pub text: String,
    /// wire, vector or untestable.
    pub testable: String,
    /// Why it cannot be tested (untestable only).
    #[serde(default)]
    pub reason: Option<String>,
    /// Protocol version that introduced it.
    pub since: String,
    /// active or retired.
    pub status: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Index {
    requirement: Vec<Requirement>,
}

/// Why the spec directory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// `requirements.toml` does not parse.
    #[error("requirements.toml: {0}")]
    Toml(#[from] toml::de::Error),
    /// A vector file is not JSON.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: String,
        /// The cause.
        source: serde_json::Error,
    },
}

/// Parses the index.
pub fn parse_index(text: &str) -> Result<Vec<Requirement>, toml::de::Error> {
    toml::from_str::<Index>(text).map(|i| i.requirement)
}

/// Whether `id` has the form `REQ-<AREA>-<NNN>` (area of 2 to 4 capitals or digits, 3 digits).
pub fn is_valid_id(id: &str) -> bool {
    let mut parts = id.split('-');
    let (Some("REQ"), Some(area), Some(num), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    (2..=4).contains(&area.len())
        && area.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        && num.len() == 3
        && num.bytes().all(|b| b.is_ascii_digit())
}

/// The requirement IDs defined (written as `[REQ-…]`) in one Markdown text, in order. Inline
/// code spans are skipped, so a chapter can show the notation without defining anything.
pub fn defined_ids(markdown: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for line in markdown.lines() {
        let mut in_code = false;
        let mut rest = line;
        while let Some(pos) = rest.find(['`', '[']) {
            let (ch, after) = (rest.as_bytes().get(pos).copied(), rest.get(pos + 1..).unwrap_or(""));
            if ch == Some(b'`') {
                in_code = !in_code;
                rest = after;
                continue;
            }
            if !in_code {
                if let Some(end) = after.find(']') {
                    let candidate = after.get(..end).unwrap_or("");
                    if candidate.starts_with("REQ-") {
                        ids.push(candidate.to_owned());
                    }
                }
            }
            rest = after;
        }
    }
    ids
}

/// The inputs of the checks, gathered from a spec directory (or built by hand in tests).
#[derive(Debug, Default)]
pub struct SpecSources {
    /// `(file name, text)` of each Markdown chapter.
    pub chapters: Vec<(String, String)>,
    /// The index.
    pub index: Vec<Requirement>,
    /// For each vector file, the requirement IDs its tests cite.
    pub vector_covers: BTreeMap<String, BTreeSet<String>>,
}

impl SpecSources {
    /// Reads `dir` (the `spec/` directory).
    pub fn load(dir: &Path) -> Result<SpecSources, LoadError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| LoadError::Io { path: p.display().to_string(), source })
        };
        let mut chapters = Vec::new();
        let entries =
            std::fs::read_dir(dir).map_err(|source| LoadError::Io { path: dir.display().to_string(), source })?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "md") {
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                chapters.push((name, read(&path)?));
            }
        }
        chapters.sort();
        let index = parse_index(&read(&dir.join("requirements.toml"))?)?;
        let mut vector_covers = BTreeMap::new();
        let mut stack = vec![dir.join("vectors")];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "json") {
                    let doc: serde_json::Value = serde_json::from_str(&read(&path)?)
                        .map_err(|source| LoadError::Json { path: path.display().to_string(), source })?;
                    vector_covers.insert(path.display().to_string(), covers_of(&doc));
                }
            }
        }
        Ok(SpecSources { chapters, index, vector_covers })
    }

    /// Every inconsistency between chapters, index and vectors; empty when all agree.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut defined: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, text) in &self.chapters {
            for id in defined_ids(text) {
                defined.entry(id).or_default().push(name.clone());
            }
        }
        for (id, files) in &defined {
            if files.len() > 1 {
                problems.push(format!("{id} is defined {} times ({})", files.len(), files.join(", ")));
            }
            if !is_valid_id(id) {
                problems.push(format!("{id} is not of the form REQ-<AREA>-<NNN>"));
            }
        }
        let mut indexed: BTreeMap<&str, &Requirement> = BTreeMap::new();
        for r in &self.index {
            if indexed.insert(&r.id, r).is_some() {
                problems.push(format!("{} is in requirements.toml twice", r.id));
            }
            problems.extend(entry_problems(r));
            let in_markdown = defined.get(&r.id);
            match (r.status.as_str(), in_markdown) {
                ("active", None) => problems.push(format!("{} is in requirements.toml but in no chapter", r.id)),
                ("active", Some(files)) if !files.contains(&r.chapter) => {
                    problems.push(format!(
                        "{} is indexed under {} but defined in {}",
                        r.id,
                        r.chapter,
                        files.join(", ")
                    ));
                }
                ("retired", Some(_)) => problems.push(format!("{} is retired but still defined in a chapter", r.id)),
                _ => {}
            }
        }
        for id in defined.keys() {
            if !indexed.contains_key(id.as_str()) {
                problems.push(format!("{id} is defined in a chapter but missing from requirements.toml"));
            }
        }
        let cited: BTreeSet<&String> = self.vector_covers.values().flatten().collect();
        for (file, ids) in &self.vector_covers {
            for id in ids {
                if !indexed.contains_key(id.as_str()) {
                    problems.push(format!("{file} cites {id}, which requirements.toml does not have"));
                }
            }
        }
        for r in &self.index {
            if r.status == "active" && r.testable == "vector" && !cited.contains(&r.id) {
                problems.push(format!("{} is testable by vector but no vector cites it", r.id));
            }
        }
        problems
    }

    /// The active requirements.
    pub fn active(&self) -> impl Iterator<Item = &Requirement> {
        self.index.iter().filter(|r| r.status == "active")
    }
}

fn covers_of(doc: &serde_json::Value) -> BTreeSet<String> {
    let groups = doc.get("testGroups").and_then(|g| g.as_array()).into_iter().flatten();
    let tests = groups.filter_map(|g| g.get("tests").and_then(|t| t.as_array())).flatten();
    tests
        .filter_map(|t| t.get("covers").and_then(|c| c.as_array()))
        .flatten()
        .filter_map(|c| c.as_str().map(str::to_owned))
        .collect()
}

fn entry_problems(r: &Requirement) -> Vec<String> {
    let mut p = Vec::new();
    let one_of = |field: &str, value: &str, allowed: &[&str], p: &mut Vec<String>| {
        if !allowed.contains(&value) {
            p.push(format!("{}: {field} = {value:?} is not one of {allowed:?}", r.id));
        }
    };
    if !is_valid_id(&r.id) {
        p.push(format!("{} is not of the form REQ-<AREA>-<NNN>", r.id));
    }
    if r.id.split('-').nth(1) != Some(r.area.as_str()) {
        p.push(format!("{}: area {} does not match the id", r.id, r.area));
    }
    one_of("level", &r.level, &["MUST", "MUST NOT", "SHOULD", "SHOULD NOT", "MAY"], &mut p);
    one_of("target", &r.target, &["client", "broker", "both"], &mut p);
    one_of("testable", &r.testable, &["wire", "vector", "untestable"], &mut p);
    one_of("status", &r.status, &["active", "retired"], &mut p);
    if (r.testable == "untestable") != r.reason.as_deref().is_some_and(|s| !s.trim().is_empty()) {
        p.push(format!("{}: a reason is required exactly when testable = \"untestable\"", r.id));
    }
    if r.status == "active" && !r.text.contains(r.level.as_str()) {
        p.push(format!("{}: text does not contain its level {}", r.id, r.level));
    }
    p
}
