//! Partition keys: which requests share one quota and one replay schedule.

use std::borrow::Cow;
use std::fmt;

use http::{HeaderMap, Uri};

/// Derives the partition key of a request.
///
/// Requests with the same key share quota state in a [`QuotaTracker`](crate::quota::QuotaTracker)
/// and are paused together by the replay worker. The default, [`ByAuthority`], keys by the URI's
/// authority. Any `Fn(&Uri, &HeaderMap) -> String` closure is a partitioner too, for example to key
/// by API key or by route.
///
/// # Example
///
/// ```
/// use http::{HeaderMap, Uri};
/// use tower_quota_queue::Partitioner;
///
/// let by_path = |uri: &Uri, _: &HeaderMap| uri.path().to_owned();
/// let uri: Uri = "https://api.example.com/v1/chat".parse().unwrap();
/// assert_eq!(by_path.partition(&uri, &HeaderMap::new()), "/v1/chat");
/// ```
pub trait Partitioner: Send + Sync + 'static {
    /// Returns the partition key for a request with this URI and these headers.
    fn partition<'a>(&self, uri: &'a Uri, headers: &'a HeaderMap) -> Cow<'a, str>;
}

/// The default partitioner: the URI's authority (`host` or `host:port`), or an empty key for a URI
/// without one.
///
/// # Example
///
/// ```
/// use http::{HeaderMap, Uri};
/// use tower_quota_queue::{ByAuthority, Partitioner};
///
/// let uri: Uri = "https://api.example.com:8443/v1".parse().unwrap();
/// assert_eq!(ByAuthority.partition(&uri, &HeaderMap::new()), "api.example.com:8443");
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct ByAuthority;

impl Partitioner for ByAuthority {
    fn partition<'a>(&self, uri: &'a Uri, _headers: &'a HeaderMap) -> Cow<'a, str> {
        Cow::Borrowed(uri.authority().map_or("", |authority| authority.as_str()))
    }
}

impl<F> Partitioner for F
where
    F: Fn(&Uri, &HeaderMap) -> String + Send + Sync + 'static,
{
    fn partition<'a>(&self, uri: &'a Uri, headers: &'a HeaderMap) -> Cow<'a, str> {
        Cow::Owned(self(uri, headers))
    }
}

/// A partitioner behind an `Arc`, shared by layers and trackers.
#[derive(Clone)]
pub(crate) struct SharedPartitioner(pub(crate) std::sync::Arc<dyn Partitioner>);

impl Default for SharedPartitioner {
    fn default() -> Self {
        Self(std::sync::Arc::new(ByAuthority))
    }
}

impl fmt::Debug for SharedPartitioner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedPartitioner").finish_non_exhaustive()
    }
}
