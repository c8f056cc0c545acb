//! Human output: aligned tables, `key: value` blocks, relative times, colour only on a
//! terminal; and the payload envelopes decoded for display.

use std::io::{IsTerminal, Write};

use keel_engine::avro;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Where a command writes, and how.
pub struct Out<'a> {
    pub w: &'a mut dyn Write,
    /// Colour escapes allowed (stdout is a terminal and NO_COLOR is unset).
    pub colour: bool,
    pub now: OffsetDateTime,
}

impl Out<'_> {
    pub fn line(&mut self, text: &str) {
        // A closed pipe (`keel ... | head`) is not an error of the command.
        let _ = writeln!(self.w, "{text}");
    }

    pub fn json(&mut self, value: &Value) {
        let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| "{}".into());
        self.line(&text);
    }

    /// `status` coloured by its meaning when colour is on.
    pub fn status(&self, status: &str) -> String {
        if !self.colour {
            return status.to_string();
        }
        let code = match status {
            "completed" | "ok" | "active" | "healthy" => "32",
            "failed" | "terminated" | "timed_out" | "error" | "unhealthy" => "31",
            "cancelled" | "paused" | "degraded" | "draining" => "33",
            _ => return status.to_string(),
        };
        format!("\x1b[{code}m{status}\x1b[0m")
    }

    /// A table: a header row and rows, columns padded to their widest cell.
    pub fn table(&mut self, header: &[&str], rows: &[Vec<String>]) {
        if rows.is_empty() {
            self.line("(none)");
            return;
        }
        let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
        for row in rows {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(visible_len(cell));
            }
        }
        let render = |cells: Vec<String>| {
            let mut line = String::new();
            for (i, cell) in cells.iter().enumerate() {
                if i + 1 == cells.len() {
                    line.push_str(cell);
                } else {
                    let pad = widths[i] - visible_len(cell) + 2;
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad));
                }
            }
            line.trim_end().to_string()
        };
        let head = render(header.iter().map(|h| h.to_uppercase()).collect());
        self.line(&head);
        for row in rows {
            let text = render(row.clone());
            self.line(&text);
        }
    }

    /// `key: value` lines, keys padded to one column; absent values are skipped.
    pub fn fields(&mut self, pairs: &[(&str, String)]) {
        let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (k, v) in pairs {
            if v.is_empty() {
                continue;
            }
            self.line(&format!("{k:<width$}  {v}"));
        }
    }

    /// The top-level scalar fields of a document as `key value` lines.
    pub fn scalars(&mut self, d: &Value) {
        let pairs: Vec<(&str, String)> = d
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, v)| !v.is_object() && !v.is_array())
            .map(|(k, _)| (k.as_str(), s(d, k)))
            .collect();
        self.fields(&pairs);
    }

    /// `2026-12-03T08:00:00Z` as "5m ago" / "in 2h" (the absolute time when unparsable).
    pub fn when(&self, value: &Value) -> String {
        let Some(text) = value.as_str() else {
            return String::new();
        };
        let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) else {
            return text.to_string();
        };
        let secs = (self.now - t).whole_seconds();
        let (n, future) = (secs.unsigned_abs(), secs < 0);
        let span = match n {
            0..=59 => format!("{n}s"),
            60..=3599 => format!("{}m", n / 60),
            3600..=86_399 => format!("{}h", n / 3600),
            _ => format!("{}d", n / 86_400),
        };
        if future {
            format!("in {span}")
        } else {
            format!("{span} ago")
        }
    }
}

/// Length as a terminal shows it (colour escapes take no room).
fn visible_len(s: &str) -> usize {
    let mut len = 0;
    let mut in_escape = false;
    for c in s.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, _) => len += 1,
        }
    }
    len
}

/// Colour on stdout only when it is a terminal and NO_COLOR is not set.
pub fn colour_wanted() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// A value for display: an Avro envelope (or a bare Avro blob string) decoded to JSON,
/// anything else as it is. Compact, one line.
pub fn payload(value: &Value) -> String {
    let decoded = decode_payload(value);
    match decoded {
        Value::Null => String::new(),
        Value::String(s) => s,
        other => other.to_string(),
    }
}

/// [`payload`]'s decoding step, kept as JSON.
pub fn decode_payload(value: &Value) -> Value {
    let blob = match value {
        Value::Object(map) if map.get("codec").and_then(Value::as_str) == Some("avro") => {
            map.get("blob").and_then(Value::as_str)
        }
        Value::String(s) => Some(s.as_str()),
        _ => None,
    };
    match blob.map(avro::decode_blob) {
        Some(Ok(v)) => v.to_json(),
        _ => value.clone(),
    }
}

/// A string field, or "".
pub fn s(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Text cut to `max` characters with an ellipsis.
pub fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let cut: String = text.chars().take(max.saturating_sub(1)).collect();
    format!("{cut}…")
}
