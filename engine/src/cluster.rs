//! Several Keel nodes on one shared store (FoundationDB; the simulated store in tests)
//! acting as one server. Off unless the engine is given a [`ClusterConfig`]: one node on
//! its own store runs none of this.
//!
//! * **Liveness.** Each node rewrites its [`NodeRecord`] every `heartbeat`, valid for
//!   `lease`; [`nodes`] lists the records not yet expired.
//! * **Timers fire on one node**: the holder of the scheduler lease, a row naming a node
//!   and an expiry. A node with the scheduler role takes it when it is absent, lapsed or
//!   its own, in a serializable transaction (two takers conflict; one wins). The holder
//!   fires only until a margin before its own expiry, so a successor (which must wait for
//!   the expiry) never overlaps it unless clocks drift by more than the margin; and firing
//!   is idempotent besides (a timer deletes its row in the transaction that applies it).
//! * **Timers made elsewhere reach the holder**: a transaction on a node that does not
//!   hold the lease and writes a timer due within half the timer window bumps the timer
//!   epoch (an atomic add: no conflicts); the holder watches the epoch and rescans.
//!   Timers further out are found by the holder's periodic scan before they are due.
//! * **Ready tasks made elsewhere reach pollers parked here**: while pollers are parked on
//!   a queue, a watcher watches that queue's Ready counter (changed by every ready task
//!   and every lease, on any node) and hands what the durable ready index holds to the
//!   parked pollers. Hints stay hints: a lease re-reads the task in its transaction, so a
//!   task offered on two nodes is leased once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use crate::clock::{Clock, Millis};
use crate::error::{Error, Result};
use crate::keys::{prefix, Key, KeyReader};
use crate::matching::{Matching, QueueKey, TaskHint};
use crate::model::TaskKind;
use crate::storage::retry::{self, RetryPolicy};
use crate::storage::{KvStore, KvTxn, ReadOptions};
use crate::sync::Arc;
use crate::tables;
use crate::timers::{Timers, WINDOW_MS};

/// How this node takes part in a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Unique among the nodes sharing the store.
    pub node_id: String,
    /// The topology roles this node hosts (shown in cluster info).
    pub roles: Vec<String>,
    /// Where clients reach this node, if known.
    pub address: Option<String>,
    /// How long a node record and the scheduler lease stay valid without renewal.
    pub lease: Duration,
    /// How often they are renewed (well under `lease`).
    pub heartbeat: Duration,
}

impl ClusterConfig {
    /// A node with every role, a 10 s lease renewed every 2 s.
    pub fn new(node_id: impl Into<String>) -> Self {
        ClusterConfig {
            node_id: node_id.into(),
            roles: Vec::new(),
            address: None,
            lease: Duration::from_secs(10),
            heartbeat: Duration::from_secs(2),
        }
    }
}

/// A node's liveness record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node_id: String,
    pub roles: Vec<String>,
    pub address: Option<String>,
    pub started_at_ms: Millis,
    pub heartbeat_at_ms: Millis,
    /// The node counts as gone after this time.
    pub expires_at_ms: Millis,
    /// Whether it held the scheduler lease at its last heartbeat.
    pub scheduler: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct SchedulerLease {
    node_id: String,
    expires_at_ms: Millis,
}

fn node_key(node_id: &str) -> Vec<u8> {
    Key::new(prefix::CLUSTER)
        .str("node")
        .str(node_id)
        .into_bytes()
}

fn nodes_range() -> crate::storage::KeyRange {
    Key::new(prefix::CLUSTER).str("node").range()
}

fn scheduler_key() -> Vec<u8> {
    Key::new(prefix::CLUSTER).str("scheduler").into_bytes()
}

/// The counter bumped when a node that does not fire timers writes a near-term one.
pub(crate) fn timer_epoch_key() -> Vec<u8> {
    Key::new(prefix::CLUSTER).str("timer_epoch").into_bytes()
}

