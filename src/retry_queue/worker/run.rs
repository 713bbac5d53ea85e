//! The replay worker's task.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use tokio::sync::watch;
use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::Instant;
use tower::Service;
use uuid::Uuid;

use super::{Backoff, WorkerReport};
use crate::quota::{QuotaExhausted, QuotaTracker};
use crate::retry_queue::classify::{retry_after, RetryClassifier};
use crate::retry_queue::queue::{NackOutcome, RetryQueue};
use crate::retry_queue::replay::RetryableStatus;
use crate::retry_queue::request::QueuedRequest;
use crate::{clock, BoxError};

/// How long the worker waits before it tries the queue again after a storage error.
const STORAGE_RETRY_DELAY: Duration = Duration::from_secs(1);

/// The worker's settings and shared handles. The service lives outside it, in [`Worker::run`], so
/// that the worker needs no `Sync` service.
pub(super) struct Worker<C> {
    pub(super) queue: RetryQueue,
    pub(super) classifier: Arc<C>,
    pub(super) concurrency: usize,
    pub(super) backoff: Backoff,
    pub(super) shutdown_timeout: Duration,
    pub(super) tracker: Option<QuotaTracker>,
    /// Partitions that a quota-enforcing replay service rejected, with the deadline it reported.
    pub(super) deferred: Mutex<HashMap<String, SystemTime>>,
}

/// The result of one replay.
enum Outcome {
    Succeeded,
    /// The worker cancelled the replay at shutdown. The item goes back to its place without a
    /// backoff or an attempt, as it would after a crash.
    Interrupted,
    /// A quota-enforcing layer in the replay service rejected the request before sending it, so
    /// the item goes back without an attempt and its partition waits until `until`.
    Deferred {
        until: SystemTime,
    },
    Failed {
        error: String,
        retry_after: Option<SystemTime>,
    },
}

/// The item behind a running replay task.
#[derive(Clone)]
struct Lease {
    id: Uuid,
    attempts: u32,
    partition: String,
}

/// The replays that are running, by task.
struct Running {
    tasks: JoinSet<Outcome>,
    leases: HashMap<Id, Lease>,
    /// The number of running replays per partition key of the quota tracker.
    per_partition: HashMap<String, usize>,
}

impl Running {
    fn insert(&mut self, task: Id, lease: Lease) {
        *self
            .per_partition
            .entry(lease.partition.clone())
            .or_default() += 1;
        self.leases.insert(task, lease);
    }

    fn remove(&mut self, task: Id) -> Option<Lease> {
        let lease = self.leases.remove(&task)?;
        if let Some(count) = self.per_partition.get_mut(&lease.partition) {
            *count -= 1;
            if *count == 0 {
                self.per_partition.remove(&lease.partition);
            }
        }
        Some(lease)
    }

    fn in_partition(&self, partition: &str) -> usize {
        self.per_partition.get(partition).copied().unwrap_or(0)
    }
}

