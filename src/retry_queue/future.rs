//! The response future of [`RetryQueueService`](super::RetryQueueService).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response};
use http_body::Body;
use http_body_util::combinators::Collect;
use pin_project_lite::pin_project;
use tower_service::Service;
use uuid::Uuid;

use super::body::RetryQueueBody;
use super::classify::RetryClassifier;
use super::error::{NotQueuedReason, RetryQueueError};
use super::headers::ensure_idempotency_key;
use super::layer::RetryQueueLayer;
use super::service::{queue_failed, queue_retryable, snapshot_of};
use crate::BoxError;

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, RetryQueueError>> + Send>>;

pin_project! {
    /// The response future of [`RetryQueueService`](super::RetryQueueService).
    ///
    /// A request that cannot be buffered runs the inner future directly. A buffered request moves
    /// through collecting its body, sending it, and, only when it failed, persisting it.
    ///
    /// # Example
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::Full;
    /// use tower::{service_fn, Layer, Service, ServiceExt};
    /// use tower_quota_queue::retry_queue::future::ResponseFuture;
    /// use tower_quota_queue::retry_queue::{
    ///     RetryQueue, RetryQueueBody, RetryQueueConfig, RetryQueueLayer,
    /// };
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let dir = tempfile::tempdir().unwrap();
    /// let queue = RetryQueue::open(RetryQueueConfig::new().path(dir.path())).unwrap();
    /// let client = service_fn(|_request: http::Request<RetryQueueBody<Full<Bytes>>>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(()))
    /// });
    /// let mut service = RetryQueueLayer::new(queue).layer(client);
    /// let request = http::Request::new(Full::new(Bytes::from_static(b"{}")));
    /// let future: ResponseFuture<_, Full<Bytes>> = service.ready().await.unwrap().call(request);
    /// assert_eq!(future.await.unwrap().status(), 200);
    /// # }
    /// ```
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<RetryQueueBody<B>>>,
        B: Body,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<RetryQueueBody<B>>>,
        B: Body,
    {
        Passthrough {
            #[pin]
            future: S::Future,
            reason: Option<NotQueuedReason>,
            classifier: Arc<dyn RetryClassifier>,
        },
        Collecting {
            #[pin]
            collect: Collect<B>,
            inner: Option<S>,
            parts: Option<Parts>,
            shared: Arc<RetryQueueLayer>,
        },
        Sending {
            #[pin]
            future: S::Future,
            snapshot: Option<Request<Bytes>>,
            id: Uuid,
            shared: Arc<RetryQueueLayer>,
        },
        Queueing {
            future: BoxFuture<S::Response>,
        },
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<RetryQueueBody<B>>>,
    B: Body,
{
    pub(crate) fn passthrough(
        future: S::Future,
        reason: NotQueuedReason,
        classifier: Arc<dyn RetryClassifier>,
    ) -> Self {
        Self {
            state: State::Passthrough {
                future,
                reason: Some(reason),
                classifier,
            },
        }
    }

    pub(crate) fn buffered(
        inner: S,
        shared: Arc<RetryQueueLayer>,
        parts: Parts,
        collect: Collect<B>,
    ) -> Self {
        Self {
            state: State::Collecting {
                collect,
                inner: Some(inner),
                parts: Some(parts),
                shared,
            },
        }
    }
}

impl<S, B, ResB> Future for ResponseFuture<S, B>
where
    S: Service<Request<RetryQueueBody<B>>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
    ResB: Send + 'static,
{
    type Output = Result<Response<ResB>, RetryQueueError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            let next = match state.as_mut().project() {
                StateProj::Passthrough {
                    future,
                    reason,
                    classifier,
                } => {
                    let result = ready!(future.poll(cx));
                    let reason = reason.take().unwrap_or(NotQueuedReason::StreamingBody);
                    return Poll::Ready(match result {
                        Ok(response) => {
                            warn_if_retryable(classifier.as_ref(), &response, &reason);
                            Ok(response)
                        }
                        Err(error) => Err(RetryQueueError::NotQueued {
                            reason,
                            source: error.into(),
                        }),
                    });
                }
                StateProj::Collecting {
                    collect,
                    inner,
                    parts,
                    shared,
                } => {
                    let collected = match ready!(collect.poll(cx)) {
                        Ok(collected) => collected,
                        Err(error) => return Poll::Ready(Err(RetryQueueError::Body(error.into()))),
                    };
                    let (Some(inner), Some(parts)) = (inner.take(), parts.take()) else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    // A body with one data frame, such as `Full<Bytes>`, is moved out without a copy.
                    match send(inner, Arc::clone(shared), parts, collected.to_bytes()) {
                        Ok(next) => next,
                        Err(error) => return Poll::Ready(Err(error)),
                    }
                }
                StateProj::Sending {
                    future,
                    snapshot,
                    id,
                    shared,
                } => {
                    let result = ready!(future.poll(cx));
                    let Some(snapshot) = snapshot.take() else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    let shared = Arc::clone(shared);
                    let id = *id;
                    let future: BoxFuture<Response<ResB>> = match result {
                        Ok(response) => {
                            let retryable = shared
                                .classifier
                                .is_retryable(response.status(), response.headers());
                            if !retryable {
                                return Poll::Ready(Ok(response));
                            }
                            Box::pin(async move {
                                Ok(queue_retryable(&shared, snapshot, id, response).await)
                            })
                        }
                        Err(error) => {
                            let source: BoxError = error.into();
                            Box::pin(async move {
                                Err(queue_failed(&shared, snapshot, id, source).await)
                            })
                        }
                    };
                    State::Queueing { future }
                }
                StateProj::Queueing { future } => return future.as_mut().poll(cx),
            };
            state.set(next);
        }
    }
}

