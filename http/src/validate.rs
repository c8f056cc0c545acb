//! Field-level validation of JSON request bodies: every problem is collected, then
//! reported at once as a 422 `validation_failed` with per-field messages.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::error::ApiError;

/// Collects field errors while reading a body.
pub struct Fields<'a> {
    body: &'a Map<String, Value>,
    errors: BTreeMap<String, Vec<String>>,
}

static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();

impl<'a> Fields<'a> {
    /// Starts on `body`, which must be a JSON object (an empty body counts as `{}`).
    pub fn new(body: &'a Value) -> Result<Self, ApiError> {
        match body {
            Value::Object(map) => Ok(Fields {
                body: map,
                errors: BTreeMap::new(),
            }),
            Value::Null => Ok(Fields {
                body: EMPTY.get_or_init(Map::new),
                errors: BTreeMap::new(),
            }),
            _ => Err(ApiError::field("body", "must be a JSON object")),
        }
    }

    /// Records an error on `field`.
    pub fn error(&mut self, field: &str, message: impl Into<String>) {
        self.errors
            .entry(field.to_string())
            .or_default()
            .push(message.into());
    }

    /// A required non-empty string of at most `max` bytes.
    pub fn required_str(&mut self, field: &str, max: usize) -> Option<String> {
        if self.body.get(field).is_none_or(Value::is_null) {
            self.error(field, format!("The {field} field is required."));
            return None;
        }
        let v = self.optional_str(field, max);
        if v.as_deref() == Some("") {
            self.error(field, format!("The {field} field must not be empty."));
        }
        v
    }

    /// An optional string of at most `max` bytes.
    pub fn optional_str(&mut self, field: &str, max: usize) -> Option<String> {
        match self.body.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.len() <= max => Some(s.clone()),
            Some(Value::String(_)) => {
                self.error(
                    field,
                    format!("The {field} field must not exceed {max} characters."),
                );
                None
            }
            Some(_) => {
                self.error(field, format!("The {field} field must be a string."));
                None
            }
        }
    }

    /// An optional identifier: `[A-Za-z0-9._:-]+`, at most `max` bytes.
    pub fn optional_id(&mut self, field: &str, max: usize) -> Option<String> {
        let v = self.optional_str(field, max)?;
        let ok = !v.is_empty()
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        if !ok {
            self.error(
                field,
                format!(
                    "The {field} field may contain only letters, digits, '.', '_', ':' and '-'."
                ),
            );
            return None;
        }
        Some(v)
    }

    /// A required string of at most `max` bytes (non-empty).
    pub fn required_id_str(&mut self, field: &str, max: usize) -> String {
        self.required_str(field, max).unwrap_or_default()
    }

    /// An optional integer within `min..=max`.
    pub fn optional_int(&mut self, field: &str, min: i64, max: i64) -> Option<i64> {
        match self.body.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => match n.as_i64() {
                Some(i) if (min..=max).contains(&i) => Some(i),
                _ => {
                    self.error(
                        field,
                        format!("The {field} field must be an integer between {min} and {max}."),
                    );
                    None
                }
            },
            Some(_) => {
                self.error(field, format!("The {field} field must be an integer."));
                None
            }
        }
    }

    /// A required integer within `min..=max`.
    pub fn required_int(&mut self, field: &str, min: i64, max: i64) -> i64 {
        if self.body.get(field).is_none_or(Value::is_null) {
            self.error(field, format!("The {field} field is required."));
            return min;
        }
        self.optional_int(field, min, max).unwrap_or(min)
    }

    /// An optional JSON object.
    pub fn optional_object(&mut self, field: &str) -> Option<Value> {
        match self.body.get(field) {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(_) => {
                self.error(field, format!("The {field} field must be an object."));
                None
            }
        }
    }

    /// An optional array of strings.
    pub fn optional_str_list(&mut self, field: &str) -> Vec<String> {
        match self.body.get(field) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            Some(_) => {
                self.error(
                    field,
                    format!("The {field} field must be a list of strings."),
                );
                Vec::new()
            }
        }
    }

    /// Records an error when `field` is present.
    pub fn reject_present(&mut self, field: &str, message: &str) {
        if self.body.contains_key(field) {
            self.error(field, format!("The {field} field {message}."));
        }
    }

    /// `Ok` when no error was recorded.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::validation(self.errors))
        }
    }
}
