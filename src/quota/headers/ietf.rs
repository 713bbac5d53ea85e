//! The IETF `RateLimit` header fields in their draft generations, and GitLab's variant.
//!
//! - Separate fields: `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`, where the
//!   limit may be followed by policies (`10, 10;w=1, 50;w=60`) and a separate
//!   `RateLimit-Policy: 10;w=1, 50;w=60` only describes the windows.
//! - GitLab: the separate fields with an epoch reset, `RateLimit-Observed` (units used),
//!   `RateLimit-ResetTime` (an HTTP-date) and `RateLimit-Name` (which names the dimension).
//! - Combined: `RateLimit: limit=100, remaining=50, reset=5`.
//! - Structured fields: `RateLimit-Policy: "burst";q=100;w=60` states each policy's quota and
//!   `RateLimit: "burst";r=37;t=21` its remaining units and seconds to reset. Either field may
//!   list several policies and may come on several lines.

use super::values::{parse_count, parse_reset_number};
use super::{Collector, ResetPrecision, Understood};

/// Reads one header whose name starts with `ratelimit`.
pub(super) fn read<'a>(collector: &mut Collector<'a>, name: &str, text: &'a str) -> Understood {
    let now = collector.now;
    let ietf = &mut collector.ietf;
    match name {
        "ratelimit-limit" => {
            Understood::store(first_number(text), |limit| ietf.limit = Some(limit))
        }
        "ratelimit-remaining" => Understood::store(first_number(text), |remaining| {
            ietf.remaining = Some(remaining);
        }),
        "ratelimit-observed" => {
            Understood::store(first_number(text), |used| ietf.used = Some(used))
        }
        "ratelimit-reset" => {
            let at = first_member(text).and_then(|reset| parse_reset_number(reset, now));
            Understood::store(at, |at| ietf.set_reset(at, ResetPrecision::Primary))
        }
        "ratelimit-resettime" => {
            Understood::store(httpdate::parse_http_date(text.trim_ascii()).ok(), |at| {
                ietf.set_reset(at, ResetPrecision::Fallback);
            })
        }
        "ratelimit-name" => {
            let name = text.trim_ascii();
            Understood::store((!name.is_empty()).then_some(name), |name| {
                collector.ietf_name = Some(name);
            })
        }
        "ratelimit-policy" => read_policy(collector, text),
        "ratelimit" => read_ratelimit(collector, text),
        _ => Understood::NotQuota,
    }
}

/// Reads `RateLimit-Policy`. Members that start with a number belong to the older drafts, which
/// use the field only to describe windows, so they are skipped.
fn read_policy<'a>(collector: &mut Collector<'a>, text: &'a str) -> Understood {
    let mut understood = Understood::Read;
    for member in Members::new(text) {
        if member.starts_with(|c: char| c.is_ascii_digit()) {
            continue;
        }
        let quota = parse_item(member).and_then(|(name, params)| {
            let quota = params.filter(|(key, _)| *key == "q").last()?;
            Some((name, parse_count(quota.1)?))
        });
        match quota {
            Some((name, quota)) => {
                if let Some(observation) = collector.named(name) {
                    observation.limit = Some(quota);
                }
            }
            None => understood = Understood::Malformed,
        }
    }
    understood
}

/// Reads `RateLimit`, either the combined dictionary or structured policy members.
fn read_ratelimit<'a>(collector: &mut Collector<'a>, text: &'a str) -> Understood {
    let now = collector.now;
    let mut understood = Understood::Read;
    for member in Members::new(text) {
        let read = match dictionary_entry(member) {
            Some((key, value)) => read_combined(collector, key, value),
            None => read_policy_state(collector, member, now),
        };
        if !read {
            understood = Understood::Malformed;
        }
    }
    understood
}

