//! `keel system ...`: health, task repair, activity timeouts and retention.

use clap::Subcommand;
use serde_json::json;

use crate::error::CliError;
use crate::render::s;
use crate::Ctx;

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// The server's health checks.
    Health,
    /// Runs whose tasks need re-creating; --pass repairs them now.
    Repair {
        #[arg(long)]
        pass: bool,
    },
    /// Closed runs past the namespace's retention; --pass removes them now.
    Retention {
        #[arg(long)]
        pass: bool,
    },
    /// Overdue activity timeouts; --pass enforces them now.
    ActivityTimeouts {
        #[arg(long)]
        pass: bool,
    },
}

pub async fn run(cmd: Cmd, ctx: &mut Ctx<'_>) -> Result<(), CliError> {
    let (route, pass) = match cmd {
        Cmd::Health => {
            let doc = ctx.api.get("/system/health").await?;
            ctx.emit(doc, |out, d| {
                let health = &d["health"];
                let healthy = health["healthy"].as_bool().unwrap_or(false);
                out.line(&format!(
                    "healthy  {}",
                    out.status(if healthy { "ok" } else { "unhealthy" })
                ));
                let rows: Vec<Vec<String>> = health["checks"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(name, c)| vec![name.clone(), out.status(&s(c, "status"))])
                    .collect();
                out.table(&["check", "status"], &rows);
            });
            return Ok(());
        }
        Cmd::Repair { pass } => ("repair", pass),
        Cmd::Retention { pass } => ("retention", pass),
        Cmd::ActivityTimeouts { pass } => ("activity-timeouts", pass),
    };
    let doc = if pass {
        ctx.api
            .post(&format!("/system/{route}/pass"), &json!({}))
            .await?
    } else {
        ctx.api.get(&format!("/system/{route}")).await?
    };
    ctx.emit(doc, |out, d| out.scalars(d));
    Ok(())
}
