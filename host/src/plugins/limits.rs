//! The limits on one plugin's evaluations, and how its evaluations are isolated. Each limit
//! says what raising it costs.

use std::time::Duration;

/// Log bytes one evaluation may write; past this the plugin traps (and the call is denied).
pub const LOG_BYTES_PER_EVALUATION: usize = 4096;

/// Calls of each import (`counters.consume`, `clock.now-ms`, `log.log`, `state.get`,
/// `state.set`, `state.delete`) one evaluation (or `after-call`) may make; the next one traps (and the call is denied). What an import keeps is host memory,
/// outside the plugin's memory cap, and a counter keeps its units for up to its window (a
/// week): this bounds what one call can leave behind. A rule needing more counters than this
/// per call should be several plugins or declarative limits.
pub const IMPORT_CALLS_PER_EVALUATION: u32 = 64;

/// How often the epoch advances. [`PluginLimits::timeout`] is counted in these ticks: a
/// shorter tick makes deadlines finer and wakes the epoch thread more often.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Linear memory a freed pool slot keeps resident (and resets by rewriting the pages its last
/// instance dirtied instead of handing them back): a fresh instance that finds its pages
/// resident starts faster. Each slot a plugin has used costs up to this much resident memory.
pub(crate) const KEEP_RESIDENT: usize = 4 << 20;

/// The least wall-clock time a load-time call (`metadata`, `validate-config`) gets: they are
/// on no request's path, so a plugin with a tight per-call deadline still loads on a busy
/// machine. Instantiation gets it too, on the request path or not: it is mostly the host's
/// own work (the pool's memory slot, the component's start code, which already ran at load
/// under this budget and under fuel), and a 5 ms plugin deadline counted over it denied calls
/// ("cannot instantiate it: wasm trap: interrupt") whenever the machine was busy. The
/// evaluation itself is then armed with the plugin's own `timeout`.
pub(crate) const LOAD_TIMEOUT: Duration = Duration::from_secs(1);

/// The longest counter name a plugin may pass to `counters.consume`, in bytes; a longer one
/// traps (and the call is denied). The name is kept with the counter for its whole window.
pub const MAX_COUNTER_NAME_BYTES: usize = 256;

/// How evaluations of one plugin are isolated from each other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// A new store and instance for every evaluation (Kubewarden's model). Nothing a plugin
    /// does can carry over to the next call, and a trap costs nothing to recover from. Costs
    /// an instantiation and a teardown per call, both on the call's own thread: about 11–13
    /// µs a decision with the pooling allocator, against 1.5 µs pooled (see BENCHMARKS.md).
    #[default]
    Fresh,
    /// Warm instances are kept and reused, which makes a call cost about as much as the
    /// plugin's own work (a few µs). The price: a plugin can keep state between calls (its
    /// globals, its heap), so one call can influence the next of the same grant. An instance
    /// only ever serves one grant (grants that share a policy never share an instance), and
    /// is thrown away after any trap and after `recycle_after` calls, which bounds how long
    /// state can live.
    Pooled,
}

/// What happens to a call's result over [`PluginLimits::max_result_bytes`], which a
/// `policy-with-results` plugin never sees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Oversized {
    /// The client gets it unseen.
    Pass,
    /// The client gets the gateway's refusal instead: a plugin that must see every result
    /// is never bypassed by a large one.
    #[default]
    Refuse,
}

/// Limits on one plugin's evaluations. Each says what raising it costs.
#[derive(Clone, Debug)]
pub struct PluginLimits {
    /// Fuel per evaluation, reported as "instructions": deterministic, so a plugin that passes
    /// its cases passes them on every machine. It does not count time spent in host imports,
    /// which is what `timeout` is for. Default 50 million (tens of ms of pure computation).
    pub fuel: u64,
    /// Wall-clock backstop per evaluation, counted in epoch ticks of 5 ms. Default 250 ms.
    /// A plugin runs on the calling session's thread: this is the longest a call can wait,
    /// once for an evaluation permit (see [`crate::plugins::PluginRuntime::with_max_concurrent_evaluations`])
    /// and once for the evaluation.
    pub timeout: Duration,
    /// Memory per instance: one budget for all its linear memories (a component may have
    /// several) and tables together. A std guest starts at about 1.1 MiB. Default 32 MiB.
    pub memory_bytes: usize,
    /// Largest `arguments` JSON passed in. Default 1 MiB; a larger call is denied.
    pub max_input_bytes: usize,
    /// Largest `config` JSON. Default 64 KiB; a larger config fails the policy load.
    pub max_config_bytes: usize,
    /// Longest reason a plugin may return. Default 1 KiB; a longer one is a malformed
    /// result, and the call is denied with a reason saying so.
    pub max_reason_bytes: usize,
    /// Pooled mode: an instance serves at most this many calls. Default 1000.
    pub recycle_after: u32,
    /// The policy's counters the plugin may consume, by name. Any other name it passes to
    /// `counters.consume` is a counter of its own, kept apart from the policy's and from
    /// every other plugin's: a shared plugin cannot drain a grant's limits by naming them.
    /// Default: none.
    pub shared_counters: std::sync::Arc<[String]>,
    /// The bounds of its `state` entries, per grant: they live in the counter store (host
    /// memory, or the shared store) for up to `max_ttl`. Default [`crate::counters::StateLimits::default`].
    pub state: crate::counters::StateLimits,
    /// Largest call result a `policy-with-results` plugin is handed, in bytes: it is copied
    /// into the plugin's memory, which must hold it. Default 1 MiB.
    pub max_result_bytes: usize,
    /// What happens to a result over `max_result_bytes`. Default [`Oversized::Refuse`].
    pub oversized_results: Oversized,
}

impl Default for PluginLimits {
    fn default() -> Self {
        Self {
            fuel: 50_000_000,
            timeout: Duration::from_millis(250),
            memory_bytes: 32 << 20,
            max_input_bytes: 1 << 20,
            max_config_bytes: 64 << 10,
            max_reason_bytes: 1024,
            recycle_after: 1000,
            shared_counters: std::sync::Arc::new([]),
            state: crate::counters::StateLimits::default(),
            max_result_bytes: 1 << 20,
            oversized_results: Oversized::Refuse,
        }
    }
}
