//! Runs a fake rate-limited LLM API on loopback and sends chat requests to it through
//! `RetryQueueLayer` and `QuotaLayer`, then replays what the outage left in the queue.
//!
//! ```sh
//! cargo run --example demo -- --help
//! ```

mod args;
mod client;
mod dialect;
mod replay;
mod scenario;
mod server;
mod summary;
mod warnings;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::args::Args;
use crate::scenario::DemoConfig;
use crate::server::ServerConfig;
use crate::warnings::QuotaWarningCounter;

fn main() -> ExitCode {
    let args = Args::parse();
    let warnings = QuotaWarningCounter::default();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colour codes only for a terminal, so logs redirected to a file stay plain text.
                .with_ansi(std::io::stderr().is_terminal()),
        )
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
        replay_timeout: args.replay_timeout(),
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
