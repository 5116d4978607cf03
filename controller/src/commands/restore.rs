//! `ferry restore HOST`: the documented runbook as a play of journaled agent steps, refusing anything
//! unsafe before the host is touched. `ferry rollback HOST` undoes an unfinished restore.

use std::io::Read;
use std::time::Instant;

use ferry_proto::v1::{FactsRequest, PingRequest, RestoreStepRequest, StageChunk};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::catalog::ledger::{Event, TaskRecord};
use crate::catalog::{ArchiveRecord, Catalog, HostRecord, Operator};
use crate::cli::{GlobalArgs, RestoreArgs};
use crate::config::Config;
use crate::dial::AgentConn;
use crate::inventory::Target;
use crate::report::exit;
use crate::store::Store;

/// What each of the agent's steps does (the plan `--check` prints).
const STEP_DESCRIPTIONS: [(&str, &str); 12] = [
    (
        "verify",
        "check the staged archive: sha256, every tar entry, manifest, metadata, version and deployment type",
    ),
    (
        "load",
        "load db/dump.sql into a temporary database while the control plane keeps running",
    ),
    (
        "stop",
        "stop the application units the host has (never flightctl-db, flightctl-kv or flightctl.target)",
    ),
    (
        "swap-db",
        "rename the live database aside and the restored one into place",
    ),
    (
        "swap-files",
        "swap PKI, config, encryption keys and the PAM issuer volume, keeping the old copies",
    ),
    (
        "publish",
        "publish flightctl-db on the host's loopback address through a PublishPort drop-in",
    ),
    (
        "prepare-devices",
        "mark devices awaiting reconnect, annotate enrollment requests, write the SystemRestored event",
    ),
    (
        "unpublish",
        "remove the drop-in, restart flightctl-db and flightctl-kv",
    ),
    (
        "seed-kv",
        "seed one awaiting-reconnect key per device after the KV's last restart",
    ),
    ("start", "start the application units that were running"),
    (
        "health",
        "API ready at the archive's version, one KV key per device",
    ),
    (
        "commit",
        "drop the previous database (unless --keep-old-db) and the old copies",
    ),
];

struct Ctx<'a> {
    target: &'a Target,
    lease_seconds: u32,
    catalog: &'a Catalog,
    run_id: i64,
    started: OffsetDateTime,
    /// For the audit ledger: what kind of operation, by whom, with which flags, on which archive, and
    /// the tasks it ran.
    kind: &'static str,
    operator: Operator,
    flags: Value,
    archive: std::sync::Mutex<Value>,
    tasks: std::sync::Mutex<Vec<TaskRecord>>,
}

pub async fn run(config: &Config, global: &GlobalArgs, host: &str, args: &RestoreArgs) -> i32 {
    let flags = json!({"archive": args.archive, "from": args.from, "keep_old_db": args.keep_old_db,
                       "check": args.check, "resume": args.resume, "only": args.only, "db_only": args.db_only});
    let (target, conn, catalog, run_id, operator) =
        match open(config, global, host, "restore", &flags).await {
            Ok(opened) => opened,
            Err(code) => return code,
        };
    let ctx = Ctx::new(
        &target,
        &catalog,
        run_id,
        "restore",
        operator,
        flags,
        args.lease_seconds,
    );
    if args.resume {
        resume(&ctx, &conn).await
    } else {
        restore(&ctx, config, &conn, args).await
    }
}

/// `ferry prepare-devices HOST`: device preparation alone, on the host's current database (after a
/// DBA-led database restore, or to finish a partial one).
pub async fn prepare_devices(config: &Config, global: &GlobalArgs, host: &str) -> i32 {
    let flags = json!({});
    let (target, conn, catalog, run_id, operator) =
        match open(config, global, host, "prepare-devices", &flags).await {
            Ok(opened) => opened,
            Err(code) => return code,
        };
    let ctx = Ctx::new(
        &target,
        &catalog,
        run_id,
        "prepare-devices",
        operator,
        flags,
        0,
    );
    let restore_id = format!("p{run_id}-{}", OffsetDateTime::now_utc().unix_timestamp());
    println!("PLAY [prepare devices on {host}]");
    let first = StageChunk {
        restore_id: restore_id.clone(),
        prepare_only: true,
        ..Default::default()
    };
    let begun = conn
        .client
        .clone()
        .stage(tokio_stream::iter(vec![first]))
        .await;
    if let Err(status) = begun {
        return ctx
            .refuse("stage", status.message().trim_start_matches("stage: "))
            .await;
    }
    steps(&ctx, &conn, &restore_id).await
}

