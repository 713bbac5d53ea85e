//! One demo run: start the server, send the requests, replay the queue, check the ledger.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tower::ServiceBuilder;
use tower_quota_queue::quota::{QuotaLayer, QuotaTracker};
use tower_quota_queue::retry_queue::{
    RetryQueue, RetryQueueBody, RetryQueueConfig, RetryQueueLayer,
};
use tower_quota_queue::BoxError;

use crate::client::{self, FirstAttempt};
use crate::replay::{self, StoredIds};
use crate::server::{FakeLlmServer, ServerConfig};
use crate::summary::{Delivery, DimensionStatus, FirstAttemptCounts, Summary};
use crate::warnings::QuotaWarningCounter;

/// The settings of one run.
#[derive(Clone, Debug)]
pub(crate) struct DemoConfig {
    pub(crate) requests: usize,
    pub(crate) concurrency: usize,
    pub(crate) server: ServerConfig,
    pub(crate) queue_dir: PathBuf,
    /// How long the replay may take before the demo gives up and reports what is still queued.
    pub(crate) replay_timeout: Duration,
}

/// The request body type below `RetryQueueLayer`.
type QueueBody = RetryQueueBody<Full<Bytes>>;

/// Runs the demo once and returns its summary.
pub(crate) async fn run(
    config: &DemoConfig,
    warnings: &QuotaWarningCounter,
) -> Result<Summary, BoxError> {
    let started = Instant::now();
    let server = FakeLlmServer::start(config.server.clone()).await?;
    let endpoint = server.endpoint();
    tracing::info!(%endpoint, dialect = %config.server.dialect, "fake LLM server listening");

    let tracker = QuotaTracker::new();
    let queue = RetryQueue::open(RetryQueueConfig::new().path(&config.queue_dir))?;
    let http_client: Client<_, QueueBody> = Client::builder(TokioExecutor::new()).build_http();
    let token = client::bearer_token(&config.server.api_key)?;
    // Quota tracking and credentials sit below the queue: stored requests never contain the key,
    // and every replay updates the tracker and gets the key again on its way out.
    let upstream = ServiceBuilder::new()
        .layer(QuotaLayer::new(tracker.clone()))
        .map_request(client::add_credentials(token))
        .service(http_client);
    let service = ServiceBuilder::new()
        .layer(RetryQueueLayer::new(queue.clone()))
        .service(upstream.clone());

    let sent = client::request_ids(config.requests);
    let outcomes = client::send_all(service, &endpoint, &sent, config.concurrency).await;
    log_first_attempts(&outcomes, queue.len());

    let partition = endpoint_authority(&endpoint);
    let totals = replay::drain(
        &queue,
        upstream,
        &tracker,
        config.concurrency,
        config.replay_timeout,
    )
    .await?;

    let stored = inspect_queue(queue)?;

    let delivery = Delivery::check(&sent, &server.completed(), &stored);
    Ok(Summary {
        dialect: config.server.dialect.to_string(),
        first: FirstAttemptCounts::of(&outcomes),
        replay: totals,
        delivery,
        server: server.stats(),
        quota_warnings: warnings.count_for(&partition),
        quota: quota_status(&tracker, &partition),
        secret_on_disk: dir_contains(&config.queue_dir, config.server.api_key.as_bytes()),
        queue_dir: config.queue_dir.clone(),
        queue_dir_kept: true,
        elapsed: started.elapsed(),
    })
}

/// Returns the request ids still stored in the queue, then closes the queue so that sled writes
/// everything to its files.
fn inspect_queue(queue: RetryQueue) -> Result<StoredIds, BoxError> {
    replay::stored_request_ids(&queue)
}

fn log_first_attempts(outcomes: &[FirstAttempt], pending: usize) {
    let counts = FirstAttemptCounts::of(outcomes);
    tracing::info!(
        succeeded = counts.succeeded,
        queued = counts.queued,
        not_queued = counts.not_queued,
        pending,
        "first attempts finished"
    );
}

/// Returns every quota dimension of `partition` as the tracker saw it last.
fn quota_status(tracker: &QuotaTracker, partition: &str) -> Vec<DimensionStatus> {
    let now = tower_quota_queue::clock::now();
    let snapshot = tracker.snapshot();
    let Some(entry) = snapshot.iter().find(|entry| entry.partition == partition) else {
        return Vec::new();
    };
    entry
        .dimensions
        .iter()
        .map(|info| DimensionStatus {
            dimension: info.dimension.clone(),
            limit: info.limit,
            remaining: info.remaining,
            usage: info.usage,
            reset_in: info
                .reset_at
                .and_then(|reset_at| reset_at.duration_since(now).ok()),
        })
        .collect()
}

/// Returns the `host:port` of an endpoint URL, the partition key that `ByAuthority` derives.
fn endpoint_authority(endpoint: &str) -> String {
    endpoint
        .parse::<http::Uri>()
        .ok()
        .and_then(|uri| uri.authority().map(|authority| authority.to_string()))
        .unwrap_or_default()
}

/// Returns whether any file under `dir` contains `needle`; unreadable files count as clean.
pub(crate) fn dir_contains(dir: &Path, needle: &[u8]) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|entry| {
        let path = entry.path();
        if path.is_dir() {
            return dir_contains(&path, needle);
        }
        std::fs::read(&path).is_ok_and(|bytes| {
            !needle.is_empty() && bytes.windows(needle.len()).any(|window| window == needle)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_contains_finds_nested_secret() {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let nested = dir.path().join("blobs");
        std::fs::create_dir(&nested).expect("create a nested directory");
        std::fs::write(nested.join("7"), b"header\0sk-secret-42\0tail").expect("write a file");

        assert!(dir_contains(dir.path(), b"sk-secret-42"));
        assert!(!dir_contains(dir.path(), b"sk-secret-43"));
        assert!(!dir_contains(&dir.path().join("missing"), b"sk-secret-42"));
    }

    #[test]
    fn endpoint_authority_is_host_and_port() {
        assert_eq!(
            endpoint_authority("http://127.0.0.1:8080/v1/chat/completions"),
            "127.0.0.1:8080"
        );
        assert_eq!(endpoint_authority("not a url"), "");
    }
}
