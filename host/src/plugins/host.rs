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
    /// The store's resource limits (memory, instances).
    pub limits: StoreLimits,
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
            limits,
            plugin,
            counters: None,
            grant: String::new(),
            session: String::new(),
            reservations: Vec::new(),
            log_budget: 0,
        }
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
