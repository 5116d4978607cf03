//! The audit ledger: one append-only entry per operation and host, each chained to the previous one
//! by hash, so an edited, deleted or reordered entry is detected (docs/audit.md).
//!
//! An entry's `content` is canonical JSON (keys sorted, no whitespace) that includes its own `seq`;
//! `hash = hex(sha256(prev_hash ‖ "\n" ‖ content))`, with `prev_hash` of the first entry 64 zeros.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::{Catalog, CatalogError};

/// The `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

pub use super::event::{Event, TaskRecord};

/// A stored entry.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Entry {
    pub seq: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub recorded_at: OffsetDateTime,
    pub content: String,
    pub prev_hash: String,
    pub hash: String,
}

impl Entry {
    pub fn content_json(&self) -> Value {
        serde_json::from_str(&self.content).unwrap_or(Value::Null)
    }
}

/// `hex(sha256(prev_hash ‖ "\n" ‖ content))`.
pub fn chain_hash(prev_hash: &str, content: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash.as_bytes());
    hasher.update(b"\n");
    hasher.update(content.as_bytes());
    ferry_archive::hex(&hasher.finalize())
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The first broken link found by [`Catalog::verify_ledger`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Break {
    /// The entry's content no longer hashes to its recorded hash.
    Edited { seq: i64 },
    /// Entries are missing before this one.
    Missing { from: i64, to: i64 },
    /// The entry at this position was recorded at another.
    Reordered { seq: i64, recorded_as: i64 },
    /// The entry does not chain to the one before it.
    Unchained { seq: i64 },
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Break::Edited { seq } => write!(
                f,
                "entry #{seq} was edited: its content no longer matches its hash"
            ),
            Break::Missing { from, to } if from == to => {
                write!(f, "entry #{from} is missing (deleted)")
            }
            Break::Missing { from, to } => {
                write!(f, "entries #{from} to #{to} are missing (deleted)")
            }
            Break::Reordered { seq, recorded_as } => {
                write!(
                    f,
                    "entry at position #{seq} was recorded as #{recorded_as}: entries were reordered"
                )
            }
            Break::Unchained { seq } => {
                write!(f, "entry #{seq} does not chain to the entry before it")
            }
        }
    }
}

impl Catalog {
    /// Appends `event` as the next entry; returns its sequence number.
    /// Appends `event`; if the catalog is unreachable, keeps it in the spool for later.
    pub async fn append(&self, event: &Event) -> Result<i64, CatalogError> {
        match self.append_now(event).await {
            Ok(seq) => Ok(seq),
            Err(e) => Err(self.spool(super::spool::Spooled::Ledger(event.clone()), e)),
        }
    }

    pub(super) async fn append_now(&self, event: &Event) -> Result<i64, CatalogError> {
        let mut client = self.ledger.lock().await;
        let tx = client.transaction().await?;
        tx.batch_execute("LOCK TABLE ledger IN EXCLUSIVE MODE")
            .await?;
        // Write as the role that may only insert, where the catalog has it.
        let writer = tx.query_opt("SELECT 1 FROM pg_roles WHERE rolname = 'ferry_ledger_writer' AND pg_has_role(current_user, oid, 'MEMBER')", &[]).await?;
        if writer.is_some() {
            tx.batch_execute("SET LOCAL ROLE ferry_ledger_writer")
                .await?;
        }
        let last = tx
            .query_opt(
                "SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1",
                &[],
            )
            .await?;
        let (seq, prev_hash) = match last {
            Some(row) => (row.get::<_, i64>(0) + 1, row.get::<_, String>(1)),
            None => (1, GENESIS.to_string()),
        };
        let content = json!({
            "seq": seq,
            "kind": event.kind,
            "run_id": event.run_id,
            "operator": {
                "subject": event.operator.subject,
                "fingerprint": event.operator.fingerprint,
                "os_user": event.operator.os_user,
                "controller_host": event.operator.controller_host,
            },
            "target": event.target,
            "archive": event.archive,
            "flags": event.flags,
            "started": rfc3339(event.started),
            "finished": rfc3339(event.finished),
            "outcome": event.outcome,
            "error": event.error,
            "tasks": event.tasks,
        });
        // serde_json's map is ordered by key: this is the canonical form.
        let content = serde_json::to_string(&content).unwrap_or_default();
        let hash = chain_hash(&prev_hash, &content);
        tx.execute(
            "INSERT INTO ledger (seq, content, prev_hash, hash) VALUES ($1, $2, $3, $4)",
            &[&seq, &content, &prev_hash, &hash],
        )
        .await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// Every entry, in sequence order.
    pub async fn ledger(&self) -> Result<Vec<Entry>, CatalogError> {
        let rows = self
            .client
            .query(
                "SELECT seq, recorded_at, content, prev_hash, hash FROM ledger ORDER BY seq",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Entry {
                seq: r.get(0),
                recorded_at: r.get(1),
                content: r.get(2),
                prev_hash: r.get(3),
                hash: r.get(4),
            })
            .collect())
    }
}

