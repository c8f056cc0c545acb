//! Scenarios that run workflows through the scripted worker: workflow tasks and leases,
//! activities, messages, timers, children, continue-as-new, cancel/terminate, export.

use std::time::Duration;

use hyper::Method;
use serde_json::{json, Value};

use super::worker::*;
use crate::{ensure, short, Ctx, Outcome, Stop};

pub async fn workflow_task_fencing(ctx: Ctx) -> Outcome {
    let (queue, id, run) = begin(&ctx, "conformance.fencing").await?;
    let task = poll(&ctx, "workflow", &queue).await?;
    ensure!(
        !task_id(&task).is_empty(),
        "the task has no task_id: {}",
        short(&task)
    );
    ensure!(
        task["workflow_id"] == id.as_str(),
        "the task is for {} not {id}",
        task["workflow_id"]
    );
    ensure!(
        task["run_id"] == run.as_str(),
        "the task's run_id {} is not the started {run}",
        task["run_id"]
    );
    ensure!(
        task["workflow_type"] == "conformance.fencing",
        "the task's workflow_type is {}",
        task["workflow_type"]
    );
    ensure!(
        task["payload_codec"] == "avro",
        "the task's payload_codec is {}",
        task["payload_codec"]
    );
    ensure!(
        task_has(&task, "WorkflowStarted"),
        "the first task's history has no WorkflowStarted: {:?}",
        types(
            task["history_events"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[])
        )
    );
    let commands = json!([{"type": "complete_workflow", "result": envelope()}]);
    // Another lease owner.
    let mut body = wf_lease(&ctx, &task);
    body["lease_owner"] = json!(ctx.name("impostor"));
    body["commands"] = commands.clone();
    let path = format!("/worker/workflow-tasks/{}/complete", task_id(&task));
    let r = ctx.worker(Method::POST, &path, Some(&body)).await?;
    named_4xx(&r, "a completion by another lease owner")?;
    // Another attempt.
    let mut body = wf_lease(&ctx, &task);
    body["workflow_task_attempt"] = json!(task["workflow_task_attempt"].as_u64().unwrap_or(1) + 5);
    body["commands"] = commands.clone();
    let r = ctx.worker(Method::POST, &path, Some(&body)).await?;
    named_4xx(&r, "a completion with another attempt number")?;
    // The right one, then the same again.
    complete_wf(&ctx, &task, commands.clone()).await?;
    let again = complete_wf_raw(&ctx, &task, commands).await?;
    named_4xx(&again, "a second completion of the same task")?;
    wait_status(&ctx, &id, &["completed"]).await?;
    let events = history(&ctx, &id, &run).await?;
    ensure!(
        count(&events, "WorkflowCompleted") == 1,
        "history has {} WorkflowCompleted: {:?}",
        count(&events, "WorkflowCompleted"),
        types(&events)
    );
    Ok(())
}

pub async fn workflow_task_failure_redelivery(ctx: Ctx) -> Outcome {
    let (queue, id, _run) = begin(&ctx, "conformance.redelivery").await?;
    let first = poll(&ctx, "workflow", &queue).await?;
    let attempt = first["workflow_task_attempt"].as_u64().unwrap_or(1);
    let mut body = wf_lease(&ctx, &first);
    body["failure"] =
        json!({"message": "conformance: replay failed", "type": "NonDeterministicReplayError"});
    let r = ctx
        .worker(
            Method::POST,
            &format!("/worker/workflow-tasks/{}/fail", task_id(&first)),
            Some(&body),
        )
        .await?;
    ensure!(
        r.status == 200,
        "failing the task answered {}: {}",
        r.status,
        short(&r.body)
    );
    let second = poll(&ctx, "workflow", &queue).await?;
    ensure!(
        second["workflow_id"] == id.as_str(),
        "the redelivered task is for {}",
        second["workflow_id"]
    );
    let attempt2 = second["workflow_task_attempt"].as_u64().unwrap_or(1);
    let same_task = task_id(&second) == task_id(&first);
    ensure!(
        !same_task || attempt2 > attempt,
        "the same task came back with attempt {attempt2} (was {attempt})"
    );
    ctx.note(
        json!({"first_attempt": attempt, "second_attempt": attempt2, "same_task_id": same_task}),
    );
    // The first delivery's report is stale now.
    let stale = complete_wf_raw(
        &ctx,
        &first,
        json!([{"type": "complete_workflow", "result": envelope()}]),
    )
    .await?;
    named_4xx(&stale, "a completion through the failed attempt")?;
    finish(&ctx, &second).await?;
    wait_status(&ctx, &id, &["completed"]).await?;
    Ok(())
}

