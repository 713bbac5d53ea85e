//! A durable queue of failed requests on `sled`, and the layer that fills it.
//!
//! [`RetryQueue`] stores failed requests in an embedded sled database so that they survive
//! restarts, and replays them in FIFO order with at-least-once delivery. An item is deleted only
//! after a replay succeeded. Items that were being replayed when the process died are ready again
//! after the next [`RetryQueue::open`], in their original order and with the same ids.
//!
//! [`RetryQueueLayer`] sends each request through the inner service. When the inner service
//! returns an error, the request is persisted before the caller sees the error, and the caller gets
//! a [`RetryQueueError::Queued`] that carries the queued id and the original error as its source.
//! When the response is retryable (429, 502, 503 and 504 by default, see [`RetryClassifier`]), the
//! request is persisted and the response is returned unchanged with a [`QueuedId`] in its
//! extensions. [`RetryQueue::process_all`], or a replay worker built on [`RetryQueue::take`],
//! sends the queued requests again later.
//!
//! # Where the layer goes
//!
//! Put the layer that adds credentials below `RetryQueueLayer`, next to the client. Credentials are
//! then never part of the queued request, and a replay sent through the same stack gets fresh
//! ones. The inner service receives a [`RetryQueueBody`], so the client is built for that body
//! type, and a replay service maps [`QueuedRequest::into_request`]'s `Full<Bytes>` body into it:
//!
//! ```no_run
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_quota_queue::retry_queue::{
//!     RetryQueue, RetryQueueBody, RetryQueueConfig, RetryQueueLayer,
//! };
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let queue = RetryQueue::open(RetryQueueConfig::new().path("/var/lib/app/retry-queue"))?;
//! let client = Client::builder(TokioExecutor::new())
//!     .build_http::<RetryQueueBody<Full<Bytes>>>();
//! let add_credentials = |mut request: http::Request<RetryQueueBody<Full<Bytes>>>| {
//!     let mut token = http::HeaderValue::from_static("Bearer fresh-token");
//!     token.set_sensitive(true);
//!     request.headers_mut().insert(http::header::AUTHORIZATION, token);
//!     request
//! };
//! let authed = ServiceBuilder::new().map_request(add_credentials).service(client);
//!
//! // Live traffic: failed requests are queued without their credentials.
//! let service = ServiceBuilder::new()
//!     .layer(RetryQueueLayer::new(queue.clone()))
//!     .service(authed.clone());
//! let request = http::Request::post("http://api.example.com/v1/chat")
//!     .body(Full::new(Bytes::from_static(b"{}")))?;
//! let _response = service.oneshot(request).await;
//!
//! // Replay: the same credential layer adds a fresh token to every queued request.
//! let mut replay = authed.map_request(|request: http::Request<Full<Bytes>>| {
//!     request.map(RetryQueueBody::from)
//! });
//! let report = queue.process_all(&mut replay).await?;
//! println!("{} replayed, {} failed", report.succeeded, report.failed);
//! # Ok(())
//! # }
//! ```
//!
//! # Bodies
//!
//! The layer buffers a body whose size hint has an upper bound of at most
//! [`max_body_bytes`](RetryQueueConfig::max_body_bytes), so it can both send and keep it. A body
//! with a single data frame, such as `Full<Bytes>`, is moved into the queued request without a copy.
//! A larger body, or a stream without an upper bound (a chunked upload), is sent untouched and is
//! never queued, and a failure then returns [`RetryQueueError::NotQueued`] with the reason. Body
//! trailers are not persisted.
//!
//! # Durability
//!
//! With [`Durability::Flush`] (the default), [`RetryQueue::enqueue`] resolves only after sled has
//! flushed the item to disk. A dedicated thread runs the flushes, and one flush releases every
//! enqueue that was waiting for it, so concurrent producers share flushes and no async worker
//! thread waits for one. Acks and nacks are not flushed: a crash can undo them, which replays an
//! item once more or restores its previous attempt count.
//!
//! # Secrets
//!
//! The credential headers `authorization`, `proxy-authorization`, `cookie`, `x-api-key`,
//! `api-key`, `x-shopify-access-token`, `private-token`, `job-token`, `x-goog-api-key`,
//! `x-auth-token` and `x-access-token`, and every header value marked sensitive, are dropped
//! before an item is written, unless named in [`RetryQueueConfig::persist_sensitive_headers`].
//! The user information of the URI (`user:password@`) is removed too, unless
//! [`RetryQueueConfig::persist_uri_userinfo`] is set.
//!
//! # Idempotency
//!
//! POST and PATCH requests are queued like any other method, unless
//! [`RetryQueueLayer::methods`] restricts queueing. A request without an `Idempotency-Key` header
//! gets one equal to its queued id, and a caller's own key is kept as it is. The layer assigns the
//! id before the first send, so the first attempt already carries the same key as every replay.
//! If the server processed the first attempt but its response was lost, a server that honours the
//! header can then drop the replay as a duplicate. As a consequence every buffered request gets
//! the header, also those that succeed on the first attempt.
//!
//! # Storage format
//!
//! Each item is one record: a format-version byte followed by the item in
//! [postcard](https://docs.rs/postcard), a compact binary serde format. Postcard stores integers
//! as varints and no field names, so a record is little more than the request itself, and the
//! version byte lets a later release read or dead-letter old records instead of misreading them.
//! A record that fails to decode moves to the dead letters with a `warn!` event.
//!
//! # Dead letters
//!
//! An item moves to the dead letters after `max_attempts` failed replays, or when its record
//! fails to decode. Dead letters keep their id, so enqueueing that id again fails with
//! [`QueueError::DuplicateId`]. They do not count toward `max_size`, but the store keeps at most
//! `max_size` of them and deletes the oldest beyond that with a `warn!` event.
//! [`RetryQueue::purge_stale`] deletes those whose `item_ttl` has run out, and
//! [`RetryQueue::clear_dead_letters`] deletes all of them.

mod body;
mod classify;
mod config;
mod error;
pub mod future;
mod headers;
mod layer;
mod queue;
mod record;
mod replay;
mod request;
mod service;
mod store;
mod worker;

pub use body::RetryQueueBody;
pub use classify::{DefaultClassifier, RetryClassifier};
pub use config::{Durability, Overflow, RetryQueueConfig};
pub use error::{
    NotQueuedReason, QueueError, QueueErrorKind, RetryQueueError, RetryQueueErrorKind,
};
pub use layer::RetryQueueLayer;
pub use queue::{NackOutcome, QueueStats, RetryQueue};
pub use replay::{ReplayError, ReplayReport, RetryableStatus};
pub use request::QueuedRequest;
pub use service::{QueuedId, RetryQueueService};
pub use worker::{Backoff, ReplayWorker, WorkerHandle, WorkerReport};
