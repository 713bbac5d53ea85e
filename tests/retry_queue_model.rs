//! Model-based test: random operation sequences against `RetryQueue` and an in-memory model.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use proptest::prelude::*;
use tower_quota_queue::clock;
use tower_quota_queue::retry_queue::{
    Durability, NackOutcome, QueueErrorKind, QueuedRequest, RetryQueue, RetryQueueConfig,
};
use uuid::Uuid;

const MAX_SIZE: usize = 4;
const MAX_ATTEMPTS: u32 = 3;
const TTL: Duration = Duration::from_secs(100);

#[derive(Clone, Debug)]
enum Op {
    Enqueue,
    Take,
    TakePartition(bool),
    Ack(usize),
    Nack(usize, bool),
    Release(usize),
    Advance(u64),
    PurgeStale,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Enqueue),
        3 => Just(Op::Take),
        1 => any::<bool>().prop_map(Op::TakePartition),
        2 => any::<usize>().prop_map(Op::Ack),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(index, delay)| Op::Nack(index, delay)),
        1 => any::<usize>().prop_map(Op::Release),
        1 => (0u64..80).prop_map(Op::Advance),
        1 => Just(Op::PurgeStale),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Clone, Copy, Debug)]
struct Item {
    id: Uuid,
    odd: bool,
    enqueued_at: SystemTime,
    attempts: u32,
    not_before: Option<SystemTime>,
}

/// The specification: ready items ordered by key, leases in the order they were taken, and the
/// enqueue times of dead letters by key.
#[derive(Debug, Default)]
struct Model {
    ready: BTreeMap<u64, Item>,
    in_flight: Vec<(u64, Item)>,
    dead: BTreeMap<u64, SystemTime>,
    next_key: u64,
}

impl Model {
    fn is_stale(item: &Item, now: SystemTime) -> bool {
        now.duration_since(item.enqueued_at)
            .is_ok_and(|age| age >= TTL)
    }

    /// Returns the expected outcome of an enqueue: `None` for a full queue.
    fn enqueue(&mut self, id: Uuid, odd: bool, now: SystemTime) -> Option<Uuid> {
        if self.ready.len() + self.in_flight.len() >= MAX_SIZE {
            let oldest = *self.ready.keys().next()?;
            self.ready.remove(&oldest);
        }
        let item = Item {
            id,
            odd,
            enqueued_at: now,
            attempts: 0,
            not_before: None,
        };
        self.ready.insert(self.next_key, item);
        self.next_key += 1;
        Some(id)
    }

    /// Takes the oldest ready item, from the partition of `odd` items when `odd` is set.
    fn take(&mut self, now: SystemTime, odd: Option<bool>) -> Option<Item> {
        let keys: Vec<u64> = self.ready.keys().copied().collect();
        for key in keys {
            let item = self.ready[&key];
            if Self::is_stale(&item, now) {
                self.ready.remove(&key);
                continue;
            }
            if item.not_before.is_some_and(|not_before| not_before > now) {
                continue;
            }
            if odd.is_some_and(|odd| odd != item.odd) {
                continue;
            }
            self.ready.remove(&key);
            self.in_flight.push((key, item));
            return Some(item);
        }
        None
    }

    fn nack(&mut self, index: usize, not_before: Option<SystemTime>) -> NackOutcome {
        let (key, mut item) = self.in_flight.remove(index);
        item.attempts += 1;
        if item.attempts >= MAX_ATTEMPTS {
            self.dead.insert(key, item.enqueued_at);
            if self.dead.len() > MAX_SIZE {
                self.dead.pop_first();
            }
            return NackOutcome::DeadLettered;
        }
        item.not_before = not_before;
        self.ready.insert(self.next_key, item);
        self.next_key += 1;
        NackOutcome::Requeued
    }

    fn purge_stale(&mut self, now: SystemTime) -> usize {
        let before = self.ready.len() + self.dead.len();
        self.ready.retain(|_, item| !Self::is_stale(item, now));
        self.dead.retain(|_, enqueued_at| {
            now.duration_since(*enqueued_at)
                .map_or(true, |age| age < TTL)
        });
        before - self.ready.len() - self.dead.len()
    }

    fn reopen(&mut self) {
        for (key, item) in self.in_flight.drain(..) {
            self.ready.insert(key, item);
        }
    }
}