impl<C: RetryClassifier> Worker<C> {
    pub(super) async fn run<S, B, ReqB>(
        self,
        service: S,
        mut stop: watch::Receiver<bool>,
    ) -> WorkerReport
    where
        S: Service<http::Request<ReqB>, Response = http::Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Send + 'static,
        ReqB: From<Full<Bytes>> + Send + 'static,
    {
        tracing::info!(
            pending = self.queue.len(),
            concurrency = self.concurrency,
            "replay worker started"
        );
        let mut report = WorkerReport::default();
        let mut running = Running {
            tasks: JoinSet::new(),
            leases: HashMap::new(),
            per_partition: HashMap::new(),
        };
        while !*stop.borrow_and_update() {
            let wake_at = self.start_ready(&service, &mut running, &mut report);
            // A permit stored by an enqueue since the last wait completes this at once.
            let enqueued = self.queue.notify().notified();
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                Some(joined) = running.tasks.join_next_with_id() => {
                    self.settle(joined, &mut running, &mut report).await;
                }
                () = enqueued => {}
                () = sleep_until(wake_at) => {}
            }
        }
        self.stop(running, report).await
    }

    /// Starts replays of ready items until the concurrency limit is reached or no item can go now.
    /// Returns when the worker must look again if nothing else wakes it.
    fn start_ready<S, B, ReqB>(
        &self,
        service: &S,
        running: &mut Running,
        report: &mut WorkerReport,
    ) -> Option<SystemTime>
    where
        S: Service<http::Request<ReqB>, Response = http::Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Send + 'static,
        ReqB: From<Full<Bytes>> + Send + 'static,
    {
        while running.tasks.len() < self.concurrency {
            let now = clock::now();
            let mut blocked_until: Option<SystemTime> = None;
            let leased = self.queue.take_before(u64::MAX, |item| {
                let partition = self.partition_of(item);
                if let Some(deadline) = self.partition_blocked_until(&partition, now) {
                    blocked_until = Some(blocked_until.map_or(deadline, |d| d.min(deadline)));
                    return false;
                }
                // A completing replay wakes the worker, so an item skipped here is looked at again.
                !self.partition_saturated(&partition, running.in_partition(&partition))
            });
            match leased {
                Ok((item, expired)) => {
                    report.expired += expired;
                    let Some(item) = item else {
                        let next_due = self.queue.next_not_before_after(now);
                        return earliest(blocked_until, next_due);
                    };
                    self.start(service.clone(), item, running);
                }
                Err(error) => {
                    tracing::warn!(%error, "replay worker failed to take an item, retrying in 1 s");
                    return Some(clock::time_after(now, STORAGE_RETRY_DELAY));
                }
            }
        }
        None
    }

    /// Returns the deadline of the item's partition when the quota tracker reports it exhausted
    /// or a quota-enforcing replay service rejected a request to it.
    fn partition_blocked_until(&self, partition: &str, now: SystemTime) -> Option<SystemTime> {
        let deferred = self.deferred_until(partition, now);
        let tracked = self
            .tracker
            .as_ref()
            .and_then(|tracker| tracker.blocked_until(partition));
        latest(deferred, tracked).filter(|deadline| *deadline > now)
    }

    /// Returns whether the partition already has as many replays running as the tracker reports it
    /// has requests left. One replay may always run, so a count that never resets cannot stall
    /// the partition.
    fn partition_saturated(&self, partition: &str, running: usize) -> bool {
        if running == 0 {
            return false;
        }
        let Some(tracker) = &self.tracker else {
            return false;
        };
        tracker
            .remaining_requests(partition)
            .is_some_and(|remaining| u64::try_from(running).map_or(true, |n| n >= remaining))
    }

    /// Returns the key under which the quota tracker stores the item's partition.
    ///
    /// The tracker's own partitioner runs on the stored request, which is the request that a
    /// `QuotaLayer` in the replay service receives, so the keys agree even when the
    /// `RetryQueueLayer` was given another partitioner.
    fn partition_of<'a>(&self, item: &'a QueuedRequest) -> std::borrow::Cow<'a, str> {
        match &self.tracker {
            Some(tracker) => tracker.partition_key(item.uri(), item.headers()),
            None => std::borrow::Cow::Borrowed(item.partition()),
        }
    }

    fn deferred_until(&self, partition: &str, now: SystemTime) -> Option<SystemTime> {
        let mut deferred = self.deferred.lock().unwrap_or_else(PoisonError::into_inner);
        deferred.retain(|_, until| *until > now);
        deferred.get(partition).copied()
    }

    fn start<S, B, ReqB>(&self, service: S, item: QueuedRequest, running: &mut Running)
    where
        S: Service<http::Request<ReqB>, Response = http::Response<B>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Send + 'static,
        ReqB: From<Full<Bytes>> + Send + 'static,
    {
        let lease = Lease {
            id: item.id(),
            attempts: item.attempts(),
            partition: self.partition_of(&item).into_owned(),
        };
        tracing::debug!(
            request_id = %lease.id,
            attempt = lease.attempts + 1,
            "replaying queued request"
        );
        let classifier = Arc::clone(&self.classifier);
        let task = running.tasks.spawn(replay(
            service,
            classifier,
            item.into_request().map(ReqB::from),
        ));
        running.insert(task.id(), lease);
    }

    /// Acks or nacks the item of a finished replay task.
    async fn settle(
        &self,
        joined: Result<(Id, Outcome), JoinError>,
        running: &mut Running,
        report: &mut WorkerReport,
    ) {
        let (task, outcome) = match joined {
            Ok(finished) => finished,
            Err(error) if error.is_cancelled() => (error.id(), Outcome::Interrupted),
            Err(error) => {
                let failed = Outcome::Failed {
                    error: "replay task panicked".to_owned(),
                    retry_after: None,
                };
                (error.id(), failed)
            }
        };
        let Some(lease) = running.remove(task) else {
            return;
        };
        match outcome {
            Outcome::Succeeded => self.ack(lease.id, report).await,
            Outcome::Deferred { until } => self.defer(lease, until, report).await,
            Outcome::Interrupted => {
                report.interrupted += 1;
                if let Err(queue_error) = self.queue.release(lease.id).await {
                    tracing::warn!(
                        request_id = %lease.id,
                        error = %queue_error,
                        "failed to return a cancelled replay to the queue"
                    );
                }
            }
            Outcome::Failed { error, retry_after } => {
                self.nack(lease, &error, retry_after, report).await;
            }
        }
    }

    async fn defer(&self, lease: Lease, until: SystemTime, report: &mut WorkerReport) {
        report.deferred += 1;
        tracing::debug!(
            request_id = %lease.id,
            partition = %lease.partition,
            "replay held back by quota enforcement"
        );
        self.deferred
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(lease.partition)
            .and_modify(|deadline| *deadline = (*deadline).max(until))
            .or_insert(until);
        if let Err(error) = self.queue.release(lease.id).await {
            tracing::warn!(
                request_id = %lease.id,
                %error,
                "failed to return a held-back replay to the queue"
            );
        }
    }

    async fn ack(&self, id: Uuid, report: &mut WorkerReport) {
        match self.queue.ack(id).await {
            Ok(()) => {
                report.succeeded += 1;
                tracing::debug!(request_id = %id, "replayed queued request");
            }
            Err(error) => {
                tracing::warn!(request_id = %id, %error, "failed to ack a replayed request");
            }
        }
    }

    async fn nack(
        &self,
        lease: Lease,
        error: &str,
        retry_after: Option<SystemTime>,
        report: &mut WorkerReport,
    ) {
        report.failed += 1;
        let failures = lease.attempts.saturating_add(1);
        let delay = self.backoff.delay(failures);
        let backed_off = clock::time_after(clock::now(), delay);
        let not_before = retry_after.map_or(backed_off, |at| at.max(backed_off));
        match self.queue.nack(lease.id, error, Some(not_before)).await {
            Ok(NackOutcome::DeadLettered) => report.dead_lettered += 1,
            Ok(_) => tracing::debug!(
                request_id = %lease.id,
                attempt = failures,
                error,
                backoff_ms = delay.as_millis(),
                "replay failed, requeued"
            ),
            Err(queue_error) => tracing::warn!(
                request_id = %lease.id,
                error = %queue_error,
                "failed to nack a failed replay"
            ),
        }
    }

    /// Lets running replays finish until the shutdown timeout, then cancels the rest and returns
    /// their items to the queue.
    async fn stop(&self, mut running: Running, mut report: WorkerReport) -> WorkerReport {
        let deadline = clock::instant_after(Instant::now(), self.shutdown_timeout);
        loop {
            tokio::select! {
                joined = running.tasks.join_next_with_id() => match joined {
                    Some(joined) => self.settle(joined, &mut running, &mut report).await,
                    None => break,
                },
                () = tokio::time::sleep_until(deadline) => {
                    running.tasks.abort_all();
                    while let Some(joined) = running.tasks.join_next_with_id().await {
                        self.settle(joined, &mut running, &mut report).await;
                    }
                    break;
                }
            }
        }
        tracing::info!(
            succeeded = report.succeeded,
            failed = report.failed,
            deferred = report.deferred,
            dead_lettered = report.dead_lettered,
            expired = report.expired,
            interrupted = report.interrupted,
            pending = self.queue.len(),
            "replay worker stopped"
        );
        report
    }
}

