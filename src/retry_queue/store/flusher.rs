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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::retry_queue::error::QueueErrorKind;
    use crate::retry_queue::store::Loaded;
    use crate::BoxError;

    /// A storage whose flush counts its calls, waits until `hold_until` tickets were handed out,
    /// and fails when `fail` is set.
    #[derive(Debug, Default)]
    struct FlushProbe {
        flushes: AtomicUsize,
        fail: bool,
        hold_until: u64,
        shared: Mutex<Option<Arc<Shared>>>,
    }

    impl Storage for FlushProbe {
        fn load(&self, _visit: &mut dyn FnMut(u64, &[u8])) -> Result<Loaded, BoxError> {
            Ok(Loaded::default())
        }
        fn insert_ready(&self, _key: u64, _record: &[u8]) -> Result<(), BoxError> {
            Ok(())
        }
        fn remove_ready(&self, _key: u64) -> Result<(), BoxError> {
            Ok(())
        }
        fn get_ready(&self, _key: u64) -> Result<Option<Vec<u8>>, BoxError> {
            Ok(None)
        }
        fn lease(&self, _key: u64) -> Result<Option<Vec<u8>>, BoxError> {
            Ok(None)
        }
        fn get_in_flight(&self, _key: u64) -> Result<Option<Vec<u8>>, BoxError> {
            Ok(None)
        }
        fn remove_in_flight(&self, _key: u64) -> Result<(), BoxError> {
            Ok(())
        }
        fn release(&self, _key: u64) -> Result<(), BoxError> {
            Ok(())
        }
        fn requeue(&self, _old: u64, _new: u64, _record: &[u8]) -> Result<(), BoxError> {
            Ok(())
        }
        fn dead_letter_in_flight(&self, _key: u64, _record: &[u8]) -> Result<(), BoxError> {
            Ok(())
        }
        fn dead_letter_ready(&self, _key: u64) -> Result<(), BoxError> {
            Ok(())
        }
        fn dead_letters(&self) -> Result<Vec<Vec<u8>>, BoxError> {
            Ok(Vec::new())
        }
        fn visit_dead_letters(&self, _visit: &mut dyn FnMut(u64, &[u8])) -> Result<(), BoxError> {
            Ok(())
        }
        fn remove_dead_letter(&self, _key: u64) -> Result<(), BoxError> {
            Ok(())
        }
        fn clear_dead_letters(&self) -> Result<usize, BoxError> {
            Ok(0)
        }

        fn flush(&self) -> Result<(), BoxError> {
            self.flushes.fetch_add(1, Ordering::SeqCst);
            let shared = self.shared.lock().unwrap().clone();
            if let Some(shared) = shared {
                while shared.requests.lock().unwrap().latest < self.hold_until {
                    std::thread::yield_now();
                }
            }
            if self.fail {
                return Err("disk full".into());
            }
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_waiters_share_flushes() {
        let probe = Arc::new(FlushProbe {
            hold_until: 64,
            ..FlushProbe::default()
        });
        let flusher = Arc::new(Flusher::start(probe.clone()).unwrap());
        *probe.shared.lock().unwrap() = Some(Arc::clone(&flusher.shared));

        let mut waiters = Vec::new();
        for _ in 0..64 {
            let flusher = Arc::clone(&flusher);
            waiters.push(tokio::spawn(async move { flusher.flush().await }));
        }
        for waiter in waiters {
            waiter.await.unwrap().unwrap();
        }
        // The first flush is held until all 64 tickets exist, so one more flush covers the rest.
        let flushes = probe.flushes.load(Ordering::SeqCst);
        assert!(
            (1..=2).contains(&flushes),
            "{flushes} flushes for 64 waiters"
        );
    }

    #[tokio::test]
    async fn failed_flush_reaches_every_waiter() {
        let probe = Arc::new(FlushProbe {
            fail: true,
            ..FlushProbe::default()
        });
        let flusher = Flusher::start(probe).unwrap();
        let (first, second) = tokio::join!(flusher.flush(), flusher.flush());
        assert_eq!(first.unwrap_err().kind(), QueueErrorKind::Flush);
        let second = second.unwrap_err();
        assert_eq!(second.kind(), QueueErrorKind::Flush);
        let source = std::error::Error::source(&second).unwrap();
        assert_eq!(source.to_string(), "disk full");
    }
}
