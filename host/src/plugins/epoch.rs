//! The epoch ticker: the `plugin-epoch` thread that advances the engine's epoch, which is
//! what interrupts a plugin past its `timeout` (the deadline `PluginPre::arm_for` sets). It
//! ticks only while a store armed for guest code may still be running, and otherwise parks:
//! ticking every [`EPOCH_TICK`] for ever woke an idle gateway 200 times a second (and a
//! gateway without plugins too).
//!
//! It fails closed. Every store is armed through `PluginPre::arm_for`, which calls
//! [`EpochTicker::keep_awake`] right after setting the deadline: the ticker then ticks at
//! least until that deadline has passed, whether it was asleep or not, so a plugin that loops
//! for ever is still interrupted. If it ticks longer than needed, nothing is lost but a few
//! wake-ups.

use super::error::PluginError;
use super::limits::EPOCH_TICK;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::Thread;
use std::time::Duration;
use wasmtime::{Engine, EngineWeak};

/// How long the parked ticker waits before it looks whether its engine still exists (the
/// thread ends with the engine). Only that: arming wakes it at once. The tests make it long,
/// so that an arming that failed to wake it shows as a hang (caught by their bounded waits)
/// instead of a one-second delay.
const IDLE_RECHECK: Duration = if cfg!(test) {
    Duration::from_secs(60)
} else {
    Duration::from_secs(1)
};

/// The handle to a runtime's `plugin-epoch` thread, shared (cloned) by the runtime and every
/// `PluginPre` of it, as the engine is.
#[derive(Clone)]
pub(crate) struct EpochTicker {
    state: Arc<State>,
    /// The ticker thread, to unpark.
    thread: Thread,
}

/// What the arming side and the ticker thread share.
#[derive(Default)]
struct State {
    /// Times the ticker has called `increment_epoch`. Nothing else may call it: the engine's
    /// epoch is then `tick` or, between the two increments, `tick + 1`.
    tick: AtomicU64,
    /// The ticker keeps ticking while `tick` is below this.
    awake_until: AtomicU64,
    /// The ticker is parked, or about to park: an arming must unpark it.
    sleeping: AtomicBool,
}

impl EpochTicker {
    /// Starts the `plugin-epoch` thread for `engine`; it ends once the engine is dropped. It
    /// starts asleep: nothing is armed yet.
    pub(crate) fn start(engine: &Engine) -> Result<Self, PluginError> {
        let state = Arc::new(State::default());
        let shared = state.clone();
        let engine = engine.weak();
        let thread = std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(move || shared.run(engine))
            .map_err(|e| PluginError::Engine(e.to_string()))?
            .thread()
            .clone();
        Ok(Self { state, thread })
    }

    /// Keeps the epoch advancing until a deadline of `ticks` set just now has passed. Called
    /// on every arming of a store, so on every plugin call: when the ticker is awake this is
    /// three atomic operations, no clock read and no system call.
    ///
    /// Why it is enough (call it after `set_epoch_deadline(ticks)`, never before): that set
    /// the deadline to `E + ticks`, `E` the engine's epoch then. `tick` is read after, and
    /// the epoch is at most `tick + 1` (see [`State::tick`]), so `E <= tick + 1`. The ticker
    /// goes on until its `tick` reaches `tick + ticks + 2`, when the epoch is past
    /// `E + ticks`: the deadline always comes, with a tick to spare.
    ///
    /// How soon: the epoch moves only when this thread increments it, never by catching up
    /// on time it slept, and each increment is followed by a sleep of [`EPOCH_TICK`]. So a
    /// store armed while the ticker was awake gets at least `ticks - 1` ticks of wall time
    /// (the first increment may come at once, as it always could), and one armed while it
    /// slept at least `ticks` (the ticker waits a whole tick after waking).
    pub(crate) fn keep_awake(&self, ticks: u64) {
        let state = &*self.state;
        let until = state
            .tick
            .load(SeqCst)
            .saturating_add(ticks)
            .saturating_add(2);
        // Store, then load, both SeqCst, against the ticker's store of `sleeping`, then load
        // of `awake_until` (Dekker): either it sees this `awake_until` before parking, or
        // this sees `sleeping` and unparks it (a park right after an unpark returns at once).
        state.awake_until.fetch_max(until, SeqCst);
        if state.sleeping.load(SeqCst) {
            self.thread.unpark();
        }
    }

