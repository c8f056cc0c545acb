//! The CLI's view of a Keel server: one control-plane request per call, a non-2xx
//! answer turned into a [`CliError`] carrying the server's `reason` and `message`.

use std::path::Path;
use std::time::Duration;

use hyper::Method;
use keel_protocol_conformance::client::{Client, Plane};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::Value;

use crate::error::CliError;

/// A control-plane connection to one server, as one caller in one namespace.
pub struct Api {
    client: Client,
}

impl Api {
    /// `ca_cert`: a PEM file of CA certificates trusted besides the system's.
    pub fn new(
        server: &str,
        namespace: &str,
        token: Option<String>,
        ca_cert: Option<&Path>,
    ) -> Result<Api, CliError> {
        let mut client = Client::new(server, namespace)
            .with_tokens(token.clone(), token)
            .with_timeout(Duration::from_secs(60));
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path)
                .map_err(|e| CliError::Input(format!("--ca-cert {}: {e}", path.display())))?;
            client = client
                .trusting(&pem)
                .map_err(|e| CliError::Input(format!("--ca-cert {}: {e}", path.display())))?;
        }
        Ok(Api { client })
    }

    pub fn namespace(&self) -> &str {
        self.client.namespace()
    }

    pub async fn get(&self, path: &str) -> Result<Value, CliError> {
        self.send(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        self.send(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        self.send(Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<Value, CliError> {
        self.send(Method::DELETE, path, None).await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, CliError> {
        let reply = self
            .client
            .call(Plane::Control, method, path, body)
            .await
            .map_err(CliError::Unreachable)?;
        if (200..300).contains(&reply.status) {
            return Ok(reply.body);
        }
        Err(CliError::from_reply(reply.status, &reply.body))
    }
}

/// One path segment, percent-encoded (workflow ids may hold `/`, `:` or spaces).
pub fn seg(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

/// `?k=v&...` of the given pairs, skipping absent values; "" when none is present.
pub fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", seg(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}
