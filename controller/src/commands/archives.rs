//! `ferry archives list|show|verify|export` and `ferry catalog rebuild`.

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
use crate::cli::{ArchivesCommand, CatalogCommand};
use crate::config::Config;
use crate::report::{Format, exit};
use crate::store::Store;

async fn open(config: &Config) -> Result<(Store, Catalog), i32> {
    let store = Store::open(&config.store).map_err(|e| {
        eprintln!("ferry: {e}");
        exit::ERROR
    })?;
    let catalog = Catalog::connect(config).await.map_err(|e| {
        eprintln!("ferry: {e}");
        exit::ERROR
    })?;
    Ok((store, catalog))
}

pub async fn run(config: &Config, format: Format, command: ArchivesCommand) -> i32 {
    let (store, catalog) = match open(config).await {
        Ok(pair) => pair,
        Err(code) => return code,
    };
    let result = match command {
        ArchivesCommand::List { pattern } => list(&catalog, format, pattern.as_deref()).await,
        ArchivesCommand::Show { id } => show(&catalog, format, id).await,
        ArchivesCommand::Verify { id, all } => {
            verify(&store, &catalog, config, format, id, all).await
        }
        ArchivesCommand::Export { id, dir } => export(&store, &catalog, config, id, &dir).await,
    };
    result.unwrap_or_else(|e| {
        eprintln!("ferry archives: {e}");
        exit::ERROR
    })
}

async fn list(catalog: &Catalog, format: Format, pattern: Option<&str>) -> Result<i32, String> {
    let archives = catalog.archives(pattern).await.map_err(|e| e.to_string())?;
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&archives).unwrap_or_default()
        ),
        Format::Text | Format::Csv => {
            println!(
                "{:>5}  {:<12} {:<44} {:>10}  {:<8} {:<3}  SHA256",
                "ID", "HOST", "ARCHIVE", "SIZE", "VERSION", "DB"
            );
            for a in &archives {
                println!(
                    "{:>5}  {:<12} {:<44} {:>10}  {:<8} {:<3}  {}…{}",
                    a.id,
                    a.host,
                    a.name,
                    human_bytes(a.size as u64),
                    a.flightctl_version,
                    if a.database_included { "yes" } else { "no" },
                    &a.sha256[..12],
                    if a.pinned { " (pinned)" } else { "" }
                );
            }
            println!("{} archive(s)", archives.len());
        }
    }
    Ok(exit::OK)
}

async fn find(catalog: &Catalog, id: i64) -> Result<ArchiveRecord, String> {
    catalog
        .archive(id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!("no archive with id {id} in the catalog (see `ferry archives list`)")
        })
}

async fn show(catalog: &Catalog, format: Format, id: i64) -> Result<i32, String> {
    let a = find(catalog, id).await?;
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&a).unwrap_or_default()),
        Format::Text | Format::Csv => {
            println!("id:                {}", a.id);
            println!("host:              {}", a.host);
            println!("archive:           {}", a.name);
            println!(
                "size:              {} ({} bytes)",
                human_bytes(a.size as u64),
                a.size
            );
            println!("sha256:            {}", a.sha256);
            println!("compression:       {}", a.compression);
            println!("created:           {}", a.created_at);
            println!("flightctl version: {}", a.flightctl_version);
            println!("deployment type:   {}", a.deployment_type);
            println!("database included: {}", a.database_included);
            if let Some(ms) = a.duration_ms {
                println!("duration:          {:.1}s", ms as f64 / 1000.0);
            }
            println!("pinned:            {}", a.pinned);
            if let Some(counts) = a.row_counts.as_object() {
                println!("row counts:");
                for (table, n) in counts {
                    println!("  {table:<30} {n}");
                }
            }
            for w in a
                .warnings
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|w| w.as_str())
            {
                println!("warning: {w}");
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
        archive: json!({"id": a.id, "name": a.name, "sha256": a.sha256, "source_host": a.host}),
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
        eprintln!("ferry archives: writing the audit ledger: {e}");
    }
}

