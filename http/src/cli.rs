//! The `keel` command line: `keel serve` runs the server on the storage backend chosen
//! with `--storage` (the embedded RocksDB by default). [`main`] is the `keel` binary;
//! [`main_with_store`] is the same command line around a store of your own, for
//! running the SDK end-to-end suite against a Keel built on your backend (see
//! `conformance/README.md`). Both go through the [`Server`](crate::Server) builder.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use keel_engine::storage::memory::MemoryStore;
use keel_engine::storage::KvStore;
use keel_engine::EngineConfig;
use keel_storage_fdb::{Subspace, DEFAULT_SUBSPACE};
use keel_storage_rocksdb::{RocksOptions, RocksStore};

use crate::metrics::StatsSource;

mod storage_check;
mod storage_transfer;
use crate::{AuthConfig, ConnectionLimits, NodeRoles, Server, TlsConfig};

/// The documented default listen address.
const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// The documented default RocksDB directory.
const DEFAULT_DATA_DIR: &str = "./keel-data";

const USAGE: &str = "usage: keel serve [--listen ADDR] [--storage BACKEND | --data-dir DIR] \
[--workflow-task-lease-seconds N] [--activity-task-lease-seconds N] \
[--auth-file FILE] [--roles ROLE,...] [--tls-cert FILE --tls-key FILE [--tls-client-ca FILE]]
       keel conformance --url http://HOST:PORT [--token T] [--only GROUP] [--output FILE.json]
                                     check a Durable Workflow server against the protocol
                                     (conformance/protocol/README.md; --help for its flags)
       keel bench --url http://HOST:PORT [--token T] [--scenario S] [--json]
                                     load-test a Durable Workflow server (keel-bench;
                                     --help for its flags and scenarios)

  --listen ADDR                      address to listen on (default 127.0.0.1:8080)
  --storage BACKEND                  rocksdb:PATH (default rocksdb:./keel-data),
                                     fdb[:CLUSTER_FILE] (FoundationDB; builds with --features fdb),
                                     or memory (not durable: tests and demos, loopback only)
  --data-dir DIR                     short for --storage rocksdb:DIR
  --rocksdb-cache-mb N               RocksDB block cache: data, index and filter blocks (default 64)
  --fdb-subspace NAME                FoundationDB subspace holding this deployment's keys
                                     (default keel)
  --workflow-task-lease-seconds N    workflow task lease (default 300)
  --activity-task-lease-seconds N    activity task lease (default 300)
  --max-parked-polls N               long-polls parked on this node at once (default 10000)
  --max-parked-polls-per-queue N     long-polls parked on one queue at once (default 2000)
  --max-leases-per-queue N           admission: leased tasks per queue and kind (default unbounded)
  --auth-file FILE                   bearer tokens (TOML); KEEL_TOKENS=role:token,... adds more.
                                     Without any token Keel serves only on a loopback address.
  --tls-cert FILE                    serve HTTPS with this PEM certificate chain (leaf first);
                                     with --tls-key. Both reload on SIGHUP and on file change
  --tls-key FILE                     the certificate's PEM private key
  --tls-client-ca FILE               require client certificates signed by a CA in this PEM
                                     file (a transport requirement; roles still come from tokens)
  --roles ROLE,...                   topology roles this node hosts (default api_ingress,
                                     control_plane,matching,history_projection,scheduler);
                                     without scheduler the node fires no timers or schedules
  --node-id ID                       this node's id among the nodes sharing a FoundationDB
                                     subspace (default: keel- and a random suffix)
  --rate-limit-per-token RATE[:BURST]
                                     requests per second per token, and the burst it may
                                     spend at once (default off; 0 for none); beyond
                                     it 429 rate_limited with Retry-After. An auth-file
                                     entry may set its own (rate_limit, rate_burst)
  --rate-limit-per-namespace RATE[:BURST]
                                     requests per second per namespace (default off;
                                     0 for none); the only limit in open mode
  --max-long-polls-per-token N       worker long-polls one token holds open at once
                                     (default 1000; 0 for none); beyond it 429
                                     long_poll_limit_reached (auth-file: max_long_polls)
  --audit-retention-days N           audit entries older than this go at the next
                                     retention pass (default 90)
  --header-timeout-seconds N         time to send a request head (default 10); then 408
  --body-timeout-seconds N           time to send a request body (default 30); then 408
  --idle-timeout-seconds N           idle keep-alive connections close after it (default 120)
  --max-connections N                open connections at once; beyond it new ones get 503
                                     (default: from the descriptor limit, 768 at 1024)
  --payload-dir DIR                  the local external payload driver's directory
                                     (default: payloads/ in the RocksDB data directory)
  --payload-disk NAME=DIR            a filesystem disk backing s3/gcs/azure payload policies
                                     (config.disk NAME; objects under DIR/<bucket>/<prefix>);
                                     repeatable
  --payload-reserve-bytes N          below this much free space on a payload disk, uploads
                                     get 503 storage_pressure unless they complete a leased
                                     task (default 67108864)
  --worker-threads N                 threads serving requests (default: one per CPU); the
                                     storage committer runs on a thread of its own
  --no-ui                            do not serve the web console at /ui (it is on by
                                     default; it calls the same API with the caller's token)
  --service-http-allow HOST[:PORT]   a host invocable_http service bindings may call (plain
                                     http://, compared as written in the URL); repeatable;
                                     without any, such bindings are refused

Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=keel=debug) to change the level.";

/// The line a binary built without FoundationDB support answers `--storage fdb` with.
const FDB_NOT_BUILT: &str = "--storage fdb: this keel binary was built without FoundationDB \
support; rebuild it with `cargo build --release -p keel-http --features fdb`, which needs the \
FoundationDB client library (libfdb_c 7.3) installed to link and run";

/// Where the server keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Storage {
    Rocks(PathBuf),
    /// `None`: the client's default cluster file.
    Fdb(Option<PathBuf>),
    Memory,
}

