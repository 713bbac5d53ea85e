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

/// The default partitioner: the URI's host and port (`host` or `host:port`), or an empty key for a
/// URI without an authority.
///
/// User information in the authority (`user:password@`) is left out, so credentials in a URI never
/// become a partition key, which is logged and persisted.
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
        let authority = uri.authority().map_or("", |authority| authority.as_str());
        // The host cannot contain '@', so everything up to the last one is user information.
        let host_and_port = authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host);
        Cow::Borrowed(host_and_port)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(uri: &str) -> String {
        let uri: Uri = uri.parse().unwrap();
        ByAuthority.partition(&uri, &HeaderMap::new()).into_owned()
    }

    #[test]
    fn by_authority_keeps_host_and_port() {
        assert_eq!(key_of("https://api.example.com/v1"), "api.example.com");
        assert_eq!(key_of("http://127.0.0.1:8080/"), "127.0.0.1:8080");
        assert_eq!(key_of("/relative/path"), "");
    }

    #[test]
    fn by_authority_drops_user_information() {
        assert_eq!(
            key_of("http://user:s3cret@api.example.com/"),
            "api.example.com"
        );
        assert_eq!(key_of("http://token@[::1]:9000/"), "[::1]:9000");
        assert_eq!(key_of("http://a@b:c@host:1/"), "host:1");
    }
}
