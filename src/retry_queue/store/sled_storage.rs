//! [`Storage`] on sled 0.34.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::{Db, Transactional, Tree};

use super::{Loaded, Storage};
use crate::retry_queue::error::QueueError;
use crate::BoxError;

/// A sled database with one tree per keyspace. Keys are big-endian `u64`s, so sled's byte order is
/// numeric order.
#[derive(Debug)]
pub(crate) struct SledStorage {
    path: PathBuf,
    db: Db,
    ready: Tree,
    in_flight: Tree,
    dead: Tree,
}

impl SledStorage {
    /// Opens or creates the database in `path`, creating the directory with mode 0700.
    pub(crate) fn open(path: &Path, cache_capacity: u64) -> Result<Self, QueueError> {
        create_private_dir(path).map_err(|source| QueueError::Open {
            path: path.to_path_buf(),
            source: source.into(),
        })?;
        let db = open_db(path, cache_capacity)?;
        let open_tree = |name: &str| {
            db.open_tree(name).map_err(|error| QueueError::Open {
                path: path.to_path_buf(),
                source: error.into(),
            })
        };
        Ok(Self {
            path: path.to_path_buf(),
            ready: open_tree("ready")?,
            in_flight: open_tree("in_flight")?,
            dead: open_tree("dead")?,
            db,
        })
    }
}

/// How long an open waits for a database that this process closed moments ago.
const RELEASE_WAIT: Duration = Duration::from_secs(2);

/// Paths of databases that this process closed, with the time they were closed.
static RELEASED: Mutex<Vec<(PathBuf, Instant)>> = Mutex::new(Vec::new());

