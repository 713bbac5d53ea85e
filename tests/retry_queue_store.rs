//! Store behaviour of `RetryQueue` on a real sled directory.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tower_quota_queue::clock;
use tower_quota_queue::retry_queue::{
    NackOutcome, Overflow, QueueErrorKind, QueuedRequest, RetryQueue, RetryQueueConfig,
};
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

async fn take_id(queue: &RetryQueue) -> Option<Uuid> {
    queue.take().await.unwrap().map(|item| item.id())
}

#[tokio::test]
async fn take_returns_items_in_fifo_order() {
    let dir = tempfile::tempdir().unwrap();
    let queue = RetryQueue::open(config(&dir)).unwrap();
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(queue.enqueue(item(&format!("r{n}"))).await.unwrap());
    }
    assert_eq!(queue.len(), 5);
    for &expected in &ids {
        let taken = queue.take().await.unwrap().unwrap();
        assert_eq!(taken.id(), expected);
        queue.ack(expected).await.unwrap();
    }
    assert_eq!(take_id(&queue).await, None);
    assert!(queue.is_empty());
}

#[tokio::test]
async fn item_fields_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let not_before = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
    let enqueued_at = clock::now() - Duration::from_secs(60);
    let id = {
        let queue = RetryQueue::open(config(&dir)).unwrap();
        let request = http::Request::patch("http://127.0.0.1:9/v1/things/7?x=y")
            .header("content-type", "application/json")
            .body(Bytes::from_static(b"{\"a\":1}"))
            .unwrap();
        let queued = QueuedRequest::new(request, "HTTP 503")
            .with_partition("tenant-a")
            .with_not_before(Some(not_before))
            .with_enqueued_at(enqueued_at);
        queue.enqueue(queued).await.unwrap()
    };
    let queue = RetryQueue::open(config(&dir)).unwrap();
    let taken = queue.take().await.unwrap().unwrap();
    assert_eq!(taken.id(), id);
    assert_eq!(taken.method(), http::Method::PATCH);
    assert_eq!(taken.uri(), "http://127.0.0.1:9/v1/things/7?x=y");
    assert_eq!(taken.headers()["content-type"], "application/json");
    assert_eq!(taken.headers()["idempotency-key"], id.to_string().as_str());
    assert_eq!(taken.body(), &Bytes::from_static(b"{\"a\":1}"));
    assert_eq!(taken.enqueued_at(), enqueued_at);
    assert_eq!(taken.original_error(), "HTTP 503");
    assert_eq!(taken.attempts(), 0);
    assert_eq!(taken.last_error(), None);
    assert_eq!(taken.not_before(), Some(not_before));
    assert_eq!(taken.partition(), "tenant-a");
}

#[tokio::test]
async fn nack_moves_item_to_tail() {
    let dir = tempfile::tempdir().unwrap();
    let queue = RetryQueue::open(config(&dir)).unwrap();
    let first = queue.enqueue(item("a")).await.unwrap();
    let second = queue.enqueue(item("b")).await.unwrap();

    assert_eq!(take_id(&queue).await, Some(first));
    let outcome = queue.nack(first, "HTTP 502", None).await.unwrap();
    assert_eq!(outcome, NackOutcome::Requeued);

    assert_eq!(take_id(&queue).await, Some(second));
    let again = queue.take().await.unwrap().unwrap();
    assert_eq!(again.id(), first);
    assert_eq!(again.attempts(), 1);
    assert_eq!(again.last_error(), Some("HTTP 502"));
}

#[tokio::test]
async fn nack_dead_letters_after_max_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let queue = RetryQueue::open(config(&dir).max_attempts(2)).unwrap();
    let id = queue.enqueue(item("poison")).await.unwrap();

    queue.take().await.unwrap().unwrap();
    assert_eq!(
        queue.nack(id, "e1", None).await.unwrap(),
        NackOutcome::Requeued
    );
    queue.take().await.unwrap().unwrap();
    assert_eq!(
        queue.nack(id, "e2", None).await.unwrap(),
        NackOutcome::DeadLettered
    );

    assert!(queue.is_empty());
    assert_eq!(queue.stats().dead, 1);
    let dead = queue.dead_letters().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id(), id);
    assert_eq!(dead[0].attempts(), 2);
    assert_eq!(dead[0].last_error(), Some("e2"));

    assert_eq!(queue.clear_dead_letters().unwrap(), 1);
    assert_eq!(queue.stats().dead, 0);
    assert!(queue.dead_letters().unwrap().is_empty());
}

