//! Observing and enforcing services over an in-process inner service, under paused tokio time.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tokio::time::Instant;
use tower::{service_fn, BoxError, ServiceBuilder, ServiceExt};
use tower_quota_queue::clock;
use tower_quota_queue::quota::{Enforcement, QuotaExhausted, QuotaLayer, QuotaTracker};

const PARTITION: &str = "api.example.com";

fn request() -> Request<String> {
    Request::get("https://api.example.com/v1/items")
        .body(String::new())
        .expect("valid request")
}

/// An inner service that responds to the first request with 429 and `Retry-After: 30`, and every
/// later one with 200. It counts the requests it receives.
fn rate_limited_once(
    calls: Arc<AtomicUsize>,
) -> impl tower::Service<
    Request<String>,
    Response = Response<String>,
    Error = io::Error,
    Future = impl Send,
> + Clone {
    service_fn(move |_request: Request<String>| {
        let call = calls.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut response = Response::builder();
            if call == 0 {
                response = response
                    .status(StatusCode::TOO_MANY_REQUESTS)
                    .header("retry-after", "30");
            }
            Ok::<_, io::Error>(response.body(String::new()).expect("valid response"))
        }
    })
}

fn exhausted(error: &BoxError) -> &QuotaExhausted {
    error
        .downcast_ref::<QuotaExhausted>()
        .expect("QuotaExhausted error")
}

#[tokio::test(start_paused = true)]
async fn fail_fast_rejects_with_deadline() {
    let calls = Arc::new(AtomicUsize::new(0));
    let tracker = QuotaTracker::new();
    let service = ServiceBuilder::new()
        .layer(QuotaLayer::new(tracker.clone()).enforce(Enforcement::FailFast))
        .service(rate_limited_once(calls.clone()));

    let first = service.clone().oneshot(request()).await.expect("response");
    assert_eq!(first.status(), StatusCode::TOO_MANY_REQUESTS);
    let deadline = clock::now() + Duration::from_secs(30);

    let error = service
        .clone()
        .oneshot(request())
        .await
        .expect_err("rejected");
    assert_eq!(exhausted(&error).deadline(), deadline);
    assert_eq!(exhausted(&error).partition(), PARTITION);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(tracker.blocked_until(PARTITION), Some(deadline));
}

