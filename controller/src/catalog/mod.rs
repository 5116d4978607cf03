//! The catalog: runs, per-host results and archives, in PostgreSQL. With no URL configured it is
//! ferry's private cluster in the state directory ([`embedded`]).

pub mod embedded;
mod event;
pub mod evidence;
pub mod ledger;
mod lifecycle;
mod migrations;
pub mod serve;
pub mod spool;

use serde_json::Value;
use time::OffsetDateTime;
use tokio_postgres::Client;

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog: private cluster: {0}")]
    Embedded(String),
    #[error("catalog: {}", crate::catalog::pg_error(.0))]
    Db(#[from] tokio_postgres::Error),
    /// The catalog could not take a record; it waits in the spool and is written at the next start.
    #[error(
        "the catalog did not take the {what} ({cause}); it is kept in {path} and written when the catalog is back (any ferry command does it)"
    )]
    Spooled {
        what: &'static str,
        path: std::path::PathBuf,
        cause: String,
    },
    #[error(
        "the catalog did not take the {what} ({cause}), and it could not be spooled either: {spool}"
    )]
    Lost {
        what: &'static str,
        cause: String,
        spool: String,
    },
}

/// A PostgreSQL error with the server's message or the cause beneath.
pub fn pg_error(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Who ran an operation.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Operator {
    pub subject: String,
    pub fingerprint: String,
    pub os_user: String,
    pub controller_host: String,
}

impl Operator {
    /// The identity in `config`'s client certificate, plus the local user and host.
    pub fn current(config: &Config) -> Operator {
        let cert = ferry_certs::inspect_pem(&config.tls.cert).ok();
        Operator {
            subject: cert
                .as_ref()
                .map(|c| c.subject.clone())
                .unwrap_or_else(|| "unknown".into()),
            fingerprint: cert.map(|c| c.fingerprint).unwrap_or_default(),
            os_user: os_user(),
            controller_host: rustix::system::uname()
                .nodename()
                .to_string_lossy()
                .into_owned(),
        }
    }
}

/// The local user running ferry: `$USER`, else the passwd name of the uid, else the uid; with the
/// person behind `sudo -u ferry` when there is one.
fn os_user() -> String {
    let user = local_user();
    match std::env::var("SUDO_USER") {
        Ok(by) if !by.is_empty() && by != user => format!("{user} (sudo by {by})"),
        _ => user,
    }
}

fn local_user() -> String {
    if let Ok(user) = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")) {
        return user;
    }
    let uid = rustix::process::getuid().as_raw();
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|line| {
                let fields: Vec<&str> = line.split(':').collect();
                (fields.get(2) == Some(&uid.to_string().as_str())).then(|| fields[0].to_string())
            })
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// One host's part of a run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct HostRecord {
    pub host: String,
    /// ok, failed, unreachable, skipped
    pub outcome: String,
    pub phase: Option<String>,
    pub error: Option<String>,
    pub archive_id: Option<i64>,
    #[serde(with = "time::serde::rfc3339")]
    pub started: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub finished: OffsetDateTime,
}

/// An archive as the catalog knows it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ArchiveRecord {
    pub id: i64,
    pub host: String,
    pub name: String,
    pub size: i64,
    pub sha256: String,
    pub compression: String,
    pub flightctl_version: String,
    pub deployment_type: String,
    pub database_included: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub duration_ms: Option<i64>,
    pub row_counts: Value,
    pub warnings: Value,
    pub source_facts: Value,
    pub run_id: Option<i64>,
    pub pinned: bool,
    /// Its copies, one per store that holds it, each with the evidence of its bytes.
    #[serde(default)]
    pub copies: Vec<evidence::Copy>,
    /// When it was deleted from the store (its record stays).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub deleted_at: Option<OffsetDateTime>,
    #[serde(default)]
    pub deleted_reason: Option<String>,
    /// Set when the archive is encrypted (`size` and `sha256` are then the ciphertext's).
    #[serde(default)]
    pub sealed: Option<SealedRecord>,
    /// When a drill last restored it and found it whole ("verified by restore").
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub drilled_at: Option<OffsetDateTime>,
    /// The encryption key ids its database uses (v1.3+), from its manifest.
    #[serde(default)]
    pub db_key_ids: Vec<String>,
}

