//! One warning per threshold crossing, per partition and dimension.

use std::time::Duration;

use http::StatusCode;
use tower_quota_queue::quota::QuotaTracker;

use crate::capture::Warnings;
use crate::tracker::headers;

fn legacy(remaining: &str, reset: &str) -> http::HeaderMap {
    headers(&[
        ("x-ratelimit-limit", "100"),
        ("x-ratelimit-remaining", remaining),
        ("x-ratelimit-reset", reset),
    ])
}

#[tokio::test(start_paused = true)]
async fn ten_responses_over_threshold_warn_once() {
    let (warnings, _guard) = Warnings::install();
    let tracker = QuotaTracker::new();
    for remaining in (10..20).rev() {
        tracker.record_response(
            "api.example",
            StatusCode::OK,
            &legacy(&remaining.to_string(), "30"),
        );
    }
    assert_eq!(warnings.count(), 1);

    let fields = &warnings.all()[0];
    assert_eq!(fields["partition"], "api.example");
    assert_eq!(fields["dimension"], "default");
    assert_eq!(fields["usage_percent"], "81.0");
    assert_eq!(fields["limit"], "100");
    assert_eq!(fields["remaining"], "19");
    assert_eq!(fields["reset_in_secs"], "30");
    assert_eq!(fields.len(), 7, "{fields:?}");
}

#[tokio::test(start_paused = true)]
async fn below_threshold_does_not_warn() {
    let (warnings, _guard) = Warnings::install();
    let tracker = QuotaTracker::new();
    let map = headers(&[
        ("x-ratelimit-limit", "1000"),
        ("x-ratelimit-remaining", "201"),
    ]);
    tracker.update_from_headers(&map);
    assert_eq!(warnings.count(), 0);

    let map = headers(&[("x-ratelimit-limit", "5"), ("x-ratelimit-remaining", "1")]);
    tracker.update_from_headers(&map);
    assert_eq!(warnings.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn warning_rearms_below_threshold() {
    let (warnings, _guard) = Warnings::install();
    let tracker = QuotaTracker::new();
    // Without a reset, each response replaces the last, so usage can fall.
    let over = headers(&[
        ("x-ratelimit-limit", "100"),
        ("x-ratelimit-remaining", "10"),
    ]);
    let under = headers(&[
        ("x-ratelimit-limit", "100"),
        ("x-ratelimit-remaining", "50"),
    ]);
    tracker.update_from_headers(&over);
    tracker.update_from_headers(&over);
    assert_eq!(warnings.count(), 1);
    tracker.update_from_headers(&under);
    assert_eq!(warnings.count(), 1);
    tracker.update_from_headers(&over);
    assert_eq!(warnings.count(), 2);
}

#[tokio::test(start_paused = true)]
async fn warning_rearms_after_window_reset() {
    let (warnings, _guard) = Warnings::install();
    let tracker = QuotaTracker::new();
    tracker.update_from_headers(&legacy("10", "30"));
    tracker.update_from_headers(&legacy("5", "29"));
    assert_eq!(warnings.count(), 1);

    tokio::time::advance(Duration::from_secs(30)).await;
    tracker.update_from_headers(&legacy("15", "30"));
    assert_eq!(warnings.count(), 2);
}

#[tokio::test(start_paused = true)]
async fn past_reset_does_not_warn() {
    let (warnings, _guard) = Warnings::install();
    let tracker = QuotaTracker::new();
    let past = tower_quota_queue::clock::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after epoch")
        .as_secs()
        - 5;
    tracker.update_from_headers(&legacy("0", &past.to_string()));
    assert_eq!(warnings.count(), 0);
}

#[tokio::test(start_paused = true)]
async fn each_partition_and_dimension_warns() {
    let (warnings, _guard) = Warnings::install();
    let tracker = QuotaTracker::builder()
        .warning_threshold(0.5)
        .build()
        .expect("valid settings");
    let map = headers(&[
        ("anthropic-ratelimit-requests-limit", "10"),
        ("anthropic-ratelimit-requests-remaining", "4"),
        ("anthropic-ratelimit-tokens-limit", "1000"),
        ("anthropic-ratelimit-tokens-remaining", "100"),
        ("anthropic-ratelimit-output-tokens-limit", "1000"),
        ("anthropic-ratelimit-output-tokens-remaining", "900"),
    ]);
    tracker.record_response("a.example", StatusCode::OK, &map);
    tracker.record_response("b.example", StatusCode::OK, &map);
    tracker.record_response("a.example", StatusCode::OK, &map);

    let mut seen: Vec<(String, String)> = warnings
        .all()
        .into_iter()
        .map(|fields| (fields["partition"].clone(), fields["dimension"].clone()))
        .collect();
    seen.sort();
    let expected = [
        ("a.example", "requests"),
        ("a.example", "tokens"),
        ("b.example", "requests"),
        ("b.example", "tokens"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(partition, dimension)| (partition.to_string(), dimension.to_string()))
        .collect();
    assert_eq!(seen, expected);
}

#[tokio::test(start_paused = true)]
async fn local_count_warns_once() {
    let (warnings, _guard) = Warnings::install();
    let tracker = QuotaTracker::builder()
        .local_limit(10, Duration::from_secs(60))
        .build()
        .expect("valid settings");
    for _ in 0..10 {
        tracker.increment_local_count();
    }
    assert_eq!(warnings.count(), 1);
    let fields = &warnings.all()[0];
    assert_eq!(fields["dimension"], "requests");
    assert_eq!(fields["remaining"], "2");
    assert_eq!(fields["reset_in_secs"], "60");

    tokio::time::advance(Duration::from_secs(60)).await;
    for _ in 0..8 {
        tracker.increment_local_count();
    }
    assert_eq!(warnings.count(), 2);
}

#[tokio::test(start_paused = true)]
async fn malformed_value_logs_debug_without_value() {
    let (events, _guard) = Warnings::install();
    let tracker = QuotaTracker::new();
    let map = headers(&[
        ("x-ratelimit-limit", "60"),
        ("x-ratelimit-remaining", "-3"),
        ("x-ratelimit-reset", "sk-secret-token"),
    ]);
    tracker.update_from_headers(&map);

    let debug = events.at_level(tracing::Level::DEBUG);
    let headers: Vec<&str> = debug
        .iter()
        .map(|fields| fields["header"].as_str())
        .collect();
    assert_eq!(headers, ["x-ratelimit-remaining", "x-ratelimit-reset"]);
    for fields in &debug {
        for value in fields.values() {
            assert!(!value.contains("-3"), "{fields:?}");
            assert!(!value.contains("secret"), "{fields:?}");
        }
    }
    assert_eq!(events.count(), 0);
}
