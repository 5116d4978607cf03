//! `ferry archives list|show|verify|export` and `ferry catalog rebuild`.

mod lifecycle;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use ferry_archive::{hex, sidecar_line};
use serde_json::json;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::catalog::evidence::{Finding, Source, Standing};
use crate::catalog::ledger::Event;
use crate::catalog::{ArchiveRecord, Catalog, Operator};
use crate::cli::{ArchivesCommand, CatalogCommand, GlobalArgs};
use crate::config::Config;
use crate::inventory::Inventory;
use crate::ops::Operation;
use crate::report::human_bytes;
use crate::report::{Format, Stop, exit};
use crate::store::Store;
use crate::types::OperationKind;

async fn open(config: &Config) -> Result<(Store, Catalog), Stop> {
    let store = Store::open(&config.store, &config.state_dir)
        .await
        .map_err(|e| Stop::new(exit::ERROR, format!("ferry: {e}")))?;
    let catalog = crate::ops::catalog(config)
        .await
        .map_err(|e| Stop::new(exit::ERROR, format!("ferry: {e}")))?;
    crate::proof::adopt(&catalog, &store).await;
    Ok((store, catalog))
}

pub async fn run(config: &Config, global: &GlobalArgs, command: ArchivesCommand) -> i32 {
    let format = global.output;
    let (store, catalog) = match open(config).await {
        Ok(pair) => pair,
        Err(stop) => return stop.say(),
    };
    let result = match command {
        ArchivesCommand::List { pattern } => {
            list(&catalog, &store, config, global, format, pattern.as_deref()).await
        }
        ArchivesCommand::Show { id } => show(&catalog, &store, format, &id).await,
        ArchivesCommand::Verify {
            id,
            all,
            trust_archive_digest,
        } => {
            verify(
                &store,
                &catalog,
                config,
                format,
                id.as_deref(),
                all,
                trust_archive_digest,
            )
            .await
        }
        ArchivesCommand::Export { id, dir, decrypt } => {
            export(&store, &catalog, config, &id, &dir, decrypt).await
        }
        ArchivesCommand::Copy { id, all, to } => {
            copy(&store, &catalog, config, id.as_deref(), all, &to).await
        }
        ArchivesCommand::Prune { pattern, dry_run } => {
            lifecycle::prune(
                config,
                global,
                &store,
                &catalog,
                pattern.as_deref(),
                dry_run,
            )
            .await
        }
        ArchivesCommand::Pin { id } => lifecycle::pin(config, &catalog, &id, true).await,
        ArchivesCommand::Unpin { id } => lifecycle::pin(config, &catalog, &id, false).await,
        ArchivesCommand::Delete { id, force } => {
            lifecycle::delete(config, &store, &catalog, &id, force).await
        }
    };
    result.unwrap_or_else(|e| {
        errln!("ferry archives: {e}");
        exit::ERROR
    })
}

/// An archive as JSON: `id` is the stable digest prefix, `catalog_number` the row number.
fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// An archive as JSON, with where it stands in `store` (the configured one).
pub(crate) fn archive_json(a: &ArchiveRecord, store: &str) -> serde_json::Value {
    let mut doc = serde_json::to_value(a).unwrap_or_default();
    doc["catalog_number"] = json!(a.id);
    doc["id"] = json!(a.short_id());
    let standing = a.standing(store);
    let copy = a.copy_in(store);
    doc["store"] = json!(store);
    doc["state"] = json!(standing.word());
    doc["reason"] = json!(match &standing {
        Standing::Suspect(r) => Some(r.as_str()),
        _ => None,
    });
    doc["evidence"] = json!(copy.map(|c| c.evidence.as_str()));
    doc["state_at"] = json!(copy.map(|c| rfc3339(c.state_at)));
    doc["proven_at"] = json!(copy.and_then(|c| c.proven_at).map(rfc3339));
    doc["suspect"] = json!(match &standing {
        Standing::Suspect(_) => copy.and_then(|c| c.detail.clone()),
        _ => None,
    });
    doc
}

/// The STATE column: the copy's state here and the age of its evidence.
fn state_cell(a: &ArchiveRecord, store: &str, now: OffsetDateTime) -> String {
    let copy = a.copy_in(store);
    match (a.standing(store), copy) {
        (Standing::Good, Some(c)) => format!(
            "good {}",
            crate::catalog::evidence::ago(now, c.proven_at.unwrap_or(c.state_at))
        ),
        (Standing::Suspect(r), Some(c)) => format!(
            "SUSPECT:{} {}",
            r.as_str(),
            crate::catalog::evidence::ago(now, c.state_at)
        ),
        (Standing::Missing, Some(c)) => {
            format!("MISSING {}", crate::catalog::evidence::ago(now, c.state_at))
        }
        (Standing::Elsewhere(_), _) => "other store".into(),
        _ => "unrecorded".into(),
    }
}

