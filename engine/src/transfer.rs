//! `keel storage export` / `keel storage import`: a store's records copied verbatim
//! through a file, for backups and for moving between backends (RocksDB → FoundationDB).
//!
//! Keys are Keel's own backend-independent encoding ([`crate::keys`]) and values are the
//! bytes the engine wrote (JSON records with their chunk headers, counters in the
//! contract's encoding), so a verbatim copy reads back the same on any backend.
//!
//! The file is JSON lines (format [`FORMAT`], version [`FORMAT_VERSION`]):
//! a [`Header`] line, one `{"k": base64, "v": base64}` line per stored key/value (a
//! record split into chunks is its chunk keys, in key order), then a trailer
//! `{"end": {"records": N, "sha256": HEX}}` whose digest covers every byte before it.
//! A file without its trailer, with a wrong count or digest, is refused whole.
//!
//! What is copied:
//! - every table but `meta` (the schema version travels in the header; the import
//!   writes the target's) and `cluster` (the liveness and lease records of the nodes
//!   sharing the source store, which mean nothing to another store);
//! - with namespaces named, only what belongs to them: tables keyed by namespace are
//!   chosen by the key's first field (the caller's namespace for
//!   `service_call_by_caller`, the scope for `audit_trail`); `task` and `closed_task`
//!   rows by their record's `namespace`; `timer` rows by their action's `namespace`, or
//!   for task timers (lease expiry, backoff, activity timeouts, tombstone expiry) by the
//!   task they name. A timer naming a task that no longer exists is stale and is left
//!   out. The per-namespace counters (`workflow_count`, `queue_counter`) and indexes
//!   (`ready`, `workflow_list`, `closed_run`) are keyed by namespace and so come whole
//!   with the rows they count; that is why an import refuses a target that already
//!   holds one of the namespaces (no merging). A single-node store writes no
//!   `queue_counter` rows (its per-queue counts live in memory, see
//!   `kernel::queue_counts`), so an import into a multi-node store recounts them from
//!   the imported task rows before it clears its marker.
//!
//! The import checks the whole file first (format, schema version, count, digest), then
//! that the target holds none of the namespaces, then writes a marker
//! ([`IMPORT_MARKER_KEY`] in `meta`), the records in bounded transactions, and clears
//! the marker last. Interrupted, it is run again with the same file: a marker for that
//! file's digest lets it rewrite the same keys (every write is a plain set of the same
//! bytes), while a marker for another file is refused.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{BufRead, Write};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::keys::{prefix, table_name, Key, KeyReader};
use crate::namespaces::{SCHEMA_VERSION, SCHEMA_VERSION_KEY};
use crate::storage::{
    KeyRange, KeyValue, KvStore, ReadOptions, MAX_KEY_BYTES, MAX_TXN_BYTES, MAX_VALUE_BYTES,
};
use crate::tables;

/// The format's name, the header's `format`.
pub const FORMAT: &str = "keel-export";
/// The format's version, the header's `format_version`.
pub const FORMAT_VERSION: u64 = 1;
/// The `meta` entry an import writes first and clears last.
pub const IMPORT_MARKER_KEY: &str = "import_in_progress";

/// Keys read per page (each page in its own snapshot transaction).
const PAGE: usize = 1000;
/// Keys written per import transaction.
const BATCH_KEYS: usize = 1000;
/// Key and value bytes written per import transaction: well inside the contract's
/// transaction limit (a single value adds at most `MAX_VALUE_BYTES`).
const BATCH_BYTES: usize = MAX_TXN_BYTES / 4;
/// Attempts of one import transaction on a retryable storage error.
const COMMIT_ATTEMPTS: usize = 5;

/// Why an export or import stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferError {
    /// The file is not a complete, intact export (truncated, altered, not Keel's).
    Corrupt(String),
    /// The file's or a store's schema (or format) version is not this binary's.
    Version(String),
    /// The target already holds a namespace being imported, or another import's
    /// unfinished marker.
    Conflict(String),
    /// A named namespace is not in the source.
    NotFound(String),
    /// Storage or I/O failed.
    Failed(String),
}

