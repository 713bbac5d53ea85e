//! Configuration of the retry queue store.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;

use super::error::QueueError;

/// The policy of [`RetryQueue::enqueue`](super::RetryQueue::enqueue) when the queue contains
/// `max_size` items.
///
/// # Example
///
/// ```
/// use tower_quota_queue::retry_queue::{Overflow, RetryQueueConfig};
///
/// let config = RetryQueueConfig::new().max_size(100).overflow(Overflow::RejectNew);
/// assert_eq!(config.overflow, Overflow::RejectNew);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Overflow {
    /// Evicts the oldest ready item, logging a `warn!` event with its id. In-flight items are never
    /// evicted, so when every item is in flight the enqueue fails with
    /// [`QueueError::Full`].
    #[default]
    DropOldest,
    /// Rejects the new item with [`QueueError::Full`].
    RejectNew,
}

/// When an enqueue counts as durable.
///
/// # Example
///
/// ```
/// use tower_quota_queue::retry_queue::{Durability, RetryQueueConfig};
///
/// // Trade crash safety of the latest items for enqueue throughput.
/// let config = RetryQueueConfig::new().durability(Durability::Periodic);
/// assert_eq!(config.durability, Durability::Periodic);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Durability {
    /// An enqueue resolves only after the item has been flushed to disk. Concurrent enqueues share
    /// one flush, which runs on a dedicated thread.
    #[default]
    Flush,
    /// An enqueue resolves once the item is in sled's memory. Sled writes it out with its
    /// background flush (every 500 ms by default in sled 0.34.7), so a crash can lose the items
    /// enqueued since the last flush.
    Periodic,
}

/// Configuration of a [`RetryQueue`](super::RetryQueue).
///
/// Every field has a default, so a config file needs only the fields it changes. Durations are
/// human-readable (`"24h"`, `"90s"`).
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_quota_queue::retry_queue::{Overflow, RetryQueueConfig};
///
/// let from_file: RetryQueueConfig = serde_json::from_str(
///     r#"{ "path": "/var/lib/app/queue", "item_ttl": "2h", "overflow": "reject_new" }"#,
/// )
/// .unwrap();
/// assert_eq!(from_file.item_ttl, Duration::from_secs(7200));
/// assert_eq!(from_file.overflow, Overflow::RejectNew);
///
/// let built = RetryQueueConfig::new()
///     .path("/var/lib/app/queue")
///     .max_size(1_000)
///     .item_ttl(Duration::from_secs(3600));
/// assert_eq!(built.max_size, 1_000);
/// ```
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RetryQueueConfig {
    /// The queue directory. Default: `tower-quota-queue/<program>/retry-queue` under the
    /// platform's data directory (`dirs::data_dir`), where `<program>` is the file stem of the
    /// running executable, or `retry-queue` in the working directory when either is unknown.
    ///
    /// Queued requests are replayed with the credentials of the program that opens the queue, so
    /// two programs must not share a directory. The program name in the default keeps them apart,
    /// but two copies of one executable, or programs with the same file name, still share it:
    /// give each its own `path`.
    pub path: PathBuf,
    /// The maximum number of items, ready plus in flight. Default: 10,000. Zero is invalid. The
    /// number of dead letters has the same bound, counted separately.
    pub max_size: usize,
    /// How long an item stays replayable, measured from its persisted enqueue time. Default: 24 h.
    #[serde(with = "humantime_serde")]
    pub item_ttl: Duration,
    /// The largest request body the layer buffers and persists. Default: 4 MiB.
    pub max_body_bytes: usize,
    /// The policy for an enqueue into a full queue. Default: [`Overflow::DropOldest`].
    pub overflow: Overflow,
    /// When an enqueue counts as durable. Default: [`Durability::Flush`].
    pub durability: Durability,
    /// The number of failed replays after which an item moves to the dead-letter tree.
    /// Default: 5. Zero is invalid.
    pub max_attempts: u32,
    /// Sensitive headers that are persisted anyway, by name (case-insensitive). Default: none, so
    /// `authorization`, `proxy-authorization`, `cookie`, `x-api-key`, `api-key`,
    /// `x-shopify-access-token`, `private-token`, `job-token`, `x-goog-api-key`, `x-auth-token`,
    /// `x-access-token` and every header value marked sensitive are dropped before an item
    /// reaches disk.
    pub persist_sensitive_headers: Vec<String>,
    /// Whether the user information of a request URI (`user:password@` in
    /// `https://user:password@host/`) is persisted. Default: `false`, so it is removed before an
    /// item reaches disk and the replay goes to the URI without it. Set it to `true` (in a config
    /// file, `"persist_uri_userinfo": true`) only for a server that needs those credentials and a
    /// queue directory that may hold them.
    pub persist_uri_userinfo: bool,
    /// The maximum size of sled's page cache in bytes. Default: 16 MiB (sled's own default is
    /// 1 GiB, far more than a queue of failed requests needs). Values below 256 are invalid.
    pub cache_capacity: u64,
}

