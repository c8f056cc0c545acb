//! History events of `keel_engine::history`: events appended with `append` (as the engine
//! records them; large ones split into chunks) page back through `read_page` in order,
//! each decoding to what was written, with `more` and `last_seq` right for any window and
//! page size; `event_payload` returns each payload; page tokens round-trip and arbitrary
//! tokens never panic; and history values that are not valid records make reads fail,
//! never panic.
//!
//! Input: four bytes (`from`, `through`, page size, flags), then one event per line:
//! `EventType payload-json` (a payload that is not JSON is stored as a string). A line
//! starting with `+` has its payload padded past 100 kB. Flag 1 stores the last line's
//! raw bytes as one more history value, flag 2 reads through `u64::MAX`.
#![no_main]

use keel_engine::history;
use keel_engine::model::RunRecord;
use keel_engine::storage::simulated::SimulatedStore;
use keel_engine::storage::KvStore;
use keel_engine::tables;
use keel_fuzz::{block_on, Bytes};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

const NS: &str = "default";
const MAX_EVENTS: usize = 24;
const START_MS: i64 = 1_780_000_000_000;

fn run_record() -> RunRecord {
    serde_json::from_value(json!({
        "namespace": NS,
        "workflow_id": "wf-fuzz",
        "run_id": "01JZ0000000000000000000000",
        "run_number": 1,
        "workflow_type": "fuzz.workflow",
        "task_queue": "default",
        "status": "running",
        "priority": 0,
        "started_at_ms": START_MS,
        "last_progress_at_ms": START_MS,
        "last_event_seq": 0,
        "last_workflow_sequence": 0,
    }))
    .expect("invariant: a minimal run record deserializes")
}

fuzz_target!(|data: &[u8]| {
    let mut input = Bytes::new(data);
    let (from, through, limit, flags) = (input.u8(), input.u8(), input.u8(), input.u8());
    let text = String::from_utf8_lossy(input.rest()).into_owned();
    let lines: Vec<&str> = text.lines().take(MAX_EVENTS).collect();

    let _ = history::decode_token(&text);
    for n in [0, 1, u64::from(from), u64::MAX] {
        assert_eq!(history::decode_token(&history::encode_token(n)), Some(n));
    }

    block_on(async {
        let store = SimulatedStore::default();
        let mut run = run_record();
        let mut written: Vec<(String, Value)> = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let (padded, line) = match line.strip_prefix('+') {
                Some(rest) => (true, rest),
                None => (false, *line),
            };
            let (event_type, payload) = line.split_once(' ').unwrap_or((line, ""));
            let mut payload = serde_json::from_str::<Value>(payload)
                .unwrap_or_else(|_| Value::String(payload.to_string()));
            if padded {
                payload = json!({"padding": "x".repeat(150_000), "payload": payload});
            }
            let mut txn = store.begin().await.expect("begin");
            let seq = history::append(
                txn.as_mut(),
                &mut run,
                event_type,
                payload.clone(),
                START_MS + i as i64,
                Some("task-1"),
            );
            assert_eq!(seq, i as u64 + 1);
            txn.commit().await.expect("an appended event commits");
            written.push((event_type.to_string(), payload));
        }

        let n = written.len() as u64;
        let from = u64::from(from) % (n + 3) + 1;
        let through = if flags & 2 != 0 {
            u64::MAX
        } else {
            u64::from(through) % (n + 3)
        };
        let limit = usize::from(limit) % 40;
        let page = history::read_page(&store, NS, &run.run_id, from, through, limit)
            .await
            .expect("history written by append reads back");
        let expected: Vec<u64> = (from..=through.min(n)).take(limit.max(1)).collect();
        let got: Vec<u64> = page
            .events
            .iter()
            .map(|raw| {
                let event: Value = serde_json::from_str(raw.get()).expect("an event is JSON");
                let seq = event["sequence"].as_u64().expect("an event has a sequence");
                let (event_type, payload) = &written[(seq - 1) as usize];
                assert_eq!(event["event_type"].as_str(), Some(event_type.as_str()));
                assert_eq!(&event["payload"], payload, "payload of event {seq}");
                seq
            })
            .collect();
        assert_eq!(got, expected, "page {from}..={through} limit {limit}");
        assert_eq!(page.last_seq, got.last().copied().unwrap_or(from - 1));
        assert_eq!(page.more, page.last_seq < through);

        let mut txn = store.begin().await.expect("begin");
        for (i, (_, payload)) in written.iter().enumerate() {
            let got = history::event_payload(txn.as_mut(), NS, &run.run_id, i as u64 + 1)
                .await
                .expect("event_payload");
            assert_eq!(got.as_ref(), Some(payload));
        }

        if flags & 1 != 0 {
            // A value that `append` did not write: reads may fail, never panic.
            let raw = lines.last().map(|l| l.as_bytes()).unwrap_or_default();
            txn.set(&tables::history_key(NS, &run.run_id, n + 1), raw);
            txn.commit().await.expect("commit");
            let _ = history::read_page(&store, NS, &run.run_id, 1, n + 1, limit).await;
            let mut txn = store.begin().await.expect("begin");
            let _ = history::event_payload(txn.as_mut(), NS, &run.run_id, n + 1).await;
        }
    });
});
