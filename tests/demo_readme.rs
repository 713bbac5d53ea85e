//! Compiles the README's code snippet, checks that the README shows exactly this code, and runs
//! it against the demo's fake server.

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
    ReplayReport, RetryQueue, RetryQueueBody, RetryQueueConfig, RetryQueueLayer,
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
        Ok(response) => println!("status {}", response.status()),
        Err(error) => println!("{error}"), // the error states whether it was queued, and its id
    }

    // Later, once the upstream recovers: replay through the same stack below the queue.
    let mut replay = ServiceBuilder::new()
        .map_request(|request: Request<Full<Bytes>>| request.map(Body::from))
        .service(upstream);
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

use crate::dialect::Dialect;
use crate::server::{FakeLlmServer, OutageMode, ServerConfig};

/// Returns the text between the first `start` marker and the next `end` marker.
fn between<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let after_start = text.split_once(start).map_or("", |(_, rest)| rest);
    after_start.split_once(end).map_or("", |(inside, _)| inside)
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
    let block = between(readme, "```rust\n", "```\n");
    assert!(
        !snippet.is_empty(),
        "snippet markers not found in this file"
    );
    assert_eq!(
        block, snippet,
        "README's rust block differs from the snippet in this file"
    );
}

#[tokio::test]
async fn readme_snippet_queues_then_replays() {
    let api_key = "sk-readme-test";
    let server = FakeLlmServer::start(ServerConfig {
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
    .expect("start the fake server");
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
