//! The `keel` command line's client commands: `keel workflow|schedule|namespace|
//! task-queue|worker|operator|system ...` talk to a running Keel (or any Durable Workflow
//! server) over the control-plane API, with human output by default and `--output json`
//! (the server's documents, always objects, as the upstream CLI's output schemas
//! describe them). `keel serve`, `keel conformance`, `keel bench` and `keel storage` are dispatched
//! before this crate (keel-http's `cli`); they are listed here so `keel --help` shows
//! every command.
//!
//! Exit statuses: see [`error::exit`].

mod api;
mod commands;
pub mod error;
mod render;

use std::io::Write;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use crate::api::Api;
use crate::commands::{namespace, operator, schedule, system, task_queue, worker, workflow};
use crate::error::{exit, CliError};
use crate::render::Out;

const AFTER_HELP: &str = "Exit status: 0 ok, 1 server error, 2 usage, 3 invalid input \
(400/422), 4 not found (404), 5 refused (401/403/409/429), 6 server unreachable.";

#[derive(Parser, Debug)]
#[command(
    name = "keel",
    version,
    about = "Keel, a durable workflow server, and the command line to operate it",
    after_help = AFTER_HELP,
    propagate_version = true
)]
struct Cli {
    /// Server URL.
    #[arg(
        long,
        global = true,
        env = "DURABLE_WORKFLOW_SERVER_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    server: String,
    /// Namespace of the objects named.
    #[arg(
        long,
        short = 'n',
        global = true,
        env = "DURABLE_WORKFLOW_NAMESPACE",
        default_value = "default"
    )]
    namespace: String,
    /// Bearer token (also KEEL_TOKEN or DURABLE_WORKFLOW_AUTH_TOKEN); never printed.
    #[arg(long, global = true, env = "KEEL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM CA certificate(s) to trust for an https:// server besides the system's.
    #[arg(long, global = true, env = "KEEL_CA_CERT")]
    ca_cert: Option<std::path::PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// Tables and `key value` lines for people.
    Table,
    /// The server's JSON document, one object.
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (`keel serve --help` lists its flags).
    Serve {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<String>,
    },
    /// Check a Durable Workflow server against the protocol (`keel conformance --help`).
    Conformance {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<String>,
    },
    /// Load-test a Durable Workflow server (`keel bench --help`; also `keel-bench`).
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<String>,
    },
    /// Offline look at a store: `keel storage check [--storage ... | --data-dir DIR]`.
    Storage {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<String>,
    },
    /// Start, find, read and steer workflows.
    #[command(subcommand)]
    Workflow(workflow::Cmd),
    /// Schedules: cron or interval starts of a workflow.
    #[command(subcommand)]
    Schedule(schedule::Cmd),
    /// Namespaces.
    #[command(subcommand)]
    Namespace(namespace::Cmd),
    /// Task queues: backlog, pollers, build-id drains.
    #[command(subcommand, name = "task-queue")]
    TaskQueue(task_queue::Cmd),
    /// Registered workers.
    #[command(subcommand)]
    Worker(worker::Cmd),
    /// The operator recovery routes.
    #[command(subcommand)]
    Operator(operator::Cmd),
    /// Server health, task repair and retention.
    #[command(subcommand)]
    System(system::Cmd),
    /// Prints a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
}

/// Everything a command needs: the server, the output, the format.
pub(crate) struct Ctx<'a> {
    pub api: Api,
    pub out: Out<'a>,
    pub json: bool,
}

impl Ctx<'_> {
    /// Prints `doc` as JSON, or through `human` for people. A document without a
    /// `namespace` gets the command's (the upstream output schemas require it).
    pub fn emit(
        &mut self,
        mut doc: serde_json::Value,
        human: impl FnOnce(&mut Out<'_>, &serde_json::Value),
    ) {
        if let Some(map) = doc.as_object_mut() {
            map.entry("namespace")
                .or_insert_with(|| self.api.namespace().into());
        }
        if self.json {
            self.out.json(&doc);
        } else {
            human(&mut self.out, &doc);
        }
    }
}

/// Runs one command line (without the program name) and returns its exit status.
pub fn run(args: Vec<String>) -> u8 {
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return exit::SERVER;
        }
    };
    runtime.block_on(execute(args, &mut lock, render::colour_wanted()))
}

/// [`run`] inside a runtime, writing to `w` (tests capture it).
pub async fn execute(args: Vec<String>, w: &mut dyn Write, colour: bool) -> u8 {
    let argv = std::iter::once("keel".to_string()).chain(args);
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            return code;
        }
    };
    let token = cli
        .token
        .clone()
        .or_else(|| std::env::var("DURABLE_WORKFLOW_AUTH_TOKEN").ok())
        .filter(|t| !t.is_empty());
    let json = cli.output == Format::Json;
    let api = match Api::new(&cli.server, &cli.namespace, token, cli.ca_cert.as_deref()) {
        Ok(api) => api,
        Err(e) => {
            eprintln!("{}", e.human());
            return e.exit_code();
        }
    };
    let mut ctx = Ctx {
        api,
        out: Out {
            w,
            colour,
            now: time::OffsetDateTime::now_utc(),
        },
        json,
    };
    let result = match cli.command {
        Command::Serve { .. }
        | Command::Conformance { .. }
        | Command::Bench { .. }
        | Command::Storage { .. } => {
            Err(CliError::Input(
                "`keel serve`, `keel conformance`, `keel bench` and `keel storage` run from the keel binary"
                    .into(),
            ))
        }
        Command::Workflow(cmd) => workflow::run(cmd, &mut ctx).await,
        Command::Schedule(cmd) => schedule::run(cmd, &mut ctx).await,
        Command::Namespace(cmd) => namespace::run(cmd, &mut ctx).await,
        Command::TaskQueue(cmd) => task_queue::run(cmd, &mut ctx).await,
        Command::Worker(cmd) => worker::run(cmd, &mut ctx).await,
        Command::Operator(cmd) => operator::run(cmd, &mut ctx).await,
        Command::System(cmd) => system::run(cmd, &mut ctx).await,
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "keel", ctx.out.w);
            Ok(())
        }
    };
    match result {
        Ok(()) => exit::OK,
        Err(e) => {
            if json {
                ctx.out.json(&e.json());
            }
            eprintln!("{}", e.human());
            e.exit_code()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }
}
