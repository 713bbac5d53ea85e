//! Runs a fake rate-limited LLM API on loopback and sends chat requests to it through
//! `RetryQueueLayer` and `QuotaLayer`, then replays what the outage left in the queue.
//!
//! ```sh
//! cargo run --example demo -- --help
//! ```

mod client;
mod dialect;
mod replay;
mod scenario;
mod server;
mod summary;
mod warnings;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::dialect::Dialect;
use crate::scenario::DemoConfig;
use crate::server::{OutageMode, ServerConfig};
use crate::warnings::QuotaWarningCounter;

/// Demo of tower-quota-queue against a fake rate-limited LLM API on 127.0.0.1.
#[derive(Debug, Parser)]
struct Args {
    /// Number of chat completion requests to send.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Maximum number of requests in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Number of arriving requests that meet the server's outage.
    #[arg(long, default_value_t = 40)]
    outage: u64,
    /// Arrival number (starting at 1) of the first request that meets the outage.
    #[arg(long, default_value_t = 60)]
    outage_start: u64,
    /// Failure mode of the server during the outage.
    #[arg(long, value_enum, default_value_t = OutageMode::Mixed)]
    outage_mode: OutageMode,
    /// Make the server ignore `Idempotency-Key`, so a replay of a request whose response was lost
    /// completes it a second time.
    #[arg(long)]
    ignore_idempotency_key: bool,
    /// Format of the quota headers the server sends.
    #[arg(long, value_enum, default_value_t = Dialect::Openai)]
    dialect: Dialect,
    /// Requests the server allows per quota window.
    #[arg(long, default_value_t = 150)]
    request_limit: u64,
    /// Input tokens the server allows per quota window; output tokens get a quarter of this.
    #[arg(long, default_value_t = 40_000)]
    token_limit: u64,
    /// Length of the server's quota window, for example `5s` or `1m`.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    window: Duration,
    /// Directory of the retry queue [default: a fresh temporary directory].
    #[arg(long)]
    queue_dir: Option<PathBuf>,
    /// Keep the queue directory after the run for inspection.
    #[arg(long)]
    keep: bool,
    /// Maximum time the replay may take before the demo reports what is still queued.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    replay_timeout: Duration,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let warnings = QuotaWarningCounter::default();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(warnings.clone())
        .init();

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the tokio runtime failed: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args, &warnings)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the demo and prints its summary. Returns `false` when a request was lost or duplicated, or
/// the API key reached the queue's files.
async fn run(
    args: Args,
    warnings: &QuotaWarningCounter,
) -> Result<bool, tower_quota_queue::BoxError> {
    // The temporary directory is removed on drop unless `--keep` is given.
    let (queue_dir, temp_dir) = match &args.queue_dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let temp = tempfile::Builder::new().prefix("demo-queue-").tempdir()?;
            (temp.path().join("queue"), Some(temp))
        }
    };
    tracing::info!(queue_dir = %queue_dir.display(), "retry queue directory");
    let config = DemoConfig {
        requests: args.requests,
        concurrency: args.concurrency,
        server: ServerConfig {
            dialect: args.dialect,
            request_limit: args.request_limit,
            input_token_limit: args.token_limit,
            window: args.window,
            outage_start: args.outage_start,
            outage_requests: args.outage,
            outage_mode: args.outage_mode,
            deduplicate_by_idempotency_key: !args.ignore_idempotency_key,
            api_key: format!("sk-demo-{}", uuid::Uuid::new_v4().simple()),
        },
        queue_dir,
        replay_timeout: args.replay_timeout,
    };
    let mut summary = scenario::run(&config, warnings).await?;
    summary.queue_dir_kept = args.keep || args.queue_dir.is_some();
    if args.keep {
        if let Some(temp) = temp_dir {
            let _kept = temp.keep();
        }
    }
    println!("{summary}");
    Ok(!summary.failed())
}
