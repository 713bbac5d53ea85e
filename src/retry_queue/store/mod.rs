//! The storage engine behind the retry queue.
//!
//! [`Storage`] is the small set of operations the queue needs from an ordered key-value store with
//! three keyspaces: ready items, in-flight items and dead letters. Keys are sequence numbers, so
//! key order is enqueue order. Only [`sled`](SledStorage) implements it today; another engine can be
//! added without touching the queue logic or the layer.

mod flusher;
mod sled_storage;

use std::fmt;

pub(crate) use flusher::Flusher;
pub(crate) use sled_storage::SledStorage;

use crate::BoxError;

/// The counters of a store right after opening it.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    /// The number of in-flight records that were moved back to ready.
    pub(crate) restored: usize,
    /// The largest key in any keyspace, if any key exists.
    pub(crate) max_key: Option<u64>,
}

/// An ordered store of queue records.
///
/// Every method must be atomic with respect to a crash. After a crash, a record is found under
/// exactly one key of exactly one keyspace. The one exception is a move that keeps the key, which
/// may leave the record in two keyspaces under the same key, and [`Storage::load`] then keeps the
/// ready copy.
pub(crate) trait Storage: Send + Sync + fmt::Debug + 'static {
    /// Moves every in-flight record back to ready under its key, then calls `visit` with every
    /// ready record in key order.
    fn load(&self, visit: &mut dyn FnMut(u64, &[u8])) -> Result<Loaded, BoxError>;
    /// Inserts a ready record.
    fn insert_ready(&self, key: u64, record: &[u8]) -> Result<(), BoxError>;
    /// Removes a ready record.
    fn remove_ready(&self, key: u64) -> Result<(), BoxError>;
    /// Reads a ready record.
    fn get_ready(&self, key: u64) -> Result<Option<Vec<u8>>, BoxError>;
    /// Moves a ready record to in flight under the same key and returns it.
    fn lease(&self, key: u64) -> Result<Option<Vec<u8>>, BoxError>;
    /// Reads an in-flight record.
    fn get_in_flight(&self, key: u64) -> Result<Option<Vec<u8>>, BoxError>;
    /// Removes an in-flight record.
    fn remove_in_flight(&self, key: u64) -> Result<(), BoxError>;
    /// Moves an in-flight record back to ready under the same key.
    fn release(&self, key: u64) -> Result<(), BoxError>;
    /// Replaces the in-flight record under `old_key` with a ready record under `new_key`.
    fn requeue(&self, old_key: u64, new_key: u64, record: &[u8]) -> Result<(), BoxError>;
    /// Replaces the in-flight record under `key` with a dead letter under the same key.
    fn dead_letter_in_flight(&self, key: u64, record: &[u8]) -> Result<(), BoxError>;
    /// Moves a ready record, as stored, to the dead letters under the same key.
    fn dead_letter_ready(&self, key: u64) -> Result<(), BoxError>;
    /// Returns every dead letter in key order.
    fn dead_letters(&self) -> Result<Vec<Vec<u8>>, BoxError>;
    /// Calls `visit` with every dead letter that has a valid key, in key order.
    fn visit_dead_letters(&self, visit: &mut dyn FnMut(u64, &[u8])) -> Result<(), BoxError>;
    /// Removes a dead letter.
    fn remove_dead_letter(&self, key: u64) -> Result<(), BoxError>;
    /// Removes every dead letter and returns how many there were.
    fn clear_dead_letters(&self) -> Result<usize, BoxError>;
    /// Writes every change made so far to disk. Blocks.
    fn flush(&self) -> Result<(), BoxError>;
}
