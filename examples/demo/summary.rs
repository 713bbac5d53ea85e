//! The demo's closing summary and the server-side loss check.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::client::QueueCause;
use crate::replay::ReplayTotals;
use crate::server::ServerStats;

/// The result of comparing the ids the client sent with the server's ledger and the queue.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Delivery {
    /// Ids answered with 200 exactly once and no longer queued.
    pub(crate) delivered: usize,
    /// Ids never answered with 200 that are still in the queue.
    pub(crate) still_queued: usize,
    /// Ids never answered with 200 and not in the queue.
    pub(crate) lost: Vec<String>,
    /// Ids answered with 200 more than once, or answered and still queued for another replay.
    pub(crate) duplicated: Vec<String>,
}

impl Delivery {
    /// Checks that every sent id was answered with 200 exactly once or is still in the queue.
    pub(crate) fn check(
        sent: &[String],
        answered: &HashMap<String, u32>,
        queued: &HashSet<String>,
    ) -> Self {
        let mut delivery = Self::default();
        for id in sent {
            let times = answered.get(id).copied().unwrap_or(0);
            let in_queue = queued.contains(id);
            match (times, in_queue) {
                (0, true) => delivery.still_queued += 1,
                (0, false) => delivery.lost.push(id.clone()),
                (1, false) => delivery.delivered += 1,
                _ => delivery.duplicated.push(id.clone()),
            }
        }
        delivery
    }

    /// Returns whether any id was lost or answered twice.
    pub(crate) fn failed(&self) -> bool {
        !self.lost.is_empty() || !self.duplicated.is_empty()
    }
}

/// One quota dimension as the client's tracker saw it last.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct DimensionStatus {
    pub(crate) dimension: String,
    pub(crate) limit: Option<u64>,
    pub(crate) remaining: Option<u64>,
    pub(crate) usage: Option<f64>,
    pub(crate) reset_in: Option<Duration>,
}

/// Everything the demo prints at the end.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Summary {
    pub(crate) dialect: String,
    pub(crate) sent: usize,
    pub(crate) succeeded_first_time: usize,
    pub(crate) queued: usize,
    pub(crate) queued_by_cause: Vec<(QueueCause, usize)>,
    pub(crate) not_queued: usize,
    pub(crate) replay: ReplayTotals,
    /// Items in the dead-letter tree at the end of the run.
    pub(crate) dead_lettered: usize,
    pub(crate) delivery: Delivery,
    /// What the server answered, replays included.
    pub(crate) server: ServerStats,
    pub(crate) quota_warnings: usize,
    pub(crate) quota: Vec<DimensionStatus>,
    /// Whether the API key was found in any file of the queue directory.
    pub(crate) secret_on_disk: bool,
    pub(crate) queue_dir: PathBuf,
    pub(crate) queue_dir_kept: bool,
    pub(crate) elapsed: Duration,
}

impl Summary {
    /// Returns whether the run lost or duplicated a request, or leaked the API key to disk.
    pub(crate) fn failed(&self) -> bool {
        self.delivery.failed() || self.secret_on_disk
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let delivery = &self.delivery;
        writeln!(f, "demo summary ({} headers)", self.dialect)?;
        writeln!(f, "  requests sent           {:>6}", self.sent)?;
        writeln!(
            f,
            "  succeeded first time    {:>6}",
            self.succeeded_first_time
        )?;
        write!(f, "  queued                  {:>6}", self.queued)?;
        let causes: Vec<String> = self
            .queued_by_cause
            .iter()
            .map(|(cause, count)| format!("{count} {cause}"))
            .collect();
        if causes.is_empty() {
            writeln!(f)?;
        } else {
            writeln!(f, "  ({})", causes.join(", "))?;
        }
        writeln!(f, "  failed, not queued      {:>6}", self.not_queued)?;
        writeln!(
            f,
            "  replayed                {:>6}  ({} replay attempts failed and were requeued)",
            self.replay.replayed, self.replay.failed_attempts
        )?;
        writeln!(f, "  expired                 {:>6}", self.replay.expired)?;
        writeln!(f, "  dead-lettered           {:>6}", self.dead_lettered)?;
        writeln!(f, "  still queued            {:>6}", delivery.still_queued)?;
        writeln!(
            f,
            "  lost                    {:>6}  (server ledger: each id answered 200 once or still queued)",
            delivery.lost.len()
        )?;
        writeln!(
            f,
            "  answered twice          {:>6}",
            delivery.duplicated.len()
        )?;
        let server = &self.server;
        writeln!(
            f,
            "  server answers          {} ok, {} rate limited (429), {} unavailable (503), {} dropped, {} unauthorized",
            server.ok, server.rate_limited, server.unavailable, server.dropped, server.unauthorized
        )?;
        writeln!(f, "  quota warnings          {:>6}", self.quota_warnings)?;
        for status in &self.quota {
            writeln!(f, "  quota {:<17} {}", status.dimension, QuotaLine(status))?;
        }
        let secret = if self.secret_on_disk { "FOUND" } else { "none" };
        writeln!(f, "  API key in queue files  {secret:>6}")?;
        let kept = if self.queue_dir_kept {
            "kept"
        } else {
            "removed, pass --keep to keep it"
        };
        writeln!(
            f,
            "  queue directory         {} ({kept})",
            self.queue_dir.display()
        )?;
        write!(
            f,
            "  elapsed                 {:>6.1} s",
            self.elapsed.as_secs_f64()
        )
    }
}

impl fmt::Display for QueueCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cause = match self {
            Self::RateLimited => "on 429",
            Self::Unavailable => "on 503",
            Self::OtherStatus => "on another retryable status",
            Self::ConnectionError => "on connection errors",
        };
        f.write_str(cause)
    }
}

struct QuotaLine<'a>(&'a DimensionStatus);

impl fmt::Display for QuotaLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.0;
        match status.usage {
            Some(usage) => write!(f, "{:>5.1}% used", usage * 100.0)?,
            None => write!(f, "usage unknown")?,
        }
        if let (Some(remaining), Some(limit)) = (status.remaining, status.limit) {
            write!(f, ", {remaining} of {limit} left")?;
        }
        if let Some(reset_in) = status.reset_in {
            write!(f, ", resets in {:.1} s", reset_in.as_secs_f64())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_check_counts_each_case() {
        let sent: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
        let answered = HashMap::from([
            ("a".to_owned(), 1),
            ("b".to_owned(), 2),
            ("e".to_owned(), 1),
        ]);
        let queued = HashSet::from(["c".to_owned(), "e".to_owned()]);
        let delivery = Delivery::check(&sent, &answered, &queued);
        assert_eq!(delivery.delivered, 1);
        assert_eq!(delivery.still_queued, 1);
        assert_eq!(delivery.lost, vec!["d".to_owned()]);
        assert_eq!(delivery.duplicated, vec!["b".to_owned(), "e".to_owned()]);
    }
}
