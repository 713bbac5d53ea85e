//! The durable queue itself.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use http::HeaderName;
use tokio::sync::Notify;
use uuid::Uuid;

use super::config::{Durability, Overflow, RetryQueueConfig};
use super::error::QueueError;
use super::headers::{ensure_idempotency_key, strip_secrets, strip_userinfo};
use super::record;
use super::request::{is_stale, QueuedRequest};
use super::store::{Flusher, SledStorage, Storage};
use crate::clock;

/// A durable FIFO queue of failed requests on sled.
///
/// Items are ready, in flight or dead. [`take`](Self::take) leases the oldest ready item,
/// [`ack`](Self::ack) deletes a leased item, and [`nack`](Self::nack) puts it back at the tail with
/// one more attempt, or moves it to the dead letters after `max_attempts`. Items that were in
/// flight when the process died are ready again after [`open`](Self::open), in their original order
/// and with their ids. Leases belong to the process, so `ack` and `nack` work on items taken
/// through any clone of the same handle.
///
/// Cloning is cheap: clones share one database, one in-memory index and one flush thread.
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use tower_quota_queue::retry_queue::{QueuedRequest, RetryQueue, RetryQueueConfig};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let queue = RetryQueue::open(RetryQueueConfig::new().path(dir.path()))?;
///
/// let request = http::Request::get("http://api.example.com/v1/items").body(Bytes::new())?;
/// let id = queue.enqueue(QueuedRequest::new(request, "connection refused")).await?;
/// assert_eq!(queue.len(), 1);
///
/// let item = queue.take().await?.expect("one ready item");
/// assert_eq!(item.id(), id);
/// queue.ack(id).await?;
/// assert!(queue.is_empty());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RetryQueue {
    inner: Arc<Inner>,
}

struct Inner {
    config: RetryQueueConfig,
    persisted_secrets: Vec<HeaderName>,
    state: Mutex<State>,
    notify: Notify,
    // Declared before `storage` so that the flush thread stops before the database closes.
    flusher: Option<Flusher>,
    storage: Arc<dyn Storage>,
}

/// The in-memory index of the store, rebuilt on open.
#[derive(Debug, Default)]
struct State {
    ready: BTreeMap<u64, ItemMeta>,
    ready_ids: HashMap<Uuid, u64>,
    in_flight: HashMap<Uuid, (u64, SystemTime)>,
    next_key: u64,
    dead: BTreeMap<u64, DeadMeta>,
    dead_ids: HashSet<Uuid>,
}

/// The id and enqueue time of a dead letter in the index. Both are `None` for a record that
/// failed to decode on open.
#[derive(Clone, Copy, Debug, Default)]
struct DeadMeta {
    id: Option<Uuid>,
    enqueued_at: Option<SystemTime>,
}

#[derive(Clone, Copy, Debug)]
struct ItemMeta {
    id: Uuid,
    enqueued_at: SystemTime,
    not_before: Option<SystemTime>,
}

impl ItemMeta {
    fn of(item: &QueuedRequest) -> Self {
        Self {
            id: item.id,
            enqueued_at: item.enqueued_at,
            not_before: item.not_before,
        }
    }
}

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

/// A snapshot of the queue's counters.
///
/// # Example
///
/// ```
/// # use tower_quota_queue::retry_queue::{RetryQueue, RetryQueueConfig};
/// let dir = tempfile::tempdir().unwrap();
/// let queue = RetryQueue::open(RetryQueueConfig::new().path(dir.path())).unwrap();
/// let stats = queue.stats();
/// assert_eq!(stats.pending, 0);
/// assert_eq!(stats.max_size, 10_000);
/// assert_eq!(stats.oldest_age, None);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueStats {
    /// Ready items, including ones whose `not_before` has not passed yet.
    pub pending: usize,
    /// Leased items that were neither acked nor nacked yet.
    pub in_flight: usize,
    /// Dead letters, at most `max_size`.
    pub dead: usize,
    /// The configured capacity for ready plus in-flight items.
    pub max_size: usize,
    /// The configured item TTL.
    pub item_ttl: Duration,
    /// The age of the oldest ready or in-flight item by its enqueue time.
    pub oldest_age: Option<Duration>,
}

