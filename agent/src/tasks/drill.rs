//! Drills: proving that an archive restores, without touching the live control plane. The archive is
//! received once into its own directory in the staging area, every entry checked, its dump streamed
//! straight into a scratch database inside the DB container (the live database, units and API are never touched,
//! nothing is published); device preparation runs on it; every table's rows are counted against the
//! manifest; the PKI, config and encryption files are parsed; then the scratch database and the
//! directory go, whatever happened. What an agent killed mid-drill left behind goes when it starts.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::host::Host;
use crate::tasks::facts::{DatabaseKind, Facts};
use crate::tasks::restore::{database, devices, staging};
use staging::ReceiveError;

/// What the controller asks for with the first chunk.
#[derive(Debug, Clone, Default)]
pub struct DrillRequest {
    pub drill_id: String,
    pub expected_sha256: String,
    pub expected_size: u64,
    /// The catalog says the archive holds a database (so the host needs its DB container).
    pub database_included: bool,
}

/// One phase of a drill, timed.
#[derive(Debug, Clone)]
pub struct Phase {
    pub name: &'static str,
    pub seconds: f64,
    pub ok: bool,
    pub summary: String,
}

/// Rows of one table: what the manifest counted, what the scratch database holds (None: missing).
#[derive(Debug, Clone)]
pub struct TableCount {
    pub table: String,
    pub expected: u64,
    pub restored: Option<u64>,
}

/// A drill's findings. `failures` name the table or file; empty means the archive restores.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub failures: Vec<String>,
    pub tables: Vec<TableCount>,
    pub files_checked: usize,
    pub phases: Vec<Phase>,
    pub devices_prepared: u64,
    pub scratch_database: String,
    pub notes: Vec<String>,
    /// The drill failed for the host's reasons, not the archive's.
    pub environment: bool,
}

/// What a drill works with.
pub struct Drill {
    pub host: Host,
    pub staging_dir: PathBuf,
    pub keep_free: u64,
    pub facts: Facts,
}

const DIR_PREFIX: &str = "drill-";
/// Scratch databases are `<db>_drill_<id>`: found and dropped by this marker after a crash.
const SCRATCH_MARKER: &str = "_drill_";

impl Drill {
    /// Why this host cannot run the drill at all (nothing received, nothing changed).
    pub fn refusal(&self, req: &DrillRequest) -> Option<String> {
        let host = &self.facts.host_name;
        if req.database_included {
            if self.facts.database.kind == DatabaseKind::External {
                return Some(format!(
                    "{host} uses an external database, so it has no DB container to load a scratch copy into; drill this archive on a host with the built-in database (--on HOST)"
                ));
            }
            let db = self
                .facts
                .containers
                .iter()
                .find(|(name, _)| name == "flightctl-db");
            if db.is_none_or(|(_, state)| state != "running") {
                return Some(format!(
                    "flightctl-db is not running on {host} ({}): no scratch database can be loaded",
                    db.map_or("missing", |(_, s)| s.as_str())
                ));
            }
        }
        staging::room_for(&self.staging_dir, req.expected_size, self.keep_free)
            .err()
            .map(|e| format!("{host}: {e}"))
    }

