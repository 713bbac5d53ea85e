//! Parsers for the value syntaxes that rate-limit headers share: counts, resets, durations and
//! dates.
//!
//! Every parser returns `None` on malformed input and never produces NaN, infinity or an
//! overflowing time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A bare reset number below this value is a delta in seconds.
const EPOCH_SECONDS_FROM: f64 = 1e9;
/// A bare reset number from this value on is epoch milliseconds; below it, epoch seconds.
const EPOCH_MILLIS_FROM: f64 = 1e12;

/// Parses a non-negative decimal number (`42`, `598.0`, `1.25`) without sign, exponent or
/// special values.
pub(crate) fn parse_decimal(value: &str) -> Option<f64> {
    let value = value.trim_ascii();
    let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    if !is_digits(whole) || !is_digits(fraction) {
        return None;
    }
    if whole.len() > MAX_EXACT_DIGITS || fraction.len() > MAX_EXACT_DIGITS {
        // Too many digits for exact integer arithmetic, so the standard parser rounds instead.
        let number: f64 = value.parse().ok()?;
        return number.is_finite().then_some(number);
    }
    let whole = digits_value(whole) as f64;
    if fraction.is_empty() {
        return Some(whole);
    }
    let scale = 10f64.powi(fraction.len() as i32);
    Some(whole + digits_value(fraction) as f64 / scale)
}

/// The maximum number of decimal digits that fit a `u64` and convert to `f64` without error.
const MAX_EXACT_DIGITS: usize = 15;

fn is_digits(text: &str) -> bool {
    text.bytes().all(|byte| byte.is_ascii_digit())
}

/// Returns the value of at most `MAX_EXACT_DIGITS` ASCII digits.
fn digits_value(text: &str) -> u64 {
    text.bytes()
        .fold(0, |total, byte| total * 10 + u64::from(byte - b'0'))
}

fn is_integer(value: &str) -> bool {
    !value.is_empty() && is_digits(value)
}

/// Parses a count of requests or tokens. A fractional count (`598.0`) is rounded down.
pub(crate) fn parse_count(value: &str) -> Option<u64> {
    let value = value.trim_ascii();
    if is_integer(value) {
        // Digits only, so the only failure left is overflow.
        return value.bytes().try_fold(0u64, |total, byte| {
            total.checked_mul(10)?.checked_add(u64::from(byte - b'0'))
        });
    }
    let number = parse_decimal(value)?;
    // 2^63 leaves room for the sums and differences the tracker computes.
    (number < 9.2e18).then(|| number.floor() as u64)
}

/// Converts a non-negative number of seconds into a `Duration`.
pub(crate) fn seconds(value: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(value).ok()
}

/// Parses a non-negative decimal number of seconds (`30`, `2.0`, `1.234`).
pub(crate) fn parse_seconds(value: &str) -> Option<Duration> {
    let value = value.trim_ascii();
    if is_integer(value) {
        return value.parse().ok().map(Duration::from_secs);
    }
    seconds(parse_decimal(value)?)
}

/// Parses a bare reset number: below 1e9 it is a delta in seconds from `now`, from 1e9 epoch
/// seconds, and from 1e12 epoch milliseconds.
pub(crate) fn parse_reset_number(value: &str, now: SystemTime) -> Option<SystemTime> {
    let number = parse_decimal(value)?;
    if number < EPOCH_SECONDS_FROM {
        now.checked_add(seconds(number)?)
    } else if number < EPOCH_MILLIS_FROM {
        UNIX_EPOCH.checked_add(seconds(number)?)
    } else {
        UNIX_EPOCH.checked_add(seconds(number / 1000.0)?)
    }
}

/// Parses a Go duration string such as `6m0s`, `1m30.5s`, `20ms` or `1h2m`. A bare number is
/// read as a bare reset number instead, because some servers send plain seconds.
pub(crate) fn parse_reset_duration(value: &str, now: SystemTime) -> Option<SystemTime> {
    let value = value.trim_ascii();
    if let Some(at) = parse_reset_number(value, now) {
        return Some(at);
    }
    now.checked_add(parse_go_duration(value)?)
}