/// One drill of an archive.
#[derive(Debug, Clone)]
pub struct DrillRecord {
    pub archive_id: i64,
    /// The host whose DB container held the scratch database.
    pub ran_on: String,
    pub run_id: Option<i64>,
    pub started: OffsetDateTime,
    pub finished: OffsetDateTime,
    pub passed: bool,
    pub failures: Vec<String>,
    /// Phases, counts and timings as the agent reported them.
    pub detail: Value,
}

/// An encrypted archive's plaintext and the public keys its key is wrapped for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SealedRecord {
    pub plain_size: i64,
    pub plain_sha256: String,
    pub key_ids: Vec<String>,
}

impl ArchiveRecord {
    /// The id operators use: the first 12 hex digits of the sha256. It survives `catalog rebuild`.
    pub fn short_id(&self) -> &str {
        short_id(&self.sha256)
    }

    /// The store object: the archive's name, plus `.age` when it is encrypted.
    pub fn object(&self) -> String {
        match self.sealed {
            Some(_) => format!("{}{}", self.name, ferry_archive::SEALED_SUFFIX),
            None => self.name.clone(),
        }
    }

    /// The archive as a ledger entry names it (the catalog number is null until it is catalogued).
    pub fn ledger_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.short_id(), "catalog_number": (self.id > 0).then_some(self.id),
            "name": self.name, "sha256": self.sha256, "source_host": self.host,
        })
    }

    /// The record of an archive as its `metadata.json` and manifest describe it (not yet catalogued:
    /// no id, run or duration).
    pub fn described(
        host: &str,
        name: &str,
        size: u64,
        sha256: &str,
        compression: &str,
        metadata: ferry_archive::Metadata,
        manifest: ferry_archive::Manifest,
    ) -> ArchiveRecord {
        let created_at = OffsetDateTime::parse(
            &metadata.timestamp,
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap_or_else(|_| OffsetDateTime::now_utc());
        ArchiveRecord {
            id: 0,
            host: host.into(),
            name: name.into(),
            size: size as i64,
            sha256: sha256.into(),
            compression: compression.into(),
            flightctl_version: metadata.version,
            deployment_type: metadata.deployment_type,
            database_included: metadata.database_included,
            created_at,
            duration_ms: None,
            row_counts: serde_json::to_value(&manifest.row_counts).unwrap_or_default(),
            warnings: serde_json::json!(manifest.warnings),
            source_facts: manifest.facts,
            run_id: None,
            pinned: false,
            copies: Vec::new(),
            deleted_at: None,
            deleted_reason: None,
            sealed: None,
            drilled_at: None,
            db_key_ids: manifest.encryption_key_ids,
        }
    }

    /// Why it can no longer be used, if it was deleted.
    pub fn deleted(&self) -> Option<String> {
        let at = self.deleted_at?;
        Some(format!(
            "archive {} ({} {}) was deleted from the store at {} ({}); its record and history remain",
            self.short_id(),
            self.host,
            self.name,
            at.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            self.deleted_reason
                .as_deref()
                .unwrap_or("no reason recorded")
        ))
    }
}

/// The id operators use for a digest: its first 12 hex digits.
pub fn short_id(sha256: &str) -> &str {
    sha256.get(..12).unwrap_or(sha256)
}

/// A connected, migrated catalog.
pub struct Catalog {
    client: Client,
    ledger: tokio::sync::Mutex<Client>,
    /// Records the catalog could not take, written at the next connect.
    spool_dir: std::path::PathBuf,
}

const ARCHIVE_COLUMNS: &str = "id, host, name, size, sha256, compression, flightctl_version, deployment_type, \
     database_included, created_at, duration_ms, row_counts, warnings, source_facts, run_id, pinned, deleted_at, \
     deleted_reason, plain_size, plain_sha256, key_ids, drilled_at, db_key_ids";

/// [`ARCHIVE_COLUMNS`] and the archive's copies, for [`archive_from_row`].
fn archive_select() -> String {
    format!("{ARCHIVE_COLUMNS}, {}", evidence::COPIES_JSON)
}

impl Catalog {
    /// Connects to `config.catalog`, or to (starting if needed) the private cluster, and migrates.
    pub async fn connect(config: &Config) -> Result<Catalog, CatalogError> {
        let mut client = open(config).await?;
        migrations::apply(&mut client).await?;
        // Ledger appends get their own connection: a transaction and a role of their own.
        let ledger = tokio::sync::Mutex::new(open(config).await?);
        let catalog = Catalog {
            client,
            ledger,
            spool_dir: config.state_dir.join("spool"),
        };
        catalog.replay_spool().await;
        Ok(catalog)
    }

