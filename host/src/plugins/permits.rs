//! How many plugin evaluations may run at once, in one runtime.
//!
//! Every evaluation holds an instance, and every instance holds one of the pooling
//! allocator's component-instance slots (256 per runtime) for as long as it lives. In `serve`
//! many workers evaluate at once; without a bound past the pool, a burst would exhaust the
//! slots and calls would fail at instantiation, in whatever order they happened to come.
//! wasmtime's `fast_instantiation` example advises a semaphore in front of the pool: an
//! evaluation first takes a permit here, waiting at most its plugin's `timeout`, and a call
//! that gets none is denied (fail closed) before it touches an instance.
//!
//! Evaluations are synchronous (they run on the calling thread, inside `block_in_place` under
//! tokio), so this is a plain counting semaphore over a mutex and a condition variable.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Evaluations that may run at once by default.
///
/// 64 of the pool's 256 slots: the other 192 are left to the instances that wait between
/// calls (up to sixteen warm per `pooled` plugin, up to sixteen queued for teardown) and to
/// load-time calls. More lets more calls run in parallel, which
/// only helps up to the number of cores, and leaves fewer slots for idle instances; fewer
/// makes bursts wait (up to each plugin's timeout) for a permit.
pub const DEFAULT_MAX_CONCURRENT_EVALUATIONS: usize = 64;

/// A counting semaphore: at most `max` permits out at once.
#[derive(Debug)]
pub(crate) struct Permits {
    max: usize,
    state: Mutex<State>,
    returned: Condvar,
}

/// The permits out, and the evaluations waiting for one.
#[derive(Debug, Default)]
struct State {
    taken: usize,
    /// Kept so that a permit given back wakes a waiter only when there is one: `notify_one`
    /// is a futex syscall whether or not anyone waits, and that was a syscall on every call.
    waiting: usize,
}

/// One evaluation's permit, given back when dropped (on every path, unwinding included).
#[must_use = "the permit is given back as soon as it is dropped"]
#[derive(Debug)]
pub(crate) struct Permit<'a> {
    permits: &'a Permits,
}

impl Permits {
    /// `max` permits; at least one, so that evaluations can run at all.
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            state: Mutex::new(State::default()),
            returned: Condvar::new(),
        }
    }

    /// How many permits there are.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Each count is only ever changed by one statement, so a panic elsewhere while the
        // lock was held cannot have left it half-updated.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A permit, waiting up to `timeout` for one to be given back; `None` if none was.
    pub(crate) fn acquire(&self, timeout: Duration) -> Option<Permit<'_>> {
        let mut state = self.state();
        if state.taken < self.max {
            // The usual case: no clock read, no wait.
            state.taken += 1;
            return Some(Permit { permits: self });
        }
        let deadline = Instant::now().checked_add(timeout);
        while state.taken >= self.max {
            let left = match deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                // A timeout past the end of time: wait without one.
                None => Duration::MAX,
            };
            if left.is_zero() {
                return None;
            }
            state.waiting += 1;
            state = self
                .returned
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            state.waiting -= 1;
        }
        state.taken += 1;
        Some(Permit { permits: self })
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut state = self.permits.state();
        state.taken -= 1;
        if state.waiting > 0 {
            self.permits.returned.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;
    use std::sync::Arc;

    /// Long enough never to run out in a test that expects a permit.
    const FOREVER: Duration = Duration::from_secs(3600);

    #[test]
    fn at_most_max_permits_are_out_and_a_dropped_one_comes_back() {
        let permits = Permits::new(2);
        let a = permits.acquire(Duration::ZERO).unwrap();
        let _b = permits.acquire(Duration::ZERO).unwrap();
        assert!(permits.acquire(Duration::ZERO).is_none());
        drop(a);
        assert!(permits.acquire(Duration::ZERO).is_some());
    }

    #[test]
    fn a_waiter_past_its_timeout_gets_none() {
        let permits = Permits::new(1);
        let _held = permits.acquire(Duration::ZERO).unwrap();
        // Held for the whole wait: the waiter must give up, however long the wait really took.
        assert!(permits.acquire(Duration::from_millis(1)).is_none());
        assert!(permits.acquire(Duration::ZERO).is_none());
    }

    #[test]
    fn a_permit_comes_back_when_its_holder_unwinds() {
        let permits = Permits::new(1);
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _permit = permits.acquire(Duration::ZERO).unwrap();
            panic!("a trap the host did not catch");
        }));
        assert!(unwound.is_err());
        assert!(permits.acquire(Duration::ZERO).is_some());
    }

    #[test]
    fn a_waiter_is_woken_by_a_returned_permit() {
        let permits = Arc::new(Permits::new(1));
        let held = permits.acquire(Duration::ZERO).unwrap();
        let (waiting, started) = channel();
        let waiter = {
            let permits = permits.clone();
            std::thread::spawn(move || {
                waiting.send(()).unwrap();
                permits.acquire(FOREVER).is_some()
            })
        };
        started.recv().unwrap();
        drop(held);
        assert!(waiter.join().unwrap());
    }

    /// A permit given back while an evaluation waits wakes it (given back with nobody
    /// waiting, it wakes nobody: no syscall).
    #[test]
    fn a_permit_given_back_wakes_the_evaluation_waiting_for_it() {
        let permits = Arc::new(Permits::new(1));
        let held = permits.acquire(Duration::ZERO).unwrap();
        let waiter = {
            let permits = permits.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let got = permits.acquire(Duration::from_secs(20)).is_some();
                (got, started.elapsed())
            })
        };
        while permits.state().waiting == 0 {
            std::thread::yield_now();
        }
        drop(held);
        let (got, waited) = waiter.join().unwrap();
        assert!(got);
        assert!(
            waited < Duration::from_secs(10),
            "woken only by its timeout: {waited:?}"
        );
        assert_eq!(permits.state().waiting, 0);
    }

    #[test]
    fn zero_permits_means_one() {
        let permits = Permits::new(0);
        assert_eq!(permits.max(), 1);
        assert!(permits.acquire(Duration::ZERO).is_some());
    }
}
