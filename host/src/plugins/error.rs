//! Why a plugin did not load, and why a call into one failed.
//!
//! A failed evaluation is a deny whose reason is ``plugin `<name>` <failure>``: [`EvalFailure`]
//! is the `<failure>`, one variant per cause, each worded for the person reading the deny.
//! Causes are told apart by the types in wasmtime's error chain (its [`Trap`], the host's own
//! [`ImportRefused`], [`BudgetExceeded`], [`GrowFailed`], [`LogCapExceeded`] and
//! [`UngrantedImport`]), never by the words of a message.

use super::host::{BudgetExceeded, GrowFailed, ImportRefused, LogCapExceeded, UngrantedImport};
use super::limits::{PluginLimits, LOG_BYTES_PER_EVALUATION};
use wasmtime::Trap;

/// Why a plugin did not load.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The file could not be read.
    #[error("cannot read `{path}`: {source}")]
    Read {
        /// The resolved path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The content does not have the digest the policy pins.
    #[error(
        "digest mismatch for `{path}`: the policy pins sha256 {expected}, the file has {actual}"
    )]
    DigestMismatch {
        /// The resolved path.
        path: String,
        /// What the policy says.
        expected: String,
        /// What the file has.
        actual: String,
    },
    /// The file is not a component, or does not implement toolgate's world.
    #[error("`{path}` is not a usable plugin: {reason}")]
    Invalid {
        /// The resolved path.
        path: String,
        /// Why.
        reason: String,
    },
    /// The component's manifest is missing, malformed, or says something untrue.
    #[error("`{path}` has no usable manifest: {reason}")]
    Manifest {
        /// Where it was read from.
        path: String,
        /// Why.
        reason: String,
    },
    /// It imports a capability the policy does not grant it.
    #[error("`{path}` imports `{import}`, which the policy does not grant plugin `{plugin}`: write `{line}` in plugins.{plugin}")]
    Ungranted {
        /// Where it was read from.
        path: String,
        /// The plugin's name in the policy.
        plugin: String,
        /// The import.
        import: String,
        /// The `grants` line that would let it load.
        line: String,
    },
    /// Its signatures do not satisfy the operator's trust file.
    #[error("`{path}` does not satisfy rule `{rule}` of the trust file `{trust}`:\n{explain}")]
    Untrusted {
        /// Where it was read from.
        path: String,
        /// The trust file.
        trust: String,
        /// The rule it was judged by.
        rule: String,
        /// What was counted, ignored and unmet.
        explain: String,
    },
    /// It could not be read from the store.
    #[error("{0}")]
    Store(String),
    /// The engine could not be set up.
    #[error("the plugin engine cannot start: {0}")]
    Engine(String),
}

