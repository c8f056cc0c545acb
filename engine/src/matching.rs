//! The in-memory side of matching: per `(namespace, queue, kind)` an index of ready-task
//! hints and a queue of parked long-polls.
//!
//! Invariants:
//! * The durable ready index is the truth; a hint only says "this task was ready". Every
//!   lease re-checks the task inside a storage transaction, so a stale or duplicate hint
//!   costs one failed lease attempt, never a double lease.
//! * A hint is never dropped while its task may still be ready: it sits in the index, in
//!   exactly one parked poller's slot, or with a poller that is attempting the lease (which
//!   re-offers it on a storage error).
//! * A new hint goes to the oldest parked poller that accepts its type (sync match);
//!   otherwise into the index, ordered by priority, then availability, then arrival.
//! * Eager leases: a transaction that makes a task ready may take the oldest parked poller
//!   that accepts it out of its queue ([`Matching::reserve`]) and lease the task to it
//!   before its commit. The [`Reservation`] ends exactly once: delivered with the leased
//!   task after the commit, or (dropped undelivered: the transaction failed) the poller is
//!   put back at the head of its queue. A poller that left meanwhile makes the delivery
//!   hand the leased task back, so a lease nobody received never waits out its expiry.
//! * Locks are held only for in-memory bookkeeping: never across `.await` or I/O.
//! * With a cluster (several nodes on one store), a task announced through this node
//!   within [`LOCAL_OFFER_TTL`] is not handed out again from a scan of the durable ready
//!   index (it is already in the index, a slot or an attempt here): without this, every
//!   local hand-off was offered a second time by the node's own queue watcher, and the two
//!   lease attempts conflicted.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::model::{TaskKind, TaskRecord};
use crate::sync::{lock, Arc, AtomicU64, Mutex, Ordering};

/// Identifies one matching queue.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueueKey {
    pub namespace: Arc<str>,
    /// Task queue name.
    pub queue: Arc<str>,
    /// Task kind.
    pub kind: TaskKind,
}

impl QueueKey {
    /// Builds a key.
    pub fn new(namespace: &str, queue: &str, kind: TaskKind) -> Self {
        QueueKey {
            namespace: namespace.into(),
            queue: queue.into(),
            kind,
        }
    }
}

/// "This task was ready": what the index holds and what a parked poller receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskHint {
    /// The task.
    pub task_id: Arc<str>,
    /// Its workflow or activity type.
    pub type_name: Arc<str>,
    /// 0 (first) to 9.
    pub priority: u8,
    /// When it became ready.
    pub ready_at_ms: i64,
    /// The build id the task is pinned to, if any.
    pub compatibility: Option<Arc<str>>,
    /// The worker session the task runs in: while the session has a known holder, only
    /// that worker's pollers take it.
    pub session: Option<Arc<str>>,
}

/// Which tasks a poller accepts.
#[derive(Debug, Clone, Default)]
pub struct PollFilter {
    /// Task types it runs; `None` runs all.
    pub types: Option<Arc<HashSet<String>>>,
    /// The poller's build id; a task pinned to another build id is not for it.
    pub build_id: Option<Arc<str>>,
    /// The polling worker: a session task whose session another worker holds is not
    /// for it.
    pub worker_id: Option<Arc<str>>,
    /// When the poll began (engine clock, ms): a session holder known to matching binds
    /// only until its route's horizon.
    pub now_ms: i64,
}

impl PollFilter {
    /// Whether a poller with this filter may take the task behind `hint`.
    pub fn accepts(&self, hint: &TaskHint) -> bool {
        self.types
            .as_ref()
            .is_none_or(|types| types.contains(&*hint.type_name))
            && hint
                .compatibility
                .as_ref()
                .is_none_or(|c| self.build_id.as_ref() == Some(c))
    }
}

/// Bounds on parked long-polls (backpressure): beyond them a poll is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParkLimits {
    /// Parked polls on this node.
    pub per_node: usize,
    /// Parked polls on one queue.
    pub per_queue: usize,
}

