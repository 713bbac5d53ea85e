//! `RetryQueueLayer` against a loopback HTTP server and a real sled directory.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::any;
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{service_fn, Layer, ServiceExt};
use tower_quota_queue::clock;
use tower_quota_queue::retry_queue::{
    NotQueuedReason, QueuedId, RetryQueue, RetryQueueBody, RetryQueueConfig, RetryQueueErrorKind,
    RetryQueueLayer,
};
use tower_quota_queue::BoxError;

/// A request as the loopback server received it.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    idempotency_key: Option<String>,
    body: Bytes,
}

#[derive(Clone, Default)]
struct Server {
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn handle(
    State(server): State<Server>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let path = uri.path().to_owned();
    let idempotency_key = headers
        .get("idempotency-key")
        .map(|value| value.to_str().unwrap().to_owned());
    let count = {
        let mut seen = server.seen.lock().unwrap();
        seen.push(Seen {
            path: path.clone(),
            idempotency_key,
            body,
        });
        seen.iter().filter(|request| request.path == path).count()
    };
    match path.as_str() {
        "/busy" => (
            StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", "120")],
            "try later",
        )
            .into_response(),
        "/error" => (StatusCode::INTERNAL_SERVER_ERROR, "broken").into_response(),
        "/bad" => (StatusCode::BAD_REQUEST, "bad").into_response(),
        "/flaky" if count == 1 => (StatusCode::SERVICE_UNAVAILABLE, "first").into_response(),
        _ => (StatusCode::OK, "ok").into_response(),
    }
}

async fn start_server() -> (SocketAddr, Server) {
    let server = Server::default();
    let app = Router::new()
        .fallback(any(handle))
        .with_state(server.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, server)
}

/// Returns a loopback address where nothing listens, so connecting fails.
async fn closed_addr() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

type TestClient<B> = Client<HttpConnector, RetryQueueBody<B>>;

fn client<B>() -> TestClient<B>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    Client::builder(TokioExecutor::new()).build_http()
}

fn open_queue(dir: &tempfile::TempDir) -> RetryQueue {
    RetryQueue::open(RetryQueueConfig::new().path(dir.path().join("queue"))).unwrap()
}

fn post(addr: SocketAddr, path: &str, body: &'static str) -> http::Request<Full<Bytes>> {
    http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

#[tokio::test]
async fn connect_error_queues_and_raises() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open_queue(&dir);
    let addr = closed_addr().await;
    let service = RetryQueueLayer::new(queue.clone()).layer(client());

    let error = service
        .oneshot(post(addr, "/v1/chat", "hello"))
        .await
        .unwrap_err();

    assert_eq!(error.kind(), RetryQueueErrorKind::Queued);
    let id = error.queued_id().unwrap();
    let source = std::error::Error::source(&error).unwrap();
    assert!(source.is::<hyper_util::client::legacy::Error>());
    assert_eq!(queue.len(), 1);
    let item = queue.take().await.unwrap().unwrap();
    assert_eq!(item.id(), id);
    assert_eq!(item.method(), http::Method::POST);
    assert_eq!(item.uri().path(), "/v1/chat");
    assert_eq!(item.body(), &Bytes::from_static(b"hello"));
    assert_eq!(item.headers()["content-type"], "text/plain");
    assert_eq!(item.headers()["idempotency-key"], id.to_string().as_str());
    assert_eq!(item.partition(), addr.to_string());
    assert_eq!(item.original_error(), source.to_string());
}

#[tokio::test]
async fn retryable_response_returned_and_queued() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open_queue(&dir);
    let (addr, server) = start_server().await;
    let service = RetryQueueLayer::new(queue.clone()).layer(client());

    let before = clock::now();
    let response = service.oneshot(post(addr, "/busy", "x")).await.unwrap();

    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "120");
    let id = response.extensions().get::<QueuedId>().unwrap().0;
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, Bytes::from_static(b"try later"));

    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].idempotency_key.as_deref(),
        Some(id.to_string().as_str())
    );

    // The item is not ready until Retry-After has passed.
    assert!(queue.take().await.unwrap().is_none());
    let not_before = queue.next_ready_at().unwrap();
    let wait = not_before.duration_since(before).unwrap();
    assert!(wait >= Duration::from_secs(120), "wait {wait:?}");
    assert!(wait < Duration::from_secs(125), "wait {wait:?}");
    assert_eq!(queue.stats().pending, 1);
}

