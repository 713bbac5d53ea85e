//! One flush shared by every enqueue that waits for durability.
//!
//! sled 0.34's `flush_async` hung when 8 or more tasks awaited it at once, and one blocking
//! `flush()` per item caps a queue at a few thousand durable enqueues per second. So a dedicated
//! thread runs the blocking `flush()`, and every enqueue that finished its write before a flush
//! started is released by that flush. Async callers wait on a `watch` channel, so a runtime
//! thread never waits for a flush. The one exception is dropping the last queue handle, which
//! joins the thread and so waits for at most one flush.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use tokio::sync::watch;

use super::Storage;
use crate::retry_queue::error::QueueError;

/// The outcome of the latest flush: the highest ticket it covered, and its error text if it failed.
#[derive(Clone, Debug, Default)]
struct Flushed {
    ticket: u64,
    error: Option<Arc<str>>,
}

#[derive(Debug, Default)]
struct Requests {
    /// The highest ticket handed out.
    latest: u64,
    shutdown: bool,
}

#[derive(Debug, Default)]
struct Shared {
    requests: Mutex<Requests>,
    wake: Condvar,
}

/// The flush thread and the channels to it. Dropping it stops the thread after its current flush.
#[derive(Debug)]
pub(crate) struct Flusher {
    shared: Arc<Shared>,
    flushed: watch::Receiver<Flushed>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    /// Starts the flush thread for `storage`.
    pub(crate) fn start(storage: Arc<dyn Storage>) -> Result<Self, QueueError> {
        let shared = Arc::new(Shared::default());
        let (sender, flushed) = watch::channel(Flushed::default());
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("retry-queue-flush".into())
            .spawn(move || run(&thread_shared, storage.as_ref(), &sender))
            .map_err(QueueError::storage)?;
        Ok(Self {
            shared,
            flushed,
            thread: Some(thread),
        })
    }

    /// Waits until a flush that started after this call has finished.
    ///
    /// Every write that completed before the call is on disk when this returns `Ok`.
    pub(crate) async fn flush(&self) -> Result<(), QueueError> {
        let ticket = {
            let mut requests = self
                .shared
                .requests
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            requests.latest += 1;
            requests.latest
        };
        self.shared.wake.notify_one();
        let mut flushed = self.flushed.clone();
        let outcome = flushed
            .wait_for(|flushed| flushed.ticket >= ticket)
            .await
            .map_err(|_| QueueError::Flush("the flush thread has stopped".into()))?;
        match &outcome.error {
            None => Ok(()),
            Some(error) => Err(QueueError::Flush(error.to_string().into())),
        }
    }
}

fn run(shared: &Shared, storage: &dyn Storage, sender: &watch::Sender<Flushed>) {
    let mut done = 0;
    loop {
        let target = {
            let mut requests = shared
                .requests
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            while requests.latest == done && !requests.shutdown {
                requests = shared
                    .wake
                    .wait(requests)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if requests.latest == done {
                return;
            }
            requests.latest
        };
        let error = match storage.flush() {
            Ok(()) => None,
            Err(error) => {
                tracing::error!(error = %error, "retry queue flush failed");
                Some(Arc::from(error.to_string()))
            }
        };
        done = target;
        sender.send_replace(Flushed {
            ticket: target,
            error,
        });
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .shutdown = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            // The thread exits after at most one more flush. Joining it releases its handle on the
            // database, so the same path can be opened again right after the queue is dropped.
            if thread.join().is_err() {
                tracing::error!("retry queue flush thread panicked");
            }
        }
    }
}