impl Default for ParkLimits {
    fn default() -> Self {
        ParkLimits {
            per_node: 10_000,
            per_queue: 2_000,
        }
    }
}

/// Where a parked poller receives its hint or its leased task.
#[derive(Debug, Default)]
pub struct Slot {
    state: Mutex<SlotState>,
    /// Notified when the slot's state changes for the poller: a hint or a leased task
    /// placed in it, or a reservation returned.
    pub notify: Notify,
}

/// What a parked poller's slot holds.
#[derive(Debug, Default)]
enum SlotState {
    /// Parked in its queue; nothing handed over yet.
    #[default]
    Waiting,
    /// Out of its queue, reserved by a transaction leasing it a task (see
    /// [`Matching::reserve`]).
    Reserved,
    /// A hint to lease.
    Hint(TaskHint),
    /// A task leased to the poller by the transaction that made it ready.
    Leased(Box<TaskRecord>),
    /// The poller left: nothing reaches it any more.
    Gone,
}

/// What a poller finds when it leaves its queue ([`Matching::unpark`]).
#[derive(Debug)]
pub enum Unparked {
    /// Nothing was handed over.
    Nothing,
    /// A hint to lease.
    Hint(TaskHint),
    /// A task already leased to this poller.
    Leased(Box<TaskRecord>),
    /// A transaction leasing this poller a task has not finished: wait on the slot's
    /// notify and unpark again (it resolves with the commit).
    Reserved,
}

impl Unparked {
    /// The hint handed over, if that is what it was.
    pub fn hint(self) -> Option<TaskHint> {
        match self {
            Unparked::Hint(hint) => Some(hint),
            _ => None,
        }
    }
}

/// A parked poller taken out of its queue by a transaction that leases it a task before
/// its commit. Dropped undelivered (the transaction failed or leased nothing), the poller
/// goes back to the head of its queue.
pub struct Reservation {
    matching: Arc<Matching>,
    key: QueueKey,
    waiter: Option<Waiter>,
}

impl Reservation {
    /// The worker the poller polls for.
    pub fn worker_id(&self) -> &str {
        self.waiter
            .as_ref()
            .and_then(|w| w.filter.worker_id.as_deref())
            .expect("invariant: only pollers with a worker id are reserved")
    }

    /// Hands the task leased in the committed transaction to the poller; returns it when
    /// the poller has left meanwhile (the caller hands the lease back).
    pub fn deliver(mut self, task: Box<TaskRecord>) -> Option<Box<TaskRecord>> {
        let waiter = self.waiter.take().expect("invariant: delivered once");
        let mut state = lock(&waiter.slot.state);
        match *state {
            SlotState::Reserved => {
                *state = SlotState::Leased(task);
                drop(state);
                waiter.slot.notify.notify_one();
                None
            }
            _ => Some(task),
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let Some(waiter) = self.waiter.take() else {
            return;
        };
        let mut shard = lock(self.matching.shard(&self.key));
        let mut state = lock(&waiter.slot.state);
        if !matches!(*state, SlotState::Reserved) {
            return;
        }
        *state = SlotState::Waiting;
        drop(state);
        let slot = waiter.slot.clone();
        shard
            .entry(self.key.clone())
            .or_default()
            .waiters
            .push_front(waiter);
        self.matching.parked.fetch_add(1, Ordering::Relaxed);
        drop(shard);
        slot.notify.notify_one();
    }
}

/// `(namespace, session_id)`.
type SessionKey = (Arc<str>, Arc<str>);

/// What matching knows of worker sessions (a hint of the durable session records, which
/// every lease re-checks): who holds each, and the hints of a session at its activity
/// cap, held out of the index until one of its activities leaves its lease.
#[derive(Default)]
struct SessionRoutes {
    /// The holder, and until when that is trusted without another lease attempt (the
    /// holder's lease deadline or registration staleness, whichever comes first).
    holders: HashMap<SessionKey, (Arc<str>, i64)>,
    backlog: HashMap<SessionKey, Vec<(QueueKey, TaskHint)>>,
    /// Bumped whenever a session activity leaves its lease, so a lease that found the
    /// session full holds its hint back only if no slot freed meanwhile.
    freed: HashMap<SessionKey, u64>,
}

struct Waiter {
    id: u64,
    filter: PollFilter,
    slot: Arc<Slot>,
}

#[derive(Default)]
struct QueueState {
    ready: BTreeMap<(u8, i64, u64), TaskHint>,
    /// Task ids in `ready`, so a task announced twice is indexed once.
    indexed: HashSet<Arc<str>>,
    waiters: VecDeque<Waiter>,
    arrivals: u64,
}

/// The outcome of [`Matching::take_or_park`].
pub enum Take {
    /// A hint to try to lease.
    Hint(TaskHint),
    /// No matching hint: the poller is parked and waits on the slot.
    Parked(Arc<Slot>),
    /// No matching hint, and the parked-poll limits are reached: refuse the poll.
    Full,
}

/// Counts of one queue, for visibility.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Hints in the index.
    pub ready: usize,
    /// Parked pollers.
    pub pollers: usize,
}

