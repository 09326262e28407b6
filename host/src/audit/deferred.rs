//! Reporting after the write. A stdio thread reports a call's decision only once it has
//! forwarded the call (and a reply's outcome once it has written the reply), so that the
//! observers' share of the call's work (queueing the facts, freeing spent ones) runs while
//! the upstream or the client is busy with the message, not before it is sent.
//!
//! A thread opts in ([`defer_on_this_thread`]) and then calls [`report_deferred`] after each
//! message it handles; every other thread reports at once. A thread never keeps more than
//! [`MAX_WAITING`] reports, and a thread that ends reports what it kept.
//!
//! `serve` reports at once: reporting from its workers' park hook (when a worker goes idle)
//! did not show in its latency beyond the noise (BENCHMARKS.md).
//!
//! The facts keep the times they were made at, so a decision's `time` is still its
//! decision's; only its place in the log can come after lines that other threads write about
//! the same call: its outcome's, or its shadow decision's.

use super::{DecisionFacts, Observer, OutcomeFacts};
use std::cell::RefCell;
use std::sync::Arc;

enum Report {
    Decision(Arc<dyn Observer>, Arc<DecisionFacts>),
    Outcome(Arc<dyn Observer>, Arc<OutcomeFacts>),
}

/// Reports a thread keeps at most: past it, they are all reported at once.
const MAX_WAITING: usize = 64;

impl Report {
    fn report(self) {
        match self {
            Report::Decision(observer, facts) => observer.decision(&facts),
            Report::Outcome(observer, facts) => observer.outcome(&facts),
        }
    }
}

/// What a thread has not reported yet; `None` where reports are not deferred.
struct Waiting(Option<Vec<Report>>);

impl Drop for Waiting {
    /// A thread that ends reports what it kept.
    fn drop(&mut self) {
        for report in self.0.take().unwrap_or_default() {
            report.report();
        }
    }
}

thread_local! {
    static WAITING: RefCell<Waiting> = const { RefCell::new(Waiting(None)) };
}

/// From now on, this thread's decisions and outcomes wait for [`report_deferred`].
pub fn defer_on_this_thread() {
    WAITING.with(|w| {
        let mut w = w.borrow_mut();
        if w.0.is_none() {
            w.0 = Some(Vec::with_capacity(4));
        }
    });
}

/// Reports what this thread deferred, and frees a few spent facts ([`super::sweep`]).
pub fn report_deferred() {
    // Taken only when there is something to report: the list keeps its capacity otherwise.
    let Some(mut reports) = WAITING
        .try_with(|w| {
            let mut w = w.borrow_mut();
            let waiting = w.0.as_mut().filter(|waiting| !waiting.is_empty())?;
            Some(std::mem::take(waiting))
        })
        .ok()
        .flatten()
    else {
        return;
    };
    super::sweep();
    for report in reports.drain(..) {
        report.report();
    }
    // The emptied list goes back, so that the next call's report does not grow a new one.
    let _ = WAITING.try_with(|w| {
        if let Some(waiting) = w.borrow_mut().0.as_mut() {
            if waiting.is_empty() {
                *waiting = reports;
            }
        }
    });
}

/// Reports a decision: at once, or at this thread's next [`report_deferred`].
pub fn report_decision(observer: &Arc<dyn Observer>, facts: DecisionFacts) {
    let facts = Arc::new(facts);
    if !deferred(|| Report::Decision(observer.clone(), facts.clone())) {
        super::sweep();
        observer.decision(&facts);
    }
}

/// Reports an outcome: at once, or at this thread's next [`report_deferred`].
pub fn report_outcome(observer: &Arc<dyn Observer>, facts: OutcomeFacts) {
    let facts = Arc::new(facts);
    if !deferred(|| Report::Outcome(observer.clone(), facts.clone())) {
        super::sweep();
        observer.outcome(&facts);
    }
}

/// Keeps the report `make` makes if this thread defers (all of them are reported once it
/// keeps [`MAX_WAITING`]); false, with nothing made, if it reports at once.
fn deferred(make: impl FnOnce() -> Report) -> bool {
    // A thread whose locals are being torn down reports at once.
    let full = WAITING
        .try_with(|w| {
            let mut w = w.borrow_mut();
            let waiting = w.0.as_mut()?;
            waiting.push(make());
            Some(waiting.len() >= MAX_WAITING)
        })
        .ok()
        .flatten();
    match full {
        None => false,
        Some(full) => {
            if full {
                report_deferred();
            }
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::tests::decision;
    use std::sync::Mutex;

    /// Counts what it hears.
    #[derive(Default)]
    struct Heard(Mutex<Vec<&'static str>>);
    impl Observer for Heard {
        fn decision(&self, _: &Arc<DecisionFacts>) {
            self.0.lock().unwrap().push("decision");
        }
        fn outcome(&self, _: &Arc<OutcomeFacts>) {
            self.0.lock().unwrap().push("outcome");
        }
    }

    fn count(h: &Arc<Heard>) -> usize {
        h.0.lock().unwrap().len()
    }

    #[test]
    fn a_thread_that_defers_reports_at_its_call_and_no_later_than_its_bound_or_its_end() {
        let heard = Arc::new(Heard::default());
        let observer: Arc<dyn Observer> = heard.clone();
        // Not deferring: reported at once.
        report_decision(&observer, decision(1));
        assert_eq!(count(&heard), 1);
        let (h, o) = (heard.clone(), observer.clone());
        std::thread::spawn(move || {
            defer_on_this_thread();
            report_decision(&o, decision(2));
            assert_eq!(count(&h), 1, "kept until the thread reports");
            report_deferred();
            assert_eq!(count(&h), 2);
            // Bounded: the MAX_WAITING-th report takes all of them out.
            for n in 0..MAX_WAITING as u64 - 1 {
                report_decision(&o, decision(n));
            }
            assert_eq!(count(&h), 2);
            report_decision(&o, decision(99));
            assert_eq!(count(&h), 2 + MAX_WAITING);
            // Kept at the thread's end: reported as it exits.
            report_decision(&o, decision(100));
            assert_eq!(count(&h), 2 + MAX_WAITING);
        })
        .join()
        .unwrap();
        assert_eq!(count(&heard), 3 + MAX_WAITING);
        // Another thread (this one) still reports at once.
        assert!(WAITING.with(|w| w.borrow().0.is_none()));
        report_decision(&observer, decision(3));
        assert_eq!(count(&heard), 4 + MAX_WAITING);
    }

    #[test]
    fn the_list_keeps_its_capacity_over_calls_with_nothing_to_report() {
        let observer: Arc<dyn Observer> = Arc::new(Heard::default());
        std::thread::spawn(move || {
            let capacity = || WAITING.with(|w| w.borrow().0.as_ref().map_or(0, Vec::capacity));
            defer_on_this_thread();
            report_decision(&observer, decision(1));
            report_deferred();
            let kept = capacity();
            assert!(kept > 0);
            // The top of the next loop: nothing to report, nothing given up.
            report_deferred();
            assert_eq!(capacity(), kept);
        })
        .join()
        .unwrap();
    }
}