/// Opens the sled database, waiting up to [`RELEASE_WAIT`] if this process has just closed it.
///
/// sled 0.34 releases its file lock only when its I/O threads finish the writes of a dropped
/// database, a few milliseconds after the last handle is dropped. Without the wait, reopening a
/// queue right after dropping it fails now and then with a lock error. A lock held by another
/// process or by a live handle still fails at once.
fn open_db(path: &Path, cache_capacity: u64) -> Result<Db, QueueError> {
    let deadline = Instant::now() + RELEASE_WAIT;
    loop {
        let result = sled::Config::new()
            .path(path)
            .cache_capacity(cache_capacity)
            .open();
        match result {
            Ok(db) => {
                forget_released(path);
                return Ok(db);
            }
            Err(error) => {
                let error = open_error(path, error);
                let retry = matches!(error, QueueError::AlreadyOpen { .. })
                    && Instant::now() < deadline
                    && was_released(path);
                if !retry {
                    return Err(error);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

fn released_paths() -> std::sync::MutexGuard<'static, Vec<(PathBuf, Instant)>> {
    RELEASED.lock().unwrap_or_else(PoisonError::into_inner)
}

fn was_released(path: &Path) -> bool {
    let now = Instant::now();
    released_paths()
        .iter()
        .any(|(released, at)| released == path && now.duration_since(*at) < RELEASE_WAIT)
}

fn forget_released(path: &Path) {
    let now = Instant::now();
    released_paths()
        .retain(|(released, at)| released != path && now.duration_since(*at) < RELEASE_WAIT);
}

impl Drop for SledStorage {
    fn drop(&mut self) {
        released_paths().push((self.path.clone(), Instant::now()));
    }
}

/// Maps a sled open error, recognizing the lock failure of a database that is already open.
fn open_error(path: &Path, error: sled::Error) -> QueueError {
    // NOTE: sled 0.34 reports a held file lock only as an `Io` error whose message starts with
    // "could not acquire lock", so the message is the only way to recognize it.
    if let sled::Error::Io(io) = &error {
        if io.to_string().contains("could not acquire lock") {
            return QueueError::AlreadyOpen {
                path: path.to_path_buf(),
            };
        }
    }
    QueueError::Open {
        path: path.to_path_buf(),
        source: error.into(),
    }
}

#[cfg(unix)]
fn create_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

#[cfg(not(unix))]
fn create_private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(path)
}

fn key_bytes(key: u64) -> [u8; 8] {
    key.to_be_bytes()
}

fn key_from(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// Returns the largest valid key of `tree`. A key of the wrong length sorts by its bytes, so it can
/// be the last entry and is skipped.
fn last_key(tree: &Tree) -> Result<Option<u64>, sled::Error> {
    for entry in tree.iter().keys().rev() {
        if let Some(key) = key_from(&entry?) {
            return Ok(Some(key));
        }
    }
    Ok(None)
}

/// Keys above this make [`SledStorage::load`] renumber the ready and dead records from zero.
/// Sequence numbers grow by one per enqueue or nack, so only a damaged or hand-edited store gets
/// here, and renumbering leaves about 2^63 numbers for the rest of the queue's life.
const RENUMBER_ABOVE: u64 = u64::MAX / 2;

/// Moves every record with a valid key in `ready` and `dead` to the keys 0, 1, 2, … in key order.
///
/// The `i`-th smallest key is at least `i`, so moving records in ascending order never overwrites
/// a record that has not moved yet. Each move is one transaction, and a crash in between leaves
/// distinct keys in the same order, so the next load renumbers the rest.
fn renumber(ready: &Tree, dead: &Tree) -> Result<(), BoxError> {
    let mut keys: Vec<(u64, bool)> = Vec::new();
    for (tree, is_dead) in [(ready, false), (dead, true)] {
        for key in tree.iter().keys() {
            if let Some(key) = key_from(&key?) {
                keys.push((key, is_dead));
            }
        }
    }
    keys.sort_unstable();
    for (new_key, (old_key, is_dead)) in (0u64..).zip(keys) {
        if new_key == old_key {
            continue;
        }
        let tree = if is_dead { dead } else { ready };
        tree.transaction(|tree| {
            if let Some(record) = tree.remove(&key_bytes(old_key))? {
                tree.insert(&key_bytes(new_key), record)?;
            }
            Ok::<_, ConflictableTransactionError<()>>(())
        })
        .map_err(flatten)?;
    }
    tracing::warn!(
        "renumbered the retry queue records because a key was near the end of the sequence"
    );
    Ok(())
}

fn flatten(error: TransactionError<()>) -> BoxError {
    match error {
        TransactionError::Abort(()) => "sled transaction aborted".into(),
        TransactionError::Storage(error) => error.into(),
    }
}

impl Storage for SledStorage {
    fn load(&self, visit: &mut dyn FnMut(u64, &[u8])) -> Result<Loaded, BoxError> {
        let mut loaded = Loaded::default();
        // A crash between the two steps leaves the record in both trees under one key, which the
        // next load resolves the same way.
        for entry in self.in_flight.iter() {
            let (key, value) = entry?;
            self.ready.insert(&key, value)?;
            self.in_flight.remove(&key)?;
            loaded.restored += 1;
        }
        let max_key = |storage: &Self| -> Result<Option<u64>, sled::Error> {
            Ok([last_key(&storage.ready)?, last_key(&storage.dead)?]
                .into_iter()
                .flatten()
                .max())
        };
        loaded.max_key = max_key(self)?;
        if loaded.max_key.is_some_and(|key| key > RENUMBER_ABOVE) {
            renumber(&self.ready, &self.dead)?;
            loaded.max_key = max_key(self)?;
        }
        for entry in self.ready.iter() {
            let (key, value) = entry?;
            match key_from(&key) {
                Some(key) => visit(key, &value),
                None => tracing::warn!(
                    key_len = key.len(),
                    "ignoring ready record with an invalid key"
                ),
            }
        }
        Ok(loaded)
    }

    fn insert_ready(&self, key: u64, record: &[u8]) -> Result<(), BoxError> {
        self.ready.insert(key_bytes(key), record)?;
        Ok(())
    }

    fn remove_ready(&self, key: u64) -> Result<(), BoxError> {
        self.ready.remove(key_bytes(key))?;
        Ok(())
    }

    fn get_ready(&self, key: u64) -> Result<Option<Vec<u8>>, BoxError> {
        Ok(self
            .ready
            .get(key_bytes(key))?
            .map(|record| record.to_vec()))
    }

    fn lease(&self, key: u64) -> Result<Option<Vec<u8>>, BoxError> {
        let key = key_bytes(key);
        let Some(record) = self.ready.get(key)? else {
            return Ok(None);
        };
        // Insert first: a crash in between leaves the record in both trees under one key, and load
        // moves it back to ready exactly once.
        self.in_flight.insert(key, record.clone())?;
        self.ready.remove(key)?;
        Ok(Some(record.to_vec()))
    }

    fn get_in_flight(&self, key: u64) -> Result<Option<Vec<u8>>, BoxError> {
        Ok(self
            .in_flight
            .get(key_bytes(key))?
            .map(|record| record.to_vec()))
    }

    fn remove_in_flight(&self, key: u64) -> Result<(), BoxError> {
        self.in_flight.remove(key_bytes(key))?;
        Ok(())
    }

    fn release(&self, key: u64) -> Result<(), BoxError> {
        let key = key_bytes(key);
        if let Some(record) = self.in_flight.get(key)? {
            // Insert first, for the same reason as in `lease`.
            self.ready.insert(key, record)?;
            self.in_flight.remove(key)?;
        }
        Ok(())
    }

    fn requeue(&self, old_key: u64, new_key: u64, record: &[u8]) -> Result<(), BoxError> {
        (&self.ready, &self.in_flight)
            .transaction(|(ready, in_flight)| {
                in_flight.remove(&key_bytes(old_key))?;
                ready.insert(&key_bytes(new_key), record)?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(flatten)
    }

    fn dead_letter_in_flight(&self, key: u64, record: &[u8]) -> Result<(), BoxError> {
        (&self.dead, &self.in_flight)
            .transaction(|(dead, in_flight)| {
                in_flight.remove(&key_bytes(key))?;
                dead.insert(&key_bytes(key), record)?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(flatten)
    }

    fn dead_letter_ready(&self, key: u64) -> Result<(), BoxError> {
        let key = key_bytes(key);
        if let Some(record) = self.ready.get(key)? {
            self.dead.insert(key, record)?;
            self.ready.remove(key)?;
        }
        Ok(())
    }

    fn dead_letters(&self) -> Result<Vec<Vec<u8>>, BoxError> {
        self.dead
            .iter()
            .values()
            .map(|value| Ok(value?.to_vec()))
            .collect()
    }

    fn visit_dead_letters(&self, visit: &mut dyn FnMut(u64, &[u8])) -> Result<(), BoxError> {
        for entry in self.dead.iter() {
            let (key, value) = entry?;
            match key_from(&key) {
                Some(key) => visit(key, &value),
                None => tracing::warn!(
                    key_len = key.len(),
                    "ignoring dead letter with an invalid key"
                ),
            }
        }
        Ok(())
    }

    fn remove_dead_letter(&self, key: u64) -> Result<(), BoxError> {
        self.dead.remove(key_bytes(key))?;
        Ok(())
    }

    fn clear_dead_letters(&self) -> Result<usize, BoxError> {
        let mut removed = 0;
        while self.dead.pop_min()?.is_some() {
            removed += 1;
        }
        Ok(removed)
    }

    fn flush(&self) -> Result<(), BoxError> {
        self.db.flush()?;
        Ok(())
    }
}
