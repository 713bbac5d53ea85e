//! Rules of `QuotaTracker`, under paused tokio time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use tower_quota_queue::clock;
use tower_quota_queue::quota::{ConfigError, QuotaSource, QuotaTracker};

pub(crate) fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        let name = HeaderName::from_bytes(name.as_bytes()).expect("valid header name");
        let value = HeaderValue::from_str(value).expect("valid header value");
        map.append(name, value);
    }
    map
}

fn legacy(limit: &str, remaining: &str, reset: &str) -> HeaderMap {
    headers(&[
        ("x-ratelimit-limit", limit),
        ("x-ratelimit-remaining", remaining),
        ("x-ratelimit-reset", reset),
    ])
}

fn epoch_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .expect("after epoch")
        .as_secs()
}

#[tokio::test(start_paused = true)]
async fn reset_delta_gives_now_plus_delta() {
    let tracker = QuotaTracker::new();
    let now = clock::now();
    let info = tracker
        .update_from_headers(&legacy("60", "12", "30"))
        .expect("quota headers");
    assert_eq!(info.reset_at, Some(now + Duration::from_secs(30)));
    assert_eq!(info.usage, Some(0.8));
    assert_eq!(info.limit, Some(60));
    assert_eq!(info.remaining, Some(12));
    assert_eq!(info.source, QuotaSource::Headers);
}

#[tokio::test(start_paused = true)]
async fn reset_epoch_seconds_parsed_as_absolute() {
    let tracker = QuotaTracker::new();
    let reset = epoch_secs(clock::now()) + 30;
    let info = tracker
        .update_from_headers(&legacy("60", "12", &reset.to_string()))
        .expect("quota headers");
    assert_eq!(info.reset_at, Some(UNIX_EPOCH + Duration::from_secs(reset)));
    assert_eq!(info.usage, Some(0.8));
}

#[tokio::test(start_paused = true)]
async fn reset_epoch_millis_parsed_as_absolute() {
    let tracker = QuotaTracker::new();
    let reset = epoch_secs(clock::now()) + 30;
    let info = tracker
        .update_from_headers(&legacy("60", "12", &(reset * 1000).to_string()))
        .expect("quota headers");
    assert_eq!(info.reset_at, Some(UNIX_EPOCH + Duration::from_secs(reset)));
    assert_eq!(info.usage, Some(0.8));
}

#[tokio::test(start_paused = true)]
async fn usage_examples_and_threshold() {
    let cases = [
        ("1000", "150", 0.85, true),
        ("5", "1", 0.8, true),
        ("1000", "201", 1.0 - 0.201, false),
    ];
    for (limit, remaining, usage, over) in cases {
        let tracker = QuotaTracker::new();
        let info = tracker
            .update_from_headers(&legacy(limit, remaining, "30"))
            .expect("quota headers");
        assert_eq!(info.usage, Some(usage), "{limit}/{remaining}");
        assert_eq!(tracker.check_threshold(usage), over, "{limit}/{remaining}");
    }
}

#[test]
fn check_threshold_is_inclusive() {
    let tracker = QuotaTracker::new();
    assert!(tracker.check_threshold(0.8));
    assert!(tracker.check_threshold(1.0));
    assert!(!tracker.check_threshold(0.7999));
    assert!(!tracker.check_threshold(f64::NAN));
}

#[test]
fn no_quota_headers_give_none() {
    let tracker = QuotaTracker::new();
    let map = headers(&[("content-type", "text/plain"), ("x-request-id", "7")]);
    assert_eq!(tracker.update_from_headers(&map), None);
    let status = tracker.status();
    assert_eq!(status.source, QuotaSource::LocalCount);
    assert_eq!(status.usage, None);
    assert_eq!(status.limit, None);
}

#[tokio::test(start_paused = true)]
async fn limit_zero_gives_no_usage() {
    let tracker = QuotaTracker::new();
    let info = tracker
        .update_from_headers(&legacy("0", "0", "30"))
        .expect("quota headers");
    assert_eq!(info.limit, Some(0));
    assert_eq!(info.usage, None);
}

#[tokio::test(start_paused = true)]
async fn remaining_above_limit_clamps() {
    let tracker = QuotaTracker::new();
    let info = tracker
        .update_from_headers(&legacy("10", "25", "30"))
        .expect("quota headers");
    assert_eq!(info.remaining, Some(10));
    assert_eq!(info.usage, Some(0.0));
}

