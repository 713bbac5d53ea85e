//! Fixture tests: one response per dialect, checked value by value.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;

use super::{parse, Observation, Observations};

/// 2024-03-15T12:00:00Z.
const NOW_SECS: u64 = 1_710_504_000;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW_SECS)
}

fn after(secs: u64) -> SystemTime {
    now() + Duration::from_secs(secs)
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        let name = HeaderName::from_bytes(name.as_bytes()).expect("valid header name");
        let value = HeaderValue::from_str(value).expect("valid header value");
        map.append(name, value);
    }
    map
}

fn only<'a>(observations: &Observations<'a>) -> Observation<'a> {
    assert_eq!(observations.dimensions().len(), 1, "{observations:?}");
    observations.dimensions()[0]
}

fn find<'a>(observations: &Observations<'a>, dimension: &str) -> Observation<'a> {
    *observations
        .dimensions()
        .iter()
        .find(|observation| observation.dimension == dimension)
        .unwrap_or_else(|| panic!("no dimension {dimension} in {observations:?}"))
}

#[test]
fn legacy_headers_any_case() {
    let map = headers(&[
        ("X-RateLimit-Limit", "60"),
        ("x-ratelimit-REMAINING", "12"),
        ("X-RATELIMIT-RESET", "30"),
    ]);
    let parsed = parse(&map, now());
    let observation = only(&parsed);
    assert_eq!(observation.dimension, "default");
    assert_eq!(observation.limit, Some(60));
    assert_eq!(observation.remaining, Some(12));
    assert_eq!(observation.reset_at, Some(after(30)));
    assert_eq!(parsed.retry_after, None);
}

#[test]
fn reset_delta_epoch_seconds_and_millis_agree() {
    let epoch_seconds = (NOW_SECS + 30).to_string();
    let epoch_millis = ((NOW_SECS + 30) * 1000).to_string();
    for reset in ["30", epoch_seconds.as_str(), epoch_millis.as_str()] {
        let map = headers(&[
            ("x-ratelimit-limit", "60"),
            ("x-ratelimit-remaining", "12"),
            ("x-ratelimit-reset", reset),
        ]);
        let parsed = parse(&map, now());
        assert_eq!(only(&parsed).reset_at, Some(after(30)), "reset {reset}");
    }
}

#[test]
fn ietf_separate_fields_with_policy() {
    let map = headers(&[
        ("RateLimit-Limit", "10"),
        ("RateLimit-Remaining", "3"),
        ("RateLimit-Reset", "1"),
        ("RateLimit-Policy", "10;w=1, 50;w=60"),
    ]);
    let parsed = parse(&map, now());
    let observation = only(&parsed);
    assert_eq!(observation.dimension, "default");
    assert_eq!(observation.limit, Some(10));
    assert_eq!(observation.remaining, Some(3));
    assert_eq!(observation.reset_at, Some(after(1)));
}

#[test]
fn ietf_limit_with_inline_policies() {
    let map = headers(&[
        ("RateLimit-Limit", "10, 10;w=1, 50;w=60"),
        ("RateLimit-Remaining", "9"),
        ("RateLimit-Reset", "4"),
    ]);
    let parsed = parse(&map, now());
    let observation = only(&parsed);
    assert_eq!(observation.limit, Some(10));
    assert_eq!(observation.remaining, Some(9));
    assert_eq!(observation.reset_at, Some(after(4)));
}

#[test]
fn ietf_combined_field_parsed() {
    let map = headers(&[("RateLimit", "limit=100, remaining=50, reset=5")]);
    let parsed = parse(&map, now());
    let observation = only(&parsed);
    assert_eq!(observation.dimension, "default");
    assert_eq!(observation.limit, Some(100));
    assert_eq!(observation.remaining, Some(50));
    assert_eq!(observation.reset_at, Some(after(5)));
}

#[test]
fn ietf_structured_single_policy() {
    let map = headers(&[
        ("RateLimit-Policy", "\"burst\";q=100;w=60"),
        ("RateLimit", "\"burst\";r=37;t=21"),
    ]);
    let parsed = parse(&map, now());
    let observation = only(&parsed);
    assert_eq!(observation.dimension, "burst");
    assert_eq!(observation.limit, Some(100));
    assert_eq!(observation.remaining, Some(37));
    assert_eq!(observation.reset_at, Some(after(21)));
}

