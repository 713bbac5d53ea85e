//! Edge cases of `RetryQueueLayer`: body sizes around `max_body_bytes`, bodies whose size hint lies
//! or that fail mid-stream, and secrets in headers and in the URI.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use tower::{service_fn, BoxError, Layer, ServiceExt};
use tower_quota_queue::retry_queue::{
    NotQueuedReason, RetryQueue, RetryQueueBody, RetryQueueConfig, RetryQueueErrorKind,
    RetryQueueLayer,
};

const MAX_BODY_BYTES: usize = 8;

fn open_queue(dir: &tempfile::TempDir) -> RetryQueue {
    RetryQueue::open(
        RetryQueueConfig::new()
            .path(dir.path().join("queue"))
            .max_body_bytes(MAX_BODY_BYTES),
    )
    .unwrap()
}

/// The bodies that an inner service received, in call order.
type Received = Arc<Mutex<Vec<Bytes>>>;

/// Returns every body the inner service received, and a service that fails each request.
fn failing_inner<B>() -> (
    Received,
    impl tower::Service<
            Request<RetryQueueBody<B>>,
            Response = Response<()>,
            Error = BoxError,
            Future: Send,
        > + Clone
        + Send
        + 'static,
)
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let received = Arc::new(Mutex::new(Vec::new()));
    let service = service_fn({
        let received = Arc::clone(&received);
        move |request: Request<RetryQueueBody<B>>| {
            let received = Arc::clone(&received);
            async move {
                let body = request.into_body().collect().await?.to_bytes();
                received.lock().unwrap().push(body);
                Err::<Response<()>, BoxError>("connection refused".into())
            }
        }
    });
    (received, service)
}

#[tokio::test]
async fn full_bodies_around_limit_queued_up_to_it() {
    for (len, queued) in [
        (MAX_BODY_BYTES - 1, true),
        (MAX_BODY_BYTES, true),
        (MAX_BODY_BYTES + 1, false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let queue = open_queue(&dir);
        let (received, inner) = failing_inner::<Full<Bytes>>();
        let service = RetryQueueLayer::new(queue.clone()).layer(inner);
        let request = Request::post("http://127.0.0.1:9/v1")
            .body(Full::new(Bytes::from(vec![b'x'; len])))
            .unwrap();

        let error = service.oneshot(request).await.unwrap_err();

        assert_eq!(received.lock().unwrap()[0].len(), len);
        let expected = if queued {
            RetryQueueErrorKind::Queued
        } else {
            RetryQueueErrorKind::NotQueued
        };
        assert_eq!(error.kind(), expected, "body of {len} bytes");
        assert_eq!(queue.len(), usize::from(queued), "body of {len} bytes");
    }
}

/// A body whose frames and size hint are chosen by the test, with an optional error at the end.
struct ScriptedBody {
    frames: VecDeque<Bytes>,
    hint: SizeHint,
    fail_at_end: bool,
}

impl http_body::Body for ScriptedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.frames.pop_front() {
            Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
            None if self.fail_at_end => {
                self.fail_at_end = false;
                Poll::Ready(Some(Err("upload aborted".into())))
            }
            None => Poll::Ready(None),
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

#[tokio::test]
async fn understated_size_hint_not_queued() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open_queue(&dir);
    let (received, inner) = failing_inner::<ScriptedBody>();
    let service = RetryQueueLayer::new(queue.clone()).layer(inner);
    let body = ScriptedBody {
        frames: [
            Bytes::from_static(b"0123456"),
            Bytes::from_static(b"789abc"),
        ]
        .into(),
        hint: SizeHint::with_exact(4),
        fail_at_end: false,
    };
    let request = Request::post("http://127.0.0.1:9/v1").body(body).unwrap();

    let error = service.oneshot(request).await.unwrap_err();

    assert_eq!(
        received.lock().unwrap()[0],
        Bytes::from_static(b"0123456789abc")
    );
    assert!(matches!(
        error.not_queued_reason(),
        Some(NotQueuedReason::BodyTooLarge {
            max_body_bytes: MAX_BODY_BYTES
        })
    ));
    assert!(queue.is_empty());
}

#[tokio::test]
async fn body_failing_mid_stream_not_queued() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open_queue(&dir);
    let (received, inner) = failing_inner::<ScriptedBody>();
    let service = RetryQueueLayer::new(queue.clone()).layer(inner);
    let body = ScriptedBody {
        frames: [Bytes::from_static(b"012")].into(),
        hint: SizeHint::with_exact(6),
        fail_at_end: true,
    };
    let request = Request::post("http://127.0.0.1:9/v1").body(body).unwrap();

    let error = service.oneshot(request).await.unwrap_err();

    assert_eq!(error.kind(), RetryQueueErrorKind::Body);
    assert!(received.lock().unwrap().is_empty());
    assert!(queue.is_empty());
}