#[tokio::test]
async fn in_flight_items_ready_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut ids = Vec::new();
    {
        let queue = RetryQueue::open(config(&dir)).unwrap();
        for n in 0..4 {
            ids.push(queue.enqueue(item(&format!("r{n}"))).await.unwrap());
        }
        assert_eq!(take_id(&queue).await, Some(ids[0]));
        assert_eq!(take_id(&queue).await, Some(ids[1]));
        assert_eq!(queue.stats().in_flight, 2);
    }
    let queue = RetryQueue::open(config(&dir)).unwrap();
    assert_eq!(queue.stats().in_flight, 0);
    assert_eq!(queue.stats().pending, 4);
    for &expected in &ids {
        assert_eq!(take_id(&queue).await, Some(expected));
    }
}

#[tokio::test]
async fn drop_oldest_evicts_oldest_ready_item() {
    let dir = tempfile::tempdir().unwrap();
    let queue = RetryQueue::open(config(&dir).max_size(3)).unwrap();
    let a = queue.enqueue(item("a")).await.unwrap();
    let b = queue.enqueue(item("b")).await.unwrap();
    let c = queue.enqueue(item("c")).await.unwrap();
    // `a` is in flight, so the oldest ready item is `b`.
    assert_eq!(take_id(&queue).await, Some(a));
    let d = queue.enqueue(item("d")).await.unwrap();
    assert_eq!(queue.len(), 3);
    assert_eq!(take_id(&queue).await, Some(c));
    assert_eq!(take_id(&queue).await, Some(d));
    assert_eq!(take_id(&queue).await, None);
    assert_ne!(b, d);
}

#[tokio::test]
async fn drop_oldest_full_of_in_flight_rejects() {
    let dir = tempfile::tempdir().unwrap();
    let queue = RetryQueue::open(config(&dir).max_size(1)).unwrap();
    queue.enqueue(item("a")).await.unwrap();
    queue.take().await.unwrap().unwrap();
    let error = queue.enqueue(item("b")).await.unwrap_err();
    assert_eq!(error.kind(), QueueErrorKind::Full);
}

#[tokio::test]
async fn reject_new_returns_full_error() {
    let dir = tempfile::tempdir().unwrap();
    let queue = RetryQueue::open(config(&dir).max_size(2).overflow(Overflow::RejectNew)).unwrap();
    let a = queue.enqueue(item("a")).await.unwrap();
    queue.enqueue(item("b")).await.unwrap();
    let error = queue.enqueue(item("c")).await.unwrap_err();
    assert_eq!(error.kind(), QueueErrorKind::Full);
    assert_eq!(queue.len(), 2);
    assert_eq!(take_id(&queue).await, Some(a));
}

#[tokio::test(start_paused = true)]
async fn ttl_counts_from_persisted_enqueue_time() {
    let dir = tempfile::tempdir().unwrap();
    let ttl = Duration::from_secs(3600);
    {
        let queue = RetryQueue::open(config(&dir).item_ttl(ttl)).unwrap();
        queue.enqueue(item("old")).await.unwrap();
        tokio::time::advance(Duration::from_secs(1800)).await;
        queue.enqueue(item("young")).await.unwrap();
    }
    tokio::time::advance(Duration::from_secs(1801)).await;
    let queue = RetryQueue::open(config(&dir).item_ttl(ttl)).unwrap();
    assert_eq!(queue.len(), 2);
    assert_eq!(queue.purge_stale().unwrap(), 1);
    assert_eq!(queue.len(), 1);
    let young = queue.take().await.unwrap().unwrap();
    assert_eq!(young.uri().path(), "/young");
}