impl Storage {
    fn parse(value: &str) -> Result<Storage, String> {
        let (scheme, rest) = match value.split_once(':') {
            Some((scheme, rest)) => (scheme, Some(rest)),
            None => (value, None),
        };
        match (scheme, rest) {
            ("rocksdb", None) => Ok(Storage::Rocks(PathBuf::from(DEFAULT_DATA_DIR))),
            ("rocksdb", Some(path)) if !path.is_empty() => Ok(Storage::Rocks(PathBuf::from(path))),
            ("fdb", None) => Ok(Storage::Fdb(None)),
            ("fdb", Some(path)) if !path.is_empty() => Ok(Storage::Fdb(Some(PathBuf::from(path)))),
            ("memory", None) => Ok(Storage::Memory),
            ("rocksdb" | "fdb", Some(_)) => {
                Err(format!("--storage {value}: the path after ':' is empty"))
            }
            _ => Err(format!(
                "--storage {value}: unknown storage backend; expected rocksdb:PATH, \
                 fdb[:CLUSTER_FILE] or memory"
            )),
        }
    }
}

pub(crate) struct ServeArgs {
    listen: SocketAddr,
    storage: Storage,
    fdb_subspace: Subspace,
    rocksdb_cache_mb: u64,
    workflow_lease: u64,
    activity_lease: u64,
    park_limits: keel_engine::matching::ParkLimits,
    max_leases_per_queue: Option<u64>,
    auth_file: Option<PathBuf>,
    tls: Option<TlsConfig>,
    roles: NodeRoles,
    node_id: String,
    limits: ConnectionLimits,
    payloads: keel_engine::payloads::PayloadStores,
    service_http_allow: Vec<String>,
    quotas: crate::QuotaConfig,
    audit_retention_days: u32,
    ui: bool,
    /// `None`: one per CPU (tokio's default).
    worker_threads: Option<usize>,
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
        storage: Storage::Rocks(PathBuf::from(DEFAULT_DATA_DIR)),
        fdb_subspace: Subspace::new(DEFAULT_SUBSPACE)
            .expect("invariant: the default subspace name is valid"),
        rocksdb_cache_mb: 64,
        workflow_lease: 300,
        activity_lease: 300,
        park_limits: keel_engine::matching::ParkLimits::default(),
        max_leases_per_queue: None,
        auth_file: None,
        tls: None,
        roles: NodeRoles::default(),
        limits: ConnectionLimits::default(),
        quotas: crate::QuotaConfig::default(),
        audit_retention_days: crate::audit::DEFAULT_RETENTION_DAYS,
        node_id: format!("keel-{}", keel_engine::ids::random_hex(6)),
        payloads: keel_engine::payloads::PayloadStores {
            reserve_bytes: 64 * 1024 * 1024,
            ..Default::default()
        },
        service_http_allow: Vec::new(),
        ui: true,
        worker_threads: None,
    };
    let mut storage: Option<Storage> = None;
    let mut subspace_given = false;
    let (mut tls_cert, mut tls_key, mut tls_client_ca) = (None, None, None);
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
            "--storage" | "--data-dir" => {
                let chosen = match flag.as_str() {
                    "--storage" => Storage::parse(&value()?)?,
                    _ => Storage::Rocks(PathBuf::from(value()?)),
                };
                if storage.replace(chosen).is_some() {
                    return Err("give the storage once: --storage BACKEND or --data-dir DIR".into());
                }
            }
            "--fdb-subspace" => {
                parsed.fdb_subspace =
                    Subspace::new(&value()?).map_err(|e| format!("--fdb-subspace: {e}"))?;
                subspace_given = true;
            }
            "--rocksdb-cache-mb" => parsed.rocksdb_cache_mb = positive(value()?)?,
            "--workflow-task-lease-seconds" => parsed.workflow_lease = positive(value()?)?,
            "--activity-task-lease-seconds" => parsed.activity_lease = positive(value()?)?,
            "--max-parked-polls" => parsed.park_limits.per_node = positive(value()?)? as usize,
            "--max-parked-polls-per-queue" => {
                parsed.park_limits.per_queue = positive(value()?)? as usize
            }
            "--max-leases-per-queue" => parsed.max_leases_per_queue = Some(positive(value()?)?),
            "--auth-file" => parsed.auth_file = Some(PathBuf::from(value()?)),
            "--tls-cert" => tls_cert = Some(PathBuf::from(value()?)),
            "--tls-key" => tls_key = Some(PathBuf::from(value()?)),
            "--tls-client-ca" => tls_client_ca = Some(PathBuf::from(value()?)),
            "--header-timeout-seconds" => {
                parsed.limits.header_timeout = Duration::from_secs(positive(value()?)?)
            }
            "--body-timeout-seconds" => {
                parsed.limits.body_timeout = Duration::from_secs(positive(value()?)?)
            }
            "--idle-timeout-seconds" => {
                parsed.limits.idle_timeout = Duration::from_secs(positive(value()?)?)
            }
            "--max-connections" => {
                parsed.limits.max_connections = Some(positive(value()?)? as usize)
            }
            "--rate-limit-per-token" => {
                parsed.quotas.per_token = crate::Rate::parse(&value()?)
                    .map_err(|e| format!("--rate-limit-per-token {e}"))?
            }
            "--rate-limit-per-namespace" => {
                parsed.quotas.per_namespace = crate::Rate::parse(&value()?)
                    .map_err(|e| format!("--rate-limit-per-namespace {e}"))?
            }
            "--max-long-polls-per-token" => {
                parsed.quotas.max_long_polls_per_token = value()?
                    .parse()
                    .map_err(|_| format!("{flag} must be a whole number"))?
            }
            "--audit-retention-days" => {
                parsed.audit_retention_days = u32::try_from(positive(value()?)?)
                    .map_err(|_| format!("{flag} is too large"))?
            }
            "--roles" => {
                parsed.roles = NodeRoles::parse(&value()?).map_err(|e| format!("--roles: {e}"))?
            }
            "--node-id" => parsed.node_id = node_id(value()?)?,
            "--payload-dir" => parsed.payloads.local_dir = Some(PathBuf::from(value()?)),
            "--payload-disk" => {
                let v = value()?;
                let (name, dir) = v
                    .split_once('=')
                    .filter(|(n, d)| !n.is_empty() && !d.is_empty())
                    .ok_or_else(|| format!("--payload-disk {v}: expected NAME=DIR"))?;
                parsed
                    .payloads
                    .disks
                    .insert(name.to_string(), PathBuf::from(dir));
            }
            "--payload-reserve-bytes" => {
                parsed.payloads.reserve_bytes = value()?
                    .parse()
                    .map_err(|e| format!("--payload-reserve-bytes: {e}"))?
            }
            "--service-http-allow" => {
                let host = value()?;
                keel_engine::services::outbound::parse_allow_entry(&host)
                    .map_err(|e| format!("--service-http-allow: {e}"))?;
                parsed.service_http_allow.push(host);
            }
            "--no-ui" => parsed.ui = false,
            "--worker-threads" => parsed.worker_threads = Some(positive(value()?)? as usize),
            "--help" | "-h" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown flag '{other}'\n\n{USAGE}")),
        }
    }
    if let Some(storage) = storage {
        parsed.storage = storage;
    }
    parsed.tls = match (tls_cert, tls_key) {
        (Some(cert), Some(key)) => Some(TlsConfig {
            cert,
            key,
            client_ca: tls_client_ca,
        }),
        (None, None) if tls_client_ca.is_some() => {
            return Err("--tls-client-ca needs --tls-cert and --tls-key".into())
        }
        (None, None) => None,
        _ => return Err("give --tls-cert and --tls-key together".into()),
    };
    if parsed.payloads.local_dir.is_none() {
        if let Storage::Rocks(dir) = &parsed.storage {
            parsed.payloads.local_dir = Some(dir.join("payloads"));
        }
    }
    match &parsed.storage {
        Storage::Fdb(_) if !keel_storage_fdb::COMPILED => return Err(FDB_NOT_BUILT.into()),
        Storage::Memory if !parsed.listen.ip().is_loopback() => {
            return Err(format!(
                "refusing --storage memory on {}: the memory backend is not durable (all data \
                 is lost when the process exits) and is for tests and demos on a loopback \
                 address such as 127.0.0.1 only",
                parsed.listen
            ))
        }
        Storage::Rocks(_) | Storage::Memory if subspace_given => {
            return Err("--fdb-subspace applies only to --storage fdb".into())
        }
        _ => {}
    }
    Ok(parsed)
}