pub async fn heartbeat_and_empty_poll(ctx: Ctx) -> Outcome {
    let (queue, id, _run) = begin(&ctx, "conformance.heartbeat").await?;
    let task = poll(&ctx, "workflow", &queue).await?;
    let r = ctx
        .worker(
            Method::POST,
            &format!("/worker/workflow-tasks/{}/heartbeat", task_id(&task)),
            Some(&wf_lease(&ctx, &task)),
        )
        .await?;
    ensure!(
        r.status == 200,
        "heartbeat answered {}: {}",
        r.status,
        short(&r.body)
    );
    ensure!(
        r.body["task_id"] == task["task_id"],
        "heartbeat did not echo task_id: {}",
        short(&r.body)
    );
    ensure!(
        r.body["renewed"] == true,
        "heartbeat did not answer renewed: true: {}",
        short(&r.body)
    );
    ensure!(
        r.body["workflow_task_attempt"] == task["workflow_task_attempt"],
        "heartbeat did not echo workflow_task_attempt: {}",
        short(&r.body)
    );
    finish(&ctx, &task).await?;
    wait_status(&ctx, &id, &["completed"]).await?;
    // An empty queue: 200 with a null task, within about its timeout.
    let empty = ctx.name("empty");
    let empty_worker = ctx.name("empty-worker");
    register_as(&ctx, &empty_worker, &empty).await?;
    let t0 = std::time::Instant::now();
    let r = ctx
        .worker(
            Method::POST,
            "/worker/workflow-tasks/poll",
            Some(&json!({"worker_id": empty_worker, "task_queue": empty, "timeout_seconds": 1})),
        )
        .await?;
    let took = t0.elapsed();
    ensure!(
        r.status == 200,
        "an empty poll answered {}: {}",
        r.status,
        short(&r.body)
    );
    ensure!(
        r.body["task"].is_null(),
        "an empty queue delivered a task: {}",
        short(&r.body)
    );
    ensure!(
        took < Duration::from_secs(5),
        "a 1 s poll was held {took:?}"
    );
    ctx.note(
        json!({"empty_poll_ms": took.as_millis() as u64, "poll_status": r.body["poll_status"]}),
    );
    Ok(())
}

pub async fn waiting_for_history_noop(ctx: Ctx) -> Outcome {
    let (queue, id, run) = begin(&ctx, "conformance.noop").await?;
    let task = poll(&ctx, "workflow", &queue).await?;
    complete_wf(
        &ctx,
        &task,
        json!([{"type": "start_timer", "delay_seconds": 3600}]),
    )
    .await?;
    // A signal makes a task; the worker has nothing to add.
    let r = ctx
        .control(
            Method::POST,
            &format!("/workflows/{}/signal/{}", seg(&id), "nudge"),
            Some(&json!({"request_id": ctx.name("sig")})),
        )
        .await?;
    ensure!(
        (200..300).contains(&r.status),
        "signal answered {}: {}",
        r.status,
        short(&r.body)
    );
    let task = poll(&ctx, "workflow", &queue).await?;
    wait_noop(&ctx, &task).await?;
    let d = describe(&ctx, &id).await?;
    ensure!(
        ["running", "waiting", "pending"]
            .iter()
            .any(|s| d["status"] == *s),
        "after the no-op the workflow is {}",
        d["status"]
    );
    let events = history(&ctx, &id, &run).await?;
    let failed = count(&events, "WorkflowTaskFailed");
    ensure!(
        failed == 0,
        "the no-op was recorded as a failed workflow task: {:?}",
        types(&events)
    );
    // No retry of the no-op: the queue stays empty.
    let r = ctx
        .worker(
            Method::POST,
            "/worker/workflow-tasks/poll",
            Some(&json!({"worker_id": worker_id(&ctx), "task_queue": queue, "timeout_seconds": 1})),
        )
        .await?;
    ensure!(
        r.body["task"].is_null(),
        "the no-op was delivered again: {}",
        short(&r.body)
    );
    terminate_quietly(&ctx, &id).await
}

