//! The leader's watch: every host's RPO state, with an alert when one enters `breached` and when
//! it leaves it; and a periodic probe of every agent, for the `agent reachable` metric.

use std::sync::Arc;
use std::time::{Duration, Instant};

pub(super) type Last = std::sync::Mutex<Option<Instant>>;

use futures::StreamExt;
use serde_json::json;
use time::OffsetDateTime;

use super::Service;
use super::scheduler::now_rfc3339;
use crate::catalog::evidence::{Finding, Source, State};
use crate::schedule::format_span;
use crate::schedule::rpo::RpoState;

const WATCH_EVERY: Duration = Duration::from_secs(5);
const PROBE_EVERY: Duration = Duration::from_secs(30);
const HOUSEKEEP_EVERY: Duration = Duration::from_secs(3600);
/// How long finished slots and delivered alerts stay in the catalog.
const KEEP_FINISHED: Duration = Duration::from_secs(30 * 86_400);

/// Whether `every` has passed since `last` (and marks now if so).
fn due(last: &Last, every: Duration) -> bool {
    let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
    match *last {
        Some(t) if t.elapsed() < every => false,
        _ => {
            *last = Some(Instant::now());
            true
        }
    }
}

impl Service {
    pub(super) async fn watch(self: &Arc<Self>, now: OffsetDateTime) {
        if due(&self.last_watch, WATCH_EVERY)
            && let Err(e) = self.watch_rpo(now).await
        {
            tracing::warn!("RPO watch: {e}");
        }
        if due(&self.last_housekeeping, HOUSEKEEP_EVERY) {
            match self.catalog().housekeep(KEEP_FINISHED).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    rows = n,
                    "forgot finished slots and delivered alerts older than 30 days"
                ),
                Err(e) => tracing::warn!("housekeeping: {e}"),
            }
        }
        if due(&self.last_probe, PROBE_EVERY) {
            let service = Arc::clone(self);
            tokio::spawn(async move { service.probe().await });
        }
        let check_every = self
            .settings()
            .config
            .serve
            .as_ref()
            .map_or(Duration::from_secs(3600), |s| s.archive_check());
        if due(&self.last_archive_check, check_every)
            && !self
                .checking
                .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            let service = Arc::clone(self);
            tokio::spawn(async move {
                service.check_archives(check_every).await;
                service
                    .checking
                    .store(false, std::sync::atomic::Ordering::Release);
            });
        }
    }

    /// Keeps the evidence fresh: each scheduled host's newest good archive must still be in the
    /// store (a HEAD or stat), and a rolling share of the good archives, oldest evidence first, is
    /// hashed again within the daily byte budget. Findings are recorded; a copy that goes missing
    /// or suspect alerts once (`archive-missing`, `archive-suspect`).
    async fn check_archives(&self, period: Duration) {
        let settings = self.settings();
        let catalog = self.catalog();
        let store = &settings.store;
        let here = store.id();
        let archives = match catalog.archives().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("archive check: {e}");
                return;
            }
        };
        let mut hosts: Vec<&str> = settings
            .plans
            .iter()
            .map(|p| p.agent_name.as_str())
            .collect();
        hosts.sort();
        hosts.dedup();
        for host in hosts {
            let (Some(archive), _) = crate::catalog::evidence::newest_good(&archives, host, &here)
            else {
                continue;
            };
            let finding = match crate::proof::presence(store, &archive).await {
                // Rewritten or replaced since its proof: proven again, whole.
                Ok(Finding::Changed) => match self.reprove(store, &archive).await {
                    Some(finding) => finding,
                    None => continue,
                },
                Ok(finding) => finding,
                Err(e) => {
                    tracing::warn!(host, "archive check: {e}");
                    continue;
                }
            };
            self.found(&catalog, store, &archive, &finding).await;
        }
        // Deep verification: the budget accrues per check (a day's worth spread over the day).
        let per_day = settings
            .config
            .serve
            .as_ref()
            .map_or(10_240u64 << 20, |s| s.verify_bytes_per_day());
        if per_day == 0 {
            return;
        }
        let earned = (per_day as f64 * period.as_secs_f64() / 86_400.0) as u64;
        let mut budget = {
            let mut b = self.verify_budget.lock().unwrap_or_else(|p| p.into_inner());
            // Never more than a day's worth banked.
            *b = (*b + earned.max(1)).min(per_day);
            *b
        };
        let mut due: Vec<&crate::catalog::ArchiveRecord> = archives
            .iter()
            .filter(|a| a.standing(&here).is_good())
            .collect();
        due.sort_by_key(|a| a.copy_in(&here).and_then(|c| c.proven_at));
        for archive in due {
            if archive.size as u64 > budget {
                break;
            }
            budget -= archive.size as u64;
            if let Some(finding) = self.reprove(store, archive).await {
                self.found(&catalog, store, archive, &finding).await;
            }
        }
        *self.verify_budget.lock().unwrap_or_else(|p| p.into_inner()) = budget;
    }

    /// A copy read whole again; what it was found to be (None when the cause was not the copy's).
    /// Not recorded here, so that a good copy turning bad alerts once ([`Self::found`]).
    async fn reprove(
        &self,
        store: &crate::store::Store,
        archive: &crate::catalog::ArchiveRecord,
    ) -> Option<Finding> {
        let identities = crate::keys::identities(&self.settings().config)
            .ok()
            .flatten();
        let options = crate::proof::Options {
            ciphertext_without_key: true,
            ..Default::default()
        };
        match crate::proof::prove_unrecorded(store, archive, identities.as_ref(), options).await {
            Ok(p) => Some(Finding::Good(Some(p.version.fingerprint()))),
            Err(u) => u.finding,
        }
    }

    /// Records a housekeeping finding; a good copy that turns missing or suspect alerts once.
    async fn found(
        &self,
        catalog: &crate::catalog::Catalog,
        store: &crate::store::Store,
        archive: &crate::catalog::ArchiveRecord,
        finding: &Finding,
    ) {
        let before =
            crate::proof::record(catalog, store, archive, finding, Source::Housekeeping).await;
        let (kind, state) = match finding {
            Finding::Missing(_) => ("archive-missing", "missing"),
            Finding::Suspect(..) => ("archive-suspect", "suspect"),
            _ => return,
        };
        if before != Some(State::Good) {
            return;
        }
        let detail = match finding {
            Finding::Missing(d) | Finding::Suspect(_, d) => d.clone(),
            _ => String::new(),
        };
        let summary = format!(
            "ferry: archive {} of {} is {state} in {}: {detail}",
            archive.short_id(),
            archive.host,
            store.describe()
        );
        tracing::error!(host = %archive.host, archive = %archive.short_id(), "{summary}");
        let payload = json!({
            "kind": kind, "host": archive.host, "state": state,
            "reason": match finding { Finding::Suspect(r, _) => Some(r.as_str()), _ => None },
            "archive": archive.ledger_json(), "store": store.id(), "detail": detail,
            "replica": self.replica, "at": now_rfc3339(), "summary": summary,
        });
        let urls = self.settings().alert_urls();
        if let Err(e) = catalog
            .enqueue_alert(kind, &archive.host, &payload, &urls)
            .await
        {
            tracing::error!(host = %archive.host, "queueing the {kind} alert: {e}");
        }
    }

    async fn watch_rpo(&self, now: OffsetDateTime) -> Result<(), crate::catalog::CatalogError> {
        let settings = self.settings();
        let catalog = self.catalog();
        catalog.track_hosts(&settings.hosts()).await?;
        let urls = settings.alert_urls();
        for host in
            crate::status::gather(&catalog, &settings.store.id(), &settings.plans, now).await?
        {
            let state = host.state.name();
            let rpo = format_span(Duration::from_secs(host.rpo_seconds));
            let age = host.age_seconds.map_or("no archive".to_string(), |s| {
                format!("newest archive {} old", format_span(Duration::from_secs(s)))
            });
            let summary = match host.state {
                RpoState::Breached => {
                    format!("ferry: {} breached its RPO of {rpo} ({age})", host.host)
                }
                _ => format!(
                    "ferry: {} is within its RPO of {rpo} again ({age})",
                    host.host
                ),
            };
            let payload = json!({
                "host": host.host, "state": state, "schedules": host.schedules,
                "rpo_seconds": host.rpo_seconds, "age_seconds": host.age_seconds,
                "gap_seconds": host.gap_seconds, "last_success": host.last_success,
                "last_failure": host.last_failure, "replica": self.replica, "at": now_rfc3339(),
                "summary": summary,
            });
            if let Some(previous) = catalog
                .rpo_transition(&host.host, state, &payload, &urls)
                .await?
            {
                let from = previous.as_deref().unwrap_or("untracked");
                if host.state == RpoState::Breached {
                    tracing::error!(host = %host.host, from, "{summary}");
                } else {
                    tracing::info!(host = %host.host, from, to = state, "RPO state changed");
                }
            }
        }
        Ok(())
    }

    /// Dials every scheduled agent (a TLS handshake, no call) and records whether it answered.
    async fn probe(&self) {
        let settings = self.settings();
        let catalog = self.catalog();
        let forks = settings.config.forks.max(1);
        let dialer = &settings.dialer;
        let catalog = &catalog;
        futures::stream::iter(settings.targets.values())
            .for_each_concurrent(forks, |target| async move {
                let reached = dialer.connect(target).await;
                let error = reached.as_ref().err().map(|e| e.to_string());
                let _ = catalog
                    .set_reachable(&target.name, reached.is_ok(), error.as_deref())
                    .await;
            })
            .await;
    }
}
