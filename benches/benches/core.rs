//! Criterion benches of the hot paths: the matching core, storage commits per backend
//! with and without concurrency (group commit), history append and page reads by history
//! length, and JSON decoding of a workflow-task completion.
//!
//! `cargo bench -p keel-benches` (figures are machine-dependent: compare ratios).

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use keel_engine::history;
use keel_engine::matching::{Matching, PollFilter, QueueKey, Take, TaskHint};
use keel_engine::model::{RunRecord, TaskKind};
use keel_engine::storage::memory::MemoryStore;
use keel_engine::storage::KvStore;
use keel_storage_rocksdb::{RocksOptions, RocksStore};
use serde_json::{json, Value};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn hint(i: u64) -> TaskHint {
    TaskHint {
        task_id: format!("t{i}").into(),
        type_name: "wf".into(),
        priority: 5,
        ready_at_ms: i as i64,
        compatibility: None,
        session: None,
    }
}

fn matching(c: &mut Criterion) {
    let key = QueueKey::new("default", "q", TaskKind::Workflow);
    let filter = PollFilter::default();
    let mut group = c.benchmark_group("matching");
    group.throughput(Throughput::Elements(1));
    group.bench_function("offer_then_take_uncontended", |b| {
        let m = Matching::new();
        let mut i = 0;
        b.iter(|| {
            i += 1;
            m.offer(&key, hint(i));
            match m.take_or_park(&key, &filter, m.waiter_id()) {
                Take::Hint(h) => h,
                _ => unreachable!("a hint was just offered"),
            }
        });
    });
    group.bench_function("offer_to_parked_poller", |b| {
        let m = Matching::new();
        let mut i = 0;
        b.iter(|| {
            i += 1;
            let id = m.waiter_id();
            let Take::Parked(slot) = m.take_or_park(&key, &filter, id) else {
                unreachable!("index is empty")
            };
            m.offer(&key, hint(i));
            m.unpark(&key, id, &slot)
                .hint()
                .expect("sync match delivered the hint")
        });
    });
    group.bench_function("offer_take_contended_2_threads", |b| {
        b.iter_custom(|iters| {
            let m = Arc::new(Matching::new());
            let start = std::time::Instant::now();
            let threads: Vec<_> = (0..2)
                .map(|t| {
                    let (m, key, filter) = (m.clone(), key.clone(), filter.clone());
                    std::thread::spawn(move || {
                        for i in 0..iters {
                            m.offer(&key, hint(i * 2 + t));
                            let _ = m.take_or_park(&key, &filter, m.waiter_id());
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().expect("bench thread");
            }
            start.elapsed()
        });
    });
    group.finish();
}

/// `concurrency` tasks each committing one small transaction, `per_task` times.
async fn commit_load(store: &Arc<dyn KvStore>, concurrency: usize, per_task: usize, base: u64) {
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..per_task {
                    let mut txn = store.begin().await.expect("begin");
                    let key = format!("k/{base}/{t}/{i}");
                    txn.set(key.as_bytes(), b"value-of-about-forty-bytes-............");
                    txn.atomic_add(b"counter", 1);
                    txn.commit().await.expect("commit");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("commit task");
    }
}

fn storage_commits(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let rocks: Arc<dyn KvStore> =
        Arc::new(RocksStore::open(dir.path(), RocksOptions::default()).expect("rocksdb opens"));
    let memory: Arc<dyn KvStore> = Arc::new(MemoryStore::new());
    let mut group = c.benchmark_group("storage_commit");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    let mut round = 0u64;
    for (name, store) in [("memory", &memory), ("rocksdb_fsync", &rocks)] {
        // Sequential commits: one fsync each. 64 concurrent committers: group commit.
        for concurrency in [1usize, 64] {
            let per_task = 256 / concurrency;
            group.throughput(Throughput::Elements((concurrency * per_task) as u64));
            group.bench_with_input(
                BenchmarkId::new(name, format!("{concurrency}_committers")),
                &concurrency,
                |b, &n| {
                    b.iter(|| {
                        round += 1;
                        rt.block_on(commit_load(store, n, per_task, round))
                    });
                },
            );
        }
    }
    group.finish();
}

/// A run record with only the fields a history append touches (the rest default).
fn run_record(ns: &str, run_id: &str) -> RunRecord {
    serde_json::from_value(json!({
        "namespace": ns, "workflow_id": "wf", "run_id": run_id, "run_number": 1, "workflow_type": "t",
        "task_queue": "q", "status": "running", "priority": 5, "started_at_ms": 0, "last_progress_at_ms": 0,
        "last_event_seq": 0, "last_workflow_sequence": 0
    }))
    .expect("a run record with defaults")
}

fn history_paths(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("history");
    for len in [10u64, 1_000, 100_000] {
        let store: Arc<dyn KvStore> = Arc::new(MemoryStore::new());
        let mut run = run_record("default", &format!("run-{len}"));
        rt.block_on(async {
            let mut written = 0;
            while written < len {
                let mut txn = store.begin().await.expect("begin");
                for _ in 0..1_000.min(len - written) {
                    let payload = json!({"sequence": written, "activity_type": "a", "result": {"codec": "avro", "blob": "AA=="}});
                    history::append(txn.as_mut(), &mut run, "ActivityCompleted", payload, 0, None);
                    written += 1;
                }
                txn.commit().await.expect("commit");
            }
        });
        group.bench_with_input(BenchmarkId::new("append_one_event", len), &len, |b, _| {
            b.iter_batched(
                || run.clone(),
                |mut r| {
                    rt.block_on(async {
                        let mut txn = store.begin().await.expect("begin");
                        history::append(
                            txn.as_mut(),
                            &mut r,
                            "SignalReceived",
                            json!({"signal_name": "s"}),
                            0,
                            None,
                        );
                        txn.commit().await.expect("commit");
                    })
                },
                BatchSize::SmallInput,
            );
        });
        group.bench_with_input(
            BenchmarkId::new("read_last_page_of_100", len),
            &len,
            |b, &len| {
                b.iter(|| {
                    rt.block_on(history::read_page(
                        store.as_ref(),
                        "default",
                        &run.run_id,
                        len.saturating_sub(99).max(1),
                        len,
                        100,
                    ))
                    .expect("page")
                });
            },
        );
    }
    group.finish();
}

fn completion_json(c: &mut Criterion) {
    let body = serde_json::to_vec(&json!({
        "lease_owner": "py-worker-1a2b3c4d",
        "workflow_task_attempt": 1,
        "commands": [
            {"type": "schedule_activity", "activity_type": "orders.charge", "queue": "orders",
             "arguments": {"codec": "avro", "blob": "wwHioz3/VYAiNwwCCgp3b3JsZAA="},
             "start_to_close_timeout": 30, "retry_policy": {"max_attempts": 3, "backoff_seconds": [1, 2], "non_retryable_error_types": []}},
            {"type": "record_side_effect", "result": "wwHioz3/VYAiNwwCCgp3b3JsZAA="}
        ]
    }))
    .expect("json");
    let mut group = c.benchmark_group("json");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("decode_workflow_task_completion_serde_json", |b| {
        b.iter(|| serde_json::from_slice::<Value>(&body).expect("valid json"));
    });
    // simd-json parses in place, so each iteration pays for the copy it needs.
    group.bench_function("decode_workflow_task_completion_simd_json", |b| {
        b.iter_batched(
            || body.clone(),
            |mut bytes| simd_json::serde::from_slice::<Value>(&mut bytes).expect("valid json"),
            BatchSize::SmallInput,
        );
    });
    group.bench_function(
        "decode_workflow_task_completion_simd_json_owned_value",
        |b| {
            b.iter_batched(
                || body.clone(),
                |mut bytes| simd_json::to_owned_value(&mut bytes).expect("valid json"),
                BatchSize::SmallInput,
            );
        },
    );
    let value: Value = serde_json::from_slice(&body).expect("valid json");
    group.bench_function("encode_workflow_task_completion_serde_json", |b| {
        b.iter(|| serde_json::to_vec(&value).expect("encodes"));
    });
    group.bench_function("encode_workflow_task_completion_simd_json", |b| {
        b.iter(|| simd_json::serde::to_vec(&value).expect("encodes"));
    });
    group.finish();
}

criterion_group!(
    benches,
    matching,
    storage_commits,
    history_paths,
    completion_json
);
criterion_main!(benches);
