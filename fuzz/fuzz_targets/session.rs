//! Fuzz target `session` (TESTING.md). A conversation (client lines, upstream lines, timeouts, lost writes) through one `Session`
//! under a policy that hides `secret` and caps `create` at 2: no hidden tool listed, no more than
//! 2 `create` runs, gateway ids upstream, replies only to open requests under the client's id.
#![no_main]

#[allow(dead_code)]
#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(failure) = harness::check_session(data, harness::KNOWN) {
        panic!("oracle failed: {failure}");
    }
});
