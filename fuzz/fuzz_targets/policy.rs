//! Fuzz target `policy` (TESTING.md). Arbitrary text through `Policy::from_json`; a policy that loads decides a few calls, and
//! never allows a tool it does not show.
#![no_main]

#[allow(dead_code)]
#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(failure) = harness::check_policy(data) {
        panic!("oracle failed: {failure}");
    }
});
