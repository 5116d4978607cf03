//! `ferry archives prune|pin|unpin|delete`: retention and the archive lifecycle by hand.

use std::collections::BTreeMap;

use serde_json::json;
use time::OffsetDateTime;

use crate::catalog::ledger::{Event, TaskRecord};
use crate::catalog::{Catalog, Operator};
use crate::cli::GlobalArgs;
use crate::config::Config;
use crate::ops::Operation;
use crate::ops::prune::HostPrune;
use crate::report::{Format, exit};
use crate::store::Store;
use crate::types::OperationKind;

pub async fn prune(
    config: &Config,
    global: &GlobalArgs,
    store: &Store,
    catalog: &Catalog,
    pattern: Option<&str>,
    dry_run: bool,
) -> Result<i32, String> {
    let (inventory, plan) = match crate::selection::schedule_plans(config, global) {
        Ok(p) => p,
        Err(stop) => return Ok(stop.say()),
    };
    let pattern = pattern.unwrap_or("all");
    let selected = match crate::selection::select(config, global, &inventory, pattern) {
        Ok(hosts) => hosts,
        Err(stop) => return Ok(stop.say()),
    };
    let plans: Vec<_> = plan
        .plans
        .into_iter()
        .filter(|p| selected.contains(&p.host))
        .collect();
    let unscheduled: Vec<&String> = selected
        .iter()
        .filter(|h| !plans.iter().any(|p| &p.host == *h))
        .collect();
    let policies = crate::schedule::policies(&plans);
    // A dry run looks at what it would keep as a real one does (and records what it finds), so its
    // plan is the one a real run carries out.
    let hosts = crate::ops::prune::plan_checked(catalog, store, &policies)
        .await
        .map_err(|e| e.to_string())?;
    let operator = Operator::current(config);
    let mut deleted = 0;
    let mut failed = Vec::new();
    if !dry_run {
        for host in &hosts {
            for v in host.to_delete() {
                let reason = format!("retention ({})", describe(host));
                match crate::ops::prune::delete(
                    catalog,
                    store,
                    &operator,
                    &v.archive,
                    &reason,
                    json!({"command": "archives prune", "pattern": pattern}),
                )
                .await
                {
                    Ok(true) => deleted += 1,
                    Ok(false) => {}
                    Err(e) => failed.push(e),
                }
            }
        }
    }
    let to_delete: usize = hosts.iter().map(|h| h.to_delete().count()).sum();
    match global.output {
        Format::Json => crate::output::json(&json!({
            "dry_run": dry_run,
            "hosts": hosts.iter().map(host_json).collect::<Vec<_>>(),
            "unscheduled": unscheduled,
            "to_delete": to_delete,
            "deleted": deleted,
            "errors": failed,
        })),
        Format::Text | Format::Csv => {
            for host in &hosts {
                outln!("[{}] policy: {}", host.host, describe(host));
                for v in &host.verdicts {
                    outln!(
                        "  {:<6} {}  {}  {}",
                        match (v.keep, dry_run) {
                            (true, _) => "keep",
                            (false, true) => "DELETE",
                            (false, false) => "deleted",
                        },
                        v.archive.short_id(),
                        v.archive.name,
                        if v.keep {
                            v.reasons.join(", ")
                        } else {
                            "no rule keeps it".into()
                        }
                    );
                }
            }
            for host in &unscheduled {
                outln!("[{host}] no schedule covers it: its archives are kept");
            }
            for e in &failed {
                errln!("ferry archives prune: {e}");
            }
            if dry_run {
                outln!(
                    "{to_delete} archive(s) would be deleted; nothing was changed (run without --dry-run to delete them)"
                );
            } else {
                outln!("{deleted} archive(s) deleted");
            }
        }
    }
    Ok(if failed.is_empty() {
        exit::OK
    } else {
        exit::FAILED
    })
}

fn describe(host: &HostPrune) -> String {
    host.policies
        .iter()
        .map(|p| p.describe())
        .collect::<Vec<_>>()
        .join(" | ")
}