impl std::fmt::Display for TransferError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransferError::Corrupt(m)
            | TransferError::Version(m)
            | TransferError::Conflict(m)
            | TransferError::NotFound(m)
            | TransferError::Failed(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for TransferError {}

impl From<crate::Error> for TransferError {
    fn from(e: crate::Error) -> Self {
        TransferError::Failed(format!("storage: {e}"))
    }
}

impl From<crate::storage::StorageError> for TransferError {
    fn from(e: crate::storage::StorageError) -> Self {
        TransferError::Failed(format!("storage: {e}"))
    }
}

fn io(e: std::io::Error) -> TransferError {
    TransferError::Failed(format!("i/o: {e}"))
}

type Result<T> = std::result::Result<T, TransferError>;

/// The first line of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u64,
    /// The source store's schema version (this binary's [`SCHEMA_VERSION`]).
    pub schema_version: u64,
    /// `store` (every namespace and the store-wide records) or `namespaces`.
    pub scope: String,
    /// The namespaces the file holds.
    pub namespaces: Vec<String>,
    /// Where it came from, e.g. `rocksdb:./keel-data`.
    pub source: String,
    /// When it was written (RFC 3339, UTC).
    pub created_at: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordLine {
    k: String,
    v: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndLine {
    end: End,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct End {
    records: u64,
    sha256: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Line {
    Record(RecordLine),
    End(EndLine),
}

/// What to export.
#[derive(Debug, Clone, Default)]
pub struct ExportRequest {
    /// Namespaces to export; empty for the whole store.
    pub namespaces: Vec<String>,
    /// Where the store is, for the header.
    pub source: String,
    /// Now, milliseconds since the epoch, for the header.
    pub now_ms: i64,
}

/// What an export wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ExportSummary {
    pub header: Header,
    /// Key/value lines written.
    pub records: u64,
    /// Key and value bytes written (before base64).
    pub bytes: u64,
    /// Keys written per table.
    pub tables: BTreeMap<String, u64>,
    /// The trailer's digest.
    pub sha256: String,
}

/// An export file checked whole ([`verify`]).
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    pub header: Header,
    pub records: u64,
    pub sha256: String,
}

/// What an import wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ImportSummary {
    pub header: Header,
    pub records: u64,
    /// It finished an earlier, interrupted import of the same file.
    pub resumed: bool,
}

/// The marker an import keeps in `meta` while it writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ImportMarker {
    sha256: String,
    namespaces: Vec<String>,
    source: String,
}

/// Who owns a table's rows in a namespace-filtered export.
enum Owner {
    /// The key's first field is the namespace.
    Key,
    /// The record's `namespace` (or, for timers, the task it names).
    Value,
    /// Not exported (`meta`, `cluster`).
    Never,
}

fn owner(table: u8) -> Option<Owner> {
    match table {
        prefix::META | prefix::CLUSTER => Some(Owner::Never),
        prefix::TASK | prefix::CLOSED_TASK | prefix::TIMER => Some(Owner::Value),
        t if table_name(t).is_some() => Some(Owner::Key),
        _ => None,
    }
}

fn table_label(table: u8) -> String {
    table_name(table).map_or_else(|| format!("unknown_{table:#04x}"), str::to_string)
}

/// Reads every key of table `table` in pages, handing over one record at a time (its
/// first key and any chunk keys after it).
async fn walk_table<F>(store: &dyn KvStore, table: u8, mut each: F) -> Result<()>
where
    F: FnMut(&[KeyValue]) -> Result<()>,
{
    let mut group: Vec<KeyValue> = Vec::new();
    tables::scan_pages::<TransferError>(store, &KeyRange::prefix(&[table]), PAGE, |page| {
        for (k, v) in page {
            let chunk = group
                .first()
                .is_some_and(|(record, _)| k.len() == record.len() + 2 && k.starts_with(record));
            if !chunk && !group.is_empty() {
                each(&group)?;
                group.clear();
            }
            group.push((k, v));
        }
        Ok(())
    })
    .await?;
    if !group.is_empty() {
        each(&group)?;
    }
    Ok(())
}

