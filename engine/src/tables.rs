//! Typed access to the domain tables over one transaction.
//!
//! Records are JSON. A record larger than one storage value is split: the first value
//! holds a header byte (`0` whole, `1` split) and the chunk count, the rest of the chunks
//! follow under the record key extended by a big-endian chunk index, so that every value
//! stays under the backend's value limit and a range read returns a record's chunks in
//! order right after it.
//!
//! [`put_bytes`] writes without reading, so a record rewritten smaller leaves the chunks
//! past its new count behind: readers go by the header's count ([`get_bytes`]) or skip
//! them ([`assemble`]), and [`delete`] clears every chunk there is.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::keys::{prefix, Key};
use crate::model::{TaskKind, TimerKey};
use crate::storage::{
    KeyRange, KeyValue, KvStore, KvTxn, ReadOptions, StorageError, MAX_VALUE_BYTES,
};

/// Payload bytes per chunk (leaves room for the header).
const CHUNK: usize = MAX_VALUE_BYTES - 64;
const WHOLE: u8 = 0;
const SPLIT: u8 = 1;

/// Key of a namespace.
pub fn namespace_key(ns: &str) -> Vec<u8> {
    Key::new(prefix::NAMESPACE).str(ns).into_bytes()
}

/// Range of all namespaces.
pub fn namespaces_range() -> KeyRange {
    Key::new(prefix::NAMESPACE).range()
}

/// Key of a workflow instance.
pub fn instance_key(ns: &str, workflow_id: &str) -> Vec<u8> {
    Key::new(prefix::INSTANCE)
        .str(ns)
        .str(workflow_id)
        .into_bytes()
}

/// Key of a run.
pub fn run_key(ns: &str, run_id: &str) -> Vec<u8> {
    Key::new(prefix::RUN).str(ns).str(run_id).into_bytes()
}

/// Key of one history event.
pub fn history_key(ns: &str, run_id: &str, seq: u64) -> Vec<u8> {
    Key::new(prefix::HISTORY)
        .str(ns)
        .str(run_id)
        .u64(seq)
        .into_bytes()
}

/// History events of a run with sequence ≥ `from`.
pub fn history_range(ns: &str, run_id: &str, from: u64) -> KeyRange {
    let base = Key::new(prefix::HISTORY).str(ns).str(run_id);
    let mut range = base.range();
    range.start = std::ops::Bound::Included(base.u64(from).into_bytes());
    range
}

/// Key of the `index`-th signal deferred while a run's workflow task is leased.
pub fn deferred_signal_key(ns: &str, run_id: &str, index: u64) -> Vec<u8> {
    Key::new(prefix::DEFERRED_SIGNAL)
        .str(ns)
        .str(run_id)
        .u64(index)
        .into_bytes()
}

/// All deferred signals of a run, chunks included.
pub fn deferred_signals_range(ns: &str, run_id: &str) -> KeyRange {
    Key::new(prefix::DEFERRED_SIGNAL)
        .str(ns)
        .str(run_id)
        .range()
}

/// Key of a task.
pub fn task_key(task_id: &str) -> Vec<u8> {
    Key::new(prefix::TASK).str(task_id).into_bytes()
}

/// Prefix of a queue's ready tasks of one kind.
pub fn ready_queue_prefix(ns: &str, queue: &str, kind: TaskKind) -> Key {
    Key::new(prefix::READY).str(ns).str(queue).u8(kind.code())
}

/// Key of a ready task in the durable ready index.
pub fn ready_key(
    ns: &str,
    queue: &str,
    kind: TaskKind,
    priority: u8,
    ready_at_ms: i64,
    task_id: &str,
) -> Vec<u8> {
    ready_queue_prefix(ns, queue, kind)
        .u8(priority)
        .i64(ready_at_ms)
        .str(task_id)
        .into_bytes()
}

/// The whole ready index.
pub fn ready_range() -> KeyRange {
    Key::new(prefix::READY).range()
}

/// Key of a durable timer.
pub fn timer_key(timer: &TimerKey) -> Vec<u8> {
    Key::new(prefix::TIMER)
        .i64(timer.fire_at_ms)
        .str(&timer.timer_id)
        .into_bytes()
}

