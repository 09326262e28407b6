//! Instances: a [`PluginPre`] rehydrated into a store and an instance, and for a pooled
//! plugin kept idle between calls.
//!
//! A `fresh` plugin's instance is made, used and torn down by the call's own thread. A
//! `pooled` one keeps up to [`POOLED_IDLE`] warm instances, one grant each; the chores thread
//! tears down the ones it evicts or recycles.
//!
//! Why a fresh instance never crosses threads: the memory of an instance made on one core
//! and used or torn down on another is cold where it is touched, and each hand-over wakes a
//! thread. A background thread that prepared fresh instances and tore them down made a
//! decision take 23–26 µs back to back on 2 vCPUs, where the call's thread doing all of it
//! takes 11–13 µs (BENCHMARKS.md, "Fresh instances on the call's thread").
//!
//! A thread with something more urgent to do after a decision (stdio's client thread
//! forwards the call) can still keep the teardown off the call's path without handing the
//! instance over: it opts in with [`defer_teardown_on_this_thread`], and its used fresh
//! instances wait, at most [`MAX_DEFERRED`] of them, until it calls [`tear_down_deferred`]
//! after its write.

use super::bindings::WorldInstance;
use super::error::{EvalFailure, PluginError};
use super::host::EvalState;
use super::limits::{Isolation, KEEP_RESIDENT};
use super::load::PluginPre;
use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use wasmtime::Store;

/// Warm instances a `pooled` plugin keeps, over all grants; past this the least recently
/// used is torn down. An instance serves one grant only, so a plugin used by many grants
/// would otherwise keep an instance (and a pool slot) per grant. More keeps more grants warm
/// and more pool slots (256 in all) taken.
const POOLED_IDLE: usize = 16;

/// Used instances queued for teardown, at most; past this a call tears its own down (so
/// that calls faster than the background thread cannot exhaust the instance pool).
const DISCARDS_QUEUED: usize = 16;

/// Used fresh instances a thread that defers their teardown keeps at most (each holds a pool
/// slot); past it, one is torn down at once.
pub(crate) const MAX_DEFERRED: usize = 4;

thread_local! {
    /// Used fresh instances waiting for [`tear_down_deferred`]: `None` on a thread that tears
    /// them down at once (every thread, unless it opted in).
    static DEFERRED: RefCell<Option<Vec<Warm>>> = const { RefCell::new(None) };
}

/// From now on, this thread's used fresh instances wait for its next [`tear_down_deferred`]
/// instead of being torn down at the end of their call. What waits when the thread ends is
/// torn down then.
pub fn defer_teardown_on_this_thread() {
    DEFERRED.with(|deferred| {
        deferred
            .borrow_mut()
            .get_or_insert_with(|| Vec::with_capacity(MAX_DEFERRED));
    });
}

/// Tears down this thread's used fresh instances that wait (see
/// [`defer_teardown_on_this_thread`]).
pub fn tear_down_deferred() {
    // A store's teardown runs no guest code and never comes back here.
    let _ = DEFERRED.try_with(|deferred| deferred.borrow_mut().as_mut().map(Vec::clear));
}

/// `warm`, kept for this thread's [`tear_down_deferred`] if it defers teardown and has room;
/// else handed back, to be torn down at once.
fn defer_teardown(warm: Warm) -> Option<Warm> {
    let mut warm = Some(warm);
    let _ = DEFERRED.try_with(|deferred| {
        if let Some(waiting) = deferred.borrow_mut().as_mut() {
            if waiting.len() < MAX_DEFERRED {
                waiting.extend(warm.take());
            }
        }
    });
    warm
}

/// How many used fresh instances wait on this thread.
#[cfg(test)]
pub(crate) fn deferred_len() -> usize {
    DEFERRED.with(|deferred| deferred.borrow().as_ref().map_or(0, Vec::len))
}

/// An instance with its store: new for a fresh plugin's call, warm for a pooled one.
pub(crate) struct Warm {
    pub(crate) store: Store<EvalState>,
    /// The instance, with its world's call record (its strings reused from call to call).
    pub(crate) instance: WorldInstance,
    pub(crate) calls: u32,
    /// The grant it serves: set by its first call, `None` until then. It never serves another.
    pub(crate) grant: Option<String>,
}

/// The queue to the background thread, and how many discards it holds.
#[derive(Clone)]
pub(crate) struct Chores {
    queue: Sender<Chore>,
    discards: Arc<AtomicUsize>,
}

/// Work kept off the request path: a pooled instance to drop (resetting its memory slot costs
/// several µs).
struct Chore(Box<Warm>);

impl Chores {
    /// Starts the `plugin-chores` thread; it ends when every [`Chores`] is dropped.
    pub(crate) fn start() -> Result<Self, PluginError> {
        let (queue, todo) = channel();
        let chores = Chores {
            queue,
            discards: Arc::default(),
        };
        let discards = chores.discards.clone();
        std::thread::Builder::new()
            .name("plugin-chores".into())
            .spawn(move || do_chores(todo, discards))
            .map_err(|e| PluginError::Engine(e.to_string()))?;
        Ok(chores)
    }
}