/// The live nodes sharing `store`, by node id.
pub async fn nodes(store: &dyn KvStore, now: Millis) -> Result<Vec<NodeRecord>> {
    let mut txn = store.begin().await?;
    let page = txn
        .get_range(&nodes_range(), ReadOptions::limit(1024).snapshot())
        .await?;
    let (records, _) = tables::assemble(page)?;
    let mut live = Vec::new();
    for (_, value) in records {
        let node: NodeRecord = tables::decode_record(&value)?;
        if node.expires_at_ms > now {
            live.push(node);
        }
    }
    Ok(live)
}

/// Decodes one entry of the durable ready index into its queue and hint.
pub(crate) fn ready_hint(key: &[u8], value: &[u8]) -> Result<(QueueKey, TaskHint)> {
    let mut r = KeyReader::new(key);
    let parsed = (|| {
        let ns = r.str()?;
        let queue = r.str()?;
        let kind = match r.u8()? {
            1 => TaskKind::Workflow,
            2 => TaskKind::Activity,
            _ => return None,
        };
        let priority = r.u8()?;
        let ready_at_ms = r.i64()?;
        let task_id = r.str()?;
        Some((
            QueueKey::new(&ns, &queue, kind),
            priority,
            ready_at_ms,
            task_id,
        ))
    })();
    let Some((queue, priority, ready_at_ms, task_id)) = parsed else {
        return Err(Error::corrupt("ready index key"));
    };
    let (type_name, compatibility, session) = tables::decode_ready_value(value);
    Ok((
        queue,
        TaskHint {
            task_id: task_id.into(),
            type_name: type_name.into(),
            priority,
            ready_at_ms,
            compatibility: compatibility.map(Into::into),
            session: session.map(Into::into),
        },
    ))
}

/// Ready tasks a queue watcher reads per wake-up.
const WATCH_SCAN: usize = 64;
/// How often a queue watcher checks that pollers are still parked when nothing changes.
const WATCH_IDLE: Duration = Duration::from_secs(1);
/// The shortest gap between two rescans the timer epoch asks of the holder.
const EPOCH_COALESCE: Duration = Duration::from_millis(20);

/// This node's part in the cluster.
pub(crate) struct Cluster {
    config: ClusterConfig,
    /// Whether this node may hold the scheduler lease (fire timers and schedules).
    scheduler: bool,
    store: Arc<dyn KvStore>,
    clock: Arc<dyn Clock>,
    matching: Arc<Matching>,
    timers: Arc<Timers>,
    started_at_ms: Millis,
    /// This node may fire timers until then (0: it does not hold the lease).
    holds_until: AtomicI64,
    /// Queues with a running watcher, and how to make it rescan.
    watched: Mutex<HashMap<QueueKey, Arc<Notify>>>,
    stop: watch::Receiver<bool>,
}

impl Cluster {
    pub fn new(
        config: ClusterConfig,
        scheduler: bool,
        store: Arc<dyn KvStore>,
        clock: Arc<dyn Clock>,
        matching: Arc<Matching>,
        timers: Arc<Timers>,
        stop: watch::Receiver<bool>,
    ) -> Arc<Cluster> {
        let started_at_ms = clock.now_ms();
        Arc::new(Cluster {
            config,
            scheduler,
            store,
            clock,
            matching,
            timers,
            started_at_ms,
            holds_until: AtomicI64::new(0),
            watched: Mutex::new(HashMap::new()),
            stop,
        })
    }

    /// Whether this node fires timers now.
    pub fn holds_scheduler(&self) -> bool {
        self.holds_until.load(Ordering::Acquire) > self.clock.now_ms()
    }

    /// How far ahead a timer written by this node must be announced to the holder
    /// (`None`: this node fires its own timers).
    pub fn announce_horizon(&self) -> Option<Millis> {
        (!self.holds_scheduler()).then_some(WINDOW_MS / 2)
    }

