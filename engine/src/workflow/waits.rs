//! What a run waits on besides activities and children: durable timers, the condition
//! wait and accepted updates; plus the non-blocking commands (side effects, version
//! markers, search-attribute and memo upserts).
//!
//! Sequence numbering (sdk-protocol §8.5): every sequenced command of a completion takes
//! `run.last_workflow_sequence + 1`, in command order, exactly as the SDK computes it.
//! A condition's timeout takes no sequence of its own: it is recorded as
//! `ConditionWaitTimedOut` at the wait's sequence, as the upstream server does (both SDKs
//! read it; the Rust SDK refuses a condition-timeout `TimerFired` that has no
//! `TimerScheduled`).
//!
//! Condition waits (sdk-protocol §8.4): the SDK re-sends `open_condition_wait` after every
//! wake that leaves the predicate false, and replay treats that chain of physical waits
//! as one logical wait. A reopen with the same key (or fingerprint) therefore keeps the
//! first open's deadline. A completion that does not reopen the open wait means the
//! predicate held: the wait and its timer end there.

use super::{
    ensure_workflow_task, format_timestamp, group_fields, history, ids, invalid_commands, json,
    merge, tables, Effects, Engine, Error, KvTxn, Map, Millis, Result, RunRecord, RunStatus,
    TaskRecord, TaskStatus, TimerAction, TimerKey, Value,
};
use crate::avro::{self, AvroValue};
use crate::kernel;
use crate::model::{
    ClosedTaskRecord, OpenCondition, OpenSignalWait, OpenTimer, UpdateRecord, UpdateStatus,
};
use crate::namespaces::{
    MAX_SEARCH_ATTRIBUTES, MAX_SEARCH_ATTRIBUTE_KEY_BYTES, MAX_SEARCH_ATTRIBUTE_VALUE_BYTES,
};

/// `timer_kind` of a workflow's own timers. Naming it keeps the SDK from reading a timer
/// that follows a condition wait as a legacy, metadata-poor condition timeout.
const WORKFLOW_TIMER_KIND: &str = "workflow_timer";
/// A condition timeout due while a workflow task is leased waits this long and looks
/// again: the leased task's completion may satisfy or reopen the wait, and a timeout
/// recorded behind the worker's back would contradict the commands it is about to send.
const CONDITION_TIMEOUT_RETRY_MS: Millis = 1_000;
/// Longest timer accepted (100 years), so fire times cannot overflow.
const MAX_DELAY_SECONDS: u64 = 100 * 365 * 86_400;
/// Most memo entries in one upsert, and most keys in a run's memo.
const MAX_MEMO_ENTRIES: usize = 100;
/// How long a closed activity's tombstone outlives its lease.
const TOMBSTONE_GRACE_MS: Millis = 60_000;

/// Whether `kind` is a command this module applies.
pub(super) fn handles(kind: &str) -> bool {
    matches!(
        kind,
        "start_timer"
            | "open_condition_wait"
            | "open_signal_wait"
            | "record_side_effect"
            | "record_version_marker"
            | "upsert_search_attributes"
            | "upsert_memo"
            | "complete_update"
            | "fail_update"
    )
}

fn next_sequence(run: &mut RunRecord) -> u64 {
    run.last_workflow_sequence += 1;
    run.last_workflow_sequence
}

