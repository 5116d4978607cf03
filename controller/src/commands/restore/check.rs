//! `ferry restore HOST --check`: every preflight check of a real restore, plus a full re-read of the
//! stored archive on the controller (digest against the catalog and the sidecar, every entry, the
//! metadata and the manifest), and what a restore would change in the host's identity. Nothing is
//! staged and nothing on the host changes. The ledger records it as `restore-check`.

use std::collections::BTreeMap;

use ferry_archive::Verified;
use ferry_proto::restore::DatabaseAccess;
use ferry_proto::v1::{self as pb, Component, Step};
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::play::{Ending, Play};
use super::{
    Chosen, choose_proven, components, database_access, preflight, refusal_text, stage_check,
};
use crate::catalog::ArchiveRecord;
use crate::catalog::evidence::Source;
use crate::cli::RestoreArgs;
use crate::config::Config;
use crate::dial::AgentConn;

/// What each of the agent's steps does.
fn describe(step: Step, access: DatabaseAccess, keep_old_db: bool, swaps_db: bool) -> &'static str {
    match step {
        Step::Verify => {
            "check the staged archive: sha256, every tar entry, manifest, metadata, version and deployment type"
        }
        Step::Load => {
            "load db/dump.sql into a temporary database while the control plane keeps running"
        }
        Step::Stop => {
            "stop the application units the host has (never flightctl-db, flightctl-kv or flightctl.target)"
        }
        Step::SwapDb => "rename the live database aside and the restored one into place",
        Step::SwapFiles => "swap the chosen files by rename, keeping the pre-restore copies",
        Step::PrepareLoaded => {
            "inside flightctl-db, on the loaded temporary database: mark devices awaiting reconnect, annotate enrollment requests, write the SystemRestored event, list the KV keys"
        }
        Step::PrepareDevices if access == DatabaseAccess::External => {
            "on the external database: mark devices awaiting reconnect, annotate enrollment requests, write the SystemRestored event"
        }
        Step::PrepareDevices => {
            "inside flightctl-db, on the live database: mark devices awaiting reconnect, annotate enrollment requests, write the SystemRestored event"
        }
        Step::SeedKv => {
            "flush the KV and seed one awaiting-reconnect key per device through flightctl-kv (no restart)"
        }
        Step::Start => "start the application units that were running",
        Step::Health => "API ready at the archive's version, one KV key per device",
        Step::Commit if !swaps_db => "remove the pre-restore copies",
        Step::Commit if keep_old_db => "remove the pre-restore copies; keep the previous database",
        Step::Commit => "drop the previous database and the pre-restore copies",
        _ => "",
    }
}

/// Files whose contents tell the archive's identity.
fn identity_file(path: &str) -> bool {
    path == "config/service-config.yaml" || (path.starts_with("pki/") && path.ends_with(".crt"))
}

