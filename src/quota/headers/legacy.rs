//! The `x-ratelimit-*` family and its relatives.
//!
//! - Legacy and GitHub: `x-ratelimit-limit`, `-remaining`, `-reset` (a bare reset number),
//!   `-used` and `-resource` (which names the dimension).
//! - Discord: `x-ratelimit-reset-after` (float seconds, preferred over `-reset`) and
//!   `x-ratelimit-bucket` (which names the dimension).
//! - Reddit: float counts such as `598.0` and `-used` without `-limit`.
//! - OpenAI and Azure OpenAI: `x-ratelimit-{limit,remaining,reset}-{dimension}` with Go
//!   durations (`6m0s`) as resets.
//! - X: `x-rate-limit-{limit,remaining,reset}`.
//! - Shopify: `x-shopify-shop-api-call-limit: used/limit`.

use super::values::{parse_count, parse_reset_duration, parse_reset_number, parse_seconds};
use super::{Collector, ResetPrecision, Understood};

/// Reads one `x-ratelimit-{rest}` header.
pub(super) fn read_x_ratelimit<'a>(
    collector: &mut Collector<'a>,
    rest: &'a str,
    text: &'a str,
) -> Understood {
    let now = collector.now;
    match rest {
        "limit" | "remaining" | "reset" | "used" => read_field(collector, rest, text),
        "reset-after" => Understood::store(parse_seconds(text), |delay| {
            if let Some(at) = now.checked_add(delay) {
                collector.legacy.set_reset(at, ResetPrecision::Precise);
            }
        }),
        "resource" | "bucket" => {
            let name = text.trim_ascii();
            Understood::store((!name.is_empty()).then_some(name), |name| {
                collector.legacy_name = Some(name);
            })
        }
        _ => match rest.split_once('-') {
            Some((field, dimension)) if !dimension.is_empty() => {
                read_dimension(collector, field, dimension, text)
            }
            _ => Understood::NotQuota,
        },
    }
}

/// Reads one `x-rate-limit-{rest}` header.
pub(super) fn read_x_rate_limit(
    collector: &mut Collector<'_>,
    rest: &str,
    text: &str,
) -> Understood {
    match rest {
        "limit" | "remaining" | "reset" => read_field(collector, rest, text),
        _ => Understood::NotQuota,
    }
}

/// Reads Shopify's `used/limit` call limit.
pub(super) fn read_shopify(collector: &mut Collector<'_>, text: &str) -> Understood {
    let parsed = text
        .split_once('/')
        .and_then(|(used, limit)| Some((parse_count(used)?, parse_count(limit)?)));
    Understood::store(parsed, |(used, limit)| {
        collector.legacy.used = Some(used);
        collector.legacy.limit = Some(limit);
    })
}

fn read_field(collector: &mut Collector<'_>, field: &str, text: &str) -> Understood {
    let legacy = &mut collector.legacy;
    match field {
        "limit" => Understood::store(parse_count(text), |limit| legacy.limit = Some(limit)),
        "remaining" => Understood::store(parse_count(text), |remaining| {
            legacy.remaining = Some(remaining);
        }),
        "used" => Understood::store(parse_count(text), |used| legacy.used = Some(used)),
        _ => Understood::store(parse_reset_number(text, collector.now), |at| {
            legacy.set_reset(at, ResetPrecision::Primary);
        }),
    }
}

/// Reads an OpenAI-style `x-ratelimit-{field}-{dimension}` header.
fn read_dimension<'a>(
    collector: &mut Collector<'a>,
    field: &str,
    dimension: &'a str,
    text: &str,
) -> Understood {
    let now = collector.now;
    let value = match field {
        "limit" | "remaining" => parse_count(text).map(Field::Count),
        "reset" => parse_reset_duration(text, now).map(Field::Reset),
        _ => return Understood::NotQuota,
    };
    let Some(value) = value else {
        return Understood::Malformed;
    };
    if let Some(observation) = collector.named(dimension) {
        match (field, value) {
            ("limit", Field::Count(limit)) => observation.limit = Some(limit),
            (_, Field::Count(remaining)) => observation.remaining = Some(remaining),
            (_, Field::Reset(at)) => observation.set_reset(at, ResetPrecision::Primary),
        }
    }
    Understood::Read
}

enum Field {
    Count(u64),
    Reset(std::time::SystemTime),
}