/// A non-empty string field of a command.
pub(super) fn opt_str(cmd: &Map<String, Value>, key: &str) -> Option<String> {
    cmd.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Applies one command of a completion.
pub(super) async fn apply(
    txn: &mut dyn KvTxn,
    run: &mut RunRecord,
    kind: &str,
    cmd: &Map<String, Value>,
    task_id: &str,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    match kind {
        "start_timer" => start_timer(txn, run, cmd, task_id, now, fx),
        "open_condition_wait" => open_condition_wait(txn, run, cmd, task_id, now, fx),
        "open_signal_wait" => open_signal_wait(txn, run, cmd, task_id, now).await,
        "record_side_effect" => {
            let result = match cmd.get("result") {
                Some(v @ (Value::String(_) | Value::Object(_))) => v.clone(),
                _ => {
                    return Err(invalid_commands(
                        "record_side_effect needs a result (a payload blob or envelope)",
                    ))
                }
            };
            let sequence = next_sequence(run);
            let payload = json!({"sequence": sequence, "result": result, "payload_codec": "avro"});
            history::append(txn, run, "SideEffectRecorded", payload, now, Some(task_id));
            Ok(())
        }
        "record_version_marker" => {
            let change_id = opt_str(cmd, "change_id")
                .ok_or_else(|| invalid_commands("record_version_marker needs a change_id"))?;
            let int = |k: &str| cmd.get(k).and_then(Value::as_i64);
            let (Some(version), Some(min), Some(max)) =
                (int("version"), int("min_supported"), int("max_supported"))
            else {
                return Err(invalid_commands(
                    "record_version_marker needs integer version, min_supported and max_supported",
                ));
            };
            if !(min <= version && version <= max) {
                return Err(invalid_commands(
                    "record_version_marker needs min_supported <= version <= max_supported",
                ));
            }
            let sequence = next_sequence(run);
            let payload = json!({
                "sequence": sequence, "change_id": change_id, "version": version,
                "min_supported": min, "max_supported": max,
            });
            history::append(
                txn,
                run,
                "VersionMarkerRecorded",
                payload,
                now,
                Some(task_id),
            );
            Ok(())
        }
        "upsert_search_attributes" => {
            let Some(attributes) = cmd.get("attributes").and_then(Value::as_object) else {
                return Err(invalid_commands(
                    "upsert_search_attributes needs an attributes object",
                ));
            };
            let mut merged = run
                .search_attributes
                .as_object()
                .cloned()
                .unwrap_or_default();
            for (k, v) in attributes {
                check_upserted_attribute(k, v)?;
                if v.is_null() {
                    merged.remove(k);
                } else {
                    merged.insert(k.clone(), v.clone());
                }
            }
            if merged.len() > MAX_SEARCH_ATTRIBUTES {
                return Err(invalid_commands(format!(
                    "a run may carry at most {MAX_SEARCH_ATTRIBUTES} search attributes"
                ))
                .with("max_search_attributes", MAX_SEARCH_ATTRIBUTES as u64));
            }
            let sequence = next_sequence(run);
            run.search_attributes = Value::Object(merged.clone());
            let payload = json!({"sequence": sequence, "attributes": attributes, "merged": merged});
            history::append(
                txn,
                run,
                "SearchAttributesUpserted",
                payload,
                now,
                Some(task_id),
            );
            Ok(())
        }
        "upsert_memo" => upsert_memo(txn, run, cmd, task_id, now),
        "complete_update" | "fail_update" => {
            super::messages::finish_update(txn, run, kind, cmd, task_id, now, fx).await
        }
        other => Err(invalid_commands(format!(
            "unsupported command type '{other}'"
        ))),
    }
}

/// The advertised per-attribute limits (`max_search_attribute_key_length`,
/// `max_search_attribute_value_bytes`) on one upserted attribute; the refusal names the
/// limit by its `cluster/info` key. (Upserts are not checked against the namespace's
/// registry, unlike starts: workflows upsert ad-hoc attributes.)
fn check_upserted_attribute(name: &str, value: &Value) -> Result<()> {
    if name.is_empty() || name.len() > MAX_SEARCH_ATTRIBUTE_KEY_BYTES {
        return Err(invalid_commands(format!(
            "upsert_search_attributes: a search attribute name must be 1 to {MAX_SEARCH_ATTRIBUTE_KEY_BYTES} bytes"
        ))
        .with(
            "max_search_attribute_key_length",
            MAX_SEARCH_ATTRIBUTE_KEY_BYTES as u64,
        ));
    }
    let size = serde_json::to_vec(value).map_or(usize::MAX, |b| b.len());
    if size > MAX_SEARCH_ATTRIBUTE_VALUE_BYTES {
        return Err(invalid_commands(format!(
            "upsert_search_attributes: the value of '{name}' is {size} bytes; at most {MAX_SEARCH_ATTRIBUTE_VALUE_BYTES} are allowed"
        ))
        .with(
            "max_search_attribute_value_bytes",
            MAX_SEARCH_ATTRIBUTE_VALUE_BYTES as u64,
        ));
    }
    Ok(())
}

fn start_timer(
    txn: &mut dyn KvTxn,
    run: &mut RunRecord,
    cmd: &Map<String, Value>,
    task_id: &str,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    let delay_seconds = cmd
        .get("delay_seconds")
        .and_then(Value::as_u64)
        .filter(|d| *d <= MAX_DELAY_SECONDS)
        .ok_or_else(|| {
            invalid_commands("start_timer needs an integer delay_seconds between 0 and 100 years")
        })?;
    let sequence = next_sequence(run);
    let timer_id = ids::new_id(now);
    let fire_at_ms = now + delay_seconds as i64 * 1000;
    let group = group_fields(cmd);
    let payload = merge(
        json!({
            "sequence": sequence,
            "timer_id": timer_id,
            "delay_seconds": delay_seconds,
            "fire_at": format_timestamp(fire_at_ms),
            "timer_kind": WORKFLOW_TIMER_KIND,
        }),
        &group,
    );
    history::append(txn, run, "TimerScheduled", payload, now, Some(task_id));
    let action = TimerAction::WorkflowTimer {
        namespace: run.namespace.clone(),
        run_id: run.run_id.clone(),
        sequence,
    };
    let timer = kernel::put_timer(txn, fire_at_ms, &action, fx)?;
    run.waits.timers.insert(
        sequence,
        OpenTimer {
            timer_id,
            delay_seconds,
            timer,
            group: Value::Object(group),
        },
    );
    Ok(())
}

/// Whether an open wait and a new open are one logical wait, as the SDK decides it.
fn same_logical_wait(open: &OpenCondition, key: Option<&str>, fingerprint: Option<&str>) -> bool {
    (key.is_some() && open.condition_key.as_deref() == key)
        || (fingerprint.is_some()
            && open.condition_definition_fingerprint.as_deref() == fingerprint)
}

fn open_condition_wait(
    txn: &mut dyn KvTxn,
    run: &mut RunRecord,
    cmd: &Map<String, Value>,
    task_id: &str,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    let condition_key = opt_str(cmd, "condition_key");
    let fingerprint = opt_str(cmd, "condition_definition_fingerprint");
    let occurrence_id = opt_str(cmd, "condition_wait_occurrence_id");
    let timeout_seconds = match cmd.get("timeout_seconds") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|t| *t <= MAX_DELAY_SECONDS)
                .ok_or_else(|| {
                    invalid_commands("open_condition_wait timeout_seconds must be an integer >= 0")
                })?,
        ),
    };
    let sequence = next_sequence(run);
    let condition_wait_id = ids::new_id(now);
    let mut payload = merge(
        json!({
            "condition_wait_id": condition_wait_id,
            "sequence": sequence,
            "condition_key": condition_key,
            "condition_definition_fingerprint": fingerprint,
            "timeout_seconds": timeout_seconds,
        }),
        &group_fields(cmd),
    );
    if let Some(occurrence) = &occurrence_id {
        payload["condition_wait_occurrence_id"] = json!(occurrence);
    }
    history::append(txn, run, "ConditionWaitOpened", payload, now, Some(task_id));
    let previous = run.waits.condition.take();
    let timer = match previous {
        Some(open)
            if same_logical_wait(&open, condition_key.as_deref(), fingerprint.as_deref()) =>
        {
            open.timer
        }
        previous => {
            if let Some(timer) = previous.and_then(|p| p.timer) {
                txn.clear(&tables::timer_key(&timer));
            }
            match timeout_seconds {
                Some(t) => {
                    let action = TimerAction::ConditionTimeout {
                        namespace: run.namespace.clone(),
                        run_id: run.run_id.clone(),
                    };
                    Some(kernel::put_timer(txn, now + t as i64 * 1000, &action, fx)?)
                }
                None => None,
            }
        }
    };
    run.waits.condition = Some(OpenCondition {
        condition_wait_id,
        sequence,
        condition_key,
        condition_definition_fingerprint: fingerprint,
        condition_wait_occurrence_id: occurrence_id,
        timeout_seconds,
        opened_by_task: task_id.to_string(),
        timer,
    });
    Ok(())
}

