//! Control-plane scenarios: start/describe/list, schedules, namespaces and search
//! attributes, auth refusals, bad input.

use hyper::Method;
use serde_json::{json, Value};

use super::worker::*;
use crate::client::{CONTROL_HEADER, WORKER_HEADER};
use crate::{ensure, short, Ctx, Outcome, Stop};

pub async fn start_describe_list(ctx: Ctx) -> Outcome {
    let queue = ctx.name("q");
    let id = ctx.name("wf");
    let wf_type = ctx.name("type");
    let run = start(
        &ctx,
        &id,
        &wf_type,
        &queue,
        json!({"memo": {"owner": "conformance"}}),
    )
    .await?;
    let d = describe(&ctx, &id).await?;
    ensure!(
        d["workflow_id"] == id.as_str(),
        "describe answered workflow_id {}",
        d["workflow_id"]
    );
    ensure!(
        d["run_id"] == run.as_str(),
        "describe answered run_id {} (started {run})",
        d["run_id"]
    );
    ensure!(
        d["workflow_type"] == wf_type.as_str(),
        "describe answered workflow_type {}",
        d["workflow_type"]
    );
    ensure!(
        d["task_queue"] == queue.as_str(),
        "describe answered task_queue {}",
        d["task_queue"]
    );
    ensure!(
        ["pending", "running", "waiting"]
            .iter()
            .any(|s| d["status"] == *s),
        "a started workflow is {}",
        d["status"]
    );
    ensure!(
        d["memo"]["owner"] == "conformance",
        "describe lost the memo: {}",
        short(&d["memo"])
    );
    let r = ctx
        .control(
            Method::GET,
            &format!("/workflows/{}/runs/{}", seg(&id), seg(&run)),
            None,
        )
        .await?;
    ensure!(
        r.status == 200 && r.body["run_id"] == run.as_str(),
        "describe run answered {}: {}",
        r.status,
        short(&r.body)
    );
    let runs = ctx
        .control(Method::GET, &format!("/workflows/{}/runs", seg(&id)), None)
        .await?;
    ensure!(runs.status == 200, "runs answered {}", runs.status);
    ensure!(
        runs.body["runs"]
            .as_array()
            .is_some_and(|rs| rs.iter().any(|r| r["run_id"] == run.as_str())),
        "runs does not list {run}: {}",
        short(&runs.body)
    );
    let list = ctx
        .control(
            Method::GET,
            &format!("/workflows?workflow_type={}&page_size=10", seg(&wf_type)),
            None,
        )
        .await?;
    ensure!(
        list.status == 200,
        "list answered {}: {}",
        list.status,
        short(&list.body)
    );
    let found: Vec<&Value> = list.body["workflows"]
        .as_array()
        .map(|ws| {
            ws.iter()
                .filter(|w| w["workflow_id"] == id.as_str())
                .collect()
        })
        .unwrap_or_default();
    ensure!(
        found.len() == 1,
        "a list filtered on its type shows it {} times: {}",
        found.len(),
        short(&list.body)
    );
    let others = list.body["workflows"].as_array().map(Vec::len).unwrap_or(0);
    ensure!(
        others == 1,
        "a list filtered on a type of its own shows {others} workflows"
    );
    let history = history(&ctx, &id, &run).await?;
    ensure!(
        history.first().is_some_and(
            |e| e["event_type"] == "WorkflowStarted" || e["event_type"] == "StartAccepted"
        ),
        "history does not begin with the start: {:?}",
        types(&history)
    );
    let r = ctx
        .control(
            Method::POST,
            &format!("/workflows/{}/terminate", seg(&id)),
            Some(&json!({"reason": "conformance cleanup"})),
        )
        .await?;
    ensure!(
        (200..300).contains(&r.status),
        "terminate answered {}",
        r.status
    );
    Ok(())
}

