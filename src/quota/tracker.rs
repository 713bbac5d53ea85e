//! The shared quota state and its builder.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode, Uri};

use super::error::ConfigError;
use super::info::{PartitionSnapshot, QuotaInfo};
use super::state::{LocalLimit, PartitionState, Settings};
use crate::clock;
use crate::partition::SharedPartitioner;
use crate::Partitioner;

/// The default [`QuotaTrackerBuilder::warning_threshold`].
const DEFAULT_WARNING_THRESHOLD: f64 = 0.8;

/// The partition key of [`QuotaTracker::update_from_headers`] and the other methods without a
/// partition argument.
const DEFAULT_PARTITION: &str = "";

/// The number of partitions above which a new partition first evicts idle ones.
///
/// A client that calls one host per tenant meets a new authority per tenant, so the map must not
/// grow with every one of them. An idle partition is one that no request in flight holds and that
/// blocks nothing; forgetting it loses only its usage figures and warning state.
const MAX_PARTITIONS: usize = 10_000;

/// A cheap-to-clone handle to quota state shared by every clone and every layer built from it.
///
/// The tracker keeps state per partition (by default the host and port of the request URI, see
/// [`Partitioner`]) and, within a partition, per dimension such as `requests` or `tokens`. Methods
/// without a partition argument, except [`status`](Self::status), use the partition with the empty
/// key, which is also where requests without an authority land. Past 10,000 partitions, a new one
/// first evicts idle partitions: those that no request in flight holds and that block nothing.
///
/// # Example
///
/// ```
/// use http::HeaderMap;
/// use tower_quota_queue::quota::QuotaTracker;
///
/// let tracker = QuotaTracker::new();
/// let mut headers = HeaderMap::new();
/// headers.insert("x-ratelimit-limit", "5".parse().unwrap());
/// headers.insert("x-ratelimit-remaining", "1".parse().unwrap());
///
/// let info = tracker.update_from_headers(&headers).unwrap();
/// assert_eq!(info.usage, Some(0.8));
/// assert!(tracker.check_threshold(info.usage.unwrap()));
/// ```
#[derive(Clone)]
pub struct QuotaTracker {
    shared: Arc<Shared>,
}

struct Shared {
    settings: Settings,
    partitioner: SharedPartitioner,
    partitions: RwLock<HashMap<String, Arc<PartitionState>>>,
}

impl fmt::Debug for QuotaTracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuotaTracker")
            .field("settings", &self.shared.settings)
            .finish_non_exhaustive()
    }
}

impl Default for QuotaTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl QuotaTracker {
    /// Creates a tracker with the default settings of [`QuotaTrackerBuilder`].
    pub fn new() -> Self {
        Self::from_parts(
            Settings {
                warning_threshold: DEFAULT_WARNING_THRESHOLD,
                local_limit: None,
            },
            SharedPartitioner::default(),
        )
    }

    /// Starts a builder for a tracker with custom settings.
    pub fn builder() -> QuotaTrackerBuilder {
        QuotaTrackerBuilder::default()
    }

    fn from_parts(settings: Settings, partitioner: SharedPartitioner) -> Self {
        Self {
            shared: Arc::new(Shared {
                settings,
                partitioner,
                partitions: RwLock::new(HashMap::new()),
            }),
        }
    }

    /// Returns the partition key of a request, as the tracker's [`Partitioner`] derives it.
    pub fn partition_key<'a>(&self, uri: &'a Uri, headers: &'a HeaderMap) -> Cow<'a, str> {
        self.shared.partitioner.0.partition(uri, headers)
    }

    /// Returns the state of a partition, creating it on first use.
    pub(crate) fn partition(&self, key: &str) -> Arc<PartitionState> {
        if let Some(state) = self.existing(key) {
            return state;
        }
        let mut partitions = self
            .shared
            .partitions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if partitions.len() >= MAX_PARTITIONS && !partitions.contains_key(key) {
            evict_idle(&mut partitions);
        }
        let state = partitions
            .entry(key.to_owned())
            .or_insert_with(|| Arc::new(PartitionState::new(key, self.shared.settings)));
        Arc::clone(state)
    }

