//! The Avro `Value` payload codec of `keel_engine::avro`: decoding arbitrary bytes never
//! panics; whatever decodes re-encodes to bytes that decode to the same value and encode
//! identically again; the typed JSON projection (what describe shows for a memo) is
//! stable through `from_json`.
//!
//! Input: single-object bytes (`c3 01`, fingerprint, datum). The datum alone is tried
//! too, behind the right header, so mutations reach the union decoder directly.
#![no_main]

use keel_engine::avro::{decode_blob, decode_bytes, encode_blob, AvroValue};
use libfuzzer_sys::fuzz_target;

const HEADER: [u8; 10] = [0xC3, 0x01, 0xE2, 0xA3, 0x3D, 0xFF, 0x55, 0x80, 0x22, 0x37];

fn check(raw: &[u8]) {
    let Ok(value) = decode_bytes(raw) else { return };
    let blob = encode_blob(&value);
    let again = decode_blob(&blob).expect("an encoded value decodes");
    assert_eq!(again, value, "value changed through encode and decode");
    assert_eq!(encode_blob(&again), blob, "encoding is not stable");

    let projected = value.to_json();
    let reprojected = AvroValue::from_json(&projected).to_json();
    assert_eq!(reprojected, projected, "typed projection is not stable");
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut framed = HEADER.to_vec();
    framed.extend_from_slice(data);
    check(&framed);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = decode_blob(text);
    }
});