pub async fn duplicate_start(ctx: Ctx) -> Outcome {
    let queue = ctx.name("q");
    let id = ctx.name("wf");
    let run = start(&ctx, &id, "conformance.dup", &queue, json!({})).await?;
    let body = json!({"workflow_id": id, "workflow_type": "conformance.dup", "task_queue": queue, "input": envelope()});
    let r = ctx.control(Method::POST, "/workflows", Some(&body)).await?;
    ensure!(
        r.status == 409 && ["duplicate_not_allowed", "instance_already_started"].contains(&r.reason()),
        "a second start answered {} {} (expected 409 duplicate_not_allowed or instance_already_started)",
        r.status,
        short(&r.body)
    );
    let mut existing = body.clone();
    existing["duplicate_policy"] = json!("use-existing");
    let r = ctx
        .control(Method::POST, "/workflows", Some(&existing))
        .await?;
    ensure!(
        (200..300).contains(&r.status),
        "use-existing answered {}: {}",
        r.status,
        short(&r.body)
    );
    ensure!(
        r.body["run_id"] == run.as_str(),
        "use-existing answered run {} not the running {run}",
        r.body["run_id"]
    );
    let r = ctx
        .control(
            Method::POST,
            &format!("/workflows/{}/terminate", seg(&id)),
            Some(&json!({"reason": "conformance cleanup"})),
        )
        .await?;
    ensure!(
        (200..300).contains(&r.status),
        "terminate answered {}",
        r.status
    );
    Ok(())
}

pub async fn schedule_lifecycle(ctx: Ctx) -> Outcome {
    let queue = ctx.name("q");
    register(&ctx, &queue).await?;
    let sid = ctx.name("sched");
    let wf_type = ctx.name("scheduled");
    let create = json!({"schedule_id": sid, "spec": {"intervals": [{"every": "PT1H"}]},
                        "action": {"workflow_type": wf_type, "task_queue": queue, "input": envelope()},
                        "overlap_policy": "allow_all", "note": "conformance"});
    let r = ctx
        .control(Method::POST, "/schedules", Some(&create))
        .await?;
    ensure!(
        r.status == 201 || r.status == 200,
        "create answered {}: {}",
        r.status,
        short(&r.body)
    );
    ensure!(
        r.body["schedule_id"] == sid.as_str(),
        "create answered schedule_id {}",
        r.body["schedule_id"]
    );
    let path = format!("/schedules/{}", seg(&sid));
    let d = ctx.control(Method::GET, &path, None).await?;
    ensure!(d.status == 200, "describe answered {}", d.status);
    ensure!(
        d.body["schedule_id"] == sid.as_str(),
        "describe answered {}",
        short(&d.body)
    );
    ensure!(
        d.body["next_fire_at"].is_string(),
        "describe has no next_fire_at: {}",
        short(&d.body)
    );
    let list = ctx
        .control(Method::GET, "/schedules?page_size=100", None)
        .await?;
    ensure!(list.status == 200, "list answered {}", list.status);
    ensure!(
        list.body["schedules"]
            .as_array()
            .is_some_and(|ss| ss.iter().any(|s| s["schedule_id"] == sid.as_str())),
        "list does not show {sid}"
    );
    // Trigger: a workflow of the action's type starts on the action's queue.
    let t = ctx
        .control(Method::POST, &format!("{path}/trigger"), Some(&json!({})))
        .await?;
    ensure!(
        (200..300).contains(&t.status),
        "trigger answered {}: {}",
        t.status,
        short(&t.body)
    );
    let task = poll(&ctx, "workflow", &queue).await?;
    ensure!(
        task["workflow_type"] == wf_type.as_str(),
        "the triggered task is of type {}",
        task["workflow_type"]
    );
    finish(&ctx, &task).await?;
    // Pause and resume.
    let p = ctx
        .control(
            Method::POST,
            &format!("{path}/pause"),
            Some(&json!({"note": "conformance"})),
        )
        .await?;
    ensure!(
        (200..300).contains(&p.status),
        "pause answered {}: {}",
        p.status,
        short(&p.body)
    );
    let d = ctx.control(Method::GET, &path, None).await?;
    ensure!(
        d.body["status"] == "paused",
        "a paused schedule is {}",
        d.body["status"]
    );
    let p = ctx
        .control(Method::POST, &format!("{path}/resume"), Some(&json!({})))
        .await?;
    ensure!(
        (200..300).contains(&p.status),
        "resume answered {}: {}",
        p.status,
        short(&p.body)
    );
    let d = ctx.control(Method::GET, &path, None).await?;
    ensure!(
        d.body["status"] == "active",
        "a resumed schedule is {}",
        d.body["status"]
    );
    // Delete: it is gone.
    let del = ctx.control(Method::DELETE, &path, None).await?;
    ensure!(
        (200..300).contains(&del.status),
        "delete answered {}: {}",
        del.status,
        short(&del.body)
    );
    let gone = ctx.control(Method::GET, &path, None).await?;
    ensure!(
        gone.status == 404 && gone.reason() == "schedule_not_found",
        "a deleted schedule answered {} {}",
        gone.status,
        short(&gone.body)
    );
    Ok(())
}

