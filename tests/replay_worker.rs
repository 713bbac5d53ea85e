//! The background replay worker: backoff, quota pauses, Retry-After, shutdown and restart.
//!
//! Every test except the loopback drain runs under paused tokio time, so schedules of seconds and
//! minutes run instantly and are measured exactly.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Full;
use tokio::time::Instant;
use tower::{service_fn, BoxError, ServiceBuilder};
use tower_quota_queue::quota::{Enforcement, QuotaLayer, QuotaTracker};
use tower_quota_queue::retry_queue::{
    Backoff, Durability, QueuedRequest, RetryQueue, RetryQueueBody, RetryQueueConfig,
};
use uuid::Uuid;

const SECOND: Duration = Duration::from_secs(1);

/// One request the fake upstream received: when, and the item id from its `Idempotency-Key`.
#[derive(Clone, Debug)]
struct Call {
    at: Instant,
    id: Uuid,
    authority: String,
}

#[derive(Clone, Default)]
struct Calls(Arc<Mutex<Vec<Call>>>);

impl Calls {
    fn record(&self, request: &Request<Full<Bytes>>) {
        let id = request
            .headers()
            .get("idempotency-key")
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.parse().ok())
            .unwrap_or_default();
        let authority = request
            .uri()
            .authority()
            .map(ToString::to_string)
            .unwrap_or_default();
        self.0.lock().unwrap().push(Call {
            at: Instant::now(),
            id,
            authority,
        });
    }

    fn all(&self) -> Vec<Call> {
        self.0.lock().unwrap().clone()
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

type Upstream = Box<
    dyn Fn(usize, &Request<Full<Bytes>>) -> Pin<Box<dyn Future<Output = Response<()>> + Send>>
        + Send
        + Sync,
>;

/// A fake upstream that records every call and returns `respond(call_index, request)`.
fn upstream(
    calls: &Calls,
    respond: Upstream,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<()>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
       + Send
       + 'static {
    let calls = calls.clone();
    let respond = Arc::new(respond);
    service_fn(move |request: Request<Full<Bytes>>| {
        let index = calls.len();
        calls.record(&request);
        let answer = respond(index, &request);
        async move { Ok::<_, Infallible>(answer.await) }
    })
}

fn status(code: StatusCode) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = code;
    response
}

fn answer(code: StatusCode) -> Pin<Box<dyn Future<Output = Response<()>> + Send>> {
    Box::pin(std::future::ready(status(code)))
}

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
    let request = Request::post(format!("http://{authority}/v1/chat/completions"))
        .body(Bytes::from_static(b"{}"))
        .unwrap();
    QueuedRequest::new(request, "503 Service Unavailable")
}

/// Advances paused time in small steps until `done` holds, at most `limit` of virtual time.
async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < limit,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn gaps(calls: &[Call]) -> Vec<Duration> {
    calls
        .windows(2)
        .map(|pair| pair[1].at - pair[0].at)
        .collect()
}

/// Asserts that `actual` is `expected` up to the timer's millisecond resolution.
fn assert_close(actual: Duration, expected: Duration) {
    let slack = Duration::from_millis(5);
    assert!(
        actual >= expected && actual <= expected + slack,
        "{actual:?} is not {expected:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn backoff_schedule_doubles_to_cap_then_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(&dir, 6);
    let calls = Calls::default();
    let service = upstream(
        &calls,
        Box::new(|_, _| answer(StatusCode::SERVICE_UNAVAILABLE)),
    );
    let id = queue.enqueue(item("api.test")).await.unwrap();

    let worker = queue
        .replay_worker(service)
        .backoff(Backoff::new(SECOND, 8 * SECOND).without_jitter())
        .spawn();
    wait_until(Duration::from_secs(60), || queue.stats().dead == 1).await;
    let report = worker.shutdown().await;

    let calls = calls.all();
    assert_eq!(calls.len(), 6);
    assert!(calls.iter().all(|call| call.id == id));
    let expected = [1, 2, 4, 8, 8].map(|seconds| seconds * SECOND);
    for (gap, expected) in gaps(&calls).into_iter().zip(expected) {
        assert_close(gap, expected);
    }
    assert_eq!(report.failed, 6);
    assert_eq!(report.dead_lettered, 1);
    assert_eq!(report.succeeded, 0);
    assert!(queue.is_empty());
    let dead = queue.dead_letters().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts(), 6);
}

