//! `keel namespace ...`.

use clap::Subcommand;
use serde_json::{json, Value};

use crate::api::seg;
use crate::commands::without_nulls;
use crate::error::CliError;
use crate::render::{s, Out};
use crate::Ctx;

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Lists namespaces.
    List,
    /// One namespace.
    Describe { name: String },
    /// Creates a namespace (admin).
    Create {
        name: String,
        #[arg(long)]
        description: Option<String>,
        /// Days a closed run is kept (1..365).
        #[arg(long)]
        retention_days: Option<u32>,
    },
    /// Changes a namespace's description or retention (admin).
    Update {
        name: String,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        retention_days: Option<u32>,
    },
}

pub async fn run(cmd: Cmd, ctx: &mut Ctx<'_>) -> Result<(), CliError> {
    match cmd {
        Cmd::List => {
            let mut doc = ctx.api.get("/namespaces").await?;
            // Each entry named by `name` and `namespace` both, as in `describe`.
            for n in doc["namespaces"].as_array_mut().into_iter().flatten() {
                n["namespace"] = n["name"].clone();
            }
            ctx.emit(doc, |out, d| {
                let rows: Vec<Vec<String>> = d["namespaces"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|n| {
                        vec![
                            s(n, "name"),
                            out.status(&s(n, "status")),
                            s(n, "retention_days"),
                            s(n, "description"),
                        ]
                    })
                    .collect();
                out.table(&["name", "status", "retention days", "description"], &rows);
            });
        }
        Cmd::Describe { name } => {
            let doc = ctx.api.get(&format!("/namespaces/{}", seg(&name))).await?;
            emit_one(ctx, doc);
        }
        Cmd::Create {
            name,
            description,
            retention_days,
        } => {
            let body =
                json!({"name": name, "description": description, "retention_days": retention_days});
            let doc = ctx.api.post("/namespaces", &without_nulls(body)).await?;
            emit_one(ctx, doc);
        }
        Cmd::Update {
            name,
            description,
            retention_days,
        } => {
            let body = json!({"description": description, "retention_days": retention_days});
            let doc = ctx
                .api
                .put(&format!("/namespaces/{}", seg(&name)), &without_nulls(body))
                .await?;
            emit_one(ctx, doc);
        }
    }
    Ok(())
}

/// A namespace document: the upstream schema names it by `name` and `namespace` both.
fn emit_one(ctx: &mut Ctx<'_>, mut doc: Value) {
    doc["namespace"] = doc["name"].clone();
    ctx.emit(doc, show);
}

fn show(out: &mut Out<'_>, d: &Value) {
    out.fields(&[
        ("name", s(d, "name")),
        ("status", out.status(&s(d, "status"))),
        ("description", s(d, "description")),
        ("retention_days", s(d, "retention_days")),
        ("created", out.when(&d["created_at"])),
        ("updated", out.when(&d["updated_at"])),
    ]);
}
