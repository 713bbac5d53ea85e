//! Errors of the retry queue store.

use std::path::PathBuf;

use uuid::Uuid;

use crate::BoxError;

/// An error from [`RetryQueue`](super::RetryQueue).
///
/// Branch on [`QueueError::kind`] rather than on the message.
///
/// # Example
///
/// ```
/// use tower_quota_queue::retry_queue::{QueueErrorKind, RetryQueue, RetryQueueConfig};
///
/// let dir = tempfile::tempdir().unwrap();
/// let config = RetryQueueConfig::new().path(dir.path()).max_size(0);
/// let error = RetryQueue::open(config).unwrap_err();
/// assert_eq!(error.kind(), QueueErrorKind::InvalidConfig);
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// A configuration value is invalid.
    #[error("invalid retry queue configuration: `{field}` {reason}")]
    InvalidConfig {
        /// The name of the invalid field.
        field: &'static str,
        /// The reason the value is invalid.
        reason: String,
    },
    /// Another process, or another handle in this process, has the database open.
    #[error(
        "failed to open the retry queue at {}: it is already open in another process \
         or by another RetryQueue in this process",
        path.display()
    )]
    AlreadyOpen {
        /// The queue directory.
        path: PathBuf,
    },
    /// The database could not be opened.
    #[error("failed to open the retry queue at {}", path.display())]
    Open {
        /// The queue directory.
        path: PathBuf,
        /// The error from the storage engine or the file system.
        #[source]
        source: BoxError,
    },
    /// The queue contains `max_size` items and the overflow policy is
    /// [`RejectNew`](super::Overflow::RejectNew), or every item is in flight so none can be evicted.
    #[error("retry queue is full ({max_size} items); the request was not queued")]
    Full {
        /// The configured capacity.
        max_size: usize,
    },
    /// An item with this id is already in the queue.
    #[error("an item with id {0} is already in the retry queue")]
    DuplicateId(Uuid),
    /// `ack` or `nack` named an id that is not leased by this handle.
    #[error("item {0} is not in flight; take() it before ack or nack")]
    NotInFlight(Uuid),
    /// A read or write of the storage engine failed.
    #[error("retry queue storage failed")]
    Storage(#[source] BoxError),
    /// Flushing the database to disk failed, so an enqueue may not be durable.
    #[error("failed to flush the retry queue to disk")]
    Flush(#[source] BoxError),
}

/// The kind of a [`QueueError`], for callers that branch on it.
///
/// # Example
///
/// ```
/// use tower_quota_queue::retry_queue::{QueueError, QueueErrorKind};
///
/// fn should_alert(error: &QueueError) -> bool {
///     !matches!(error.kind(), QueueErrorKind::Full | QueueErrorKind::DuplicateId)
/// }
/// assert!(!should_alert(&QueueError::Full { max_size: 10 }));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum QueueErrorKind {
    /// See [`QueueError::InvalidConfig`].
    InvalidConfig,
    /// See [`QueueError::AlreadyOpen`].
    AlreadyOpen,
    /// See [`QueueError::Open`].
    Open,
    /// See [`QueueError::Full`].
    Full,
    /// See [`QueueError::DuplicateId`].
    DuplicateId,
    /// See [`QueueError::NotInFlight`].
    NotInFlight,
    /// See [`QueueError::Storage`].
    Storage,
    /// See [`QueueError::Flush`].
    Flush,
}

impl QueueError {
    /// Returns the kind of this error.
    pub fn kind(&self) -> QueueErrorKind {
        match self {
            Self::InvalidConfig { .. } => QueueErrorKind::InvalidConfig,
            Self::AlreadyOpen { .. } => QueueErrorKind::AlreadyOpen,
            Self::Open { .. } => QueueErrorKind::Open,
            Self::Full { .. } => QueueErrorKind::Full,
            Self::DuplicateId(_) => QueueErrorKind::DuplicateId,
            Self::NotInFlight(_) => QueueErrorKind::NotInFlight,
            Self::Storage(_) => QueueErrorKind::Storage,
            Self::Flush(_) => QueueErrorKind::Flush,
        }
    }

