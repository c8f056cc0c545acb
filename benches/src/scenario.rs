//! What the bench's workflow worker answers to a workflow task, per scenario: the
//! commands of the next step from the task's history, the way an SDK's replay does it
//! (sdk-protocol §7, §8.3), and the checks that the history holds what the scenario
//! expects. A check that fails closes the workflow with `fail_workflow`, so the run counts
//! it as failed instead of measuring it.

use serde_json::{json, Value};

use crate::args::Scenario;

/// The workflow type every scenario starts.
pub const WORKFLOW_TYPE: &str = "bench.workflow";
/// The child scenario's child workflow type.
pub const CHILD_TYPE: &str = "bench.child";
/// The activity (remote and local): returns its arguments.
pub const ACTIVITY_TYPE: &str = "bench.echo";
/// The signal the signal scenario sends.
pub const SIGNAL_NAME: &str = "bench.signal";

/// The fields of a task (workflow or activity) the bench's workers read; the rest of the
/// poll's answer is skipped, not built as JSON values.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Task {
    #[serde(default)]
    pub task_id: String,
    #[serde(default)]
    pub workflow_id: String,
    #[serde(default)]
    pub workflow_type: String,
    #[serde(default)]
    pub workflow_task_attempt: Value,
    #[serde(default)]
    pub activity_attempt_id: Value,
    #[serde(default)]
    pub arguments: Value,
    #[serde(default)]
    pub history_events: Vec<Value>,
    #[serde(default)]
    pub next_history_page_token: Option<String>,
}

/// The worker's answer to one workflow task.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// These commands, sent to `complete` (a terminal one last).
    Commands(Vec<Value>),
    /// Nothing new to do until more history arrives: the SDK's no-op `fail` with
    /// `WorkflowTaskWaitingForHistory` (sdk-protocol §6.4).
    Wait,
}

impl Decision {
    /// How the run ends if these commands are accepted: `Some(Ok)` completed,
    /// `Some(Err(message))` failed by the bench's check, `None` still open.
    pub fn outcome(&self) -> Option<Result<(), String>> {
        let Decision::Commands(commands) = self else {
            return None;
        };
        let last = commands.last()?;
        match last["type"].as_str() {
            Some("complete_workflow") => Some(Ok(())),
            Some("fail_workflow") => Some(Err(last["message"]
                .as_str()
                .unwrap_or("failed")
                .to_string())),
            _ => None,
        }
    }
}

/// What a scenario's commands need besides the task.
#[derive(Debug, Clone)]
pub struct Plan {
    pub scenario: Scenario,
    /// The task queue of activities and children.
    pub queue: String,
    pub timer_seconds: u64,
}