    /// Runs the drill; the scratch database and the drill's directory are gone when it returns.
    pub async fn run<E: std::fmt::Display>(
        &self,
        req: &DrillRequest,
        first: bytes::Bytes,
        rest: impl tokio_stream::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    ) -> Report {
        let dir = self
            .staging_dir
            .join(format!("{DIR_PREFIX}{}", req.drill_id));
        let scratch = format!(
            "{}{SCRATCH_MARKER}{}",
            self.facts.database.name,
            short(&req.drill_id)
        );
        let mut report = Report {
            scratch_database: scratch.clone(),
            ..Default::default()
        };
        self.steps(req, &dir, &scratch, first, rest, &mut report)
            .await;
        let started = Instant::now();
        let mut dropped = Vec::new();
        if req.database_included {
            match database::drop_database(&self.host, &scratch).await {
                Ok(()) => dropped.push(format!("scratch database {scratch} dropped")),
                Err(e) => report
                    .failures
                    .push(format!("dropping scratch database {scratch}: {e}")),
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        dropped.push("staging cleared".into());
        phase(&mut report, "drop", started, Ok(dropped.join("; ")));
        report
    }

    async fn steps<E: std::fmt::Display>(
        &self,
        req: &DrillRequest,
        dir: &Path,
        scratch: &str,
        first: bytes::Bytes,
        rest: impl tokio_stream::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        report: &mut Report,
    ) {
        // One pass: digest, every entry, files extracted, the dump straight into the scratch database.
        let started = Instant::now();
        let extract = dir.join("extract");
        let load = req.database_included.then_some(scratch);
        let received = staging::receive_once(
            &self.host,
            &extract,
            &req.expected_sha256,
            req.expected_size,
            load,
            first,
            rest,
        )
        .await;
        let (name, summary) = match (&received, load) {
            (Ok(r), Some(db)) => (
                "load",
                Ok(format!(
                    "{} bytes received, every entry checked, db/dump.sql loaded into {db} inside flightctl-db, in one pass",
                    r.size
                )),
            ),
            (Ok(r), None) => (
                "receive",
                Ok(format!("{} bytes received, every entry checked", r.size)),
            ),
            (Err(ReceiveError::Environment(e)), _) => {
                report.environment = true;
                (
                    if load.is_some() { "load" } else { "receive" },
                    Err(format!("{e} (the host's, not the archive's)")),
                )
            }
            (Err(ReceiveError::Archive(e)), Some(_)) if e.starts_with("psql") => {
                ("load", Err(format!("db/dump.sql does not load: {e}")))
            }
            (Err(ReceiveError::Archive(e)), Some(_)) => ("load", Err(e.clone())),
            (Err(ReceiveError::Archive(e)), None) => ("receive", Err(e.clone())),
        };
        if !phase(report, name, started, summary) {
            return;
        }
        let Ok(staged) = received else { return };

        let started = Instant::now();
        let checked = staged.required().map(|metadata| {
            format!(
                "{} entries, Flight Control {}",
                staged.entries.len(),
                metadata.version
            )
        });
        if !phase(report, "verify", started, checked) {
            return;
        }

        if load.is_some() {
            self.database(&extract, scratch, staged.manifest.as_ref(), report)
                .await;
        } else {
            report.notes.push(
                "the archive holds no database (an external-database host): its DBA's backups cover it; files checked only"
                    .into(),
            );
        }

        let started = Instant::now();
        let mut files = check_files(&extract);
        if let Some(manifest) = &staged.manifest {
            check_keys(&extract, &manifest.encryption_key_ids, &mut files);
        }
        report.files_checked = files.checked;
        let outcome = if files.failures.is_empty() {
            Ok(format!(
                "{} files parse; certificates chain to the archive's CA",
                files.checked
            ))
        } else {
            Err(files.failures.join("; "))
        };
        phase(report, "files", started, outcome);
    }

    /// Count and prepare: the scratch database's part, once the dump is in it.
    async fn database(
        &self,
        extract: &Path,
        scratch: &str,
        manifest: Option<&ferry_archive::Manifest>,
        report: &mut Report,
    ) {
        let started = Instant::now();
        let counted = match manifest {
            None => Ok("no ferry manifest (an upstream archive): row counts not compared".into()),
            Some(manifest) => match count_rows(&self.host, scratch).await {
                Err(e) => Err(format!("counting rows: {e}")),
                Ok(counts) => {
                    let mut wrong = Vec::new();
                    for (table, expected) in &manifest.row_counts {
                        let restored = counts.get(table).copied();
                        match restored {
                            None => wrong.push(format!(
                                "table {table}: missing after the load (the manifest counts {expected} rows)"
                            )),
                            Some(n) if n != *expected => wrong.push(format!(
                                "table {table}: {n} rows after the load, the manifest counts {expected}"
                            )),
                            Some(_) => {}
                        }
                        report.tables.push(TableCount {
                            table: table.clone(),
                            expected: *expected,
                            restored,
                        });
                    }
                    let rows: u64 = manifest.row_counts.values().sum();
                    if wrong.is_empty() {
                        Ok(format!(
                            "{} tables, {rows} rows: every count matches the manifest",
                            manifest.row_counts.len()
                        ))
                    } else {
                        Err(wrong.join("; "))
                    }
                }
            },
        };
        if !phase(report, "count", started, counted) {
            return;
        }

        let started = Instant::now();
        let prepared =
            devices::prepare_in_container(&self.host, scratch, &extract.join("kv-keys.txt"))
                .await
                .map(|p| {
                    report.devices_prepared = p.devices;
                    format!(
                        "device preparation: {} devices, {} enrollment requests, {} KV keys",
                        p.devices, p.enrollment_requests, p.keys
                    )
                })
                .map_err(|e| format!("device preparation fails on the restored data: {e}"));
        phase(report, "prepare", started, prepared);
    }
}

/// Records a phase; a failure is also one of the report's failures. Returns whether it passed.
fn phase(
    report: &mut Report,
    name: &'static str,
    started: Instant,
    outcome: Result<String, String>,
) -> bool {
    let ok = outcome.is_ok();
    let summary = match outcome {
        Ok(s) => s,
        Err(e) => {
            report.failures.push(e.clone());
            e
        }
    };
    report.phases.push(Phase {
        name,
        seconds: started.elapsed().as_secs_f64(),
        ok,
        summary,
    });
    ok
}

/// The first 12 id characters that may stand in a database name.
fn short(id: &str) -> String {
    id.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(12)
        .collect::<String>()
        .to_ascii_lowercase()
}

/// Rows of every table of the public schema, in one statement.
async fn count_rows(
    host: &Host,
    db: &str,
) -> Result<std::collections::BTreeMap<String, u64>, String> {
    const COUNTS: &str = "SELECT COALESCE(json_object_agg(c.relname, (xpath('/row/n/text()', query_to_xml(format('SELECT count(*) AS n FROM %I.%I', n.nspname, c.relname), false, true, '')))[1]::text::bigint), '{}')::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')";
    let out = database::psql(host, db, COUNTS).await?;
    serde_json::from_str(out.trim()).map_err(|e| format!("unexpected answer ({e}): {out:.200}"))
}

/// The files the archive restores besides the database: PKI, config, encryption keys.
fn check_files(extract: &Path) -> ferry_certs::tree::TreeReport {
    let mut files = Vec::new();
    collect(extract, &extract.join("pki"), &mut files);
    let mut report = ferry_certs::tree::check(&files);
    let config = "config/service-config.yaml";
    report.checked += 1;
    match std::fs::read(extract.join(config)) {
        Err(e) => report.failures.push(format!("{config}: {e}")),
        Ok(text) => match serde_norway::from_slice::<serde_norway::Value>(&text) {
            Ok(serde_norway::Value::Mapping(_)) => {}
            Ok(_) => report
                .failures
                .push(format!("{config}: not a YAML mapping")),
            Err(e) => report
                .failures
                .push(format!("{config}: does not parse as YAML: {e}")),
        },
    }
    let mut keys = Vec::new();
    collect(extract, &extract.join("encryption"), &mut keys);
    if extract.join("encryption").is_dir() && keys.is_empty() {
        report
            .failures
            .push("encryption/: empty (upstream refuses to restore an empty key directory)".into());
    }
    for (path, contents) in &keys {
        report.checked += 1;
        if contents.iter().all(u8::is_ascii_whitespace) {
            report.failures.push(format!("{path}: empty key file"));
        }
    }
    report
}

/// Every key id the database's encrypted values and canaries use (v1.3) must be a key the archive
/// declares, and its key file must be in the archive's `encryption/`: else the restored API would
/// refuse to start.
fn check_keys(extract: &Path, used: &[String], report: &mut ferry_certs::tree::TreeReport) {
    if used.is_empty() {
        return;
    }
    let config =
        std::fs::read_to_string(extract.join("config/service-config.yaml")).unwrap_or_default();
    let declared = ferry_archive::encryption_keys(&config);
    for id in used {
        match declared.get(id) {
            None => report.failures.push(format!(
                "encryption: the database's encrypted values and canaries use key id {id}, which config/service-config.yaml does not declare (it declares: {})",
                declared.keys().cloned().collect::<Vec<_>>().join(", ")
            )),
            Some(path) => {
                let name = path
                    .as_deref()
                    .and_then(|p| Path::new(p).file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "key".into());
                let file = extract.join("encryption").join(&name);
                if !file.is_file() {
                    report.failures.push(format!(
                        "encryption/{name}: missing, so key {id}'s canary cannot decrypt"
                    ));
                }
            }
        }
    }
}

/// Every regular file under `dir`, by its path relative to `base`, with its contents.
fn collect(base: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        if path.is_dir() {
            collect(base, &path, out);
        } else if let Ok(contents) = std::fs::read(&path) {
            let relative = path.strip_prefix(base).unwrap_or(&path);
            out.push((relative.display().to_string(), contents));
        }
    }
}

/// Drops the scratch databases drills killed with their agent left (their directories go with the
/// rest of the staging area's scratch when the agent starts).
pub async fn drop_scratch_databases(host: &Host) {
    // A host without a running DB container (an external database) has none.
    let running = host.podman().container_state("flightctl-db").await;
    if !matches!(running.as_ref().map(|s| s.as_deref()), Ok(Some("running"))) {
        return;
    }
    let Ok(names) = database::names_like(host, SCRATCH_MARKER).await else {
        return;
    };
    for name in names {
        match database::drop_database(host, &name).await {
            Ok(()) => {
                tracing::warn!(database = %name, "dropped a scratch database a stopped drill left")
            }
            Err(e) => {
                tracing::warn!(database = %name, error = %e, "could not drop a drill's scratch database")
            }
        }
    }
}