/// A node id: 1 to 64 of `A-Z a-z 0-9 . _ -`.
fn node_id(id: String) -> Result<String, String> {
    let valid = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(id)
    } else {
        Err(format!(
            "--node-id: '{id}' must be 1 to 64 letters, digits, '.', '_' or '-'"
        ))
    }
}

/// Opens a store of your own at the location the command line names (`--data-dir DIR`
/// or `--storage rocksdb:DIR`, default `./keel-data`); see [`main_with_store`].
pub type StoreOpener = Box<dyn FnOnce(&Path) -> Result<OpenedStore, String>>;

/// What a [`StoreOpener`] returns: the store, and optionally its counters.
pub struct OpenedStore {
    /// The store.
    pub store: Arc<dyn KvStore>,
    /// Sampled at each `/metrics` scrape and by `/api/ready`: commit counters, and a
    /// spell of refused writes (a full disk), which `/api/ready` reports as not ready.
    pub stats: Option<StatsSource>,
}

impl OpenedStore {
    /// The store, without counters.
    pub fn new(store: Arc<dyn KvStore>) -> Self {
        OpenedStore { store, stats: None }
    }

    /// The same, with its counters.
    pub fn with_stats(mut self, stats: StatsSource) -> Self {
        self.stats = Some(stats);
        self
    }
}

