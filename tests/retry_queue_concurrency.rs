//! Concurrent use: many clones of one `RetryQueue` enqueue, take, ack, nack, release, purge and
//! replay at once on a multi-thread runtime, and a worker runs next to `process_all`.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::service_fn;
use tower_quota_queue::retry_queue::{
    Durability, NackOutcome, QueueErrorKind, QueuedRequest, RetryQueue, RetryQueueConfig,
};
use uuid::Uuid;

const TASKS: usize = 8;
const ROUNDS: usize = 300;

fn config(dir: &tempfile::TempDir) -> RetryQueueConfig {
    RetryQueueConfig::new()
        .path(dir.path().join("queue"))
        .durability(Durability::Periodic)
        .max_attempts(3)
}

fn item(n: usize) -> QueuedRequest {
    let request = Request::post(format!("http://127.0.0.1:9/item/{n}"))
        .body(Bytes::from(vec![b'b'; n % 64]))
        .unwrap();
    QueuedRequest::new(request, "connection refused")
}

/// Ids that left the queue through a successful ack or replay.
#[derive(Clone, Default)]
struct Done(Arc<Mutex<HashSet<Uuid>>>);

impl Done {
    fn insert(&self, id: Uuid) {
        assert!(self.0.lock().unwrap().insert(id), "id {id} acked twice");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_operations_keep_ids_once() {
    let dir = tempfile::tempdir().unwrap();
    let queue = RetryQueue::open(config(&dir)).unwrap();
    let enqueued = Arc::new(Mutex::new(Vec::new()));
    let done = Done::default();

    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let queue = queue.clone();
        let enqueued = Arc::clone(&enqueued);
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..ROUNDS {
                match (task + round) % 6 {
                    0 | 1 => {
                        let id = queue.enqueue(item(task * ROUNDS + round)).await.unwrap();
                        enqueued.lock().unwrap().push(id);
                    }
                    2 => {
                        if let Some(leased) = queue.take().await.unwrap() {
                            queue.ack(leased.id()).await.unwrap();
                            done.insert(leased.id());
                        }
                    }
                    3 => {
                        if let Some(leased) = queue.take().await.unwrap() {
                            let outcome = queue.nack(leased.id(), "HTTP 503", None).await.unwrap();
                            assert!(matches!(
                                outcome,
                                NackOutcome::Requeued | NackOutcome::DeadLettered
                            ));
                        }
                    }
                    4 => {
                        if let Some(leased) = queue.take().await.unwrap() {
                            queue.release(leased.id()).await.unwrap();
                        }
                        assert_eq!(queue.purge_stale().unwrap(), 0);
                    }
                    _ => {
                        let replayed = Arc::new(Mutex::new(Vec::new()));
                        let mut service = service_fn({
                            let replayed = Arc::clone(&replayed);
                            move |request: Request<Full<Bytes>>| {
                                let key = request.headers()["idempotency-key"]
                                    .to_str()
                                    .unwrap()
                                    .parse::<Uuid>()
                                    .unwrap();
                                replayed.lock().unwrap().push(key);
                                async {
                                    let mut response = Response::new(());
                                    *response.status_mut() = StatusCode::OK;
                                    Ok::<_, Infallible>(response)
                                }
                            }
                        });
                        queue.process_one(&mut service).await.unwrap();
                        for id in replayed.lock().unwrap().drain(..) {
                            done.insert(id);
                        }
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }

    let stats = queue.stats();
    assert_eq!(stats.in_flight, 0);
    let dead: HashSet<Uuid> = queue
        .dead_letters()
        .unwrap()
        .iter()
        .map(|item| item.id())
        .collect();
    assert_eq!(stats.dead, dead.len());
    let mut ready = HashSet::new();
    while let Some(leased) = queue.take().await.unwrap() {
        assert!(ready.insert(leased.id()), "id {} ready twice", leased.id());
    }
    let done = done.0.lock().unwrap().clone();
    let enqueued = enqueued.lock().unwrap().clone();
    for id in &enqueued {
        let places = usize::from(ready.contains(id))
            + usize::from(dead.contains(id))
            + usize::from(done.contains(id));
        assert_eq!(places, 1, "id {id} is in {places} places");
    }
    assert_eq!(ready.len() + dead.len() + done.len(), enqueued.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_and_process_all_replay_once() {
    let dir = tempfile::tempdir().unwrap();
    let queue = RetryQueue::open(config(&dir)).unwrap();
    let replayed = Arc::new(Mutex::new(Vec::new()));
    let service = service_fn({
        let replayed = Arc::clone(&replayed);
        move |request: Request<Full<Bytes>>| {
            replayed
                .lock()
                .unwrap()
                .push(request.headers()["idempotency-key"].clone());
            async {
                tokio::task::yield_now().await;
                Ok::<_, Infallible>(Response::new(()))
            }
        }
    });
    for n in 0..400 {
        queue.enqueue(item(n)).await.unwrap();
    }

    let worker = queue.replay_worker(service.clone()).concurrency(4).spawn();
    let mut service = service;
    let report = queue.process_all(&mut service).await.unwrap();
    while !queue.is_empty() {
        tokio::task::yield_now().await;
    }
    let worker_report = worker.shutdown().await;

    assert_eq!(report.failed, 0);
    assert_eq!(worker_report.failed, 0);
    assert_eq!(report.succeeded + worker_report.succeeded, 400);
    let replayed = replayed.lock().unwrap();
    let unique: HashSet<_> = replayed.iter().collect();
    assert_eq!(replayed.len(), 400);
    assert_eq!(unique.len(), 400);
}

#[tokio::test]
async fn second_open_same_path_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let queue = RetryQueue::open(config(&dir)).unwrap();
    let second = RetryQueue::open(config(&dir));
    assert_eq!(
        second.map(|_| ()).unwrap_err().kind(),
        QueueErrorKind::AlreadyOpen
    );
    drop(queue);
    assert!(RetryQueue::open(config(&dir)).is_ok());
}