/// The next step of the workflow `task` whose whole history is `events`.
pub fn decide(plan: &Plan, task: &Task, events: &[Value]) -> Decision {
    let input = &task.arguments;
    if task.workflow_type == CHILD_TYPE {
        return complete(input);
    }
    if task.workflow_type != WORKFLOW_TYPE {
        return fail(format!(
            "keel-bench runs {WORKFLOW_TYPE}, not {:?}",
            task.workflow_type
        ));
    }
    match plan.scenario {
        Scenario::OneActivity => {
            if let Some(e) = find(events, &["ActivityCompleted"]) {
                return finish_with(activity_result(e), input, "the activity's result");
            }
            if let Some(e) = find(
                events,
                &["ActivityFailed", "ActivityTimedOut", "ActivityCancelled"],
            ) {
                return fail(closed_message("the activity", e));
            }
            if find(events, &["ActivityScheduled", "ActivityStarted"]).is_some() {
                return Decision::Wait;
            }
            Decision::Commands(vec![json!({
                "type": "schedule_activity", "activity_type": ACTIVITY_TYPE,
                "arguments": input, "queue": plan.queue,
            })])
        }
        Scenario::LocalActivity => {
            if let Some(e) = find(events, &["ActivityCompleted"]) {
                return finish_with(activity_result(e), input, "the local activity's result");
            }
            if let Some(e) = find(
                events,
                &["ActivityFailed", "ActivityTimedOut", "ActivityCancelled"],
            ) {
                return fail(closed_message("the local activity", e));
            }
            // The echo runs here, inside the workflow task, and is recorded with the
            // completion (sdk-protocol §7.2).
            let attempt_id = format!("{}:1", task.task_id);
            Decision::Commands(vec![
                json!({
                    "type": "record_local_activity", "activity_type": ACTIVITY_TYPE,
                    "execution_mode": "local", "arguments": input, "outcome": "completed",
                    "result": input,
                    "attempts": [{"attempt_id": attempt_id, "attempt_number": 1,
                        "outcome": "completed", "duration_ms": 0, "heartbeats": []}],
                }),
                json!({"type": "complete_workflow", "result": input}),
            ])
        }
        Scenario::Signal => {
            let signal = events.iter().find(|e| {
                event_type(e) == Some("SignalReceived")
                    && e["payload"]["signal_name"] == SIGNAL_NAME
            });
            if let Some(e) = signal {
                let p = &e["payload"];
                let value = [&p["value"], &p["input"], &p["arguments"]]
                    .into_iter()
                    .find(|v| !v.is_null());
                return match value {
                    Some(v) => complete(v),
                    None => fail("the signal arrived without its value".into()),
                };
            }
            if find(events, &["ConditionWaitOpened"]).is_some() {
                return Decision::Wait;
            }
            Decision::Commands(vec![json!({
                "type": "open_condition_wait", "condition_key": "keel-bench.signal-received",
                "condition_definition_fingerprint": "keel-bench.signal-received.v1",
            })])
        }
        Scenario::Timer => {
            if find(events, &["TimerFired"]).is_some() {
                return complete(input);
            }
            if find(events, &["TimerScheduled"]).is_some() {
                return Decision::Wait;
            }
            Decision::Commands(vec![
                json!({"type": "start_timer", "delay_seconds": plan.timer_seconds}),
            ])
        }
        Scenario::Child => {
            if let Some(e) = find(events, &["ChildRunCompleted"]) {
                let p = &e["payload"];
                let result = if p["result"].is_null() {
                    &p["output"]
                } else {
                    &p["result"]
                };
                return finish_with(result, input, "the child's result");
            }
            if let Some(e) = find(
                events,
                &["ChildRunFailed", "ChildRunCancelled", "ChildRunTerminated"],
            ) {
                return fail(closed_message("the child", e));
            }
            if find(events, &["ChildWorkflowScheduled", "ChildRunStarted"]).is_some() {
                return Decision::Wait;
            }
            Decision::Commands(vec![json!({
                "type": "start_child_workflow", "workflow_type": CHILD_TYPE,
                "arguments": input, "queue": plan.queue,
            })])
        }
    }
}

/// The base64 blob of a payload: an envelope's `blob`, or a raw blob string.
pub fn blob(payload: &Value) -> Option<&str> {
    payload["blob"].as_str().or_else(|| payload.as_str())
}

/// An event's type (`event_type`, else `type`).
fn event_type(event: &Value) -> Option<&str> {
    event["event_type"]
        .as_str()
        .or_else(|| event["type"].as_str())
}

/// The first event of one of `types`.
fn find<'a>(events: &'a [Value], types: &[&str]) -> Option<&'a Value> {
    events
        .iter()
        .find(|e| event_type(e).is_some_and(|t| types.contains(&t)))
}

fn activity_result(event: &Value) -> &Value {
    let p = &event["payload"];
    if p["result"].is_null() {
        &p["output"]
    } else {
        &p["result"]
    }
}

fn complete(result: &Value) -> Decision {
    Decision::Commands(vec![json!({"type": "complete_workflow", "result": result})])
}

fn fail(message: String) -> Decision {
    Decision::Commands(vec![json!({
        "type": "fail_workflow", "message": message, "exception_type": "KeelBenchCheckFailed",
        "non_retryable": true,
    })])
}

/// Completes with `result` when it is the payload `expected`, else fails the workflow.
fn finish_with(result: &Value, expected: &Value, what: &str) -> Decision {
    match (blob(result), blob(expected)) {
        (Some(r), Some(e)) if r == e => complete(result),
        _ => fail(format!("{what} is not the expected payload")),
    }
}

