//! The demo's closing summary and the server-side loss check.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::client::{FirstAttempt, QueueCause};
use crate::replay::{ReplayTotals, StoredIds};
use crate::server::ServerStats;

/// The result of comparing the ids the client sent with the server's ledger of completions and
/// the queue.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Delivery {
    /// Ids completed exactly once that are no longer queued.
    pub(crate) delivered: usize,
    /// Ids completed at most once that still wait in the queue for a replay.
    pub(crate) still_queued: usize,
    /// Ids completed at most once that ran out of attempts and sit in the dead letters.
    pub(crate) dead_lettered: usize,
    /// Ids never completed and neither in the queue nor in its dead letters.
    pub(crate) lost: Vec<String>,
    /// Ids completed more than once.
    pub(crate) duplicated: Vec<String>,
}

impl Delivery {
    /// Sorts every sent id into delivered, still queued, dead-lettered, lost or duplicated.
    pub(crate) fn check(
        sent: &[String],
        completed: &HashMap<String, u32>,
        stored: &StoredIds,
    ) -> Self {
        let mut delivery = Self::default();
        for id in sent {
            let times = completed.get(id).copied().unwrap_or(0);
            let pending = stored.pending.contains(id);
            let dead = stored.dead_letters.contains(id);
            // An id completed once whose response was lost is still in the queue: its replay is
            // pending, and a server that honours `Idempotency-Key` will not complete it again.
            match times {
                0 | 1 if pending => delivery.still_queued += 1,
                0 | 1 if dead => delivery.dead_lettered += 1,
                0 => delivery.lost.push(id.clone()),
                1 => delivery.delivered += 1,
                _ => delivery.duplicated.push(id.clone()),
            }
        }
        delivery
    }

    /// Returns whether any id was lost or duplicated.
    pub(crate) fn failed(&self) -> bool {
        !self.lost.is_empty() || !self.duplicated.is_empty()
    }
}

/// Counts of the first attempts, by outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FirstAttemptCounts {
    pub(crate) sent: usize,
    pub(crate) succeeded: usize,
    pub(crate) queued: usize,
    pub(crate) queued_by_cause: Vec<(QueueCause, usize)>,
    pub(crate) not_queued: usize,
}

impl FirstAttemptCounts {
    /// Counts `outcomes` by kind, and the queued ones by cause.
    pub(crate) fn of(outcomes: &[FirstAttempt]) -> Self {
        let mut counts = Self {
            sent: outcomes.len(),
            ..Self::default()
        };
        let mut by_cause = BTreeMap::new();
        for outcome in outcomes {
            match outcome {
                FirstAttempt::Succeeded => counts.succeeded += 1,
                FirstAttempt::Queued(cause, _) => {
                    counts.queued += 1;
                    *by_cause.entry(*cause).or_insert(0) += 1;
                }
                FirstAttempt::NotQueued(_) => counts.not_queued += 1,
            }
        }
        counts.queued_by_cause = by_cause.into_iter().collect();
        counts
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
    pub(crate) first: FirstAttemptCounts,
    pub(crate) replay: ReplayTotals,
    pub(crate) delivery: Delivery,
    /// The server's response counts, replays included.
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
        writeln!(f, "demo summary ({} headers)", self.dialect)?;
        self.fmt_requests(f)?;
        self.fmt_delivery(f)?;
        self.fmt_quota(f)?;
        let secret = if self.secret_on_disk { "FOUND" } else { "none" };
        row(f, "API key in queue files", secret)?;
        let kept = if self.queue_dir_kept {
            "kept"
        } else {
            "removed, pass --keep to keep it"
        };
        let queue_dir = format!("{} ({kept})", self.queue_dir.display());
        row(f, "queue directory", queue_dir)?;
        let elapsed = format!("{:.1} s", self.elapsed.as_secs_f64());
        write!(f, "  {:<24}{elapsed}", "elapsed")
    }
}

impl Summary {
    fn fmt_requests(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let first = &self.first;
        row(f, "requests sent", first.sent)?;
        row(f, "succeeded first time", first.succeeded)?;
        let causes: Vec<String> = first
            .queued_by_cause
            .iter()
            .map(|(cause, count)| format!("{cause}: {count}"))
            .collect();
        if causes.is_empty() {
            row(f, "queued", first.queued)?;
        } else {
            let queued = format!("{} ({})", first.queued, causes.join(", "));
            row(f, "queued", queued)?;
        }
        row(f, "failed, not queued", first.not_queued)?;
        let replayed = format!(
            "{} ({} replays failed and were requeued or dead-lettered)",
            self.replay.replayed, self.replay.failed_attempts
        );
        row(f, "replayed", replayed)?;
        row(f, "expired", self.replay.expired)
    }

