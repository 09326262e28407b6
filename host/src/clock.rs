//! Time as the counters see it: milliseconds on a clock that never goes backwards.
//!
//! The gateway uses [`SystemClock`]. Tests, `toolgate test` and the demo use [`ManualClock`],
//! which moves only when told to, so a one-minute window is tested without sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of "now" in milliseconds. Implementations must be monotonic.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch (or any fixed origin), never decreasing.
    fn now_ms(&self) -> u64;
}

/// Wall-clock time read once at start, then advanced by a monotonic [`Instant`].
///
/// Anchoring to the wall clock keeps timestamps meaningful to a shared store later (Redis);
/// advancing by `Instant` means a wall-clock step (NTP, a suspended laptop) cannot shrink a window.
#[derive(Debug)]
pub struct SystemClock {
    origin_ms: u64,
    origin: Instant,
}

impl SystemClock {
    /// A clock anchored at the current wall-clock time.
    pub fn new() -> Self {
        let origin_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Self {
            origin_ms,
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        self.origin_ms + self.origin.elapsed().as_millis() as u64
    }
}

/// A clock that moves only through [`ManualClock::advance`].
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: AtomicU64,
}

impl ManualClock {
    /// A clock standing at `start_ms`.
    pub fn starting_at(start_ms: u64) -> Arc<Self> {
        Arc::new(Self {
            now_ms: AtomicU64::new(start_ms),
        })
    }

    /// Moves the clock forward, stopping at `u64::MAX` ms: a wrapped clock would go backwards,
    /// and the counters rely on time never doing that.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        let _ = self
            .now_ms
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| {
                Some(now.saturating_add(by))
            });
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_stops_at_the_end_of_time_instead_of_wrapping() {
        let clock = ManualClock::starting_at(u64::MAX - 5);
        clock.advance(Duration::from_millis(3));
        assert_eq!(clock.now_ms(), u64::MAX - 2);
        clock.advance(Duration::MAX);
        assert_eq!(clock.now_ms(), u64::MAX);
        clock.advance(Duration::from_secs(1));
        assert_eq!(clock.now_ms(), u64::MAX);
    }
}
