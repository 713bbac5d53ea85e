//! A fake rate-limited LLM API on loopback: quota headers, 429s, an outage and a ledger of ids.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::ServiceExt;

use crate::dialect::{self, Dialect, QuotaState, Window};

/// The failure mode of the server during its outage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OutageMode {
    /// Respond with `503 Service Unavailable`.
    Unavailable,
    /// Close the connection without a response.
    Drop,
    /// Complete the request, then close the connection before the response is written.
    LostResponse,
    /// Cycle through 503, a dropped connection and a lost response.
    Mixed,
}

/// The fake server's limits and failure schedule.
#[derive(Clone, Debug)]
pub(crate) struct ServerConfig {
    pub(crate) dialect: Dialect,
    /// Requests allowed per window.
    pub(crate) request_limit: u64,
    /// Input tokens allowed per window. Output tokens get a quarter of this.
    pub(crate) input_token_limit: u64,
    /// The length of one quota window; all dimensions reset together.
    pub(crate) window: Duration,
    /// The arrival number (starting at 1) of the first request that meets the outage.
    pub(crate) outage_start: u64,
    /// How many arriving requests fail during the outage.
    pub(crate) outage_requests: u64,
    pub(crate) outage_mode: OutageMode,
    /// Whether a request whose `Idempotency-Key` was completed before gets the stored completion
    /// instead of a second one.
    pub(crate) deduplicate_by_idempotency_key: bool,
    /// The bearer token that every request must carry.
    pub(crate) api_key: String,
}

/// Counts of the server's responses, by outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ServerStats {
    /// Requests that arrived, including those that met the outage.
    pub(crate) received: u64,
    /// Completions produced, each spending quota.
    pub(crate) ok: u64,
    /// Repeated requests that got the stored completion of their `Idempotency-Key`.
    pub(crate) deduplicated: u64,
    /// Completions whose response the outage discarded.
    pub(crate) lost_responses: u64,
    pub(crate) rate_limited: u64,
    pub(crate) unavailable: u64,
    pub(crate) dropped: u64,
    pub(crate) unauthorized: u64,
    pub(crate) bad_requests: u64,
}

/// A running fake server. Dropping it stops accepting connections.
#[derive(Debug)]
pub(crate) struct FakeLlmServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    config: ServerConfig,
    arrivals: AtomicU64,
    state: Mutex<Accounting>,
}

#[derive(Debug)]
struct Accounting {
    window_started: Instant,
    requests_used: u64,
    input_tokens_used: u64,
    output_tokens_used: u64,
    stats: ServerStats,
    /// The number of completions per request id.
    completed: HashMap<String, u32>,
    /// The completion body stored per `Idempotency-Key`.
    completions_by_key: HashMap<String, String>,
}

impl FakeLlmServer {
    /// Binds `127.0.0.1:0` and serves `POST /v1/chat/completions` until dropped.
    pub(crate) async fn start(config: ServerConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            config,
            arrivals: AtomicU64::new(0),
            state: Mutex::new(Accounting {
                window_started: Instant::now(),
                requests_used: 0,
                input_tokens_used: 0,
                output_tokens_used: 0,
                stats: ServerStats::default(),
                completed: HashMap::new(),
                completions_by_key: HashMap::new(),
            }),
        });
        let router = Router::new()
            .route("/v1/chat/completions", post(chat_completions))
            .with_state(Arc::clone(&shared));
        let accept_task = tokio::spawn(accept_loop(listener, router, Arc::clone(&shared)));
        Ok(Self {
            addr,
            shared,
            accept_task,
        })
    }

    /// Returns the URL of the chat completions endpoint.
    pub(crate) fn endpoint(&self) -> String {
        format!("http://{}/v1/chat/completions", self.addr)
    }

    pub(crate) fn stats(&self) -> ServerStats {
        self.shared.lock().stats.clone()
    }

    /// Returns the number of completions per request id. A repeat served from the idempotency
    /// store adds none.
    pub(crate) fn completed(&self) -> HashMap<String, u32> {
        self.shared.lock().completed.clone()
    }
}

