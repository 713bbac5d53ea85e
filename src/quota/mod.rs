//! Quota tracking from rate-limit response headers.

mod error;
pub mod future;
pub(crate) mod headers;
mod info;
mod layer;
mod service;
mod state;
mod tracker;

pub use error::{ConfigError, QuotaExhausted};
pub use info::{PartitionSnapshot, QuotaInfo, QuotaSource};
pub use layer::{EnforceQuotaLayer, Enforcement, QuotaLayer};
pub use service::{EnforceQuotaService, QuotaService};
pub use tracker::{QuotaTracker, QuotaTrackerBuilder};
