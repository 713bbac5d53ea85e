//! Damaged stores behind `RetryQueue`: records and keys written straight into the trees
//! the queue uses, as a damaged or hand-edited database contains them.

use bytes::Bytes;
use serde::Serialize;
use tower_quota_queue::retry_queue::{QueuedRequest, RetryQueue, RetryQueueConfig};
use uuid::Uuid;

#[path = "support/reopen.rs"]
mod reopen;

fn config(dir: &tempfile::TempDir) -> RetryQueueConfig {
    RetryQueueConfig::new().path(dir.path().join("queue"))
}

fn item(path: &str) -> QueuedRequest {
    let request = http::Request::post(format!("http://127.0.0.1:9/{path}"))
        .body(Bytes::from(path.to_owned()))
        .unwrap();
    QueuedRequest::new(request, "connection refused")
}

/// The field layout of a format-version-1 record, so tests can write records with chosen values.
#[derive(Serialize)]
struct Record<'a> {
    id: [u8; 16],
    method: &'a str,
    uri: String,
    headers: Vec<(&'a str, &'a [u8])>,
    body: &'a [u8],
    enqueued_at: (u64, u32),
    original_error: &'a str,
    attempts: u32,
    last_error: Option<&'a str>,
    not_before: Option<(u64, u32)>,
    partition: &'a str,
}

impl Record<'_> {
    fn valid() -> Self {
        Self {
            id: Uuid::new_v4().into_bytes(),
            method: "POST",
            uri: "http://127.0.0.1:9/forged".to_owned(),
            headers: Vec::new(),
            body: b"forged",
            enqueued_at: (1_800_000_000, 0),
            original_error: "connection refused",
            attempts: 0,
            last_error: None,
            not_before: None,
            partition: "127.0.0.1:9",
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut bytes = vec![1u8];
        bytes.extend(postcard::to_allocvec(self).unwrap());
        bytes
    }
}

/// Writes `value` under `key` into the tree `tree` of the queue database in `dir`.
fn write_raw(dir: &tempfile::TempDir, tree: &str, key: &[u8], value: &[u8]) {
    let db = reopen::open_raw(&dir.path().join("queue"));
    db.open_tree(tree).unwrap().insert(key, value).unwrap();
    db.flush().unwrap();
}

/// Opens the queue on a background thread, so a panic inside `open` fails one assert.
fn open_in_thread(dir: &tempfile::TempDir) -> std::thread::Result<usize> {
    let config = config(dir);
    std::thread::spawn(move || reopen::open_queue(config).map(|queue| queue.len()))
        .join()
        .map(|opened| opened.unwrap())
}

#[test]
fn record_with_huge_enqueue_time_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let mut record = Record::valid();
    record.enqueued_at = (u64::MAX, 0);
    write_raw(&dir, "ready", &0u64.to_be_bytes(), &record.encode());

    let opened = open_in_thread(&dir);
    assert!(
        opened.is_ok(),
        "open panicked on a record whose enqueue time overflows SystemTime"
    );
    assert_eq!(opened.unwrap(), 0);
}

#[test]
fn record_with_huge_not_before_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let mut record = Record::valid();
    record.not_before = Some((u64::MAX, 0));
    write_raw(&dir, "ready", &0u64.to_be_bytes(), &record.encode());

    let opened = open_in_thread(&dir);
    assert!(
        opened.is_ok(),
        "open panicked on a record whose not_before overflows SystemTime"
    );
    assert_eq!(opened.unwrap(), 0);
}

#[test]
fn record_with_too_many_headers_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let mut record = Record::valid();
    // A HeaderMap accepts at most 32768 entries.
    record.headers = vec![("x-a", b"1".as_slice()); 40_000];
    write_raw(&dir, "ready", &0u64.to_be_bytes(), &record.encode());

    let opened = open_in_thread(&dir);
    assert!(
        opened.is_ok(),
        "open panicked on a record with more headers than a HeaderMap accepts"
    );
    assert_eq!(opened.unwrap(), 0);
}

