//! Firing: occurrences, jitter, overlap and buffering, all inside the fire's transaction.

use serde_json::{json, Value};

use crate::clock::{format_timestamp, Millis};
use crate::error::{Error, Result};
use crate::kernel::{self, Effects};
use crate::model::{InstanceRecord, RunRecord, TimerAction, TimerKey};
use crate::storage::KvTxn;
use crate::workflow::{CloseCommand, DuplicatePolicy, StartWorkflow};
use crate::{ids, tables};

use super::record::{
    event_key, schedule_key, BufferedFire, FireOutcome, OverlapPolicy, RecentAction,
    ScheduleRecord, ScheduleStatus, TriggerKind,
};
use super::spec::{Source, Spec};
use super::{
    MAX_BUFFER, MAX_TRACKED_RUNS, MISSED_COUNT_CAP, RECENT_ACTIONS, SCHEDULED_START_ATTRIBUTE,
    SCHEDULE_ID_ATTRIBUTE,
};

// ---- occurrence helpers ----

pub(super) fn compile(s: &ScheduleRecord) -> Option<Spec> {
    match Spec::compile(&s.spec) {
        Ok(spec) => Some(spec),
        Err(errors) => {
            // Validated at write time; only a changed zone database could get here.
            tracing::warn!(schedule_id = %s.schedule_id, ?errors, "stored schedule spec no longer compiles; it will not fire");
            None
        }
    }
}

pub(super) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The jitter of one occurrence: deterministic, at most `jitter_seconds` and at most half
/// the gap to the following occurrence (so jitter never reorders or merges fires).
pub(super) fn jitter_ms(
    s: &ScheduleRecord,
    occurrence: Millis,
    following: Option<Millis>,
) -> Millis {
    if s.jitter_seconds == 0 {
        return 0;
    }
    let mut cap = s.jitter_seconds as Millis * 1000;
    if let Some(next) = following {
        cap = cap.min((next - occurrence) / 2);
    }
    if cap <= 0 {
        return 0;
    }
    let seed = format!("{}:{occurrence}", s.schedule_ulid);
    (fnv1a(seed.as_bytes()) % (cap as u64 + 1)) as Millis
}

/// The nominal-time label in workflow ids: RFC 3339 UTC, whole seconds when whole.
pub(super) fn occurrence_label(at: Millis) -> String {
    jiff::Timestamp::from_millisecond(at)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| at.to_string())
}

/// The workflow id of an occurrence: `{schedule_id}-{occurrence}`.
pub fn occurrence_workflow_id(schedule_id: &str, occurrence: Millis) -> String {
    format!("{schedule_id}-{}", occurrence_label(occurrence))
}

pub(super) fn source_cron(s: &ScheduleRecord, source: Option<Source>) -> Option<String> {
    match source {
        Some(Source::Cron(i)) => s.spec.cron_expressions.get(i).cloned(),
        _ => None,
    }
}

pub(super) fn command_context(operation: &str) -> Value {
    let source = if operation == "scheduler" {
        "scheduler"
    } else {
        "control_plane"
    };
    json!({"source": source, "operation": operation})
}

// ---- the in-transaction core ----

/// A fire about to be applied.
pub(super) struct Fire {
    pub(super) occurrence_ms: Millis,
    pub(super) workflow_id: String,
    /// Chosen before the transaction for manual fires and backfills, so a retry after an
    /// unknown commit recognizes its own run.
    pub(super) run_id: String,
    pub(super) trigger: TriggerKind,
    pub(super) cron_expression: Option<String>,
}

pub(super) async fn load(
    txn: &mut dyn KvTxn,
    ns: &str,
    id: &str,
) -> Result<Option<ScheduleRecord>> {
    tables::get(txn, &schedule_key(ns, id)).await
}

pub(super) fn not_found(id: &str) -> Error {
    Error::not_found(
        "schedule_not_found",
        format!("schedule '{id}' does not exist"),
    )
    .with("schedule_id", id)
}

pub(super) async fn load_live(txn: &mut dyn KvTxn, ns: &str, id: &str) -> Result<ScheduleRecord> {
    kernel::require_namespace(txn, ns).await?;
    match load(txn, ns, id).await? {
        Some(s) if s.status != ScheduleStatus::Deleted => Ok(s),
        _ => Err(not_found(id)),
    }
}

pub(super) fn save(txn: &mut dyn KvTxn, s: &ScheduleRecord) -> Result<()> {
    tables::put(txn, &schedule_key(&s.namespace, &s.schedule_id), s)
}

