//! The host side of the plugin imports: one small implementation per WIT interface, over the
//! state of one evaluation.
//!
//! - `counters`: the gateway's own [`CounterStore`], scoped to the call's grant and session.
//!   Every unit taken is recorded, so that the caller can refund the whole evaluation's units
//!   when the call is refused or never runs.
//! - `clock`: the gateway's clock, the same one the counters read (simulated in tests).
//! - `log`: into `tracing`, capped in bytes per evaluation; past the cap the plugin traps.
//! - `state` (0.3.0): the counter store's key-value entries of this plugin and the calling
//!   grant ([`StateSpace`]), bounded by the policy's [`StateLimits`]. A `set` that breaks a
//!   bound, or that the store cannot take, is an error the plugin sees (nothing is stored);
//!   a `get` or `delete` the store cannot answer traps (fail closed: the call is denied).
//!
//! Whatever an import keeps lives in host memory, outside the plugin's memory cap, and a
//! counter's timestamps live as long as its window. So every import is bounded: at most
//! [`IMPORT_CALLS_PER_EVALUATION`] calls of each kind per evaluation, counter names of at most
//! [`MAX_COUNTER_NAME_BYTES`], windows within the declarative policy's bounds, state keys of at
//! most [`MAX_STATE_KEY_BYTES`] and entries within the policy's [`StateLimits`]. Past a bound
//! the import traps with [`ImportRefused`], and the evaluation is a deny naming the bound;
//! `state.set` alone returns its refusals to the plugin, as its contract says.

use super::bindings::{v0_1, v0_2, v0_3};
use super::limits::{
    IMPORT_CALLS_PER_EVALUATION, LOG_BYTES_PER_EVALUATION, MAX_COUNTER_NAME_BYTES,
};
use crate::counters::MAX_WINDOW_MS;
use crate::counters::{
    CounterKey, CounterStore, Refusal, Reservation, Scope, StateError, StateLimits, StateSpace,
    Window, MAX_STATE_KEY_BYTES,
};
use std::sync::Arc;

/// What one evaluation may touch. Lives in the wasmtime `Store`.
pub(crate) struct EvalState {
    /// The store's resource limits: one memory budget for the whole instance.
    pub(crate) limits: MemoryBudget,
    /// The plugin's name: for logs, and the owner of its own counters.
    pub(crate) plugin: Arc<str>,
    /// The policy's counters it may consume by name ([`crate::plugins::PluginLimits::shared_counters`]).
    pub(crate) shared_counters: Arc<[String]>,
    /// Counters, or `None` while the store is idle between evaluations.
    pub(crate) counters: Option<Arc<dyn CounterStore>>,
    /// The calling grant.
    pub(crate) grant: String,
    /// The calling session.
    pub(crate) session: String,
    /// Units the plugin took during this evaluation.
    pub(crate) reservations: Vec<Reservation>,
    /// What the plugin logged in this evaluation (`level: message`), for traces: `toolgate
    /// eval` and `toolgate test --json` show them. Bounded by the log budget.
    pub(crate) logs: Vec<String>,
    /// Whether to keep them (a traced decision).
    pub(crate) keep_logs: bool,
    /// Log bytes left in this evaluation.
    pub(crate) log_budget: usize,
    /// Import calls made in this evaluation, by kind.
    pub(crate) calls: ImportCalls,
    /// The bounds of the plugin's `state` entries per grant
    /// ([`crate::plugins::PluginLimits::state`]).
    pub(crate) state_limits: StateLimits,
}

impl EvalState {
    pub(crate) fn idle(
        plugin: Arc<str>,
        shared_counters: Arc<[String]>,
        limits: MemoryBudget,
    ) -> Self {
        Self {
            limits,
            plugin,
            shared_counters,
            counters: None,
            grant: String::new(),
            session: String::new(),
            reservations: Vec::new(),
            logs: Vec::new(),
            keep_logs: false,
            log_budget: 0,
            calls: ImportCalls::default(),
            state_limits: StateLimits::default(),
        }
    }

