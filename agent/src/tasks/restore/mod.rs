//! Restore: a play of small, idempotent steps driven by the controller, one module each, recorded in
//! a journal in the staging directory before they change anything. Nothing on the host changes before
//! `verify` has checked the archive's digest, every entry, its metadata and the shared compatibility
//! rules. [`Restores`] is the host's one restore: it holds the operation slot and the lease from
//! stage to commit, runs each step to its end even if the controller goes away, and recovers an
//! unfinished restore when the agent starts.

mod commit;
pub(crate) mod database;
pub(crate) mod devices;
mod files;
mod health;
pub mod journal;
pub(crate) mod kv;
mod rollback;
pub(crate) mod staging;
mod units;
mod verify;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_proto::v1::{Component, HostState, Step};

use crate::host::Host;
use crate::lease::Lease;
use crate::operation::{OperationGuard, OperationSlot, Running};

use crate::tasks::facts::Facts;

use journal::Journal;

pub use ferry_proto::restore::{COMPONENTS, DatabaseAccess, STEPS, chosen, plan};
pub use staging::StageRequest;

/// The lease when the controller names none.
const DEFAULT_LEASE: Duration = Duration::from_secs(60);

/// Where the agent notes the last restore it ended on its own.
const UNDONE: &str = "undone-by-agent.txt";

/// The directory of one restore in the staging area.
pub fn dir(staging: &Path, restore_id: &str) -> PathBuf {
    staging.join(format!("restore-{restore_id}"))
}

/// What a step reports.
#[derive(Debug, Default)]
pub struct StepOutcome {
    pub summary: String,
    pub details: serde_json::Value,
    /// Not part of this restore's plan: nothing was done.
    pub skipped: bool,
}

fn summary(text: &str) -> StepOutcome {
    StepOutcome {
        summary: text.into(),
        ..Default::default()
    }
}

/// A restore as its journal and its lease know it.
#[derive(Debug, Clone)]
pub struct Status {
    pub restore_id: String,
    pub state: HostState,
    pub last_done: Step,
    pub plan: Vec<Step>,
    pub components: Vec<Component>,
    pub published: bool,
    pub lapsed: Option<String>,
    pub running: Option<Step>,
    pub idle: Duration,
    pub summary: String,
    pub archive_sha256: String,
}

/// A refused or failed stage or step: where, why, the restore afterwards, and what ends it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{cause}")]
pub struct StepFailure {
    pub step: Step,
    pub cause: String,
    /// None when no restore exists (any more): the host is unchanged and free.
    pub status: Option<Box<Status>>,
    pub next: Vec<String>,
    /// The call was refused and did nothing.
    pub refused: bool,
}

/// What the steps work with. Owned, because each step runs on its own task.
#[derive(Clone)]
pub struct RestoreContext {
    pub host: Host,
    pub host_name: String,
    pub staging_dir: PathBuf,
    pub local_address: String,
    pub api: crate::tasks::api::Api,
    /// Bytes the staging filesystem keeps free (`keep_free_bytes`).
    pub keep_free: u64,
}

impl RestoreContext {
    pub async fn facts(&self) -> Facts {
        crate::tasks::facts::gather(&crate::tasks::facts::FactsSources {
            host: &self.host,
            host_name: &self.host_name,
            api: &self.api,
            staging_dir: &self.staging_dir,
        })
        .await
    }
}

/// The host's restore: the one the operation slot holds, its journal and its lease.
#[derive(Clone)]
pub struct Restores {
    inner: Arc<Inner>,
}

struct Inner {
    ctx: RestoreContext,
    operations: OperationSlot,
    held: Mutex<Option<(String, OperationGuard)>>,
    lease: Lease,
}

