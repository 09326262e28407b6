//! The host side of the plugin imports: one small implementation per WIT interface, over the
//! state of one evaluation.
//!
//! - `counters`: the gateway's own [`CounterStore`], scoped to the call's grant and session.
//!   Every unit taken is recorded, so that the caller can refund the whole evaluation's units
//!   when the call is refused or never runs.
//! - `clock`: the gateway's clock, the same one the counters read (simulated in tests).
//! - `log`: into `tracing`, capped in bytes per evaluation; past the cap the plugin traps.

use super::bindings::toolgate::policy::{clock, counters, log, types};
use crate::counters::{CounterKey, CounterStore, Reservation, Scope, Window};
use std::sync::Arc;
use wasmtime::StoreLimits;

/// What one evaluation may touch. Lives in the wasmtime `Store`.
pub struct EvalState {
    /// The store's resource limits (memory, instances), watching how much memory it uses.
    pub limits: MemoryWatch,
    /// The plugin's name, for logs.
    pub plugin: Arc<str>,
    /// Counters, or `None` while the store is idle between evaluations.
    pub counters: Option<Arc<dyn CounterStore>>,
    /// The calling grant.
    pub grant: String,
    /// The calling session.
    pub session: String,
    /// Units the plugin took during this evaluation.
    pub reservations: Vec<Reservation>,
    /// Log bytes left in this evaluation.
    pub log_budget: usize,
}

impl EvalState {
    pub(crate) fn idle(plugin: Arc<str>, limits: StoreLimits) -> Self {
        Self {
            limits: MemoryWatch {
                limits,
                bytes: 0,
                peak: 0,
            },
            plugin,
            counters: None,
            grant: String::new(),
            session: String::new(),
            reservations: Vec::new(),
            log_budget: 0,
        }
    }
}

/// [`StoreLimits`], plus the linear memory the store holds and its peak since the last reset.
pub struct MemoryWatch {
    limits: StoreLimits,
    bytes: usize,
    /// The most linear memory the store held since [`MemoryWatch::reset_peak`].
    pub peak: usize,
}

impl MemoryWatch {
    /// Starts a new peak from the memory held now (before an evaluation).
    pub fn reset_peak(&mut self) {
        self.peak = self.bytes;
    }
}

impl wasmtime::ResourceLimiter for MemoryWatch {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        if allowed {
            self.bytes = self.bytes.saturating_add(desired - current);
            self.peak = self.peak.max(self.bytes);
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

impl types::Host for EvalState {}

impl counters::Host for EvalState {
    fn consume(
        &mut self,
        counter: String,
        scope: counters::Scope,
        window: counters::Window,
    ) -> wasmtime::Result<Result<(), u64>> {
        let Some(store) = &self.counters else {
            wasmtime::bail!("counters are only available during an evaluation");
        };
        if window.max == 0 || window.length_ms == 0 || window.length_ms > 7 * 86_400_000 {
            return Ok(Err(window.length_ms.max(1)));
        }
        let scope = match scope {
            counters::Scope::Grant => Scope::Grant,
            counters::Scope::Session => Scope::Session,
            counters::Scope::Global => Scope::Global,
        };
        let key = CounterKey::new(&counter, scope, &self.grant, &self.session);
        let window = Window {
            max: window.max,
            length_ms: window.length_ms,
        };
        Ok(match store.consume(&[(key, window)]) {
            Ok(mut taken) => {
                self.reservations.append(&mut taken);
                Ok(())
            }
            Err(exhausted) => Err(exhausted.retry_after_ms),
        })
    }
}

impl clock::Host for EvalState {
    fn now_ms(&mut self) -> wasmtime::Result<u64> {
        match &self.counters {
            Some(store) => Ok(store.now_ms()),
            None => wasmtime::bail!("the clock is only available during an evaluation"),
        }
    }
}

impl log::Host for EvalState {
    fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        if message.len() > self.log_budget {
            self.log_budget = 0;
            wasmtime::bail!(
                "log cap exceeded: a plugin may log {} bytes per evaluation",
                super::LOG_BYTES_PER_EVALUATION
            );
        }
        self.log_budget -= message.len();
        let plugin = &*self.plugin;
        match level {
            log::Level::Debug => tracing::debug!(plugin, "{message}"),
            log::Level::Info => tracing::info!(plugin, "{message}"),
            log::Level::Warn => tracing::warn!(plugin, "{message}"),
            log::Level::Error => tracing::error!(plugin, "{message}"),
        }
        Ok(())
    }
}
