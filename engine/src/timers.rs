//! The durable timer service: timers are rows keyed by fire time; this service keeps the
//! ones due within the next window in memory, sleeps until the earliest, and fires each
//! through an idempotent transaction (a fired timer deletes its row in the same
//! transaction that applies it, so a crash before the commit just fires it again).
//!
//! After a restart the first scan finds every timer whose time has passed and fires it at
//! once. Timers due later than the window are picked up by the next scan.
//!
//! It also holds **in-memory timers**: timers without a row, which carry their action
//! (a single-node store's lease-scoped timers, see `kernel/tasks.rs`). They live only here,
//! whatever the window, until they fire or are cancelled; whoever arms them rebuilds
//! them after a restart from the records they guard.
//!
//! On a store shared by several nodes only one node fires (see `cluster`): the service of
//! the others is disabled, holds no row timer and drops what it is told of.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::sync::{watch, Notify};

use crate::clock::{Clock, Millis};
use crate::error::Result;
use crate::model::{TimerAction, TimerKey};
use crate::storage::{KvStore, ReadOptions};
use crate::tables;

/// How far ahead timers are loaded into memory.
pub const WINDOW_MS: Millis = 60_000;
/// How many timers fire concurrently.
const FIRE_BATCH: usize = 256;
/// Delay before retrying a timer whose firing failed.
const RETRY_MS: Millis = 1_000;

/// What firing a timer does; implemented by the engine.
pub trait TimerHandler: Send + Sync + 'static {
    /// Fires one timer: a row timer (`action` None: read from its row, which it deletes)
    /// or an in-memory one (its `action`). Must be idempotent and tolerate an
    /// already-deleted row.
    fn fire(
        &self,
        timer: TimerKey,
        action: Option<TimerAction>,
    ) -> Pin<Box<dyn Future<Output = Result<()>> + Send + '_>>;
}

/// A loaded timer, ordered by when it is to fire (its own time, or later after a failed
/// firing): the timer, and the action of an in-memory timer.
type Due = BTreeMap<(Millis, TimerKey), Option<TimerAction>>;

struct Loaded {
    enabled: bool,
    due: Due,
    /// Every timer before this time is in `due` or already fired (0: nothing scanned yet,
    /// so every timer told of is kept).
    until: Millis,
    /// Another node announced timers: scan again before sleeping.
    rescan: bool,
    /// How many entries of `due` are in-memory timers (kept with every change to `due`).
    in_memory: usize,
}

impl Loaded {
    /// Adds (or replaces) a timer to fire at `at`, keeping the in-memory count.
    fn put(&mut self, at: Millis, timer: TimerKey, action: Option<TimerAction>) {
        self.in_memory += usize::from(action.is_some());
        if let Some(Some(_)) = self.due.insert((at, timer), action) {
            self.in_memory -= 1;
        }
    }

    /// Removes a timer, keeping the in-memory count.
    fn remove(&mut self, timer: &TimerKey) {
        if let Some(Some(_)) = self.due.remove(&(timer.fire_at_ms, timer.clone())) {
            self.in_memory -= 1;
        }
    }

    /// Takes the earliest timer if it is due at `now`, keeping the in-memory count.
    fn pop_due(&mut self, now: Millis) -> Option<(TimerKey, Option<TimerAction>)> {
        let ((at, _), _) = self.due.first_key_value()?;
        if *at > now {
            return None;
        }
        let ((_, timer), action) = self.due.pop_first()?;
        self.in_memory -= usize::from(action.is_some());
        Some((timer, action))
    }
}

/// The in-memory side of the timer service.
pub struct Timers {
    loaded: Mutex<Loaded>,
    wake: Notify,
}

impl Default for Timers {
    fn default() -> Self {
        Timers::new(true)
    }
}

impl Timers {
    /// A service that fires (`enabled`) or waits to be enabled.
    pub fn new(enabled: bool) -> Self {
        Timers {
            loaded: Mutex::new(Loaded {
                enabled,
                due: BTreeMap::new(),
                until: 0,
                rescan: false,
                in_memory: 0,
            }),
            wake: Notify::new(),
        }
    }

    /// Starts or stops firing. Stopping forgets every loaded row timer (in-memory timers
    /// stay, unfired); starting scans the store afresh.
    pub fn set_enabled(&self, enabled: bool) {
        let mut loaded = self
            .loaded
            .lock()
            .expect("invariant: timer lock not poisoned");
        if loaded.enabled == enabled {
            return;
        }
        loaded.enabled = enabled;
        loaded.due.retain(|_, action| action.is_some());
        loaded.until = 0;
        self.wake.notify_one();
    }

    /// Whether this service fires timers.
    pub fn enabled(&self) -> bool {
        self.loaded
            .lock()
            .expect("invariant: timer lock not poisoned")
            .enabled
    }