impl Restores {
    /// Takes over a restore the agent was in the middle of when it stopped: it keeps the host's slot,
    /// and its lease is armed again so a controller that is gone too cannot leave the host unsafe.
    pub fn new(ctx: RestoreContext, operations: OperationSlot) -> Restores {
        let restores = Restores {
            inner: Arc::new(Inner {
                ctx,
                operations,
                held: Mutex::new(None),
                lease: Lease::default(),
            }),
        };
        if let Some((id, j)) = restores.unfinished() {
            if let Ok(guard) = restores.inner.operations.try_begin(
                "restore",
                &id,
                "(unfinished before the agent restarted)",
            ) {
                *restores.held() = Some((id.clone(), guard));
            }
            if j.lapsed.is_none() || j.published() {
                tracing::warn!(restore = %id, state = %j.describe(), "an unfinished restore: its lease is armed again");
                restores.inner.lease.arm(&id, lease_length(j.lease_seconds));
            }
        }
        restores
    }

    fn ctx(&self) -> &RestoreContext {
        &self.inner.ctx
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Option<(String, OperationGuard)>> {
        self.inner.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The id and journal of the restore in the staging area, if any.
    fn unfinished(&self) -> Option<(String, Journal)> {
        std::fs::read_dir(&self.ctx().staging_dir)
            .ok()?
            .flatten()
            .find_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let id = name.strip_prefix("restore-")?.to_string();
                let journal = Journal::load(&e.path()).ok()?;
                Some((id, journal))
            })
    }

    /// The unfinished restore, if the host holds one.
    pub fn status(&self) -> Option<Status> {
        let (id, j) = self.unfinished()?;
        Some(self.status_of(&id, &j))
    }

    fn status_of(&self, id: &str, j: &Journal) -> Status {
        let activity = self.inner.lease.activity();
        Status {
            restore_id: id.to_string(),
            state: j.state(),
            last_done: j.last_done(),
            plan: j.plan(),
            components: j.components(),
            published: j.published(),
            lapsed: j.lapsed.clone(),
            running: activity.running,
            idle: activity.idle,
            summary: format!(
                "restore {id} unfinished: {}{}",
                j.describe(),
                activity
                    .running
                    .map(|s| format!("; step {} running now", s.name()))
                    .unwrap_or_default()
            ),
            archive_sha256: j.archive_sha256.clone(),
        }
    }

