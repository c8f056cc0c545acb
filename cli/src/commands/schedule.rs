//! `keel schedule ...`.

use clap::Subcommand;
use serde_json::{json, Value};

use crate::api::{query, seg};
use crate::commands::{arguments, json_object, without_nulls};
use crate::error::CliError;
use crate::render::{s, Out};
use crate::Ctx;

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Lists schedules with their next fire time.
    List {
        #[arg(long)]
        page_token: Option<String>,
    },
    /// One schedule: spec, action, next fires, recent actions.
    Describe {
        schedule_id: String,
    },
    /// Creates a schedule from flags, or from a whole JSON body (--body).
    Create {
        schedule_id: String,
        /// A cron expression (repeatable).
        #[arg(long)]
        cron: Vec<String>,
        /// An ISO 8601 interval such as PT30M (repeatable).
        #[arg(long)]
        every: Vec<String>,
        #[arg(long = "workflow-type")]
        workflow_type: Option<String>,
        #[arg(long, default_value = "default")]
        task_queue: String,
        /// Arguments of each started workflow, as JSON.
        #[arg(long)]
        input: Option<String>,
        #[arg(long)]
        timezone: Option<String>,
        /// skip, buffer_one, buffer_all, cancel_other, terminate_other, allow_all.
        #[arg(long)]
        overlap_policy: Option<String>,
        #[arg(long)]
        paused: bool,
        /// The request body as JSON (the API's fields); flags are then ignored.
        #[arg(long, conflicts_with_all = ["cron", "every", "workflow_type"])]
        body: Option<String>,
    },
    /// Replaces a schedule's fields with those of a JSON body.
    Update {
        schedule_id: String,
        #[arg(long)]
        body: String,
    },
    /// Stops firing until resumed.
    Pause {
        schedule_id: String,
        #[arg(long)]
        note: Option<String>,
    },
    Resume {
        schedule_id: String,
        #[arg(long)]
        note: Option<String>,
    },
    /// Starts the action now, once.
    Trigger {
        schedule_id: String,
    },
    /// Fires every occurrence between two times (RFC 3339).
    Backfill {
        schedule_id: String,
        #[arg(long)]
        start: String,
        #[arg(long)]
        end: String,
    },
    Delete {
        schedule_id: String,
    },
}

pub async fn run(cmd: Cmd, ctx: &mut Ctx<'_>) -> Result<(), CliError> {
    match cmd {
        Cmd::List { page_token } => {
            let path = format!("/schedules{}", query(&[("next_page_token", page_token)]));
            let doc = ctx.api.get(&path).await?;
            ctx.emit(doc, |out, d| {
                let rows: Vec<Vec<String>> = d["schedules"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|sc| {
                        vec![
                            s(sc, "schedule_id"),
                            s(sc, "workflow_type"),
                            out.status(&s(sc, "status")),
                            spec_text(&sc["spec"]),
                            out.when(&sc["next_fire_at"]),
                            out.when(&sc["last_fired_at"]),
                        ]
                    })
                    .collect();
                out.table(
                    &[
                        "schedule id",
                        "workflow type",
                        "status",
                        "spec",
                        "next fire",
                        "last fired",
                    ],
                    &rows,
                );
            });
        }
        Cmd::Describe { schedule_id } => {
            let doc = ctx.api.get(&path(&schedule_id)).await?;
            ctx.emit(doc, show);
        }
        Cmd::Create {
            schedule_id,
            cron,
            every,
            workflow_type,
            task_queue,
            input,
            timezone,
            overlap_policy,
            paused,
            body,
        } => {
            let mut body = match body {
                Some(text) => json_object("--body", &text)?,
                None => {
                    let workflow_type = workflow_type.ok_or_else(|| {
                        CliError::Input("--workflow-type is required (or give --body)".into())
                    })?;
                    let intervals: Vec<Value> = every.iter().map(|e| json!({"every": e})).collect();
                    without_nulls(json!({
                        "spec": without_nulls(json!({
                            "cron_expressions": cron,
                            "intervals": intervals,
                            "timezone": timezone,
                        })),
                        "action": {
                            "workflow_type": workflow_type,
                            "task_queue": task_queue,
                            "input": arguments(input.as_deref()),
                        },
                        "overlap_policy": overlap_policy,
                        "paused": paused.then_some(true),
                    }))
                }
            };
            body["schedule_id"] = schedule_id.into();
            let doc = ctx.api.post("/schedules", &body).await?;
            ctx.emit(doc, show);
        }
        Cmd::Update { schedule_id, body } => {
            let doc = ctx
                .api
                .put(&path(&schedule_id), &json_object("--body", &body)?)
                .await?;
            ctx.emit(doc, show);
        }
        Cmd::Pause { schedule_id, note } => {
            let body = without_nulls(json!({"note": note}));
            let doc = ctx
                .api
                .post(&format!("{}/pause", path(&schedule_id)), &body)
                .await?;
            operation(ctx, &schedule_id, doc, "paused");
        }
        Cmd::Resume { schedule_id, note } => {
            let body = without_nulls(json!({"note": note}));
            let doc = ctx
                .api
                .post(&format!("{}/resume", path(&schedule_id)), &body)
                .await?;
            operation(ctx, &schedule_id, doc, "resumed");
        }
        Cmd::Trigger { schedule_id } => {
            let doc = ctx
                .api
                .post(&format!("{}/trigger", path(&schedule_id)), &json!({}))
                .await?;
            ctx.emit(doc, |out, d| {
                out.fields(&[
                    ("schedule_id", s(d, "schedule_id")),
                    ("outcome", s(d, "outcome")),
                    ("workflow_id", s(d, "workflow_id")),
                    ("run_id", s(d, "run_id")),
                    ("reason", s(d, "reason")),
                ])
            });
        }
        Cmd::Backfill {
            schedule_id,
            start,
            end,
        } => {
            let body = json!({"start_time": start, "end_time": end});
            let doc = ctx
                .api
                .post(&format!("{}/backfill", path(&schedule_id)), &body)
                .await?;
            operation(ctx, &schedule_id, doc, "backfilled");
        }
        Cmd::Delete { schedule_id } => {
            let doc = ctx.api.delete(&path(&schedule_id)).await?;
            operation(ctx, &schedule_id, doc, "deleted");
        }
    }
    Ok(())
}

