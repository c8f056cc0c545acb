//! Read-only views of one run for operators and replay tooling: the history export bundle
//! (`durable-workflow.v2.history-export`, schema version 1) and the bounded debug facts.
//!
//! The bundle's integrity checksum is the SHA-256 of its canonical JSON without the
//! `integrity` member: objects with keys sorted recursively, no whitespace, non-ASCII
//! characters escaped as UTF-16 `\uXXXX` (lowercase hex) and floats written the way the
//! SDK's `verify_history_bundle` re-encodes them (`json-recursive-ksort-v1`).

use crate::kernel;
use sha2::{Digest, Sha256};

use super::{
    format_timestamp, history, json, tables, Engine, Error, InstanceRecord, KvTxn, Millis, Result,
    RunRecord, RunStatus, TaskKind, TaskRecord, TaskStatus, TimerKey, Value,
};
use crate::storage::KvStore;

/// Events the debug view scans from the end of history for recent failures.
const DEBUG_TAIL_EVENTS: u64 = 200;
/// Recent failures the debug view reports at most.
const DEBUG_MAX_FAILURES: usize = 10;

/// The debug document of a run (bounded diagnostic facts).
pub type DebugView = Value;

/// Everything the views read, from one snapshot.
struct Snapshot {
    instance: InstanceRecord,
    run: RunRecord,
    workflow_task: Option<TaskRecord>,
    activities: Vec<TaskRecord>,
}

async fn load(
    txn: &mut dyn KvTxn,
    ns: &str,
    workflow_id: &str,
    run_id: Option<&str>,
) -> Result<Snapshot> {
    kernel::require_namespace(txn, ns).await?;
    let instance: InstanceRecord =
        tables::get_snapshot(txn, &tables::instance_key(ns, workflow_id))
            .await?
            .ok_or_else(|| {
                Error::not_found(
                    "instance_not_found",
                    format!("workflow '{workflow_id}' does not exist"),
                )
            })?;
    let run_id = run_id.unwrap_or(&instance.current_run_id).to_string();
    let run: RunRecord = tables::get_snapshot::<RunRecord>(txn, &tables::run_key(ns, &run_id))
        .await?
        .filter(|r| r.workflow_id == workflow_id)
        .ok_or_else(|| {
            Error::not_found(
                "run_not_found",
                format!("run '{run_id}' of workflow '{workflow_id}' does not exist"),
            )
        })?;
    let workflow_task = match &run.workflow_task {
        Some(id) => tables::get_snapshot::<TaskRecord>(txn, &tables::task_key(id)).await?,
        None => None,
    };
    let mut activities = Vec::new();
    for id in &run.open_activities {
        if let Some(task) = tables::get_snapshot::<TaskRecord>(txn, &tables::task_key(id)).await? {
            activities.push(task);
        }
    }
    Ok(Snapshot {
        instance,
        run,
        workflow_task,
        activities,
    })
}

fn ts(ms: Option<Millis>) -> Value {
    ms.map(format_timestamp).map_or(Value::Null, Value::from)
}

