//! Damaged sled files under the queue directory: truncated and overwritten bytes.

use bytes::Bytes;
use tower_quota_queue::retry_queue::{QueuedRequest, RetryQueue, RetryQueueConfig};

fn config(dir: &std::path::Path) -> RetryQueueConfig {
    RetryQueueConfig::new().path(dir)
}

fn item(n: usize) -> QueuedRequest {
    let request = http::Request::post(format!("http://127.0.0.1:9/item/{n}"))
        .body(Bytes::from(vec![b'b'; 100 + n]))
        .unwrap();
    QueuedRequest::new(request, "connection refused")
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files(&path));
        } else {
            found.push(path);
        }
    }
    found.sort();
    found
}

/// Opens the queue and drains it on a background thread, returning whether that panicked.
fn open_and_drain(dir: &std::path::Path) -> std::thread::Result<Result<usize, String>> {
    let config = config(dir);
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let queue = RetryQueue::open(config).map_err(|error| error.to_string())?;
            let mut count = 0;
            while let Some(leased) = queue.take().await.map_err(|error| error.to_string())? {
                queue
                    .ack(leased.id())
                    .await
                    .map_err(|error| error.to_string())?;
                count += 1;
            }
            Ok(count)
        })
    })
    .join()
}

#[tokio::test]
async fn damaged_files_never_panic_open() {
    let original = tempfile::tempdir().unwrap();
    {
        let queue = RetryQueue::open(config(original.path())).unwrap();
        for n in 0..50 {
            queue.enqueue(item(n)).await.unwrap();
        }
    }

    let mut panics = Vec::new();
    for file in files(original.path()) {
        let relative = file.strip_prefix(original.path()).unwrap().to_path_buf();
        for (label, damage) in [
            ("empty", 0u8),
            ("half", 1),
            ("minus-one", 2),
            ("flipped", 3),
        ] {
            let copy = tempfile::tempdir().unwrap();
            copy_dir(original.path(), copy.path());
            let target = copy.path().join(&relative);
            let mut bytes = std::fs::read(&target).unwrap();
            match damage {
                0 => bytes.clear(),
                1 => bytes.truncate(bytes.len() / 2),
                2 => {
                    bytes.pop();
                }
                _ => {
                    for byte in bytes.iter_mut().skip(7).step_by(97) {
                        *byte ^= 0xff;
                    }
                }
            }
            std::fs::write(&target, bytes).unwrap();
            let outcome = open_and_drain(copy.path());
            if outcome.is_err() {
                panics.push(format!("{} {label}", relative.display()));
            }
        }
    }
    assert!(panics.is_empty(), "open or drain panicked for {panics:?}");
}
