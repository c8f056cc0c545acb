//! The durable timer service: timers are rows keyed by fire time; this service keeps the
//! ones due within the next window in memory, sleeps until the earliest, and fires each
//! through an idempotent transaction (a fired timer deletes its row in the same
//! transaction that applies it, so a crash before the commit just fires it again).
//!
//! After a restart the first scan finds every timer whose time has passed and fires it at
//! once. Timers due later than the window are picked up by the next scan.
//!
//! On a store shared by several nodes only one node fires (see `cluster`): the service of
//! the others is disabled, holds nothing and drops what it is told of.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::sync::{watch, Notify};

use crate::clock::{Clock, Millis};
use crate::error::Result;
use crate::model::TimerKey;
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
    /// Fires one timer; must be idempotent and tolerate an already-deleted row.
    fn fire(&self, timer: TimerKey) -> Pin<Box<dyn Future<Output = Result<()>> + Send + '_>>;
}

struct Loaded {
    enabled: bool,
    due: BTreeSet<TimerKey>,
    /// Every timer before this time is in `due` or already fired (0: nothing scanned yet,
    /// so every timer told of is kept).
    until: Millis,
    /// Another node announced timers: scan again before sleeping.
    rescan: bool,
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
                due: BTreeSet::new(),
                until: 0,
                rescan: false,
            }),
            wake: Notify::new(),
        }
    }

    /// Starts or stops firing. Stopping forgets every loaded timer; starting scans the
    /// store afresh.
    pub fn set_enabled(&self, enabled: bool) {
        let mut loaded = self
            .loaded
            .lock()
            .expect("invariant: timer lock not poisoned");
        if loaded.enabled == enabled {
            return;
        }
        loaded.enabled = enabled;
        loaded.due.clear();
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
            let earliest = loaded.due.first().is_none_or(|first| timer < *first);
            loaded.due.insert(timer);
            if earliest {
                self.wake.notify_one();
            }
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
            loaded.due.extend(found);
            loaded.until = until;
        }
        Ok(())
    }

    fn take_due(&self, now: Millis) -> (Vec<TimerKey>, Millis) {
        let mut loaded = self
            .loaded
            .lock()
            .expect("invariant: timer lock not poisoned");
        let mut due = Vec::new();
        while due.len() < FIRE_BATCH {
            match loaded.due.first() {
                Some(t) if t.fire_at_ms <= now => {
                    due.push(loaded.due.pop_first().expect("invariant: first exists"))
                }
                _ => break,
            }
        }
        let next = loaded
            .due
            .first()
            .map(|t| t.fire_at_ms)
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
                let results =
                    futures::future::join_all(due.iter().map(|t| handler.fire(t.clone()))).await;
                for (timer, result) in due.into_iter().zip(results) {
                    if let Err(e) = result {
                        tracing::warn!(error = %e, timer_id = %timer.timer_id, "timer firing failed; will retry");
                        self.loaded
                            .lock()
                            .expect("invariant: timer lock not poisoned")
                            .due
                            .insert(TimerKey {
                                fire_at_ms: clock.now_ms() + RETRY_MS,
                                ..timer
                            });
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