impl fmt::Debug for RetryQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryQueue")
            .field("path", &self.inner.config.path)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl RetryQueue {
    /// Opens the queue in `config.path`, creating the directory with mode 0700 if needed.
    ///
    /// Items that were in flight when the last process stopped become ready again. Records that
    /// fail to decode move to the dead letters with a `warn!` event.
    ///
    /// # Errors
    ///
    /// [`QueueError::InvalidConfig`] for an invalid field, [`QueueError::AlreadyOpen`] when another
    /// process or handle has the path open, and [`QueueError::Open`] with the path when sled cannot
    /// open the database.
    pub fn open(config: RetryQueueConfig) -> Result<Self, QueueError> {
        let persisted_secrets = config.validate()?;
        let storage = Arc::new(SledStorage::open(&config.path, config.cache_capacity)?);
        Self::with_storage(config, persisted_secrets, storage)
    }

    /// Opens the queue on an opened store.
    fn with_storage(
        config: RetryQueueConfig,
        persisted_secrets: Vec<HeaderName>,
        storage: Arc<dyn Storage>,
    ) -> Result<Self, QueueError> {
        let state = load_state(storage.as_ref(), config.max_size)?;
        tracing::debug!(
            path = %config.path.display(),
            ready = state.ready.len(),
            dead = state.dead.len(),
            "opened retry queue"
        );
        let flusher = match config.durability {
            Durability::Flush => Some(Flusher::start(Arc::clone(&storage))?),
            Durability::Periodic => None,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                persisted_secrets,
                state: Mutex::new(state),
                notify: Notify::new(),
                flusher,
                storage,
            }),
        })
    }

    /// Returns the configuration the queue was opened with.
    pub fn config(&self) -> &RetryQueueConfig {
        &self.inner.config
    }

    /// Persists an item at the tail of the queue and returns its id.
    ///
    /// Before the item is written, sensitive headers are dropped (see
    /// [`RetryQueueConfig::persist_sensitive_headers`]), the user information of the URI is
    /// removed (see [`RetryQueueConfig::persist_uri_userinfo`]), and an `Idempotency-Key` equal to
    /// the id is added unless the request has one. With [`Durability::Flush`] the future resolves after the
    /// item is on disk. When the queue is full, [`Overflow`] decides between evicting the oldest
    /// ready item and rejecting this one.
    ///
    /// # Errors
    ///
    /// [`QueueError::Full`], [`QueueError::DuplicateId`] when an item with this id is queued, in
    /// flight or a dead letter, [`QueueError::Storage`], and [`QueueError::Flush`] when the flush failed. After a
    /// flush error the item is in the queue but may be lost in a crash.
    pub async fn enqueue(&self, mut item: QueuedRequest) -> Result<Uuid, QueueError> {
        let id = item.id;
        let dropped = strip_secrets(&mut item.headers, &self.inner.persisted_secrets);
        if dropped > 0 {
            tracing::trace!(request_id = %id, dropped, "dropped sensitive headers before persisting");
        }
        if !self.inner.config.persist_uri_userinfo && strip_userinfo(&mut item.uri) {
            tracing::trace!(request_id = %id, "dropped user information from the URI before persisting");
        }
        ensure_idempotency_key(&mut item.headers, id);
        let bytes = record::encode(&item).map_err(QueueError::storage)?;
        self.insert(ItemMeta::of(&item), &bytes)?;
        if let Some(flusher) = &self.inner.flusher {
            flusher.flush().await?;
        }
        self.wake_waiters();
        Ok(id)
    }

    fn insert(&self, meta: ItemMeta, bytes: &[u8]) -> Result<(), QueueError> {
        let mut state = self.lock();
        if state.ready_ids.contains_key(&meta.id)
            || state.in_flight.contains_key(&meta.id)
            || state.dead_ids.contains(&meta.id)
        {
            return Err(QueueError::DuplicateId(meta.id));
        }
        while state.ready.len() + state.in_flight.len() >= self.inner.config.max_size {
            self.make_room(&mut state)?;
        }
        let key = state.take_key()?;
        self.inner
            .storage
            .insert_ready(key, bytes)
            .map_err(QueueError::Storage)?;
        state.ready.insert(key, meta);
        state.ready_ids.insert(meta.id, key);
        Ok(())
    }

    fn make_room(&self, state: &mut State) -> Result<(), QueueError> {
        let max_size = self.inner.config.max_size;
        if self.inner.config.overflow == Overflow::RejectNew {
            return Err(QueueError::Full { max_size });
        }
        let Some((&key, &meta)) = state.ready.first_key_value() else {
            return Err(QueueError::Full { max_size });
        };
        self.inner
            .storage
            .remove_ready(key)
            .map_err(QueueError::Storage)?;
        state.remove_ready(key);
        tracing::warn!(request_id = %meta.id, max_size, "retry queue full, evicted the oldest item");
        Ok(())
    }

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

    /// Returns the number of ready plus in-flight items.
    pub fn len(&self) -> usize {
        let state = self.lock();
        state.ready.len() + state.in_flight.len()
    }

    /// Returns whether the queue has no ready and no in-flight items.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns a snapshot of the counters.
    pub fn stats(&self) -> QueueStats {
        let now = clock::now();
        let state = self.lock();
        let oldest = state
            .ready
            .values()
            .map(|meta| meta.enqueued_at)
            .chain(
                state
                    .in_flight
                    .values()
                    .map(|&(_, enqueued_at)| enqueued_at),
            )
            .min();
        QueueStats {
            pending: state.ready.len(),
            in_flight: state.in_flight.len(),
            dead: state.dead.len(),
            max_size: self.inner.config.max_size,
            item_ttl: self.inner.config.item_ttl,
            oldest_age: oldest
                .map(|enqueued_at| now.duration_since(enqueued_at).unwrap_or_default()),
        }
    }

    /// Returns the earliest time at which a ready item can be taken, or `None` when no item is
    /// ready. An item without `not_before` is takeable now, so this returns
    /// [`clock::now`](crate::clock::now) for it.
    pub fn next_ready_at(&self) -> Option<SystemTime> {
        let now = clock::now();
        let state = self.lock();
        state
            .ready
            .values()
            .map(|meta| {
                meta.not_before
                    .map_or(now, |not_before| not_before.max(now))
            })
            .min()
    }

    /// Removes every ready item and every dead letter whose TTL has run out, and returns how many
    /// were removed.
    ///
    /// The TTL of a dead letter counts from the enqueue time of its item, like that of a ready
    /// item. Dead letters whose record failed to decode have no enqueue time, so only the
    /// `max_size` bound on dead letters removes them.
    ///
    /// # Errors
    ///
    /// [`QueueError::Storage`] when sled fails. Items removed before the failure stay removed.
    pub fn purge_stale(&self) -> Result<usize, QueueError> {
        let now = clock::now();
        let ttl = self.inner.config.item_ttl;
        let mut state = self.lock();
        let stale: Vec<(u64, Uuid)> = state
            .ready
            .iter()
            .filter(|(_, meta)| is_stale(meta.enqueued_at, ttl, now))
            .map(|(&key, meta)| (key, meta.id))
            .collect();
        for &(key, id) in &stale {
            self.inner
                .storage
                .remove_ready(key)
                .map_err(QueueError::Storage)?;
            state.remove_ready(key);
            tracing::debug!(request_id = %id, "removed stale retry queue item");
        }
        let stale_dead: Vec<(u64, DeadMeta)> = state
            .dead
            .iter()
            .filter(|(_, meta)| {
                meta.enqueued_at
                    .is_some_and(|enqueued_at| is_stale(enqueued_at, ttl, now))
            })
            .map(|(&key, &meta)| (key, meta))
            .collect();
        for &(key, meta) in &stale_dead {
            self.inner
                .storage
                .remove_dead_letter(key)
                .map_err(QueueError::Storage)?;
            state.remove_dead(key);
            tracing::debug!(request_id = ?meta.id, "removed stale dead letter");
        }
        Ok(stale.len() + stale_dead.len())
    }

    /// Returns every ready and in-flight item without taking it, in queue order.
    ///
    /// Queue order is the order in which [`take`](Self::take) leases items, so a nacked item comes
    /// after the items that were ready when it was nacked. Unlike `take_where`, this also lists
    /// items that wait for their `not_before` and items whose TTL has run out but that were not
    /// removed yet. Records that fail to decode are skipped with a `debug!` event.
    ///
    /// # Example
    ///
    /// ```
    /// use bytes::Bytes;
    /// use tower_quota_queue::retry_queue::{QueuedRequest, RetryQueue, RetryQueueConfig};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let dir = tempfile::tempdir()?;
    /// let queue = RetryQueue::open(RetryQueueConfig::new().path(dir.path()))?;
    /// let request = http::Request::get("http://api.example.com/").body(Bytes::new())?;
    /// let id = queue.enqueue(QueuedRequest::new(request, "timed out")).await?;
    ///
    /// let pending = queue.pending()?;
    /// assert_eq!(pending.len(), 1);
    /// assert_eq!(pending[0].id(), id);
    /// assert_eq!(queue.len(), 1);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`QueueError::Storage`] when sled fails.
    pub fn pending(&self) -> Result<Vec<QueuedRequest>, QueueError> {
        let storage = self.inner.storage.as_ref();
        // NOTE: the lock is held while every record is read and decoded, so a large queue delays
        // enqueues and takes for that long.
        let state = self.lock();
        let mut keys: Vec<(u64, bool)> = state
            .ready
            .keys()
            .map(|&key| (key, false))
            .chain(state.in_flight.values().map(|&(key, _)| (key, true)))
            .collect();
        keys.sort_unstable();
        let mut items = Vec::with_capacity(keys.len());
        for (key, in_flight) in keys {
            let stored = if in_flight {
                storage.get_in_flight(key)
            } else {
                storage.get_ready(key)
            };
            let Some(bytes) = stored.map_err(QueueError::Storage)? else {
                continue;
            };
            match record::decode(&bytes) {
                Ok(item) => items.push(item),
                Err(error) => tracing::debug!(key, %error, "skipping undecodable pending item"),
            }
        }
        Ok(items)
    }

    /// Returns every dead letter that can be decoded, oldest first.
    ///
    /// # Errors
    ///
    /// [`QueueError::Storage`] when sled fails.
    pub fn dead_letters(&self) -> Result<Vec<QueuedRequest>, QueueError> {
        let records = self
            .inner
            .storage
            .dead_letters()
            .map_err(QueueError::Storage)?;
        let mut items = Vec::with_capacity(records.len());
        for bytes in records {
            match record::decode(&bytes) {
                Ok(item) => items.push(item),
                Err(error) => tracing::debug!(%error, "skipping undecodable dead letter"),
            }
        }
        Ok(items)
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

    /// Deletes every dead letter and returns how many were deleted.
    ///
    /// Dead letters do not count toward the `max_size` of ready and in-flight items. They stay on
    /// disk until their TTL runs out and [`purge_stale`](Self::purge_stale) runs, until this is
    /// called, or until `max_size` newer dead letters push them out: beyond `max_size` dead
    /// letters, the oldest one is deleted with a `warn!` event.
    ///
    /// # Errors
    ///
    /// [`QueueError::Storage`] when sled fails. Dead letters deleted before the failure stay
    /// deleted.
    pub fn clear_dead_letters(&self) -> Result<usize, QueueError> {
        let mut state = self.lock();
        let removed = self
            .inner
            .storage
            .clear_dead_letters()
            .map_err(QueueError::Storage)?;
        state.dead.clear();
        state.dead_ids.clear();
        Ok(removed)
    }

    /// Returns the notification that fires after every enqueue and nack.
    ///
    /// Both `notify_waiters` and `notify_one` are called, so a waiter that registered late still
    /// finds a stored permit.
    pub(crate) fn notify(&self) -> &Notify {
        &self.inner.notify
    }

    /// Returns the key that the next enqueue or nack will use. Items with smaller keys exist now.
    pub(crate) fn next_key(&self) -> u64 {
        self.lock().next_key
    }

    /// Records a dead letter that is already in the store under `key`, then deletes the oldest
    /// dead letters beyond `max_size`.
    fn add_dead_letter(
        &self,
        state: &mut State,
        key: u64,
        meta: DeadMeta,
    ) -> Result<(), QueueError> {
        state.insert_dead(key, meta);
        trim_dead_letters(
            self.inner.storage.as_ref(),
            state,
            self.inner.config.max_size,
        )
    }

    fn wake_waiters(&self) {
        self.inner.notify.notify_waiters();
        self.inner.notify.notify_one();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    /// Hands out the next sequence number.
    fn take_key(&mut self) -> Result<u64, QueueError> {
        let key = self.next_key;
        // Only a corrupt key near `u64::MAX` can exhaust the sequence numbers.
        self.next_key = key
            .checked_add(1)
            .ok_or_else(|| QueueError::storage("queue sequence numbers are exhausted"))?;
        Ok(key)
    }

    fn remove_ready(&mut self, key: u64) {
        if let Some(meta) = self.ready.remove(&key) {
            self.ready_ids.remove(&meta.id);
        }
    }

    fn insert_dead(&mut self, key: u64, meta: DeadMeta) {
        if let Some(id) = meta.id {
            self.dead_ids.insert(id);
        }
        self.dead.insert(key, meta);
    }

    fn remove_dead(&mut self, key: u64) {
        if let Some(DeadMeta { id: Some(id), .. }) = self.dead.remove(&key) {
            self.dead_ids.remove(&id);
        }
    }
}

/// Deletes the oldest dead letters until at most `max_size` remain, with a `warn!` event each.
fn trim_dead_letters(
    storage: &dyn Storage,
    state: &mut State,
    max_size: usize,
) -> Result<(), QueueError> {
    while state.dead.len() > max_size {
        let Some((&key, &meta)) = state.dead.first_key_value() else {
            break;
        };
        storage
            .remove_dead_letter(key)
            .map_err(QueueError::Storage)?;
        state.remove_dead(key);
        tracing::warn!(
            request_id = ?meta.id,
            max_size,
            "too many dead letters, deleted the oldest"
        );
    }
    Ok(())
}

/// Loads the store and rebuilds the in-memory index, dead-lettering undecodable records.
fn load_state(storage: &dyn Storage, max_size: usize) -> Result<State, QueueError> {
    let mut state = State::default();
    let mut rejected = Vec::new();
    let loaded = storage
        .load(&mut |key, bytes| match record::decode(bytes) {
            Ok(item) if !state.ready_ids.contains_key(&item.id) => {
                state.ready_ids.insert(item.id, key);
                state.ready.insert(key, ItemMeta::of(&item));
            }
            Ok(item) => {
                tracing::warn!(request_id = %item.id, key, "moved duplicate item to dead letters");
                rejected.push(key);
            }
            Err(error) => {
                tracing::warn!(key, %error, "moved undecodable item to dead letters");
                rejected.push(key);
            }
        })
        .map_err(QueueError::Storage)?;
    if loaded.restored > 0 {
        tracing::info!(
            items = loaded.restored,
            "in-flight items from the last run are ready again"
        );
    }
    for &key in &rejected {
        storage
            .dead_letter_ready(key)
            .map_err(QueueError::Storage)?;
    }
    state.next_key = loaded.max_key.map_or(0, |key| key.saturating_add(1));
    storage
        .visit_dead_letters(&mut |key, bytes| {
            let meta = record::decode(bytes).map_or_else(
                |_| DeadMeta::default(),
                |item| DeadMeta {
                    id: Some(item.id),
                    enqueued_at: Some(item.enqueued_at),
                },
            );
            state.insert_dead(key, meta);
        })
        .map_err(QueueError::Storage)?;
    trim_dead_letters(storage, &mut state, max_size)?;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::retry_queue::store::Loaded;
    use crate::BoxError;

    /// A sled store whose in-flight records read back as garbage, like a record damaged on disk
    /// after it was leased.
    #[derive(Debug)]
    struct GarbledInFlight(SledStorage);

    impl Storage for GarbledInFlight {
        fn load(&self, visit: &mut dyn FnMut(u64, &[u8])) -> Result<Loaded, BoxError> {
            self.0.load(visit)
        }
        fn insert_ready(&self, key: u64, record: &[u8]) -> Result<(), BoxError> {
            self.0.insert_ready(key, record)
        }
        fn remove_ready(&self, key: u64) -> Result<(), BoxError> {
            self.0.remove_ready(key)
        }
        fn get_ready(&self, key: u64) -> Result<Option<Vec<u8>>, BoxError> {
            self.0.get_ready(key)
        }
        fn lease(&self, key: u64) -> Result<Option<Vec<u8>>, BoxError> {
            self.0.lease(key)
        }
        fn get_in_flight(&self, key: u64) -> Result<Option<Vec<u8>>, BoxError> {
            Ok(self.0.get_in_flight(key)?.map(|_| b"\x01garbage".to_vec()))
        }
        fn remove_in_flight(&self, key: u64) -> Result<(), BoxError> {
            self.0.remove_in_flight(key)
        }
        fn release(&self, key: u64) -> Result<(), BoxError> {
            self.0.release(key)
        }
        fn requeue(&self, old_key: u64, new_key: u64, record: &[u8]) -> Result<(), BoxError> {
            self.0.requeue(old_key, new_key, record)
        }
        fn dead_letter_in_flight(&self, key: u64, record: &[u8]) -> Result<(), BoxError> {
            self.0.dead_letter_in_flight(key, record)
        }
        fn dead_letter_ready(&self, key: u64) -> Result<(), BoxError> {
            self.0.dead_letter_ready(key)
        }
        fn dead_letters(&self) -> Result<Vec<Vec<u8>>, BoxError> {
            self.0.dead_letters()
        }
        fn visit_dead_letters(&self, visit: &mut dyn FnMut(u64, &[u8])) -> Result<(), BoxError> {
            self.0.visit_dead_letters(visit)
        }
        fn remove_dead_letter(&self, key: u64) -> Result<(), BoxError> {
            self.0.remove_dead_letter(key)
        }
        fn clear_dead_letters(&self) -> Result<usize, BoxError> {
            self.0.clear_dead_letters()
        }
        fn flush(&self) -> Result<(), BoxError> {
            self.0.flush()
        }
    }

    fn garbled_queue(dir: &tempfile::TempDir) -> RetryQueue {
        let config = RetryQueueConfig::new().path(dir.path());
        let storage = SledStorage::open(&config.path, config.cache_capacity).unwrap();
        RetryQueue::with_storage(config, Vec::new(), Arc::new(GarbledInFlight(storage))).unwrap()
    }

    fn item() -> QueuedRequest {
        let request = http::Request::get("http://127.0.0.1:9/")
            .body(Bytes::new())
            .unwrap();
        QueuedRequest::new(request, "connection refused")
    }

    #[tokio::test]
    async fn release_of_undecodable_item_dead_letters_it() {
        let dir = tempfile::tempdir().unwrap();
        let queue = garbled_queue(&dir);
        let id = queue.enqueue(item()).await.unwrap();
        assert_eq!(queue.take().await.unwrap().unwrap().id(), id);

        queue.release(id).await.unwrap();

        let stats = queue.stats();
        assert_eq!(stats.pending, 0);
        assert_eq!(stats.in_flight, 0);
        assert_eq!(stats.dead, 1);
        let error = queue.ack(id).await.unwrap_err();
        assert_eq!(
            error.kind(),
            crate::retry_queue::QueueErrorKind::NotInFlight
        );
    }

    #[tokio::test]
    async fn nack_of_undecodable_item_dead_letters_it() {
        let dir = tempfile::tempdir().unwrap();
        let queue = garbled_queue(&dir);
        let id = queue.enqueue(item()).await.unwrap();
        queue.take().await.unwrap().unwrap();

        let outcome = queue.nack(id, "HTTP 503", None).await.unwrap();

        assert_eq!(outcome, NackOutcome::DeadLettered);
        assert_eq!(queue.stats().dead, 1);
        assert_eq!(queue.stats().in_flight, 0);
    }
}
