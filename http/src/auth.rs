//! Bearer-token authentication and role authorization.
//!
//! # Roles
//!
//! `worker` (the worker plane), `operator` (the control plane) and `admin` (namespace and
//! system administration). `admin` includes `operator`. `admin` does **not** include
//! `worker`: a worker credential and an operator credential are kept apart, as upstream
//! does once role tokens are configured. A deployment that wants one credential for
//! everything (upstream's legacy single token) gives one token several roles:
//! `admin+worker:SECRET`.
//!
//! # Configuration
//!
//! `KEEL_TOKENS=role[+role]:token[@ns1|ns2],...` and/or a TOML file
//! (`keel serve --auth-file keel-auth.toml`):
//!
//! ```toml
//! [[tokens]]
//! roles = ["worker"]          # or role = "worker"
//! token = "s3cret-worker"     # or token_env = "NAME_OF_AN_ENV_VAR"
//! namespaces = ["orders"]     # optional: the token sees only these namespaces
//! name = "orders-workers"     # optional label (logs name tokens by this, never by secret)
//! ```
//!
//! With no token configured the server is *open* (every caller is every role); `main`
//! allows that only on a loopback address. With tokens, every route except health and
//! readiness needs a valid token: none or an unknown one is 401 `unauthorized`, a token
//! without the route's role is 403 `forbidden` naming the required and actual roles.
//!
//! Secrets are compared in constant time against every configured token (the time does
//! not depend on which token matched; a secret's length may show). They are never
//! logged or echoed.

use std::fmt;
use std::sync::Arc;

use hyper::header::AUTHORIZATION;
use hyper::{HeaderMap, StatusCode};
use serde::Deserialize;
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::error::ApiError;
use crate::router::Access;

/// A role a token can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The worker plane.
    Worker,
    /// The control plane.
    Operator,
    /// Administration; includes `Operator`.
    Admin,
}

impl Role {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Result<Role, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "worker" => Ok(Role::Worker),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role '{other}' (expected worker, operator or admin)"
            )),
        }
    }

    fn bit(self) -> u8 {
        match self {
            Role::Worker => 1,
            Role::Operator => 2,
            Role::Admin => 4,
        }
    }
}

/// A set of roles.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Roles(u8);

impl Roles {
    /// Every role (open mode).
    pub const ALL: Roles = Roles(7);

    /// Whether the set holds `role`.
    pub fn has(self, role: Role) -> bool {
        self.0 & role.bit() != 0
    }

    fn with(self, role: Role) -> Roles {
        Roles(self.0 | role.bit())
    }

    /// The wire names, in a fixed order.
    pub fn names(self) -> Vec<&'static str> {
        [Role::Worker, Role::Operator, Role::Admin]
            .into_iter()
            .filter(|r| self.has(*r))
            .map(Role::as_str)
            .collect()
    }

    /// Whether these roles grant `access`.
    pub fn grants(self, access: Access) -> bool {
        match access {
            Access::Public => true,
            Access::Any => self.0 != 0,
            Access::Worker => self.has(Role::Worker),
            Access::Operator => self.has(Role::Operator) || self.has(Role::Admin),
            Access::Admin => self.has(Role::Admin),
        }
    }
}

/// One configured token.
struct TokenEntry {
    secret: Vec<u8>,
    roles: Roles,
    /// `None`: every namespace.
    namespaces: Option<Arc<[String]>>,
    label: String,
}

/// The token configuration. Empty means open mode.
#[derive(Default)]
pub struct AuthConfig {
    tokens: Vec<TokenEntry>,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secrets.
        f.debug_struct("AuthConfig")
            .field(
                "tokens",
                &self.tokens.iter().map(|t| &t.label).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Who made a request.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Its roles.
    pub roles: Roles,
    /// The namespaces it may see (`None`: all).
    pub namespaces: Option<Arc<[String]>>,
    /// The token's label (`open` in open mode), for logs.
    pub label: String,
}

impl Principal {
    /// The principal of open mode: every role, every namespace.
    pub fn open() -> Principal {
        Principal {
            roles: Roles::ALL,
            namespaces: None,
            label: "open".into(),
        }
    }