/// Sends one replay and classifies its result.
async fn replay<S, C, B, ReqB>(
    mut service: S,
    classifier: Arc<C>,
    request: http::Request<ReqB>,
) -> Outcome
where
    S: Service<http::Request<ReqB>, Response = http::Response<B>>,
    S::Error: Into<BoxError>,
    C: RetryClassifier,
{
    if let Err(error) = std::future::poll_fn(|cx| service.poll_ready(cx)).await {
        return failed(error.into());
    }
    match service.call(request).await {
        Ok(response) if classifier.is_retryable(response.status(), response.headers()) => {
            Outcome::Failed {
                error: RetryableStatus(response.status()).to_string(),
                retry_after: retry_after(response.headers(), clock::now()),
            }
        }
        Ok(_) => Outcome::Succeeded,
        Err(error) => failed(error.into()),
    }
}

/// Classifies a service error: a [`QuotaExhausted`] anywhere in its chain means the request was
/// never sent.
fn failed(error: BoxError) -> Outcome {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
    while let Some(current) = source {
        if let Some(exhausted) = current.downcast_ref::<QuotaExhausted>() {
            return Outcome::Deferred {
                until: exhausted.deadline(),
            };
        }
        source = current.source();
    }
    Outcome::Failed {
        error: error.to_string(),
        retry_after: None,
    }
}

fn latest(a: Option<SystemTime>, b: Option<SystemTime>) -> Option<SystemTime> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn earliest(a: Option<SystemTime>, b: Option<SystemTime>) -> Option<SystemTime> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Sleeps until a wall-clock deadline, or forever without one.
async fn sleep_until(deadline: Option<SystemTime>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(clock::instant_at(deadline)).await,
        None => std::future::pending().await,
    }
}
