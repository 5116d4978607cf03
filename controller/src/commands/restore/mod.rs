//! `ferry restore HOST`: the documented runbook as a play of journaled agent steps, refusing anything
//! unsafe before the host is touched. `ferry rollback HOST` undoes an unfinished restore.

use ferry_proto::restore::{ArchiveSide, DatabaseAccess, HostSide, incompatibilities};
use ferry_proto::v1::{
    self as pb, Component, FactsRequest, HostState, PingRequest, RestoreStepRequest, StageChunk,
    Step,
};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::catalog::ArchiveRecord;
use crate::catalog::evidence::{Skipped, Source, Standing};
use crate::cli::{GlobalArgs, RestoreArgs};
use crate::config::Config;
use crate::dial::{AgentConn, DialError};
use crate::ops::Operation;
use crate::report::{Stop, exit};
use crate::store::Store;
use crate::types::OperationKind;

mod check;
mod play;
mod prepare;
mod rollback;

pub use prepare::prepare_devices;
pub use rollback::rollback;

use play::{Ending, Play};

/// Starts the catalog run and dials the host, so even an unreachable host leaves a record.
pub(crate) async fn begin<'a>(
    opened: &'a crate::selection::Opened,
    (kind, command): (OperationKind, &'static str),
    flags: Value,
) -> Result<(Play<'a>, AgentConn), Stop> {
    let target = &opened.target;
    let operation = Operation::open(
        &opened.catalog,
        kind,
        &target.name,
        &opened.operator,
        &flags,
    )
    .await
    .map_err(|e| Stop::new(exit::ERROR, format!("ferry {command}: {e}")))?;
    let play = Play::new(target, operation, command);
    match opened.dialer.connect(target).await {
        Ok(conn) => Ok((play, conn)),
        Err(e) => {
            let next = match e {
                DialError::WrongHost { .. } => format!(
                    "correct the inventory entry of {}, then run the command again",
                    target.name
                ),
                _ => format!(
                    "check that ferry-agent runs on {} and that {}:{} is reachable (`ferry ping {}`)",
                    target.name, target.address, target.port, target.name
                ),
            };
            Err(Stop::reported(
                play.unreachable(&e.to_string(), &next).await,
            ))
        }
    }
}

pub async fn run(config: &Config, global: &GlobalArgs, host: &str, args: &RestoreArgs) -> i32 {
    let partial = args.db_only || !args.only.is_empty();
    let only: Option<Vec<&str>> =
        partial.then(|| components(args).iter().map(|c| c.name()).collect());
    let flags = json!({"archive": args.archive, "from": args.from, "keep_old_db": args.keep_old_db,
                       "check": args.check, "resume": args.resume, "only": only,
                       "db_only": args.db_only, "lease_seconds": args.lease_seconds,
                       "trust_archive_digest": args.trust_archive_digest});
    let opened = match crate::selection::open(config, global, host).await {
        Ok(opened) => opened,
        Err(stop) => return stop.say(),
    };
    let kind = if args.check {
        (OperationKind::RestoreCheck, "restore")
    } else {
        (OperationKind::Restore, "restore")
    };
    let (play, conn) = match begin(&opened, kind, flags).await {
        Ok(begun) => begun,
        Err(stop) => return stop.say(),
    };
    if args.resume {
        resume(&play, &conn, args.lease_seconds).await
    } else if args.check {
        check::run(&play, config, &conn, args).await
    } else {
        restore(&play, config, &conn, args).await
    }
}