#[test]
fn ietf_structured_policies_one_line() {
    let map = headers(&[
        (
            "RateLimit-Policy",
            "\"burst\";q=100;w=60, \"daily\";q=1000;w=86400",
        ),
        ("RateLimit", "\"burst\";r=37;t=21, \"daily\";r=999;t=3600"),
    ]);
    let parsed = parse(&map, now());
    assert_eq!(parsed.dimensions().len(), 2);
    let burst = find(&parsed, "burst");
    assert_eq!(burst.limit, Some(100));
    assert_eq!(burst.remaining, Some(37));
    assert_eq!(burst.reset_at, Some(after(21)));
    let daily = find(&parsed, "daily");
    assert_eq!(daily.limit, Some(1000));
    assert_eq!(daily.remaining, Some(999));
    assert_eq!(daily.reset_at, Some(after(3600)));
}

#[test]
fn ietf_structured_policies_several_lines() {
    let map = headers(&[
        ("RateLimit", "\"daily\";r=10;t=3600"),
        ("RateLimit-Policy", "\"burst\";q=100;w=60"),
        ("RateLimit", "\"burst\";r=0;t=21"),
        ("RateLimit-Policy", "\"daily\";q=1000;w=86400"),
    ]);
    let parsed = parse(&map, now());
    assert_eq!(parsed.dimensions().len(), 2);
    let burst = find(&parsed, "burst");
    assert_eq!(burst.limit, Some(100));
    assert_eq!(burst.remaining, Some(0));
    let daily = find(&parsed, "daily");
    assert_eq!(daily.limit, Some(1000));
    assert_eq!(daily.remaining, Some(10));
}

#[test]
fn retry_after_delta_seconds() {
    let map = headers(&[("Retry-After", "120")]);
    let parsed = parse(&map, now());
    assert_eq!(parsed.retry_after, Some(after(120)));
    assert!(parsed.dimensions().is_empty());
}

#[test]
fn retry_after_http_date() {
    let map = headers(&[("Retry-After", "Fri, 15 Mar 2024 12:01:00 GMT")]);
    let parsed = parse(&map, now());
    assert_eq!(parsed.retry_after, Some(after(60)));
}

#[test]
fn retry_after_ms_preferred() {
    let map = headers(&[("retry-after-ms", "1500"), ("Retry-After", "2")]);
    let parsed = parse(&map, now());
    assert_eq!(
        parsed.retry_after,
        Some(now() + Duration::from_millis(1500))
    );
}

#[test]
fn openai_requests_and_tokens() {
    let map = headers(&[
        ("x-ratelimit-limit-requests", "60"),
        ("x-ratelimit-limit-tokens", "150000"),
        ("x-ratelimit-remaining-requests", "59"),
        ("x-ratelimit-remaining-tokens", "149984"),
        ("x-ratelimit-reset-requests", "1s"),
        ("x-ratelimit-reset-tokens", "6m0s"),
    ]);
    let parsed = parse(&map, now());
    assert_eq!(parsed.dimensions().len(), 2);
    let requests = find(&parsed, "requests");
    assert_eq!(requests.limit, Some(60));
    assert_eq!(requests.remaining, Some(59));
    assert_eq!(requests.reset_at, Some(after(1)));
    let tokens = find(&parsed, "tokens");
    assert_eq!(tokens.limit, Some(150_000));
    assert_eq!(tokens.remaining, Some(149_984));
    assert_eq!(tokens.reset_at, Some(after(360)));
}

#[test]
fn openai_fractional_and_millisecond_resets() {
    let map = headers(&[
        ("x-ratelimit-remaining-requests", "10"),
        ("x-ratelimit-reset-requests", "1m30.5s"),
        ("x-ratelimit-remaining-tokens", "10"),
        ("x-ratelimit-reset-tokens", "20ms"),
    ]);
    let parsed = parse(&map, now());
    let requests = find(&parsed, "requests");
    assert_eq!(
        requests.reset_at,
        Some(now() + Duration::from_millis(90_500))
    );
    let tokens = find(&parsed, "tokens");
    assert_eq!(tokens.reset_at, Some(now() + Duration::from_millis(20)));
}

