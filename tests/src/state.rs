//! The simulated host's spec and its systemd state, shared by the stand-ins through files.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::layout::Layout;

/// What kind of host to simulate. Saved as `sim/host.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    pub name: String,
    /// This host's own loopback address: its "127.0.0.1".
    pub address: String,
    /// The Flight Control version the API reports.
    pub version: String,
    pub external_db: bool,
    /// Where an external database listens (TLS only), as service-config.yaml names it.
    #[serde(default)]
    pub db_address: String,
    /// Units the host has (full names, e.g. `flightctl-db.service`).
    pub units: Vec<String>,
    /// PostgreSQL server binaries.
    pub pg_bin: String,
    /// User the database runs as (PostgreSQL refuses root).
    pub pg_uid: u32,
    pub pg_gid: u32,
    /// A light host: its units are states only, with no PostgreSQL, Redis or API behind them, so one
    /// machine holds hundreds. It answers ping and facts; backups and restores are refused.
    #[serde(default)]
    pub light: bool,
}

/// systemd's view of the host. Saved as `sim/units.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Units {
    /// Whether each unit is started.
    pub active: BTreeMap<String, bool>,
    /// `PublishPort=` values per unit, as of the last daemon-reload.
    pub published: BTreeMap<String, Vec<String>>,
}

impl Spec {
    pub fn load(layout: &Layout) -> std::io::Result<Self> {
        read_json(&layout.spec_file())
    }
    pub fn has_unit(&self, unit: &str) -> bool {
        self.units.iter().any(|u| u == unit)
    }
}

impl Units {
    pub fn load(layout: &Layout) -> std::io::Result<Self> {
        match read_json(&layout.units_file()) {
            Ok(units) => Ok(units),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Units::default()),
            Err(e) => Err(e),
        }
    }
    pub fn save(&self, layout: &Layout) -> std::io::Result<()> {
        write_json(&layout.units_file(), self)
    }
    pub fn is_active(&self, unit: &str) -> bool {
        self.active.get(unit).copied().unwrap_or(false)
    }
}

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> std::io::Result<T> {
    let text = std::fs::read_to_string(path)?;
    serde_json::from_str(&text)
        .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(tmp, path)
}

/// Serialises the stand-ins of one host, as systemd's job queue would.
pub struct HostLock {
    _file: std::fs::File,
}

impl HostLock {
    pub fn acquire(layout: &Layout) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(layout.lock_file())?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)?;
        Ok(HostLock { _file: file })
    }
}

/// An injected fault for this call: the message of the first `TOOL|SUBSTRING|MESSAGE` line whose tool
/// matches and whose substring occurs in the call's arguments (`=CALL`: whose arguments are exactly
/// CALL).
pub fn fault(layout: &Layout, tool: &str, args: &[String]) -> Option<String> {
    let faults = std::fs::read_to_string(layout.faults()).ok()?;
    let call = args.join(" ");
    faults.lines().find_map(|line| {
        let mut parts = line.splitn(3, '|');
        let (t, needle, message) = (parts.next()?, parts.next()?, parts.next()?);
        // `=CALL` matches that call exactly; anything else, any call containing it.
        let matches = match needle.strip_prefix('=') {
            Some(exact) => call == exact,
            None => call.contains(needle),
        };
        (t == tool && matches).then(|| message.to_string())
    })
}

/// Appends one line to the host's call log.
pub fn log_call(layout: &Layout, tool: &str, args: &[String]) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(layout.calls_log())
    {
        // One line per call, whatever its arguments hold (SQL has newlines).
        let _ = writeln!(f, "{tool} {}", args.join(" ").replace('\n', " "));
    }
}
