//! Dead letters and stale items.

use uuid::Uuid;

use super::{DeadMeta, RetryQueue, State};
use crate::clock;
use crate::retry_queue::error::QueueError;
use crate::retry_queue::record;
use crate::retry_queue::request::{is_stale, QueuedRequest};
use crate::retry_queue::store::Storage;

impl RetryQueue {
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

    /// Records a dead letter that is already in the store under `key`, then deletes the oldest
    /// dead letters beyond `max_size`.
    pub(super) fn add_dead_letter(
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
}

/// Deletes the oldest dead letters until at most `max_size` remain, with a `warn!` event each.
pub(super) fn trim_dead_letters(
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