#[test]
fn azure_openai_remaining_only() {
    let map = headers(&[
        ("x-ratelimit-remaining-requests", "99"),
        ("x-ratelimit-remaining-tokens", "9000"),
        ("retry-after-ms", "20"),
    ]);
    let parsed = parse(&map, now());
    let requests = find(&parsed, "requests");
    assert_eq!(requests.limit, None);
    assert_eq!(requests.remaining, Some(99));
    assert_eq!(find(&parsed, "tokens").remaining, Some(9000));
    assert_eq!(parsed.retry_after, Some(now() + Duration::from_millis(20)));
}

#[test]
fn anthropic_four_dimensions() {
    let map = headers(&[
        ("anthropic-ratelimit-requests-limit", "50"),
        ("anthropic-ratelimit-requests-remaining", "49"),
        ("anthropic-ratelimit-requests-reset", "2024-03-15T12:00:01Z"),
        ("anthropic-ratelimit-tokens-limit", "100000"),
        ("anthropic-ratelimit-tokens-remaining", "90000"),
        ("anthropic-ratelimit-tokens-reset", "2024-03-15T12:00:06Z"),
        ("anthropic-ratelimit-input-tokens-limit", "80000"),
        ("anthropic-ratelimit-input-tokens-remaining", "72000"),
        (
            "anthropic-ratelimit-input-tokens-reset",
            "2024-03-15T12:00:06.5Z",
        ),
        ("anthropic-ratelimit-output-tokens-limit", "20000"),
        ("anthropic-ratelimit-output-tokens-remaining", "18000"),
        (
            "anthropic-ratelimit-output-tokens-reset",
            "2024-03-15T14:00:03+02:00",
        ),
    ]);
    let parsed = parse(&map, now());
    assert_eq!(parsed.dimensions().len(), 4);
    let requests = find(&parsed, "requests");
    assert_eq!(requests.limit, Some(50));
    assert_eq!(requests.remaining, Some(49));
    assert_eq!(requests.reset_at, Some(after(1)));
    let tokens = find(&parsed, "tokens");
    assert_eq!(tokens.limit, Some(100_000));
    assert_eq!(tokens.remaining, Some(90_000));
    assert_eq!(tokens.reset_at, Some(after(6)));
    let input = find(&parsed, "input-tokens");
    assert_eq!(input.limit, Some(80_000));
    assert_eq!(input.remaining, Some(72_000));
    assert_eq!(input.reset_at, Some(now() + Duration::from_millis(6500)));
    let output = find(&parsed, "output-tokens");
    assert_eq!(output.limit, Some(20_000));
    assert_eq!(output.remaining, Some(18_000));
    assert_eq!(output.reset_at, Some(after(3)));
}

#[test]
fn github_resource_names_dimension() {
    let reset = (NOW_SECS + 3000).to_string();
    let map = headers(&[
        ("x-ratelimit-limit", "5000"),
        ("x-ratelimit-remaining", "4987"),
        ("x-ratelimit-used", "13"),
        ("x-ratelimit-reset", reset.as_str()),
        ("x-ratelimit-resource", "core"),
    ]);
    let parsed = parse(&map, now());
    let observation = only(&parsed);
    assert_eq!(observation.dimension, "core");
    assert_eq!(observation.limit, Some(5000));
    assert_eq!(observation.remaining, Some(4987));
    assert_eq!(observation.used, Some(13));
    assert_eq!(observation.reset_at, Some(after(3000)));
}

#[test]
fn discord_reset_after_preferred() {
    let reset = format!("{}.123", NOW_SECS + 2);
    let map = headers(&[
        ("x-ratelimit-limit", "5"),
        ("x-ratelimit-remaining", "0"),
        ("x-ratelimit-reset", reset.as_str()),
        ("x-ratelimit-reset-after", "1.5"),
        ("x-ratelimit-bucket", "abcd1234"),
    ]);
    let parsed = parse(&map, now());
    let observation = only(&parsed);
    assert_eq!(observation.dimension, "abcd1234");
    assert_eq!(observation.limit, Some(5));
    assert_eq!(observation.remaining, Some(0));
    assert_eq!(
        observation.reset_at,
        Some(now() + Duration::from_millis(1500))
    );
}

