//! Rate limits and quotas: a request-rate limit per token (by its label) and per
//! namespace, each a token bucket (a steady `rate` per second and a `burst` it may spend
//! at once), and a ceiling on the long-polls one token holds open at once.
//!
//! A request is admitted after authentication, role and gates and after its namespace
//! resolved (so a refused caller learns nothing new, and only existing namespaces get a
//! bucket). It spends one unit from its token's bucket and one from its namespace's; when
//! either is empty it is answered 429 `rate_limited` (`limit_scope`: `token` or
//! `namespace`) with `Retry-After` (whole seconds until a unit is back). A worker poll
//! (`workflow-tasks/poll`, `activity-tasks/poll`, `query-tasks/poll`) also takes one of
//! its token's long-poll slots until it answers; beyond the ceiling it is answered 429
//! `long_poll_limit_reached` with `Retry-After: 1`. Public routes (health, readiness) are
//! never limited.
//!
//! In open mode (no tokens) every caller is the same principal, so only the namespace
//! limits apply. A token may carry its own limits in the auth file (`rate_limit`,
//! `rate_burst`, `max_long_polls`), overriding the server-wide ones
//! (`--rate-limit-per-token`, `--rate-limit-per-namespace`, `--max-long-polls-per-token`).
//! A rate of 0 turns a limit off.
//!
//! Memory stays bounded: at most [`MAX_BUCKETS`] buckets per kind are kept; a full
//! bucket carries no state (a fresh one is identical), so buckets that refilled are the
//! first to go, and beyond that the least recently used one is dropped.
//!
//! Time is the engine's clock, so tests drive refills with a manual clock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use hyper::StatusCode;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::router::Op;

/// Most buckets kept per kind (tokens, namespaces).
pub const MAX_BUCKETS: usize = 10_000;

/// Default long-polls one token may hold open at once. (Request rates have no default:
/// a limit below the server's own capacity would throttle a healthy fleet that shares a
/// token, and the right value is that capacity divided among tenants, which only the
/// operator knows. Off, they cost nothing per request.)
pub const DEFAULT_MAX_LONG_POLLS: usize = 1_000;

/// A token bucket's shape: `rate` units a second, at most `burst` stored. A rate of 0
/// means unlimited.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Units refilled per second.
    pub per_second: f64,
    /// Most units stored (and spendable at once).
    pub burst: f64,
}

impl Rate {
    /// `per_second` with a burst of `burst` (at least 1).
    pub fn new(per_second: f64, burst: f64) -> Rate {
        Rate {
            per_second: per_second.max(0.0),
            burst: burst.max(1.0),
        }
    }

    fn unlimited(&self) -> bool {
        self.per_second <= 0.0
    }

    /// Parses `RATE` or `RATE:BURST` (burst defaults to the rate, at least 1; `0` turns
    /// the limit off).
    pub fn parse(value: &str) -> Result<Rate, String> {
        let (rate, burst) = match value.split_once(':') {
            Some((r, b)) => (r, Some(b)),
            None => (value, None),
        };
        let rate: f64 = rate
            .trim()
            .parse()
            .ok()
            .filter(|r: &f64| r.is_finite() && *r >= 0.0)
            .ok_or_else(|| {
                format!("'{value}': expected RATE or RATE:BURST (requests per second)")
            })?;
        let burst = match burst {
            Some(b) => b
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|b| b.is_finite() && *b >= 1.0)
                .ok_or_else(|| format!("'{value}': the burst must be a number, at least 1"))?,
            None => rate.max(1.0),
        };
        Ok(Rate::new(rate, burst))
    }
}

/// The server-wide limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuotaConfig {
    /// Per token (label).
    pub per_token: Rate,
    /// Per namespace.
    pub per_namespace: Rate,
    /// Long-polls one token may hold open at once (0: unlimited).
    pub max_long_polls_per_token: usize,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        QuotaConfig {
            per_token: Rate::new(0.0, 0.0),
            per_namespace: Rate::new(0.0, 0.0),
            max_long_polls_per_token: DEFAULT_MAX_LONG_POLLS,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: i64,
}

