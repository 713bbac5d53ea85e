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
use super::request::QueuedRequest;
use super::store::{Flusher, SledStorage, Storage};
use crate::clock;

mod dead_letters;
mod lease;
mod load;

pub use lease::NackOutcome;
use load::load_state;

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
    /// flight or a dead letter, [`QueueError::Storage`], and [`QueueError::Flush`] when the flush
    /// failed. After a flush error the item is removed again, so a caller informed that its request
    /// was not queued does not also get a replay of it, unless a replay leased the item while the
    /// flush ran.
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
            if let Err(error) = flusher.flush().await {
                self.remove_unflushed(id);
                return Err(error);
            }
        }
        self.wake_waiters();
        Ok(id)
    }

    /// Removes a ready item whose enqueue failed to flush. An item already leased stays, because a
    /// replay of it is running.
    fn remove_unflushed(&self, id: Uuid) {
        let mut state = self.lock();
        let Some(&key) = state.ready_ids.get(&id) else {
            return;
        };
        match self.inner.storage.remove_ready(key) {
            Ok(()) => {
                state.remove_ready(key);
                tracing::warn!(request_id = %id, "flush failed, removed the item again");
            }
            Err(error) => {
                tracing::warn!(request_id = %id, %error, "flush failed and removing the item failed");
            }
        }
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::retry_queue::store::Loaded;
    use crate::BoxError;

    /// A sled store whose in-flight records read back as garbage, like a record damaged on disk
    /// after it was leased, or whose flushes fail, like a full disk.
    #[derive(Debug)]
    struct Faulty {
        sled: SledStorage,
        garble_in_flight: bool,
        fail_flush: bool,
    }

    impl Storage for Faulty {
        fn load(&self, visit: &mut dyn FnMut(u64, &[u8])) -> Result<Loaded, BoxError> {
            self.sled.load(visit)
        }
        fn insert_ready(&self, key: u64, record: &[u8]) -> Result<(), BoxError> {
            self.sled.insert_ready(key, record)
        }
        fn remove_ready(&self, key: u64) -> Result<(), BoxError> {
            self.sled.remove_ready(key)
        }
        fn get_ready(&self, key: u64) -> Result<Option<Vec<u8>>, BoxError> {
            self.sled.get_ready(key)
        }
        fn lease(&self, key: u64) -> Result<Option<Vec<u8>>, BoxError> {
            self.sled.lease(key)
        }
        fn get_in_flight(&self, key: u64) -> Result<Option<Vec<u8>>, BoxError> {
            let record = self.sled.get_in_flight(key)?;
            if self.garble_in_flight {
                return Ok(record.map(|_| b"\x01garbage".to_vec()));
            }
            Ok(record)
        }
        fn remove_in_flight(&self, key: u64) -> Result<(), BoxError> {
            self.sled.remove_in_flight(key)
        }
        fn release(&self, key: u64) -> Result<(), BoxError> {
            self.sled.release(key)
        }
        fn requeue(&self, old_key: u64, new_key: u64, record: &[u8]) -> Result<(), BoxError> {
            self.sled.requeue(old_key, new_key, record)
        }
        fn dead_letter_in_flight(&self, key: u64, record: &[u8]) -> Result<(), BoxError> {
            self.sled.dead_letter_in_flight(key, record)
        }
        fn dead_letter_ready(&self, key: u64) -> Result<(), BoxError> {
            self.sled.dead_letter_ready(key)
        }
        fn dead_letters(&self) -> Result<Vec<Vec<u8>>, BoxError> {
            self.sled.dead_letters()
        }
        fn visit_dead_letters(&self, visit: &mut dyn FnMut(u64, &[u8])) -> Result<(), BoxError> {
            self.sled.visit_dead_letters(visit)
        }
        fn remove_dead_letter(&self, key: u64) -> Result<(), BoxError> {
            self.sled.remove_dead_letter(key)
        }
        fn clear_dead_letters(&self) -> Result<usize, BoxError> {
            self.sled.clear_dead_letters()
        }
        fn flush(&self) -> Result<(), BoxError> {
            if self.fail_flush {
                return Err("no space left on device".into());
            }
            self.sled.flush()
        }
    }

    fn faulty_queue(
        dir: &tempfile::TempDir,
        garble_in_flight: bool,
        fail_flush: bool,
    ) -> RetryQueue {
        let config = RetryQueueConfig::new().path(dir.path());
        let sled = SledStorage::open(&config.path, config.cache_capacity).unwrap();
        let storage = Faulty {
            sled,
            garble_in_flight,
            fail_flush,
        };
        RetryQueue::with_storage(config, Vec::new(), Arc::new(storage)).unwrap()
    }

    fn garbled_queue(dir: &tempfile::TempDir) -> RetryQueue {
        faulty_queue(dir, true, false)
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

    #[tokio::test]
    async fn failed_flush_removes_the_item() {
        let dir = tempfile::tempdir().unwrap();
        let queue = faulty_queue(&dir, false, true);

        let error = queue.enqueue(item()).await.unwrap_err();

        assert_eq!(error.kind(), crate::retry_queue::QueueErrorKind::Flush);
        assert!(queue.is_empty());
        assert_eq!(queue.take().await.unwrap().map(|item| item.id()), None);
        assert!(queue.pending().unwrap().is_empty());
    }
}