pub async fn schedule_refusals(ctx: Ctx) -> Outcome {
    let queue = ctx.name("q");
    let action =
        json!({"workflow_type": "conformance.scheduled", "task_queue": queue, "input": envelope()});
    let bad = json!({"schedule_id": ctx.name("bad"), "spec": {"cron_expressions": ["61 25 * * *"]}, "action": action});
    let r = ctx.control(Method::POST, "/schedules", Some(&bad)).await?;
    named_4xx(&r, "a schedule with cron 61 25 * * *")?;
    let gone = ctx
        .control(
            Method::GET,
            &format!("/schedules/{}", seg(&ctx.name("bad"))),
            None,
        )
        .await?;
    ensure!(
        gone.status == 404,
        "a refused schedule exists: {}",
        gone.status
    );
    let sid = ctx.name("dup");
    let good = json!({"schedule_id": sid, "spec": {"cron_expressions": ["0 3 * * *"]}, "action": action, "paused": true});
    let r = ctx.control(Method::POST, "/schedules", Some(&good)).await?;
    ensure!(
        r.status == 201 || r.status == 200,
        "create answered {}: {}",
        r.status,
        short(&r.body)
    );
    let r = ctx.control(Method::POST, "/schedules", Some(&good)).await?;
    ensure!(
        r.status == 409 && r.reason() == "schedule_already_exists",
        "a duplicate schedule id answered {} {}",
        r.status,
        short(&r.body)
    );
    let r = ctx
        .control(Method::DELETE, &format!("/schedules/{}", seg(&sid)), None)
        .await?;
    ensure!(
        (200..300).contains(&r.status),
        "delete answered {}",
        r.status
    );
    Ok(())
}

/// Skips a scenario the credential may not do (403), for an operator token without admin.
fn forbidden_skip(r: &crate::Reply, what: &str) -> Result<(), Stop> {
    if r.status == 403 {
        return Err(Stop::Skip(format!(
            "{what} needs a credential with the admin role: 403 {}",
            r.reason()
        )));
    }
    Ok(())
}

