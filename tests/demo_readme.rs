//! Compiles the README's code snippets, checks that the README shows exactly this code, and runs
//! them against the demo's fake server.

// The demo's modules are shared with the example, and this test uses only part of them.
#[allow(dead_code)]
#[path = "../examples/demo/dialect.rs"]
mod dialect;
#[allow(dead_code)]
#[path = "../examples/demo/server.rs"]
mod server;

// README snippet start
use std::path::Path;

use bytes::Bytes;
use http::{header, HeaderValue, Request};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};
use tower_quota_queue::quota::{QuotaLayer, QuotaTracker};
use tower_quota_queue::retry_queue::{
    QueuedId, ReplayReport, RetryQueue, RetryQueueBody, RetryQueueConfig, RetryQueueLayer,
};
use tower_quota_queue::BoxError;

type Body = RetryQueueBody<Full<Bytes>>;

async fn send_and_replay(
    queue_dir: &Path,
    token: HeaderValue,
    url: &str,
    body: Bytes,
) -> Result<ReplayReport, BoxError> {
    let tracker = QuotaTracker::builder().warning_threshold(0.8).build()?;
    let queue = RetryQueue::open(RetryQueueConfig::new().path(queue_dir))?;
    let client: Client<_, Body> = Client::builder(TokioExecutor::new()).build_http();
    let upstream = ServiceBuilder::new()
        .layer(QuotaLayer::new(tracker.clone()))
        .map_request(move |mut request: Request<Body>| {
            request
                .headers_mut()
                .insert(header::AUTHORIZATION, token.clone());
            request
        })
        .service(client);
    let service = ServiceBuilder::new()
        .layer(RetryQueueLayer::new(queue.clone()))
        .service(upstream.clone());

    let request = Request::post(url).body(Full::new(body))?;
    match service.oneshot(request).await {
        // A retryable response (429, 502, 503, 504) comes back as it is, marked with its queued id.
        Ok(response) => match response.extensions().get::<QueuedId>() {
            Some(QueuedId(id)) => println!("status {}, queued as {id}", response.status()),
            None => println!("status {}", response.status()),
        },
        Err(error) => println!("{error}"), // the error states whether it was queued, and its id
    }

    // Later, once the upstream recovers: replay through the same stack below the queue.
    let mut replay = upstream;
    let report = queue.process_all(&mut replay).await?;
    println!(
        "replayed {}, still queued {}",
        report.succeeded,
        queue.len()
    );
    Ok(report)
}
// README snippet end

use std::time::Duration;

use tokio::time::Instant;
use tower::Service;
use tower_quota_queue::retry_queue::WorkerReport;

use crate::dialect::Dialect;
use crate::server::{FakeLlmServer, OutageMode, ServerConfig};

/// Sends one request through the README's stack while the README's replay worker runs, and
/// returns the worker's report.
async fn send_with_worker(
    queue_dir: &Path,
    token: HeaderValue,
    url: &str,
    body: Bytes,
) -> Result<WorkerReport, BoxError> {
    // The same stack as in `send_and_replay`.
    let tracker = QuotaTracker::builder().warning_threshold(0.8).build()?;
    let queue = RetryQueue::open(RetryQueueConfig::new().path(queue_dir))?;
    let client: Client<_, Body> = Client::builder(TokioExecutor::new()).build_http();
    let upstream = ServiceBuilder::new()
        .layer(QuotaLayer::new(tracker.clone()))
        .map_request(move |mut request: Request<Body>| {
            request
                .headers_mut()
                .insert(header::AUTHORIZATION, token.clone());
            request
        })
        .service(client);
    let service = ServiceBuilder::new()
        .layer(RetryQueueLayer::new(queue.clone()))
        .service(upstream.clone());

    // README worker snippet start
    let worker = queue.replay_worker(upstream).quota_tracker(tracker).spawn();
    // The program sends its requests through `service` while the worker runs.
    // README worker snippet pause
    send_and_wait_for_replay(service, &queue, Request::post(url).body(Full::new(body))?).await?;
    // README worker snippet resume
    // At exit: stop taking items and let running replays finish.
    let report = worker.shutdown().await;
    // README worker snippet end
    Ok(report)
}

