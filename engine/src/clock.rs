//! The injected clock: every time the engine reads or waits for comes from here, so
//! tests drive time instead of sleeping.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// A source of wall-clock time that can also wait for a time.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now_ms(&self) -> Millis;
    /// Resolves once `now_ms() >= at`.
    fn sleep_until(&self, at: Millis) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>>;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> Millis {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as Millis)
            .unwrap_or(0)
    }

    fn sleep_until(&self, at: Millis) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        let wait = (at - self.now_ms()).max(0) as u64;
        Box::pin(tokio::time::sleep(Duration::from_millis(wait)))
    }
}

/// A clock that only moves when a test advances it.
#[derive(Debug, Default, Clone)]
pub struct ManualClock {
    inner: Arc<ManualInner>,
}

#[derive(Debug, Default)]
struct ManualInner {
    now: AtomicI64,
    moved: Notify,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: Millis) -> Self {
        let clock = ManualClock::default();
        clock.inner.now.store(start, Ordering::SeqCst);
        clock
    }

    /// Moves time forward by `by` and wakes every sleeper that is now due.
    pub fn advance(&self, by: Duration) {
        self.inner
            .now
            .fetch_add(by.as_millis() as Millis, Ordering::SeqCst);
        self.inner.moved.notify_waiters();
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> Millis {
        self.inner.now.load(Ordering::SeqCst)
    }

    fn sleep_until(&self, at: Millis) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            loop {
                let moved = inner.moved.notified();
                if inner.now.load(Ordering::SeqCst) >= at {
                    return;
                }
                moved.await;
            }
        })
    }
}

/// Formats a time as the protocol's canonical UTC timestamp, `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub fn format_timestamp(ms: Millis) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// Parses a timestamp as [`format_timestamp`] writes it (any RFC 3339 time) to Unix
/// milliseconds.
pub fn parse_timestamp(s: &str) -> Option<Millis> {
    s.parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

#[cfg(test)]
mod tests {
    use super::{format_timestamp, parse_timestamp, Duration, ManualClock};
    use crate::clock::Clock;

    #[test]
    fn timestamps_are_canonical_utc_with_microseconds() {
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            format_timestamp(1_779_321_607_123),
            "2026-05-21T00:00:07.123000Z"
        );
        assert_eq!(
            parse_timestamp("2026-05-21T00:00:07.123000Z"),
            Some(1_779_321_607_123)
        );
        assert_eq!(parse_timestamp("yesterday"), None);
    }

    #[tokio::test]
    async fn manual_clock_wakes_sleepers_when_advanced_past_their_time() {
        let clock = ManualClock::new(1_000);
        let sleeper = tokio::spawn(clock.sleep_until(1_500));
        clock.advance(Duration::from_millis(400));
        assert!(!sleeper.is_finished());
        clock.advance(Duration::from_millis(100));
        tokio::time::timeout(Duration::from_secs(5), sleeper)
            .await
            .expect("sleeper wakes")
            .expect("no panic");
    }
}
