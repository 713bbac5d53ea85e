//! The demo's command-line options.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::client;
use crate::dialect::Dialect;
use crate::server::OutageMode;

/// Demo of tower-quota-queue against a fake rate-limited LLM API on 127.0.0.1.
#[derive(Debug, Parser)]
pub(crate) struct Args {
    /// Number of chat completion requests to send.
    #[arg(long, default_value_t = 200)]
    pub(crate) requests: usize,
    /// Maximum number of requests in flight at once (at least 1).
    #[arg(long, default_value_t = 16, value_parser = parse_concurrency)]
    pub(crate) concurrency: usize,
    /// Number of arriving requests that meet the server's outage.
    #[arg(long, default_value_t = 40)]
    pub(crate) outage: u64,
    /// Arrival number (starting at 1) of the first request that meets the outage.
    #[arg(long, default_value_t = 60)]
    pub(crate) outage_start: u64,
    /// Failure mode of the server during the outage.
    #[arg(long, value_enum, default_value_t = OutageMode::Mixed)]
    pub(crate) outage_mode: OutageMode,
    /// Make the server ignore `Idempotency-Key`, so a replay of a request whose response was lost
    /// completes it a second time.
    #[arg(long)]
    pub(crate) ignore_idempotency_key: bool,
    /// Format of the quota headers the server sends.
    #[arg(long, value_enum, default_value_t = Dialect::Openai)]
    pub(crate) dialect: Dialect,
    /// Requests the server allows per quota window.
    #[arg(long, default_value_t = 150)]
    pub(crate) request_limit: u64,
    /// Input tokens the server allows per quota window; output tokens get a quarter of this.
    #[arg(long, default_value_t = 40_000)]
    pub(crate) token_limit: u64,
    /// Length of the server's quota window, for example `5s` or `1m`.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub(crate) window: Duration,
    /// Directory of the retry queue [default: a fresh temporary directory].
    #[arg(long)]
    pub(crate) queue_dir: Option<PathBuf>,
    /// Keep the queue directory after the run for inspection.
    #[arg(long)]
    pub(crate) keep: bool,
    /// Maximum time the replay may take before the demo reports what is still queued, for
    /// example `90s` [default: enough quota windows for every request, plus two windows and 30 s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) replay_timeout: Option<Duration>,
}

impl Args {
    /// Returns `--replay-timeout`, or the default derived from the request count and the quota.
    pub(crate) fn replay_timeout(&self) -> Duration {
        self.replay_timeout.unwrap_or_else(|| {
            default_replay_timeout(
                self.requests,
                self.request_limit,
                self.token_limit,
                self.window,
            )
        })
    }
}

/// Parses `--concurrency`, rejecting 0 because no request could be sent.
fn parse_concurrency(value: &str) -> Result<usize, String> {
    let concurrency: usize = value
        .parse()
        .map_err(|error| format!("{error}, expected a whole number of at least 1"))?;
    if concurrency == 0 {
        return Err("must be at least 1, because no request is sent with 0".to_owned());
    }
    Ok(concurrency)
}

/// Time for backoff delays, replay 429s and the last replays after the final window opens.
const REPLAY_SLACK: Duration = Duration::from_secs(30);

/// Returns a replay timeout that leaves the server time to complete every request.
///
/// The server completes at most `request_limit` requests per window, and fewer when the output
/// tokens (a quarter of `token_limit`) run out first. The timeout covers the windows that
/// `requests` need at that rate, two more for overshoot and requeued replays, and
/// [`REPLAY_SLACK`]. With no capacity at all (a limit of 0) it covers two windows and the slack,
/// because nothing can complete however long the demo waits.
pub(crate) fn default_replay_timeout(
    requests: usize,
    request_limit: u64,
    token_limit: u64,
    window: Duration,
) -> Duration {
    let by_tokens = token_limit / 4 / client::MAX_TOKENS;
    let per_window = request_limit.min(by_tokens);
    let windows = match per_window {
        0 => 0,
        per_window => (requests as u64).div_ceil(per_window),
    };
    let windows = u32::try_from(windows.saturating_add(2)).unwrap_or(u32::MAX);
    window
        .checked_mul(windows)
        .and_then(|replay| replay.checked_add(REPLAY_SLACK))
        .unwrap_or(Duration::MAX)
}
