//! A tracing layer that counts the quota warnings of each partition.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// The module whose `warn!` events are quota threshold warnings.
const QUOTA_TARGET: &str = "tower_quota_queue::quota";

/// Counts `warn!` events from the quota module, keyed by their `partition` field.
///
/// Clones share one set of counts, so the demo keeps a clone after installing the layer.
#[derive(Clone, Debug, Default)]
pub(crate) struct QuotaWarningCounter {
    counts: Arc<Mutex<HashMap<String, usize>>>,
}

impl QuotaWarningCounter {
    /// Returns how many quota warnings named this partition.
    pub(crate) fn count_for(&self, partition: &str) -> usize {
        self.counts
            .lock()
            .map_or(0, |counts| counts.get(partition).copied().unwrap_or(0))
    }
}

impl<S: Subscriber> Layer<S> for QuotaWarningCounter {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let metadata = event.metadata();
        if *metadata.level() != Level::WARN || !metadata.target().starts_with(QUOTA_TARGET) {
            return;
        }
        let mut visitor = PartitionVisitor::default();
        event.record(&mut visitor);
        if let Ok(mut counts) = self.counts.lock() {
            *counts.entry(visitor.partition).or_insert(0) += 1;
        }
    }
}

#[derive(Default)]
struct PartitionVisitor {
    partition: String,
}

impl Visit for PartitionVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "partition" {
            value.clone_into(&mut self.partition);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "partition" {
            self.partition = format!("{value:?}").trim_matches('"').to_owned();
        }
    }
}