#[tokio::test(start_paused = true)]
async fn jittered_backoff_stays_within_ceilings() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(&dir, 8);
    let calls = Calls::default();
    let service = upstream(&calls, Box::new(|_, _| answer(StatusCode::BAD_GATEWAY)));
    queue.enqueue(item("api.test")).await.unwrap();

    let backoff = Backoff::new(SECOND, 30 * SECOND);
    let worker = queue.replay_worker(service).backoff(backoff).spawn();
    wait_until(Duration::from_secs(600), || queue.stats().dead == 1).await;
    worker.shutdown().await;

    let calls = calls.all();
    assert_eq!(calls.len(), 8);
    let slack = Duration::from_millis(5);
    for (index, gap) in gaps(&calls).into_iter().enumerate() {
        let failures = u32::try_from(index).unwrap() + 1;
        assert!(
            gap <= backoff.ceiling(failures) + slack,
            "gap {index} of {gap:?} exceeds {:?}",
            backoff.ceiling(failures)
        );
    }
}

#[tokio::test(start_paused = true)]
async fn retry_after_delays_the_next_replay() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(&dir, 5);
    let calls = Calls::default();
    let service = upstream(
        &calls,
        Box::new(|index, _| {
            if index == 0 {
                let mut response = status(StatusCode::TOO_MANY_REQUESTS);
                response
                    .headers_mut()
                    .insert(http::header::RETRY_AFTER, "120".parse().unwrap());
                Box::pin(std::future::ready(response))
            } else {
                answer(StatusCode::OK)
            }
        }),
    );
    queue.enqueue(item("api.test")).await.unwrap();

    let worker = queue
        .replay_worker(service)
        .backoff(Backoff::new(Duration::from_millis(10), SECOND).without_jitter())
        .spawn();
    wait_until(Duration::from_secs(600), || queue.is_empty()).await;
    let report = worker.shutdown().await;

    let calls = calls.all();
    assert_eq!(calls.len(), 2);
    assert_close(calls[1].at - calls[0].at, 120 * SECOND);
    assert_eq!(report.failed, 1);
    assert_eq!(report.succeeded, 1);
}

#[tokio::test(start_paused = true)]
async fn exhausted_partition_waits_for_retry_after_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(&dir, 5);
    let tracker = QuotaTracker::new();
    let mut exhausted = HeaderMap::new();
    exhausted.insert(http::header::RETRY_AFTER, "30".parse().unwrap());
    tracker.record_response("limited.test", StatusCode::TOO_MANY_REQUESTS, &exhausted);
    let start = Instant::now();

    let calls = Calls::default();
    let service = upstream(&calls, Box::new(|_, _| answer(StatusCode::OK)));
    for _ in 0..3 {
        queue.enqueue(item("limited.test")).await.unwrap();
    }
    queue.enqueue(item("free.test")).await.unwrap();

    let worker = queue.replay_worker(service).quota_tracker(tracker).spawn();
    wait_until(Duration::from_secs(120), || queue.is_empty()).await;
    worker.shutdown().await;

    let calls = calls.all();
    assert_eq!(calls.len(), 4);
    assert_eq!(calls[0].authority, "free.test");
    assert!(calls[0].at - start < SECOND);
    for call in &calls[1..] {
        assert_eq!(call.authority, "limited.test");
        assert!(
            call.at - start >= 30 * SECOND,
            "sent {:?} after start",
            call.at - start
        );
    }
}

