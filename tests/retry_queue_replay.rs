//! `process_one` and `process_all` through tower services and a loopback server.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tower::service_fn;
use tower_quota_queue::clock;
use tower_quota_queue::retry_queue::{
    NackOutcome, QueuedRequest, ReplayError, RetryQueue, RetryQueueConfig, RetryableStatus,
};
use tower_quota_queue::BoxError;

fn open(dir: &tempfile::TempDir, max_attempts: u32) -> RetryQueue {
    let config = RetryQueueConfig::new()
        .path(dir.path().join("queue"))
        .max_attempts(max_attempts)
        .item_ttl(Duration::from_secs(60));
    RetryQueue::open(config).unwrap()
}

fn item(path: &str) -> QueuedRequest {
    let request = http::Request::put(format!("http://127.0.0.1:9/{path}"))
        .body(Bytes::from_static(b"body"))
        .unwrap();
    QueuedRequest::new(request, "connection refused")
}

type Request = http::Request<Full<Bytes>>;

fn respond_with(
    status: u16,
) -> impl tower::Service<Request, Response = http::Response<()>, Error = BoxError> {
    service_fn(move |_request: Request| async move {
        let mut response = http::Response::new(());
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
        Ok::<_, BoxError>(response)
    })
}

#[tokio::test]
async fn process_one_acks_success() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(&dir, 3);
    let id = queue.enqueue(item("a")).await.unwrap();

    let mut service = respond_with(200);
    assert_eq!(queue.process_one(&mut service).await.unwrap(), Some(id));
    assert!(queue.is_empty());
    assert_eq!(queue.process_one(&mut service).await.unwrap(), None);
}

#[tokio::test]
async fn process_one_client_error_counts_as_success() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(&dir, 3);
    let id = queue.enqueue(item("a")).await.unwrap();
    assert_eq!(
        queue.process_one(&mut respond_with(400)).await.unwrap(),
        Some(id)
    );
    assert!(queue.is_empty());
}

#[tokio::test]
async fn process_one_nacks_service_error() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(&dir, 3);
    let id = queue.enqueue(item("a")).await.unwrap();

    let mut failing = service_fn(|_request: Request| async {
        Err::<http::Response<()>, BoxError>("upstream reset".into())
    });
    let error = queue.process_one(&mut failing).await.unwrap_err();
    match error {
        ReplayError::Failed {
            id: failed,
            outcome,
            source,
        } => {
            assert_eq!(failed, id);
            assert_eq!(outcome, NackOutcome::Requeued);
            assert_eq!(source.to_string(), "upstream reset");
        }
        other => panic!("unexpected error {other:?}"),
    }
    let again = queue.take().await.unwrap().unwrap();
    assert_eq!(again.attempts(), 1);
    assert_eq!(again.last_error(), Some("upstream reset"));
}

#[tokio::test(start_paused = true)]
async fn process_one_retry_after_delays_item() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(&dir, 3);
    queue.enqueue(item("a")).await.unwrap();

    let mut busy = service_fn(|_request: Request| async {
        let response = http::Response::builder()
            .status(429)
            .header("retry-after", "30")
            .body(())
            .unwrap();
        Ok::<_, BoxError>(response)
    });
    let before = clock::now();
    let error = queue.process_one(&mut busy).await.unwrap_err();
    let ReplayError::Failed { source, .. } = error else {
        panic!("unexpected error {error:?}");
    };
    assert_eq!(
        source.downcast_ref::<RetryableStatus>(),
        Some(&RetryableStatus(http::StatusCode::TOO_MANY_REQUESTS))
    );
    assert_eq!(
        queue.next_ready_at(),
        Some(before + Duration::from_secs(30))
    );
    assert_eq!(
        queue.process_one(&mut respond_with(200)).await.unwrap(),
        None
    );
    tokio::time::advance(Duration::from_secs(30)).await;
    assert!(queue
        .process_one(&mut respond_with(200))
        .await
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn process_all_replays_each_item_once() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(&dir, 5);
    for n in 0..4 {
        queue.enqueue(item(&format!("r{n}"))).await.unwrap();
    }
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let mut failing = service_fn(move |_request: Request| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Err::<http::Response<()>, BoxError>("down".into()) }
    });

    let report = queue.process_all(&mut failing).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(report.succeeded, 0);
    assert_eq!(report.failed, 4);
    assert_eq!(report.dead_lettered, 0);
    assert_eq!(report.expired, 0);
    assert_eq!(queue.len(), 4);
}

#[tokio::test(start_paused = true)]
async fn process_all_counts_every_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(&dir, 1);
    let stale = item("stale").with_enqueued_at(clock::now() - Duration::from_secs(61));
    queue.enqueue(stale).await.unwrap();
    queue.enqueue(item("ok-1")).await.unwrap();
    queue.enqueue(item("fail")).await.unwrap();
    queue.enqueue(item("ok-2")).await.unwrap();

    let mut service = service_fn(|request: Request| async move {
        if request.uri().path() == "/fail" {
            return Err::<http::Response<()>, BoxError>("down".into());
        }
        Ok(http::Response::new(()))
    });
    let report = queue.process_all(&mut service).await.unwrap();
    assert_eq!(report.succeeded, 2);
    assert_eq!(report.failed, 1);
    assert_eq!(report.dead_lettered, 1);
    assert_eq!(report.expired, 1);
    assert!(queue.is_empty());
    assert_eq!(queue.stats().dead, 1);
}
