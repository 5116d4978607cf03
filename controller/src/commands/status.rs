//! `ferry status [PATTERN]`: each scheduled host against its RPO. Exit 2 when one is breached, so
//! monitoring can run it.

use serde_json::json;
use time::OffsetDateTime;

use crate::cli::GlobalArgs;
use crate::config::Config;
use crate::report::{Format, exit};
use crate::schedule::format_span;
use crate::schedule::rpo::RpoState;
use crate::status::HostStatus;

pub async fn run(config: &Config, global: &GlobalArgs, pattern: Option<&str>) -> i32 {
    let (inventory, plan) = match crate::selection::schedule_plans(config, global) {
        Ok(p) => p,
        Err(stop) => return stop.say(),
    };
    let selected = match pattern {
        None => None,
        Some(pattern) => match crate::selection::select(config, global, &inventory, pattern) {
            Ok(hosts) => Some(hosts),
            Err(stop) => return stop.say(),
        },
    };
    let plans: Vec<_> = plan
        .plans
        .into_iter()
        .filter(|p| selected.as_ref().is_none_or(|s| s.contains(&p.host)))
        .collect();
    let unscheduled: Vec<String> = selected
        .iter()
        .flatten()
        .filter(|h| !plans.iter().any(|p| &p.host == *h))
        .cloned()
        .collect();
    let catalog = match crate::ops::catalog(config).await {
        Ok(c) => c,
        Err(e) => {
            errln!("ferry status: {e}");
            return exit::ERROR;
        }
    };
    let now = OffsetDateTime::now_utc();
    let gathered = async {
        Ok::<_, crate::catalog::CatalogError>((
            crate::status::gather(&catalog, &config.store.id(), &plans, now).await?,
            catalog.replicas().await?,
            catalog.undelivered_alerts().await?,
        ))
    }
    .await;
    let (mut hosts, replicas, alerts) = match gathered {
        Ok(all) => all,
        Err(e) => {
            errln!("ferry status: {e}");
            return exit::ERROR;
        }
    };
    // With no serve running, nothing runs next: no time is promised.
    if !replicas.iter().any(|r| r.live) {
        for h in &mut hosts {
            h.next_run = None;
        }
    }
    let count = |s: RpoState| hosts.iter().filter(|h| h.state == s).count();
    let breached = count(RpoState::Breached);
    let problems = hosts.iter().filter(|h| h.archive_problem.is_some()).count();
    match global.output {
        Format::Json => crate::output::json(&json!({
            "hosts": hosts,
            "unscheduled": unscheduled,
            "summary": {"ok": count(RpoState::Ok), "at_risk": count(RpoState::AtRisk), "breached": breached,
                        "archive_problems": problems},
            "replicas": replicas,
            "undelivered_alerts": alerts,
        })),
        Format::Text | Format::Csv => {
            print_table(&hosts, now);
            for host in &unscheduled {
                outln!("{host}: no schedule covers it");
            }
            outln!(
                "\n{} ok, {} at-risk, {} breached",
                count(RpoState::Ok),
                count(RpoState::AtRisk),
                breached
            );
            let live: Vec<String> = replicas
                .iter()
                .filter(|r| r.live)
                .map(|r| format!("{}{}", r.id, if r.leader { " (leader)" } else { "" }))
                .collect();
            if live.is_empty() {
                outln!("ferry serve: no replica running");
            } else {
                outln!("ferry serve: {}", live.join(", "));
            }
            for a in &alerts {
                outln!(
                    "[WARNING] alert {} ({} of {}) to {} {}: {} attempt(s), last error: {}",
                    a.id,
                    a.kind,
                    a.host,
                    a.url,
                    if a.state == "undeliverable" {
                        "was NOT delivered"
                    } else {
                        "is still being retried"
                    },
                    a.attempts,
                    a.last_error.as_deref().unwrap_or("-")
                );
            }
        }
    }
    // A breach, or a newest archive that went missing or bad: monitoring must see it.
    if breached > 0 || problems > 0 {
        exit::FAILED
    } else {
        exit::OK
    }
}

fn print_table(hosts: &[HostStatus], now: OffsetDateTime) {
    outln!(
        "{:<16} {:<9} {:<21} {:>8} {:>8} {:>10}  LAST FAILURE",
        "HOST",
        "STATE",
        "LAST GOOD BACKUP",
        "AGE",
        "RPO",
        "NEXT RUN"
    );
    for h in hosts {
        let rfc = |t: OffsetDateTime| {
            t.replace_nanosecond(0)
                .unwrap_or(t)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        };
        let next = h.next_run.map_or("no serve".to_string(), |t| {
            if t <= now {
                "due".into()
            } else {
                format!("in {}", format_span((t - now).unsigned_abs()))
            }
        });
        let failure = h.last_failure.as_ref().map_or("-".to_string(), |f| {
            format!(
                "{} {} {}: {}",
                rfc(f.at),
                f.outcome,
                f.phase.as_deref().unwrap_or("-"),
                f.error.as_deref().unwrap_or("-")
            )
        });
        outln!(
            "{:<16} {:<9} {:<21} {:>8} {:>8} {:>10}  {failure}",
            h.host,
            h.state.name(),
            h.last_success
                .as_ref()
                .map_or("never".to_string(), |a| rfc(a.created_at)),
            h.age_seconds.map_or("-".to_string(), |s| format_span(
                std::time::Duration::from_secs(s)
            )),
            format_span(std::time::Duration::from_secs(h.rpo_seconds)),
            next
        );
        if let Some(p) = &h.archive_problem {
            let counted = if h.last_success.is_some() {
                "the age above is of the newest good one"
            } else {
                "no archive of it is good in this store"
            };
            outln!(
                "  ! its newest archive {} {} is {}: not counted; {counted} (next: `ferry archives show {}`, then `ferry backup {}`)",
                p.id,
                p.name,
                p.state,
                p.id,
                h.host
            );
        }
    }
}
