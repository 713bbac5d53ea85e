//! Rebuilding the in-memory index from the store on open.

use super::dead_letters::trim_dead_letters;

use super::{DeadMeta, ItemMeta, State};
use crate::retry_queue::error::QueueError;
use crate::retry_queue::record;
use crate::retry_queue::store::Storage;

/// Loads the store and rebuilds the in-memory index, dead-lettering undecodable records.
pub(super) fn load_state(storage: &dyn Storage, max_size: usize) -> Result<State, QueueError> {
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