/// Parses a Go duration string: one or more decimal numbers, each followed by a unit out of
/// `h`, `m`, `s`, `ms`, `us` (or `µs`) and `ns`.
pub(crate) fn parse_go_duration(value: &str) -> Option<Duration> {
    let mut rest = value.trim_ascii();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0f64;
    while !rest.is_empty() {
        let number_len = rest
            .bytes()
            .take_while(|byte| byte.is_ascii_digit() || *byte == b'.')
            .count();
        let number = parse_decimal(&rest[..number_len])?;
        rest = &rest[number_len..];
        let unit_len = rest
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(rest.len(), |(index, _)| index);
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    seconds(total)
}

/// Parses an RFC 3339 timestamp such as `2024-03-15T12:00:30Z`, `2024-03-15T12:00:30.5Z` or
/// `2024-03-15T14:00:30+02:00`.
pub(crate) fn parse_rfc3339(value: &str) -> Option<SystemTime> {
    let value = value.trim_ascii();
    let bytes = value.as_bytes();
    if bytes.len() < 20 || bytes[4] != b'-' || bytes[7] != b'-' {
        return None;
    }
    if !matches!(bytes[10], b'T' | b't' | b' ') || bytes[13] != b':' || bytes[16] != b':' {
        return None;
    }
    let year = digits(&bytes[0..4])?;
    let month = digits(&bytes[5..7])?;
    let day = digits(&bytes[8..10])?;
    let hour = digits(&bytes[11..13])?;
    let minute = digits(&bytes[14..16])?;
    let second = digits(&bytes[17..19])?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    // A leap second (60) is accepted and lands on the next second.
    if second > 60 {
        return None;
    }

    let mut rest = &value[19..];
    let mut nanos = 0;
    if let Some(after_dot) = rest.strip_prefix('.') {
        let len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
        if len == 0 {
            return None;
        }
        // Digits past nanoseconds are dropped.
        let kept = len.min(9);
        nanos = digits(&after_dot.as_bytes()[..kept])? * 10u32.pow(9 - kept as u32);
        rest = &after_dot[len..];
    }
    let offset_seconds = parse_offset(rest)?;

    let days = days_from_civil(year, month, day);
    let local = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second);
    let utc = u64::try_from(local - offset_seconds).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(utc, nanos))
}