/// The counters of a RocksDB store, as `/metrics` and `/api/ready` read them.
pub fn rocksdb_stats(rocks: Arc<RocksStore>) -> StatsSource {
    Box::new(move || {
        let s = rocks.stats();
        let memory = rocks.memory();
        crate::metrics::StorageStats {
            commits: s.commits,
            conflicts: s.conflicts,
            batches: s.batches,
            largest_batch: s.largest_batch,
            write_failures: s.failed_writes,
            synced_writes: s.synced_writes,
            written_keys: s.written_keys,
            written_bytes: s.written_bytes,
            write_refusal: rocks.write_refusal().map(|r| crate::metrics::WriteRefusal {
                reason: r.reason.as_str(),
                message: r.message,
                refused_for: r.refused_for,
            }),
            memory: vec![
                ("memtables", memory.memtables),
                ("table_readers", memory.table_readers),
                ("block_cache", memory.block_cache),
            ],
            block_cache_capacity: Some(memory.block_cache_capacity),
        }
    })
}

/// The `keel` binary: `keel serve` on the backend `--storage` chooses.
pub fn main() -> ExitCode {
    run_main(None)
}

/// `keel serve` with every flag of the `keel` binary, around the store `open` returns
/// for the directory `--data-dir DIR` names (created first; `./keel-data` by default).
/// `--storage` accepts only `rocksdb:DIR`, as another spelling of `--data-dir`. For
/// example, a binary of your own:
///
/// ```no_run
/// use std::sync::Arc;
/// use keel_http::cli::OpenedStore;
/// fn main() -> std::process::ExitCode {
///     keel_http::cli::main_with_store(Box::new(|dir: &std::path::Path| {
///         let store = keel_storage_rocksdb::RocksStore::open(dir, Default::default())
///             .map_err(|e| e.to_string())?;
///         Ok(OpenedStore::new(Arc::new(store)))
///     }))
/// }
/// ```
pub fn main_with_store(open: StoreOpener) -> ExitCode {
    run_main(Some(open))
}