#[tokio::test]
async fn success_response_not_queued() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open_queue(&dir);
    let (addr, _server) = start_server().await;
    let service = RetryQueueLayer::new(queue.clone()).layer(client());

    let response = service.oneshot(post(addr, "/ok", "x")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.extensions().get::<QueuedId>().is_none());
    assert!(queue.is_empty());
}

#[tokio::test]
async fn server_error_queued_only_by_custom_classifier() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open_queue(&dir);
    let (addr, _server) = start_server().await;

    let default = RetryQueueLayer::new(queue.clone()).layer(client());
    let response = default.oneshot(post(addr, "/error", "x")).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(queue.is_empty());

    let custom = RetryQueueLayer::new(queue.clone())
        .classifier(|status: StatusCode, _: &HeaderMap| status.is_server_error())
        .layer(client());
    let response = custom.oneshot(post(addr, "/error", "x")).await.unwrap();
    assert!(response.extensions().get::<QueuedId>().is_some());
    assert_eq!(queue.len(), 1);
}

#[tokio::test]
async fn body_over_limit_sent_but_not_queued() {
    let dir = tempfile::tempdir().unwrap();
    let config = RetryQueueConfig::new()
        .path(dir.path().join("queue"))
        .max_body_bytes(8);
    let queue = RetryQueue::open(config).unwrap();
    let (addr, server) = start_server().await;

    let service = RetryQueueLayer::new(queue.clone()).layer(client());
    let response = service
        .oneshot(post(addr, "/ok", "sixteen bytes!!!"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        server.seen()[0].body,
        Bytes::from_static(b"sixteen bytes!!!")
    );
    assert_eq!(server.seen()[0].idempotency_key, None);

    let closed = closed_addr().await;
    let service = RetryQueueLayer::new(queue.clone()).layer(client());
    let error = service
        .oneshot(post(closed, "/ok", "sixteen bytes!!!"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), RetryQueueErrorKind::NotQueued);
    assert!(matches!(
        error.not_queued_reason(),
        Some(NotQueuedReason::BodyTooLarge { max_body_bytes: 8 })
    ));
    assert!(error.to_string().contains("was not queued"), "{error}");
    assert!(queue.is_empty());
}

/// A body of two chunks that does not know its length in advance, like a chunked upload.
struct ChunkedBody {
    chunks: std::collections::VecDeque<Bytes>,
}

impl ChunkedBody {
    fn new() -> Self {
        Self {
            chunks: [Bytes::from_static(b"one"), Bytes::from_static(b"two")].into(),
        }
    }
}

impl http_body::Body for ChunkedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(
            self.chunks
                .pop_front()
                .map(|chunk| Ok(http_body::Frame::data(chunk))),
        )
    }
}

#[tokio::test]
async fn streaming_body_sent_but_not_queued() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open_queue(&dir);
    let (addr, server) = start_server().await;

    let service = RetryQueueLayer::new(queue.clone()).layer(client::<ChunkedBody>());
    let request = http::Request::post(format!("http://{addr}/ok"))
        .body(ChunkedBody::new())
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.seen()[0].body, Bytes::from_static(b"onetwo"));

    let closed = closed_addr().await;
    let service = RetryQueueLayer::new(queue.clone()).layer(client::<ChunkedBody>());
    let request = http::Request::post(format!("http://{closed}/ok"))
        .body(ChunkedBody::new())
        .unwrap();
    let error = service.oneshot(request).await.unwrap_err();
    assert!(matches!(
        error.not_queued_reason(),
        Some(NotQueuedReason::StreamingBody)
    ));
    assert!(queue.is_empty());
}

#[tokio::test]
async fn excluded_method_not_queued() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open_queue(&dir);
    let closed = closed_addr().await;
    let service = RetryQueueLayer::new(queue.clone())
        .methods([http::Method::GET])
        .layer(client());

    let error = service
        .oneshot(post(closed, "/v1/chat", "x"))
        .await
        .unwrap_err();
    assert!(matches!(
        error.not_queued_reason(),
        Some(NotQueuedReason::MethodExcluded)
    ));
    assert!(std::error::Error::source(&error).is_some());
    assert!(queue.is_empty());

    let service = RetryQueueLayer::new(queue.clone())
        .methods([http::Method::GET])
        .layer(client());
    let request = http::Request::get(format!("http://{closed}/v1/items"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let error = service.oneshot(request).await.unwrap_err();
    assert_eq!(error.kind(), RetryQueueErrorKind::Queued);
    assert_eq!(queue.len(), 1);
}

#[tokio::test]
async fn caller_idempotency_key_kept() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open_queue(&dir);
    let (addr, server) = start_server().await;
    let service = RetryQueueLayer::new(queue.clone()).layer(client());

    let mut request = post(addr, "/busy", "x");
    request
        .headers_mut()
        .insert("idempotency-key", "caller-key-1".parse().unwrap());
    let response = service.oneshot(request).await.unwrap();
    assert!(response.extensions().get::<QueuedId>().is_some());
    assert_eq!(
        server.seen()[0].idempotency_key.as_deref(),
        Some("caller-key-1")
    );

    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(121)).await;
    let item = queue.take().await.unwrap().unwrap();
    assert_eq!(item.headers()["idempotency-key"], "caller-key-1");
}