fn any_file_contains(dir: &std::path::Path, needle: &[u8]) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(
                std::fs::read_dir(&path)
                    .unwrap()
                    .map(|entry| entry.unwrap().path()),
            );
        } else if std::fs::read(&path)
            .unwrap()
            .windows(needle.len())
            .any(|window| window == needle)
        {
            return true;
        }
    }
    false
}

#[tokio::test]
async fn uri_password_never_reaches_disk() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open_queue(&dir);
    let (_, inner) = failing_inner::<Full<Bytes>>();
    let service = RetryQueueLayer::new(queue.clone()).layer(inner);
    let request = Request::post("http://user:Userinfo-Password-3c9d@127.0.0.1:9/v1")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();

    let error = service.oneshot(request).await.unwrap_err();
    assert_eq!(error.kind(), RetryQueueErrorKind::Queued);
    drop(queue);

    assert!(any_file_contains(dir.path(), b"127.0.0.1:9"));
    assert!(
        !any_file_contains(dir.path(), b"Userinfo-Password-3c9d"),
        "the password of the request URI was written to the queue directory"
    );
}

/// Credential headers of common rate-limited APIs, beyond the documented
/// `authorization`, `proxy-authorization`, `cookie`, `x-api-key` and `api-key`.
const API_CREDENTIAL_HEADERS: [(&str, &str); 6] = [
    // Shopify Admin API, whose `x-shopify-shop-api-call-limit` the quota parser reads.
    ("x-shopify-access-token", "Shopify-Token-1b5e"),
    // GitLab personal access tokens, for GitLab's `RateLimit-*` variant.
    ("private-token", "Gitlab-Token-7c2a"),
    // Google's Gemini API key header.
    ("x-goog-api-key", "Google-Key-3f9d"),
    // GitLab CI job tokens.
    ("job-token", "Gitlab-Job-Token-5d1c"),
    // Common session and access token headers.
    ("x-auth-token", "Auth-Token-8e4b"),
    ("x-access-token", "Access-Token-2a6f"),
];

#[tokio::test]
async fn api_credential_headers_never_reach_disk() {
    for (name, secret) in API_CREDENTIAL_HEADERS {
        let dir = tempfile::tempdir().unwrap();
        let queue = open_queue(&dir);
        let (_, inner) = failing_inner::<Full<Bytes>>();
        let service = RetryQueueLayer::new(queue.clone()).layer(inner);
        let request = Request::post("http://127.0.0.1:9/v1")
            .header(name, secret)
            .header("x-visible", "Visible-Marker-1a2b")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();

        let error = service.oneshot(request).await.unwrap_err();
        assert_eq!(error.kind(), RetryQueueErrorKind::Queued);
        drop(queue);

        assert!(any_file_contains(dir.path(), b"Visible-Marker-1a2b"));
        assert!(
            !any_file_contains(dir.path(), secret.as_bytes()),
            "the value of {name} was written to the queue directory"
        );
    }
}