/// Starts the send of a buffered request, or sends it unqueued when the body turned out larger
/// than its size hint promised.
fn send<S, B>(
    mut inner: S,
    shared: Arc<RetryQueueLayer>,
    mut parts: Parts,
    bytes: Bytes,
) -> Result<State<S, B>, RetryQueueError>
where
    S: Service<Request<RetryQueueBody<B>>>,
    B: Body,
{
    let max_body_bytes = shared.queue.config().max_body_bytes;
    if bytes.len() > max_body_bytes {
        let request = Request::from_parts(parts, RetryQueueBody::buffered(bytes));
        return Ok(State::Passthrough {
            future: inner.call(request),
            reason: Some(NotQueuedReason::BodyTooLarge { max_body_bytes }),
            classifier: Arc::clone(&shared.classifier),
        });
    }
    // The id exists before the first send, so the first attempt carries the same
    // Idempotency-Key as every replay and a lost response cannot cause a duplicate.
    let id = Uuid::new_v4();
    ensure_idempotency_key(&mut parts.headers, id);
    let snapshot = snapshot_of(&parts, bytes.clone())?;
    let request = Request::from_parts(parts, RetryQueueBody::buffered(bytes));
    Ok(State::Sending {
        future: inner.call(request),
        snapshot: Some(snapshot),
        id,
        shared,
    })
}

/// Logs a `warn!` event when a request that could not be buffered got a retryable response, the
/// one case where a failure reaches the caller as `Ok` without a [`QueuedId`](super::QueuedId).
/// Requests that the method filter excludes are left out, because the user chose that.
fn warn_if_retryable<ResB>(
    classifier: &dyn RetryClassifier,
    response: &Response<ResB>,
    reason: &NotQueuedReason,
) {
    if matches!(reason, NotQueuedReason::MethodExcluded) {
        return;
    }
    if classifier.is_retryable(response.status(), response.headers()) {
        tracing::warn!(
            status = %response.status(),
            %reason,
            "retryable response to a request that could not be queued"
        );
    }
}

fn polled_after_completion() -> RetryQueueError {
    RetryQueueError::NotReady("response future polled after it completed".into())
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<RetryQueueBody<B>>>,
    B: Body,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Passthrough { .. } => "Passthrough",
            State::Collecting { .. } => "Collecting",
            State::Sending { .. } => "Sending",
            State::Queueing { .. } => "Queueing",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
