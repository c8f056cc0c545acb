//! Record chunking of `keel_engine::tables`: values of any size written with `put_bytes`
//! (split across values of at most 100 kB, which the simulated store enforces) read back
//! whole by `get_bytes`, range reads reassembled by `assemble` give every record in key
//! order (a read cut by its limit returns a prefix and says so), and `delete` leaves
//! nothing behind. Records are overwritten with larger and smaller values in between.
//!
//! Input: a list of operations of 5 bytes each: `op`, `record` (one of four keys of one
//! history range), a 24-bit size (scaled to at most 350,000 bytes for `op` 0, at most
//! 300 bytes for `op` 1), or for `op` 3 a range-read limit. The value's bytes are a
//! pattern seeded by the op's position, so misplaced chunks show.
#![no_main]

use std::collections::BTreeMap;

use keel_engine::storage::simulated::SimulatedStore;
use keel_engine::storage::{KeyRange, KvStore, ReadOptions};
use keel_engine::tables;
use keel_fuzz::{block_on, Bytes};
use libfuzzer_sys::fuzz_target;

const NS: &str = "default";
const RUN: &str = "01JZ0000000000000000000000";
const SEQS: [u64; 4] = [1, 2, 3, 256];
const MAX_OPS: usize = 12;

fn value(size: usize, seed: u8) -> Vec<u8> {
    (0..size)
        .map(|i| seed ^ (i as u8) ^ ((i >> 8) as u8).rotate_left(3) ^ ((i >> 16) as u8))
        .collect()
}

async fn check(store: &SimulatedStore, model: &BTreeMap<Vec<u8>, Vec<u8>>, limit: usize) {
    let mut txn = store.begin().await.expect("begin");
    for seq in SEQS {
        let key = tables::history_key(NS, RUN, seq);
        for snapshot in [false, true] {
            let got = tables::get_bytes(txn.as_mut(), &key, snapshot)
                .await
                .expect("get_bytes");
            assert!(
                got.as_ref() == model.get(&key),
                "record {seq} reads back {:?} bytes, wrote {:?}",
                got.as_ref().map(Vec::len),
                model.get(&key).map(Vec::len)
            );
        }
    }
    let range = KeyRange::prefix(
        &keel_engine::keys::Key::new(keel_engine::keys::prefix::HISTORY)
            .str(NS)
            .str(RUN)
            .into_bytes(),
    );
    let pairs = txn
        .get_range(&range, ReadOptions::limit(limit))
        .await
        .expect("get_range");
    let exhausted = pairs.len() < limit;
    let (records, cut) = tables::assemble(pairs).expect("a range read of records assembles");
    let expected: Vec<(&Vec<u8>, &Vec<u8>)> = model.iter().collect();
    assert!(records.len() <= expected.len(), "more records than written");
    for ((key, bytes), (want_key, want)) in records.iter().zip(&expected) {
        assert!(
            key == *want_key && bytes == *want,
            "range read returned a record that was not written there"
        );
    }
    if exhausted {
        assert!(!cut, "a read that was not limited reports a cut");
        assert_eq!(
            records.len(),
            expected.len(),
            "a full range read misses records"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Bytes::new(data);
    block_on(async {
        let store = SimulatedStore::default();
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for step in 0..MAX_OPS {
            if input.is_empty() {
                break;
            }
            let op = input.u8() % 4;
            let key = tables::history_key(NS, RUN, SEQS[usize::from(input.u8() % 4)]);
            let size = (u32::from(input.u8()) << 16 | u32::from(input.u16())) as usize;
            if op == 3 {
                check(&store, &model, size % 16 + 1).await;
                continue;
            }
            let mut txn = store.begin().await.expect("begin");
            match op {
                0 | 1 => {
                    let size = if op == 0 { size % 350_001 } else { size % 301 };
                    let bytes = value(size, step as u8);
                    tables::put_bytes(txn.as_mut(), &key, &bytes);
                    model.insert(key, bytes);
                }
                _ => {
                    tables::delete(txn.as_mut(), &key).await.expect("delete");
                    model.remove(&key);
                }
            }
            txn.commit()
                .await
                .expect("a chunked write stays within the store's limits");
        }
        check(&store, &model, 1000).await;
    });
});
