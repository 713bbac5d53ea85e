//! Parses the demo's command line: rejected values and the replay timeout derived from the quota.

// The demo's modules are shared with the example, and this test uses only part of them.
#[path = "../examples/demo/args.rs"]
mod args;
#[allow(dead_code)]
#[path = "../examples/demo/client.rs"]
mod client;
#[allow(dead_code)]
#[path = "../examples/demo/dialect.rs"]
mod dialect;
#[allow(dead_code)]
#[path = "../examples/demo/server.rs"]
mod server;

use std::time::Duration;

use clap::Parser;

use crate::args::{default_replay_timeout, Args};

#[test]
fn concurrency_zero_is_rejected() {
    let error = Args::try_parse_from(["demo", "--concurrency", "0"])
        .expect_err("--concurrency 0 must be rejected");
    assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
    let message = error.to_string();
    assert!(
        message.contains("invalid value '0' for '--concurrency <CONCURRENCY>'"),
        "the error names the option: {message}"
    );
    assert!(
        message.contains("must be at least 1"),
        "the error states the minimum: {message}"
    );
}

#[test]
fn concurrency_non_number_is_rejected() {
    let error = Args::try_parse_from(["demo", "--concurrency", "many"])
        .expect_err("--concurrency many must be rejected");
    assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
    assert!(
        error
            .to_string()
            .contains("expected a whole number of at least 1"),
        "the error states the expected value: {error}"
    );
}

#[test]
fn concurrency_one_is_accepted() {
    let args = Args::try_parse_from(["demo", "--concurrency", "1"]).expect("valid arguments");
    assert_eq!(args.concurrency, 1);
}

#[test]
fn replay_timeout_default_covers_default_run() {
    let args = Args::try_parse_from(["demo"]).expect("valid arguments");
    // 200 requests at 150 per 5 s window need 2 windows, and the timeout adds 2 more and 30 s.
    assert_eq!(args.replay_timeout(), Duration::from_secs(50));
}

#[test]
fn replay_timeout_default_scales_with_requests() {
    let args = Args::try_parse_from(["demo", "--requests", "2000"]).expect("valid arguments");
    // 2000 requests at 150 per 5 s window need 14 windows, and the timeout adds 2 more and 30 s.
    assert_eq!(args.replay_timeout(), Duration::from_secs(110));
}

#[test]
fn replay_timeout_option_overrides_default() {
    let args = Args::try_parse_from(["demo", "--requests", "2000", "--replay-timeout", "0s"])
        .expect("valid arguments");
    assert_eq!(args.replay_timeout(), Duration::ZERO);
}

#[test]
fn replay_timeout_default_counts_output_tokens() {
    // 4000 tokens give 1000 output tokens a window, so at most 15 requests of 64 output tokens:
    // 100 requests need 7 windows.
    let timeout = default_replay_timeout(100, 150, 4000, Duration::from_secs(1));
    assert_eq!(timeout, Duration::from_secs(9 + 30));
}

#[test]
fn replay_timeout_default_without_capacity() {
    let timeout = default_replay_timeout(100, 0, 40_000, Duration::from_secs(5));
    assert_eq!(timeout, Duration::from_secs(10 + 30));
}

#[test]
fn replay_timeout_default_saturates_on_huge_window() {
    let timeout = default_replay_timeout(10, 1, 40_000, Duration::MAX);
    assert_eq!(timeout, Duration::MAX);
}
