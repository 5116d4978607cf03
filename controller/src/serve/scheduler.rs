//! Slots into the catalog, due slots claimed, and one scheduled backup run end to end: the backup,
//! its record, a retry with backoff within the RPO, the failure budget, and retention afterwards.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use time::OffsetDateTime;

use super::{Service, Settings, lock};
use crate::catalog::serve::DueRun;
use crate::catalog::{Catalog, CatalogError};
use crate::cli::Compression;
use crate::ops::Operation;
use crate::ops::backup::Backups;
use crate::ops::drill::{Drills, limit};
use crate::report::Outcome;
use crate::schedule::{HostPlan, drill_slots, jitter, slot_owner};
use crate::types::OperationKind;

/// A due slot waits this long for its preferred replica before any replica takes it.
const PREFERRED_GRACE: Duration = Duration::from_secs(5);
/// A host busy with another run is tried again after this.
const BUSY_DELAY: Duration = Duration::from_secs(5);
/// Attempts of one slot, at most.
const MAX_ATTEMPTS: i32 = 6;

impl Service {
    /// Records each (schedule, host)'s latest cron slot once it comes; a slot that an archive
    /// newer than it already covers is recorded satisfied and does not run.
    pub(super) async fn plan_slots(&self, now: OffsetDateTime) -> Result<(), CatalogError> {
        let settings = self.settings();
        let catalog = self.catalog();
        if lock(&self.planned).is_empty() {
            let known = catalog.latest_slots().await?;
            lock(&self.planned).extend(known);
        }
        let mut new = Vec::new();
        {
            let planned = lock(&self.planned);
            for plan in &settings.plans {
                let drill = plan
                    .drill
                    .as_ref()
                    .map(|(d, period)| (d, *period, drill_slots(&plan.schedule)));
                let backup = Some((&plan.cron, plan.period, plan.schedule.clone()));
                for (cron, period, recorded) in [backup, drill].into_iter().flatten() {
                    let Some(slot) = cron.latest_at_or_before(now) else {
                        continue;
                    };
                    let key = (recorded.clone(), plan.host.clone());
                    if planned.get(&key).is_some_and(|p| *p >= slot) {
                        continue;
                    }
                    new.push((plan, recorded, slot, period));
                }
            }
        }
        if new.is_empty() {
            return Ok(());
        }
        let newest = catalog.newest_good_archives(&settings.store.id()).await?;
        let replicas = lock(&self.replicas).clone();
        for (plan, recorded, slot, period) in new {
            let due = slot + jitter(&recorded, &plan.host, period);
            // A backup slot an archive newer than it covers need not run; a drill always runs.
            let satisfied = !slot_owner(&recorded).1
                && newest
                    .get(&plan.agent_name)
                    .is_some_and(|a| a.created_at >= slot);
            let preferred = preferred_replica(&replicas, &recorded, &plan.host);
            if catalog
                .plan_slot(
                    &recorded,
                    &plan.host,
                    slot,
                    due,
                    preferred.as_deref(),
                    satisfied,
                )
                .await?
            {
                tracing::debug!(schedule = %recorded, host = %plan.host, %slot, satisfied, "slot planned");
            }
            lock(&self.planned).insert((recorded, plan.host.clone()), slot);
        }
        Ok(())
    }

