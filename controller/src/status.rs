//! Where each scheduled host stands against its RPO: its newest good archive and age, its state,
//! its next run and its last failure. `ferry status`, the metrics and serve's RPO watch all read
//! this one view.

use std::collections::BTreeMap;
use std::time::Duration;

use time::OffsetDateTime;

use crate::catalog::serve::{ArchiveProblem, GoodArchive, LastFailure};
use crate::catalog::{Catalog, CatalogError};
use crate::schedule::rpo::RpoState;
use crate::schedule::{HostPlan, jitter};

#[derive(Debug, Clone, serde::Serialize)]
pub struct HostStatus {
    pub host: String,
    pub schedules: Vec<String>,
    pub rpo_seconds: u64,
    pub state: RpoState,
    /// The newest archive a restore could use (a copy proven good).
    pub last_success: Option<GoodArchive>,
    /// The host's newest archive, when it is newer than that and went missing or bad: the host is
    /// at least at risk while it lasts.
    pub archive_problem: Option<ArchiveProblem>,
    /// Its age; None when the host has none.
    pub age_seconds: Option<u64>,
    /// What the state is judged on: the age, or how long the host has been scheduled without an
    /// archive (or more than the RPO when ferry never tracked it).
    pub gap_seconds: u64,
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_run: Option<OffsetDateTime>,
    pub last_failure: Option<LastFailure>,
    pub reachable: Option<bool>,
    pub reach_error: Option<String>,
}

/// The status of every host the plans cover, in plan order.
/// Archives count where `store` (the configured store's id) holds a copy proven good: the ones a
/// restore can use.
pub async fn gather(
    catalog: &Catalog,
    store: &str,
    plans: &[HostPlan],
    now: OffsetDateTime,
) -> Result<Vec<HostStatus>, CatalogError> {
    let archives = catalog.newest_good_archives(store).await?;
    let problems = catalog.newest_archive_problems(store).await?;
    let failures = catalog.last_backup_failures().await?;
    let states = catalog.host_states().await?;
    let due = catalog.next_due().await?;
    let mut by_host: Vec<(&str, Vec<&HostPlan>)> = Vec::new();
    for plan in plans {
        match by_host.iter_mut().find(|(h, _)| *h == plan.host) {
            Some((_, list)) => list.push(plan),
            None => by_host.push((&plan.host, vec![plan])),
        }
    }
    Ok(by_host
        .into_iter()
        .map(|(host, plans)| {
            let mut s = status(host, &plans, &archives, &failures, &states, &due, now);
            let agent_name = plans.first().map_or(host, |p| p.agent_name.as_str());
            s.archive_problem = problems.get(agent_name).cloned();
            // Its newest archive gone or bad: never ok, whatever the age of the one before; and
            // with nothing good left, nothing is restorable.
            if s.archive_problem.is_some() {
                s.state = match s.last_success {
                    None => RpoState::Breached,
                    Some(_) => s.state.max(RpoState::AtRisk),
                };
            }
            s
        })
        .collect())
}

fn status(
    host: &str,
    plans: &[&HostPlan],
    archives: &BTreeMap<String, GoodArchive>,
    failures: &BTreeMap<String, LastFailure>,
    states: &BTreeMap<String, crate::catalog::serve::HostState>,
    due: &BTreeMap<String, OffsetDateTime>,
    now: OffsetDateTime,
) -> HostStatus {
    let rpo = plans.iter().map(|p| p.rpo).min().unwrap_or_default();
    let agent_name = plans.first().map_or(host, |p| p.agent_name.as_str());
    let last_success = archives.get(agent_name).cloned();
    let since = |t: OffsetDateTime| (now - t).max(time::Duration::ZERO).unsigned_abs();
    let age = last_success.as_ref().map(|a| since(a.created_at));
    let state_row = states.get(host);
    let gap = match (age, state_row) {
        (Some(age), _) => age,
        (None, Some(row)) => since(row.tracked_since),
        (None, None) => rpo + Duration::from_secs(1),
    };
    let next_cron = plans
        .iter()
        .filter_map(|p| {
            let next = p.cron.next_after(now)?;
            let jitter = jitter(&p.schedule, &p.host, p.period);
            Some(next + jitter)
        })
        .min();
    let next_run = match (due.get(host).copied(), next_cron) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    HostStatus {
        host: host.to_string(),
        schedules: plans.iter().map(|p| p.schedule.clone()).collect(),
        rpo_seconds: rpo.as_secs(),
        state: RpoState::of(gap, rpo),
        last_success,
        archive_problem: None,
        age_seconds: age.map(|a| a.as_secs()),
        gap_seconds: gap.as_secs(),
        next_run,
        last_failure: failures.get(host).cloned(),
        reachable: state_row.and_then(|s| s.reachable),
        reach_error: state_row.and_then(|s| s.reach_error.clone()),
    }
}