/// Appends one audit event.
pub(super) fn record_event(
    txn: &mut dyn KvTxn,
    s: &mut ScheduleRecord,
    event_type: &str,
    payload: Value,
    run: Option<(&str, &str)>,
    now: Millis,
) {
    s.last_event_seq += 1;
    let seq = s.last_event_seq;
    let event = json!({
        "id": format!("{}:{seq}", s.schedule_ulid),
        "sequence": seq,
        "event_type": event_type,
        "recorded_at": format_timestamp(now),
        "workflow_instance_id": run.map(|r| r.0),
        "workflow_run_id": run.map(|r| r.1),
        "payload": payload,
    });
    let bytes = serde_json::to_vec(&event).expect("invariant: a json Value always serializes");
    tables::put_bytes(txn, &event_key(&s.namespace, &s.schedule_id, seq), &bytes);
}

pub(super) fn disarm(txn: &mut dyn KvTxn, s: &mut ScheduleRecord) {
    if let Some(timer) = s.fire_timer.take() {
        txn.clear(&tables::timer_key(&timer));
    }
    s.next_occurrence_ms = None;
    s.next_fire_at_ms = None;
}

/// Arms the timer of the first occurrence strictly after `after` (none when the schedule
/// is not active, its runs are used up, or its spec has no later occurrence).
pub(super) fn arm(
    txn: &mut dyn KvTxn,
    s: &mut ScheduleRecord,
    after: Millis,
    fx: &mut Effects,
) -> Result<()> {
    disarm(txn, s);
    if s.status != ScheduleStatus::Active || s.remaining_actions == Some(0) {
        return Ok(());
    }
    let Some(spec) = compile(s) else {
        return Ok(());
    };
    let Some((occurrence, _)) = spec.next_after(after) else {
        return Ok(());
    };
    let following = spec.next_after(occurrence).map(|(t, _)| t);
    let at = occurrence + jitter_ms(s, occurrence, following);
    let action = TimerAction::ScheduleFire {
        namespace: s.namespace.clone(),
        schedule_id: s.schedule_id.clone(),
    };
    s.fire_timer = Some(kernel::put_timer(txn, at, &action, fx)?);
    s.next_occurrence_ms = Some(occurrence);
    s.next_fire_at_ms = Some(at);
    Ok(())
}

/// The open runs among those the schedule started, as `(workflow_id, run_id)`; forgets
/// the closed ones. Reads are conflict-tracked, so a run closing concurrently makes this
/// transaction retry instead of acting on a stale view.
pub(super) async fn open_runs(
    txn: &mut dyn KvTxn,
    s: &mut ScheduleRecord,
) -> Result<Vec<(String, String)>> {
    let mut open = Vec::new();
    for workflow_id in std::mem::take(&mut s.running) {
        let ikey = tables::instance_key(&s.namespace, &workflow_id);
        let Some(instance) = tables::get::<InstanceRecord>(txn, &ikey).await? else {
            continue;
        };
        let rkey = tables::run_key(&s.namespace, &instance.current_run_id);
        if let Some(run) = tables::get::<RunRecord>(txn, &rkey).await? {
            if !run.status.is_terminal() {
                open.push((workflow_id.clone(), run.run_id.clone()));
                s.running.push(workflow_id);
            }
        }
    }
    Ok(open)
}

pub(super) fn skip(
    txn: &mut dyn KvTxn,
    s: &mut ScheduleRecord,
    fire: &Fire,
    reason: &'static str,
    policy: OverlapPolicy,
    now: Millis,
) -> FireOutcome {
    s.skipped_count += 1;
    let payload = json!({
        "reason": reason,
        "skipped_trigger_count": 1,
        "last_skipped_at": format_timestamp(fire.occurrence_ms),
        "occurrence_time": format_timestamp(fire.occurrence_ms),
        "trigger": fire.trigger,
        "trigger_number": s.trigger_count,
        "overlap_policy": s.overlap_policy.as_str(),
        "effective_overlap_policy": policy.as_str(),
        "workflow_instance_id": fire.workflow_id,
        "command_context": command_context(trigger_operation(fire.trigger)),
    });
    record_event(txn, s, "ScheduleTriggerSkipped", payload, None, now);
    FireOutcome::Skipped {
        reason,
        workflow_id: fire.workflow_id.clone(),
    }
}

pub(super) fn trigger_operation(kind: TriggerKind) -> &'static str {
    match kind {
        TriggerKind::Scheduled => "scheduler",
        TriggerKind::Manual => "trigger",
        TriggerKind::Backfill => "backfill",
    }
}