async fn restore(play: &Play<'_>, config: &Config, conn: &AgentConn, args: &RestoreArgs) -> i32 {
    let host = play.host();
    let store = match crate::proof::open_store(config, play.catalog).await {
        Ok(s) => s,
        Err(e) => {
            return play
                .refuse("preflight", &e.to_string(), "check `store:` in ferry.yaml")
                .await;
        }
    };
    let started = OffsetDateTime::now_utc();
    let facts = match conn.client.clone().facts(FactsRequest {}).await {
        Ok(reply) => reply.into_inner(),
        Err(status) => {
            return play
                .refuse(
                    "preflight",
                    &format!("facts: {}", status.message()),
                    &format!("`ferry facts {host}`"),
                )
                .await;
        }
    };
    if let Some(unfinished) = &facts.restore {
        return play
            .refuse_in(
                "preflight",
                &format!("{host} holds an unfinished restore"),
                &unfinished.summary,
                &format!("`ferry restore {host} --resume` or `ferry rollback {host}`"),
            )
            .await;
    }
    let identities = match crate::keys::identities(config) {
        Ok(ids) => ids,
        Err(e) => {
            return play
                .refuse("preflight", &format!("encryption.identity: {e}"), "")
                .await;
        }
    };
    // Nothing unproven reaches the host: the stored bytes are hashed against the catalog (an
    // encrypted archive decrypted and authenticated whole) and the sidecar checked, here, before
    // a byte is sent; the stage streams exactly the version proven. The cheap checks go first.
    let proving = std::time::Instant::now();
    let options = crate::proof::Options {
        trust_archive_digest: args.trust_archive_digest,
        ..Default::default()
    };
    let chosen = choose_proven(
        play,
        &store,
        args,
        (identities.as_ref(), Source::Restore, options),
        "restore",
        |archive| preflight(archive, &facts, &components(args)),
    )
    .await;
    let (archive, proof) = match chosen {
        Ok(Chosen {
            archive,
            proof: Ok(proof),
        }) => (archive, proof),
        Ok(Chosen {
            proof: Err((cause, next)),
            ..
        })
        | Err((cause, next)) => return play.refuse("preflight", &cause, &next).await,
    };
    let asked = stage_check(conn, host, &archive, &components(args), None).await;
    if !asked.refusals.is_empty() {
        let (cause, next) = refusal_text(&asked.refusals);
        return play.refuse("preflight", &cause, &next).await;
    }
    let proof_seconds = proving.elapsed().as_secs_f64();
    play.set("proof_seconds", json!(proof_seconds));
    let sidecar = match &proof.trusted_over {
        Some(why) => {
            play.warn(&format!(
                "{why}; restoring anyway: --trust-archive-digest (the bytes were proven against the catalog's digest)"
            ));
            "sidecar disagrees (trusted over: --trust-archive-digest)"
        }
        None => "sidecar agrees",
    };
    if archive.host != play.identity() {
        let taken: Vec<&str> = components(args)
            .into_iter()
            .filter_map(|c| match c {
                Component::Pki => Some("PKI"),
                Component::Config => Some("config (baseDomain)"),
                Component::Encryption => Some("encryption keys"),
                _ => None,
            })
            .collect();
        if !taken.is_empty() {
            play.warn(&format!(
                "{host} takes {}'s {}; `ferry restore {host} --from {} --check` lists the changes",
                archive.host,
                taken.join(", "),
                archive.host
            ));
        }
    }
    play.task(
        "preflight",
        started,
        "ok",
        &format!(
            "stored bytes proven equal to the catalog in {proof_seconds:.1}s, {sidecar}; version {}, podman, units present, {} MiB free for staging",
            archive.flightctl_version,
            facts
                .staging
                .as_ref()
                .map(|s| s.free_bytes >> 20)
                .unwrap_or(0)
        ),
    );
    let restore_id = format!(
        "r{}-{}",
        play.run_id,
        OffsetDateTime::now_utc().unix_timestamp()
    );
    let staged_at = OffsetDateTime::now_utc();
    play.step_begins("stage");
    match stage(conn, &store, &archive, &proof, &restore_id, args).await {
        Ok(()) => {}
        Err(Staging::Refused(cause, next)) => {
            // The agent names what to do about its own state (busy, space); a byte that differs
            // is the archive's.
            let next = if next.is_empty() {
                format!("`ferry archives verify {}`", archive.short_id())
            } else {
                format!("`{}`", next.join("` or `"))
            };
            return play.refuse("stage", &cause, &next).await;
        }
        Err(Staging::Lost(cause)) => {
            return play
                .lost(
                    "stage",
                    &cause,
                    &[
                        format!("ferry rollback {host}"),
                        format!("ferry restore {host}"),
                    ],
                )
                .await;
        }
        Err(Staging::Left(failure)) => {
            // The agent could not undo the stage: it says how the host is left.
            if let Some(status) = &failure.status {
                play.set("host_status", crate::report::restore_status_json(status));
            }
            let (state, next) = aftermath(&failure);
            return play.fail("stage", &failure.cause, &state, &next).await;
        }
    }
    play.task(
        "stage",
        staged_at,
        "ok",
        &format!(
            "{} streamed to the host and its sha256 checked",
            archive.name
        ),
    );
    steps(play, conn, &restore_id, args.lease_seconds).await
}

