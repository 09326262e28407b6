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
//! The log's order is kept: a call's decision is reported before anything else about the
//! same call. A deferred decision is a [`DecisionReport`], made once: by its own thread after
//! the write, or first thing by whoever reports a later event of the call (its outcome, its
//! shadow decision), whichever comes first.

use super::{DecisionFacts, Observer, OutcomeFacts};
use std::cell::RefCell;
use std::sync::{Arc, Mutex};

/// A deferred decision, reported exactly once (see the module's docs).
pub struct DecisionReport {
    observer: Arc<dyn Observer>,
    facts: Mutex<Option<Arc<DecisionFacts>>>,
}

impl DecisionReport {
    /// Reports the decision unless it was already. The lock is held while reporting, so that
    /// a later event reported by another thread cannot overtake it.
    pub fn report(&self) {
        let mut facts = self.facts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(facts) = facts.take() {
            self.observer.decision(&facts);
        }
    }
}

impl std::fmt::Debug for DecisionReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DecisionReport")
    }
}

enum Report {
    Decision(Arc<DecisionReport>),
    Outcome(
        Arc<dyn Observer>,
        Arc<OutcomeFacts>,
        Option<Arc<DecisionReport>>,
    ),
}

/// Reports a thread keeps at most: past it, they are all reported at once.
const MAX_WAITING: usize = 64;

impl Report {
    fn report(self) {
        match self {
            Report::Decision(decision) => decision.report(),
            Report::Outcome(observer, facts, decision) => {
                if let Some(decision) = decision {
                    decision.report();
                }
                observer.outcome(&facts);
            }
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

/// Reports a decision: at once (`None`), or at this thread's next [`report_deferred`] or
/// when a later event of the call is reported, whichever is first (the handle to give them).
pub fn report_decision(
    observer: &Arc<dyn Observer>,
    facts: DecisionFacts,
) -> Option<Arc<DecisionReport>> {
    if !defers() {
        super::sweep();
        observer.decision(&Arc::new(facts));
        return None;
    }
    let decision = Arc::new(DecisionReport {
        observer: observer.clone(),
        facts: Mutex::new(Some(Arc::new(facts))),
    });
    keep(Report::Decision(decision.clone()));
    Some(decision)
}

/// Reports an outcome, after its call's `decision` if that is still deferred: at once, or at
/// this thread's next [`report_deferred`].
pub fn report_outcome(
    observer: &Arc<dyn Observer>,
    facts: OutcomeFacts,
    decision: Option<Arc<DecisionReport>>,
) {
    let report = Report::Outcome(observer.clone(), Arc::new(facts), decision);
    if defers() {
        keep(report);
    } else {
        super::sweep();
        report.report();
    }
}

/// Whether this thread defers its reports.
fn defers() -> bool {
    WAITING
        .try_with(|w| w.borrow().0.is_some())
        .unwrap_or(false)
}

/// Keeps `report` for [`report_deferred`]; all are reported once the thread keeps
/// [`MAX_WAITING`], and it is reported at once if the thread's locals are being torn down.
fn keep(report: Report) {
    let mut report = Some(report);
    let full = WAITING
        .try_with(|w| match w.borrow_mut().0.as_mut() {
            Some(waiting) => {
                waiting.extend(report.take());
                waiting.len() >= MAX_WAITING
            }
            None => false,
        })
        .unwrap_or(false);
    if let Some(report) = report {
        report.report();
    } else if full {
        report_deferred();
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

    #[test]
    fn a_deferred_decision_is_reported_before_its_outcome_by_whichever_thread_comes_first() {
        let heard = Arc::new(Heard::default());
        let observer: Arc<dyn Observer> = heard.clone();
        let o = observer.clone();
        let decision = std::thread::spawn(move || {
            defer_on_this_thread();
            // Kept by this thread, which never gets to report it.
            report_decision(&o, decision(1)).expect("deferred")
        })
        .join()
        .unwrap();
        // The thread ended and reported what it kept; a handle reports nothing twice.
        assert_eq!(*heard.0.lock().unwrap(), ["decision"]);
        decision.report();
        assert_eq!(count(&heard), 1);
        // Now the reply's thread first: the outcome brings its decision with it.
        let o = observer.clone();
        let decision = std::thread::spawn(move || {
            defer_on_this_thread();
            let d = report_decision(&o, crate::audit::tests::decision(2)).expect("deferred");
            // Taken back off this thread's list, as if another thread got there first.
            WAITING.with(|w| w.borrow_mut().0.as_mut().unwrap().clear());
            d
        })
        .join()
        .unwrap();
        report_outcome(
            &observer,
            crate::audit::tests::outcome(),
            Some(decision.clone()),
        );
        assert_eq!(
            *heard.0.lock().unwrap(),
            ["decision", "decision", "outcome"]
        );
        decision.report();
        assert_eq!(count(&heard), 3);
    }
}
