//! The spec's requirement index agrees with its chapters, its vectors and the codec's code.
// Test code: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};

use tern_conformance::requirements::{defined_ids, parse_index, SpecSources};

fn spec_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec")
}

#[test]
fn requirement_index_matches_chapters_and_vectors() {
    let sources = SpecSources::load(&spec_dir()).expect("load spec/");
    let problems = sources.problems();
    assert!(problems.is_empty(), "spec/ is inconsistent:\n{}", problems.join("\n"));
    assert!(sources.active().count() >= 80, "suspiciously few requirements");
    assert!(sources.chapters.len() >= 14, "chapters missing");
}

/// Every requirement the codec cites in an error must exist, so a reported violation always
/// points at real text.
#[test]
fn every_id_cited_by_the_codec_is_indexed() {
    let sources = SpecSources::load(&spec_dir()).expect("load spec/");
    let known: std::collections::BTreeSet<&str> = sources.index.iter().map(|r| r.id.as_str()).collect();
    let mut stack = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("../codec/src")];
    let mut cited = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read codec/src").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read");
            for (i, _) in text.match_indices("REQ-") {
                let id: String = text[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
                cited += 1;
                assert!(
                    known.contains(id.as_str()),
                    "{} cites {id}, which is not in spec/requirements.toml",
                    path.display()
                );
            }
        }
    }
    assert!(cited > 50);
}

const INDEX: &str = r#"
[[requirement]]
id = "REQ-FRM-001"
level = "MUST"
target = "both"
area = "FRM"
chapter = "a.md"
text = "A frame MUST be short."
testable = "vector"
since = "1.0-draft"
status = "active"
"#;

fn sources(chapter: &str, index: &str, covers: &[&str]) -> SpecSources {
    SpecSources {
        chapters: vec![("a.md".into(), chapter.into())],
        index: parse_index(index).expect("toml"),
        vector_covers: [("v.json".to_string(), covers.iter().map(|s| s.to_string()).collect())].into_iter().collect(),
    }
}

#[test]
fn the_checks_catch_each_kind_of_inconsistency() {
    let good = sources("A frame MUST be short [REQ-FRM-001].", INDEX, &["REQ-FRM-001"]);
    assert_eq!(good.problems(), Vec::<String>::new());

    let missing_from_index = sources("x [REQ-FRM-001]. y MUST [REQ-FRM-002].", INDEX, &["REQ-FRM-001"]);
    assert!(missing_from_index
        .problems()
        .iter()
        .any(|p| p.contains("REQ-FRM-002") && p.contains("missing from requirements.toml")));

    let missing_from_text = sources("no ids here", INDEX, &["REQ-FRM-001"]);
    assert!(missing_from_text.problems().iter().any(|p| p.contains("in no chapter")));

    let defined_twice = sources("a [REQ-FRM-001]. b [REQ-FRM-001].", INDEX, &["REQ-FRM-001"]);
    assert!(defined_twice.problems().iter().any(|p| p.contains("defined 2 times")));

    let doubled = format!("{INDEX}{INDEX}");
    assert!(sources("a [REQ-FRM-001].", &doubled, &["REQ-FRM-001"]).problems().iter().any(|p| p.contains("twice")));

    let uncovered = sources("a [REQ-FRM-001].", INDEX, &[]);
    assert!(uncovered.problems().iter().any(|p| p.contains("no vector cites it")));

    let unknown_cite = sources("a [REQ-FRM-001].", INDEX, &["REQ-FRM-001", "REQ-XYZ-009"]);
    assert!(unknown_cite.problems().iter().any(|p| p.contains("REQ-XYZ-009")));

    let bad_level = INDEX.replace("level = \"MUST\"", "level = \"OUGHT\"");
    assert!(sources("a [REQ-FRM-001].", &bad_level, &["REQ-FRM-001"]).problems().iter().any(|p| p.contains("level")));

    let untestable_without_reason = INDEX.replace("testable = \"vector\"", "testable = \"untestable\"");
    assert!(sources("a [REQ-FRM-001].", &untestable_without_reason, &[])
        .problems()
        .iter()
        .any(|p| p.contains("reason")));
}

#[test]
fn inline_code_does_not_define_ids() {
    assert_eq!(defined_ids("see `[REQ-FRM-002]` and [REQ-FRM-003] and [link](x)"), vec!["REQ-FRM-003".to_string()]);
}
