//! Crash tests: a child process that uses the queue is killed with SIGKILL, and the queue is
//! reopened.
//!
//! The child is the ignored test `crash_child` of this same binary, started with an environment
//! variable naming the queue directory. It prints `ENQUEUED <id>` after each enqueue returned and
//! `TAKEN <id>` after each lease. In `hold` mode it only opens the queue, prints `OPEN` and waits.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use tower_quota_queue::retry_queue::{QueueErrorKind, QueuedRequest, RetryQueue, RetryQueueConfig};
use uuid::Uuid;

const DIR_ENV: &str = "RETRY_QUEUE_CRASH_CHILD_DIR";
const MODE_ENV: &str = "RETRY_QUEUE_CRASH_CHILD_MODE";
const PRODUCERS: usize = 4;
const LEASES: usize = 20;

fn config(dir: &std::path::Path) -> RetryQueueConfig {
    RetryQueueConfig::new().path(dir).max_size(1_000_000)
}

fn item(n: usize) -> QueuedRequest {
    let request = http::Request::post(format!("http://127.0.0.1:9/item/{n}"))
        .body(Bytes::from(vec![b'b'; 64 + n % 512]))
        .unwrap();
    QueuedRequest::new(request, "crash test")
}

#[test]
#[ignore = "child process of the crash tests, started by them"]
fn crash_child() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return;
    };
    let mode = std::env::var(MODE_ENV).unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let queue = RetryQueue::open(config(dir.as_ref())).unwrap();
        if mode == "hold" {
            println!("OPEN");
            // Keep the database open until the parent kills this process, for at most a minute.
            tokio::time::sleep(Duration::from_secs(60)).await;
            return;
        }
        if mode == "in_flight" {
            for n in 0..LEASES * 2 {
                let id = queue.enqueue(item(n)).await.unwrap();
                println!("ENQUEUED {id}");
            }
            for _ in 0..LEASES {
                let taken = queue.take().await.unwrap().unwrap();
                println!("TAKEN {}", taken.id());
            }
        }
        let mut producers = Vec::new();
        for producer in 0..PRODUCERS {
            let queue = queue.clone();
            producers.push(tokio::spawn(async move {
                // Bounded so that an orphaned child stops on its own.
                for n in 0..50_000 {
                    let id = queue.enqueue(item(producer * 100_000 + n)).await.unwrap();
                    println!("ENQUEUED {id}");
                }
            }));
        }
        for producer in producers {
            producer.await.unwrap();
        }
    });
}

/// The ids a child printed before it was killed, in print order.
#[derive(Debug, Default)]
struct Printed {
    enqueued: Vec<Uuid>,
    taken: Vec<Uuid>,
}

/// A running child process and the lines of its standard output.
struct ChildProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
    reader: std::thread::JoinHandle<()>,
}

impl ChildProcess {
    fn next_line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(60))
            .expect("child printed nothing for 60 s")
    }

    /// Sends SIGKILL, waits for the process to end and returns the lines still in the pipe.
    fn kill(mut self) -> Vec<String> {
        // `Child::kill` sends SIGKILL on Unix, so the child gets no chance to flush or clean up.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.reader.join().unwrap();
        self.lines.try_iter().collect()
    }
}

fn spawn_child(dir: &std::path::Path, mode: &str) -> ChildProcess {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_child",
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

    ChildProcess {
        child,
        lines: lines_rx,
        reader,
    }
}

/// Runs the child in `mode` and kills it after it printed `kill_after` enqueued ids.
fn run_and_kill(dir: &std::path::Path, mode: &str, kill_after: usize) -> Printed {
    let child = spawn_child(dir, mode);
    let mut printed = Printed::default();
    let record = |printed: &mut Printed, line: String| {
        // libtest prints "test crash_child ... " without a line break before the child's output.
        if let Some((_, id)) = line.split_once("ENQUEUED ") {
            printed.enqueued.push(id.parse().unwrap());
        } else if let Some((_, id)) = line.split_once("TAKEN ") {
            printed.taken.push(id.parse().unwrap());
        }
    };
    while printed.enqueued.len() < kill_after {
        record(&mut printed, child.next_line());
    }
    // Lines the child wrote before it died are still in the pipe.
    for line in child.kill() {
        record(&mut printed, line);
    }
    printed
}

/// Takes every item of the reopened queue and checks that each id appears once.
async fn drain_ids(dir: &std::path::Path) -> (Vec<Uuid>, RetryQueue) {
    let queue = RetryQueue::open(config(dir)).unwrap();
    assert_eq!(queue.stats().in_flight, 0);
    let mut ids = Vec::new();
    let mut seen = HashSet::new();
    while let Some(item) = queue.take().await.unwrap() {
        assert!(seen.insert(item.id()), "id {} found twice", item.id());
        ids.push(item.id());
    }
    (ids, queue)
}

#[cfg(unix)]
#[tokio::test]
async fn sigkill_during_enqueue_keeps_every_printed_id() {
    for round in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let kill_after = fastrand::usize(20..400);
        let printed = run_and_kill(dir.path(), "enqueue", kill_after);
        assert!(printed.enqueued.len() >= kill_after);

        let (ids, _queue) = drain_ids(dir.path()).await;
        let found: HashSet<Uuid> = ids.iter().copied().collect();
        for id in &printed.enqueued {
            assert!(
                found.contains(id),
                "round {round}: printed id {id} lost after SIGKILL"
            );
        }
        // Enqueues that finished after the last print may also be present, but no more than one
        // per producer could have been in progress.
        assert!(
            ids.len() <= printed.enqueued.len() + PRODUCERS * 2,
            "round {round}: {} found, {} printed",
            ids.len(),
            printed.enqueued.len()
        );
    }
}

#[cfg(unix)]
#[tokio::test]
async fn sigkill_with_items_in_flight_makes_them_ready() {
    let dir = tempfile::tempdir().unwrap();
    let kill_after = LEASES * 2 + fastrand::usize(1..200);
    let printed = run_and_kill(dir.path(), "in_flight", kill_after);
    assert_eq!(printed.taken.len(), LEASES);

    let (ids, queue) = drain_ids(dir.path()).await;
    // The leased items were the first ones enqueued, so they come back first and in order.
    assert_eq!(&ids[..LEASES], &printed.taken[..]);
    assert_eq!(&printed.enqueued[..LEASES], &printed.taken[..]);
    let found: HashSet<Uuid> = ids.iter().copied().collect();
    for id in &printed.enqueued {
        assert!(found.contains(id), "printed id {id} lost after SIGKILL");
    }
    assert_eq!(queue.stats().in_flight, ids.len());
}

#[cfg(unix)]
#[tokio::test]
async fn second_process_gets_already_open() {
    let dir = tempfile::tempdir().unwrap();
    let child = spawn_child(dir.path(), "hold");
    while !child.next_line().contains("OPEN") {}

    let error = RetryQueue::open(config(dir.path())).unwrap_err();
    assert_eq!(error.kind(), QueueErrorKind::AlreadyOpen);
    assert!(error.to_string().contains("already open"), "{error}");

    child.kill();
    let queue = RetryQueue::open(config(dir.path())).unwrap();
    assert!(queue.is_empty());
}
