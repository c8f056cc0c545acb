//! The schedule service: the engine API each route calls.

use serde_json::{json, Value};

use crate::clock::{format_timestamp, Millis};
use crate::error::{Error, RejectKind, Result};
use crate::kernel;
use crate::kernel::Engine;
use crate::keys::{prefix, Key, KeyReader};
use crate::model::InstanceRecord;
use crate::storage::{KeyRange, ReadOptions};
use crate::{ids, tables};

use super::firing::{
    apply_fire, arm, command_context, compile, disarm, drain, load, load_live, not_found,
    occurrence_workflow_id, record_event, save, source_cron, Fire,
};
use super::record::{
    event_key, list_key, receipt, schedule_key, BackfillFire, BackfillResult, FireOutcome,
    HistoryPage, OverlapPolicy, RequestReceipt, ScheduleListPage, ScheduleListQuery,
    ScheduleRecord, ScheduleStatus, TriggerKind, TriggerResult,
};
use super::render::{action_json, spec_json};
use super::visibility::matches;
use super::{
    ScheduleInput, SchedulePatch, BACKFILL_BATCH, DEFAULT_CATCHUP_WINDOW_SECONDS,
    MAX_BACKFILL_FIRES, MAX_HISTORY_PAGE, MAX_LIST_PAGE,
};

// ---- the engine API ----

impl Engine {
    /// Creates a schedule (201). 409 `schedule_already_exists` when the id is live; a
    /// soft-deleted id may be re-created (its history continues).
    pub async fn create_schedule(&self, ns: &str, input: ScheduleInput) -> Result<ScheduleRecord> {
        if let Some(attributes) = &input.search_attributes {
            self.validate_search_attributes(ns, attributes).await?;
        }
        let now = self.now_ms();
        let ulid = ids::new_id(now);
        let id = input
            .schedule_id
            .clone()
            .unwrap_or_else(|| ulid.to_ascii_lowercase());
        let (input, id, ulid) = (&input, &id, &ulid);
        self.transact(move |tx| {
            Box::pin(async move {
                let txn = tx.txn.as_mut();
                let fx = &mut tx.fx;
                kernel::require_namespace(txn, ns).await?;
                let key = schedule_key(ns, id);
                let existing = tables::get::<ScheduleRecord>(txn, &key).await?;
                if let Some(e) = &existing {
                    if e.schedule_ulid == *ulid {
                        // Our own earlier attempt committed (commit-unknown retry).
                        return Ok(e.clone());
                    }
                    if e.status != ScheduleStatus::Deleted {
                        return Err(Error::conflict(
                            "schedule_already_exists",
                            format!("schedule '{id}' already exists"),
                        )
                        .with("schedule_id", id.as_str()));
                    }
                }
                let mut s = ScheduleRecord {
                    namespace: ns.to_string(),
                    schedule_id: id.clone(),
                    schedule_ulid: ulid.clone(),
                    status: if input.paused {
                        ScheduleStatus::Paused
                    } else {
                        ScheduleStatus::Active
                    },
                    spec: input.spec.clone(),
                    action: input.action.clone(),
                    overlap_policy: input.overlap_policy.unwrap_or(OverlapPolicy::Skip),
                    jitter_seconds: input.jitter_seconds.unwrap_or(0),
                    max_runs: input.max_runs,
                    remaining_actions: input.max_runs,
                    memo: input.memo.clone().unwrap_or_else(|| json!({})),
                    search_attributes: input.search_attributes.clone().unwrap_or_else(|| json!({})),
                    note: input.note.clone(),
                    catchup_window_seconds: input
                        .catchup_window_seconds
                        .unwrap_or(DEFAULT_CATCHUP_WINDOW_SECONDS),
                    fires_count: 0,
                    failures_count: 0,
                    trigger_count: 0,
                    skipped_count: 0,
                    next_occurrence_ms: None,
                    next_fire_at_ms: None,
                    fire_timer: None,
                    last_fired_at_ms: None,
                    latest_workflow_id: None,
                    latest_run_id: None,
                    running: Vec::new(),
                    buffer: Vec::new(),
                    recent_actions: Vec::new(),
                    paused_at_ms: input.paused.then_some(now),
                    created_at_ms: now,
                    updated_at_ms: now,
                    deleted_at_ms: None,
                    // A re-created id continues the old audit stream.
                    last_event_seq: existing.as_ref().map_or(0, |e| e.last_event_seq),
                    last_request: None,
                };
                arm(txn, &mut s, now, fx)?;
                let payload = json!({
                    "spec": spec_json(&s.spec),
                    "action": action_json(&s.action),
                    "overlap_policy": s.overlap_policy.as_str(),
                    "next_fire_at": s.next_fire_at_ms.map(format_timestamp),
                    "paused": input.paused,
                    "command_context": command_context("create"),
                });
                record_event(txn, &mut s, "ScheduleCreated", payload, None, now);
                txn.set(&list_key(ns, now, id), &[]);
                save(txn, &s)?;
                Ok(s)
            })
        })
        .await
    }

