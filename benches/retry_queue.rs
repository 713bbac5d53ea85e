//! Criterion benchmarks of the retry queue: durable enqueue rate with 1 and 64 producers,
//! `process_all` drain rate, and the queue directory size after 100,000 enqueue+ack cycles.
//!
//! Run with `cargo bench --bench retry_queue`. The directory size is printed before the timed
//! benchmarks start.

// criterion_group! generates a public function without docs.
#![allow(missing_docs)]

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http_body_util::Full;
use tower::service_fn;
use tower_quota_queue::retry_queue::{Durability, QueuedRequest, RetryQueue, RetryQueueConfig};

/// A request body of a typical small JSON API call.
const BODY: &[u8] = &[b'x'; 512];

fn item() -> QueuedRequest {
    let request = http::Request::post("http://127.0.0.1:9/v1/chat")
        .header("content-type", "application/json")
        .body(Bytes::from_static(BODY))
        .unwrap();
    QueuedRequest::new(request, "connection refused")
}

fn open(dir: &Path, durability: Durability) -> RetryQueue {
    let config = RetryQueueConfig::new()
        .path(dir)
        .max_size(usize::MAX)
        .durability(durability);
    RetryQueue::open(config).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn durable_enqueue(c: &mut Criterion) {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let queue = open(dir.path(), Durability::Flush);
    let mut group = c.benchmark_group("durable_enqueue");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(8));
    for producers in [1usize, 64] {
        group.bench_with_input(
            BenchmarkId::from_parameter(producers),
            &producers,
            |b, &producers| {
                b.to_async(&runtime).iter_custom(|iters| {
                    let queue = queue.clone();
                    async move {
                        let elapsed = enqueue_concurrently(&queue, producers, iters).await;
                        // Empty the queue outside the timed part, so every sample starts from the
                        // same state instead of a tree that keeps growing.
                        drain_untimed(&queue).await;
                        elapsed
                    }
                });
            },
        );
    }
    group.finish();
}

/// Enqueues `iters` items from `producers` tasks and returns the elapsed time.
async fn enqueue_concurrently(queue: &RetryQueue, producers: usize, iters: u64) -> Duration {
    let per_producer = iters.div_ceil(producers as u64);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(producers);
    for _ in 0..producers {
        let queue = queue.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_producer {
                queue.enqueue(item()).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = start.elapsed();
    // Report the time per requested item even though producers may have done a few more.
    elapsed.mul_f64(iters as f64 / (per_producer * producers as u64) as f64)
}

async fn drain_untimed(queue: &RetryQueue) {
    while let Some(item) = queue.take().await.unwrap() {
        queue.ack(item.id()).await.unwrap();
    }
}

fn drain(c: &mut Criterion) {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let queue = open(dir.path(), Durability::Periodic);
    let mut group = c.benchmark_group("process_all_drain");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    group.bench_function("ok_service", |b| {
        b.to_async(&runtime).iter_custom(|iters| {
            let queue = queue.clone();
            async move {
                for _ in 0..iters {
                    queue.enqueue(item()).await.unwrap();
                }
                let mut service = service_fn(|_request: http::Request<Full<Bytes>>| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(()))
                });
                let start = Instant::now();
                let report = queue.process_all(&mut service).await.unwrap();
                let elapsed = start.elapsed();
                assert_eq!(report.succeeded as u64, iters);
                elapsed
            }
        });
    });
    group.finish();
}

/// Prints the size of a queue directory after 100,000 enqueue+ack cycles.
fn print_directory_size() {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (cycles, seconds) = runtime.block_on(async {
        // Periodic durability keeps this setup step short; the files hold the same records.
        let queue = open(dir.path(), Durability::Periodic);
        let start = Instant::now();
        for _ in 0..100_000 {
            let id = queue.enqueue(item()).await.unwrap();
            let taken = queue.take().await.unwrap().unwrap();
            assert_eq!(taken.id(), id);
            queue.ack(id).await.unwrap();
        }
        (100_000, start.elapsed().as_secs_f64())
    });
    let bytes = directory_size(dir.path());
    println!(
        "queue directory after {cycles} enqueue+ack cycles of {} B bodies: {bytes} bytes ({:.1} MiB), \
         {:.0} cycles/s",
        BODY.len(),
        bytes as f64 / (1024.0 * 1024.0),
        cycles as f64 / seconds
    );
}

fn directory_size(path: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(path).unwrap() {
        let entry = entry.unwrap();
        let metadata = entry.metadata().unwrap();
        total += if metadata.is_dir() {
            directory_size(&entry.path())
        } else {
            metadata.len()
        };
    }
    total
}

fn directory_size_bench(_c: &mut Criterion) {
    print_directory_size();
}

criterion_group!(benches, directory_size_bench, durable_enqueue, drain);
criterion_main!(benches);