/// Why a call into a plugin (`evaluate`, `metadata` or `validate-config`) did not return a
/// usable answer. Displayed after ``plugin `<name>` ``, so each text reads as a predicate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvalFailure {
    /// The plugin no longer satisfies the operator's trust file (a key was revoked, or a
    /// signature it counted expired); it never ran.
    #[error("was not run: it {0}")]
    Untrusted(String),
    /// The call's arguments are over the plugin's input cap; the plugin never ran.
    #[error("was not run: arguments of {len} bytes exceed its {cap}-byte input cap")]
    InputTooLarge {
        /// The arguments' size in bytes.
        len: usize,
        /// [`PluginLimits::max_input_bytes`].
        cap: usize,
    },
    /// Every evaluation permit stayed taken for the plugin's whole timeout; it never ran.
    #[error(
        "was not run: too many plugin evaluations at once (the runtime's {permits} permits stayed taken for its timeout of {timeout_ms} ms)"
    )]
    Busy {
        /// How many evaluations may run at once.
        permits: usize,
        /// [`PluginLimits::timeout`], in milliseconds.
        timeout_ms: u128,
    },
    /// A store could not be armed with fuel (the engine refused).
    #[error("{0}")]
    Arm(String),
    /// No instance could be made (for instance, the instance pool is exhausted).
    #[error("cannot instantiate it: {0}")]
    Instantiate(String),
    /// An import refused to run past one of its bounds; the text names the bound.
    #[error("{0}")]
    ImportRefused(String),
    /// The instance's one memory budget is spent.
    #[error("exceeded its memory cap of {mib} MiB (all its memories and tables together)")]
    MemoryBudget {
        /// [`PluginLimits::memory_bytes`], in MiB.
        mib: usize,
    },
    /// The fuel ran out.
    #[error("ran out of fuel after {used} instructions")]
    OutOfFuel {
        /// Fuel consumed.
        used: u64,
    },
    /// The epoch deadline passed.
    #[error("timed out after {ms} ms")]
    TimedOut {
        /// [`PluginLimits::timeout`], in milliseconds.
        ms: u128,
    },
    /// The budget allowed a memory growth and the system refused it.
    #[error("exceeded its memory cap of {mib} MiB")]
    MemoryGrowFailed {
        /// [`PluginLimits::memory_bytes`], in MiB.
        mib: usize,
    },
    /// The plugin logged more than [`LOG_BYTES_PER_EVALUATION`].
    #[error("exceeded the log cap of {LOG_BYTES_PER_EVALUATION} bytes per evaluation")]
    LogCap,
    /// The plugin called an import toolgate links to a trap (WASI, from its standard library).
    #[error("trapped calling `{import}`, which toolgate does not grant{}", panic_hint(.import))]
    UngrantedImport {
        /// The import's qualified name, e.g. `wasi:cli/environment@0.2.6#get-environment`.
        import: String,
    },
    /// `unreachable`: what a Rust guest's abort (and so its panic) comes to.
    #[error("trapped: unreachable code reached (a panic or abort in the plugin)")]
    Unreachable,
    /// Any other wasm trap.
    #[error("trapped: {0}")]
    Trap(Trap),
    /// A failure none of the above describes, with wasmtime's whole error chain.
    #[error("failed: {0}")]
    Other(String),
    /// The plugin returned a reason longer than [`PluginLimits::max_reason_bytes`].
    #[error("returned a malformed result: a reason of {len} bytes, over the {max}-byte cap")]
    MalformedReason {
        /// The reason's length in bytes.
        len: usize,
        /// [`PluginLimits::max_reason_bytes`].
        max: usize,
    },
    /// `after-call` returned a verdict the gateway cannot use (a replacement that is not a
    /// JSON object, or too long).
    #[error("returned a malformed result: {0}")]
    MalformedResult(String),
    /// The call's result is over [`PluginLimits::max_result_bytes`], and the policy refuses
    /// such results.
    #[error("was not run: the call's result of {len} bytes is over its max_result_bytes ({max}), and oversized results are refused")]
    ResultTooLarge {
        /// The result's length in bytes.
        len: usize,
        /// [`PluginLimits::max_result_bytes`].
        max: usize,
    },
}

/// Rust's panic handler reads the environment (`RUST_BACKTRACE`), then writes the message to
/// stderr: both are WASI, so a panic shows up as a call of an ungranted import.
fn panic_hint(import: &str) -> &'static str {
    if import.starts_with("wasi:cli/environment") || import.starts_with("wasi:cli/stderr") {
        " (the plugin panicked, most likely: its panic handler reads the environment and writes stderr)"
    } else {
        ""
    }
}

impl EvalFailure {
    /// Classifies a failed call from its error chain. `used` is the fuel the call consumed.
    pub(crate) fn classify(error: &wasmtime::Error, limits: &PluginLimits, used: u64) -> Self {
        let mib = limits.memory_bytes >> 20;
        if let Some(refused) = error.downcast_ref::<ImportRefused>() {
            return Self::ImportRefused(refused.0.clone());
        }
        if error.downcast_ref::<BudgetExceeded>().is_some() {
            return Self::MemoryBudget { mib };
        }
        let trap = error.downcast_ref::<Trap>();
        match trap {
            Some(Trap::OutOfFuel) => return Self::OutOfFuel { used },
            Some(Trap::Interrupt) => {
                return Self::TimedOut {
                    ms: limits.timeout.as_millis(),
                }
            }
            _ => {}
        }
        if error.downcast_ref::<GrowFailed>().is_some() {
            return Self::MemoryGrowFailed { mib };
        }
        if error.downcast_ref::<LogCapExceeded>().is_some() {
            return Self::LogCap;
        }
        if let Some(UngrantedImport(import)) = error.downcast_ref::<UngrantedImport>() {
            return Self::UngrantedImport {
                import: import.clone(),
            };
        }
        match trap {
            Some(Trap::UnreachableCodeReached) => Self::Unreachable,
            Some(trap) => Self::Trap(*trap),
            None => Self::Other(format!("{error:#}")),
        }
    }
}

