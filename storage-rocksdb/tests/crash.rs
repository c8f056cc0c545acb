//! Crash consistency of the RocksDB backend against the harness's model
//! (`keel_conformance::crash`): crashes in process (every handle dropped without
//! shutdown while commits are in flight) and real process kills (SIGKILL of a child
//! process that commits concurrently, wherever its commits are: between the log write
//! and the reply included). After each, the reopened store holds every acknowledged
//! commit, and every other transaction wholly or not at all.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use keel_conformance::block_on;
use keel_conformance::crash::{
    check_crash_consistency, kill_child_and_check, run_child_writer, CrashPlan, Reopenable,
};
use keel_storage::{KvStore, Result};
use keel_storage_rocksdb::{RocksOptions, RocksStore};

/// Names the directory the child process writes to; unset, the child test does nothing.
const CHILD_DIR_ENV: &str = "KEEL_CRASH_CHILD_DIR";

fn rocks_at(dir: &Path) -> impl Reopenable {
    let dir = dir.to_path_buf();
    move || -> Result<Arc<dyn KvStore>> {
        Ok(Arc::new(RocksStore::open(&dir, RocksOptions::default())?))
    }
}

#[test]
fn dropped_mid_commit_the_store_keeps_acknowledged_commits_and_applies_others_whole() {
    for seed in [1, 2, 3] {
        let dir = tempfile::tempdir().expect("tempdir");
        let plan = CrashPlan {
            seed,
            ..CrashPlan::default()
        };
        block_on(check_crash_consistency(&rocks_at(dir.path()), plan));
    }
}

/// The child side of the kill test: commits until killed. Ignored, so that a plain test
/// run does not start it; the parent runs it with `--ignored --exact`.
#[test]
#[ignore = "the child process of sigkill_..., started by it"]
fn crash_child_writer() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV).map(PathBuf::from) else {
        return;
    };
    run_child_writer(&rocks_at(&dir), 4);
}

fn child(dir: &Path) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("the test binary"));
    cmd.args([
        "--exact",
        "crash_child_writer",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
        "--quiet",
    ])
    .env(CHILD_DIR_ENV, dir);
    cmd
}

#[test]
fn sigkill_of_a_committing_process_keeps_acknowledged_commits_and_applies_others_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = rocks_at(dir.path());
    // Three kills on the same data, each after a different number of acknowledgements;
    // every child resumes past the transactions already there.
    let mut applied_before = 0;
    for acks in [25, 60, 5] {
        let applied = kill_child_and_check(child(dir.path()), &backend, acks);
        assert!(
            applied.ids.len() >= applied_before + acks,
            "{} transactions after the kill, {applied_before} before and {acks} acknowledged since",
            applied.ids.len()
        );
        applied_before = applied.ids.len();
    }
}
