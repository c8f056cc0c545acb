//! The filesystem under every driver: where a location's objects live, a durable write
//! (temporary file, fsync, rename, fsync of the directory chain), a read, and the free
//! space that decides storage pressure. Blocking calls; callers run them on the blocking
//! pool.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::{Location, PayloadStores};

/// Why a location cannot be resolved to a directory on this server.
#[derive(Debug)]
pub(crate) enum Unresolvable {
    /// The driver's disk (or the local directory) is not configured here.
    NoDisk(String),
}

/// The directory a location's objects live in on this server.
pub(crate) fn root(stores: &PayloadStores, location: &Location) -> Result<PathBuf, Unresolvable> {
    let base = if location.driver == "local" {
        stores
            .local_dir
            .clone()
            .ok_or_else(|| Unresolvable::NoDisk("no --payload-dir is configured".into()))?
    } else {
        let disk = location.disk.as_deref().unwrap_or_default();
        let dir = stores.disks.get(disk).ok_or_else(|| {
            Unresolvable::NoDisk(format!("disk '{disk}' is not configured on this server"))
        })?;
        dir.join(location.bucket.as_deref().unwrap_or_default())
    };
    Ok(base)
}

/// The file holding `reference_id` at `location`.
pub(crate) fn object_path(
    stores: &PayloadStores,
    location: &Location,
    reference_id: &str,
) -> Result<PathBuf, Unresolvable> {
    Ok(root(stores, location)?.join(location.object_key(reference_id)))
}

/// Writes `bytes` at `path` so that it survives a crash once this returns: a temporary
/// file in the same directory, fsynced, renamed into place, then the directory fsynced
/// (and every directory this call created, up to the first that existed, so the new entries are durable).
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "object path has no parent"))?;
    // The first ancestor that exists: directories below it are new and need their own
    // entries made durable.
    let mut existing = dir.to_path_buf();
    while !existing.exists() && existing.pop() {}
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "object path has no name"))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()?;
    let mut d = dir.to_path_buf();
    while d != existing && d.pop() {
        File::open(&d)?.sync_all()?;
    }
    Ok(())
}

/// Free bytes on the filesystem holding `dir` (its nearest existing ancestor).
pub(crate) fn free_bytes(dir: &Path) -> io::Result<u64> {
    let mut probe = dir.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "no existing ancestor",
            ));
        }
    }
    let st = rustix::fs::statvfs(&probe).map_err(io::Error::from)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::{free_bytes, fs, write_durably};

    #[test]
    fn a_durable_write_creates_its_directories_and_leaves_no_temporary_file() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("disk");
        let path = root.join("bucket/a/b/ep_X");
        write_durably(&path, b"hello").expect("write");
        assert_eq!(fs::read(&path).expect("read"), b"hello");
        let names: Vec<_> = fs::read_dir(path.parent().expect("parent"))
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("ep_X")]);
        assert!(free_bytes(&root).expect("statvfs") > 0);
    }
}
