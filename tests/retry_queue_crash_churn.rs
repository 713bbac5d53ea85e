//! Crashes under churn: a child process enqueues, leases, nacks, acks and dead-letters from many
//! tasks at once and is killed with SIGKILL. The parent then reads the raw sled trees and reopens the
//! queue.
//!
//! The child is the ignored test `churn_child` of this same binary. It prints `ENQUEUED <id>`
//! after each enqueue returned, `ACKED <id>` after each ack returned and `DEAD <id>` after a nack
//! moved the item to the dead letters. In mode `lease_all` it enqueues and leases `LEASED` items and
//! prints `LEASED`, and in mode `open` it only opens the queue.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use tower_quota_queue::retry_queue::{
    NackOutcome, Overflow, QueuedRequest, RetryQueue, RetryQueueConfig,
};
use uuid::Uuid;

#[path = "support/reopen.rs"]
mod reopen;

const DIR_ENV: &str = "RETRY_QUEUE_CRASH_CHILD_DIR";
const MODE_ENV: &str = "RETRY_QUEUE_CRASH_CHILD_MODE";
const PRODUCERS: usize = 4;
const CONSUMERS: usize = 4;
const EVICT_MAX_SIZE: usize = 50;
const LEASED: usize = 1_000;

fn config(dir: &std::path::Path, mode: &str) -> RetryQueueConfig {
    let config = RetryQueueConfig::new().path(dir).max_attempts(3);
    if mode == "evict" {
        config
            .max_size(EVICT_MAX_SIZE)
            .overflow(Overflow::DropOldest)
    } else {
        config.max_size(1_000_000)
    }
}

fn item(n: usize) -> QueuedRequest {
    let request = http::Request::post(format!("http://127.0.0.1:9/item/{n}"))
        .body(Bytes::from(vec![b'b'; 64 + n % 512]))
        .unwrap();
    QueuedRequest::new(request, "crash test")
}

#[test]
#[ignore = "child process of the crash tests, started by them"]
fn churn_child() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return;
    };
    let mode = std::env::var(MODE_ENV).unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let queue = RetryQueue::open(config(dir.as_ref(), &mode)).unwrap();
        if mode == "lease_all" {
            for n in 0..LEASED {
                let id = queue.enqueue(item(n)).await.unwrap();
                println!("ENQUEUED {id}");
            }
            while queue.take().await.unwrap().is_some() {}
            println!("LEASED");
            std::future::pending::<()>().await;
        }
        if mode == "open" {
            std::future::pending::<()>().await;
        }
        let mut tasks = Vec::new();
        for producer in 0..PRODUCERS {
            let queue = queue.clone();
            tasks.push(tokio::spawn(async move {
                // Bounded so that an orphaned child stops on its own.
                for n in 0..50_000 {
                    let id = queue.enqueue(item(producer * 100_000 + n)).await.unwrap();
                    println!("ENQUEUED {id}");
                }
            }));
        }
        if mode == "churn" {
            for consumer in 0..CONSUMERS {
                let queue = queue.clone();
                tasks.push(tokio::spawn(async move {
                    for n in 0..200_000usize {
                        let Some(leased) = queue.take().await.unwrap() else {
                            tokio::task::yield_now().await;
                            continue;
                        };
                        let id = leased.id();
                        if (n + consumer) % 3 == 0 {
                            // Printed first: a flush by any producer can persist the ack before
                            // a line printed after it, so a kill in between would look like a loss.
                            println!("ACKING {id}");
                            queue.ack(id).await.unwrap();
                        } else {
                            let outcome = queue.nack(id, "HTTP 503", None).await.unwrap();
                            if outcome == NackOutcome::DeadLettered {
                                println!("DEAD {id}");
                            }
                        }
                        if n % 50 == 0 {
                            queue.purge_stale().unwrap();
                        }
                    }
                }));
            }
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
}

#[derive(Debug, Default)]
struct Printed {
    enqueued: Vec<Uuid>,
    /// Ids whose ack had started, so they may be gone from disk.
    ack_started: HashSet<Uuid>,
}

/// Runs the child in `mode` and kills it after it printed `kill_after` enqueued ids.
fn run_and_kill(dir: &std::path::Path, mode: &str, kill_after: usize) -> Printed {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "churn_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_ENV, dir)
        .env(MODE_ENV, mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines_rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });

    let record = |printed: &mut Printed, line: String| {
        if let Some((_, id)) = line.split_once("ENQUEUED ") {
            printed.enqueued.push(id.parse().unwrap());
        } else if let Some((_, id)) = line.split_once("ACKING ") {
            printed.ack_started.insert(id.parse().unwrap());
        }
    };
    let mut printed = Printed::default();
    while printed.enqueued.len() < kill_after {
        let line = lines_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("child printed nothing for 60 s");
        record(&mut printed, line);
    }

    // `Child::kill` sends SIGKILL on Unix, so the child gets no chance to flush or clean up.
    child.kill().unwrap();
    child.wait().unwrap();
    reader.join().unwrap();
    for line in lines_rx.try_iter() {
        record(&mut printed, line);
    }
    printed
}

