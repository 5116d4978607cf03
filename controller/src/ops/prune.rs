//! Retention applied to the catalog: which of a host's archives its policies keep and why, with the
//! protections no policy overrides (pins, the host's newest verified and newest drilled archives, an archive a running
//! restore uses), and deleting an archive (store object, catalog mark, ledger entry).

use std::collections::BTreeMap;

use serde_json::{Value, json};
use time::OffsetDateTime;

use super::Operation;
use crate::catalog::evidence::{Finding, Source};
use crate::catalog::ledger::{Event, TaskRecord};
use crate::catalog::{ArchiveRecord, Catalog, CatalogError, Operator};
use crate::schedule::Retention;
use crate::schedule::retention::{Candidate, decide};
use crate::store::Store;
use crate::types::OperationKind;

/// The protection of a host's newest good archive.
const NEWEST_VERIFIED: &str = "newest verified";

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
/// filed under) in store `store`. An archive is kept when any of its host's policies keeps it.
/// Only copies proven good in `store` count toward the policies; a missing or suspect one is left
/// alone and never counted, and an archive recorded only in another store is not this store's to
/// delete.
pub async fn plan(
    catalog: &Catalog,
    store: &str,
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
        // Only good copies are candidates; the rest are left alone, each with why.
        let (good, left): (Vec<&ArchiveRecord>, Vec<&ArchiveRecord>) =
            list.iter().partition(|a| a.standing(store).is_good());
        // Newest first (the catalog's order); the first good one is protected.
        let newest_verified = good.first().map(|a| a.id);
        let newest_drilled = good.iter().find(|a| a.drilled_at.is_some()).map(|a| a.id);
        let candidates: Vec<Candidate> = good
            .iter()
            .map(|a| {
                let mut protected = Vec::new();
                if Some(a.id) == newest_verified {
                    protected.push(NEWEST_VERIFIED.to_string());
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
                if left.iter().any(|l| l.id == a.id) {
                    return Verdict {
                        archive: (*a).clone(),
                        keep: true,
                        reasons: vec![format!(
                            "{}: not counted, left alone",
                            a.standing(store).why_not()
                        )],
                    };
                }
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

/// [`plan`], with what it keeps looked at first: before a host's archives are deleted for being
/// older than the ones kept, each kept copy must still be in the store at the size and version last
/// proven (a HEAD or stat each); one that changed since, and the newest kept when no version of it
/// was recorded, is proven again (read whole). Whatever is found is recorded and the host planned
/// again.
pub async fn plan_checked(
    catalog: &Catalog,
    store: &Store,
    policies: &BTreeMap<String, Vec<Retention>>,
) -> Result<Vec<HostPrune>, CatalogError> {
    let here = store.id();
    let mut hosts = plan(catalog, &here, policies).await?;
    for _ in 0..3 {
        let mut found = false;
        for host in hosts.iter().filter(|h| h.to_delete().next().is_some()) {
            for v in host
                .verdicts
                .iter()
                .filter(|v| v.keep && v.archive.standing(&here).is_good())
            {
                let a = &v.archive;
                let newest = v.reasons.iter().any(|r| r == NEWEST_VERIFIED);
                let unversioned = a.copy_in(&here).is_none_or(|c| c.version.is_none());
                let finding = match crate::proof::presence(store, a).await {
                    Err(_) => continue,
                    Ok(Finding::Present) if !(newest && unversioned) => continue,
                    Ok(Finding::Present | Finding::Changed) => {
                        // Read whole: the proof records what it finds.
                        let options = crate::proof::Options {
                            ciphertext_without_key: true,
                            ..Default::default()
                        };
                        match crate::proof::prove(
                            store,
                            catalog,
                            a,
                            None,
                            Source::Retention,
                            options,
                        )
                        .await
                        {
                            Ok(_) => continue,
                            Err(u) if u.finding.is_none() => continue,
                            Err(_) => {
                                found = true;
                                continue;
                            }
                        }
                    }
                    Ok(finding) => finding,
                };
                crate::proof::record(catalog, store, a, &finding, Source::Retention).await;
                found = true;
            }
        }
        if !found {
            break;
        }
        hosts = plan(catalog, &here, policies).await?;
    }
    Ok(hosts)
}

/// Deletes one archive's copy in `store`, which must be recorded there: removes the object, its
/// key and sidecar, then the copy's record (the archive is marked deleted when it was its last
/// copy; exactly one caller wins), and appends an `archive-delete` ledger entry. Returns false
/// when another caller deleted it first. A failed removal leaves it catalogued, on the ledger too.
pub async fn delete(
    catalog: &Catalog,
    store: &Store,
    operator: &Operator,
    archive: &ArchiveRecord,
    reason: &str,
    flags: Value,
) -> Result<bool, String> {
    let here = store.id();
    // Nothing is deleted through a store the archive is not recorded in.
    if archive.copy_in(&here).is_none() {
        return Err(format!(
            "[{}] {}: {}; nothing was deleted (set `store:` to the store that holds it)",
            archive.host,
            archive.short_id(),
            archive.standing(&here).why_not()
        ));
    }
    let started = OffsetDateTime::now_utc();
    let removed = store
        .delete(&archive.host, &archive.object())
        .await
        .map_err(|e| e.to_string());
    if removed.is_ok()
        && !catalog
            .remove_copy(archive.id, &here, reason)
            .await
            .map_err(|e| e.to_string())?
    {
        return Ok(false);
    }
    let finished = OffsetDateTime::now_utc();
    let error = removed.as_ref().err().cloned();
    let event = Event {
        archive: archive.ledger_json(),
        flags: json!({"reason": reason, "store": here, "flags": flags}),
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
            detail: error
                .clone()
                .unwrap_or_else(|| format!("archive and sidecar removed from {here} ({reason})")),
        }],
        ..Operation::standalone(
            OperationKind::ArchiveDelete,
            operator.clone(),
            &archive.host,
            started,
        )
    };
    if let Err(e) = Operation::entry(catalog, &event).await {
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