/// The hosts `pattern` names: an inventory pattern, where hosts only the catalog knows (retired
/// ones) count as ungrouped.
fn select_hosts(
    config: &Config,
    global: &GlobalArgs,
    pattern: &str,
    catalogued: &BTreeSet<String>,
) -> Result<BTreeSet<String>, String> {
    let sources = crate::selection::inventory_sources(config, global);
    let mut inventory = if sources.is_empty() {
        Inventory::default()
    } else {
        Inventory::load_all(sources).map_err(|e| format!("inventory {e}"))?
    };
    inventory.add_ungrouped(catalogued.iter().cloned());
    let selection = crate::pattern::select(&inventory, pattern, global.limit.as_deref())
        .map_err(|e| e.to_string())?;
    for warning in &selection.warnings {
        errln!("[WARNING]: {warning}");
    }
    // Archives are filed under the agent's name: a host the inventory knows by another name
    // (`ferry_agent_name`) selects its agent's archives, and says so.
    let mut hosts = BTreeSet::new();
    for host in selection.hosts {
        if let Ok(target) = inventory.target(&host)
            && target.agent_name != host
        {
            errln!(
                "[NOTE]: {host} is known to its agent as {} (ferry_agent_name): its archives are filed under {}",
                target.agent_name,
                target.agent_name
            );
            hosts.insert(target.agent_name);
        }
        hosts.insert(host);
    }
    Ok(hosts)
}

async fn list(
    catalog: &Catalog,
    store: &Store,
    config: &Config,
    global: &GlobalArgs,
    format: Format,
    pattern: Option<&str>,
) -> Result<i32, String> {
    let mut archives = catalog.archives().await.map_err(|e| e.to_string())?;
    if let Some(pattern) = pattern {
        let catalogued: BTreeSet<String> = archives.iter().map(|a| a.host.clone()).collect();
        let hosts = match select_hosts(config, global, pattern, &catalogued) {
            Ok(hosts) => hosts,
            Err(e) => {
                errln!("ferry archives list: {e}");
                return Ok(exit::INVENTORY);
            }
        };
        archives.retain(|a| hosts.contains(&a.host));
    }
    let here = store.id();
    let now = OffsetDateTime::now_utc();
    match format {
        Format::Json => crate::output::json(&json!(
            archives
                .iter()
                .map(|a| archive_json(a, &here))
                .collect::<Vec<_>>()
        )),
        Format::Text | Format::Csv => {
            outln!(
                "{:<12}  {:<12} {:<44} {:>10}  {:<8} {:<3} {:<24}",
                "ID",
                "HOST",
                "ARCHIVE",
                "SIZE",
                "VERSION",
                "DB",
                "STATE"
            );
            for a in &archives {
                outln!(
                    "{:<12}  {:<12} {:<44} {:>10}  {:<8} {:<3} {:<24}{}",
                    a.short_id(),
                    a.host,
                    a.name,
                    human_bytes(a.size as u64),
                    a.flightctl_version,
                    if a.database_included { "yes" } else { "no" },
                    state_cell(a, &here, now),
                    format!(
                        "{}{}{}",
                        if a.sealed.is_some() {
                            " (encrypted)"
                        } else {
                            ""
                        },
                        // A drill's pass speaks for the bytes it read: shown while they are good.
                        a.drilled_at
                            .filter(|_| a.standing(&here).is_good())
                            .map(|t| format!(" (verified by restore {})", rfc3339(t)))
                            .unwrap_or_default(),
                        if a.pinned { " (pinned)" } else { "" }
                    )
                );
            }
            outln!(
                "{} archive(s) (states are of copies in {here})",
                archives.len()
            );
        }
    }
    Ok(exit::OK)
}