#[tokio::test(start_paused = true)]
async fn take_skips_and_removes_stale_items() {
    let dir = tempfile::tempdir().unwrap();
    let queue = RetryQueue::open(config(&dir).item_ttl(Duration::from_secs(60))).unwrap();
    let old = item("old").with_enqueued_at(clock::now() - Duration::from_secs(61));
    queue.enqueue(old).await.unwrap();
    let fresh = queue.enqueue(item("fresh")).await.unwrap();
    assert_eq!(take_id(&queue).await, Some(fresh));
    assert_eq!(queue.len(), 1);
    assert_eq!(queue.stats().pending, 0);
}

#[tokio::test(start_paused = true)]
async fn take_waits_for_not_before() {
    let dir = tempfile::tempdir().unwrap();
    let queue = RetryQueue::open(config(&dir)).unwrap();
    let later = clock::now() + Duration::from_secs(30);
    let delayed = queue
        .enqueue(item("delayed").with_not_before(Some(later)))
        .await
        .unwrap();
    assert_eq!(take_id(&queue).await, None);
    assert_eq!(queue.next_ready_at(), Some(later));
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(take_id(&queue).await, Some(delayed));
}

#[tokio::test]
async fn take_where_skips_rejected_partition() {
    let dir = tempfile::tempdir().unwrap();
    let queue = RetryQueue::open(config(&dir)).unwrap();
    let blocked = queue
        .enqueue(item("a").with_partition("blocked"))
        .await
        .unwrap();
    let open = queue
        .enqueue(item("b").with_partition("open"))
        .await
        .unwrap();
    let taken = queue
        .take_where(|item| item.partition() != "blocked")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(taken.id(), open);
    assert_eq!(take_id(&queue).await, Some(blocked));
}

#[tokio::test]
async fn duplicate_id_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let queue = RetryQueue::open(config(&dir)).unwrap();
    let id = Uuid::new_v4();
    queue.enqueue(item("a").with_id(id)).await.unwrap();
    let error = queue.enqueue(item("b").with_id(id)).await.unwrap_err();
    assert_eq!(error.kind(), QueueErrorKind::DuplicateId);
}

#[tokio::test]
async fn ack_unknown_id_is_not_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let queue = RetryQueue::open(config(&dir)).unwrap();
    let id = queue.enqueue(item("a")).await.unwrap();
    assert_eq!(
        queue.ack(id).await.unwrap_err().kind(),
        QueueErrorKind::NotInFlight
    );
    let nack = queue.nack(id, "x", None).await.unwrap_err();
    assert_eq!(nack.kind(), QueueErrorKind::NotInFlight);
}