impl Default for RetryQueueConfig {
    fn default() -> Self {
        Self {
            path: default_path(),
            max_size: 10_000,
            item_ttl: Duration::from_secs(24 * 60 * 60),
            max_body_bytes: 4 * 1024 * 1024,
            overflow: Overflow::DropOldest,
            durability: Durability::Flush,
            max_attempts: 5,
            persist_sensitive_headers: Vec::new(),
            persist_uri_userinfo: false,
            cache_capacity: 16 * 1024 * 1024,
        }
    }
}

fn default_path() -> PathBuf {
    let program = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.file_stem().map(ToOwned::to_owned));
    match (dirs::data_dir(), program) {
        (Some(data), Some(program)) => data
            .join("tower-quota-queue")
            .join(program)
            .join("retry-queue"),
        _ => PathBuf::from("retry-queue"),
    }
}

impl RetryQueueConfig {
    /// Creates a configuration with every default.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the queue directory. Default: `tower-quota-queue/<program>/retry-queue` under the
    /// platform's data directory, where `<program>` is the file stem of the running executable.
    #[must_use]
    pub fn path(mut self, path: impl AsRef<Path>) -> Self {
        self.path = path.as_ref().to_path_buf();
        self
    }

    /// Sets the maximum number of items, ready plus in flight. Default: 10,000.
    #[must_use]
    pub fn max_size(mut self, max_size: usize) -> Self {
        self.max_size = max_size;
        self
    }

    /// Sets how long an item stays replayable after its enqueue. Default: 24 hours.
    #[must_use]
    pub fn item_ttl(mut self, item_ttl: Duration) -> Self {
        self.item_ttl = item_ttl;
        self
    }

    /// Sets the largest request body that is buffered and persisted. Default: 4 MiB.
    #[must_use]
    pub fn max_body_bytes(mut self, max_body_bytes: usize) -> Self {
        self.max_body_bytes = max_body_bytes;
        self
    }

    /// Sets the overflow policy. Default: [`Overflow::DropOldest`].
    #[must_use]
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.overflow = overflow;
        self
    }

    /// Sets when an enqueue counts as durable. Default: [`Durability::Flush`].
    #[must_use]
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Sets the number of failed replays after which an item is dead-lettered. Default: 5.
    #[must_use]
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// Sets the sensitive headers that are persisted anyway. Default: none.
    #[must_use]
    pub fn persist_sensitive_headers<I, T>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.persist_sensitive_headers = names.into_iter().map(Into::into).collect();
        self
    }

    /// Sets whether the user information of a request URI is persisted. Default: `false`, so it is
    /// removed before an item reaches disk.
    #[must_use]
    pub fn persist_uri_userinfo(mut self, persist: bool) -> Self {
        self.persist_uri_userinfo = persist;
        self
    }

    /// Sets the maximum size of sled's page cache in bytes. Default: 16 MiB. Values below 256 are
    /// rejected by [`RetryQueue::open`](super::RetryQueue::open).
    #[must_use]
    pub fn cache_capacity(mut self, bytes: u64) -> Self {
        self.cache_capacity = bytes;
        self
    }

    /// Checks every field and parses the opted-in header names.
    pub(crate) fn validate(&self) -> Result<Vec<HeaderName>, QueueError> {
        if self.max_size == 0 {
            return Err(invalid("max_size", "must be at least 1"));
        }
        if self.max_attempts == 0 {
            return Err(invalid("max_attempts", "must be at least 1"));
        }
        if self.item_ttl.is_zero() {
            return Err(invalid("item_ttl", "must be longer than zero"));
        }
        if self.cache_capacity < MIN_CACHE_CAPACITY {
            return Err(invalid(
                "cache_capacity",
                format!("must be at least {MIN_CACHE_CAPACITY} bytes"),
            ));
        }
        if self.path.as_os_str().is_empty() {
            return Err(invalid("path", "must not be empty"));
        }
        self.persist_sensitive_headers
            .iter()
            .map(|name| {
                HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    invalid(
                        "persist_sensitive_headers",
                        format!("contains {name:?}, which is not a valid header name"),
                    )
                })
            })
            .collect()
    }
}

/// The smallest page cache sled 0.34.7 accepts: its `Lru::new` asserts it when the database opens.
const MIN_CACHE_CAPACITY: u64 = 256;

fn invalid(field: &'static str, reason: impl Into<String>) -> QueueError {
    QueueError::InvalidConfig {
        field,
        reason: reason.into(),
    }
}
