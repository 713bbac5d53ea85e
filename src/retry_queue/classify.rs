//! Classification of responses as retryable, and `Retry-After` parsing.

use std::time::SystemTime;

use http::{HeaderMap, StatusCode};

/// Decides whether a response means the request should be queued for replay.
///
/// [`DefaultClassifier`] treats 429, 502, 503 and 504 as retryable. Any
/// `Fn(StatusCode, &HeaderMap) -> bool` closure is a classifier too.
///
/// # Example
///
/// ```
/// use http::{HeaderMap, StatusCode};
/// use tower_quota_queue::retry_queue::RetryClassifier;
///
/// let server_errors = |status: StatusCode, _: &HeaderMap| status.is_server_error();
/// assert!(server_errors.is_retryable(StatusCode::INTERNAL_SERVER_ERROR, &HeaderMap::new()));
/// assert!(!server_errors.is_retryable(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new()));
/// ```
pub trait RetryClassifier: Send + Sync + 'static {
    /// Returns whether a response with this status and these headers should be replayed later.
    fn is_retryable(&self, status: StatusCode, headers: &HeaderMap) -> bool;
}

/// The default classifier: 429 Too Many Requests, 502 Bad Gateway, 503 Service Unavailable and
/// 504 Gateway Timeout are retryable.
///
/// # Example
///
/// ```
/// use http::{HeaderMap, StatusCode};
/// use tower_quota_queue::retry_queue::{DefaultClassifier, RetryClassifier};
///
/// assert!(DefaultClassifier.is_retryable(StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new()));
/// assert!(!DefaultClassifier.is_retryable(StatusCode::INTERNAL_SERVER_ERROR, &HeaderMap::new()));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultClassifier;

impl RetryClassifier for DefaultClassifier {
    fn is_retryable(&self, status: StatusCode, _headers: &HeaderMap) -> bool {
        matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS
                | StatusCode::BAD_GATEWAY
                | StatusCode::SERVICE_UNAVAILABLE
                | StatusCode::GATEWAY_TIMEOUT
        )
    }
}

impl<F> RetryClassifier for F
where
    F: Fn(StatusCode, &HeaderMap) -> bool + Send + Sync + 'static,
{
    fn is_retryable(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        self(status, headers)
    }
}

/// Reads the deadline of `Retry-After` (delay seconds, a fraction allowed, or an HTTP date) or of
/// the more precise `retry-after-ms`, relative to `now`, with the parser of the quota tracker.
///
/// A missing or malformed header yields `None`, with a `debug!` event for a malformed one.
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<SystemTime> {
    crate::quota::headers::parse_with_clock(headers, || now).retry_after
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, value.parse().unwrap());
        headers
    }

    #[test]
    fn retry_after_seconds_added_to_now() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(
            retry_after(&headers("120"), now),
            Some(UNIX_EPOCH + Duration::from_secs(1_120))
        );
    }

    #[test]
    fn retry_after_fraction_and_millis_parsed() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        // Shopify sends `Retry-After: 2.0` with its 429 responses.
        assert_eq!(
            retry_after(&headers("2.0"), now),
            Some(now + Duration::from_secs(2))
        );
        let mut precise = headers("3");
        precise.insert("retry-after-ms", "2500".parse().unwrap());
        assert_eq!(
            retry_after(&precise, now),
            Some(now + Duration::from_millis(2_500))
        );
    }

    #[test]
    fn retry_after_http_date_parsed() {
        let now = UNIX_EPOCH;
        assert_eq!(
            retry_after(&headers("Sun, 06 Nov 1994 08:49:37 GMT"), now),
            Some(UNIX_EPOCH + Duration::from_secs(784_111_777))
        );
    }

    #[test]
    fn retry_after_malformed_ignored() {
        assert_eq!(retry_after(&headers("soon"), UNIX_EPOCH), None);
        assert_eq!(retry_after(&headers("NaN"), UNIX_EPOCH), None);
        assert_eq!(retry_after(&headers("-5"), UNIX_EPOCH), None);
        assert_eq!(retry_after(&HeaderMap::new(), UNIX_EPOCH), None);
    }

    #[test]
    fn default_classifier_statuses() {
        let retryable = [429, 502, 503, 504];
        for code in 100..600 {
            let status = StatusCode::from_u16(code).unwrap();
            assert_eq!(
                DefaultClassifier.is_retryable(status, &HeaderMap::new()),
                retryable.contains(&code),
                "status {code}"
            );
        }
    }
}
