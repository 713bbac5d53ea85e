//! The background replay worker.

mod backoff;
mod run;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower::Service;

pub use backoff::Backoff;

use super::classify::{DefaultClassifier, RetryClassifier};
use super::queue::RetryQueue;
use crate::quota::QuotaTracker;
use crate::BoxError;

/// A builder for the task that drains a [`RetryQueue`] in the background.
///
/// Created by [`RetryQueue::replay_worker`] and started with [`spawn`](Self::spawn). The worker
/// leases ready items whose `not_before` has passed, replays them through the service with
/// bounded concurrency, acks successes and nacks failures with an exponential [`Backoff`]. With a
/// [`QuotaTracker`] it leaves items of an exhausted partition in the queue and sleeps until the
/// partition's reset or `Retry-After` deadline.
///
/// A failure is an error from the service or a response that the classifier calls retryable
/// (default: 429, 502, 503 and 504). A retryable response's `Retry-After` delays the item's next
/// replay at least that long. Every other response acks the item.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower_quota_queue::retry_queue::{Backoff, RetryQueue, RetryQueueConfig};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let queue = RetryQueue::open(RetryQueueConfig::new().path(dir.path()))?;
///
/// // The service that replays requests: usually the client stack below `RetryQueueLayer`.
/// let upstream = tower::service_fn(|_request: http::Request<Full<Bytes>>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(()))
/// });
///
/// let worker = queue
///     .replay_worker(upstream)
///     .concurrency(8)
///     .backoff(Backoff::new(Duration::from_millis(500), Duration::from_secs(60)))
///     .spawn();
///
/// // ... the application runs; failed requests drain by themselves ...
///
/// let report = worker.shutdown().await;
/// assert_eq!(report.failed, 0);
/// # Ok(())
/// # }
/// ```
#[must_use = "a replay worker does nothing until spawned"]
pub struct ReplayWorker<S, C = DefaultClassifier> {
    queue: RetryQueue,
    service: S,
    classifier: C,
    concurrency: usize,
    backoff: Backoff,
    shutdown_timeout: Duration,
    tracker: Option<QuotaTracker>,
}

impl RetryQueue {
    /// Creates a [`ReplayWorker`] that replays this queue's items through `service`.
    ///
    /// The service is cloned for each replay, so replays run concurrently. Nothing runs until
    /// [`ReplayWorker::spawn`].
    pub fn replay_worker<S>(&self, service: S) -> ReplayWorker<S> {
        ReplayWorker {
            queue: self.clone(),
            service,
            classifier: DefaultClassifier,
            concurrency: 4,
            backoff: Backoff::default(),
            shutdown_timeout: Duration::from_secs(30),
            tracker: None,
        }
    }
}

impl<S, C> ReplayWorker<S, C> {
    /// Sets how many replays may run at once. Default: 4. Zero is raised to one.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Sets the delay between failed replays of one item. Default: [`Backoff::default`], 1 s
    /// doubling up to 5 min, with full jitter.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets how long [`WorkerHandle::shutdown`] lets running replays finish before it cancels
    /// them and returns their items to the queue. Default: 30 s.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Makes the worker skip partitions that `tracker` reports exhausted until their deadline.
    /// Default: no tracker, so only `not_before` and the backoff delay replays.
    ///
    /// The tracker learns about the upstream's quota from responses. Wrap the replay service in a
    /// [`QuotaLayer`](crate::quota::QuotaLayer) with the same tracker, so replays update it too.
    /// The worker finds an item's partition by running the tracker's partitioner on the stored
    /// request, the same request that layer receives, so the keys agree even when the
    /// [`RetryQueueLayer`](super::RetryQueueLayer) partitions another way.
    ///
    /// Without a tracker, a replay that an enforcing `QuotaLayer` rejects with
    /// [`QuotaExhausted`](crate::quota::QuotaExhausted) still counts no attempt: the worker holds
    /// that partition back until the error's deadline.
    pub fn quota_tracker(mut self, tracker: QuotaTracker) -> Self {
        self.tracker = Some(tracker);
        self
    }