    pub(crate) fn storage(error: impl Into<BoxError>) -> Self {
        Self::Storage(error.into())
    }
}

/// An error from [`RetryQueueService`](super::RetryQueueService): the inner service failed, and the
/// request was either queued for replay or not.
///
/// [`source`](std::error::Error::source) is the inner service's original error, except for
/// [`RetryQueueError::Body`], whose source is the body error.
///
/// # Example
///
/// ```
/// use tower_quota_queue::retry_queue::RetryQueueError;
///
/// fn report(error: &RetryQueueError) -> String {
///     match error.queued_id() {
///         Some(id) => format!("will retry later as {id}"),
///         None => format!("lost: {error}"),
///     }
/// }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RetryQueueError {
    /// The request failed and is persisted for replay under `id`.
    #[error("request failed and was queued for replay with id {id}")]
    Queued {
        /// The id of the queued item, also sent as its `Idempotency-Key` unless the request had one.
        id: Uuid,
        /// The inner service's error.
        #[source]
        source: BoxError,
    },
    /// The request failed and was not queued.
    #[error("request failed and was not queued: {reason}")]
    NotQueued {
        /// The reason the request was not queued.
        reason: NotQueuedReason,
        /// The inner service's error.
        #[source]
        source: BoxError,
    },
    /// Reading the request body failed, so the request was neither sent nor queued.
    #[error("failed to read the request body; the request was not sent")]
    Body(#[source] BoxError),
    /// The inner service failed in `poll_ready`, before any request was handed to it.
    #[error("inner service failed before accepting a request")]
    NotReady(#[source] BoxError),
}

/// The reason a failed request was not queued.
///
/// # Example
///
/// ```
/// use tower_quota_queue::retry_queue::NotQueuedReason;
///
/// let reason = NotQueuedReason::BodyTooLarge { max_body_bytes: 1024 };
/// assert_eq!(reason.to_string(), "its body is larger than max_body_bytes (1024 bytes)");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotQueuedReason {
    /// The layer's method filter excludes the request's method.
    #[error("its method is excluded from queueing")]
    MethodExcluded,
    /// The body is larger than `max_body_bytes`.
    #[error("its body is larger than max_body_bytes ({max_body_bytes} bytes)")]
    BodyTooLarge {
        /// The configured limit.
        max_body_bytes: usize,
    },
    /// The body has no known upper size, so it was streamed instead of buffered.
    #[error("its body is a stream of unknown length, which is sent without buffering")]
    StreamingBody,
    /// Persisting the request failed.
    #[error("persisting it failed: {0}")]
    Queue(#[source] QueueError),
}

/// The kind of a [`RetryQueueError`], for callers that branch on it.
///
/// # Example
///
/// ```
/// use tower_quota_queue::retry_queue::{RetryQueueError, RetryQueueErrorKind};
///
/// let error = RetryQueueError::Body("connection closed".into());
/// assert_eq!(error.kind(), RetryQueueErrorKind::Body);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RetryQueueErrorKind {
    /// See [`RetryQueueError::Queued`].
    Queued,
    /// See [`RetryQueueError::NotQueued`].
    NotQueued,
    /// See [`RetryQueueError::Body`].
    Body,
    /// See [`RetryQueueError::NotReady`].
    NotReady,
}

impl RetryQueueError {
    /// Returns the kind of this error.
    pub fn kind(&self) -> RetryQueueErrorKind {
        match self {
            Self::Queued { .. } => RetryQueueErrorKind::Queued,
            Self::NotQueued { .. } => RetryQueueErrorKind::NotQueued,
            Self::Body(_) => RetryQueueErrorKind::Body,
            Self::NotReady(_) => RetryQueueErrorKind::NotReady,
        }
    }

    /// Returns the id of the queued item, if the request was queued.
    pub fn queued_id(&self) -> Option<Uuid> {
        match self {
            Self::Queued { id, .. } => Some(*id),
            _ => None,
        }
    }

    /// Returns why the request was not queued, if it was not.
    pub fn not_queued_reason(&self) -> Option<&NotQueuedReason> {
        match self {
            Self::NotQueued { reason, .. } => Some(reason),
            _ => None,
        }
    }
}