    /// Returns the number of partitions the tracker keeps state for.
    pub fn partition_count(&self) -> usize {
        self.shared
            .partitions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn existing(&self, key: &str) -> Option<Arc<PartitionState>> {
        let partitions = self
            .shared
            .partitions
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        partitions.get(key).cloned()
    }

    fn all(&self) -> Vec<Arc<PartitionState>> {
        let partitions = self
            .shared
            .partitions
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        partitions.values().cloned().collect()
    }

    /// Reads the rate-limit headers of a response into the default partition and returns its
    /// status, or `None` when the headers carry no quota information.
    pub fn update_from_headers(&self, headers: &HeaderMap) -> Option<QuotaInfo> {
        let state = self.partition(DEFAULT_PARTITION);
        state
            .observe(StatusCode::OK, headers)
            .then(|| state.info(clock::now()))
    }

    /// Reads the status and rate-limit headers of a response to a request of `partition`.
    ///
    /// A 429 status marks the partition exhausted until its `Retry-After` deadline, else the reset
    /// of its exhausted dimension, else for one second, even when its headers still claim
    /// remaining quota.
    pub fn record_response(&self, partition: &str, status: StatusCode, headers: &HeaderMap) {
        self.partition(partition).observe(status, headers);
    }

    /// Counts one request of the default partition against the local limit.
    ///
    /// Does nothing unless [`QuotaTrackerBuilder::local_limit`] is set.
    pub fn increment_local_count(&self) {
        self.record_request(DEFAULT_PARTITION);
    }

    /// Counts one request of `partition` against the local limit. The quota layers call this for
    /// every request they send, including requests that end in an error.
    ///
    /// Does nothing unless [`QuotaTrackerBuilder::local_limit`] is set.
    pub fn record_request(&self, partition: &str) {
        if self.shared.settings.local_limit.is_some() {
            self.partition(partition).record_request();
        }
    }

    /// Returns `true` when `usage` is at or above the warning threshold. NaN never is.
    pub fn check_threshold(&self, usage: f64) -> bool {
        usage >= self.shared.settings.warning_threshold
    }

    /// Returns the warning threshold, a fraction of the limit.
    pub fn warning_threshold(&self) -> f64 {
        self.shared.settings.warning_threshold
    }

    /// Returns the most used dimension across every partition, the tracker's tightest quota.
    /// [`status_of`](Self::status_of) reports one partition.
    ///
    /// Before any rate-limit header arrived this reports the local count, with no numbers unless a
    /// local limit is set.
    pub fn status(&self) -> QuotaInfo {
        let now = clock::now();
        self.all()
            .iter()
            .map(|state| state.info(now))
            .max_by(|a, b| {
                let a = a.usage.unwrap_or(-1.0);
                let b = b.usage.unwrap_or(-1.0);
                a.total_cmp(&b)
            })
            .unwrap_or_else(|| self.untouched())
    }

    /// Returns the most used dimension of `partition`, or `None` for a partition that has seen no
    /// request or response.
    pub fn status_of(&self, partition: &str) -> Option<QuotaInfo> {
        self.existing(partition)
            .map(|state| state.info(clock::now()))
    }

    /// Returns every partition and every dimension, sorted by partition key.
    pub fn snapshot(&self) -> Vec<PartitionSnapshot> {
        let now = clock::now();
        let mut snapshot: Vec<PartitionSnapshot> =
            self.all().iter().map(|state| state.snapshot(now)).collect();
        snapshot.sort_by(|a, b| a.partition.cmp(&b.partition));
        snapshot
    }

    /// Returns the deadline before which a request to `partition` would be rejected: a dimension
    /// with no remaining quota before its reset, a 429 response, a `Retry-After` in force, or an
    /// exhausted local limit. Returns `None` when requests may go now.
    pub fn blocked_until(&self, partition: &str) -> Option<SystemTime> {
        self.existing(partition)?.blocked_until(clock::now())
    }

    /// Returns how many more requests `partition` may receive in its current windows, by the
    /// tracker's latest figures.
    ///
    /// The count is the fewest remaining of the dimensions that count requests, those whose name
    /// does not contain `token`. While no header has arrived it is the local count, and it is
    /// `None` when no such count is known.
    ///
    /// The replay worker uses this to send no more replays at once than a partition has left.
    ///
    /// # Example
    ///
    /// ```
    /// use http::{HeaderMap, StatusCode};
    /// use tower_quota_queue::quota::QuotaTracker;
    ///
    /// let tracker = QuotaTracker::new();
    /// let mut headers = HeaderMap::new();
    /// headers.insert("x-ratelimit-limit-requests", "60".parse().unwrap());
    /// headers.insert("x-ratelimit-remaining-requests", "3".parse().unwrap());
    /// headers.insert("x-ratelimit-limit-tokens", "1000".parse().unwrap());
    /// headers.insert("x-ratelimit-remaining-tokens", "1".parse().unwrap());
    /// tracker.record_response("api.openai.com", StatusCode::OK, &headers);
    /// assert_eq!(tracker.remaining_requests("api.openai.com"), Some(3));
    /// assert_eq!(tracker.remaining_requests("unknown.test"), None);
    /// ```
    pub fn remaining_requests(&self, partition: &str) -> Option<u64> {
        self.existing(partition)?.remaining_requests(clock::now())
    }

    /// Forgets the state of every partition, including local counts, warnings and deadlines.
    pub fn reset(&self) {
        for state in self.all() {
            state.reset();
        }
    }

    fn untouched(&self) -> QuotaInfo {
        PartitionState::new(DEFAULT_PARTITION, self.shared.settings).info(clock::now())
    }
}

/// Removes partitions that no request holds and that block nothing, in no particular order,
/// until 90% of [`MAX_PARTITIONS`] remain, so that evictions are rare.
fn evict_idle(partitions: &mut HashMap<String, Arc<PartitionState>>) {
    let now = clock::now();
    let before = partitions.len();
    let mut excess = before.saturating_sub(MAX_PARTITIONS / 10 * 9);
    partitions.retain(|_, state| {
        if excess == 0 || Arc::strong_count(state) > 1 || state.blocked_until(now).is_some() {
            return true;
        }
        excess -= 1;
        false
    });
    tracing::debug!(
        evicted = before - partitions.len(),
        remaining = partitions.len(),
        "evicted idle quota partitions"
    );
}

/// Builds a [`QuotaTracker`] with custom settings.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use http::{HeaderMap, Uri};
/// use tower_quota_queue::quota::QuotaTracker;
///
/// let tracker = QuotaTracker::builder()
///     .warning_threshold(0.9)
///     .local_limit(100, Duration::from_secs(60))
///     .partitioner(|uri: &Uri, _: &HeaderMap| uri.path().to_owned())
///     .build()
///     .unwrap();
/// assert_eq!(tracker.warning_threshold(), 0.9);
/// ```
#[derive(Debug)]
#[must_use]
pub struct QuotaTrackerBuilder {
    warning_threshold: f64,
    local_limit: Option<(u64, Duration)>,
    partitioner: SharedPartitioner,
}

impl Default for QuotaTrackerBuilder {
    fn default() -> Self {
        Self {
            warning_threshold: DEFAULT_WARNING_THRESHOLD,
            local_limit: None,
            partitioner: SharedPartitioner::default(),
        }
    }
}

impl QuotaTrackerBuilder {
    /// Sets the usage fraction at which a warning is logged, inclusive. It must be above 0 and at
    /// most 1.
    ///
    /// Defaults to 0.8.
    pub fn warning_threshold(mut self, threshold: f64) -> Self {
        self.warning_threshold = threshold;
        self
    }

