//! Drills: each selected host's archive proven in the store, streamed to the agent of the host or
//! a sandbox, loaded into a scratch database there and checked against its manifest; recorded as a
//! host result, a drill record and a ledger entry. `ferry drill` and `ferry serve` both run it.

use std::time::Duration;

use ferry_proto::v1::{DrillChunk, DrillReply};
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::Operation;
use crate::catalog::evidence::Source;
use crate::catalog::ledger::TaskRecord;
use crate::catalog::{ArchiveRecord, DrillRecord, HostRecord};
use crate::dial::Dialer;
use crate::inventory::Target;
use crate::store::Store;
use crate::types::Outcome;

/// One run's drills: `ferry drill` and `ferry serve`'s drill slots both use it.
pub struct Drills<'a> {
    pub operation: &'a Operation<'a>,
    pub store: &'a Store,
    pub dialer: &'a Dialer,
    pub identities: Option<ferry_archive::Identities>,
    /// `--archive`: None drills each host's newest.
    pub archive: Option<&'a str>,
    pub sandbox: Option<Target>,
    pub limit: Duration,
    /// Where a drill's warnings go (an archive passed over): printed by the command, logged by serve.
    pub warn: &'a (dyn Fn(&str) + Sync),
}

/// A drill loads a whole database: it takes about as long as a restore, far more than the fleet
/// commands' default `--timeout`. Bounded by `--timeout` when given, else by at least four hours.
pub const DRILL_FLOOR: Duration = Duration::from_secs(4 * 3600);

pub fn limit(explicit: Option<u64>, default: Duration) -> Duration {
    explicit.map_or(default.max(DRILL_FLOOR), Duration::from_secs)
}

/// How one drill ended, before it is recorded.
struct Ended {
    outcome: Outcome,
    archive: Option<ArchiveRecord>,
    reply: Option<DrillReply>,
    ran_on: String,
}

