//! Replaying queued requests through a tower service.

use bytes::Bytes;
use http_body_util::Full;
use tower::{Service, ServiceExt};
use uuid::Uuid;

use super::classify::{retry_after, DefaultClassifier, RetryClassifier};
use super::error::QueueError;
use super::queue::{NackOutcome, RetryQueue};
use super::request::QueuedRequest;
use crate::{clock, BoxError};

/// The counts of one [`RetryQueue::process_all`] call.
///
/// # Example
///
/// ```
/// use tower_quota_queue::retry_queue::ReplayReport;
///
/// fn summary(report: &ReplayReport) -> String {
///     format!("{} ok, {} failed, {} expired", report.succeeded, report.failed, report.expired)
/// }
/// assert_eq!(summary(&ReplayReport::default()), "0 ok, 0 failed, 0 expired");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayReport {
    /// Items replayed successfully and deleted.
    pub succeeded: usize,
    /// Items whose replay failed: requeued or dead-lettered.
    pub failed: usize,
    /// The failed items that reached `max_attempts` and moved to the dead letters.
    pub dead_lettered: usize,
    /// Stale items removed without a replay.
    pub expired: usize,
}

/// An error from [`RetryQueue::process_one`].
///
/// # Example
///
/// ```
/// use tower_quota_queue::retry_queue::{NackOutcome, ReplayError};
///
/// fn gave_up(error: &ReplayError) -> bool {
///     matches!(error, ReplayError::Failed { outcome: NackOutcome::DeadLettered, .. })
/// }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The replay failed and the item was nacked.
    #[error("replay of queued request {id} failed")]
    Failed {
        /// The id of the item.
        id: Uuid,
        /// Whether the item was requeued or dead-lettered.
        outcome: NackOutcome,
        /// The service error, or [`RetryableStatus`] for a retryable response.
        #[source]
        source: BoxError,
    },
    /// The queue failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// The error recorded for a replay that returned a retryable response.
///
/// # Example
///
/// ```
/// use tower_quota_queue::retry_queue::RetryableStatus;
///
/// let error = RetryableStatus(http::StatusCode::SERVICE_UNAVAILABLE);
/// assert_eq!(error.to_string(), "replay returned retryable status 503 Service Unavailable");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("replay returned retryable status {0}")]
pub struct RetryableStatus(pub http::StatusCode);

impl RetryQueue {
    /// Replays the oldest ready item through `service`, acks it on success and nacks it on failure.
    ///
    /// An error from the service, or a response that [`DefaultClassifier`] calls retryable, is a
    /// failure. After a retryable response, the item's next replay waits for its `Retry-After`. Every
    /// other response, including 4xx, is a success because replaying it again would not change it.
    /// Returns the id of the item replayed successfully, or `None` when no item is ready.
    ///
    /// The request body is any type that converts from `Full<Bytes>`, so the stack below a
    /// [`RetryQueueLayer`](super::RetryQueueLayer), which takes
    /// [`RetryQueueBody`](super::RetryQueueBody), can be passed as it is.
    ///
    /// # Errors
    ///
    /// [`ReplayError::Failed`] with the service error as its source after a failed replay, and
    /// [`ReplayError::Queue`] when the queue fails.
    pub async fn process_one<S, B, ReqB>(
        &self,
        service: &mut S,
    ) -> Result<Option<Uuid>, ReplayError>
    where
        S: Service<http::Request<ReqB>, Response = http::Response<B>>,
        S::Error: Into<BoxError>,
        ReqB: From<Full<Bytes>>,
    {
        match self.take().await? {
            Some(item) => self.replay(item, service).await.map(Some),
            None => Ok(None),
        }
    }

    /// Replays every ready item once, oldest first, and returns the counts.
    ///
    /// Items that fail go to the tail but are not replayed again in the same call, so a failing
    /// service cannot keep this call running. Items enqueued during the call wait for the next one.
    ///
    /// # Errors
    ///
    /// [`QueueError`] when the queue fails. Replay failures are counted, not returned.
    pub async fn process_all<S, B, ReqB>(&self, service: &mut S) -> Result<ReplayReport, QueueError>
    where
        S: Service<http::Request<ReqB>, Response = http::Response<B>>,
        S::Error: Into<BoxError>,
        ReqB: From<Full<Bytes>>,
    {
        let end = self.next_key();
        let mut report = ReplayReport::default();
        loop {
            let (item, expired) = self.take_before(end, |_| true)?;
            report.expired += expired;
            let Some(item) = item else {
                return Ok(report);
            };
            match self.replay(item, service).await {
                Ok(_) => report.succeeded += 1,
                Err(ReplayError::Failed { outcome, .. }) => {
                    report.failed += 1;
                    if outcome == NackOutcome::DeadLettered {
                        report.dead_lettered += 1;
                    }
                }
                Err(ReplayError::Queue(error)) => return Err(error),
            }
        }
    }

    async fn replay<S, B, ReqB>(
        &self,
        item: QueuedRequest,
        service: &mut S,
    ) -> Result<Uuid, ReplayError>
    where
        S: Service<http::Request<ReqB>, Response = http::Response<B>>,
        S::Error: Into<BoxError>,
        ReqB: From<Full<Bytes>>,
    {
        let id = item.id();
        let result = match service.ready().await {
            Ok(ready) => ready.call(item.into_request().map(ReqB::from)).await,
            Err(error) => Err(error),
        };
        let (source, not_before): (BoxError, _) = match result {
            Ok(response)
                if DefaultClassifier.is_retryable(response.status(), response.headers()) =>
            {
                let not_before = retry_after(response.headers(), clock::now());
                (Box::new(RetryableStatus(response.status())), not_before)
            }
            Ok(_) => {
                self.ack(id).await?;
                tracing::debug!(request_id = %id, "replayed queued request");
                return Ok(id);
            }
            Err(error) => (error.into(), None),
        };
        let outcome = self.nack(id, &source.to_string(), not_before).await?;
        tracing::debug!(request_id = %id, error = %source, ?outcome, "replay failed");
        Err(ReplayError::Failed {
            id,
            outcome,
            source,
        })
    }
}
