//! Timer rows: a durable timer is a row keyed by fire time; the timer service fires it
//! after commit, and `wiring/timers.rs` hands it to the subsystem that owns its action.

use crate::clock::Millis;
use crate::error::Result;
use crate::model::{TimerAction, TimerKey};
use crate::storage::KvTxn;
use crate::{ids, tables};

use crate::kernel::Effects;

/// Writes a timer row and returns its key; the timer service learns of it after commit.
pub(crate) fn put_timer(
    txn: &mut dyn KvTxn,
    fire_at_ms: Millis,
    action: &TimerAction,
    fx: &mut Effects,
) -> Result<TimerKey> {
    let key = TimerKey {
        fire_at_ms,
        timer_id: ids::new_id(fire_at_ms),
    };
    tables::put(txn, &tables::timer_key(&key), action)?;
    fx.timers.push(key.clone());
    Ok(key)
}

/// Deletes a timer row (a timer that already fired or never existed is no error).
pub(crate) fn clear_timer(txn: &mut dyn KvTxn, timer: &TimerKey) {
    txn.clear(&tables::timer_key(timer));
}