/// Evaluates one fire under `policy`: starts, buffers or skips it.
pub(super) async fn apply_fire(
    txn: &mut dyn KvTxn,
    s: &mut ScheduleRecord,
    fire: Fire,
    policy: OverlapPolicy,
    now: Millis,
    fx: &mut Effects,
) -> Result<FireOutcome> {
    s.trigger_count += 1;
    if s.remaining_actions == Some(0) {
        return Ok(skip(txn, s, &fire, "max_runs_reached", policy, now));
    }
    let open = if policy == OverlapPolicy::AllowAll {
        Vec::new()
    } else {
        open_runs(txn, s).await?
    };
    if !open.is_empty() {
        match policy {
            OverlapPolicy::Skip => return Ok(skip(txn, s, &fire, "overlap", policy, now)),
            OverlapPolicy::BufferOne | OverlapPolicy::BufferAll => {
                let limit = if policy == OverlapPolicy::BufferOne {
                    1
                } else {
                    MAX_BUFFER
                };
                if s.buffer.len() >= limit {
                    return Ok(match skip(txn, s, &fire, "buffer_full", policy, now) {
                        FireOutcome::Skipped { .. } => FireOutcome::BufferFull,
                        other => other,
                    });
                }
                let payload = json!({
                    "schedule_id": s.schedule_id,
                    "outcome": "buffered",
                    "occurrence_time": format_timestamp(fire.occurrence_ms),
                    "trigger": fire.trigger,
                    "trigger_number": s.trigger_count,
                    "cron_expression": fire.cron_expression,
                    "overlap_policy": s.overlap_policy.as_str(),
                    "effective_overlap_policy": policy.as_str(),
                    "buffer_depth": s.buffer.len() + 1,
                    "command_context": command_context(trigger_operation(fire.trigger)),
                });
                record_event(txn, s, "ScheduleTriggered", payload, None, now);
                s.buffer.push(BufferedFire {
                    occurrence_ms: fire.occurrence_ms,
                    workflow_id: fire.workflow_id.clone(),
                    trigger: fire.trigger,
                    buffered_at_ms: now,
                    cron_expression: fire.cron_expression,
                });
                return Ok(FireOutcome::Buffered {
                    workflow_id: fire.workflow_id,
                });
            }
            OverlapPolicy::CancelOther | OverlapPolicy::TerminateOther => {
                let command = if policy == OverlapPolicy::CancelOther {
                    CloseCommand::Cancel
                } else {
                    CloseCommand::Terminate
                };
                let reason = format!(
                    "schedule '{}' overlap policy {}",
                    s.schedule_id,
                    policy.as_str()
                );
                for (workflow_id, run_id) in &open {
                    let command_id = ids::new_id(now);
                    crate::workflow::close_in_txn(
                        txn,
                        &s.namespace,
                        workflow_id,
                        Some(run_id),
                        command,
                        Some(&reason),
                        &command_id,
                        now,
                        fx,
                    )
                    .await?;
                }
                s.running.clear();
            }
            OverlapPolicy::AllowAll => {}
        }
    }
    start(txn, s, fire, policy, "started", now, fx).await
}

