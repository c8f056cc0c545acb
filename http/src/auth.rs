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
//!
//! [[tokens]]
//! role = "operator"
//! token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! ```
//!
//! A token entry may carry its own rate limits (see the `quota` module), overriding the
//! server-wide ones: `rate_limit = 50.0` (requests per second, 0 for none),
//! `rate_burst = 100.0` and `max_long_polls = 20`.
//!
//! `token_sha256` (64 hex digits) gives the SHA-256 digest of a token instead of the
//! token, so the file itself is not a secret (tokens are long random strings, so a
//! plain digest is not guessable); `printf %s TOKEN | sha256sum` makes one. Keel keeps
//! only digests in memory either way and compares the digest of what a caller presents.
//!
//! # Rotation
//!
//! The token set is reloaded from the same sources on SIGHUP and when the auth file
//! changes ([`watch_and_reload`]). A reload swaps the whole set at once: a request is
//! checked against the old set or the new one, never a mix. To rotate without a gap,
//! list the old and new tokens together, move clients to the new one, then remove the
//! old one: the overlap lasts as long as the operator keeps both. A file that does not
//! parse, or a new set that would leave an authenticated server with no token (open),
//! is refused with a log line and the old set stays.
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
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use hyper::header::AUTHORIZATION;
use hyper::{HeaderMap, StatusCode};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::error::ApiError;
use crate::reload::ReloadTriggers;
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
#[derive(Clone)]
struct TokenEntry {
    /// SHA-256 of the secret: the secret itself is never kept.
    digest: [u8; 32],
    roles: Roles,
    /// `None`: every namespace.
    namespaces: Option<Arc<[String]>>,
    label: String,
    limits: TokenLimits,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The token configuration: a shared handle on the current token set (clones see the
/// same set, and [`AuthConfig::replace_with`] swaps it for all of them). Empty means
/// open mode.
#[derive(Default, Clone)]
pub struct AuthConfig {
    current: Arc<RwLock<Arc<Vec<TokenEntry>>>>,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secrets.
        f.debug_struct("AuthConfig")
            .field(
                "tokens",
                &self
                    .tokens()
                    .iter()
                    .map(|t| t.label.clone())
                    .collect::<Vec<_>>(),
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
    /// The token's own rate limits (from the auth file), if any.
    pub limits: TokenLimits,
}

impl Principal {
    /// The principal of open mode: every role, every namespace.
    pub fn open() -> Principal {
        Principal {
            roles: Roles::ALL,
            namespaces: None,
            label: "open".into(),
            limits: TokenLimits::default(),
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
    token_sha256: Option<String>,
    namespaces: Option<Vec<String>>,
    name: Option<String>,
    rate_limit: Option<f64>,
    rate_burst: Option<f64>,
    max_long_polls: Option<usize>,
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

    /// The token set as it is now (a request holds one snapshot throughout).
    fn tokens(&self) -> Arc<Vec<TokenEntry>> {
        self.current
            .read()
            .expect("invariant: token lock not poisoned")
            .clone()
    }

    /// Whether no token is configured.
    pub fn is_open(&self) -> bool {
        self.tokens().is_empty()
    }

    /// How many tokens are configured.
    pub fn len(&self) -> usize {
        self.tokens().len()
    }

    /// Whether no token is configured (same as [`AuthConfig::is_open`]).
    pub fn is_empty(&self) -> bool {
        self.is_open()
    }

    /// Makes `new`'s token set this handle's (and every clone's), at once. Refused when
    /// it would turn an authenticated server open (an empty set replacing tokens).
    pub fn replace_with(&self, new: &AuthConfig) -> Result<(), String> {
        let tokens = new.tokens();
        let mut current = self
            .current
            .write()
            .expect("invariant: token lock not poisoned");
        if tokens.is_empty() && !current.is_empty() {
            return Err(
                "the new configuration has no token: refusing to open an authenticated server"
                    .into(),
            );
        }
        *current = tokens;
        Ok(())
    }

    fn push_secret(
        &mut self,
        secret: &str,
        roles: Roles,
        namespaces: Option<Arc<[String]>>,
        label: String,
    ) -> Result<(), String> {
        let secret = secret.trim().as_bytes();
        if secret.is_empty() {
            return Err(format!("token '{label}' is empty"));
        }
        self.push_digest(TokenEntry {
            digest: sha256(secret),
            roles,
            namespaces,
            label,
            limits: TokenLimits::default(),
        })
    }

    fn push_digest(&mut self, entry: TokenEntry) -> Result<(), String> {
        if entry.roles == Roles::default() {
            return Err(format!("token '{}' has no role", entry.label));
        }
        let mut tokens = self.tokens().as_ref().clone();
        if tokens.iter().any(|t| t.digest == entry.digest) {
            return Err(format!(
                "token '{}' repeats another token's secret; give one token several roles instead (admin+worker:...)",
                entry.label
            ));
        }
        tokens.push(entry);
        *self
            .current
            .write()
            .expect("invariant: token lock not poisoned") = Arc::new(tokens);
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
            self.push_secret(secret, set, namespaces, label)?;
        }
        Ok(())
    }

    /// Adds the tokens of an auth file (TOML, see the module docs).
    pub fn add_toml(&mut self, text: &str) -> Result<(), String> {
        // toml's own message quotes the offending line, which may hold a secret: only
        // its position and kind are reported.
        let file: FileConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(0, |span| {
                text[..span.start.min(text.len())].lines().count().max(1)
            });
            format!("line {line}: {}", e.message())
        })?;
        for (i, t) in file.tokens.into_iter().enumerate() {
            let label = t.name.clone().unwrap_or_else(|| format!("tokens[{i}]"));
            let mut set = Roles::default();
            for r in t.role.iter().chain(t.roles.iter()) {
                set = set.with(Role::parse(r).map_err(|e| format!("{label}: {e}"))?);
            }
            let namespaces = t
                .namespaces
                .map(parse_namespaces)
                .transpose()
                .map_err(|e| format!("{label}: {e}"))?;
            if t.rate_limit.is_some_and(|r| !r.is_finite() || r < 0.0) {
                return Err(format!("{label}: rate_limit must be a number, at least 0"));
            }
            if t.rate_burst.is_some_and(|b| !b.is_finite() || b < 1.0) {
                return Err(format!("{label}: rate_burst must be a number, at least 1"));
            }
            let limits = TokenLimits {
                rate: t.rate_limit,
                burst: t.rate_burst,
                max_long_polls: t.max_long_polls,
            };
            let secret = match (t.token, t.token_env, t.token_sha256) {
                (Some(s), None, None) => s,
                (None, Some(var), None) => std::env::var(&var)
                    .map_err(|_| format!("{label}: environment variable {var} is not set"))?,
                (None, None, Some(hex)) => {
                    let digest = parse_digest(&hex).ok_or_else(|| {
                        format!("{label}: token_sha256 must be 64 hexadecimal digits")
                    })?;
                    self.push_digest(TokenEntry {
                        digest,
                        roles: set,
                        namespaces,
                        label,
                        limits,
                    })?;
                    continue;
                }
                _ => {
                    return Err(format!(
                        "{label}: give exactly one of token, token_env or token_sha256"
                    ))
                }
            };
            self.push_secret(&secret, set, namespaces, label.clone())?;
            self.set_limits(&label, limits);
        }
        Ok(())
    }

    /// Gives the last token labelled `label` its own limits.
    fn set_limits(&mut self, label: &str, limits: TokenLimits) {
        if limits == TokenLimits::default() {
            return;
        }
        let mut tokens = self.tokens().as_ref().clone();
        if let Some(entry) = tokens.iter_mut().rev().find(|t| t.label == label) {
            entry.limits = limits;
        }
        *self
            .current
            .write()
            .expect("invariant: token lock not poisoned") = Arc::new(tokens);
    }

    /// Token counts per role, for the startup log.
    pub fn summary(&self) -> Vec<(&'static str, usize)> {
        let tokens = self.tokens();
        [Role::Worker, Role::Operator, Role::Admin]
            .into_iter()
            .map(|r| (r.as_str(), tokens.iter().filter(|t| t.roles.has(r)).count()))
            .collect()
    }

    /// Identifies the caller from the `Authorization` header. Open mode accepts anyone.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        let tokens = self.tokens();
        if tokens.is_empty() {
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
        // Compare digests with every token, selecting the match without branching on it.
        let presented = sha256(presented.as_bytes());
        let mut found: u64 = 0;
        for (i, entry) in tokens.iter().enumerate() {
            let eq = entry.digest.ct_eq(&presented);
            found = u64::conditional_select(&found, &(i as u64 + 1), eq);
        }
        match found.checked_sub(1).and_then(|i| tokens.get(i as usize)) {
            Some(entry) => Ok(Principal {
                roles: entry.roles,
                namespaces: entry.namespaces.clone(),
                label: entry.label.clone(),
                limits: entry.limits,
            }),
            None => Err(unauthorized(
                "invalid_token",
                "The bearer token is not valid for this server.",
            )),
        }
    }
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim().as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(hex.chunks(2)) {
        let text = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(text, 16).ok()?;
    }
    Some(digest)
}

/// Hears each reload: its trigger (`sighup`, `file_changed`) and, when applied, the
/// token counts (`tokens`, `by_role`); `Err(())` when refused. Never a secret.
pub type ReloadReport = Box<dyn Fn(&'static str, Result<serde_json::Value, ()>) + Send>;

/// Reloads `auth` from `load` (the same sources as at start) on SIGHUP and whenever
/// `file` changes, until `stop` turns true. A load that fails, or a set that
/// [`AuthConfig::replace_with`] refuses, is logged and the old set stays. Messages name
/// tokens by label and count them by role; never a secret. `report` hears each outcome
/// (the audit trail records it).
pub async fn watch_and_reload(
    auth: AuthConfig,
    file: Option<PathBuf>,
    load: impl Fn() -> Result<AuthConfig, String> + Send,
    mut stop: tokio::sync::watch::Receiver<bool>,
    report: ReloadReport,
) {
    let mut triggers = ReloadTriggers::new(file.into_iter().collect(), "tokens");
    while let Some(trigger) = triggers.next(&mut stop).await {
        match load().and_then(|new| auth.replace_with(&new)) {
            Ok(()) => {
                let by_role = auth
                    .summary()
                    .iter()
                    .map(|(r, n)| format!("{r}={n}"))
                    .collect::<Vec<_>>()
                    .join(",");
                crate::metrics::count_token_reload("applied");
                tracing::info!(trigger, tokens = auth.len(), by_role = %by_role, "tokens reloaded");
                report(
                    trigger,
                    Ok(serde_json::json!({"tokens": auth.len(), "by_role": by_role})),
                );
            }
            Err(error) => {
                crate::metrics::count_token_reload("refused");
                report(trigger, Err(()));
                tracing::warn!(trigger, %error, "token reload refused; the previous tokens stay in force");
            }
        }
    }
}

/// A token's own limits from the auth file (each `None`: the server-wide one).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TokenLimits {
    /// Requests per second (`rate_limit`).
    pub rate: Option<f64>,
    /// Burst (`rate_burst`).
    pub burst: Option<f64>,
    /// Long-polls open at once (`max_long_polls`).
    pub max_long_polls: Option<usize>,
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
    use super::{authorize, sha256, Access, AuthConfig, HeaderMap, StatusCode, AUTHORIZATION};
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
    fn a_hashed_token_authenticates_and_a_bad_digest_is_refused() {
        let digest: String = sha256(b"s3cret")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut c = AuthConfig::open();
        c.add_toml(&format!(
            "[[tokens]]\nrole = \"worker\"\ntoken_sha256 = \"{digest}\"\n"
        ))
        .expect("parses");
        assert!(c.authenticate(&headers("Bearer s3cret")).is_ok());
        assert!(c
            .authenticate(&headers(&format!("Bearer {digest}")))
            .is_err());
        for bad in ["abc", &"g".repeat(64)] {
            let e = AuthConfig::open()
                .add_toml(&format!(
                    "[[tokens]]\nrole = \"worker\"\ntoken_sha256 = \"{bad}\"\n"
                ))
                .expect_err("refused");
            assert!(e.contains("64 hexadecimal digits"), "{e}");
        }
    }

    #[test]
    fn replacing_the_set_reaches_every_clone_and_never_opens_the_server() {
        let mut c = AuthConfig::open();
        c.add_env("admin:old").expect("parses");
        let served = c.clone();
        let mut next = AuthConfig::open();
        next.add_env("admin:new").expect("parses");
        c.replace_with(&next).expect("replaced");
        assert!(served.authenticate(&headers("Bearer new")).is_ok());
        assert!(served.authenticate(&headers("Bearer old")).is_err());
        let e = c.replace_with(&AuthConfig::open()).expect_err("refused");
        assert!(e.contains("refusing to open"), "{e}");
        assert!(served.authenticate(&headers("Bearer new")).is_ok());
        // An open server may become an authenticated one.
        let open = AuthConfig::open();
        open.replace_with(&next).expect("tokens added");
        assert!(open.authenticate(&HeaderMap::new()).is_err());
    }

    #[test]
    fn a_toml_syntax_error_names_the_line_but_never_quotes_it() {
        let e = AuthConfig::open()
            .add_toml("[[tokens]]\nrole = \"admin\"\ntoken = \"hunter2\" trailing\n")
            .expect_err("refused");
        assert!(e.starts_with("line 3:"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
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
