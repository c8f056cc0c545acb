//! `keel operator ...`: the operator recovery routes (seed: "Operator API"), with their
//! bodies' camelCase fields as flags.

use clap::Subcommand;
use serde_json::{json, Value};

use crate::error::CliError;
use crate::render::s;
use crate::Ctx;

const BASE: &str = "/v2/admin/operator/restate";

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Read-only health of ingress, admin API, deployments, services and invocations.
    Doctor,
    /// Registers the service URL again (admin).
    ForceRedeploy {
        #[arg(long)]
        service_url: String,
        /// Forced registration (the route's default); --force false to ask politely.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        force: bool,
    },
    /// Drains every deployment except the one at the service URL (admin).
    CleanupStaleDeployments {
        #[arg(long)]
        service_url: String,
        #[arg(long)]
        force_drain: bool,
    },
    /// Prepares one workflow key for a fresh start (admin).
    RecoverStuckWorkflow {
        #[arg(long)]
        service_name: String,
        #[arg(long)]
        service_key: String,
    },
}

pub async fn run(cmd: Cmd, ctx: &mut Ctx<'_>) -> Result<(), CliError> {
    let (route, body) = match cmd {
        Cmd::Doctor => ("doctor", json!({})),
        Cmd::ForceRedeploy { service_url, force } => (
            "force-redeploy",
            json!({"serviceUrl": service_url, "force": force}),
        ),
        Cmd::CleanupStaleDeployments {
            service_url,
            force_drain,
        } => (
            "cleanup-stale-deployments",
            json!({"serviceUrl": service_url, "forceDrain": force_drain}),
        ),
        Cmd::RecoverStuckWorkflow {
            service_name,
            service_key,
        } => (
            "recover-stuck-workflow",
            json!({"serviceName": service_name, "serviceKey": service_key}),
        ),
    };
    let doc = ctx.api.post(&format!("{BASE}/{route}"), &body).await?;
    ctx.emit(doc, |out, d| {
        // Doctor: a line per component (an object with its own status); then the
        // document's own fields.
        let rows: Vec<Vec<String>> = d
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, c)| c.get("status").is_some_and(Value::is_string))
            .map(|(name, c)| vec![name.clone(), out.status(&s(c, "status")), s(c, "error")])
            .collect();
        out.scalars(d);
        if !rows.is_empty() {
            out.line("");
            out.table(&["component", "status", "error"], &rows);
        }
    });
    Ok(())
}