fn do_chores(chores: Receiver<Chore>, discards: Arc<AtomicUsize>) {
    for Chore(warm) in chores {
        drop(warm);
        discards.fetch_sub(1, Ordering::AcqRel);
    }
}

impl PluginPre {
    /// Rehydrates the pre-instantiated component into a new instance in its own store, with
    /// nothing from any earlier evaluation: the step every evaluation of a `fresh` plugin
    /// starts from, and every warm instance of a `pooled` one.
    pub(crate) fn rehydrate(&self) -> Result<Warm, EvalFailure> {
        let mut store = self.new_store();
        // Not the call's deadline: `evaluate` arms that after taking the instance.
        self.arm_for_load(&mut store)?;
        let instance = self.instantiate(&mut store)?;
        Ok(Warm {
            store,
            instance,
            calls: 0,
            grant: None,
        })
    }
}

/// One plugin's instances: its [`PluginPre`], and a pooled plugin's instances waiting for a
/// call.
pub(crate) struct Instances {
    pub(crate) pre: PluginPre,
    isolation: Isolation,
    /// Warm for one grant each (pooled only), least recently used first.
    idle: Mutex<Vec<Warm>>,
    chores: Chores,
}

impl Instances {
    /// The instances of `pre`, none yet.
    pub(crate) fn new(pre: PluginPre, isolation: Isolation, chores: Chores) -> Arc<Self> {
        Arc::new(Self {
            pre,
            isolation,
            idle: Mutex::new(Vec::new()),
            chores,
        })
    }

    fn idle(&self) -> MutexGuard<'_, Vec<Warm>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh plugin: a new instance, made here and now. A pooled one: an idle instance warm
    /// from `grant`'s own calls, else a new one. It is `grant`'s from now on.
    pub(crate) fn take(&self, grant: &str) -> Result<Warm, EvalFailure> {
        let idle = match self.isolation {
            Isolation::Fresh => None,
            Isolation::Pooled => {
                let mut idle = self.idle();
                idle.iter()
                    .rposition(|warm| warm.grant.as_deref() == Some(grant))
                    .map(|i| idle.remove(i))
            }
        };
        let mut warm = match idle {
            Some(warm) => warm,
            None => self.pre.rehydrate()?,
        };
        // A fresh instance serves this call only: no grant to remember.
        if self.isolation == Isolation::Pooled && warm.grant.is_none() {
            warm.grant = Some(grant.to_owned());
        }
        Ok(warm)
    }

    /// After a call: a fresh instance is torn down on the thread that made it, here or after
    /// the thread's write if it defers teardown (a small one that did not fail). A pooled
    /// instance that may serve again goes back; one evicted or recycled is torn down on the
    /// background thread, and one that failed (`reusable` false: a trap, a limit) is torn
    /// down here.
    ///
    /// Why a failed one is not queued: it may hold all the memory its cap allows (a memory
    /// bomb), and each pool slot keeps up to 4 MiB resident after teardown. When the
    /// background thread fell behind a flood of failing calls, up to [`DISCARDS_QUEUED`]
    /// such instances waited at once, each in a slot of its own, and the gateway stayed
    /// ~70 MiB larger afterwards. Tearing it down on the (deny) path costs that call a reset
    /// of its memory, and keeps the slots a hostile plugin touches to the few in flight.
    ///
    /// A used instance whose memory outgrew what a slot keeps resident ([`KEEP_RESIDENT`]) is
    /// torn down here too, for the same reason: queued behind a busy background thread, such
    /// instances each took a slot of their own, and each slot then stayed 4 MiB resident (the
    /// gateway grew in 4 MiB steps under a flood of 2 MiB results). Small instances, the
    /// usual case, still go to the background thread.
    pub(crate) fn release(&self, mut warm: Warm, reusable: bool) {
        if !reusable {
            drop(warm);
            return;
        }
        if self.isolation == Isolation::Fresh {
            // A large one at once, for the reason below.
            let small = warm.store.data().limits.memory() <= KEEP_RESIDENT;
            drop(if small {
                defer_teardown(warm)
            } else {
                Some(warm)
            });
            return;
        }
        warm.calls += 1;
        if self.isolation == Isolation::Pooled && warm.calls < self.pre.limits.recycle_after {
            let mut idle = self.idle();
            idle.push(warm);
            if idle.len() <= POOLED_IDLE {
                return;
            }
            warm = idle.remove(0);
        }
        if warm.store.data().limits.memory() > KEEP_RESIDENT {
            drop(warm);
            return;
        }
        let discards = &self.chores.discards;
        if discards.fetch_add(1, Ordering::AcqRel) >= DISCARDS_QUEUED
            || self.chores.queue.send(Chore(Box::new(warm))).is_err()
        {
            // Torn down here (in the `send` error, if that is what failed).
            discards.fetch_sub(1, Ordering::AcqRel);
        }
    }
}