    /// Asks for a scan of the window before the next sleep (timers were committed that
    /// this service was not told of).
    pub fn request_scan(&self) {
        let mut loaded = self
            .loaded
            .lock()
            .expect("invariant: timer lock not poisoned");
        if loaded.enabled {
            loaded.rescan = true;
            self.wake.notify_one();
        }
    }

    /// Tells the service about a timer whose row was just committed.
    pub fn schedule(&self, timer: TimerKey) {
        let mut loaded = self
            .loaded
            .lock()
            .expect("invariant: timer lock not poisoned");
        if loaded.enabled && (loaded.until == 0 || timer.fire_at_ms < loaded.until) {
            self.insert(&mut loaded, timer, None);
        }
    }

    /// Arms an in-memory timer: `action` fires at `timer.fire_at_ms` unless cancelled.
    pub fn schedule_in_memory(&self, timer: TimerKey, action: TimerAction) {
        let mut loaded = self
            .loaded
            .lock()
            .expect("invariant: timer lock not poisoned");
        self.insert(&mut loaded, timer, Some(action));
    }

    /// Cancels an in-memory timer (one that already fired or never was is no error).
    pub fn cancel_in_memory(&self, timer: &TimerKey) {
        self.loaded
            .lock()
            .expect("invariant: timer lock not poisoned")
            .remove(timer);
    }

    /// The in-memory timers due at `now`, left in place (for inline firing).
    pub fn in_memory_due(&self, now: Millis) -> Vec<(TimerKey, TimerAction)> {
        let loaded = self
            .loaded
            .lock()
            .expect("invariant: timer lock not poisoned");
        loaded
            .due
            .range(..(now + 1, TimerKey::default()))
            .filter_map(|((_, t), a)| a.clone().map(|a| (t.clone(), a)))
            .collect()
    }

    /// How many in-memory timers are armed.
    pub fn in_memory_len(&self) -> usize {
        self.loaded
            .lock()
            .expect("invariant: timer lock not poisoned")
            .in_memory
    }

    fn insert(&self, loaded: &mut Loaded, timer: TimerKey, action: Option<TimerAction>) {
        let at = timer.fire_at_ms;
        let earliest = loaded
            .due
            .first_key_value()
            .is_none_or(|(first, _)| at < first.0);
        loaded.put(at, timer, action);
        if earliest {
            self.wake.notify_one();
        }
    }

    async fn scan(&self, store: &dyn KvStore, now: Millis) -> Result<()> {
        let until = now + WINDOW_MS;
        self.loaded
            .lock()
            .expect("invariant: timer lock not poisoned")
            .rescan = false;
        let mut found = Vec::new();
        let mut range = tables::timers_before(until);
        loop {
            let mut txn = store.begin().await?;
            let page = txn
                .get_range(&range, ReadOptions::limit(1024).snapshot())
                .await?;
            let full = page.len() == 1024;
            for (key, _) in &page {
                let mut r = crate::keys::KeyReader::new(key);
                if let (Some(fire_at_ms), Some(timer_id)) = (r.i64(), r.str()) {
                    found.push(TimerKey {
                        fire_at_ms,
                        timer_id,
                    });
                }
            }
            match (full, page.last()) {
                (true, Some((last, _))) => range.start = std::ops::Bound::Excluded(last.clone()),
                _ => break,
            }
        }
        let mut loaded = self
            .loaded
            .lock()
            .expect("invariant: timer lock not poisoned");
        if loaded.enabled {
            for timer in found {
                loaded.put(timer.fire_at_ms, timer, None);
            }
            loaded.until = until;
        }
        Ok(())
    }

    fn take_due(&self, now: Millis) -> (Vec<(TimerKey, Option<TimerAction>)>, Millis) {
        let mut loaded = self
            .loaded
            .lock()
            .expect("invariant: timer lock not poisoned");
        let mut due = Vec::new();
        while due.len() < FIRE_BATCH {
            match loaded.pop_due(now) {
                Some(timer) => due.push(timer),
                None => break,
            }
        }
        let next = loaded
            .due
            .first_key_value()
            .map(|((at, _), _)| *at)
            .unwrap_or(Millis::MAX)
            .min(loaded.until);
        (due, next)
    }

