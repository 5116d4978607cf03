//! One single-host operation (a restore, its check, a rollback, device preparation) as the operator
//! and the record see it: the catalog run, the task timeline for the ledger, and the output, as
//! lines or as one JSON document.

use std::sync::Mutex;

use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use crate::catalog::ledger::TaskRecord;
use crate::catalog::{ArchiveRecord, Catalog, HostRecord};
use crate::inventory::Target;
use crate::ops::Operation;
use crate::report::exit;

/// How an operation ended, as the ledger and the catalog name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Succeeded,
    /// `--check` found nothing in the way.
    Checked,
    RolledBack,
    /// Refused before anything on the host changed.
    Refused,
    Failed,
    Unreachable,
}

impl Ending {
    pub fn name(self) -> &'static str {
        match self {
            Ending::Succeeded => "succeeded",
            Ending::Checked => "checked",
            Ending::RolledBack => "rolled back",
            Ending::Refused => "refused",
            Ending::Failed => "failed",
            Ending::Unreachable => "unreachable",
        }
    }

    fn host_outcome(self) -> &'static str {
        match self {
            Ending::Succeeded | Ending::Checked | Ending::RolledBack => "ok",
            Ending::Refused => "refused",
            Ending::Failed => "failed",
            Ending::Unreachable => "unreachable",
        }
    }

    fn exit_code(self) -> i32 {
        match self {
            Ending::Succeeded | Ending::Checked | Ending::RolledBack => exit::OK,
            Ending::Refused | Ending::Failed => exit::FAILED,
            Ending::Unreachable => exit::UNREACHABLE,
        }
    }
}

/// A running operation on one host.
pub struct Play<'a> {
    pub target: &'a Target,
    pub catalog: &'a Catalog,
    pub run_id: i64,
    /// The run and its records. Its kind is the ledger's: restore, restore-check, rollback,
    /// prepare-devices (a resume learns it from the host).
    operation: Operation<'a>,
    /// The command the operator typed (for the JSON document and the recap).
    pub command: &'static str,
    started: OffsetDateTime,
    archive: Mutex<Value>,
    tasks: Mutex<Vec<TaskRecord>>,
    /// Extra fields of the JSON document (plan, check results, devices by status, downtime).
    fields: Mutex<Map<String, Value>>,
}

impl<'a> Play<'a> {
    pub fn new(target: &'a Target, operation: Operation<'a>, command: &'static str) -> Self {
        operation.phase(&target.name, "connect");
        Play {
            target,
            catalog: operation.catalog(),
            run_id: operation.run_id(),
            operation,
            command,
            started: OffsetDateTime::now_utc(),
            archive: Mutex::new(Value::Null),
            tasks: Mutex::new(Vec::new()),
            fields: Mutex::new(Map::new()),
        }
    }

    pub fn host(&self) -> &str {
        &self.target.name
    }

    /// The name the agent's certificate proved: archives are filed and found under it.
    pub fn identity(&self) -> &str {
        &self.target.agent_name
    }

    /// Prints the play's header line.
    pub fn header(&self, what: &str) {
        outln!("PLAY [{what}]");
    }

    /// `name` begins: an interruption from here is recorded as during it.
    pub fn step_begins(&self, name: &str) {
        self.operation.phase(self.host(), name);
    }

    /// A finished task: shown, and added to the timeline the ledger records.
    pub fn task(&self, name: &str, started: OffsetDateTime, outcome: &str, detail: &str) {
        self.operation.phase(self.host(), &format!("after {name}"));
        let seconds = (OffsetDateTime::now_utc() - started).as_seconds_f64();
        if outcome == "ok" {
            outln!("TASK [{name}] ok: {detail} ({seconds:.1}s)");
        }
        let record = TaskRecord {
            name: name.into(),
            started,
            finished: OffsetDateTime::now_utc(),
            outcome: outcome.into(),
            detail: detail.into(),
        };
        self.operation.task(self.host(), &record);
        lock(&self.tasks).push(record);
    }

    /// The archive this operation works with; the catalog run names it too, so retention never
    /// deletes it while the run is open.
    /// What this operation turns out to be (a resume of device preparation is one), for the
    /// ledger and the run.
    pub async fn set_kind(&self, kind: crate::types::OperationKind) {
        self.operation.set_kind(kind).await;
    }

    pub async fn set_archive(&self, archive: &ArchiveRecord) {
        *lock(&self.archive) = archive.ledger_json();
        self.operation.uses_archive(self.host(), archive).await;
    }

    /// The archive as far as it is known (a digest the catalog no longer holds).
    pub fn set_archive_json(&self, archive: Value) {
        self.operation.archive(self.host(), &archive);
        *lock(&self.archive) = archive;
    }

    /// Adds a field to the JSON document.
    pub fn set(&self, key: &str, value: Value) {
        lock(&self.fields).insert(key.into(), value);
    }

    /// A warning for the operator (kept in the document too).
    pub fn warn(&self, text: &str) {
        outln!("[WARNING] [{}] {text}", self.host());
        let mut fields = lock(&self.fields);
        let warnings = fields.entry("warnings").or_insert_with(|| json!([]));
        if let Some(list) = warnings.as_array_mut() {
            list.push(json!(text));
        }
    }

    /// The operation succeeded (or, for `--check`, found nothing in the way).
    pub async fn succeed(&self, ending: Ending, state: &str) -> i32 {
        self.end(ending, None, state, None).await
    }

    /// Refused before anything on the host changed.
    pub async fn refuse(&self, task: &str, cause: &str, next: &str) -> i32 {
        let unchanged = format!("unchanged (nothing on {} was touched)", self.host());
        self.refuse_in(task, cause, &unchanged, next).await
    }