/// The entries that fail verification on their own: edited (hash), renumbered, or not chained
/// to the entry before them. `history` marks them.
pub fn failing(entries: &[Entry]) -> std::collections::BTreeSet<i64> {
    let mut bad = std::collections::BTreeSet::new();
    let mut prev: Option<&Entry> = None;
    for entry in entries {
        let expected_prev = prev.map_or(GENESIS, |p| p.hash.as_str());
        if chain_hash(&entry.prev_hash, &entry.content) != entry.hash
            || entry.content_json()["seq"].as_i64() != Some(entry.seq)
            || entry.prev_hash != expected_prev
        {
            bad.insert(entry.seq);
        }
        prev = Some(entry);
    }
    bad
}

/// Recomputes the chain; returns the number of entries, or the first broken link.
pub fn verify(entries: &[Entry]) -> Result<usize, Break> {
    let mut prev: Option<&Entry> = None;
    for entry in entries {
        if chain_hash(&entry.prev_hash, &entry.content) != entry.hash {
            return Err(Break::Edited { seq: entry.seq });
        }
        let recorded_as = entry.content_json()["seq"].as_i64().unwrap_or(-1);
        if recorded_as != entry.seq {
            return Err(Break::Reordered {
                seq: entry.seq,
                recorded_as,
            });
        }
        let expected_seq = prev.map_or(1, |p| p.seq + 1);
        if entry.seq != expected_seq {
            return Err(Break::Missing {
                from: expected_seq,
                to: entry.seq - 1,
            });
        }
        let expected_prev = prev.map_or(GENESIS, |p| p.hash.as_str());
        if entry.prev_hash != expected_prev {
            return Err(Break::Unchained { seq: entry.seq });
        }
        prev = Some(entry);
    }
    Ok(entries.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<Entry> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let content = format!("{{\"kind\":\"backup\",\"seq\":{seq}}}");
                let hash = chain_hash(&prev, &content);
                let entry = Entry {
                    seq,
                    recorded_at: OffsetDateTime::UNIX_EPOCH,
                    content,
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                };
                prev = hash;
                entry
            })
            .collect()
    }

    #[test]
    fn intact_edited_missing_and_reordered_chains() {
        let good = chain(5);
        assert_eq!(verify(&good), Ok(5));
        let mut edited = good.clone();
        edited[2].content = edited[2].content.replace("backup", "restore");
        assert_eq!(verify(&edited), Err(Break::Edited { seq: 3 }));
        let mut missing = good.clone();
        missing.remove(1);
        assert_eq!(verify(&missing), Err(Break::Missing { from: 2, to: 2 }));
        let mut swapped = good.clone();
        swapped.swap(1, 2);
        let (a, b) = (swapped[1].seq, swapped[2].seq);
        swapped[1].seq = b;
        swapped[2].seq = a;
        assert_eq!(
            verify(&swapped),
            Err(Break::Reordered {
                seq: 2,
                recorded_as: 3
            })
        );
    }
}