fn closed_message(what: &str, event: &Value) -> String {
    let p = &event["payload"];
    let message = p["message"]
        .as_str()
        .or_else(|| p["exception"]["message"].as_str())
        .unwrap_or("no message");
    format!(
        "{what} closed with {}: {message}",
        event_type(event).unwrap_or("?")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(scenario: Scenario) -> Plan {
        Plan {
            scenario,
            queue: "q".into(),
            timer_seconds: 1,
        }
    }

    fn task(workflow_type: &str) -> Task {
        serde_json::from_value(json!({"task_id": "t1", "workflow_type": workflow_type,
            "arguments": {"codec": "avro", "blob": "INPUT"}}))
        .expect("a task")
    }

    fn event(kind: &str, payload: Value) -> Value {
        json!({"event_type": kind, "payload": payload})
    }

    fn command_types(d: &Decision) -> Vec<String> {
        match d {
            Decision::Commands(c) => c
                .iter()
                .map(|c| c["type"].as_str().unwrap_or_default().to_string())
                .collect(),
            Decision::Wait => vec!["wait".into()],
        }
    }

    #[test]
    fn one_activity_schedules_waits_and_completes_with_the_echoed_input() {
        let p = plan(Scenario::OneActivity);
        let t = task(WORKFLOW_TYPE);
        let started = event("WorkflowStarted", json!({}));
        assert_eq!(
            command_types(&decide(&p, &t, std::slice::from_ref(&started))),
            ["schedule_activity"]
        );
        let scheduled = event("ActivityScheduled", json!({"sequence": 1}));
        assert_eq!(
            decide(&p, &t, &[started.clone(), scheduled.clone()]),
            Decision::Wait
        );
        let done = event(
            "ActivityCompleted",
            json!({"result": {"codec": "avro", "blob": "INPUT"}}),
        );
        let d = decide(&p, &t, &[started, scheduled, done]);
        assert_eq!(command_types(&d), ["complete_workflow"]);
        assert_eq!(d.outcome(), Some(Ok(())));
    }

    #[test]
    fn an_activity_result_other_than_the_input_fails_the_workflow() {
        let p = plan(Scenario::OneActivity);
        let done = event("ActivityCompleted", json!({"result": "OTHER"}));
        let d = decide(&p, &task(WORKFLOW_TYPE), &[done]);
        assert_eq!(command_types(&d), ["fail_workflow"]);
        assert!(matches!(d.outcome(), Some(Err(m)) if m.contains("not the expected payload")));
    }

    #[test]
    fn a_failed_child_fails_the_parent_and_a_child_task_echoes_its_input() {
        let p = plan(Scenario::Child);
        let failed = event("ChildRunFailed", json!({"message": "boom"}));
        let d = decide(&p, &task(WORKFLOW_TYPE), &[failed]);
        assert!(matches!(d.outcome(), Some(Err(m)) if m.contains("boom")));
        let d = decide(&p, &task(CHILD_TYPE), &[]);
        assert_eq!(
            d,
            Decision::Commands(vec![
                json!({"type": "complete_workflow", "result": {"codec": "avro", "blob": "INPUT"}})
            ])
        );
    }

    #[test]
    fn the_signal_scenario_waits_for_the_signal_and_completes_with_its_value() {
        let p = plan(Scenario::Signal);
        let t = task(WORKFLOW_TYPE);
        assert_eq!(command_types(&decide(&p, &t, &[])), ["open_condition_wait"]);
        let opened = event("ConditionWaitOpened", json!({}));
        assert_eq!(
            decide(&p, &t, std::slice::from_ref(&opened)),
            Decision::Wait
        );
        let signal = event(
            "SignalReceived",
            json!({"signal_name": SIGNAL_NAME, "arguments": {"codec": "avro", "blob": "SIG"}}),
        );
        let Decision::Commands(c) = decide(&p, &t, &[opened, signal]) else {
            panic!("expected commands");
        };
        assert_eq!(c[0]["result"]["blob"], "SIG");
    }

    #[test]
    fn local_activity_records_and_completes_in_one_task() {
        let d = decide(&plan(Scenario::LocalActivity), &task(WORKFLOW_TYPE), &[]);
        assert_eq!(
            command_types(&d),
            ["record_local_activity", "complete_workflow"]
        );
    }

    #[test]
    fn the_timer_scenario_starts_a_timer_then_completes_when_it_fired() {
        let p = plan(Scenario::Timer);
        let t = task(WORKFLOW_TYPE);
        assert_eq!(command_types(&decide(&p, &t, &[])), ["start_timer"]);
        let fired = event("TimerFired", json!({}));
        assert_eq!(
            command_types(&decide(&p, &t, &[fired])),
            ["complete_workflow"]
        );
    }
}