/// `ferry rollback HOST`.
pub async fn rollback(config: &Config, global: &GlobalArgs, host: &str) -> i32 {
    let flags = json!({});
    let (target, conn, catalog, run_id, operator) =
        match open(config, global, host, "rollback", &flags).await {
            Ok(opened) => opened,
            Err(code) => return code,
        };
    let ctx = Ctx::new(&target, &catalog, run_id, "rollback", operator, flags, 0);
    let operation = match conn.client.clone().ping(PingRequest {}).await {
        Ok(r) => r.into_inner().operation,
        Err(status) => return ctx.fail("rollback", status.message(), "unknown").await,
    };
    let Some(op) = operation.filter(|op| op.kind == "restore") else {
        return ctx
            .refuse(
                "rollback",
                &format!("{host} has no unfinished restore to roll back"),
            )
            .await;
    };
    println!("PLAY [roll back restore {} on {host}]", op.id);
    let request = RestoreStepRequest {
        restore_id: op.id.clone(),
        step: "rollback".into(),
        lease_seconds: 0,
    };
    match conn.client.clone().restore_step(request).await {
        Ok(reply) => {
            let summary = reply.into_inner().summary;
            ctx.task("rollback", ctx.started, "ok", &summary);
            println!("TASK [rollback] ok: {summary}");
            ctx.record("ok", None, None).await;
            let _ = ctx.catalog.finish_run(run_id, "rolled back").await;
            println!(
                "\nPLAY RECAP (rollback)\n{host} : ok=1   changed=1   unreachable=0   failed=0   skipped=0"
            );
            exit::OK
        }
        Err(status) => {
            ctx.fail(
                "rollback",
                status.message(),
                "partly rolled back; run `ferry rollback` again",
            )
            .await
        }
    }
}

/// What every single-host operation does first: dial the host, open the catalog, start the run.
async fn open(
    config: &Config,
    global: &GlobalArgs,
    host: &str,
    kind: &str,
    flags: &Value,
) -> Result<(Target, AgentConn, Catalog, i64, Operator), i32> {
    let (target, conn) = connect(config, global, host).await?;
    let catalog = Catalog::connect(config).await.map_err(|e| {
        eprintln!("ferry {kind}: {e}");
        exit::ERROR
    })?;
    let operator = Operator::current(config);
    let run_id = catalog
        .start_run(kind, host, &operator, flags)
        .await
        .map_err(|e| {
            eprintln!("ferry {kind}: {e}");
            exit::ERROR
        })?;
    Ok((target, conn, catalog, run_id, operator))
}

async fn connect(
    config: &Config,
    global: &GlobalArgs,
    host: &str,
) -> Result<(Target, AgentConn), i32> {
    let fleet = super::fleet::prepare(config, global, host)?;
    let [target] = fleet.targets.as_slice() else {
        eprintln!(
            "ferry: {host:?} selects {} hosts; name exactly one host",
            fleet.targets.len()
        );
        return Err(exit::INVENTORY);
    };
    match fleet.dialer.connect(target).await {
        Ok(conn) => Ok((target.clone(), conn)),
        Err(e) => {
            eprintln!("UNREACHABLE: [{}] {e}", target.name);
            Err(exit::UNREACHABLE)
        }
    }
}

