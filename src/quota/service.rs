//! The services that the quota layers produce.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::error::QuotaExhausted;
use super::future::{EnforceResponseFuture, ResponseFuture};
use super::layer::Enforcement;
use super::state::PartitionState;
use super::tracker::QuotaTracker;
use crate::BoxError;

/// A service that reads the rate-limit headers of every response into a [`QuotaTracker`].
///
/// Every request counts against the local limit of its partition when it is sent, so a request
/// that ends in an error counts too. Errors of the inner service pass through unchanged.
/// Created by [`QuotaLayer`](super::QuotaLayer).
///
/// # Example
///
/// ```
/// use std::convert::Infallible;
/// use http::{Request, Response};
/// use tower::{service_fn, ServiceExt};
/// use tower_quota_queue::quota::{QuotaService, QuotaTracker};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let inner = service_fn(|_request: Request<()>| async {
///     Ok::<_, Infallible>(Response::new(()))
/// });
/// let service = QuotaService::new(inner, QuotaTracker::new());
/// let request = Request::get("http://localhost/").body(()).unwrap();
/// assert_eq!(service.oneshot(request).await.unwrap().status(), 200);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct QuotaService<S> {
    inner: S,
    tracker: QuotaTracker,
}

impl<S> QuotaService<S> {
    /// Wraps `inner`, reporting into `tracker`.
    pub fn new(inner: S, tracker: QuotaTracker) -> Self {
        Self { inner, tracker }
    }

    /// Returns the tracker this service reports into.
    pub fn tracker(&self) -> &QuotaTracker {
        &self.tracker
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

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for QuotaService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let state = partition_of(&self.tracker, &request);
        state.record_request();
        ResponseFuture::new(self.inner.call(request), state)
    }
}

/// Looks up the partition state of a request without allocating when the partition exists.
fn partition_of<B>(tracker: &QuotaTracker, request: &Request<B>) -> Arc<PartitionState> {
    let key = tracker.partition_key(request.uri(), request.headers());
    tracker.partition(&key)
}

/// A service that tracks quotas like [`QuotaService`] and holds back requests to partitions whose
/// quota is exhausted, in the way its [`Enforcement`] selects.
///
/// The inner service must be `Clone`: a request that waits takes the inner service that
/// `poll_ready` prepared into its future and leaves a clone behind. Created by
/// [`QuotaLayer::enforce`](super::QuotaLayer::enforce).
///
/// # Example
///
/// ```
/// use std::convert::Infallible;
/// use std::time::Duration;
/// use http::{Request, Response};
/// use tower::{service_fn, ServiceExt};
/// use tower_quota_queue::quota::{EnforceQuotaService, Enforcement, QuotaTracker};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let inner = service_fn(|_request: Request<()>| async {
///     Ok::<_, Infallible>(Response::new(()))
/// });
/// let enforcement = Enforcement::Wait { max_wait: Duration::from_secs(10) };
/// let service = EnforceQuotaService::new(inner, QuotaTracker::new(), enforcement);
/// let request = Request::get("http://localhost/").body(()).unwrap();
/// assert_eq!(service.oneshot(request).await.unwrap().status(), 200);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct EnforceQuotaService<S> {
    inner: S,
    tracker: QuotaTracker,
    enforcement: Enforcement,
}

impl<S> EnforceQuotaService<S> {
    /// Wraps `inner`, reporting into `tracker` and enforcing its quotas in the way `enforcement`
    /// selects.
    pub fn new(inner: S, tracker: QuotaTracker, enforcement: Enforcement) -> Self {
        Self {
            inner,
            tracker,
            enforcement,
        }
    }

    /// Returns the tracker this service reports into.
    pub fn tracker(&self) -> &QuotaTracker {
        &self.tracker
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

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for EnforceQuotaService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = EnforceResponseFuture<S, Request<ReqBody>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let state = partition_of(&self.tracker, &request);
        let Some((deadline, now)) = state.blocked_until_now() else {
            state.record_request();
            return EnforceResponseFuture::calling(self.inner.call(request), state);
        };
        let wait = deadline.duration_since(now).unwrap_or_default();
        match self.enforcement {
            Enforcement::Wait { max_wait } if wait <= max_wait => {
                // The service that `poll_ready` prepared goes with the request.
                let clone = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, clone);
                EnforceResponseFuture::waiting(deadline, max_wait, ready, request, state)
            }
            _ => {
                let error = QuotaExhausted::new(state.key().to_owned(), deadline);
                EnforceResponseFuture::rejected(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{HeaderMap, Request, Response, StatusCode};
    use tower_test::mock;

    use super::{EnforceQuotaService, QuotaService};
    use crate::quota::{Enforcement, QuotaTracker};

    const PARTITION: &str = "api.example.com";

    fn request() -> Request<()> {
        let mut request = Request::new(());
        *request.uri_mut() = "https://api.example.com/v1".parse().expect("valid uri");
        request
    }

    #[tokio::test]
    async fn poll_ready_follows_inner_readiness() {
        let (inner, mut handle) = mock::pair::<Request<()>, Response<()>>();
        let mut service = mock::Spawn::new(QuotaService::new(inner, QuotaTracker::new()));

        handle.allow(0);
        assert!(service.poll_ready().is_pending());
        handle.allow(1);
        assert!(service.poll_ready().is_ready());
    }

    #[tokio::test]
    async fn response_headers_update_partition() {
        let tracker = QuotaTracker::new();
        let (inner, mut handle) = mock::pair::<Request<()>, Response<()>>();
        let mut service = mock::Spawn::new(QuotaService::new(inner, tracker.clone()));

        handle.allow(1);
        assert!(service.poll_ready().is_ready());
        let future = service.call(request());
        let (received, respond) = handle.next_request().await.expect("request forwarded");
        assert_eq!(received.uri(), "https://api.example.com/v1");
        let response = Response::builder()
            .header("x-ratelimit-limit", "10")
            .header("x-ratelimit-remaining", "5")
            .body(())
            .expect("valid response");
        respond.send_response(response);

        future.await.expect("response passed through");
        let status = tracker.status_of(PARTITION).expect("partition seen");
        assert_eq!(status.usage, Some(0.5));
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_request_sent_after_deadline() {
        let tracker = QuotaTracker::new();
        let mut retry = HeaderMap::new();
        retry.insert("retry-after", "5".parse().expect("valid value"));
        tracker.record_response(PARTITION, StatusCode::TOO_MANY_REQUESTS, &retry);

        let (inner, mut handle) = mock::pair::<Request<()>, Response<()>>();
        let enforcement = Enforcement::Wait {
            max_wait: Duration::from_secs(10),
        };
        let mut service = mock::Spawn::new(EnforceQuotaService::new(inner, tracker, enforcement));
        handle.allow(1);
        assert!(service.poll_ready().is_ready());
        let waiting = tokio::spawn(service.call(request()));

        tokio::time::sleep(Duration::from_millis(4_999)).await;
        assert!(handle.poll_request().is_pending());

        tokio::time::sleep(Duration::from_millis(1)).await;
        let (_, respond) = handle.next_request().await.expect("request sent");
        respond.send_response(Response::new(()));
        let response = waiting.await.expect("task finished").expect("response");
        assert_eq!(response.status(), StatusCode::OK);
    }
}