    /// Claims the due slots this replica may take and starts each on its own task.
    pub(super) async fn claim_due(self: &Arc<Self>) -> Result<(), CatalogError> {
        let settings = self.settings();
        let catalog = self.catalog();
        let due = catalog.due_runs(200, PREFERRED_GRACE).await?;
        for run in due {
            if self.stopping() {
                break;
            }
            let (owner, drill) = slot_owner(&run.schedule);
            let (Some(plan), Some(schedule)) = (
                settings
                    .plan(owner, &run.host)
                    .filter(|p| !drill || p.drill.is_some()),
                settings.schedule(owner),
            ) else {
                // The schedule or the host left the configuration since the slot was planned.
                if catalog.claim_run(run.id, &self.replica).await?.is_some() {
                    catalog
                        .run_finished(
                            run.id,
                            None,
                            Some((
                                "plan",
                                "the schedule no longer covers this host (configuration reloaded)",
                            )),
                            None,
                        )
                        .await?;
                }
                continue;
            };
            if !run.late
                && run.preferred.as_deref().is_some_and(|p| {
                    p != self.replica && lock(&self.replicas).iter().any(|r| r == p)
                })
            {
                continue;
            }
            let forks = schedule.forks.unwrap_or(settings.config.forks).max(1);
            {
                let running = lock(&self.running);
                if running.contains_key(&run.host)
                    || running.values().filter(|s| **s == run.schedule).count() >= forks
                {
                    continue;
                }
            }
            if let Some(serial) = &schedule.serial {
                let total = settings
                    .plans
                    .iter()
                    .filter(|p| p.schedule == owner)
                    .count();
                let batch = serial.batches(total).first().copied().unwrap_or(total) as i64;
                if catalog.running_in_slot(&run.schedule, run.slot).await? >= batch {
                    continue;
                }
            }
            if !catalog.try_lock_host(&run.host).await? {
                continue; // another replica is backing it up
            }
            let Some(attempt) = catalog.claim_run(run.id, &self.replica).await? else {
                catalog.unlock_host(&run.host).await?;
                continue;
            };
            lock(&self.running).insert(run.host.clone(), run.schedule.clone());
            let service = Arc::clone(self);
            let plan = plan.clone();
            let settings = Arc::clone(&settings);
            let catalog = Arc::clone(&catalog);
            self.tasks.lock().await.spawn(async move {
                if drill {
                    service.run_drill(&settings, &catalog, &run).await;
                } else {
                    service
                        .run_slot(&settings, &catalog, &run, &plan, attempt)
                        .await;
                }
                lock(&service.running).remove(&run.host);
                if let Err(e) = catalog.unlock_host(&run.host).await {
                    tracing::warn!(host = %run.host, "releasing the host lock: {e}");
                }
            });
        }
        // Reap finished tasks so the set does not grow.
        let mut tasks = self.tasks.lock().await;
        while tasks.try_join_next().is_some() {}
        Ok(())
    }

