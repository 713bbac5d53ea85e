//! [`RetryQueueService`]: the queueing middleware.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response};
use http_body::Body;
use http_body_util::BodyExt;
use tower_layer::Layer;
use tower_service::Service;
use uuid::Uuid;

use super::body::RetryQueueBody;
use super::classify::retry_after;
use super::error::{NotQueuedReason, RetryQueueError};
use super::future::ResponseFuture;
use super::layer::RetryQueueLayer;
use super::request::QueuedRequest;
use crate::{clock, BoxError};

/// The id of a queued request, inserted into the extensions of a retryable response whose request
/// was queued.
///
/// # Example
///
/// ```
/// use tower_quota_queue::retry_queue::QueuedId;
///
/// fn queued(response: &http::Response<()>) -> Option<uuid::Uuid> {
///     response.extensions().get::<QueuedId>().map(|queued| queued.0)
/// }
/// assert_eq!(queued(&http::Response::new(())), None);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QueuedId(pub Uuid);

/// The middleware built by [`RetryQueueLayer`]: sends each request through the inner service and
/// persists it in the queue when it fails.
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower::{service_fn, Layer};
/// use tower_quota_queue::retry_queue::{
///     RetryQueue, RetryQueueBody, RetryQueueConfig, RetryQueueLayer,
/// };
///
/// let dir = tempfile::tempdir().unwrap();
/// let queue = RetryQueue::open(RetryQueueConfig::new().path(dir.path())).unwrap();
/// let client = service_fn(|_request: http::Request<RetryQueueBody<Full<Bytes>>>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(()))
/// });
/// let service = RetryQueueLayer::new(queue).layer(client);
/// # let _ = service;
/// ```
#[derive(Clone, Debug)]
pub struct RetryQueueService<S> {
    inner: S,
    shared: Arc<RetryQueueLayer>,
}

impl<S> RetryQueueService<S> {
    /// Wraps `inner` with the settings of `layer`.
    pub fn new(inner: S, layer: RetryQueueLayer) -> Self {
        Self {
            inner,
            shared: Arc::new(layer),
        }
    }

    /// Returns a reference to the inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Returns a mutable reference to the inner service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Returns the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> Layer<S> for RetryQueueLayer {
    type Service = RetryQueueService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryQueueService::new(inner, self.clone())
    }
}

impl<S, B, ResB> Service<Request<B>> for RetryQueueService<S>
where
    S: Service<Request<RetryQueueBody<B>>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    ResB: Send + 'static,
{
    type Response = Response<ResB>;
    type Error = RetryQueueError;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|error| RetryQueueError::NotReady(error.into()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (parts, body) = request.into_parts();
        if let Some(reason) = self.not_buffered_reason(&parts, &body) {
            tracing::trace!(%reason, "sending request without queueing");
            let request = Request::from_parts(parts, RetryQueueBody::streaming(body));
            let classifier = Arc::clone(&self.shared.classifier);
            return ResponseFuture::passthrough(self.inner.call(request), reason, classifier);
        }
        // The ready service goes into the future, and a fresh clone stays for the next call.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = Arc::clone(&self.shared);
        ResponseFuture::buffered(inner, shared, parts, body.collect())
    }
}

impl<S> RetryQueueService<S> {
    /// Returns why a request is sent without buffering, or `None` when it can be buffered.
    fn not_buffered_reason<B: Body>(&self, parts: &Parts, body: &B) -> Option<NotQueuedReason> {
        if let Some(methods) = &self.shared.methods {
            if !methods.contains(&parts.method) {
                return Some(NotQueuedReason::MethodExcluded);
            }
        }
        let max_body_bytes = self.shared.queue.config().max_body_bytes;
        let hint = body.size_hint();
        if hint.lower() > max_body_bytes as u64 {
            return Some(NotQueuedReason::BodyTooLarge { max_body_bytes });
        }
        match hint.upper() {
            Some(upper) if upper <= max_body_bytes as u64 => None,
            _ => Some(NotQueuedReason::StreamingBody),
        }
    }
}

/// Copies what the queue persists of a request: method, URI, headers and the shared body.
pub(super) fn snapshot_of(parts: &Parts, body: Bytes) -> Result<Request<Bytes>, RetryQueueError> {
    let mut snapshot = Request::builder()
        .method(parts.method.clone())
        .uri(parts.uri.clone())
        .body(body)
        .map_err(|error| RetryQueueError::Body(error.into()))?;
    *snapshot.headers_mut() = parts.headers.clone();
    Ok(snapshot)
}

/// Persists the request of a retryable response and marks the response with the queued id.
pub(super) async fn queue_retryable<ResB>(
    shared: &RetryQueueLayer,
    snapshot: Request<Bytes>,
    id: Uuid,
    mut response: Response<ResB>,
) -> Response<ResB> {
    let not_before = retry_after(response.headers(), clock::now());
    let error = format!("retryable response status {}", response.status());
    let item = queued_item(shared, snapshot, error, id).with_not_before(not_before);
    match shared.queue.enqueue(item).await {
        Ok(id) => {
            response.extensions_mut().insert(QueuedId(id));
        }
        Err(error) => {
            tracing::warn!(
                request_id = %id,
                %error,
                "failed to queue request after a retryable response"
            );
        }
    }
    response
}

/// Persists a request whose send failed and returns the caller's error.
pub(super) async fn queue_failed(
    shared: &RetryQueueLayer,
    snapshot: Request<Bytes>,
    id: Uuid,
    source: BoxError,
) -> RetryQueueError {
    let item = queued_item(shared, snapshot, source.to_string(), id);
    match shared.queue.enqueue(item).await {
        Ok(id) => RetryQueueError::Queued { id, source },
        Err(error) => {
            tracing::warn!(request_id = %id, %error, "failed to queue failed request");
            RetryQueueError::NotQueued {
                reason: NotQueuedReason::Queue(error),
                source,
            }
        }
    }
}

fn queued_item(
    shared: &RetryQueueLayer,
    request: Request<Bytes>,
    error: String,
    id: Uuid,
) -> QueuedRequest {
    let partition = shared
        .partitioner
        .0
        .partition(request.uri(), request.headers())
        .into_owned();
    QueuedRequest::new(request, error)
        .with_id(id)
        .with_partition(partition)
}
