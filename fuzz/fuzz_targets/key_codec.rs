//! The key codec of `keel_engine::keys`: every tuple reads back field by field, byte order
//! equals tuple order (a tuple sorts right before its extensions), a prefix's range holds
//! exactly the tuples that extend it, and reading arbitrary bytes never panics.
//!
//! Input: a table prefix byte, a schema (1–6 field types), then the fields of tuple `a`
//! and of tuple `b` (whose length may be shorter: then it is a prefix of the schema).
//! Strings are a length byte and that many bytes (lossy UTF-8); integers are big-endian,
//! short input reads as zeros.
#![no_main]

use std::cmp::Ordering;

use keel_engine::keys::{Key, KeyReader};
use keel_fuzz::Bytes;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Field {
    Str(String),
    U64(u64),
    I64(i64),
    U8(u8),
    U16(u16),
}

fn field(kind: u8, input: &mut Bytes<'_>) -> Field {
    match kind % 5 {
        0 => {
            let len = usize::from(input.u8() % 40);
            Field::Str(String::from_utf8_lossy(input.take(len)).into_owned())
        }
        1 => Field::U64(input.u64()),
        2 => Field::I64(input.u64() as i64),
        3 => Field::U8(input.u8()),
        _ => Field::U16(input.u16()),
    }
}

fn encode(prefix: u8, fields: &[Field]) -> Key {
    fields.iter().fold(Key::new(prefix), |k, f| match f {
        Field::Str(s) => k.str(s),
        Field::U64(n) => k.u64(*n),
        Field::I64(n) => k.i64(*n),
        Field::U8(n) => k.u8(*n),
        Field::U16(n) => k.u16(*n),
    })
}

fn read_back(key: &[u8], fields: &[Field]) {
    let mut r = KeyReader::new(key);
    for f in fields {
        let got = match f {
            Field::Str(_) => r.str().map(Field::Str),
            Field::U64(_) => r.u64().map(Field::U64),
            Field::I64(_) => r.i64().map(Field::I64),
            Field::U8(_) => r.u8().map(Field::U8),
            Field::U16(_) => match (r.u8(), r.u8()) {
                (Some(hi), Some(lo)) => Some(Field::U16(u16::from_be_bytes([hi, lo]))),
                _ => None,
            },
        };
        assert_eq!(
            got.as_ref(),
            Some(f),
            "field of {key:02x?} did not read back"
        );
    }
    assert_eq!(
        r.u8(),
        None,
        "bytes left after the last field of {key:02x?}"
    );
}

/// Tuple order: field by field (strings by bytes, which is code-point order), a proper
/// prefix first.
fn tuple_cmp(a: &[Field], b: &[Field]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        let o = match (x, y) {
            (Field::Str(x), Field::Str(y)) => x.as_bytes().cmp(y.as_bytes()),
            _ => x.cmp(y),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    a.len().cmp(&b.len())
}

fuzz_target!(|data: &[u8]| {
    let mut input = Bytes::new(data);
    let prefix = input.u8();
    let n = usize::from(input.u8() % 6) + 1;
    let schema: Vec<u8> = (0..n).map(|_| input.u8()).collect();
    let b_len = usize::from(input.u8()) % (n + 1);
    let a: Vec<Field> = schema.iter().map(|k| field(*k, &mut input)).collect();
    let b: Vec<Field> = schema[..b_len]
        .iter()
        .map(|k| field(*k, &mut input))
        .collect();

    let ka = encode(prefix, &a);
    let kb = encode(prefix, &b);
    let (ea, eb) = (ka.clone().into_bytes(), kb.clone().into_bytes());
    assert_eq!(ea[0], prefix);
    read_back(&ea, &a);
    read_back(&eb, &b);
    assert_eq!(
        ea.cmp(&eb),
        tuple_cmp(&a, &b),
        "byte order differs from tuple order: {a:?} {b:?}"
    );
    // `b` is a prefix of the schema: its range holds `a` exactly when `a` extends it.
    assert_eq!(
        kb.range().contains(&ea),
        a[..b_len] == b[..],
        "range of {b:?} and key of {a:?}"
    );
    assert!(ka.range().contains(&ea), "a key is inside its own range");

    // Reading arbitrary bytes with any schema never panics.
    let rest = input.rest();
    let mut r = KeyReader::new(rest);
    for k in &schema {
        let _ = match k % 4 {
            0 => r.str().map(|_| ()),
            1 => r.u64().map(|_| ()),
            2 => r.i64().map(|_| ()),
            _ => r.u8().map(|_| ()),
        };
    }
});