/// Timers due strictly before `until_ms`.
pub fn timers_before(until_ms: i64) -> KeyRange {
    KeyRange::new(
        Key::new(prefix::TIMER).into_bytes(),
        Key::new(prefix::TIMER).i64(until_ms).into_bytes(),
    )
}

/// Key of a worker registration.
pub fn worker_key(ns: &str, worker_id: &str) -> Vec<u8> {
    Key::new(prefix::WORKER).str(ns).str(worker_id).into_bytes()
}

/// Key of the service URL a worker announced (it goes with the worker's registration).
pub fn worker_endpoint_key(ns: &str, worker_id: &str) -> Vec<u8> {
    Key::new(prefix::WORKER_ENDPOINT)
        .str(ns)
        .str(worker_id)
        .into_bytes()
}

/// The ready index's value: the task type, then (after a 0 byte) the pinned build id if
/// any, then (after another 0 byte) the worker session if any. Rows written before
/// sessions existed have at most the first two parts.
pub fn ready_value(type_name: &str, compatibility: Option<&str>, session: Option<&str>) -> Vec<u8> {
    let mut v = type_name.as_bytes().to_vec();
    if compatibility.is_some() || session.is_some() {
        v.push(0);
        v.extend_from_slice(compatibility.unwrap_or_default().as_bytes());
    }
    if let Some(s) = session {
        v.push(0);
        v.extend_from_slice(s.as_bytes());
    }
    v
}

/// Decodes [`ready_value`]: `(type, build id, session)`.
pub fn decode_ready_value(value: &[u8]) -> (String, Option<String>, Option<String>) {
    let mut parts = value.splitn(3, |b| *b == 0);
    let text = |p: &[u8]| String::from_utf8_lossy(p).into_owned();
    let type_name = text(parts.next().unwrap_or_default());
    let compatibility = parts.next().filter(|c| !c.is_empty()).map(text);
    let session = parts.next().filter(|c| !c.is_empty()).map(text);
    (type_name, compatibility, session)
}

/// Key of a worker session.
pub fn worker_session_key(ns: &str, session_id: &str) -> Vec<u8> {
    Key::new(prefix::WORKER_SESSION)
        .str(ns)
        .str(session_id)
        .into_bytes()
}

/// Every worker session of a namespace, in session id order.
pub fn worker_sessions_range(ns: &str) -> KeyRange {
    Key::new(prefix::WORKER_SESSION).str(ns).range()
}

/// Key of an open activity task scheduled with a worker session.
pub fn worker_session_task_key(ns: &str, session_id: &str, task_id: &str) -> Vec<u8> {
    Key::new(prefix::WORKER_SESSION_TASK)
        .str(ns)
        .str(session_id)
        .str(task_id)
        .into_bytes()
}

/// The open activity tasks of one worker session.
pub fn worker_session_tasks_range(ns: &str, session_id: &str) -> KeyRange {
    Key::new(prefix::WORKER_SESSION_TASK)
        .str(ns)
        .str(session_id)
        .range()
}

/// Key of a build-id cohort (`None`: the unversioned cohort).
pub fn cohort_key(ns: &str, queue: &str, build_id: Option<&str>) -> Vec<u8> {
    let k = Key::new(prefix::COHORT).str(ns).str(queue);
    match build_id {
        Some(b) => k.u8(1).str(b).into_bytes(),
        None => k.u8(0).into_bytes(),
    }
}

/// The cohorts of one queue.
pub fn cohorts_range(ns: &str, queue: &str) -> KeyRange {
    Key::new(prefix::COHORT).str(ns).str(queue).range()
}

/// Which per-queue counter.
#[derive(Debug, Clone, Copy)]
pub enum QueueCounter {
    /// Tasks in the ready index.
    Ready = 0,
    /// Tasks leased to a worker.
    Leased = 1,
}

/// Key of a per-queue task counter (an atomic-add counter).
pub fn queue_counter_key(ns: &str, queue: &str, kind: TaskKind, counter: QueueCounter) -> Vec<u8> {
    Key::new(prefix::QUEUE_COUNTER)
        .str(ns)
        .str(queue)
        .u8(kind.code())
        .u8(counter as u8)
        .into_bytes()
}