/// Parses an RFC 3339 offset (`Z`, `+02:00`, `-05:30`) into seconds east of UTC.
fn parse_offset(offset: &str) -> Option<i64> {
    if offset.eq_ignore_ascii_case("z") {
        return Some(0);
    }
    let bytes = offset.as_bytes();
    if bytes.len() != 6 || bytes[3] != b':' {
        return None;
    }
    let sign = match bytes[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let hours = digits(&bytes[1..3])?;
    let minutes = digits(&bytes[4..6])?;
    if hours > 23 || minutes > 59 {
        return None;
    }
    Some(sign * i64::from(hours * 3600 + minutes * 60))
}

/// Parses a fixed-width run of ASCII digits.
fn digits(bytes: &[u8]) -> Option<u32> {
    bytes.iter().try_fold(0u32, |total, byte| {
        byte.is_ascii_digit()
            .then(|| total * 10 + u32::from(byte - b'0'))
    })
}

/// Counts days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: u32, month: u32, day: u32) -> i64 {
    let year = i64::from(year) - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Parses a `Retry-After` value: delta seconds (a fraction is accepted) or an HTTP-date.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<SystemTime> {
    match parse_seconds(value) {
        Some(delay) => now.checked_add(delay),
        None => httpdate::parse_http_date(value.trim_ascii()).ok(),
    }
}

/// Parses a `retry-after-ms` value: a delay in milliseconds.
pub(crate) fn parse_retry_after_ms(value: &str, now: SystemTime) -> Option<SystemTime> {
    now.checked_add(seconds(parse_decimal(value)? / 1000.0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn decimal_forms_parsed() {
        assert_eq!(parse_decimal("42"), Some(42.0));
        assert_eq!(parse_decimal(".5"), Some(0.5));
        assert_eq!(parse_decimal("1."), Some(1.0));
        assert_eq!(parse_decimal("1700000030.250"), Some(1_700_000_030.25));
        assert_eq!(
            parse_decimal("12345678901234567890.5"),
            Some(12_345_678_901_234_567_890.5)
        );
        assert_eq!(parse_decimal("1.2.3"), None);
        assert_eq!(parse_decimal("."), None);
    }

    #[test]
    fn count_accepts_integer_and_float() {
        assert_eq!(parse_count("60"), Some(60));
        assert_eq!(parse_count(" 598.0 "), Some(598));
        assert_eq!(parse_count("12.9"), Some(12));
    }

    #[test]
    fn count_rejects_sign_and_garbage() {
        for value in [
            "-1",
            "+1",
            "1e3",
            "inf",
            "NaN",
            "",
            ".",
            "1.2.3",
            "abc",
            "99999999999999999999",
        ] {
            assert_eq!(parse_count(value), None, "{value:?}");
        }
    }

    #[test]
    fn reset_number_below_epoch_is_delta() {
        let now = at(1_700_000_000);
        assert_eq!(parse_reset_number("30", now), Some(at(1_700_000_030)));
        assert_eq!(
            parse_reset_number("1.5", now),
            Some(now + Duration::from_millis(1500))
        );
    }

    #[test]
    fn reset_number_epoch_seconds_and_millis() {
        let now = at(1_700_000_000);
        assert_eq!(
            parse_reset_number("1700000030", now),
            Some(at(1_700_000_030))
        );
        assert_eq!(
            parse_reset_number("1700000030000", now),
            Some(at(1_700_000_030))
        );
        assert_eq!(
            parse_reset_number("1700000030.250", now),
            Some(at(1_700_000_030) + Duration::from_millis(250))
        );
    }

    #[test]
    fn reset_number_rejects_huge_values() {
        let huge = "9".repeat(400);
        assert_eq!(parse_reset_number(&huge, at(0)), None);
    }

    #[test]
    fn go_duration_forms_parsed() {
        let cases = [
            ("6m0s", Duration::from_secs(360)),
            ("1m30.5s", Duration::from_millis(90_500)),
            ("20ms", Duration::from_millis(20)),
            ("1h2m3s", Duration::from_secs(3723)),
            ("1.5s", Duration::from_millis(1500)),
            ("250us", Duration::from_micros(250)),
            ("0s", Duration::ZERO),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_go_duration(value), Some(expected), "{value}");
        }
    }

    #[test]
    fn go_duration_rejects_garbage() {
        for value in ["", "s", "5", "5x", "-5s", "5s-", "1..5s", "m5"] {
            assert_eq!(parse_go_duration(value), None, "{value:?}");
        }
    }

    #[test]
    fn rfc3339_utc_and_offsets_parsed() {
        // 2024-03-15T12:00:30Z is 1710504030 seconds after the epoch.
        let expected = at(1_710_504_030);
        assert_eq!(parse_rfc3339("2024-03-15T12:00:30Z"), Some(expected));
        assert_eq!(parse_rfc3339("2024-03-15T14:00:30+02:00"), Some(expected));
        assert_eq!(parse_rfc3339("2024-03-15T07:00:30-05:00"), Some(expected));
        assert_eq!(
            parse_rfc3339("2024-03-15T12:00:30.25Z"),
            Some(expected + Duration::from_millis(250))
        );
    }

    #[test]
    fn rfc3339_rejects_malformed() {
        for value in [
            "",
            "2024-03-15",
            "2024-13-15T12:00:30Z",
            "2024-03-15T25:00:30Z",
            "2024-03-15T12:00:30",
            "2024-03-15T12:00:30+0200",
            "1969-12-31T23:59:59Z",
            "2024-03-15T12:00:30.Z",
        ] {
            assert_eq!(parse_rfc3339(value), None, "{value:?}");
        }
    }

    #[test]
    fn retry_after_seconds_and_date() {
        let now = at(1_700_000_000);
        assert_eq!(parse_retry_after("120", now), Some(at(1_700_000_120)));
        assert_eq!(parse_retry_after("2.0", now), Some(at(1_700_000_002)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(at(784_111_777))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn retry_after_ms_parsed() {
        let now = at(1_700_000_000);
        assert_eq!(
            parse_retry_after_ms("1500", now),
            Some(now + Duration::from_millis(1500))
        );
        assert_eq!(parse_retry_after_ms("-5", now), None);
    }
}