    /// Reads a live schedule (404 `schedule_not_found` when absent or deleted).
    pub async fn describe_schedule(&self, ns: &str, id: &str) -> Result<ScheduleRecord> {
        let mut txn = self.inner.store.begin().await?;
        kernel::require_namespace(txn.as_mut(), ns).await?;
        match tables::get_snapshot::<ScheduleRecord>(txn.as_mut(), &schedule_key(ns, id)).await? {
            Some(s) if s.status != ScheduleStatus::Deleted => Ok(s),
            _ => Err(not_found(id)),
        }
    }

    /// One page of live schedules, newest first (`created_at` descending, then id).
    pub async fn list_schedules(
        &self,
        ns: &str,
        q: &ScheduleListQuery,
    ) -> Result<ScheduleListPage> {
        let mut txn = self.inner.store.begin().await?;
        kernel::require_namespace(txn.as_mut(), ns).await?;
        let page_size = q.page_size.clamp(1, MAX_LIST_PAGE);
        let base = Key::new(prefix::SCHEDULE_LIST).str(ns);
        let mut range: KeyRange = base.range();
        if let Some((created_at, anchor)) = &q.after {
            // A token whose anchor is gone or was re-created is stale.
            let current =
                tables::get_snapshot::<ScheduleRecord>(txn.as_mut(), &schedule_key(ns, anchor))
                    .await?;
            if current.is_none_or(|s| {
                s.created_at_ms != *created_at || s.status == ScheduleStatus::Deleted
            }) {
                return Err(Error::conflict(
                    "stale_schedule_page_token",
                    "the page token's anchor schedule was deleted or re-created; start the listing again",
                )
                .with("field", "next_page_token"));
            }
            range.start = std::ops::Bound::Excluded(list_key(ns, *created_at, anchor));
        }
        let mut found = Vec::new();
        'scan: loop {
            let batch = txn
                .get_range(&range, ReadOptions::limit(256).snapshot())
                .await?;
            let full = batch.len() == 256;
            for (key, _) in &batch {
                let mut r = KeyReader::new(key);
                let (Some(_), Some(_), Some(id)) = (r.str(), r.u64(), r.str()) else {
                    return Err(Error::corrupt("schedule list key"));
                };
                if let Some(s) =
                    tables::get_snapshot::<ScheduleRecord>(txn.as_mut(), &schedule_key(ns, &id))
                        .await?
                {
                    if matches(&s, q) {
                        found.push(s);
                        if found.len() > page_size {
                            break 'scan;
                        }
                    }
                }
            }
            match (full, batch.last()) {
                (true, Some((last, _))) => range.start = std::ops::Bound::Excluded(last.clone()),
                _ => break,
            }
        }
        let more = found.len() > page_size;
        found.truncate(page_size);
        let next = more
            .then(|| {
                found
                    .last()
                    .map(|s| (s.created_at_ms, s.schedule_id.clone()))
            })
            .flatten();
        Ok(ScheduleListPage {
            schedules: found,
            next,
        })
    }

    /// Replaces the fields `patch` carries; re-arms from now.
    pub async fn update_schedule(
        &self,
        ns: &str,
        id: &str,
        patch: SchedulePatch,
    ) -> Result<ScheduleRecord> {
        if let Some(attributes) = &patch.search_attributes {
            self.validate_search_attributes(ns, attributes).await?;
        }
        let now = self.now_ms();
        let request_id = ids::new_id(now);
        let (patch, request_id) = (&patch, &request_id);
        self.transact(move |tx| {
            Box::pin(async move {
                let txn = tx.txn.as_mut();
                let fx = &mut tx.fx;
                let mut s = load_live(txn, ns, id).await?;
                if receipt(&s, request_id).is_some() {
                    // Our own earlier attempt committed (commit-unknown retry).
                    return Ok(s);
                }
                s.last_request = Some(RequestReceipt {
                    request_id: request_id.clone(),
                    fires: Vec::new(),
                });
                let mut changed = Vec::new();
                if let Some(spec) = &patch.spec {
                    s.spec = spec.clone();
                    changed.push("spec");
                }
                if let Some(action) = &patch.action {
                    s.action = action.clone();
                    changed.push("action");
                }
                if let Some(p) = patch.overlap_policy {
                    s.overlap_policy = p;
                    changed.push("overlap_policy");
                }
                if let Some(j) = patch.jitter_seconds {
                    s.jitter_seconds = j;
                    changed.push("jitter_seconds");
                }
                if let Some(m) = patch.max_runs {
                    s.max_runs = Some(m);
                    s.remaining_actions = Some(m.saturating_sub(s.fires_count));
                    changed.push("max_runs");
                }
                if let Some(m) = &patch.memo {
                    s.memo = m.clone();
                    changed.push("memo");
                }
                if let Some(a) = &patch.search_attributes {
                    s.search_attributes = a.clone();
                    changed.push("search_attributes");
                }
                if let Some(n) = &patch.note {
                    s.note = Some(n.clone());
                    changed.push("note");
                }
                if let Some(c) = patch.catchup_window_seconds {
                    s.catchup_window_seconds = c;
                    changed.push("catchup_window_seconds");
                }
                s.updated_at_ms = now;
                if s.status == ScheduleStatus::Active {
                    // An occurrence already due but waiting out its jitter is kept unless the
                    // spec itself changed.
                    let from = match s.next_occurrence_ms {
                        Some(pending) if pending <= now && patch.spec.is_none() => pending - 1,
                        _ => now,
                    };
                    arm(txn, &mut s, from, fx)?;
                    drain(txn, &mut s, now, fx).await?;
                }
                let payload = json!({
                    "changed_fields": changed,
                    "spec": spec_json(&s.spec),
                    "action": action_json(&s.action),
                    "overlap_policy": s.overlap_policy.as_str(),
                    "next_fire_at": s.next_fire_at_ms.map(format_timestamp),
                    "command_context": command_context("update"),
                });
                record_event(txn, &mut s, "ScheduleUpdated", payload, None, now);
                save(txn, &s)?;
                Ok(s)
            })
        })
        .await
    }

    /// Pauses a schedule (no fires until resumed; idempotent). `note` replaces the note.
    pub async fn pause_schedule(
        &self,
        ns: &str,
        id: &str,
        note: Option<String>,
    ) -> Result<ScheduleRecord> {
        let now = self.now_ms();
        let note = &note;
        self.transact(move |tx| {
            Box::pin(async move {
                let txn = tx.txn.as_mut();
                let mut s = load_live(txn, ns, id).await?;
                if s.status == ScheduleStatus::Paused {
                    return Ok(s);
                }
                s.status = ScheduleStatus::Paused;
                s.paused_at_ms = Some(now);
                s.updated_at_ms = now;
                if let Some(n) = note {
                    s.note = Some(n.clone());
                }
                disarm(txn, &mut s);
                let payload = json!({
                    "reason": note,
                    "paused_at": format_timestamp(now),
                    "command_context": command_context("pause"),
                });
                record_event(txn, &mut s, "SchedulePaused", payload, None, now);
                save(txn, &s)?;
                Ok(s)
            })
        })
        .await
    }

    /// Resumes a paused schedule: the next fire is computed from now (the paused window is
    /// not caught up); a buffered fire starts if nothing is running. Idempotent.
    pub async fn resume_schedule(
        &self,
        ns: &str,
        id: &str,
        note: Option<String>,
    ) -> Result<ScheduleRecord> {
        let now = self.now_ms();
        let note = &note;
        self.transact(move |tx| {
            Box::pin(async move {
                let txn = tx.txn.as_mut();
                let fx = &mut tx.fx;
                let mut s = load_live(txn, ns, id).await?;
                if s.status == ScheduleStatus::Active {
                    return Ok(s);
                }
                s.status = ScheduleStatus::Active;
                s.paused_at_ms = None;
                s.updated_at_ms = now;
                if let Some(n) = note {
                    s.note = Some(n.clone());
                }
                arm(txn, &mut s, now, fx)?;
                drain(txn, &mut s, now, fx).await?;
                let payload = json!({
                    "next_fire_at": s.next_fire_at_ms.map(format_timestamp),
                    "reason": note,
                    "command_context": command_context("resume"),
                });
                record_event(txn, &mut s, "ScheduleResumed", payload, None, now);
                save(txn, &s)?;
                Ok(s)
            })
        })
        .await
    }

    /// Fires a schedule now (also when paused), under `overlap` or the schedule's policy.
    pub async fn trigger_schedule(
        &self,
        ns: &str,
        id: &str,
        overlap: Option<OverlapPolicy>,
    ) -> Result<TriggerResult> {
        let now = self.now_ms();
        let run_id = ids::new_id(now);
        let run_id = &run_id;
        self.transact(move |tx| {
            Box::pin(async move {
                let txn = tx.txn.as_mut();
                let fx = &mut tx.fx;
                let mut s = load_live(txn, ns, id).await?;
                if let Some(done) = receipt(&s, run_id) {
                    // Our own earlier attempt committed (commit-unknown retry).
                    let outcome = done
                        .fires
                        .first()
                        .map(FireOutcome::restore)
                        .unwrap_or(FireOutcome::BufferFull);
                    let result = TriggerResult {
                        schedule_id: id.to_string(),
                        outcome,
                        buffer_depth: s.buffer.len(),
                    };
                    return Ok(result);
                }
                let mut workflow_id = format!("{id}-{}", format_timestamp(now));
                let ikey = tables::instance_key(ns, &workflow_id);
                if tables::get::<InstanceRecord>(txn, &ikey).await?.is_some() {
                    // Two manual triggers in one microsecond: keep the ids apart.
                    workflow_id = format!("{workflow_id}-{}", s.trigger_count + 1);
                }
                drain(txn, &mut s, now, fx).await?;
                let fire = Fire {
                    occurrence_ms: now,
                    workflow_id,
                    run_id: run_id.clone(),
                    trigger: TriggerKind::Manual,
                    cron_expression: None,
                };
                let policy = overlap.unwrap_or(s.overlap_policy);
                let outcome = apply_fire(txn, &mut s, fire, policy, now, fx).await?;
                // A schedule whose runs were used up has no timer any more.
                if s.remaining_actions == Some(0) {
                    disarm(txn, &mut s);
                }
                s.last_request = Some(RequestReceipt {
                    request_id: run_id.clone(),
                    fires: vec![outcome.store(now)],
                });
                save(txn, &s)?;
                let result = TriggerResult {
                    schedule_id: id.to_string(),
                    outcome,
                    buffer_depth: s.buffer.len(),
                };
                Ok(result)
            })
        })
        .await
    }

    /// Fires every occurrence of the spec in `[start, end)` (also when paused), in order,
    /// under `overlap` or the schedule's policy. 422 `invalid_time_range` unless
    /// `end > start`; 422 `backfill_too_large` beyond [`MAX_BACKFILL_FIRES`] occurrences.
    pub async fn backfill_schedule(
        &self,
        ns: &str,
        id: &str,
        start_ms: Millis,
        end_ms: Millis,
        overlap: Option<OverlapPolicy>,
    ) -> Result<BackfillResult> {
        if end_ms <= start_ms {
            return Err(Error::reject(
                RejectKind::Invalid,
                "invalid_time_range",
                "end_time must be after start_time (the window is [start_time, end_time))",
            )
            .with(
                "errors",
                json!({"end_time": ["The end_time must be after the start_time."]}),
            ));
        }
        let s = self.describe_schedule(ns, id).await?;
        let Some(spec) = compile(&s) else {
            return Ok(BackfillResult {
                schedule_id: id.to_string(),
                fires: Vec::new(),
            });
        };
        let mut occurrences = Vec::new();
        let mut t = start_ms - 1;
        while let Some((at, source)) = spec.next_after(t) {
            if at >= end_ms {
                break;
            }
            if occurrences.len() == MAX_BACKFILL_FIRES {
                return Err(Error::reject(
                    RejectKind::Invalid,
                    "backfill_too_large",
                    format!("the window holds more than {MAX_BACKFILL_FIRES} occurrences; backfill smaller windows"),
                )
                .with("max_fires", MAX_BACKFILL_FIRES as u64));
            }
            occurrences.push((at, source, ids::new_id(self.now_ms())));
            t = at;
        }
        let mut fires = Vec::with_capacity(occurrences.len());
        for batch in occurrences.chunks(BACKFILL_BATCH) {
            let now = self.now_ms();
            let request_id = ids::new_id(now);
            let request_id = &request_id;
            let done = self
                .transact(move |tx| {
                    Box::pin(async move {
                        let txn = tx.txn.as_mut();
                        let fx = &mut tx.fx;
                        let mut s = load_live(txn, ns, id).await?;
                        if let Some(done) = receipt(&s, request_id) {
                            // Our own earlier attempt committed (commit-unknown retry).
                            let out = done
                                .fires
                                .iter()
                                .map(|f| BackfillFire {
                                    occurrence_ms: f.occurrence_ms,
                                    outcome: FireOutcome::restore(f),
                                })
                                .collect();
                            return Ok(out);
                        }
                        drain(txn, &mut s, now, fx).await?;
                        let policy = overlap.unwrap_or(s.overlap_policy);
                        let mut out = Vec::with_capacity(batch.len());
                        for (at, source, run_id) in batch {
                            let fire = Fire {
                                occurrence_ms: *at,
                                workflow_id: occurrence_workflow_id(id, *at),
                                run_id: run_id.clone(),
                                trigger: TriggerKind::Backfill,
                                cron_expression: source_cron(&s, Some(*source)),
                            };
                            let outcome = apply_fire(txn, &mut s, fire, policy, now, fx).await?;
                            out.push(BackfillFire {
                                occurrence_ms: *at,
                                outcome,
                            });
                        }
                        if s.remaining_actions == Some(0) {
                            disarm(txn, &mut s);
                        }
                        s.last_request = Some(RequestReceipt {
                            request_id: request_id.clone(),
                            fires: out
                                .iter()
                                .map(|f: &BackfillFire| f.outcome.store(f.occurrence_ms))
                                .collect(),
                        });
                        save(txn, &s)?;
                        Ok(out)
                    })
                })
                .await?;
            fires.extend(done);
        }
        Ok(BackfillResult {
            schedule_id: id.to_string(),
            fires,
        })
    }

    /// Soft-deletes a schedule: no more fires, gone from list and describe; its history
    /// stays readable. Runs it started are not touched.
    pub async fn delete_schedule(&self, ns: &str, id: &str) -> Result<()> {
        let now = self.now_ms();
        let request_id = ids::new_id(now);
        let request_id = &request_id;
        self.transact(move |tx| {
            Box::pin(async move {
                let txn = tx.txn.as_mut();
                kernel::require_namespace(txn, ns).await?;
                let mut s = match load(txn, ns, id).await? {
                    Some(s) if s.status != ScheduleStatus::Deleted => s,
                    // Our own earlier attempt committed (commit-unknown retry).
                    Some(s) if receipt(&s, request_id).is_some() => return Ok(()),
                    _ => return Err(not_found(id)),
                };
                s.last_request = Some(RequestReceipt {
                    request_id: request_id.clone(),
                    fires: Vec::new(),
                });
                disarm(txn, &mut s);
                s.status = ScheduleStatus::Deleted;
                s.deleted_at_ms = Some(now);
                s.updated_at_ms = now;
                s.buffer.clear();
                s.running.clear();
                txn.clear(&list_key(ns, s.created_at_ms, id));
                let payload = json!({
                    "reason": "deleted",
                    "deleted_at": format_timestamp(now),
                    "command_context": command_context("delete"),
                });
                record_event(txn, &mut s, "ScheduleDeleted", payload, None, now);
                save(txn, &s)?;
                Ok(())
            })
        })
        .await
    }

    /// One page of a schedule's audit history after `after_sequence` (also for a deleted
    /// schedule; 404 only when the id never existed).
    pub async fn schedule_history(
        &self,
        ns: &str,
        id: &str,
        after_sequence: u64,
        limit: usize,
    ) -> Result<HistoryPage> {
        let limit = limit.clamp(1, MAX_HISTORY_PAGE);
        let mut txn = self.inner.store.begin().await?;
        kernel::require_namespace(txn.as_mut(), ns).await?;
        if tables::get_snapshot::<ScheduleRecord>(txn.as_mut(), &schedule_key(ns, id))
            .await?
            .is_none()
        {
            return Err(not_found(id));
        }
        let base = Key::new(prefix::SCHEDULE_EVENT).str(ns).str(id);
        let mut range = base.range();
        range.start = std::ops::Bound::Excluded(event_key(ns, id, after_sequence));
        // A large event (an action with a big input) is split across values: read some
        // spare rows so that a page always holds whole events.
        let rows = txn
            .get_range(&range, ReadOptions::limit(limit + 1 + 64).snapshot())
            .await?;
        let (rows, cut) = tables::assemble(rows)?;
        let mut events = Vec::with_capacity(rows.len().min(limit));
        for (_, bytes) in rows.iter().take(limit) {
            events.push(tables::decode_record::<Value>(bytes)?);
        }
        let has_more = rows.len() > limit || cut;
        let next_cursor = if has_more {
            events.last().and_then(|e| e["sequence"].as_u64())
        } else {
            None
        };
        Ok(HistoryPage {
            events,
            has_more,
            next_cursor,
        })
    }
}
