//! Reading rate-limit response headers into observations.
//!
//! [`parse_with_clock`] makes one pass over a header map and hands each header whose name belongs
//! to a known dialect to that dialect's module. The result borrows dimension names from the
//! header map and lives in a fixed-size array, so parsing allocates nothing.

mod anthropic;
mod ietf;
mod legacy;
pub(crate) mod values;

use std::time::SystemTime;

use http::header::HeaderValue;
use http::HeaderMap;

/// The dimension name of headers that do not name what they count.
pub(crate) const DEFAULT_DIMENSION: &str = "default";

/// Dimensions kept from one response. Further ones are ignored with a `debug!` event.
pub(crate) const MAX_DIMENSIONS: usize = 8;

/// How much a reset source is trusted when one dimension has several.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum ResetPrecision {
    /// No reset seen.
    #[default]
    None,
    /// A coarse fallback such as GitLab's HTTP-date `RateLimit-ResetTime`.
    Fallback,
    /// The dialect's main reset header.
    Primary,
    /// A relative reset with sub-second precision, such as Discord's `x-ratelimit-reset-after`.
    Precise,
}

/// One response's figures for one quota dimension.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Observation<'a> {
    /// The dimension or policy name, such as `requests`, `tokens` or an IETF policy name.
    pub(crate) dimension: &'a str,
    pub(crate) limit: Option<u64>,
    pub(crate) remaining: Option<u64>,
    /// Units used in the window, for dialects that send this in place of, or next to, `remaining`.
    pub(crate) used: Option<u64>,
    pub(crate) reset_at: Option<SystemTime>,
    reset_precision: ResetPrecision,
}

impl<'a> Observation<'a> {
    fn named(dimension: &'a str) -> Self {
        Self {
            dimension,
            ..Self::default()
        }
    }

    pub(crate) fn set_reset(&mut self, at: SystemTime, precision: ResetPrecision) {
        if precision >= self.reset_precision {
            self.reset_at = Some(at);
            self.reset_precision = precision;
        }
    }

    fn is_empty(&self) -> bool {
        self.limit.is_none()
            && self.remaining.is_none()
            && self.used.is_none()
            && self.reset_at.is_none()
    }

    /// Fills `limit` and `remaining` from `used` where a dialect omits one, and clamps
    /// `remaining` to `limit`.
    fn complete(&mut self) {
        if let (None, Some(used), Some(remaining)) = (self.limit, self.used, self.remaining) {
            self.limit = used.checked_add(remaining);
        }
        if let (Some(limit), Some(used), None) = (self.limit, self.used, self.remaining) {
            self.remaining = Some(limit.saturating_sub(used));
        }
        if let (Some(limit), Some(remaining)) = (self.limit, self.remaining) {
            self.remaining = Some(remaining.min(limit));
        }
    }

    /// Merges fields that `other` states into `self`.
    fn merge(&mut self, other: &Observation<'a>) {
        self.limit = other.limit.or(self.limit);
        self.remaining = other.remaining.or(self.remaining);
        self.used = other.used.or(self.used);
        if let Some(at) = other.reset_at {
            self.set_reset(at, other.reset_precision);
        }
    }
}

/// Everything one response states about quotas.
#[derive(Clone, Debug, Default)]
pub(crate) struct Observations<'a> {
    dimensions: [Observation<'a>; MAX_DIMENSIONS],
    len: usize,
    /// The deadline from `Retry-After` or `retry-after-ms`.
    pub(crate) retry_after: Option<SystemTime>,
    /// The time that relative values count from, read at the first rate-limit header.
    pub(crate) now: Option<SystemTime>,
}

impl<'a> Observations<'a> {
    /// Returns the observed dimensions.
    pub(crate) fn dimensions(&self) -> &[Observation<'a>] {
        &self.dimensions[..self.len]
    }

