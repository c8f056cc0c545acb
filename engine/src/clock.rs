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
/// Written digit by digit (every history event and task reply carries one): years
/// 0000–9999; others take the general path, as before.
pub fn format_timestamp(ms: Millis) -> String {
    let (secs, milli) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, of_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    if !(0..=9999).contains(&year) {
        return format_timestamp_general(ms);
    }
    let mut out = *b"0000-00-00T00:00:00.000000Z";
    let mut put = |at: usize, width: usize, mut value: i64| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, of_day / 3600);
    put(14, 2, of_day / 60 % 60);
    put(17, 2, of_day % 60);
    put(20, 3, milli);
    String::from_utf8(out.to_vec()).expect("invariant: ASCII digits")
}

/// The proleptic Gregorian (year, month, day) of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

fn format_timestamp_general(ms: Millis) -> String {
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
    use super::{
        format_timestamp, format_timestamp_general, parse_timestamp, Duration, ManualClock,
    };
    use crate::clock::Clock;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn the_digit_by_digit_timestamp_matches_the_general_formatter(
            ms in -70_000_000_000_000i64..260_000_000_000_000i64
        ) {
            prop_assert_eq!(format_timestamp(ms), format_timestamp_general(ms));
        }
    }

    #[test]
    fn timestamps_at_calendar_edges_match_the_general_formatter() {
        // Leap days, century rules, the epoch, the first and last representable years.
        for text in [
            "0000-01-01T00:00:00Z",
            "0000-02-29T12:00:00Z",
            "1900-02-28T23:59:59.999Z",
            "1969-12-31T23:59:59.999Z",
            "1970-01-01T00:00:00Z",
            "2000-02-29T00:00:00Z",
            "2024-12-31T23:59:59.999Z",
            "2100-03-01T00:00:00Z",
            "9999-12-30T21:59:59.999Z",
        ] {
            let ms = parse_timestamp(text).unwrap_or_else(|| panic!("a valid time: {text}"));
            assert_eq!(format_timestamp(ms), format_timestamp_general(ms), "{text}");
        }
    }

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
