//! A hyper-util client stack against a loopback axum server that sends rate-limit headers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::Request;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};
use tower_quota_queue::quota::{
    Enforcement, QuotaExhausted, QuotaLayer, QuotaSource, QuotaTracker,
};

use crate::capture::Warnings;

/// The number of requests the loopback server has handled.
#[derive(Clone, Default)]
struct Served(Arc<AtomicU64>);

/// Responds with OpenAI-style headers: 10 requests per window, one fewer left per request.
async fn openai(State(served): State<Served>) -> (HeaderMap, &'static str) {
    let count = served.0.fetch_add(1, Ordering::SeqCst) + 1;
    let mut headers = HeaderMap::new();
    let remaining = 10u64.saturating_sub(count).to_string();
    headers.insert(
        "x-ratelimit-limit-requests",
        "10".parse().expect("valid value"),
    );
    headers.insert(
        "x-ratelimit-remaining-requests",
        remaining.parse().expect("valid value"),
    );
    headers.insert(
        "x-ratelimit-reset-requests",
        "6m0s".parse().expect("valid value"),
    );
    headers.insert(
        "x-ratelimit-limit-tokens",
        "40000".parse().expect("valid value"),
    );
    headers.insert(
        "x-ratelimit-remaining-tokens",
        "39000".parse().expect("valid value"),
    );
    headers.insert(
        "x-ratelimit-reset-tokens",
        "150ms".parse().expect("valid value"),
    );
    (headers, "ok")
}

/// Responds like Shopify when throttled: 429 with `Retry-After: 60` and a call limit of `1/40`.
async fn throttled(State(served): State<Served>) -> (StatusCode, HeaderMap) {
    served.0.fetch_add(1, Ordering::SeqCst);
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-shopify-shop-api-call-limit",
        "1/40".parse().expect("valid value"),
    );
    headers.insert("retry-after", "60".parse().expect("valid value"));
    (StatusCode::TOO_MANY_REQUESTS, headers)
}

async fn start_server() -> (SocketAddr, Served) {
    let served = Served::default();
    let app = Router::new()
        .route("/openai", get(openai))
        .route("/throttled", get(throttled))
        .with_state(served.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let address = listener.local_addr().expect("local address");
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    (address, served)
}

fn get_request(address: SocketAddr, path: &str) -> Request<Empty<Bytes>> {
    Request::get(format!("http://{address}{path}"))
        .body(Empty::new())
        .expect("valid request")
}

#[tokio::test]
async fn client_stack_tracks_openai_headers() {
    let (warnings, _guard) = Warnings::install();
    let (address, served) = start_server().await;
    let tracker = QuotaTracker::new();
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let service = ServiceBuilder::new()
        .layer(QuotaLayer::new(tracker.clone()))
        .service(client);

    for _ in 0..9 {
        let response = service
            .clone()
            .oneshot(get_request(address, "/openai"))
            .await
            .expect("loopback response");
        assert_eq!(response.status(), StatusCode::OK);
    }

    assert_eq!(served.0.load(Ordering::SeqCst), 9);
    let partition = address.to_string();
    let status = tracker.status_of(&partition).expect("partition seen");
    assert_eq!(status.dimension, "requests");
    assert_eq!(status.limit, Some(10));
    assert_eq!(status.remaining, Some(1));
    assert_eq!(status.usage, Some(0.9));
    assert_eq!(status.source, QuotaSource::Headers);
    assert_eq!(warnings.count(), 1);
    let fields = &warnings.all()[0];
    assert_eq!(fields["partition"], partition);
    assert_eq!(fields["dimension"], "requests");
    assert_eq!(fields["remaining"], "2");
}

#[tokio::test]
async fn client_stack_enforces_after_429() {
    let (address, served) = start_server().await;
    let tracker = QuotaTracker::new();
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let service = ServiceBuilder::new()
        .layer(QuotaLayer::new(tracker.clone()).enforce(Enforcement::FailFast))
        .service(client);

    let first = service
        .clone()
        .oneshot(get_request(address, "/throttled"))
        .await
        .expect("loopback response");
    assert_eq!(first.status(), StatusCode::TOO_MANY_REQUESTS);

    let error = service
        .clone()
        .oneshot(get_request(address, "/openai"))
        .await
        .expect_err("partition exhausted");
    let exhausted = error
        .downcast_ref::<QuotaExhausted>()
        .expect("QuotaExhausted");
    assert_eq!(exhausted.partition(), address.to_string());
    assert_eq!(
        Some(exhausted.deadline()),
        tracker.blocked_until(&address.to_string())
    );
    assert_eq!(served.0.load(Ordering::SeqCst), 1);
}