async fn show(catalog: &Catalog, store: &Store, format: Format, id: &str) -> Result<i32, String> {
    let a = catalog.resolve(id).await?;
    let here = store.id();
    let now = OffsetDateTime::now_utc();
    match format {
        Format::Json => crate::output::json(&archive_json(&a, &here)),
        Format::Text | Format::Csv => {
            outln!("id:                {}", a.short_id());
            outln!("catalog number:    {}", a.id);
            outln!("host:              {}", a.host);
            outln!("archive:           {}", a.name);
            outln!(
                "size:              {} ({} bytes)",
                human_bytes(a.size as u64),
                a.size
            );
            outln!("sha256:            {}", a.sha256);
            outln!("created:           {}", rfc3339(a.created_at));
            match a.copy_in(&here) {
                Some(c) => outln!("state:             {} in {here}", c.describe(now)),
                None => outln!(
                    "state:             {} (configured store: {here})",
                    a.standing(&here).why_not()
                ),
            }
            if !a.standing(&here).is_good() && a.deleted_at.is_none() {
                outln!(
                    "                   restore, drills, retention and the RPO skip it; `ferry archives verify {}` checks it again",
                    a.short_id()
                );
            }
            if let Some(why) = a.deleted() {
                outln!("DELETED:           {why}");
            }
            if let Some(sealed) = &a.sealed {
                outln!(
                    "encrypted:         yes (age); size and sha256 above are the stored ciphertext's"
                );
                outln!("plaintext sha256:  {}", sealed.plain_sha256);
                outln!(
                    "plaintext size:    {}",
                    human_bytes(sealed.plain_size.max(0) as u64)
                );
                outln!("key wrapped for:   {}", sealed.key_ids.join(", "));
            }
            outln!("compression:       {}", a.compression);
            if let Some(at) = a.drilled_at {
                outln!(
                    "verified by restore: {} (a drill loaded, counted and checked it)",
                    rfc3339(at)
                );
            }
            outln!("flightctl version: {}", a.flightctl_version);
            outln!("deployment type:   {}", a.deployment_type);
            outln!("database included: {}", a.database_included);
            if let Some(ms) = a.duration_ms {
                outln!("duration:          {:.1}s", ms as f64 / 1000.0);
            }
            outln!("pinned:            {}", a.pinned);
            for c in &a.copies {
                outln!("copy:              {}: {}", c.store, c.describe(now));
            }
            if let Some(counts) = a.row_counts.as_object() {
                outln!("row counts:");
                for (table, n) in counts {
                    outln!("  {table:<30} {n}");
                }
            }
            for w in a
                .warnings
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|w| w.as_str())
            {
                outln!("warning: {w}");
            }
        }
    }
    Ok(exit::OK)
}

/// Writes one audit entry about an archive.
async fn audit(
    catalog: &Catalog,
    config: &Config,
    kind: OperationKind,
    a: &ArchiveRecord,
    flags: serde_json::Value,
    started: OffsetDateTime,
    error: Option<String>,
) {
    let event = Event {
        archive: a.ledger_json(),
        flags,
        started,
        finished: OffsetDateTime::now_utc(),
        outcome: if error.is_none() {
            "succeeded".into()
        } else {
            "failed".into()
        },
        error,
        tasks: Vec::new(),
        ..Operation::standalone(kind, Operator::current(config), &a.host, started)
    };
    if let Err(e) = Operation::entry(catalog, &event).await {
        errln!("ferry archives: writing the audit ledger: {e}");
    }
}

