//! What the FoundationDB tests share: the cluster from `KEEL_FDB_CLUSTER_FILE`, a fresh
//! subspace per store, and the deletion of those subspaces when a test ends.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{SystemTime, UNIX_EPOCH};

use keel_conformance::{Fixture, Location, StoreFactory};
use keel_storage::{KvStore, Result};
use keel_storage_fdb::{FdbOptions, FdbStore, Subspace};

/// Names the cluster file of the FoundationDB cluster the tests run against.
pub const CLUSTER_FILE_ENV: &str = "KEEL_FDB_CLUSTER_FILE";

/// Creates each store in a subspace of its own and deletes them all when dropped: the
/// suite's macro makes one factory per test, so a test's data goes when it ends, passed
/// or failed, and nothing outside its subspaces is touched.
pub struct FdbFactory {
    cluster_file: PathBuf,
    created: Mutex<Vec<Subspace>>,
}

impl FdbFactory {
    /// The factory for the cluster named by [`CLUSTER_FILE_ENV`], or `None` (after saying
    /// once per test binary, on the terminal, that the tests are skipped and why).
    pub fn from_env() -> Option<FdbFactory> {
        let Some(cluster_file) = std::env::var_os(CLUSTER_FILE_ENV).map(PathBuf::from) else {
            skip(&format!("{CLUSTER_FILE_ENV} is not set"));
            return None;
        };
        if !cluster_file.is_file() {
            skip(&format!(
                "{CLUSTER_FILE_ENV}={} is not a file",
                cluster_file.display()
            ));
            return None;
        }
        Some(FdbFactory {
            cluster_file,
            created: Mutex::new(Vec::new()),
        })
    }

    fn open(&self, subspace: &Subspace) -> Result<FdbStore> {
        FdbStore::open(&FdbOptions {
            cluster_file: Some(self.cluster_file.clone()),
            subspace: subspace.clone(),
            ..FdbOptions::default()
        })
    }
}

/// Prints the skip line once per test binary, past the harness's output capture (which
/// only takes `print!`), so a skipped run is never silent.
fn skip(reason: &str) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: FoundationDB tests ({reason}; set {CLUSTER_FILE_ENV} to a cluster file to run them)"
        );
    });
}

/// A subspace name no other test or run uses.
fn unique_subspace() -> Subspace {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let name = format!(
        "keel-test-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    Subspace::new(&name).expect("test subspace names are valid")
}

impl StoreFactory for FdbFactory {
    fn create(&self) -> Result<Fixture> {
        let subspace = unique_subspace();
        let store = self.open(&subspace)?;
        self.created
            .lock()
            .expect("created list lock")
            .push(subspace.clone());
        Ok(Fixture {
            store: Arc::new(store),
            location: Location::new(subspace),
        })
    }

    fn reopen(&self, location: &Location) -> Result<Arc<dyn KvStore>> {
        let subspace = location
            .get::<Subspace>()
            .expect("location holds the store's subspace");
        Ok(Arc::new(self.open(subspace)?))
    }
}

impl Drop for FdbFactory {
    fn drop(&mut self) {
        let created = std::mem::take(&mut *self.created.lock().expect("created list lock"));
        for subspace in created {
            let cleared = self
                .open(&subspace)
                .and_then(|store| futures::executor::block_on(store.clear_subspace()));
            if let Err(e) = cleared {
                let _ = writeln!(
                    std::io::stderr(),
                    "could not delete test subspace {}: {e}",
                    subspace.name()
                );
            }
        }
    }
}
