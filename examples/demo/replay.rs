//! Draining the retry queue after the outage.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tokio::time::Instant;
use tower::Service;
use tower_quota_queue::quota::QuotaTracker;
use tower_quota_queue::retry_queue::{QueuedRequest, RetryQueue};
use tower_quota_queue::{clock, BoxError};

/// The counts of all replay rounds together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ReplayTotals {
    pub(crate) replayed: usize,
    pub(crate) failed_attempts: usize,
    pub(crate) dead_lettered: usize,
    pub(crate) expired: usize,
}

/// The shortest pause between replay rounds, so an item that keeps failing cannot spin the loop.
const MIN_PAUSE: Duration = Duration::from_millis(50);

/// Replays the queue through `service` until it is empty or `timeout` has passed.
///
/// Before each round it waits while `tracker` reports `partition` exhausted, so no replay is
/// spent on a window the server has already closed.
pub(crate) async fn drain<S, B>(
    queue: &RetryQueue,
    service: &mut S,
    tracker: &QuotaTracker,
    partition: &str,
    timeout: Duration,
) -> Result<ReplayTotals, BoxError>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: Into<BoxError>,
{
    let deadline = Instant::now() + timeout;
    let mut totals = ReplayTotals::default();
    while !queue.is_empty() && Instant::now() < deadline {
        if let Some(blocked_until) = tracker.blocked_until(partition) {
            let wake_at = clock::instant_at(blocked_until).min(deadline);
            tracing::info!(
                partition,
                pending = queue.len(),
                wait_ms = wake_at
                    .saturating_duration_since(Instant::now())
                    .as_millis() as u64,
                "quota exhausted, pausing the replay until the window resets"
            );
            tokio::time::sleep_until(wake_at).await;
            continue;
        }
        let report = queue.process_all(service).await?;
        totals.replayed += report.succeeded;
        totals.failed_attempts += report.failed;
        totals.dead_lettered += report.dead_lettered;
        totals.expired += report.expired;
        if queue.is_empty() {
            break;
        }
        // Items that got a 429 wait for their Retry-After; the rest wait a short pause.
        let wake_at = queue
            .next_ready_at()
            .map_or(Instant::now(), clock::instant_at)
            .max(Instant::now() + MIN_PAUSE)
            .min(deadline);
        tracing::info!(
            pending = queue.len(),
            wait_ms = wake_at
                .saturating_duration_since(Instant::now())
                .as_millis() as u64,
            "waiting before the next replay round"
        );
        tokio::time::sleep_until(wake_at).await;
    }
    Ok(totals)
}

/// Returns the request id inside a queued chat request's JSON body.
pub(crate) fn request_id_of(item: &QueuedRequest) -> Option<String> {
    let body: serde_json::Value = serde_json::from_slice(item.body()).ok()?;
    body.pointer("/metadata/request_id")?
        .as_str()
        .map(str::to_owned)
}

/// Lists the request ids still stored in the queue, dead letters included.
///
/// Returns the ids and the number of items that could not be listed: items whose `Retry-After`
/// has not passed are invisible to `take_where`, so they count as unlisted.
pub(crate) async fn stored_request_ids(
    queue: &RetryQueue,
) -> Result<(HashSet<String>, usize), BoxError> {
    let mut ids = HashSet::new();
    let mut visited = 0;
    // A predicate that rejects every item visits each ready item and leases none.
    queue
        .take_where(|item| {
            visited += 1;
            ids.extend(request_id_of(item));
            false
        })
        .await?;
    for item in queue.dead_letters()? {
        ids.extend(request_id_of(&item));
    }
    let unlisted = queue.len().saturating_sub(visited);
    Ok((ids, unlisted))
}