fn run_main(custom: Option<StoreOpener>) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `keel conformance ...` is the `keel-conformance` runner (conformance/protocol).
    if args.first().map(String::as_str) == Some("conformance") {
        let status = keel_protocol_conformance::run_cli(args.into_iter().skip(1));
        return ExitCode::from(u8::try_from(status).unwrap_or(1));
    }
    // `keel bench ...` is the `keel-bench` load generator (benches/).
    if args.first().map(String::as_str) == Some("bench") {
        let argv = std::iter::once("keel bench".to_string()).chain(args.into_iter().skip(1));
        let status = keel_benches::run_cli(argv);
        return ExitCode::from(u8::try_from(status).unwrap_or(1));
    }
    if args.first().map(String::as_str) == Some("storage") {
        if matches!(args.get(1).map(String::as_str), Some("export" | "import")) {
            return storage_transfer::main(&args[1..], custom);
        }
        return storage_check::main(&args[1..], custom);
    }
    // Every other command but `serve` is a client of a running server (keel-cli), as
    // are `keel --help` and `keel --version`.
    if args.first().map(String::as_str) != Some("serve") {
        return ExitCode::from(keel_cli::run(args));
    }
    let args = match parse_args(&args).and_then(|a| check_custom(a, custom.is_some())) {
        Ok(a) => a,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.worker_threads {
        builder.worker_threads(threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keel: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args, custom)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            ExitCode::FAILURE
        }
    }
}

/// The tokens of `--auth-file` and `KEEL_TOKENS` (at start, and again at each reload).
fn read_tokens(auth_file: Option<&std::path::Path>) -> Result<AuthConfig, String> {
    let mut auth = AuthConfig::open();
    if let Some(path) = auth_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the auth file {}: {e}", path.display()))?;
        auth.add_toml(&text)
            .map_err(|e| format!("invalid auth file {}: {e}", path.display()))?;
    }
    if let Ok(value) = std::env::var("KEEL_TOKENS") {
        auth.add_env(&value)
            .map_err(|e| format!("invalid KEEL_TOKENS: {e}"))?;
    }
    Ok(auth)
}

/// Loads the tokens of `--auth-file` and `KEEL_TOKENS`, and applies the open-mode rule:
/// without tokens Keel serves only on loopback, and says so.
fn load_auth(args: &ServeArgs) -> Result<AuthConfig, String> {
    let auth = read_tokens(args.auth_file.as_deref())?;
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

/// The opened store and its commit counters where it has any (the store itself declares
/// its name and capabilities).
struct OpenedStorage {
    store: Arc<dyn KvStore>,
    stats: Option<StatsSource>,
    /// Where the data is, for the start-up log line.
    place: String,
}

fn open_storage(args: &ServeArgs) -> Result<OpenedStorage, String> {
    match &args.storage {
        Storage::Rocks(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let options = RocksOptions {
                block_cache_bytes: args
                    .rocksdb_cache_mb
                    .checked_mul(1 << 20)
                    .and_then(|b| usize::try_from(b).ok())
                    .ok_or("--rocksdb-cache-mb is too large")?,
                ..RocksOptions::default()
            };
            let rocks = Arc::new(RocksStore::open(dir, options).map_err(|e| {
                format!(
                    "cannot open the data directory {}: {}",
                    dir.display(),
                    keel_protocol_conformance::client::error_chain(&e)
                )
            })?);
            Ok(OpenedStorage {
                store: rocks.clone(),
                stats: Some(rocksdb_stats(rocks)),
                place: format!("rocksdb:{}", dir.display()),
            })
        }
        Storage::Memory => {
            tracing::warn!(
                "STORAGE IS NOT DURABLE: --storage memory keeps every workflow, task and \
                 schedule in this process's memory and loses them all when it exits; for tests \
                 and demos only"
            );
            Ok(OpenedStorage {
                store: Arc::new(MemoryStore::new()),
                stats: None,
                place: "memory".into(),
            })
        }
        Storage::Fdb(cluster_file) => open_fdb(cluster_file.as_ref(), &args.fdb_subspace),
    }
}

#[cfg(feature = "fdb")]
fn open_fdb(cluster_file: Option<&PathBuf>, subspace: &Subspace) -> Result<OpenedStorage, String> {
    use keel_storage_fdb::{FdbOptions, FdbStore};
    let store = FdbStore::open(&FdbOptions {
        cluster_file: cluster_file.cloned(),
        subspace: subspace.clone(),
        ..FdbOptions::default()
    })
    .map_err(|e| format!("cannot open FoundationDB: {e}"))?;
    let file = cluster_file.map_or_else(
        || "default cluster file".into(),
        |p| p.display().to_string(),
    );
    Ok(OpenedStorage {
        store: Arc::new(store),
        stats: None,
        place: format!("fdb:{file} subspace {}", subspace.name()),
    })
}

#[cfg(not(feature = "fdb"))]
fn open_fdb(_: Option<&PathBuf>, _: &Subspace) -> Result<OpenedStorage, String> {
    Err(FDB_NOT_BUILT.into())
}

/// The single-threaded runtime an offline `keel storage` command runs on; on failure,
/// the message is printed and the exit status returned.
fn offline_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the runtime: {e}");
            ExitCode::FAILURE
        })
}

