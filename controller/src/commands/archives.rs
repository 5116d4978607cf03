//! `ferry archives list|show|verify|export` and `ferry catalog rebuild`.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use ferry_proto::archive::{ReadOptions, hex, read_archive, sidecar_line};
use serde_json::json;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::backup::human_bytes;
use crate::catalog::ledger::Event;
use crate::catalog::{ArchiveRecord, Catalog, Operator};
use crate::cli::{ArchivesCommand, CatalogCommand, GlobalArgs};
use crate::config::Config;
use crate::inventory::Inventory;
use crate::report::{Format, exit};
use crate::store::Store;

async fn open(config: &Config) -> Result<(Store, Catalog), i32> {
    let store = Store::open(&config.store).map_err(|e| {
        errln!("ferry: {e}");
        exit::ERROR
    })?;
    let catalog = Catalog::connect(config).await.map_err(|e| {
        errln!("ferry: {e}");
        exit::ERROR
    })?;
    Ok((store, catalog))
}

pub async fn run(config: &Config, global: &GlobalArgs, command: ArchivesCommand) -> i32 {
    let format = global.output;
    let (store, catalog) = match open(config).await {
        Ok(pair) => pair,
        Err(code) => return code,
    };
    let result = match command {
        ArchivesCommand::List { pattern } => {
            list(&catalog, config, global, format, pattern.as_deref()).await
        }
        ArchivesCommand::Show { id } => show(&catalog, format, &id).await,
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
        ArchivesCommand::Export { id, dir } => export(&store, &catalog, config, &id, &dir).await,
        ArchivesCommand::Prune { pattern, dry_run } => {
            super::lifecycle::prune(
                config,
                global,
                &store,
                &catalog,
                pattern.as_deref(),
                dry_run,
            )
            .await
        }
        ArchivesCommand::Pin { id } => super::lifecycle::pin(config, &catalog, &id, true).await,
        ArchivesCommand::Unpin { id } => super::lifecycle::pin(config, &catalog, &id, false).await,
        ArchivesCommand::Delete { id, force } => {
            super::lifecycle::delete(config, &store, &catalog, &id, force).await
        }
    };
    result.unwrap_or_else(|e| {
        errln!("ferry archives: {e}");
        exit::ERROR
    })
}

/// An archive as JSON: `id` is the stable digest prefix, `catalog_number` the row number.
fn archive_json(a: &ArchiveRecord) -> serde_json::Value {
    let mut doc = serde_json::to_value(a).unwrap_or_default();
    doc["catalog_number"] = json!(a.id);
    doc["id"] = json!(a.short_id());
    doc
}

/// The hosts `pattern` names: an inventory pattern, where hosts only the catalog knows (retired
/// ones) count as ungrouped.
fn select_hosts(
    config: &Config,
    global: &GlobalArgs,
    pattern: &str,
    catalogued: &BTreeSet<String>,
) -> Result<BTreeSet<String>, String> {
    let sources = super::fleet::inventory_sources(config, global);
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
    Ok(selection.hosts.into_iter().collect())
}

async fn list(
    catalog: &Catalog,
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
    match format {
        Format::Json => crate::output::json(&json!(
            archives.iter().map(archive_json).collect::<Vec<_>>()
        )),
        Format::Text | Format::Csv => {
            outln!(
                "{:<12}  {:<12} {:<44} {:>10}  {:<8} {:<3}",
                "ID",
                "HOST",
                "ARCHIVE",
                "SIZE",
                "VERSION",
                "DB"
            );
            for a in &archives {
                outln!(
                    "{:<12}  {:<12} {:<44} {:>10}  {:<8} {:<3}{}",
                    a.short_id(),
                    a.host,
                    a.name,
                    human_bytes(a.size as u64),
                    a.flightctl_version,
                    if a.database_included { "yes" } else { "no" },
                    match (a.pinned, a.suspect.is_some()) {
                        (true, true) => " (pinned) SUSPECT: its sidecar disagreed",
                        (false, true) => " SUSPECT: its sidecar disagreed",
                        (true, false) => " (pinned)",
                        (false, false) => "",
                    }
                );
            }
            outln!("{} archive(s)", archives.len());
        }
    }
    Ok(exit::OK)
}

async fn show(catalog: &Catalog, format: Format, id: &str) -> Result<i32, String> {
    let a = catalog.resolve(id).await?;
    match format {
        Format::Json => crate::output::json(&archive_json(&a)),
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
            if let Some(why) = &a.suspect {
                outln!(
                    "SUSPECT:           {why}; restore and verify refuse it until `ferry archives verify {}` finds its sidecar agreeing",
                    a.short_id()
                );
            }
            if let Some(why) = a.deleted() {
                outln!("DELETED:           {why}");
            }
            outln!("compression:       {}", a.compression);
            outln!("created:           {}", a.created_at);
            if let Some(at) = a.verified_at {
                outln!("verified:          {at}");
            }
            outln!("flightctl version: {}", a.flightctl_version);
            outln!("deployment type:   {}", a.deployment_type);
            outln!("database included: {}", a.database_included);
            if let Some(ms) = a.duration_ms {
                outln!("duration:          {:.1}s", ms as f64 / 1000.0);
            }
            outln!("pinned:            {}", a.pinned);
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

/// Hashes a file, or says why it cannot.
fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex(&hasher.finalize())))
}