fn task_json(task: &TaskRecord) -> Value {
    let lease = task.lease.as_ref();
    let mut v = json!({
        "task_id": task.task_id,
        "task_type": match task.kind { TaskKind::Workflow => "workflow", TaskKind::Activity => "activity" },
        "status": task.status,
        "task_queue": task.task_queue,
        "type_name": task.type_name,
        "lease_attempt": task.attempt,
        "ready_at": format_timestamp(task.ready_at_ms),
        "lease_owner": lease.map(|l| l.owner.clone()),
        "lease_expires_at": ts(lease.map(|l| l.expires_at_ms)),
        "backoff_until": ts(task.backoff_timer.as_ref().map(|t| t.fire_at_ms)),
    });
    let obj = v.as_object_mut().expect("invariant: built as an object");
    match &task.activity {
        None => {
            obj.insert("failures".into(), json!(task.failures));
            obj.insert("history_seen".into(), json!(task.history_seen));
        }
        Some(a) => {
            let t = &a.timeouts;
            let at = |k: &Option<TimerKey>| ts(k.as_ref().map(|k| k.fire_at_ms));
            obj.insert(
                "activity_execution_id".into(),
                json!(a.activity_execution_id),
            );
            obj.insert("sequence".into(), json!(a.sequence));
            obj.insert("attempt_number".into(), json!(a.attempt_number));
            obj.insert("activity_attempt_id".into(), json!(a.attempt_id));
            obj.insert(
                "scheduled_at".into(),
                json!(format_timestamp(a.scheduled_at_ms)),
            );
            obj.insert("last_heartbeat_at".into(), ts(t.last_heartbeat_at_ms));
            obj.insert(
                "heartbeat_details".into(),
                a.heartbeat_details.clone().unwrap_or(Value::Null),
            );
            obj.insert(
                "deadlines".into(),
                json!({
                    "schedule_to_start": at(&t.schedule_to_start_timer),
                    "start_to_close": at(&t.start_to_close_timer),
                    "schedule_to_close": at(&t.schedule_to_close_timer),
                    "heartbeat": ts(t.heartbeat_deadline_ms),
                }),
            );
        }
    }
    v
}

/// History events `from..=through`, parsed.
async fn events_between(
    store: &dyn KvStore,
    ns: &str,
    run_id: &str,
    mut from: u64,
    through: u64,
) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    while from <= through {
        let page = history::read_page(store, ns, run_id, from, through, 1000).await?;
        if page.events.is_empty() {
            break;
        }
        for raw in page.events {
            out.push(serde_json::from_str::<Value>(raw.get()).map_err(Error::corrupt)?);
        }
        from = page.last_seq + 1;
        if !page.more {
            break;
        }
    }
    Ok(out)
}

/// An event as the export bundle carries it: its type under `type` alone. The Python
/// SDK's bundle verifier requires `type`; the Rust SDK reads `type` as an alias of
/// `event_type` and refuses an event with both.
fn exported_event(mut event: Value) -> Value {
    if let Some(map) = event.as_object_mut() {
        if let Some(kind) = map.remove("event_type") {
            map.insert("type".into(), kind);
        }
    }
    event
}

fn is_failure_event(event_type: &str) -> bool {
    event_type.ends_with("Failed") || event_type.ends_with("TimedOut")
}

fn failure_json(event: &Value) -> Value {
    let p = &event["payload"];
    json!({
        "sequence": event["sequence"],
        "event_type": event["event_type"],
        "recorded_at": event["recorded_at"],
        "message": p.get("message").cloned().unwrap_or(Value::Null),
        "exception_class": p.get("exception_class").cloned().unwrap_or(Value::Null),
        "failure_category": p.get("failure_category").cloned().unwrap_or(Value::Null),
        "timeout_kind": p.get("timeout_kind").cloned().unwrap_or(Value::Null),
        "workflow_sequence": p.get("sequence").cloned().unwrap_or(Value::Null),
    })
}

/// What the run is waiting on, in one word.
fn liveness(s: &Snapshot, now: Millis) -> &'static str {
    if s.run.status.is_terminal() {
        return "closed";
    }
    if let Some(task) = &s.workflow_task {
        return match task.status {
            TaskStatus::Ready => "workflow_task_ready",
            TaskStatus::Backoff => "workflow_task_retry_backoff",
            TaskStatus::Leased if task.lease.as_ref().is_some_and(|l| l.expires_at_ms <= now) => {
                "workflow_task_lease_expired"
            }
            TaskStatus::Leased => "workflow_task_leased",
        };
    }
    if s.run.workflow_task.is_some() {
        return "workflow_task_missing";
    }
    if !s.run.open_activities.is_empty() {
        return "waiting_for_activity";
    }
    if !s.run.lifecycle.open_children.is_empty() {
        return "waiting_for_child";
    }
    "waiting"
}