#[test]
fn discord_float_epoch_reset() {
    let reset = format!("{}.250", NOW_SECS + 2);
    let map = headers(&[
        ("x-ratelimit-remaining", "4"),
        ("x-ratelimit-reset", reset.as_str()),
    ]);
    let parsed = parse(&map, now());
    assert_eq!(
        only(&parsed).reset_at,
        Some(now() + Duration::from_millis(2250))
    );
}

#[test]
fn reddit_float_counts_infer_limit() {
    let map = headers(&[
        ("x-ratelimit-used", "2"),
        ("x-ratelimit-remaining", "598.0"),
        ("x-ratelimit-reset", "540"),
    ]);
    let parsed = parse(&map, now());
    let observation = only(&parsed);
    assert_eq!(observation.limit, Some(600));
    assert_eq!(observation.remaining, Some(598));
    assert_eq!(observation.reset_at, Some(after(540)));
}

#[test]
fn x_rate_limit_family() {
    let reset = (NOW_SECS + 900).to_string();
    let map = headers(&[
        ("x-rate-limit-limit", "900"),
        ("x-rate-limit-remaining", "899"),
        ("x-rate-limit-reset", reset.as_str()),
    ]);
    let parsed = parse(&map, now());
    let observation = only(&parsed);
    assert_eq!(observation.limit, Some(900));
    assert_eq!(observation.remaining, Some(899));
    assert_eq!(observation.reset_at, Some(after(900)));
}

#[test]
fn shopify_call_limit_and_retry() {
    let map = headers(&[
        ("X-Shopify-Shop-Api-Call-Limit", "32/40"),
        ("Retry-After", "2.0"),
    ]);
    let parsed = parse(&map, now());
    let observation = only(&parsed);
    assert_eq!(observation.limit, Some(40));
    assert_eq!(observation.used, Some(32));
    assert_eq!(observation.remaining, Some(8));
    assert_eq!(parsed.retry_after, Some(after(2)));
}

#[test]
fn gitlab_observed_and_epoch_reset() {
    let reset = (NOW_SECS + 60).to_string();
    let map = headers(&[
        ("RateLimit-Limit", "600"),
        ("RateLimit-Observed", "67"),
        ("RateLimit-Reset", reset.as_str()),
        ("RateLimit-ResetTime", "Fri, 15 Mar 2024 12:05:00 GMT"),
        ("RateLimit-Name", "throttle_authenticated_api"),
    ]);
    let parsed = parse(&map, now());
    let observation = only(&parsed);
    assert_eq!(observation.dimension, "throttle_authenticated_api");
    assert_eq!(observation.limit, Some(600));
    assert_eq!(observation.used, Some(67));
    assert_eq!(observation.remaining, Some(533));
    assert_eq!(observation.reset_at, Some(after(60)));
}

#[test]
fn gitlab_reset_time_is_fallback() {
    let map = headers(&[
        ("RateLimit-Remaining", "5"),
        ("RateLimit-ResetTime", "Fri, 15 Mar 2024 12:05:00 GMT"),
    ]);
    let parsed = parse(&map, now());
    assert_eq!(only(&parsed).reset_at, Some(after(300)));
}

#[test]
fn remaining_above_limit_clamped() {
    let map = headers(&[("x-ratelimit-limit", "10"), ("x-ratelimit-remaining", "25")]);
    let parsed = parse(&map, now());
    assert_eq!(only(&parsed).remaining, Some(10));
}

#[test]
fn malformed_values_ignored() {
    let map = headers(&[
        ("x-ratelimit-limit", "-5"),
        ("x-ratelimit-remaining", "12"),
        ("x-ratelimit-reset", "soon"),
        ("RateLimit", "\"burst\";r=abc"),
        ("Retry-After", "NaN"),
    ]);
    let parsed = parse(&map, now());
    let observation = only(&parsed);
    assert_eq!(observation.dimension, "default");
    assert_eq!(observation.limit, None);
    assert_eq!(observation.remaining, Some(12));
    assert_eq!(observation.reset_at, None);
    assert_eq!(parsed.retry_after, None);
}