/// Sends `request` through `service`, then waits until the queue is empty, at most 30 s.
async fn send_and_wait_for_replay<S>(
    service: S,
    queue: &RetryQueue,
    request: Request<Full<Bytes>>,
) -> Result<(), BoxError>
where
    S: Service<Request<Full<Bytes>>>,
    S::Error: Into<BoxError>,
{
    // The first attempt fails during the outage and is queued, so its error is expected.
    let _queued = service.oneshot(request).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !queue.is_empty() {
        if Instant::now() >= deadline {
            return Err(format!("{} items still queued after 30 s", queue.len()).into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Returns the text between the first `start` marker and the next `end` marker.
fn between<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let after_start = text.split_once(start).map_or("", |(_, rest)| rest);
    after_start.split_once(end).map_or("", |(inside, _)| inside)
}

/// Returns the README's code blocks in `lang`, in order.
fn readme_blocks<'a>(readme: &'a str, lang: &str) -> Vec<&'a str> {
    let fence = format!("```{lang}\n");
    readme
        .split(fence.as_str())
        .skip(1)
        .map(|rest| rest.split_once("```\n").map_or("", |(inside, _)| inside))
        .collect()
}

/// Returns the worker snippet of this file without the lines between its pause and resume
/// markers, with the function body's indentation removed.
fn worker_snippet(source: &str) -> String {
    let shown = [
        between(
            source,
            "// README worker snippet start\n",
            "    // README worker snippet pause\n",
        ),
        between(
            source,
            "// README worker snippet resume\n",
            "    // README worker snippet end\n",
        ),
    ]
    .concat();
    shown
        .lines()
        .map(|line| format!("{}\n", line.strip_prefix("    ").unwrap_or(line)))
        .collect()
}

#[test]
fn readme_snippet_matches_this_file() {
    let readme = include_str!("../README.md");
    let source = include_str!("demo_readme.rs");
    let snippet = between(
        source,
        "// README snippet start\n",
        "// README snippet end\n",
    );
    let blocks = readme_blocks(readme, "rust");
    assert!(
        !snippet.is_empty(),
        "snippet markers not found in this file"
    );
    assert_eq!(blocks.len(), 2, "README has two rust blocks");
    assert_eq!(
        blocks[0], snippet,
        "README's first rust block differs from the snippet in this file"
    );
}

#[test]
fn readme_worker_snippet_matches_this_file() {
    let readme = include_str!("../README.md");
    let snippet = worker_snippet(include_str!("demo_readme.rs"));
    let blocks = readme_blocks(readme, "rust");
    assert_eq!(
        snippet.lines().count(),
        4,
        "worker snippet markers not found in this file"
    );
    assert_eq!(
        blocks.get(1).copied(),
        Some(snippet.as_str()),
        "README's second rust block differs from the worker snippet in this file"
    );
}

/// Starts the fake server with an outage that responds to the first request with 503.
async fn start_server(api_key: &str) -> FakeLlmServer {
    FakeLlmServer::start(ServerConfig {
        dialect: Dialect::Openai,
        request_limit: 100,
        input_token_limit: 10_000,
        window: Duration::from_secs(60),
        outage_start: 1,
        outage_requests: 1,
        outage_mode: OutageMode::Unavailable,
        deduplicate_by_idempotency_key: true,
        api_key: api_key.to_owned(),
    })
    .await
    .expect("start the fake server")
}

#[tokio::test]
async fn readme_snippet_queues_then_replays() {
    let api_key = "sk-readme-test";
    let server = start_server(api_key).await;
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let token = HeaderValue::try_from(format!("Bearer {api_key}")).expect("valid header value");
    let body = Bytes::from_static(
        br#"{"messages":[{"content":"hello"}],"max_tokens":8,"metadata":{"request_id":"readme-1"}}"#,
    );

    let report = send_and_replay(dir.path(), token, &server.endpoint(), body)
        .await
        .expect("snippet runs");

    assert_eq!(report.succeeded, 1);
    assert_eq!(report.failed, 0);
    assert_eq!(server.stats().unavailable, 1);
    assert_eq!(server.completed().get("readme-1"), Some(&1));
}

#[tokio::test]
async fn readme_worker_snippet_replays_in_background() {
    let api_key = "sk-readme-test";
    let server = start_server(api_key).await;
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let token = HeaderValue::try_from(format!("Bearer {api_key}")).expect("valid header value");
    let body = Bytes::from_static(
        br#"{"messages":[{"content":"hello"}],"max_tokens":8,"metadata":{"request_id":"readme-2"}}"#,
    );

    let report = send_with_worker(dir.path(), token, &server.endpoint(), body)
        .await
        .expect("worker snippet runs");

    assert_eq!(report.succeeded, 1);
    assert_eq!(report.failed, 0);
    assert_eq!(server.stats().unavailable, 1);
    assert_eq!(server.completed().get("readme-2"), Some(&1));
}