    /// Whether this principal may see namespace `ns`.
    pub fn can_see(&self, ns: &str) -> bool {
        self.namespaces
            .as_ref()
            .is_none_or(|list| list.iter().any(|n| n == ns))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    tokens: Vec<FileToken>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToken {
    role: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    token: Option<String>,
    token_env: Option<String>,
    namespaces: Option<Vec<String>>,
    name: Option<String>,
}

fn parse_namespaces(list: Vec<String>) -> Result<Arc<[String]>, String> {
    let mut out = Vec::new();
    for ns in list {
        let ns = ns.trim().to_ascii_lowercase();
        if !keel_engine::namespaces::valid_namespace_name(&ns) {
            return Err(format!("invalid namespace name '{ns}' in a token binding"));
        }
        out.push(ns);
    }
    if out.is_empty() {
        return Err(
            "a token's namespace list must not be empty (omit it for all namespaces)".into(),
        );
    }
    Ok(out.into())
}

impl AuthConfig {
    /// Open mode: no tokens.
    pub fn open() -> Self {
        AuthConfig::default()
    }

    /// Whether no token is configured.
    pub fn is_open(&self) -> bool {
        self.tokens.is_empty()
    }

    /// How many tokens are configured.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether no token is configured (same as [`AuthConfig::is_open`]).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    fn push(&mut self, entry: TokenEntry) -> Result<(), String> {
        if entry.secret.is_empty() {
            return Err(format!("token '{}' is empty", entry.label));
        }
        if entry.roles == Roles::default() {
            return Err(format!("token '{}' has no role", entry.label));
        }
        if self.tokens.iter().any(|t| t.secret == entry.secret) {
            return Err(format!(
                "token '{}' repeats another token's secret; give one token several roles instead (admin+worker:...)",
                entry.label
            ));
        }
        self.tokens.push(entry);
        Ok(())
    }

    /// Adds the tokens of a `KEEL_TOKENS` value: `role[+role]:token[@ns1|ns2]`, comma
    /// separated. Secrets may not contain `,` or `@` here (use the file for those).
    pub fn add_env(&mut self, value: &str) -> Result<(), String> {
        for (i, item) in value.split(',').map(str::trim).enumerate() {
            if item.is_empty() {
                continue;
            }
            let label = format!("KEEL_TOKENS[{i}]");
            let (roles, rest) = item
                .split_once(':')
                .ok_or_else(|| format!("{label}: expected role:token"))?;
            let mut set = Roles::default();
            for r in roles.split('+') {
                set = set.with(Role::parse(r).map_err(|e| format!("{label}: {e}"))?);
            }
            let (secret, namespaces) = match rest.split_once('@') {
                Some((s, ns)) => (
                    s,
                    Some(
                        parse_namespaces(ns.split('|').map(str::to_string).collect())
                            .map_err(|e| format!("{label}: {e}"))?,
                    ),
                ),
                None => (rest, None),
            };
            self.push(TokenEntry {
                secret: secret.trim().as_bytes().to_vec(),
                roles: set,
                namespaces,
                label,
            })?;
        }
        Ok(())
    }

    /// Adds the tokens of an auth file (TOML, see the module docs).
    pub fn add_toml(&mut self, text: &str) -> Result<(), String> {
        let file: FileConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        for (i, t) in file.tokens.into_iter().enumerate() {
            let label = t.name.clone().unwrap_or_else(|| format!("tokens[{i}]"));
            let mut set = Roles::default();
            for r in t.role.iter().chain(t.roles.iter()) {
                set = set.with(Role::parse(r).map_err(|e| format!("{label}: {e}"))?);
            }
            let secret = match (t.token, t.token_env) {
                (Some(s), None) => s,
                (None, Some(var)) => std::env::var(&var)
                    .map_err(|_| format!("{label}: environment variable {var} is not set"))?,
                _ => return Err(format!("{label}: give exactly one of token or token_env")),
            };
            let namespaces = t
                .namespaces
                .map(parse_namespaces)
                .transpose()
                .map_err(|e| format!("{label}: {e}"))?;
            self.push(TokenEntry {
                secret: secret.trim().as_bytes().to_vec(),
                roles: set,
                namespaces,
                label,
            })?;
        }
        Ok(())
    }

    /// Token counts per role, for the startup log.
    pub fn summary(&self) -> Vec<(&'static str, usize)> {
        [Role::Worker, Role::Operator, Role::Admin]
            .into_iter()
            .map(|r| {
                (
                    r.as_str(),
                    self.tokens.iter().filter(|t| t.roles.has(r)).count(),
                )
            })
            .collect()
    }

    /// Identifies the caller from the `Authorization` header. Open mode accepts anyone.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        if self.is_open() {
            return Ok(Principal::open());
        }
        let Some(value) = headers.get(AUTHORIZATION) else {
            return Err(unauthorized(
                "missing_credentials",
                "This route requires a bearer token: send Authorization: Bearer <token>.",
            ));
        };
        let presented = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                unauthorized(
                    "malformed_authorization",
                    "The Authorization header must be 'Bearer <token>'.",
                )
            })?;
        // Compare with every token, selecting the match without branching on it.
        let mut found: u64 = 0;
        for (i, entry) in self.tokens.iter().enumerate() {
            let eq = entry.secret.as_slice().ct_eq(presented.as_bytes());
            found = u64::conditional_select(&found, &(i as u64 + 1), eq);
        }
        match found
            .checked_sub(1)
            .and_then(|i| self.tokens.get(i as usize))
        {
            Some(entry) => Ok(Principal {
                roles: entry.roles,
                namespaces: entry.namespaces.clone(),
                label: entry.label.clone(),
            }),
            None => Err(unauthorized(
                "invalid_token",
                "The bearer token is not valid for this server.",
            )),
        }
    }
}