    /// Why the host refuses another operation while `running` holds it. A restore nobody drives
    /// any more (its controller is gone) is called abandoned, with the commands that end it.
    pub fn busy(&self, running: &Running) -> (String, Vec<String>) {
        let host = &self.ctx().host_name;
        let started = time::OffsetDateTime::from_unix_timestamp(running.started_unix)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| running.started_unix.to_string());
        let activity = self.inner.lease.activity();
        if running.kind == "restore" && !activity.driven && self.status().is_none() {
            // Its stage was cut off before it recorded anything: nothing to resume or roll back.
            return (
                format!(
                    "{host} is held by operation {} started by {} at {started}, whose stage was cut off before it changed anything (its controller went away {}s ago); the agent frees the host when its lease lapses",
                    running.id,
                    running.started_by,
                    activity.idle.as_secs()
                ),
                vec![format!("ferry ping {host}")],
            );
        }
        if running.kind == "restore" && !activity.driven {
            let state = self
                .status()
                .map(|s| s.summary)
                .unwrap_or_else(|| format!("restore {}", running.id));
            return (
                format!(
                    "{host} holds an abandoned restore {} started by {} at {started}: nothing has driven it for {}s ({state})",
                    running.id,
                    running.started_by,
                    activity.idle.as_secs()
                ),
                vec![
                    format!("ferry restore {host} --resume"),
                    format!("ferry rollback {host}"),
                ],
            );
        }
        let step = activity
            .running
            .map(|s| format!(", step {} running", s.name()))
            .unwrap_or_default();
        let next = if running.kind == "ports" {
            vec![format!("ferry ports unpublish {host}")]
        } else {
            vec![format!("ferry ping {host}")]
        };
        (
            format!(
                "{host} is busy: {} operation {} started by {} at {started}{step}; wait for it to finish",
                running.kind, running.id, running.started_by
            ),
            next,
        )
    }

    fn refusal(&self, step: Step, cause: String) -> StepFailure {
        StepFailure {
            step,
            cause,
            status: self.status().map(Box::new),
            next: Vec::new(),
            refused: true,
        }
    }

    /// `step` was asked for while `running` still runs (a resume sent too early, or a second
    /// controller): refused, and the running one goes on.
    fn step_running(&self, id: &str, step: Step, running: Step) -> StepFailure {
        let host = &self.ctx().host_name;
        self.refusal(
            step,
            format!(
                "restore {id} on {host} is running its step {} now; {} must wait for it to end. Run `ferry facts {host}` to see when it has, then `ferry restore {host} --resume`",
                running.name(),
                step.name()
            ),
        )
    }

    /// Holds the host's slot for restore `id` (again, if it already does).
    fn take_slot(&self, id: &str, who: &str, step: Step) -> Result<(), StepFailure> {
        let mut held = self.held();
        if held.as_ref().is_some_and(|(current, _)| current == id) {
            return Ok(());
        }
        let guard = self
            .inner
            .operations
            .try_begin("restore", id, who)
            .map_err(|running| {
                let (cause, next) = self.busy(&running);
                StepFailure {
                    step,
                    cause,
                    // An abandoned restore holding the host is its state.
                    status: self.status().map(Box::new),
                    next,
                    refused: true,
                }
            })?;
        *held = Some((id.to_string(), guard));
        Ok(())
    }

    fn release(&self) {
        self.inner.lease.disarm();
        self.held().take();
    }

    /// What `stage` would refuse for an archive of `size` restoring `components`, asked without
    /// taking anything (`--check`, and the restore's preflight): each cause with its next commands.
    /// And the host files such a restore removes (`captured` by the archive's backup, not `present`
    /// in it).
    pub async fn check(
        &self,
        size: u64,
        components: &[Component],
        captured: &[String],
        present: &[String],
        entries: &[String],
    ) -> (Vec<(String, Vec<String>)>, Vec<String>) {
        let ctx = self.ctx();
        let host = &ctx.host_name;
        let mut refusals = Vec::new();
        if let Some((_, j)) = self.unfinished() {
            refusals.push((
                format!("{host} holds an unfinished restore ({})", j.describe()),
                vec![
                    format!("ferry restore {host} --resume"),
                    format!("ferry rollback {host}"),
                ],
            ));
        } else if let Some(running) = self.inner.operations.current() {
            refusals.push(self.busy(&running));
        }
        if let Err(cause) = staging::room_for(&ctx.staging_dir, size, ctx.keep_free) {
            refusals.push((cause, vec![format!("ferry facts {host}")]));
        }
        let database = crate::tasks::facts::database(&ctx.host);
        let chosen = ferry_proto::restore::chosen(components);
        // Every restore ends with the API's health, which needs its database; a dump needs it to load.
        if database.kind != crate::tasks::facts::DatabaseKind::External
            && let Err(e) = database::psql(&ctx.host, "postgres", "SELECT 1").await
        {
            let why = if chosen.contains(&Component::Db) {
                "so the dump cannot be loaded"
            } else {
                "so the restored control plane could not become healthy"
            };
            refusals.push((
                format!("flightctl-db does not answer, {why}: {e}"),
                vec![format!("ferry facts {host}")],
            ));
        }
        let names: Vec<String> = chosen.iter().map(|c| c.name().to_string()).collect();
        let root = ctx.host.path("/");
        let mut removals: Vec<String> = files::removals(
            &names,
            captured,
            |entry| present.iter().any(|p| p == entry),
            |p| ctx.host.path(p),
        )
        .iter()
        .flat_map(|live| files::listed(live, &root))
        .collect();
        if !entries.is_empty() {
            removals.extend(files::absent_from(
                &names,
                present,
                entries,
                |p| ctx.host.path(p),
                &root,
            ));
        }
        (refusals, removals)
    }

    /// `stage`: receives the archive (or, for device preparation alone, nothing) and creates the
    /// journal. The lease is armed from here. On any failure nothing changed and the host is free.
    pub async fn stage<E: std::fmt::Display>(
        &self,
        req: StageRequest,
        first: bytes::Bytes,
        rest: impl tokio_stream::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        who: &str,
    ) -> Result<(u64, String, Status), StepFailure> {
        if req.components.contains(&Component::Unspecified) {
            return Err(self.refusal(Step::Stage, "unknown component".into()));
        }
        self.take_slot(&req.restore_id, who, Step::Stage)?;
        let lease = self
            .inner
            .lease
            .step_begins(
                &req.restore_id,
                Step::Stage,
                Some(lease_length(req.lease_seconds)),
            )
            .map_err(|running| self.step_running(&req.restore_id, Step::Stage, running))?;
        let ctx = self.ctx();
        let dir = dir(&ctx.staging_dir, &req.restore_id);
        let result = if req.prepare_only {
            staging::prepare_only(ctx, &dir, &req)
                .await
                .map(|()| (0, String::new()))
                .map_err(staging::ReceiveError::Environment)
        } else {
            staging::receive(ctx, &dir, &req, first, rest).await
        };
        match result {
            Ok((size, sha256)) => {
                lease.succeeded();
                let journal =
                    Journal::load(&dir).map_err(|e| self.refusal(Step::Stage, e.to_string()))?;
                Ok((size, sha256, self.status_of(&req.restore_id, &journal)))
            }
            Err(failed) => {
                drop(lease);
                // The host's own trouble (space, the database server) names where to look; the
                // archive's is the controller's to name (it knows the archive's id).
                let next = match &failed {
                    staging::ReceiveError::Environment(_) => {
                        vec![format!("ferry facts {}", ctx.host_name)]
                    }
                    staging::ReceiveError::Archive(_) => Vec::new(),
                };
                let cause = failed.to_string();
                // The journal names the temporary database a failed pass may have left.
                let undone = match Journal::load(&dir) {
                    Ok(j) => rollback::rollback(ctx, &dir, &j).await.map(|_| ()),
                    Err(_) => Ok(()),
                };
                if let Err(e) = undone {
                    // The journal stays: the lease lapses and tries again, or an operator rolls back.
                    tracing::error!(restore = %req.restore_id, error = %e, "could not undo a failed stage");
                    return Err(StepFailure {
                        step: Step::Stage,
                        cause: format!("{cause}; undoing the stage failed too: {e}"),
                        status: self.status().map(Box::new),
                        next: vec![format!("ferry rollback {}", ctx.host_name)],
                        refused: false,
                    });
                }
                let _ = std::fs::remove_dir_all(&dir);
                self.release();
                Err(StepFailure {
                    step: Step::Stage,
                    cause,
                    status: None,
                    next,
                    refused: false,
                })
            }
        }
    }

    /// Runs `step` of restore `id`. The step runs on its own task: if the controller goes away it
    /// still runs to a recorded end, and the lease then decides.
    pub async fn step(
        &self,
        id: &str,
        step: Step,
        lease_seconds: u32,
        who: &str,
    ) -> Result<(StepOutcome, Option<Status>), StepFailure> {
        if step == Step::Rollback {
            return self.rollback(id, who).await;
        }
        self.take_slot(id, who, step)?;
        let length = (lease_seconds > 0).then(|| lease_length(lease_seconds));
        let lease = self
            .inner
            .lease
            .step_begins(id, step, length)
            .map_err(|running| self.step_running(id, step, running))?;
        // Only once no step runs: a stage still receiving is not interrupted.
        if let Ok(j) = Journal::load(&dir(&self.ctx().staging_dir, id))
            && !j.received
        {
            // Nothing past a partial stage can run; the partial copy is undone and said so.
            let host = &self.ctx().host_name;
            let mut failure = self
                .failed(
                    id,
                    step,
                    format!(
                        "restore {id}'s stage was interrupted before the whole archive arrived (the link or the agent went away), so there is nothing to resume; the partial copy and its temporary database were removed"
                    ),
                )
                .await;
            if failure.status.is_none() {
                failure.next = vec![format!("ferry restore {host}")];
            }
            drop(lease);
            return Err(failure);
        }
        let this = self.clone();
        let owned_id = id.to_string();
        let task = tokio::spawn(async move {
            let result = this.run(&owned_id, step).await;
            if result.is_ok() {
                lease.succeeded();
                // Here, not after the reply: the host is freed even if the controller went away.
                if step == Step::Commit {
                    this.release();
                }
            } else {
                drop(lease);
            }
            result
        });
        let result = task
            .await
            .map_err(|e| self.refusal(step, format!("step task: {e}")))?;
        let dir = dir(&self.ctx().staging_dir, id);
        match result {
            Ok(outcome) => {
                if step == Step::Commit {
                    return Ok((outcome, None));
                }
                let status = Journal::load(&dir).ok().map(|j| self.status_of(id, &j));
                Ok((outcome, status))
            }
            Err(cause) => Err(self.failed(id, step, cause).await),
        }
    }

    /// A step failed. If the live control plane was not changed yet, the restore is undone at once
    /// and the host freed; otherwise it stays for `--resume` or `rollback`.
    async fn failed(&self, id: &str, step: Step, cause: String) -> StepFailure {
        let ctx = self.ctx();
        let dir = dir(&ctx.staging_dir, id);
        let Ok(j) = Journal::load(&dir) else {
            self.release();
            return StepFailure {
                step,
                cause,
                status: None,
                next: Vec::new(),
                refused: false,
            };
        };
        if !j.state().changed() && !j.published() {
            match rollback::rollback(ctx, &dir, &j).await {
                Ok(_) => {
                    self.release();
                    return StepFailure {
                        step,
                        cause,
                        status: None,
                        next: Vec::new(),
                        refused: false,
                    };
                }
                Err(e) => {
                    tracing::error!(restore = %id, error = %e, "could not undo a restore that changed nothing")
                }
            }
        }
        let host = &ctx.host_name;
        StepFailure {
            step,
            cause,
            status: Some(Box::new(self.status_of(id, &j))),
            next: vec![
                format!("ferry restore {host} --resume"),
                format!("ferry rollback {host}"),
            ],
            refused: false,
        }
    }

    /// `rollback`: refused while the restore is being driven; otherwise the pre-restore state.
    async fn rollback(
        &self,
        id: &str,
        who: &str,
    ) -> Result<(StepOutcome, Option<Status>), StepFailure> {
        let ctx = self.ctx();
        let dir = dir(&ctx.staging_dir, id);
        let activity = self.inner.lease.activity();
        if activity.driven {
            let what = activity
                .running
                .map(|s| format!("its step {} is running now", s.name()))
                .unwrap_or_else(|| "its controller is driving it".into());
            return Err(StepFailure {
                step: Step::Rollback,
                cause: format!(
                    "restore {id} on {} is still running ({what}); rolling it back now would pull its journal from under it. Wait for it to end; if it fails, run `ferry rollback {}` then",
                    ctx.host_name, ctx.host_name
                ),
                status: self.status().map(Box::new),
                next: Vec::new(),
                refused: true,
            });
        }
        self.take_slot(id, who, Step::Rollback)?;
        let j = Journal::load(&dir).map_err(|e| {
            self.refusal(Step::Rollback, format!("no unfinished restore {id}: {e}"))
        })?;
        let lease = self
            .inner
            .lease
            .step_begins(id, Step::Rollback, None)
            .map_err(|running| self.step_running(id, Step::Rollback, running))?;
        let this = self.clone();
        let task = tokio::spawn(async move {
            let dir = dir.clone();
            let result = rollback::rollback(this.ctx(), &dir, &j).await;
            drop(lease);
            if result.is_ok() {
                this.release();
            }
            result
        });
        let result = task
            .await
            .map_err(|e| self.refusal(Step::Rollback, format!("rollback task: {e}")))?;
        match result {
            Ok(outcome) => Ok((outcome, None)),
            Err(cause) => Err(StepFailure {
                step: Step::Rollback,
                cause,
                status: self.status().map(Box::new),
                next: vec![format!("ferry rollback {}", ctx.host_name)],
                refused: false,
            }),
        }
    }

    /// The watchdog's tick: if the lease lapsed, make the host safe.
    pub async fn watch(&self) {
        let Some(id) = self.inner.lease.take_lapsed() else {
            return;
        };
        let ctx = self.ctx();
        if !Journal::path(&dir(&ctx.staging_dir, &id)).is_file() {
            // Committed or rolled back meanwhile: nothing is left to make safe.
            self.release();
            return;
        }
        tracing::warn!(restore = %id, "the controller's lease lapsed; making the host safe");
        match rollback::lapse(ctx, &dir(&ctx.staging_dir, &id)).await {
            Ok(note) => {
                tracing::warn!(restore = %id, "{note}");
                if !dir(&ctx.staging_dir, &id).exists() {
                    // Nothing of it is left on the host to say so: the note does.
                    self.note_undone(&id, &note);
                    self.release();
                }
            }
            Err(e) => {
                tracing::error!(restore = %id, error = %e, "could not make the host safe after the lease lapsed");
                // Try again at the next tick.
                self.inner.lease.arm(&id, Duration::from_secs(1));
            }
        }
    }

    /// Keeps what the agent did on its own to a restore that is gone, for facts, ping and the
    /// next controller to record.
    fn note_undone(&self, id: &str, note: &str) {
        let when = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let text = format!("restore {id} was ended by the agent at {when}: {note}");
        let path = self.undone_path();
        if let Err(e) = std::fs::write(&path, text) {
            tracing::error!(error = %e, "{}", path.display());
        }
    }

    /// The last restore the agent ended on its own, in words (empty: none).
    pub fn undone(&self) -> String {
        std::fs::read_to_string(self.undone_path()).unwrap_or_default()
    }

    /// Next to the staging directory, which holds restores only.
    fn undone_path(&self) -> PathBuf {
        let staging = &self.ctx().staging_dir;
        staging.parent().unwrap_or(staging).join(UNDONE)
    }

    /// Runs `step` unless the journal says it is done, and records it done.
    async fn run(&self, id: &str, step: Step) -> Result<StepOutcome, String> {
        let ctx = self.ctx();
        let dir = dir(&ctx.staging_dir, id);
        let mut j = Journal::load(&dir)
            .map_err(|e| format!("no staged restore {id}: {e}; stage the archive first"))?;
        let plan = j.plan();
        if !plan.contains(&step) {
            return Ok(StepOutcome {
                summary: "skipped: not part of this restore".into(),
                skipped: true,
                ..Default::default()
            });
        }
        if let Some(missing) = plan
            .iter()
            .take_while(|s| **s != step)
            .find(|s| !j.is_done(**s))
        {
            return Err(format!(
                "step {} needs {} first",
                step.name(),
                missing.name()
            ));
        }
        if j.is_done(step) {
            return Ok(summary("already done"));
        }
        j.begin(step);
        j.save(&dir).map_err(|e| e.to_string())?;
        let result = execute(ctx, &dir, &mut j, step).await;
        match result {
            Ok(outcome) => {
                if step != Step::Commit {
                    j.mark_done(step);
                    j.save(&dir).map_err(|e| e.to_string())?;
                }
                Ok(outcome)
            }
            Err(cause) => {
                let _ = j.save(&dir);
                Err(cause)
            }
        }
    }
}

fn lease_length(seconds: u32) -> Duration {
    match seconds {
        0 => DEFAULT_LEASE,
        n => Duration::from_secs(n.into()),
    }
}

/// One step's body; each change is in the journal before it is made.
async fn execute(
    ctx: &RestoreContext,
    dir: &Path,
    j: &mut Journal,
    step: Step,
) -> Result<StepOutcome, String> {
    let host = &ctx.host;
    let extract = dir.join("extract");
    match step {
        Step::Verify => verify::run(ctx, dir, j).await,
        Step::Load => database::load_step(host, &extract, j).await,
        Step::Stop => units::stop_step(host, dir, j).await,
        Step::SwapDb => database::swap_step(host, j).await,
        Step::SwapFiles => files::swap_step(ctx, dir, j).await,
        Step::PrepareLoaded => devices::prepare_loaded(host, dir, j).await,
        Step::PrepareDevices => devices::prepare_devices(ctx, dir, j).await,
        Step::SeedKv => kv::seed_step(host, dir).await,
        Step::Start => units::start_step(host, j).await,
        Step::Health => health::run(ctx, j).await,
        Step::Commit => commit::run(host, dir, j).await,
        other => Err(format!("{} is not a step of the runbook", other.name())),
    }
}
