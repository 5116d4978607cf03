//! [`Operation`]: the one writer of runs, host results and ledger entries.

use std::sync::Mutex;

use serde_json::Value;
use time::OffsetDateTime;

use super::runs;
use crate::catalog::ledger::{Event, TaskRecord};
use crate::catalog::{ArchiveRecord, Catalog, CatalogError, DrillRecord, HostRecord, Operator};
use crate::types::OperationKind;

/// A record ferry could not write where it belongs (a spooled one says where it waits).
#[derive(Debug)]
pub struct Problem {
    pub host: Option<String>,
    /// "recording the result", "writing the audit ledger", "recording the run"
    pub what: &'static str,
    pub error: CatalogError,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.host {
            Some(host) => write!(f, "[{host}] {}: {}", self.what, self.error),
            None => write!(f, "{}: {}", self.what, self.error),
        }
    }
}

/// One catalog run and everything recorded under it. While it is open it is registered with
/// [`runs`], so an interruption still leaves its record.
pub struct Operation<'a> {
    catalog: &'a Catalog,
    run_id: i64,
    kind: Mutex<String>,
    operator: Operator,
    flags: Value,
    problems: Mutex<Vec<Problem>>,
}

impl<'a> Operation<'a> {
    /// Opens a run of `kind` over `pattern` (a host pattern, or the one host).
    pub async fn open(
        catalog: &'a Catalog,
        kind: OperationKind,
        pattern: &str,
        operator: &Operator,
        flags: &Value,
    ) -> Result<Operation<'a>, CatalogError> {
        let kind = kind.name();
        let run_id = catalog.start_run(kind, pattern, operator, flags).await?;
        runs::opened(runs::OpenRun {
            run_id,
            kind: kind.into(),
            pattern: pattern.into(),
            operator: operator.clone(),
            flags: flags.clone(),
            started: OffsetDateTime::now_utc(),
            hosts: Default::default(),
        });
        Ok(Operation::adopt(
            catalog,
            run_id,
            kind,
            operator.clone(),
            flags.clone(),
        ))
    }

    /// A run that is open already (one a dead process left, being closed).
    pub(crate) fn adopt(
        catalog: &'a Catalog,
        run_id: i64,
        kind: &str,
        operator: Operator,
        flags: Value,
    ) -> Operation<'a> {
        Operation {
            catalog,
            run_id,
            kind: Mutex::new(kind.into()),
            operator,
            flags,
            problems: Mutex::new(Vec::new()),
        }
    }

    pub fn run_id(&self) -> i64 {
        self.run_id
    }

    pub fn catalog(&self) -> &'a Catalog {
        self.catalog
    }

    pub fn operator(&self) -> &Operator {
        &self.operator
    }

    pub fn kind(&self) -> String {
        lock(&self.kind).clone()
    }

    /// The run turned out to be another kind of operation (a resume of device preparation).
    pub async fn set_kind(&self, kind: OperationKind) {
        *lock(&self.kind) = kind.name().into();
        if let Err(error) = self.catalog.set_run_kind(self.run_id, kind.name()).await {
            self.problem(None, "recording the run's kind", error);
        }
    }

    /// The archive the run works with: the catalog run names it, so retention never deletes it
    /// while the run is open.
    pub async fn uses_archive(&self, host: &str, archive: &ArchiveRecord) {
        self.archive(host, &archive.ledger_json());
        if let Err(error) = self.catalog.run_uses_archive(self.run_id, archive.id).await {
            self.problem(None, "recording the run's archive", error);
        }
    }

    /// `host` is now in `phase`.
    pub fn phase(&self, host: &str, phase: &str) {
        runs::host_phase(self.run_id, host, phase);
    }

    /// A task of `host` ended.
    pub fn task(&self, host: &str, task: &TaskRecord) {
        runs::host_task(self.run_id, host, task);
    }

    /// The archive `host` works with.
    pub fn archive(&self, host: &str, archive: &Value) {
        runs::host_archive(self.run_id, host, archive);
    }

    /// The ledger entry of this run for `target`, to be completed and passed to [`Self::host`].
    pub fn event(&self, target: &str, started: OffsetDateTime) -> Event {
        Event {
            kind: self.kind(),
            run_id: Some(self.run_id),
            operator: self.operator.clone(),
            target: target.into(),
            archive: Value::Null,
            flags: self.flags.clone(),
            started,
            finished: OffsetDateTime::now_utc(),
            outcome: String::new(),
            error: None,
            tasks: Vec::new(),
        }
    }

    /// Records how one host ended: its result (when `record` is given) and its ledger entry.
    pub async fn host(&self, record: Option<&HostRecord>, event: &Event) {
        runs::host_finished(self.run_id, &event.target);
        if let Some(record) = record
            && let Err(error) = self.catalog.record_host(self.run_id, record).await
        {
            self.problem(Some(&record.host), "recording the result", error);
        }
        if let Err(error) = self.catalog.append(event).await {
            self.problem(Some(&event.target), "writing the audit ledger", error);
        }
    }

    /// Records a drill's result against its archive (a passing one marks it verified by restore).
    pub async fn drill(&self, drill: &DrillRecord) {
        if let Err(error) = self.catalog.record_drill(drill).await {
            self.problem(Some(&drill.ran_on), "recording the drill", error);
        }
    }

    /// Ends the run with `outcome`.
    pub async fn finish(&self, outcome: &str) {
        runs::closed(self.run_id);
        if let Err(error) = self.catalog.finish_run(self.run_id, outcome).await {
            self.problem(None, "recording the run", error);
        }
    }

    /// A ledger entry that belongs to no run (a certificate issued, keys rotated, an archive
    /// pinned), to be completed and passed to [`Self::entry`].
    pub fn standalone(
        kind: OperationKind,
        operator: Operator,
        target: &str,
        started: OffsetDateTime,
    ) -> Event {
        Event {
            kind: kind.name().into(),
            run_id: None,
            operator,
            target: target.into(),
            archive: Value::Null,
            flags: Value::Null,
            started,
            finished: OffsetDateTime::now_utc(),
            outcome: "succeeded".into(),
            error: None,
            tasks: Vec::new(),
        }
    }

    /// Writes a standalone entry: the same ledger, written the same way.
    pub async fn entry(catalog: &Catalog, event: &Event) -> Result<i64, CatalogError> {
        catalog.append(event).await
    }

    fn problem(&self, host: Option<&str>, what: &'static str, error: CatalogError) {
        lock(&self.problems).push(Problem {
            host: host.map(str::to_string),
            what,
            error,
        });
    }

    /// What could not be recorded so far; the caller says so where it reports.
    pub fn take_problems(&self) -> Vec<Problem> {
        std::mem::take(&mut *lock(&self.problems))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
