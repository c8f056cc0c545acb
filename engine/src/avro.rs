//! The SDK's fixed Avro `durable_workflow.protocol.Value` payload codec, the small part
//! the server must read and write itself (memo upserts carry an Avro map the server
//! merges into the run's memo and records back as an envelope).
//!
//! Wire form: Avro single-object encoding, `C3 01 || CRC-64-AVRO fingerprint || datum`,
//! base64 in the envelope's `blob`. The datum is a record with one union field whose
//! branches are, in order: null, boolean, long, double, bytes, string, array of Value,
//! map of Value. Maps keep their wire order, so a decoded map re-encodes byte for byte.

use base64::Engine as _;
use serde_json::{json, Map, Number, Value};

/// Single-object magic.
const MAGIC: [u8; 2] = [0xC3, 0x01];
/// CRC-64-AVRO fingerprint of the Value schema.
const FINGERPRINT: [u8; 8] = [0xE2, 0xA3, 0x3D, 0xFF, 0x55, 0x80, 0x22, 0x37];
/// Deepest nesting accepted, so hostile input cannot exhaust the stack.
const MAX_DEPTH: usize = 128;

/// One Avro Value.
#[derive(Debug, Clone, PartialEq)]
pub enum AvroValue {
    /// `null`.
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed 64-bit integer.
    Long(i64),
    /// A finite double.
    Double(f64),
    /// Raw bytes.
    Bytes(Vec<u8>),
    /// A UTF-8 string.
    String(String),
    /// A list.
    Array(Vec<AvroValue>),
    /// A string-keyed map, in wire order.
    Map(Vec<(String, AvroValue)>),
}

/// Why a blob is not a Value payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid_payload_framing: {0}")]
pub struct AvroError(pub &'static str);

/// Decodes a base64 single-object Value payload.
pub fn decode_blob(blob: &str) -> Result<AvroValue, AvroError> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .map_err(|_| AvroError("blob is not base64"))?;
    decode_bytes(&raw)
}

/// Decodes single-object Value bytes.
pub fn decode_bytes(raw: &[u8]) -> Result<AvroValue, AvroError> {
    if raw.len() < 10 || raw[..2] != MAGIC {
        return Err(AvroError("expected Avro single-object magic c301"));
    }
    if raw[2..10] != FINGERPRINT {
        return Err(AvroError("unknown schema fingerprint"));
    }
    let mut reader = Reader {
        bytes: &raw[10..],
        pos: 0,
    };
    let value = reader.value(0)?;
    if reader.pos != reader.bytes.len() {
        return Err(AvroError("trailing bytes after the datum"));
    }
    Ok(value)
}

/// Encodes a Value as a base64 single-object payload.
pub fn encode_blob(value: &AvroValue) -> String {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FINGERPRINT);
    write_value(&mut out, value);
    base64::engine::general_purpose::STANDARD.encode(out)
}

/// The `{codec: "avro", blob}` envelope of a Value.
pub fn envelope(value: &AvroValue) -> Value {
    json!({"codec": "avro", "blob": encode_blob(value)})
}

impl AvroValue {
    /// The Value of a JSON document: integers become longs, other numbers doubles, and the
    /// typed projection of bytes (`{"$type": "bytes", "base64": ...}`) bytes again.
    pub fn from_json(v: &Value) -> AvroValue {
        if let Some(bytes) = typed_bytes(v) {
            return AvroValue::Bytes(bytes);
        }
        match v {
            Value::Null => AvroValue::Null,
            Value::Bool(b) => AvroValue::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => AvroValue::Long(i),
                None => AvroValue::Double(n.as_f64().unwrap_or(0.0)),
            },
            Value::String(s) => AvroValue::String(s.clone()),
            Value::Array(items) => AvroValue::Array(items.iter().map(Self::from_json).collect()),
            Value::Object(map) => AvroValue::Map(
                map.iter()
                    .map(|(k, v)| (k.clone(), Self::from_json(v)))
                    .collect(),
            ),
        }
    }

    /// The typed JSON projection the SDKs compare memos with: bytes become
    /// `{"$type": "bytes", "base64": ...}`, an integral double an integer.
    pub fn to_json(&self) -> Value {
        match self {
            AvroValue::Null => Value::Null,
            AvroValue::Bool(b) => Value::Bool(*b),
            AvroValue::Long(i) => Value::from(*i),
            AvroValue::Double(d) if d.fract() == 0.0 && d.abs() < 9.0e15 => Value::from(*d as i64),
            AvroValue::Double(d) => Number::from_f64(*d).map_or(Value::Null, Value::Number),
            AvroValue::Bytes(b) => json!({
                "$type": "bytes",
                "base64": base64::engine::general_purpose::STANDARD.encode(b),
            }),
            AvroValue::String(s) => Value::String(s.clone()),
            AvroValue::Array(items) => Value::Array(items.iter().map(Self::to_json).collect()),
            AvroValue::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_json()))
                    .collect::<Map<_, _>>(),
            ),
        }
    }
}