#[tokio::test(start_paused = true)]
async fn remaining_zero_pauses_partition_until_reset() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(&dir, 5);
    let tracker = QuotaTracker::new();
    let calls = Calls::default();
    // Every response reports no requests left in a window of 60 s.
    let inner = upstream(
        &calls,
        Box::new(|_, _| {
            let mut response = status(StatusCode::OK);
            let headers = response.headers_mut();
            headers.insert("x-ratelimit-limit", "10".parse().unwrap());
            headers.insert("x-ratelimit-remaining", "0".parse().unwrap());
            headers.insert("x-ratelimit-reset", "60".parse().unwrap());
            Box::pin(std::future::ready(response))
        }),
    );
    let service = ServiceBuilder::new()
        .layer(QuotaLayer::new(tracker.clone()))
        .service(inner);
    for _ in 0..3 {
        queue.enqueue(item("api.test")).await.unwrap();
    }
    let start = Instant::now();

    let worker = queue
        .replay_worker(service)
        .concurrency(1)
        .quota_tracker(tracker)
        .spawn();
    wait_until(Duration::from_secs(600), || queue.is_empty()).await;
    worker.shutdown().await;

    let calls = calls.all();
    assert_eq!(calls.len(), 3);
    assert!(calls[0].at - start < SECOND);
    for gap in gaps(&calls) {
        assert!(
            gap >= 60 * SECOND,
            "replayed {gap:?} after the previous one"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn enqueue_wakes_an_idle_worker_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(&dir, 5);
    let calls = Calls::default();
    let service = upstream(&calls, Box::new(|_, _| answer(StatusCode::OK)));
    let worker = queue.replay_worker(service).spawn();

    // An idle worker sets no timer, so paused time does not move while it waits.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(calls.len(), 0);
    let enqueued_at = Instant::now();
    queue.enqueue(item("api.test")).await.unwrap();
    wait_until(SECOND, || queue.is_empty()).await;
    worker.shutdown().await;

    let calls = calls.all();
    assert_eq!(calls.len(), 1);
    assert!(calls[0].at - enqueued_at < Duration::from_millis(20));
}

#[tokio::test(start_paused = true)]
async fn shutdown_returns_unfinished_replays_to_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(&dir, 5);
    let calls = Calls::default();
    let service = upstream(
        &calls,
        Box::new(|_, _| Box::pin(std::future::pending::<Response<()>>())),
    );
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(queue.enqueue(item("api.test")).await.unwrap());
    }

    let worker = queue
        .replay_worker(service)
        .concurrency(3)
        .shutdown_timeout(2 * SECOND)
        .spawn();
    wait_until(SECOND, || calls.len() == 3).await;
    assert_eq!(queue.stats().in_flight, 3);
    let before = Instant::now();
    let report = worker.shutdown().await;

    assert_close(before.elapsed(), 2 * SECOND);
    assert_eq!(report.interrupted, 3);
    assert_eq!(report.succeeded, 0);
    let stats = queue.stats();
    assert_eq!(stats.in_flight, 0);
    assert_eq!(stats.pending, 5);
    assert_eq!(stats.dead, 0);
    // The cancelled replays return to their places in FIFO order, with no attempt counted.
    let mut ready = Vec::new();
    while let Some(item) = queue.take().await.unwrap() {
        assert_eq!(item.attempts(), 0);
        ready.push(item.id());
    }
    assert_eq!(ready, ids);
}

#[tokio::test(start_paused = true)]
async fn shutdown_lets_running_replays_finish() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(&dir, 5);
    let calls = Calls::default();
    let service = upstream(
        &calls,
        Box::new(|_, _| {
            Box::pin(async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                status(StatusCode::OK)
            })
        }),
    );
    for _ in 0..5 {
        queue.enqueue(item("api.test")).await.unwrap();
    }

    let worker = queue.replay_worker(service).concurrency(2).spawn();
    wait_until(SECOND, || calls.len() == 2).await;
    let report = worker.shutdown().await;

    assert_eq!(report.succeeded, 2);
    assert_eq!(report.interrupted, 0);
    assert_eq!(calls.len(), 2);
    assert_eq!(queue.stats().pending, 3);
    assert_eq!(queue.stats().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn dropped_handle_stops_worker_in_background() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(&dir, 5);
    let calls = Calls::default();
    let service = upstream(
        &calls,
        Box::new(|_, _| Box::pin(std::future::pending::<Response<()>>())),
    );
    for _ in 0..2 {
        queue.enqueue(item("api.test")).await.unwrap();
    }
    let worker = queue
        .replay_worker(service)
        .shutdown_timeout(SECOND)
        .spawn();
    wait_until(SECOND, || queue.stats().in_flight == 2).await;

    drop(worker);
    wait_until(5 * SECOND, || queue.stats().in_flight == 0).await;
    assert_eq!(queue.stats().pending, 2);
    // A stopped worker takes nothing new.
    queue.enqueue(item("api.test")).await.unwrap();
    tokio::time::sleep(10 * SECOND).await;
    assert_eq!(calls.len(), 2);
    assert_eq!(queue.stats().pending, 3);
}