    fn fmt_delivery(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let delivery = &self.delivery;
        row(f, "still queued", delivery.still_queued)?;
        row(f, "dead-lettered", delivery.dead_lettered)?;
        row(f, "lost", LostLine(&delivery.lost))?;
        row(f, "duplicated", delivery.duplicated.len())?;
        let server = &self.server;
        let completions = format!(
            "{} ({} responses lost in the outage, {} repeats answered from the Idempotency-Key store)",
            server.ok, server.lost_responses, server.deduplicated
        );
        row(f, "server completions", completions)?;
        let refusals = format!(
            "{} rate limited (429), {} unavailable (503), {} dropped, {} unauthorized",
            server.rate_limited, server.unavailable, server.dropped, server.unauthorized
        );
        row(f, "server refusals", refusals)
    }

    fn fmt_quota(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        row(f, "quota warnings", self.quota_warnings)?;
        for status in &self.quota {
            row(f, &format!("quota {}", status.dimension), QuotaLine(status))?;
        }
        Ok(())
    }
}

/// Writes one line of the summary: a label padded to a column, then the value.
fn row(f: &mut fmt::Formatter<'_>, label: &str, value: impl fmt::Display) -> fmt::Result {
    writeln!(f, "  {label:<24}{value}")
}

/// The number of lost ids, with the first few of them, or the ledger check when there are none.
struct LostLine<'a>(&'a [String]);

/// How many lost ids the summary names.
const LOST_IDS_SHOWN: usize = 5;

impl fmt::Display for LostLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lost = self.0;
        if lost.is_empty() {
            return f.write_str(
                "0 (server ledger: every id completed once, is still queued or is dead-lettered)",
            );
        }
        let shown = lost[..lost.len().min(LOST_IDS_SHOWN)].join(", ");
        let more = if lost.len() > LOST_IDS_SHOWN {
            ", ..."
        } else {
            ""
        };
        write!(
            f,
            "{} (never completed and not in the queue: {shown}{more})",
            lost.len()
        )
    }
}

struct QuotaLine<'a>(&'a DimensionStatus);

impl fmt::Display for QuotaLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.0;
        match status.usage {
            Some(usage) => write!(f, "{:.1}% used", usage * 100.0)?,
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
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn delivery_check_counts_each_case() {
        // a: delivered. b: completed twice. c: pending. d: lost. e: completed once, its response
        // lost, and its replay pending. f: dead-lettered. g: completed twice and still pending.
        let completed = HashMap::from([
            ("a".to_owned(), 1),
            ("b".to_owned(), 2),
            ("e".to_owned(), 1),
            ("g".to_owned(), 2),
        ]);
        let stored = StoredIds {
            pending: HashSet::from(["c".to_owned(), "e".to_owned(), "g".to_owned()]),
            dead_letters: HashSet::from(["f".to_owned()]),
        };
        let sent: Vec<String> = ["a", "b", "c", "d", "e", "f", "g"]
            .map(String::from)
            .to_vec();
        let delivery = Delivery::check(&sent, &completed, &stored);
        assert_eq!(delivery.delivered, 1);
        assert_eq!(delivery.still_queued, 2);
        assert_eq!(delivery.dead_lettered, 1);
        assert_eq!(delivery.lost, vec!["d".to_owned()]);
        assert_eq!(delivery.duplicated, vec!["b".to_owned(), "g".to_owned()]);
    }

    #[test]
    fn lost_line_without_losses_cites_ledger() {
        let line = LostLine(&[]).to_string();
        assert_eq!(
            line,
            "0 (server ledger: every id completed once, is still queued or is dead-lettered)"
        );
    }

    #[test]
    fn lost_line_with_losses_names_ids() {
        let lost: Vec<String> = (1..=7).map(|n| format!("req-{n}")).collect();
        assert_eq!(
            LostLine(&lost[..2]).to_string(),
            "2 (never completed and not in the queue: req-1, req-2)"
        );
        assert_eq!(
            LostLine(&lost).to_string(),
            "7 (never completed and not in the queue: req-1, req-2, req-3, req-4, req-5, ...)"
        );
    }
}
