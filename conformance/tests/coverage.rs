//! The case list against the requirement index: every wire-testable requirement is covered
//! by at least one case (or is pending a feature not built yet), case ids are stable and
//! well-formed, and the CLI lists what the library holds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeSet;

use tern_conformance::case::Role;
use tern_conformance::coverage::{Coverage, PENDING};
use tern_conformance::{cases, requirement_index};

fn cited() -> Vec<&'static str> {
    cases::all().iter().flat_map(|c| c.info.reqs.iter().copied()).collect()
}

#[test]
fn every_wire_testable_requirement_is_covered_by_a_case() {
    let index = requirement_index();
    assert!(index.len() >= 100, "index did not load");
    let coverage = Coverage::compute(index, cited());
    assert!(coverage.uncovered.is_empty(), "wire-testable requirements without a case: {:?}", coverage.uncovered);
    assert!(coverage.unknown_citations.is_empty(), "cases cite unknown IDs: {:?}", coverage.unknown_citations);
    // Pending entries must still be uncovered; once a case covers one, drop it from PENDING.
    assert_eq!(coverage.pending.len(), PENDING.len(), "a pending requirement has a case now: update PENDING");
    assert_eq!(coverage.wire_covered + coverage.pending.len(), coverage.wire_total);
}

#[test]
fn the_coverage_check_fails_when_a_case_is_missing() {
    let index = requirement_index();
    let without: Vec<&str> = cited().into_iter().filter(|id| *id != "REQ-KAL-002").collect();
    let coverage = Coverage::compute(index, without);
    assert_eq!(coverage.uncovered, vec!["REQ-KAL-002".to_string()]);
    let coverage = Coverage::compute(index, ["REQ-NOPE-001"]);
    assert_eq!(coverage.unknown_citations, vec!["REQ-NOPE-001".to_string()]);
}

#[test]
fn case_ids_are_unique_hierarchical_and_match_their_role() {
    let index = requirement_index();
    let mut seen = BTreeSet::new();
    for case in cases::all() {
        let id = case.info.id;
        assert!(seen.insert(id), "duplicate case id {id}");
        let (path, role) = id.split_once('@').unwrap_or_else(|| panic!("{id}: no @role"));
        assert!(matches!(role, "broker" | "client"), "{id}: role must be broker or client");
        let parts: Vec<&str> = path.split('.').collect();
        assert!(parts.len() >= 2, "{id}: needs at least area.topic");
        for p in parts {
            assert!(
                !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "{id}: bad segment {p:?}"
            );
            assert!(!p.bytes().all(|b| b.is_ascii_digit()), "{id}: positional number {p:?}");
        }
        assert!(!case.info.reqs.is_empty(), "{id} covers no requirement");
        // A case covers requirements of the side it tests (or of both sides).
        let side = match case.info.role() {
            Role::Broker => "broker",
            Role::Client => "client",
        };
        let primary = index.iter().find(|r| r.id == case.info.reqs[0]).unwrap();
        assert!(
            primary.target == side || primary.target == "both",
            "{id}: first requirement {} targets {}",
            primary.id,
            primary.target
        );
    }
    assert!(seen.len() >= 60, "{} cases", seen.len());
}

#[test]
fn the_cli_lists_every_case_with_its_quoted_requirements_and_the_coverage() {
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_tern-conformance")).args(["list", "--json"]).output().unwrap();
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed = json["cases"].as_array().unwrap();
    assert_eq!(listed.len(), cases::all().len());
    let first = &listed[0];
    assert!(first["requirements"][0]["text"].as_str().is_some_and(|t| !t.is_empty()), "{first}");
    assert_eq!(json["coverage"]["uncovered"].as_array().map(Vec::len), Some(0));

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tern-conformance"))
        .args(["list", "--test", "framing.*", "--skip", "*1400*"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("framing.oversize.1401-bytes@broker") && !text.contains("1400-bytes-accepted"), "{text}");
}

#[test]
fn usage_errors_exit_2_and_a_shim_that_ignores_the_contract_fails_self_check() {
    let bin = env!("CARGO_BIN_EXE_tern-conformance");
    let out = std::process::Command::new(bin).args(["server", "--addr", "127.0.0.1:9"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--provision-cmd"));
    // `true` exits 0 for every case id, so it does not honour the 127 contract.
    let out = std::process::Command::new(bin).args(["self-check", "--shim", "true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn every_vector_file_is_embedded_and_the_cli_exports_them() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec/vectors");
    let mut on_disk = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "json") {
                on_disk.push(path.strip_prefix(&root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    on_disk.sort();
    let embedded: Vec<String> = tern_conformance::vectors::VECTORS.iter().map(|(p, _)| p.to_string()).collect();
    assert_eq!(embedded, on_disk, "conformance/src/vectors.rs must list every file of spec/vectors");
    let out = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_tern-conformance"))
        .args(["vectors", "--out", out.path().to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    let written = std::fs::read_to_string(out.path().join("e2ee/session_test.json")).unwrap();
    assert_eq!(written, std::fs::read_to_string(root.join("e2ee/session_test.json")).unwrap());
}
