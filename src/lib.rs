//! Tower middleware for clients of rate-limited HTTP APIs.
//!
//! The crate has two halves that compose with [`tower::ServiceBuilder`]:
//!
//! - [`quota`]: a layer that reads the rate-limit headers of every response into a shared
//!   [`QuotaTracker`] and warns once when usage crosses a threshold.
//! - [`retry_queue`]: a layer that persists failed requests in an embedded `sled` database before the
//!   caller sees the failure, and replays them later with at-least-once delivery.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod clock;
pub mod partition;
pub mod quota;
pub mod retry_queue;

pub use partition::{ByAuthority, Partitioner};
pub use quota::{QuotaLayer, QuotaTracker};
pub use retry_queue::{RetryQueue, RetryQueueConfig, RetryQueueLayer};

/// A boxed error, the error type that layers of this crate hand through from inner services.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
