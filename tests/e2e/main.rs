//! End-to-end tests: the `toolgate` binary on real pipes, in front of real upstream processes.
//!
//! The tests against the ecosystem's own peers (server-everything, mcp-server-time, the Python
//! SDK, the Inspector CLI) are in `tests/python/`; these cover the LLM CLI Gateway stand-in,
//! bad input, plugins, hot swap, HTTP, the integrity suite against Go and Node stand-ins, and
//! the house rules of ARCHITECTURE.md (`house.rs`). The counters' guarantees and the session
//! core are unit tests beside their code.

mod approvals;
mod approvals_cli;
mod approvals_client_http;
mod approvals_events;
mod approvals_http;
mod bad_input;
mod catalog;
mod counters;
mod decision_log;
mod fuzz_smoke;
mod hot_swap;
mod house;
mod http;
mod integrity;
mod manifest;
mod pgo;
mod plugin_versions;
mod plugins;
mod registry;
mod replica_sessions;
mod replicas;
mod result_hooks;
mod sharing;
mod signing;
mod standin;
mod store;
mod support;
mod toolgate_test;
mod upstreams;
