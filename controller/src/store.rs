//! The archive store: a local directory, `<host>/flightctl-backup-<ts>.tar.gz` plus a `.sha256`
//! sidecar, owner-only. Objects are written under a temporary name and renamed only once their size and
//! digest match what the agent announced; anything unfinished is removed.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ferry_proto::archive::{hex, parse_sidecar, sidecar_line};
use sha2::{Digest, Sha256};

/// Why the store could not take or give an archive.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store is full at {path}: {source}; free space or point `store:` elsewhere")]
    Full { path: PathBuf, source: io::Error },
    #[error("store {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "received {actual_size} bytes sha256 {actual_sha}, but the agent announced {expected_size} bytes sha256 {expected_sha}"
    )]
    Mismatch {
        expected_size: u64,
        expected_sha: String,
        actual_size: u64,
        actual_sha: String,
    },
    #[error("{0} already exists in the store; refusing to overwrite it")]
    Exists(PathBuf),
    #[error("{0:?} is not a safe name for a store object")]
    BadName(String),
}

fn io_error(path: &Path, source: io::Error) -> StoreError {
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

/// One archive in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub host: String,
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
}

/// A local-directory store.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens (creating, mode 0700) the store at `root`, and removes the partial objects of
    /// controllers that died mid-transfer.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        make_dir(root)?;
        let store = Store {
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
                    .or_else(|| name.rsplit_once(".sha256.part-").map(|(_, pid)| pid))
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

    /// Starts receiving an archive for `host`; its name is given at [`Incoming::commit`].
    pub fn begin(&self, host: &str) -> Result<Incoming, StoreError> {
        check_name(host)?;
        let dir = self.root.join(host);
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
            hasher: Sha256::new(),
            size: 0,
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
                if name.starts_with('.')
                    || !(name.ends_with(".tar.gz") || name.ends_with(".tar.zst"))
                {
                    continue;
                }
                let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                objects.push(StoredObject {
                    host: host_name.clone(),
                    name,
                    path: entry.path(),
                    size,
                });
            }
        }
        objects.sort_by(|a, b| (&a.host, &a.name).cmp(&(&b.host, &b.name)));
        Ok(objects)
    }

    /// The second after `host`'s newest stored archive: the earliest timestamp a new archive of it
    /// may carry without colliding (Unix seconds; 0 when it has none).
    pub fn next_free_second(&self, host: &str) -> i64 {
        let newest = std::fs::read_dir(self.root.join(host))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| ferry_proto::archive::archive_time(&e.file_name().to_string_lossy()))
            .max();
        newest.map_or(0, |t| t.unix_timestamp() + 1)
    }

    /// Removes an archive and then its sidecar; one already gone is not an error.
    pub fn delete(&self, host: &str, name: &str) -> Result<(), StoreError> {
        for path in [self.path(host, name), self.sidecar_path(host, name)] {
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
        let path = self.sidecar_path(host, name);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(parse_sidecar(&text)),
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
    hasher: Sha256,
    size: u64,
}

/// A committed archive.
#[derive(Debug, Clone)]
pub struct Committed {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
}

impl Incoming {
    pub fn write_chunk(&mut self, data: &[u8]) -> Result<(), StoreError> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        file.write_all(data).map_err(|e| io_error(&self.temp, e))?;
        self.hasher.update(data);
        self.size += data.len() as u64;
        Ok(())
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Makes the object durable and visible as `name`, with its sidecar, if it is exactly what was
    /// announced.
    pub fn commit(
        mut self,
        name: &str,
        expected_size: u64,
        expected_sha: &str,
    ) -> Result<Committed, StoreError> {
        check_name(name)?;
        let path = self.dir.join(name);
        let sha256 = hex(&self.hasher.clone().finalize());
        if self.size != expected_size || !sha256.eq_ignore_ascii_case(expected_sha) {
            return Err(StoreError::Mismatch {
                expected_size,
                expected_sha: expected_sha.to_string(),
                actual_size: self.size,
                actual_sha: sha256,
            });
        }
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
            return Err(StoreError::Exists(path));
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
        Ok(Committed {
            path,
            size: self.size,
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

fn check_name(part: &str) -> Result<(), StoreError> {
    if part.is_empty() || part.starts_with('.') || part.contains('/') || part.contains('\0') {
        return Err(StoreError::BadName(part.to_string()));
    }
    Ok(())
}

fn make_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_error(dir, e))
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
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn commit_is_atomic_owner_only_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let name = "flightctl-backup-20260101T000000Z.tar.gz";
        let mut incoming = store.begin("cp01").unwrap();
        incoming.write_chunk(b"hello ").unwrap();
        incoming.write_chunk(b"world").unwrap();
        assert!(
            store.list().unwrap().is_empty(),
            "nothing visible before commit"
        );
        let sha = hex(&Sha256::digest(b"hello world"));
        let done = incoming.commit(name, 11, &sha).unwrap();
        assert_eq!(std::fs::read(&done.path).unwrap(), b"hello world");
        let mode = std::fs::metadata(&done.path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let sidecar = store.sidecar_digest("cp01", name).unwrap();
        assert_eq!(sidecar.as_deref(), Some(sha.as_str()));
        assert_eq!(store.list().unwrap().len(), 1);
        let mut again = store.begin("cp01").unwrap();
        again.write_chunk(b"hello world").unwrap();
        assert!(matches!(
            again.commit(name, 11, &sha),
            Err(StoreError::Exists(_))
        ));

        let mut bad = store.begin("cp01").unwrap();
        bad.write_chunk(b"abc").unwrap();
        assert!(matches!(
            bad.commit("x.tar.gz", 3, &sha),
            Err(StoreError::Mismatch { .. })
        ));
        let mut dropped = store.begin("cp02").unwrap();
        dropped.write_chunk(b"partial").unwrap();
        drop(dropped);
        let leftovers: Vec<_> = walk(store.root());
        assert_eq!(
            leftovers.len(),
            2,
            "only the committed archive and its sidecar: {leftovers:?}"
        );
        assert!(matches!(store.begin("../x"), Err(StoreError::BadName(_))));
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
