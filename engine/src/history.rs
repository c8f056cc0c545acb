//! History events: built once in the wire shape the SDK replays, stored as JSON bytes,
//! and served back verbatim (no re-encoding on reads).

use serde_json::value::RawValue;
use serde_json::Value;

use crate::clock::{format_timestamp, Millis};
use crate::error::{Error, Result};
use crate::keys::{prefix, Key};
use crate::model::RunRecord;
use crate::storage::{KvStore, KvTxn, ReadOptions};
use crate::tables;

/// Appends one event to the run's history inside `txn` and returns its sequence.
pub fn append(
    txn: &mut dyn KvTxn,
    run: &mut RunRecord,
    event_type: &str,
    payload: Value,
    now: Millis,
    task_id: Option<&str>,
) -> u64 {
    run.last_event_seq += 1;
    run.last_progress_at_ms = now;
    let seq = run.last_event_seq;
    index_payload_references(txn, &run.namespace, &run.run_id, &payload);
    let bytes = event_bytes(run, seq, event_type, payload, now, task_id);
    tables::put_bytes(
        txn,
        &tables::history_key(&run.namespace, &run.run_id, seq),
        &bytes,
    );
    seq
}

/// The runtime external payload reference ids in `value`: every object holding an
/// `external_payload` member whose `reference_id` is a string, in document order.
pub fn payload_references(value: &Value) -> Vec<String> {
    fn walk(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(id) = map
                    .get("external_payload")
                    .and_then(|r| r.get("reference_id"))
                    .and_then(Value::as_str)
                {
                    out.push(id.to_string());
                }
                for v in map.values() {
                    walk(v, out);
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(value, &mut out);
    out
}

/// Key of "run `run_id` references payload `reference_id`" (retention's index).
pub fn run_payload_key(ns: &str, run_id: &str, reference_id: &str) -> Vec<u8> {
    Key::new(prefix::RUN_PAYLOAD)
        .str(ns)
        .str(run_id)
        .str(reference_id)
        .into_bytes()
}

/// Key of "payload `reference_id` is used by run `run_id`".
pub fn payload_use_key(ns: &str, reference_id: &str, run_id: &str) -> Vec<u8> {
    Key::new(prefix::PAYLOAD_USE)
        .str(ns)
        .str(reference_id)
        .str(run_id)
        .into_bytes()
}

/// Records, in the event's own transaction, which stored payloads the event references,
/// so retention removes a blob only with the last run whose history holds it.
pub fn index_payload_references(txn: &mut dyn KvTxn, ns: &str, run_id: &str, payload: &Value) {
    for reference_id in payload_references(payload) {
        txn.set(&run_payload_key(ns, run_id, &reference_id), b"");
        txn.set(&payload_use_key(ns, &reference_id, run_id), b"");
    }
}

/// An event as stored and served. Its fields are in the order a JSON object map writes
/// its keys (alphabetical), so the bytes equal those of the same event built as a
/// `Value` (checked by a test), without building one.
#[derive(serde::Serialize)]
struct Event<'a> {
    /// One key only: the Rust SDK aliases `type` to `event_type`, so both is an error.
    event_type: &'a str,
    id: String,
    namespace: &'a str,
    payload: &'a Value,
    recorded_at: &'a str,
    sequence: u64,
    timestamp: &'a str,
    /// Always `null`.
    workflow_command_id: Option<()>,
    workflow_task_id: Option<&'a str>,
}

/// The stored form of event `seq` of `run`.
pub fn event_bytes(
    run: &RunRecord,
    seq: u64,
    event_type: &str,
    payload: Value,
    now: Millis,
    task_id: Option<&str>,
) -> Vec<u8> {
    let recorded_at = format_timestamp(now);
    let event = Event {
        event_type,
        id: format!("{}:{}", run.run_id, seq),
        namespace: &run.namespace,
        payload: &payload,
        recorded_at: &recorded_at,
        sequence: seq,
        timestamp: &recorded_at,
        workflow_command_id: None,
        workflow_task_id: task_id,
    };
    serde_json::to_vec(&event).expect("invariant: an event always serializes")
}

/// One page of a run's history: events with sequence in `from..=through`, at most `limit`.
pub struct Page {
    /// The events, as stored.
    pub events: Vec<Box<RawValue>>,
    /// The last sequence returned (0 when none).
    pub last_seq: u64,
    /// Whether events up to `through` remain after this page.
    pub more: bool,
}

/// Reads a page of history in its own snapshot transaction.
pub async fn read_page(
    store: &dyn KvStore,
    ns: &str,
    run_id: &str,
    from: u64,
    through: u64,
    limit: usize,
) -> Result<Page> {
    let mut txn = store.begin().await?;
    read_page_in(txn.as_mut(), ns, run_id, from, through, limit).await
}

/// Reads a page of history inside `txn` without read conflicts.
pub async fn read_page_in(
    txn: &mut dyn KvTxn,
    ns: &str,
    run_id: &str,
    from: u64,
    through: u64,
    limit: usize,
) -> Result<Page> {
    let limit = limit.max(1);
    let mut events = Vec::new();
    let mut last_seq = from.saturating_sub(1);
    let mut next = from;
    while events.len() < limit && next <= through {
        let want = (limit - events.len()).min((through - next + 1) as usize);
        let range = tables::history_range(ns, run_id, next);
        // Chunks of split events count against the read limit; `assemble` reports a cut.
        let pairs = txn
            .get_range(&range, ReadOptions::limit(want + 8).snapshot())
            .await?;
        let fetched = pairs.len();
        let (records, _cut) = tables::assemble(pairs)?;
        if records.is_empty() {
            if fetched == 0 {
                break;
            }
            // A single event larger than the read: fetch it whole.
            let key = tables::history_key(ns, run_id, next);
            let bytes = tables::get_bytes(txn, &key, true)
                .await?
                .ok_or_else(|| Error::corrupt("history gap"))?;
            events.push(raw(bytes)?);
            last_seq = next;
            next += 1;
            continue;
        }
        for (key, bytes) in records {
            let mut r = crate::keys::KeyReader::new(&key);
            let (_, _, seq) = (
                r.str(),
                r.str(),
                r.u64().ok_or_else(|| Error::corrupt("history key"))?,
            );
            if seq > through || events.len() >= limit {
                break;
            }
            events.push(raw(bytes)?);
            last_seq = seq;
            next = seq + 1;
        }
        if fetched < want + 8 && next <= through {
            // The range ran out before `through`: history is shorter than asked.
            break;
        }
    }
    Ok(Page {
        events,
        last_seq,
        more: last_seq < through,
    })
}

fn raw(bytes: Vec<u8>) -> Result<Box<RawValue>> {
    let text = String::from_utf8(bytes).map_err(Error::corrupt)?;
    RawValue::from_string(text).map_err(Error::corrupt)
}

/// Reads one event's payload (for describe: input and output).
pub async fn event_payload(
    txn: &mut dyn KvTxn,
    ns: &str,
    run_id: &str,
    seq: u64,
) -> Result<Option<Value>> {
    let bytes = tables::get_bytes(txn, &tables::history_key(ns, run_id, seq), true).await?;
    let Some(bytes) = bytes else { return Ok(None) };
    /// The event's payload alone: the other fields are skipped, not built as values.
    #[derive(serde::Deserialize)]
    struct PayloadOnly {
        #[serde(default)]
        payload: Value,
    }
    let event: PayloadOnly = serde_json::from_slice(&bytes).map_err(Error::corrupt)?;
    Ok(Some(event.payload))
}

/// The workflow's input, from the run's stored `WorkflowStarted` event (its first);
/// `null` when absent. Only the input is built, the event's other fields are skipped.
pub async fn workflow_input(txn: &mut dyn KvTxn, ns: &str, run_id: &str) -> Result<Value> {
    let bytes = tables::get_bytes(txn, &tables::history_key(ns, run_id, 1), true).await?;
    bytes.map_or(Ok(Value::Null), |bytes| input_of(&bytes))
}

/// The `input` of a stored `WorkflowStarted` event (`null` when absent); the event's other
/// fields are skipped, not built.
pub fn started_input(event: &RawValue) -> Result<Value> {
    input_of(event.get().as_bytes())
}

fn input_of(event: &[u8]) -> Result<Value> {
    #[derive(serde::Deserialize)]
    struct Started {
        #[serde(default)]
        payload: Option<Input>,
    }
    #[derive(serde::Deserialize)]
    struct Input {
        #[serde(default)]
        input: Value,
    }
    let event: Started = serde_json::from_slice(event).map_err(Error::corrupt)?;
    Ok(event.payload.map_or(Value::Null, |p| p.input))
}

/// Encodes a history page token: the last sequence already returned.
pub fn encode_token(last_seq: u64) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(last_seq.to_string())
}