    /// Readies the per-evaluation budgets (log bytes, import calls, the memory peak).
    pub(crate) fn start_evaluation(&mut self) {
        self.log_budget = LOG_BYTES_PER_EVALUATION;
        self.logs.clear();
        self.calls = ImportCalls::default();
        self.limits.reset_peak();
    }

    /// Counts one call of `import`, refusing the one past the cap.
    fn count_call(&mut self, import: &'static str) -> wasmtime::Result<()> {
        let calls = match import {
            CONSUME => &mut self.calls.consume,
            NOW_MS => &mut self.calls.now_ms,
            STATE_GET => &mut self.calls.state_get,
            STATE_SET => &mut self.calls.state_set,
            STATE_DELETE => &mut self.calls.state_delete,
            _ => &mut self.calls.log,
        };
        *calls += 1;
        if *calls > IMPORT_CALLS_PER_EVALUATION {
            return Err(ImportRefused(format!(
                "called `{import}` more than {IMPORT_CALLS_PER_EVALUATION} times in one evaluation (the cap on each import)"
            ))
            .into());
        }
        Ok(())
    }
}

const CONSUME: &str = "counters.consume";
const NOW_MS: &str = "clock.now-ms";
const LOG: &str = "log.log";
const STATE_GET: &str = "state.get";
const STATE_SET: &str = "state.set";
const STATE_DELETE: &str = "state.delete";

/// Import calls of each kind made in one evaluation.
#[derive(Default)]
pub(crate) struct ImportCalls {
    consume: u32,
    now_ms: u32,
    log: u32,
    state_get: u32,
    state_set: u32,
    state_delete: u32,
}

/// Why an import refused to run: the plugin went past a bound. Traps the evaluation, which
/// is denied with this text.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ImportRefused(pub(crate) String);

/// Why a memory or table could not grow: the instance's one budget is spent.
#[derive(Debug, thiserror::Error)]
#[error("growing memory past the instance's budget of {budget} bytes")]
pub(crate) struct BudgetExceeded {
    /// The budget, in bytes.
    pub(crate) budget: usize,
}

/// The context on the error of a memory growth the budget allowed and the system refused.
#[derive(Debug, thiserror::Error)]
#[error("growing memory failed")]
pub(crate) struct GrowFailed;

/// Why a plugin trapped calling an import toolgate links to a trap (WASI, from a guest's
/// standard library): the import's qualified name.
#[derive(Debug, thiserror::Error)]
#[error("unknown import: `{0}` has not been defined")]
pub(crate) struct UngrantedImport(pub(crate) String);

/// Why `log.log` trapped: the evaluation's log bytes are spent.
#[derive(Debug, thiserror::Error)]
#[error("log cap exceeded: a plugin may log {LOG_BYTES_PER_EVALUATION} bytes per evaluation")]
pub(crate) struct LogCapExceeded;

/// Bytes one table element is counted as: a function reference is a pointer-sized slot.
const TABLE_ELEMENT_BYTES: usize = std::mem::size_of::<usize>();

/// One memory budget for everything a store's instance holds: a component may define several
/// linear memories (wasmtime allows four per component here) and tables, and a per-memory cap
/// would let it hold several times its budget. The store holds one component instance and
/// is never reused for another, and memories and tables only grow, so the sum of every
/// growth is what the instance holds. A growth past the budget traps (with
/// [`BudgetExceeded`]) rather than failing quietly: a guest allocator that sees `memory.grow`
/// fail would abort anyway, with a less clear message.
pub(crate) struct MemoryBudget {
    budget: usize,
    instances: usize,
    /// Linear memory held, over all memories.
    memory: usize,
    /// Table bytes held, over all tables.
    tables: usize,
    /// The most linear memory the store held since [`MemoryBudget::reset_peak`].
    pub(crate) peak: usize,
}

