//! Per-partition quota state and the rules that update it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};

use super::headers::{self, Observation, Observations};
use super::info::{usage, PartitionSnapshot, QuotaInfo, QuotaSource};
use crate::clock;

/// How long a 429 response blocks its partition when it states neither `Retry-After` nor a
/// reset.
pub(crate) const BACKOFF_WITHOUT_DEADLINE: Duration = Duration::from_secs(1);

/// The dimension name that the local request count reports.
pub(crate) const LOCAL_DIMENSION: &str = "requests";

/// Dimensions kept per partition. Further ones are ignored with a `debug!` event, which bounds
/// memory when a server names a new dimension per route, as Discord buckets do.
const MAX_DIMENSIONS_PER_PARTITION: usize = 64;

/// Tracker settings that every partition reads.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Settings {
    pub(crate) warning_threshold: f64,
    pub(crate) local_limit: Option<LocalLimit>,
}

/// A limit that the tracker counts itself, for servers that send no rate-limit headers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LocalLimit {
    pub(crate) limit: u64,
    pub(crate) window: Duration,
}

/// The quota state of one partition, shared between the tracker and in-flight responses.
#[derive(Debug)]
pub(crate) struct PartitionState {
    key: String,
    settings: Settings,
    inner: Mutex<PartitionInner>,
    /// `false` when the last look under the lock found nothing that blocks requests, so the
    /// enforcing service can skip the lock and the clock. Written only while holding the lock.
    may_block: AtomicBool,
}

#[derive(Debug, Default)]
struct PartitionInner {
    dimensions: Vec<DimensionState>,
    /// The deadline from `Retry-After` or a 429 response.
    retry_at: Option<SystemTime>,
    local: LocalWindow,
}

#[derive(Debug)]
struct DimensionState {
    name: String,
    limit: Option<u64>,
    remaining: Option<u64>,
    reset_at: Option<SystemTime>,
    /// Set once a warning was logged, cleared when usage falls below the threshold or the window
    /// resets.
    warned: bool,
}

/// A fixed window of locally counted requests.
#[derive(Debug, Default)]
struct LocalWindow {
    count: u64,
    started: Option<SystemTime>,
    warned: bool,
}

/// A threshold crossing, logged after the lock is released.
#[derive(Debug)]
struct Crossing {
    dimension: String,
    usage: f64,
    limit: Option<u64>,
    remaining: Option<u64>,
    reset_at: Option<SystemTime>,
}

impl PartitionState {
    pub(crate) fn new(key: &str, settings: Settings) -> Self {
        Self {
            key: key.to_owned(),
            settings,
            inner: Mutex::new(PartitionInner::default()),
            may_block: AtomicBool::new(false),
        }
    }

    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    fn lock(&self) -> MutexGuard<'_, PartitionInner> {
        // Every update leaves the state consistent, so a panic elsewhere cannot corrupt it.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads the quota headers and status of a response. Returns `true` when the headers carried
    /// quota information.
    pub(crate) fn observe(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        let parsed = headers::parse_with_clock(headers, clock::now);
        if parsed.is_empty() && status != StatusCode::TOO_MANY_REQUESTS {
            return false;
        }
        let now = parsed.now.unwrap_or_else(clock::now);
        let mut crossings = Vec::new();
        let mut inner = self.lock();
        inner.apply(
            &parsed,
            status,
            now,
            self.settings.warning_threshold,
            &mut crossings,
        );
        self.update_may_block(&inner, now);
        drop(inner);
        self.log_crossings(&crossings, now);
        !parsed.is_empty()
    }

    /// Counts one request against the local limit, when one is configured.
    pub(crate) fn record_request(&self) {
        let Some(limit) = self.settings.local_limit else {
            return;
        };
        let now = clock::now();
        let mut inner = self.lock();
        let crossing = inner.record_request(limit, now, self.settings.warning_threshold);
        self.update_may_block(&inner, now);
        drop(inner);
        if let Some(crossing) = crossing {
            self.log_crossings(std::slice::from_ref(&crossing), now);
        }
    }

