//! Instances: a [`PluginPre`] rehydrated into a store and an instance, kept idle between
//! calls, and made and torn down off the request path.
//!
//! A `fresh` plugin keeps [`PREPARED`] never-used instances ready; a `pooled` one keeps up to
//! [`POOLED_IDLE`] warm instances, one grant each. The chores thread does the slow parts
//! (instantiating, and resetting a used memory slot on drop), so that a call waits only for
//! the evaluation itself unless calls outrun it.

use super::bindings::WorldInstance;
use super::error::{EvalFailure, PluginError};
use super::host::EvalState;
use super::limits::{Isolation, KEEP_RESIDENT};
use super::load::PluginPre;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use wasmtime::Store;

/// Never-used instances a `fresh` plugin keeps ready, instantiated in the background. Each
/// holds a pool slot while it waits.
const PREPARED: usize = 2;

/// Warm instances a `pooled` plugin keeps, over all grants; past this the least recently
/// used is torn down. An instance serves one grant only, so a plugin used by many grants
/// would otherwise keep an instance (and a pool slot) per grant. More keeps more grants warm
/// and more pool slots (256 in all) taken.
const POOLED_IDLE: usize = 16;

/// Used instances queued for teardown, at most; past this a call tears its own down (so
/// that calls faster than the background thread cannot exhaust the instance pool).
const DISCARDS_QUEUED: usize = 16;

/// An instance with its store: ready (never used) for a fresh plugin, warm for a pooled one.
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

/// Work kept off the request path.
enum Chore {
    /// Instantiate never-used instances until the plugin has [`PREPARED`] ready.
    Prepare(Weak<Instances>),
    /// Drop a used instance: resetting its memory slot costs several µs.
    Discard(Box<Warm>),
}

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
    for chore in chores {
        match chore {
            Chore::Discard(warm) => {
                drop(warm);
                discards.fetch_sub(1, Ordering::AcqRel);
            }
            Chore::Prepare(plugin) => {
                let Some(plugin) = plugin.upgrade() else {
                    continue;
                };
                while plugin.ready_len() < PREPARED {
                    match plugin.pre.rehydrate() {
                        Ok(warm) => plugin.idle().push(warm),
                        Err(reason) => {
                            tracing::warn!(plugin = %plugin.pre.name, %reason, "cannot prepare an instance");
                            break;
                        }
                    }
                }
                plugin.preparing.store(false, Ordering::Release);
            }
        }
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

/// One plugin's instances: its [`PluginPre`], and the instances waiting for a call.
pub(crate) struct Instances {
    pub(crate) pre: PluginPre,
    isolation: Isolation,
    /// Never used (fresh), or warm for one grant each (pooled), least recently used first.
    idle: Mutex<Vec<Warm>>,
    me: Weak<Instances>,
    chores: Chores,
    /// A `Prepare` chore is queued or running.
    preparing: AtomicBool,
}

impl Instances {
    /// The instances of `pre`, none yet: [`Instances::prepare`] asks for the first ones.
    pub(crate) fn new(pre: PluginPre, isolation: Isolation, chores: Chores) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            pre,
            isolation,
            idle: Mutex::new(Vec::new()),
            me: me.clone(),
            chores,
            preparing: AtomicBool::new(false),
        })
    }

    fn idle(&self) -> MutexGuard<'_, Vec<Warm>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ready_len(&self) -> usize {
        self.idle().len()
    }

    /// A fresh plugin: asks the background thread to top up the ready instances.
    pub(crate) fn prepare(&self) {
        if self.isolation == Isolation::Fresh
            && !self.preparing.swap(true, Ordering::AcqRel)
            && self
                .chores
                .queue
                .send(Chore::Prepare(self.me.clone()))
                .is_err()
        {
            self.preparing.store(false, Ordering::Release);
        }
    }

    /// An idle instance that may serve `grant` (never used, or warm from `grant`'s own calls),
    /// else one rehydrated here and now. It is `grant`'s from now on.
    pub(crate) fn take(&self, grant: &str) -> Result<Warm, EvalFailure> {
        let idle = {
            let mut idle = self.idle();
            idle.iter()
                .rposition(|warm| warm.grant.as_deref().is_none_or(|g| g == grant))
                .map(|i| idle.remove(i))
        };
        self.prepare();
        let mut warm = match idle {
            Some(warm) => warm,
            None => self.pre.rehydrate()?,
        };
        if warm.grant.is_none() {
            warm.grant = Some(grant.to_owned());
        }
        Ok(warm)
    }

    /// After a call: a pooled instance that may serve again goes back, a used one is torn
    /// down on the background thread, and one that failed (`reusable` false: a trap, a
    /// limit) is torn down here.
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
            || self
                .chores
                .queue
                .send(Chore::Discard(Box::new(warm)))
                .is_err()
        {
            // Torn down here (in the `send` error, if that is what failed).
            discards.fetch_sub(1, Ordering::AcqRel);
        }
    }
}
