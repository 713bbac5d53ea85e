//! Response futures of the quota services.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime};

use http::Response;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::util::Oneshot;
use tower_service::Service;

use super::error::{PolledAfterCompletion, QuotaExhausted};
use super::state::PartitionState;
use crate::{clock, BoxError};

pin_project! {
    /// The response future of [`QuotaService`](super::QuotaService).
    ///
    /// It reads the status and headers of the response into the tracker and passes the result
    /// through unchanged.
    ///
    /// # Example
    ///
    /// ```
    /// use http::{Request, Response};
    /// use tower::Service;
    /// use tower_quota_queue::quota::future::ResponseFuture;
    /// use tower_quota_queue::quota::QuotaService;
    ///
    /// fn send<S>(service: &mut QuotaService<S>, request: Request<()>) -> ResponseFuture<S::Future>
    /// where
    ///     S: Service<Request<()>, Response = Response<()>>,
    /// {
    ///     service.call(request)
    /// }
    /// # let _ = send::<tower::util::BoxService<Request<()>, Response<()>, std::io::Error>>;
    /// ```
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        state: Arc<PartitionState>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, state: Arc<PartitionState>) -> Self {
        Self { inner, state }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("partition", &self.state.key())
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let Ok(response) = &result {
            this.state.observe(response.status(), response.headers());
        }
        Poll::Ready(result)
    }
}

pin_project! {
    /// The response future of [`EnforceQuotaService`](super::EnforceQuotaService).
    ///
    /// It fails with [`QuotaExhausted`], waits for a partition's deadline before sending, or
    /// sends at once, and then reads the response into the tracker like [`ResponseFuture`].
    ///
    /// # Example
    ///
    /// ```
    /// use http::{Request, Response};
    /// use tower::Service;
    /// use tower_quota_queue::quota::future::EnforceResponseFuture;
    /// use tower_quota_queue::quota::EnforceQuotaService;
    /// use tower_quota_queue::BoxError;
    ///
    /// fn send<S>(
    ///     service: &mut EnforceQuotaService<S>,
    ///     request: Request<()>,
    /// ) -> EnforceResponseFuture<S, Request<()>>
    /// where
    ///     S: Service<Request<()>, Response = Response<()>> + Clone,
    ///     S::Error: Into<BoxError>,
    /// {
    ///     service.call(request)
    /// }
    /// # let _ = send::<tower::util::BoxCloneService<Request<()>, Response<()>, BoxError>>;
    /// ```
    pub struct EnforceResponseFuture<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        step: Step<S, Req>,
        state: Option<Arc<PartitionState>>,
    }
}

pin_project! {
    #[project = StepProjection]
    enum Step<S, Req>
    where
        S: Service<Req>,
    {
        Calling {
            #[pin]
            future: S::Future,
        },
        Waiting {
            #[pin]
            sleep: Sleep,
            // The latest instant the request may wait until, from `max_wait`.
            latest: Instant,
            pending: Option<(S, Req)>,
        },
        Sending {
            #[pin]
            oneshot: Oneshot<S, Req>,
        },
        Rejected {
            error: Option<QuotaExhausted>,
        },
    }
}

impl<S, Req> EnforceResponseFuture<S, Req>
where
    S: Service<Req>,
{
    pub(crate) fn calling(future: S::Future, state: Arc<PartitionState>) -> Self {
        Self {
            step: Step::Calling { future },
            state: Some(state),
        }
    }

    pub(crate) fn waiting(
        deadline: SystemTime,
        max_wait: Duration,
        service: S,
        request: Req,
        state: Arc<PartitionState>,
    ) -> Self {
        let sleep = tokio::time::sleep_until(clock::instant_at(deadline));
        Self {
            step: Step::Waiting {
                sleep,
                latest: Instant::now() + max_wait,
                pending: Some((service, request)),
            },
            state: Some(state),
        }
    }

    pub(crate) fn rejected(error: QuotaExhausted) -> Self {
        Self {
            step: Step::Rejected { error: Some(error) },
            state: None,
        }
    }
}

impl<S, Req> fmt::Debug for EnforceResponseFuture<S, Req>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let step = match &self.step {
            Step::Calling { .. } => "calling",
            Step::Waiting { .. } => "waiting",
            Step::Sending { .. } => "sending",
            Step::Rejected { .. } => "rejected",
        };
        f.debug_struct("EnforceResponseFuture")
            .field("step", &step)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Future for EnforceResponseFuture<S, http::Request<ReqBody>>
where
    S: Service<http::Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<ResBody>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let this = self.as_mut().project();
            let result = match this.step.project() {
                StepProjection::Calling { future } => ready!(future.poll(cx)),
                StepProjection::Sending { oneshot } => ready!(oneshot.poll(cx)),
                StepProjection::Rejected { error } => {
                    let error: BoxError = match error.take() {
                        Some(error) => Box::new(error),
                        None => Box::new(PolledAfterCompletion),
                    };
                    return Poll::Ready(Err(error));
                }
                StepProjection::Waiting {
                    mut sleep,
                    latest,
                    pending,
                } => {
                    ready!(sleep.as_mut().poll(cx));
                    let Some(state) = this.state.as_ref() else {
                        return Poll::Ready(Err(Box::new(PolledAfterCompletion)));
                    };
                    // A response that arrived during the wait may have moved the deadline.
                    if let Some((deadline, _)) = state.blocked_until_now() {
                        let wake = clock::instant_at(deadline);
                        if wake > *latest {
                            let error = QuotaExhausted::new(state.key().to_owned(), deadline);
                            *pending = None;
                            return Poll::Ready(Err(Box::new(error)));
                        }
                        sleep.reset(wake);
                        continue;
                    }
                    let Some((service, request)) = pending.take() else {
                        return Poll::Ready(Err(Box::new(PolledAfterCompletion)));
                    };
                    state.record_request();
                    let oneshot = Oneshot::new(service, request);
                    self.as_mut().project().step.set(Step::Sending { oneshot });
                    continue;
                }
            };
            if let (Ok(response), Some(state)) = (&result, this.state.as_ref()) {
                state.observe(response.status(), response.headers());
            }
            return Poll::Ready(result.map_err(Into::into));
        }
    }
}