fn path(schedule_id: &str) -> String {
    format!("/schedules/{}", seg(schedule_id))
}

/// The answer of pause/resume/backfill/delete, with the fields the upstream
/// `schedule-operation` document names (`schedule_id`, `outcome`).
fn operation(ctx: &mut Ctx<'_>, schedule_id: &str, mut doc: Value, outcome: &str) {
    if !doc.is_object() {
        doc = json!({});
    }
    doc["schedule_id"] = schedule_id.into();
    if doc["outcome"].is_null() {
        doc["outcome"] = outcome.into();
    }
    ctx.emit(doc, |out, d| {
        out.fields(&[
            ("schedule_id", s(d, "schedule_id")),
            ("outcome", s(d, "outcome")),
            ("status", s(d, "status")),
        ])
    });
}

fn show(out: &mut Out<'_>, d: &Value) {
    let info = &d["info"];
    out.fields(&[
        ("schedule_id", s(d, "schedule_id")),
        ("status", out.status(&s(d, "status"))),
        ("spec", spec_text(&d["spec"])),
        ("workflow_type", s(&d["action"], "workflow_type")),
        ("task_queue", s(&d["action"], "task_queue")),
        ("overlap_policy", s(d, "overlap_policy")),
        ("next_fire", out.when(&d["next_fire_at"])),
        ("last_fired", out.when(&d["last_fired_at"])),
        ("fires", s(d, "fires_count")),
        ("note", s(d, "note")),
    ]);
    let upcoming: Vec<String> = info["future_action_times"]
        .as_array()
        .into_iter()
        .flatten()
        .take(5)
        .map(|t| format!("{} ({})", t.as_str().unwrap_or(""), out.when(t)))
        .collect();
    if !upcoming.is_empty() {
        out.line("upcoming:");
        for u in upcoming {
            out.line(&format!("  {u}"));
        }
    }
    let recent: Vec<Vec<String>> = info["recent_actions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            vec![
                s(a, "workflow_id"),
                s(a, "run_id"),
                out.when(&a["started_at"]),
            ]
        })
        .collect();
    if !recent.is_empty() {
        out.line("recent actions:");
        out.table(&["workflow id", "run id", "started"], &recent);
    }
}

/// "cron */5 * * * *; every PT30M" for a person.
fn spec_text(spec: &Value) -> String {
    let mut parts: Vec<String> = spec["cron_expressions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|c| format!("cron {c}"))
        .collect();
    parts.extend(
        spec["intervals"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| format!("every {}", s(i, "every"))),
    );
    parts.join("; ")
}