/// `open_signal_wait` (the Rust SDK's `wait_signal`): records `SignalWaitOpened` at the
/// next sequence; the oldest buffered signal of the name, if any, is applied at once,
/// otherwise the next one recorded is (see [`record_signal`]).
async fn open_signal_wait(
    txn: &mut dyn KvTxn,
    run: &mut RunRecord,
    cmd: &Map<String, Value>,
    task_id: &str,
    now: Millis,
) -> Result<()> {
    let signal_name = opt_str(cmd, "signal_name")
        .ok_or_else(|| invalid_commands("open_signal_wait needs a signal_name"))?;
    let sequence = next_sequence(run);
    let wait = OpenSignalWait {
        signal_wait_id: ids::new_id(now),
        sequence,
        signal_name,
    };
    let payload = merge(
        json!({
            "sequence": sequence,
            "signal_wait_id": wait.signal_wait_id,
            "signal_name": wait.signal_name,
        }),
        &group_fields(cmd),
    );
    history::append(txn, run, "SignalWaitOpened", payload, now, Some(task_id));
    let tally = run
        .waits
        .signal_tallies
        .get(&wait.signal_name)
        .copied()
        .unwrap_or_default();
    if tally.received > tally.applied {
        let signal = nth_signal(txn, run, &wait.signal_name, tally.applied + 1).await?;
        apply_signal(txn, run, &wait, &signal, now);
        run.waits.signal_applied_in_completion = true;
    } else {
        run.waits.signal_waits.push(wait);
    }
    Ok(())
}

