//! Runs the demo's scenario at a small size: a fake rate-limited LLM server on loopback, the
//! client stack with both layers, an outage and a replay of the queue.

#[path = "../examples/demo/client.rs"]
mod client;
#[path = "../examples/demo/dialect.rs"]
mod dialect;
#[path = "../examples/demo/replay.rs"]
mod replay;
#[path = "../examples/demo/scenario.rs"]
mod scenario;
#[path = "../examples/demo/server.rs"]
mod server;
#[path = "../examples/demo/summary.rs"]
mod summary;
#[path = "../examples/demo/warnings.rs"]
mod warnings;

use std::sync::OnceLock;
use std::time::Duration;

use tracing_subscriber::layer::SubscriberExt;

use crate::dialect::Dialect;
use crate::scenario::DemoConfig;
use crate::server::{OutageMode, ServerConfig};
use crate::warnings::QuotaWarningCounter;

const API_KEY: &str = "sk-demo-test-secret-7f3a";

/// Installs one global subscriber with the warning counter. Tests run in parallel threads, so
/// each run reads only the warnings of its own partition.
fn warning_counter() -> &'static QuotaWarningCounter {
    static COUNTER: OnceLock<QuotaWarningCounter> = OnceLock::new();
    COUNTER.get_or_init(|| {
        let counter = QuotaWarningCounter::default();
        let subscriber = tracing_subscriber::registry().with(counter.clone());
        let _already_set = tracing::subscriber::set_global_default(subscriber);
        counter
    })
}

/// Returns the settings of a 40-request run. The first 10 succeed. The next 8 meet the outage: 3
/// get a 503, 3 a dropped connection, and 2 are completed but lose their response. Of the
/// remaining 22, the window of 30 completions affords 18, and 4 get a 429.
fn small_config(dialect: Dialect, queue_dir: &std::path::Path) -> DemoConfig {
    DemoConfig {
        requests: 40,
        concurrency: 4,
        server: ServerConfig {
            dialect,
            request_limit: 30,
            input_token_limit: 10_000,
            window: Duration::from_secs(2),
            outage_start: 11,
            outage_requests: 8,
            outage_mode: OutageMode::Mixed,
            deduplicate_by_idempotency_key: true,
            api_key: API_KEY.to_owned(),
        },
        queue_dir: queue_dir.join("queue"),
        replay_timeout: Duration::from_secs(20),
    }
}

async fn run_small(dialect: Dialect) -> summary::Summary {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    run_config(small_config(dialect, dir.path())).await
}

async fn run_config(config: DemoConfig) -> summary::Summary {
    scenario::run(&config, warning_counter())
        .await
        .expect("demo run completes")
}

/// Asserts what every dialect must show: nothing lost or duplicated, one warning for the requests
/// dimension, and no API key in the queue's files.
fn assert_clean_run(summary: &summary::Summary) {
    assert_eq!(summary.first.sent, 40, "{summary}");
    assert_eq!(summary.delivery.lost, Vec::<String>::new(), "{summary}");
    assert_eq!(
        summary.delivery.duplicated,
        Vec::<String>::new(),
        "{summary}"
    );
    assert_eq!(summary.delivery.still_queued, 0, "{summary}");
    assert_eq!(summary.first.not_queued, 0, "{summary}");
    assert_eq!(summary.first.queued, 12, "{summary}");
    assert_eq!(summary.first.succeeded, 28, "{summary}");
    assert_eq!(summary.replay.replayed, 12, "{summary}");
    assert_eq!(summary.replay.failed_attempts, 0, "{summary}");
    assert_eq!(summary.server.ok, 40, "{summary}");
    assert_eq!(summary.server.lost_responses, 2, "{summary}");
    assert_eq!(summary.server.deduplicated, 2, "{summary}");
    assert_eq!(summary.server.unauthorized, 0, "{summary}");
    assert_eq!(summary.quota_warnings, 1, "{summary}");
    assert!(!summary.secret_on_disk, "{summary}");
    assert!(!summary.failed(), "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_openai_loses_nothing_and_warns() {
    let summary = run_small(Dialect::Openai).await;
    assert_clean_run(&summary);
    let dimensions: Vec<&str> = summary
        .quota
        .iter()
        .map(|status| status.dimension.as_str())
        .collect();
    assert_eq!(dimensions, ["requests", "tokens"], "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_anthropic_loses_nothing_and_warns() {
    let summary = run_small(Dialect::Anthropic).await;
    assert_clean_run(&summary);
    assert_eq!(summary.quota.len(), 4, "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_github_loses_nothing_and_warns() {
    let summary = run_small(Dialect::Github).await;
    assert_clean_run(&summary);
    let dimensions: Vec<&str> = summary
        .quota
        .iter()
        .map(|status| status.dimension.as_str())
        .collect();
    assert_eq!(dimensions, ["core"], "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_ietf_loses_nothing_and_warns() {
    let summary = run_small(Dialect::Ietf).await;
    assert_clean_run(&summary);
    let dimensions: Vec<&str> = summary
        .quota
        .iter()
        .map(|status| status.dimension.as_str())
        .collect();
    assert_eq!(dimensions, ["requests", "tokens"], "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_ignored_idempotency_key_duplicates() {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let mut config = small_config(Dialect::Openai, dir.path());
    config.server.deduplicate_by_idempotency_key = false;

    let summary = run_config(config).await;

    // The two requests whose response was lost are completed again by their replay.
    assert_eq!(summary.delivery.duplicated.len(), 2, "{summary}");
    assert_eq!(summary.delivery.lost, Vec::<String>::new(), "{summary}");
    assert_eq!(summary.server.deduplicated, 0, "{summary}");
    assert_eq!(summary.server.ok, 42, "{summary}");
    assert!(summary.failed(), "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_zero_replay_timeout_keeps_queue() {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let mut config = small_config(Dialect::Openai, dir.path());
    config.replay_timeout = Duration::ZERO;

    let summary = run_config(config).await;

    // The worker stops at once, so at most a replay it had already started completes. Every other
    // queued request, including those waiting for Retry-After, is still queued and not lost.
    assert_eq!(summary.first.queued, 12, "{summary}");
    assert_eq!(
        summary.replay.replayed + summary.delivery.still_queued,
        12,
        "{summary}"
    );
    assert_eq!(summary.delivery.dead_lettered, 0, "{summary}");
    assert_eq!(summary.delivery.lost, Vec::<String>::new(), "{summary}");
    assert_eq!(
        summary.delivery.duplicated,
        Vec::<String>::new(),
        "{summary}"
    );
    assert!(!summary.failed(), "{summary}");
}
