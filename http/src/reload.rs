//! When to reload a configuration read from files (tokens, TLS certificates): on SIGHUP,
//! and when one of the files changes (size or modification time, checked every 2 s).

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{signal, Signal, SignalKind};

/// How often the files are looked at.
const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(2);

type Stamp = Vec<Option<(u64, Option<SystemTime>)>>;

/// The triggers of one watched configuration.
pub(crate) struct ReloadTriggers {
    files: Vec<PathBuf>,
    seen: Stamp,
    hangups: Option<Signal>,
    tick: tokio::time::Interval,
}

impl ReloadTriggers {
    /// Watches `files` (none: SIGHUP only); `what` names the configuration in the log line
    /// when SIGHUP cannot be listened for.
    pub(crate) fn new(files: Vec<PathBuf>, what: &str) -> Self {
        let hangups = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; {what} reload on file change only");
                None
            }
        };
        let mut tick = tokio::time::interval(FILE_CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let seen = stamp(&files);
        ReloadTriggers {
            files,
            seen,
            hangups,
            tick,
        }
    }

    /// Waits for the next trigger (`"sighup"` or `"file_changed"`), or `None` once `stop`
    /// turns true.
    pub(crate) async fn next(
        &mut self,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Option<&'static str> {
        loop {
            tokio::select! {
                _ = stop.changed() => return None,
                Some(()) = async {
                    match self.hangups.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => return Some("sighup"),
                _ = self.tick.tick() => {
                    let now = stamp(&self.files);
                    if now != self.seen {
                        self.seen = now;
                        return Some("file_changed");
                    }
                }
            }
        }
    }
}

fn stamp(files: &[PathBuf]) -> Stamp {
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .ok()
                .map(|m| (m.len(), m.modified().ok()))
        })
        .collect()
}
