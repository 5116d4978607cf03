//! The runs this process has open, so that an interruption still leaves their record: on SIGINT or
//! SIGTERM every open run is closed as `interrupted`, with a host result and a ledger entry for each
//! host still in flight; a process killed outright is found by the next ferry that connects to the
//! catalog (its runs are open and their process is gone) and recorded the same way, with what
//! this process had written down of each open run (its archive, the tasks so far) in the state
//! directory as it went.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::Value;
use time::OffsetDateTime;

use super::Operation;
use crate::catalog::ledger::TaskRecord;
use crate::catalog::{Catalog, HostRecord, Operator};

/// A run this process started and has not ended.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct OpenRun {
    pub run_id: i64,
    pub kind: String,
    pub pattern: String,
    pub operator: Operator,
    pub flags: Value,
    pub started: OffsetDateTime,
    /// Hosts being worked on.
    pub hosts: BTreeMap<String, HostRun>,
}

/// One host in flight: what an interruption's record says about it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct HostRun {
    pub started: OffsetDateTime,
    pub phase: String,
    pub archive: Value,
    /// The tasks that ended before the interruption.
    pub tasks: Vec<TaskRecord>,
}

impl HostRun {
    fn new() -> Self {
        HostRun {
            started: OffsetDateTime::now_utc(),
            phase: "start".into(),
            archive: Value::Null,
            tasks: Vec::new(),
        }
    }
}

static OPEN: Mutex<Vec<OpenRun>> = Mutex::new(Vec::new());
/// Where open runs are written down (`<state_dir>/runs`), once the catalog is connected.
static KEPT: Mutex<Option<PathBuf>> = Mutex::new(None);

fn open_runs() -> std::sync::MutexGuard<'static, Vec<OpenRun>> {
    OPEN.lock().unwrap_or_else(|p| p.into_inner())
}

fn kept_dir() -> Option<PathBuf> {
    KEPT.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Open runs are written down under `dir` from now on.
pub fn keep_in(dir: PathBuf) {
    *KEPT.lock().unwrap_or_else(|p| p.into_inner()) = Some(dir);
}

fn kept_file(dir: &Path, run_id: i64) -> PathBuf {
    dir.join(format!("{run_id}.json"))
}

/// Writes `run` down (atomically: a kill leaves the previous version or this one).
fn keep(run: &OpenRun) {
    let Some(dir) = kept_dir() else { return };
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(".{}.json.tmp", run.run_id));
        std::fs::write(
            &tmp,
            serde_json::to_vec(run).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(tmp, kept_file(&dir, run.run_id))
    };
    if let Err(e) = write() {
        tracing::warn!(run = run.run_id, error = %e, "could not write the open run down");
    }
}

/// What a process (perhaps this one) wrote down of open run `run_id`.
fn kept(run_id: i64) -> Option<OpenRun> {
    let text = std::fs::read(kept_file(&kept_dir()?, run_id)).ok()?;
    serde_json::from_slice(&text).ok()
}

fn forget(run_id: i64) {
    if let Some(dir) = kept_dir() {
        let _ = std::fs::remove_file(kept_file(&dir, run_id));
    }
}

pub fn opened(run: OpenRun) {
    keep(&run);
    open_runs().push(run);
}

pub fn closed(run_id: i64) {
    open_runs().retain(|r| r.run_id != run_id);
    forget(run_id);
}

fn with_host(run_id: i64, host: &str, change: impl FnOnce(&mut HostRun)) {
    if let Some(run) = open_runs().iter_mut().find(|r| r.run_id == run_id) {
        change(run.hosts.entry(host.into()).or_insert_with(HostRun::new));
        keep(run);
    }
}

/// `host` is being worked on in `run_id`, now in `phase`.
pub fn host_phase(run_id: i64, host: &str, phase: &str) {
    with_host(run_id, host, |h| h.phase = phase.into());
}

/// The archive `host` works with in `run_id`.
pub fn host_archive(run_id: i64, host: &str, archive: &Value) {
    with_host(run_id, host, |h| h.archive = archive.clone());
}

/// A task of `host` in `run_id` ended.
pub fn host_task(run_id: i64, host: &str, task: &TaskRecord) {
    with_host(run_id, host, |h| h.tasks.push(task.clone()));
}

pub fn host_finished(run_id: i64, host: &str) {
    if let Some(run) = open_runs().iter_mut().find(|r| r.run_id == run_id) {
        run.hosts.remove(host);
        keep(run);
    }
}

/// What the operator runs after this process's open runs were interrupted.
pub fn next_after_interruption() -> Vec<String> {
    let runs = open_runs();
    let mut next = Vec::new();
    for run in runs.iter() {
        match run.kind.as_str() {
            "backup" => {
                next.push(format!(
                    "`ferry backup {}` again once the host has noticed (a few seconds; until then it answers `busy`); archives already stored are kept",
                    run.pattern
                ));
                continue;
            }
            "drill" => {
                next.push(format!(
                    "`ferry drill {}` again: each agent finishes its drill and drops the scratch database on its own",
                    run.pattern
                ));
                continue;
            }
            "restore" | "rollback" | "prepare-devices" => {}
            _ => continue,
        }
        for host in run.hosts.keys() {
            next.push(format!(
                "`ferry facts {host}` shows where it stopped; then `ferry restore {host} --resume` or `ferry rollback {host}`"
            ));
        }
    }
    next
}