    /// The underlying connection, for queries the catalog does not wrap (tests, reports).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs one statement; the number of rows it changed.
    pub(crate) async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, CatalogError> {
        Ok(self.client.execute(sql, params).await?)
    }

    pub async fn start_run(
        &self,
        kind: &str,
        pattern: &str,
        operator: &Operator,
        flags: &Value,
    ) -> Result<i64, CatalogError> {
        let row = self
            .client
            .query_one(
                "INSERT INTO runs (kind, pattern, operator, operator_fingerprint, os_user, controller_host, flags, controller_process)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
                &[&kind, &pattern, &operator.subject, &operator.fingerprint, &operator.os_user, &operator.controller_host, flags,
                  &crate::process::this_process()],
            )
            .await?;
        let run_id: i64 = row.get(0);
        Ok(run_id)
    }

    /// Corrects a run's kind once the operation is known (a resume of device preparation).
    pub async fn set_run_kind(&self, run_id: i64, kind: &str) -> Result<(), CatalogError> {
        self.client
            .execute("UPDATE runs SET kind = $2 WHERE id = $1", &[&run_id, &kind])
            .await?;
        Ok(())
    }

    /// Ends a run; if the catalog is unreachable, the spool keeps it.
    pub async fn finish_run(&self, run_id: i64, outcome: &str) -> Result<(), CatalogError> {
        let record = spool::Spooled::FinishRun {
            run_id,
            outcome: outcome.into(),
        };
        (self.finish_run_now(run_id, outcome).await).map_err(|e| self.spool(record, e))
    }

    async fn finish_run_now(&self, run_id: i64, outcome: &str) -> Result<(), CatalogError> {
        self.client
            .execute(
                "UPDATE runs SET finished_at = now(), outcome = $2 WHERE id = $1 AND finished_at IS NULL",
                &[&run_id, &outcome],
            )
            .await?;
        Ok(())
    }

    /// Records one host's result; if the catalog is unreachable, the spool keeps it.
    pub async fn record_host(&self, run_id: i64, r: &HostRecord) -> Result<(), CatalogError> {
        let record = spool::Spooled::HostResult {
            run_id,
            record: r.clone(),
        };
        (self.record_host_now(run_id, r).await).map_err(|e| self.spool(record, e))
    }

    async fn record_host_now(&self, run_id: i64, r: &HostRecord) -> Result<(), CatalogError> {
        self.client
            .execute(
                "INSERT INTO host_results (run_id, host, outcome, phase, error, archive_id, started_at, finished_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (run_id, host) DO NOTHING",
                &[&run_id, &r.host, &r.outcome, &r.phase, &r.error, &r.archive_id, &r.started, &r.finished],
            )
            .await?;
        Ok(())
    }

    /// Records an archive; returns its id, or None if (host, name) is already catalogued. If the
    /// catalog is unreachable, the spool keeps it.
    pub async fn insert_archive(&self, a: &ArchiveRecord) -> Result<Option<i64>, CatalogError> {
        self.insert_archive_now(a)
            .await
            .map_err(|e| self.spool(spool::Spooled::Archive(Box::new(a.clone())), e))
    }