fn read_combined(collector: &mut Collector<'_>, key: &str, value: &str) -> bool {
    let ietf = &mut collector.ietf;
    if key.eq_ignore_ascii_case("limit") {
        parse_count(value)
            .map(|limit| ietf.limit = Some(limit))
            .is_some()
    } else if key.eq_ignore_ascii_case("remaining") {
        parse_count(value)
            .map(|remaining| ietf.remaining = Some(remaining))
            .is_some()
    } else if key.eq_ignore_ascii_case("reset") {
        parse_reset_number(value, collector.now)
            .map(|at| ietf.set_reset(at, ResetPrecision::Primary))
            .is_some()
    } else {
        false
    }
}

/// Reads a `"policy";r=37;t=21` member.
fn read_policy_state<'a>(
    collector: &mut Collector<'a>,
    member: &'a str,
    now: std::time::SystemTime,
) -> bool {
    let Some((name, params)) = parse_item(member) else {
        return false;
    };
    let mut remaining = None;
    let mut reset = None;
    let mut valid = true;
    for (key, value) in params {
        match key {
            "r" => {
                remaining = parse_count(value).or_else(|| {
                    valid = false;
                    None
                })
            }
            "t" => {
                reset = parse_reset_number(value, now).or_else(|| {
                    valid = false;
                    None
                })
            }
            _ => {}
        }
    }
    if let Some(observation) = collector.named(name) {
        if remaining.is_some() {
            observation.remaining = remaining;
        }
        if let Some(at) = reset {
            observation.set_reset(at, ResetPrecision::Primary);
        }
    }
    valid && (remaining.is_some() || reset.is_some())
}

/// Returns the first member of a list, without its parameters.
fn first_member(text: &str) -> Option<&str> {
    let member = text.split(',').next()?;
    Some(member.split(';').next().unwrap_or(member))
}

fn first_number(text: &str) -> Option<u64> {
    parse_count(first_member(text)?)
}

/// Splits a `key=value` dictionary member of the combined form, whose value has no parameters.
fn dictionary_entry(member: &str) -> Option<(&str, &str)> {
    if member.starts_with('"') {
        return None;
    }
    let (key, value) = member.split_once('=')?;
    (!key.contains(';') && !value.contains(';')).then(|| (key.trim_ascii(), value.trim_ascii()))
}

/// Splits a structured-field item into its name (a string or token) and its parameters.
fn parse_item(member: &str) -> Option<(&str, impl Iterator<Item = (&str, &str)>)> {
    let member = member.trim_ascii();
    let (name, params) = if let Some(quoted) = member.strip_prefix('"') {
        let end = quoted.find('"')?;
        (&quoted[..end], &quoted[end + 1..])
    } else {
        let end = member.find(';').unwrap_or(member.len());
        (member[..end].trim_ascii(), &member[end..])
    };
    if name.is_empty() || !(params.is_empty() || params.trim_start().starts_with(';')) {
        return None;
    }
    let params = params
        .split(';')
        .filter_map(|param| param.split_once('='))
        .map(|(key, value)| (key.trim_ascii(), value.trim_ascii()));
    Some((name, params))
}

/// The members of a comma-separated list, where commas inside quoted strings do not split.
#[derive(Debug)]
struct Members<'a> {
    rest: &'a str,
}

impl<'a> Members<'a> {
    fn new(text: &'a str) -> Self {
        Self { rest: text }
    }
}

impl<'a> Iterator for Members<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        loop {
            if self.rest.is_empty() {
                return None;
            }
            let mut quoted = false;
            let mut escaped = false;
            let mut end = self.rest.len();
            for (index, byte) in self.rest.bytes().enumerate() {
                match byte {
                    _ if escaped => escaped = false,
                    b'\\' if quoted => escaped = true,
                    b'"' => quoted = !quoted,
                    b',' if !quoted => {
                        end = index;
                        break;
                    }
                    _ => {}
                }
            }
            let member = self.rest[..end].trim_ascii();
            self.rest = self.rest.get(end + 1..).unwrap_or("");
            if !member.is_empty() {
                return Some(member);
            }
        }
    }
}
