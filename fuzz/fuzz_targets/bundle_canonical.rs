//! The history-export bundle's integrity checksum (`keel_engine::workflow::bundle_checksum`
//! over the `json-recursive-ksort-v1` canonical form): the canonical text of any JSON
//! document is valid JSON that denotes the same document (keys, strings, and numbers to
//! the last bit of their double) and is its own canonical form; the checksum ignores the
//! `integrity` member and nothing else. (The engine holds no bundle *verifier*: the SDK
//! verifies; the HTTP target checks every exported bundle's checksum.)
//!
//! Input: a JSON document (a bundle, from the tests, or anything).
#![no_main]

use keel_engine::workflow::bundle_canonical as canonical;
use keel_engine::workflow::bundle_checksum;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

/// Same document, numbers compared as the verifier reads them (as doubles).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
                (Some(p), Some(q), _, _) => p == q,
                (_, _, Some(p), Some(q)) => p == q,
                _ => {
                    x.as_f64().map(f64::to_bits) == y.as_f64().map(f64::to_bits)
                        || x.as_f64() == y.as_f64()
                }
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let mut text = String::new();
    canonical(&doc, &mut text);
    let parsed: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("canonical text is not JSON ({e}): {text}"));
    assert!(
        same(&parsed, &doc),
        "canonical text denotes another document: {text}"
    );
    let mut again = String::new();
    canonical(&parsed, &mut again);
    assert_eq!(again, text, "canonical form is not a fixed point");

    let sum = bundle_checksum(&doc);
    assert_eq!(sum.len(), 64);
    if let Value::Object(map) = &doc {
        let mut other = map.clone();
        other.insert("integrity".into(), json!({"checksum": "ignored"}));
        assert_eq!(bundle_checksum(&Value::Object(other.clone())), sum);
        other.insert("integrity-not".into(), json!(1));
        assert_ne!(bundle_checksum(&Value::Object(other)), sum);
    }
});