async fn verify(
    store: &Store,
    catalog: &Catalog,
    config: &Config,
    format: Format,
    id: Option<&str>,
    all: bool,
    trust_archive_digest: bool,
) -> Result<i32, String> {
    let archives = match (id, all) {
        (Some(id), _) => vec![catalog.resolve_live(id).await?],
        (None, true) => catalog.archives().await.map_err(|e| e.to_string())?,
        (None, false) => return Err("give an archive ID or --all".into()),
    };
    let identities =
        crate::keys::identities(config).map_err(|e| format!("encryption.identity: {e}"))?;
    let here = store.id();
    let (mut problems, mut elsewhere, mut accepted) = (0, 0, 0);
    let mut report = Vec::new();
    for a in archives {
        let before = a.standing(&here);
        // Another store's copies are that store's to check: configure it to verify them.
        if let Standing::Elsewhere(stores) = &before {
            elsewhere += 1;
            if format == Format::Text {
                outln!(
                    "skipped: [{}] archive {} {}: recorded in {}, not in {here}",
                    a.host,
                    a.short_id(),
                    a.name,
                    stores.join(", ")
                );
            }
            report.push(
                json!({"id": a.short_id(), "catalog_number": a.id, "host": a.host, "name": a.name,
                               "ok": null, "state": "elsewhere", "stores": stores}),
            );
            continue;
        }
        let started = OffsetDateTime::now_utc();
        let options = crate::proof::Options {
            trust_archive_digest,
            ciphertext_without_key: true,
            ..Default::default()
        };
        let proved = crate::proof::prove(
            store,
            catalog,
            &a,
            identities.as_ref(),
            Source::Verify,
            options,
        )
        .await;
        let (ok, state, reason, issues, notes, trusted) = match &proved {
            Ok(p) => (
                true,
                if p.trusted_over.is_some() {
                    "suspect"
                } else {
                    "good"
                },
                p.trusted_over.as_ref().map(|_| "sidecar-differs"),
                Vec::new(),
                p.notes.clone(),
                p.trusted_over.clone(),
            ),
            Err(u) => {
                let (state, reason) = match &u.finding {
                    Some(Finding::Suspect(r, _)) => ("suspect", Some(r.as_str())),
                    Some(Finding::Missing(_)) => ("missing", None),
                    _ => ("unknown", None),
                };
                (
                    false,
                    state,
                    reason,
                    vec![u.cause.clone()],
                    Vec::new(),
                    None,
                )
            }
        };
        // Proven good now, where the copy was not: the mark is lifted, on record.
        let lifted = (ok && trusted.is_none() && !before.is_good()).then(|| before.why_not());
        audit(
            catalog,
            config,
            OperationKind::ArchiveVerify,
            &a,
            json!({"trust_archive_digest": trust_archive_digest, "trusted_over": trusted,
                   "store": here, "state": state, "reason": reason,
                   "suspect_cleared": lifted, "notes": notes}),
            started,
            (!ok).then(|| issues.join("; ")),
        )
        .await;
        if let Some(t) = &trusted {
            accepted += 1;
            outln!(
                "[WARNING] [{}] archive {}: {t} (accepted: --trust-archive-digest; it stays marked suspect until its sidecar agrees)",
                a.host,
                a.short_id()
            );
        }
        if !ok {
            problems += 1;
        }
        if format == Format::Text {
            if ok {
                let note = if notes.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", notes.join("; "))
                };
                let sealed = if a.sealed.is_some() {
                    " [encrypted]"
                } else {
                    ""
                };
                outln!(
                    "{}: [{}] archive {} {}{sealed}{note}",
                    if trusted.is_some() { "accepted" } else { "ok" },
                    a.host,
                    a.short_id(),
                    a.name
                );
                if let Some(was) = &lifted {
                    outln!(
                        "  it was {was}; its bytes and sidecar agree now: the suspect mark is lifted"
                    );
                }
            } else {
                outln!(
                    "FAILED: [{}] archive {} {}: {state}: {}",
                    a.host,
                    a.short_id(),
                    a.name,
                    issues.join("; ")
                );
            }
        }
        report.push(json!({"id": a.short_id(), "catalog_number": a.id, "host": a.host, "name": a.name, "ok": ok,
                           "state": state, "reason": reason, "store": here,
                           "catalog_sha256": a.sha256, "encrypted": a.sealed.is_some(),
                           "issues": issues, "notes": notes}));
    }
    if format == Format::Json {
        crate::output::json(&serde_json::to_value(&report).unwrap_or_default());
    } else {
        let other = if elsewhere > 0 {
            format!(", {elsewhere} in other stores skipped")
        } else {
            String::new()
        };
        let trusted = if accepted > 0 {
            format!(
                ", {accepted} accepted on --trust-archive-digest (still SUSPECT: sidecar-differs)"
            )
        } else {
            String::new()
        };
        outln!(
            "{} archive(s) verified, {problems} with problems{trusted}{other}",
            report.len() - elsewhere
        );
        if problems > 0 {
            outln!(
                "next: `ferry archives list` shows each archive's state; restore, drills, retention and the RPO now skip the ones found missing or suspect"
            );
        }
    }
    Ok(if problems == 0 {
        exit::OK
    } else {
        exit::FAILED
    })
}

async fn export(
    store: &Store,
    catalog: &Catalog,
    config: &Config,
    id: &str,
    dir: &Path,
    decrypt: bool,
) -> Result<i32, String> {
    let started = OffsetDateTime::now_utc();
    let a = catalog.resolve_live(id).await?;
    let flags = json!({"dir": dir.display().to_string(), "decrypt": decrypt});
    let copied = export_one(store, catalog, config, &a, dir, decrypt).await;
    audit(
        catalog,
        config,
        OperationKind::ArchiveExport,
        &a,
        flags,
        started,
        copied.as_ref().err().cloned(),
    )
    .await;
    let written = copied?;
    outln!("exported {}", written.join(" and "));
    if crate::output::is_json() {
        crate::output::json(
            &json!({"command": "archives export", "id": a.short_id(), "host": a.host,
                    "archive": written.first(), "sidecar": written.last(), "files": written}),
        );
    }
    Ok(exit::OK)
}