#[tokio::test(start_paused = true)]
async fn garbage_keeps_last_valid_state() {
    let tracker = QuotaTracker::new();
    let valid = tracker
        .update_from_headers(&legacy("60", "12", "30"))
        .expect("quota headers");
    let garbage = legacy("-60", "twelve", "NaN");
    assert_eq!(tracker.update_from_headers(&garbage), None);
    let partial = headers(&[("x-ratelimit-limit", "60"), ("x-ratelimit-remaining", "-3")]);
    let after = tracker
        .update_from_headers(&partial)
        .expect("limit is valid");
    assert_eq!(after, valid);
    assert!(after.usage.expect("usage").is_finite());
}

#[tokio::test(start_paused = true)]
async fn out_of_order_keeps_lowest_remaining() {
    let tracker = QuotaTracker::new();
    tracker.update_from_headers(&legacy("60", "12", "30"));
    let late = tracker
        .update_from_headers(&legacy("60", "30", "29"))
        .expect("quota headers");
    assert_eq!(late.remaining, Some(12));
    assert_eq!(late.usage, Some(0.8));

    tokio::time::advance(Duration::from_secs(31)).await;
    let next_window = tracker
        .update_from_headers(&legacy("60", "50", "30"))
        .expect("quota headers");
    assert_eq!(next_window.remaining, Some(50));
}

#[tokio::test(start_paused = true)]
async fn elapsed_reset_reports_full_quota() {
    let tracker = QuotaTracker::new();
    tracker.update_from_headers(&legacy("60", "0", "30"));
    assert!(tracker.blocked_until("").is_some());

    tokio::time::advance(Duration::from_secs(30)).await;
    let status = tracker.status();
    assert_eq!(status.remaining, Some(60));
    assert_eq!(status.reset_at, None);
    assert_eq!(status.usage, Some(0.0));
    assert_eq!(tracker.blocked_until(""), None);
}

#[tokio::test(start_paused = true)]
async fn past_reset_means_no_wait() {
    let tracker = QuotaTracker::new();
    let past = epoch_secs(clock::now()) - 10;
    let info = tracker
        .update_from_headers(&legacy("60", "0", &past.to_string()))
        .expect("quota headers");
    assert_eq!(info.remaining, Some(60));
    assert_eq!(info.reset_at, None);
    assert_eq!(tracker.blocked_until(""), None);
}

#[tokio::test(start_paused = true)]
async fn exhausted_dimension_blocks_until_reset() {
    let tracker = QuotaTracker::new();
    let now = clock::now();
    tracker.update_from_headers(&legacy("60", "0", "30"));
    assert_eq!(
        tracker.blocked_until(""),
        Some(now + Duration::from_secs(30))
    );
}

#[tokio::test(start_paused = true)]
async fn too_many_requests_overrides_remaining() {
    let tracker = QuotaTracker::new();
    let now = clock::now();
    let shopify = headers(&[
        ("x-shopify-shop-api-call-limit", "1/40"),
        ("retry-after", "2.0"),
    ]);
    tracker.record_response("shop.example", StatusCode::TOO_MANY_REQUESTS, &shopify);
    let deadline = now + Duration::from_secs(2);
    assert_eq!(tracker.blocked_until("shop.example"), Some(deadline));
    let status = tracker.status_of("shop.example").expect("partition seen");
    assert_eq!(status.remaining, Some(39));
    assert_eq!(status.retry_after, Some(deadline));

    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(tracker.blocked_until("shop.example"), None);
}

#[tokio::test(start_paused = true)]
async fn too_many_requests_uses_exhausted_reset() {
    let tracker = QuotaTracker::new();
    let now = clock::now();
    let map = headers(&[
        ("x-ratelimit-remaining-requests", "0"),
        ("x-ratelimit-reset-requests", "20s"),
        ("x-ratelimit-remaining-tokens", "500"),
        ("x-ratelimit-reset-tokens", "6m0s"),
    ]);
    tracker.record_response("api", StatusCode::TOO_MANY_REQUESTS, &map);
    assert_eq!(
        tracker.blocked_until("api"),
        Some(now + Duration::from_secs(20))
    );
}