#[test]
fn restart_mid_drain_finishes_the_drain() {
    let dir = tempfile::tempdir().unwrap();
    let calls = Calls::default();
    let mut ids = Vec::new();

    // First run: two replays succeed, the next ones hang, and the process "dies" with them in
    // flight: the runtime is dropped without a shutdown.
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    first.block_on(async {
        let queue = open(&dir, 5);
        for _ in 0..10 {
            ids.push(queue.enqueue(item("api.test")).await.unwrap());
        }
        let service = upstream(
            &calls,
            Box::new(|index, _| {
                if index < 2 {
                    answer(StatusCode::OK)
                } else {
                    Box::pin(std::future::pending::<Response<()>>())
                }
            }),
        );
        let worker = queue.replay_worker(service).concurrency(3).spawn();
        wait_until(SECOND, || calls.len() == 5).await;
        assert_eq!(queue.len(), 8);
        assert_eq!(queue.stats().in_flight, 3);
        std::mem::forget(worker);
    });
    drop(first);

    // Second run: the three in-flight items are ready again and everything drains.
    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    second.block_on(async {
        let queue = open(&dir, 5);
        assert_eq!(queue.stats().pending, 8);
        assert_eq!(queue.stats().in_flight, 0);
        let service = upstream(&calls, Box::new(|_, _| answer(StatusCode::OK)));
        let worker = queue.replay_worker(service).concurrency(3).spawn();
        wait_until(10 * SECOND, || queue.is_empty()).await;
        let report = worker.shutdown().await;
        assert_eq!(report.succeeded, 8);
    });

    let calls = calls.all();
    let answered_ok: Vec<Uuid> = calls[..2]
        .iter()
        .chain(&calls[5..])
        .map(|call| call.id)
        .collect();
    let mut delivered = answered_ok.clone();
    delivered.sort();
    delivered.dedup();
    ids.sort();
    assert_eq!(delivered, ids);
    assert_eq!(answered_ok.len(), 10);
}

mod loopback {
    use std::collections::HashSet;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use hyper::body::Incoming;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::net::TcpListener;

    use super::*;

    fn empty(code: StatusCode) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = code;
        response
    }

    #[derive(Default)]
    struct Server {
        received: AtomicUsize,
        delivered: Mutex<HashSet<Uuid>>,
    }

    /// Starts a server that returns 503 to its first `failures` requests and 200 after, recording
    /// the `Idempotency-Key` of every request it returned 200 to.
    async fn start(failures: usize) -> (SocketAddr, Arc<Server>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = Arc::new(Server::default());
        let shared = Arc::clone(&server);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let shared = Arc::clone(&shared);
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let shared = Arc::clone(&shared);
                    async move {
                        let index = shared.received.fetch_add(1, Ordering::SeqCst);
                        if index < failures {
                            return Ok::<_, Infallible>(empty(StatusCode::SERVICE_UNAVAILABLE));
                        }
                        let id = request
                            .headers()
                            .get("idempotency-key")
                            .and_then(|value| value.to_str().ok())
                            .and_then(|text| text.parse().ok())
                            .unwrap_or_default();
                        shared.delivered.lock().unwrap().insert(id);
                        Ok(empty(StatusCode::OK))
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (address, server)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn thousand_items_drain_into_recovering_server() {
        let (address, server) = start(500).await;
        let dir = tempfile::tempdir().unwrap();
        let queue = RetryQueue::open(
            RetryQueueConfig::new()
                .path(dir.path())
                .max_attempts(100)
                .durability(Durability::Periodic),
        )
        .unwrap();
        let mut ids = HashSet::new();
        for _ in 0..1_000 {
            ids.insert(queue.enqueue(item(&address.to_string())).await.unwrap());
        }

        // The client takes the layer's body type, as the stack below a `RetryQueueLayer` does.
        let client =
            Client::builder(TokioExecutor::new()).build_http::<RetryQueueBody<Full<Bytes>>>();
        let service = ServiceBuilder::new()
            .map_err(BoxError::from)
            .service(client);
        let worker = queue
            .replay_worker(service)
            .concurrency(16)
            .backoff(Backoff::new(
                Duration::from_millis(1),
                Duration::from_millis(20),
            ))
            .spawn();
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while !queue.is_empty() {
            assert!(std::time::Instant::now() < deadline, "drain timed out");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let report = worker.shutdown().await;

        assert!(server.received.load(Ordering::SeqCst) >= 1_500);
        assert_eq!(*server.delivered.lock().unwrap(), ids);
        assert_eq!(report.succeeded, 1_000);
        assert_eq!(report.dead_lettered, 0);
        assert!(queue.dead_letters().unwrap().is_empty());
    }
}

#[tokio::test(start_paused = true)]
async fn enforcing_service_defers_without_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(&dir, 1);
    let tracker = QuotaTracker::new();
    let mut exhausted = HeaderMap::new();
    exhausted.insert(http::header::RETRY_AFTER, "30".parse().unwrap());
    tracker.record_response("api.test", StatusCode::TOO_MANY_REQUESTS, &exhausted);
    let start = Instant::now();

    let calls = Calls::default();
    let inner = upstream(&calls, Box::new(|_, _| answer(StatusCode::OK)));
    let service = ServiceBuilder::new()
        .layer(QuotaLayer::new(tracker).enforce(Enforcement::FailFast))
        .service(inner);
    let id = queue.enqueue(item("api.test")).await.unwrap();

    // The worker has no tracker: only the enforcing layer has the partition marked exhausted.
    let worker = queue.replay_worker(service).spawn();
    wait_until(Duration::from_secs(120), || queue.is_empty()).await;
    let report = worker.shutdown().await;

    let calls = calls.all();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].id, id);
    assert!(calls[0].at - start >= 30 * SECOND);
    assert_eq!(report.deferred, 1);
    assert_eq!(report.failed, 0);
    assert_eq!(report.succeeded, 1);
    assert_eq!(queue.stats().dead, 0);
}

