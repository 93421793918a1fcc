//! Fuzz target: see `fuzz/harness.rs`.
#![no_main]

#[allow(dead_code)] // each target uses one function of the shared harness
#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::broker_session(data));