/// Continues the restore the agent holds, from its journal.
async fn resume(play: &Play<'_>, conn: &AgentConn, lease_seconds: u32) -> i32 {
    let host = play.host();
    let ping = match conn.client.clone().ping(PingRequest {}).await {
        Ok(r) => r.into_inner(),
        Err(status) => {
            let cause = conn.failure_text(&status);
            return play
                .lost(
                    "resume",
                    &cause,
                    &[format!("ferry restore {host} --resume")],
                )
                .await;
        }
    };
    match ping.operation {
        Some(op) if op.kind == "restore" => {
            let prepare_only = ping
                .restore
                .as_ref()
                .is_some_and(|r| !r.plan.contains(&(Step::Verify as i32)));
            if prepare_only {
                play.set_kind(OperationKind::PrepareDevices).await;
            }
            play.header(&format!(
                "resume {} {} on {host}",
                if prepare_only {
                    "device preparation"
                } else {
                    "restore"
                },
                op.id
            ));
            found(play, ping.restore.as_ref()).await;
            steps(play, conn, &op.id, lease_seconds).await
        }
        _ => {
            play.refuse(
                "resume",
                &nothing_unfinished(host, "to resume", &ping.undone),
                &format!("`ferry facts {host}`"),
            )
            .await
        }
    }
}

/// Why resume or rollback has nothing to do, with what the agent did on its own last, if it did.
pub(crate) fn nothing_unfinished(host: &str, what: &str, undone: &str) -> String {
    if undone.is_empty() {
        format!("{host} has no unfinished restore {what}")
    } else {
        format!("{host} has no unfinished restore {what}; {undone}")
    }
}

/// Puts on record what resume or rollback found before acting: the restore and its state, its
/// archive, and what the agent did alone when the lease lapsed (the agent keeps no ledger).
pub(crate) async fn found(play: &Play<'_>, restore: Option<&pb::RestoreStatus>) {
    let Some(s) = restore else {
        return;
    };
    if !s.archive_sha256.is_empty() {
        match play.catalog.resolve(&s.archive_sha256).await {
            Ok(archive) => play.set_archive(&archive).await,
            Err(_) => play.set_archive_json(json!({ "sha256": s.archive_sha256 })),
        }
    }
    play.set("host_status_found", crate::report::restore_status_json(s));
    let mut detail = s.summary.clone();
    if !s.lapsed.is_empty() {
        outln!("[{}] found: {}", play.host(), s.lapsed);
        if !detail.contains(&s.lapsed) {
            detail = format!("{detail}; {}", s.lapsed);
        }
    }
    play.task("found", OffsetDateTime::now_utc(), "found", &detail);
}

/// The typed reason an agent gave for a failed Stage or RestoreStep, if it gave one.
pub(crate) fn step_failure(status: &tonic::Status) -> Option<pb::StepFailure> {
    use prost::Message;
    (!status.details().is_empty())
        .then(|| pb::StepFailure::decode(status.details()).ok())
        .flatten()
}

/// How a failure left the host, in words, and the commands that end it.
fn aftermath(failure: &pb::StepFailure) -> (String, Vec<String>) {
    match &failure.status {
        None => (
            HostState::Unchanged.describe().to_string(),
            failure.next.clone(),
        ),
        Some(status) => (status.summary.clone(), failure.next.clone()),
    }
}

