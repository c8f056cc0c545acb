//! The one in-transaction context and the runner every engine write goes through.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;

use crate::clock::Millis;
use crate::error::{Error, Result};
use crate::storage::retry::{Attempts, RetryPolicy, TxnError};
use crate::storage::{KvStore, KvTxn};

use super::{Effects, Event};

/// The future a transaction body returns: it borrows the [`Tx`] for `'t`.
pub(crate) type TxFuture<'t, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 't>>;

/// One attempt of a transaction: the store transaction, the time it runs at, and what it
/// leaves for after its commit. `'env` is what the body borrows from its caller (it
/// outlives every attempt).
pub(crate) struct Tx<'env> {
    pub txn: Box<dyn KvTxn>,
    /// The clock when the attempt began.
    pub now: Millis,
    pub fx: Effects,
    env: PhantomData<&'env ()>,
}

/// Reactions to the events a body raised, run in the same transaction before commit
/// (implemented once, by `wiring/hooks.rs`).
pub(crate) trait Hooks: Send + Sync {
    fn react<'t>(
        &'t self,
        txn: &'t mut dyn KvTxn,
        event: Event,
        now: Millis,
        fx: &'t mut Effects,
    ) -> TxFuture<'t, ()>;

    /// The last step before commit, once no event is left: eager leases of the tasks the
    /// transaction made ready.
    fn before_commit<'t>(&'t self, txn: &'t mut dyn KvTxn, fx: &'t mut Effects)
        -> TxFuture<'t, ()>;
}

/// Runs `body` as one transaction: begins it, lets `body` work on the [`Tx`], dispatches
/// the events raised to `hooks` (until none is left), lets `hooks` lease what it made
/// ready to parked pollers, announces its near-term timers to
/// the node that fires them (`announce`: the horizon, when another node fires timers),
/// commits, and retries what storage says is retryable. Returns the value and the effects to apply. The effects of an
/// attempt whose commit result is unknown go to `maybe_committed` (they are harmless if
/// repeated, and missing them could strand a task), and `unknown` records that one was.
pub(crate) async fn run<'env, T, F>(
    store: &dyn KvStore,
    clock: &dyn crate::clock::Clock,
    hooks: &dyn Hooks,
    announce: Option<Millis>,
    mut body: F,
    mut maybe_committed: impl FnMut(Effects),
) -> Result<(T, Effects)>
where
    F: for<'t> FnMut(&'t mut Tx<'env>) -> TxFuture<'t, T>,
{
    let mut attempts = Attempts::new(RetryPolicy::default());
    let multi_node = store.capabilities().multi_node;
    loop {
        let outcome = async {
            let mut tx = Tx {
                txn: store.begin().await?,
                now: clock.now_ms(),
                fx: Effects::new(multi_node),
                env: PhantomData,
            };
            let value = body(&mut tx).await?;
            loop {
                let events = tx.fx.take_events();
                if events.is_empty() {
                    break;
                }
                for event in events {
                    hooks
                        .react(tx.txn.as_mut(), event, tx.now, &mut tx.fx)
                        .await?;
                }
            }
            hooks.before_commit(tx.txn.as_mut(), &mut tx.fx).await?;
            let Tx {
                mut txn, fx, now, ..
            } = tx;
            if let Some(horizon) = announce {
                crate::cluster::announce_timers(txn.as_mut(), &fx.timers, now, horizon);
            }
            match txn.commit().await {
                Ok(_) => Ok((value, fx)),
                Err(e) => {
                    if e.maybe_committed() {
                        maybe_committed(fx);
                    }
                    Err(Error::from(e))
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
