//! Operating limits of the HTTP front: how long a connection may take at each stage, how
//! many may be open at once, and the process's descriptor limit that ceiling is derived
//! from. Also the two small policies the accept loop applies when the kernel refuses it a
//! connection: an exponential backoff and a log throttle.
//!
//! The limits exist so that slow or abusive clients, or simply too many of them, cannot
//! hold the server's descriptors and memory: every stage of a connection except a request
//! the handler owns (a long-poll parked on the matching core) has a deadline, and the
//! connection ceiling sits below the descriptor limit, so the server refuses a connection
//! it cannot afford with a reply instead of failing in `accept`.

use std::io;
use std::time::{Duration, Instant};

/// Default [`ConnectionLimits::header_timeout`].
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`ConnectionLimits::body_timeout`].
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default [`ConnectionLimits::idle_timeout`]: longer than the common HTTP clients' own
/// pool idle timeouts (reqwest closes an idle pooled connection after 90 s, httpx after
/// 5 s), so the client retires an idle connection before the server does and does not
/// send a request into one the server is closing.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// The derived connection ceiling never exceeds this (~28 KB of buffers per idle
/// connection: 65,536 of them is under 2 GB), whatever the descriptor limit.
pub const MAX_DERIVED_CONNECTIONS: usize = 65_536;

/// How long a connection may take at each stage, and how many may be open at once.
///
/// A connection is always in one of four states, and each has at most one deadline:
///
/// | state | deadline | on expiry |
/// |---|---|---|
/// | fresh, no byte yet | `header_timeout` from the accept | closed |
/// | reading a request head | `header_timeout` from its first byte (a fresh connection: from the accept) | 408 `request_header_timeout`, closed |
/// | a request in the handler | none; the body must arrive within `body_timeout` of the head | 408 `request_body_timeout`, closed |
/// | idle between requests | `idle_timeout` without a request or bytes moving | closed |
///
/// A parked long-poll is a request in the handler, so no connection timeout applies to
/// it while it waits; its own `timeout_seconds` bounds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Time a client has to send a request head (request line and headers).
    pub header_timeout: Duration,
    /// Time a client has to send a request body, counted from the end of its head. One
    /// deadline for the whole body (not per read), so a body dripping a byte at a time
    /// cannot stretch it; bodies are at most 2 MiB.
    pub body_timeout: Duration,
    /// Time a keep-alive connection may sit without a request and without bytes moving.
    pub idle_timeout: Duration,
    /// Most connections open at once; `None` derives it from the descriptor limit when
    /// the server starts ([`default_max_connections`]). Beyond it a new connection is
    /// answered 503 `connection_limit_reached` with `Connection: close` and closed.
    pub max_connections: Option<usize>,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: None,
        }
    }
}

impl ConnectionLimits {
    /// The connection ceiling in force: the configured one, or one derived from the
    /// process's current soft descriptor limit.
    pub fn effective_max_connections(&self) -> usize {
        self.max_connections.unwrap_or_else(|| {
            let soft = descriptor_limit().map_or(1024, |l| l.soft.unwrap_or(u64::MAX));
            default_max_connections(soft)
        })
    }
}

/// The connection ceiling for a soft descriptor limit of `soft`: a quarter of the
/// descriptors (at least 256) stay reserved for everything that is not a client
/// connection — the store's files (RocksDB keeps its table files open), logs, the
/// listener, connections being refused — and the rest, at most
/// [`MAX_DERIVED_CONNECTIONS`], may be client connections. At 1,024 descriptors that is
/// 768 connections. A very low limit still leaves a quarter of it for connections.
pub fn default_max_connections(soft: u64) -> usize {
    let reserve = (soft / 4).max(256);
    let usable = soft.saturating_sub(reserve).max(soft / 4);
    usize::try_from(usable)
        .unwrap_or(usize::MAX)
        .min(MAX_DERIVED_CONNECTIONS)
}

