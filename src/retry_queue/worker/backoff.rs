//! Exponential backoff with full jitter.

use std::time::Duration;

/// The delay before an item's next replay after a failed one.
///
/// The ceiling for an item that failed `n` times is `base * 2^(n - 1)`, capped at `cap`. With full
/// jitter (the default) the delay is drawn uniformly from zero to that ceiling, which spreads the
/// replays of items that failed together so they do not hit a recovering upstream at once.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_quota_queue::retry_queue::Backoff;
///
/// let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
/// assert_eq!(backoff.ceiling(1), Duration::from_secs(1));
/// assert_eq!(backoff.ceiling(3), Duration::from_secs(4));
/// assert_eq!(backoff.ceiling(20), Duration::from_secs(60));
/// assert!(backoff.delay(3) <= Duration::from_secs(4));
///
/// let fixed = backoff.without_jitter();
/// assert_eq!(fixed.delay(3), Duration::from_secs(4));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    jitter: bool,
}

impl Default for Backoff {
    /// Creates a backoff with a base of 1 s and a cap of 5 min, with full jitter.
    fn default() -> Self {
        Self::new(Duration::from_secs(1), Duration::from_secs(300))
    }
}

impl Backoff {
    /// Creates a backoff with full jitter from `base` after the first failure up to `cap`.
    ///
    /// A `cap` below `base` is raised to `base`.
    pub const fn new(base: Duration, cap: Duration) -> Self {
        let cap = if cap.as_nanos() < base.as_nanos() {
            base
        } else {
            cap
        };
        Self {
            base,
            cap,
            jitter: true,
        }
    }

    /// Turns jitter off, so every delay equals its ceiling. Useful for predictable schedules.
    #[must_use]
    pub const fn without_jitter(mut self) -> Self {
        self.jitter = false;
        self
    }

    /// Returns the longest delay after the `failures`-th failed replay of an item.
    ///
    /// Zero failures give zero.
    pub fn ceiling(&self, failures: u32) -> Duration {
        let Some(exponent) = failures.checked_sub(1) else {
            return Duration::ZERO;
        };
        let factor = 2u32.checked_pow(exponent.min(31)).unwrap_or(u32::MAX);
        self.base
            .checked_mul(factor)
            .map_or(self.cap, |delay| delay.min(self.cap))
    }

    /// Returns the delay after the `failures`-th failed replay: uniform in `[0, ceiling]` with
    /// jitter, the ceiling itself without.
    pub fn delay(&self, failures: u32) -> Duration {
        let ceiling = self.ceiling(failures);
        if !self.jitter || ceiling.is_zero() {
            return ceiling;
        }
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(fastrand::u64(0..=nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn ceiling_doubles_until_cap() {
        let backoff = Backoff::new(SECOND, 10 * SECOND);
        let ceilings: Vec<_> = (0..7).map(|n| backoff.ceiling(n)).collect();
        assert_eq!(
            ceilings,
            [0, 1, 2, 4, 8, 10, 10].map(|s| s * SECOND).to_vec()
        );
    }

    #[test]
    fn ceiling_saturates_for_huge_failure_counts() {
        let backoff = Backoff::new(SECOND, 3600 * SECOND);
        assert_eq!(backoff.ceiling(u32::MAX), 3600 * SECOND);
        assert_eq!(backoff.ceiling(64), 3600 * SECOND);
    }

    #[test]
    fn cap_below_base_raised_to_base() {
        let backoff = Backoff::new(10 * SECOND, SECOND);
        assert_eq!(backoff.ceiling(1), 10 * SECOND);
        assert_eq!(backoff.ceiling(5), 10 * SECOND);
    }

    #[test]
    fn jittered_delay_stays_within_ceiling_and_varies() {
        let backoff = Backoff::new(SECOND, 60 * SECOND);
        let delays: Vec<_> = (0..200).map(|_| backoff.delay(4)).collect();
        assert!(delays.iter().all(|delay| *delay <= 8 * SECOND));
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(distinct.len() > 100, "{} distinct delays", distinct.len());
        let below_half = delays.iter().filter(|d| **d < 4 * SECOND).count();
        assert!((40..=160).contains(&below_half), "{below_half} of 200");
    }

    #[test]
    fn delay_without_jitter_equals_ceiling() {
        let backoff = Backoff::new(SECOND, 60 * SECOND).without_jitter();
        for failures in 0..10 {
            assert_eq!(backoff.delay(failures), backoff.ceiling(failures));
        }
    }
}
