//! The item type of the retry queue.

use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, Method, Uri};
use http_body_util::Full;
use uuid::Uuid;

use crate::partition::{ByAuthority, Partitioner};

/// A failed request kept for replay.
///
/// The layer builds these from failed requests; tests and tools can build them directly with
/// [`QueuedRequest::new`] and the `with_*` methods. Request extensions are not persisted.
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use tower_quota_queue::retry_queue::QueuedRequest;
///
/// let request = http::Request::post("https://api.example.com/v1/chat")
///     .body(Bytes::from_static(b"{}"))
///     .unwrap();
/// let item = QueuedRequest::new(request, "503 Service Unavailable").with_partition("chat");
/// assert_eq!(item.method(), http::Method::POST);
/// assert_eq!(item.partition(), "chat");
/// assert_eq!(item.attempts(), 0);
///
/// let replay = item.into_request();
/// assert_eq!(replay.uri(), "https://api.example.com/v1/chat");
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct QueuedRequest {
    pub(crate) id: Uuid,
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) enqueued_at: SystemTime,
    pub(crate) original_error: String,
    pub(crate) attempts: u32,
    pub(crate) last_error: Option<String>,
    pub(crate) not_before: Option<SystemTime>,
    pub(crate) partition: String,
}

impl QueuedRequest {
    /// Creates an item from a buffered request and the text of the error that made it fail.
    ///
    /// The item gets a new random id, `enqueued_at` set to [`clock::now`](crate::clock::now), no
    /// attempts, and the partition key of [`ByAuthority`].
    pub fn new(request: http::Request<Bytes>, original_error: impl Into<String>) -> Self {
        let (parts, body) = request.into_parts();
        let partition = ByAuthority
            .partition(&parts.uri, &parts.headers)
            .into_owned();
        Self {
            id: Uuid::new_v4(),
            method: parts.method,
            uri: parts.uri,
            headers: parts.headers,
            body,
            enqueued_at: crate::clock::now(),
            original_error: original_error.into(),
            attempts: 0,
            last_error: None,
            not_before: None,
            partition,
        }
    }

    /// Sets the id, which also becomes the `Idempotency-Key` of a request that has none.
    #[must_use]
    pub fn with_id(mut self, id: Uuid) -> Self {
        self.id = id;
        self
    }

    /// Sets the partition key.
    #[must_use]
    pub fn with_partition(mut self, partition: impl Into<String>) -> Self {
        self.partition = partition.into();
        self
    }

    /// Sets the earliest time of the next replay, usually from a `Retry-After` header.
    #[must_use]
    pub fn with_not_before(mut self, not_before: Option<SystemTime>) -> Self {
        self.not_before = not_before;
        self
    }

    /// Sets the enqueue time, from which the item's TTL is measured.
    #[must_use]
    pub fn with_enqueued_at(mut self, enqueued_at: SystemTime) -> Self {
        self.enqueued_at = enqueued_at;
        self
    }

    /// Returns the id.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// Returns the request method.
    pub fn method(&self) -> Method {
        self.method.clone()
    }

    /// Returns the request URI.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// Returns the request headers, without the sensitive ones that were dropped before
    /// persisting.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// Returns the request body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Returns the wall-clock time of the first enqueue.
    pub fn enqueued_at(&self) -> SystemTime {
        self.enqueued_at
    }

    /// Returns the text of the error that made the original request fail.
    pub fn original_error(&self) -> &str {
        &self.original_error
    }

    /// Returns the number of failed replays so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Returns the error of the latest failed replay, if any.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Returns the earliest time of the next replay, if one was set.
    pub fn not_before(&self) -> Option<SystemTime> {
        self.not_before
    }

    /// Returns the partition key.
    pub fn partition(&self) -> &str {
        &self.partition
    }

    /// Builds the request to replay. The body is shared, not copied.
    pub fn into_request(self) -> http::Request<Full<Bytes>> {
        let mut request = http::Request::new(Full::new(self.body));
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.headers_mut() = self.headers;
        request
    }
}

/// Returns whether an item enqueued at `enqueued_at` has outlived `ttl` at `now`.
pub(crate) fn is_stale(enqueued_at: SystemTime, ttl: std::time::Duration, now: SystemTime) -> bool {
    match now.duration_since(enqueued_at) {
        Ok(age) => age >= ttl,
        Err(_) => false,
    }
}