/// Runs the agent's steps of restore `restore_id` in order; each one the plan skips is passed over.
pub(crate) async fn steps(
    play: &Play<'_>,
    conn: &AgentConn,
    restore_id: &str,
    lease_seconds: u32,
) -> i32 {
    let mut stopped_at = None;
    for step in ferry_proto::restore::STEPS {
        let step_started = OffsetDateTime::now_utc();
        play.step_begins(step.name());
        let request = RestoreStepRequest {
            restore_id: restore_id.to_string(),
            step: step as i32,
            lease_seconds,
        };
        match conn.client.clone().restore_step(request).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                if reply.skipped {
                    continue;
                }
                // Downtime is known only when this play stopped the units itself.
                if step == Step::Stop && reply.summary != "already done" {
                    stopped_at = Some(step_started);
                }
                play.task(step.name(), step_started, "ok", &reply.summary);
                if let Some(status) = &reply.status {
                    play.set("host_status", crate::report::restore_status_json(status));
                }
                let details: Value = serde_json::from_str(&reply.details_json).unwrap_or_default();
                for w in details["warnings"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    play.warn(w);
                }
                if step == Step::Start
                    && let Some(t) = stopped_at
                {
                    let downtime = (OffsetDateTime::now_utc() - t).as_seconds_f64();
                    outln!("downtime (application units stopped → started): {downtime:.1}s");
                    play.set("downtime_seconds", json!(downtime));
                }
                if step == Step::Health {
                    outln!(
                        "devices by status after the restore: {}",
                        details["devices_by_status"]
                    );
                    play.set("devices_by_status", details["devices_by_status"].clone());
                    play.set("kv_keys", details["kv_keys"].clone());
                }
            }
            Err(status) => {
                if let Some(e) = conn.transport_error(&status) {
                    return play
                        .lost(
                            step.name(),
                            &e.to_string(),
                            &[
                                format!("ferry restore {} --resume", play.host()),
                                format!("ferry rollback {}", play.host()),
                            ],
                        )
                        .await;
                }
                let Some(failure) = step_failure(&status) else {
                    return play
                        .fail(step.name(), status.message(), "unknown", &[])
                        .await;
                };
                if let Some(status) = &failure.status {
                    play.set("host_status", crate::report::restore_status_json(status));
                }
                let (state, next) = aftermath(&failure);
                if failure.refused {
                    return play
                        .refuse_in(step.name(), &failure.cause, &state, &next.join(" or "))
                        .await;
                }
                if failure.status.is_none() {
                    // The agent undid what little the restore had done: nothing changed.
                    let next = if !failure.next.is_empty() {
                        format!("`{}`", failure.next.join("` or `"))
                    } else if step == Step::Verify {
                        "restore another archive (`ferry archives list`)".to_string()
                    } else {
                        "fix the cause and run the restore again".to_string()
                    };
                    return play.refuse(step.name(), &failure.cause, &next).await;
                }
                return play.fail(step.name(), &failure.cause, &state, &next).await;
            }
        }
    }
    play.succeed(Ending::Succeeded, "restored and healthy")
        .await
}

/// The archive a restore (or its `--check`) uses: `--archive ID`, or the newest of the source
/// host's archives that is good in the configured store, naming each newer one it passed over and
/// why. Errors carry the next command.
async fn choose_archive(
    play: &Play<'_>,
    store: &Store,
    args: &RestoreArgs,
) -> Result<(ArchiveRecord, Vec<Skipped>), (String, String)> {
    let host = play.identity();
    let source = args.from.as_deref().unwrap_or(host);
    let here = store.id();
    let list = || "pick an archive from `ferry archives list`".to_string();
    let archive = match args.archive.as_deref() {
        None | Some("latest") => {
            let archives = play
                .catalog
                .archives()
                .await
                .map_err(|e| (e.to_string(), list()))?;
            let (newest, skipped) = crate::catalog::evidence::newest_good(&archives, source, &here);
            match newest {
                Some(a) => (a, skipped),
                None if skipped.is_empty() => {
                    // A --from that names no host with archives is likely a typo: no backup hint.
                    let known = archives.iter().any(|a| a.host == source);
                    let next = if args.from.is_some() && !known {
                        "`ferry archives list` shows the hosts that have archives (check the --from name)".to_string()
                    } else {
                        format!("`ferry backup {source}`, or `ferry archives list`")
                    };
                    return Err((format!("the catalog has no archive of {source}"), next));
                }
                None => {
                    let elsewhere: Vec<String> = skipped
                        .iter()
                        .filter_map(|s| match &s.standing {
                            Standing::Elsewhere(stores) => Some(stores.join(", ")),
                            _ => None,
                        })
                        .collect();
                    let next = if elsewhere.len() == skipped.len() {
                        format!(
                            "its archives are in {}: set `store:` to that store to restore from it, or copy them here with `ferry archives copy --all --to {here}` while it is configured",
                            elsewhere[0]
                        )
                    } else {
                        format!(
                            "`ferry archives list {source}` shows each archive's state; `ferry archives verify --all` re-checks them; `ferry backup {source}` makes a new one"
                        )
                    };
                    return Err((
                        format!(
                            "{source} has no archive proven good in {here}: {}",
                            skipped
                                .iter()
                                .map(Skipped::describe)
                                .collect::<Vec<_>>()
                                .join("; ")
                        ),
                        next,
                    ));
                }
            }
        }
        Some(id) => (
            play.catalog
                .resolve_live(id)
                .await
                .map_err(|e| (e, list()))?,
            Vec::new(),
        ),
    };
    let (archive, skipped) = archive;
    if archive.host != source {
        return Err((
            format!(
                "archive {} is of {}, not {source}",
                archive.short_id(),
                archive.host
            ),
            format!(
                "`ferry archives list {}` lists its own archives; to restore {}'s onto it on purpose, check first: `ferry restore {} --from {} --archive {} --check`",
                play.host(),
                archive.host,
                play.host(),
                archive.host,
                archive.short_id(),
            ),
        ));
    }
    if let crate::catalog::evidence::Standing::Elsewhere(stores) = archive.standing(&here) {
        return Err((
            format!(
                "archive {} is recorded in {}, not in the configured store {here}",
                archive.short_id(),
                stores.join(", ")
            ),
            format!(
                "set `store:` to {} to restore it, or `ferry archives copy --all --to {here}` from there first",
                stores[0]
            ),
        ));
    }
    Ok((archive, skipped))
}

