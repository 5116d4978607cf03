//! The restore journal: what has been done on the host, and what is about to be, saved before every
//! change, so a restore can be resumed or rolled back and the host's state can always be named, also
//! after the agent restarts.

use std::path::{Path, PathBuf};

use ferry_proto::v1::{Component, HostState, Step};
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

/// Steps and components are kept by name, so an operator can read the journal.
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
    /// Steps whose body began (on record before it runs): a step begun but not done may have
    /// changed what it changes.
    #[serde(default)]
    pub begun: Vec<String>,
    /// From the archive's metadata, once verified.
    pub version: String,
    /// This restore puts back the built-in database (loaded, swapped, dropped on rollback).
    pub restores_database: bool,
    /// The operator named the components (`--only`): each one must be in the archive.
    #[serde(default)]
    pub partial: bool,
    /// The live database's name and, during the swap, the temporary and old ones.
    pub db_name: String,
    pub temp_db: String,
    pub old_db: String,
    pub swapped: Vec<Swapped>,
    /// Application units that were active before `stop` (and are started again).
    pub stopped_units: Vec<String>,
    /// Drop-ins `publish` writes, recorded before each is written.
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
    /// `commit` began dropping the pre-restore copies: from here the restore can only be finished.
    #[serde(default)]
    pub committing: bool,
    /// `swap-files` kept the host's own `pki/db` (the external database's CA) in the new PKI tree.
    #[serde(default)]
    pub kept_host_pki: bool,
    /// The paths (archive entries) the archive's backup captured, from its manifest; empty for an
    /// upstream archive. A captured path the archive lacks was absent: a full restore removes it.
    #[serde(default)]
    pub captured: Vec<String>,
    /// The whole archive arrived and was checked (or nothing was to arrive: device preparation
    /// alone). Read from the staging directory, not saved.
    #[serde(skip)]
    pub received: bool,
    /// The lease's length, to arm it again after the agent restarts.
    #[serde(default)]
    pub lease_seconds: u32,
    /// `stage` loaded the dump into the temporary database as it received the archive (seconds).
    #[serde(default)]
    pub loaded_seconds: Option<f64>,
}

impl Journal {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("journal.json")
    }

    pub fn load(dir: &Path) -> std::io::Result<Journal> {
        let text = std::fs::read_to_string(Self::path(dir))?;
        let mut j: Journal = serde_json::from_str(&text).map_err(std::io::Error::other)?;
        j.received =
            dir.join(super::staging::STAGED).is_file() || !j.plan().contains(&Step::Verify);
        Ok(j)
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

    pub fn is_done(&self, step: Step) -> bool {
        self.done.iter().any(|s| s == step.name())
    }

    pub fn mark_done(&mut self, step: Step) {
        if !self.is_done(step) {
            self.done.push(step.name().into());
        }
    }

    pub fn began(&self, step: Step) -> bool {
        self.begun.iter().any(|s| s == step.name()) || self.is_done(step)
    }

    pub fn begin(&mut self, step: Step) {
        if !self.began(step) {
            self.begun.push(step.name().into());
        }
    }

    pub fn unmark(&mut self, step: Step) {
        self.done.retain(|s| s != step.name());
    }

    pub fn plan(&self) -> Vec<Step> {
        self.plan
            .iter()
            .filter_map(|s| Step::from_name(s))
            .collect()
    }

    pub fn set_plan(&mut self, plan: &[Step]) {
        self.plan = plan.iter().map(|s| s.name().to_string()).collect();
    }

    pub fn components(&self) -> Vec<Component> {
        self.components
            .iter()
            .filter_map(|c| Component::from_name(c))
            .collect()
    }

    pub fn wants(&self, component: Component) -> bool {
        self.components.iter().any(|c| c == component.name())
    }

    /// The last step done; `Stage` right after staging.
    pub fn last_done(&self) -> Step {
        self.done
            .last()
            .and_then(|s| Step::from_name(s))
            .unwrap_or(Step::Stage)
    }

    /// Whether the host's data was touched: a database renamed or a file swapped.
    pub fn swapped(&self) -> bool {
        self.is_done(Step::SwapDb) || !self.swapped.is_empty()
    }

    /// Whether the live control plane's data may have changed: swapped, or devices prepared in the
    /// live database (which no rollback undoes).
    pub fn live_changed(&self) -> bool {
        self.swapped() || self.began(Step::PrepareDevices)
    }

    /// A port is published right now.
    pub fn published(&self) -> bool {
        self.dropins.iter().any(|d| d.exists())
    }

    /// Where the restore has left the host.
    pub fn state(&self) -> HostState {
        if self.is_done(Step::Start) {
            HostState::Started
        } else if self.live_changed() {
            HostState::Swapped
        } else if self.is_done(Step::Stop) {
            HostState::Stopped
        } else {
            HostState::Staged
        }
    }

    /// The host's state in words, for reports and failures.
    pub fn describe(&self) -> String {
        let lapsed = self
            .lapsed
            .as_deref()
            .map(|l| format!("; {l}"))
            .unwrap_or_default();
        if !self.plan().contains(&Step::Verify) {
            // Device preparation alone: nothing is restored, nothing is kept aside.
            let state = if self.is_done(Step::Start) {
                "application units running"
            } else if self.began(Step::PrepareDevices) && !self.is_done(Step::SeedKv) {
                "devices marked awaiting reconnect in the live database, their KV keys not all seeded; application units stopped"
            } else if self.is_done(Step::SeedKv) {
                "devices prepared and their KV keys seeded; application units stopped"
            } else if self.is_done(Step::Stop) {
                "application units stopped; the database untouched"
            } else {
                "nothing changed yet"
            };
            return format!(
                "device preparation (no archive): last completed step: {}; {state}{lapsed}",
                self.last_done().name()
            );
        }
        if !self.received {
            return format!(
                "its stage was interrupted before the whole archive arrived: no step ran and the live control plane is untouched; it cannot be resumed and is undone by the lease or `rollback`{lapsed}"
            );
        }
        format!(
            "last completed step: {}; {}{}{lapsed}",
            self.last_done().name(),
            self.state().describe(),
            if self.published() {
                "; DB port published on loopback"
            } else {
                ""
            }
        )
    }
}
