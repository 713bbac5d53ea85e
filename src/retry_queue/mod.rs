//! A durable queue of failed requests on `sled`, and the layer that fills it.
//!
//! [`RetryQueue`] stores failed requests in an embedded sled database so that they survive
//! restarts, and replays them in FIFO order with at-least-once delivery. An item is deleted only
//! after a replay succeeded. Items that were being replayed when the process died are ready again
//! after the next [`RetryQueue::open`].
//!
//! # Durability
//!
//! With [`Durability::Flush`] (the default), [`RetryQueue::enqueue`] resolves only after sled has
//! flushed the item to disk. A dedicated thread runs the flushes, and one flush releases every
//! enqueue that was waiting for it, so many concurrent producers cost few flushes and no async
//! worker thread ever blocks on disk I/O. Acks and nacks are not flushed: a crash can undo them,
//! which replays an item once more or restores its previous attempt count.
//!
//! # Secrets
//!
//! `authorization`, `proxy-authorization`, `cookie`, `x-api-key`, `api-key` and every header value
//! marked sensitive are dropped before an item is written, unless named in
//! [`RetryQueueConfig::persist_sensitive_headers`].
//!
//! # Idempotency
//!
//! An item without an `Idempotency-Key` header gets one equal to its id, persisted with it, so every
//! replay carries the same key and a server that honours the header can drop duplicates.

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
