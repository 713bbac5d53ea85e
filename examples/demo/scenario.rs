//! One demo run: start the server, send the requests, replay the queue, check the ledger.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;
use tower::ServiceBuilder;
use tower_quota_queue::BoxError;

use crate::client::{self, FirstAttempt};
use crate::server::{FakeLlmServer, ServerConfig};
use crate::summary::{Delivery, Summary};
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

/// Runs the demo once and returns its summary.
pub(crate) async fn run(
    config: &DemoConfig,
    warnings: &QuotaWarningCounter,
) -> Result<Summary, BoxError> {
    let started = Instant::now();
    let server = FakeLlmServer::start(config.server.clone()).await?;
    let endpoint = server.endpoint();
    tracing::info!(%endpoint, dialect = %config.server.dialect, "fake LLM server listening");

    let http_client = hyper_util::client::legacy::Client::builder(
        hyper_util::rt::TokioExecutor::new(),
    )
    .build_http();
    let token = client::bearer_token(&config.server.api_key)?;
    let service = ServiceBuilder::new()
        .map_request(client::add_credentials(token))
        .service(http_client);

    tracing::info!(
        requests = config.requests,
        concurrency = config.concurrency,
        "sending chat completion requests"
    );
    let outcomes =
        client::send_all(service, &endpoint, config.requests, config.concurrency).await;

    let sent: Vec<String> = (0..config.requests).map(client::request_id).collect();
    let queued_ids = HashSet::new();
    let delivery = Delivery::check(&sent, &server.answered(), &queued_ids);
    let partition = endpoint_authority(&endpoint);
    Ok(Summary {
        dialect: config.server.dialect.to_string(),
        sent: outcomes.len(),
        succeeded_first_time: count(&outcomes, |outcome| *outcome == FirstAttempt::Succeeded),
        queued: count(&outcomes, |outcome| *outcome == FirstAttempt::Queued),
        not_queued: count(&outcomes, |outcome| {
            matches!(outcome, FirstAttempt::NotQueued(_))
        }),
        replayed: 0,
        expired: 0,
        dead_lettered: 0,
        delivery,
        server: server.stats(),
        quota_warnings: warnings.count_for(&partition),
        quota: Vec::new(),
        secret_on_disk: dir_contains(&config.queue_dir, config.server.api_key.as_bytes()),
        queue_dir: config.queue_dir.clone(),
        queue_dir_kept: true,
        elapsed: started.elapsed(),
    })
}

fn count(outcomes: &[FirstAttempt], predicate: impl Fn(&FirstAttempt) -> bool) -> usize {
    outcomes.iter().filter(|outcome| predicate(outcome)).count()
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