pub async fn namespace_isolation(ctx: Ctx) -> Outcome {
    let ns = ctx.name("ns").to_ascii_lowercase();
    let r = ctx
        .control(
            Method::POST,
            "/namespaces",
            Some(&json!({"name": ns, "description": "keel-conformance", "retention_days": 1})),
        )
        .await?;
    forbidden_skip(&r, "creating a namespace")?;
    ensure!(
        r.status == 201 || r.status == 200,
        "create namespace answered {}: {}",
        r.status,
        short(&r.body)
    );
    let d = ctx
        .control(Method::GET, &format!("/namespaces/{}", seg(&ns)), None)
        .await?;
    ensure!(
        d.status == 200,
        "describe namespace answered {}: {}",
        d.status,
        short(&d.body)
    );
    let u = ctx
        .control(
            Method::PUT,
            &format!("/namespaces/{}", seg(&ns)),
            Some(&json!({"description": "keel-conformance updated"})),
        )
        .await?;
    ensure!(
        (200..300).contains(&u.status),
        "update namespace answered {}: {}",
        u.status,
        short(&u.body)
    );
    let list = ctx.control(Method::GET, "/namespaces", None).await?;
    ensure!(
        list.status == 200
            && list.body["namespaces"]
                .as_array()
                .is_some_and(|a| a.iter().any(|n| n["name"] == ns.as_str())),
        "the namespace list does not show {ns}: {}",
        short(&list.body)
    );
    let dup = ctx
        .control(Method::POST, "/namespaces", Some(&json!({"name": ns})))
        .await?;
    named_4xx(&dup, "creating an existing namespace")?;
    // A workflow in the new namespace is invisible from the scenario's namespace.
    let other = ctx.clone();
    let other = crate::Ctx {
        client: ctx.client.in_namespace(&ns),
        ..other
    };
    let id = ctx.name("wf");
    start(&other, &id, "conformance.ns", &ctx.name("q"), json!({})).await?;
    describe(&other, &id).await?;
    let r = ctx
        .control(Method::GET, &format!("/workflows/{}", seg(&id)), None)
        .await?;
    ensure!(
        r.status == 404,
        "a workflow of {ns} is visible from {}: {}",
        ctx.client.namespace(),
        r.status
    );
    let sig = ctx
        .control(
            Method::POST,
            &format!("/workflows/{}/signal/x", seg(&id)),
            Some(&json!({"request_id": ctx.name("s")})),
        )
        .await?;
    ensure!(
        sig.status == 404,
        "a workflow of {ns} can be signalled from {}: {}",
        ctx.client.namespace(),
        sig.status
    );
    let missing = ctx
        .control(
            Method::GET,
            &format!(
                "/namespaces/{}",
                seg(&ctx.name("nope").to_ascii_lowercase())
            ),
            None,
        )
        .await?;
    ensure!(
        missing.status == 404 && missing.reason() == "namespace_not_found",
        "an unknown namespace answered {} {}",
        missing.status,
        short(&missing.body)
    );
    let r = other
        .control(
            Method::POST,
            &format!("/workflows/{}/terminate", seg(&id)),
            Some(&json!({})),
        )
        .await?;
    ensure!(
        (200..300).contains(&r.status),
        "terminate answered {}",
        r.status
    );
    Ok(())
}

pub async fn search_attributes(ctx: Ctx) -> Outcome {
    // A name of its own: letters, digits, '_'.
    let attr: String = format!("Conf{}", ctx.tag.replace('-', "_"));
    let r = ctx
        .control(
            Method::POST,
            "/search-attributes",
            Some(&json!({"name": attr, "type": "keyword"})),
        )
        .await?;
    forbidden_skip(&r, "registering a search attribute")?;
    ensure!(
        r.status == 201 || r.status == 200,
        "register answered {}: {}",
        r.status,
        short(&r.body)
    );
    let reserved = ctx
        .control(
            Method::POST,
            "/search-attributes",
            Some(&json!({"name": "WorkflowId", "type": "keyword"})),
        )
        .await?;
    named_4xx(&reserved, "registering the reserved name WorkflowId")?;
    let list = ctx.control(Method::GET, "/search-attributes", None).await?;
    ensure!(
        list.status == 200 && list.body.to_string().contains(&attr),
        "the registry does not list {attr}: {}",
        short(&list.body)
    );
    let queue = ctx.name("q");
    register(&ctx, &queue).await?;
    let id = ctx.name("wf");
    let run = start(
        &ctx,
        &id,
        "conformance.sa",
        &queue,
        json!({"search_attributes": {attr.clone(): "blue"}}),
    )
    .await?;
    let d = describe(&ctx, &id).await?;
    ensure!(
        d["search_attributes"][&attr] == "blue",
        "describe does not show {attr}=blue: {}",
        short(&d["search_attributes"])
    );
    let task = poll(&ctx, "workflow", &queue).await?;
    complete_wf(
        &ctx,
        &task,
        json!([{"type": "upsert_search_attributes", "attributes": {attr.clone(): "green"}},
                                     {"type": "start_timer", "delay_seconds": 3600}]),
    )
    .await?;
    let d = describe(&ctx, &id).await?;
    ensure!(
        d["search_attributes"][&attr] == "green",
        "the upsert is not visible: {}",
        short(&d["search_attributes"])
    );
    // The published visibility query grammar (equality predicates on registered search
    // attributes) is the schedule list's: a schedule carrying the attribute is found by
    // its value and not by another, and an undefined attribute is refused.
    let sid = ctx.name("sched");
    let create = json!({"schedule_id": sid, "spec": {"cron_expressions": ["0 3 * * *"]}, "paused": true,
                        "action": {"workflow_type": "conformance.sa", "task_queue": queue, "input": envelope()},
                        "search_attributes": {attr.clone(): "green"}});
    let r = ctx
        .control(Method::POST, "/schedules", Some(&create))
        .await?;
    ensure!(
        r.status == 201 || r.status == 200,
        "a schedule with {attr} answered {}: {}",
        r.status,
        short(&r.body)
    );
    let query = format!("{attr} = \"green\"");
    let list = ctx
        .control(
            Method::GET,
            &format!("/schedules?query={}&page_size=10", seg(&query)),
            None,
        )
        .await?;
    ensure!(
        list.status == 200,
        "a schedule list query {query} answered {}: {}",
        list.status,
        short(&list.body)
    );
    let ids: Vec<&str> = list.body["schedules"]
        .as_array()
        .map(|ss| {
            ss.iter()
                .filter_map(|s| s["schedule_id"].as_str())
                .collect()
        })
        .unwrap_or_default();
    ensure!(
        ids == [sid.as_str()],
        "the schedule query {query} found {ids:?}"
    );
    let none = ctx
        .control(
            Method::GET,
            &format!(
                "/schedules?query={}&page_size=10",
                seg(&format!("{attr} = \"blue\""))
            ),
            None,
        )
        .await?;
    ensure!(
        none.status == 200 && none.body["schedules"].as_array().is_some_and(Vec::is_empty),
        "another value matches: {}",
        short(&none.body)
    );
    let undefined = ctx
        .control(
            Method::GET,
            &format!(
                "/schedules?query={}",
                seg(&format!("{attr}Undefined = \"x\""))
            ),
            None,
        )
        .await?;
    named_4xx(
        &undefined,
        "a schedule list query on an undefined attribute",
    )?;
    let r = ctx
        .control(Method::DELETE, &format!("/schedules/{}", seg(&sid)), None)
        .await?;
    ensure!(
        (200..300).contains(&r.status),
        "delete schedule answered {}",
        r.status
    );
    let events = history(&ctx, &id, &run).await?;
    ctx.note(json!({"history": types(&events)}));
    let r = ctx
        .control(
            Method::POST,
            &format!("/workflows/{}/terminate", seg(&id)),
            Some(&json!({})),
        )
        .await?;
    ensure!(
        (200..300).contains(&r.status),
        "terminate answered {}",
        r.status
    );
    Ok(())
}