    /// Returns the deadline before which a request would be rejected, or `None` when requests may
    /// go now.
    pub(crate) fn blocked_until(&self, now: SystemTime) -> Option<SystemTime> {
        let inner = self.lock();
        let deadline = inner.blocked_until(self.settings.local_limit, now);
        self.may_block.store(deadline.is_some(), Ordering::Relaxed);
        deadline
    }

    /// Returns the deadline before which a request would be rejected, skipping the lock and the
    /// clock while the last update found nothing that blocks.
    pub(crate) fn blocked_until_now(&self) -> Option<(SystemTime, SystemTime)> {
        if !self.may_block.load(Ordering::Relaxed) {
            return None;
        }
        let now = clock::now();
        self.blocked_until(now).map(|deadline| (deadline, now))
    }

    fn update_may_block(&self, inner: &PartitionInner, now: SystemTime) {
        let blocked = inner
            .blocked_until(self.settings.local_limit, now)
            .is_some();
        self.may_block.store(blocked, Ordering::Relaxed);
    }

    /// Returns the most used dimension.
    pub(crate) fn info(&self, now: SystemTime) -> QuotaInfo {
        let inner = self.lock();
        let retry_after = inner.retry_after(now);
        let most_used = inner
            .dimensions
            .iter()
            .map(|dimension| dimension.info(now, retry_after))
            .reduce(|most, next| {
                if next.usage.unwrap_or(-1.0) > most.usage.unwrap_or(-1.0) {
                    next
                } else {
                    most
                }
            });
        most_used.unwrap_or_else(|| inner.local_info(self.settings.local_limit, now))
    }

    pub(crate) fn snapshot(&self, now: SystemTime) -> PartitionSnapshot {
        let inner = self.lock();
        let retry_after = inner.retry_after(now);
        let mut dimensions: Vec<QuotaInfo> = inner
            .dimensions
            .iter()
            .map(|dimension| dimension.info(now, retry_after))
            .collect();
        if dimensions.is_empty() {
            dimensions.push(inner.local_info(self.settings.local_limit, now));
        }
        PartitionSnapshot {
            partition: self.key.clone(),
            dimensions,
            blocked_until: inner.blocked_until(self.settings.local_limit, now),
        }
    }

    /// Returns the fewest requests left in any dimension that counts requests, or `None` when no
    /// such dimension has a known remaining count. Dimensions named after tokens count tokens, so
    /// they are left out; the local count is used while no header has arrived.
    pub(crate) fn remaining_requests(&self, now: SystemTime) -> Option<u64> {
        let inner = self.lock();
        if inner.dimensions.is_empty() {
            return inner.local_info(self.settings.local_limit, now).remaining;
        }
        inner
            .dimensions
            .iter()
            .filter(|dimension| !dimension.name.contains("token"))
            .filter_map(|dimension| dimension.info(now, None).remaining)
            .min()
    }

    /// Forgets everything this partition has seen and counted.
    pub(crate) fn reset(&self) {
        let mut inner = self.lock();
        *inner = PartitionInner::default();
        self.may_block.store(false, Ordering::Relaxed);
    }

    fn log_crossings(&self, crossings: &[Crossing], now: SystemTime) {
        for crossing in crossings {
            let reset_in_secs = crossing
                .reset_at
                .and_then(|at| at.duration_since(now).ok())
                .map(|left| left.as_secs());
            let usage_percent = (crossing.usage * 1000.0).round() / 10.0;
            tracing::warn!(
                partition = %self.key,
                dimension = %crossing.dimension,
                usage_percent,
                limit = crossing.limit,
                remaining = crossing.remaining,
                reset_in_secs,
                "rate-limit usage reached the warning threshold"
            );
        }
    }
}

