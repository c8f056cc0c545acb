//! Crash consistency against a model, for any backend with a reopenable location.
//!
//! Every transaction of the harness is the same deterministic body ([`write_txn`]):
//! transaction `id` sets three keys of its own (`t/<id>/a`, `b`, `c`, values derived from
//! the id) and adds 1 to the counter `count` and `id` to the counter `sum`. After a crash
//! the store is reopened and checked against that model ([`verify`]):
//!
//! * each transaction is **all or nothing**: its three keys are all there with the right
//!   values, or none is (nothing unacknowledged is half-applied);
//! * every **acknowledged** transaction is there (an `Ok` from commit is durable);
//! * the shared counters agree with the set of applied transactions (`count` is how many,
//!   `sum` their ids' sum): the counter updates were atomic with the keys;
//! * versions did not go back: a transaction begun after the reopen reads at or after the
//!   highest acknowledged commit version.
//!
//! Two ways to crash:
//!
//! * [`check_crash_consistency`]: in process. Concurrent writers commit; at a point
//!   chosen by the seed (after some number of acknowledgements) every writer is
//!   cancelled mid-flight and every handle of the store is dropped **without shutdown**;
//!   the location is reopened and checked; repeated for several rounds on the same data.
//! * [`run_child_writer`] and [`kill_child_and_check`]: a child process (for example the
//!   test binary itself, re-run on one ignored test) commits concurrently and prints one
//!   `ack <id> <version>` line per acknowledged commit; the parent kills it with SIGKILL
//!   after some acknowledgements, wherever its commits are (between the log write and
//!   the reply included), then reopens the location and checks it.
//!
//! The engine-level check after a crash is `engine_model::check_engine_model_across_crashes`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_storage::retry::{self, RetryPolicy};
use keel_storage::{
    decode_counter, KeyRange, KvStore, KvTxn, ReadOptions, Result, StorageError, Version,
};

/// A store at one location (a directory, a subspace, a database URL) that can be opened,
/// creating it if missing, and opened again there after a crash. Any closure
/// `Fn() -> Result<Arc<dyn KvStore>>` is one.
pub trait Reopenable: Send + Sync {
    /// Opens the store at its location. Called only after every handle of the previous
    /// opening was dropped.
    fn open(&self) -> Result<Arc<dyn KvStore>>;
}

impl<F> Reopenable for F
where
    F: Fn() -> Result<Arc<dyn KvStore>> + Send + Sync,
{
    fn open(&self) -> Result<Arc<dyn KvStore>> {
        self()
    }
}

const COUNT: &[u8] = b"count";
const SUM: &[u8] = b"sum";
const PARTS: [&str; 3] = ["a", "b", "c"];

fn key(id: u64, part: &str) -> Vec<u8> {
    format!("t/{id:010}/{part}").into_bytes()
}

fn value(id: u64, part: &str) -> Vec<u8> {
    // Values of a few hundred bytes, so a batch spans more than one page of the log.
    format!("{id}:{part}:")
        .repeat(1 + (id % 7) as usize * 10)
        .into_bytes()
}

/// Buffers transaction `id`'s writes (see the module docs).
pub fn write_txn(txn: &mut dyn KvTxn, id: u64) {
    for part in PARTS {
        txn.set(&key(id, part), &value(id, part));
    }
    txn.atomic_add(COUNT, 1);
    txn.atomic_add(SUM, id as i64);
}

/// Commits transaction `id` once (no retry): `Ok` is an acknowledgement.
pub async fn commit_txn(store: &dyn KvStore, id: u64) -> Result<Version> {
    let mut txn = store.begin().await?;
    write_txn(txn.as_mut(), id);
    Ok(txn.commit().await?.version)
}

/// What a reopened store holds, as the model sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// The transactions whose writes are there.
    pub ids: BTreeSet<u64>,
}