    /// Whether the ticker is parked (or about to park), for tests.
    #[cfg(test)]
    pub(crate) fn is_sleeping(&self) -> bool {
        self.state.sleeping.load(SeqCst)
    }

    /// Times the ticker advanced the epoch, for tests.
    #[cfg(test)]
    pub(crate) fn ticks(&self) -> u64 {
        self.state.tick.load(SeqCst)
    }
}

impl State {
    fn awake(&self) -> bool {
        self.tick.load(SeqCst) < self.awake_until.load(SeqCst)
    }

    /// The ticker's loop, until the engine is dropped (it holds the engine only while
    /// incrementing it).
    fn run(&self, engine: EngineWeak) {
        while let Some(strong) = engine.upgrade() {
            if self.awake() {
                strong.increment_epoch();
                self.tick.fetch_add(1, SeqCst);
                drop(strong);
                std::thread::sleep(EPOCH_TICK);
                continue;
            }
            drop(strong);
            // `sleeping` is stored before `awake_until` is looked at again: see `keep_awake`.
            self.sleeping.store(true, SeqCst);
            if !self.awake() {
                // Returns on an unpark, on the timeout, or spuriously: each case goes round
                // the loop again and finds out what there is to do.
                std::thread::park_timeout(IDLE_RECHECK);
            }
            self.sleeping.store(false, SeqCst);
            if self.awake() {
                // A whole tick before the first increment, so that a store armed while the
                // ticker slept gets all its ticks (see `keep_awake`).
                std::thread::sleep(EPOCH_TICK);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::tests::within_10s;

    fn engine() -> Engine {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        Engine::new(&config).unwrap()
    }

    /// A runtime that nothing has armed never ticks: its ticker parks, and a spurious wake-up
    /// does not make it tick.
    #[test]
    fn a_runtime_with_nothing_armed_lets_the_ticker_sleep() {
        let runtime = crate::plugins::PluginRuntime::new(None).unwrap();
        let ticker = &runtime.ticker;
        assert!(
            within_10s(|| ticker.is_sleeping()),
            "the ticker never slept"
        );
        ticker.thread.unpark();
        std::thread::sleep(EPOCH_TICK * 4);
        assert!(within_10s(|| ticker.is_sleeping()));
        assert_eq!(ticker.ticks(), 0);
    }

    /// Arming wakes the parked ticker (which would otherwise sleep for `IDLE_RECHECK`), it
    /// ticks past the deadline with its two spare ticks, and parks again.
    #[test]
    fn arming_wakes_the_sleeping_ticker_until_the_deadline_has_passed() {
        let engine = engine();
        let ticker = EpochTicker::start(&engine).unwrap();
        assert!(within_10s(|| ticker.is_sleeping()));
        ticker.keep_awake(3);
        assert!(within_10s(|| ticker.ticks() >= 5), "arming did not wake it");
        assert!(
            within_10s(|| ticker.is_sleeping()),
            "it did not sleep again"
        );
        assert_eq!(ticker.ticks(), 5);
        // Again, from where it stopped.
        ticker.keep_awake(1);
        assert!(within_10s(|| ticker.ticks() >= 8), "arming did not wake it");
        assert!(within_10s(|| ticker.is_sleeping()));
        assert_eq!(ticker.ticks(), 8);
    }

    /// The thread ends once its engine is gone (here on a wake-up; otherwise after at most
    /// `IDLE_RECHECK`).
    #[test]
    fn the_ticker_thread_ends_with_its_engine() {
        let engine = engine();
        let ticker = EpochTicker::start(&engine).unwrap();
        assert!(within_10s(|| ticker.is_sleeping()));
        drop(engine);
        ticker.thread.unpark();
        // The thread's own reference to the state goes with it.
        assert!(within_10s(|| Arc::strong_count(&ticker.state) == 1));
    }
}