#[tokio::test]
async fn invalid_key_does_not_reuse_live_key() {
    let dir = tempfile::tempdir().unwrap();
    let first = {
        let queue = reopen::open_queue(config(&dir)).unwrap();
        queue.enqueue(item("first")).await.unwrap()
    };
    // A 9-byte key sorts after every 8-byte big-endian key, so it is the tree's last entry.
    write_raw(&dir, "ready", &[0xff; 9], b"garbage");

    let queue = reopen::open_queue(config(&dir)).unwrap();
    let second = queue.enqueue(item("second")).await.unwrap();
    assert_eq!(queue.len(), 2);

    let mut leased_ids = Vec::new();
    while let Some(leased) = queue.take().await.unwrap() {
        leased_ids.push(leased.id());
        queue.ack(leased.id()).await.unwrap();
    }
    assert_eq!(leased_ids, vec![first, second]);
}

#[tokio::test]
async fn record_at_max_key_survives_enqueue() {
    let dir = tempfile::tempdir().unwrap();
    let record = Record::valid();
    let forged = Uuid::from_bytes(record.id);
    write_raw(&dir, "ready", &u64::MAX.to_be_bytes(), &record.encode());

    let queue = reopen::open_queue(config(&dir)).unwrap();
    assert_eq!(queue.len(), 1);
    let enqueued = tokio::spawn({
        let queue = queue.clone();
        async move { queue.enqueue(item("next")).await.map_err(|e| e.to_string()) }
    })
    .await;
    assert!(
        enqueued.is_ok(),
        "enqueue panicked after a record at key u64::MAX"
    );
    let next = enqueued.unwrap().unwrap();
    assert_eq!(queue.len(), 2);

    let mut leased_ids = Vec::new();
    while let Some(leased) = queue.take().await.unwrap() {
        leased_ids.push(leased.id());
        queue.ack(leased.id()).await.unwrap();
    }
    assert_eq!(leased_ids.len(), 2);
    assert!(
        leased_ids.contains(&forged),
        "the record at key u64::MAX was lost"
    );
    assert!(leased_ids.contains(&next), "the enqueued item was lost");
}

#[test]
fn malformed_records_dead_lettered_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut wrong_version = Record::valid().encode();
    wrong_version[0] = 2;
    let mut truncated = Record::valid().encode();
    truncated.truncate(10);
    let mut flipped = Record::valid().encode();
    for byte in flipped.iter_mut().skip(17).step_by(3) {
        *byte ^= 0xa5;
    }
    let cases: [&[u8]; 4] = [&[], &wrong_version, &truncated, &flipped];
    for (key, value) in cases.iter().enumerate() {
        write_raw(&dir, "ready", &(key as u64).to_be_bytes(), value);
    }
    write_raw(&dir, "in_flight", &10u64.to_be_bytes(), b"\x01garbage");
    write_raw(&dir, "dead", &11u64.to_be_bytes(), b"");

    let opened = open_in_thread(&dir);
    assert!(opened.is_ok(), "open panicked on malformed records");
    assert_eq!(opened.unwrap(), 0);
    let queue = reopen::open_queue(config(&dir)).unwrap();
    assert_eq!(queue.stats().dead, 6);
    assert_eq!(queue.dead_letters().unwrap().len(), 0);
}

#[tokio::test(start_paused = true)]
async fn purge_stale_removes_expired_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let ttl = std::time::Duration::from_secs(60);
    let queue = reopen::open_queue(config(&dir).max_attempts(1).item_ttl(ttl)).unwrap();
    for n in 0..20 {
        let id = queue.enqueue(item(&format!("r{n}"))).await.unwrap();
        queue.take().await.unwrap().unwrap();
        queue.nack(id, "HTTP 503", None).await.unwrap();
    }
    assert_eq!(queue.stats().dead, 20);

    tokio::time::advance(2 * ttl).await;
    queue.purge_stale().unwrap();

    // Dead letters are counted in no capacity, so without expiry they grow without bound.
    assert_eq!(queue.stats().dead, 0, "dead letters outlive the item TTL");
    assert_eq!(queue.dead_letters().unwrap().len(), 0);
}

#[test]
fn tiny_cache_capacity_rejected_as_invalid() {
    for capacity in [0, 255] {
        let dir = tempfile::tempdir().unwrap();
        let config = config(&dir).cache_capacity(capacity);
        // sled 0.34.7 asserts a cache capacity of at least 256 bytes.
        let opened = std::thread::spawn(move || RetryQueue::open(config).map(|_| ())).join();
        assert!(
            opened.is_ok(),
            "open panicked with cache_capacity {capacity}"
        );
        let kind = opened.unwrap().unwrap_err().kind();
        assert_eq!(
            kind,
            tower_quota_queue::retry_queue::QueueErrorKind::InvalidConfig,
            "cache_capacity {capacity}"
        );
    }
}