    /// Counts requests locally, allowing `limit` requests per fixed `window`, for partitions whose
    /// server sends no rate-limit headers. Once rate-limit headers arrive for a partition, they
    /// take precedence.
    ///
    /// Defaults to no local limit.
    pub fn local_limit(mut self, limit: u64, window: Duration) -> Self {
        self.local_limit = Some((limit, window));
        self
    }

    /// Sets how requests map to partitions.
    ///
    /// Defaults to [`ByAuthority`](crate::ByAuthority). Partition keys appear in warnings and
    /// errors, so a partitioner that keys by an API key should return a hash of it.
    pub fn partitioner(mut self, partitioner: impl Partitioner) -> Self {
        self.partitioner = SharedPartitioner(Arc::new(partitioner));
        self
    }

    /// Builds the tracker.
    ///
    /// # Errors
    ///
    /// Returns a [`ConfigError`] naming the first invalid setting.
    pub fn build(self) -> Result<QuotaTracker, ConfigError> {
        let threshold = self.warning_threshold;
        if !(threshold > 0.0 && threshold <= 1.0) {
            return Err(ConfigError::WarningThreshold { value: threshold });
        }
        let local_limit = match self.local_limit {
            None => None,
            Some((limit, window)) if limit > 0 && !window.is_zero() => Some(LocalLimit {
                limit,
                // A longer window would overflow the time of its end.
                window: window.min(clock::FAR_FUTURE),
            }),
            Some((limit, window)) => return Err(ConfigError::LocalLimit { limit, window }),
        };
        let settings = Settings {
            warning_threshold: threshold,
            local_limit,
        };
        Ok(QuotaTracker::from_parts(settings, self.partitioner))
    }
}