impl Drills<'_> {
    /// Drills `target`'s archive within the time limit and records it, whatever the outcome.
    pub async fn drill_within(&self, target: &Target) -> Outcome {
        let started = OffsetDateTime::now_utc();
        self.operation.phase(&target.name, "drill");
        let ended = match tokio::time::timeout(self.limit, self.drill(target)).await {
            Ok(ended) => ended,
            Err(_) => Ended {
                outcome: Outcome::Failed {
                    task: "drill/timeout".into(),
                    cause: format!(
                        "no result within {}s (--timeout); the agent drops its scratch database when the drill ends",
                        self.limit.as_secs()
                    ),
                },
                archive: None,
                reply: None,
                ran_on: self.ran_on(target).name.clone(),
            },
        };
        self.record(target, &ended, started).await;
        ended.outcome
    }

    fn ran_on<'t>(&'t self, target: &'t Target) -> &'t Target {
        self.sandbox.as_ref().unwrap_or(target)
    }

    async fn drill(&self, target: &Target) -> Ended {
        let on = self.ran_on(target);
        let failed = |task: &str, cause: String, archive: Option<ArchiveRecord>| Ended {
            outcome: Outcome::Failed {
                task: format!("drill/{task}"),
                cause,
            },
            archive,
            reply: None,
            ran_on: on.name.clone(),
        };
        let mut said = Vec::new();
        let mut archive = match self.choose(target, &mut said).await {
            Ok(a) => a,
            Err(e) => return failed("archive", e, None),
        };
        let conn = match self.dialer.connect(on).await {
            Ok(conn) => conn,
            Err(e) => {
                return Ended {
                    outcome: Outcome::Unreachable(e),
                    archive: Some(archive),
                    reply: None,
                    ran_on: on.name.clone(),
                };
            }
        };
        // The stored bytes are proven against the catalog (and the sidecar) before a byte reaches
        // the agent, exactly as for a restore; what the proof finds is the archive's evidence. The
        // newest good archive found bad now gives way to the next good one.
        let proof = loop {
            match crate::proof::prove(
                self.store,
                self.operation.catalog(),
                &archive,
                self.identities.as_ref(),
                Source::Drill,
                crate::proof::Options::default(),
            )
            .await
            {
                Ok(p) => break p,
                Err(u) if self.archive.is_none() && u.finding.is_some() => {
                    (self.warn)(&format!(
                        "[WARNING] [{}] skipped archive {} ({}): {}; trying the next good archive",
                        target.name,
                        archive.short_id(),
                        archive.name,
                        u.cause
                    ));
                    said.push(archive.id);
                    archive = match self.choose(target, &mut said).await {
                        Ok(a) if said.contains(&a.id) => {
                            let cause = format!(
                                "archive {} was found unusable but the catalog did not record it; run `ferry archives verify {}`",
                                a.short_id(),
                                a.short_id()
                            );
                            return failed("store", cause, Some(a));
                        }
                        Ok(a) => a,
                        Err(e) => return failed("archive", e, Some(archive)),
                    };
                }
                Err(u) => {
                    let id = archive.short_id().to_string();
                    let cause = match &u.finding {
                        Some(_) => format!(
                            "{}; it is marked so in the catalog and the drill was not started. Drill the newest good archive (`ferry drill {}`), or put a good copy back and run `ferry archives verify {id}`",
                            u.cause, target.name
                        ),
                        None => u.cause.clone(),
                    };
                    return failed("store", cause, Some(archive));
                }
            }
        };
        let opened = match proof.open(self.store, &archive).await {
            Ok(o) => o,
            Err(e) => return failed("store", e, Some(archive)),
        };
        let (expected_sha256, expected_size) = match &archive.sealed {
            Some(s) => (s.plain_sha256.clone(), s.plain_size as u64),
            None => (archive.sha256.clone(), archive.size as u64),
        };
        let first = DrillChunk {
            drill_id: format!("d{}-{}", self.operation.run_id(), archive.short_id()),
            expected_sha256,
            expected_size,
            database_included: archive.database_included,
            data: Default::default(),
        };
        let (rx, reader) = crate::proof::send_archive(opened, first, |data| DrillChunk {
            data,
            ..Default::default()
        });
        let reply = conn.client.clone().drill(rx).await;
        let location = self.store.location(&archive.host, &archive.object());
        match reader.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return failed("store", format!("reading {location}: {e}"), Some(archive));
            }
            Err(e) => return failed("store", e.to_string(), Some(archive)),
        }
        let reply = match reply {
            Ok(reply) => reply.into_inner(),
            Err(status) => {
                return match conn.transport_error(&status) {
                    Some(e) => Ended {
                        outcome: Outcome::Unreachable(e),
                        archive: Some(archive),
                        reply: None,
                        ran_on: on.name.clone(),
                    },
                    None => failed(
                        "refused",
                        format!("{} refused the drill: {}", on.name, status.message()),
                        Some(archive),
                    ),
                };
            }
        };
        let data = reply_json(&archive, on, &reply);
        let outcome = if reply.environment {
            // The sandbox, not the archive: nothing is recorded against the archive.
            Outcome::Failed {
                task: "drill/environment".into(),
                cause: format!(
                    "the drill could not run on {}: {}; this says nothing about archive {} (its state is unchanged); fix the host and drill again",
                    on.name,
                    reply.failures.join("; "),
                    archive.short_id()
                ),
            }
        } else if reply.passed {
            Outcome::Ok {
                changed: false,
                summary: summary(&archive, on, target, &reply),
                data,
            }
        } else {
            let phase = reply
                .phases
                .iter()
                .find(|p| !p.ok)
                .map_or("checks", |p| p.name.as_str());
            Outcome::Failed {
                task: format!("drill/{phase}"),
                cause: format!(
                    "archive {} does not restore: {}",
                    archive.short_id(),
                    reply.failures.join("; ")
                ),
            }
        };
        Ended {
            outcome,
            archive: Some(archive),
            reply: Some(reply),
            ran_on: on.name.clone(),
        }
    }

    /// The archive to drill: `--archive ID` (it must be this host's) or the host's newest archive
    /// that is good in the store (the newer ones passed over are named, once: `said`).
    async fn choose(&self, target: &Target, said: &mut Vec<i64>) -> Result<ArchiveRecord, String> {
        let host = &target.agent_name;
        let here = self.store.id();
        match self.archive {
            None | Some("latest") => {
                let archives = self
                    .operation
                    .catalog()
                    .archives()
                    .await
                    .map_err(|e| e.to_string())?;
                let (newest, skipped) =
                    crate::catalog::evidence::newest_good(&archives, host, &here);
                for s in &skipped {
                    if !said.contains(&s.archive.id) {
                        (self.warn)(&format!("[WARNING] [{}] {}", target.name, s.describe()));
                        said.push(s.archive.id);
                    }
                }
                let elsewhere = skipped
                    .iter()
                    .filter(|s| {
                        matches!(s.standing, crate::catalog::evidence::Standing::Elsewhere(_))
                    })
                    .count();
                newest.ok_or_else(|| match skipped.len() {
                    0 => format!(
                        "the catalog has no archive of {host}; run `ferry backup {}` first",
                        target.name
                    ),
                    n if n == elsewhere => format!(
                        "{host}'s archives are all in another store, none in {here}; set `store:` to that store to drill them"
                    ),
                    n => format!(
                        "{host} has no archive proven good in {here} ({n} skipped); `ferry archives list {host}` shows their states, `ferry archives verify --all` re-checks them"
                    ),
                })
            }
            Some(id) => {
                let a = self.operation.catalog().resolve_live(id).await?;
                if &a.host != host {
                    return Err(format!(
                        "archive {} is of {}, not {host}; drill it with `ferry drill {} --archive {id}`",
                        a.short_id(),
                        a.host,
                        a.host
                    ));
                }
                if let crate::catalog::evidence::Standing::Elsewhere(stores) = a.standing(&here) {
                    return Err(format!(
                        "archive {} is recorded in {}, not in the configured store {here}; set `store:` to it to drill it",
                        a.short_id(),
                        stores.join(", ")
                    ));
                }
                Ok(a)
            }
        }
    }

    /// The host result, the drill record and the ledger entry, whatever the outcome.
    async fn record(&self, target: &Target, ended: &Ended, started: OffsetDateTime) {
        let finished = OffsetDateTime::now_utc();
        let (outcome, error) = match &ended.outcome {
            Outcome::Ok { .. } => ("ok", None),
            Outcome::Failed { task, cause } => ("failed", Some(format!("{task}: {cause}"))),
            Outcome::Unreachable(e) => ("unreachable", Some(e.to_string())),
            Outcome::Skipped { reason } => ("skipped", Some(reason.clone())),
        };
        let archive_id = ended.archive.as_ref().map(|a| a.id);
        let host_record = HostRecord {
            host: target.name.clone(),
            outcome: outcome.into(),
            phase: error.as_ref().map(|_| "drill".to_string()),
            error: error.clone(),
            archive_id,
            started,
            finished,
        };
        if let (Some(archive), Some(reply)) = (&ended.archive, &ended.reply)
            && !reply.environment
        {
            self.operation
                .drill(&DrillRecord {
                    archive_id: archive.id,
                    ran_on: ended.ran_on.clone(),
                    run_id: Some(self.operation.run_id()),
                    started,
                    finished,
                    passed: reply.passed,
                    failures: reply.failures.clone(),
                    detail: reply_json(archive, self.ran_on(target), reply),
                })
                .await;
        }
        let mut event = self.operation.event(&target.name, started);
        event.archive = ended
            .archive
            .as_ref()
            .map_or(Value::Null, ArchiveRecord::ledger_json);
        event.finished = finished;
        event.outcome = match outcome {
            "ok" => "succeeded".into(),
            other => other.into(),
        };
        event.tasks = match &ended.reply {
            Some(reply) => tasks(reply, started),
            None => vec![TaskRecord {
                name: "drill".into(),
                started,
                finished,
                outcome: outcome.into(),
                detail: error.clone().unwrap_or_default(),
            }],
        };
        event.error = error;
        self.operation.host(Some(&host_record), &event).await;
    }
}

