//! Errors of the quota layer and tracker.

use std::time::{Duration, SystemTime};

/// An invalid [`QuotaTrackerBuilder`](super::QuotaTrackerBuilder) setting, naming the field.
///
/// # Example
///
/// ```
/// use tower_quota_queue::quota::QuotaTracker;
///
/// let error = QuotaTracker::builder().warning_threshold(1.5).build().unwrap_err();
/// assert_eq!(error.field(), "warning_threshold");
/// ```
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `warning_threshold` is not in (0, 1].
    #[error("invalid warning_threshold {value}: expected a fraction above 0 and at most 1")]
    WarningThreshold {
        /// The rejected value.
        value: f64,
    },
    /// `local_limit` has a limit of 0 or an empty window.
    #[error(
        "invalid local_limit of {limit} per {window:?}: expected a limit of at least 1 and a window \
         longer than zero"
    )]
    LocalLimit {
        /// The rejected limit.
        limit: u64,
        /// The rejected window.
        window: Duration,
    },
}

impl ConfigError {
    /// Returns the name of the builder setting that is invalid.
    pub fn field(&self) -> &'static str {
        match self {
            Self::WarningThreshold { .. } => "warning_threshold",
            Self::LocalLimit { .. } => "local_limit",
        }
    }
}

/// The error of an enforcing quota service when a partition's quota is exhausted.
///
/// It carries the partition key and the deadline after which a request may go. The partition key
/// is part of the `Display` output, so a partitioner that keys by a secret should return a hash
/// of it.
///
/// # Example
///
/// ```
/// use tower_quota_queue::quota::QuotaExhausted;
/// use tower_quota_queue::BoxError;
///
/// fn retry_deadline(error: &BoxError) -> Option<std::time::SystemTime> {
///     error.downcast_ref::<QuotaExhausted>().map(QuotaExhausted::deadline)
/// }
/// # let _ = retry_deadline;
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "rate-limit quota of partition {partition:?} is exhausted until {}",
    humantime::format_rfc3339_seconds(*deadline)
)]
pub struct QuotaExhausted {
    partition: String,
    deadline: SystemTime,
}

impl QuotaExhausted {
    pub(crate) fn new(partition: String, deadline: SystemTime) -> Self {
        Self {
            partition,
            deadline,
        }
    }

    /// Returns the partition key whose quota is exhausted.
    pub fn partition(&self) -> &str {
        &self.partition
    }

    /// Returns the wall-clock time after which a request to this partition may go.
    pub fn deadline(&self) -> SystemTime {
        self.deadline
    }
}

/// The error of a response future polled again after it completed.
#[derive(Clone, Copy, Debug, thiserror::Error)]
#[error("quota response future polled after it completed")]
pub(crate) struct PolledAfterCompletion;

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::{ConfigError, QuotaExhausted};

    #[test]
    fn config_error_names_value() {
        let error = ConfigError::WarningThreshold { value: 1.5 };
        assert_eq!(
            error.to_string(),
            "invalid warning_threshold 1.5: expected a fraction above 0 and at most 1"
        );
        let error = ConfigError::LocalLimit {
            limit: 0,
            window: Duration::from_secs(60),
        };
        assert_eq!(error.field(), "local_limit");
        assert_eq!(
            error.to_string(),
            "invalid local_limit of 0 per 60s: expected a limit of at least 1 and a window longer \
             than zero"
        );
    }

    #[test]
    fn quota_exhausted_shows_deadline() {
        let deadline = UNIX_EPOCH + Duration::from_secs(1_710_504_030);
        let error = QuotaExhausted::new("api.example.com".to_owned(), deadline);
        assert_eq!(error.partition(), "api.example.com");
        assert_eq!(error.deadline(), deadline);
        assert_eq!(
            error.to_string(),
            "rate-limit quota of partition \"api.example.com\" is exhausted until \
             2024-03-15T12:00:30Z"
        );
    }
}