/// Writes the archive into DIR/HOST/ (hosts' archives share names): the stored object and its key
/// as they are, or with `decrypt` the upstream archive. Each file is checked against the catalog's
/// digest before it gets its final name; the sidecar comes last.
async fn export_one(
    store: &Store,
    catalog: &Catalog,
    config: &Config,
    a: &ArchiveRecord,
    dir: &Path,
    decrypt: bool,
) -> Result<Vec<String>, String> {
    let dir = dir.join(&a.host);
    if decrypt && a.sealed.is_none() {
        return Err(format!(
            "archive {} is not encrypted: export it without --decrypt",
            a.short_id()
        ));
    }
    let ids = crate::keys::identities(config).map_err(|e| format!("encryption.identity: {e}"))?;
    // Proven first (and recorded), then exactly that version is written out.
    let options = crate::proof::Options {
        ciphertext_without_key: !decrypt,
        ..Default::default()
    };
    let proof = crate::proof::prove(store, catalog, a, ids.as_ref(), Source::Export, options)
        .await
        .map_err(|u| {
            format!(
                "{u}; not exported (`ferry archives verify {}` records what it finds)",
                a.short_id()
            )
        })?;
    let (object, name, expected, opened) = match (&a.sealed, decrypt) {
        (Some(sealed), true) => (
            a.object(),
            a.name.clone(),
            sealed.plain_sha256.clone(),
            proof.open(store, a).await?,
        ),
        _ => (
            a.object(),
            a.object(),
            a.sha256.clone(),
            proof.open_stored(store, a).await?,
        ),
    };
    let mut written = Vec::new();
    if a.sealed.is_some() && !decrypt {
        let key_name = ferry_archive::key_object_name(&a.name);
        let key = store
            .get_small(&a.host, &key_name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("the key {} is missing", store.location(&a.host, &key_name)))?;
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join(&key_name);
        write_new(&path, &key).map_err(|e| format!("{}: {e}", path.display()))?;
        written.push(path.display().to_string());
    }
    let source = store.location(&a.host, &object);
    let dest_dir = dir.clone();
    let file = tokio::task::spawn_blocking(move || -> Result<(String, String), String> {
        std::fs::create_dir_all(&dest_dir).map_err(|e| format!("{}: {e}", dest_dir.display()))?;
        let dest = dest_dir.join(&name);
        if dest.exists() {
            return Err(format!("{} already exists", dest.display()));
        }
        let partial = dest_dir.join(format!(".{name}.part"));
        let copied = (|| -> Result<String, String> {
            let mut input = opened.plaintext().map_err(|e| e.to_string())?;
            let mut output = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&partial)
                .map_err(|e| e.to_string())?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = input.read(&mut buf).map_err(|e| e.to_string())?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                output.write_all(&buf[..n]).map_err(|e| e.to_string())?;
            }
            output.sync_all().map_err(|e| e.to_string())?;
            Ok(hex(&hasher.finalize()))
        })();
        let sha = match copied {
            Ok(sha) => sha,
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(format!("copying {source}: {e}"));
            }
        };
        if sha != expected {
            let _ = std::fs::remove_file(&partial);
            return Err(format!("{source} gave sha256 {sha}, the catalog says {expected}: not exported (run `ferry archives verify`)"));
        }
        std::fs::rename(&partial, &dest).map_err(|e| e.to_string())?;
        let sidecar = dest_dir.join(format!("{name}.sha256"));
        std::fs::write(&sidecar, sidecar_line(&sha, &name)).map_err(|e| format!("{}: {e}", sidecar.display()))?;
        Ok((dest.display().to_string(), sidecar.display().to_string()))
    })
    .await
    .map_err(|e| e.to_string())??;
    // Archive first, sidecar last, the key (if any) after the archive.
    let mut files = vec![file.0];
    files.extend(written);
    files.push(file.1);
    Ok(files)
}

