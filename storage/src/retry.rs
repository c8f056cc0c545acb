//! The one retry runner every engine write goes through.
//!
//! A transaction body may run several times: after a conflict (nothing was written) and
//! after a commit-unknown result (the writes may be there). Bodies must therefore be
//! idempotent: a body that creates something checks, inside the transaction, whether it
//! already exists (an idempotency key) before writing it again.

use std::future::Future;
use std::time::Duration;

use super::{KvStore, KvTxn, StorageError};

/// How many times a retryable failure is retried, and how long to back off.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubles each time up to `max_backoff`.
    pub initial_backoff: Duration,
    /// Cap on the backoff.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 20,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(200),
        }
    }
}

/// What a transaction body returns: a value, or an error that is either a storage error
/// (maybe retryable) or a domain error (never retried).
pub trait TxnError: From<StorageError> {
    /// The storage error inside, if this is one.
    fn as_storage(&self) -> Option<&StorageError>;
}

impl TxnError for StorageError {
    fn as_storage(&self) -> Option<&StorageError> {
        Some(self)
    }
}

/// Runs `body` in a fresh transaction and commits it, retrying retryable storage errors.
/// The body gets the transaction (and hands it back with its value) and the attempt
/// number (1-based); the runner commits. A body that fails drops the transaction, which
/// discards its writes.
pub async fn run<T, E, F, Fut>(store: &dyn KvStore, policy: RetryPolicy, body: F) -> Result<T, E>
where
    E: TxnError,
    F: FnMut(Box<dyn KvTxn>, u32) -> Fut,
    Fut: Future<Output = Result<(Box<dyn KvTxn>, T), E>>,
{
    run_reporting_unknown(store, policy, body, |_| {}).await
}

/// Like [`run`], and hands the value of every attempt whose commit *may* have applied
/// (a commit-unknown result) to `maybe_committed`, so that callers can still act on
/// side effects that are harmless when repeated (e.g. waking pollers).
pub async fn run_reporting_unknown<T, E, F, Fut, U>(
    store: &dyn KvStore,
    policy: RetryPolicy,
    mut body: F,
    mut maybe_committed: U,
) -> Result<T, E>
where
    E: TxnError,
    F: FnMut(Box<dyn KvTxn>, u32) -> Fut,
    Fut: Future<Output = Result<(Box<dyn KvTxn>, T), E>>,
    U: FnMut(T),
{
    let mut attempts = Attempts::new(policy);
    loop {
        let outcome = async {
            let txn = store.begin().await?;
            let (txn, value) = body(txn, attempts.number()).await?;
            match txn.commit().await {
                Ok(_) => Ok(value),
                Err(e) => {
                    if e.maybe_committed() {
                        maybe_committed(value);
                    }
                    Err(E::from(e))
                }
            }
        }
        .await;
        match outcome {
            Err(e) if attempts.retry(e.as_storage()).await => {}
            other => return other,
        }
    }
}

/// The attempt counter and backoff of one retried transaction, for runners that drive the
/// attempt loop themselves (e.g. to lend a body a borrowed context): `retry` answers
/// whether a failure is retried and sleeps the backoff first.
#[derive(Debug)]
pub struct Attempts {
    policy: RetryPolicy,
    backoff: Duration,
    attempt: u32,
}

impl Attempts {
    /// The first attempt under `policy`.
    pub fn new(policy: RetryPolicy) -> Attempts {
        Attempts {
            policy,
            backoff: policy.initial_backoff,
            attempt: 1,
        }
    }

    /// The current attempt, 1-based.
    pub fn number(&self) -> u32 {
        self.attempt
    }

    /// Whether a failure with this storage error (`None`: a domain error, never retried)
    /// gets another attempt; if so, waits the jittered backoff and counts the attempt.
    pub async fn retry(&mut self, error: Option<&StorageError>) -> bool {
        let retryable = error.is_some_and(StorageError::is_retryable);
        if !retryable || self.attempt >= self.policy.max_attempts {
            return false;
        }
        tracing::debug!(attempt = self.attempt, ?error, "retrying transaction");
        tokio::time::sleep(jitter(self.backoff)).await;
        self.backoff = (self.backoff * 2).min(self.policy.max_backoff);
        self.attempt += 1;
        true
    }
}

fn jitter(d: Duration) -> Duration {
    let nanos = d.as_nanos() as u64;
    Duration::from_nanos(nanos / 2 + rand::random::<u64>() % (nanos / 2 + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_write_refusal_is_answered_at_once_and_a_transient_failure_is_retried() {
        let mut attempts = Attempts::new(RetryPolicy::default());
        let refused = StorageError::WritesRefused("disk full".into());
        assert!(!attempts.retry(Some(&refused)).await);
        assert_eq!(attempts.number(), 1);
        let unavailable = StorageError::Unavailable("connection reset".into());
        assert!(attempts.retry(Some(&unavailable)).await);
        assert_eq!(attempts.number(), 2);
    }
}