/// An archive chosen for a restore or its check, with its proof (or why there is none).
pub(crate) struct Chosen {
    pub(crate) archive: ArchiveRecord,
    pub(crate) proof: Result<crate::proof::Proof, (String, String)>,
}

/// The archive a restore (or check) uses, proven: `--archive ID`, or the newest good archive, and
/// when its proof finds it bad (recorded) the next good one, each skip printed. `gate` is what must
/// hold before an archive is worth reading (the cheap preflight). The outer error: no archive at
/// all; the proof's: this archive cannot be used. Errors carry the next command.
pub(crate) async fn choose_proven(
    play: &Play<'_>,
    store: &Store,
    args: &RestoreArgs,
    (identities, by, options): (
        Option<&ferry_archive::Identities>,
        Source,
        crate::proof::Options,
    ),
    verb: &str,
    gate: impl Fn(&ArchiveRecord) -> Vec<String>,
) -> Result<Chosen, (String, String)> {
    let mut said: Vec<i64> = Vec::new();
    let mut skipped_json = Vec::new();
    loop {
        let (archive, skipped) = choose_archive(play, store, args).await?;
        for s in &skipped {
            if said.contains(&s.archive.id) {
                continue;
            }
            play.warn(&s.describe());
            said.push(s.archive.id);
            skipped_json.push(json!({"id": s.archive.short_id(), "name": s.archive.name,
                "state": s.standing.word(), "why": s.standing.why_not()}));
        }
        play.set("skipped", json!(skipped_json));
        if said.contains(&archive.id) {
            // Found bad, yet chosen again: the catalog did not take the finding.
            return Err((
                format!(
                    "archive {} was found unusable but the catalog did not record it",
                    archive.short_id()
                ),
                format!("`ferry archives verify {}`", archive.short_id()),
            ));
        }
        play.set_archive(&archive).await;
        play.header(&format!(
            "{verb} {} from archive {} {} of {}",
            play.host(),
            archive.short_id(),
            archive.name,
            archive.host
        ));
        let problems = gate(&archive);
        if !problems.is_empty() {
            return Ok(Chosen {
                archive,
                proof: Err((problems.join("; "), String::new())),
            });
        }
        match crate::proof::prove(store, play.catalog, &archive, identities, by, options).await {
            Ok(proof) => {
                return Ok(Chosen {
                    archive,
                    proof: Ok(proof),
                });
            }
            // Chosen as the newest good one, found otherwise now (and recorded): the next one.
            Err(u) if args.archive.is_none() && u.finding.is_some() => {
                play.warn(&format!(
                    "skipped archive {} ({}): {}; trying the next good archive",
                    archive.short_id(),
                    archive.name,
                    u.cause
                ));
                said.push(archive.id);
                skipped_json.push(json!({"id": archive.short_id(), "name": archive.name,
                    "state": u.finding.as_ref().and_then(|f| f.state()).map(|s| s.as_str()),
                    "why": u.cause}));
            }
            Err(u) => {
                let next = unproven_next(play.host(), &archive, &u);
                return Ok(Chosen {
                    archive,
                    proof: Err((u.cause, next)),
                });
            }
        }
    }
}

