//! Plugin state: a small key-value store per plugin and grant, kept in the counter store.
//!
//! A `toolgate:policy@0.3.0` plugin that is granted `state` can remember things between
//! calls: `session-ids` records the ids `session_create` returned, to refuse them later where
//! a provider's id is needed. The entries live where the policy's counters live (memory,
//! SQLite, Redis), so they survive hot swaps, and with a shared store restarts and replicas.
//!
//! Every entry has a time to live, and every plugin and grant ([`StateSpace`]) is bounded in
//! entries and bytes ([`StateLimits`], from the policy): a `set` that would break a bound is
//! refused and stores nothing. Expired entries count for nothing, and are removed lazily.

use std::time::Duration;

/// Whose entries: one plugin (its name in the policy's `plugins`) for one grant.
#[derive(Clone, Copy, Debug)]
pub struct StateSpace<'a> {
    /// The plugin's name in the policy.
    pub plugin: &'a str,
    /// The calling grant.
    pub grant: &'a str,
}

/// The bounds of one [`StateSpace`], from the policy's `plugins.<name>.state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateLimits {
    /// Live entries at most.
    pub max_entries: u32,
    /// Bytes of keys and values together at most, over the live entries.
    pub max_bytes: u64,
    /// The longest time to live an entry may ask for.
    pub max_ttl: Duration,
}

impl Default for StateLimits {
    /// 1,000 entries, 256 KiB, 30 days (LLM CLI Gateway's session lifetime).
    fn default() -> Self {
        Self {
            max_entries: 1_000,
            max_bytes: 256 << 10,
            max_ttl: Duration::from_secs(30 * 86_400),
        }
    }
}

/// The longest key a plugin may use, in bytes.
pub const MAX_STATE_KEY_BYTES: usize = 256;

/// Why a state operation did nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateError {
    /// The entry would break a bound (entries, bytes, key length, time to live): the text says
    /// which, for the plugin.
    Refused(String),
    /// The store could not be asked (a server that does not answer in time), or keeps no
    /// state. The text names the store.
    Unavailable(String),
}

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateError::Refused(why) | StateError::Unavailable(why) => f.write_str(why),
        }
    }
}