/// The process's `RLIMIT_NOFILE`; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorLimit {
    /// The limit in force (`ulimit -n`).
    pub soft: Option<u64>,
    /// The ceiling the process may raise `soft` to without privileges.
    pub hard: Option<u64>,
}

/// A limit for the logs: a number or `unlimited`.
fn shown(limit: Option<u64>) -> String {
    limit.map_or_else(|| "unlimited".to_string(), |n| n.to_string())
}

/// The process's descriptor limit, where the OS has one.
pub fn descriptor_limit() -> io::Result<DescriptorLimit> {
    imp::get()
}

/// Raises the soft descriptor limit to the hard limit, as servers do at start (the soft
/// limit is often 1,024 while the hard limit is far higher), and logs what it did.
/// Returns the limit in force afterwards. Failing to raise it is not fatal: the
/// connection ceiling is then derived from the lower limit.
pub fn raise_descriptor_limit() -> io::Result<DescriptorLimit> {
    let before = imp::get()?;
    // An unlimited hard limit cannot be the soft limit on every OS; Linux's own ceiling
    // (fs.nr_open) defaults to 2^20.
    let target = before.hard.unwrap_or(1 << 20);
    if before.soft.is_some_and(|soft| soft >= target) || before.soft.is_none() {
        tracing::info!(
            soft = %shown(before.soft),
            hard = %shown(before.hard),
            "descriptor limit"
        );
        return Ok(before);
    }
    match imp::set_soft(target, before.hard) {
        Ok(()) => {
            let after = imp::get()?;
            tracing::info!(
                from = %shown(before.soft),
                to = %shown(after.soft),
                hard = %shown(after.hard),
                "descriptor limit raised to the hard limit"
            );
            Ok(after)
        }
        Err(e) => {
            tracing::warn!(
                error = %e,
                soft = %shown(before.soft),
                hard = %shown(before.hard),
                "descriptor limit could not be raised; the connection limit follows the soft limit"
            );
            Ok(before)
        }
    }
}

#[cfg(unix)]
mod imp {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

    use super::DescriptorLimit;

    pub(super) fn get() -> std::io::Result<DescriptorLimit> {
        let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
        Ok(DescriptorLimit {
            soft: current,
            hard: maximum,
        })
    }

    pub(super) fn set_soft(soft: u64, hard: Option<u64>) -> std::io::Result<()> {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(soft),
                maximum: hard,
            },
        )
        .map_err(std::io::Error::from)
    }
}

#[cfg(not(unix))]
mod imp {
    use super::DescriptorLimit;

    pub(super) fn get() -> std::io::Result<DescriptorLimit> {
        Err(std::io::ErrorKind::Unsupported.into())
    }