#[tokio::test]
async fn replay_sends_same_idempotency_key() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open_queue(&dir);
    let (addr, server) = start_server().await;
    let service = RetryQueueLayer::new(queue.clone()).layer(client());

    let response = service
        .oneshot(post(addr, "/flaky", "payload"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let id = response.extensions().get::<QueuedId>().unwrap().0;

    // The client below the layer takes `RetryQueueBody`, and replays convert to it.
    let mut replay = client::<Full<Bytes>>();
    let report = queue.process_all(&mut replay).await.unwrap();
    assert_eq!(report.succeeded, 1);
    assert_eq!(report.failed, 0);
    assert!(queue.is_empty());

    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    let key = id.to_string();
    assert_eq!(seen[0].idempotency_key.as_deref(), Some(key.as_str()));
    assert_eq!(seen[1].idempotency_key.as_deref(), Some(key.as_str()));
    assert_eq!(seen[1].body, Bytes::from_static(b"payload"));
}

#[tokio::test]
async fn partitioner_sets_item_partition() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open_queue(&dir);
    let closed = closed_addr().await;
    let service = RetryQueueLayer::new(queue.clone())
        .partitioner(|uri: &http::Uri, _: &http::HeaderMap| format!("route:{}", uri.path()))
        .layer(client());

    service
        .oneshot(post(closed, "/v1/embed", "x"))
        .await
        .unwrap_err();
    let item = queue.take().await.unwrap().unwrap();
    assert_eq!(item.partition(), "route:/v1/embed");
}

#[tokio::test]
async fn full_body_reaches_inner_without_copy() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open_queue(&dir);
    let payload = Bytes::from(vec![7u8; 4096]);
    let original = payload.as_ptr();

    let seen = Arc::new(Mutex::new(None));
    let inner_seen = Arc::clone(&seen);
    let inner = service_fn(move |request: http::Request<RetryQueueBody<Full<Bytes>>>| {
        let inner_seen = Arc::clone(&inner_seen);
        async move {
            assert!(request.body().is_buffered());
            let bytes = request.into_body().collect().await.unwrap().to_bytes();
            *inner_seen.lock().unwrap() = Some(bytes.as_ptr() as usize);
            Err::<http::Response<()>, BoxError>("upstream down".into())
        }
    });
    let service = RetryQueueLayer::new(queue.clone()).layer(inner);
    let request = http::Request::post("http://127.0.0.1:9/upload")
        .body(Full::new(payload))
        .unwrap();
    let error = service.oneshot(request).await.unwrap_err();

    assert_eq!(error.kind(), RetryQueueErrorKind::Queued);
    assert_eq!(seen.lock().unwrap().unwrap(), original as usize);
    assert_eq!(queue.take().await.unwrap().unwrap().body().len(), 4096);
}

/// Returns whether any file under `dir` contains `needle`.
fn any_file_contains(dir: &std::path::Path, needle: &[u8]) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    let mut files = 0;
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
            continue;
        }
        files += 1;
        let bytes = std::fs::read(&path).unwrap();
        if bytes.windows(needle.len()).any(|window| window == needle) {
            return true;
        }
    }
    assert!(files > 0, "no files under {}", dir.display());
    false
}

async fn queue_with_secrets(dir: &tempfile::TempDir, config: RetryQueueConfig) {
    let queue = RetryQueue::open(config).unwrap();
    let closed = closed_addr().await;
    let service = RetryQueueLayer::new(queue.clone()).layer(client());
    let mut sensitive = http::HeaderValue::from_static("Sensitive-Marked-7f3a");
    sensitive.set_sensitive(true);
    let request = http::Request::post(format!("http://{closed}/v1/chat"))
        .header("authorization", "Bearer Bearer-Token-9c1e")
        .header("proxy-authorization", "Basic Proxy-Token-4b2d")
        .header("cookie", "session=Cookie-Token-5a8f")
        .header("x-api-key", "Api-Key-Token-2e6b")
        .header("api-key", "Api-Key-Token-8d0c")
        .header("x-session", sensitive)
        .header("x-visible", "Visible-Marker-1a2b")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let error = service.oneshot(request).await.unwrap_err();
    assert_eq!(error.kind(), RetryQueueErrorKind::Queued);
    drop(queue);
    assert!(dir.path().join("queue").exists());
}

