//! Anthropic: `anthropic-ratelimit-{dimension}-{limit,remaining,reset}` with RFC 3339 resets,
//! for the dimensions `requests`, `tokens`, `input-tokens` and `output-tokens`.

use super::values::{parse_count, parse_reset_number, parse_rfc3339};
use super::{Collector, ResetPrecision, Understood};

/// Reads one `anthropic-ratelimit-{rest}` header.
pub(super) fn read<'a>(collector: &mut Collector<'a>, rest: &'a str, text: &str) -> Understood {
    let Some((dimension, field)) = rest.rsplit_once('-') else {
        return Understood::NotQuota;
    };
    if dimension.is_empty() || !matches!(field, "limit" | "remaining" | "reset") {
        return Understood::NotQuota;
    }
    let now = collector.now;
    let Some(observation) = collector.named(dimension) else {
        return Understood::Read;
    };
    match field {
        "limit" => Understood::store(parse_count(text), |limit| observation.limit = Some(limit)),
        "remaining" => Understood::store(parse_count(text), |remaining| {
            observation.remaining = Some(remaining);
        }),
        _ => {
            let at = parse_rfc3339(text).or_else(|| parse_reset_number(text, now));
            Understood::store(at, |at| observation.set_reset(at, ResetPrecision::Primary))
        }
    }
}