async fn restore(ctx: &Ctx<'_>, config: &Config, conn: &AgentConn, args: &RestoreArgs) -> i32 {
    let host = &ctx.target.name;
    let archive = match choose_archive(ctx.catalog, host, args).await {
        Ok(a) => a,
        Err(e) => return ctx.refuse("preflight", &e).await,
    };
    ctx.set_archive(&archive);
    println!(
        "PLAY [restore {host} from archive {} {} of {} (sha256 {}…)]",
        archive.id,
        archive.name,
        archive.host,
        &archive.sha256[..12]
    );
    let facts = match conn.client.clone().facts(FactsRequest {}).await {
        Ok(reply) => reply.into_inner(),
        Err(status) => {
            return ctx
                .fail(
                    "preflight",
                    &format!("facts: {}", status.message()),
                    "nothing changed",
                )
                .await;
        }
    };
    let problems = preflight(&archive, &facts);
    if !problems.is_empty() {
        return ctx.refuse("preflight", &problems.join("; ")).await;
    }
    ctx.task(
        "preflight",
        ctx.started,
        "ok",
        "version, deployment type, units and staging space checked",
    );
    println!(
        "TASK [preflight] ok: version {}, podman, units present, {} MiB free for staging",
        archive.flightctl_version,
        facts
            .staging
            .as_ref()
            .map(|s| s.free_bytes >> 20)
            .unwrap_or(0)
    );
    if args.check {
        println!("\nPLAN (--check: nothing was changed)");
        println!(
            "  stage: stream {} ({} bytes) to the host, checking its sha256",
            archive.name, archive.size
        );
        let plan = ferry_proto::restore::plan(&components(args), false);
        for (step, what) in STEP_DESCRIPTIONS
            .iter()
            .filter(|(s, _)| plan.iter().any(|p| p == s))
        {
            if *step == "commit" && args.keep_old_db {
                println!("  {step}: remove the old copies; keep the previous database");
            } else {
                println!("  {step}: {what}");
            }
        }
        ctx.record("ok", None, None).await;
        let _ = ctx.catalog.finish_run(ctx.run_id, "checked").await;
        return exit::OK;
    }
    let restore_id = format!(
        "r{}-{}",
        ctx.run_id,
        OffsetDateTime::now_utc().unix_timestamp()
    );
    let store = match Store::open(&config.store) {
        Ok(s) => s,
        Err(e) => return ctx.refuse("stage", &e.to_string()).await,
    };
    let clock = Instant::now();
    let staged_at = OffsetDateTime::now_utc();
    if let Err(e) = stage(conn, &store, &archive, &restore_id, args).await {
        return ctx.refuse("stage", &e).await;
    }
    ctx.task(
        "stage",
        staged_at,
        "ok",
        "archive streamed to the host, sha256 checked",
    );
    println!(
        "TASK [stage] ok: {} streamed and its sha256 checked ({:.1}s)",
        archive.name,
        clock.elapsed().as_secs_f64()
    );
    steps(ctx, conn, &restore_id).await
}

/// Continues the restore the agent holds, from its journal.
async fn resume(ctx: &Ctx<'_>, conn: &AgentConn) -> i32 {
    let ping = match conn.client.clone().ping(PingRequest {}).await {
        Ok(r) => r.into_inner(),
        Err(status) => return ctx.fail("resume", status.message(), "unknown").await,
    };
    match ping.operation {
        Some(op) if op.kind == "restore" => {
            println!("PLAY [resume restore {} on {}]", op.id, ctx.target.name);
            steps(ctx, conn, &op.id).await
        }
        _ => {
            ctx.refuse(
                "resume",
                &format!("{} has no unfinished restore", ctx.target.name),
            )
            .await
        }
    }
}

async fn steps(ctx: &Ctx<'_>, conn: &AgentConn, restore_id: &str) -> i32 {
    let host = &ctx.target.name;
    let mut stopped_at = None;
    let mut statuses = Value::Null;
    for step in ferry_proto::restore::STEPS {
        let clock = Instant::now();
        let step_started = OffsetDateTime::now_utc();
        if step == "stop" {
            stopped_at = Some(Instant::now());
        }
        let request = RestoreStepRequest {
            restore_id: restore_id.to_string(),
            step: step.to_string(),
            lease_seconds: ctx.lease_seconds,
        };
        match conn.client.clone().restore_step(request).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                if reply.details_json.contains("\"skipped\":true") {
                    continue;
                }
                ctx.task(step, step_started, "ok", &reply.summary);
                println!(
                    "TASK [{step}] ok: {} ({:.1}s)",
                    reply.summary,
                    clock.elapsed().as_secs_f64()
                );
                let details: Value = serde_json::from_str(&reply.details_json).unwrap_or_default();
                for w in details["warnings"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    println!("[WARNING] [{host}] {w}");
                }
                if step == "start"
                    && let Some(t) = stopped_at
                {
                    println!(
                        "downtime (application units stopped → started): {:.1}s",
                        t.elapsed().as_secs_f64()
                    );
                }
                if step == "health" {
                    statuses = details["devices_by_status"].clone();
                }
            }
            Err(status) => {
                let cause = status.message().to_string();
                let (cause, state) = match cause.rsplit_once(" (host state: ") {
                    Some((c, s)) => (c.to_string(), s.trim_end_matches(')').to_string()),
                    None => (cause, "unknown".into()),
                };
                ctx.task(
                    step,
                    step_started,
                    if step == "verify" {
                        "refused"
                    } else {
                        "failed"
                    },
                    &cause,
                );
                if let Some(e) = conn.transport_error(&status) {
                    return ctx
                        .fail(
                            step,
                            &e.to_string(),
                            "unknown: the agent could not be reached",
                        )
                        .await;
                }
                if step == "verify" {
                    return ctx.refuse(step, &cause).await;
                }
                return ctx.fail(step, &cause, &state).await;
            }
        }
    }
    println!("\ndevices by status after the restore: {statuses}");
    ctx.record("ok", None, None).await;
    let _ = ctx.catalog.finish_run(ctx.run_id, "succeeded").await;
    println!(
        "\nPLAY RECAP (restore)\n{host} : ok=1   changed=1   unreachable=0   failed=0   skipped=0"
    );
    exit::OK
}

