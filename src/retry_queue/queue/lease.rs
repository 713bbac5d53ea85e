//! Leases: taking items for replay, and acking, nacking or releasing them.

use std::time::SystemTime;

use uuid::Uuid;

use super::{DeadMeta, ItemMeta, RetryQueue};
use crate::clock;
use crate::retry_queue::error::QueueError;
use crate::retry_queue::record;
use crate::retry_queue::request::{is_stale, QueuedRequest};

/// The outcome of [`RetryQueue::nack`] for an item.
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use tower_quota_queue::retry_queue::{NackOutcome, QueuedRequest, RetryQueue, RetryQueueConfig};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let queue = RetryQueue::open(RetryQueueConfig::new().path(dir.path()).max_attempts(1))?;
/// let request = http::Request::get("http://api.example.com/").body(Bytes::new())?;
/// let id = queue.enqueue(QueuedRequest::new(request, "timed out")).await?;
/// queue.take().await?;
/// assert_eq!(queue.nack(id, "HTTP 503", None).await?, NackOutcome::DeadLettered);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NackOutcome {
    /// The item is ready again, at the tail of the queue.
    Requeued,
    /// The item reached `max_attempts` and moved to the dead letters.
    DeadLettered,
}

impl RetryQueue {
    /// Leases the oldest ready item whose `not_before` has passed.
    ///
    /// Stale items met on the way are removed with a `debug!` event. Returns `None` when no item is
    /// ready now.
    ///
    /// # Errors
    ///
    /// [`QueueError::Storage`] when sled fails.
    pub async fn take(&self) -> Result<Option<QueuedRequest>, QueueError> {
        self.take_where(|_| true).await
    }

    /// Leases the oldest ready item whose `not_before` has passed and that `predicate` accepts.
    ///
    /// Items the predicate rejects keep their place. A replay worker uses this to skip partitions
    /// whose quota is exhausted.
    ///
    /// # Errors
    ///
    /// [`QueueError::Storage`] when sled fails.
    pub async fn take_where<F>(&self, predicate: F) -> Result<Option<QueuedRequest>, QueueError>
    where
        F: FnMut(&QueuedRequest) -> bool,
    {
        Ok(self.take_before(u64::MAX, predicate)?.0)
    }

    /// Leases like [`take_where`](Self::take_where), among items with a key below `end`, and also
    /// returns the number of stale items removed on the way.
    pub(crate) fn take_before<F>(
        &self,
        end: u64,
        mut predicate: F,
    ) -> Result<(Option<QueuedRequest>, usize), QueueError>
    where
        F: FnMut(&QueuedRequest) -> bool,
    {
        let now = clock::now();
        let ttl = self.inner.config.item_ttl;
        let storage = self.inner.storage.as_ref();
        // NOTE: the lock is held across sled reads, which block on disk when the page cache misses,
        // and every ready item before the match is decoded for `predicate`. Both are cheap for
        // queues that fit the cache, but a predicate that rejects most of a large queue is O(n).
        let mut state = self.lock();
        let mut expired = 0;
        let mut start = 0;
        while let Some((&key, &meta)) = state.ready.range(start..end).next() {
            start = key + 1;
            if is_stale(meta.enqueued_at, ttl, now) {
                storage.remove_ready(key).map_err(QueueError::Storage)?;
                state.remove_ready(key);
                expired += 1;
                tracing::debug!(request_id = %meta.id, "removed stale retry queue item");
                continue;
            }
            if meta.not_before.is_some_and(|not_before| not_before > now) {
                continue;
            }
            let Some(bytes) = storage.get_ready(key).map_err(QueueError::Storage)? else {
                state.remove_ready(key);
                continue;
            };
            let item = match record::decode(&bytes) {
                Ok(item) => item,
                Err(error) => {
                    storage
                        .dead_letter_ready(key)
                        .map_err(QueueError::Storage)?;
                    state.remove_ready(key);
                    tracing::warn!(request_id = %meta.id, %error, "moved undecodable item to dead letters");
                    let dead = DeadMeta {
                        id: Some(meta.id),
                        enqueued_at: Some(meta.enqueued_at),
                    };
                    self.add_dead_letter(&mut state, key, dead)?;
                    continue;
                }
            };
            if !predicate(&item) {
                continue;
            }
            storage.lease(key).map_err(QueueError::Storage)?;
            state.remove_ready(key);
            state.in_flight.insert(item.id, (key, item.enqueued_at));
            return Ok((Some(item), expired));
        }
        Ok((None, expired))
    }

    /// Deletes a leased item after a successful replay.
    ///
    /// An ack is not flushed: if the process dies before sled's next flush, the item is replayed
    /// again after restart, which is the at-least-once contract.
    ///
    /// # Errors
    ///
    /// [`QueueError::NotInFlight`] for an id that is not leased, and [`QueueError::Storage`].
    pub async fn ack(&self, id: Uuid) -> Result<(), QueueError> {
        let mut state = self.lock();
        let &(key, _) = state
            .in_flight
            .get(&id)
            .ok_or(QueueError::NotInFlight(id))?;
        self.inner
            .storage
            .remove_in_flight(key)
            .map_err(QueueError::Storage)?;
        state.in_flight.remove(&id);
        Ok(())
    }