impl PartitionInner {
    fn apply(
        &mut self,
        parsed: &Observations<'_>,
        status: StatusCode,
        now: SystemTime,
        threshold: f64,
        crossings: &mut Vec<Crossing>,
    ) {
        for observation in parsed.dimensions() {
            let Some(dimension) = self.dimension(observation.dimension) else {
                continue;
            };
            dimension.apply(observation, now);
            crossings.extend(dimension.evaluate(threshold));
        }

        let deadline = if status == StatusCode::TOO_MANY_REQUESTS {
            // A 429 exhausts the partition even when its headers still claim remaining quota.
            let reset = reset_after_rejection(parsed, now);
            Some(
                parsed
                    .retry_after
                    .or(reset)
                    .unwrap_or(now + BACKOFF_WITHOUT_DEADLINE),
            )
        } else {
            parsed.retry_after
        };
        if let Some(deadline) = deadline.filter(|deadline| *deadline > now) {
            let current = self.retry_after(now);
            self.retry_at = Some(current.map_or(deadline, |current| current.max(deadline)));
        }
    }

    fn dimension(&mut self, name: &str) -> Option<&mut DimensionState> {
        let index = match self.dimensions.iter().position(|state| state.name == name) {
            Some(index) => index,
            None if self.dimensions.len() < MAX_DIMENSIONS_PER_PARTITION => {
                self.dimensions.push(DimensionState::new(name));
                self.dimensions.len() - 1
            }
            None => {
                tracing::debug!(
                    max = MAX_DIMENSIONS_PER_PARTITION,
                    "ignoring a rate-limit dimension beyond the maximum per partition"
                );
                return None;
            }
        };
        Some(&mut self.dimensions[index])
    }

    fn retry_after(&self, now: SystemTime) -> Option<SystemTime> {
        self.retry_at.filter(|at| *at > now)
    }

    fn blocked_until(
        &self,
        local_limit: Option<LocalLimit>,
        now: SystemTime,
    ) -> Option<SystemTime> {
        let exhausted = self.dimensions.iter().filter_map(|dimension| {
            let reset = dimension.reset_at.filter(|reset| *reset > now)?;
            (dimension.remaining == Some(0)).then_some(reset)
        });
        let local = local_limit
            .filter(|_| self.dimensions.is_empty())
            .and_then(|limit| self.local.exhausted_until(limit, now));
        self.retry_after(now)
            .into_iter()
            .chain(exhausted)
            .chain(local)
            .max()
    }

    fn record_request(
        &mut self,
        limit: LocalLimit,
        now: SystemTime,
        threshold: f64,
    ) -> Option<Crossing> {
        let local = &mut self.local;
        if local.window_end(limit).map_or(true, |end| end <= now) {
            *local = LocalWindow {
                count: 0,
                started: Some(now),
                warned: false,
            };
        }
        local.count = local.count.saturating_add(1);
        if !self.dimensions.is_empty() {
            return None;
        }
        let remaining = limit.limit.saturating_sub(local.count);
        let usage = usage(Some(limit.limit), Some(remaining))?;
        if usage < threshold {
            local.warned = false;
            return None;
        }
        if local.warned {
            return None;
        }
        local.warned = true;
        Some(Crossing {
            dimension: LOCAL_DIMENSION.to_owned(),
            usage,
            limit: Some(limit.limit),
            remaining: Some(remaining),
            reset_at: local.window_end(limit),
        })
    }

    fn local_info(&self, local_limit: Option<LocalLimit>, now: SystemTime) -> QuotaInfo {
        let retry_after = self.retry_after(now);
        let mut info = QuotaInfo::empty(LOCAL_DIMENSION, retry_after);
        let Some(limit) = local_limit else {
            return info;
        };
        let window_end = self.local.window_end(limit).filter(|end| *end > now);
        let count = if window_end.is_some() {
            self.local.count
        } else {
            0
        };
        let remaining = limit.limit.saturating_sub(count);
        info.limit = Some(limit.limit);
        info.remaining = Some(remaining);
        info.reset_at = window_end;
        info.usage = usage(Some(limit.limit), Some(remaining));
        info.source = QuotaSource::LocalCount;
        info
    }
}