/// Every per-queue counter of a namespace.
pub fn queue_counters_range(ns: &str) -> KeyRange {
    Key::new(prefix::QUEUE_COUNTER).str(ns).range()
}

/// Worker registrations of a namespace.
pub fn workers_range(ns: &str) -> KeyRange {
    Key::new(prefix::WORKER).str(ns).range()
}

/// Key of a store metadata entry.
pub fn meta_key(name: &str) -> Vec<u8> {
    Key::new(prefix::META).str(name).into_bytes()
}

fn chunk_key(key: &[u8], index: u16) -> Vec<u8> {
    let mut k = key.to_vec();
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// Whether `key` is a chunk key of the record at `record`.
fn is_chunk_of(key: &[u8], record: &[u8]) -> bool {
    key.len() == record.len() + 2 && key.starts_with(record)
}

/// Every chunk key the record at `key` may have (indexes 1 to `u16::MAX`).
fn chunks_range(key: &[u8]) -> KeyRange {
    let mut end = chunk_key(key, u16::MAX);
    end.push(0);
    KeyRange::new(chunk_key(key, 1), end)
}

/// Writes `bytes` as one record at `key`, split into chunks when large.
pub fn put_bytes(txn: &mut dyn KvTxn, key: &[u8], bytes: &[u8]) {
    if bytes.len() <= CHUNK {
        let mut v = Vec::with_capacity(bytes.len() + 1);
        v.push(WHOLE);
        v.extend_from_slice(bytes);
        txn.set(key, &v);
        return;
    }
    let chunks: Vec<&[u8]> = bytes.chunks(CHUNK).collect();
    let mut first = Vec::with_capacity(CHUNK + 3);
    first.push(SPLIT);
    first.extend_from_slice(&(chunks.len() as u16).to_be_bytes());
    first.extend_from_slice(chunks[0]);
    txn.set(key, &first);
    for (i, c) in chunks.iter().enumerate().skip(1) {
        txn.set(&chunk_key(key, i as u16), c);
    }
}

/// The version byte of a record in its compact binary form: MessagePack with fields by
/// name (so `#[serde(default)]` fields can be added and optional ones skipped, as in
/// JSON), after this byte. `0xC1` is a byte MessagePack never uses and not `{`, which
/// every record written before the compact form (JSON) starts with.
pub const COMPACT_V1: u8 = 0xC1;

/// The stored form of a record: [`COMPACT_V1`], then its MessagePack.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    let mut bytes = vec![COMPACT_V1];
    rmp_serde::encode::write_named(&mut bytes, value).map_err(Error::corrupt)?;
    Ok(bytes)
}

/// Reads a stored record: the compact form ([`encode`]) or JSON (records written before
/// it, and any JSON a caller stores as a record).
pub fn decode_record<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    match bytes.split_first() {
        Some((&COMPACT_V1, rest)) => rmp_serde::from_slice(rest).map_err(Error::corrupt),
        _ => serde_json::from_slice(bytes).map_err(Error::corrupt),
    }
}

/// Writes a record in its compact form ([`encode`]).
pub fn put<T: Serialize + ?Sized>(txn: &mut dyn KvTxn, key: &[u8], value: &T) -> Result<()> {
    put_bytes(txn, key, &encode(value)?);
    Ok(())
}

/// How a stored first value describes its record.
enum Head<'a> {
    Whole(&'a [u8]),
    Split { count: u16, first: &'a [u8] },
}

fn head(value: &[u8]) -> Result<Head<'_>> {
    match value.first() {
        Some(&WHOLE) => Ok(Head::Whole(&value[1..])),
        Some(&SPLIT) if value.len() >= 3 => Ok(Head::Split {
            count: u16::from_be_bytes([value[1], value[2]]),
            first: &value[3..],
        }),
        _ => Err(Error::corrupt("unknown record header")),
    }
}