async fn terminate_quietly(ctx: &Ctx, id: &str) -> Outcome {
    let r = ctx
        .control(
            Method::POST,
            &format!("/workflows/{}/terminate", seg(id)),
            Some(&json!({"reason": "conformance cleanup"})),
        )
        .await?;
    ensure!(
        (200..300).contains(&r.status),
        "terminate answered {}: {}",
        r.status,
        short(&r.body)
    );
    Ok(())
}

fn schedule(ctx: &Ctx, queue: &str, extra: Value) -> Value {
    let mut cmd = json!({"type": "schedule_activity", "activity_type": "conformance.echo",
                         "arguments": envelope(), "queue": queue});
    if let (Some(c), Some(e)) = (cmd.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    let _ = ctx;
    json!([cmd])
}

/// Polls workflow tasks, answering the no-op, until one has `event` in its history.
async fn poll_until_history(ctx: &Ctx, queue: &str, event: &str) -> Result<Value, Stop> {
    for _ in 0..10 {
        let task = poll(ctx, "workflow", queue).await?;
        if task_has(&task, event) || task["next_history_page_token"].is_string() {
            return Ok(task);
        }
        wait_noop(ctx, &task).await?;
    }
    Err(Stop::Fail(format!(
        "no workflow task with {event} in its history"
    )))
}

pub async fn activity_round_trip(ctx: Ctx) -> Outcome {
    let (queue, id, run) = begin(&ctx, "conformance.activity").await?;
    let task = poll(&ctx, "workflow", &queue).await?;
    complete_wf(
        &ctx,
        &task,
        schedule(&ctx, &queue, json!({"start_to_close_timeout": 30})),
    )
    .await?;
    let act = poll(&ctx, "activity", &queue).await?;
    ensure!(
        act["activity_type"] == "conformance.echo",
        "the activity task's type is {}",
        act["activity_type"]
    );
    ensure!(
        act["arguments"] == envelope() || act["arguments"] == INPUT_BLOB,
        "the activity's arguments are {}",
        act["arguments"]
    );
    ensure!(
        act["payload_codec"] == "avro",
        "the activity's payload_codec is {}",
        act["payload_codec"]
    );
    ensure!(
        act["activity_attempt_id"].is_string() || act["attempt_id"].is_string(),
        "the activity task has no activity_attempt_id"
    );
    let hb = ctx
        .worker(
            Method::POST,
            &format!("/worker/activity-tasks/{}/heartbeat", task_id(&act)),
            Some(&act_lease(&ctx, &act)),
        )
        .await?;
    ensure!(
        hb.status == 200,
        "activity heartbeat answered {}: {}",
        hb.status,
        short(&hb.body)
    );
    ensure!(
        hb.body["cancel_requested"] != true,
        "heartbeat asks to cancel: {}",
        short(&hb.body)
    );
    let r = complete_act_raw(&ctx, &act).await?;
    ensure!(
        r.status == 200,
        "activity completion answered {}: {}",
        r.status,
        short(&r.body)
    );
    let again = complete_act_raw(&ctx, &act).await?;
    named_4xx(&again, "a second completion of the same activity attempt")?;
    let task = poll_until_history(&ctx, &queue, "ActivityCompleted").await?;
    finish(&ctx, &task).await?;
    wait_status(&ctx, &id, &["completed"]).await?;
    let events = history(&ctx, &id, &run).await?;
    for e in [
        "WorkflowStarted",
        "ActivityScheduled",
        "ActivityCompleted",
        "WorkflowCompleted",
    ] {
        ensure!(
            count(&events, e) == 1,
            "history has {} {e}: {:?}",
            count(&events, e),
            types(&events)
        );
    }
    Ok(())
}

pub async fn activity_retry(ctx: Ctx) -> Outcome {
    let (queue, id, run) = begin(&ctx, "conformance.retry").await?;
    let task = poll(&ctx, "workflow", &queue).await?;
    let policy = json!({"retry_policy": {"max_attempts": 2, "backoff_seconds": [1], "non_retryable_error_types": []},
                        "start_to_close_timeout": 30});
    complete_wf(&ctx, &task, schedule(&ctx, &queue, policy)).await?;
    let first = poll(&ctx, "activity", &queue).await?;
    let n1 = first["attempt_number"].as_u64().unwrap_or(1);
    let r = fail_act_raw(&ctx, &first, false).await?;
    ensure!(
        r.status == 200,
        "failing attempt 1 answered {}: {}",
        r.status,
        short(&r.body)
    );
    let second = poll(&ctx, "activity", &queue).await?;
    let n2 = second["attempt_number"].as_u64().unwrap_or(1);
    ensure!(n2 == n1 + 1, "the retry is attempt {n2} after attempt {n1}");
    ensure!(
        second["activity_attempt_id"] != first["activity_attempt_id"],
        "the retry reuses the attempt id {}",
        first["activity_attempt_id"]
    );
    let stale = complete_act_raw(&ctx, &first).await?;
    named_4xx(&stale, "a completion through the failed attempt")?;
    let r = complete_act_raw(&ctx, &second).await?;
    ensure!(
        r.status == 200,
        "completing attempt 2 answered {}: {}",
        r.status,
        short(&r.body)
    );
    let task = poll_until_history(&ctx, &queue, "ActivityCompleted").await?;
    finish(&ctx, &task).await?;
    wait_status(&ctx, &id, &["completed"]).await?;
    let events = history(&ctx, &id, &run).await?;
    ensure!(
        count(&events, "ActivityFailed") == 0,
        "a retried attempt was recorded as ActivityFailed: {:?}",
        types(&events)
    );
    ensure!(
        count(&events, "ActivityCompleted") == 1,
        "history: {:?}",
        types(&events)
    );
    Ok(())
}

pub async fn activity_non_retryable(ctx: Ctx) -> Outcome {
    let (queue, id, run) = begin(&ctx, "conformance.nonretryable").await?;
    let task = poll(&ctx, "workflow", &queue).await?;
    let policy = json!({"retry_policy": {"max_attempts": 5, "backoff_seconds": [1, 1, 1, 1], "non_retryable_error_types": []}});
    complete_wf(&ctx, &task, schedule(&ctx, &queue, policy)).await?;
    let act = poll(&ctx, "activity", &queue).await?;
    let r = fail_act_raw(&ctx, &act, true).await?;
    ensure!(
        r.status == 200,
        "a non-retryable failure answered {}: {}",
        r.status,
        short(&r.body)
    );
    let task = poll_until_history(&ctx, &queue, "ActivityFailed").await?;
    complete_wf(&ctx, &task, json!([{"type": "fail_workflow", "message": "activity failed", "exception_type": "ActivityFailed"}])).await?;
    wait_status(&ctx, &id, &["failed"]).await?;
    let events = history(&ctx, &id, &run).await?;
    ensure!(
        count(&events, "ActivityFailed") == 1,
        "history: {:?}",
        types(&events)
    );
    ensure!(
        count(&events, "WorkflowFailed") == 1,
        "history: {:?}",
        types(&events)
    );
    Ok(())
}

pub async fn activity_timeout(ctx: Ctx) -> Outcome {
    let (queue, id, run) = begin(&ctx, "conformance.timeout").await?;
    let task = poll(&ctx, "workflow", &queue).await?;
    let policy = json!({"retry_policy": {"max_attempts": 1, "backoff_seconds": [], "non_retryable_error_types": []},
                        "start_to_close_timeout": 1, "schedule_to_close_timeout": 1});
    complete_wf(&ctx, &task, schedule(&ctx, &queue, policy)).await?;
    let act = poll(&ctx, "activity", &queue).await?;
    // Hold it past its timeout; the server closes it and wakes the workflow.
    let task = poll_until_history(&ctx, &queue, "ActivityTimedOut").await?;
    let late = complete_act_raw(&ctx, &act).await?;
    named_4xx(&late, "a completion after the start-to-close timeout")?;
    complete_wf(&ctx, &task, json!([{"type": "fail_workflow", "message": "activity timed out", "exception_type": "ActivityTimedOut"}])).await?;
    wait_status(&ctx, &id, &["failed"]).await?;
    let events = history(&ctx, &id, &run).await?;
    ensure!(
        count(&events, "ActivityTimedOut") == 1,
        "history: {:?}",
        types(&events)
    );
    ensure!(
        count(&events, "ActivityCompleted") == 0,
        "the late completion was recorded: {:?}",
        types(&events)
    );
    Ok(())
}

pub async fn signal_idempotency(ctx: Ctx) -> Outcome {
    let (queue, id, run) = begin(&ctx, "conformance.signal").await?;
    let task = poll(&ctx, "workflow", &queue).await?;
    complete_wf(
        &ctx,
        &task,
        json!([{"type": "start_timer", "delay_seconds": 3600}]),
    )
    .await?;
    let path = format!("/workflows/{}/signal/{}", seg(&id), "approve");
    let body = json!({"input": envelope(), "request_id": ctx.name("signal-1")});
    let first = ctx.control(Method::POST, &path, Some(&body)).await?;
    ensure!(
        (200..300).contains(&first.status),
        "signal answered {}: {}",
        first.status,
        short(&first.body)
    );
    let second = ctx.control(Method::POST, &path, Some(&body)).await?;
    ensure!(
        (200..300).contains(&second.status),
        "the retried signal answered {}: {}",
        second.status,
        short(&second.body)
    );
    ctx.note(json!({"first": first.body, "retry": second.body}));
    let task = poll_until_history(&ctx, &queue, "SignalReceived").await?;
    let events = history(&ctx, &id, &run).await?;
    ensure!(
        count(&events, "SignalReceived") == 1,
        "one request_id was recorded {} times: {:?}",
        count(&events, "SignalReceived"),
        types(&events)
    );
    // The same request id with another body is not taken as the same signal.
    let conflict =
        json!({"input": {"codec": "avro", "blob": "AA=="}, "request_id": ctx.name("signal-1")});
    let c = ctx.control(Method::POST, &path, Some(&conflict)).await?;
    ensure!(
        c.status == 409 || ((200..300).contains(&c.status)),
        "a reused request_id with another body answered {}: {}",
        c.status,
        short(&c.body)
    );
    // A signal to an unknown workflow is a named 404.
    let r = ctx
        .control(
            Method::POST,
            &format!("/workflows/{}/signal/approve", seg(&ctx.name("missing"))),
            Some(&json!({"request_id": ctx.name("s2")})),
        )
        .await?;
    ensure!(
        r.status == 404 && !r.reason().is_empty(),
        "a signal to an unknown workflow answered {}: {}",
        r.status,
        short(&r.body)
    );
    finish(&ctx, &task).await?;
    wait_status(&ctx, &id, &["completed"]).await?;
    Ok(())
}

pub async fn query_round_trip(ctx: Ctx) -> Outcome {
    if ctx.capability("query_tasks") != &json!(true) {
        return Err(Stop::NotApplicable(
            "the server does not advertise query_tasks".into(),
        ));
    }
    let (queue, id, _run) = begin(&ctx, "conformance.query").await?;
    let task = poll(&ctx, "workflow", &queue).await?;
    complete_wf(
        &ctx,
        &task,
        json!([{"type": "start_timer", "delay_seconds": 3600}]),
    )
    .await?;
    let client = ctx.client.clone();
    let path = format!("/workflows/{}/query/{}", seg(&id), "status");
    let q = tokio::spawn(async move {
        client
            .control(Method::POST, &path, Some(&json!({"input": envelope()})))
            .await
    });
    let qt = poll(&ctx, "query", &queue).await?;
    ensure!(
        qt["query_name"] == "status",
        "the query task's query_name is {}",
        qt["query_name"]
    );
    ensure!(
        qt["workflow_id"] == id.as_str(),
        "the query task is for {}",
        qt["workflow_id"]
    );
    let qid = qt["query_task_id"].as_str().unwrap_or_default().to_string();
    ensure!(
        !qid.is_empty(),
        "the query task has no query_task_id: {}",
        short(&qt)
    );
    let body = json!({"lease_owner": qt["lease_owner"].as_str().map(String::from).unwrap_or_else(|| worker_id(&ctx)),
                      "query_task_attempt": qt["query_task_attempt"].as_u64().unwrap_or(1),
                      "result": "ready", "result_envelope": envelope()});
    let r = ctx
        .worker(
            Method::POST,
            &format!("/worker/query-tasks/{}/complete", seg(&qid)),
            Some(&body),
        )
        .await?;
    ensure!(
        r.status == 200,
        "query completion answered {}: {}",
        r.status,
        short(&r.body)
    );
    let answer = q
        .await
        .map_err(|e| Stop::Fail(format!("query call: {e}")))?;
    let answer = ctx.record(
        &Method::POST,
        &format!("/workflows/{id}/query/status"),
        answer,
    )?;
    ensure!(
        answer.status == 200,
        "the query answered {}: {}",
        answer.status,
        short(&answer.body)
    );
    ensure!(
        answer.body["result"] == "ready" || answer.body["result_envelope"] == envelope(),
        "the query answered another result: {}",
        short(&answer.body)
    );
    terminate_quietly(&ctx, &id).await
}

pub async fn update_round_trip(ctx: Ctx) -> Outcome {
    let (queue, id, run) = begin(&ctx, "conformance.update").await?;
    let task = poll(&ctx, "workflow", &queue).await?;
    complete_wf(
        &ctx,
        &task,
        json!([{"type": "start_timer", "delay_seconds": 3600}]),
    )
    .await?;
    let path = format!("/workflows/{}/update/{}", seg(&id), "set_limit");
    let body =
        json!({"input": envelope(), "wait_for": "accepted", "request_id": ctx.name("update-1")});
    let accepted = ctx.control(Method::POST, &path, Some(&body)).await?;
    ensure!(
        (200..300).contains(&accepted.status),
        "the update answered {}: {}",
        accepted.status,
        short(&accepted.body)
    );
    let update_id = accepted.body["update_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    ensure!(
        !update_id.is_empty(),
        "the accepted update has no update_id: {}",
        short(&accepted.body)
    );
    // The worker applies it.
    let mut applied = false;
    for _ in 0..5 {
        let t = poll(&ctx, "workflow", &queue).await?;
        if t["workflow_update_id"] == update_id.as_str() {
            complete_wf(
                &ctx,
                &t,
                json!([{"type": "complete_update", "update_id": update_id, "result": envelope()}]),
            )
            .await?;
            applied = true;
            break;
        }
        wait_noop(&ctx, &t).await?;
    }
    ensure!(
        applied,
        "no workflow task carried workflow_update_id {update_id}"
    );
    // The same request id again: the same update, now completed.
    let mut again = None;
    for _ in 0..50 {
        let r = ctx
            .control(Method::POST, &path, Some(&json!({"input": envelope(), "wait_for": "completed", "wait_timeout_seconds": 5, "request_id": ctx.name("update-1")})))
            .await?;
        ensure!(
            (200..300).contains(&r.status),
            "the repeated update answered {}: {}",
            r.status,
            short(&r.body)
        );
        if r.body["update_status"] == "completed" {
            again = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let again = again.ok_or_else(|| Stop::Fail("the update never answered completed".into()))?;
    ensure!(
        again.body["update_id"] == update_id.as_str(),
        "the same request_id answered another update: {}",
        short(&again.body)
    );
    let events = history(&ctx, &id, &run).await?;
    ensure!(
        count(&events, "UpdateAccepted") == 1,
        "history: {:?}",
        types(&events)
    );
    ensure!(
        count(&events, "UpdateCompleted") == 1,
        "history: {:?}",
        types(&events)
    );
    terminate_quietly(&ctx, &id).await
}

pub async fn update_closed(ctx: Ctx) -> Outcome {
    let (queue, id, _run) = begin(&ctx, "conformance.update-closed").await?;
    let task = poll(&ctx, "workflow", &queue).await?;
    finish(&ctx, &task).await?;
    wait_status(&ctx, &id, &["completed"]).await?;
    let r = ctx
        .control(
            Method::POST,
            &format!("/workflows/{}/update/{}", seg(&id), "set_limit"),
            Some(&json!({"input": envelope(), "wait_for": "accepted", "request_id": ctx.name("late")})),
        )
        .await?;
    named_4xx(&r, "an update of a completed workflow")
}

pub async fn timer_fires(ctx: Ctx) -> Outcome {
    let (queue, id, run) = begin(&ctx, "conformance.timer").await?;
    let task = poll(&ctx, "workflow", &queue).await?;
    let t0 = std::time::Instant::now();
    complete_wf(
        &ctx,
        &task,
        json!([{"type": "start_timer", "delay_seconds": 1}]),
    )
    .await?;
    let task = poll_until_history(&ctx, &queue, "TimerFired").await?;
    let took = t0.elapsed();
    ensure!(
        took >= Duration::from_millis(900),
        "a 1 s timer fired after {took:?}"
    );
    ctx.note(json!({"timer_fired_after_ms": took.as_millis() as u64}));
    finish(&ctx, &task).await?;
    wait_status(&ctx, &id, &["completed"]).await?;
    let events = history(&ctx, &id, &run).await?;
    ensure!(
        count(&events, "TimerScheduled") == 1 && count(&events, "TimerFired") == 1,
        "history: {:?}",
        types(&events)
    );
    Ok(())
}

pub async fn child_completion(ctx: Ctx) -> Outcome {
    let (queue, id, run) = begin(&ctx, "conformance.parent").await?;
    let task = poll(&ctx, "workflow", &queue).await?;
    complete_wf(&ctx, &task, json!([{"type": "start_child_workflow", "workflow_type": "conformance.child",
                                      "arguments": envelope(), "queue": queue, "parent_close_policy": "terminate"}])).await?;
    // The child's first task (the parent may get a task for the child's start: no-op it).
    let mut child = None;
    for _ in 0..6 {
        let t = poll(&ctx, "workflow", &queue).await?;
        if t["workflow_type"] == "conformance.child" {
            child = Some(t);
            break;
        }
        wait_noop(&ctx, &t).await?;
    }
    let child = child.ok_or_else(|| Stop::Fail("no task for the child workflow".into()))?;
    let child_id = child["workflow_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    ensure!(child_id != id, "the child has its parent's id");
    finish(&ctx, &child).await?;
    let mut parent = None;
    for _ in 0..6 {
        let t = poll(&ctx, "workflow", &queue).await?;
        let evs = t["history_events"].as_array().cloned().unwrap_or_default();
        if t["workflow_id"] == id.as_str()
            && evs.iter().any(|e| {
                e["event_type"]
                    .as_str()
                    .is_some_and(|s| s.contains("Completed") && s.starts_with("Child"))
            })
        {
            parent = Some(t);
            break;
        }
        wait_noop(&ctx, &t).await?;
    }
    let parent = parent
        .ok_or_else(|| Stop::Fail("the parent got no task with the child's completion".into()))?;
    finish(&ctx, &parent).await?;
    wait_status(&ctx, &id, &["completed"]).await?;
    wait_status(&ctx, &child_id, &["completed"]).await?;
    let events = history(&ctx, &id, &run).await?;
    ctx.note(json!({"parent_history": types(&events), "child_id": child_id}));
    Ok(())
}

pub async fn continue_as_new(ctx: Ctx) -> Outcome {
    let (queue, id, run) = begin(&ctx, "conformance.can").await?;
    let task = poll(&ctx, "workflow", &queue).await?;
    complete_wf(
        &ctx,
        &task,
        json!([{"type": "continue_as_new", "arguments": envelope(), "queue": queue}]),
    )
    .await?;
    let next = poll(&ctx, "workflow", &queue).await?;
    ensure!(
        next["workflow_id"] == id.as_str(),
        "the new run's task is for {}",
        next["workflow_id"]
    );
    let run2 = next["run_id"].as_str().unwrap_or_default().to_string();
    ensure!(
        !run2.is_empty() && run2 != run,
        "the new run has run_id {run2:?} (first {run})"
    );
    finish(&ctx, &next).await?;
    let d = wait_status(&ctx, &id, &["completed"]).await?;
    ensure!(
        d["run_id"] == run2.as_str(),
        "describe shows run {} not the new run {run2}",
        d["run_id"]
    );
    let first = history(&ctx, &id, &run).await?;
    ensure!(
        count(&first, "WorkflowContinuedAsNew") == 1,
        "the first run's history: {:?}",
        types(&first)
    );
    let runs = ctx
        .control(Method::GET, &format!("/workflows/{}/runs", seg(&id)), None)
        .await?;
    ensure!(runs.status == 200, "runs answered {}", runs.status);
    let n = runs.body["runs"].as_array().map(Vec::len).unwrap_or(0);
    ensure!(n == 2, "runs lists {n} runs: {}", short(&runs.body));
    Ok(())
}

pub async fn cancel(ctx: Ctx) -> Outcome {
    let (queue, id, run) = begin(&ctx, "conformance.cancel").await?;
    let task = poll(&ctx, "workflow", &queue).await?;
    let r = ctx
        .control(
            Method::POST,
            &format!("/workflows/{}/cancel", seg(&id)),
            Some(&json!({"reason": "conformance"})),
        )
        .await?;
    ensure!(
        (200..300).contains(&r.status),
        "cancel answered {}: {}",
        r.status,
        short(&r.body)
    );
    wait_status(&ctx, &id, &["cancelled", "canceled"]).await?;
    let late = complete_wf_raw(
        &ctx,
        &task,
        json!([{"type": "complete_workflow", "result": envelope()}]),
    )
    .await?;
    named_4xx(&late, "a completion of a cancelled run's task")?;
    let events = history(&ctx, &id, &run).await?;
    ensure!(
        count(&events, "WorkflowCancelled") == 1,
        "history: {:?}",
        types(&events)
    );
    ensure!(
        count(&events, "WorkflowCompleted") == 0,
        "the late completion was recorded: {:?}",
        types(&events)
    );
    let again = ctx
        .control(
            Method::POST,
            &format!("/workflows/{}/cancel", seg(&id)),
            Some(&json!({})),
        )
        .await?;
    ensure!(
        again.status < 500,
        "a second cancel answered {}",
        again.status
    );
    Ok(())
}

pub async fn terminate(ctx: Ctx) -> Outcome {
    let (_queue, id, run) = begin(&ctx, "conformance.terminate").await?;
    let r = ctx
        .control(
            Method::POST,
            &format!("/workflows/{}/terminate", seg(&id)),
            Some(&json!({"reason": "conformance terminate"})),
        )
        .await?;
    ensure!(
        (200..300).contains(&r.status),
        "terminate answered {}: {}",
        r.status,
        short(&r.body)
    );
    wait_status(&ctx, &id, &["terminated"]).await?;
    let events = history(&ctx, &id, &run).await?;
    let term: Vec<&Value> = events
        .iter()
        .filter(|e| e["event_type"] == "WorkflowTerminated")
        .collect();
    ensure!(term.len() == 1, "history: {:?}", types(&events));
    let again = ctx
        .control(
            Method::POST,
            &format!("/workflows/{}/terminate", seg(&id)),
            Some(&json!({})),
        )
        .await?;
    named_4xx(&again, "terminating a terminated workflow")?;
    Ok(())
}

pub async fn history_export(ctx: Ctx) -> Outcome {
    let (queue, id, run) = begin(&ctx, "conformance.export").await?;
    let task = poll(&ctx, "workflow", &queue).await?;
    complete_wf(
        &ctx,
        &task,
        schedule(&ctx, &queue, json!({"start_to_close_timeout": 30})),
    )
    .await?;
    let act = poll(&ctx, "activity", &queue).await?;
    let r = complete_act_raw(&ctx, &act).await?;
    ensure!(r.status == 200, "activity completion answered {}", r.status);
    let task = poll_until_history(&ctx, &queue, "ActivityCompleted").await?;
    finish(&ctx, &task).await?;
    wait_status(&ctx, &id, &["completed"]).await?;
    let r = ctx
        .control(
            Method::GET,
            &format!("/workflows/{}/runs/{}/history/export", seg(&id), seg(&run)),
            None,
        )
        .await?;
    ensure!(
        r.status == 200,
        "history export answered {}: {}",
        r.status,
        short(&r.body)
    );
    let bundle = &r.body;
    let violations = crate::schema::violations("history-export-bundle.schema.json", bundle)
        .map_err(Stop::Fail)?;
    ctx.note(json!({"schema": "history-export-bundle.schema.json", "violations": violations}));
    ensure!(
        violations.is_empty(),
        "the bundle does not match history-export-bundle.schema.json: {}",
        violations.join("; ")
    );
    let events = history(&ctx, &id, &run).await?;
    let exported = bundle["history_events"]
        .as_array()
        .map(Vec::len)
        .unwrap_or(0);
    ensure!(
        exported == events.len(),
        "the bundle has {exported} events, the history {}",
        events.len()
    );
    ensure!(
        bundle["history_complete"] == true,
        "a closed run's bundle is not history_complete"
    );
    ensure!(
        bundle["workflow"]["run_id"] == run.as_str()
            || bundle["workflow"]["workflow_run_id"] == run.as_str(),
        "the bundle is for another run: {}",
        short(&bundle["workflow"])
    );
    Ok(())
}