    /// Returns `true` when the response carried no quota information.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0 && self.retry_after.is_none()
    }

    /// Returns the observation for `dimension`, adding it when there is room.
    fn dimension(&mut self, dimension: &'a str) -> Option<&mut Observation<'a>> {
        let index = match self.dimensions[..self.len]
            .iter()
            .position(|observation| observation.dimension == dimension)
        {
            Some(index) => index,
            None if self.len < MAX_DIMENSIONS => {
                self.dimensions[self.len] = Observation::named(dimension);
                self.len += 1;
                self.len - 1
            }
            None => {
                tracing::debug!(
                    max = MAX_DIMENSIONS,
                    "ignoring a rate-limit dimension beyond the maximum per response"
                );
                return None;
            }
        };
        Some(&mut self.dimensions[index])
    }

    fn push(&mut self, observation: &Observation<'a>) {
        if observation.is_empty() {
            return;
        }
        if let Some(slot) = self.dimension(observation.dimension) {
            slot.merge(observation);
        }
    }
}

/// Collects observations during one pass over a header map.
#[derive(Debug)]
pub(crate) struct Collector<'a> {
    /// The time that relative values count from.
    pub(crate) now: SystemTime,
    /// Unnamed legacy `x-ratelimit-*`, `x-rate-limit-*` and Shopify values.
    pub(crate) legacy: Observation<'a>,
    /// A name for `legacy`: GitHub's `x-ratelimit-resource` or Discord's `x-ratelimit-bucket`.
    pub(crate) legacy_name: Option<&'a str>,
    /// Unnamed IETF `RateLimit-*` and combined `RateLimit` values.
    pub(crate) ietf: Observation<'a>,
    /// A name for `ietf`: GitLab's `RateLimit-Name`.
    pub(crate) ietf_name: Option<&'a str>,
    /// IETF policy limits, kept apart until the policy's `RateLimit` member is seen.
    pub(crate) observations: Observations<'a>,
    retry_after_ms: Option<SystemTime>,
}

impl<'a> Collector<'a> {
    fn new(now: SystemTime) -> Self {
        Self {
            now,
            legacy: Observation::default(),
            legacy_name: None,
            ietf: Observation::default(),
            ietf_name: None,
            observations: Observations::default(),
            retry_after_ms: None,
        }
    }

    pub(crate) fn named(&mut self, dimension: &'a str) -> Option<&mut Observation<'a>> {
        self.observations.dimension(dimension)
    }

    fn finish(mut self) -> Observations<'a> {
        let mut legacy = self.legacy;
        legacy.dimension = self.legacy_name.unwrap_or(DEFAULT_DIMENSION);
        let mut ietf = self.ietf;
        ietf.dimension = self.ietf_name.unwrap_or(DEFAULT_DIMENSION);
        self.observations.push(&legacy);
        self.observations.push(&ietf);

        // Drop dimensions whose every value was malformed, keeping the order of the rest.
        let mut kept = 0;
        for index in 0..self.observations.len {
            let mut observation = self.observations.dimensions[index];
            if observation.is_empty() {
                continue;
            }
            observation.complete();
            self.observations.dimensions[kept] = observation;
            kept += 1;
        }
        self.observations.len = kept;
        // `retry-after-ms` is more precise than a whole-second `Retry-After`.
        if self.retry_after_ms.is_some() {
            self.observations.retry_after = self.retry_after_ms;
        }
        self.observations.now = Some(self.now);
        self.observations
    }
}

/// Reads every rate-limit header of `headers` in one pass. `now` anchors relative values.
#[cfg(test)]
pub(crate) fn parse(headers: &HeaderMap, now: SystemTime) -> Observations<'_> {
    parse_with_clock(headers, || now)
}