    async fn insert_archive_now(&self, a: &ArchiveRecord) -> Result<Option<i64>, CatalogError> {
        let copies = serde_json::to_value(&a.copies).unwrap_or_default();
        let row = self
            .client
            .query_opt(
                "WITH archive AS (
                     INSERT INTO archives (host, name, size, sha256, compression, flightctl_version, deployment_type,
                         database_included, created_at, duration_ms, row_counts, warnings, source_facts, run_id, pinned,
                         plain_size, plain_sha256, key_ids, db_key_ids, stores_known)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19,
                             jsonb_array_length($20::jsonb) > 0)
                     ON CONFLICT (host, name) DO NOTHING RETURNING id),
                 copies AS (
                     INSERT INTO archive_copies (archive_id, store, size, sha256, copied_at, state, reason, detail, evidence,
                                                 state_at, proven_at, seen_at, version)
                     SELECT archive.id, c.store, $3, $4, c.state_at, c.state, c.reason, c.detail, c.evidence, c.state_at,
                            c.proven_at, c.seen_at, c.version
                     FROM archive, jsonb_to_recordset($20::jsonb) AS c(store text, state text, reason text, detail text,
                          evidence text, state_at timestamptz, proven_at timestamptz, seen_at timestamptz, version text))
                 SELECT id FROM archive",
                &[
                    &a.host, &a.name, &a.size, &a.sha256, &a.compression, &a.flightctl_version, &a.deployment_type,
                    &a.database_included, &a.created_at, &a.duration_ms, &a.row_counts, &a.warnings, &a.source_facts,
                    &a.run_id, &a.pinned,
                    &a.sealed.as_ref().map(|s| s.plain_size),
                    &a.sealed.as_ref().map(|s| s.plain_sha256.clone()),
                    &a.sealed.as_ref().map(|s| s.key_ids.clone()),
                    &a.db_key_ids, &copies,
                ],
            )
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Every archive still in the store, newest first.
    pub async fn archives(&self) -> Result<Vec<ArchiveRecord>, CatalogError> {
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT {} FROM archives WHERE deleted_at IS NULL ORDER BY created_at DESC, id DESC",
                    archive_select()
                ),
                &[],
            )
            .await?;
        Ok(rows.iter().map(archive_from_row).collect())
    }

    /// The archive an operator means by `id`: a prefix of its sha256 (at least 4 hex digits, as
    /// git), which never changes, or its catalog number, which `catalog rebuild` may change.
    pub async fn resolve(&self, id: &str) -> Result<ArchiveRecord, String> {
        let text = id.trim().to_ascii_lowercase();
        let mut found: Vec<ArchiveRecord> = Vec::new();
        // A catalog number is written plainly: `0003` and `+3` are digests or typos, not row 3.
        if let Ok(n) = text.parse::<i64>()
            && n.to_string() == text
            && let Some(a) = self.archive(n).await.map_err(|e| e.to_string())?
        {
            found.push(a);
        }
        if text.len() >= 4 && text.len() <= 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            let rows = self
                .client
                .query(
                    &format!(
                        "SELECT {} FROM archives WHERE sha256 LIKE $1 || '%' ORDER BY id LIMIT 5",
                        archive_select()
                    ),
                    &[&text],
                )
                .await
                .map_err(|e| e.to_string())?;
            for a in rows.iter().map(archive_from_row) {
                if !found.iter().any(|f| f.id == a.id) {
                    found.push(a);
                }
            }
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 if text.len() < 4 && !text.bytes().all(|b| b.is_ascii_digit()) => Err(format!(
                "{id:?} is not an archive id: give at least 4 hex digits of its sha256 (see `ferry archives list`)"
            )),
            0 => {
                let plain = text
                    .parse::<i64>()
                    .ok()
                    .filter(|n| n.to_string() != text && *n > 0)
                    .map(|n| format!("; a catalog number is written plainly: did you mean {n}?"))
                    .unwrap_or_default();
                Err(format!(
                    "no archive with id {id:?} in the catalog{plain} (see `ferry archives list`)"
                ))
            }
            _ => Err(format!(
                "archive id {id:?} is ambiguous: it matches {}; give more digits of the sha256",
                found
                    .iter()
                    .map(|a| format!("{} ({} {})", a.short_id(), a.host, a.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// Like [`Catalog::resolve`], but an archive deleted from the store is an error that says when
    /// and why.
    pub async fn resolve_live(&self, id: &str) -> Result<ArchiveRecord, String> {
        let a = self.resolve(id).await?;
        match a.deleted() {
            Some(why) => Err(format!("{why}; choose another (`ferry archives list`)")),
            None => Ok(a),
        }
    }

    /// Records a drill of archive `archive_id` on host `ran_on`: a passing one marks the archive
    /// verified by restore, a failing one takes that mark away.
    pub async fn record_drill(&self, d: &DrillRecord) -> Result<(), CatalogError> {
        self.client
            .execute(
                "WITH drill AS (
                     INSERT INTO drills (archive_id, ran_on, run_id, started_at, finished_at, passed, failures, detail)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING archive_id, passed, finished_at)
                 UPDATE archives a SET drilled_at = CASE WHEN d.passed THEN d.finished_at END
                 FROM drill d WHERE a.id = d.archive_id",
                &[
                    &d.archive_id, &d.ran_on, &d.run_id, &d.started, &d.finished, &d.passed,
                    &d.failures, &d.detail,
                ],
            )
            .await?;
        Ok(())
    }

    /// The newest drills, newest first: (archive id, host it ran on, finished, passed, failures).
    pub async fn drills(&self, limit: i64) -> Result<Vec<DrillRecord>, CatalogError> {
        let rows = self
            .client
            .query(
                "SELECT archive_id, ran_on, run_id, started_at, finished_at, passed, failures, detail
                 FROM drills ORDER BY finished_at DESC, id DESC LIMIT $1",
                &[&limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| DrillRecord {
                archive_id: r.get(0),
                ran_on: r.get(1),
                run_id: r.get(2),
                started: r.get(3),
                finished: r.get(4),
                passed: r.get(5),
                failures: r.get(6),
                detail: r.get(7),
            })
            .collect())
    }

    /// The archive catalogued as `host`'s `name`, deleted or not.
    pub async fn archive_named(
        &self,
        host: &str,
        name: &str,
    ) -> Result<Option<ArchiveRecord>, CatalogError> {
        let row = self
            .client
            .query_opt(
                &format!(
                    "SELECT {} FROM archives WHERE host = $1 AND name = $2",
                    archive_select()
                ),
                &[&host, &name],
            )
            .await?;
        Ok(row.as_ref().map(archive_from_row))
    }

    pub async fn archive(&self, id: i64) -> Result<Option<ArchiveRecord>, CatalogError> {
        let row = self
            .client
            .query_opt(
                &format!("SELECT {} FROM archives WHERE id = $1", archive_select()),
                &[&id],
            )
            .await?;
        Ok(row.as_ref().map(archive_from_row))
    }
}

fn archive_from_row(r: &tokio_postgres::Row) -> ArchiveRecord {
    ArchiveRecord {
        id: r.get(0),
        host: r.get(1),
        name: r.get(2),
        size: r.get(3),
        sha256: r.get(4),
        compression: r.get(5),
        flightctl_version: r.get(6),
        deployment_type: r.get(7),
        database_included: r.get(8),
        created_at: r.get(9),
        duration_ms: r.get(10),
        row_counts: r.get(11),
        warnings: r.get(12),
        source_facts: r.get(13),
        run_id: r.get(14),
        pinned: r.get(15),
        deleted_at: r.get(16),
        deleted_reason: r.get(17),
        sealed: r
            .get::<_, Option<String>>(19)
            .map(|plain_sha256| SealedRecord {
                plain_size: r.get::<_, Option<i64>>(18).unwrap_or_default(),
                plain_sha256,
                key_ids: r.get::<_, Option<Vec<String>>>(20).unwrap_or_default(),
            }),
        drilled_at: r.get(21),
        db_key_ids: r.get::<_, Option<Vec<String>>>(22).unwrap_or_default(),
        copies: evidence::copies_from_json(r.get(23)),
    }
}

/// Connects to `config.catalog`, or to (starting if needed) the private cluster.
async fn open(config: &Config) -> Result<Client, CatalogError> {
    match &config.catalog {
        Some(url) => {
            let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            Ok(client)
        }
        None => {
            let cluster = embedded::PrivateCluster::new(&config.state_dir);
            let c = cluster.clone();
            tokio::task::spawn_blocking(move || c.ensure_running())
                .await
                .map_err(|e| CatalogError::Embedded(e.to_string()))??;
            let admin = socket_client(&cluster, "postgres").await?;
            let exists = admin
                .query_opt("SELECT 1 FROM pg_database WHERE datname = 'ferry'", &[])
                .await?;
            if exists.is_none() {
                admin.batch_execute("CREATE DATABASE ferry").await?;
            }
            socket_client(&cluster, "ferry").await
        }
    }
}

async fn socket_client(
    cluster: &embedded::PrivateCluster,
    db: &str,
) -> Result<Client, CatalogError> {
    let (client, conn) = tokio_postgres::Config::new()
        .host_path(cluster.socket_dir())
        .port(5432)
        .user("postgres")
        .dbname(db)
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(conn);
    Ok(client)
}

impl Catalog {
    /// The newest archive time the catalog knows for `host` (any store, deleted ones included).
    pub async fn newest_archive_time(
        &self,
        host: &str,
    ) -> Result<Option<OffsetDateTime>, CatalogError> {
        let row = self
            .client
            .query_one(
                "SELECT max(created_at) FROM archives WHERE host = $1",
                &[&host],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Records the public keys an archive's key is now wrapped for (after a rotation).
    pub async fn set_key_ids(&self, id: i64, key_ids: &[String]) -> Result<(), CatalogError> {
        self.execute(
            "UPDATE archives SET key_ids = $2 WHERE id = $1",
            &[&id, &key_ids],
        )
        .await
        .map(|_| ())
    }
}