pub async fn run(play: &Play<'_>, config: &Config, conn: &AgentConn, args: &RestoreArgs) -> i32 {
    let host = play.host().to_string();
    let store = match crate::proof::open_store(config, play.catalog).await {
        Ok(s) => s,
        Err(e) => {
            return play
                .refuse("check", &e.to_string(), "check `store:` in ferry.yaml")
                .await;
        }
    };
    let started = OffsetDateTime::now_utc();
    let facts = match conn.client.clone().facts(pb::FactsRequest {}).await {
        Ok(reply) => reply.into_inner(),
        Err(status) => {
            return play
                .refuse(
                    "check",
                    &format!("facts: {}", status.message()),
                    &format!("`ferry facts {host}`"),
                )
                .await;
        }
    };
    let identities = match crate::keys::identities(config) {
        Ok(ids) => ids,
        Err(e) => {
            return play
                .refuse("check", &format!("encryption.identity: {e}"), "")
                .await;
        }
    };
    // The same choice and proof a restore makes, reading the archive through as well (entries,
    // metadata, manifest); what it finds is recorded as evidence. Every other problem is gathered
    // with it rather than stopping at the first.
    let options = crate::proof::Options {
        read_archive: true,
        keep: Some(identity_file),
        trust_archive_digest: args.trust_archive_digest,
        ..Default::default()
    };
    let Chosen { archive, proof } = match choose_proven(
        play,
        &store,
        args,
        (identities.as_ref(), Source::Check, options),
        "check: restore",
        |_| Vec::new(),
    )
    .await
    {
        Ok(chosen) => chosen,
        Err((e, next)) => return play.refuse("check", &e, &next).await,
    };
    let chosen = components(args);
    let mut problems = preflight(&archive, &facts, &chosen);
    if let Some(unfinished) = &facts.restore {
        problems.push(format!(
            "{host} holds an unfinished restore ({}); end it first with `ferry restore {host} --resume` or `ferry rollback {host}`",
            unfinished.summary
        ));
    }
    let mut digest = "sha256 matches the catalog and the sidecar";
    let mut next = format!(
        "`ferry archives verify {}`, or pick another archive from `ferry archives list`",
        archive.short_id()
    );
    let verified = match proof {
        Ok(proof) => {
            if let Some(distrust) = &proof.trusted_over {
                play.warn(&format!(
                    "{distrust}; a restore would go ahead: --trust-archive-digest"
                ));
                digest = "sha256 matches the catalog (the sidecar does not: trusted by --trust-archive-digest)";
            }
            proof.verified
        }
        Err((cause, unproven_next)) => {
            problems.push(cause);
            if !unproven_next.is_empty() {
                next = unproven_next;
            }
            None
        }
    };
    if let Some(v) = &verified {
        problems.extend(metadata_problems(&archive, v, &facts));
        let partial = args.db_only || !args.only.is_empty();
        let absent = ferry_archive::absent_components(&chosen, &v.entries);
        if partial && !absent.is_empty() {
            problems.push(format!(
                "the archive has no {}: --only names nothing to restore there",
                absent
                    .iter()
                    .map(|c| c.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    // The host's own answers: what its stage would refuse, what the restore would remove.
    let asked = stage_check(conn, &host, &archive, &chosen, verified.as_ref()).await;
    if !asked.refusals.is_empty() {
        let (cause, host_next) = refusal_text(&asked.refusals);
        if problems.is_empty() {
            next = host_next;
        }
        problems.push(cause);
    }
    if !problems.is_empty() {
        return play.refuse("check", &problems.join("; "), &next).await;
    }
    play.task(
        "check",
        started,
        "ok",
        &format!(
            "archive re-read on the controller: {digest}, {} entries safe, manifest agrees; version {}, podman, units present, staging space",
            verified.as_ref().map(|v| v.entries.len()).unwrap_or(0),
            archive.flightctl_version
        ),
    );
    if let Some(v) = &verified {
        identity_changes(play, &archive, v, &facts, &chosen);
    }
    let access = database_access(&facts);
    let plan = ferry_proto::restore::plan(&chosen, false, access);
    outln!("\nPLAN (--check: nothing was changed)");
    outln!(
        "  stage: stream {} ({} bytes) to the host, checking its sha256",
        archive.name,
        archive.size
    );
    for step in &plan {
        outln!(
            "  {}: {}",
            step.name(),
            describe(
                *step,
                access,
                args.keep_old_db,
                plan.contains(&Step::SwapDb)
            )
        );
    }
    if !asked.removals.is_empty() {
        outln!(
            "\nREMOVES (the archive's backup found none of these; kept aside until commit, put back by rollback)"
        );
        for path in &asked.removals {
            outln!("  {path}");
        }
    }
    play.set("removals", json!(asked.removals));
    play.set(
        "components",
        json!(chosen.iter().map(|c| c.name()).collect::<Vec<_>>()),
    );
    play.set(
        "plan",
        json!(plan.iter().map(|s| s.name()).collect::<Vec<_>>()),
    );
    play.succeed(Ending::Checked, "unchanged").await
}

/// The archive's own metadata against the catalog and the host.
fn metadata_problems(archive: &ArchiveRecord, v: &Verified, facts: &pb::FactsReply) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(metadata) = &v.metadata else {
        return vec!["the archive has no metadata.json".into()];
    };
    if v.manifest.is_none() {
        problems.push("the archive has no ferry-manifest.json".into());
    }
    let host_version = facts
        .flightctl
        .as_ref()
        .map(|f| f.version.as_str())
        .unwrap_or_default();
    if metadata.version != host_version {
        problems.push(format!(
            "its metadata.json says Flight Control {}, the host runs {}",
            metadata.version,
            if host_version.is_empty() {
                "an unknown version"
            } else {
                host_version
            }
        ));
    }
    if metadata.database_included != archive.database_included {
        problems.push(format!(
            "its metadata.json says databaseIncluded={}, the catalog says {}",
            metadata.database_included, archive.database_included
        ));
    }
    let has_dump = v.entries.iter().any(|e| e.path == "db/dump.sql");
    if metadata.database_included != has_dump {
        problems.push(format!(
            "metadata.json says databaseIncluded={} but db/dump.sql is {}",
            metadata.database_included,
            if has_dump { "present" } else { "absent" }
        ));
    }
    if !v.entries.iter().any(|e| e.path == "pki") {
        problems.push("it has no pki/".into());
    }
    problems
}

/// What the restore changes in who the control plane is (base domain; certificates whose subject or
/// names differ): shown, and kept in the document.
fn identity_changes(
    play: &Play<'_>,
    archive: &ArchiveRecord,
    v: &Verified,
    facts: &pb::FactsReply,
    chosen: &[Component],
) {
    let host = play.host();
    let current = facts.identity.clone().unwrap_or_default();
    let base_domain = v
        .kept
        .get("config/service-config.yaml")
        .map(|b| ferry_archive::base_domain(&String::from_utf8_lossy(b)))
        .unwrap_or_default();
    let host_certs: BTreeMap<&str, &pb::Certificate> = current
        .certificates
        .iter()
        .map(|c| (c.path.as_str(), c))
        .collect();
    let wants = |c: Component| chosen.contains(&c);
    let mut certificates = Vec::new();
    if wants(Component::Pki) {
        for (path, pem) in &v.kept {
            let Some(relative) = path.strip_prefix("pki/") else {
                continue;
            };
            let Some(info) = ferry_certs::certificates_in_pem(pem).into_iter().next() else {
                continue;
            };
            let now = host_certs.get(relative);
            let same = now.is_some_and(|c| c.subject == info.subject && c.sans == info.sans);
            if !same {
                certificates.push(json!({
                    "path": relative,
                    "archive": {"subject": info.subject, "sans": info.sans},
                    "host": now.map(|c| json!({"subject": c.subject, "sans": c.sans})),
                }));
            }
        }
    }
    let domain_changes = wants(Component::Config) && base_domain != current.base_domain;
    let cross = archive.host != play.identity();
    if cross || domain_changes || !certificates.is_empty() {
        outln!("\nIDENTITY CHANGES");
        if cross {
            outln!(
                "  source host: {} (the archive is {}'s, the target is {host})",
                archive.host,
                archive.host
            );
        }
        if domain_changes {
            outln!(
                "  baseDomain: {host} has {:?}, the archive has {:?}",
                current.base_domain,
                base_domain
            );
        }
        let named = |c: &Value| match c.is_null() {
            true => "(absent)".to_string(),
            false => format!(
                "{} [{}]",
                c["subject"].as_str().unwrap_or_default(),
                c["sans"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        for c in &certificates {
            outln!(
                "  pki/{}: {} -> {}",
                c["path"].as_str().unwrap_or_default(),
                named(&c["host"]),
                named(&c["archive"])
            );
        }
    }
    play.set(
        "identity_changes",
        json!({
            "source_host": archive.host,
            "cross_host": cross,
            "base_domain": {"host": current.base_domain, "archive": base_domain,
                            "changes": domain_changes},
            "certificates": Value::Array(certificates),
        }),
    );
}
