//! Why a command failed, and the exit status that tells a script which kind it was.

use serde_json::{json, Value};

/// Exit statuses (also in `keel --help`): a script can tell a missing object from a
/// refusal, bad input, a server that cannot be reached, or a fault of the server.
pub mod exit {
    pub const OK: u8 = 0;
    /// The server answered 5xx, or its answer could not be read.
    pub const SERVER: u8 = 1;
    /// The command line itself is wrong (clap's own status).
    pub const USAGE: u8 = 2;
    /// The server refused the input: 400 or 422.
    pub const INVALID: u8 = 3;
    /// The named object does not exist: 404.
    pub const NOT_FOUND: u8 = 4;
    /// Refused: 401 or 403 (credentials), 409 (conflict with the object's state), 429.
    pub const REFUSED: u8 = 5;
    /// No answer: connection refused, timeout, DNS.
    pub const UNREACHABLE: u8 = 6;
}

#[derive(Debug)]
pub enum CliError {
    /// An answer outside 2xx, with the server's machine-readable reason.
    Server {
        status: u16,
        reason: String,
        message: String,
    },
    /// The server could not be reached.
    Unreachable(String),
    /// The command's own input is unusable (e.g. `--input` is not JSON).
    Input(String),
}

impl CliError {
    pub fn from_reply(status: u16, body: &Value) -> CliError {
        let reason = body["reason"]
            .as_str()
            .or_else(|| body["error"].as_str())
            .unwrap_or("")
            .to_string();
        let mut message = body["message"].as_str().unwrap_or("").to_string();
        if let Some(errors) = body["errors"].as_object() {
            for (field, messages) in errors {
                let text = match messages {
                    Value::Array(list) => list
                        .iter()
                        .map(|m| m.as_str().unwrap_or("invalid").to_string())
                        .collect::<Vec<_>>()
                        .join("; "),
                    other => other.to_string(),
                };
                message.push_str(&format!("\n  {field}: {text}"));
            }
        }
        CliError::Server {
            status,
            reason,
            message,
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Server { status, .. } => match status {
                400 | 413 | 422 => exit::INVALID,
                404 => exit::NOT_FOUND,
                401 | 403 | 409 | 429 => exit::REFUSED,
                _ => exit::SERVER,
            },
            CliError::Unreachable(_) => exit::UNREACHABLE,
            CliError::Input(_) => exit::USAGE,
        }
    }

    /// One or a few lines for a person: the status, the reason, the message.
    pub fn human(&self) -> String {
        match self {
            CliError::Server {
                status,
                reason,
                message,
            } => {
                let reason = if reason.is_empty() {
                    String::new()
                } else {
                    format!(" {reason}")
                };
                format!("error: {status}{reason}: {message}")
            }
            CliError::Unreachable(detail) => format!("error: server unreachable: {detail}"),
            CliError::Input(detail) => format!("error: {detail}"),
        }
    }

    /// The JSON form printed under `--output json`: always an object.
    pub fn json(&self) -> Value {
        match self {
            CliError::Server {
                status,
                reason,
                message,
            } => json!({"error": {"status": status, "reason": reason, "message": message}}),
            CliError::Unreachable(detail) => {
                json!({"error": {"status": null, "reason": "server_unreachable", "message": detail}})
            }
            CliError::Input(detail) => {
                json!({"error": {"status": null, "reason": "invalid_arguments", "message": detail}})
            }
        }
    }
}