/// Picks the deadline of a 429 response without `Retry-After`: the latest reset of an exhausted
/// dimension, or else the earliest reset of any dimension.
fn reset_after_rejection(parsed: &Observations<'_>, now: SystemTime) -> Option<SystemTime> {
    let future_reset = |observation: &Observation<'_>| observation.reset_at.filter(|at| *at > now);
    let exhausted = parsed
        .dimensions()
        .iter()
        .filter(|observation| observation.remaining == Some(0))
        .filter_map(future_reset)
        .max();
    exhausted.or_else(|| parsed.dimensions().iter().filter_map(future_reset).min())
}

impl LocalWindow {
    fn window_end(&self, limit: LocalLimit) -> Option<SystemTime> {
        self.started?.checked_add(limit.window)
    }

    fn exhausted_until(&self, limit: LocalLimit, now: SystemTime) -> Option<SystemTime> {
        let end = self.window_end(limit).filter(|end| *end > now)?;
        (self.count >= limit.limit).then_some(end)
    }
}

impl DimensionState {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            limit: None,
            remaining: None,
            reset_at: None,
            warned: false,
        }
    }

    /// Applies one observation. Within a window that has not reset, the lowest remaining count
    /// wins, so responses that arrive out of order never lower the known usage.
    ///
    /// NOTE: servers that refill continuously (OpenAI's token limits, whose reset is the time
    /// until the bucket is full) report rising remaining counts within one window. Those rises
    /// are ignored until the reset, so usage reads high for at most one window.
    fn apply(&mut self, observation: &Observation<'_>, now: SystemTime) {
        let window_open = self.reset_at.is_some_and(|reset| reset > now);
        if self.reset_at.is_some() && !window_open {
            // The stored window has reset: the quota is full again and the warning re-arms.
            self.remaining = self.limit;
            self.reset_at = None;
            self.warned = false;
        }
        let same_window = window_open
            && observation
                .limit
                .map_or(true, |limit| Some(limit) == self.limit);

        if observation.reset_at.is_some_and(|reset| reset <= now) {
            // A reset already in the past means the window has reset. A late response from an
            // earlier window is ignored.
            if !same_window {
                self.limit = observation.limit.or(self.limit);
                self.remaining = self.limit;
                self.reset_at = None;
                self.warned = false;
            }
            return;
        }

        if same_window {
            if let Some(remaining) = observation.remaining {
                self.remaining = Some(
                    self.remaining
                        .map_or(remaining, |known| known.min(remaining)),
                );
            }
        } else {
            self.limit = observation.limit.or(self.limit);
            self.remaining = observation.remaining.or(self.remaining);
            self.reset_at = observation.reset_at;
        }
        if let (Some(limit), Some(remaining)) = (self.limit, self.remaining) {
            self.remaining = Some(remaining.min(limit));
        }
    }

    /// Returns a crossing when usage reached `threshold` and no warning was logged since it last
    /// was below.
    fn evaluate(&mut self, threshold: f64) -> Option<Crossing> {
        let usage = usage(self.limit, self.remaining)?;
        if usage < threshold {
            self.warned = false;
            return None;
        }
        if self.warned {
            return None;
        }
        self.warned = true;
        Some(Crossing {
            dimension: self.name.clone(),
            usage,
            limit: self.limit,
            remaining: self.remaining,
            reset_at: self.reset_at,
        })
    }

    fn info(&self, now: SystemTime, retry_after: Option<SystemTime>) -> QuotaInfo {
        let window_over = self.reset_at.is_some_and(|reset| reset <= now);
        let (remaining, reset_at) = if window_over {
            (self.limit, None)
        } else {
            (self.remaining, self.reset_at)
        };
        QuotaInfo {
            dimension: self.name.clone(),
            limit: self.limit,
            remaining,
            reset_at,
            usage: usage(self.limit, remaining),
            retry_after,
            source: QuotaSource::Headers,
        }
    }
}