/// The bytes of a `{"$type": "bytes", "base64": ...}` projection, if `v` is one.
fn typed_bytes(v: &Value) -> Option<Vec<u8>> {
    let map = v.as_object().filter(|m| m.len() == 2)?;
    if map.get("$type").and_then(Value::as_str) != Some("bytes") {
        return None;
    }
    let text = map.get("base64").and_then(Value::as_str)?;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, AvroError> {
        let b = *self
            .bytes
            .get(self.pos)
            .ok_or(AvroError("truncated datum"))?;
        self.pos += 1;
        Ok(b)
    }

    fn long(&mut self) -> Result<i64, AvroError> {
        let mut raw: u64 = 0;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            if shift == 63 && b > 1 {
                return Err(AvroError("long overflows 64 bits"));
            }
            raw |= u64::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                return Ok((raw >> 1) as i64 ^ -((raw & 1) as i64));
            }
        }
        Err(AvroError("long overflows 64 bits"))
    }

    fn take(&mut self, n: i64) -> Result<&[u8], AvroError> {
        let n = usize::try_from(n).map_err(|_| AvroError("negative length"))?;
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or(AvroError("truncated datum"))?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn string(&mut self) -> Result<String, AvroError> {
        let n = self.long()?;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| AvroError("string is not utf-8"))
    }

    /// The item count of the next block (0 ends the sequence). A negative count is
    /// followed by the block's byte size, which is skipped.
    fn block(&mut self) -> Result<usize, AvroError> {
        let count = self.long()?;
        if count < 0 {
            self.long()?;
        }
        usize::try_from(count.unsigned_abs()).map_err(|_| AvroError("block too large"))
    }

    fn value(&mut self, depth: usize) -> Result<AvroValue, AvroError> {
        if depth > MAX_DEPTH {
            return Err(AvroError("value nested too deeply"));
        }
        Ok(match self.long()? {
            0 => AvroValue::Null,
            1 => match self.byte()? {
                0 => AvroValue::Bool(false),
                1 => AvroValue::Bool(true),
                _ => return Err(AvroError("invalid boolean")),
            },
            2 => AvroValue::Long(self.long()?),
            3 => {
                let raw: [u8; 8] = self
                    .take(8)?
                    .try_into()
                    .map_err(|_| AvroError("truncated double"))?;
                let d = f64::from_le_bytes(raw);
                if !d.is_finite() {
                    return Err(AvroError("non-finite double"));
                }
                AvroValue::Double(d)
            }
            4 => {
                let n = self.long()?;
                AvroValue::Bytes(self.take(n)?.to_vec())
            }
            5 => AvroValue::String(self.string()?),
            6 => {
                let mut items = Vec::new();
                loop {
                    let count = self.block()?;
                    if count == 0 {
                        break;
                    }
                    for _ in 0..count {
                        items.push(self.value(depth + 1)?);
                    }
                }
                AvroValue::Array(items)
            }
            7 => {
                let mut entries = Vec::new();
                loop {
                    let count = self.block()?;
                    if count == 0 {
                        break;
                    }
                    for _ in 0..count {
                        let key = self.string()?;
                        let value = self.value(depth + 1)?;
                        entries.push((key, value));
                    }
                }
                AvroValue::Map(entries)
            }
            _ => return Err(AvroError("unknown Value branch")),
        })
    }
}