impl MemoryBudget {
    /// `budget` bytes for memories and tables together, at most `instances` core instances.
    pub(crate) fn new(budget: usize, instances: usize) -> Self {
        Self {
            budget,
            instances,
            memory: 0,
            tables: 0,
            peak: 0,
        }
    }

    /// Linear memory held now, over all memories.
    pub(crate) fn memory(&self) -> usize {
        self.memory
    }

    /// Starts a new peak from the memory held now (before an evaluation).
    pub(crate) fn reset_peak(&mut self) {
        self.peak = self.memory;
    }

    /// Whether `more` bytes fit, counting everything held now.
    fn fits(&self, more: usize) -> bool {
        self.memory.saturating_add(self.tables).saturating_add(more) <= self.budget
    }
}

impl wasmtime::ResourceLimiter for MemoryBudget {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            // The memory's own declared maximum: a plain failed grow, as wasm specifies.
            return Ok(false);
        }
        let more = desired.saturating_sub(current);
        if !self.fits(more) {
            return Err(BudgetExceeded {
                budget: self.budget,
            }
            .into());
        }
        self.memory += more;
        self.peak = self.peak.max(self.memory);
        Ok(true)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        // Allowed by the budget, refused by the system: a trap, never a silent failure.
        Err(error.context(GrowFailed))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        let more = desired
            .saturating_sub(current)
            .saturating_mul(TABLE_ELEMENT_BYTES);
        if !self.fits(more) {
            return Err(BudgetExceeded {
                budget: self.budget,
            }
            .into());
        }
        self.tables += more;
        Ok(true)
    }

    fn instances(&self) -> usize {
        self.instances
    }
}

/// The level of a `log.log` line, whatever the plugin's world.
#[derive(Clone, Copy)]
enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

impl EvalState {
    /// `counters.consume`, for every world: the bounds, then the store.
    fn consume(
        &mut self,
        counter: String,
        scope: Scope,
        window: Window,
    ) -> wasmtime::Result<Result<(), u64>> {
        self.count_call(CONSUME)?;
        let Some(store) = &self.counters else {
            wasmtime::bail!("counters are only available during an evaluation");
        };
        // The bounds of a declarative limit (a named counter, `max` at least 1, a window of
        // at most a week), plus a cap on the name: the store keeps it for the whole window.
        let refused = if counter.len() > MAX_COUNTER_NAME_BYTES {
            Some(format!(
                "called `{CONSUME}` with a counter name of {} bytes, over the {MAX_COUNTER_NAME_BYTES}-byte cap",
                counter.len()
            ))
        } else if counter.trim().is_empty() {
            Some(format!("called `{CONSUME}` with an empty counter name"))
        } else if window.max == 0 {
            Some(format!(
                "called `{CONSUME}` on `{counter}` with `max` 0; it must be at least 1"
            ))
        } else if window.length_ms == 0 || window.length_ms > MAX_WINDOW_MS {
            Some(format!(
                "called `{CONSUME}` on `{counter}` with a window of {} ms; a window is 1 ms to 7 days",
                window.length_ms
            ))
        } else {
            None
        };
        if let Some(reason) = refused {
            return Err(ImportRefused(reason).into());
        }
        let key = CounterKey::new(counter.as_str(), scope, &self.grant, &self.session);
        let key = if self.shared_counters.contains(&counter) {
            key
        } else {
            key.owned_by(self.plugin.clone())
        };
        Ok(match store.consume(&[(key, window)]) {
            Ok(mut taken) => {
                self.reservations.append(&mut taken);
                Ok(())
            }
            Err(Refusal::Exhausted(exhausted)) => Err(exhausted.retry_after_ms),
            // Fail closed: the plugin's evaluation traps, and the call is denied.
            Err(Refusal::Unavailable(why)) => {
                return Err(wasmtime::Error::msg(format!("counters: {why}")))
            }
        })
    }

    /// `clock.now-ms`, for every world.
    fn now_ms(&mut self) -> wasmtime::Result<u64> {
        self.count_call(NOW_MS)?;
        match &self.counters {
            Some(store) => Ok(store.now_ms()),
            None => wasmtime::bail!("the clock is only available during an evaluation"),
        }
    }