/// Closes every open run of this process as `interrupted` (SIGINT, SIGTERM).
pub async fn interrupt_all(catalog: &Catalog, why: &str) {
    let runs: Vec<OpenRun> = open_runs().clone();
    for run in runs {
        let operation = Operation::adopt(
            catalog,
            run.run_id,
            &run.kind,
            run.operator.clone(),
            run.flags.clone(),
        );
        let finished = OffsetDateTime::now_utc();
        let hosts: Vec<(String, HostRun)> = if run.hosts.is_empty() {
            let mut whole = HostRun::new();
            whole.started = run.started;
            vec![(run.pattern.clone(), whole)]
        } else {
            run.hosts.into_iter().collect()
        };
        for (host, host_run) in hosts {
            let HostRun {
                started,
                phase,
                archive,
                mut tasks,
            } = host_run;
            let error = format!("{why} during {phase}");
            tasks.push(TaskRecord {
                name: phase.clone(),
                started: tasks.last().map_or(started, |t| t.finished),
                finished,
                outcome: "interrupted".into(),
                detail: error.clone(),
            });
            let record = HostRecord {
                host: host.clone(),
                outcome: "interrupted".into(),
                phase: Some(phase.clone()),
                error: Some(error.clone()),
                archive_id: None,
                started,
                finished,
            };
            let mut event = operation.event(&host, started);
            event.archive = archive;
            event.finished = finished;
            event.outcome = "interrupted".into();
            event.error = Some(format!("{phase}: {error}"));
            event.tasks = tasks;
            operation.host(Some(&record), &event).await;
        }
        operation.finish("interrupted").await;
    }
}

impl Catalog {
    /// Records as `interrupted` the open runs of this machine whose controller process is gone.
    pub(crate) async fn interrupted_runs(&self) {
        let host = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned();
        let Ok(rows) = self
            .client()
            .query(
                "SELECT id, COALESCE(controller_process, '') FROM runs WHERE finished_at IS NULL AND controller_host = $1",
                &[&host],
            )
            .await
        else {
            return;
        };
        for row in rows {
            let process: String = row.get(1);
            if crate::process::alive(&process) {
                continue;
            }
            let now = OffsetDateTime::now_utc();
            let error = format!(
                "the controller process ({}) ended before the run did; found at {}",
                if process.is_empty() {
                    "unknown"
                } else {
                    &process
                },
                now.format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default()
            );
            self.close_interrupted_run(row.get(0), &error).await;
        }
    }

    /// Closes a run whose controller is gone as `interrupted`, with a host result and a ledger
    /// entry; does nothing if it is closed already (another ferry got there first).
    pub(crate) async fn close_interrupted_run(&self, run_id: i64, error: &str) {
        let Ok(Some(row)) = self
            .client()
            .query_opt(
                "UPDATE runs r SET finished_at = now(), outcome = 'interrupted'
                 FROM (SELECT id FROM runs WHERE id = $1 AND finished_at IS NULL FOR UPDATE) o
                 WHERE r.id = o.id
                 RETURNING r.kind, r.pattern, r.operator, r.operator_fingerprint, r.os_user, r.flags, r.started_at,
                           r.controller_host",
                &[&run_id],
            )
            .await
        else {
            return;
        };
        let now = OffsetDateTime::now_utc();
        let kind: String = row.get(0);
        let pattern: String = row.get(1);
        let started: OffsetDateTime = row.get(6);
        let scheduled = row
            .get::<_, Value>(5)
            .get("schedule")
            .is_some_and(|s| !s.is_null());
        let operator = Operator {
            subject: row.get(2),
            fingerprint: row.get(3),
            os_user: row.get(4),
            controller_host: row.get(7),
        };
        let operation = Operation::adopt(self, run_id, &kind, operator, row.get::<_, Value>(5));
        // What the dead process wrote down: each host's archive and tasks, recorded whole.
        if let Some(run) = kept(run_id).filter(|r| !r.hosts.is_empty()) {
            for (host, host_run) in run.hosts {
                let mut tasks = host_run.tasks;
                tasks.push(TaskRecord {
                    name: host_run.phase.clone(),
                    started: tasks.last().map_or(host_run.started, |t| t.finished),
                    finished: now,
                    outcome: "interrupted".into(),
                    detail: error.to_string(),
                });
                let record = HostRecord {
                    host: host.clone(),
                    outcome: "interrupted".into(),
                    phase: Some(host_run.phase.clone()),
                    error: Some(error.to_string()),
                    archive_id: None,
                    started: host_run.started,
                    finished: now,
                };
                let mut event = operation.event(&host, host_run.started);
                event.archive = host_run.archive;
                event.finished = now;
                event.outcome = "interrupted".into();
                event.error = Some(format!("{}: {error}", host_run.phase));
                event.tasks = tasks;
                operation.host(Some(&record), &event).await;
            }
            forget(run_id);
            return;
        }
        forget(run_id);
        // A single-host operation (or a scheduled backup): its pattern is the host.
        let record = (kind != "backup" || scheduled).then(|| HostRecord {
            host: pattern.clone(),
            outcome: "interrupted".into(),
            phase: Some("run".into()),
            error: Some(error.to_string()),
            archive_id: None,
            started,
            finished: now,
        });
        let mut event = operation.event(&pattern, started);
        event.finished = now;
        event.outcome = "interrupted".into();
        event.error = Some(error.to_string());
        event.tasks = vec![TaskRecord {
            name: "run".into(),
            started,
            finished: now,
            outcome: "interrupted".into(),
            detail: error.to_string(),
        }];
        operation.host(record.as_ref(), &event).await;
    }
}
