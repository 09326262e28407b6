//! What a running plugin's trust rests on, kept so that it is judged again while it runs: when
//! a signature it counted expires, and whenever a reload reads the trust file (a revoked key
//! must stop a plugin already serving, not only refuse the next load: a failed reload keeps
//! the old set, and with it the plugin the operator just revoked).
//!
//! Once withdrawn, a plugin stays withdrawn until a load makes a new one: every call through
//! it is denied, naming why (fail closed).

use crate::capability::Capability;
use crate::trust::{Signature, Trust, Verdict};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// A plugin judged by a trust file, and what judging it again needs.
pub(crate) struct Vouched {
    bytes: Arc<[u8]>,
    signatures: Vec<Signature>,
    capabilities: BTreeSet<Capability>,
    trust: Mutex<Arc<Trust>>,
    /// When (ms since the epoch) a counted signature expires; `i64::MAX`: none does.
    recheck_at_ms: AtomicI64,
    withdrawn: OnceLock<String>,
}

impl Vouched {
    /// A plugin whose `verdict` under `trust` was satisfied at load.
    pub(crate) fn new(
        trust: Arc<Trust>,
        bytes: Arc<[u8]>,
        signatures: Vec<Signature>,
        capabilities: BTreeSet<Capability>,
        verdict: &Verdict,
    ) -> Self {
        Self {
            bytes,
            signatures,
            capabilities,
            trust: Mutex::new(trust),
            recheck_at_ms: AtomicI64::new(recheck_at(verdict)),
            withdrawn: OnceLock::new(),
        }
    }

    /// Why the plugin may no longer run, if it may not. On a call's path: an atomic load and
    /// a clock read, and a judgment only once a counted signature has expired.
    pub(crate) fn withdrawn(&self) -> Option<&str> {
        if let Some(why) = self.withdrawn.get() {
            return Some(why);
        }
        let now = chrono::Utc::now();
        if now.timestamp_millis() < self.recheck_at_ms.load(Ordering::Relaxed) {
            return None;
        }
        let trust = self.trust.lock().unwrap_or_else(|e| e.into_inner()).clone();
        self.judge(&trust, now)
    }

    /// Judges it again by `trust` (a trust file a reload just read), which it is judged by
    /// from now on.
    pub(crate) fn rejudge(&self, trust: Arc<Trust>) -> Option<&str> {
        if let Some(why) = self.withdrawn.get() {
            return Some(why);
        }
        *self.trust.lock().unwrap_or_else(|e| e.into_inner()) = trust.clone();
        self.judge(&trust, chrono::Utc::now())
    }

    /// sha256 over the signatures it was judged by (in order), so that a reload after a
    /// signature changed is a change of the set even when no policy or plugin byte did.
    pub(crate) fn signatures_digest(&self) -> String {
        let mut texts: Vec<&str> = self.signatures.iter().map(|s| s.text.as_str()).collect();
        texts.sort_unstable();
        crate::digest::sha256_hex(texts.join("\n").as_bytes())
    }

    /// Withdraws it for good: `why` names the cause.
    pub(crate) fn withdraw(&self, why: String) -> &str {
        self.withdrawn.get_or_init(|| why)
    }

    fn judge(&self, trust: &Trust, now: chrono::DateTime<chrono::Utc>) -> Option<&str> {
        let verdict = trust.judge(&self.bytes, &self.signatures, &self.capabilities, now);
        if verdict.satisfied() {
            self.recheck_at_ms
                .store(recheck_at(&verdict), Ordering::Relaxed);
            return None;
        }
        Some(self.withdraw(format!(
            "no longer satisfies rule `{}` of the trust file `{}`: {}",
            verdict.rule,
            trust.origin(),
            verdict.unmet.join("; ")
        )))
    }
}

/// The first moment a signature the verdict counted stops counting.
fn recheck_at(verdict: &Verdict) -> i64 {
    verdict
        .counted
        .iter()
        .filter_map(|c| c.expires)
        .map(|e| e.timestamp_millis().saturating_add(1))
        .min()
        .unwrap_or(i64::MAX)
}