async fn verify(
    store: &Store,
    catalog: &Catalog,
    config: &Config,
    format: Format,
    id: Option<i64>,
    all: bool,
) -> Result<i32, String> {
    let archives = match (id, all) {
        (Some(id), _) => vec![find(catalog, id).await?],
        (None, true) => catalog.archives(None).await.map_err(|e| e.to_string())?,
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
                match &sidecar {
                    None => issues.push("the .sha256 sidecar is missing or unreadable".into()),
                    Some(side) if *side != sha => {
                        issues.push(format!("sha256 {sha} differs from the sidecar's {side}"))
                    }
                    Some(_) => {}
                }
                Some(sha)
            }
            Err(e) => {
                issues.push(format!("cannot read {}: {e}", path.display()));
                None
            }
        };
        let ok = issues.is_empty();
        let error = (!ok).then(|| issues.join("; "));
        audit(
            catalog,
            config,
            "archive-verify",
            &a,
            json!({}),
            started,
            error,
        )
        .await;
        if !ok {
            problems += 1;
        }
        if format == Format::Text {
            if ok {
                println!("ok: [{}] archive {} {}", a.host, a.id, a.name);
            } else {
                println!(
                    "FAILED: [{}] archive {} {}: {}",
                    a.host,
                    a.id,
                    a.name,
                    issues.join("; ")
                );
            }
        }
        report.push(json!({"id": a.id, "host": a.host, "name": a.name, "ok": ok, "sha256": actual,
                           "catalog_sha256": a.sha256, "sidecar_sha256": sidecar, "issues": issues}));
    }
    if format == Format::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        println!(
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
    id: i64,
    dir: &Path,
) -> Result<i32, String> {
    let started = OffsetDateTime::now_utc();
    let a = find(catalog, id).await?;
    let record = a.clone();
    let flags = json!({"dir": dir.display().to_string()});
    let source = store.path(&a.host, &a.name);
    let dest = dir.join(&a.name);
    let expected = a.sha256.clone();
    let name = a.name.clone();
    let dir = dir.to_path_buf();
    let copied = tokio::task::spawn_blocking(move || -> Result<(), String> {
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
        println!("exported {} and {}", dest.display(), sidecar.display());
        Ok(())
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
    copied?;
    Ok(exit::OK)
}

pub async fn run_catalog(config: &Config, command: CatalogCommand) -> i32 {
    let (store, catalog) = match open(config).await {
        Ok(pair) => pair,
        Err(code) => return code,
    };
    match command {
        CatalogCommand::Rebuild => rebuild(&store, &catalog).await.unwrap_or_else(|e| {
            eprintln!("ferry catalog rebuild: {e}");
            exit::ERROR
        }),
    }
}

/// Reads every archive in the store and catalogues the ones the catalog lacks.
async fn rebuild(store: &Store, catalog: &Catalog) -> Result<i32, String> {
    let objects = store.list().map_err(|e| e.to_string())?;
    let (mut added, mut known, mut bad) = (0, 0, 0);
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
                println!("FAILED: [{}] {}: {e}", object.host, object.name);
                continue;
            }
        };
        let sidecar = store
            .sidecar_digest(&object.host, &object.name)
            .map_err(|e| e.to_string())?;
        if sidecar.as_deref() != Some(verified.sha256.as_str()) {
            println!(
                "[WARNING] [{}] {}: the .sha256 sidecar does not match the archive ({:?})",
                object.host, object.name, sidecar
            );
        }
        let Some(metadata) = verified.metadata else {
            bad += 1;
            println!(
                "FAILED: [{}] {}: no metadata.json",
                object.host, object.name
            );
            continue;
        };
        let record = ArchiveRecord::described(
            &object.host,
            &object.name,
            verified.size,
            &verified.sha256,
            verified.codec.name(),
            metadata,
            verified.manifest.unwrap_or_default(),
        );
        match catalog
            .insert_archive(&record)
            .await
            .map_err(|e| e.to_string())?
        {
            Some(id) => {
                added += 1;
                println!("added: [{}] archive {id} {}", object.host, object.name);
            }
            None => known += 1,
        }
    }
    println!(
        "catalog rebuilt from {}: {added} added, {known} already catalogued, {bad} unreadable",
        store.root().display()
    );
    Ok(if bad == 0 { exit::OK } else { exit::FAILED })
}
