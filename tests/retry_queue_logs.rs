//! Log events of the retry queue: what they carry and which secrets they never contain.
//!
//! Every test in this binary logs through one global subscriber at TRACE. A thread-local
//! subscriber from `tracing::subscriber::set_default` missed events in about half of the runs
//! while other tests of the same binary ran in parallel.

use std::convert::Infallible;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{service_fn, BoxError, Layer, ServiceExt};
use tower_quota_queue::retry_queue::{
    NackOutcome, QueuedRequest, RetryQueue, RetryQueueBody, RetryQueueConfig, RetryQueueErrorKind,
    RetryQueueLayer,
};

/// A `MakeWriter` that appends every log line to one shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// Installs the global subscriber on first use and returns its buffer.
fn captured() -> &'static Captured {
    static CAPTURED: OnceLock<Captured> = OnceLock::new();
    CAPTURED.get_or_init(|| {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(captured.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        captured
    })
}

fn logs() -> String {
    String::from_utf8(captured().0.lock().unwrap().clone()).unwrap()
}

#[tokio::test]
async fn secrets_never_reach_trace_logs() {
    captured();
    let dir = tempfile::tempdir().unwrap();
    let queue = RetryQueue::open(RetryQueueConfig::new().path(dir.path().join("queue"))).unwrap();
    let inner = service_fn(|request: Request<RetryQueueBody<Full<Bytes>>>| async move {
        request.into_body().collect().await?;
        Err::<Response<()>, BoxError>("connection refused".into())
    });
    let service = RetryQueueLayer::new(queue.clone()).layer(inner);
    let mut marked = HeaderValue::from_static("Marked-Token-6e1f");
    marked.set_sensitive(true);
    let request = Request::post("http://127.0.0.1:9/v1")
        .header("Authorization", "Bearer Bearer-Token-0a7b")
        .header("X-API-KEY", "Api-Key-Token-9f2c")
        .header("x-session", marked)
        .body(Full::new(Bytes::from_static(b"Bd-4d8e")))
        .unwrap();
    let error = service.oneshot(request).await.unwrap_err();
    assert_eq!(error.kind(), RetryQueueErrorKind::Queued);

    let mut replay = service_fn(|_: Request<Full<Bytes>>| async {
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        Ok::<_, Infallible>(response)
    });
    queue.process_all(&mut replay).await.unwrap();

    let logs = logs();
    assert!(logs.contains("TRACE"), "no TRACE event was captured");
    for secret in [
        "Bearer-Token-0a7b",
        "Api-Key-Token-9f2c",
        "Marked-Token-6e1f",
        "Bd-4d8e",
    ] {
        assert!(!logs.contains(secret), "{secret} found in the logs");
    }
}

#[tokio::test]
async fn dead_letter_warning_carries_last_error() {
    captured();
    let dir = tempfile::tempdir().unwrap();
    let config = RetryQueueConfig::new()
        .path(dir.path().join("queue"))
        .max_attempts(1);
    let queue = RetryQueue::open(config).unwrap();
    let request = http::Request::post("http://127.0.0.1:9/v1")
        .header("authorization", "Bearer Dead-Letter-Token-4c1e")
        .body(Bytes::from_static(b"Dead-Letter-Body-9a3d"))
        .unwrap();
    let id = queue
        .enqueue(QueuedRequest::new(request, "connection refused"))
        .await
        .unwrap();
    queue.take().await.unwrap().unwrap();
    let outcome = queue
        .nack(id, "replay returned status 503", None)
        .await
        .unwrap();
    assert_eq!(outcome, NackOutcome::DeadLettered);

    let logs = logs();
    let line = logs
        .lines()
        .find(|line| line.contains("dead-lettered") && line.contains(&id.to_string()))
        .unwrap_or_else(|| panic!("no dead-letter event for {id} in {logs:?}"));
    assert!(line.contains(" WARN "), "{line}");
    assert!(
        line.contains(r#"last_error="replay returned status 503""#),
        "{line}"
    );
    assert!(!logs.contains("Dead-Letter-Token-4c1e"), "{logs}");
    assert!(!logs.contains("Dead-Letter-Body-9a3d"), "{logs}");
}

#[tokio::test]
async fn unqueued_retryable_response_warns() {
    captured();
    let dir = tempfile::tempdir().unwrap();
    let config = RetryQueueConfig::new()
        .path(dir.path().join("queue"))
        .max_body_bytes(8);
    let queue = RetryQueue::open(config).unwrap();
    let inner = service_fn(|request: Request<RetryQueueBody<Full<Bytes>>>| async move {
        request.into_body().collect().await?;
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        Ok::<_, BoxError>(response)
    });
    let service = RetryQueueLayer::new(queue.clone()).layer(inner);
    let request = Request::post("http://127.0.0.1:9/v1")
        .body(Full::new(Bytes::from_static(b"nine bytes")))
        .unwrap();

    let response = service.oneshot(request).await.unwrap();

    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response
        .extensions()
        .get::<tower_quota_queue::retry_queue::QueuedId>()
        .is_none());
    assert!(queue.is_empty());
    let warning = logs()
        .lines()
        .find(|line| line.contains("retryable response to a request that could not be queued"))
        .map(str::to_owned)
        .expect("no warning for a retryable response that was not queued");
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("status=503"), "{warning}");
    assert!(warning.contains("max_body_bytes (8 bytes)"), "{warning}");
}