#[tokio::test(start_paused = true)]
async fn tracker_partitioner_keys_stored_requests() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(&dir, 5);
    let by_path = |uri: &http::Uri, _: &HeaderMap| uri.path().to_owned();
    let tracker = QuotaTracker::builder()
        .partitioner(by_path)
        .build()
        .unwrap();
    let mut exhausted = HeaderMap::new();
    exhausted.insert(http::header::RETRY_AFTER, "45".parse().unwrap());
    tracker.record_response(
        "/v1/chat/completions",
        StatusCode::TOO_MANY_REQUESTS,
        &exhausted,
    );
    let start = Instant::now();

    let calls = Calls::default();
    let service = upstream(&calls, Box::new(|_, _| answer(StatusCode::OK)));
    // The item's own partition is its authority, which the tracker does not use.
    let queued = item("api.test");
    assert_eq!(queued.partition(), "api.test");
    queue.enqueue(queued).await.unwrap();

    let worker = queue.replay_worker(service).quota_tracker(tracker).spawn();
    wait_until(Duration::from_secs(120), || queue.is_empty()).await;
    worker.shutdown().await;

    let calls = calls.all();
    assert_eq!(calls.len(), 1);
    assert!(calls[0].at - start >= 45 * SECOND);
}

#[tokio::test(start_paused = true)]
async fn concurrent_replays_stay_within_remaining_requests() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(&dir, 5);
    let tracker = QuotaTracker::new();
    // The upstream allows 10 requests per 60 s window and returns 429 beyond that.
    let window = Arc::new(Mutex::new((Instant::now(), 0u64)));
    let rejected = Arc::new(Mutex::new(0usize));
    let calls = Calls::default();
    let inner = upstream(&calls, {
        let window = Arc::clone(&window);
        let rejected = Arc::clone(&rejected);
        Box::new(move |_, _| {
            let mut window = window.lock().unwrap();
            if window.0.elapsed() >= 60 * SECOND {
                *window = (Instant::now(), 0);
            }
            let reset = (60 * SECOND).saturating_sub(window.0.elapsed()).as_secs() + 1;
            let mut response = if window.1 >= 10 {
                *rejected.lock().unwrap() += 1;
                status(StatusCode::TOO_MANY_REQUESTS)
            } else {
                window.1 += 1;
                status(StatusCode::OK)
            };
            let headers = response.headers_mut();
            headers.insert("x-ratelimit-limit", "10".parse().unwrap());
            let remaining = 10 - window.1;
            headers.insert("x-ratelimit-remaining", remaining.into());
            headers.insert("x-ratelimit-reset", reset.into());
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                response
            })
        })
    });
    let service = ServiceBuilder::new()
        .layer(QuotaLayer::new(tracker.clone()))
        .service(inner);
    for _ in 0..20 {
        queue.enqueue(item("api.test")).await.unwrap();
    }

    let worker = queue
        .replay_worker(service)
        .concurrency(8)
        .quota_tracker(tracker)
        .spawn();
    wait_until(Duration::from_secs(600), || queue.is_empty()).await;
    let report = worker.shutdown().await;

    assert_eq!(*rejected.lock().unwrap(), 0);
    assert_eq!(report.succeeded, 20);
    assert_eq!(report.failed, 0);
    assert_eq!(calls.len(), 20);
}