/// Starts the workflow of `fire` (its overlap already judged).
pub(super) async fn start(
    txn: &mut dyn KvTxn,
    s: &mut ScheduleRecord,
    fire: Fire,
    policy: OverlapPolicy,
    outcome: &'static str,
    now: Millis,
    fx: &mut Effects,
) -> Result<FireOutcome> {
    if s.remaining_actions == Some(0) {
        return Ok(skip(txn, s, &fire, "max_runs_reached", policy, now));
    }
    let ns = s.namespace.clone();
    let ikey = tables::instance_key(&ns, &fire.workflow_id);
    if let Some(instance) = tables::get::<InstanceRecord>(txn, &ikey).await? {
        if instance.current_run_id != fire.run_id {
            // This occurrence already ran (deterministic id): never a second run.
            return Ok(skip(txn, s, &fire, "already_started", policy, now));
        }
    }
    let mut attributes = match &s.search_attributes {
        Value::Object(m) => m.clone(),
        _ => serde_json::Map::new(),
    };
    attributes.insert(SCHEDULE_ID_ATTRIBUTE.into(), json!(s.schedule_id));
    attributes.insert(
        SCHEDULED_START_ATTRIBUTE.into(),
        json!(format_timestamp(fire.occurrence_ms)),
    );
    let input = match &s.action.input {
        Value::Null => crate::avro::envelope(&crate::avro::AvroValue::Array(Vec::new())),
        v => v.clone(),
    };
    let req = StartWorkflow {
        workflow_id: Some(fire.workflow_id.clone()),
        workflow_type: s.action.workflow_type.clone(),
        task_queue: s.action.task_queue.clone(),
        input,
        execution_timeout_seconds: s.action.execution_timeout_seconds,
        run_timeout_seconds: s.action.run_timeout_seconds,
        duplicate_policy: DuplicatePolicy::Fail,
        memo: if s.memo.is_object() {
            s.memo.clone()
        } else {
            json!({})
        },
        search_attributes: Value::Object(attributes),
        priority: 5,
        build_id: None,
    };
    let started =
        crate::workflow::start_in_txn(txn, &ns, &req, &fire.workflow_id, &fire.run_id, now, fx)
            .await?;
    let mut run = started.run;
    if run.lifecycle.schedule_id.as_deref() != Some(s.schedule_id.as_str()) {
        run.lifecycle.schedule_id = Some(s.schedule_id.clone());
        tables::put(txn, &tables::run_key(&ns, &run.run_id), &run)?;
    }
    s.fires_count += 1;
    s.last_fired_at_ms = Some(now);
    s.latest_workflow_id = Some(run.workflow_id.clone());
    s.latest_run_id = Some(run.run_id.clone());
    s.remaining_actions = s.remaining_actions.map(|n| n.saturating_sub(1));
    if !s.running.contains(&run.workflow_id) {
        s.running.push(run.workflow_id.clone());
        if s.running.len() > MAX_TRACKED_RUNS {
            s.running.remove(0);
        }
    }
    s.recent_actions.push(RecentAction {
        occurrence_ms: fire.occurrence_ms,
        started_at_ms: now,
        workflow_id: run.workflow_id.clone(),
        run_id: run.run_id.clone(),
        trigger: fire.trigger,
    });
    if s.recent_actions.len() > RECENT_ACTIONS {
        s.recent_actions.remove(0);
    }
    let payload = json!({
        "workflow_instance_id": run.workflow_id,
        "workflow_run_id": run.run_id,
        "schedule_id": s.schedule_id,
        "schedule_ulid": s.schedule_ulid,
        "cron_expression": fire.cron_expression,
        "timezone": s.spec.timezone.clone().unwrap_or_else(|| "UTC".into()),
        "overlap_policy": s.overlap_policy.as_str(),
        "outcome": outcome,
        "effective_overlap_policy": policy.as_str(),
        "trigger_number": s.trigger_count,
        "trigger": fire.trigger,
        "occurrence_time": format_timestamp(fire.occurrence_ms),
        "command_context": command_context(trigger_operation(fire.trigger)),
    });
    record_event(
        txn,
        s,
        "ScheduleTriggered",
        payload,
        Some((&run.workflow_id, &run.run_id)),
        now,
    );
    Ok(FireOutcome::Started {
        workflow_id: run.workflow_id,
        run_id: run.run_id,
    })
}

/// Starts the oldest buffered fire if the schedule is active and none of its runs is open.
pub(super) async fn drain(
    txn: &mut dyn KvTxn,
    s: &mut ScheduleRecord,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    if s.buffer.is_empty() || s.status != ScheduleStatus::Active {
        return Ok(());
    }
    if !open_runs(txn, s).await?.is_empty() {
        return Ok(());
    }
    let next = s.buffer.remove(0);
    let fire = Fire {
        occurrence_ms: next.occurrence_ms,
        workflow_id: next.workflow_id,
        run_id: ids::new_id(now),
        trigger: next.trigger,
        cron_expression: next.cron_expression,
    };
    let policy = s.overlap_policy;
    start(txn, s, fire, policy, "started_from_buffer", now, fx).await?;
    Ok(())
}

