//! The directory store: `<host>/<object>` plus a `.sha256` sidecar, owner-only. Objects are written
//! under a temporary name and renamed only once their size and digest match what the agent announced;
//! anything unfinished is removed.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ferry_archive::{parse_sidecar, sidecar_line};

use super::{StoreError, StoredObject, check_name, is_archive_object};

pub(super) fn io_error(path: &Path, source: io::Error) -> StoreError {
    if source.kind() == io::ErrorKind::StorageFull || source.kind() == io::ErrorKind::QuotaExceeded
    {
        StoreError::Full {
            path: path.to_path_buf(),
            source,
        }
    } else {
        StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A file's version: inode, size and modification time.
pub(super) fn version(meta: &std::fs::Metadata) -> super::Version {
    use std::os::unix::fs::MetadataExt;
    super::Version::File {
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.len(),
        mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
    }
}

/// A local-directory store.
#[derive(Debug, Clone)]
pub struct DirStore {
    root: PathBuf,
}

impl DirStore {
    /// Opens (creating, mode 0700) the store at `root`, and removes the partial objects of
    /// controllers that died mid-transfer.
    pub fn open(root: &Path) -> Result<DirStore, StoreError> {
        make_dir(root)?;
        let store = DirStore {
            root: root.to_path_buf(),
        };
        store.remove_stale();
        Ok(store)
    }

    /// `.incoming-<pid>-<n>.part` objects whose process is gone.
    fn remove_stale(&self) {
        let hosts = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten();
        for host in hosts.filter(|h| h.path().is_dir()) {
            for entry in std::fs::read_dir(host.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = entry.file_name().to_string_lossy().into_owned();
                let pid = name
                    .strip_prefix(".incoming-")
                    .and_then(|rest| rest.split_once('-'))
                    .map(|(pid, _)| pid)
                    .or_else(|| name.rsplit_once(".part-").map(|(_, pid)| pid))
                    .and_then(|pid| pid.parse::<u32>().ok());
                if let Some(pid) = pid
                    && !Path::new(&format!("/proc/{pid}")).exists()
                {
                    tracing::warn!(file = %entry.path().display(), "removing a partial object left by an interrupted transfer");
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where an archive lives (it may not exist).
    pub fn path(&self, host: &str, name: &str) -> PathBuf {
        self.root.join(host).join(name)
    }

    pub fn sidecar_path(&self, host: &str, name: &str) -> PathBuf {
        self.root.join(host).join(format!("{name}.sha256"))
    }

    /// Starts receiving `object` for `host`.
    pub fn begin(&self, host: &str, object: &str) -> Result<Incoming, StoreError> {
        check_name(host)?;
        check_name(object)?;
        let dir = self.root.join(host);
        if dir.join(object).exists() {
            return Err(StoreError::Exists(dir.join(object).display().to_string()));
        }
        make_dir(&dir)?;
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let temp = dir.join(format!(".incoming-{}-{n}.part", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)
            .map_err(|e| io_error(&temp, e))?;
        Ok(Incoming {
            file: Some(BufWriter::with_capacity(1 << 20, file)),
            temp,
            dir,
            name: object.to_string(),
            received: Default::default(),
        })
    }

    /// Every archive in the store, by host then name.
    pub fn list(&self) -> Result<Vec<StoredObject>, StoreError> {
        let mut objects = Vec::new();
        let hosts = std::fs::read_dir(&self.root).map_err(|e| io_error(&self.root, e))?;
        for host in hosts.filter_map(Result::ok) {
            if !host.path().is_dir() {
                continue;
            }
            let host_name = host.file_name().to_string_lossy().into_owned();
            let entries = std::fs::read_dir(host.path()).map_err(|e| io_error(&host.path(), e))?;
            for entry in entries.filter_map(Result::ok) {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !is_archive_object(&name) {
                    continue;
                }
                let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                objects.push(StoredObject {
                    host: host_name.clone(),
                    object: name,
                    size,
                });
            }
        }
        Ok(objects)
    }

    /// Names of every object under `host` (archives, sidecars, keys).
    pub fn names(&self, host: &str) -> Vec<String> {
        std::fs::read_dir(self.root.join(host))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// Removes objects; one already gone is not an error.
    pub fn delete(&self, host: &str, names: &[String]) -> Result<(), StoreError> {
        for path in names.iter().map(|n| self.path(host, n)) {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(&path, e)),
            }
        }
        Ok(())
    }

    /// The digest recorded in an archive's sidecar.
    pub fn sidecar_digest(&self, host: &str, name: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .get_small(host, &format!("{name}.sha256"))?
            .and_then(|bytes| parse_sidecar(&String::from_utf8_lossy(&bytes))))
    }

    pub fn get_small(&self, host: &str, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.path(host, name);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(&path, e)),
        }
    }

    /// Replaces a small object atomically (a temporary file renamed over it), owner-only.
    pub fn put_small(&self, host: &str, name: &str, data: &[u8]) -> Result<(), StoreError> {
        check_name(host)?;
        check_name(name)?;
        let dir = self.root.join(host);
        make_dir(&dir)?;
        replace_small(&dir, name, data)
    }

    pub fn size(&self, host: &str, name: &str) -> Result<Option<u64>, StoreError> {
        let path = self.path(host, name);
        match std::fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(&path, e)),
        }
    }
}

/// An archive being received. Dropping it without [`Incoming::commit`] removes the partial object.
pub struct Incoming {
    file: Option<BufWriter<File>>,
    temp: PathBuf,
    dir: PathBuf,
    name: String,
    received: super::Received,
}

impl Incoming {
    pub fn write_chunk(&mut self, data: &[u8]) -> Result<(), StoreError> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        file.write_all(data).map_err(|e| io_error(&self.temp, e))?;
        self.received.update(data);
        Ok(())
    }

    pub fn size(&self) -> u64 {
        self.received.size
    }

    /// Makes the object durable and visible, after `extras` (small objects beside it) and before
    /// its sidecar, if it is exactly what was announced.
    pub fn commit(
        mut self,
        expected_size: u64,
        expected_sha: &str,
        extras: &[(String, Vec<u8>)],
    ) -> Result<super::Committed, StoreError> {
        let name = self.name.clone();
        let name = name.as_str();
        let path = self.dir.join(name);
        let sha256 = self.received.check(expected_size, expected_sha)?;
        let Some(writer) = self.file.take() else {
            return Err(StoreError::BadName(name.to_string()));
        };
        let file = writer
            .into_inner()
            .map_err(|e| io_error(&self.temp, e.into_error()))?;
        file.sync_all().map_err(|e| io_error(&self.temp, e))?;
        drop(file);
        let sidecar = self.dir.join(format!("{name}.sha256"));
        let sidecar_temp = self
            .dir
            .join(format!(".{name}.sha256.part-{}", std::process::id()));
        if let Err(e) = write_small(&sidecar_temp, sidecar_line(&sha256, name).as_bytes()) {
            let _ = std::fs::remove_file(&sidecar_temp);
            return Err(e);
        }
        if path.exists() {
            let _ = std::fs::remove_file(&sidecar_temp);
            return Err(StoreError::Exists(path.display().to_string()));
        }
        for (extra, data) in extras {
            if let Err(e) = check_name(extra).and_then(|()| replace_small(&self.dir, extra, data)) {
                let _ = std::fs::remove_file(&sidecar_temp);
                return Err(e);
            }
        }
        std::fs::rename(&self.temp, &path).map_err(|e| io_error(&path, e))?;
        if let Err(e) = std::fs::rename(&sidecar_temp, &sidecar) {
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(&sidecar_temp);
            return Err(io_error(&sidecar, e));
        }
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(super::Committed {
            location: path.display().to_string(),
            size: self.received.size,
            sha256,
        })
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.file.take();
        let _ = std::fs::remove_file(&self.temp);
    }
}