impl Drop for FakeLlmServer {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Accounting> {
        // A poisoned lock only means a handler panicked; the counters are still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Returns how the request with this arrival number meets the outage, if it does.
    fn outage_action(&self, arrival: u64) -> Option<OutageMode> {
        let config = &self.config;
        let offset = arrival.checked_sub(config.outage_start)?;
        if offset >= config.outage_requests {
            return None;
        }
        match config.outage_mode {
            OutageMode::Mixed => match offset % 3 {
                0 => Some(OutageMode::Unavailable),
                1 => Some(OutageMode::Drop),
                _ => Some(OutageMode::LostResponse),
            },
            mode => Some(mode),
        }
    }
}

async fn accept_loop(listener: TcpListener, router: Router, shared: Arc<Shared>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                // Errors such as too many open files pass with time, so back off instead of spinning.
                tracing::warn!(%error, "fake server failed to accept a connection");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let router = router.clone();
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                handle_connection_request(request, router.clone(), Arc::clone(&shared))
            });
            // A connection error is expected here: the outage drops connections on purpose.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Applies the outage schedule, then hands the request to the router.
///
/// Returning an error makes hyper close the connection without writing a response.
async fn handle_connection_request(
    request: http::Request<Incoming>,
    router: Router,
    shared: Arc<Shared>,
) -> Result<Response, std::io::Error> {
    let arrival = shared.arrivals.fetch_add(1, Ordering::SeqCst) + 1;
    match shared.outage_action(arrival) {
        Some(OutageMode::Drop) => {
            let mut state = shared.lock();
            state.stats.received += 1;
            state.stats.dropped += 1;
            drop(state);
            Err(std::io::Error::other("outage: connection dropped"))
        }
        Some(OutageMode::LostResponse) => {
            shared.lock().stats.received += 1;
            let response = match router.oneshot(request).await {
                Ok(response) => response,
                Err(infallible) => match infallible {},
            };
            if response.status() == StatusCode::OK {
                shared.lock().stats.lost_responses += 1;
            }
            Err(std::io::Error::other("outage: response lost"))
        }
        Some(_) => {
            let mut state = shared.lock();
            state.stats.received += 1;
            state.stats.unavailable += 1;
            Ok((StatusCode::SERVICE_UNAVAILABLE, "upstream overloaded").into_response())
        }
        None => {
            shared.lock().stats.received += 1;
            match router.oneshot(request).await {
                Ok(response) => Ok(response),
                Err(infallible) => match infallible {},
            }
        }
    }
}

/// The parts of a chat completion request that the server reads.
#[derive(Debug, serde::Deserialize)]
struct ChatRequest {
    messages: Vec<ChatMessage>,
    max_tokens: u64,
    metadata: RequestMetadata,
}

#[derive(Debug, serde::Deserialize)]
struct ChatMessage {
    content: String,
}

#[derive(Debug, serde::Deserialize)]
struct RequestMetadata {
    request_id: String,
}

async fn chat_completions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let config = &shared.config;
    if !is_authorized(&headers, &config.api_key) {
        shared.lock().stats.unauthorized += 1;
        return (StatusCode::UNAUTHORIZED, "missing or invalid API key").into_response();
    }
    let Ok(request) = serde_json::from_slice::<ChatRequest>(&body) else {
        shared.lock().stats.bad_requests += 1;
        return (StatusCode::BAD_REQUEST, "invalid chat completion request").into_response();
    };

    let idempotency_key = headers
        .get("idempotency-key")
        .and_then(|value| value.to_str().ok())
        .filter(|_| config.deduplicate_by_idempotency_key);
    let usage = TokenUsage::estimate(&request);

    let mut state = shared.lock();
    // Quota headers on a stored completion must describe the current window, not an expired one.
    state.roll_window(config.window);
    if let Some(stored) = idempotency_key.and_then(|key| state.completions_by_key.get(key)) {
        let body = stored.clone();
        state.stats.deduplicated += 1;
        let quota = state.quota_state(config);
        drop(state);
        return json_response(config.dialect, &quota, body);
    }

    let admitted = state.admit(config, &request.metadata.request_id, usage);
    match admitted {
        Admission::Admitted(quota) => {
            let body = completion_body(&request, usage);
            if let Some(key) = idempotency_key {
                state
                    .completions_by_key
                    .insert(key.to_owned(), body.clone());
            }
            drop(state);
            json_response(config.dialect, &quota, body)
        }
        Admission::RateLimited(quota) => {
            drop(state);
            rate_limited_response(config.dialect, &quota)
        }
    }
}

