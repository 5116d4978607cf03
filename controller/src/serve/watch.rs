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
    }

    async fn watch_rpo(&self, now: OffsetDateTime) -> Result<(), crate::catalog::CatalogError> {
        let settings = self.settings();
        let catalog = self.catalog();
        catalog.track_hosts(&settings.hosts()).await?;
        let urls = settings.alert_urls();
        for host in crate::status::gather(&catalog, &settings.plans, now).await? {
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
