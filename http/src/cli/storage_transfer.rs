//! `keel storage export` and `keel storage import`: a store's workflows copied offline
//! through a file ([`keel_engine::transfer`] has the format and what is copied), for
//! backups and for moving between backends.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use keel_engine::transfer::{self, ExportRequest, TransferError};

use super::{open_for_check, open_for_import, parse_storage_flags, StoreOpener};

const USAGE: &str = "usage: keel storage export [--storage BACKEND | --data-dir DIR] \
[--fdb-subspace NAME] [--namespace NS]... [--output FILE|-]
       keel storage import [--storage BACKEND | --data-dir DIR] [--fdb-subspace NAME] \
[--input FILE|-]

Offline: stop the servers first (RocksDB allows one process; the export reads the store \
in many snapshots). export writes the namespaces named (default: the whole store) as a \
keel-export file (JSON lines: a header, one line per key/value, a trailer with the count \
and a SHA-256) to FILE or stdout. import checks the whole file first, refuses a target \
that already holds any of its namespaces, and writes it; an interrupted import is \
finished by running it again with the same file. External payload blobs (the payload \
directory) are not in the store: copy them separately.

Exit status: 0 done, 1 the store cannot be opened or read, or a failure while writing, \
2 usage, 3 a schema or format version this binary does not read, 4 the file is \
truncated, altered or not an export, 5 the target already holds a namespace of the \
file (or another file's unfinished import).";

/// Exit statuses.
const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_VERSION: u8 = 3;
const EXIT_CORRUPT: u8 = 4;
const EXIT_CONFLICT: u8 = 5;

fn exit_for(e: &TransferError) -> ExitCode {
    ExitCode::from(match e {
        TransferError::Version(_) => EXIT_VERSION,
        TransferError::Corrupt(_) => EXIT_CORRUPT,
        TransferError::Conflict(_) => EXIT_CONFLICT,
        TransferError::NotFound(_) | TransferError::Failed(_) => EXIT_FAILED,
    })
}

/// Runs `keel storage export|import ARGS...` (`args[0]` is the command).
pub fn main(args: &[String], custom: Option<StoreOpener>) -> ExitCode {
    let export = match args.first().map(String::as_str) {
        Some("export") => true,
        Some("import") => false,
        _ => return usage("expected export or import"),
    };
    let mut namespaces = Vec::new();
    let mut file: Option<String> = None;
    let mut rest = Vec::new();
    let mut it = args[1..].iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--help" | "-h" => return usage(""),
            "--namespace" | "-n" if export => match it.next() {
                Some(ns) if !ns.is_empty() => namespaces.push(ns.to_ascii_lowercase()),
                _ => return usage("--namespace takes a namespace name"),
            },
            "--output" | "-o" if export => match it.next() {
                Some(f) if !f.is_empty() => file = Some(f.clone()),
                _ => return usage("--output takes a file name, or - for stdout"),
            },
            "--input" | "-i" if !export => match it.next() {
                Some(f) if !f.is_empty() => file = Some(f.clone()),
                _ => return usage("--input takes a file name, or - for stdin"),
            },
            _ => rest.push(arg.clone()),
        }
    }
    let storage = match parse_storage_flags(&rest, custom.is_some()) {
        Ok(s) => s,
        Err(message) => return usage(&message),
    };
    let runtime = match super::offline_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let file = file.filter(|f| f != "-").map(PathBuf::from);
    let outcome = runtime.block_on(async {
        if export {
            let opened = open_for_check(&storage, custom).map_err(TransferError::Failed)?;
            let result = run_export(opened.store.as_ref(), &opened.place, namespaces, file).await;
            let _ = opened.store.shutdown().await;
            result
        } else {
            // The file is checked whole before the target is opened or touched.
            let input = Input::open(file.as_deref())?;
            let verified = transfer::verify(&mut input.reader()?)?;
            let (store, place) =
                open_for_import(&storage, custom).map_err(TransferError::Failed)?;
            let result = transfer::import(store.as_ref(), &mut input.reader()?, &verified).await;
            let _ = store.shutdown().await;
            let summary = result?;
            Ok(format!(
                "imported {} records ({} namespaces: {}) from {} into {place}{}\n",
                summary.records,
                summary.header.namespaces.len(),
                summary.header.namespaces.join(", "),
                summary.header.source,
                if summary.resumed {
                    ", finishing an interrupted import"
                } else {
                    ""
                },
            ))
        }
    });
    match outcome {
        Ok(line) => {
            // The summary goes to stderr: an export's stdout may be the file itself.
            eprint!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit_for(&e)
        }
    }
}

