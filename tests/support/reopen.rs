//! Opening a queue directory right after another handle in this process closed it.
//!
//! sled 0.34 releases the file lock of a dropped database from a background thread, a few
//! milliseconds later. `RetryQueue::open` waits for that after a queue it opened itself, but not
//! after a raw `sled::Db` that a test opened to damage records, so these helpers retry for up to
//! 2 s before they give up.

// Each test file that includes this module uses only some of the helpers.
#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use tower_quota_queue::retry_queue::{QueueError, QueueErrorKind, RetryQueue, RetryQueueConfig};

const LOCK_RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// Opens the sled database of a queue directly.
pub(crate) fn open_raw(path: &Path) -> sled::Db {
    let deadline = Instant::now() + LOCK_RELEASE_TIMEOUT;
    loop {
        match sled::open(path) {
            Ok(db) => return db,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(error) => panic!("cannot open {}: {error}", path.display()),
        }
    }
}

/// Opens a queue whose directory a raw `sled::Db` of this process may have held a moment ago.
pub(crate) fn open_queue(config: RetryQueueConfig) -> Result<RetryQueue, QueueError> {
    let deadline = Instant::now() + LOCK_RELEASE_TIMEOUT;
    loop {
        match RetryQueue::open(config.clone()) {
            Err(error)
                if error.kind() == QueueErrorKind::AlreadyOpen && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            result => return result,
        }
    }
}
