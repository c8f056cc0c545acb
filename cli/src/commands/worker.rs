//! `keel worker ...`.

use clap::Subcommand;

use crate::api::seg;
use crate::error::CliError;
use crate::render::s;
use crate::Ctx;

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Lists registered workers and when each was last heard from.
    List,
    /// One worker's registration.
    Describe { worker_id: String },
}

pub async fn run(cmd: Cmd, ctx: &mut Ctx<'_>) -> Result<(), CliError> {
    match cmd {
        Cmd::List => {
            let doc = ctx.api.get("/workers").await?;
            ctx.emit(doc, |out, d| {
                let rows: Vec<Vec<String>> = d["workers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|w| {
                        vec![
                            s(w, "worker_id"),
                            s(w, "task_queue"),
                            s(w, "build_id"),
                            out.status(&s(w, "status")),
                            out.when(&w["last_heartbeat_at"]),
                        ]
                    })
                    .collect();
                out.table(
                    &[
                        "worker id",
                        "task queue",
                        "build id",
                        "status",
                        "last heartbeat",
                    ],
                    &rows,
                );
            });
        }
        Cmd::Describe { worker_id } => {
            let doc = ctx
                .api
                .get(&format!("/workers/{}", seg(&worker_id)))
                .await?;
            ctx.emit(doc, |out, d| {
                out.fields(&[
                    ("worker_id", s(d, "worker_id")),
                    ("task_queue", s(d, "task_queue")),
                    ("build_id", s(d, "build_id")),
                    ("runtime", s(d, "runtime")),
                    ("sdk_version", s(d, "sdk_version")),
                    ("status", out.status(&s(d, "status"))),
                    ("last_heartbeat", out.when(&d["last_heartbeat_at"])),
                    ("workflow_types", s(d, "supported_workflow_types")),
                    ("activity_types", s(d, "supported_activity_types")),
                ])
            });
        }
    }
    Ok(())
}
