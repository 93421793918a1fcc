//! Runs every fuzz target (`fuzz/harness.rs`) over its seed corpus in `fuzz/corpus/`, so the
//! targets are exercised on every test run, not only under libFuzzer.
// Test code: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "../../fuzz/harness.rs"]
mod harness;

use std::path::Path;

fn run_corpus(target: &str, f: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        f(&data);
        // Every prefix too: truncation is the most common malformation.
        for cut in (0..data.len()).step_by(7) {
            f(&data[..cut]);
        }
        count += 1;
    }
    assert!(count >= 10, "{target}: only {count} seeds");
}

#[test]
fn frame_decode_corpus() {
    run_corpus("frame_decode", harness::frame_decode);
}

#[test]
fn broker_session_corpus() {
    run_corpus("broker_session", harness::broker_session);
}

#[test]
fn client_session_corpus() {
    run_corpus("client_session", harness::client_session);
}