    /// Runs the heartbeat and, on a scheduler node, the timer-epoch watch until stop.
    pub async fn run(self: Arc<Self>) {
        let epoch = self.scheduler.then(|| {
            let me = self.clone();
            tokio::spawn(async move { me.watch_timer_epoch().await })
        });
        let mut stop = self.stop.clone();
        loop {
            if *stop.borrow() {
                break;
            }
            let now = self.clock.now_ms();
            match tokio::time::timeout(self.config.heartbeat, self.beat(now)).await {
                Ok(Ok(holds)) => self.set_holder(holds.then_some(now)),
                Ok(Err(e)) => tracing::warn!(error = %e, "cluster heartbeat failed; retrying"),
                Err(_) => tracing::warn!("cluster heartbeat timed out; retrying"),
            }
            // Whatever the heartbeat did, a lease past its margin stops the firing.
            if !self.holds_scheduler() {
                self.set_holder(None);
            }
            let next = now + self.config.heartbeat.as_millis() as Millis;
            tokio::select! {
                _ = self.clock.sleep_until(next) => {}
                _ = stop.changed() => {}
            }
        }
        if let Some(epoch) = epoch {
            epoch.abort();
        }
    }

    /// Records that this node holds the lease from `renewed_at` (or does not).
    fn set_holder(&self, renewed_at: Option<Millis>) {
        let lease = self.config.lease.as_millis() as Millis;
        let until = renewed_at.map_or(0, |at| at + lease - lease / 4);
        let was = self.holds_until.swap(until, Ordering::AcqRel) > 0;
        if was != (until > 0) {
            tracing::info!(node_id = %self.config.node_id, holds = until > 0, "scheduler lease changed hands");
        }
        self.timers.set_enabled(until > 0);
    }

    /// Renews this node's record and, on a scheduler node, takes or renews the scheduler
    /// lease; returns whether this node holds it.
    async fn beat(&self, now: Millis) -> Result<bool> {
        let lease = self.config.lease.as_millis() as Millis;
        let me = &self.config.node_id;
        retry::run(
            self.store.as_ref(),
            RetryPolicy::default(),
            |mut txn, _| async move {
                let holds = if self.scheduler {
                    let current: Option<SchedulerLease> =
                        tables::get(txn.as_mut(), &scheduler_key()).await?;
                    let free = current
                        .as_ref()
                        .is_none_or(|l| l.node_id == *me || l.expires_at_ms <= now);
                    if free {
                        tables::put(
                            txn.as_mut(),
                            &scheduler_key(),
                            &SchedulerLease {
                                node_id: me.clone(),
                                expires_at_ms: now + lease,
                            },
                        )?;
                    }
                    free
                } else {
                    false
                };
                let record = NodeRecord {
                    node_id: me.clone(),
                    roles: self.config.roles.clone(),
                    address: self.config.address.clone(),
                    started_at_ms: self.started_at_ms,
                    heartbeat_at_ms: now,
                    expires_at_ms: now + lease,
                    scheduler: holds,
                };
                tables::put(txn.as_mut(), &node_key(me), &record)?;
                Ok::<_, Error>((txn, holds))
            },
        )
        .await
    }

    /// Leaves the cluster cleanly: gives up the scheduler lease (so a successor need not
    /// wait for it to lapse) and removes this node's record.
    pub async fn leave(&self) -> Result<()> {
        self.set_holder(None);
        let me = &self.config.node_id;
        retry::run(
            self.store.as_ref(),
            RetryPolicy::default(),
            |mut txn, _| async move {
                let current: Option<SchedulerLease> =
                    tables::get(txn.as_mut(), &scheduler_key()).await?;
                if current.is_some_and(|l| l.node_id == *me) {
                    txn.clear(&scheduler_key());
                }
                txn.clear(&node_key(me));
                Ok::<_, Error>((txn, ()))
            },
        )
        .await
    }