/// Returns, for every id in the raw trees, the names of the trees that contain it.
fn raw_trees(dir: &std::path::Path) -> HashMap<Uuid, Vec<&'static str>> {
    let db = reopen::open_raw(dir);
    let mut found: HashMap<Uuid, Vec<&'static str>> = HashMap::new();
    for tree in ["ready", "in_flight", "dead"] {
        for entry in db.open_tree(tree).unwrap().iter() {
            let (_, value) = entry.unwrap();
            // A record is a version byte followed by postcard, whose first field is the 16-byte id.
            let id = Uuid::from_slice(&value[1..17]).unwrap();
            found.entry(id).or_default().push(tree);
        }
    }
    found
}

#[cfg(unix)]
#[tokio::test]
async fn sigkill_during_churn_keeps_ids_once() {
    for round in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let kill_after = fastrand::usize(100..800);
        let printed = run_and_kill(dir.path(), "churn", kill_after);

        let raw = raw_trees(dir.path());
        for (id, trees) in &raw {
            // A lease crashed between its two steps may leave one record in ready and in_flight.
            let resolvable =
                trees.len() == 2 && trees.contains(&"ready") && trees.contains(&"in_flight");
            assert!(
                trees.len() == 1 || resolvable,
                "round {round}: id {id} stored in {trees:?}"
            );
        }

        let queue = reopen::open_queue(config(dir.path(), "churn")).unwrap();
        let mut ready = HashSet::new();
        while let Some(leased) = queue.take().await.unwrap() {
            assert!(
                ready.insert(leased.id()),
                "round {round}: id {} ready twice",
                leased.id()
            );
        }
        let dead: Vec<Uuid> = queue
            .dead_letters()
            .unwrap()
            .iter()
            .map(|item| item.id())
            .collect();
        let dead_set: HashSet<Uuid> = dead.iter().copied().collect();
        assert_eq!(
            dead.len(),
            dead_set.len(),
            "round {round}: a dead letter is stored twice"
        );
        for id in &printed.enqueued {
            let in_ready = ready.contains(id);
            let in_dead = dead_set.contains(id);
            assert!(
                !(in_ready && in_dead),
                "round {round}: id {id} is both ready and dead"
            );
            assert!(
                in_ready || in_dead || printed.ack_started.contains(id),
                "round {round}: id {id} was neither acked nor found after SIGKILL"
            );
        }
    }
}

#[cfg(unix)]
#[tokio::test]
async fn sigkill_during_eviction_keeps_newest() {
    for round in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let kill_after = fastrand::usize(100..800);
        let printed = run_and_kill(dir.path(), "evict", kill_after);

        let queue = RetryQueue::open(config(dir.path(), "evict")).unwrap();
        let mut ready = Vec::new();
        while let Some(leased) = queue.take().await.unwrap() {
            ready.push(leased.id());
        }
        let unique: HashSet<Uuid> = ready.iter().copied().collect();
        assert_eq!(
            unique.len(),
            ready.len(),
            "round {round}: an id is ready twice"
        );
        assert!(
            ready.len() <= EVICT_MAX_SIZE,
            "round {round}: {} items in a queue of max_size {EVICT_MAX_SIZE}",
            ready.len()
        );
        // Eviction removes the oldest items, and fewer than `EVICT_MAX_SIZE` enqueues can follow the
        // last printed one before the kill, so that item survives.
        let last = printed.enqueued.last().unwrap();
        assert!(
            unique.contains(last),
            "round {round}: newest printed id {last} lost"
        );
    }
}

/// Starts the child in `mode` and kills it after `delay`.
fn run_for(dir: &std::path::Path, mode: &str, delay: Duration) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "churn_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_ENV, dir)
        .env(MODE_ENV, mode)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(delay);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[cfg(unix)]
#[tokio::test]
async fn sigkill_during_recovery_keeps_order() {
    let dir = tempfile::tempdir().unwrap();
    // Every item ends up in flight on disk.
    let printed = run_and_kill_after_marker(dir.path(), "lease_all", "LEASED");
    assert_eq!(printed.len(), LEASED);
    let raw = raw_trees(dir.path());
    let in_flight = raw
        .values()
        .filter(|trees| **trees == ["in_flight"])
        .count();
    assert_eq!(in_flight, LEASED);

    // Each child moves in-flight records back to ready while it opens and dies at a random point,
    // sometimes after sled's 500 ms background flush wrote part of that work.
    for _ in 0..4 {
        let delay = Duration::from_millis(fastrand::u64(0..800));
        run_for(dir.path(), "open", delay);
    }

    let queue = reopen::open_queue(config(dir.path(), "open")).unwrap();
    let mut ready = Vec::new();
    while let Some(leased) = queue.take().await.unwrap() {
        ready.push(leased.id());
    }
    assert_eq!(ready, printed);
}

/// Runs the child in `mode` until it prints `marker`, kills it 1.2 s later, and returns the enqueued
/// ids.
fn run_and_kill_after_marker(dir: &std::path::Path, mode: &str, marker: &str) -> Vec<Uuid> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "churn_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_ENV, dir)
        .env(MODE_ENV, mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut enqueued = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some((_, id)) = line.split_once("ENQUEUED ") {
            enqueued.push(id.parse().unwrap());
        } else if line.contains(marker) {
            break;
        }
    }
    // Leases are not flushed, so wait for sled's 500 ms background flush to write them.
    std::thread::sleep(Duration::from_millis(1_200));
    child.kill().unwrap();
    child.wait().unwrap();
    enqueued
}