    /// Returns a leased item to its original place in the queue without counting an attempt.
    ///
    /// Use this when a replay was never completed, for example because the worker shut down. The
    /// item keeps its attempts, `last_error` and `not_before`, and comes before every item enqueued
    /// after it, as it would after a restart. A leased item whose stored record no longer decodes
    /// moves to the dead letters instead, as in [`nack`](Self::nack).
    ///
    /// # Errors
    ///
    /// [`QueueError::NotInFlight`] for an id that is not leased, and [`QueueError::Storage`].
    pub async fn release(&self, id: Uuid) -> Result<(), QueueError> {
        let storage = self.inner.storage.as_ref();
        {
            let mut state = self.lock();
            let &(key, enqueued_at) = state
                .in_flight
                .get(&id)
                .ok_or(QueueError::NotInFlight(id))?;
            let Some(bytes) = storage.get_in_flight(key).map_err(QueueError::Storage)? else {
                state.in_flight.remove(&id);
                return Err(QueueError::NotInFlight(id));
            };
            let item = match record::decode(&bytes) {
                Ok(item) => item,
                Err(error) => {
                    storage
                        .dead_letter_in_flight(key, &bytes)
                        .map_err(QueueError::Storage)?;
                    state.in_flight.remove(&id);
                    tracing::warn!(request_id = %id, %error, "moved undecodable item to dead letters");
                    let dead = DeadMeta {
                        id: Some(id),
                        enqueued_at: Some(enqueued_at),
                    };
                    return self.add_dead_letter(&mut state, key, dead);
                }
            };
            storage.release(key).map_err(QueueError::Storage)?;
            state.in_flight.remove(&id);
            state.ready.insert(key, ItemMeta::of(&item));
            state.ready_ids.insert(id, key);
        }
        self.wake_waiters();
        Ok(())
    }

    /// Returns a leased item after a failed replay.
    ///
    /// The item's attempts grow by one and `error` becomes its `last_error`. If the attempts reach
    /// `max_attempts`, the item moves to the dead letters. Otherwise it goes to the tail of the
    /// queue, behind every ready item, so a failing item cannot block the head. `not_before`
    /// (usually from `Retry-After`) replaces its earliest replay time.
    ///
    /// # Errors
    ///
    /// [`QueueError::NotInFlight`] for an id that is not leased, and [`QueueError::Storage`].
    pub async fn nack(
        &self,
        id: Uuid,
        error: &str,
        not_before: Option<SystemTime>,
    ) -> Result<NackOutcome, QueueError> {
        let outcome = self.nack_locked(id, error, not_before)?;
        self.wake_waiters();
        Ok(outcome)
    }

    fn nack_locked(
        &self,
        id: Uuid,
        error: &str,
        not_before: Option<SystemTime>,
    ) -> Result<NackOutcome, QueueError> {
        let storage = self.inner.storage.as_ref();
        let mut state = self.lock();
        let &(key, enqueued_at) = state
            .in_flight
            .get(&id)
            .ok_or(QueueError::NotInFlight(id))?;
        let stored = storage
            .get_in_flight(key)
            .map_err(QueueError::Storage)?
            .unwrap_or_default();

        let mut item = match record::decode(&stored) {
            Ok(item) => item,
            Err(decode_error) => {
                storage
                    .dead_letter_in_flight(key, &stored)
                    .map_err(QueueError::Storage)?;
                state.in_flight.remove(&id);
                tracing::warn!(request_id = %id, error = %decode_error, "moved undecodable item to dead letters");
                let dead = DeadMeta {
                    id: Some(id),
                    enqueued_at: Some(enqueued_at),
                };
                self.add_dead_letter(&mut state, key, dead)?;
                return Ok(NackOutcome::DeadLettered);
            }
        };

        item.attempts = item.attempts.saturating_add(1);
        item.last_error = Some(error.to_owned());
        item.not_before = not_before;
        let bytes = record::encode(&item).map_err(QueueError::storage)?;
        if item.attempts >= self.inner.config.max_attempts {
            storage
                .dead_letter_in_flight(key, &bytes)
                .map_err(QueueError::Storage)?;
            state.in_flight.remove(&id);
            // The error is the service error or the retryable status, never a header or the body.
            tracing::warn!(
                request_id = %id,
                attempts = item.attempts,
                last_error = error,
                "retry queue item dead-lettered"
            );
            let dead = DeadMeta {
                id: Some(id),
                enqueued_at: Some(item.enqueued_at),
            };
            self.add_dead_letter(&mut state, key, dead)?;
            return Ok(NackOutcome::DeadLettered);
        }

        let new_key = state.take_key()?;
        storage
            .requeue(key, new_key, &bytes)
            .map_err(QueueError::Storage)?;
        state.in_flight.remove(&id);
        state.ready.insert(new_key, ItemMeta::of(&item));
        state.ready_ids.insert(id, new_key);
        Ok(NackOutcome::Requeued)
    }

    /// Returns the earliest `not_before` after `now` among ready items, or `None` when no ready item
    /// waits for one.
    pub(crate) fn next_not_before_after(&self, now: SystemTime) -> Option<SystemTime> {
        let state = self.lock();
        state
            .ready
            .values()
            .filter_map(|meta| meta.not_before)
            .filter(|not_before| *not_before > now)
            .min()
    }
}