/// Checks a reopened store against the model: see the module docs. `acked` maps every
/// acknowledged transaction to its commit version. Panics naming the broken rule.
pub async fn verify(store: &dyn KvStore, acked: &BTreeMap<u64, Version>) -> Applied {
    let policy = RetryPolicy::default();
    let (pairs, read_version, count, sum) = retry::run(store, policy, |mut txn, _| async move {
        let pairs = txn
            .get_range(&KeyRange::prefix(b"t/"), ReadOptions::limit(usize::MAX))
            .await?;
        let count = decode_counter(txn.get(COUNT).await?.as_deref());
        let sum = decode_counter(txn.get(SUM).await?.as_deref());
        let version = txn.read_version();
        Ok::<_, StorageError>((txn, (pairs, version, count, sum)))
    })
    .await
    .expect("the reopened store reads");

    let mut parts: BTreeMap<u64, Vec<(String, Vec<u8>)>> = BTreeMap::new();
    for (k, v) in pairs {
        let text = String::from_utf8(k).expect("harness keys are text");
        let mut it = text.split('/');
        let (_, id, part) = (it.next(), it.next(), it.next());
        let id: u64 = id.and_then(|i| i.parse().ok()).expect("harness key id");
        parts
            .entry(id)
            .or_default()
            .push((part.expect("harness key part").to_string(), v));
    }
    let mut applied = Applied::default();
    for (id, found) in &parts {
        let names: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            names, PARTS,
            "transaction {id} is half-applied after the crash: only {names:?} of its keys are there"
        );
        for (part, v) in found {
            assert_eq!(
                v,
                &value(*id, part),
                "transaction {id}'s key {part} holds another value after the crash"
            );
        }
        applied.ids.insert(*id);
    }
    let lost: Vec<u64> = acked
        .keys()
        .filter(|id| !applied.ids.contains(id))
        .copied()
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged commits lost in the crash: {lost:?}"
    );
    assert_eq!(
        count,
        applied.ids.len() as i64,
        "the counter `count` disagrees with the transactions whose keys are there: the counter \
         update was not atomic with them"
    );
    assert_eq!(
        sum,
        applied.ids.iter().map(|&id| id as i64).sum::<i64>(),
        "the counter `sum` disagrees with the transactions whose keys are there"
    );
    if let Some(&highest) = acked.values().max() {
        assert!(
            read_version >= highest,
            "read version {read_version} after the reopen is below the acknowledged commit version {highest}"
        );
    }
    applied
}

/// How [`check_crash_consistency`] runs.
#[derive(Debug, Clone, Copy)]
pub struct CrashPlan {
    /// Decides the crash points.
    pub seed: u64,
    /// Crash-and-reopen rounds on the same location.
    pub rounds: u32,
    /// Concurrent writers per round.
    pub writers: u32,
    /// Most acknowledgements a round waits for before it crashes (the point is drawn
    /// from `1..=max_acks_per_round`).
    pub max_acks_per_round: u32,
}

impl Default for CrashPlan {
    fn default() -> Self {
        CrashPlan {
            seed: 1,
            rounds: 4,
            writers: 4,
            max_acks_per_round: 40,
        }
    }
}