/// Records a `SignalReceived` and hands the signal to the oldest open wait for its name.
pub(crate) fn record_signal(txn: &mut dyn KvTxn, run: &mut RunRecord, payload: Value, now: Millis) {
    let name = payload["signal_name"].as_str().unwrap_or_default();
    run.waits
        .signal_tallies
        .entry(name.to_string())
        .or_default()
        .received += 1;
    let waiting = run
        .waits
        .signal_waits
        .iter()
        .position(|w| w.signal_name == name);
    let wait = waiting.map(|i| run.waits.signal_waits.remove(i));
    let applied = wait.as_ref().map(|_| payload.clone());
    history::append(txn, run, "SignalReceived", payload, now, None);
    if let (Some(wait), Some(signal)) = (wait, applied) {
        apply_signal(txn, run, &wait, &signal, now);
    }
}

/// Records `signal` (a `SignalReceived` payload) as applied to `wait`.
fn apply_signal(
    txn: &mut dyn KvTxn,
    run: &mut RunRecord,
    wait: &OpenSignalWait,
    signal: &Value,
    now: Millis,
) {
    run.waits
        .signal_tallies
        .entry(wait.signal_name.clone())
        .or_default()
        .applied += 1;
    let payload = json!({
        "sequence": wait.sequence,
        "signal_wait_id": wait.signal_wait_id,
        "signal_name": wait.signal_name,
        "signal_id": signal["signal_id"],
        "arguments": signal["arguments"],
        "payload_codec": signal["payload_codec"],
    });
    history::append(txn, run, "SignalApplied", payload, now, None);
}

/// The payload of the `n`th (1-based) `SignalReceived` of `name` in the run's history.
async fn nth_signal(txn: &mut dyn KvTxn, run: &RunRecord, name: &str, n: u64) -> Result<Value> {
    let mut seen = 0;
    let mut from = 1;
    while from <= run.last_event_seq {
        let page = history::read_page_in(
            txn,
            &run.namespace,
            &run.run_id,
            from,
            run.last_event_seq,
            500,
        )
        .await?;
        for raw in &page.events {
            let event: Value = serde_json::from_str(raw.get())
                .map_err(|_| Error::corrupt("undecodable history event"))?;
            if event["event_type"] == "SignalReceived" && event["payload"]["signal_name"] == name {
                seen += 1;
                if seen == n {
                    return Ok(event["payload"].clone());
                }
            }
        }
        if page.events.is_empty() {
            break;
        }
        from = page.last_seq + 1;
    }
    Err(Error::corrupt("a buffered signal is missing from history"))
}