    /// `log.log`, for every world.
    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        self.count_call(LOG)?;
        if message.len() > self.log_budget {
            self.log_budget = 0;
            return Err(LogCapExceeded.into());
        }
        self.log_budget -= message.len();
        let plugin = &*self.plugin;
        let level = match level {
            Level::Debug => {
                tracing::debug!(plugin, "{message}");
                "debug"
            }
            Level::Info => {
                tracing::info!(plugin, "{message}");
                "info"
            }
            Level::Warn => {
                tracing::warn!(plugin, "{message}");
                "warn"
            }
            Level::Error => {
                tracing::error!(plugin, "{message}");
                "error"
            }
        };
        if self.keep_logs {
            self.logs.push(format!("{level}: {message}"));
        }
        Ok(())
    }
}

impl EvalState {
    /// The store and the space of this plugin and grant, during an evaluation.
    fn state_store(&self, import: &str) -> wasmtime::Result<(&dyn CounterStore, StateSpace<'_>)> {
        let Some(store) = &self.counters else {
            wasmtime::bail!("`{import}` is only available during an evaluation");
        };
        let space = StateSpace {
            plugin: &self.plugin,
            grant: &self.grant,
        };
        Ok((&**store, space))
    }

    /// `state.get`. A key over [`MAX_STATE_KEY_BYTES`] has no entry (`set` refuses it).
    fn state_get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        self.count_call(STATE_GET)?;
        if key.len() > MAX_STATE_KEY_BYTES {
            return Ok(None);
        }
        let (store, space) = self.state_store(STATE_GET)?;
        // Fail closed: a store that cannot answer traps the evaluation, and the call is denied.
        store
            .state_get(space, &key)
            .map_err(|e| wasmtime::Error::msg(format!("state: {e}")))
    }

    /// `state.set`: the bounds toolgate checks itself (key length, time to live, the value
    /// alone over the byte bound), then the store's. Every refusal is the plugin's to handle.
    fn state_set(
        &mut self,
        key: String,
        value: String,
        ttl_ms: u64,
    ) -> wasmtime::Result<Result<(), String>> {
        self.count_call(STATE_SET)?;
        let limits = self.state_limits;
        let max_ttl_ms = u64::try_from(limits.max_ttl.as_millis()).unwrap_or(u64::MAX);
        let refused = if key.len() > MAX_STATE_KEY_BYTES {
            Some(format!(
                "a key of {} bytes is over the {MAX_STATE_KEY_BYTES}-byte cap",
                key.len()
            ))
        } else if ttl_ms == 0 || ttl_ms > max_ttl_ms {
            Some(format!(
                "a time to live of {ttl_ms} ms is outside 1 ms to the policy's max_ttl_s ({} s)",
                limits.max_ttl.as_secs()
            ))
        } else if (key.len() + value.len()) as u64 > limits.max_bytes {
            Some(format!(
                "an entry of {} bytes is over the policy's max_bytes ({})",
                key.len() + value.len(),
                limits.max_bytes
            ))
        } else {
            None
        };
        if let Some(reason) = refused {
            return Ok(Err(reason));
        }
        let (store, space) = self.state_store(STATE_SET)?;
        let ttl = std::time::Duration::from_millis(ttl_ms);
        Ok(match store.state_set(space, &key, &value, ttl, &limits) {
            Ok(()) => Ok(()),
            Err(StateError::Refused(why) | StateError::Unavailable(why)) => Err(why),
        })
    }

    /// `state.delete`. A key over [`MAX_STATE_KEY_BYTES`] has no entry to remove.
    fn state_delete(&mut self, key: String) -> wasmtime::Result<()> {
        self.count_call(STATE_DELETE)?;
        if key.len() > MAX_STATE_KEY_BYTES {
            return Ok(());
        }
        let (store, space) = self.state_store(STATE_DELETE)?;
        // Fail closed, as `get`: an entry the plugin meant gone may still be there.
        store
            .state_delete(space, &key)
            .map_err(|e| wasmtime::Error::msg(format!("state: {e}")))
    }
}

