//! Criterion benchmarks of the quota layer's cost per request.
//!
//! Each case sends one request through a service whose inner service returns a prepared response
//! at once, and polls the future once with a no-op waker. The response goes back to the inner
//! service after each iteration, so no iteration clones or allocates a header map and the numbers
//! show the layer's own work. Cases: the bare inner service, an identity layer
//! (`MapResponseLayer` with the identity function), `QuotaService` and `EnforceQuotaService`, each
//! on a response with OpenAI-style rate-limit headers and on one with no quota headers.

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::{ready, Future, Ready};
use std::hint::black_box;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use criterion::{criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, HeaderValue, Request, Response, Uri};
use tower::util::MapResponseLayer;
use tower::{Layer, Service};
use tower_quota_queue::quota::{Enforcement, QuotaLayer, QuotaTracker};

/// An inner service that responds with the response in its slot, which the caller returns after
/// each request.
#[derive(Clone)]
struct Prepared(Rc<RefCell<Option<Response<()>>>>);

impl Service<Request<()>> for Prepared {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: Request<()>) -> Self::Future {
        let response = self.0.borrow_mut().take();
        ready(Ok(
            response.expect("the previous response was returned to the slot")
        ))
    }
}

struct NoopWake;

impl Wake for NoopWake {
    fn wake(self: Arc<Self>) {}
}

fn response(pairs: &[(&'static str, &'static str)]) -> Response<()> {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.insert(*name, HeaderValue::from_static(value));
    }
    let mut response = Response::new(());
    *response.headers_mut() = headers;
    response
}

fn openai_response() -> Response<()> {
    response(&[
        ("content-type", "application/json"),
        ("date", "Fri, 15 Mar 2024 12:00:00 GMT"),
        ("openai-processing-ms", "412"),
        ("x-request-id", "req_0123456789abcdef"),
        ("x-ratelimit-limit-requests", "10000"),
        ("x-ratelimit-limit-tokens", "2000000"),
        ("x-ratelimit-remaining-requests", "9999"),
        ("x-ratelimit-remaining-tokens", "1999480"),
        ("x-ratelimit-reset-requests", "6ms"),
        ("x-ratelimit-reset-tokens", "15ms"),
    ])
}

fn plain_response() -> Response<()> {
    response(&[
        ("content-type", "application/json"),
        ("content-length", "512"),
        ("date", "Fri, 15 Mar 2024 12:00:00 GMT"),
        ("server", "loopback"),
        ("x-request-id", "req_0123456789abcdef"),
    ])
}

/// Sends one request through `service` and returns the response to `slot`.
fn send<S>(service: &mut S, slot: &Prepared, uri: &Uri, cx: &mut Context<'_>)
where
    S: Service<Request<()>, Response = Response<()>>,
{
    let mut request = Request::new(());
    *request.uri_mut() = uri.clone();
    let Poll::Ready(Ok(())) = service.poll_ready(cx) else {
        unreachable!("the prepared service is always ready");
    };
    let future = pin!(service.call(request));
    match future.poll(cx) {
        Poll::Ready(Ok(response)) => *slot.0.borrow_mut() = Some(black_box(response)),
        _ => unreachable!("the prepared service responds at once"),
    }
}

fn bench_case<S>(c: &mut Criterion, group: &str, name: &str, slot: &Prepared, mut service: S)
where
    S: Service<Request<()>, Response = Response<()>>,
{
    let uri: Uri = "https://api.openai.com/v1/chat/completions"
        .parse()
        .unwrap();
    let waker = Waker::from(Arc::new(NoopWake));
    let mut cx = Context::from_waker(&waker);
    c.bench_with_input(BenchmarkId::new(group, name), &uri, |b, uri| {
        b.iter(|| send(&mut service, slot, uri, &mut cx));
    });
}

fn quota(c: &mut Criterion) {
    // Enforcement stays idle because these responses never exhaust the quota.
    let enforcement = Enforcement::Wait {
        max_wait: std::time::Duration::from_secs(1),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    for (group, prepared) in [
        ("openai_headers", openai_response()),
        ("no_quota_headers", plain_response()),
    ] {
        let inner = Prepared(Rc::new(RefCell::new(Some(prepared))));
        bench_case(c, group, "bare", &inner, inner.clone());
        let identity = MapResponseLayer::new(|response: Response<()>| response);
        let service = identity.layer(inner.clone());
        bench_case(c, group, "identity_layer", &inner, service);
        let observe = QuotaLayer::new(QuotaTracker::new());
        let service = observe.layer(inner.clone());
        bench_case(c, group, "quota_service", &inner, service);
        let enforce = QuotaLayer::new(QuotaTracker::new()).enforce(enforcement);
        let service = enforce.layer(inner.clone());
        bench_case(c, group, "enforce_quota_service", &inner, service);
    }
}

/// The criterion group; its generated function has no doc comment, so `missing_docs` is allowed.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::quota);
}

criterion_main!(group::benches);
