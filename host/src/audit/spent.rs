//! Facts the observers are done with, handed back to be freed on the threads that make them.
//!
//! A decision's facts are allocated on the call's thread (the record, its request id, the
//! parsed arguments) and the observers' threads (the log's writer, the metrics' counter) are
//! the last to hold them. Under glibc's allocator a block freed on another thread than the one
//! that allocated it goes through the allocating thread's arena lock, and the call's thread,
//! whose own frees no longer refill its cache, takes the slow path for every allocation
//! after. On this machine that cost the observed round trip more than the observers' own
//! work. So the observers [`retire`] what they are done with, and each decision [`sweep`]s a
//! few of them on its own thread, where freeing them refills the cache its next allocations
//! draw from.

use super::{DecisionFacts, OutcomeFacts};
use std::sync::{Arc, Mutex};

/// A decision's or an outcome's facts, as the observers queue them.
#[derive(Clone, Debug)]
pub enum Facts {
    /// A decided `tools/call`.
    Decision(Arc<DecisionFacts>),
    /// A forwarded call's fate.
    Outcome(Arc<OutcomeFacts>),
}

/// Retired facts waiting for a call's thread.
static SPENT: Mutex<Vec<Facts>> = Mutex::new(Vec::new());

/// Retired facts kept at most; past it an observer frees them itself (no call is sweeping).
const MAX_SPENT: usize = 4096;

/// How many a sweep frees. A call sweeps twice (at its decision and at its outcome) and its
/// observers retire four (two facts, two observers), so the bin empties after a burst. Few
/// enough that a sweep's blocks fit the allocator's per-thread cache (seven per size).
const PER_SWEEP: usize = 3;

/// Hands `batch` back, to be freed by a call's thread (what does not fit is freed here).
pub fn retire(batch: &mut Vec<Facts>) {
    if let Ok(mut spent) = SPENT.lock() {
        let room = MAX_SPENT.saturating_sub(spent.len()).min(batch.len());
        spent.extend(batch.drain(..room));
    }
    batch.clear();
}

/// Frees a few retired facts on this thread. Never waits: if an observer is retiring a batch,
/// the next call sweeps instead.
pub fn sweep() {
    let mut taken: [Option<Facts>; PER_SWEEP] = Default::default();
    if let Ok(mut spent) = SPENT.try_lock() {
        for slot in &mut taken {
            *slot = spent.pop();
        }
    }
    // Dropped here, outside the lock.
    drop(taken);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retired_facts_are_freed_by_sweeps_and_the_bin_is_bounded() {
        let facts = Arc::new(super::super::tests::decision(1));
        let mut batch: Vec<Facts> = (0..MAX_SPENT + 10)
            .map(|_| Facts::Decision(facts.clone()))
            .collect();
        retire(&mut batch);
        assert!(batch.is_empty());
        // Other tests may retire and sweep meanwhile: the bound holds whatever they do.
        assert!(Arc::strong_count(&facts) <= MAX_SPENT + 1);
        for _ in 0..MAX_SPENT / PER_SWEEP + 1 {
            sweep();
        }
        // Sweeps may lose a `try_lock` to another test's retire; a few more settle it.
        for _ in 0..1000 {
            if Arc::strong_count(&facts) == 1 {
                break;
            }
            sweep();
        }
        assert_eq!(Arc::strong_count(&facts), 1);
    }
}
