//! toolgate: a policy gateway for MCP tool calls.
//!
//! toolgate sits between an MCP client (an agent) and an MCP server. It forwards every
//! JSON-RPC message unchanged, except that each `tools/call` must pass a policy first and
//! `tools/list` replies lose the tools the policy hides.
//!
//! ## Following one `tools/call`
//! ARCHITECTURE.md (at the repository's root) has the modules, which way they depend, and a
//! reading order. In short:
//! 1. [`stdio`] (or [`http`]) reads a line from the client and hands it to the
//!    [`session::Session`].
//! 2. [`session::Session::from_client`] reads its routing fields ([`jsonrpc`]) and, for
//!    `tools/call`, asks the policy (`decide_call` in `session/mod.rs`).
//! 3. [`policy::Policy::decide`] (`policy/decide.rs`) walks the rule: visibility, `action`,
//!    `require`, `deny_if`, the rule's [`plugins`], then the limits, consumed from the
//!    [`counters::CounterStore`] (time from [`clock`]).
//! 4. The [`decision::Decision`] either lets the line go upstream (under the gateway's own
//!    request id), or becomes the tool result (`isError: true`, text `[toolgate] ...`) the
//!    client gets instead.
//! 5. The upstream's reply passes back through [`session::Session::from_upstream`], which
//!    restores the client's id, and refunds the counter units only if the reply is an error
//!    that means the tool never ran.

pub mod approvals;
pub mod audit;
pub mod bounded;
pub mod call;
pub mod canonical;
pub mod capability;
pub mod catalog;
pub mod child;
pub mod clock;
pub mod counters;
pub mod decision;
pub mod demo;
pub mod digest;
pub mod framing;
pub mod http;
pub mod jsonrpc;
pub mod manifest;
pub mod metrics;
pub mod plugins;
pub mod policy;
pub mod reload;
pub mod session;
pub mod sse;
pub mod stdio;
pub mod store;
#[cfg(feature = "otel")]
pub mod telemetry;
pub mod testing;
pub mod trust;
pub mod upstreams;