/// The storage flags of `keel storage ...` (`--storage`, `--data-dir`, `--fdb-subspace`),
/// read as `keel serve` reads them.
pub(crate) fn parse_storage_flags(flags: &[String], custom: bool) -> Result<ServeArgs, String> {
    let argv: Vec<String> = std::iter::once("serve".to_string())
        .chain(flags.iter().cloned())
        .collect();
    check_custom(parse_args(&argv)?, custom)
}

/// Opens an existing store for an offline look: the store, where it is, and its size on
/// disk when it is a directory. A missing RocksDB directory is an error, never created.
pub(crate) fn open_for_check(
    args: &ServeArgs,
    custom: Option<StoreOpener>,
) -> Result<StoreForCheck, String> {
    let opened = match (&args.storage, custom) {
        (Storage::Rocks(dir), _) if !dir.is_dir() => {
            return Err(format!(
                "no store at {}: the directory does not exist",
                dir.display()
            ))
        }
        (Storage::Memory, _) => {
            return Err("--storage memory: a fresh memory store holds nothing to check".into())
        }
        (_, Some(open)) => open_custom(args, open)?,
        (_, None) => open_storage(args)?,
    };
    let size = match &args.storage {
        Storage::Rocks(dir) => Some(dir_size(dir)),
        _ => None,
    };
    Ok(StoreForCheck {
        store: opened.store,
        place: opened.place,
        size_on_disk: size,
    })
}

/// Opens the target of `keel storage import`, creating a RocksDB directory; a memory
/// store is refused (the import would vanish with the process).
pub(crate) fn open_for_import(
    args: &ServeArgs,
    custom: Option<StoreOpener>,
) -> Result<(Arc<dyn KvStore>, String), String> {
    let opened = match (&args.storage, custom) {
        (Storage::Memory, _) => {
            return Err(
                "--storage memory: an import into a memory store vanishes when the \
                        command exits; import into rocksdb:DIR or fdb"
                    .into(),
            )
        }
        (_, Some(open)) => open_custom(args, open)?,
        (_, None) => open_storage(args)?,
    };
    Ok((opened.store, opened.place))
}

/// A store opened by [`open_for_check`].
pub(crate) struct StoreForCheck {
    pub store: Arc<dyn KvStore>,
    /// Where it is, e.g. `rocksdb:./keel-data`.
    pub place: String,
    /// Bytes on disk, for a directory store.
    pub size_on_disk: Option<u64>,
}

/// Bytes of the files under `dir`.
fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// With a store of one's own, the command line names only its directory.
fn check_custom(args: ServeArgs, custom: bool) -> Result<ServeArgs, String> {
    match &args.storage {
        Storage::Rocks(_) => Ok(args),
        _ if !custom => Ok(args),
        _ => Err(
            "this binary serves its own store: give its directory with --data-dir DIR \
                  (or --storage rocksdb:DIR); --storage memory and fdb are the keel binary's"
                .into(),
        ),
    }
}

fn open_custom(args: &ServeArgs, open: StoreOpener) -> Result<OpenedStorage, String> {
    let Storage::Rocks(dir) = &args.storage else {
        return Err("invariant: check_custom allows only a directory".into());
    };
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let OpenedStore { store, stats } = open(dir)?;
    let place = format!("{}:{}", store.capabilities().backend, dir.display());
    Ok(OpenedStorage {
        store,
        stats,
        place,
    })
}

