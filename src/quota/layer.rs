//! The layers that wrap a service with quota tracking.

use std::time::Duration;

use tower_layer::Layer;

use super::service::{EnforceQuotaService, QuotaService};
use super::tracker::QuotaTracker;

/// Wraps a service in a [`QuotaService`] that reads the rate-limit headers of every response into
/// a [`QuotaTracker`].
///
/// The layer only observes: every request goes to the inner service and its error passes through
/// unchanged. Call [`enforce`](Self::enforce) to hold back requests while a partition's quota is
/// exhausted.
///
/// # Example
///
/// ```
/// use std::convert::Infallible;
/// use http::{Request, Response};
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
/// use tower_quota_queue::quota::{QuotaLayer, QuotaTracker};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let tracker = QuotaTracker::new();
/// let service = ServiceBuilder::new()
///     .layer(QuotaLayer::new(tracker.clone()))
///     .service(service_fn(|_request: Request<String>| async {
///         let response = Response::builder()
///             .header("x-ratelimit-limit", "100")
///             .header("x-ratelimit-remaining", "25")
///             .body(String::new())
///             .unwrap();
///         Ok::<_, Infallible>(response)
///     }));
///
/// let request = Request::get("https://api.example.com/v1").body(String::new()).unwrap();
/// service.oneshot(request).await.unwrap();
/// assert_eq!(tracker.status_of("api.example.com").unwrap().usage, Some(0.75));
/// # }
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct QuotaLayer {
    tracker: QuotaTracker,
}

impl QuotaLayer {
    /// Creates a layer that reports into `tracker`.
    pub const fn new(tracker: QuotaTracker) -> Self {
        Self { tracker }
    }

    /// Turns this layer into one that also holds back requests to exhausted partitions in the way
    /// `enforcement` selects.
    pub fn enforce(self, enforcement: Enforcement) -> EnforceQuotaLayer {
        EnforceQuotaLayer {
            tracker: self.tracker,
            enforcement,
        }
    }
}

impl<S> Layer<S> for QuotaLayer {
    type Service = QuotaService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        QuotaService::new(inner, self.tracker.clone())
    }
}

/// The action an enforcing layer takes on a request to a partition whose quota is exhausted.
///
/// A partition is exhausted while [`QuotaTracker::blocked_until`] returns a deadline.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_quota_queue::quota::{Enforcement, QuotaLayer, QuotaTracker};
///
/// let layer = QuotaLayer::new(QuotaTracker::new())
///     .enforce(Enforcement::Wait { max_wait: Duration::from_secs(5) });
/// # let _ = layer;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Enforcement {
    /// Waits until the deadline and then sends the request, unless the deadline is more than
    /// `max_wait` away, in which case the request fails at once with
    /// [`QuotaExhausted`](super::QuotaExhausted). When a response that arrives during the wait
    /// moves the deadline, the request waits for the new one, or fails once the new one lies more
    /// than `max_wait` after the request was made.
    ///
    /// Waiting uses a Tokio timer, so requests must be sent inside a Tokio runtime with the time
    /// driver enabled.
    Wait {
        /// The maximum wait before a request is sent.
        max_wait: Duration,
    },
    /// Fails the request at once with [`QuotaExhausted`](super::QuotaExhausted).
    FailFast,
}

/// Wraps a service in an [`EnforceQuotaService`], which tracks quotas like [`QuotaLayer`] and
/// holds back requests to exhausted partitions.
///
/// Built with [`QuotaLayer::enforce`]. The service's error type is [`BoxError`](crate::BoxError)
/// because it adds [`QuotaExhausted`](super::QuotaExhausted) to the inner service's errors.
///
/// # Example
///
/// ```
/// use std::convert::Infallible;
/// use http::{Request, Response};
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
/// use tower_quota_queue::quota::{Enforcement, QuotaExhausted, QuotaLayer, QuotaTracker};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let tracker = QuotaTracker::new();
/// let service = ServiceBuilder::new()
///     .layer(QuotaLayer::new(tracker.clone()).enforce(Enforcement::FailFast))
///     .service(service_fn(|_request: Request<String>| async {
///         let response = Response::builder()
///             .status(429)
///             .header("retry-after", "30")
///             .body(String::new())
///             .unwrap();
///         Ok::<_, Infallible>(response)
///     }));
///
/// let request = || Request::get("https://api.example.com/").body(String::new()).unwrap();
/// let response = service.clone().oneshot(request()).await.unwrap();
/// assert_eq!(response.status(), 429);
///
/// let error = service.oneshot(request()).await.unwrap_err();
/// let exhausted = error.downcast_ref::<QuotaExhausted>().unwrap();
/// assert_eq!(exhausted.partition(), "api.example.com");
/// # }
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct EnforceQuotaLayer {
    tracker: QuotaTracker,
    enforcement: Enforcement,
}

impl<S> Layer<S> for EnforceQuotaLayer {
    type Service = EnforceQuotaService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EnforceQuotaService::new(inner, self.tracker.clone(), self.enforcement)
    }
}