    /// While this node holds the lease, rescans the timer window whenever another node
    /// announces near-term timers.
    async fn watch_timer_epoch(&self) {
        let mut stop = self.stop.clone();
        loop {
            let version = match self.store.begin().await {
                Ok(txn) => txn.read_version(),
                Err(e) => {
                    tracing::warn!(error = %e, "timer epoch watch cannot begin; retrying");
                    tokio::time::sleep(WATCH_IDLE).await;
                    continue;
                }
            };
            tokio::select! {
                changed = self.store.watch(&timer_epoch_key(), version) => {
                    if let Err(e) = changed {
                        tracing::warn!(error = %e, "timer epoch watch failed; retrying");
                        tokio::time::sleep(WATCH_IDLE).await;
                        continue;
                    }
                }
                _ = stop.changed() => return,
            }
            self.timers.request_scan();
            tokio::time::sleep(EPOCH_COALESCE).await;
        }
    }

    /// A poller parked on `queue`: makes sure a watcher brings it tasks made ready on
    /// other nodes (starting one, or asking the running one to look again).
    pub fn poller_parked(self: &Arc<Self>, queue: &QueueKey) {
        let mut watched = self
            .watched
            .lock()
            .expect("invariant: watch map not poisoned");
        if let Some(rescan) = watched.get(queue) {
            rescan.notify_one();
            return;
        }
        let rescan = Arc::new(Notify::new());
        watched.insert(queue.clone(), rescan.clone());
        let me = self.clone();
        let queue = queue.clone();
        tokio::spawn(async move { me.watch_queue(queue, rescan).await });
    }

    async fn watch_queue(&self, queue: QueueKey, rescan: Arc<Notify>) {
        // A cluster runs only on a multi-node store, where the per-queue counts are
        // durable counter rows (see `kernel::queue_counts`): the Ready one changes with
        // every task made ready, on any node.
        let counter = tables::queue_counter_key(
            &queue.namespace,
            &queue.queue,
            queue.kind,
            tables::QueueCounter::Ready,
        );
        let mut stop = self.stop.clone();
        loop {
            {
                // Checked under the map's lock: a poller parking now either sees this
                // watcher in the map or starts a new one.
                let mut watched = self
                    .watched
                    .lock()
                    .expect("invariant: watch map not poisoned");
                if *stop.borrow() || self.matching.stats(&queue).pollers == 0 {
                    watched.remove(&queue);
                    return;
                }
            }
            let version = match self.offer_ready(&queue).await {
                Ok(version) => version,
                Err(e) => {
                    tracing::warn!(error = %e, queue = %queue.queue, "ready-index watch failed; retrying");
                    tokio::time::sleep(WATCH_IDLE).await;
                    continue;
                }
            };
            tokio::select! {
                _ = self.store.watch(&counter, version) => {}
                _ = rescan.notified() => {}
                _ = tokio::time::sleep(WATCH_IDLE) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Hands the queue's oldest ready tasks to pollers parked here; returns the version
    /// read at.
    async fn offer_ready(&self, queue: &QueueKey) -> Result<u64> {
        let mut txn = self.store.begin().await?;
        let version = txn.read_version();
        let range = tables::ready_queue_prefix(&queue.namespace, &queue.queue, queue.kind).range();
        let page = txn
            .get_range(&range, ReadOptions::limit(WATCH_SCAN).snapshot())
            .await?;
        for (key, value) in &page {
            let (_, hint) = ready_hint(key, value)?;
            if !self.matching.offer_to_parked(queue, hint) {
                break; // nobody left to hand tasks to
            }
        }
        Ok(version)
    }
}

/// The kernel's hook for announcing timers: bumps the epoch when `txn` writes a timer due
/// before `now + horizon`.
pub(crate) fn announce_timers(
    txn: &mut dyn KvTxn,
    timers: &[crate::model::TimerKey],
    now: Millis,
    horizon: Millis,
) {
    if timers.iter().any(|t| t.fire_at_ms < now + horizon) {
        txn.atomic_add(&timer_epoch_key(), 1);
    }
}
