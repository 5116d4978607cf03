//! Records the catalog could not take when an operation ended (it was down, or the link to it broke):
//! kept as files in `<state_dir>/spool/`, owner-only, and written, in order, the next time ferry
//! connects to the catalog. A record is never lost silently.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::event::Event;
use super::{ArchiveRecord, Catalog, CatalogError, HostRecord};

/// One record waiting for the catalog.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Spooled {
    Archive(Box<ArchiveRecord>),
    HostResult { run_id: i64, record: HostRecord },
    FinishRun { run_id: i64, outcome: String },
    Ledger(Event),
}

impl Spooled {
    fn what(&self) -> &'static str {
        match self {
            Spooled::Archive(_) => "archive record",
            Spooled::HostResult { .. } => "host result",
            Spooled::FinishRun { .. } => "run's end",
            Spooled::Ledger(_) => "audit ledger entry",
        }
    }
}

/// Writes `record` to a new file in `dir`, named so files sort in the order they were spooled.
fn write(dir: &Path, record: &Spooled) -> std::io::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let name = format!(
        "{:020}-{:010}-{:06}.json",
        time::OffsetDateTime::now_utc().unix_timestamp_nanos(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let path = dir.join(name);
    let tmp = path.with_extension("part");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&serde_json::to_vec(record).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

impl Catalog {
    /// Keeps `record` for later; returns the error that says so.
    pub(super) fn spool(&self, record: Spooled, cause: CatalogError) -> CatalogError {
        let what = record.what();
        match write(&self.spool_dir, &record) {
            Ok(path) => CatalogError::Spooled {
                what,
                path,
                cause: cause.to_string(),
            },
            Err(e) => CatalogError::Lost {
                what,
                cause: cause.to_string(),
                spool: format!("{}: {e}", self.spool_dir.display()),
            },
        }
    }

    /// Writes what the spool holds, oldest first; stops at the first record the catalog refuses.
    pub(super) async fn replay_spool(&self) {
        let Ok(entries) = std::fs::read_dir(&self.spool_dir) else {
            return;
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        for path in files {
            let record = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Spooled>(&b).ok());
            let Some(record) = record else {
                tracing::warn!(file = %path.display(), "unreadable spooled record left in place");
                continue;
            };
            let written = match &record {
                Spooled::Archive(a) => self.insert_archive_now(a).await.map(|_| ()),
                Spooled::HostResult { run_id, record } => {
                    self.record_host_now(*run_id, record).await
                }
                Spooled::FinishRun { run_id, outcome } => {
                    self.finish_run_now(*run_id, outcome).await
                }
                Spooled::Ledger(event) => self.append_now(event).await.map(|_| ()),
            };
            match written {
                Ok(()) => {
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "spooled record not written yet");
                    return;
                }
            }
        }
    }
}
