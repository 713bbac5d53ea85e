//! Edge cases of the replay worker: shutdown while replays hang, extreme timeouts and backoffs,
//! a partition blocked until the far future, and services that fail `poll_ready` or panic.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Full;
use tower::{service_fn, BoxError};
use tower_quota_queue::quota::QuotaTracker;
use tower_quota_queue::retry_queue::{
    Backoff, Durability, QueuedRequest, RetryQueue, RetryQueueConfig,
};

const SECOND: Duration = Duration::from_secs(1);

fn open(dir: &tempfile::TempDir, max_attempts: u32) -> RetryQueue {
    RetryQueue::open(
        RetryQueueConfig::new()
            .path(dir.path())
            .durability(Durability::Periodic)
            .max_attempts(max_attempts),
    )
    .unwrap()
}

fn item(authority: &str) -> QueuedRequest {
    let request = Request::post(format!("http://{authority}/v1/items"))
        .body(Bytes::from_static(b"{}"))
        .unwrap();
    QueuedRequest::new(request, "503 Service Unavailable")
}

fn status(code: StatusCode) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = code;
    response
}

/// Advances paused time in 10 ms steps until `done` returns `true`, at most `limit` of virtual time.
async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !done() {
        assert!(
            start.elapsed() < limit,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_interrupt_never_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(&dir, 1);
    let service = service_fn(|_: Request<Full<Bytes>>| async {
        std::future::pending::<()>().await;
        Ok::<_, Infallible>(status(StatusCode::OK))
    });
    let id = queue.enqueue(item("api.test")).await.unwrap();

    let worker = queue
        .replay_worker(service)
        .shutdown_timeout(SECOND)
        .spawn();
    wait_until(SECOND, || queue.stats().in_flight == 1).await;
    let report = worker.shutdown().await;

    assert_eq!(report.interrupted, 1);
    assert_eq!(report.dead_lettered, 0);
    let stats = queue.stats();
    assert_eq!(
        stats.dead, 0,
        "a cancelled replay moved the item to dead letters"
    );
    assert_eq!(stats.pending, 1);
    let ready = queue.take().await.unwrap().map(|item| item.id());
    assert_eq!(ready, Some(id));
}

#[tokio::test(start_paused = true)]
async fn shutdown_with_max_timeout_acks_replay() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(&dir, 5);
    let service = service_fn(|_: Request<Full<Bytes>>| async {
        tokio::time::sleep(SECOND).await;
        Ok::<_, Infallible>(status(StatusCode::OK))
    });
    queue.enqueue(item("api.test")).await.unwrap();

    // A caller passes `Duration::MAX` to wait for running replays however long they take.
    let worker = queue
        .replay_worker(service)
        .shutdown_timeout(Duration::MAX)
        .spawn();
    wait_until(SECOND, || queue.stats().in_flight == 1).await;
    let report = worker.shutdown().await;

    assert_eq!(report.succeeded, 1);
    assert_eq!(queue.stats().in_flight, 0);
    assert!(queue.is_empty());
}

#[tokio::test(start_paused = true)]
async fn huge_backoff_requeues_failed_replay() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(&dir, 5);
    let calls = Arc::new(AtomicUsize::new(0));
    let service = service_fn({
        let calls = Arc::clone(&calls);
        move |_: Request<Full<Bytes>>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Infallible>(status(StatusCode::SERVICE_UNAVAILABLE)) }
        }
    });
    queue.enqueue(item("api.test")).await.unwrap();

    let backoff = Backoff::new(Duration::MAX, Duration::MAX).without_jitter();
    let worker = queue.replay_worker(service).backoff(backoff).spawn();
    wait_until(SECOND, || calls.load(Ordering::SeqCst) == 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    assert!(
        !worker.is_finished(),
        "the worker task ended after one failed replay"
    );
    let stats = queue.stats();
    assert_eq!(stats.in_flight, 0, "the failed replay was never nacked");
    assert_eq!(stats.pending, 1);
    let report = worker.shutdown().await;
    assert_eq!(report.failed, 1);
}

#[tokio::test(start_paused = true)]
async fn far_future_block_spares_other_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(&dir, 5);
    let tracker = QuotaTracker::new();
    let mut headers = HeaderMap::new();
    headers.insert("retry-after", "9000000000000000000".parse().unwrap());
    tracker.record_response("blocked.test", StatusCode::TOO_MANY_REQUESTS, &headers);
    assert!(tracker.blocked_until("blocked.test").is_some());

    let service =
        service_fn(|_: Request<Full<Bytes>>| async { Ok::<_, Infallible>(status(StatusCode::OK)) });
    queue.enqueue(item("blocked.test")).await.unwrap();
    queue.enqueue(item("open.test")).await.unwrap();

    let worker = queue.replay_worker(service).quota_tracker(tracker).spawn();
    wait_until(SECOND, || queue.len() == 1).await;
    assert!(!worker.is_finished());
    let report = worker.shutdown().await;

    assert_eq!(report.succeeded, 1);
    assert_eq!(queue.stats().pending, 1);
}

/// A service whose `poll_ready` fails, or else whose `call` panics.
#[derive(Clone)]
struct Broken {
    poll_ready_fails: bool,
}

impl tower::Service<Request<Full<Bytes>>> for Broken {
    type Response = Response<()>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Response<()>, BoxError>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        if self.poll_ready_fails {
            std::task::Poll::Ready(Err("connection pool closed".into()))
        } else {
            std::task::Poll::Ready(Ok(()))
        }
    }

    fn call(&mut self, _request: Request<Full<Bytes>>) -> Self::Future {
        panic!("service panicked on purpose");
    }
}

#[tokio::test(start_paused = true)]
async fn broken_services_requeue_items() {
    for poll_ready_fails in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let queue = open(&dir, 5);
        let id = queue.enqueue(item("api.test")).await.unwrap();

        let worker = queue
            .replay_worker(Broken { poll_ready_fails })
            .backoff(Backoff::new(SECOND, SECOND).without_jitter())
            .spawn();
        // With a 1 s backoff, 3 s leave room for at least two failed replays.
        tokio::time::sleep(3 * SECOND).await;
        assert!(
            !worker.is_finished(),
            "worker ended, poll_ready_fails {poll_ready_fails}"
        );
        let report = worker.shutdown().await;

        assert!(
            report.failed >= 2,
            "poll_ready_fails {poll_ready_fails}: {report:?}"
        );
        let stats = queue.stats();
        assert_eq!(stats.in_flight, 0);
        assert_eq!(stats.pending + stats.dead, 1);
        let stored: Vec<_> = queue
            .dead_letters()
            .unwrap()
            .iter()
            .map(|item| item.id())
            .collect();
        let ready = queue.take().await.unwrap().map(|item| item.id());
        assert!(ready == Some(id) || stored == vec![id]);
    }
}
