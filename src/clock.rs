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

/// Returns the current wall-clock time as this crate sees it.
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
    let (system, instant) = *BASE.get_or_init(|| (SystemTime::now(), std::time::Instant::now()));
    let elapsed = Instant::now().into_std().saturating_duration_since(instant);
    system + elapsed
}

/// Converts a wall-clock deadline into a [`tokio::time::Instant`] for sleeping until it.
///
/// A deadline in the past maps to the current instant.
pub fn instant_at(deadline: SystemTime) -> Instant {
    let now_instant = Instant::now();
    match deadline.duration_since(now()) {
        Ok(ahead) => now_instant + ahead,
        Err(_) => now_instant,
    }
}
