//! The response future of [`RetryQueueService`](super::RetryQueueService).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;

use super::error::{NotQueuedReason, RetryQueueError};
use crate::BoxError;

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, RetryQueueError>> + Send>>;

pin_project! {
    /// The response future of [`RetryQueueService`](super::RetryQueueService).
    ///
    /// A request that cannot be queued runs the inner future directly. A buffered request runs
    /// inside one boxed future, because it awaits the body, the inner service and the enqueue in
    /// turn.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_quota_queue::retry_queue::future::ResponseFuture;
    /// use tower_quota_queue::retry_queue::RetryQueueError;
    ///
    /// // The future resolves to the inner response or a `RetryQueueError`.
    /// async fn status<F, E>(future: ResponseFuture<F, http::Response<()>>) -> Option<u16>
    /// where
    ///     F: std::future::Future<Output = Result<http::Response<()>, E>>,
    ///     E: Into<tower_quota_queue::BoxError>,
    /// {
    ///     let result: Result<_, RetryQueueError> = future.await;
    ///     result.ok().map(|response| response.status().as_u16())
    /// }
    /// ```
    pub struct ResponseFuture<F, T> {
        #[pin]
        kind: Kind<F, T>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, T> {
        Passthrough {
            #[pin]
            future: F,
            reason: Option<NotQueuedReason>,
        },
        Buffered {
            future: BoxFuture<T>,
        },
    }
}

impl<F, T> ResponseFuture<F, T> {
    pub(crate) fn passthrough(future: F, reason: NotQueuedReason) -> Self {
        Self {
            kind: Kind::Passthrough {
                future,
                reason: Some(reason),
            },
        }
    }

    pub(crate) fn buffered(future: BoxFuture<T>) -> Self {
        Self {
            kind: Kind::Buffered { future },
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F, T>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, RetryQueueError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Passthrough { future, reason } => {
                let result = ready!(future.poll(cx));
                Poll::Ready(result.map_err(|error| RetryQueueError::NotQueued {
                    reason: reason.take().unwrap_or(NotQueuedReason::StreamingBody),
                    source: error.into(),
                }))
            }
            KindProj::Buffered { future } => future.as_mut().poll(cx),
        }
    }
}

impl<F, T> fmt::Debug for ResponseFuture<F, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.kind {
            Kind::Passthrough { .. } => "Passthrough",
            Kind::Buffered { .. } => "Buffered",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