const SHARDS: usize = 16;

/// How long a task announced through this node is left out of scans of the durable
/// ready index: well beyond a lease attempt, well below a lease (a task made ready again
/// under the same id, by lease expiry, comes later).
pub const LOCAL_OFFER_TTL: Duration = Duration::from_secs(2);

/// The tasks announced through this node lately (cluster mode only), oldest first.
#[derive(Default)]
struct LocalOffers {
    order: VecDeque<(Instant, Arc<str>)>,
    latest: HashMap<Arc<str>, Instant>,
}

impl LocalOffers {
    fn forget_before(&mut self, horizon: Instant) {
        while let Some((at, _)) = self.order.front() {
            if *at >= horizon {
                break;
            }
            let (at, task_id) = self.order.pop_front().expect("invariant: front exists");
            if self.latest.get(&task_id) == Some(&at) {
                self.latest.remove(&task_id);
            }
        }
    }

    fn record(&mut self, task_id: &Arc<str>, now: Instant) {
        self.forget_before(now.checked_sub(LOCAL_OFFER_TTL).unwrap_or(now));
        self.order.push_back((now, task_id.clone()));
        self.latest.insert(task_id.clone(), now);
    }

    fn recent(&self, task_id: &str, now: Instant) -> bool {
        self.latest
            .get(task_id)
            .is_some_and(|at| now.saturating_duration_since(*at) < LOCAL_OFFER_TTL)
    }
}

/// The matching index of one engine instance.
pub struct Matching {
    shards: Vec<Mutex<HashMap<QueueKey, QueueState>>>,
    next_waiter: AtomicU64,
    /// Parked polls on this node; changed only under the owning shard's lock.
    parked: AtomicU64,
    limits: ParkLimits,
    /// Session routing. Lock order: a shard's lock, then this one.
    sessions: Mutex<SessionRoutes>,
    /// Tasks announced here lately; `None` without a cluster. Never held with another lock.
    local_offers: Option<Mutex<LocalOffers>>,
}

impl Default for Matching {
    fn default() -> Self {
        Self::with_limits(ParkLimits::default())
    }
}

impl Matching {
    /// An empty index with default limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty index with the given parked-poll limits.
    pub fn with_limits(limits: ParkLimits) -> Self {
        Matching {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            next_waiter: AtomicU64::new(1),
            parked: AtomicU64::new(0),
            limits,
            sessions: Mutex::new(SessionRoutes::default()),
            local_offers: None,
        }
    }

    /// Remembers the tasks announced through this node, so that scans of the durable
    /// ready index on a cluster ([`Matching::offer_to_parked`]) do not hand them out again.
    pub fn remembering_local_offers(mut self) -> Self {
        self.local_offers = Some(Mutex::new(LocalOffers::default()));
        self
    }

    /// Parked polls on this node.
    pub fn parked(&self) -> usize {
        self.parked.load(Ordering::Relaxed) as usize
    }