/// One record (its chunks joined), as JSON.
fn record_json(group: &[KeyValue]) -> Result<Value> {
    let (records, incomplete) = tables::assemble(group.to_vec())?;
    let bytes = match records.into_iter().next() {
        Some((_, bytes)) if !incomplete => bytes,
        _ => {
            return Err(TransferError::Failed(format!(
                "a {} record in the source misses chunks",
                table_label(group[0].0[0])
            )))
        }
    };
    tables::decode_record(&bytes).map_err(|e| {
        TransferError::Failed(format!(
            "a {} record in the source does not decode: {e}",
            table_label(group[0].0[0])
        ))
    })
}

fn namespace_of_value(record: &Value) -> Option<&str> {
    record.get("namespace").and_then(Value::as_str)
}

/// The namespaces with a record in `store`.
async fn namespaces_in(store: &dyn KvStore) -> Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    walk_table(store, prefix::NAMESPACE, |group| {
        if let Some(ns) = KeyReader::new(&group[0].0).str() {
            names.insert(ns);
        }
        Ok(())
    })
    .await?;
    Ok(names)
}

async fn stored_schema_version(store: &dyn KvStore) -> Result<Option<u64>> {
    let mut txn = store.begin().await?;
    Ok(tables::get_snapshot::<u64>(txn.as_mut(), &tables::meta_key(SCHEMA_VERSION_KEY)).await?)
}

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Writes lines and hashes them.
struct Sink<'a> {
    out: &'a mut dyn Write,
    hash: Sha256,
}

impl Sink<'_> {
    fn line<T: Serialize>(&mut self, value: &T) -> Result<()> {
        let mut bytes = serde_json::to_vec(value)
            .map_err(|e| TransferError::Failed(format!("encoding a line: {e}")))?;
        bytes.push(b'\n');
        self.hash.update(&bytes);
        self.out.write_all(&bytes).map_err(io)
    }
}