/// Why `validate-config` did not accept a config.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigRejected {
    /// The config JSON is over [`PluginLimits::max_config_bytes`]; the plugin never saw it.
    #[error("config of {len} bytes exceeds the {cap}-byte cap")]
    TooLarge {
        /// The config's size in bytes.
        len: usize,
        /// The cap.
        cap: usize,
    },
    /// The plugin said no, with this reason (truncated to its reason cap).
    #[error("{0}")]
    Rejected(String),
    /// The config does not match the JSON Schema in the plugin's manifest; the plugin never
    /// saw it.
    #[error("the config does not match the plugin's config schema{at}: {error}")]
    Schema {
        /// ` at `/path`` where it fails, or nothing at the top.
        at: String,
        /// What is wrong there.
        error: String,
    },
    /// The call itself failed.
    #[error(transparent)]
    Failed(#[from] EvalFailure),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits() -> PluginLimits {
        PluginLimits {
            memory_bytes: 8 << 20,
            timeout: Duration::from_millis(5),
            ..PluginLimits::default()
        }
    }

    fn classify(error: wasmtime::Error) -> String {
        EvalFailure::classify(&error, &limits(), 1234).to_string()
    }

    /// Every cause reads as it did when causes were told apart by their messages: clients and
    /// the e2e tests see these words.
    #[test]
    fn each_cause_is_told_by_its_type_and_keeps_its_words() {
        let division = format!("trapped: {}", Trap::IntegerDivisionByZero);
        let cases: Vec<(wasmtime::Error, &str)> = vec![
            (
                ImportRefused("called `log.log` more than 64 times".into()).into(),
                "called `log.log` more than 64 times",
            ),
            (
                BudgetExceeded { budget: 8 << 20 }.into(),
                "exceeded its memory cap of 8 MiB (all its memories and tables together)",
            ),
            (Trap::OutOfFuel.into(), "ran out of fuel after 1234 instructions"),
            (Trap::Interrupt.into(), "timed out after 5 ms"),
            (
                wasmtime::Error::msg("mmap failed").context(GrowFailed),
                "exceeded its memory cap of 8 MiB",
            ),
            (
                LogCapExceeded.into(),
                "exceeded the log cap of 4096 bytes per evaluation",
            ),
            (
                UngrantedImport("wasi:cli/stderr@0.2.6#get-stderr".into()).into(),
                "trapped calling `wasi:cli/stderr@0.2.6#get-stderr`, which toolgate does not grant (the plugin panicked, most likely: its panic handler reads the environment and writes stderr)",
            ),
            (
                UngrantedImport("wasi:random/random@0.2.6#get-random-u64".into()).into(),
                "trapped calling `wasi:random/random@0.2.6#get-random-u64`, which toolgate does not grant",
            ),
            (
                Trap::UnreachableCodeReached.into(),
                "trapped: unreachable code reached (a panic or abort in the plugin)",
            ),
            (
                Trap::IntegerDivisionByZero.into(),
                &division,
            ),
            (
                wasmtime::Error::msg("something else").context("while calling"),
                "failed: while calling: something else",
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(classify(error), expected);
        }
    }

    /// A typed cause is found under context a wasmtime layer may add on the way out.
    #[test]
    fn a_cause_is_found_under_added_context() {
        let error = wasmtime::Error::from(LogCapExceeded).context("in `evaluate`");
        assert_eq!(
            classify(error),
            "exceeded the log cap of 4096 bytes per evaluation"
        );
    }
}
