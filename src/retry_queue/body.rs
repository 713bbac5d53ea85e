//! [`RetryQueueBody`]: the request body that [`RetryQueueService`](super::RetryQueueService) sends.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;

use crate::BoxError;

pin_project! {
    /// The body of a request that passed through [`RetryQueueService`](super::RetryQueueService):
    /// either the buffered bytes, which were also persisted, or the caller's body untouched when it
    /// could not be buffered.
    ///
    /// A replay of a queued request sends [`RetryQueueBody::buffered`].
    ///
    /// # Example
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body::Body;
    /// use http_body_util::Full;
    /// use tower_quota_queue::retry_queue::RetryQueueBody;
    ///
    /// let body: RetryQueueBody<Full<Bytes>> = RetryQueueBody::buffered(Bytes::from_static(b"hi"));
    /// assert_eq!(body.size_hint().exact(), Some(2));
    /// ```
    #[derive(Debug)]
    pub struct RetryQueueBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<B> {
        Buffered {
            #[pin]
            body: Full<Bytes>,
        },
        Streaming {
            #[pin]
            body: B,
        },
    }
}

impl<B> RetryQueueBody<B> {
    /// Creates a body from buffered bytes.
    pub fn buffered(bytes: Bytes) -> Self {
        Self {
            kind: Kind::Buffered {
                body: Full::new(bytes),
            },
        }
    }

    /// Wraps a body that is sent as it is.
    pub fn streaming(body: B) -> Self {
        Self {
            kind: Kind::Streaming { body },
        }
    }

    /// Returns whether the body is buffered bytes rather than the caller's stream.
    pub fn is_buffered(&self) -> bool {
        matches!(self.kind, Kind::Buffered { .. })
    }
}

impl<B> From<Full<Bytes>> for RetryQueueBody<B> {
    fn from(body: Full<Bytes>) -> Self {
        Self {
            kind: Kind::Buffered { body },
        }
    }
}

impl<B> Body for RetryQueueBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Buffered { body } => body.poll_frame(cx).map_err(|never| match never {}),
            KindProj::Streaming { body } => body.poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Buffered { body } => body.is_end_stream(),
            Kind::Streaming { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Buffered { body } => body.size_hint(),
            Kind::Streaming { body } => body.size_hint(),
        }
    }
}