async fn run_export(
    store: &dyn keel_engine::storage::KvStore,
    place: &str,
    namespaces: Vec<String>,
    file: Option<PathBuf>,
) -> Result<String, TransferError> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let request = ExportRequest {
        namespaces,
        source: place.to_string(),
        now_ms,
    };
    let io = |what: &str, p: &Path, e: std::io::Error| {
        TransferError::Failed(format!("cannot {what} {}: {e}", p.display()))
    };
    let (summary, target) = match &file {
        Some(path) => {
            // Written beside the target and renamed when complete.
            let partial = path.with_extension("partial");
            let f = File::create(&partial).map_err(|e| io("create", &partial, e))?;
            let mut out = BufWriter::new(f);
            let summary = transfer::export(store, &request, &mut out).await;
            let summary = match summary {
                Ok(s) => s,
                Err(e) => {
                    let _ = std::fs::remove_file(&partial);
                    return Err(e);
                }
            };
            out.into_inner()
                .map_err(|e| io("write", &partial, e.into_error()))?
                .sync_all()
                .map_err(|e| io("sync", &partial, e))?;
            std::fs::rename(&partial, path).map_err(|e| io("rename", &partial, e))?;
            (summary, path.display().to_string())
        }
        None => {
            let stdout = std::io::stdout();
            let mut out = BufWriter::new(stdout.lock());
            (
                transfer::export(store, &request, &mut out).await?,
                "stdout".into(),
            )
        }
    };
    let tables = summary
        .tables
        .iter()
        .map(|(t, n)| format!("{t} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(format!(
        "exported {} records ({} bytes; {} namespaces: {}) from {place} to {target}\n\
         tables: {tables}\nsha256 {}\n",
        summary.records,
        summary.bytes,
        summary.header.namespaces.len(),
        summary.header.namespaces.join(", "),
        summary.sha256,
    ))
}

/// The import's input, read twice (checked, then written): a file is opened again, and
/// stdin is held in memory.
enum Input {
    File(PathBuf),
    Memory(Vec<u8>),
}

impl Input {
    fn open(path: Option<&Path>) -> Result<Input, TransferError> {
        match path {
            Some(p) => Ok(Input::File(p.to_path_buf())),
            None => {
                let mut bytes = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut bytes)
                    .map_err(|e| TransferError::Failed(format!("cannot read stdin: {e}")))?;
                Ok(Input::Memory(bytes))
            }
        }
    }

    fn reader(&self) -> Result<Box<dyn BufRead + '_>, TransferError> {
        match self {
            Input::File(p) => {
                let f = File::open(p).map_err(|e| {
                    TransferError::Failed(format!("cannot open {}: {e}", p.display()))
                })?;
                Ok(Box::new(BufReader::with_capacity(1 << 20, f)))
            }
            Input::Memory(bytes) => Ok(Box::new(Cursor::new(bytes.as_slice()))),
        }
    }
}

fn usage(message: &str) -> ExitCode {
    // A closed pipe (`... | head`) is no failure of the command.
    if message.is_empty() {
        let _ = writeln!(std::io::stdout(), "{USAGE}");
        return ExitCode::SUCCESS;
    }
    // The storage flags' parser is `keel serve`'s: its first line is the reason, the
    // rest the server's usage, which is not this command's.
    let reason = message.lines().next().unwrap_or_default();
    let _ = writeln!(std::io::stderr(), "{reason}\n\n{USAGE}");
    ExitCode::from(EXIT_USAGE)
}