/// Reads every rate-limit header of `headers` in one pass, reading `clock` once at the first
/// rate-limit header to anchor relative values. A response without such headers costs one
/// comparison per header and no clock read.
pub(crate) fn parse_with_clock(
    headers: &HeaderMap,
    clock: impl Fn() -> SystemTime,
) -> Observations<'_> {
    let mut collector: Option<Collector<'_>> = None;
    for (name, value) in headers {
        let name = name.as_str();
        let Some(dialect) = Dialect::of(name) else {
            continue;
        };
        let collector = collector.get_or_insert_with(|| Collector::new(clock()));
        read_header(collector, dialect, name, value);
    }
    collector.map_or_else(Observations::default, Collector::finish)
}

/// The dialect family that a header name belongs to, with the rest of the name after its prefix.
#[derive(Clone, Copy, Debug)]
enum Dialect<'a> {
    XRatelimit(&'a str),
    XRateLimit(&'a str),
    Shopify,
    Anthropic(&'a str),
    RetryAfter,
    RetryAfterMs,
    Ietf,
}

impl<'a> Dialect<'a> {
    fn of(name: &'a str) -> Option<Self> {
        // Most headers of a response start with none of these letters, so they cost one
        // comparison.
        if !matches!(name.as_bytes().first(), Some(b'x' | b'r' | b'a')) {
            return None;
        }
        if let Some(rest) = name.strip_prefix("x-ratelimit-") {
            Some(Self::XRatelimit(rest))
        } else if let Some(rest) = name.strip_prefix("x-rate-limit-") {
            Some(Self::XRateLimit(rest))
        } else if name == "x-shopify-shop-api-call-limit" {
            Some(Self::Shopify)
        } else if let Some(rest) = name.strip_prefix("anthropic-ratelimit-") {
            Some(Self::Anthropic(rest))
        } else if name == "retry-after" {
            Some(Self::RetryAfter)
        } else if name == "retry-after-ms" {
            Some(Self::RetryAfterMs)
        } else if name.starts_with("ratelimit") {
            Some(Self::Ietf)
        } else {
            None
        }
    }
}

fn read_header<'a>(
    collector: &mut Collector<'a>,
    dialect: Dialect<'a>,
    name: &'a str,
    value: &'a HeaderValue,
) {
    let Ok(text) = value.to_str() else {
        tracing::debug!(
            header = name,
            "ignoring a rate-limit header that is not visible ASCII"
        );
        return;
    };
    let understood = match dialect {
        Dialect::XRatelimit(rest) => legacy::read_x_ratelimit(collector, rest, text),
        Dialect::XRateLimit(rest) => legacy::read_x_rate_limit(collector, rest, text),
        Dialect::Shopify => legacy::read_shopify(collector, text),
        Dialect::Anthropic(rest) => anthropic::read(collector, rest, text),
        Dialect::RetryAfter => read_retry_after(collector, text),
        Dialect::RetryAfterMs => read_retry_after_ms(collector, text),
        Dialect::Ietf => ietf::read(collector, name, text),
    };
    if understood == Understood::Malformed {
        tracing::debug!(
            header = name,
            "ignoring a malformed rate-limit header value"
        );
    }
}

/// The result of one dialect module reading one header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Understood {
    /// The value was read.
    Read,
    /// The name belongs to a dialect but the value is invalid, so it was ignored.
    Malformed,
    /// The name is not a quota header this crate reads.
    NotQuota,
}

impl Understood {
    /// Returns `Read` when `value` is `Some`, after storing it with `store`.
    pub(crate) fn store<T>(value: Option<T>, store: impl FnOnce(T)) -> Self {
        match value {
            Some(value) => {
                store(value);
                Self::Read
            }
            None => Self::Malformed,
        }
    }
}

fn read_retry_after(collector: &mut Collector<'_>, text: &str) -> Understood {
    let now = collector.now;
    Understood::store(values::parse_retry_after(text, now), |at| {
        collector.observations.retry_after = Some(at);
    })
}

fn read_retry_after_ms(collector: &mut Collector<'_>, text: &str) -> Understood {
    let now = collector.now;
    Understood::store(values::parse_retry_after_ms(text, now), |at| {
        collector.retry_after_ms = Some(at);
    })
}

#[cfg(test)]
mod tests;
