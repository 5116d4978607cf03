//! The restore journal: what has been done on the host, saved after every step, so a restore can be
//! resumed or rolled back and the host's state can always be named.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A file or tree that was swapped: the live path and where its pre-restore copy is kept.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Swapped {
    pub live: PathBuf,
    pub old: PathBuf,
    /// Whether the live path existed before the swap (rollback removes it if not).
    #[serde(default)]
    pub existed: Option<bool>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Journal {
    pub restore_id: String,
    pub archive_sha256: String,
    pub archive_size: u64,
    pub keep_old_db: bool,
    /// The steps this restore runs (a subset of all steps, in order).
    pub plan: Vec<String>,
    /// Components restored, never empty: any of db, pki, config, encryption, volumes.
    pub components: Vec<String>,
    /// Steps done, in order.
    pub done: Vec<String>,
    /// From the archive's metadata, once verified.
    pub version: String,
    pub database_included: bool,
    /// The live database's name and, during the swap, the temporary and old ones.
    pub db_name: String,
    pub temp_db: String,
    pub old_db: String,
    pub swapped: Vec<Swapped>,
    /// Application units that were active before `stop` (and are started again).
    pub stopped_units: Vec<String>,
    /// Drop-ins written by `publish`.
    pub dropins: Vec<PathBuf>,
    /// Awaiting-reconnect keys to seed, counted by `prepare-devices`.
    pub kv_keys: usize,
    /// What the agent did on its own when the controller's lease lapsed.
    #[serde(default)]
    pub lapsed: Option<String>,
    /// The operator's overrides of the external database's address.
    #[serde(default)]
    pub database_override: crate::tasks::database::Override,
    /// Where device preparation connects (the external database, or the published built-in one).
    #[serde(default)]
    pub external_database: bool,
}

impl Journal {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("journal.json")
    }

    pub fn load(dir: &Path) -> std::io::Result<Journal> {
        let text = std::fs::read_to_string(Self::path(dir))?;
        serde_json::from_str(&text).map_err(std::io::Error::other)
    }

    /// Writes the journal atomically (temporary file, fsync, rename).
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        use std::io::Write;
        let tmp = dir.join("journal.json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(tmp, Self::path(dir))
    }

    pub fn is_done(&self, step: &str) -> bool {
        self.done.iter().any(|s| s == step)
    }

    /// Whether the host's data was touched: a database renamed or a file swapped.
    pub fn swapped(&self) -> bool {
        self.is_done("swap-db") || !self.swapped.is_empty()
    }

    /// The host's state in words, for reports and failures.
    pub fn state(&self) -> String {
        let last = self.done.last().map(String::as_str).unwrap_or("stage");
        let swapped = self.swapped();
        let units = if self.is_done("stop") && !self.is_done("start") {
            "application units stopped"
        } else {
            "application units running"
        };
        let lapsed = self
            .lapsed
            .as_deref()
            .map(|l| format!("; {l}"))
            .unwrap_or_default();
        format!(
            "last completed step: {last}; {}; {units}{}{lapsed}",
            if swapped {
                "restored data in place, pre-restore copies kept"
            } else {
                "live data untouched"
            },
            if self.dropins.iter().any(|d| d.exists()) {
                "; DB port published on loopback"
            } else {
                ""
            }
        )
    }
}