#[tokio::test(start_paused = true)]
async fn too_many_requests_without_deadline() {
    let tracker = QuotaTracker::new();
    let now = clock::now();
    tracker.record_response("api", StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new());
    assert_eq!(
        tracker.blocked_until("api"),
        Some(now + Duration::from_secs(1))
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_blocks_any_status() {
    let tracker = QuotaTracker::new();
    let now = clock::now();
    let map = headers(&[("retry-after", "120")]);
    tracker.record_response("api", StatusCode::SERVICE_UNAVAILABLE, &map);
    assert_eq!(
        tracker.blocked_until("api"),
        Some(now + Duration::from_secs(120))
    );
    assert_eq!(tracker.blocked_until("other"), None);
}

#[tokio::test(start_paused = true)]
async fn status_reports_most_used_dimension() {
    let tracker = QuotaTracker::new();
    let map = headers(&[
        ("x-ratelimit-limit-requests", "60"),
        ("x-ratelimit-remaining-requests", "59"),
        ("x-ratelimit-reset-requests", "1s"),
        ("x-ratelimit-limit-tokens", "1000"),
        ("x-ratelimit-remaining-tokens", "100"),
        ("x-ratelimit-reset-tokens", "6m0s"),
    ]);
    let info = tracker.update_from_headers(&map).expect("quota headers");
    assert_eq!(info.dimension, "tokens");
    assert_eq!(info.usage, Some(0.9));

    let snapshot = tracker.snapshot();
    assert_eq!(snapshot.len(), 1);
    let dimensions: Vec<&str> = snapshot[0]
        .dimensions
        .iter()
        .map(|info| info.dimension.as_str())
        .collect();
    assert_eq!(dimensions, ["requests", "tokens"]);
}

#[tokio::test(start_paused = true)]
async fn local_limit_counts_and_blocks() {
    let tracker = QuotaTracker::builder()
        .local_limit(5, Duration::from_secs(60))
        .build()
        .expect("valid settings");
    let start = clock::now();
    for _ in 0..4 {
        tracker.increment_local_count();
    }
    let status = tracker.status();
    assert_eq!(status.source, QuotaSource::LocalCount);
    assert_eq!(status.dimension, "requests");
    assert_eq!(status.limit, Some(5));
    assert_eq!(status.remaining, Some(1));
    assert_eq!(status.usage, Some(0.8));
    assert_eq!(tracker.blocked_until(""), None);

    tracker.increment_local_count();
    assert_eq!(
        tracker.blocked_until(""),
        Some(start + Duration::from_secs(60))
    );

    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(tracker.blocked_until(""), None);
    assert_eq!(tracker.status().remaining, Some(5));
}

#[tokio::test(start_paused = true)]
async fn headers_take_precedence_over_local() {
    let tracker = QuotaTracker::builder()
        .local_limit(1, Duration::from_secs(60))
        .build()
        .expect("valid settings");
    tracker.update_from_headers(&legacy("100", "90", "30"));
    tracker.increment_local_count();
    tracker.increment_local_count();
    assert_eq!(tracker.blocked_until(""), None);
    assert_eq!(tracker.status().source, QuotaSource::Headers);
}

#[test]
fn builder_rejects_invalid_threshold() {
    for threshold in [0.0, -0.1, 1.5, f64::NAN, f64::INFINITY] {
        let error = QuotaTracker::builder()
            .warning_threshold(threshold)
            .build()
            .expect_err("invalid threshold");
        assert_eq!(error.field(), "warning_threshold", "{threshold}");
    }
    let tracker = QuotaTracker::builder()
        .warning_threshold(1.0)
        .build()
        .expect("1 is valid");
    assert_eq!(tracker.warning_threshold().to_bits(), 1.0f64.to_bits());
}

#[test]
fn builder_rejects_empty_local_limit() {
    let zero_limit = QuotaTracker::builder()
        .local_limit(0, Duration::from_secs(1))
        .build();
    assert_eq!(
        zero_limit.expect_err("zero limit"),
        ConfigError::LocalLimit {
            limit: 0,
            window: Duration::from_secs(1)
        }
    );
    let zero_window = QuotaTracker::builder()
        .local_limit(1, Duration::ZERO)
        .build();
    assert_eq!(zero_window.expect_err("zero window").field(), "local_limit");
}

#[test]
fn partitioner_closure_keys_requests() {
    let tracker = QuotaTracker::builder()
        .partitioner(|_: &Uri, headers: &HeaderMap| {
            headers
                .get("x-tenant")
                .and_then(|value| value.to_str().ok())
                .unwrap_or("")
                .to_owned()
        })
        .build()
        .expect("valid settings");
    let uri: Uri = "https://api.example.com/v1".parse().expect("valid uri");
    let map = headers(&[("x-tenant", "blue")]);
    assert_eq!(tracker.partition_key(&uri, &map), "blue");
    assert_eq!(
        QuotaTracker::new().partition_key(&uri, &map),
        "api.example.com"
    );
}

#[tokio::test(start_paused = true)]
async fn snapshot_sorted_and_reset_clears() {
    let tracker = QuotaTracker::new();
    tracker.record_response("b.example", StatusCode::OK, &legacy("10", "5", "30"));
    tracker.record_response("a.example", StatusCode::OK, &legacy("10", "0", "30"));
    let snapshot = tracker.snapshot();
    let keys: Vec<&str> = snapshot
        .iter()
        .map(|partition| partition.partition.as_str())
        .collect();
    assert_eq!(keys, ["a.example", "b.example"]);
    assert!(snapshot[0].blocked_until.is_some());
    assert_eq!(snapshot[1].blocked_until, None);
    assert_eq!(snapshot[1].dimensions[0].usage, Some(0.5));

    tracker.reset();
    assert_eq!(tracker.blocked_until("a.example"), None);
    let cleared = tracker.status_of("b.example").expect("partition kept");
    assert_eq!(cleared.usage, None);
    assert_eq!(cleared.source, QuotaSource::LocalCount);
}

#[test]
fn clones_share_state() {
    let tracker = QuotaTracker::new();
    let clone = tracker.clone();
    clone.update_from_headers(&legacy("10", "5", "30"));
    assert_eq!(tracker.status().usage, Some(0.5));
}

#[test]
fn concurrent_updates_keep_lowest_remaining() {
    let tracker = QuotaTracker::new();
    let workers: Vec<_> = (0..4u64)
        .map(|worker| {
            let tracker = tracker.clone();
            std::thread::spawn(move || {
                for step in (0..250u64).rev() {
                    let remaining = (step * 4 + worker + 100).to_string();
                    let map = legacy("10000", &remaining, "3600");
                    tracker.record_response("api", StatusCode::OK, &map);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("worker finished");
    }
    let status = tracker.status_of("api").expect("partition seen");
    assert_eq!(status.remaining, Some(100));
    assert_eq!(status.limit, Some(10_000));
}

#[tokio::test(start_paused = true)]
async fn local_limit_with_huge_window_blocks() {
    let tracker = QuotaTracker::builder()
        .local_limit(1, Duration::MAX)
        .build()
        .unwrap();

    tracker.record_request("p");
    tracker.record_request("p");

    let info = tracker.status_of("p").unwrap();
    assert_eq!(info.limit, Some(1));
    assert_eq!(info.remaining, Some(0));
    assert!(tracker.blocked_until("p").is_some());
}

#[tokio::test(start_paused = true)]
async fn status_reports_most_used_partition() {
    let tracker = QuotaTracker::new();
    tracker.record_response("a.test", StatusCode::OK, &legacy("100", "90", "60"));
    tracker.record_response("b.test", StatusCode::OK, &legacy("100", "5", "60"));
    tracker.record_response("c.test", StatusCode::OK, &legacy("100", "50", "60"));

    let status = tracker.status();
    assert_eq!(status.limit, Some(100));
    assert_eq!(status.remaining, Some(5));
    assert_eq!(status.source, QuotaSource::Headers);
}

#[tokio::test(start_paused = true)]
async fn idle_partitions_evicted_past_the_bound() {
    use tower::{Layer, ServiceExt};
    use tower_quota_queue::quota::QuotaLayer;

    let tracker = QuotaTracker::new();
    // One partition that blocks must survive every eviction.
    let mut exhausted = HeaderMap::new();
    exhausted.insert(http::header::RETRY_AFTER, "600".parse().unwrap());
    tracker.record_response("blocked.test", StatusCode::TOO_MANY_REQUESTS, &exhausted);

    let inner = tower::service_fn(|_: http::Request<()>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(()))
    });
    let service = QuotaLayer::new(tracker.clone()).layer(inner);
    // A client that calls one host per tenant, such as a webhook sender, meets many authorities.
    for tenant in 0..12_000 {
        let request = http::Request::get(format!("http://tenant-{tenant}.example.test/hook"))
            .body(())
            .unwrap();
        service.clone().oneshot(request).await.unwrap();
    }

    let count = tracker.partition_count();
    assert!(count <= 10_000, "{count} partitions kept");
    assert!(count >= 9_000, "{count} partitions kept");
    assert!(tracker.blocked_until("blocked.test").is_some());
    assert!(tracker.status_of("tenant-11999.example.test").is_some());
}