#[tokio::test]
async fn second_open_reports_already_open() {
    let dir = tempfile::tempdir().unwrap();
    let _queue = RetryQueue::open(config(&dir)).unwrap();
    let error = RetryQueue::open(config(&dir)).unwrap_err();
    assert_eq!(error.kind(), QueueErrorKind::AlreadyOpen);
    assert!(error.to_string().contains("already open"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_enqueue_64_concurrent_producers() {
    let dir = tempfile::tempdir().unwrap();
    let queue = RetryQueue::open(config(&dir)).unwrap();
    let mut tasks = Vec::new();
    for producer in 0..64 {
        let queue = queue.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in 0..20 {
                ids.push(
                    queue
                        .enqueue(item(&format!("p{producer}-{n}")))
                        .await
                        .unwrap(),
                );
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.extend(task.await.unwrap());
    }
    assert_eq!(ids.len(), 1280);
    assert_eq!(queue.len(), 1280);
    drop(queue);

    let queue = RetryQueue::open(config(&dir)).unwrap();
    let mut found = std::collections::HashSet::new();
    while let Some(item) = queue.take().await.unwrap() {
        assert!(found.insert(item.id()), "id {} taken twice", item.id());
    }
    let expected: std::collections::HashSet<Uuid> = ids.into_iter().collect();
    assert_eq!(found, expected);
}

#[tokio::test]
async fn undecodable_record_moves_to_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let good = {
        let queue = RetryQueue::open(config(&dir)).unwrap();
        queue.enqueue(item("good")).await.unwrap()
    };
    {
        // Write records that a corrupt disk or a later format version could leave behind.
        let db = reopen::open_raw(&dir.path().join("queue"));
        let ready = db.open_tree("ready").unwrap();
        ready
            .insert(1_000u64.to_be_bytes(), &b"\x01garbage"[..])
            .unwrap();
        ready
            .insert(1_001u64.to_be_bytes(), &b"\x07future format"[..])
            .unwrap();
        db.flush().unwrap();
    }
    let queue = reopen::open_queue(config(&dir)).unwrap();
    assert_eq!(queue.stats().dead, 2);
    assert_eq!(queue.len(), 1);
    assert_eq!(take_id(&queue).await, Some(good));
    assert!(queue.dead_letters().unwrap().is_empty());
}

#[tokio::test]
async fn open_error_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, b"x").unwrap();
    let error = RetryQueue::open(RetryQueueConfig::new().path(&file)).unwrap_err();
    assert_eq!(error.kind(), QueueErrorKind::Open);
    assert!(
        error.to_string().contains(&file.display().to_string()),
        "{error}"
    );
}

#[cfg(unix)]
#[tokio::test]
async fn queue_directory_created_private() {
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested").join("queue");
    let _queue = RetryQueue::open(RetryQueueConfig::new().path(&path)).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[tokio::test]
async fn invalid_config_rejected_with_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (config(&dir).max_size(0), "max_size"),
        (config(&dir).max_attempts(0), "max_attempts"),
        (config(&dir).item_ttl(Duration::ZERO), "item_ttl"),
        (
            config(&dir).persist_sensitive_headers(["bad header"]),
            "persist_sensitive_headers",
        ),
    ];
    for (config, field) in cases {
        let error = RetryQueue::open(config).unwrap_err();
        assert_eq!(error.kind(), QueueErrorKind::InvalidConfig);
        assert!(error.to_string().contains(field), "{error}");
    }
}

#[test]
fn config_defaults_and_file_fields() {
    let defaults = RetryQueueConfig::default();
    assert_eq!(defaults.max_size, 10_000);
    assert_eq!(defaults.item_ttl, Duration::from_secs(24 * 3600));
    assert_eq!(defaults.max_body_bytes, 4 * 1024 * 1024);
    assert_eq!(defaults.overflow, Overflow::DropOldest);
    assert_eq!(
        defaults.durability,
        tower_quota_queue::retry_queue::Durability::Flush
    );
    assert!(defaults.persist_sensitive_headers.is_empty());

    let parsed: RetryQueueConfig = serde_json::from_str(
        r#"{"path": "/tmp/q", "max_size": 5, "item_ttl": "90s", "max_body_bytes": 10,
            "overflow": "reject_new", "durability": "periodic", "max_attempts": 3,
            "persist_sensitive_headers": ["x-api-key"], "cache_capacity": 1048576}"#,
    )
    .unwrap();
    assert_eq!(parsed.path, std::path::PathBuf::from("/tmp/q"));
    assert_eq!(parsed.max_size, 5);
    assert_eq!(parsed.item_ttl, Duration::from_secs(90));
    assert_eq!(parsed.overflow, Overflow::RejectNew);
    assert_eq!(
        parsed.durability,
        tower_quota_queue::retry_queue::Durability::Periodic
    );
    assert_eq!(parsed.max_attempts, 3);
    assert_eq!(
        parsed.persist_sensitive_headers,
        vec!["x-api-key".to_owned()]
    );
    assert_eq!(parsed.cache_capacity, 1_048_576);

    let unknown = serde_json::from_str::<RetryQueueConfig>(r#"{"max_sise": 5}"#);
    assert!(unknown.is_err());
}