impl Engine {
    /// The history export bundle of one run.
    pub async fn export_history(&self, ns: &str, workflow_id: &str, run_id: &str) -> Result<Value> {
        let snap = {
            let mut txn = self.inner.store.begin().await?;
            load(txn.as_mut(), ns, workflow_id, Some(run_id)).await?
        };
        let run = &snap.run;
        let events = events_between(
            self.inner.store.as_ref(),
            ns,
            &run.run_id,
            1,
            run.last_event_seq,
        )
        .await?;
        let now = self.now_ms();
        let started = events.first().map(|e| &e["payload"]);
        let input = started
            .and_then(|p| p.get("input"))
            .cloned()
            .unwrap_or(Value::Null);
        let close_seq = run.lifecycle.close_event_seq.unwrap_or(run.last_event_seq);
        let close = events
            .iter()
            .find(|e| e["sequence"].as_u64() == Some(close_seq) && run.status.is_terminal())
            .map(|e| &e["payload"]);
        let output = if run.status == RunStatus::Completed {
            close
                .and_then(|p| p.get("output"))
                .cloned()
                .unwrap_or(Value::Null)
        } else {
            Value::Null
        };
        let mut activities: Vec<Value> = Vec::new();
        let mut children: Vec<Value> = Vec::new();
        let mut failures: Vec<Value> = Vec::new();
        for e in &events {
            let kind = e["event_type"].as_str().unwrap_or("");
            let p = &e["payload"];
            match kind {
                "ActivityScheduled" => activities.push(json!({
                    "activity_execution_id": p["activity_execution_id"],
                    "sequence": p["sequence"],
                    "activity_type": p["activity_type"],
                    "status": "scheduled",
                    "scheduled_event_sequence": e["sequence"],
                })),
                "ActivityCompleted" | "ActivityFailed" | "ActivityTimedOut"
                | "ActivityCancelled" => {
                    let status = match kind {
                        "ActivityCompleted" => "completed",
                        "ActivityFailed" => "failed",
                        "ActivityTimedOut" => "timed_out",
                        _ => "cancelled",
                    };
                    if let Some(a) = activities
                        .iter_mut()
                        .find(|a| a["activity_execution_id"] == p["activity_execution_id"])
                    {
                        a["status"] = json!(status);
                        a["attempt_number"] = p["attempt_number"].clone();
                        a["closed_event_sequence"] = e["sequence"].clone();
                    }
                }
                "ChildWorkflowScheduled" => children.push(json!({
                    "sequence": p["sequence"],
                    "child_workflow_instance_id": p["child_workflow_instance_id"],
                    "child_workflow_run_id": p["child_workflow_run_id"],
                    "child_workflow_type": p["child_workflow_type"],
                    "parent_close_policy": p["parent_close_policy"],
                    "status": "running",
                })),
                "ChildRunCompleted" | "ChildRunFailed" | "ChildRunCancelled"
                | "ChildRunTerminated" => {
                    if let Some(c) = children.iter_mut().find(|c| c["sequence"] == p["sequence"]) {
                        c["status"] = p["child_status"].clone();
                        c["closed_run_id"] = p["child_workflow_run_id"].clone();
                    }
                }
                _ => {}
            }
            if is_failure_event(kind) {
                failures.push(failure_json(e));
            }
        }
        let mut tasks: Vec<Value> = snap.workflow_task.iter().map(task_json).collect();
        tasks.extend(snap.activities.iter().map(task_json));
        let mut timers = Vec::new();
        if let Some(t) = &run.deadline_timer {
            timers.push(json!({"timer_kind": "run_deadline", "fire_at": format_timestamp(t.fire_at_ms), "status": "pending"}));
        }
        let parents: Vec<Value> = run
            .lifecycle
            .parent
            .iter()
            .map(|p| {
                json!({
                    "parent_workflow_instance_id": p.workflow_id,
                    "parent_workflow_run_id": p.run_id,
                    "parent_sequence": p.sequence,
                    "link_type": "child_workflow",
                })
            })
            .chain(run.lifecycle.continued_from_run_id.iter().map(|r| {
                json!({"parent_workflow_instance_id": run.workflow_id, "parent_workflow_run_id": r, "link_type": "continue_as_new"})
            }))
            .collect();
        if let Some(next) = &run.lifecycle.continued_to_run_id {
            children.push(json!({
                "child_workflow_instance_id": run.workflow_id,
                "child_workflow_run_id": next,
                "link_type": "continue_as_new",
            }));
        }
        let avro_entry = |path: &str, available: bool| json!({"path": path, "available": available, "codec": "avro", "redacted": false, "avro_framing": "single_object"});
        let mut bundle = json!({
            "schema": "durable-workflow.v2.history-export",
            "schema_version": 1,
            "exported_at": format_timestamp(now),
            "dedupe_key": format!("{ns}:{}:{}:{}", run.workflow_id, run.run_id, run.last_event_seq),
            "history_complete": run.status.is_terminal(),
            "workflow": {
                "instance_id": run.workflow_id,
                "run_id": run.run_id,
                "run_number": run.run_number,
                "is_current_run": snap.instance.current_run_id == run.run_id,
                "current_run_id": snap.instance.current_run_id,
                "current_run_source": "instance",
                "workflow_type": run.workflow_type,
                "workflow_class": null,
                "business_key": null,
                "visibility_labels": [],
                "memo": if run.memo.is_object() { run.memo.clone() } else { json!({}) },
                "search_attributes": if run.search_attributes.is_object() { run.search_attributes.clone() } else { json!({}) },
                "status": run.status.as_str(),
                "status_bucket": run.status.bucket(),
                "closed_reason": run.closed_reason,
                "last_history_sequence": run.last_event_seq,
                "namespace": run.namespace,
                "task_queue": run.task_queue,
                "run_count": snap.instance.run_count,
                "started_at": format_timestamp(run.started_at_ms),
                "closed_at": ts(run.closed_at_ms),
                "archived_at": ts(run.lifecycle.archived_at_ms),
            },
            "payloads": {
                "codec": "avro",
                "arguments": {"available": !input.is_null(), "data": input},
                "output": {"available": !output.is_null(), "data": output},
            },
            "summary": {
                "history_event_count": events.len(),
                "open_task_count": tasks.len(),
                "failure_count": failures.len(),
            },
            "selected_run": {
                "waits_projection_source": null,
                "timeline_projection_source": null,
                "timers_projection_source": "run_record",
                "lineage_projection_source": "run_record",
            },
            "history_events": events.into_iter().map(exported_event).collect::<Vec<_>>(),
            "commands": [],
            "signals": [],
            "updates": [],
            "tasks": tasks,
            "activities": activities,
            "timers": timers,
            "failures": failures,
            "links": {"projection_source": "run_record", "parents": parents, "children": children},
            "codec_schemas": {},
            "payload_manifest": {
                "version": 1,
                "entries": [
                    avro_entry("payloads.arguments", !input.is_null()),
                    avro_entry("payloads.output", !output.is_null()),
                ],
            },
            "redaction": {"applied": false, "paths": []},
        });
        let checksum = checksum(&bundle);
        bundle["integrity"] = json!({
            "canonicalization": "json-recursive-ksort-v1",
            "checksum_algorithm": "sha256",
            "checksum": checksum,
            "signature": null,
        });
        Ok(bundle)
    }