/// The agent's phases as the ledger's task timeline.
fn tasks(reply: &DrillReply, started: OffsetDateTime) -> Vec<TaskRecord> {
    let mut at = started;
    reply
        .phases
        .iter()
        .map(|p| {
            let finished = at + Duration::from_secs_f64(p.seconds.max(0.0));
            let task = TaskRecord {
                name: format!("drill/{}", p.name),
                started: at,
                finished,
                outcome: if p.ok { "ok" } else { "failed" }.into(),
                detail: p.summary.clone(),
            };
            at = finished;
            task
        })
        .collect()
}

fn summary(archive: &ArchiveRecord, on: &Target, target: &Target, reply: &DrillReply) -> String {
    let rows: u64 = reply.tables.iter().map(|t| t.expected).sum();
    let seconds: f64 = reply.phases.iter().map(|p| p.seconds).sum();
    let timings: Vec<String> = reply
        .phases
        .iter()
        .map(|p| format!("{} {:.1}s", p.name, p.seconds))
        .collect();
    let place = if on.name == target.name {
        String::new()
    } else {
        format!(" on {}", on.name)
    };
    let database = if reply.tables.is_empty() {
        reply
            .notes
            .first()
            .cloned()
            .unwrap_or_else(|| "no row counts".into())
    } else {
        format!(
            "{} tables and {rows} rows match the manifest, {} devices prepared",
            reply.tables.len(),
            reply.devices_prepared
        )
    };
    format!(
        "archive {} restores{place}: {database}; {} files parse; {seconds:.1}s ({})",
        archive.short_id(),
        reply.files_checked,
        timings.join(", ")
    )
}

fn reply_json(archive: &ArchiveRecord, on: &Target, reply: &DrillReply) -> Value {
    json!({
        "archive": archive.ledger_json(),
        "ran_on": on.name,
        "passed": reply.passed,
        "failures": reply.failures,
        "notes": reply.notes,
        "scratch_database": reply.scratch_database,
        "devices_prepared": reply.devices_prepared,
        "files_checked": reply.files_checked,
        "tables": reply.tables.iter().map(|t| json!({
            "table": t.table, "expected": t.expected,
            "restored": (t.restored >= 0).then_some(t.restored),
        })).collect::<Vec<_>>(),
        "phases": reply.phases.iter().map(|p| json!({
            "name": p.name, "seconds": p.seconds, "ok": p.ok, "summary": p.summary,
        })).collect::<Vec<_>>(),
    })
}
