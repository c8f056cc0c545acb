//! Model-checked interleavings of the matching core (run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --test loom_matching`).
//!
//! The storage lease transaction is modelled by a loom mutex over the task's state: a
//! lease succeeds only while the task is ready, exactly like the real transaction's
//! re-check. The properties: a hint is never lost (it ends with a poller or in the index),
//! a task is leased at most once per readiness, and nothing is leased after completion.
#![cfg(loom)]

use loom::sync::{Arc, Mutex};
use loom::thread;

use keel_engine::matching::{Matching, PollFilter, QueueKey, Take, TaskHint};
use keel_engine::model::TaskKind;

fn key() -> QueueKey {
    QueueKey::new("ns", "q", TaskKind::Workflow)
}

fn hint(id: &str) -> TaskHint {
    TaskHint {
        task_id: id.into(),
        type_name: "t".into(),
        priority: 5,
        ready_at_ms: 0,
        compatibility: None,
        session: None,
    }
}

/// A poller that gives up (timeout) right after parking: returns the hint it ended with.
fn poll_then_time_out(m: &Matching) -> Option<TaskHint> {
    let id = m.waiter_id();
    match m.take_or_park(&key(), &PollFilter::default(), id) {
        Take::Hint(h) => Some(h),
        Take::Parked(slot) => m.unpark(&key(), id, &slot).hint(),
        Take::Full => None,
    }
}

fn drain_index(m: &Matching) -> Vec<TaskHint> {
    let mut out = Vec::new();
    loop {
        let id = m.waiter_id();
        match m.take_or_park(&key(), &PollFilter::default(), id) {
            Take::Hint(h) => out.push(h),
            Take::Parked(slot) => {
                assert!(m.unpark(&key(), id, &slot).hint().is_none());
                return out;
            }
            Take::Full => return out,
        }
    }
}

#[test]
fn dispatch_racing_a_poll_timeout_never_loses_the_hint() {
    loom::model(|| {
        let m = Arc::new(Matching::new());
        let poller = {
            let m = m.clone();
            thread::spawn(move || poll_then_time_out(&m))
        };
        m.offer(&key(), hint("t1"));
        let got = poller.join().expect("poller thread");
        let indexed = drain_index(&m);
        assert_eq!(
            got.iter().count() + indexed.len(),
            1,
            "the hint is with the poller xor in the index"
        );
        assert_eq!(m.parked(), 0);
    });
}

#[test]
fn two_pollers_racing_for_one_task_get_it_at_most_once() {
    loom::model(|| {
        let m = Arc::new(Matching::new());
        let pollers: Vec<_> = (0..2)
            .map(|_| {
                let m = m.clone();
                thread::spawn(move || poll_then_time_out(&m))
            })
            .collect();
        m.offer(&key(), hint("t1"));
        let got: usize = pollers
            .into_iter()
            .map(|p| p.join().expect("poller").iter().count())
            .sum();
        let indexed = drain_index(&m).len();
        assert_eq!(got + indexed, 1);
    });
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Ready,
    Leased(u32),
    Done,
}

/// The storage re-check of a lease: succeeds only on a ready task.
fn lease(task: &Mutex<(State, u32)>) -> Option<u32> {
    let mut t = task.lock().expect("model lock");
    if t.0 == State::Ready {
        t.1 += 1;
        t.0 = State::Leased(t.1);
        Some(t.1)
    } else {
        None
    }
}

#[test]
fn completion_racing_lease_expiry_never_leases_a_completed_task() {
    loom::model(|| {
        let m = Arc::new(Matching::new());
        // Leased at attempt 1 to a worker that is about to complete it.
        let task = Arc::new(Mutex::new((State::Leased(1), 1u32)));
        let completer = {
            let task = task.clone();
            thread::spawn(move || {
                let mut t = task.lock().expect("model lock");
                // A completion must present the current lease (attempt 1).
                if t.0 == State::Leased(1) {
                    t.0 = State::Done;
                    true
                } else {
                    false
                }
            })
        };
        let expirer = {
            let (m, task) = (m.clone(), task.clone());
            thread::spawn(move || {
                let expired = {
                    let mut t = task.lock().expect("model lock");
                    if matches!(t.0, State::Leased(_)) {
                        t.0 = State::Ready;
                        true
                    } else {
                        false
                    }
                };
                if expired {
                    m.offer(&key(), hint("t1"));
                }
            })
        };
        let poller = {
            let (m, task) = (m.clone(), task.clone());
            thread::spawn(move || poll_then_time_out(&m).and_then(|_| lease(&task)))
        };
        let completed = completer.join().expect("completer");
        expirer.join().expect("expirer");
        let leased_again = poller.join().expect("poller");
        let leftover: Vec<Option<u32>> = drain_index(&m).iter().map(|_| lease(&task)).collect();
        let final_state = task.lock().expect("model lock").0;
        if completed {
            assert_eq!(final_state, State::Done, "a completed task stays completed");
            assert!(
                leased_again.is_none() && leftover.iter().all(Option::is_none),
                "no lease after completion"
            );
        } else {
            // Expiry won: the stale completion was refused and the task is handed out again.
            let leases = leased_again.iter().count() + leftover.iter().flatten().count();
            assert_eq!(leases, 1, "the expired task is leased exactly once more");
            assert_eq!(final_state, State::Leased(2));
        }
    });
}