    /// Bounded diagnostic facts about a run (the current one when `run_id` is `None`).
    pub async fn debug_run(
        &self,
        ns: &str,
        workflow_id: &str,
        run_id: Option<&str>,
        include_last_event_payload: bool,
    ) -> Result<DebugView> {
        let mut txn = self.inner.store.begin().await?;
        let snap = load(txn.as_mut(), ns, workflow_id, run_id).await?;
        let run = &snap.run;
        let now = self.now_ms();
        let from = run
            .last_event_seq
            .saturating_sub(DEBUG_TAIL_EVENTS - 1)
            .max(1);
        let tail = events_between(
            self.inner.store.as_ref(),
            ns,
            &run.run_id,
            from,
            run.last_event_seq,
        )
        .await?;
        let recent_failures: Vec<Value> = tail
            .iter()
            .rev()
            .filter(|e| is_failure_event(e["event_type"].as_str().unwrap_or("")))
            .take(DEBUG_MAX_FAILURES)
            .map(failure_json)
            .collect();
        let last_event = tail.last().map(|e| {
            let mut v = json!({
                "sequence": e["sequence"],
                "event_type": e["event_type"],
                "recorded_at": e["recorded_at"],
            });
            if include_last_event_payload {
                v["payload"] = e["payload"].clone();
            }
            v
        });
        let mut children = Vec::new();
        for c in &run.lifecycle.open_children {
            let current = tables::get_snapshot::<InstanceRecord>(
                txn.as_mut(),
                &tables::instance_key(ns, &c.workflow_id),
            )
            .await?;
            let child_run = match &current {
                Some(i) => {
                    tables::get_snapshot::<RunRecord>(
                        txn.as_mut(),
                        &tables::run_key(ns, &i.current_run_id),
                    )
                    .await?
                }
                None => None,
            };
            children.push(json!({
                "sequence": c.sequence,
                "workflow_id": c.workflow_id,
                "workflow_type": c.workflow_type,
                "parent_close_policy": c.parent_close_policy,
                "current_run_id": child_run.as_ref().map(|r| r.run_id.clone()),
                "status": child_run.as_ref().map(|r| r.status.as_str()),
            }));
        }
        let mut timers = Vec::new();
        if let Some(t) = &run.deadline_timer {
            timers.push(
                json!({"timer_kind": "run_deadline", "fire_at": format_timestamp(t.fire_at_ms)}),
            );
        }
        for a in &snap.activities {
            if let Some(state) = &a.activity {
                for t in state.timeouts.timers() {
                    timers.push(json!({"timer_kind": "activity_timeout", "task_id": a.task_id, "fire_at": format_timestamp(t.fire_at_ms)}));
                }
            }
        }
        Ok(json!({
            "workflow_id": run.workflow_id,
            "run_id": run.run_id,
            "namespace": run.namespace,
            "workflow_type": run.workflow_type,
            "run_number": run.run_number,
            "run_count": snap.instance.run_count,
            "is_current_run": snap.instance.current_run_id == run.run_id,
            "status": run.status.as_str(),
            "status_bucket": run.status.bucket(),
            "closed_reason": run.closed_reason,
            "liveness_state": liveness(&snap, now),
            "run": {
                "started_at": format_timestamp(run.started_at_ms),
                "closed_at": ts(run.closed_at_ms),
                "archived_at": ts(run.lifecycle.archived_at_ms),
                "last_progress_at": format_timestamp(run.last_progress_at_ms),
                "history_event_count": run.last_event_seq,
                "last_workflow_sequence": run.last_workflow_sequence,
                "execution_deadline_at": ts(run.execution_deadline_ms),
                "run_deadline_at": ts(run.run_deadline_ms),
                "task_queue": run.task_queue,
                "continued_from_run_id": run.lifecycle.continued_from_run_id,
                "continued_to_run_id": run.lifecycle.continued_to_run_id,
            },
            "parent": run.lifecycle.parent.as_ref().map(|p| json!({
                "workflow_id": p.workflow_id, "run_id": p.run_id, "sequence": p.sequence,
            })),
            "workflow_task": snap.workflow_task.as_ref().map(task_json),
            "activities": snap.activities.iter().map(task_json).collect::<Vec<_>>(),
            "children": children,
            "timers": timers,
            "recent_failures": recent_failures,
            "last_event": last_event,
            "limits": {
                "recent_events_scanned": tail.len(),
                "max_recent_failures": DEBUG_MAX_FAILURES,
            },
            "server_time": format_timestamp(now),
        }))
    }
}

