//! Criterion benchmarks of the quota layer's cost per request.
//!
//! Each case sends one request through a service whose inner service returns a clone
//! of a prepared response at once, and polls the future once with a no-op waker, so the numbers show the
//! layer's own work. Cases: the bare inner service, an identity layer (`MapResponseLayer` with the
//! identity function), `QuotaService` and `EnforceQuotaService`, each on a response with
//! OpenAI-style rate-limit headers and on one with no quota headers.

use std::convert::Infallible;
use std::future::{ready, Future, Ready};
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use criterion::{criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, HeaderValue, Request, Response, Uri};
use tower::util::MapResponseLayer;
use tower::{Layer, Service};
use tower_quota_queue::quota::{Enforcement, QuotaLayer, QuotaTracker};

/// An inner service that responds to every request with a clone of one response.
#[derive(Clone)]
struct Prepared(Response<()>);

impl Service<Request<()>> for Prepared {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: Request<()>) -> Self::Future {
        ready(Ok(self.0.clone()))
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

/// Sends one request through `service` and returns its status code.
fn send<S>(service: &mut S, uri: &Uri, cx: &mut Context<'_>) -> u16
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
        Poll::Ready(Ok(response)) => response.status().as_u16(),
        _ => unreachable!("the prepared service responds at once"),
    }
}

fn bench_case<S>(c: &mut Criterion, group: &str, name: &str, mut service: S)
where
    S: Service<Request<()>, Response = Response<()>>,
{
    let uri: Uri = "https://api.openai.com/v1/chat/completions"
        .parse()
        .unwrap();
    let waker = Waker::from(Arc::new(NoopWake));
    let mut cx = Context::from_waker(&waker);
    c.bench_with_input(BenchmarkId::new(group, name), &uri, |b, uri| {
        b.iter(|| black_box(send(&mut service, uri, &mut cx)));
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
        let inner = Prepared(prepared);
        bench_case(c, group, "bare", inner.clone());
        let identity = MapResponseLayer::new(|response: Response<()>| response);
        bench_case(c, group, "identity_layer", identity.layer(inner.clone()));
        let observe = QuotaLayer::new(QuotaTracker::new());
        bench_case(c, group, "quota_service", observe.layer(inner.clone()));
        let enforce = QuotaLayer::new(QuotaTracker::new()).enforce(enforcement);
        bench_case(c, group, "enforce_quota_service", enforce.layer(inner));
    }
}

/// The criterion group; its generated function has no doc comment, so `missing_docs` is allowed.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::quota);
}

criterion_main!(group::benches);
