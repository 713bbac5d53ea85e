//! Dead letters of `RetryQueue`: their bound and their ids.

use bytes::Bytes;
use tower_quota_queue::retry_queue::{
    NackOutcome, QueueErrorKind, QueuedRequest, RetryQueue, RetryQueueConfig,
};
use uuid::Uuid;

fn config(dir: &tempfile::TempDir) -> RetryQueueConfig {
    RetryQueueConfig::new()
        .path(dir.path().join("queue"))
        .max_attempts(1)
}

fn item(path: &str) -> QueuedRequest {
    let request = http::Request::post(format!("http://127.0.0.1:9/{path}"))
        .header("authorization", "Bearer Dead-Letter-Token-4c1e")
        .body(Bytes::from_static(b"Dead-Letter-Body-9a3d"))
        .unwrap();
    QueuedRequest::new(request, "connection refused")
}

/// Enqueues an item, takes it and nacks it with `error`, which dead-letters it.
async fn dead_letter(queue: &RetryQueue, item: QueuedRequest, error: &str) -> Uuid {
    let id = queue.enqueue(item).await.unwrap();
    let taken = queue.take().await.unwrap().unwrap();
    assert_eq!(taken.id(), id);
    let outcome = queue.nack(id, error, None).await.unwrap();
    assert_eq!(outcome, NackOutcome::DeadLettered);
    id
}

#[tokio::test]
async fn dead_letters_bounded_by_max_size() {
    let dir = tempfile::tempdir().unwrap();
    let queue = RetryQueue::open(config(&dir).max_size(3)).unwrap();
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(dead_letter(&queue, item(&format!("r{n}")), "HTTP 503").await);
    }

    assert_eq!(queue.stats().dead, 3);
    let kept: Vec<Uuid> = queue
        .dead_letters()
        .unwrap()
        .iter()
        .map(QueuedRequest::id)
        .collect();
    assert_eq!(kept, ids[2..]);
}

#[tokio::test]
async fn dead_letters_bounded_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut ids = Vec::new();
    {
        let queue = RetryQueue::open(config(&dir)).unwrap();
        for n in 0..4 {
            ids.push(dead_letter(&queue, item(&format!("r{n}")), "HTTP 503").await);
        }
    }

    let queue = RetryQueue::open(config(&dir).max_size(2)).unwrap();
    assert_eq!(queue.stats().dead, 2);
    let kept: Vec<Uuid> = queue
        .dead_letters()
        .unwrap()
        .iter()
        .map(QueuedRequest::id)
        .collect();
    assert_eq!(kept, ids[2..]);
}

#[tokio::test]
async fn dead_letter_id_rejected_on_enqueue() {
    let dir = tempfile::tempdir().unwrap();
    let queue = RetryQueue::open(config(&dir)).unwrap();
    let original = item("first");
    let copy = original.clone();
    let id = dead_letter(&queue, original, "HTTP 503").await;

    let error = queue.enqueue(copy.clone()).await.unwrap_err();
    assert_eq!(error.kind(), QueueErrorKind::DuplicateId);
    assert!(queue.is_empty());
    assert_eq!(queue.stats().dead, 1);

    // The id is free again once its dead letter is gone.
    assert_eq!(queue.clear_dead_letters().unwrap(), 1);
    assert_eq!(queue.enqueue(copy).await.unwrap(), id);
}

#[tokio::test]
async fn dead_letter_id_rejected_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let original = item("first");
    let copy = original.clone();
    {
        let queue = RetryQueue::open(config(&dir)).unwrap();
        dead_letter(&queue, original, "HTTP 503").await;
    }

    let queue = RetryQueue::open(config(&dir)).unwrap();
    let error = queue.enqueue(copy).await.unwrap_err();
    assert_eq!(error.kind(), QueueErrorKind::DuplicateId);
}
