//! One module per command group; each turns its arguments into control-plane requests
//! and prints the answer (see [`crate::Ctx::emit`]).

pub mod namespace;
pub mod operator;
pub mod schedule;
pub mod system;
pub mod task_queue;
pub mod worker;
pub mod workflow;

use keel_engine::avro::{self, AvroValue};
use serde_json::Value;

use crate::error::CliError;

/// `--input` as the SDK's argument-list envelope: a JSON array is the list, any other
/// JSON value one argument, and text that is not JSON one string argument.
pub fn arguments(input: Option<&str>) -> Value {
    let list = match input {
        None => Value::Array(Vec::new()),
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Array(items)) => Value::Array(items),
            Ok(other) => Value::Array(vec![other]),
            Err(_) => Value::Array(vec![Value::String(text.to_string())]),
        },
    };
    avro::envelope(&AvroValue::from_json(&list))
}

/// A flag's JSON object, or an input error naming the flag.
pub fn json_object(flag: &str, text: &str) -> Result<Value, CliError> {
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(CliError::Input(format!("{flag} must be a JSON object"))),
        Err(e) => Err(CliError::Input(format!("{flag} is not JSON: {e}"))),
    }
}

/// The body without its absent (null) fields: an update changes only what was given.
pub fn without_nulls(mut body: Value) -> Value {
    if let Some(map) = body.as_object_mut() {
        map.retain(|_, v| !v.is_null());
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::decode_payload;
    use serde_json::json;

    #[test]
    fn input_text_becomes_the_sdk_argument_envelope() {
        let decode = |v: Value| decode_payload(&v);
        assert_eq!(decode(arguments(Some("[1, \"a\"]"))), json!([1, "a"]));
        assert_eq!(decode(arguments(Some("{\"k\": 2}"))), json!([{"k": 2}]));
        assert_eq!(decode(arguments(Some("Ada"))), json!(["Ada"]));
        assert_eq!(decode(arguments(None)), json!([]));
    }

    #[test]
    fn a_json_flag_that_is_not_an_object_is_refused_before_any_request() {
        assert!(json_object("--memo", "[1]").is_err());
        assert!(json_object("--memo", "{").is_err());
        assert!(json_object("--memo", "{}").is_ok());
    }
}