/// Reads the record bytes at `key` (conflict-tracked unless `snapshot`).
pub async fn get_bytes(txn: &mut dyn KvTxn, key: &[u8], snapshot: bool) -> Result<Option<Vec<u8>>> {
    let first = if snapshot {
        txn.get_snapshot(key).await?
    } else {
        txn.get(key).await?
    };
    let Some(first) = first else { return Ok(None) };
    match head(&first)? {
        Head::Whole(b) => Ok(Some(b.to_vec())),
        Head::Split { count, first: part } => {
            let mut out = part.to_vec();
            for i in 1..count {
                let k = chunk_key(key, i);
                let c = if snapshot {
                    txn.get_snapshot(&k).await?
                } else {
                    txn.get(&k).await?
                };
                out.extend_from_slice(&c.ok_or_else(|| Error::corrupt("missing record chunk"))?);
            }
            Ok(Some(out))
        }
    }
}

/// Reads a record (conflict-tracked).
pub async fn get<T: DeserializeOwned>(txn: &mut dyn KvTxn, key: &[u8]) -> Result<Option<T>> {
    decode(get_bytes(txn, key, false).await?)
}

/// Reads a record without a read conflict.
pub async fn get_snapshot<T: DeserializeOwned>(
    txn: &mut dyn KvTxn,
    key: &[u8],
) -> Result<Option<T>> {
    decode(get_bytes(txn, key, true).await?)
}

fn decode<T: DeserializeOwned>(bytes: Option<Vec<u8>>) -> Result<Option<T>> {
    bytes.map(|b| decode_record(&b)).transpose()
}

/// Deletes the record at `key`, chunks included: those a larger earlier version left
/// behind too, so they cannot turn up in a later range read.
///
/// Invariant (kept by [`put_bytes`]): chunks left by a larger earlier version form one
/// contiguous run starting at the current record's chunk count (1 for a whole record),
/// since every write rewrites chunks `1..count`. So one point read at index `count` tells
/// whether there are any, and only then is the chunk range read.
pub async fn delete(txn: &mut dyn KvTxn, key: &[u8]) -> Result<()> {
    let Some(first) = txn.get_snapshot(key).await? else {
        return Ok(());
    };
    let count = match head(&first)? {
        Head::Whole(_) => 1,
        Head::Split { count, .. } => count.max(1),
    };
    for i in 1..count {
        txn.clear(&chunk_key(key, i));
    }
    if txn.get_snapshot(&chunk_key(key, count)).await?.is_some() {
        let stale = txn
            .get_range(
                &chunks_range(key),
                ReadOptions::limit(usize::from(u16::MAX)).snapshot(),
            )
            .await?;
        for (chunk, _) in stale.iter().filter(|(k, _)| is_chunk_of(k, key)) {
            txn.clear(chunk);
        }
    }
    txn.clear(key);
    Ok(())
}

/// Reassembles records from a range read: returns `(key, bytes)` per complete record,
/// and whether the last record was cut off by the read's limit. Chunks past a record's
/// count (left by a larger earlier version) are skipped.
pub fn assemble(pairs: Vec<KeyValue>) -> Result<(Vec<KeyValue>, bool)> {
    let mut out: Vec<KeyValue> = Vec::new();
    let mut iter = pairs.into_iter().peekable();
    while let Some((key, value)) = iter.next() {
        if out
            .last()
            .is_some_and(|(record, _)| is_chunk_of(&key, record))
        {
            continue;
        }
        match head(&value)? {
            Head::Whole(b) => out.push((key, b.to_vec())),
            Head::Split { count, first } => {
                let mut bytes = first.to_vec();
                for _ in 1..count {
                    match iter.next() {
                        Some((_, c)) => bytes.extend_from_slice(&c),
                        None => return Ok((out, true)),
                    }
                }
                out.push((key, bytes));
            }
        }
    }
    Ok((out, false))
}