fn write_new(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// `ferry archives copy`: each archive streamed into the destination store, where it becomes
/// visible only if its size and digest match the catalog; then the copy is recorded.
async fn copy(
    store: &Store,
    catalog: &Catalog,
    config: &Config,
    id: Option<&str>,
    all: bool,
    to: &str,
) -> Result<i32, String> {
    // A path on the command line is relative to where the command runs, as for `export`.
    let base = std::env::current_dir().map_err(|e| format!("the current directory: {e}"))?;
    let mut location =
        crate::store::StoreLocation::parse(to, &base).map_err(|e| format!("--to: {e}"))?;
    // The destination uses the configured credentials when it is a bucket too, else the environment.
    if let (crate::store::StoreLocation::S3(dest), crate::store::StoreLocation::S3(src)) =
        (&mut location, &config.store)
    {
        dest.credentials = src.credentials.clone();
    }
    if location == config.store {
        return Err(format!(
            "--to {to} is the store itself; name another bucket or directory"
        ));
    }
    let dest = Store::open(&location, &config.state_dir)
        .await
        .map_err(|e| format!("--to: {e}"))?;
    let label = dest.describe();
    let (here, there) = (store.id(), dest.id());
    if here == there {
        return Err(format!(
            "--to {to} is the store itself; name another bucket or directory"
        ));
    }
    let archives = match (id, all) {
        (Some(id), _) => vec![catalog.resolve_live(id).await?],
        (None, true) => catalog.archives().await.map_err(|e| e.to_string())?,
        (None, false) => return Err("give an archive ID or --all".into()),
    };
    let (mut copied, mut skipped, mut failed) = (0, 0, 0);
    for a in archives {
        let started = OffsetDateTime::now_utc();
        if let Standing::Elsewhere(stores) = a.standing(&here) {
            skipped += 1;
            outln!(
                "skipped: [{}] archive {} {}: recorded in {}, not in the configured store; configure that store to copy from it",
                a.host,
                a.short_id(),
                a.name,
                stores.join(", ")
            );
            continue;
        }
        // Skipped only when the catalog recorded the copy and it is still there, whole.
        let recorded = a.copy_in(&there).is_some();
        let present = recorded
            && dest
                .sidecar_digest(&a.host, &a.object())
                .await
                .map_err(|e| e.to_string())?
                .as_deref()
                == Some(a.sha256.as_str())
            && dest
                .size(&a.host, &a.object())
                .await
                .map_err(|e| e.to_string())?
                == Some(a.size as u64);
        if all && present {
            skipped += 1;
            continue;
        }
        if recorded {
            // Gone or damaged there since: copied again, its remains removed first.
            dest.delete(&a.host, &a.object())
                .await
                .map_err(|e| e.to_string())?;
        }
        let result = copy_one(store, &dest, &a).await;
        // The read was a full pass over the source: what it found is evidence for both copies.
        let source = match &result {
            // The body hashed equal on the way; good only if its sidecar agrees too.
            Ok(_) => Some(match store.sidecar_digest(&a.host, &a.object()).await {
                Ok(Some(side)) if side == a.sha256 => Finding::Good(None),
                Ok(other) => Finding::Suspect(
                    crate::catalog::evidence::Reason::SidecarDiffers,
                    format!(
                        "the .sha256 sidecar of {} says {}, the archive hashes to {} as the catalog says",
                        store.location(&a.host, &a.object()),
                        other.as_deref().unwrap_or("nothing (it is missing)"),
                        a.sha256
                    ),
                ),
                Err(_) => Finding::Present,
            }),
            Err(CopyError::Source(finding, _)) => Some(finding.clone()),
            Err(CopyError::Other(_)) => None,
        };
        if let Some(finding) = &source {
            crate::proof::record(catalog, store, &a, finding, Source::Copy).await;
        }
        if result.is_ok() {
            crate::proof::record(catalog, &dest, &a, &Finding::Good(None), Source::Copy).await;
        }
        let result = result.map_err(|e| e.to_string());
        audit(
            catalog,
            config,
            OperationKind::ArchiveCopy,
            &a,
            json!({"to": label}),
            started,
            result.as_ref().err().cloned(),
        )
        .await;
        match result {
            Ok(_) => {
                copied += 1;
                outln!(
                    "copied: [{}] archive {} {} to {label}",
                    a.host,
                    a.short_id(),
                    a.name
                );
            }
            Err(e) => {
                failed += 1;
                outln!(
                    "FAILED: [{}] archive {} {}: {e}",
                    a.host,
                    a.short_id(),
                    a.name
                );
            }
        }
    }
    outln!("{copied} copied to {label}, {skipped} already there, {failed} failed");
    if crate::output::is_json() {
        crate::output::json(
            &json!({"command": "archives copy", "to": label, "copied": copied, "skipped": skipped, "failed": failed}),
        );
    }
    Ok(if failed == 0 { exit::OK } else { exit::FAILED })
}

/// Why a copy failed: the source's bytes (a finding about its copy), or anything else.
enum CopyError {
    Source(Finding, String),
    Other(String),
}

impl std::fmt::Display for CopyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CopyError::Source(_, e) | CopyError::Other(e) => f.write_str(e),
        }
    }
}