const SECRETS: [&str; 6] = [
    "Bearer-Token-9c1e",
    "Proxy-Token-4b2d",
    "Cookie-Token-5a8f",
    "Api-Key-Token-2e6b",
    "Api-Key-Token-8d0c",
    "Sensitive-Marked-7f3a",
];

#[tokio::test]
async fn secrets_never_reach_queue_files() {
    let dir = tempfile::tempdir().unwrap();
    let config = RetryQueueConfig::new().path(dir.path().join("queue"));
    queue_with_secrets(&dir, config).await;

    // The scan finds a header that is persisted, so a miss below means the secret is absent.
    assert!(any_file_contains(dir.path(), b"Visible-Marker-1a2b"));
    for secret in SECRETS {
        assert!(
            !any_file_contains(dir.path(), secret.as_bytes()),
            "{secret} found in the queue directory"
        );
    }
}

#[tokio::test]
async fn opted_in_secret_is_persisted() {
    let dir = tempfile::tempdir().unwrap();
    let config = RetryQueueConfig::new()
        .path(dir.path().join("queue"))
        .persist_sensitive_headers(["x-api-key"]);
    queue_with_secrets(&dir, config).await;

    assert!(any_file_contains(dir.path(), b"Api-Key-Token-2e6b"));
    assert!(!any_file_contains(dir.path(), b"Bearer-Token-9c1e"));
    assert!(!any_file_contains(dir.path(), b"Api-Key-Token-8d0c"));
}

#[tokio::test]
async fn full_queue_reports_not_queued() {
    let dir = tempfile::tempdir().unwrap();
    let config = RetryQueueConfig::new()
        .path(dir.path().join("queue"))
        .max_size(1)
        .overflow(tower_quota_queue::retry_queue::Overflow::RejectNew);
    let queue = RetryQueue::open(config).unwrap();
    let closed = closed_addr().await;

    let service = RetryQueueLayer::new(queue.clone()).layer(client());
    let first = service
        .clone()
        .oneshot(post(closed, "/a", "x"))
        .await
        .unwrap_err();
    assert_eq!(first.kind(), RetryQueueErrorKind::Queued);

    let second = service.oneshot(post(closed, "/b", "x")).await.unwrap_err();
    assert_eq!(second.kind(), RetryQueueErrorKind::NotQueued);
    match second.not_queued_reason() {
        Some(NotQueuedReason::Queue(error)) => {
            assert_eq!(
                error.kind(),
                tower_quota_queue::retry_queue::QueueErrorKind::Full
            );
        }
        other => panic!("unexpected reason {other:?}"),
    }
    let source = std::error::Error::source(&second).unwrap();
    assert!(source.is::<hyper_util::client::legacy::Error>());
    assert_eq!(queue.len(), 1);
}

/// A body that announces five bytes and then fails.
struct FailingBody;

impl http_body::Body for FailingBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        std::task::Poll::Ready(Some(Err(std::io::Error::other("upload aborted"))))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(5)
    }
}

#[tokio::test]
async fn body_read_error_not_sent() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open_queue(&dir);
    let calls = Arc::new(Mutex::new(0));
    let inner_calls = Arc::clone(&calls);
    let inner = service_fn(
        move |_request: http::Request<RetryQueueBody<FailingBody>>| {
            *inner_calls.lock().unwrap() += 1;
            async { Ok::<_, Infallible>(http::Response::new(())) }
        },
    );
    let service = RetryQueueLayer::new(queue.clone()).layer(inner);
    let request = http::Request::post("http://127.0.0.1:9/upload")
        .body(FailingBody)
        .unwrap();

    let error = service.oneshot(request).await.unwrap_err();
    assert_eq!(error.kind(), RetryQueueErrorKind::Body);
    let source = std::error::Error::source(&error).unwrap();
    assert_eq!(source.to_string(), "upload aborted");
    assert_eq!(*calls.lock().unwrap(), 0);
    assert!(queue.is_empty());
}