fn is_authorized(headers: &HeaderMap, api_key: &str) -> bool {
    let expected = format!("Bearer {api_key}");
    headers
        .get(header::AUTHORIZATION)
        .is_some_and(|value| value.as_bytes() == expected.as_bytes())
}

/// The server's decision on a request, with the quota state after it.
#[derive(Debug)]
enum Admission {
    Admitted(QuotaState),
    RateLimited(QuotaState),
}

/// The tokens one chat request spends.
#[derive(Clone, Copy, Debug)]
struct TokenUsage {
    input: u64,
    output: u64,
}

impl TokenUsage {
    /// Estimates the tokens of a request: about four characters per input token, and an output
    /// length derived from the input, capped by `max_tokens`. The fake server needs only plausible
    /// counts that vary between requests.
    fn estimate(request: &ChatRequest) -> Self {
        let input = request
            .messages
            .iter()
            .map(|message| message.content.len() as u64 / 4 + 1)
            .sum::<u64>();
        let output = request.max_tokens.min(16 + input % 48);
        Self { input, output }
    }
}

fn completion_body(request: &ChatRequest, usage: TokenUsage) -> String {
    let completion = serde_json::json!({
        "object": "chat.completion",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "All quiet on loopback."},
            "finish_reason": "stop",
        }],
        "usage": {
            "prompt_tokens": usage.input,
            "completion_tokens": usage.output,
            "total_tokens": usage.input + usage.output,
        },
        "metadata": {"request_id": request.metadata.request_id},
    });
    completion.to_string()
}

fn json_response(dialect: Dialect, quota: &QuotaState, body: String) -> Response {
    let mut response = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    dialect::write_headers(dialect, quota, response.headers_mut());
    response
}

fn rate_limited_response(dialect: Dialect, quota: &QuotaState) -> Response {
    let wait = quota
        .requests
        .reset_at
        .duration_since(quota.now)
        .unwrap_or(Duration::ZERO);
    // Retry-After carries whole seconds, so round up to never invite an early retry.
    let retry_after = wait.as_secs_f64().ceil().max(1.0) as u64;
    let mut response = Response::new(Body::from("rate limit exceeded"));
    *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    dialect::write_headers(dialect, quota, response.headers_mut());
    response
}

impl Accounting {
    /// Spends one request and its tokens from the current window and records a 200 for
    /// `request_id`, unless the window cannot afford the request.
    fn admit(&mut self, config: &ServerConfig, request_id: &str, usage: TokenUsage) -> Admission {
        self.roll_window(config.window);
        let output_token_limit = config.input_token_limit / 4;
        let exhausted = self.requests_used >= config.request_limit
            || self.input_tokens_used + usage.input > config.input_token_limit
            || self.output_tokens_used + usage.output > output_token_limit;
        if exhausted {
            self.stats.rate_limited += 1;
            return Admission::RateLimited(self.quota_state(config));
        }
        self.requests_used += 1;
        self.input_tokens_used += usage.input;
        self.output_tokens_used += usage.output;
        self.stats.ok += 1;
        *self.completed.entry(request_id.to_owned()).or_insert(0) += 1;
        Admission::Admitted(self.quota_state(config))
    }

    fn roll_window(&mut self, window: Duration) {
        if self.window_started.elapsed() >= window {
            self.window_started = Instant::now();
            self.requests_used = 0;
            self.input_tokens_used = 0;
            self.output_tokens_used = 0;
        }
    }

    fn quota_state(&self, config: &ServerConfig) -> QuotaState {
        let now = tower_quota_queue::clock::now();
        let reset_at = now + config.window.saturating_sub(self.window_started.elapsed());
        let window = |limit: u64, used: u64| Window {
            limit,
            remaining: limit.saturating_sub(used),
            reset_at,
            length: config.window,
        };
        QuotaState {
            requests: window(config.request_limit, self.requests_used),
            input_tokens: window(config.input_token_limit, self.input_tokens_used),
            output_tokens: window(config.input_token_limit / 4, self.output_tokens_used),
            now,
        }
    }
}