/// A small deterministic generator (splitmix64), so the harness needs no RNG crate.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Crashes the store (drop without shutdown, writers cancelled mid-commit) at
/// points chosen by `plan.seed`, reopening and checking it against the model after each
/// crash; see the module docs. Panics naming the broken rule.
pub async fn check_crash_consistency(backend: &dyn Reopenable, plan: CrashPlan) {
    let mut mix = Mix(plan.seed);
    let mut acked: BTreeMap<u64, Version> = BTreeMap::new();
    let next_id = Arc::new(AtomicU64::new(0));
    for round in 0..plan.rounds {
        let store = backend.open().expect("the store opens");
        let applied = verify(store.as_ref(), &acked).await;
        // Transactions that were in flight at the last crash and did apply count as
        // acknowledged from now on: they must stay.
        for id in applied.ids {
            acked.entry(id).or_insert(0);
        }
        let crash_after = 1 + mix.below(u64::from(plan.max_acks_per_round));
        let acks: Arc<Mutex<BTreeMap<u64, Version>>> = Arc::default();
        let (reached_tx, mut reached) = tokio::sync::watch::channel(false);
        let reached_tx = Arc::new(reached_tx);
        let mut writers = Vec::new();
        for _ in 0..plan.writers {
            let (store, acks, next_id, reached_tx) = (
                store.clone(),
                acks.clone(),
                next_id.clone(),
                reached_tx.clone(),
            );
            writers.push(tokio::spawn(async move {
                loop {
                    let id = next_id.fetch_add(1, Ordering::Relaxed);
                    match commit_txn(store.as_ref(), id).await {
                        Ok(version) => {
                            let mut acks = acks.lock().expect("acks lock");
                            acks.insert(id, version);
                            if acks.len() as u64 >= crash_after {
                                let _ = reached_tx.send(true);
                            }
                        }
                        Err(e) if e.is_retryable() => {}
                        Err(e) => panic!("commit of transaction {id} failed: {e}"),
                    }
                    // A store whose commits never wait (in memory) would otherwise hold
                    // the worker thread for ever: cancellation needs an await point.
                    tokio::task::yield_now().await;
                }
            }));
        }
        let deadline = Duration::from_secs(60);
        tokio::time::timeout(deadline, reached.wait_for(|r| *r))
            .await
            .unwrap_or_else(|_| {
                panic!("round {round}: {crash_after} commits not acknowledged within {deadline:?}")
            })
            .expect("the writers hold the sender");
        // The crash: cancel every writer wherever it is, then drop every handle.
        for writer in &writers {
            writer.abort();
        }
        for writer in writers {
            let outcome = writer.await;
            if let Err(e) = outcome {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        }
        drop(store);
        acked.extend(acks.lock().expect("acks lock").iter());
    }
    let store = backend
        .open()
        .expect("the store opens after the last crash");
    verify(store.as_ref(), &acked).await;
}

/// The child side of [`kill_child_and_check`]: opens the store and commits
/// transactions with `writers` concurrent writers until killed, printing
/// `ack <id> <version>` on stdout (flushed) once each commit returned `Ok`. Ids start
/// past every transaction already in the store. Never returns.
pub fn run_child_writer(backend: &dyn Reopenable, writers: u32) -> ! {
    crate::block_on(async {
        let store = backend.open().expect("the child opens the store");
        let applied = verify(store.as_ref(), &BTreeMap::new()).await;
        let first = applied.ids.last().map_or(0, |id| id + 1);
        let next_id = Arc::new(AtomicU64::new(first));
        let out = Arc::new(Mutex::new(std::io::stdout()));
        let mut tasks = Vec::new();
        for _ in 0..writers {
            let (store, next_id, out) = (store.clone(), next_id.clone(), out.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let id = next_id.fetch_add(1, Ordering::Relaxed);
                    if let Ok(version) = commit_txn(store.as_ref(), id).await {
                        let mut out = out.lock().expect("stdout lock");
                        writeln!(out, "ack {id} {version}").expect("stdout");
                        out.flush().expect("stdout");
                    }
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
    });
    unreachable!("the writers never stop");
}

/// Parses an acknowledgement line printed by [`run_child_writer`].
pub fn parse_ack(line: &str) -> Option<(u64, Version)> {
    let mut it = line.strip_prefix("ack ")?.split(' ');
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Runs `child` (which must call [`run_child_writer`] on the same location), waits for
/// `kill_after_acks` acknowledgements, kills it with SIGKILL, then reopens the location
/// with `backend` and checks it against the model. Returns what the reopened store holds.
pub fn kill_child_and_check(
    mut child: Command,
    backend: &dyn Reopenable,
    kill_after_acks: usize,
) -> Applied {
    let mut proc = child
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the child process starts");
    let stdout = proc.stdout.take().expect("piped stdout");
    let mut acked = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("child stdout");
        if let Some((id, version)) = parse_ack(&line) {
            acked.insert(id, version);
        }
        if acked.len() >= kill_after_acks {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the child acknowledged only {} commits in 60 s",
            acked.len()
        );
    }
    assert!(
        acked.len() >= kill_after_acks,
        "the child exited after {} acknowledgements: {:?}",
        acked.len(),
        proc.wait()
    );
    // `Child::kill` is SIGKILL on Unix: no destructor, no flush, no shutdown runs.
    proc.kill().expect("SIGKILL the child");
    proc.wait().expect("reap the child");
    crate::block_on(async {
        let store = backend.open().expect("the store reopens after the kill");
        verify(store.as_ref(), &acked).await
    })
}