/// Decodes a history page token; `None` when malformed.
pub fn decode_token(token: &str) -> Option<u64> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(token)
        .ok()?;
    std::str::from_utf8(&bytes).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::{append, decode_token, encode_token, event_bytes, event_payload, RunRecord};
    use keel_storage::KvStore;
    use serde_json::{json, Value};

    fn run() -> RunRecord {
        serde_json::from_value(json!({
            "namespace": "default", "workflow_id": "wf", "run_id": "run", "run_number": 1,
            "workflow_type": "t", "task_queue": "q", "status": "running", "priority": 0,
            "started_at_ms": 0, "last_progress_at_ms": 0, "last_event_seq": 0,
            "last_workflow_sequence": 0,
        }))
        .expect("a run record")
    }

    #[test]
    fn an_event_is_stored_as_the_same_bytes_as_its_json_object() {
        let payload = json!({"result": {"codec": "avro", "blob": "AA=="}, "sequence": 3});
        for task_id in [Some("task-1"), None] {
            let as_object = json!({
                "id": "run:7", "sequence": 7, "event_type": "ActivityCompleted",
                "recorded_at": "2026-05-21T00:00:07.123000Z",
                "timestamp": "2026-05-21T00:00:07.123000Z",
                "workflow_task_id": task_id, "workflow_command_id": null,
                "namespace": "default", "payload": payload,
            });
            assert_eq!(
                String::from_utf8(event_bytes(
                    &run(),
                    7,
                    "ActivityCompleted",
                    payload.clone(),
                    1_779_321_607_123,
                    task_id
                ))
                .expect("utf-8"),
                serde_json::to_string(&as_object).expect("json")
            );
        }
    }

    #[tokio::test]
    async fn float_payloads_read_back_bit_for_bit() {
        // Found by the bundle_canonical fuzz target: serde_json's default float parser
        // read the stored `111111111111110.11` back one unit in the last place off (the
        // workspace enables its `float_roundtrip` feature).
        use crate::storage::memory::MemoryStore;
        let store = MemoryStore::new();
        let mut run = run();
        let payload = json!({"result": [111111111111110.11_f64, 0.1, 1e300, 5e-324]});
        let mut txn = store.begin().await.expect("begin");
        let seq = append(
            txn.as_mut(),
            &mut run,
            "SideEffectRecorded",
            payload.clone(),
            0,
            None,
        );
        txn.commit().await.expect("commit");
        let mut txn = store.begin().await.expect("begin");
        let read = event_payload(txn.as_mut(), "default", "run", seq)
            .await
            .expect("reads");
        assert_eq!(read, Some(payload));
    }

    #[test]
    fn the_started_input_is_read_from_the_stored_event_and_null_when_absent() {
        let input = json!({"codec": "avro", "blob": "AgQ="});
        let with = event_bytes(
            &run(),
            1,
            "WorkflowStarted",
            json!({"workflow_type": "w", "input": input, "task_queue": "q"}),
            0,
            None,
        );
        let raw = |bytes: Vec<u8>| super::raw(bytes).expect("stored events are JSON");
        assert_eq!(super::started_input(&raw(with)).expect("reads"), input);
        for payload in [json!({"workflow_type": "w"}), Value::Null] {
            let without = event_bytes(&run(), 1, "WorkflowStarted", payload, 0, None);
            assert_eq!(
                super::started_input(&raw(without)).expect("reads"),
                Value::Null
            );
        }
    }

    #[tokio::test]
    async fn the_workflow_input_is_read_from_the_runs_first_event() {
        use crate::storage::memory::MemoryStore;
        let store = MemoryStore::new();
        let mut txn = store.begin().await.expect("begin");
        assert_eq!(
            super::workflow_input(txn.as_mut(), "default", "run")
                .await
                .expect("reads"),
            Value::Null,
            "no history yet"
        );
        let mut run = run();
        let input = json!({"codec": "avro", "blob": "AgQ="});
        let started = json!({"workflow_type": "w", "input": input, "memo": {"k": [1, 2]}});
        append(txn.as_mut(), &mut run, "WorkflowStarted", started, 0, None);
        let later = json!({"input": "not the workflow's"});
        append(txn.as_mut(), &mut run, "SignalReceived", later, 0, None);
        txn.commit().await.expect("commit");
        let mut txn = store.begin().await.expect("begin");
        assert_eq!(
            super::workflow_input(txn.as_mut(), "default", "run")
                .await
                .expect("reads"),
            input
        );
    }

    #[test]
    fn page_tokens_round_trip_and_zero_means_from_the_start() {
        assert_eq!(encode_token(0), "MA==");
        assert_eq!(decode_token(&encode_token(4711)), Some(4711));
        assert_eq!(decode_token("not base64!"), None);
    }
}