    /// Refused, doing nothing, on a host that `state` describes (it may hold an unfinished restore).
    pub async fn refuse_in(&self, task: &str, cause: &str, state: &str, next: &str) -> i32 {
        let host = self.host();
        outln!("REFUSED: [{host}] task {task}: {cause}");
        outln!("host state: {state}");
        if !next.is_empty() {
            outln!("next: {next}");
        }
        self.end(Ending::Refused, Some((task, cause)), state, Some(next))
            .await
    }

    /// Failed after the host may have changed: `state` says how it was left, `next` what ends it
    /// (by default `--resume` or `rollback`).
    pub async fn fail(&self, task: &str, cause: &str, state: &str, next: &[String]) -> i32 {
        let host = self.host();
        let next = if next.is_empty() {
            format!(
                "fix the cause, then `ferry restore {host} --resume`; or `ferry rollback {host}` to return to the pre-restore state"
            )
        } else {
            format!(
                "fix the cause, then one of: {}",
                next.iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        outln!("FAILED: [{host}] task {task}: {cause}");
        outln!("host state: {state}");
        outln!("next: {next}");
        self.end(Ending::Failed, Some((task, cause)), state, Some(&next))
            .await
    }

    /// The agent was lost during `task` (a cut link, a dead agent, a certificate refused mid-way):
    /// what it did meanwhile is not known, so the host's state is unknown and `ferry facts` finds
    /// out. Unreachable, never "unchanged".
    pub async fn lost(&self, task: &str, cause: &str, next: &[String]) -> i32 {
        let host = self.host();
        let state = format!(
            "unknown: the agent could not be reached during {task}; it may hold an unfinished restore, which its lease makes safe on its own (once the agent runs again, if it is down)"
        );
        let then = next
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(" or ");
        let next = if then.is_empty() {
            format!("`ferry facts {host}`")
        } else {
            format!("`ferry facts {host}`, then {then}")
        };
        outln!("UNREACHABLE: [{host}] task {task}: {cause}");
        outln!("host state: {state}");
        outln!("next: {next}");
        self.end(
            Ending::Unreachable,
            Some((task, cause)),
            &state,
            Some(&next),
        )
        .await
    }

    /// The agent could not be reached, or is not the host the inventory names.
    pub async fn unreachable(&self, cause: &str, next: &str) -> i32 {
        outln!("UNREACHABLE: [{}] {cause}", self.host());
        self.end(
            Ending::Unreachable,
            Some(("connect", cause)),
            "unknown",
            Some(next),
        )
        .await
    }

    async fn end(
        &self,
        ending: Ending,
        error: Option<(&str, &str)>,
        state: &str,
        next: Option<&str>,
    ) -> i32 {
        let finished = OffsetDateTime::now_utc();
        if let Some((task, cause)) = error
            && !lock(&self.tasks).iter().any(|t| t.name == task)
        {
            self.task(task, finished, ending.host_outcome(), cause);
        }
        let tasks = lock(&self.tasks).clone();
        let archive = lock(&self.archive).clone();
        let error_text = error.map(|(task, cause)| format!("{task}: {cause}"));
        let mut event = self.operation.event(self.host(), self.started);
        event.archive = archive.clone();
        event.finished = finished;
        event.outcome = ending.name().into();
        event.error = error_text.clone();
        event.tasks = tasks.clone();
        let record = HostRecord {
            host: self.host().into(),
            outcome: ending.host_outcome().into(),
            phase: error.map(|(task, _)| task.to_string()),
            error: error.map(|(_, cause)| cause.to_string()),
            archive_id: None,
            started: self.started,
            finished,
        };
        self.operation.host(Some(&record), &event).await;
        self.operation.finish(ending.name()).await;
        for problem in self.operation.take_problems() {
            errln!("ferry: {}: {}", problem.what, problem.error);
        }
        let code = ending.exit_code();
        let changed = !matches!(
            ending,
            Ending::Checked | Ending::Refused | Ending::Unreachable
        );
        let [ok, failed, unreachable] = match ending.host_outcome() {
            "ok" => [1, 0, 0],
            "unreachable" => [0, 0, 1],
            _ => [0, 1, 0],
        };
        outln!(
            "\nPLAY RECAP ({})\n{} : ok={ok}   changed={}   unreachable={unreachable}   failed={failed}   skipped=0",
            self.command,
            self.host(),
            u8::from(changed)
        );
        if crate::output::is_json() {
            let steps: Vec<Value> = tasks
                .iter()
                .map(|t| {
                    json!({"name": t.name, "outcome": t.outcome, "summary": t.detail,
                           "seconds": (t.finished - t.started).as_seconds_f64()})
                })
                .collect();
            let mut doc = json!({
                "command": self.command,
                "kind": self.operation.kind(),
                "host": self.host(),
                "address": format!("{}:{}", self.target.address, self.target.port),
                "run_id": self.run_id,
                "outcome": ending.name(),
                "archive": archive,
                "steps": steps,
                "host_state": state,
                "error": error_text,
                "next": next.filter(|n| !n.is_empty()),
                "exit_code": code,
                // The shape every fleet command's document has, for tools that read them all.
                "hosts": {self.host(): {"status": ending.host_outcome(), "address": format!("{}:{}", self.target.address, self.target.port),
                                        "changed": changed, "host_state": state, "error": error_text}},
                "recap": {self.host(): {"ok": ok, "changed": u8::from(changed), "unreachable": unreachable,
                                        "failed": failed, "skipped": 0}},
            });
            if let Some(map) = doc.as_object_mut() {
                map.extend(lock(&self.fields).clone());
            }
            crate::output::json(&doc);
        }
        code
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