    /// Opens the run of a claimed slot and ties the slot to it; a catalog that cannot open the
    /// run puts the slot back for later.
    async fn open_slot<'c>(
        &self,
        catalog: &'c Catalog,
        settings: &Settings,
        run: &DueRun,
        kind: OperationKind,
        flags: &serde_json::Value,
    ) -> Option<Operation<'c>> {
        match Operation::open(catalog, kind, &run.host, &settings.operator, flags).await {
            Ok(operation) => {
                if let Err(e) = catalog.run_started(run.id, operation.run_id()).await {
                    tracing::warn!(host = %run.host, "recording the slot's {kind} run: {e}");
                }
                Some(operation)
            }
            Err(e) => {
                tracing::error!(host = %run.host, "recording the scheduled {kind}: {e}");
                let _ = catalog.postpone_run(run.id, BUSY_DELAY).await;
                None
            }
        }
    }

    /// One attempt of one slot on one host.
    async fn run_slot(
        &self,
        settings: &Settings,
        catalog: &Catalog,
        run: &DueRun,
        plan: &HostPlan,
        attempt: i32,
    ) {
        let Some(target) = settings.targets.get(&run.host) else {
            return;
        };
        let schedule = settings.schedule(&run.schedule);
        let compression = schedule
            .and_then(|s| s.compression)
            .unwrap_or(Compression::Gzip);
        let slot = run
            .slot
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let flags = json!({
            "schedule": run.schedule, "slot": slot, "attempt": attempt, "replica": self.replica,
            "compression": compression.name(),
        });
        self.counters.started.fetch_add(1, Ordering::Relaxed);
        let Some(operation) = self
            .open_slot(catalog, settings, run, OperationKind::Backup, &flags)
            .await
        else {
            return;
        };
        let run_id = operation.run_id();
        tracing::info!(schedule = %run.schedule, host = %run.host, attempt, run_id, "backup started");
        let backups = Backups {
            operation: &operation,
            dialer: &settings.dialer,
            store: &settings.store,
            compression,
            // Checked when the configuration was loaded.
            recipients: crate::keys::recipients(&settings.config)
                .ok()
                .flatten()
                .map(|r| r.ids()),
        };
        let progress = crate::progress::Progress::new(crate::report::Format::Json);
        let bar = progress.host(&target.name);
        let limit = Duration::from_secs(settings.config.timeout_seconds);
        let outcome = backups.backup_within(target, &bar, limit).await;
        let ok = matches!(outcome, Outcome::Ok { .. });
        let busy = matches!(&outcome, Outcome::Failed { task, .. } if task == "backup/busy");
        let ended = match (ok, busy) {
            (true, _) => "succeeded",
            (false, true) => "refused",
            (false, false) => "failed",
        };
        operation.finish(ended).await;
        for problem in operation.take_problems() {
            tracing::warn!(host = %run.host, "backup: {problem}");
        }
        match &outcome {
            Outcome::Ok { summary, data, .. } => {
                self.counters.succeeded.fetch_add(1, Ordering::Relaxed);
                tracing::info!(schedule = %run.schedule, host = %run.host, "backup succeeded: {summary}");
                let archive = data["catalog_number"].as_i64();
                let _ = catalog.run_finished(run.id, archive, None, None).await;
                let _ = catalog.set_reachable(&run.host, true, None).await;
                self.apply_retention(settings, catalog, plan).await;
            }
            failed => {
                let (phase, cause) = match failed {
                    Outcome::Unreachable(e) => ("connect".to_string(), e.to_string()),
                    Outcome::Failed { task, cause } => (
                        task.strip_prefix("backup/").unwrap_or(task).to_string(),
                        cause.clone(),
                    ),
                    other => ("backup".to_string(), format!("{other:?}")),
                };
                if let Outcome::Unreachable(e) = failed {
                    let _ = catalog
                        .set_reachable(&run.host, false, Some(&e.to_string()))
                        .await;
                }
                let retry = retry_delay(attempt, plan, OffsetDateTime::now_utc());
                // Busy with another operation (a restore, a drill, a publication, a gone
                // replica's backup winding down) is not a failure: the slot goes back unspent,
                // due again soon, without an alert, for as long as the slot may still run.
                if phase == "busy" && retry.is_some() {
                    tracing::info!(
                        schedule = %run.schedule, host = %run.host, attempt,
                        "host busy; trying again in {}s: {cause}", BUSY_DELAY.as_secs()
                    );
                    self.counters.busy.fetch_add(1, Ordering::Relaxed);
                    let _ = catalog.postpone_run(run.id, BUSY_DELAY).await;
                    return;
                }
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    schedule = %run.schedule, host = %run.host, attempt, phase = %phase,
                    retry_in_seconds = retry.map(|d| d.as_secs()),
                    "backup failed: {cause}"
                );
                let _ = catalog
                    .run_finished(run.id, None, Some((&phase, &cause)), retry)
                    .await;
                if attempt == 1 {
                    let payload = json!({
                        "kind": "backup-failed", "host": run.host, "schedule": run.schedule,
                        "slot": slot, "attempt": attempt, "phase": phase, "error": cause,
                        "retry_in_seconds": retry.map(|d| d.as_secs()),
                        "run_id": run_id, "replica": self.replica,
                        "at": now_rfc3339(),
                        "summary": format!("ferry: backup of {} failed during {phase}: {cause}", run.host),
                    });
                    if let Err(e) = catalog
                        .enqueue_alert("backup-failed", &run.host, &payload, &settings.alert_urls())
                        .await
                    {
                        tracing::error!(host = %run.host, "queueing the backup-failed alert: {e}");
                    }
                }
                if retry.is_none() {
                    self.spend_budget(catalog, run, schedule).await;
                }
            }
        }
    }

    /// One scheduled drill of a host's newest archive, on the host itself: recorded like `ferry
    /// drill`'s, with a `drill-failed` alert when the archive does not restore.
    async fn run_drill(&self, settings: &Settings, catalog: &Catalog, run: &DueRun) {
        let Some(target) = settings.targets.get(&run.host) else {
            return;
        };
        let slot = run
            .slot
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let flags = json!({"schedule": run.schedule, "slot": slot, "replica": self.replica});
        let Some(operation) = self
            .open_slot(catalog, settings, run, OperationKind::Drill, &flags)
            .await
        else {
            return;
        };
        let run_id = operation.run_id();
        let warn = |line: &str| tracing::warn!(host = %run.host, "{line}");
        let drills = Drills {
            operation: &operation,
            store: &settings.store,
            dialer: &settings.dialer,
            // Checked when the configuration was loaded.
            identities: crate::keys::identities(&settings.config).ok().flatten(),
            archive: None,
            sandbox: None,
            limit: limit(None, Duration::from_secs(settings.config.timeout_seconds)),
            warn: &warn,
        };
        let outcome = drills.drill_within(target).await;
        let ok = matches!(outcome, Outcome::Ok { .. });
        operation
            .finish(if ok { "succeeded" } else { "failed" })
            .await;
        for problem in operation.take_problems() {
            tracing::warn!(host = %run.host, "drill: {problem}");
        }
        let failure = match &outcome {
            Outcome::Ok { summary, .. } => {
                tracing::info!(schedule = %run.schedule, host = %run.host, "drill passed: {summary}");
                None
            }
            Outcome::Failed { task, cause } => Some((task.clone(), cause.clone())),
            Outcome::Unreachable(e) => Some(("drill/connect".into(), e.to_string())),
            Outcome::Skipped { reason } => Some(("drill".into(), reason.clone())),
        };
        let _ = catalog
            .run_finished(
                run.id,
                None,
                failure.as_ref().map(|(t, c)| (t.as_str(), c.as_str())),
                None,
            )
            .await;
        if let Some((task, cause)) = failure {
            tracing::warn!(schedule = %run.schedule, host = %run.host, "drill failed: {cause}");
            let payload = json!({
                "kind": "drill-failed", "host": run.host, "schedule": run.schedule, "slot": slot,
                "phase": task, "error": cause, "run_id": run_id, "replica": self.replica,
                "at": now_rfc3339(),
                "summary": format!("ferry: drill of {}'s newest archive failed: {cause}", run.host),
            });
            if let Err(e) = catalog
                .enqueue_alert("drill-failed", &run.host, &payload, &settings.alert_urls())
                .await
            {
                tracing::error!(host = %run.host, "queueing the drill-failed alert: {e}");
            }
        }
    }

    /// Once more than the schedule's max_fail_percentage of a slot's hosts failed, the hosts of
    /// the slot not started yet are skipped.
    async fn spend_budget(
        &self,
        catalog: &Catalog,
        run: &DueRun,
        schedule: Option<&crate::schedule::Schedule>,
    ) {
        let Some(pct) = schedule.and_then(|s| s.max_fail_percentage) else {
            return;
        };
        let Ok((total, failed)) = catalog.slot_failures(&run.schedule, run.slot).await else {
            return;
        };
        if total > 0 && failed * 100 > i64::from(pct) * total {
            let why = format!(
                "{failed} of {total} hosts of this run failed, more than max_fail_percentage {pct}%"
            );
            if let Ok(n) = catalog
                .skip_rest_of_slot(&run.schedule, run.slot, &why)
                .await
                && n > 0
            {
                tracing::warn!(schedule = %run.schedule, skipped = n, "{why}; the rest of the run is skipped");
            }
        }
    }

    /// Retention for one host after its run, under every policy that covers it.
    async fn apply_retention(&self, settings: &Settings, catalog: &Catalog, plan: &HostPlan) {
        let policies: Vec<_> = settings
            .plans
            .iter()
            .filter(|p| p.agent_name == plan.agent_name)
            .map(|p| p.retention.clone())
            .collect();
        let map = BTreeMap::from([(plan.agent_name.clone(), policies)]);
        let hosts = match crate::ops::prune::plan_checked(catalog, &settings.store, &map).await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(host = %plan.host, "retention: {e}");
                return;
            }
        };
        for host in &hosts {
            for v in host.to_delete() {
                let reason = format!(
                    "retention of schedule {} ({})",
                    plan.schedule,
                    plan.retention.describe()
                );
                match crate::ops::prune::delete(
                    catalog,
                    &settings.store,
                    &settings.operator,
                    &v.archive,
                    &reason,
                    json!({"serve": self.replica, "schedule": plan.schedule}),
                )
                .await
                {
                    Ok(true) => {
                        self.counters.deleted.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(host = %plan.host, archive = %v.archive.short_id(), name = %v.archive.name, "archive pruned");
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(host = %plan.host, "retention: {e}"),
                }
            }
        }
    }
}

/// When a failed attempt is tried again: 10 s, doubling, at most a quarter of the RPO (and ten
/// minutes), and only before the host's next slot (which runs anyway).
fn retry_delay(attempt: i32, plan: &HostPlan, now: OffsetDateTime) -> Option<Duration> {
    if attempt >= MAX_ATTEMPTS {
        return None;
    }
    let doubling = Duration::from_secs(10) * 2u32.saturating_pow((attempt - 1).max(0) as u32);
    let delay = doubling
        .min(plan.rpo / 4)
        .min(Duration::from_secs(600))
        .max(Duration::from_secs(5));
    let next_slot = plan.cron.next_after(now)?;
    (now + delay < next_slot).then_some(delay)
}

/// The replica that runs a host's slots by preference, so replicas split the fleet; any replica
/// takes a slot its preferred one leaves waiting.
fn preferred_replica(replicas: &[String], schedule: &str, host: &str) -> Option<String> {
    if replicas.len() < 2 {
        return None;
    }
    let mut sorted = replicas.to_vec();
    sorted.sort();
    let index =
        jitter(schedule, host, Duration::from_secs(1_000_000)).as_millis() as usize % sorted.len();
    sorted.get(index).cloned()
}

pub(super) fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
