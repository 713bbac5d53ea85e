//! Draining the retry queue after the outage.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tokio::time::Instant;
use tower::Service;
use tower_quota_queue::quota::QuotaTracker;
use tower_quota_queue::retry_queue::{Backoff, QueuedRequest, RetryQueue};
use tower_quota_queue::{clock, BoxError};

/// The counts of the replay worker's run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ReplayTotals {
    pub(crate) replayed: usize,
    pub(crate) failed_attempts: usize,
    pub(crate) expired: usize,
}

/// How often the demo checks whether the worker has emptied the queue.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// How often the demo logs the replay's progress.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// Replays the queue with a background [`ReplayWorker`](tower_quota_queue::retry_queue::ReplayWorker)
/// until the queue is empty or `timeout` has passed, then shuts the worker down.
///
/// The worker skips the partition while `tracker` reports it exhausted, so no replay is spent on
/// a window the server has already closed.
pub(crate) async fn drain<S, B, ReqB>(
    queue: &RetryQueue,
    service: S,
    tracker: &QuotaTracker,
    concurrency: usize,
    timeout: Duration,
) -> Result<ReplayTotals, BoxError>
where
    S: Service<Request<ReqB>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Send + 'static,
    ReqB: From<Full<Bytes>> + Send + 'static,
{
    let worker = queue
        .replay_worker(service)
        .concurrency(concurrency)
        .backoff(Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(2),
        ))
        .quota_tracker(tracker.clone())
        .spawn();
    let deadline = Instant::now() + timeout;
    let mut next_progress = Instant::now() + PROGRESS_INTERVAL;
    while !queue.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(POLL_INTERVAL).await;
        if Instant::now() >= next_progress {
            next_progress += PROGRESS_INTERVAL;
            log_progress(queue, tracker);
        }
    }
    if !queue.is_empty() {
        tracing::warn!(
            pending = queue.len(),
            timeout_secs = timeout.as_secs(),
            "replay timed out with items still queued; a longer --replay-timeout lets it finish"
        );
    }
    let report = worker.shutdown().await;
    tracing::info!(
        replayed = report.succeeded,
        failed_replays = report.failed,
        pending = queue.len(),
        "replay finished"
    );
    Ok(ReplayTotals {
        replayed: report.succeeded,
        failed_attempts: report.failed,
        expired: report.expired,
    })
}

fn log_progress(queue: &RetryQueue, tracker: &QuotaTracker) {
    let now = clock::now();
    let blocked_ms = tracker
        .snapshot()
        .iter()
        .filter_map(|partition| partition.blocked_until)
        .filter_map(|until| until.duration_since(now).ok())
        .max()
        .map_or(0, |wait| wait.as_millis() as u64);
    tracing::info!(
        pending = queue.len(),
        quota_blocked_ms = blocked_ms,
        "replay in progress"
    );
}

/// Returns the request id inside a queued chat request's JSON body.
pub(crate) fn request_id_of(item: &QueuedRequest) -> Option<String> {
    let body: serde_json::Value = serde_json::from_slice(item.body()).ok()?;
    body.pointer("/metadata/request_id")?
        .as_str()
        .map(str::to_owned)
}

/// The request ids of this queue's items, split by where they are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct StoredIds {
    /// Ids of items waiting for a replay or being replayed.
    pub(crate) pending: HashSet<String>,
    /// Ids of items that ran out of attempts.
    pub(crate) dead_letters: HashSet<String>,
}

/// Lists the request ids still stored in the queue, pending and dead letters apart. Items that
/// wait for their `Retry-After` count as pending, and no item is taken.
pub(crate) fn stored_request_ids(queue: &RetryQueue) -> Result<StoredIds, BoxError> {
    let pending = queue.pending()?;
    let dead_letters = queue.dead_letters()?;
    Ok(StoredIds {
        pending: pending.iter().filter_map(request_id_of).collect(),
        dead_letters: dead_letters.iter().filter_map(request_id_of).collect(),
    })
}
