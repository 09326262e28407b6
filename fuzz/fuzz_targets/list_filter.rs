//! Fuzz target `list_filter` (TESTING.md). A pending `tools/list`, then an arbitrary reply: what reaches the client is JSON or nothing,
//! and lists no hidden tool however it is read.
#![no_main]

#[allow(dead_code)]
#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(failure) = harness::check_list_filter(data, harness::KNOWN) {
        panic!("oracle failed: {failure}");
    }
});