/// What an auth case sends: label, method, path, headers, body.
type AuthCase<'a> = (
    &'a str,
    Method,
    &'a str,
    Vec<(&'a str, &'a str)>,
    Option<Value>,
);

pub async fn auth_refusals(ctx: Ctx) -> Outcome {
    let (Some(control), Some(worker)) = (
        ctx.opts.control_token.clone(),
        ctx.opts.worker_token.clone(),
    ) else {
        return Err(Stop::NotApplicable(
            "no token given (--token): the server is checked as an open server".into(),
        ));
    };
    let poll_body =
        json!({"worker_id": ctx.name("worker"), "task_queue": ctx.name("q"), "timeout_seconds": 0});
    let wrong = format!("Bearer {}-wrong", ctx.tag);
    let cases: Vec<AuthCase<'_>> = vec![
        (
            "control, no token",
            Method::GET,
            "/workflows",
            vec![CONTROL_HEADER],
            None,
        ),
        (
            "control, wrong token",
            Method::GET,
            "/workflows",
            vec![CONTROL_HEADER, ("authorization", wrong.as_str())],
            None,
        ),
        (
            "worker, no token",
            Method::POST,
            "/worker/workflow-tasks/poll",
            vec![WORKER_HEADER],
            Some(poll_body.clone()),
        ),
        (
            "worker, wrong token",
            Method::POST,
            "/worker/workflow-tasks/poll",
            vec![WORKER_HEADER, ("authorization", wrong.as_str())],
            Some(poll_body.clone()),
        ),
        (
            "discovery, no token",
            Method::GET,
            "/cluster/info",
            vec![CONTROL_HEADER],
            None,
        ),
    ];
    for (what, method, path, headers, body) in cases {
        let r = ctx
            .client
            .raw(method.clone(), path, &headers, body.as_ref())
            .await;
        let r = ctx.record(&method, &format!("{path} ({what})"), r)?;
        ensure!(
            r.status == 401,
            "{what}: {method} {path} answered {} (expected 401): {}",
            r.status,
            short(&r.body)
        );
        ensure!(
            !r.body.to_string().contains(&wrong[7..]),
            "{what}: the refusal echoes the token"
        );
    }
    // The given credentials are accepted on their planes.
    register(&ctx, &ctx.name("q")).await?;
    let r = ctx
        .control(Method::GET, "/workflows?page_size=1", None)
        .await?;
    ensure!(
        r.status == 200,
        "the control token was refused: {} {}",
        r.status,
        short(&r.body)
    );
    let r = ctx
        .worker(
            Method::POST,
            "/worker/workflow-tasks/poll",
            Some(&poll_body),
        )
        .await?;
    ensure!(
        r.status == 200,
        "the worker token was refused: {} {}",
        r.status,
        short(&r.body)
    );
    // Split credentials: each is refused on the other plane unless it holds both roles.
    if control != worker {
        let h = format!("Bearer {worker}");
        let r = ctx
            .client
            .raw(
                Method::GET,
                "/workflows",
                &[CONTROL_HEADER, ("authorization", &h)],
                None,
            )
            .await;
        let r = ctx.record(&Method::GET, "/workflows (worker token)", r)?;
        ensure!(
            r.status == 403 || r.status == 200,
            "the worker token on a control route answered {}",
            r.status
        );
        ctx.note(json!({"worker_token_on_control_plane": r.status}));
    }
    Ok(())
}

