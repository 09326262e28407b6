//! Fuzz target `envelope` (TESTING.md). Arbitrary bytes through `Envelope::parse` and `check_keys`: a line `check_keys` accepts is read
//! alike by the gateway and by a case-folding, last-wins reader (method, id, `params.name`).
#![no_main]

#[allow(dead_code)]
#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(failure) = harness::check_envelope(data, harness::KNOWN) {
        panic!("oracle failed: {failure}");
    }
});