impl Bucket {
    fn refilled(&self, rate: &Rate, now_ms: i64) -> f64 {
        let elapsed = (now_ms - self.at_ms).max(0) as f64 / 1000.0;
        (self.tokens + elapsed * rate.per_second).min(rate.burst)
    }
}

/// Buckets by key, bounded by [`MAX_BUCKETS`].
#[derive(Default)]
struct Buckets {
    map: HashMap<String, Bucket>,
}

impl Buckets {
    /// Takes one unit from `key`'s bucket; `Err(seconds)` until one is back.
    fn take(&mut self, key: &str, rate: &Rate, now_ms: i64) -> Result<(), u64> {
        if rate.unlimited() {
            return Ok(());
        }
        if !self.map.contains_key(key) && self.map.len() >= MAX_BUCKETS {
            self.evict(now_ms, rate);
        }
        let bucket = self.map.entry(key.to_string()).or_insert(Bucket {
            tokens: rate.burst,
            at_ms: now_ms,
        });
        let available = bucket.refilled(rate, now_ms);
        bucket.at_ms = now_ms.max(bucket.at_ms);
        if available >= 1.0 {
            bucket.tokens = available - 1.0;
            Ok(())
        } else {
            bucket.tokens = available;
            let wait = (1.0 - available) / rate.per_second;
            Err((wait.ceil() as u64).max(1))
        }
    }

    /// Drops the buckets that refilled (they hold no state); if none did, the least
    /// recently used one.
    fn evict(&mut self, now_ms: i64, rate: &Rate) {
        let before = self.map.len();
        self.map
            .retain(|_, b| b.refilled(rate, now_ms) < rate.burst);
        if self.map.len() == before {
            if let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, b)| b.at_ms)
                .map(|(k, _)| k.clone())
            {
                self.map.remove(&oldest);
            }
        }
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

/// Long-polls held open per token label.
type Held = Arc<Mutex<HashMap<String, usize>>>;

/// The limiter state of one server.
pub struct Quotas {
    config: QuotaConfig,
    tokens: Mutex<Buckets>,
    namespaces: Mutex<Buckets>,
    long_polls: Held,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas::new(QuotaConfig::default())
    }
}

/// A long-poll slot, given back when dropped.
pub struct LongPollPermit {
    held: Option<(Held, String)>,
}

impl Drop for LongPollPermit {
    fn drop(&mut self) {
        if let Some((map, label)) = self.held.take() {
            let mut map = map.lock().expect("invariant: long-poll lock not poisoned");
            if let Some(n) = map.get_mut(&label) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&label);
                }
            }
        }
    }
}

/// Whether `op` is a worker long-poll.
pub fn is_long_poll(op: Op) -> bool {
    matches!(
        op,
        Op::PollWorkflowTask | Op::PollActivityTask | Op::PollQueryTask
    )
}

fn rate_limited(scope: &'static str, retry_after: u64, rate: &Rate) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!(
            "the {scope} request-rate limit ({} per second, burst {}) is reached; retry after {retry_after} s",
            rate.per_second, rate.burst
        ),
    )
    .with("limit_scope", scope)
    .with("retryable", true)
    .with("retry_after_seconds", retry_after)
}

impl Quotas {
    /// A limiter with `config`.
    pub fn new(config: QuotaConfig) -> Self {
        Quotas {
            config,
            tokens: Mutex::default(),
            namespaces: Mutex::default(),
            long_polls: Arc::default(),
        }
    }

    /// The server-wide limits.
    pub fn config(&self) -> &QuotaConfig {
        &self.config
    }

    /// Buckets held now (tokens, namespaces): bounded by [`MAX_BUCKETS`] each.
    pub fn bucket_counts(&self) -> (usize, usize) {
        (
            self.tokens.lock().expect("invariant: quota lock").len(),
            self.namespaces.lock().expect("invariant: quota lock").len(),
        )
    }

