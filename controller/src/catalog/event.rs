//! What the ledger records of an operation: the entry before it is numbered and chained. Shared by
//! the ledger, which chains it, and the spool, which keeps it while the catalog is down.

use serde_json::Value;
use time::OffsetDateTime;

use super::Operator;

/// One task of an operation's timeline.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TaskRecord {
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub started: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub finished: OffsetDateTime,
    /// ok, failed, refused, skipped
    pub outcome: String,
    pub detail: String,
}

/// What happened, to whom, by whom: the entry before it is numbered and chained.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Event {
    /// backup, restore, restore-check, rollback, prepare-devices, archive-verify, archive-export,
    /// archive-delete, archive-pin, archive-copy, keys-rotate, certificate-issue, drill,
    /// ports-publish, ports-unpublish
    pub kind: String,
    pub run_id: Option<i64>,
    pub operator: Operator,
    pub target: String,
    /// {id, name, sha256, source_host} when an archive is involved.
    pub archive: Value,
    pub flags: Value,
    #[serde(with = "time::serde::rfc3339")]
    pub started: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub finished: OffsetDateTime,
    /// succeeded, failed, refused, rolled back, checked, unreachable, interrupted
    pub outcome: String,
    pub error: Option<String>,
    pub tasks: Vec<TaskRecord>,
}
