//! `keel task-queue ...`.

use clap::Subcommand;
use serde_json::{json, Value};

use crate::api::seg;
use crate::error::CliError;
use crate::render::s;
use crate::Ctx;

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Lists task queues with their backlog.
    List,
    /// One queue: backlog, leases, pollers.
    Describe { name: String },
    /// Stops handing new tasks to one build id's workers on the queue.
    Drain {
        name: String,
        /// The build id (omit for the unversioned cohort).
        #[arg(long)]
        build_id: Option<String>,
    },
    /// Lifts a drain.
    Resume {
        name: String,
        #[arg(long)]
        build_id: Option<String>,
    },
}

pub async fn run(cmd: Cmd, ctx: &mut Ctx<'_>) -> Result<(), CliError> {
    match cmd {
        Cmd::List => {
            let doc = ctx.api.get("/task-queues").await?;
            ctx.emit(doc, |out, d| {
                let rows: Vec<Vec<String>> = d["task_queues"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|q| {
                        let st = &q["stats"];
                        vec![
                            s(q, "name"),
                            s(&st["workflow_tasks"], "ready"),
                            s(&st["activity_tasks"], "ready"),
                            s(q, "current_leases"),
                            q["pollers"].as_array().map_or(0, Vec::len).to_string(),
                        ]
                    })
                    .collect();
                out.table(
                    &[
                        "task queue",
                        "workflow tasks ready",
                        "activity tasks ready",
                        "leased",
                        "pollers",
                    ],
                    &rows,
                );
            });
        }
        Cmd::Describe { name } => {
            let doc = ctx.api.get(&format!("/task-queues/{}", seg(&name))).await?;
            ctx.emit(doc, show);
        }
        Cmd::Drain { name, build_id } => drain(ctx, &name, build_id, "drain").await?,
        Cmd::Resume { name, build_id } => drain(ctx, &name, build_id, "resume").await?,
    }
    Ok(())
}

async fn drain(
    ctx: &mut Ctx<'_>,
    name: &str,
    build_id: Option<String>,
    action: &str,
) -> Result<(), CliError> {
    let path = format!("/task-queues/{}/build-ids/{action}", seg(name));
    let mut doc = ctx.api.post(&path, &json!({"build_id": build_id})).await?;
    doc["task_queue"] = name.into();
    ctx.emit(doc, |out, d| {
        out.fields(&[
            ("task_queue", s(d, "task_queue")),
            ("build_id", s(d, "build_id")),
            ("outcome", s(d, "outcome")),
            ("state", s(d, "state")),
        ])
    });
    Ok(())
}

fn show(out: &mut crate::render::Out<'_>, d: &Value) {
    let st = &d["stats"];
    out.fields(&[
        ("name", s(d, "name")),
        (
            "workflow_tasks",
            format!(
                "ready {}  leased {}  parked polls {}",
                s(&st["workflow_tasks"], "ready"),
                s(&st["workflow_tasks"], "leased"),
                s(&st["workflow_tasks"], "parked_pollers")
            ),
        ),
        (
            "activity_tasks",
            format!(
                "ready {}  leased {}  parked polls {}",
                s(&st["activity_tasks"], "ready"),
                s(&st["activity_tasks"], "leased"),
                s(&st["activity_tasks"], "parked_pollers")
            ),
        ),
    ]);
    let rows: Vec<Vec<String>> = d["pollers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            vec![
                s(p, "worker_id"),
                s(p, "build_id"),
                out.when(&p["last_heartbeat_at"]),
            ]
        })
        .collect();
    out.line("");
    out.table(&["poller", "build id", "last heartbeat"], &rows);
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use time::OffsetDateTime;

    use super::show;
    use crate::render::Out;

    #[test]
    fn describe_shows_when_each_poller_last_heartbeat_as_the_server_names_it() {
        let mut buf = Vec::new();
        let now = OffsetDateTime::parse(
            "2026-12-03T12:00:00Z",
            &time::format_description::well_known::Rfc3339,
        )
        .expect("time");
        let mut out = Out {
            w: &mut buf,
            colour: false,
            now,
        };
        let doc = json!({
            "name": "orders",
            "stats": {},
            "pollers": [{"worker_id": "w-1", "build_id": "b1", "last_heartbeat_at": "2026-12-03T11:59:30Z"}],
        });
        show(&mut out, &doc);
        let text = String::from_utf8(buf).expect("utf-8");
        let row = text
            .lines()
            .find(|l| l.starts_with("w-1"))
            .expect("poller row");
        assert!(row.contains("30s ago"), "{text}");
    }
}
