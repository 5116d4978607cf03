//! The small types the controller's layers share: how a host finished, and an archive's
//! compression. They sit below every layer, so that no two layers import each other for them.

use serde_json::Value;

use crate::dial::DialError;

/// What happened on one host.
#[derive(Debug, Clone)]
pub enum Outcome {
    Ok {
        changed: bool,
        summary: String,
        data: Value,
    },
    Failed {
        task: String,
        cause: String,
    },
    Unreachable(DialError),
    Skipped {
        reason: String,
    },
}

#[derive(Debug, Clone)]
pub struct HostResult {
    pub host: String,
    pub address: String,
    pub outcome: Outcome,
}

/// How an archive is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Gzip,
    Zstd,
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// A byte count as people read it (KiB, MiB, …).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Every kind of operation the ledger records: the one list clap's `--kind`, docs/audit.md and
/// the history filters follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OperationKind {
    Backup,
    Restore,
    /// `ferry restore --check`
    RestoreCheck,
    Rollback,
    PrepareDevices,
    ArchiveVerify,
    ArchiveExport,
    ArchiveDelete,
    ArchivePin,
    ArchiveCopy,
    KeysRotate,
    CertificateIssue,
    Drill,
    PortsPublish,
    PortsUnpublish,
}

impl OperationKind {
    /// The name the ledger and the catalog's runs record.
    pub fn name(self) -> &'static str {
        match self {
            OperationKind::Backup => "backup",
            OperationKind::Restore => "restore",
            OperationKind::RestoreCheck => "restore-check",
            OperationKind::Rollback => "rollback",
            OperationKind::PrepareDevices => "prepare-devices",
            OperationKind::ArchiveVerify => "archive-verify",
            OperationKind::ArchiveExport => "archive-export",
            OperationKind::ArchiveDelete => "archive-delete",
            OperationKind::ArchivePin => "archive-pin",
            OperationKind::ArchiveCopy => "archive-copy",
            OperationKind::KeysRotate => "keys-rotate",
            OperationKind::CertificateIssue => "certificate-issue",
            OperationKind::Drill => "drill",
            OperationKind::PortsPublish => "ports-publish",
            OperationKind::PortsUnpublish => "ports-unpublish",
        }
    }
}

impl std::fmt::Display for OperationKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::OperationKind;
    use clap::ValueEnum;

    #[test]
    fn every_operation_kind_is_one_name_for_clap_and_the_ledger_and_is_documented() {
        let audit = include_str!("../../docs/audit.md");
        for kind in OperationKind::value_variants() {
            let clap = kind.to_possible_value().map(|v| v.get_name().to_string());
            assert_eq!(
                clap.as_deref(),
                Some(kind.name()),
                "clap's name of {kind:?}"
            );
            assert!(
                audit.contains(&format!("`{}`", kind.name())),
                "docs/audit.md does not list `{}`",
                kind.name()
            );
        }
    }
}