async fn run(args: ServeArgs, custom: Option<StoreOpener>) -> Result<(), String> {
    // Before the store opens its files: the connection limit is derived from the result.
    let _ = crate::limits::raise_descriptor_limit();
    let auth = load_auth(&args)?;
    let OpenedStorage {
        store,
        stats,
        place,
    } = match custom {
        Some(open) => open_custom(&args, open)?,
        None => open_storage(&args)?,
    };
    if let Some(unfinished) = keel_engine::transfer::unfinished_import(store.as_ref())
        .await
        .map_err(|e| format!("cannot read {place}: {e}"))?
    {
        return Err(format!(
            "{place} holds an unfinished `keel storage import` (namespaces {}, from {}): \
             run the import again with the same file to finish it before serving",
            unfinished.namespaces.join(", "),
            unfinished.source
        ));
    }
    let config = EngineConfig {
        workflow_task_lease: Duration::from_secs(args.workflow_lease),
        activity_task_lease: Duration::from_secs(args.activity_lease),
        park_limits: args.park_limits,
        max_leases_per_queue: args.max_leases_per_queue,
        payloads: args.payloads.clone(),
        ..EngineConfig::default()
    };
    let mut server = Server::builder()
        .store(store)
        .listen(args.listen)
        .engine_config(config)
        .auth(auth)
        .roles(args.roles.clone())
        .node_id(args.node_id.clone())
        .connection_limits(args.limits)
        .quotas(args.quotas)
        .audit_retention_days(args.audit_retention_days)
        .ui(args.ui)
        .storage_description(place)
        .auth_reload(args.auth_file.clone(), {
            let auth_file = args.auth_file.clone();
            Box::new(move || read_tokens(auth_file.as_deref()))
        });
    if let Some(stats) = stats {
        server = server.storage_stats(stats);
    }
    if let Some(tls) = args.tls.clone() {
        server = server.tls(tls);
    }
    for host in &args.service_http_allow {
        server = server.service_http_allow(host.clone());
    }
    server.serve().await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #[cfg(feature = "fdb")]
    use super::DEFAULT_SUBSPACE;
    #[cfg(not(feature = "fdb"))]
    use super::FDB_NOT_BUILT;
    use super::{
        parse_args, ConnectionLimits, Duration, PathBuf, ServeArgs, Storage, TlsConfig,
        DEFAULT_DATA_DIR,
    };

    fn parse(args: &[&str]) -> Result<ServeArgs, String> {
        let args: Vec<String> = std::iter::once("serve")
            .chain(args.iter().copied())
            .map(String::from)
            .collect();
        parse_args(&args)
    }

    fn refused(args: &[&str]) -> String {
        match parse(args) {
            Ok(_) => panic!("{args:?} accepted"),
            Err(message) => message,
        }
    }

    #[test]
    fn worker_threads_must_be_a_whole_number_of_at_least_one() {
        for bad in ["0", "-1", "many"] {
            let message = refused(&["--worker-threads", bad]);
            assert!(message.contains("--worker-threads"), "{bad}: {message}");
        }
    }

    #[test]
    fn the_console_is_on_unless_no_ui_is_given() {
        assert!(parse(&[]).expect("parses").ui);
        assert!(!parse(&["--no-ui"]).expect("parses").ui);
    }

    #[test]
    fn connection_limit_flags_set_the_limits_and_default_to_the_documented_ones() {
        assert_eq!(
            parse(&[]).expect("parses").limits,
            ConnectionLimits::default()
        );
        let limits = parse(&[
            "--header-timeout-seconds",
            "5",
            "--body-timeout-seconds",
            "7",
            "--idle-timeout-seconds",
            "9",
            "--max-connections",
            "100",
        ])
        .expect("parses")
        .limits;
        assert_eq!(limits.header_timeout, Duration::from_secs(5));
        assert_eq!(limits.body_timeout, Duration::from_secs(7));
        assert_eq!(limits.idle_timeout, Duration::from_secs(9));
        assert_eq!(limits.max_connections, Some(100));
        for flag in [
            "--header-timeout-seconds",
            "--body-timeout-seconds",
            "--idle-timeout-seconds",
            "--max-connections",
        ] {
            let message = refused(&[flag, "0"]);
            assert!(message.contains("at least 1"), "{flag}: {message}");
        }
    }

    #[test]
    fn tls_flags_come_as_a_cert_and_key_pair_with_an_optional_client_ca() {
        assert_eq!(parse(&[]).expect("parses").tls, None);
        let tls = parse(&["--tls-cert", "c.pem", "--tls-key", "k.pem"])
            .expect("parses")
            .tls;
        assert_eq!(tls, Some(TlsConfig::new("c.pem", "k.pem")));
        let tls = parse(&[
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--tls-client-ca",
            "ca.pem",
        ])
        .expect("parses")
        .tls;
        assert_eq!(
            tls,
            Some(TlsConfig::new("c.pem", "k.pem").client_ca("ca.pem"))
        );
        for args in [&["--tls-cert", "c.pem"][..], &["--tls-key", "k.pem"][..]] {
            let message = refused(args);
            assert!(message.contains("together"), "{args:?}: {message}");
        }
        let message = refused(&["--tls-client-ca", "ca.pem"]);
        assert!(message.contains("needs --tls-cert"), "{message}");
    }

    #[test]
    fn rocksdb_is_the_default_and_data_dir_is_its_short_form() {
        let rocks = |dir: &str| Storage::Rocks(PathBuf::from(dir));
        assert_eq!(parse(&[]).expect("parses").storage, rocks(DEFAULT_DATA_DIR));
        assert_eq!(
            parse(&["--data-dir", "/d"]).expect("parses").storage,
            rocks("/d")
        );
        assert_eq!(
            parse(&["--storage", "rocksdb:/d"]).expect("parses").storage,
            rocks("/d")
        );
        assert_eq!(
            parse(&["--storage", "rocksdb"]).expect("parses").storage,
            rocks(DEFAULT_DATA_DIR)
        );
        let both = refused(&["--storage", "memory", "--data-dir", "/d"]);
        assert!(both.contains("once"), "{both}");
    }

    #[test]
    fn rocksdb_cache_size_is_a_positive_number_of_mebibytes() {
        assert_eq!(parse(&[]).expect("parses").rocksdb_cache_mb, 64);
        let args = parse(&["--rocksdb-cache-mb", "256"]).expect("parses");
        assert_eq!(args.rocksdb_cache_mb, 256);
        for bad in ["0", "-1", "lots"] {
            let message = refused(&["--rocksdb-cache-mb", bad]);
            assert!(message.contains("--rocksdb-cache-mb"), "{bad}: {message}");
        }
    }

    #[test]
    fn memory_storage_serves_on_loopback_only() {
        for listen in ["127.0.0.1:0", "[::1]:8080"] {
            let args = parse(&["--storage", "memory", "--listen", listen]).expect("parses");
            assert_eq!(args.storage, Storage::Memory);
        }
        let message = refused(&["--storage", "memory", "--listen", "0.0.0.0:8080"]);
        assert!(message.contains("not durable"), "{message}");
        assert!(message.contains("loopback"), "{message}");
    }

    #[test]
    fn unknown_or_malformed_storage_is_refused_with_the_accepted_forms() {
        for value in ["s3:bucket", "rocks:/d", "memory:x", "", "postgres"] {
            let message = refused(&["--storage", value]);
            assert!(
                message.contains("rocksdb:PATH, fdb[:CLUSTER_FILE] or memory"),
                "{value}: {message}"
            );
        }
        for value in ["rocksdb:", "fdb:"] {
            let message = refused(&["--storage", value]);
            assert!(message.contains("empty"), "{value}: {message}");
        }
    }

    #[test]
    fn service_http_allow_is_repeatable_and_checked() {
        let args = parse(&[
            "--service-http-allow",
            "127.0.0.1:8089",
            "--service-http-allow",
            "hooks.internal",
        ])
        .expect("parses");
        assert_eq!(
            args.service_http_allow,
            ["127.0.0.1:8089", "hooks.internal"]
        );
        assert!(parse(&[]).expect("parses").service_http_allow.is_empty());
        for bad in ["", "host:0", "host:port", "a b"] {
            let message = refused(&["--service-http-allow", bad]);
            assert!(
                message.starts_with("--service-http-allow:"),
                "{bad}: {message}"
            );
        }
    }

    #[test]
    fn fdb_subspace_is_checked_and_applies_only_to_fdb() {
        let message = refused(&["--fdb-subspace", "a b"]);
        assert!(message.starts_with("--fdb-subspace:"), "{message}");
        let message = refused(&["--data-dir", "/d", "--fdb-subspace", "prod"]);
        assert!(message.contains("only to --storage fdb"), "{message}");
    }

    #[cfg(feature = "fdb")]
    #[test]
    fn fdb_storage_takes_an_optional_cluster_file_and_a_subspace() {
        let args = parse(&["--storage", "fdb"]).expect("parses");
        assert_eq!(args.storage, Storage::Fdb(None));
        assert_eq!(args.fdb_subspace.name(), DEFAULT_SUBSPACE);
        let args = parse(&[
            "--storage",
            "fdb:/etc/fdb.cluster",
            "--fdb-subspace",
            "prod",
        ])
        .expect("parses");
        assert_eq!(
            args.storage,
            Storage::Fdb(Some(PathBuf::from("/etc/fdb.cluster")))
        );
        assert_eq!(args.fdb_subspace.name(), "prod");
    }

    #[cfg(not(feature = "fdb"))]
    #[test]
    fn fdb_storage_without_the_feature_names_the_feature_and_the_library() {
        for value in ["fdb", "fdb:/etc/fdb.cluster"] {
            let message = refused(&["--storage", value]);
            assert_eq!(message, FDB_NOT_BUILT);
        }
        assert!(FDB_NOT_BUILT.contains("--features fdb"));
        assert!(FDB_NOT_BUILT.contains("libfdb_c"));
    }
}