#[test]
fn unrelated_headers_give_nothing() {
    let map = headers(&[
        ("content-type", "application/json"),
        ("x-request-id", "abc"),
        ("accept-ranges", "bytes"),
        ("x-ratelimit-global", "true"),
    ]);
    assert!(parse(&map, now()).is_empty());
}

#[test]
fn dimensions_beyond_maximum_dropped() {
    let names: Vec<String> = (0..12)
        .map(|index| format!("x-ratelimit-remaining-d{index}"))
        .collect();
    let pairs: Vec<(&str, &str)> = names.iter().map(|name| (name.as_str(), "1")).collect();
    let map = headers(&pairs);
    let parsed = parse(&map, now());
    assert_eq!(parsed.dimensions().len(), super::MAX_DIMENSIONS);
}

fn header_strategy() -> impl Strategy<Value = (String, Vec<u8>)> {
    let names = prop::sample::select(vec![
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "x-ratelimit-reset-after",
        "x-ratelimit-used",
        "x-ratelimit-resource",
        "x-ratelimit-reset-tokens",
        "x-ratelimit-limit-requests",
        "x-rate-limit-reset",
        "x-shopify-shop-api-call-limit",
        "anthropic-ratelimit-tokens-reset",
        "anthropic-ratelimit-requests-remaining",
        "ratelimit",
        "ratelimit-policy",
        "ratelimit-limit",
        "ratelimit-reset",
        "ratelimit-resettime",
        "ratelimit-name",
        "retry-after",
        "retry-after-ms",
    ]);
    let printable = prop::collection::vec(
        prop::sample::select(b"0123456789.,;=\"-+/:eE nNaAsmhuTZ".to_vec()),
        0..40,
    );
    let bytes = prop::collection::vec(any::<u8>(), 0..40);
    (names.prop_map(String::from), prop_oneof![printable, bytes])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_header_bytes_never_panic(
        pairs in prop::collection::vec(header_strategy(), 0..8),
        now_secs in 0u64..4_000_000_000,
    ) {
        let mut map = HeaderMap::new();
        for (name, value) in &pairs {
            let Ok(value) = HeaderValue::from_bytes(value) else { continue };
            let name = HeaderName::from_bytes(name.as_bytes()).expect("valid header name");
            map.append(name, value);
        }
        let now = UNIX_EPOCH + Duration::from_secs(now_secs);
        let parsed = parse(&map, now);
        for observation in parsed.dimensions() {
            if let (Some(limit), Some(remaining)) = (observation.limit, observation.remaining) {
                prop_assert!(remaining <= limit);
            }
        }

        let tracker = crate::quota::QuotaTracker::new();
        tracker.record_response("p", http::StatusCode::TOO_MANY_REQUESTS, &map);
        tracker.record_response("p", http::StatusCode::OK, &map);
        for partition in tracker.snapshot() {
            for info in partition.dimensions {
                if let Some(usage) = info.usage {
                    prop_assert!((0.0..=1.0).contains(&usage), "usage {usage}");
                }
            }
        }
    }
}

#[test]
fn clock_read_once_per_quota_response() {
    let reads = std::cell::Cell::new(0);
    let clock = || {
        reads.set(reads.get() + 1);
        now()
    };
    let plain = headers(&[("content-type", "text/plain"), ("x-request-id", "7")]);
    assert!(super::parse_with_clock(&plain, clock).is_empty());
    assert_eq!(reads.get(), 0);

    let quota = headers(&[
        ("x-ratelimit-limit", "60"),
        ("x-ratelimit-remaining", "12"),
        ("x-ratelimit-reset", "30"),
    ]);
    let parsed = super::parse_with_clock(&quota, clock);
    assert_eq!(reads.get(), 1);
    assert_eq!(parsed.now, Some(now()));
    assert_eq!(only(&parsed).reset_at, Some(after(30)));
}

#[test]
fn non_ascii_value_ignored() {
    let mut map = HeaderMap::new();
    let value = HeaderValue::from_bytes(b"12\xff").expect("obs-text is a valid value");
    map.insert("x-ratelimit-remaining", value);
    map.insert("x-ratelimit-limit", HeaderValue::from_static("60"));
    let parsed = parse(&map, now());
    let observation = only(&parsed);
    assert_eq!(observation.limit, Some(60));
    assert_eq!(observation.remaining, None);
}