/// Writes an export of `store` to `out`. The source's pages are read in separate
/// snapshot transactions, so the store must not change meanwhile: stop the servers.
pub async fn export(
    store: &dyn KvStore,
    request: &ExportRequest,
    out: &mut dyn Write,
) -> Result<ExportSummary> {
    match stored_schema_version(store).await? {
        Some(SCHEMA_VERSION) => {}
        Some(v) => {
            return Err(TransferError::Version(format!(
                "the source store is at schema version {v}, this binary reads version \
                 {SCHEMA_VERSION}; export it with the Keel that wrote it"
            )))
        }
        None => {
            return Err(TransferError::Version(
                "the source store has no schema version: it is empty or not Keel's".into(),
            ))
        }
    }
    let present = namespaces_in(store).await?;
    let whole = request.namespaces.is_empty();
    let chosen: BTreeSet<String> = if whole {
        present.clone()
    } else {
        let chosen: BTreeSet<String> = request.namespaces.iter().cloned().collect();
        if let Some(missing) = chosen.iter().find(|ns| !present.contains(*ns)) {
            return Err(TransferError::NotFound(format!(
                "no namespace '{missing}' in the source (it holds: {})",
                present.iter().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        chosen
    };
    // Tasks of the chosen namespaces, which task timers name by id only.
    let mut tasks: HashSet<String> = HashSet::new();
    if !whole {
        for table in [prefix::TASK, prefix::CLOSED_TASK] {
            walk_table(store, table, |group| {
                let record = record_json(group)?;
                if namespace_of_value(&record).is_some_and(|ns| chosen.contains(ns)) {
                    if let Some(id) = record.get("task_id").and_then(Value::as_str) {
                        tasks.insert(id.to_string());
                    }
                }
                Ok(())
            })
            .await?;
        }
    }
    let header = Header {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        schema_version: SCHEMA_VERSION,
        scope: if whole { "store" } else { "namespaces" }.into(),
        namespaces: chosen.iter().cloned().collect(),
        source: request.source.clone(),
        created_at: rfc3339(request.now_ms),
    };
    let mut sink = Sink {
        out,
        hash: Sha256::new(),
    };
    sink.line(&header)?;
    let mut records = 0u64;
    let mut bytes = 0u64;
    let mut per_table: BTreeMap<String, u64> = BTreeMap::new();
    for table in 0..=u8::MAX {
        let rule = owner(table);
        if matches!(rule, Some(Owner::Never)) {
            continue;
        }
        walk_table(store, table, |group| {
            let keep = whole
                || match rule {
                    Some(Owner::Key) => KeyReader::new(&group[0].0)
                        .str()
                        .is_some_and(|ns| chosen.contains(&ns)),
                    Some(Owner::Value) => {
                        let record = record_json(group)?;
                        match namespace_of_value(&record) {
                            Some(ns) => chosen.contains(ns),
                            None => record
                                .get("task_id")
                                .and_then(Value::as_str)
                                .is_some_and(|id| tasks.contains(id)),
                        }
                    }
                    Some(Owner::Never) => false,
                    None => {
                        return Err(TransferError::Failed(format!(
                            "the source holds keys of a table this binary does not know \
                             (prefix {table:#04x}); export the whole store instead"
                        )))
                    }
                };
            if !keep {
                return Ok(());
            }
            for (k, v) in group {
                sink.line(&RecordLine {
                    k: B64.encode(k),
                    v: B64.encode(v),
                })?;
                records += 1;
                bytes += (k.len() + v.len()) as u64;
            }
            *per_table.entry(table_label(table)).or_default() += group.len() as u64;
            Ok(())
        })
        .await?;
    }
    let sha256 = hex(&sink.hash.clone().finalize());
    let end = EndLine {
        end: End {
            records,
            sha256: sha256.clone(),
        },
    };
    let mut last = serde_json::to_vec(&end)
        .map_err(|e| TransferError::Failed(format!("encoding the trailer: {e}")))?;
    last.push(b'\n');
    sink.out.write_all(&last).map_err(io)?;
    sink.out.flush().map_err(io)?;
    Ok(ExportSummary {
        header,
        records,
        bytes,
        tables: per_table,
        sha256,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads an export line by line: the header first, then each key/value; checks the
/// trailer's count and digest when it reaches it.
pub struct ExportReader<'a> {
    input: &'a mut dyn BufRead,
    hash: Sha256,
    line: Vec<u8>,
    number: u64,
    records: u64,
    header: Header,
    done: Option<String>,
}

fn corrupt(m: String) -> TransferError {
    TransferError::Corrupt(m)
}

impl<'a> ExportReader<'a> {
    /// Reads and checks the header (format, format version, schema version).
    pub fn open(input: &'a mut dyn BufRead) -> Result<Self> {
        let mut line = Vec::new();
        if input.read_until(b'\n', &mut line).map_err(io)? == 0 {
            return Err(corrupt("the file is empty: not a Keel export".into()));
        }
        let header: Header = match serde_json::from_slice::<Value>(&line) {
            Ok(v) if v.get("format").and_then(Value::as_str) == Some(FORMAT) => {
                serde_json::from_value(v)
                    .map_err(|e| corrupt(format!("line 1: a malformed {FORMAT} header: {e}")))?
            }
            _ => {
                return Err(corrupt(format!(
                    "line 1 is not a {FORMAT} header: not a Keel export"
                )))
            }
        };
        if header.format_version != FORMAT_VERSION {
            return Err(TransferError::Version(format!(
                "the file is {FORMAT} version {}, this binary reads version {FORMAT_VERSION}",
                header.format_version
            )));
        }
        if header.schema_version != SCHEMA_VERSION {
            return Err(TransferError::Version(format!(
                "the file holds schema version {}, this binary reads and writes version \
                 {SCHEMA_VERSION}; import it with a Keel of that schema version",
                header.schema_version
            )));
        }
        let mut hash = Sha256::new();
        hash.update(&line);
        Ok(ExportReader {
            input,
            hash,
            line,
            number: 1,
            records: 0,
            header,
            done: None,
        })
    }

    /// The file's header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The next key/value, or `None` once the trailer was read and matched.
    pub fn next_record(&mut self) -> Result<Option<KeyValue>> {
        if self.done.is_some() {
            return Ok(None);
        }
        let number = {
            self.number += 1;
            self.number
        };
        self.line.clear();
        if self.input.read_until(b'\n', &mut self.line).map_err(io)? == 0 {
            return Err(corrupt(format!(
                "the file ends after {} records without its trailer: truncated",
                self.records
            )));
        }
        let parsed: Line = serde_json::from_slice(&self.line).map_err(|e| {
            corrupt(format!(
                "line {number} is not a record or the trailer ({e}): truncated or damaged"
            ))
        })?;
        match parsed {
            Line::Record(r) => {
                if self.line.last() != Some(&b'\n') {
                    return Err(corrupt(format!("line {number} is cut short: truncated")));
                }
                self.hash.update(&self.line);
                let k = B64
                    .decode(&r.k)
                    .map_err(|e| corrupt(format!("line {number}: the key is not base64: {e}")))?;
                let v = B64
                    .decode(&r.v)
                    .map_err(|e| corrupt(format!("line {number}: the value is not base64: {e}")))?;
                let table = k.first().copied().unwrap_or(prefix::META);
                if k.len() > MAX_KEY_BYTES
                    || v.len() > MAX_VALUE_BYTES
                    || table == prefix::META
                    || table == prefix::CLUSTER
                {
                    return Err(corrupt(format!(
                        "line {number}: a key or value no export holds"
                    )));
                }
                self.records += 1;
                Ok(Some((k, v)))
            }
            Line::End(EndLine { end }) => {
                let sha256 = hex(&self.hash.clone().finalize());
                if end.records != self.records || end.sha256 != sha256 {
                    return Err(corrupt(format!(
                        "the trailer says {} records with sha256 {}, the file holds {} with \
                         sha256 {sha256}: altered or damaged",
                        end.records, end.sha256, self.records
                    )));
                }
                self.line.clear();
                while self.input.read_until(b'\n', &mut self.line).map_err(io)? > 0 {
                    if !self.line.iter().all(u8::is_ascii_whitespace) {
                        return Err(corrupt("data after the trailer".into()));
                    }
                    self.line.clear();
                }
                self.done = Some(sha256);
                Ok(None)
            }
        }
    }

    fn finish(self) -> Verified {
        Verified {
            header: self.header,
            records: self.records,
            sha256: self.done.unwrap_or_default(),
        }
    }
}

/// Checks an export file whole without writing anything.
pub fn verify(input: &mut dyn BufRead) -> Result<Verified> {
    let mut reader = ExportReader::open(input)?;
    while reader.next_record()?.is_some() {}
    Ok(reader.finish())
}

async fn commit_batch(store: &dyn KvStore, batch: &[KeyValue]) -> Result<()> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut txn = store.begin().await?;
        for (k, v) in batch {
            txn.set(k, v);
        }
        match txn.commit().await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_retryable() && attempt < COMMIT_ATTEMPTS => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether `store` holds namespace `ns`: its record, or any workflow instance in it.
async fn holds_namespace(store: &dyn KvStore, ns: &str) -> Result<bool> {
    let mut txn = store.begin().await?;
    if txn
        .get_snapshot(&tables::namespace_key(ns))
        .await?
        .is_some()
    {
        return Ok(true);
    }
    let rows = txn
        .get_range(
            &Key::new(prefix::INSTANCE).str(ns).range(),
            ReadOptions::limit(1).snapshot(),
        )
        .await?;
    Ok(!rows.is_empty())
}

/// An unfinished import's marker: the file's digest and namespaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnfinishedImport {
    pub sha256: String,
    pub namespaces: Vec<String>,
    pub source: String,
}

/// The marker an interrupted import left in `store`, if any.
pub async fn unfinished_import(store: &dyn KvStore) -> Result<Option<UnfinishedImport>> {
    let mut txn = store.begin().await?;
    let marker: Option<ImportMarker> =
        tables::get_snapshot(txn.as_mut(), &tables::meta_key(IMPORT_MARKER_KEY)).await?;
    Ok(marker.map(|m| UnfinishedImport {
        sha256: m.sha256,
        namespaces: m.namespaces,
        source: m.source,
    }))
}

/// Imports a file [`verify`] passed (`verified`) from `input`, the same file read again
/// from its start, into `store`.
pub async fn import(
    store: &dyn KvStore,
    input: &mut dyn BufRead,
    verified: &Verified,
) -> Result<ImportSummary> {
    let fresh = match stored_schema_version(store).await? {
        None => true,
        Some(SCHEMA_VERSION) => false,
        Some(v) => {
            return Err(TransferError::Version(format!(
                "the target store is at schema version {v}, the file and this binary at \
                 version {SCHEMA_VERSION}"
            )))
        }
    };
    let resumed = match unfinished_import(store).await? {
        Some(m) if m.sha256 == verified.sha256 => true,
        Some(m) => {
            return Err(TransferError::Conflict(format!(
                "the target holds an unfinished import of another file (sha256 {}, \
                 namespaces {}); run that import again to finish it",
                m.sha256,
                m.namespaces.join(", ")
            )))
        }
        None => false,
    };
    if !resumed {
        for ns in &verified.header.namespaces {
            if holds_namespace(store, ns).await? {
                return Err(TransferError::Conflict(format!(
                    "the target already holds namespace '{ns}'; an import never merges into \
                     an existing namespace (import into an empty store, before any server \
                     has started on it)"
                )));
            }
        }
    }
    // The marker (and a fresh target's schema version) first, in their own transaction.
    let marker = ImportMarker {
        sha256: verified.sha256.clone(),
        namespaces: verified.header.namespaces.clone(),
        source: verified.header.source.clone(),
    };
    {
        let mut txn = store.begin().await?;
        tables::put(txn.as_mut(), &tables::meta_key(IMPORT_MARKER_KEY), &marker)?;
        if fresh {
            tables::put(
                txn.as_mut(),
                &tables::meta_key(SCHEMA_VERSION_KEY),
                &SCHEMA_VERSION,
            )?;
        }
        txn.commit().await?;
    }
    // Every record, in bounded transactions of plain sets.
    let mut reader = ExportReader::open(input)?;
    let mut batch: Vec<KeyValue> = Vec::new();
    let mut batch_bytes = 0usize;
    while let Some((k, v)) = reader.next_record()? {
        batch_bytes += k.len() + v.len();
        batch.push((k, v));
        if batch.len() >= BATCH_KEYS || batch_bytes >= BATCH_BYTES {
            commit_batch(store, &batch).await?;
            batch.clear();
            batch_bytes = 0;
        }
    }
    if !batch.is_empty() {
        commit_batch(store, &batch).await?;
    }
    let done = reader.finish();
    if done.sha256 != verified.sha256 {
        return Err(TransferError::Corrupt(
            "the file changed between its check and the import; the target keeps its \
             unfinished-import marker: import the original file again"
                .into(),
        ));
    }
    // On a multi-node target the per-queue counts and lease timers are durable rows:
    // recounted and written from the imported task rows (a single-node source writes no
    // lease timer rows and no counters, or holds stale ones).
    crate::kernel::rewrite_counter_and_lease_rows(store, &done.header.namespaces).await?;
    // Complete: the marker goes last.
    {
        let mut txn = store.begin().await?;
        txn.clear(&tables::meta_key(IMPORT_MARKER_KEY));
        txn.commit().await?;
    }
    Ok(ImportSummary {
        header: done.header,
        records: done.records,
        resumed,
    })
}