/// Reads the next page of whole records from `range` (snapshot reads, at most `rows`
/// stored values) and narrows `range` to what is left, or returns `None` as the rest
/// when the range is exhausted. A record cut by the page limit is read again whole on
/// the next page; the next page starts past every chunk key of the page's last record,
/// so chunks a smaller rewrite left behind never open a page. No record key of the range
/// may extend another by more than its two chunk bytes (true of every `Key` encoding:
/// each component ends in a terminator).
pub async fn read_records(
    txn: &mut dyn KvTxn,
    mut range: KeyRange,
    rows: usize,
) -> Result<(Vec<KeyValue>, Option<KeyRange>)> {
    let rows = rows.max(1);
    let pairs = txn
        .get_range(&range, ReadOptions::limit(rows).snapshot())
        .await?;
    let full = pairs.len() == rows;
    let first_key = pairs.first().map(|(k, _)| k.clone());
    let (mut records, cut) = assemble(pairs)?;
    if cut && records.is_empty() {
        // One record larger than the page: read it by key, so the scan moves on.
        if let Some(key) = first_key {
            if let Some(bytes) = get_bytes(txn, &key, true).await? {
                records.push((key, bytes));
            }
        }
    }
    let rest = match records.last() {
        Some((last, _)) if full || cut => {
            range.start = std::ops::Bound::Excluded(chunk_key(last, u16::MAX));
            Some(range)
        }
        _ => None,
    };
    Ok((records, rest))
}

