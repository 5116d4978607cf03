//! Retention applied to the catalog: which of a host's archives its policies keep and why, with the
//! protections no policy overrides (pins, the host's newest verified and newest drilled archives, an archive a running
//! restore uses), and deleting an archive (store object, catalog mark, ledger entry).

use std::collections::BTreeMap;

use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::catalog::ledger::{Event, TaskRecord};
use crate::catalog::{ArchiveRecord, Catalog, CatalogError, Operator};
use crate::schedule::Retention;
use crate::schedule::retention::{Candidate, decide};
use crate::store::Store;

/// One archive's fate.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub archive: ArchiveRecord,
    pub keep: bool,
    pub reasons: Vec<String>,
}

/// One host's archives under its policies, newest first.
#[derive(Debug, Clone)]
pub struct HostPrune {
    pub host: String,
    pub policies: Vec<Retention>,
    pub verdicts: Vec<Verdict>,
}

impl HostPrune {
    pub fn to_delete(&self) -> impl Iterator<Item = &Verdict> {
        self.verdicts.iter().filter(|v| !v.keep)
    }
}

/// Decides every catalogued archive of the hosts in `policies` (keyed by the name archives are
/// filed under). An archive is kept when any of its host's policies keeps it.
pub async fn plan(
    catalog: &Catalog,
    policies: &BTreeMap<String, Vec<Retention>>,
) -> Result<Vec<HostPrune>, CatalogError> {
    let archives = catalog.archives().await?;
    let in_use: BTreeMap<i64, String> = catalog.archives_in_use().await?.into_iter().collect();
    let mut by_host: BTreeMap<&str, Vec<&ArchiveRecord>> = BTreeMap::new();
    for a in &archives {
        by_host.entry(a.host.as_str()).or_default().push(a);
    }
    let mut plans = Vec::new();
    for (host, host_policies) in policies {
        let Some(list) = by_host.get(host.as_str()) else {
            continue;
        };
        // Newest first (the catalog's order); the first verified one is protected.
        let newest_verified = list
            .iter()
            .find(|a| a.suspect.is_none() && a.verified_at.is_some())
            .map(|a| a.id);
        let newest_drilled = list
            .iter()
            .find(|a| a.suspect.is_none() && a.drilled_at.is_some())
            .map(|a| a.id);
        let candidates: Vec<Candidate> = list
            .iter()
            .map(|a| {
                let mut protected = Vec::new();
                if Some(a.id) == newest_verified {
                    protected.push("newest verified".to_string());
                }
                if Some(a.id) == newest_drilled {
                    protected.push("newest drilled (verified by restore)".to_string());
                }
                if let Some(run) = in_use.get(&a.id) {
                    protected.push(format!("in use by {run}"));
                }
                Candidate {
                    id: a.id,
                    created_at: a.created_at,
                    pinned: a.pinned,
                    protected,
                }
            })
            .collect();
        let mut reasons: BTreeMap<i64, Vec<String>> = BTreeMap::new();
        for policy in host_policies {
            for d in decide(policy, &candidates) {
                let entry = reasons.entry(d.id).or_default();
                for r in d.reasons {
                    if !entry.contains(&r) {
                        entry.push(r);
                    }
                }
            }
        }
        let verdicts = list
            .iter()
            .map(|a| {
                let reasons = reasons.remove(&a.id).unwrap_or_default();
                Verdict {
                    archive: (*a).clone(),
                    keep: !reasons.is_empty(),
                    reasons,
                }
            })
            .collect();
        plans.push(HostPrune {
            host: host.clone(),
            policies: host_policies.clone(),
            verdicts,
        });
    }
    Ok(plans)
}

/// Deletes one archive: marks it in the catalog (exactly one caller wins), removes the object and
/// its sidecar, and appends an `archive-delete` ledger entry. Returns false when it was already
/// deleted. A failed removal takes the mark back and is on the ledger too.
pub async fn delete(
    catalog: &Catalog,
    store: &Store,
    operator: &Operator,
    archive: &ArchiveRecord,
    reason: &str,
    flags: Value,
) -> Result<bool, String> {
    let started = OffsetDateTime::now_utc();
    if !catalog
        .mark_deleted(archive.id, reason)
        .await
        .map_err(|e| e.to_string())?
    {
        return Ok(false);
    }
    let removed = store
        .delete(&archive.host, &archive.object())
        .await
        .map_err(|e| e.to_string());
    if removed.is_err() {
        let _ = catalog.unmark_deleted(archive.id).await;
    }
    let finished = OffsetDateTime::now_utc();
    let error = removed.as_ref().err().cloned();
    let event = Event {
        kind: "archive-delete".into(),
        run_id: None,
        operator: operator.clone(),
        target: archive.host.clone(),
        archive: archive.ledger_json(),
        flags: json!({"reason": reason, "flags": flags}),
        started,
        finished,
        outcome: if error.is_none() {
            "succeeded"
        } else {
            "failed"
        }
        .into(),
        error: error.clone().map(|e| format!("delete: {e}")),
        tasks: vec![TaskRecord {
            name: "delete".into(),
            started,
            finished,
            outcome: if error.is_none() { "ok" } else { "failed" }.into(),
            detail: error.clone().unwrap_or_else(|| {
                format!("archive and sidecar removed from the store ({reason})")
            }),
        }],
    };
    if let Err(e) = catalog.append(&event).await {
        errln!(
            "ferry: [{}] writing the audit ledger for deleting {}: {e}",
            archive.host,
            archive.short_id()
        );
    }
    match error {
        None => Ok(true),
        Some(e) => Err(format!(
            "[{}] {} could not be deleted: {e}; it stays catalogued",
            archive.host,
            archive.short_id()
        )),
    }
}