/// The bundle checksum: SHA-256 (lowercase hex) of the canonical JSON without `integrity`.
pub fn checksum(bundle: &Value) -> String {
    let mut text = String::new();
    match bundle {
        Value::Object(map) => {
            let mut stripped = map.clone();
            stripped.remove("integrity");
            canonical(&Value::Object(stripped), &mut text);
        }
        other => canonical(other, &mut text),
    }
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes `value` as `json-recursive-ksort-v1` canonical JSON.
pub fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => out.push_str(&i.to_string()),
            (_, Some(u), _) => out.push_str(&u.to_string()),
            (_, _, Some(f)) => out.push_str(&canonical_float(f)),
            _ => out.push_str(&n.to_string()),
        },
        Value::String(s) => canonical_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            // Byte order of UTF-8 keys equals code-point order, which is the verifier's.
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_string(key, out);
                out.push(':');
                canonical(&map[*key], out);
            }
            out.push('}');
        }
    }
}

fn canonical_string(s: &str, out: &mut String) {
    use std::fmt::Write as _;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if c.is_ascii() => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

/// A float as Python's `repr` then the verifier's PHP-style rewrite print it: fixed
/// notation with a fraction for decimal exponents -4..=16, otherwise `d.ddde±x`.
fn canonical_float(f: f64) -> String {
    if !f.is_finite() {
        return "null".to_string();
    }
    // `{:e}` gives the shortest round-trip digits, e.g. `-1.5e-7`.
    let sci = format!("{f:e}");
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if (-4..17).contains(&exponent) {
        let fixed = if exponent >= 0 {
            let int_len = exponent as usize + 1;
            if digits.len() <= int_len {
                format!("{digits}{}.0", "0".repeat(int_len - digits.len()))
            } else {
                format!("{}.{}", &digits[..int_len], &digits[int_len..])
            }
        } else {
            format!("0.{}{digits}", "0".repeat((-exponent - 1) as usize))
        };
        format!("{sign}{fixed}")
    } else {
        let mantissa = if mantissa.contains('.') {
            mantissa.to_string()
        } else {
            format!("{mantissa}.0")
        };
        format!("{sign}{mantissa}e{exponent:+}")
    }
}

#[cfg(test)]
mod tests {
    use super::{canonical, canonical_float, checksum, json, Value};

    fn canon(v: Value) -> String {
        let mut s = String::new();
        canonical(&v, &mut s);
        s
    }

    #[test]
    fn canonical_json_sorts_keys_and_escapes_like_the_sdk_verifier() {
        assert_eq!(
            canon(json!({"b": [1, {"d": true, "c": null}], "a": "x\"é😀\n\u{7f}"})),
            r#"{"a":"x\"\u00e9\ud83d\ude00\n\u007f","b":[1,{"c":null,"d":true}]}"#
                .replace("\\u007f", "\u{7f}")
        );
    }

    #[test]
    fn canonical_floats_follow_python_repr_and_the_php_rewrite() {
        for (f, text) in [
            (1.5, "1.5"),
            (100.0, "100.0"),
            (0.0001, "0.0001"),
            (1.5e-5, "1.5e-5"),
            (1e16, "10000000000000000.0"),
            (1e17, "1.0e+17"),
            (-2.25e20, "-2.25e+20"),
            (0.0, "0.0"),
        ] {
            assert_eq!(canonical_float(f), text, "{f}");
        }
    }

    #[test]
    fn checksum_ignores_the_integrity_member() {
        let a = json!({"x": 1, "integrity": {"checksum": "abc"}});
        let b = json!({"x": 1});
        assert_eq!(checksum(&a), checksum(&b));
        assert_eq!(
            checksum(&json!({})),
            "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }
}