fn host_json(host: &HostPrune) -> serde_json::Value {
    json!({
        "host": host.host,
        "policies": host.policies,
        "archives": host.verdicts.iter().map(|v| json!({
            "id": v.archive.short_id(), "catalog_number": v.archive.id, "name": v.archive.name,
            "created_at": v.archive.created_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            "keep": v.keep, "reasons": v.reasons,
        })).collect::<Vec<_>>(),
    })
}

pub async fn pin(
    config: &Config,
    catalog: &Catalog,
    id: &str,
    pinned: bool,
) -> Result<i32, String> {
    let a = catalog.resolve_live(id).await?;
    let changed = catalog
        .set_pinned(a.id, pinned)
        .await
        .map_err(|e| e.to_string())?;
    let word = if pinned { "pinned" } else { "unpinned" };
    if changed {
        let now = OffsetDateTime::now_utc();
        let event = Event {
            archive: a.ledger_json(),
            flags: json!({"pinned": pinned}),
            started: now,
            finished: now,
            outcome: "succeeded".into(),
            error: None,
            tasks: vec![TaskRecord {
                name: if pinned { "pin" } else { "unpin" }.into(),
                started: now,
                finished: now,
                outcome: "ok".into(),
                detail: format!("archive {word}"),
            }],
            ..Operation::standalone(
                OperationKind::ArchivePin,
                Operator::current(config),
                &a.host,
                now,
            )
        };
        if let Err(e) = Operation::entry(catalog, &event).await {
            errln!("ferry archives: writing the audit ledger: {e}");
        }
        outln!("[{}] {} {} {word}", a.host, a.short_id(), a.name);
    } else {
        outln!(
            "[{}] {} {} was already {word}",
            a.host,
            a.short_id(),
            a.name
        );
    }
    Ok(exit::OK)
}

pub async fn delete(
    config: &Config,
    store: &Store,
    catalog: &Catalog,
    id: &str,
    force: bool,
) -> Result<i32, String> {
    let a = catalog.resolve_live(id).await?;
    if a.pinned {
        return Err(format!(
            "[{}] {} is pinned; nothing was deleted (`ferry archives unpin {}` first)",
            a.host,
            a.short_id(),
            a.short_id()
        ));
    }
    let in_use: BTreeMap<i64, String> = catalog
        .archives_in_use()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .collect();
    if let Some(run) = in_use.get(&a.id) {
        return Err(format!(
            "[{}] {} is in use by {run}; nothing was deleted (wait for it to end: `ferry history {}`)",
            a.host,
            a.short_id(),
            a.host
        ));
    }
    let archives = catalog.archives().await.map_err(|e| e.to_string())?;
    let here = store.id();
    let newest = |proven: fn(&crate::catalog::ArchiveRecord) -> bool| {
        archives
            .iter()
            .find(|x| x.host == a.host && x.standing(&here).is_good() && proven(x))
            .map(|x| x.id)
    };
    let protection = if newest(|_| true) == Some(a.id) {
        Some("newest verified")
    } else if newest(|x| x.drilled_at.is_some()) == Some(a.id) {
        Some("newest drilled")
    } else {
        None
    };
    if let Some(what) = protection
        && !force
    {
        return Err(format!(
            "[{}] {} is the host's {what} archive; nothing was deleted (add --force to delete it anyway)",
            a.host,
            a.short_id()
        ));
    }
    let deleted = crate::ops::prune::delete(
        catalog,
        store,
        &Operator::current(config),
        &a,
        "deleted by hand",
        json!({"command": "archives delete", "force": force}),
    )
    .await?;
    if deleted {
        outln!("[{}] {} {} deleted", a.host, a.short_id(), a.name);
    } else {
        outln!(
            "[{}] {} {} was already deleted",
            a.host,
            a.short_id(),
            a.name
        );
    }
    Ok(exit::OK)
}