    /// Runs the service until `stop` turns true.
    pub async fn run(
        self: Arc<Self>,
        store: Arc<dyn KvStore>,
        clock: Arc<dyn Clock>,
        handler: Arc<dyn TimerHandler>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            if *stop.borrow() {
                return;
            }
            let now = clock.now_ms();
            let (enabled, needs_scan) = {
                let loaded = self
                    .loaded
                    .lock()
                    .expect("invariant: timer lock not poisoned");
                (
                    loaded.enabled,
                    loaded.rescan || now >= loaded.until - WINDOW_MS / 2,
                )
            };
            if !enabled {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            if needs_scan {
                if let Err(e) = self.scan(store.as_ref(), now).await {
                    tracing::warn!(error = %e, "timer scan failed; retrying");
                    tokio::select! {
                        _ = clock.sleep_until(now + RETRY_MS) => {}
                        _ = stop.changed() => {}
                    }
                    continue;
                }
            }
            let (due, next) = self.take_due(now);
            if !due.is_empty() {
                let results = futures::future::join_all(
                    due.iter()
                        .map(|(t, action)| handler.fire(t.clone(), action.clone())),
                )
                .await;
                for ((timer, action), result) in due.into_iter().zip(results) {
                    if let Err(e) = result {
                        tracing::warn!(error = %e, timer_id = %timer.timer_id, "timer firing failed; will retry");
                        // Same timer, later: its identity (the row key, or what the
                        // in-memory timer's owner compares) does not change.
                        self.loaded
                            .lock()
                            .expect("invariant: timer lock not poisoned")
                            .put(clock.now_ms() + RETRY_MS, timer, action);
                    }
                }
                continue;
            }
            // Wake at the next due time, at the next scan, on an earlier new timer, or on stop.
            let rescan_at = self
                .loaded
                .lock()
                .expect("invariant: timer lock not poisoned")
                .until
                - WINDOW_MS / 2;
            tokio::select! {
                _ = clock.sleep_until(next.min(rescan_at)) => {}
                _ = self.wake.notified() => {}
                _ = stop.changed() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{
        watch, Arc, Future, Mutex, Pin, Result, TimerAction, TimerHandler, TimerKey, Timers,
        RETRY_MS,
    };
    use crate::clock::ManualClock;
    use crate::storage::memory::MemoryStore;

    /// Records every firing; fails the first one.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(TimerKey, Option<TimerAction>)>>);

    impl TimerHandler for Recorder {
        fn fire(
            &self,
            timer: TimerKey,
            action: Option<TimerAction>,
        ) -> Pin<Box<dyn Future<Output = Result<()>> + Send + '_>> {
            let mut fired = self.0.lock().expect("recorder lock");
            fired.push((timer, action));
            let first = fired.len() == 1;
            Box::pin(async move {
                if first {
                    Err(crate::error::Error::conflict(
                        "injected",
                        "injected failure",
                    ))
                } else {
                    Ok(())
                }
            })
        }
    }

    fn lease(task_id: &str) -> TimerAction {
        TimerAction::LeaseExpiry {
            task_id: task_id.into(),
        }
    }

    #[tokio::test]
    async fn an_in_memory_timer_whose_firing_failed_is_retried_as_the_same_timer() {
        let timers = Arc::new(Timers::new(true));
        let clock = ManualClock::new(1_000);
        let recorder = Arc::new(Recorder::default());
        let (stop, stop_rx) = watch::channel(false);
        let service = tokio::spawn(timers.clone().run(
            Arc::new(MemoryStore::new()),
            Arc::new(clock.clone()),
            recorder.clone(),
            stop_rx,
        ));
        let key = TimerKey {
            fire_at_ms: 2_000,
            timer_id: "t".into(),
        };
        timers.schedule_in_memory(key.clone(), lease("a"));
        clock.advance(std::time::Duration::from_millis(1_000 + RETRY_MS as u64));
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while recorder.0.lock().expect("recorder lock").len() < 2 {
            assert!(tokio::time::Instant::now() < deadline, "no retry");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            clock.advance(std::time::Duration::from_millis(RETRY_MS as u64));
        }
        let fired = recorder.0.lock().expect("recorder lock").clone();
        assert_eq!(fired[0], (key.clone(), Some(lease("a"))));
        assert_eq!(
            fired[1],
            (key, Some(lease("a"))),
            "same identity and action"
        );
        assert_eq!(timers.in_memory_len(), 0);
        stop.send(true).expect("stop");
        service.await.expect("service ends");
    }

    #[test]
    fn in_memory_timers_are_cancelled_by_identity_and_outlive_a_disabled_service() {
        let timers = Timers::new(true);
        let (a, b) = (
            TimerKey {
                fire_at_ms: 5,
                timer_id: "a".into(),
            },
            TimerKey {
                fire_at_ms: 9,
                timer_id: "b".into(),
            },
        );
        timers.schedule_in_memory(a.clone(), lease("a"));
        timers.schedule_in_memory(b.clone(), lease("b"));
        timers.schedule(TimerKey {
            fire_at_ms: 1,
            timer_id: "row".into(),
        });
        assert_eq!(timers.in_memory_due(5), vec![(a.clone(), lease("a"))]);
        timers.cancel_in_memory(&a);
        timers.set_enabled(false);
        assert_eq!(timers.in_memory_len(), 1);
        assert_eq!(timers.in_memory_due(100), vec![(b, lease("b"))]);
        assert_eq!(
            timers.loaded.lock().expect("lock").due.len(),
            1,
            "the row timer was forgotten"
        );
    }
}