/// The memo keys the SDK allows: `^(?!-?[0-9]+$)[A-Za-z0-9_.:-]{1,64}$`.
fn valid_memo_key(key: &str) -> bool {
    let charset = !key.is_empty()
        && key.len() <= 64
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
    let digits = key.strip_prefix('-').unwrap_or(key);
    let numeric = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
    charset && !numeric
}

fn upsert_memo(
    txn: &mut dyn KvTxn,
    run: &mut RunRecord,
    cmd: &Map<String, Value>,
    task_id: &str,
    now: Millis,
) -> Result<()> {
    let blob = cmd
        .get("entries")
        .filter(|e| e.get("codec").and_then(Value::as_str) == Some("avro"))
        .and_then(|e| e.get("blob"))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            invalid_commands("upsert_memo needs entries as an avro {codec, blob} envelope")
        })?;
    let entries = match avro::decode_blob(blob) {
        Ok(AvroValue::Map(entries)) if !entries.is_empty() => entries,
        Ok(_) => {
            return Err(invalid_commands(
                "upsert_memo entries must be a non-empty map",
            ))
        }
        Err(e) => return Err(invalid_commands(format!("upsert_memo entries: {e}"))),
    };
    if entries.len() > MAX_MEMO_ENTRIES {
        return Err(invalid_commands(format!(
            "upsert_memo carries at most {MAX_MEMO_ENTRIES} entries"
        )));
    }
    if let Some((bad, _)) = entries.iter().find(|(k, _)| !valid_memo_key(k)) {
        return Err(invalid_commands(format!("memo key '{bad}' is not allowed")));
    }
    // The merged memo, sorted by key like the SDK's canonical maps; null deletes.
    let base = match run.memo_blob.as_deref().map(avro::decode_blob) {
        Some(Ok(AvroValue::Map(entries))) => entries,
        _ => match AvroValue::from_json(&run.memo) {
            AvroValue::Map(entries) => entries,
            _ => Vec::new(),
        },
    };
    let mut merged: std::collections::BTreeMap<String, AvroValue> = base.into_iter().collect();
    for (k, v) in &entries {
        if *v == AvroValue::Null {
            merged.remove(k);
        } else {
            merged.insert(k.clone(), v.clone());
        }
    }
    if merged.len() > MAX_MEMO_ENTRIES {
        return Err(invalid_commands(format!(
            "a run's memo holds at most {MAX_MEMO_ENTRIES} keys"
        )));
    }
    let merged = AvroValue::Map(merged.into_iter().collect());
    let merged_json = merged.to_json();
    if let Err(e) = crate::model::check_memo_size(&merged_json) {
        return Err(invalid_commands(format!(
            "upsert_memo would grow the run's memo past {} bytes ({e})",
            crate::model::MAX_MEMO_BYTES
        ))
        .with("max_memo_bytes", crate::model::MAX_MEMO_BYTES as u64));
    }
    run.memo = merged_json;
    let merged_blob = avro::encode_blob(&merged);
    run.memo_blob = Some(merged_blob.clone());
    let sequence = next_sequence(run);
    // Replay requires both envelopes to be exactly `{codec, blob}`.
    let payload = json!({
        "sequence": sequence,
        "entries": {"codec": "avro", "blob": blob},
        "merged": {"codec": "avro", "blob": merged_blob},
    });
    history::append(txn, run, "MemoUpserted", payload, now, Some(task_id));
    Ok(())
}

/// Checks a completion against the task it completes: an update task (one carrying
/// `workflow_update_id`) may only finish that update, so the main body cannot advance.
pub(super) fn check_completion(task: &TaskRecord, commands: &[Value]) -> Result<()> {
    let Some(update_id) = task.workflow_update_id.as_deref() else {
        return Ok(());
    };
    for command in commands {
        let kind = command.get("type").and_then(Value::as_str).unwrap_or("");
        let target = command.get("update_id").and_then(Value::as_str);
        if !matches!(kind, "complete_update" | "fail_update") || target != Some(update_id) {
            return Err(invalid_commands(format!(
                "the task runs update '{update_id}': it may only carry complete_update or \
                 fail_update for that update"
            ))
            .with("workflow_update_id", update_id));
        }
    }
    Ok(())
}