fn write_long(out: &mut Vec<u8>, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    loop {
        if z < 0x80 {
            out.push(z as u8);
            return;
        }
        out.push((z as u8 & 0x7F) | 0x80);
        z >>= 7;
    }
}

fn write_bytes(out: &mut Vec<u8>, b: &[u8]) {
    write_long(out, b.len() as i64);
    out.extend_from_slice(b);
}

fn write_value(out: &mut Vec<u8>, value: &AvroValue) {
    match value {
        AvroValue::Null => write_long(out, 0),
        AvroValue::Bool(b) => {
            write_long(out, 1);
            out.push(u8::from(*b));
        }
        AvroValue::Long(n) => {
            write_long(out, 2);
            write_long(out, *n);
        }
        AvroValue::Double(d) => {
            write_long(out, 3);
            out.extend_from_slice(&d.to_le_bytes());
        }
        AvroValue::Bytes(b) => {
            write_long(out, 4);
            write_bytes(out, b);
        }
        AvroValue::String(s) => {
            write_long(out, 5);
            write_bytes(out, s.as_bytes());
        }
        AvroValue::Array(items) => {
            write_long(out, 6);
            if !items.is_empty() {
                write_long(out, items.len() as i64);
                for item in items {
                    write_value(out, item);
                }
            }
            write_long(out, 0);
        }
        AvroValue::Map(entries) => {
            write_long(out, 7);
            if !entries.is_empty() {
                write_long(out, entries.len() as i64);
                for (k, v) in entries {
                    write_bytes(out, k.as_bytes());
                    write_value(out, v);
                }
            }
            write_long(out, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{decode_blob, encode_blob, json, AvroValue, Value};

    fn golden() -> Value {
        serde_json::from_str(include_str!("../testdata/avro-value-v1-golden.json"))
            .expect("golden file parses")
    }

    #[test]
    fn golden_cases_decode_and_reencode_byte_for_byte() {
        let golden = golden();
        for case in golden["cases"].as_array().expect("cases") {
            let wire = case["wire_base64"].as_str().expect("wire");
            let value = decode_blob(wire).unwrap_or_else(|e| panic!("{}: {e}", case["name"]));
            assert_eq!(encode_blob(&value), wire, "{}", case["name"]);
        }
    }

    #[test]
    fn golden_malformed_frames_are_rejected() {
        let golden = golden();
        for case in golden["malformed_frames"].as_array().expect("malformed") {
            let wire = case["wire_base64"].as_str().expect("wire");
            assert!(decode_blob(wire).is_err(), "{} decoded", case["name"]);
        }
    }

    #[test]
    fn sdk_argument_list_decodes() {
        // ["world"], as the SDK encodes a start input.
        let value = decode_blob("wwHioz3/VYAiNwwCCgp3b3JsZAA=").expect("decodes");
        assert_eq!(
            value,
            AvroValue::Array(vec![AvroValue::String("world".into())])
        );
        assert_eq!(value.to_json(), json!(["world"]));
    }

    #[test]
    fn projection_types_bytes_and_prints_integral_doubles_as_integers() {
        let value = AvroValue::Map(vec![
            ("b".into(), AvroValue::Bytes(b"same".to_vec())),
            ("d".into(), AvroValue::Double(7.0)),
            ("f".into(), AvroValue::Double(2.5)),
        ]);
        assert_eq!(
            value.to_json(),
            json!({"b": {"$type": "bytes", "base64": "c2FtZQ=="}, "d": 7, "f": 2.5})
        );
    }

    #[test]
    fn typed_bytes_projection_reads_back_as_bytes() {
        let value = AvroValue::Bytes(vec![0xff, 0x00]);
        assert_eq!(AvroValue::from_json(&value.to_json()), value);
    }

    #[test]
    fn json_round_trips_through_values() {
        let doc = json!({"a": 1, "b": [true, null, 2.5, "x"], "c": {"d": -7}});
        let value = AvroValue::from_json(&doc);
        let again = decode_blob(&encode_blob(&value)).expect("decodes");
        assert_eq!(again.to_json(), doc);
    }
}