    /// Sets which replay responses count as failures. Default: [`DefaultClassifier`].
    pub fn classifier<C2>(self, classifier: C2) -> ReplayWorker<S, C2>
    where
        C2: RetryClassifier,
    {
        ReplayWorker {
            queue: self.queue,
            service: self.service,
            classifier,
            concurrency: self.concurrency,
            backoff: self.backoff,
            shutdown_timeout: self.shutdown_timeout,
            tracker: self.tracker,
        }
    }

    /// Starts the worker on the current tokio runtime and returns its handle.
    ///
    /// The service takes requests with any body that converts from `Full<Bytes>`, such as
    /// [`RetryQueueBody`](super::RetryQueueBody), so the client stack below a
    /// [`RetryQueueLayer`](super::RetryQueueLayer) can replay without a body conversion.
    ///
    /// # Panics
    ///
    /// Panics when called outside a tokio runtime, like [`tokio::spawn`].
    pub fn spawn<B, ReqB>(self) -> WorkerHandle
    where
        S: Service<http::Request<ReqB>, Response = http::Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Send + 'static,
        ReqB: From<Full<Bytes>> + Send + 'static,
        C: RetryClassifier,
    {
        let (stop, stopped) = watch::channel(false);
        let worker = run::Worker {
            queue: self.queue,
            classifier: Arc::new(self.classifier),
            concurrency: self.concurrency,
            backoff: self.backoff,
            shutdown_timeout: self.shutdown_timeout,
            tracker: self.tracker,
            deferred: std::sync::Mutex::default(),
        };
        WorkerHandle {
            stop,
            task: Some(tokio::spawn(worker.run(self.service, stopped))),
        }
    }
}

impl<S, C> fmt::Debug for ReplayWorker<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayWorker")
            .field("queue", &self.queue)
            .field("concurrency", &self.concurrency)
            .field("backoff", &self.backoff)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("quota_tracker", &self.tracker.is_some())
            .finish_non_exhaustive()
    }
}

/// The counts of a replay worker's run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerReport {
    /// Items replayed successfully and acked.
    pub succeeded: usize,
    /// Failed replays, each nacked: requeued with a backoff or dead-lettered.
    pub failed: usize,
    /// The failed replays whose item reached `max_attempts` and moved to the dead letters.
    pub dead_lettered: usize,
    /// Stale items removed without a replay.
    pub expired: usize,
    /// Replays that a quota-enforcing layer in the replay service rejected before sending
    /// ([`QuotaExhausted`](crate::quota::QuotaExhausted)). Each item returns to its place with no
    /// attempt counted, and its partition waits until the reported deadline.
    pub deferred: usize,
    /// Replays still running at shutdown after the timeout, cancelled and released: each item
    /// returns to its original place in the queue with its attempt count unchanged, so repeated
    /// shutdowns cannot dead-letter an item whose replays never finished.
    pub interrupted: usize,
}

/// The handle of a running [`ReplayWorker`].
///
/// [`shutdown`](Self::shutdown) stops the worker and waits for it. Dropping the handle stops the
/// worker too, and the worker finishes its shutdown in the background.
pub struct WorkerHandle {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<WorkerReport>>,
}

impl WorkerHandle {
    /// Stops taking items, lets running replays finish up to the shutdown timeout, returns the
    /// items of replays still running after it to the queue, and returns the counts of the run.
    ///
    /// Every item stays in the queue until a replay of it succeeded, so a restarted process
    /// resumes where this one stopped.
    pub async fn shutdown(mut self) -> WorkerReport {
        self.stop.send_replace(true);
        let Some(task) = self.task.take() else {
            return WorkerReport::default();
        };
        match task.await {
            Ok(report) => report,
            Err(error) => {
                tracing::warn!(%error, "replay worker task failed");
                WorkerReport::default()
            }
        }
    }

    /// Returns whether the worker task has ended.
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().map_or(true, JoinHandle::is_finished)
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

impl fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}