/// Applies a schedule's fire timer (idempotent: a timer the schedule no longer names does
/// nothing). Runs inside the timer's transaction, which has deleted the timer row.
pub(crate) async fn fire(
    txn: &mut dyn KvTxn,
    ns: &str,
    id: &str,
    timer: &TimerKey,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    let Some(mut s) = load(txn, ns, id).await? else {
        return Ok(());
    };
    if s.status != ScheduleStatus::Active || s.fire_timer.as_ref() != Some(timer) {
        return Ok(());
    }
    s.fire_timer = None;
    let Some(spec) = compile(&s) else {
        disarm(txn, &mut s);
        return save(txn, &s);
    };
    let nominal = s.next_occurrence_ms.unwrap_or(timer.fire_at_ms);
    // Every occurrence due by now: the armed one plus any that passed while the server
    // was down (or the timer ran late). Only the latest may fire, and only within the
    // catch-up window (a fire delayed by its own jitter is always on time).
    let (latest, latest_source) = latest_due(&spec, nominal, now)
        .map(|(at, src)| (at, Some(src)))
        .unwrap_or((nominal, None));
    let window_ms = (s.catchup_window_seconds as Millis * 1000).max(jitter_allowance(&s));
    let fires_latest = now - latest <= window_ms;
    let skipped = if fires_latest {
        spec.occurrences_between(nominal - 1, latest - 1, MISSED_COUNT_CAP)
    } else {
        spec.occurrences_between(nominal - 1, now, MISSED_COUNT_CAP)
    };
    // A buffered fire waits its turn before anything new.
    drain(txn, &mut s, now, fx).await?;
    if skipped.count > 0 {
        let count = skipped.count as u64;
        s.skipped_count += count;
        s.trigger_count += count;
        let payload = json!({
            "reason": if fires_latest { "missed_while_unavailable" } else { "catchup_window_passed" },
            "skipped_trigger_count": count,
            "skipped_trigger_count_truncated": skipped.truncated,
            "first_skipped_at": skipped.first.map(format_timestamp),
            "last_skipped_at": skipped.last.map(|l| format_timestamp(l.0)),
            "catchup_window_seconds": s.catchup_window_seconds,
            "command_context": command_context("scheduler"),
        });
        record_event(txn, &mut s, "ScheduleTriggerSkipped", payload, None, now);
        tracing::info!(schedule_id = %s.schedule_id, skipped = count, "missed schedule occurrences skipped");
    }
    if fires_latest {
        let fire = Fire {
            occurrence_ms: latest,
            workflow_id: occurrence_workflow_id(&s.schedule_id, latest),
            run_id: ids::new_id(now),
            trigger: TriggerKind::Scheduled,
            cron_expression: source_cron(&s, latest_source),
        };
        let policy = s.overlap_policy;
        apply_fire(txn, &mut s, fire, policy, now, fx).await?;
    }
    arm(txn, &mut s, now.max(latest), fx)?;
    save(txn, &s)
}

/// The latest occurrence in `[lo, now]`, searched in widening windows back from `now` so
/// that a long downtime of a frequent schedule costs little.
pub(super) fn latest_due(spec: &Spec, lo: Millis, now: Millis) -> Option<(Millis, Source)> {
    const DAY: Millis = 86_400_000;
    for width in [60_000, 3_600_000, DAY, 31 * DAY, 366 * DAY, Millis::MAX / 4] {
        let from = if now - width <= lo { lo } else { now - width };
        let found = spec.occurrences_between(from - 1, now, MISSED_COUNT_CAP);
        if let Some(last) = found.last {
            return Some(last);
        }
        if from == lo {
            return None;
        }
    }
    None
}

/// A fire delayed by its own jitter is on time, whatever the catch-up window.
pub(super) fn jitter_allowance(s: &ScheduleRecord) -> Millis {
    s.jitter_seconds as Millis * 1000
}

/// Applies a [`TimerAction::ScheduleRunClosed`] timer: a run the schedule started closed,
/// so a buffered fire may start.
pub(crate) async fn run_closed(
    txn: &mut dyn KvTxn,
    ns: &str,
    id: &str,
    workflow_id: &str,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    let Some(mut s) = load(txn, ns, id).await? else {
        return Ok(());
    };
    if s.status == ScheduleStatus::Deleted
        || (s.buffer.is_empty() && !s.running.iter().any(|w| w == workflow_id))
    {
        return Ok(());
    }
    // Prunes closed runs even when nothing is buffered.
    open_runs(txn, &mut s).await?;
    drain(txn, &mut s, now, fx).await?;
    save(txn, &s)
}

/// Called when any run closes (same transaction): a run started by a schedule tells its
/// schedule through a timer, so the close does not read or conflict on the schedule.
pub(crate) fn on_run_closed(
    txn: &mut dyn KvTxn,
    ns: &str,
    schedule_id: &str,
    workflow_id: &str,
    reason: &str,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    // A continued run lives on in its successor, which keeps the link.
    if reason == "continued" {
        return Ok(());
    }
    let action = TimerAction::ScheduleRunClosed {
        namespace: ns.to_string(),
        schedule_id: schedule_id.to_string(),
        workflow_id: workflow_id.to_string(),
    };
    kernel::put_timer(txn, now, &action, fx)?;
    Ok(())
}