/// The next command when an archive's stored bytes are not proven.
fn unproven_next(host: &str, archive: &ArchiveRecord, u: &crate::proof::Unproven) -> String {
    use crate::catalog::evidence::{Finding, Reason};
    match &u.finding {
        Some(Finding::Suspect(Reason::SidecarDiffers, _)) => format!(
            "`ferry archives verify {}`; if the catalog's digest is the one to trust, pass --trust-archive-digest (recorded in the ledger)",
            archive.short_id()
        ),
        Some(_) => format!(
            "it is marked so in the catalog; `ferry restore {host}` without --archive picks the newest good archive (`ferry archives list {}` shows their states)",
            archive.host
        ),
        None => "fix the cause above and run the command again".into(),
    }
}

/// Everything that must hold before the host is touched: the shared compatibility rules, the units
/// and the staging space.
fn preflight(
    archive: &ArchiveRecord,
    facts: &pb::FactsReply,
    components: &[Component],
) -> Vec<String> {
    let version = facts
        .flightctl
        .as_ref()
        .map(|v| v.version.as_str())
        .filter(|v| !v.is_empty());
    let podman = facts
        .deployment
        .as_ref()
        .is_some_and(|d| d.r#type == pb::DeploymentType::Podman as i32);
    let mut problems = incompatibilities(
        ArchiveSide {
            version: &archive.flightctl_version,
            deployment_type: &archive.deployment_type,
            database_included: archive.database_included,
        },
        HostSide {
            version,
            podman,
            database: database_access(facts),
        },
        components,
    );
    let unit = |name: &str| facts.units.iter().any(|u| u.name == name);
    if !unit("flightctl-api.service") {
        problems.push("the host has no flightctl-api.service".into());
    }
    let wants_db = ferry_proto::restore::chosen(components).contains(&Component::Db);
    if archive.database_included
        && wants_db
        && database_access(facts) == DatabaseAccess::Builtin
        && !unit("flightctl-db.service")
    {
        problems
            .push("the archive holds a database but the host has no flightctl-db.service".into());
    }
    let archive_keys: Vec<String> = archive.source_facts["identity"]["encryption_key_ids"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect();
    let host_keys = facts
        .identity
        .as_ref()
        .map(|i| i.encryption_key_ids.clone())
        .unwrap_or_default();
    let missing = ferry_proto::restore::missing_keys(
        &archive.db_key_ids,
        &archive_keys,
        &host_keys,
        components,
    );
    if !missing.is_empty() {
        problems.push(ferry_proto::restore::missing_keys_problem(
            &missing,
            &archive_keys,
            &host_keys,
            components,
        ));
    }
    problems
}

/// What the host's stage would refuse for `archive` (busy, an unfinished restore, staging space,
/// its database), asked of the agent itself, and the host files the restore would remove (known
/// when the archive's manifest was read). A failed call is a refusal too.
async fn stage_check(
    conn: &AgentConn,
    host: &str,
    archive: &ArchiveRecord,
    components: &[Component],
    verified: Option<&ferry_archive::Verified>,
) -> pb::StageCheckReply {
    let captured = verified
        .and_then(|v| v.manifest.as_ref())
        .map(|m| m.captured())
        .unwrap_or_default();
    let present = captured
        .iter()
        .filter(|p| verified.is_some_and(|v| v.entries.iter().any(|e| &e.path == *p)))
        .cloned()
        .collect();
    let entries = verified
        .map(|v| {
            v.entries
                .iter()
                .filter(|e| {
                    captured
                        .iter()
                        .any(|c| e.path.starts_with(&format!("{c}/")))
                })
                .map(|e| e.path.clone())
                .collect()
        })
        .unwrap_or_default();
    let request = pb::StageCheckRequest {
        expected_size: archive.size as u64,
        components: components.iter().map(|c| *c as i32).collect(),
        captured,
        present,
        entries,
    };
    match conn.client.clone().check_stage(request).await {
        Ok(reply) => reply.into_inner(),
        Err(status) => pb::StageCheckReply {
            refusals: vec![pb::StageRefusal {
                cause: format!(
                    "asking the agent what its stage would refuse: {}",
                    status.message()
                ),
                next: vec![format!("ferry facts {host}")],
            }],
            removals: Vec::new(),
        },
    }
}

/// Refusals as one cause and their next commands as one hint.
fn refusal_text(refusals: &[pb::StageRefusal]) -> (String, String) {
    let cause = refusals
        .iter()
        .map(|r| r.cause.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    let mut next: Vec<&str> = Vec::new();
    for n in refusals.iter().flat_map(|r| &r.next) {
        if !next.contains(&n.as_str()) {
            next.push(n);
        }
    }
    let next = if next.is_empty() {
        String::new()
    } else {
        format!("`{}`", next.join("` or `"))
    };
    (cause, next)
}

/// The components a restore puts back.
fn components(args: &RestoreArgs) -> Vec<Component> {
    if args.db_only {
        return vec![Component::Db];
    }
    let named: Vec<Component> = args
        .only
        .iter()
        .filter_map(|c| Component::from_name(c))
        .collect();
    ferry_proto::restore::chosen(&named)
}

/// How the host reaches its database, from its facts.
fn database_access(facts: &pb::FactsReply) -> DatabaseAccess {
    match facts.database.as_ref().map(|d| d.kind) {
        Some(k) if k == pb::DatabaseKind::External as i32 => DatabaseAccess::External,
        _ => DatabaseAccess::Builtin,
    }
}

/// Streams the upstream archive (decrypted on the way, in memory, when encrypted) to the host.
async fn stage(
    conn: &AgentConn,
    store: &Store,
    archive: &ArchiveRecord,
    proof: &crate::proof::Proof,
    restore_id: &str,
    args: &RestoreArgs,
) -> Result<(), Staging> {
    let location = store.location(&archive.host, &archive.object());
    let opened = proof
        .open(store, archive)
        .await
        .map_err(|e| Staging::Refused(e, Vec::new()))?;
    let (expected_sha256, expected_size) = match &archive.sealed {
        Some(s) => (s.plain_sha256.clone(), s.plain_size as u64),
        None => (archive.sha256.clone(), archive.size as u64),
    };
    let first = StageChunk {
        restore_id: restore_id.to_string(),
        expected_sha256: expected_sha256.clone(),
        expected_size,
        keep_old_db: args.keep_old_db,
        // Only what the operator named: the agent holds a named component to be in the archive.
        components: if args.db_only || !args.only.is_empty() {
            components(args).into_iter().map(|c| c as i32).collect()
        } else {
            Vec::new()
        },
        lease_seconds: args.lease_seconds,
        ..Default::default()
    };
    let (rx, reader) = crate::proof::send_archive(opened, first, |data| StageChunk {
        data,
        ..Default::default()
    });
    let reply = conn.client.clone().stage(rx).await;
    let read = reader.await;
    // The agent's answer first: a lost agent is not a store problem.
    let reply = reply.map_err(|status| {
        if let Some(e) = conn.transport_error(&status) {
            return Staging::Lost(e.to_string());
        }
        match step_failure(&status) {
            Some(failure) if failure.status.is_some() && !failure.refused => Staging::Left(failure),
            Some(failure) => Staging::Refused(failure.cause, failure.next),
            None => Staging::Refused(status.message().to_string(), Vec::new()),
        }
    })?;
    read.map_err(|e| Staging::Refused(e.to_string(), Vec::new()))?
        .map_err(|e| Staging::Refused(format!("reading {location}: {e}"), Vec::new()))?;
    // (A stored copy that no longer matches is reported by the host, which checks every byte.)
    let reply = reply.into_inner();
    if reply.sha256 != expected_sha256 {
        return Err(Staging::Refused(
            format!(
                "the host received sha256 {}, the catalog says {expected_sha256}",
                reply.sha256
            ),
            Vec::new(),
        ));
    }
    Ok(())
}

/// How a stage that did not complete left the host.
enum Staging {
    /// Refused or undone by the agent: nothing on the host changed.
    Refused(String, Vec<String>),
    /// The agent was lost: whether it holds a partial stage is not known.
    Lost(String),
    /// The agent could not undo it: the failure names the state.
    Left(pb::StepFailure),
}