#[tokio::test(start_paused = true)]
async fn stats_report_counts_and_oldest_age() {
    let dir = tempfile::tempdir().unwrap();
    let queue = RetryQueue::open(config(&dir).max_attempts(1)).unwrap();
    queue.enqueue(item("a")).await.unwrap();
    tokio::time::advance(Duration::from_secs(10)).await;
    let b = queue.enqueue(item("b")).await.unwrap();
    queue.enqueue(item("c")).await.unwrap();
    let a = take_id(&queue).await.unwrap();
    queue.nack(a, "gone", None).await.unwrap();
    assert_eq!(take_id(&queue).await, Some(b));
    tokio::time::advance(Duration::from_secs(5)).await;

    let stats = queue.stats();
    assert_eq!(stats.pending, 1);
    assert_eq!(stats.in_flight, 1);
    assert_eq!(stats.dead, 1);
    assert_eq!(stats.max_size, 10_000);
    assert_eq!(stats.item_ttl, Duration::from_secs(24 * 3600));
    assert_eq!(stats.oldest_age, Some(Duration::from_secs(5)));
}

#[tokio::test]
async fn periodic_durability_survives_clean_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let periodic = || config(&dir).durability(tower_quota_queue::retry_queue::Durability::Periodic);
    let id = {
        let queue = RetryQueue::open(periodic()).unwrap();
        queue.enqueue(item("a")).await.unwrap()
    };
    let queue = RetryQueue::open(periodic()).unwrap();
    assert_eq!(take_id(&queue).await, Some(id));
}

#[tokio::test]
async fn release_restores_original_position() {
    let dir = tempfile::tempdir().unwrap();
    let queue = RetryQueue::open(config(&dir)).unwrap();
    let first = queue.enqueue(item("a")).await.unwrap();
    let second = queue.enqueue(item("b")).await.unwrap();

    assert_eq!(take_id(&queue).await, Some(first));
    queue.release(first).await.unwrap();
    assert_eq!(queue.stats().in_flight, 0);

    let again = queue.take().await.unwrap().unwrap();
    assert_eq!(again.id(), first);
    assert_eq!(again.attempts(), 0);
    assert_eq!(take_id(&queue).await, Some(second));
    let error = queue.release(Uuid::new_v4()).await.unwrap_err();
    assert_eq!(error.kind(), QueueErrorKind::NotInFlight);
}

#[tokio::test]
async fn reopen_right_after_drop_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..20 {
        let queue = RetryQueue::open(config(&dir)).unwrap_or_else(|error| {
            panic!("round {round}: {error}");
        });
        queue.enqueue(item(&format!("r{round}"))).await.unwrap();
        assert_eq!(queue.len(), round + 1);
    }
}

#[tokio::test(start_paused = true)]
async fn pending_lists_ready_and_in_flight_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let queue = RetryQueue::open(config(&dir)).unwrap();
    let first = queue.enqueue(item("first")).await.unwrap();
    let second = queue.enqueue(item("second")).await.unwrap();
    let third = queue.enqueue(item("third")).await.unwrap();
    assert_eq!(take_id(&queue).await, Some(first));
    assert_eq!(take_id(&queue).await, Some(second));
    let retry_at = clock::now() + Duration::from_secs(60);
    queue
        .nack(second, "HTTP 429", Some(retry_at))
        .await
        .unwrap();

    let pending = queue.pending().unwrap();
    let ids: Vec<Uuid> = pending.iter().map(QueuedRequest::id).collect();
    assert_eq!(ids, vec![first, third, second]);
    assert_eq!(pending[2].not_before(), Some(retry_at));
    assert_eq!(pending[2].attempts(), 1);
    let stats = queue.stats();
    assert_eq!(stats.pending, 2);
    assert_eq!(stats.in_flight, 1);
}

#[test]
fn default_path_includes_program_name() {
    let program = std::env::current_exe().unwrap();
    let program = program.file_stem().unwrap();
    let expected = dirs::data_dir()
        .unwrap()
        .join("tower-quota-queue")
        .join(program)
        .join("retry-queue");
    assert_eq!(RetryQueueConfig::default().path, expected);
}
