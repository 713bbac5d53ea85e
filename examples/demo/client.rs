//! The client side: the middleware stack and a sender with bounded concurrency.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt};
use tower_quota_queue::retry_queue::{QueuedId, RetryQueueError};
use tower_quota_queue::BoxError;
use uuid::Uuid;

/// The outcome of a request's first attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum FirstAttempt {
    /// The server responded with 200.
    Succeeded,
    /// The request failed and the retry queue stored it under this id.
    Queued(QueueCause, Uuid),
    /// The request failed and was not stored, for the reason in the message.
    NotQueued(String),
}

/// The failure that made the retry queue store a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum QueueCause {
    /// A 429 response.
    RateLimited,
    /// A 503 response.
    Unavailable,
    /// Another retryable status, such as 502 or 504.
    OtherStatus,
    /// A transport error, such as a dropped connection.
    ConnectionError,
}

impl fmt::Display for QueueCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cause = match self {
            Self::RateLimited => "429",
            Self::Unavailable => "503",
            Self::OtherStatus => "other retryable status",
            Self::ConnectionError => "connection error",
        };
        f.write_str(cause)
    }
}

/// Builds the `authorization` header value, marked sensitive so that logs and the queue skip it.
pub(crate) fn bearer_token(api_key: &str) -> Result<HeaderValue, BoxError> {
    let mut value = HeaderValue::try_from(format!("Bearer {api_key}"))?;
    value.set_sensitive(true);
    Ok(value)
}

/// Adds credentials to every request that passes, including replays from the queue.
pub(crate) fn add_credentials<B>(token: HeaderValue) -> impl Fn(Request<B>) -> Request<B> + Clone {
    move |mut request| {
        request
            .headers_mut()
            .insert(header::AUTHORIZATION, token.clone());
        request
    }
}

/// Returns the client-generated ids of `count` requests, unique to this run.
///
/// The random run tag keeps items left in a reused queue directory by an earlier run apart from
/// this run's requests in the server's ledger.
pub(crate) fn request_ids(count: usize) -> Vec<String> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let tag = &run[..8];
    (0..count)
        .map(|index| format!("req-{tag}-{index:05}"))
        .collect()
}

/// The `max_tokens` of every chat request, which bounds the output tokens the server charges.
pub(crate) const MAX_TOKENS: u64 = 64;

/// Builds one JSON chat completion request that carries its id in `metadata.request_id`.
pub(crate) fn chat_request(
    endpoint: &str,
    request_id: &str,
    index: usize,
) -> Result<Request<Full<Bytes>>, BoxError> {
    let body = serde_json::json!({
        "model": "demo-chat-1",
        "messages": [{
            "role": "user",
            "content": format!("Summarize ticket {index} in one sentence."),
        }],
        "max_tokens": MAX_TOKENS,
        "metadata": {"request_id": request_id},
    });
    let request = Request::builder()
        .method(Method::POST)
        .uri(endpoint)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))?;
    Ok(request)
}

/// Sends one chat request per id through `service` with at most `concurrency` in flight.
///
/// Returns the outcome of each first attempt, in the order of `request_ids`.
pub(crate) async fn send_all<S, B>(
    service: S,
    endpoint: &str,
    request_ids: &[String],
    concurrency: usize,
) -> Vec<FirstAttempt>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError> + Send,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError> + Send,
{
    let count = request_ids.len();
    tracing::info!(
        requests = count,
        concurrency,
        "sending chat completion requests"
    );
    let request_ids: Arc<[String]> = request_ids.into();
    let next = Arc::new(AtomicUsize::new(0));
    let not_sent = FirstAttempt::NotQueued("not sent".to_owned());
    let outcomes = Arc::new(Mutex::new(vec![not_sent; count]));
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let service = service.clone();
        let endpoint = endpoint.to_owned();
        let request_ids = Arc::clone(&request_ids);
        let next = Arc::clone(&next);
        let outcomes = Arc::clone(&outcomes);
        senders.spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count {
                    break;
                }
                let request = chat_request(&endpoint, &request_ids[index], index);
                let outcome = send_one(service.clone(), request).await;
                log_outcome(&request_ids[index], &outcome);
                if let Ok(mut outcomes) = outcomes.lock() {
                    outcomes[index] = outcome;
                }
            }
        });
    }
    while senders.join_next().await.is_some() {}
    let outcomes = outcomes.lock().map(|outcomes| outcomes.clone());
    outcomes.unwrap_or_default()
}

async fn send_one<S, B>(service: S, request: Result<Request<Full<Bytes>>, BoxError>) -> FirstAttempt
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    let request = match request {
        Ok(request) => request,
        Err(error) => return FirstAttempt::NotQueued(error.to_string()),
    };
    match service.oneshot(request).await {
        Ok(response) => classify_response(response).await,
        Err(error) => classify_error(error.into()),
    }
}

fn log_outcome(request_id: &str, outcome: &FirstAttempt) {
    match outcome {
        FirstAttempt::Succeeded => {}
        // One event per queued request would bury the summary at the default level, so the count
        // appears once in "first attempts finished" and each request only at DEBUG.
        FirstAttempt::Queued(cause, id) => {
            tracing::debug!(request_id, queued_id = %id, "request failed ({cause}), queued for replay");
        }
        FirstAttempt::NotQueued(reason) => {
            tracing::error!(request_id, %reason, "request failed and was not queued");
        }
    }
}

async fn classify_response<B>(response: Response<B>) -> FirstAttempt
where
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    let status = response.status();
    let queued = response.extensions().get::<QueuedId>().copied();
    // Read the body to the end so that the connection returns to the pool.
    let body = response.into_body().collect().await;
    if let Some(QueuedId(id)) = queued {
        let cause = match status {
            StatusCode::TOO_MANY_REQUESTS => QueueCause::RateLimited,
            StatusCode::SERVICE_UNAVAILABLE => QueueCause::Unavailable,
            _ => QueueCause::OtherStatus,
        };
        return FirstAttempt::Queued(cause, id);
    }
    match (status, body) {
        (StatusCode::OK, Ok(_)) => FirstAttempt::Succeeded,
        (StatusCode::OK, Err(error)) => {
            FirstAttempt::NotQueued(format!("reading the body failed: {}", error.into()))
        }
        (status, _) => FirstAttempt::NotQueued(format!("status {status}")),
    }
}

fn classify_error(error: BoxError) -> FirstAttempt {
    let queued = error
        .downcast_ref::<RetryQueueError>()
        .and_then(RetryQueueError::queued_id);
    match queued {
        Some(id) => FirstAttempt::Queued(QueueCause::ConnectionError, id),
        None => FirstAttempt::NotQueued(error.to_string()),
    }
}
