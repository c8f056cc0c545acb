//! The `keel` binary: `keel serve` runs the server on the embedded RocksDB default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use keel_engine::clock::SystemClock;
use keel_engine::storage::KvStore;
use keel_engine::{Engine, EngineConfig};
use keel_http::{serve, AppState, AuthConfig, NodeRoles};
use keel_storage_rocksdb::{RocksOptions, RocksStore};
use tokio::net::TcpListener;

/// mimalloc instead of glibc malloc: the request path allocates many small, short-lived
/// buffers (JSON values, keys, hyper headers), where glibc's arena bookkeeping showed
/// up as ~15 % of server CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The documented default listen address.
const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

const USAGE: &str = "usage: keel serve [--listen ADDR] [--data-dir DIR] \
[--workflow-task-lease-seconds N] [--activity-task-lease-seconds N] \
[--auth-file FILE] [--roles ROLE,...]

  --listen ADDR                      address to listen on (default 127.0.0.1:8080)
  --data-dir DIR                     RocksDB data directory (default ./keel-data)
  --workflow-task-lease-seconds N    workflow task lease (default 300)
  --activity-task-lease-seconds N    activity task lease (default 300)
  --max-parked-polls N               long-polls parked on this node at once (default 10000)
  --max-parked-polls-per-queue N     long-polls parked on one queue at once (default 2000)
  --max-leases-per-queue N           admission: leased tasks per queue and kind (default unbounded)
  --auth-file FILE                   bearer tokens (TOML); KEEL_TOKENS=role:token,... adds more.
                                     Without any token Keel serves only on a loopback address.
  --roles ROLE,...                   topology roles this node hosts (default api_ingress,
                                     control_plane,matching,history_projection,scheduler)

Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=keel=debug) to change the level.";

struct ServeArgs {
    listen: SocketAddr,
    data_dir: PathBuf,
    workflow_lease: u64,
    activity_lease: u64,
    park_limits: keel_engine::matching::ParkLimits,
    max_leases_per_queue: Option<u64>,
    auth_file: Option<PathBuf>,
    roles: NodeRoles,
}

fn parse_args(args: &[String]) -> Result<ServeArgs, String> {
    let mut it = args.iter();
    match it.next().map(String::as_str) {
        Some("serve") => {}
        Some("--help" | "-h" | "help") | None => return Err(USAGE.to_string()),
        Some(other) => return Err(format!("unknown command '{other}'\n\n{USAGE}")),
    }
    let mut parsed = ServeArgs {
        listen: DEFAULT_LISTEN
            .parse()
            .expect("invariant: default address parses"),
        data_dir: PathBuf::from("./keel-data"),
        workflow_lease: 300,
        activity_lease: 300,
        park_limits: keel_engine::matching::ParkLimits::default(),
        max_leases_per_queue: None,
        auth_file: None,
        roles: NodeRoles::default(),
    };
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        let positive = |v: String| match v.parse::<u64>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(format!("{flag} must be a whole number, at least 1")),
        };
        match flag.as_str() {
            "--listen" => parsed.listen = value()?.parse().map_err(|e| format!("--listen: {e}"))?,
            "--data-dir" => parsed.data_dir = PathBuf::from(value()?),
            "--workflow-task-lease-seconds" => parsed.workflow_lease = positive(value()?)?,
            "--activity-task-lease-seconds" => parsed.activity_lease = positive(value()?)?,
            "--max-parked-polls" => parsed.park_limits.per_node = positive(value()?)? as usize,
            "--max-parked-polls-per-queue" => {
                parsed.park_limits.per_queue = positive(value()?)? as usize
            }
            "--max-leases-per-queue" => parsed.max_leases_per_queue = Some(positive(value()?)?),
            "--auth-file" => parsed.auth_file = Some(PathBuf::from(value()?)),
            "--roles" => {
                parsed.roles = NodeRoles::parse(&value()?).map_err(|e| format!("--roles: {e}"))?
            }
            "--help" | "-h" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown flag '{other}'\n\n{USAGE}")),
        }
    }
    Ok(parsed)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&args) {
        Ok(a) => a,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keel: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            ExitCode::FAILURE
        }
    }
}

/// Loads the tokens of `--auth-file` and `KEEL_TOKENS`, and applies the open-mode rule:
/// without tokens Keel serves only on loopback, and says so.
fn load_auth(args: &ServeArgs) -> Result<AuthConfig, String> {
    let mut auth = AuthConfig::open();
    if let Some(path) = &args.auth_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the auth file {}: {e}", path.display()))?;
        auth.add_toml(&text)
            .map_err(|e| format!("invalid auth file {}: {e}", path.display()))?;
    }
    if let Ok(value) = std::env::var("KEEL_TOKENS") {
        auth.add_env(&value)
            .map_err(|e| format!("invalid KEEL_TOKENS: {e}"))?;
    }
    if auth.is_open() {
        if !args.listen.ip().is_loopback() {
            return Err(format!(
                "refusing to serve on {} without authentication: configure tokens with \
                 --auth-file FILE or KEEL_TOKENS=role:token,... (roles: worker, operator, admin), \
                 or listen on a loopback address such as 127.0.0.1",
                args.listen
            ));
        }
        tracing::warn!(
            addr = %args.listen,
            "AUTHENTICATION IS DISABLED: no tokens are configured, every request is accepted \
             with every role; serving on loopback only"
        );
    } else {
        let summary = auth
            .summary()
            .into_iter()
            .map(|(role, n)| format!("{role}={n}"))
            .collect::<Vec<_>>()
            .join(" ");
        tracing::info!(tokens = auth.len(), by_role = %summary, "bearer-token authentication enabled");
    }
    Ok(auth)
}

async fn run(args: ServeArgs) -> Result<(), String> {
    let auth = load_auth(&args)?;
    std::fs::create_dir_all(&args.data_dir)
        .map_err(|e| format!("cannot create {}: {e}", args.data_dir.display()))?;
    let store = RocksStore::open(&args.data_dir, RocksOptions::default()).map_err(|e| {
        format!(
            "cannot open the data directory {}: {e}",
            args.data_dir.display()
        )
    })?;
    let rocks = Arc::new(store);
    let store: Arc<dyn KvStore> = rocks.clone();
    let metered: Arc<dyn KvStore> =
        Arc::new(keel_engine::metrics::MeteredStore::new(store.clone()));
    let config = EngineConfig {
        workflow_task_lease: Duration::from_secs(args.workflow_lease),
        activity_task_lease: Duration::from_secs(args.activity_lease),
        park_limits: args.park_limits,
        max_leases_per_queue: args.max_leases_per_queue,
        ..EngineConfig::default()
    };
    let engine = Engine::open(metered, Arc::new(SystemClock), config)
        .await
        .map_err(|e| format!("cannot open the engine: {e}"))?;
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(addr = %local, data_dir = %args.data_dir.display(), "keel listening");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        let _ = stop_tx.send(true);
    });
    let state = AppState::new(engine.clone())
        .with_auth(auth)
        .with_roles(args.roles.clone())
        .with_storage_stats(Box::new(move || {
            let s = rocks.stats();
            keel_http::metrics::StorageStats {
                commits: s.commits,
                conflicts: s.conflicts,
                batches: s.batches,
                largest_batch: s.largest_batch,
            }
        }));
    serve(listener, Arc::new(state), stop_rx, Duration::from_secs(10)).await;
    engine.stop().await;
    store
        .shutdown()
        .await
        .map_err(|e| format!("storage shutdown failed: {e}"))?;
    tracing::info!("keel stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