/// Writes one audit entry about an archive.
async fn audit(
    catalog: &Catalog,
    config: &Config,
    kind: &str,
    a: &ArchiveRecord,
    flags: serde_json::Value,
    started: OffsetDateTime,
    error: Option<String>,
) {
    let event = Event {
        kind: kind.into(),
        run_id: None,
        operator: Operator::current(config),
        target: a.host.clone(),
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
    };
    if let Err(e) = catalog.append(&event).await {
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
    let mut problems = 0;
    let mut report = Vec::new();
    for a in archives {
        let started = OffsetDateTime::now_utc();
        let path = store.path(&a.host, &a.name);
        let sidecar = store
            .sidecar_digest(&a.host, &a.name)
            .map_err(|e| e.to_string())?;
        let mut issues = Vec::new();
        let mut trusted = Vec::new();
        let hashed = tokio::task::spawn_blocking({
            let path = path.clone();
            move || hash_file(&path)
        })
        .await
        .map_err(|e| e.to_string())?;
        let actual = match hashed {
            Ok((size, sha)) => {
                if size != a.size as u64 {
                    issues.push(format!("size {size} bytes, catalog says {}", a.size));
                }
                if sha != a.sha256 {
                    issues.push(format!(
                        "sha256 {sha} differs from the catalog's {}",
                        a.sha256
                    ));
                }
                let sidecar_issue = match &sidecar {
                    None => Some("the .sha256 sidecar is missing or unreadable".to_string()),
                    Some(side) if *side != sha => {
                        Some(format!("sha256 {sha} differs from the sidecar's {side}"))
                    }
                    Some(_) => None,
                };
                // Trusting the catalog's digest over the sidecar is the operator's call, on record.
                match sidecar_issue {
                    Some(issue) if trust_archive_digest && sha == a.sha256 => trusted.push(issue),
                    Some(issue) => issues.push(issue),
                    None => {}
                }
                Some(sha)
            }
            Err(e) => {
                issues.push(format!("cannot read {}: {e}", path.display()));
                None
            }
        };
        let ok = issues.is_empty();
        // Proven (and a suspect mark cleared) only when the sidecar itself agrees now, not when it
        // is trusted over.
        let cleared = ok && trusted.is_empty() && a.suspect.is_some();
        if ok && trusted.is_empty() {
            catalog
                .mark_verified(a.id)
                .await
                .map_err(|e| e.to_string())?;
        }
        let error = (!ok).then(|| issues.join("; "));
        audit(
            catalog,
            config,
            "archive-verify",
            &a,
            json!({"trust_archive_digest": trust_archive_digest, "trusted_over": trusted,
                   "suspect_cleared": cleared.then_some(&a.suspect)}),
            started,
            error,
        )
        .await;
        for t in &trusted {
            outln!(
                "[WARNING] [{}] archive {}: {t} (accepted: --trust-archive-digest)",
                a.host,
                a.short_id()
            );
        }
        if !ok {
            problems += 1;
        }
        if format == Format::Text {
            if ok {
                outln!("ok: [{}] archive {} {}", a.host, a.short_id(), a.name);
                if cleared {
                    outln!(
                        "  its sidecar agrees now: the suspect mark ({}) is lifted",
                        a.suspect.as_deref().unwrap_or_default()
                    );
                }
            } else {
                outln!(
                    "FAILED: [{}] archive {} {}: {}",
                    a.host,
                    a.short_id(),
                    a.name,
                    issues.join("; ")
                );
            }
        }
        report.push(json!({"id": a.short_id(), "catalog_number": a.id, "host": a.host, "name": a.name, "ok": ok, "sha256": actual,
                           "catalog_sha256": a.sha256, "sidecar_sha256": sidecar, "issues": issues}));
    }
    if format == Format::Json {
        crate::output::json(&serde_json::to_value(&report).unwrap_or_default());
    } else {
        outln!(
            "{} archive(s) verified, {problems} with problems",
            report.len()
        );
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
) -> Result<i32, String> {
    let started = OffsetDateTime::now_utc();
    let a = catalog.resolve_live(id).await?;
    let record = a.clone();
    let flags = json!({"dir": dir.display().to_string()});
    let source = store.path(&a.host, &a.name);
    // Hosts' archives share names: each host gets its own directory, as in the store.
    let dir = dir.join(&a.host);
    let dest = dir.join(&a.name);
    let expected = a.sha256.clone();
    let name = a.name.clone();
    let copied = tokio::task::spawn_blocking(move || -> Result<(String, String), String> {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if dest.exists() {
            return Err(format!("{} already exists", dest.display()));
        }
        let partial = dir.join(format!(".{name}.part"));
        let copied = (|| -> std::io::Result<String> {
            let mut input = std::fs::File::open(&source)?;
            let mut output = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&partial)?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = input.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                output.write_all(&buf[..n])?;
            }
            output.sync_all()?;
            Ok(hex(&hasher.finalize()))
        })();
        let sha = match copied {
            Ok(sha) => sha,
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(format!("copying {}: {e}", source.display()));
            }
        };
        if sha != expected {
            let _ = std::fs::remove_file(&partial);
            return Err(format!("{} has sha256 {sha}, the catalog says {expected}: not exported (run `ferry archives verify`)", source.display()));
        }
        std::fs::rename(&partial, &dest).map_err(|e| e.to_string())?;
        let sidecar = dir.join(format!("{name}.sha256"));
        std::fs::write(&sidecar, sidecar_line(&sha, &name)).map_err(|e| format!("{}: {e}", sidecar.display()))?;
        Ok((dest.display().to_string(), sidecar.display().to_string()))
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    audit(
        catalog,
        config,
        "archive-export",
        &record,
        flags,
        started,
        copied.as_ref().err().cloned(),
    )
    .await;
    let (archive, sidecar) = copied?;
    outln!("exported {archive} and {sidecar}");
    if crate::output::is_json() {
        crate::output::json(
            &json!({"command": "archives export", "id": record.short_id(),
                                    "host": record.host, "archive": archive, "sidecar": sidecar}),
        );
    }
    Ok(exit::OK)
}

pub async fn run_catalog(config: &Config, command: CatalogCommand) -> i32 {
    let (store, catalog) = match open(config).await {
        Ok(pair) => pair,
        Err(code) => return code,
    };
    match command {
        CatalogCommand::Rebuild => rebuild(&store, &catalog).await.unwrap_or_else(|e| {
            errln!("ferry catalog rebuild: {e}");
            exit::ERROR
        }),
    }
}

/// Reads every archive in the store and catalogues the ones the catalog lacks.
async fn rebuild(store: &Store, catalog: &Catalog) -> Result<i32, String> {
    let objects = store.list().map_err(|e| e.to_string())?;
    let (mut added, mut known, mut bad) = (0, 0, 0);
    let mut report = Vec::new();
    for object in objects {
        let path = object.path.clone();
        let read = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&path).map_err(|e| e.to_string())?;
            read_archive(std::io::BufReader::new(file), &ReadOptions::default())
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?;
        let verified = match read {
            Ok(v) => v,
            Err(e) => {
                bad += 1;
                outln!("FAILED: [{}] {}: {e}", object.host, object.name);
                report.push(json!({"host": object.host, "name": object.name, "outcome": "unreadable", "error": e}));
                continue;
            }
        };
        let sidecar = store
            .sidecar_digest(&object.host, &object.name)
            .map_err(|e| e.to_string())?;
        // Never restore an archive that fails `sha256sum -c`: catalogued, but marked suspect.
        let suspect = match sidecar.as_deref() {
            Some(side) if side == verified.sha256 => None,
            Some(side) => Some(format!(
                "its .sha256 sidecar says {side}, the archive hashes to {}",
                verified.sha256
            )),
            None => Some(format!(
                "it has no readable .sha256 sidecar; the archive hashes to {}",
                verified.sha256
            )),
        };
        if let Some(why) = &suspect {
            outln!(
                "[WARNING] [{}] {}: suspect: {why}",
                object.host,
                object.name
            );
        }
        let Some(metadata) = verified.metadata else {
            bad += 1;
            outln!(
                "FAILED: [{}] {}: no metadata.json",
                object.host,
                object.name
            );
            continue;
        };
        let mut record = ArchiveRecord::described(
            &object.host,
            &object.name,
            verified.size,
            &verified.sha256,
            verified.codec.name(),
            metadata,
            verified.manifest.unwrap_or_default(),
        );
        record.suspect = suspect;
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
                    object.name
                );
                report.push(
                    json!({"host": object.host, "name": object.name, "id": record.short_id(),
                                   "outcome": "added", "suspect": record.suspect}),
                );
            }
            None => {
                known += 1;
                if let Some(why) = &record.suspect {
                    catalog
                        .mark_suspect(&object.host, &object.name, why)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                report.push(json!({"host": object.host, "name": object.name, "id": record.short_id(), "outcome": "known", "suspect": record.suspect}));
            }
        }
    }
    outln!(
        "catalog rebuilt from {}: {added} added, {known} already catalogued, {bad} unreadable",
        store.root().display()
    );
    let code = if bad == 0 { exit::OK } else { exit::FAILED };
    if crate::output::is_json() {
        crate::output::json(
            &json!({"command": "catalog rebuild", "added": added, "known": known,
                                    "unreadable": bad, "archives": report, "exit_code": code}),
        );
    }
    Ok(code)
}