    /// Admits one request of `principal` in `namespace` (`None`: a route outside any
    /// resolved namespace, limited per token only) at `now_ms`, or refuses it with 429. `open`: the server has no tokens (only namespace limits apply). The permit
    /// holds a long-poll slot for polls; keep it until the request answered.
    pub fn admit(
        &self,
        principal: &Principal,
        open: bool,
        namespace: Option<&str>,
        op: Op,
        now_ms: i64,
    ) -> Result<LongPollPermit, ApiError> {
        let limits = principal.limits;
        let token_rate = Rate::new(
            limits.rate.unwrap_or(self.config.per_token.per_second),
            limits
                .burst
                .or(limits.rate.map(|r| r.max(1.0)))
                .unwrap_or(self.config.per_token.burst),
        );
        // A limit that is off takes no lock.
        if !open && !token_rate.unlimited() {
            self.tokens
                .lock()
                .expect("invariant: quota lock not poisoned")
                .take(&principal.label, &token_rate, now_ms)
                .map_err(|s| rate_limited("token", s, &token_rate))?;
        }
        let ns_rate = self.config.per_namespace;
        if let Some(namespace) = namespace.filter(|_| !ns_rate.unlimited()) {
            self.namespaces
                .lock()
                .expect("invariant: quota lock not poisoned")
                .take(namespace, &ns_rate, now_ms)
                .map_err(|s| rate_limited("namespace", s, &ns_rate))?;
        }
        if open || !is_long_poll(op) {
            return Ok(LongPollPermit { held: None });
        }
        let max = limits
            .max_long_polls
            .unwrap_or(self.config.max_long_polls_per_token);
        if max == 0 {
            return Ok(LongPollPermit { held: None });
        }
        let mut map = self
            .long_polls
            .lock()
            .expect("invariant: long-poll lock not poisoned");
        let held = map.entry(principal.label.clone()).or_insert(0);
        if *held >= max {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "long_poll_limit_reached",
                format!("this token already holds {max} long-polls open, its limit"),
            )
            .with("limit_scope", "token")
            .with("max_long_polls", max)
            .with("retryable", true)
            .with("retry_after_seconds", 1));
        }
        *held += 1;
        Ok(LongPollPermit {
            held: Some((self.long_polls.clone(), principal.label.clone())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{Buckets, Rate, MAX_BUCKETS};

    #[test]
    fn a_bucket_spends_its_burst_then_refills_at_its_rate() {
        let rate = Rate::new(2.0, 3.0);
        let mut b = Buckets::default();
        for _ in 0..3 {
            assert!(b.take("k", &rate, 0).is_ok());
        }
        assert_eq!(b.take("k", &rate, 0), Err(1));
        assert_eq!(b.take("k", &rate, 499), Err(1), "not yet one unit back");
        assert!(b.take("k", &rate, 500).is_ok(), "half a second: one unit");
        assert_eq!(b.take("k", &rate, 500), Err(1));
        let slow = Rate::new(0.1, 1.0);
        assert!(b.take("s", &slow, 0).is_ok());
        assert_eq!(
            b.take("s", &slow, 0),
            Err(10),
            "Retry-After in whole seconds"
        );
    }

    #[test]
    fn bucket_memory_is_bounded_however_many_keys_appear() {
        let rate = Rate::new(1.0, 1.0);
        let mut b = Buckets::default();
        for i in 0..(MAX_BUCKETS * 3) {
            let _ = b.take(&format!("ns-{i}"), &rate, i as i64);
        }
        assert!(b.len() <= MAX_BUCKETS, "{}", b.len());
    }

    #[test]
    fn rates_parse_with_an_optional_burst() {
        assert_eq!(Rate::parse("10").expect("parses"), Rate::new(10.0, 10.0));
        assert_eq!(Rate::parse("0.5:4").expect("parses"), Rate::new(0.5, 4.0));
        assert!(Rate::parse("0").expect("parses").unlimited());
        assert!(Rate::parse("-1").is_err());
        assert!(Rate::parse("5:0").is_err());
        assert!(Rate::parse("x").is_err());
    }
}