async fn copy_one(store: &Store, dest: &Store, a: &ArchiveRecord) -> Result<u64, CopyError> {
    use crate::store::StoreError;
    let object = a.object();
    let source = store.location(&a.host, &object);
    // Errors of the destination, or of the store as a whole: not findings about the source copy.
    let other = |e: StoreError| CopyError::Other(e.to_string());
    let mut extras = Vec::new();
    if a.sealed.is_some() {
        let key_name = ferry_archive::key_object_name(&a.name);
        let key = store
            .get_small(&a.host, &key_name)
            .await
            .map_err(other)?
            .ok_or_else(|| {
                let e = format!("its key {} is missing", store.location(&a.host, &key_name));
                CopyError::Source(
                    Finding::Suspect(crate::catalog::evidence::Reason::AuthFailed, e.clone()),
                    e,
                )
            })?;
        extras.push((key_name, key));
    }
    let mut incoming = dest.begin(&a.host, &object).await.map_err(other)?;
    let mut reader = store.reader(&a.host, &object).await.map_err(|e| match e {
        StoreError::Missing { .. } => CopyError::Source(
            Finding::Missing(format!("{source} is not in the store")),
            e.to_string(),
        ),
        e => other(e),
    })?;
    // Read on a blocking thread, write here: a bounded channel keeps memory flat.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(4);
    let read = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if tx.blocking_send(Ok(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    while let Some(chunk) = rx.recv().await {
        let chunk = chunk.map_err(|e| {
            let e = format!("reading {source}: {e}");
            CopyError::Source(
                Finding::Suspect(crate::catalog::evidence::Reason::Unreadable, e.clone()),
                e,
            )
        })?;
        incoming.write_chunk(&chunk).await.map_err(other)?;
    }
    let _ = read.await;
    match incoming.commit(a.size as u64, &a.sha256, &extras).await {
        Ok(committed) => Ok(committed.size),
        Err(StoreError::Mismatch {
            actual_size,
            actual_sha,
            ..
        }) => {
            let detail = format!(
                "{source} read as {actual_size} bytes sha256 {actual_sha}, the catalog says {} bytes sha256 {}",
                a.size, a.sha256
            );
            Err(CopyError::Source(
                Finding::Suspect(
                    crate::catalog::evidence::Reason::BodyDiffers,
                    detail.clone(),
                ),
                format!("{detail}: the source copy differs from the catalog; nothing was copied"),
            ))
        }
        Err(e) => Err(other(e)),
    }
}

pub async fn run_catalog(config: &Config, command: CatalogCommand) -> i32 {
    let (store, catalog) = match open(config).await {
        Ok(pair) => pair,
        Err(stop) => return stop.say(),
    };
    match command {
        CatalogCommand::Rebuild => rebuild(&store, &catalog, config).await.unwrap_or_else(|e| {
            errln!("ferry catalog rebuild: {e}");
            exit::ERROR
        }),
    }
}

/// Reads every archive in the store and catalogues the ones the catalog lacks. Encrypted archives
/// are read through with encryption.identity.
async fn rebuild(store: &Store, catalog: &Catalog, config: &Config) -> Result<i32, String> {
    let objects = store.list().await.map_err(|e| e.to_string())?;
    let identities =
        crate::keys::identities(config).map_err(|e| format!("encryption.identity: {e}"))?;
    let (mut added, mut known, mut bad, mut relinked_count) = (0, 0, 0, 0);
    let here = store.id();
    let mut report = Vec::new();
    for object in objects {
        let name = object.archive_name().to_string();
        let unreadable = |e: String, report: &mut Vec<serde_json::Value>| {
            outln!("FAILED: [{}] {}: {e}", object.host, object.object);
            report.push(
                json!({"host": object.host, "name": name, "outcome": "unreadable", "error": e}),
            );
        };
        let key = if object.sealed() {
            let Some(ids) = &identities else {
                bad += 1;
                unreadable(
                    "encrypted; set encryption.identity to read it".into(),
                    &mut report,
                );
                continue;
            };
            match crate::keys::stored_key(store, &object.host, &name, ids).await {
                Ok(key) => Some(key),
                Err(e) => {
                    let e = e.to_string();
                    bad += 1;
                    unreadable(e, &mut report);
                    continue;
                }
            }
        } else {
            None
        };
        let key_ids = key.as_ref().map(|k| k.recipients.clone());
        let body = match store.reader(&object.host, &object.object).await {
            Ok(body) => body,
            Err(e) => {
                bad += 1;
                unreadable(e.to_string(), &mut report);
                continue;
            }
        };
        let pass = crate::keys::pass(
            body,
            store.location(&object.host, &object.object),
            crate::keys::Through::Archive(key.map(std::sync::Arc::new)),
            None,
            None,
        )
        .await;
        let (pass, verified) = match pass {
            Ok(crate::keys::Pass {
                archive: Some(Ok(v)),
                size,
                sha256,
            }) => ((size, sha256), v),
            Ok(crate::keys::Pass {
                archive: Some(Err(e)),
                ..
            })
            | Err(e) => {
                bad += 1;
                unreadable(e, &mut report);
                continue;
            }
            Ok(_) => continue,
        };
        let (size, sha256) = pass;
        // Filed under the name the agent's certificate proved; an archive moved under another host's
        // folder would otherwise be restored onto that host as its own.
        if let Some(m) = &verified.manifest
            && !m.identity.is_empty()
            && m.identity != object.host
        {
            bad += 1;
            unreadable(
                format!(
                    "made by the agent whose certificate names {}, but filed under {}/: not catalogued; move it under {}/ in the store, or delete it",
                    m.identity, object.host, m.identity
                ),
                &mut report,
            );
            continue;
        }
        let sidecar = store
            .sidecar_digest(&object.host, &object.object)
            .await
            .map_err(|e| e.to_string())?;
        // Never restore an archive that fails `sha256sum -c`: catalogued, but marked suspect.
        let suspect = match sidecar.as_deref() {
            Some(side) if side == sha256 => None,
            Some(side) => Some(format!(
                "its .sha256 sidecar says {side}, the archive hashes to {sha256}"
            )),
            None => Some(format!(
                "it has no readable .sha256 sidecar; the archive hashes to {sha256}"
            )),
        };
        if let Some(why) = &suspect {
            outln!(
                "[WARNING] [{}] {}: suspect: {why}",
                object.host,
                object.object
            );
        }
        let Some(metadata) = verified.metadata else {
            bad += 1;
            outln!(
                "FAILED: [{}] {}: no metadata.json",
                object.host,
                object.object
            );
            continue;
        };
        let mut record = ArchiveRecord::described(
            &object.host,
            &name,
            size,
            &sha256,
            verified.codec.name(),
            metadata,
            verified.manifest.unwrap_or_default(),
        );
        let finding = match &suspect {
            None => Finding::Good(None),
            Some(why) => Finding::Suspect(
                crate::catalog::evidence::Reason::SidecarDiffers,
                why.clone(),
            ),
        };
        let mut copy = crate::catalog::evidence::Copy::arrived(&here);
        copy.evidence = Source::Rebuild;
        if let Finding::Suspect(reason, why) = &finding {
            copy.state = crate::catalog::evidence::State::Suspect;
            copy.reason = Some(*reason);
            copy.detail = Some(why.clone());
            copy.proven_at = None;
        }
        record.copies = vec![copy];
        record.sealed = key_ids.map(|key_ids| crate::catalog::SealedRecord {
            plain_size: verified.size as i64,
            plain_sha256: verified.sha256.clone(),
            key_ids,
        });
        match catalog
            .insert_archive(&record)
            .await
            .map_err(|e| e.to_string())?
        {
            Some(_) => {
                added += 1;
                outln!(
                    "added: [{}] archive {} {}",
                    object.host,
                    record.short_id(),
                    name
                );
                report.push(
                    json!({"host": object.host, "name": name, "id": record.short_id(),
                                   "outcome": "added", "suspect": suspect, "encrypted": record.sealed.is_some()}),
                );
            }
            None => {
                known += 1;
                // Already catalogued: its copy here is recorded with what this read found against
                // the catalog's own digest, and a wrong deletion mark is lifted.
                let Some(existing) = catalog
                    .archive_named(&object.host, &name)
                    .await
                    .map_err(|e| e.to_string())?
                else {
                    continue;
                };
                let finding = if existing.sha256 == sha256 && existing.size as u64 == size {
                    finding
                } else {
                    Finding::Suspect(
                        crate::catalog::evidence::Reason::BodyDiffers,
                        format!(
                            "{} hashes to {sha256} ({size} bytes), the catalog says {} ({} bytes)",
                            store.location(&object.host, &object.object),
                            existing.sha256,
                            existing.size
                        ),
                    )
                };
                let relinked = catalog
                    .relink(existing.id, &here, &finding)
                    .await
                    .map_err(|e| e.to_string())?;
                if relinked {
                    relinked_count += 1;
                    outln!(
                        "relinked: [{}] archive {} {}: the catalog had it deleted, but it is here",
                        object.host,
                        existing.short_id(),
                        name
                    );
                }
                let suspect = match &finding {
                    Finding::Suspect(_, why) => Some(why.clone()),
                    _ => None,
                };
                report.push(json!({"host": object.host, "name": name, "id": existing.short_id(),
                                   "outcome": if relinked { "relinked" } else { "known" }, "suspect": suspect}));
            }
        }
    }
    let relinked = if relinked_count > 0 {
        format!("; {relinked_count} relinked (the catalog had them deleted)")
    } else {
        String::new()
    };
    outln!(
        "catalog rebuilt from {}: {added} added, {known} already catalogued, {bad} unreadable{relinked}",
        store.describe()
    );
    let code = if bad == 0 { exit::OK } else { exit::FAILED };
    if crate::output::is_json() {
        crate::output::json(
            &json!({"command": "catalog rebuild", "added": added, "known": known, "relinked": relinked_count,
                                    "unreadable": bad, "archives": report, "exit_code": code}),
        );
    }
    Ok(code)
}