impl<'a> Ctx<'a> {
    fn new(
        target: &'a Target,
        catalog: &'a Catalog,
        run_id: i64,
        kind: &'static str,
        operator: Operator,
        flags: Value,
        lease_seconds: u32,
    ) -> Self {
        Ctx {
            target,
            lease_seconds,
            catalog,
            run_id,
            started: OffsetDateTime::now_utc(),
            kind,
            operator,
            flags,
            archive: std::sync::Mutex::new(Value::Null),
            tasks: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Adds a task to the operation's timeline.
    fn task(&self, name: &str, started: OffsetDateTime, outcome: &str, detail: &str) {
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(TaskRecord {
                name: name.into(),
                started,
                finished: OffsetDateTime::now_utc(),
                outcome: outcome.into(),
                detail: detail.into(),
            });
    }

    fn set_archive(&self, archive: &ArchiveRecord) {
        *self.archive.lock().unwrap_or_else(|p| p.into_inner()) = json!({
            "id": archive.id, "name": archive.name, "sha256": archive.sha256, "source_host": archive.host,
        });
    }

    async fn record(&self, outcome: &str, phase: Option<&str>, error: Option<&str>) {
        if let Some(task) = phase {
            let known = self
                .tasks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .any(|t| t.name == task);
            if !known {
                self.task(
                    task,
                    OffsetDateTime::now_utc(),
                    outcome,
                    error.unwrap_or_default(),
                );
            }
        }
        let event = Event {
            kind: self.kind.into(),
            run_id: Some(self.run_id),
            operator: self.operator.clone(),
            target: self.target.name.clone(),
            archive: self
                .archive
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            flags: self.flags.clone(),
            started: self.started,
            finished: OffsetDateTime::now_utc(),
            outcome: match (outcome, self.kind) {
                ("ok", "rollback") => "rolled back".into(),
                ("ok", _) => "succeeded".into(),
                (other, _) => other.into(),
            },
            error: error.map(|e| format!("{}: {e}", phase.unwrap_or(""))),
            tasks: self.tasks.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        };
        if let Err(e) = self.catalog.append(&event).await {
            eprintln!("ferry: writing the audit ledger: {e}");
        }
        let record = HostRecord {
            host: self.target.name.clone(),
            outcome: outcome.into(),
            phase: phase.map(str::to_string),
            error: error.map(str::to_string),
            archive_id: None,
            started: self.started,
            finished: OffsetDateTime::now_utc(),
        };
        if let Err(e) = self.catalog.record_host(self.run_id, &record).await {
            eprintln!("ferry: recording the result: {e}");
        }
    }

    /// Refused before anything changed on the host.
    async fn refuse(&self, task: &str, cause: &str) -> i32 {
        let host = &self.target.name;
        println!("REFUSED: [{host}] task {task}: {cause}");
        println!("host state: unchanged (nothing on {host} was touched)");
        self.record("refused", Some(task), Some(cause)).await;
        let _ = self.catalog.finish_run(self.run_id, "refused").await;
        println!(
            "\nPLAY RECAP (restore)\n{host} : ok=0   changed=0   unreachable=0   failed=1   skipped=0"
        );
        exit::FAILED
    }

    async fn fail(&self, task: &str, cause: &str, state: &str) -> i32 {
        let host = &self.target.name;
        println!("FAILED: [{host}] task {task}: {cause}");
        println!("host state: {state}");
        println!(
            "next: fix the cause, then `ferry restore {host} --resume`; or `ferry rollback {host}` to return to the pre-restore state"
        );
        self.record("failed", Some(task), Some(cause)).await;
        let _ = self.catalog.finish_run(self.run_id, "failed").await;
        println!(
            "\nPLAY RECAP (restore)\n{host} : ok=0   changed=1   unreachable=0   failed=1   skipped=0"
        );
        exit::FAILED
    }
}

async fn choose_archive(
    catalog: &Catalog,
    host: &str,
    args: &RestoreArgs,
) -> Result<ArchiveRecord, String> {
    let source = args.from.as_deref().unwrap_or(host);
    let archive = match args.archive.as_deref() {
        None | Some("latest") => catalog
            .archives(Some(source))
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|a| a.host == source)
            .ok_or_else(|| format!("the catalog has no archive of {source}"))?,
        Some(id) => {
            let id: i64 = id
                .parse()
                .map_err(|_| format!("--archive takes an id or `latest`, not {id:?}"))?;
            catalog
                .archive(id)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no archive with id {id}"))?
        }
    };
    if archive.host != source {
        return Err(format!(
            "archive {} is of {}, not {source}; pass --from {} to restore it onto {host}",
            archive.id, archive.host, archive.host
        ));
    }
    Ok(archive)
}

/// Everything that must hold before the host is touched.
fn preflight(archive: &ArchiveRecord, facts: &ferry_proto::v1::FactsReply) -> Vec<String> {
    let mut problems = Vec::new();
    let version = facts
        .flightctl
        .as_ref()
        .map(|v| v.version.as_str())
        .unwrap_or_default();
    if version != archive.flightctl_version {
        problems.push(format!(
            "the archive is of Flight Control {}, the host runs {}; restore only onto the same version",
            archive.flightctl_version,
            if version.is_empty() { "an unknown version" } else { version }
        ));
    }
    let podman = facts
        .deployment
        .as_ref()
        .is_some_and(|d| d.r#type == ferry_proto::v1::DeploymentType::Podman as i32);
    if archive.deployment_type != "podman" || !podman {
        problems.push(format!("deployment type {} in the archive and {} on the host: only podman to podman is supported",
            archive.deployment_type, if podman { "podman" } else { "not podman" }));
    }
    let unit = |name: &str| facts.units.iter().any(|u| u.name == name);
    if !unit("flightctl-api.service") {
        problems.push("the host has no flightctl-api.service".into());
    }
    let builtin = facts
        .database
        .as_ref()
        .is_some_and(|d| d.kind == ferry_proto::v1::DatabaseKind::Builtin as i32);
    if archive.database_included && (!builtin || !unit("flightctl-db.service")) {
        problems
            .push("the archive holds a database but the host has no built-in flightctl-db".into());
    }
    let free = facts.staging.as_ref().map(|s| s.free_bytes).unwrap_or(0);
    let needed = (archive.size as u64)
        .saturating_mul(3)
        .saturating_add(64 << 20);
    if free < needed {
        problems.push(format!(
            "only {} MiB free for staging, {} MiB needed",
            free >> 20,
            needed >> 20
        ));
    }
    problems
}

/// The components a restore puts back (empty: all).
fn components(args: &RestoreArgs) -> Vec<String> {
    if args.db_only {
        vec!["db".into()]
    } else {
        args.only.clone()
    }
}

async fn stage(
    conn: &AgentConn,
    store: &Store,
    archive: &ArchiveRecord,
    restore_id: &str,
    args: &RestoreArgs,
) -> Result<(), String> {
    let path = store.path(&archive.host, &archive.name);
    let mut file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<StageChunk>(8);
    let first = StageChunk {
        restore_id: restore_id.to_string(),
        expected_sha256: archive.sha256.clone(),
        expected_size: archive.size as u64,
        keep_old_db: args.keep_old_db,
        components: components(args),
        ..Default::default()
    };
    let reader = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        if tx.blocking_send(first).is_err() {
            return Ok(());
        }
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            let chunk = StageChunk {
                data: buf[..n].to_vec().into(),
                ..Default::default()
            };
            if tx.blocking_send(chunk).is_err() {
                return Ok(());
            }
        }
    });
    let reply = conn
        .client
        .clone()
        .stage(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    reader
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    let reply =
        reply.map_err(|status| status.message().trim_start_matches("stage: ").to_string())?;
    let reply = reply.into_inner();
    if reply.sha256 != archive.sha256 {
        return Err(format!(
            "the host received sha256 {}, the catalog says {}",
            reply.sha256, archive.sha256
        ));
    }
    Ok(())
}