/// Settles the run's waits after a completion's commands are applied, and tells whether
/// the run needs another workflow task even though history did not grow during the
/// lease: after an update task (so the main body sees the update), and while accepted
/// updates wait for a task of their own.
pub(super) fn end_completion(txn: &mut dyn KvTxn, run: &mut RunRecord, task: &TaskRecord) -> bool {
    if task.workflow_update_id.is_none() {
        // The main body ran: a condition wait it did not reopen was satisfied.
        if run
            .waits
            .condition
            .as_ref()
            .is_some_and(|c| c.opened_by_task != task.task_id)
        {
            if let Some(timer) = run.waits.condition.take().and_then(|c| c.timer) {
                txn.clear(&tables::timer_key(&timer));
            }
        }
    }
    needs_task(run, task)
}

/// Whether the run needs a new workflow task after `task` closed, besides history growth.
pub(super) fn needs_task(run: &RunRecord, task: &TaskRecord) -> bool {
    task.workflow_update_id.is_some()
        || !run.waits.pending_updates.is_empty()
        || run.waits.signal_applied_in_completion
}

/// Ends the run's waits when it closes: deletes timer rows, fails accepted updates and
/// tombstones leased activity attempts (their tasks are about to be deleted).
pub(super) async fn on_close(
    txn: &mut dyn KvTxn,
    run: &mut RunRecord,
    status: RunStatus,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    let waits = std::mem::take(&mut run.waits);
    for open in waits.timers.values() {
        txn.clear(&tables::timer_key(&open.timer));
    }
    if let Some(timer) = waits.condition.and_then(|c| c.timer) {
        txn.clear(&tables::timer_key(&timer));
    }
    for update_id in waits.pending_updates {
        let key = super::messages::update_key(&run.namespace, &run.run_id, &update_id);
        if let Some(mut update) = tables::get::<UpdateRecord>(txn, &key).await? {
            update.status = UpdateStatus::Failed;
            update.failure_message = Some(format!(
                "the workflow run closed ({}) before the update completed",
                status.as_str()
            ));
            update.failure_type = Some("WorkflowRunClosed".into());
            update.closed_at_ms = Some(now);
            tables::put(txn, &key, &update)?;
            fx.raise(crate::kernel::Event::UpdateClosed {
                namespace: run.namespace.clone(),
                run_id: run.run_id.clone(),
                update_id: update_id.clone(),
            });
            fx.updates.push(update_id);
        }
    }
    for task_id in &run.open_activities {
        let Some(task) = tables::get::<TaskRecord>(txn, &tables::task_key(task_id)).await? else {
            continue;
        };
        let Some(lease) = task
            .lease
            .as_ref()
            .filter(|_| task.status == TaskStatus::Leased)
        else {
            continue;
        };
        let tombstone = ClosedTaskRecord {
            task_id: task_id.clone(),
            namespace: run.namespace.clone(),
            run_id: run.run_id.clone(),
            lease_owner: lease.owner.clone(),
            attempt_id: task.activity.as_ref().and_then(|a| a.attempt_id.clone()),
            run_status: status,
        };
        tables::put(txn, &closed_task_key(task_id), &tombstone)?;
        let forget = TimerAction::ForgetClosedTask {
            task_id: task_id.clone(),
        };
        kernel::put_timer(
            txn,
            lease.expires_at_ms.max(now) + TOMBSTONE_GRACE_MS,
            &forget,
            fx,
        )?;
    }
    Ok(())
}

/// Key of an activity task's tombstone.
pub(crate) fn closed_task_key(task_id: &str) -> Vec<u8> {
    crate::keys::Key::new(crate::keys::prefix::CLOSED_TASK)
        .str(task_id)
        .into_bytes()
}

