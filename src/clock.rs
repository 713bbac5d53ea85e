//! The wall clock that this crate reads.
//!
//! Deadlines that must survive a restart (enqueue times, `Retry-After` dates, quota resets) are wall
//! clock times. This crate reads them through [`now`], which advances with
//! [`tokio::time::Instant`], so a test that pauses tokio's clock also moves every TTL, reset and
//! backoff deadline of this crate.

use std::sync::OnceLock;
use std::time::SystemTime;

use tokio::time::Instant;

static BASE: OnceLock<(SystemTime, std::time::Instant)> = OnceLock::new();

/// Returns the current wall-clock time as this crate reads it.
///
/// Outside a runtime with a paused clock this equals [`SystemTime::now`] up to clock adjustments made
/// since the first call. Under `tokio::time::pause` it advances with tokio's virtual time.
///
/// # Example
///
/// ```
/// let before = tower_quota_queue::clock::now();
/// let after = tower_quota_queue::clock::now();
/// assert!(after >= before);
/// ```
pub fn now() -> SystemTime {
    let base = *BASE.get_or_init(|| (SystemTime::now(), std::time::Instant::now()));
    wall_clock_at(base, Instant::now().into_std())
}

/// Maps a monotonic instant to wall-clock time, given one moment known on both clocks.
///
/// The instant can lie before the base: a runtime paused before another thread took the base
/// reads instants from the past.
fn wall_clock_at(
    base: (SystemTime, std::time::Instant),
    instant: std::time::Instant,
) -> SystemTime {
    let (system, base_instant) = base;
    match instant.checked_duration_since(base_instant) {
        Some(elapsed) => system + elapsed,
        None => system - base_instant.duration_since(instant),
    }
}

/// Converts a wall-clock deadline into a [`tokio::time::Instant`] for sleeping until it.
///
/// A deadline in the past maps to the current instant.
pub fn instant_at(deadline: SystemTime) -> Instant {
    let now_instant = Instant::now();
    match deadline.duration_since(now()) {
        Ok(ahead) => instant_after(now_instant, ahead),
        Err(_) => now_instant,
    }
}

/// The maximum wait this crate schedules: about 30 years. Deadlines further out are clamped to it,
/// because adding a larger duration to an instant can overflow.
pub(crate) const FAR_FUTURE: std::time::Duration =
    std::time::Duration::from_secs(30 * 365 * 24 * 60 * 60);

/// Adds `delay` to `instant`, clamping the delay to [`FAR_FUTURE`].
pub(crate) fn instant_after(instant: Instant, delay: std::time::Duration) -> Instant {
    instant + delay.min(FAR_FUTURE)
}

/// Adds `delay` to `time`, clamping the delay to [`FAR_FUTURE`].
pub(crate) fn time_after(time: SystemTime, delay: std::time::Duration) -> SystemTime {
    let delay = delay.min(FAR_FUTURE);
    time.checked_add(delay).unwrap_or(time)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn far_deadlines_clamped_without_overflow() {
        let start = Instant::now();
        assert_eq!(instant_after(start, Duration::MAX), start + FAR_FUTURE);
        let time = SystemTime::UNIX_EPOCH;
        assert_eq!(time_after(time, Duration::MAX), time + FAR_FUTURE);
        assert!(instant_at(now() + FAR_FUTURE + FAR_FUTURE) > start);
    }

    #[test]
    fn wall_clock_follows_instants_before_and_after_base() {
        let later = std::time::Instant::now();
        let earlier = later - Duration::from_secs(5);
        let base = (SystemTime::UNIX_EPOCH + Duration::from_secs(1_000), later);
        assert_eq!(
            wall_clock_at(base, earlier),
            SystemTime::UNIX_EPOCH + Duration::from_secs(995)
        );
        assert_eq!(
            wall_clock_at(base, later + Duration::from_millis(250)),
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_000_250)
        );
    }
}
