//! TLS on Keel's own accept loop (rustls with the `ring` provider; no OpenSSL).
//!
//! [`TlsConfig`] names the PEM files: the certificate chain, its private key and,
//! optionally, a CA that client certificates must chain to. [`Tls`] holds the rustls
//! configuration built from them and swaps it whole on reload ([`watch_and_reload`]:
//! on SIGHUP and when one of the files changes, checked every 2 s). A connection keeps
//! the configuration it was accepted with, so a reload never drops or disturbs an open
//! connection; only new connections see the new certificate. A new set that does not
//! load (unreadable, not PEM, a key that does not match the certificate, a CA file with
//! no certificate) is refused with a log line and the old one stays in force.
//!
//! With a client CA, every client must present a certificate that chains to it (the
//! handshake fails otherwise). A verified client certificate is a transport requirement
//! only: it grants no role. Roles still come from the bearer token, so with tokens
//! configured a worker needs both a certificate and a token.
//!
//! [`accept`] runs the handshake on an accepted TCP connection. It first peeks at the
//! first byte: a TLS connection starts with a handshake record (0x16), so anything else
//! is a client speaking plain HTTP to the TLS port, answered with a plain-text 400
//! (`tls_required`) and closed rather than a TLS alert it cannot read. The server runs
//! the handshake under the connection watchdog: it counts against the header timeout,
//! so a slow or stalled handshake cannot hold a connection.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::reload::ReloadTriggers;

/// The first byte of a TLS record carrying a handshake message.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Where the server's certificate, key and (optional) client CA are, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The certificate chain, leaf first (PEM `CERTIFICATE` blocks).
    pub cert: PathBuf,
    /// The leaf's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by one of these CAs.
    pub client_ca: Option<PathBuf>,
}

impl TlsConfig {
    /// The certificate chain and key, without client certificates.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        TlsConfig {
            cert: cert.into(),
            key: key.into(),
            client_ca: None,
        }
    }

    /// Requires client certificates signed by a CA in `ca` (PEM).
    pub fn client_ca(mut self, ca: impl Into<PathBuf>) -> Self {
        self.client_ca = Some(ca.into());
        self
    }

    fn files(&self) -> impl Iterator<Item = &Path> {
        [Some(self.cert.as_path()), Some(self.key.as_path())]
            .into_iter()
            .chain(std::iter::once(self.client_ca.as_deref()))
            .flatten()
    }
}

/// The server's TLS configuration in force, swapped whole on reload.
pub(crate) struct Tls {
    files: TlsConfig,
    current: RwLock<Arc<ServerConfig>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

impl Tls {
    /// Loads the files `files` names; an error says which file and why.
    pub(crate) fn load(files: TlsConfig) -> Result<Arc<Tls>, String> {
        let config = build(&files)?;
        Ok(Arc::new(Tls {
            files,
            current: RwLock::new(config),
        }))
    }

    /// The files this configuration comes from.
    pub(crate) fn files(&self) -> &TlsConfig {
        &self.files
    }

    /// Loads the files again and, if they load, serves new connections with them; on an
    /// error the configuration in force stays.
    pub(crate) fn reload(&self) -> Result<(), String> {
        let config = build(&self.files)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
        Ok(())
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the TLS {what} {}: {e}", path.display()))
}

fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the TLS {what} {} is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "the TLS {what} {} holds no PEM CERTIFICATE block",
            path.display()
        ));
    }
    Ok(certs)
}

/// A rustls server configuration from the files, or why not.
fn build(files: &TlsConfig) -> Result<Arc<ServerConfig>, String> {
    let provider = provider();
    let chain = certificates(&files.cert, "certificate")?;
    let key_pem = read(&files.key, "key")?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        format!(
            "the TLS key {} holds no usable PEM private key: {e}",
            files.key.display()
        )
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS protocol versions: {e}"))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca, "client CA")? {
                roots.add(cert).map_err(|e| {
                    format!("the TLS client CA {} is not usable: {e}", ca.display())
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("the TLS client CA {} is not usable: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        format!(
            "the TLS certificate {} and key {} do not make a usable pair: {e}",
            files.cert.display(),
            files.key.display()
        )
    })?;
    // Keel speaks HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Reloads `tls` on SIGHUP and when one of its files changes (size or modification
/// time, checked every 2 s), until `stop` turns true. A reload that fails is logged and
/// counted (`keel_tls_reloads_total{outcome="refused"}`); the old configuration stays.
pub(crate) async fn watch_and_reload(tls: Arc<Tls>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let files = tls.files.files().map(Path::to_path_buf).collect();
    let mut triggers = ReloadTriggers::new(files, "the TLS certificate");
    while let Some(trigger) = triggers.next(&mut stop).await {
        match tls.reload() {
            Ok(()) => {
                metrics::counter!("keel_tls_reloads_total", "outcome" => "applied").increment(1);
                tracing::info!(
                    trigger,
                    cert = %tls.files.cert.display(),
                    "TLS certificate reloaded; new connections use it"
                );
            }
            Err(error) => {
                metrics::counter!("keel_tls_reloads_total", "outcome" => "refused").increment(1);
                tracing::warn!(
                    trigger,
                    %error,
                    "TLS reload refused; the previous certificate stays in force"
                );
            }
        }
    }
}

/// How [`accept`] ended.
pub(crate) enum Accepted {
    /// The handshake completed.
    Tls(Box<TlsStream<TcpStream>>),
    /// The client spoke plain HTTP: answer [`plain_http_reply`] on the raw stream.
    PlainHttp(TcpStream),
    /// The handshake failed (counted and logged at debug level); close.
    Failed,
}

/// The TLS handshake on an accepted connection (see the module documentation). Not
/// bounded in time itself: the caller runs it under the connection watchdog.
pub(crate) async fn accept(tls: &Tls, stream: TcpStream) -> Accepted {
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        Ok(0) | Err(_) => {
            handshake_failed("connection_closed");
            return Accepted::Failed;
        }
        Ok(_) if first[0] != TLS_HANDSHAKE_RECORD => {
            handshake_failed("plain_http");
            return Accepted::PlainHttp(stream);
        }
        Ok(_) => {}
    }
    match tls.acceptor().accept(stream).await {
        Ok(stream) => Accepted::Tls(Box::new(stream)),
        Err(e) => {
            let reason = failure_reason(&e);
            handshake_failed(reason);
            tracing::debug!(reason, error = %e, "TLS handshake failed");
            Accepted::Failed
        }
    }
}

/// Counts a handshake that did not complete (`keel_tls_handshake_failures_total`).
pub(crate) fn handshake_failed(reason: &'static str) {
    metrics::counter!("keel_tls_handshake_failures_total", "reason" => reason).increment(1);
}

fn failure_reason(e: &std::io::Error) -> &'static str {
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return "connection_closed";
    };
    match tls {
        rustls::Error::NoCertificatesPresented => "client_certificate_missing",
        rustls::Error::InvalidCertificate(_) => "client_certificate_rejected",
        // The client refused us, typically our certificate (an untrusted CA).
        rustls::Error::AlertReceived(_) => "alert_from_client",
        _ => "protocol_error",
    }
}

/// The answer to a plain-HTTP request on the TLS port, written unencrypted.
pub(crate) fn plain_http_reply() -> String {
    crate::connections::http_reply(
        "400 Bad Request",
        &serde_json::json!({
            "reason": "tls_required",
            "message": "this port serves HTTPS only; use an https:// URL",
        })
        .to_string(),
        &[],
    )
}
