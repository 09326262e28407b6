//! Plugins: rules as sandboxed WebAssembly components.
//!
//! A plugin is a component implementing one world of the `toolgate:policy` package:
//! `policy` of `wit/v0.1.0/`, `wit/v0.2.0/` (which adds the approval covering a call) or
//! `wit/v0.3.0/` (which adds the `state` import), or 0.3.0's `policy-with-results`, whose
//! `after-call` also sees the result of each call the plugin allowed ([`Plugin::after_call`]). The version is the one its
//! imports name and its manifest says ([`crate::capability::World`]); `bindings.rs` holds
//! one set of bindings per version and the types the rest of this module uses for any of
//! them. Its lifecycle has five steps, named the same in types, logs and docs:
//!
//! 1. **load**: read the file;
//! 2. **verify**: check its sha256 against the policy's `sha256` (when given), that it is a
//!    component with one true manifest, that the policy grants what it imports, and, when the
//!    operator configured a trust file, that its signatures satisfy it (`vet.rs`);
//! 3. **compile**: once per content digest in this process, and cached on disk keyed by
//!    sha256 + wasmtime version + engine configuration, so a restart loads it in a fraction of
//!    a millisecond. A cached artifact is native code: it is used only from a private folder
//!    and with a valid tag under the folder's own key (see `cache.rs`);
//! 4. **pre-instantiate**: link it against the granted imports once, into a `PluginPre`
//!    (a [`wasmtime::component::InstancePre`] with the engine and limits its instances need);
//!    a plugin that needs anything else, or exports another world, fails here, at load time;
//! 5. **evaluate**: take one of the runtime's evaluation permits, rehydrate the `PluginPre`
//!    into an instance (or take a pooled plugin's warm one), and run `evaluate` under a fuel
//!    budget, an epoch deadline, one memory budget for the whole instance and a cap on every
//!    import (see `host.rs`). Every trap, timeout, limit hit, malformed result or missing
//!    permit is a **deny** naming the plugin and the cause ([`EvalFailure`]); the next
//!    evaluation starts from a clean instance.
//!
//! The files follow the steps, each depending only on those before it: `limits.rs` (the knobs of
//! one plugin), `epoch.rs` (the thread whose ticks interrupt a plugin past its deadline, asleep
//! while nothing is armed), `load.rs` (read → verify, in `vet.rs` → compile, with `cache.rs` →
//! pre-instantiate, into a `PluginPre`), `instances.rs` (rehydrating a `PluginPre`, the idle
//! instances and the chores thread), `evaluate.rs` (a [`Plugin`] and its calls, under the
//! `permits.rs`), `error.rs` (why a load or a call failed, told apart by type), and on top
//! `runtime.rs` (the engine, its knobs and threads, and [`PluginRuntime::load`], which walks a file
//! through the steps). `stats.rs` counts how evaluations ended, for the metrics.
//!
//! The sandbox links the toolgate interfaces the policy grants (of counters, clock, log and
//! state; all of them when the entry says nothing) and nothing else:
//! every WASI import a guest's standard library brings is linked to a function that traps, so
//! a plugin has no filesystem, environment, network, clock or randomness of its own.

mod bindings;
pub mod build;
mod cache;
mod epoch;
mod error;
mod evaluate;
mod host;
mod instances;
mod limits;
mod load;
mod permits;
mod runtime;
pub mod scaffold;
mod stats;
mod vet;
mod vouch;

pub use bindings::PluginMetadata;
pub use error::{ConfigRejected, EvalFailure, PluginError};
pub use evaluate::{AfterCall, AfterCallOutcome, Plugin, PluginCall, PluginOutcome};
pub use instances::{defer_teardown_on_this_thread, tear_down_deferred};
pub use limits::{
    Isolation, Oversized, PluginLimits, IMPORT_CALLS_PER_EVALUATION, LOG_BYTES_PER_EVALUATION,
    MAX_COUNTER_NAME_BYTES,
};
pub use load::Source;
pub use permits::DEFAULT_MAX_CONCURRENT_EVALUATIONS;
pub use runtime::{engine_config, PluginRuntime};
pub use stats::evaluations;
pub use vet::{Candidate, Vetting};

#[cfg(test)]
pub(crate) mod tests;