fn config(dir: &tempfile::TempDir) -> RetryQueueConfig {
    RetryQueueConfig::new()
        .path(dir.path().join("queue"))
        .max_size(MAX_SIZE)
        .max_attempts(MAX_ATTEMPTS)
        .item_ttl(TTL)
        .durability(Durability::Periodic)
}

fn request(n: usize) -> QueuedRequest {
    let request = http::Request::post(format!("http://127.0.0.1:9/{n}"))
        .body(Bytes::from(vec![b'x'; n % 7]))
        .unwrap();
    QueuedRequest::new(request, "model").with_partition(partition(n % 2 == 1))
}

fn partition(odd: bool) -> &'static str {
    if odd {
        "odd"
    } else {
        "even"
    }
}

async fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let mut queue = Some(RetryQueue::open(config(&dir)).unwrap());
    let mut model = Model::default();

    for (step, op) in ops.into_iter().enumerate() {
        let real = queue.as_ref().unwrap();
        let now = clock::now();
        match op {
            Op::Enqueue => {
                let item = request(step);
                let id = item.id();
                match model.enqueue(id, step % 2 == 1, now) {
                    Some(expected) => assert_eq!(real.enqueue(item).await.unwrap(), expected),
                    None => {
                        let error = real.enqueue(item).await.unwrap_err();
                        assert_eq!(error.kind(), QueueErrorKind::Full, "step {step}");
                    }
                }
            }
            Op::Take => {
                let expected = model.take(now, None);
                let taken = real.take().await.unwrap();
                assert_eq!(
                    taken.as_ref().map(QueuedRequest::id),
                    expected.map(|item| item.id)
                );
                if let (Some(taken), Some(expected)) = (taken, expected) {
                    assert_eq!(taken.attempts(), expected.attempts, "step {step}");
                    assert_eq!(taken.enqueued_at(), expected.enqueued_at, "step {step}");
                }
            }
            Op::TakePartition(odd) => {
                let expected = model.take(now, Some(odd));
                let taken = real
                    .take_where(|item| item.partition() == partition(odd))
                    .await
                    .unwrap();
                assert_eq!(
                    taken.as_ref().map(QueuedRequest::id),
                    expected.map(|item| item.id),
                    "step {step}"
                );
            }
            Op::Ack(index) => {
                if model.in_flight.is_empty() {
                    let error = real.ack(Uuid::new_v4()).await.unwrap_err();
                    assert_eq!(error.kind(), QueueErrorKind::NotInFlight);
                } else {
                    let (_, item) = model.in_flight.remove(index % model.in_flight.len());
                    real.ack(item.id).await.unwrap();
                }
            }
            Op::Nack(index, delay) => {
                if !model.in_flight.is_empty() {
                    let index = index % model.in_flight.len();
                    let id = model.in_flight[index].1.id;
                    let not_before = delay.then(|| now + Duration::from_secs(30));
                    let expected = model.nack(index, not_before);
                    let outcome = real.nack(id, "failed", not_before).await.unwrap();
                    assert_eq!(outcome, expected, "step {step}");
                }
            }
            Op::Release(index) => {
                if !model.in_flight.is_empty() {
                    let (key, item) = model.in_flight.remove(index % model.in_flight.len());
                    model.ready.insert(key, item);
                    real.release(item.id).await.unwrap();
                }
            }
            Op::Advance(seconds) => tokio::time::advance(Duration::from_secs(seconds)).await,
            Op::PurgeStale => {
                assert_eq!(
                    real.purge_stale().unwrap(),
                    model.purge_stale(now),
                    "step {step}"
                );
            }
            Op::Reopen => {
                drop(queue.take());
                queue = Some(RetryQueue::open(config(&dir)).unwrap());
                model.reopen();
            }
        }

        let stats = queue.as_ref().unwrap().stats();
        assert_eq!(
            stats.pending,
            model.ready.len(),
            "pending after step {step}"
        );
        assert_eq!(
            stats.in_flight,
            model.in_flight.len(),
            "in flight after step {step}"
        );
        assert_eq!(stats.dead, model.dead.len(), "dead after step {step}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn queue_matches_in_memory_model(ops in proptest::collection::vec(op(), 1..60)) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(run(ops));
    }
}
