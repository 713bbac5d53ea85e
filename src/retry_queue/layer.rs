//! [`RetryQueueLayer`]: configuration of the queueing middleware.

use std::fmt;
use std::sync::Arc;

use http::Method;

use super::classify::{DefaultClassifier, RetryClassifier};
use super::queue::RetryQueue;
use crate::partition::{Partitioner, SharedPartitioner};

/// A layer that persists failed requests in a [`RetryQueue`] before the caller sees the failure.
///
/// # Example
///
/// ```
/// use tower_quota_queue::retry_queue::{RetryQueue, RetryQueueConfig, RetryQueueLayer};
///
/// let dir = tempfile::tempdir().unwrap();
/// let queue = RetryQueue::open(RetryQueueConfig::new().path(dir.path())).unwrap();
/// let layer = RetryQueueLayer::new(queue)
///     .methods([http::Method::GET, http::Method::POST])
///     .classifier(|status: http::StatusCode, _: &http::HeaderMap| status.is_server_error());
/// # let _ = layer;
/// ```
#[derive(Clone)]
#[must_use]
pub struct RetryQueueLayer {
    pub(crate) queue: RetryQueue,
    pub(crate) classifier: Arc<dyn RetryClassifier>,
    pub(crate) partitioner: SharedPartitioner,
    pub(crate) methods: Option<Arc<[Method]>>,
}

impl RetryQueueLayer {
    /// Creates a layer that queues failed requests of every method in `queue`.
    pub fn new(queue: RetryQueue) -> Self {
        Self {
            queue,
            classifier: Arc::new(DefaultClassifier),
            partitioner: SharedPartitioner::default(),
            methods: None,
        }
    }

    /// Sets which responses are queued for replay. Default: [`DefaultClassifier`] (429, 502, 503
    /// and 504).
    pub fn classifier(mut self, classifier: impl RetryClassifier) -> Self {
        self.classifier = Arc::new(classifier);
        self
    }

    /// Sets how the partition key of a queued request is derived. Default:
    /// [`ByAuthority`](crate::ByAuthority).
    ///
    /// The partitioner receives the headers before secrets are dropped, and its key is persisted
    /// with the item. A partitioner that keys by credential should return a hash or a name, never
    /// the credential itself.
    pub fn partitioner(mut self, partitioner: impl Partitioner) -> Self {
        self.partitioner = SharedPartitioner(Arc::new(partitioner));
        self
    }

    /// Restricts queueing to requests with one of these methods. Default: every method.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = Some(methods.into_iter().collect());
        self
    }

    /// Returns the queue that this layer fills.
    pub fn queue(&self) -> &RetryQueue {
        &self.queue
    }
}

impl fmt::Debug for RetryQueueLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryQueueLayer")
            .field("queue", &self.queue)
            .field("methods", &self.methods)
            .finish_non_exhaustive()
    }
}