fn unauthorized(detail: &'static str, message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
        .with("auth_failure", detail)
        .with(
            "remediation",
            "Configure the client with a token issued for this server (Client(token=...) or DURABLE_WORKFLOW_AUTH_TOKEN).",
        )
}

/// The role names that grant `access`.
pub fn required_roles(access: Access) -> Vec<&'static str> {
    match access {
        Access::Public => vec![],
        Access::Any => vec!["worker", "operator", "admin"],
        Access::Worker => vec!["worker"],
        Access::Operator => vec!["operator", "admin"],
        Access::Admin => vec!["admin"],
    }
}

/// Checks that `principal` may use a route requiring `access` (403 `forbidden`).
pub fn authorize(principal: &Principal, access: Access) -> Result<(), ApiError> {
    if principal.roles.grants(access) {
        return Ok(());
    }
    let required = required_roles(access);
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!(
            "this route requires one of the roles [{}]; the token has [{}]",
            required.join(", "),
            principal.roles.names().join(", ")
        ),
    )
    .with("auth_failure", "role_not_permitted")
    .with("required_roles", required)
    .with("actual_roles", principal.roles.names()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(auth).expect("header"));
        h
    }

    #[test]
    fn env_tokens_carry_roles_and_namespace_bindings() {
        let mut c = AuthConfig::open();
        c.add_env("worker:w1@Orders|billing, admin+worker:a1 ,operator:o1")
            .expect("parses");
        let w = c.authenticate(&headers("Bearer w1")).expect("w1");
        assert!(w.roles.grants(Access::Worker) && !w.roles.grants(Access::Operator));
        assert!(w.can_see("orders") && w.can_see("billing") && !w.can_see("default"));
        let a = c.authenticate(&headers("bearer a1")).expect("a1");
        assert!(a.roles.grants(Access::Admin) && a.roles.grants(Access::Worker));
        assert!(a.roles.grants(Access::Operator));
        let o = c.authenticate(&headers("Bearer o1")).expect("o1");
        assert!(o.roles.grants(Access::Operator) && !o.roles.grants(Access::Admin));
        assert!(!o.roles.grants(Access::Worker));
    }

    #[test]
    fn bad_credentials_are_unauthorized_and_never_echoed() {
        let mut c = AuthConfig::open();
        c.add_env("worker:w1").expect("parses");
        for (h, detail) in [
            (HeaderMap::new(), "missing_credentials"),
            (headers("Basic dXNlcg=="), "malformed_authorization"),
            (headers("Bearer nope-secret"), "invalid_token"),
        ] {
            let e = c.authenticate(&h).expect_err("rejected");
            assert_eq!(e.status, StatusCode::UNAUTHORIZED);
            assert_eq!(
                e.extra.get("auth_failure").and_then(|v| v.as_str()),
                Some(detail)
            );
            assert!(!e.body().to_string().contains("nope-secret"));
        }
    }

    #[test]
    fn toml_file_tokens_and_config_errors() {
        let mut c = AuthConfig::open();
        c.add_toml(
            r#"
            [[tokens]]
            role = "admin"
            token = "adm"
            name = "ops"
            [[tokens]]
            roles = ["worker"]
            token = "wk"
            namespaces = ["a"]
            "#,
        )
        .expect("parses");
        assert_eq!(c.len(), 2);
        assert!(format!("{c:?}").contains("ops") && !format!("{c:?}").contains("adm\""));
        assert!(AuthConfig::open().add_env("root:x").is_err());
        assert!(AuthConfig::open().add_env("worker:x,admin:x").is_err());
        assert!(AuthConfig::open().add_env("worker:").is_err());
        assert!(AuthConfig::open()
            .add_toml("[[tokens]]\nrole = \"worker\"\n")
            .is_err());
    }

    #[test]
    fn wrong_role_is_forbidden_with_required_and_actual_roles() {
        let mut c = AuthConfig::open();
        c.add_env("worker:w1").expect("parses");
        let p = c.authenticate(&headers("Bearer w1")).expect("w1");
        let e = authorize(&p, Access::Admin).expect_err("forbidden");
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        assert_eq!(e.extra["required_roles"], serde_json::json!(["admin"]));
        assert_eq!(e.extra["actual_roles"], serde_json::json!(["worker"]));
    }
}
