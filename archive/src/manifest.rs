use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// ferry's manifest at the archive root; upstream's restore ignores it.
pub const MANIFEST_NAME: &str = "ferry-manifest.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
}

/// One tar entry as it was on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub path: String,
    pub kind: EntryKind,
    /// The mode on the host (the tar header carries an owner-only mode).
    pub mode: u32,
    pub size: u64,
    /// SHA-256 of the content (files only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
}

/// What ferry knows about an archive beyond upstream's metadata.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// `ferry-archive/1`.
    pub format: String,
    pub agent_version: String,
    pub host: String,
    /// The common name of the certificate of the agent that made it: the name the controller files
    /// the archive under (empty in archives older than this field).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub identity: String,
    /// `gzip` or `zstd`.
    pub compression: String,
    pub entries: Vec<Entry>,
    /// Rows per table, counted in the dump itself (so they match it exactly).
    pub row_counts: BTreeMap<String, u64>,
    /// The encryption key ids the dump's `enc:v1:<keyid>:` values use (v1.3+), found in the dump.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub encryption_key_ids: Vec<String>,
    /// The host paths the backup looked at, as archive entries (`config/conf.d`): one that is
    /// not in the archive was absent on the host. Archives older than this field captured
    /// [`Manifest::CAPTURED`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub captured: Vec<String>,
    /// The source host's facts at backup time.
    pub facts: serde_json::Value,
    pub warnings: Vec<String>,
}

impl Manifest {
    pub const FORMAT: &'static str = "ferry-archive/1";

    /// What every ferry backup captures of a podman host.
    pub const CAPTURED: [&'static str; 4] = [
        "config/service-config.yaml",
        "config/conf.d",
        "pki",
        "encryption",
    ];

    /// The paths this archive's backup captured.
    pub fn captured(&self) -> Vec<String> {
        if self.captured.is_empty() {
            Self::CAPTURED.iter().map(|p| p.to_string()).collect()
        } else {
            self.captured.clone()
        }
    }

    pub fn entry(&self, path: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.path == path)
    }
}