    fn shard(&self, key: &QueueKey) -> &Mutex<HashMap<QueueKey, QueueState>> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        &self.shards[(h.finish() as usize) % SHARDS]
    }

    /// A fresh waiter id for [`Matching::take_or_park`].
    pub fn waiter_id(&self) -> u64 {
        self.next_waiter.fetch_add(1, Ordering::Relaxed)
    }

    /// Announces a ready task: hands it to the oldest parked poller that accepts it, or
    /// files it in the index.
    pub fn offer(&self, key: &QueueKey, hint: TaskHint) {
        if let Some(local) = &self.local_offers {
            lock(local).record(&hint.task_id, Instant::now());
        }
        let mut shard = lock(self.shard(key));
        let state = shard.entry(key.clone()).or_default();
        if state.indexed.contains(&hint.task_id) {
            return;
        }
        let Some(hint) = self.hand_to_parked(key, state, hint) else {
            return;
        };
        state.indexed.insert(hint.task_id.clone());
        let arrival = state.arrivals;
        state.arrivals += 1;
        state
            .ready
            .insert((hint.priority, hint.ready_at_ms, arrival), hint);
    }

    /// Hands a hint to the oldest parked poller that accepts it, and never files it in the
    /// index (for hints read from storage on another node's behalf); returns whether any
    /// poller is still parked on the queue. A task announced here within
    /// [`LOCAL_OFFER_TTL`] is not handed out (see the module docs).
    pub fn offer_to_parked(&self, key: &QueueKey, hint: TaskHint) -> bool {
        let known_here = self
            .local_offers
            .as_ref()
            .is_some_and(|local| lock(local).recent(&hint.task_id, Instant::now()));
        let mut shard = lock(self.shard(key));
        let Some(state) = shard.get_mut(key) else {
            return false;
        };
        if !known_here {
            let _unwanted = self.hand_to_parked(key, state, hint);
        }
        !state.waiters.is_empty()
    }

    /// Gives `hint` to the oldest parked poller of `state` that accepts it; hands it back
    /// when none does.
    fn hand_to_parked(
        &self,
        key: &QueueKey,
        state: &mut QueueState,
        hint: TaskHint,
    ) -> Option<TaskHint> {
        let Some(pos) = state
            .waiters
            .iter()
            .position(|w| self.admits(key, &w.filter, &hint))
        else {
            return Some(hint);
        };
        let waiter = state
            .waiters
            .remove(pos)
            .expect("invariant: position is in range");
        self.parked.fetch_sub(1, Ordering::Relaxed);
        *lock(&waiter.slot.state) = SlotState::Hint(hint);
        waiter.slot.notify.notify_one();
        None
    }

    /// Takes the oldest parked poller that accepts `hint` out of its queue, for a lease
    /// made inside the transaction that made the task ready (see the module docs). Only
    /// pollers that name their worker, and never for a session task (its admission
    /// belongs to the poll path).
    pub fn reserve(
        matching: &Arc<Matching>,
        key: &QueueKey,
        hint: &TaskHint,
    ) -> Option<Reservation> {
        if hint.session.is_some() {
            return None;
        }
        let mut shard = lock(matching.shard(key));
        let state = shard.get_mut(key)?;
        let pos = state
            .waiters
            .iter()
            .position(|w| w.filter.worker_id.is_some() && w.filter.accepts(hint))?;
        let waiter = state
            .waiters
            .remove(pos)
            .expect("invariant: position is in range");
        matching.parked.fetch_sub(1, Ordering::Relaxed);
        *lock(&waiter.slot.state) = SlotState::Reserved;
        Some(Reservation {
            matching: matching.clone(),
            key: key.clone(),
            waiter: Some(waiter),
        })
    }

    /// Takes the best hint the filter accepts, or parks the poller as `waiter_id`.
    /// Both happen under one lock, so an offer cannot slip between the check and the park.
    pub fn take_or_park(&self, key: &QueueKey, filter: &PollFilter, waiter_id: u64) -> Take {
        let mut shard = lock(self.shard(key));
        let state = shard.entry(key.clone()).or_default();
        let found = state
            .ready
            .iter()
            .find(|(_, h)| self.admits(key, filter, h))
            .map(|(k, _)| *k);
        if let Some(k) = found {
            let hint = state
                .ready
                .remove(&k)
                .expect("invariant: key was just found");
            state.indexed.remove(&hint.task_id);
            return Take::Hint(hint);
        }
        if state.waiters.len() >= self.limits.per_queue || self.parked() >= self.limits.per_node {
            if state.waiters.is_empty() && state.ready.is_empty() {
                shard.remove(key);
            }
            return Take::Full;
        }
        let slot = Arc::new(Slot::default());
        state.waiters.push_back(Waiter {
            id: waiter_id,
            filter: filter.clone(),
            slot: slot.clone(),
        });
        self.parked.fetch_add(1, Ordering::Relaxed);
        Take::Parked(slot)
    }

    /// Unparks `waiter_id` and returns what it was handed meanwhile. After this returns
    /// anything but [`Unparked::Reserved`], nothing can reach the slot any more; after
    /// `Reserved`, the reservation resolves with its transaction (wait on the slot and
    /// unpark again).
    pub fn unpark(&self, key: &QueueKey, waiter_id: u64, slot: &Slot) -> Unparked {
        self.leave(key, waiter_id, slot, true)
    }

    /// Unparks `waiter_id` for good (its poll was cancelled): like [`Matching::unpark`],
    /// but a pending reservation is abandoned, so its delivery hands the lease back.
    pub fn abandon(&self, key: &QueueKey, waiter_id: u64, slot: &Slot) -> Unparked {
        self.leave(key, waiter_id, slot, false)
    }

    fn leave(&self, key: &QueueKey, waiter_id: u64, slot: &Slot, wait_reserved: bool) -> Unparked {
        let mut shard = lock(self.shard(key));
        if let Some(state) = shard.get_mut(key) {
            let before = state.waiters.len();
            state.waiters.retain(|w| w.id != waiter_id);
            if state.waiters.len() < before {
                self.parked.fetch_sub(1, Ordering::Relaxed);
            }
            if state.waiters.is_empty() && state.ready.is_empty() {
                shard.remove(key);
            }
        }
        let mut state = lock(&slot.state);
        match std::mem::replace(&mut *state, SlotState::Gone) {
            SlotState::Waiting | SlotState::Gone => Unparked::Nothing,
            SlotState::Hint(hint) => Unparked::Hint(hint),
            SlotState::Leased(task) => Unparked::Leased(task),
            SlotState::Reserved if wait_reserved => {
                *state = SlotState::Reserved;
                Unparked::Reserved
            }
            SlotState::Reserved => Unparked::Nothing,
        }
    }

    /// Whether a poller with `filter` may take `hint` on `key`: its own filter, and the
    /// session routing.
    fn admits(&self, key: &QueueKey, filter: &PollFilter, hint: &TaskHint) -> bool {
        if !filter.accepts(hint) {
            return false;
        }
        let Some(session) = &hint.session else {
            return true;
        };
        let routes = lock(&self.sessions);
        match routes
            .holders
            .get(&(key.namespace.clone(), session.clone()))
        {
            Some((holder, until)) if filter.now_ms < *until => {
                filter.worker_id.as_ref() == Some(holder)
            }
            _ => true,
        }
    }

    /// Records who holds a session and until when that binds its tasks to the holder's
    /// pollers (`None`: nobody known; any poller may try its tasks, and the lease
    /// decides).
    pub fn set_session_holder(&self, namespace: &str, session: &str, holder: Option<(&str, i64)>) {
        let mut routes = lock(&self.sessions);
        let key: SessionKey = (namespace.into(), session.into());
        match holder {
            Some((h, until)) => {
                routes.holders.insert(key, (h.into(), until));
            }
            None => {
                routes.holders.remove(&key);
            }
        }
    }

    /// How many times an activity of the session left its lease (see
    /// [`Matching::hold_for_session`]).
    pub fn session_generation(&self, namespace: &str, session: &str) -> u64 {
        let routes = lock(&self.sessions);
        routes
            .freed
            .get(&(Arc::from(namespace), Arc::from(session)))
            .copied()
            .unwrap_or(0)
    }

    /// Holds back the hint of a task whose session is at its activity cap, unless a slot
    /// freed since `generation` was read (then the hint comes back to be offered again).
    pub fn hold_for_session(
        &self,
        session: &str,
        generation: u64,
        key: &QueueKey,
        hint: TaskHint,
    ) -> Option<TaskHint> {
        let mut routes = lock(&self.sessions);
        let skey: SessionKey = (key.namespace.clone(), session.into());
        if routes.freed.get(&skey).copied().unwrap_or(0) != generation {
            return Some(hint);
        }
        routes
            .backlog
            .entry(skey)
            .or_default()
            .push((key.clone(), hint));
        None
    }

    /// An activity of the session left its lease: returns the hints held back for it, to
    /// be offered again.
    pub fn session_slot_freed(&self, namespace: &str, session: &str) -> Vec<(QueueKey, TaskHint)> {
        let mut routes = lock(&self.sessions);
        let skey: SessionKey = (namespace.into(), session.into());
        *routes.freed.entry(skey.clone()).or_default() += 1;
        routes.backlog.remove(&skey).unwrap_or_default()
    }

    /// Hands indexed hints to parked pollers that accept them now (after session routing
    /// changed in their favour).
    pub fn rematch(&self, key: &QueueKey) {
        let mut shard = lock(self.shard(key));
        let Some(state) = shard.get_mut(key) else {
            return;
        };
        if state.waiters.is_empty() {
            return;
        }
        let entries: Vec<(u8, i64, u64)> = state.ready.keys().copied().collect();
        for k in entries {
            if state.waiters.is_empty() {
                break;
            }
            let hint = state
                .ready
                .remove(&k)
                .expect("invariant: key was just listed");
            match self.hand_to_parked(key, state, hint) {
                Some(hint) => {
                    state.ready.insert(k, hint);
                }
                None => {
                    // handed over: no longer indexed
                }
            }
        }
        let ready: HashSet<Arc<str>> = state.ready.values().map(|h| h.task_id.clone()).collect();
        state.indexed = ready;
    }

    /// The counts of one queue.
    pub fn stats(&self, key: &QueueKey) -> QueueStats {
        let shard = lock(self.shard(key));
        shard
            .get(key)
            .map(|s| QueueStats {
                ready: s.ready.len(),
                pollers: s.waiters.len(),
            })
            .unwrap_or_default()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::time::{Duration, Instant};

    use super::{
        Arc, LocalOffers, Matching, ParkLimits, PollFilter, QueueKey, QueueStats, Take, TaskHint,
        TaskKind, LOCAL_OFFER_TTL,
    };

    fn hint(id: &str, ty: &str, priority: u8, at: i64) -> TaskHint {
        TaskHint {
            task_id: id.into(),
            type_name: ty.into(),
            priority,
            ready_at_ms: at,
            compatibility: None,
            session: None,
        }
    }

    fn key() -> QueueKey {
        QueueKey::new("default", "q", TaskKind::Workflow)
    }

    #[test]
    fn index_orders_by_priority_then_availability() {
        let m = Matching::new();
        m.offer(&key(), hint("late", "a", 5, 20));
        m.offer(&key(), hint("early", "a", 5, 10));
        m.offer(&key(), hint("urgent", "a", 0, 30));
        let order: Vec<String> = (0..3)
            .map(
                |_| match m.take_or_park(&key(), &PollFilter::default(), m.waiter_id()) {
                    Take::Hint(h) => h.task_id.to_string(),
                    _ => panic!("expected a hint"),
                },
            )
            .collect();
        assert_eq!(order, ["urgent", "early", "late"]);
    }

    #[test]
    fn offer_goes_straight_to_a_parked_poller_that_accepts_the_type() {
        let m = Matching::new();
        let only_b = PollFilter {
            types: Some(Arc::new(["b".to_string()].into_iter().collect())),
            build_id: None,
            worker_id: None,
            now_ms: 0,
        };
        let (id_b, id_any) = (m.waiter_id(), m.waiter_id());
        let Take::Parked(slot_b) = m.take_or_park(&key(), &only_b, id_b) else {
            panic!("parks")
        };
        let Take::Parked(slot_any) = m.take_or_park(&key(), &PollFilter::default(), id_any) else {
            panic!("parks")
        };
        m.offer(&key(), hint("t1", "a", 5, 1));
        assert_eq!(
            m.unpark(&key(), id_b, &slot_b).hint(),
            None,
            "type b poller must not get an a task"
        );
        assert_eq!(
            m.unpark(&key(), id_any, &slot_any)
                .hint()
                .map(|h| h.task_id.to_string()),
            Some("t1".into())
        );
        assert_eq!(m.stats(&key()), QueueStats::default());
    }

    #[test]
    fn unparked_poller_no_longer_receives_offers() {
        let m = Matching::new();
        let id = m.waiter_id();
        let Take::Parked(slot) = m.take_or_park(&key(), &PollFilter::default(), id) else {
            panic!("parks")
        };
        assert_eq!(m.unpark(&key(), id, &slot).hint(), None);
        m.offer(&key(), hint("t1", "a", 5, 1));
        assert_eq!(m.stats(&key()).ready, 1, "the hint waits in the index");
    }

    #[test]
    fn pinned_tasks_go_only_to_pollers_of_their_build_id() {
        let m = Matching::new();
        let mut pinned = hint("t1", "a", 5, 1);
        pinned.compatibility = Some("v2".into());
        m.offer(&key(), pinned);
        let v1 = PollFilter {
            types: None,
            build_id: Some("v1".into()),
            worker_id: None,
            now_ms: 0,
        };
        let v2 = PollFilter {
            types: None,
            build_id: Some("v2".into()),
            worker_id: None,
            now_ms: 0,
        };
        let id = m.waiter_id();
        let Take::Parked(slot) = m.take_or_park(&key(), &v1, id) else {
            panic!("v1 must not get a v2 task")
        };
        assert_eq!(m.unpark(&key(), id, &slot).hint(), None);
        assert!(
            matches!(
                m.take_or_park(&key(), &PollFilter::default(), m.waiter_id()),
                Take::Parked(_)
            ),
            "unversioned poller skips it"
        );
        assert!(matches!(
            m.take_or_park(&key(), &v2, m.waiter_id()),
            Take::Hint(_)
        ));
    }

    #[test]
    fn parking_beyond_the_queue_limit_is_refused() {
        let m = Matching::with_limits(ParkLimits {
            per_node: 10,
            per_queue: 1,
        });
        let id = m.waiter_id();
        let Take::Parked(slot) = m.take_or_park(&key(), &PollFilter::default(), id) else {
            panic!("parks")
        };
        assert!(matches!(
            m.take_or_park(&key(), &PollFilter::default(), m.waiter_id()),
            Take::Full
        ));
        assert_eq!(m.parked(), 1);
        m.unpark(&key(), id, &slot);
        assert_eq!(m.parked(), 0);
        assert!(matches!(
            m.take_or_park(&key(), &PollFilter::default(), m.waiter_id()),
            Take::Parked(_)
        ));
    }

    fn poller(worker: &str) -> PollFilter {
        PollFilter {
            worker_id: Some(worker.into()),
            ..PollFilter::default()
        }
    }

    #[test]
    fn a_session_task_goes_only_to_its_holders_pollers_and_to_anyone_once_released() {
        let m = Matching::new();
        m.set_session_holder("default", "s1", Some(("w1", i64::MAX)));
        let mut h = hint("t1", "a", 5, 1);
        h.session = Some("s1".into());
        let id = m.waiter_id();
        let Take::Parked(slot) = m.take_or_park(&key(), &poller("w2"), id) else {
            panic!("parks")
        };
        m.offer(&key(), h);
        assert_eq!(
            m.stats(&key()).ready,
            1,
            "w2 is not handed w1's session task"
        );
        m.set_session_holder("default", "s1", None);
        m.rematch(&key());
        assert_eq!(
            m.unpark(&key(), id, &slot)
                .hint()
                .map(|h| h.task_id.to_string()),
            Some("t1".into()),
            "released, the task goes to the parked poller"
        );
        assert_eq!(m.stats(&key()).ready, 0);
    }

    #[test]
    fn a_held_back_session_hint_returns_when_a_slot_frees() {
        let m = Matching::new();
        let mut h = hint("t1", "a", 5, 1);
        h.session = Some("s1".into());
        let generation = m.session_generation("default", "s1");
        assert!(m
            .hold_for_session("s1", generation, &key(), h.clone())
            .is_none());
        let back = m.session_slot_freed("default", "s1");
        assert_eq!(back.len(), 1);
        assert!(
            m.hold_for_session("s1", generation, &key(), h).is_some(),
            "a slot freed since the generation was read: the hint is not held"
        );
    }

    #[test]
    fn a_task_announced_twice_is_indexed_once() {
        let m = Matching::new();
        m.offer(&key(), hint("t1", "a", 5, 1));
        m.offer(&key(), hint("t1", "a", 5, 2));
        assert_eq!(m.stats(&key()).ready, 1);
    }

    /// Parks a poller accepting everything; returns how to collect its hint.
    fn parked(m: &Matching) -> (u64, Arc<super::Slot>) {
        let id = m.waiter_id();
        let Take::Parked(slot) = m.take_or_park(&key(), &PollFilter::default(), id) else {
            panic!("expected to park");
        };
        (id, slot)
    }

    #[test]
    fn a_ready_index_scan_does_not_hand_out_again_a_task_announced_here() {
        let m = Matching::new().remembering_local_offers();
        let (first, first_slot) = parked(&m);
        let (second, second_slot) = parked(&m);
        m.offer(&key(), hint("local", "a", 5, 1));
        assert!(
            m.offer_to_parked(&key(), hint("local", "a", 5, 1)),
            "one poller still parked"
        );
        assert_eq!(
            m.unpark(&key(), first, &first_slot)
                .hint()
                .map(|h| h.task_id),
            Some("local".into())
        );
        m.offer_to_parked(&key(), hint("elsewhere", "a", 5, 2));
        assert_eq!(
            m.unpark(&key(), second, &second_slot)
                .hint()
                .map(|h| h.task_id),
            Some("elsewhere".into()),
            "a task announced on another node is handed out"
        );
    }

    #[test]
    fn without_a_cluster_a_ready_index_scan_hands_out_any_task() {
        let m = Matching::new();
        let (first, first_slot) = parked(&m);
        let (second, second_slot) = parked(&m);
        m.offer(&key(), hint("t", "a", 5, 1));
        m.offer_to_parked(&key(), hint("t", "a", 5, 1));
        assert!(m.unpark(&key(), first, &first_slot).hint().is_some());
        assert!(m.unpark(&key(), second, &second_slot).hint().is_some());
    }

    #[test]
    fn local_offers_are_forgotten_after_their_ttl_and_a_new_offer_renews_one() {
        let mut local = LocalOffers::default();
        let t0 = Instant::now();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        local.record(&a, t0);
        local.record(&b, t0);
        assert!(local.recent("a", t0 + LOCAL_OFFER_TTL - Duration::from_millis(1)));
        assert!(!local.recent("a", t0 + LOCAL_OFFER_TTL));
        local.record(&a, t0 + Duration::from_secs(3));
        assert!(local.recent("a", t0 + Duration::from_secs(4)), "renewed");
        assert!(!local.recent("b", t0 + Duration::from_secs(4)));
        assert_eq!(local.latest.len(), 1, "b was pruned by the later record");
        assert_eq!(local.order.len(), 1);
    }
}