pub async fn bad_input(ctx: Ctx) -> Outcome {
    let missing = ctx.name("missing");
    let cases: Vec<(&str, Method, String, Value, u16)> = vec![
        (
            "start without workflow_type",
            Method::POST,
            "/workflows".into(),
            json!({"workflow_id": ctx.name("a"), "task_queue": "q", "input": envelope()}),
            0,
        ),
        (
            "start with a number for workflow_id",
            Method::POST,
            "/workflows".into(),
            json!({"workflow_id": 7, "workflow_type": "t", "task_queue": "q"}),
            0,
        ),
        (
            "start with an empty workflow_id",
            Method::POST,
            "/workflows".into(),
            json!({"workflow_id": "", "workflow_type": "t", "task_queue": "q"}),
            0,
        ),
        (
            "start with priority 42 (0..9)",
            Method::POST,
            "/workflows".into(),
            json!({"workflow_id": ctx.name("b"), "workflow_type": "t", "task_queue": "q", "priority": 42}),
            0,
        ),
        (
            "start with duplicate_policy \"sometimes\"",
            Method::POST,
            "/workflows".into(),
            json!({"workflow_id": ctx.name("b2"), "workflow_type": "t", "task_queue": "q", "duplicate_policy": "sometimes"}),
            0,
        ),
        (
            "start with a string for execution_timeout_seconds",
            Method::POST,
            "/workflows".into(),
            json!({"workflow_id": ctx.name("c"), "workflow_type": "t", "task_queue": "q", "execution_timeout_seconds": "soon"}),
            0,
        ),
        (
            "describe of an unknown workflow",
            Method::GET,
            format!("/workflows/{missing}"),
            Value::Null,
            404,
        ),
        (
            "history of an unknown run",
            Method::GET,
            format!("/workflows/{missing}/runs/{missing}/history"),
            Value::Null,
            404,
        ),
        (
            "cancel of an unknown workflow",
            Method::POST,
            format!("/workflows/{missing}/cancel"),
            json!({}),
            404,
        ),
        (
            "update of an unknown workflow",
            Method::POST,
            format!("/workflows/{missing}/update/u"),
            json!({"request_id": "r", "wait_for": "accepted"}),
            404,
        ),
        (
            "list with page_size -1",
            Method::GET,
            "/workflows?page_size=-1".into(),
            Value::Null,
            0,
        ),
        (
            "describe of an unknown schedule",
            Method::GET,
            format!("/schedules/{missing}"),
            Value::Null,
            404,
        ),
        (
            "schedule without an action",
            Method::POST,
            "/schedules".into(),
            json!({"schedule_id": ctx.name("s"), "spec": {"intervals": [{"every": "PT1H"}]}}),
            0,
        ),
        (
            "schedule with a bad interval",
            Method::POST,
            "/schedules".into(),
            json!({"schedule_id": ctx.name("s2"), "spec": {"intervals": [{"every": "soon"}]}, "action": {"workflow_type": "t", "task_queue": "q"}}),
            0,
        ),
        (
            "unknown route",
            Method::GET,
            "/no-such-route".into(),
            Value::Null,
            404,
        ),
    ];
    for (what, method, path, body, want) in &cases {
        let b = (!body.is_null()).then_some(body);
        let r = ctx.control(method.clone(), path, b).await?;
        named_4xx(&r, what)?;
        ensure!(
            *want == 0 || r.status == *want,
            "{what}: answered {} (expected {want}) {}",
            r.status,
            short(&r.body)
        );
    }
    // Malformed JSON.
    let auth = ctx
        .opts
        .control_token
        .as_ref()
        .map(|t| format!("Bearer {t}"));
    let mut h = vec![CONTROL_HEADER];
    if let Some(a) = &auth {
        h.push(("authorization", a.as_str()));
    }
    let r = ctx
        .client
        .raw_bytes(
            Method::POST,
            "/workflows",
            &h,
            b"{\"workflow_id\": ".to_vec(),
        )
        .await;
    let r = ctx.record(&Method::POST, "/workflows (malformed JSON)", r)?;
    named_4xx(&r, "malformed JSON")?;
    let r = ctx
        .client
        .raw_bytes(Method::POST, "/workflows", &h, b"[1, 2]".to_vec())
        .await;
    let r = ctx.record(&Method::POST, "/workflows (a JSON array)", r)?;
    named_4xx(&r, "a JSON array for a body")?;
    // Worker plane.
    let wcases: Vec<(&str, String, Value)> = vec![
        (
            "poll without worker_id",
            "/worker/workflow-tasks/poll".into(),
            json!({"task_queue": "q", "timeout_seconds": 0}),
        ),
        (
            "poll with a negative timeout",
            "/worker/activity-tasks/poll".into(),
            json!({"worker_id": "w", "task_queue": "q", "timeout_seconds": -1}),
        ),
        (
            "completion of an unknown workflow task",
            format!("/worker/workflow-tasks/{missing}/complete"),
            json!({"lease_owner": "w", "workflow_task_attempt": 1, "commands": []}),
        ),
        (
            "completion of an unknown activity task",
            format!("/worker/activity-tasks/{missing}/complete"),
            json!({"activity_attempt_id": "x", "lease_owner": "w", "result": envelope()}),
        ),
        (
            "register without task_queue",
            "/worker/register".into(),
            json!({"worker_id": "w"}),
        ),
    ];
    for (what, path, body) in &wcases {
        let r = ctx.worker(Method::POST, path, Some(body)).await?;
        named_4xx(&r, what)?;
    }
    // An unknown command type in a real task: refused, the task still completable.
    let (queue, id, _run) = begin(&ctx, "conformance.badcommand").await?;
    let task = poll(&ctx, "workflow", &queue).await?;
    let r = complete_wf_raw(&ctx, &task, json!([{"type": "launch_rocket"}])).await?;
    named_4xx(&r, "an unknown command type")?;
    let r = complete_wf_raw(&ctx, &task, json!([{"type": "schedule_activity"}])).await?;
    named_4xx(&r, "schedule_activity without activity_type")?;
    let r = complete_wf_raw(&ctx, &task, json!([{"type": "complete_workflow", "result": envelope()}, {"type": "start_timer", "delay_seconds": 1}])).await?;
    named_4xx(&r, "a command after the terminal one")?;
    let r = ctx
        .control(
            Method::POST,
            &format!("/workflows/{}/signal/{}", seg(&id), "x".repeat(5000)),
            Some(&json!({"request_id": "r"})),
        )
        .await?;
    named_4xx(&r, "a 5000-character signal name")?;
    let r = ctx
        .control(
            Method::POST,
            &format!("/workflows/{}/terminate", seg(&id)),
            Some(&json!({})),
        )
        .await?;
    ensure!(
        (200..300).contains(&r.status),
        "terminate answered {}",
        r.status
    );
    Ok(())
}