/// Fires one of the wait timers (idempotent: a stale timer finds nothing to do).
pub(crate) async fn fire(
    txn: &mut dyn KvTxn,
    action: TimerAction,
    timer: &TimerKey,
    now: Millis,
    fx: &mut Effects,
) -> Result<()> {
    match action {
        TimerAction::WorkflowTimer {
            namespace,
            run_id,
            sequence,
        } => {
            let key = tables::run_key(&namespace, &run_id);
            let Some(mut run) = tables::get::<RunRecord>(txn, &key).await? else {
                return Ok(());
            };
            if run.status.is_terminal()
                || run.waits.timers.get(&sequence).map(|t| &t.timer) != Some(timer)
            {
                return Ok(());
            }
            let open = run
                .waits
                .timers
                .remove(&sequence)
                .expect("invariant: checked present above");
            let payload = merge(
                json!({
                    "sequence": sequence,
                    "timer_id": open.timer_id,
                    "delay_seconds": open.delay_seconds,
                    "fire_at": format_timestamp(open.timer.fire_at_ms),
                    "fired_at": format_timestamp(now),
                    "timer_kind": WORKFLOW_TIMER_KIND,
                }),
                open.group.as_object().unwrap_or(&Map::new()),
            );
            history::append(txn, &mut run, "TimerFired", payload, now, None);
            ensure_workflow_task(txn, &mut run, now, fx)?;
            tables::put(txn, &key, &run)
        }
        TimerAction::ConditionTimeout { namespace, run_id } => {
            let key = tables::run_key(&namespace, &run_id);
            let Some(mut run) = tables::get::<RunRecord>(txn, &key).await? else {
                return Ok(());
            };
            let current = run
                .waits
                .condition
                .as_ref()
                .is_some_and(|c| c.timer.as_ref() == Some(timer));
            if run.status.is_terminal() || !current {
                return Ok(());
            }
            if let Some(task_id) = run.workflow_task.clone() {
                let task = tables::get::<TaskRecord>(txn, &tables::task_key(&task_id)).await?;
                if task.is_some_and(|t| t.status == TaskStatus::Leased) {
                    let action = TimerAction::ConditionTimeout {
                        namespace: namespace.clone(),
                        run_id: run_id.clone(),
                    };
                    let next =
                        kernel::put_timer(txn, now + CONDITION_TIMEOUT_RETRY_MS, &action, fx)?;
                    if let Some(c) = run.waits.condition.as_mut() {
                        c.timer = Some(next);
                    }
                    return tables::put(txn, &key, &run);
                }
            }
            let wait = run
                .waits
                .condition
                .take()
                .expect("invariant: checked present above");
            // The wait's own sequence: the timeout takes no command slot.
            let mut payload = json!({
                "sequence": wait.sequence,
                "timer_id": timer.timer_id,
                "condition_wait_id": wait.condition_wait_id,
                "condition_key": wait.condition_key,
                "condition_definition_fingerprint": wait.condition_definition_fingerprint,
                "timeout_seconds": wait.timeout_seconds,
                "timed_out_at": format_timestamp(now),
            });
            if let Some(occurrence) = &wait.condition_wait_occurrence_id {
                payload["condition_wait_occurrence_id"] = json!(occurrence);
            }
            history::append(txn, &mut run, "ConditionWaitTimedOut", payload, now, None);
            ensure_workflow_task(txn, &mut run, now, fx)?;
            tables::put(txn, &key, &run)
        }
        TimerAction::ForgetClosedTask { task_id } => {
            txn.clear(&closed_task_key(&task_id));
            Ok(())
        }
        _ => Ok(()),
    }
}

impl Engine {
    /// The tombstone of an activity task deleted with its closed run, if the caller held
    /// its lease: the attempt should stop (`cancel_requested` for a cancelled run).
    pub async fn closed_activity_task(
        &self,
        ns: &str,
        task_id: &str,
        owner: &str,
        attempt_id: &str,
    ) -> Result<Option<ClosedTaskRecord>> {
        let mut txn = self.inner.store.begin().await?;
        let found: Option<ClosedTaskRecord> =
            tables::get_snapshot(txn.as_mut(), &closed_task_key(task_id)).await?;
        Ok(found.filter(|t| {
            t.namespace == ns
                && t.lease_owner == owner
                && t.attempt_id.as_deref().is_none_or(|a| a == attempt_id)
        }))
    }
}

/// The signal, query and update names the run's workflow type declared on its queue.
pub(crate) async fn declared_contract(
    txn: &mut dyn KvTxn,
    run: &RunRecord,
) -> Result<Option<crate::model::CommandContract>> {
    super::messages::contract(txn, run).await
}
