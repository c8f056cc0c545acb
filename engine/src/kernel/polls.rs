//! In-memory memories of polls (advisory, lost on restart): recent poll requests by
//! `poll_request_id`, so a retried poll gets its task back, and which worker cached which
//! run's history (sticky claims).

use std::collections::HashMap;

use crate::clock::Millis;
use crate::model::TaskKind;

/// Identifies one poll request for idempotency.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PollRequestKey {
    pub namespace: String,
    pub queue: String,
    pub worker_id: String,
    pub request_id: String,
    pub kind: TaskKind,
}

pub(crate) type PollResult = Option<(String, u32)>;

enum Entry {
    InFlight(tokio::sync::watch::Receiver<bool>),
    Done(PollResult),
}

/// How long a poll request id is remembered, and how many are.
const POLL_REQUEST_TTL_MS: Millis = 5 * 60 * 1000;
const POLL_REQUEST_CAP: usize = 100_000;

/// Recent poll requests by id (in memory: after a restart a retried poll simply polls
/// again, and the task its lost response carried comes back when that lease lapses).
#[derive(Default)]
pub struct PollRequests {
    inner: std::sync::Mutex<PollRequestsInner>,
}

#[derive(Default)]
struct PollRequestsInner {
    entries: HashMap<PollRequestKey, Entry>,
    order: std::collections::VecDeque<(Millis, PollRequestKey)>,
}

pub(crate) enum Begin<'a> {
    Lead(Leader<'a>),
    Wait(tokio::sync::watch::Receiver<bool>),
    Done(PollResult),
}

/// The first poll of an id; dropping it unfinished (cancelled poll) forgets the id.
pub(crate) struct Leader<'a> {
    requests: &'a PollRequests,
    key: PollRequestKey,
    done: tokio::sync::watch::Sender<bool>,
    finished: bool,
}

impl Leader<'_> {
    pub(crate) fn finish(mut self, result: PollResult) {
        self.finished = true;
        let mut inner = self.requests.lock();
        inner.entries.insert(self.key.clone(), Entry::Done(result));
        let _ = self.done.send(true);
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.requests.lock().entries.remove(&self.key);
            let _ = self.done.send(true);
        }
    }
}

impl PollRequests {
    fn lock(&self) -> std::sync::MutexGuard<'_, PollRequestsInner> {
        self.inner
            .lock()
            .expect("invariant: poll request lock not poisoned")
    }

    pub(crate) fn begin(&self, key: &PollRequestKey, now: Millis) -> Begin<'_> {
        let mut inner = self.lock();
        while let Some((at, _)) = inner.order.front() {
            if *at + POLL_REQUEST_TTL_MS > now && inner.order.len() <= POLL_REQUEST_CAP {
                break;
            }
            let (_, old) = inner.order.pop_front().expect("invariant: front exists");
            if matches!(inner.entries.get(&old), Some(Entry::Done(_))) {
                inner.entries.remove(&old);
            }
        }
        match inner.entries.get(key) {
            Some(Entry::InFlight(rx)) => Begin::Wait(rx.clone()),
            Some(Entry::Done(result)) => Begin::Done(result.clone()),
            None => {
                let (done, rx) = tokio::sync::watch::channel(false);
                inner.entries.insert(key.clone(), Entry::InFlight(rx));
                inner.order.push_back((now, key.clone()));
                Begin::Lead(Leader {
                    requests: self,
                    key: key.clone(),
                    done,
                    finished: false,
                })
            }
        }
    }

    pub(crate) fn forget(&self, key: &PollRequestKey) {
        let mut inner = self.lock();
        if matches!(inner.entries.get(key), Some(Entry::Done(_))) {
            inner.entries.remove(key);
        }
    }
}

/// How long a sticky claim is trusted at most, whatever the worker asks.
const MAX_STICKY_TTL_MS: Millis = 3_600_000;
/// Runs remembered at most (oldest claims are dropped first when full).
const MAX_STICKY_RUNS: usize = 100_000;

/// Runs whose history a worker cached at its last completion (`sticky_cache` in the
/// completion body). Advisory: lost on restart, and the worker re-checks every cached
/// prefix against the server's history, so a wrong guess only costs a full replay.
#[derive(Default)]
pub struct StickyRuns {
    claims: std::sync::Mutex<HashMap<String, (String, Millis)>>,
}

impl StickyRuns {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Millis)>> {
        self.claims
            .lock()
            .expect("invariant: sticky lock not poisoned")
    }

    /// Records that `worker_id` cached `run_id`'s history until `now + ttl`.
    pub fn remember(&self, run_id: &str, worker_id: &str, ttl_seconds: u64, now: Millis) {
        let until = now + (ttl_seconds as Millis * 1000).min(MAX_STICKY_TTL_MS);
        let mut claims = self.lock();
        if claims.len() >= MAX_STICKY_RUNS {
            claims.retain(|_, (_, u)| *u > now);
            if claims.len() >= MAX_STICKY_RUNS {
                claims.clear();
            }
        }
        claims.insert(run_id.to_string(), (worker_id.to_string(), until));
    }

    /// Forgets a run (its worker dropped the cache, or the run closed).
    pub fn forget(&self, run_id: &str) {
        self.lock().remove(run_id);
    }

    pub(crate) fn expects_hit(&self, run_id: &str, worker_id: &str, now: Millis) -> bool {
        self.lock()
            .get(run_id)
            .is_some_and(|(w, until)| w == worker_id && *until > now)
    }
}