impl v0_3::toolgate::policy::state::Host for EvalState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        EvalState::state_get(self, key)
    }

    fn set(
        &mut self,
        key: String,
        value: String,
        ttl_ms: u64,
    ) -> wasmtime::Result<Result<(), String>> {
        EvalState::state_set(self, key, value, ttl_ms)
    }

    fn delete(&mut self, key: String) -> wasmtime::Result<()> {
        EvalState::state_delete(self, key)
    }
}

/// Each world's import traits, over the one implementation above: the interfaces are the
/// same in every version, only their generated types are distinct.
macro_rules! host_imports {
    ($($v:ident),*) => {$(
        impl $v::toolgate::policy::types::Host for EvalState {}

        impl $v::toolgate::policy::counters::Host for EvalState {
            fn consume(
                &mut self,
                counter: String,
                scope: $v::toolgate::policy::counters::Scope,
                window: $v::toolgate::policy::counters::Window,
            ) -> wasmtime::Result<Result<(), u64>> {
                use $v::toolgate::policy::counters::Scope as S;
                let scope = match scope {
                    S::Grant => Scope::Grant,
                    S::Session => Scope::Session,
                    S::Global => Scope::Global,
                };
                let window = Window {
                    max: window.max,
                    length_ms: window.length_ms,
                };
                EvalState::consume(self, counter, scope, window)
            }
        }

        impl $v::toolgate::policy::clock::Host for EvalState {
            fn now_ms(&mut self) -> wasmtime::Result<u64> {
                EvalState::now_ms(self)
            }
        }

        impl $v::toolgate::policy::log::Host for EvalState {
            fn log(
                &mut self,
                level: $v::toolgate::policy::log::Level,
                message: String,
            ) -> wasmtime::Result<()> {
                use $v::toolgate::policy::log::Level as L;
                let level = match level {
                    L::Debug => Level::Debug,
                    L::Info => Level::Info,
                    L::Warn => Level::Warn,
                    L::Error => Level::Error,
                };
                EvalState::log(self, level, message)
            }
        }
    )*};
}
host_imports!(v0_1, v0_2, v0_3);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    const MIB: usize = 1 << 20;

    #[test]
    fn the_budget_covers_every_memory_of_the_instance_together() {
        let mut budget = MemoryBudget::new(10 * MIB, 8);
        // Two memories of 6 MiB each would each fit a per-memory cap of 10 MiB.
        assert!(budget.memory_growing(0, 6 * MIB, None).unwrap());
        let second = budget.memory_growing(0, 6 * MIB, None).unwrap_err();
        assert!(
            second.downcast_ref::<BudgetExceeded>().is_some(),
            "{second}"
        );
        // What is left still fits, in either memory.
        assert!(budget.memory_growing(0, 3 * MIB, None).unwrap());
        assert!(budget.memory_growing(6 * MIB, 7 * MIB, None).unwrap());
        assert!(budget.memory_growing(3 * MIB, 3 * MIB + 1, None).is_err());
        assert_eq!(budget.peak, 10 * MIB);
    }

    #[test]
    fn tables_spend_the_same_budget() {
        let mut budget = MemoryBudget::new(MIB, 8);
        assert!(budget.memory_growing(0, MIB - 64, None).unwrap());
        assert!(budget.table_growing(0, 8, None).unwrap());
        assert!(budget.table_growing(8, 9, None).is_err());
    }

    #[test]
    fn a_declared_maximum_is_a_plain_failed_grow() {
        let mut budget = MemoryBudget::new(10 * MIB, 8);
        assert!(!budget.memory_growing(0, 2 * MIB, Some(MIB)).unwrap());
        assert!(!budget.table_growing(0, 20, Some(10)).unwrap());
    }
}
