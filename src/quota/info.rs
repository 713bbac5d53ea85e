//! The quota state that the tracker reports.

use std::time::SystemTime;

/// The origin of the numbers in a [`QuotaInfo`].
///
/// # Example
///
/// ```
/// use tower_quota_queue::quota::{QuotaSource, QuotaTracker};
///
/// let tracker = QuotaTracker::new();
/// assert_eq!(tracker.status().source, QuotaSource::LocalCount);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum QuotaSource {
    /// Rate-limit headers of responses.
    Headers,
    /// The tracker's own count of requests against the configured local limit, used while a
    /// partition has seen no rate-limit headers.
    LocalCount,
}

/// The state of one quota dimension of one partition.
///
/// [`QuotaTracker::status`](super::QuotaTracker::status) reports the most used dimension of a
/// partition, and [`QuotaTracker::snapshot`](super::QuotaTracker::snapshot) every dimension.
///
/// # Example
///
/// ```
/// use http::HeaderMap;
/// use tower_quota_queue::quota::{QuotaSource, QuotaTracker};
///
/// let tracker = QuotaTracker::new();
/// let mut headers = HeaderMap::new();
/// headers.insert("x-ratelimit-limit", "1000".parse().unwrap());
/// headers.insert("x-ratelimit-remaining", "150".parse().unwrap());
///
/// let info = tracker.update_from_headers(&headers).unwrap();
/// assert_eq!(info.limit, Some(1000));
/// assert_eq!(info.remaining, Some(150));
/// assert_eq!(info.usage, Some(0.85));
/// assert_eq!(info.source, QuotaSource::Headers);
/// assert_eq!(info.dimension, "default");
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct QuotaInfo {
    /// The dimension or policy: `requests`, `tokens`, `input-tokens`, `output-tokens`, an IETF
    /// policy name, a GitHub resource, a Discord bucket, a GitLab throttle name, or `default` for
    /// headers that do not name one. The local count reports `requests`.
    pub dimension: String,
    /// The number of units allowed in the window.
    pub limit: Option<u64>,
    /// The number of units left in the window, at most `limit`.
    pub remaining: Option<u64>,
    /// When the window resets. `None` once that time has passed, because the quota is full again.
    pub reset_at: Option<SystemTime>,
    /// The fraction of the limit used, `1 - remaining / limit`, from 0.0 to 1.0. `None` when the
    /// limit or the remaining count is unknown, or the limit is 0.
    pub usage: Option<f64>,
    /// The deadline from a `Retry-After` header or a 429 response, while it is in the future.
    pub retry_after: Option<SystemTime>,
    /// The origin of the numbers.
    pub source: QuotaSource,
}

impl QuotaInfo {
    pub(crate) fn empty(dimension: &str, retry_after: Option<SystemTime>) -> Self {
        Self {
            dimension: dimension.to_owned(),
            limit: None,
            remaining: None,
            reset_at: None,
            usage: None,
            retry_after,
            source: if retry_after.is_some() {
                QuotaSource::Headers
            } else {
                QuotaSource::LocalCount
            },
        }
    }
}

/// Every dimension of one partition, as [`QuotaTracker::snapshot`](super::QuotaTracker::snapshot)
/// returns it.
///
/// # Example
///
/// ```
/// use http::HeaderMap;
/// use tower_quota_queue::quota::QuotaTracker;
///
/// let tracker = QuotaTracker::new();
/// let mut headers = HeaderMap::new();
/// headers.insert("x-ratelimit-remaining-requests", "9".parse().unwrap());
/// headers.insert("x-ratelimit-remaining-tokens", "900".parse().unwrap());
/// tracker.update_from_headers(&headers);
///
/// let snapshot = tracker.snapshot();
/// assert_eq!(snapshot.len(), 1);
/// assert_eq!(snapshot[0].partition, "");
/// assert_eq!(snapshot[0].dimensions.len(), 2);
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct PartitionSnapshot {
    /// The partition key.
    pub partition: String,
    /// Every dimension seen in headers, in the order first seen, or the local count when there is
    /// none.
    pub dimensions: Vec<QuotaInfo>,
    /// The deadline before which a request to this partition would be rejected, as
    /// [`QuotaTracker::blocked_until`](super::QuotaTracker::blocked_until) returns it.
    pub blocked_until: Option<SystemTime>,
}

/// Computes `1 - remaining / limit`, or `None` when either is unknown or the limit is 0.
pub(crate) fn usage(limit: Option<u64>, remaining: Option<u64>) -> Option<f64> {
    let limit = limit.filter(|limit| *limit > 0)?;
    let remaining = remaining?.min(limit);
    Some(1.0 - remaining as f64 / limit as f64)
}