fn make_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_error(dir, e))
}

/// Replaces `dir/name` atomically: a temporary file, synced, renamed over it.
fn replace_small(dir: &Path, name: &str, data: &[u8]) -> Result<(), StoreError> {
    let temp = dir.join(format!(".{name}.part-{}", std::process::id()));
    if let Err(e) = write_small(&temp, data) {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    let path = dir.join(name);
    std::fs::rename(&temp, &path).map_err(|e| io_error(&path, e))?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn write_small(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io_error(path, e))?;
    f.write_all(data).map_err(|e| io_error(path, e))?;
    f.sync_all().map_err(|e| io_error(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_archive::hex;
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn commit_is_atomic_owner_only_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(&dir.path().join("store")).unwrap();
        let name = "flightctl-backup-20260101T000000Z.tar.gz";
        let mut incoming = store.begin("cp01", name).unwrap();
        incoming.write_chunk(b"hello ").unwrap();
        incoming.write_chunk(b"world").unwrap();
        assert!(
            store.list().unwrap().is_empty(),
            "nothing visible before commit"
        );
        let sha = hex(&Sha256::digest(b"hello world"));
        let key = (format!("{name}.key.age"), b"key".to_vec());
        let done = incoming.commit(11, &sha, &[key]).unwrap();
        assert_eq!(std::fs::read(&done.location).unwrap(), b"hello world");
        for file in [
            name.to_string(),
            format!("{name}.sha256"),
            format!("{name}.key.age"),
        ] {
            let mode = std::fs::metadata(store.path("cp01", &file))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600, "{file}");
        }
        let sidecar = store.sidecar_digest("cp01", name).unwrap();
        assert_eq!(sidecar.as_deref(), Some(sha.as_str()));
        assert_eq!(store.list().unwrap().len(), 1);
        assert!(matches!(
            store.begin("cp01", name),
            Err(StoreError::Exists(_))
        ));

        let mut bad = store
            .begin("cp01", "flightctl-backup-20260101T000001Z.tar.gz")
            .unwrap();
        bad.write_chunk(b"abc").unwrap();
        assert!(matches!(
            bad.commit(3, &sha, &[]),
            Err(StoreError::Mismatch { .. })
        ));
        let mut dropped = store.begin("cp02", name).unwrap();
        dropped.write_chunk(b"partial").unwrap();
        drop(dropped);
        let leftovers: Vec<_> = walk(store.root());
        assert_eq!(
            leftovers.len(),
            3,
            "only the committed archive, its key and its sidecar: {leftovers:?}"
        );
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap().filter_map(Result::ok) {
            if entry.path().is_dir() {
                out.extend(walk(&entry.path()));
            } else {
                out.push(entry.path());
            }
        }
        out
    }
}
