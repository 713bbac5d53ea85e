//! Quota tracking from rate-limit response headers.
//!
//! A [`QuotaTracker`] stores the quota state of every partition (by default the host and port of
//! the request URI) and, within a partition, of every dimension that a server reports, such as
//! `requests` and `tokens`. [`QuotaLayer`] wraps a client service so that every response updates
//! the tracker; [`QuotaLayer::enforce`] also holds back requests to a partition whose quota is
//! exhausted.
//!
//! # Headers understood
//!
//! | dialect | headers |
//! |---|---|
//! | legacy | `x-ratelimit-limit`, `-remaining`, `-reset` |
//! | IETF drafts, separate fields | `RateLimit-Limit`, `-Remaining`, `-Reset`, `RateLimit-Policy: 10;w=1` |
//! | IETF drafts, combined | `RateLimit: limit=100, remaining=50, reset=5` |
//! | IETF structured fields | `RateLimit-Policy: "burst";q=100;w=60` with `RateLimit: "burst";r=37;t=21` |
//! | `Retry-After` | delta seconds (fractions accepted), HTTP-date, `retry-after-ms` |
//! | OpenAI, Azure OpenAI | `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`, resets such as `6m0s` |
//! | Anthropic | `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}` |
//! | GitHub | `x-ratelimit-used`, `x-ratelimit-resource` (names the dimension) |
//! | Discord | `x-ratelimit-reset-after`, `x-ratelimit-bucket` (names the dimension) |
//! | Reddit | float counts such as `598.0`, the limit inferred from used plus remaining |
//! | X | `x-rate-limit-{limit,remaining,reset}` |
//! | Shopify | `X-Shopify-Shop-Api-Call-Limit: 32/40` |
//! | GitLab | `RateLimit-Observed`, epoch `RateLimit-Reset`, `RateLimit-ResetTime`, `RateLimit-Name` (names the dimension) |
//!
//! Header names match in any case. A bare reset number below 1e9 is a delta in seconds, from 1e9
//! it is epoch seconds and from 1e12 epoch milliseconds. Malformed values are ignored with a
//! `debug!` event that names the header but never its value, and the last valid state is kept.
//!
//! # Rules
//!
//! - Usage is `1 - remaining / limit`, from 0.0 to 1.0. A limit of 0 gives no usage, and a
//!   remaining count above the limit is clamped to it.
//! - [`QuotaTracker::status`] reports the most used dimension of a partition.
//! - Within one window, the lowest remaining count wins, so responses that arrive out of order
//!   never lower the known usage. A window ends at its reset. A response with a different limit
//!   starts a new window. Without a reset, each response replaces the last.
//! - A reset in the past means the window has reset: the quota is full, with no warning and no
//!   wait.
//! - A 429 response exhausts its partition until its `Retry-After` deadline, else the reset of its
//!   exhausted dimension, else for one second, even when its headers still claim remaining quota.
//!   A `Retry-After` on any other response is in force too.
//!
//! # Warnings
//!
//! When a dimension's usage reaches the warning threshold (0.8 by default, inclusive), the tracker
//! logs one `tracing::warn!` event with the fields `partition`, `dimension`, `usage_percent`,
//! `limit`, `remaining` and `reset_in_secs`. It logs again for that partition and dimension only
//! after usage fell below the threshold or the window reset. Partition keys appear in these
//! events, so a [`Partitioner`](crate::Partitioner) that keys by an API key should return a hash
//! of it.
//!
//! # In a client stack
//!
//! Put the layer directly around the HTTP client, below retries and timeouts, so that it sees the
//! response to every attempt. The enforcing service boxes errors into
//! [`BoxError`](crate::BoxError).
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http_body_util::Empty;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tower::ServiceBuilder;
//! use tower_quota_queue::quota::{Enforcement, QuotaLayer, QuotaTracker};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let tracker = QuotaTracker::new();
//! let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
//! let service = ServiceBuilder::new()
//!     .timeout(Duration::from_secs(30))
//!     .layer(QuotaLayer::new(tracker.clone()).enforce(Enforcement::Wait {
//!         max_wait: Duration::from_secs(10),
//!     }))
//!     .service(client);
//! # let _ = service;
//! # }
//! ```
//!
//! # In an axum stack
//!
//! Quotas belong to the upstream API that a handler calls, so the usual place is the client that
//! the handler uses, as above. Layered on a `Router`, the tracker reads the responses that the
//! router sends, which is useful for a proxy that passes upstream headers through. Server requests
//! usually carry no authority in their URI, so key partitions by the `host` header or by route.
//!
//! axum calls `poll_ready` and `call` back to back for each request. The enforcing service
//! therefore never waits in `poll_ready`: it decides in `call` and waits inside the response
//! future, and other requests keep flowing while one waits. axum also requires
//! infallible services, so put a `HandleErrorLayer` above the enforcing layer to turn
//! [`QuotaExhausted`] into a response:
//!
//! ```
//! use axum::error_handling::HandleErrorLayer;
//! use axum::http::{header, StatusCode};
//! use axum::response::{IntoResponse, Response};
//! use axum::routing::get;
//! use axum::Router;
//! use http::{HeaderMap, Uri};
//! use tower::ServiceBuilder;
//! use tower_quota_queue::quota::{Enforcement, QuotaExhausted, QuotaLayer, QuotaTracker};
//! use tower_quota_queue::{clock, BoxError};
//!
//! /// Answers a request that the quota holds back with 429 and the seconds until the deadline.
//! async fn quota_error(error: BoxError) -> Response {
//!     let Some(exhausted) = error.downcast_ref::<QuotaExhausted>() else {
//!         return StatusCode::BAD_GATEWAY.into_response();
//!     };
//!     let wait = exhausted.deadline().duration_since(clock::now()).unwrap_or_default();
//!     let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
//!     let retry_after = [(header::RETRY_AFTER, seconds.to_string())];
//!     (StatusCode::TOO_MANY_REQUESTS, retry_after).into_response()
//! }
//!
//! let tracker = QuotaTracker::builder()
//!     .partitioner(|_: &Uri, headers: &HeaderMap| {
//!         let host = headers.get("host").and_then(|host| host.to_str().ok());
//!         host.unwrap_or_default().to_owned()
//!     })
//!     .build()
//!     .unwrap();
//! let app: Router = Router::new().route("/proxy", get(|| async { "ok" })).layer(
//!     ServiceBuilder::new()
//!         .layer(HandleErrorLayer::new(quota_error))
//!         .layer(QuotaLayer::new(tracker).enforce(Enforcement::FailFast)),
//! );
//! # let _ = app;
//! ```
//!
//! # Cost
//!
//! Per request, the service derives the partition key (borrowed for the default partitioner),
//! looks up the partition's shared state once under a read lock and keeps it in the response
//! future. Parsing a response is one pass over its headers with no allocation, and the tracker
//! allocates only for a dimension it has not seen before and for a warning. A response without
//! quota headers, unless its status is 429, takes no lock and reads no clock. The enforcing
//! service reads an atomic flag and takes the partition's lock only while a deadline may be in
//! force. A local limit adds one lock per request. The `quota` criterion bench measures these
//! paths against a bare service and an identity layer.
//!
//! # Memory
//!
//! The tracker keeps at most 64 dimensions per partition. Past 10,000 partitions, a new partition
//! first evicts idle ones, those that no request in flight holds and that block nothing, so a
//! client that meets a new host per tenant does not grow without bound. [`QuotaTracker::reset`]
//! clears the state of every partition but keeps the keys.

mod error;
pub mod future;
pub(crate) mod headers;
mod info;
mod layer;
mod service;
mod state;
mod tracker;

pub use error::{ConfigError, QuotaExhausted};
pub use info::{PartitionSnapshot, QuotaInfo, QuotaSource};
pub use layer::{EnforceQuotaLayer, Enforcement, QuotaLayer};
pub use service::{EnforceQuotaService, QuotaService};
pub use tracker::{QuotaTracker, QuotaTrackerBuilder};