    pub(super) fn set_soft(_: u64, _: Option<u64>) -> std::io::Result<()> {
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

/// Whether an `accept` error concerns only the connection being accepted (the peer
/// reset or aborted it while it waited in the backlog): the next `accept` may succeed at
/// once. Every other error (out of descriptors, out of memory or buffers) is a condition
/// of the process or the machine that retrying at once cannot clear.
pub(crate) fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Exponential backoff between failed `accept`s: `min`, doubling up to `max`, back to
/// `min` after a success. Without it a listener whose backlog holds a connection it
/// cannot accept (out of descriptors) is always ready, and the loop spins.
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The pause before the next attempt after a failure.
    pub(crate) fn failed(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    pub(crate) fn succeeded(&mut self) {
        self.next = self.min;
    }
}

/// At most one log line per `interval` for a repeated event, carrying how many events it
/// stands for. The first event logs at once; events within the interval after a line are
/// counted, and the count is reported by the next line an event or [`LogThrottle::settle`]
/// is allowed to write.
#[derive(Debug)]
pub(crate) struct LogThrottle {
    interval: Duration,
    last_line: Option<Instant>,
    unreported: u64,
}

impl LogThrottle {
    pub(crate) fn new(interval: Duration) -> Self {
        LogThrottle {
            interval,
            last_line: None,
            unreported: 0,
        }
    }

    fn due(&self, now: Instant) -> bool {
        self.last_line
            .is_none_or(|last| now.saturating_duration_since(last) >= self.interval)
    }

    /// Counts one event at `now`; `Some(n)` when a line is due, for `n` events (this one
    /// included) since the last line.
    pub(crate) fn event(&mut self, now: Instant) -> Option<u64> {
        self.unreported += 1;
        self.take(now)
    }

    /// The condition cleared at `now`: `Some(n)` when `n` events are unreported and a
    /// line is due. Cheap when nothing is unreported (no clock read by the caller needed
    /// first: see [`LogThrottle::has_unreported`]).
    pub(crate) fn settle(&mut self, now: Instant) -> Option<u64> {
        if self.unreported == 0 {
            return None;
        }
        self.take(now)
    }

    pub(crate) fn has_unreported(&self) -> bool {
        self.unreported > 0
    }

    fn take(&mut self, now: Instant) -> Option<u64> {
        if !self.due(now) {
            return None;
        }
        self.last_line = Some(now);
        Some(std::mem::take(&mut self.unreported))
    }
}

#[cfg(test)]
mod tests {
    use super::{
        default_max_connections, Backoff, Duration, Instant, LogThrottle, MAX_DERIVED_CONNECTIONS,
    };

    #[test]
    fn derived_connection_ceiling_stays_below_the_descriptor_limit() {
        assert_eq!(default_max_connections(1024), 768);
        assert_eq!(default_max_connections(4096), 3072);
        assert_eq!(default_max_connections(64), 16);
        assert_eq!(
            default_max_connections(1 << 20),
            MAX_DERIVED_CONNECTIONS,
            "capped"
        );
        for soft in [16, 64, 256, 300, 512, 1024, 65_536, u64::MAX] {
            let max = default_max_connections(soft) as u64;
            assert!(max < soft, "{soft}: {max}");
            assert!(
                max >= (soft / 4).min(MAX_DERIVED_CONNECTIONS as u64),
                "{soft}"
            );
        }
    }

    #[test]
    fn accept_backoff_doubles_to_its_ceiling_and_resets_on_success() {
        let mut b = Backoff::new(Duration::from_millis(5), Duration::from_secs(1));
        let delays: Vec<u64> = (0..10).map(|_| b.failed().as_millis() as u64).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.succeeded();
        assert_eq!(b.failed(), Duration::from_millis(5));
    }

    #[test]
    fn accept_backoff_bounds_attempts_while_errors_persist() {
        // Errors on every attempt for a minute: the loop makes a bounded number of
        // attempts (about one a second once backed off), not millions.
        let mut b = Backoff::new(Duration::from_millis(5), Duration::from_secs(1));
        let mut elapsed = Duration::ZERO;
        let mut attempts = 0;
        while elapsed < Duration::from_secs(60) {
            attempts += 1;
            elapsed += b.failed();
        }
        assert!(attempts <= 70, "{attempts} attempts in a minute");
    }

    #[test]
    fn throttled_log_writes_one_line_per_interval_with_the_count() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut t = LogThrottle::new(Duration::from_secs(10));
        assert_eq!(t.event(at(0)), Some(1), "the first event logs at once");
        // A million events within the interval: no line.
        for i in 0..1_000_000u64 {
            assert_eq!(t.event(at(1 + i / 1000)), None);
        }
        assert_eq!(
            t.event(at(10_000)),
            Some(1_000_001),
            "the count since the last line"
        );
        assert_eq!(t.event(at(10_001)), None);
        assert!(t.has_unreported());
        assert_eq!(
            t.settle(at(10_002)),
            None,
            "settling waits for the interval too"
        );
        assert_eq!(t.settle(at(20_000)), Some(1), "then reports what was left");
        assert!(!t.has_unreported());
        assert_eq!(t.settle(at(40_000)), None, "nothing left to report");
    }
}
