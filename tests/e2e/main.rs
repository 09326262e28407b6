//! End-to-end tests: the `toolgate` binary on real pipes, in front of real upstream processes.
//!
//! The tests against the ecosystem's own peers (server-everything, mcp-server-time, the Python
//! SDK, the Inspector CLI) are in `tests/python/`; these cover the LLM CLI Gateway stand-in,
//! bad input and the counters' guarantees.

mod bad_input;
mod fuzz_smoke;
mod hot_swap;
mod http;
mod integrity;
mod plugins;
mod standin;
mod support;
mod toolgate_test;