#[test]
fn duplicate_offers_of_one_task_index_it_once() {
    loom::model(|| {
        let m = Arc::new(Matching::new());
        let a = {
            let m = m.clone();
            thread::spawn(move || m.offer(&key(), hint("t1")))
        };
        m.offer(&key(), hint("t1"));
        a.join().expect("offerer");
        assert_eq!(drain_index(&m).len(), 1);
    });
}

/// A task record leased to `w` (what an eager lease delivers).
fn leased_record() -> Box<keel_engine::model::TaskRecord> {
    Box::new(
        serde_json::from_value(serde_json::json!({
            "task_id": "t1", "kind": "workflow", "namespace": "ns", "task_queue": "q",
            "workflow_id": "wf", "run_id": "r", "type_name": "t", "priority": 5,
            "status": "leased", "attempt": 1, "ready_at_ms": 0
        }))
        .expect("task record"),
    )
}

/// A transaction reserving a parked poller for an eager lease, then committing
/// (`commit`: delivering) or failing (dropping the reservation), races the poller leaving
/// (`cancel`: its poll dropped, abandoning; otherwise timed out, then waiting for the
/// reservation to resolve). The lease reaches the poller or is handed back, exactly once
/// when committed and never when not; the poller never stays queued once it has left.
fn reservation_race(commit: bool, cancel: bool) {
    use keel_engine::matching::Unparked;
    loom::model(move || {
        // std's Arc: a reservation holds one (reference counts are not what is checked).
        let m = std::sync::Arc::new(Matching::new());
        let filter = PollFilter {
            worker_id: Some("w".into()),
            ..PollFilter::default()
        };
        let id = m.waiter_id();
        let Take::Parked(slot) = m.take_or_park(&key(), &filter, id) else {
            panic!("parks")
        };
        let txn = {
            let m = m.clone();
            thread::spawn(move || {
                let reservation = Matching::reserve(&m, &key(), &hint("t1"))?;
                assert_eq!(reservation.worker_id(), "w");
                if commit {
                    Some(reservation.deliver(leased_record()).is_some())
                } else {
                    drop(reservation);
                    Some(false)
                }
            })
        };
        let first = if cancel {
            m.abandon(&key(), id, &slot)
        } else {
            m.unpark(&key(), id, &slot)
        };
        let outcome = txn.join().expect("transaction");
        let received = match first {
            Unparked::Leased(_) => true,
            // Still reserved when the poller timed out: it waits for the outcome.
            Unparked::Reserved => matches!(m.unpark(&key(), id, &slot), Unparked::Leased(_)),
            Unparked::Nothing | Unparked::Hint(_) => false,
        };
        let handed_back = outcome == Some(true);
        match (commit, outcome) {
            (true, Some(_)) => assert!(received ^ handed_back, "delivered xor handed back"),
            _ => assert!(
                !received && !handed_back,
                "no lease without a committed reservation"
            ),
        }
        assert_eq!(m.parked(), 0, "the poller left its queue");
        assert_eq!(m.stats(&key()).pollers, 0);
    });
}

#[test]
fn a_committed_reservation_reaches_a_cancelled_poller_or_is_handed_back() {
    reservation_race(true, true);
}

#[test]
fn a_committed_reservation_reaches_a_timed_out_poller() {
    reservation_race(true, false);
}

#[test]
fn a_failed_reservation_gives_a_leaving_poller_nothing_and_leaves_no_waiter() {
    reservation_race(false, true);
    reservation_race(false, false);
}