#[tokio::test(start_paused = true)]
async fn wait_sends_after_deadline() {
    let calls = Arc::new(AtomicUsize::new(0));
    let enforcement = Enforcement::Wait {
        max_wait: Duration::from_secs(60),
    };
    let service = ServiceBuilder::new()
        .layer(QuotaLayer::new(QuotaTracker::new()).enforce(enforcement))
        .service(rate_limited_once(calls.clone()));

    service.clone().oneshot(request()).await.expect("response");
    let start = Instant::now();
    let second = service.clone().oneshot(request()).await.expect("response");
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(start.elapsed(), Duration::from_secs(30));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn wait_beyond_max_fails_fast() {
    let calls = Arc::new(AtomicUsize::new(0));
    let enforcement = Enforcement::Wait {
        max_wait: Duration::from_secs(10),
    };
    let service = ServiceBuilder::new()
        .layer(QuotaLayer::new(QuotaTracker::new()).enforce(enforcement))
        .service(rate_limited_once(calls.clone()));

    service.clone().oneshot(request()).await.expect("response");
    let start = Instant::now();
    let error = service
        .clone()
        .oneshot(request())
        .await
        .expect_err("rejected");
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(exhausted(&error).partition(), PARTITION);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn observe_mode_never_blocks() {
    let calls = Arc::new(AtomicUsize::new(0));
    let tracker = QuotaTracker::new();
    let service = ServiceBuilder::new()
        .layer(QuotaLayer::new(tracker.clone()))
        .service(rate_limited_once(calls.clone()));

    service.clone().oneshot(request()).await.expect("response");
    assert!(tracker.blocked_until(PARTITION).is_some());
    let second = service.clone().oneshot(request()).await.expect("response");
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn observe_error_passes_through_and_counts() {
    let tracker = QuotaTracker::builder()
        .local_limit(10, Duration::from_secs(60))
        .build()
        .expect("valid settings");
    let failing = service_fn(|_request: Request<String>| async {
        Err::<Response<String>, _>(io::Error::new(io::ErrorKind::ConnectionRefused, "refused"))
    });
    let service = ServiceBuilder::new()
        .layer(QuotaLayer::new(tracker.clone()))
        .service(failing);

    let error: io::Error = service.oneshot(request()).await.expect_err("inner error");
    assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused);
    let status = tracker.status_of(PARTITION).expect("partition seen");
    assert_eq!(status.remaining, Some(9));
}

#[tokio::test(start_paused = true)]
async fn enforce_boxes_inner_error() {
    let failing = service_fn(|_request: Request<String>| async {
        Err::<Response<String>, _>(io::Error::new(io::ErrorKind::TimedOut, "timed out"))
    });
    let service = ServiceBuilder::new()
        .layer(QuotaLayer::new(QuotaTracker::new()).enforce(Enforcement::FailFast))
        .service(failing);

    let error = service.oneshot(request()).await.expect_err("inner error");
    let inner = error.downcast_ref::<io::Error>().expect("io::Error");
    assert_eq!(inner.kind(), io::ErrorKind::TimedOut);
}

#[tokio::test(start_paused = true)]
async fn enforce_local_limit_rejects() {
    let tracker = QuotaTracker::builder()
        .local_limit(2, Duration::from_secs(60))
        .build()
        .expect("valid settings");
    let calls = Arc::new(AtomicUsize::new(1));
    let service = ServiceBuilder::new()
        .layer(QuotaLayer::new(tracker).enforce(Enforcement::FailFast))
        .service(rate_limited_once(calls.clone()));
    let window_end = clock::now() + Duration::from_secs(60);

    service
        .clone()
        .oneshot(request())
        .await
        .expect("first in window");
    service
        .clone()
        .oneshot(request())
        .await
        .expect("second in window");
    let error = service
        .clone()
        .oneshot(request())
        .await
        .expect_err("over local limit");
    assert_eq!(exhausted(&error).deadline(), window_end);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

fn too_many_requests(retry_after: &str) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    headers.insert("retry-after", retry_after.parse().expect("valid value"));
    headers
}

#[tokio::test(start_paused = true)]
async fn wait_follows_moved_deadline() {
    let calls = Arc::new(AtomicUsize::new(0));
    let tracker = QuotaTracker::new();
    let enforcement = Enforcement::Wait {
        max_wait: Duration::from_secs(60),
    };
    let service = ServiceBuilder::new()
        .layer(QuotaLayer::new(tracker.clone()).enforce(enforcement))
        .service(rate_limited_once(calls.clone()));
    service.clone().oneshot(request()).await.expect("response");

    let start = Instant::now();
    let waiting = tokio::spawn(service.clone().oneshot(request()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = too_many_requests("40");
    tracker.record_response(PARTITION, StatusCode::TOO_MANY_REQUESTS, &later);

    let response = waiting.await.expect("task finished").expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(start.elapsed(), Duration::from_secs(42));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn wait_fails_when_deadline_exceeds_max() {
    let calls = Arc::new(AtomicUsize::new(0));
    let tracker = QuotaTracker::new();
    let enforcement = Enforcement::Wait {
        max_wait: Duration::from_secs(35),
    };
    let service = ServiceBuilder::new()
        .layer(QuotaLayer::new(tracker.clone()).enforce(enforcement))
        .service(rate_limited_once(calls.clone()));
    service.clone().oneshot(request()).await.expect("response");

    let start = Instant::now();
    let waiting = tokio::spawn(service.clone().oneshot(request()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = too_many_requests("40");
    tracker.record_response(PARTITION, StatusCode::TOO_MANY_REQUESTS, &later);
    let moved = clock::now() + Duration::from_secs(40);

    let error = waiting.await.expect("task finished").expect_err("rejected");
    assert_eq!(exhausted(&error).deadline(), moved);
    assert_eq!(start.elapsed(), Duration::from_secs(30));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