/// Reads every stored key of `range` in pages of at most `page` keys, each page in a
/// snapshot transaction of its own (not one consistent snapshot: for offline tools and
/// counts), handing each page to `each` in key order.
pub async fn scan_pages<E>(
    store: &dyn KvStore,
    range: &KeyRange,
    page: usize,
    mut each: impl FnMut(Vec<KeyValue>) -> std::result::Result<(), E>,
) -> std::result::Result<(), E>
where
    E: From<StorageError>,
{
    let page = page.max(1);
    let mut range = range.clone();
    loop {
        let mut txn = store.begin().await?;
        let pairs = txn
            .get_range(&range, ReadOptions::limit(page).snapshot())
            .await?;
        let full = pairs.len() == page;
        if let Some((last, _)) = pairs.last() {
            range.start = std::ops::Bound::Excluded(last.clone());
        }
        each(pairs)?;
        if !full {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{
        assemble, decode_record, delete, encode, prefix, put_bytes, read_records, Key, KeyRange,
        KeyValue, ReadOptions, Result, CHUNK,
    };
    use crate::model::RunRecord;
    use crate::storage::memory::MemoryStore;
    use crate::storage::KvStore;

    const KEY: &[u8] = b"\x04record";
    const NEXT: &[u8] = b"\x04record2";

    async fn write(store: &MemoryStore, key: &[u8], len: usize) -> Vec<u8> {
        let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut txn = store.begin().await.expect("begin");
        put_bytes(txn.as_mut(), key, &bytes);
        txn.commit().await.expect("commit");
        bytes
    }

    async fn scan(store: &MemoryStore) -> Result<(Vec<KeyValue>, bool)> {
        let mut txn = store.begin().await.expect("begin");
        let pairs = txn
            .get_range(&KeyRange::prefix(b"\x04"), ReadOptions::limit(100))
            .await
            .expect("range");
        assemble(pairs)
    }

    #[tokio::test]
    async fn a_record_rewritten_smaller_reads_back_whole_in_range_reads() {
        // Found by the record_chunks fuzz target: the chunks of the larger version came
        // back from a range read as records of their own ("unknown record header").
        let store = MemoryStore::new();
        write(&store, KEY, 3 * CHUNK + 10).await;
        write(&store, KEY, 2 * CHUNK).await;
        let two_chunks = (scan(&store).await.expect("assembles").0[0].1).len();
        assert_eq!(two_chunks, 2 * CHUNK);
        let small = write(&store, KEY, 10).await;
        let next = write(&store, NEXT, 20).await;
        let (records, cut) = scan(&store).await.expect("assembles");
        assert_eq!(records, [(KEY.to_vec(), small), (NEXT.to_vec(), next)]);
        assert!(!cut);
    }

    #[tokio::test]
    async fn paged_reads_return_every_record_whole_across_cuts_and_stale_chunks() {
        // A split record cut by the page limit, and chunks a smaller rewrite left behind
        // at a page boundary, must neither be lost nor open the next page (a worker scan
        // answered 500 "unknown record header" on the latter).
        let store = MemoryStore::new();
        let [a, b, c] = ["a", "b", "c"].map(|id| Key::new(prefix::WORKER).str(id).into_bytes());
        write(&store, &a, 3 * CHUNK + 10).await;
        let small = write(&store, &a, 2 * CHUNK).await;
        let next = write(&store, &b, 2 * CHUNK + 5).await;
        let last = write(&store, &c, 7).await;
        for rows in 1..6 {
            let mut txn = store.begin().await.expect("begin");
            let mut rest = Some(Key::new(prefix::WORKER).range());
            let mut seen = Vec::new();
            while let Some(range) = rest {
                let (records, more) = read_records(txn.as_mut(), range, rows)
                    .await
                    .expect("a page of whole records");
                seen.extend(records);
                rest = more;
            }
            let expected = vec![
                (a.clone(), small.clone()),
                (b.clone(), next.clone()),
                (c.clone(), last.clone()),
            ];
            assert_eq!(seen, expected, "pages of {rows} values");
        }
    }

    #[tokio::test]
    async fn delete_clears_chunks_a_smaller_rewrite_left_behind() {
        let store = MemoryStore::new();
        write(&store, KEY, 2 * CHUNK + 1).await;
        write(&store, KEY, 1).await;
        let mut txn = store.begin().await.expect("begin");
        delete(txn.as_mut(), KEY).await.expect("delete");
        txn.commit().await.expect("commit");
        assert_eq!(scan(&store).await.expect("assembles"), (vec![], false));
    }

    /// Every key left under the test prefix, chunks included (no assembling).
    async fn raw_keys(store: &MemoryStore) -> Vec<Vec<u8>> {
        let mut txn = store.begin().await.expect("begin");
        let pairs = txn
            .get_range(&KeyRange::prefix(b"\x04"), ReadOptions::limit(1000))
            .await
            .expect("range");
        pairs.into_iter().map(|(k, _)| k).collect()
    }

    #[tokio::test]
    async fn delete_leaves_no_chunk_after_any_sequence_of_sizes() {
        // Grown, shrunk within chunks, shrunk to whole, grown again: whatever the history
        // of sizes, the stale chunks start at the current count and delete finds them.
        let sizes: [&[usize]; 6] = [
            &[10],
            &[3 * CHUNK + 1],
            &[3 * CHUNK + 1, 2 * CHUNK],
            &[3 * CHUNK + 1, 10],
            &[4 * CHUNK, 10, 2 * CHUNK + 5],
            &[2 * CHUNK, 4 * CHUNK, 3 * CHUNK],
        ];
        for history in sizes {
            let store = MemoryStore::new();
            for &len in history {
                write(&store, KEY, len).await;
            }
            write(&store, NEXT, 20).await;
            let mut txn = store.begin().await.expect("begin");
            delete(txn.as_mut(), KEY).await.expect("delete");
            txn.commit().await.expect("commit");
            assert_eq!(raw_keys(&store).await, vec![NEXT.to_vec()], "{history:?}");
        }
    }

    #[tokio::test]
    async fn deleting_a_missing_record_writes_nothing() {
        let store = MemoryStore::new();
        let before = store.version();
        let mut txn = store.begin().await.expect("begin");
        delete(txn.as_mut(), KEY).await.expect("delete");
        txn.commit().await.expect("commit");
        assert_eq!(store.version(), before);
    }

    #[test]
    fn a_fresh_run_record_round_trips_with_its_default_fields_left_out() {
        let mut run: RunRecord =
            serde_json::from_str(crate::model::tests::RUN_WITH_NULLS).expect("reads");
        run.lifecycle = Default::default();
        let bytes = encode(&run).expect("encodes");
        for left_out in [&b"lifecycle"[..], b"waits", b"memo", b"search_attributes"] {
            assert!(!bytes.windows(left_out.len()).any(|w| w == left_out));
        }
        let again: RunRecord = decode_record(&bytes).expect("decodes");
        assert!(again.lifecycle.is_empty() && again.waits.is_empty());
        assert_eq!(
            serde_json::to_value(&again).expect("encodes"),
            serde_json::to_value(&run).expect("encodes")
        );
        // A memo that is set is kept.
        run.memo = serde_json::json!({"k": 1});
        run.last_command_sequence = 3;
        let again: RunRecord = decode_record(&encode(&run).expect("encodes")).expect("decodes");
        assert_eq!(again.memo, serde_json::json!({"k": 1}));
        assert_eq!(again.last_command_sequence, 3);
    }
}
