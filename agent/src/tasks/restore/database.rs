//! The database side of a restore, run as `postgres` inside the DB container: load into a temporary
//! database while the control plane runs, then swap by rename.

use std::time::{Duration, Instant};

use crate::host::CommandError;
use crate::host::Host;

/// SQLSTATE 55006 `object_in_use`: a database still has sessions.
const OBJECT_IN_USE: &str = "55006";

/// A statement that failed: refused by PostgreSQL with its SQLSTATE, or psql could not run it.
#[derive(Debug, thiserror::Error)]
pub enum StatementError {
    #[error("{message}")]
    Refused { sqlstate: String, message: String },
    #[error(transparent)]
    Command(CommandError),
}

impl From<CommandError> for StatementError {
    /// psql's verbose report (`ERROR:  55006: database "x" is being accessed by other users`)
    /// carries the SQLSTATE: the code decides, never the words.
    fn from(e: CommandError) -> StatementError {
        if let CommandError::Failed { stderr, .. } = &e
            && let Some((sqlstate, text)) = stderr.lines().find_map(|l| {
                let rest = l.strip_prefix("ERROR:")?.trim_start();
                let (code, text) = rest.split_once(": ")?;
                (code.len() == 5 && code.bytes().all(|b| b.is_ascii_alphanumeric()))
                    .then(|| (code.to_string(), text.to_string()))
            })
        {
            return StatementError::Refused {
                sqlstate,
                message: format!("ERROR:  {text}"),
            };
        }
        StatementError::Command(e)
    }
}

/// One statement as `postgres` in `db`, failing with PostgreSQL's SQLSTATE.
async fn statement(host: &Host, db: &str, sql: &str) -> Result<String, StatementError> {
    Ok(host
        .podman()
        .exec(
            "flightctl-db",
            &psql_args(db, &["-v", "VERBOSITY=verbose", "-tAc", sql]),
            b"",
        )
        .await?)
}

/// A quoted identifier (`"` doubled), as upstream quotes database names.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `psql` as `postgres` in `db`, stopping at the first error, then `rest`.
fn psql_args<'a>(db: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["psql", "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1"];
    args.extend_from_slice(rest);
    args
}

/// One statement as `postgres` in database `db` inside the DB container (its socket: nothing is
/// published); its unaligned, tuples-only output.
pub async fn psql(host: &Host, db: &str, sql: &str) -> Result<String, String> {
    host.podman()
        .exec("flightctl-db", &psql_args(db, &["-tAc", sql]), b"")
        .await
        .map_err(|e| e.to_string())
}

pub async fn exists(host: &Host, name: &str) -> Result<bool, String> {
    let sql = format!(
        "SELECT count(*) FROM pg_database WHERE datname = '{}'",
        name.replace('\'', "''")
    );
    Ok(psql(host, "postgres", &sql).await?.trim() == "1")
}

/// Creates `temp` afresh and streams the dump file into it (`psql -v ON_ERROR_STOP=1 -f -`).
pub async fn load(host: &Host, temp: &str, dump: &std::path::Path) -> Result<(), String> {
    let file = std::fs::File::open(dump).map_err(|e| format!("{}: {e}", dump.display()))?;
    let loader = Loader::start(host, temp).await?;
    let mut stdin = loader.stdin;
    let mut file = file;
    // The load takes as long as the database is big: off the async workers, which keep serving.
    let copied = tokio::task::spawn_blocking(move || std::io::copy(&mut file, &mut stdin))
        .await
        .map_err(|e| format!("loading the dump: {e}"))?;
    let ended = Loader::finish(loader.child).await;
    ended?;
    copied
        .map(|_| ())
        .map_err(|e| format!("loading the dump: {e}"))
}

/// A `psql` loading into a fresh database, fed through `stdin`.
pub struct Loader {
    pub stdin: std::process::ChildStdin,
    pub child: std::process::Child,
}

impl Loader {
    /// Creates `db` afresh and starts `psql -v ON_ERROR_STOP=1 -f -` into it inside the DB container.
    pub async fn start(host: &Host, db: &str) -> Result<Loader, String> {
        psql(
            host,
            "postgres",
            &format!("DROP DATABASE IF EXISTS {}", ident(db)),
        )
        .await?;
        psql(host, "postgres", &format!("CREATE DATABASE {}", ident(db))).await?;
        let mut command = host
            .podman()
            .exec_command("flightctl-db", &psql_args(db, &["-q", "-f", "-"]));
        command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut child = command.spawn().map_err(|e| format!("starting psql: {e}"))?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| "starting psql: no stdin".to_string())?;
        Ok(Loader { stdin, child })
    }

    /// Waits for `psql` (its stdin closed); psql's own words when it stopped at an error.
    pub async fn finish(child: std::process::Child) -> Result<(), String> {
        let output = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .map_err(|e| format!("loading the dump: {e}"))?
            .map_err(|e| format!("loading the dump: {e}"))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
            return Err(format!(
                "psql stopped at the first error: {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            ));
        }
        Ok(())
    }
}

/// live → old, temp → live. Sessions on the live database are terminated, retrying for 30 s while
/// PostgreSQL says it is still being accessed. Idempotent.
pub async fn swap(host: &Host, live: &str, temp: &str, old: &str) -> Result<(), String> {
    if exists(host, temp).await? {
        if exists(host, live).await? {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let terminate = format!(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{}' AND pid <> pg_backend_pid()",
                    live.replace('\'', "''")
                );
                psql(host, "postgres", &terminate).await?;
                match statement(
                    host,
                    "postgres",
                    &format!("ALTER DATABASE {} RENAME TO {}", ident(live), ident(old)),
                )
                .await
                {
                    Ok(_) => break,
                    Err(StatementError::Refused { sqlstate, .. })
                        if sqlstate == OBJECT_IN_USE && Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
        psql(
            host,
            "postgres",
            &format!("ALTER DATABASE {} RENAME TO {}", ident(temp), ident(live)),
        )
        .await?;
    }
    if !exists(host, live).await? {
        return Err(format!("after the swap there is no database {live:?}"));
    }
    Ok(())
}

/// Undoes [`swap`] and [`load`]: the previous database back under its name, the others dropped.
pub async fn restore_previous(
    host: &Host,
    live: &str,
    temp: &str,
    old: &str,
) -> Result<(), String> {
    if exists(host, old).await? {
        let failed = format!("{live}_failed_restore");
        if exists(host, live).await? {
            let terminate = format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{}' AND pid <> pg_backend_pid()",
                live.replace('\'', "''")
            );
            psql(host, "postgres", &terminate).await?;
            psql(
                host,
                "postgres",
                &format!(
                    "ALTER DATABASE {} RENAME TO {}",
                    ident(live),
                    ident(&failed)
                ),
            )
            .await?;
        }
        psql(
            host,
            "postgres",
            &format!("ALTER DATABASE {} RENAME TO {}", ident(old), ident(live)),
        )
        .await?;
        drop_database(host, &failed).await?;
    }
    drop_database(host, temp).await
}

/// Databases whose name contains `marker`.
pub async fn names_like(host: &Host, marker: &str) -> Result<Vec<String>, String> {
    let sql = format!(
        "SELECT datname FROM pg_database WHERE strpos(datname, '{}') > 0",
        marker.replace('\'', "''")
    );
    Ok(psql(host, "postgres", &sql)
        .await?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

pub async fn drop_database(host: &Host, name: &str) -> Result<(), String> {
    psql(
        host,
        "postgres",
        &format!("DROP DATABASE IF EXISTS {}", ident(name)),
    )
    .await
    .map(|_| ())
}

/// Device counts by summary status, as one JSON object.
pub const DEVICE_STATUSES: &str = "SELECT COALESCE(json_object_agg(s, n), '{}')::jsonb FROM (SELECT COALESCE(status->'summary'->>'status', 'Unknown') s, count(*) n FROM devices WHERE deleted_at IS NULL GROUP BY 1) t";

/// Device counts by summary status in the live built-in database.
pub async fn device_statuses(host: &Host, db: &str) -> Result<serde_json::Value, String> {
    let out = psql(host, db, DEVICE_STATUSES).await?;
    serde_json::from_str(out.trim()).map_err(|e| format!("device statuses: {e}"))
}

/// `load`: the dump into the temporary database while the control plane runs (done already when
/// stage loaded it as the archive arrived).
pub(super) async fn load_step(
    host: &Host,
    extract: &std::path::Path,
    j: &super::journal::Journal,
) -> Result<super::StepOutcome, String> {
    if let Some(seconds) = j.loaded_seconds {
        return Ok(super::summary(&format!(
            "the dump is in {}: stage loaded it as the archive arrived, in one pass of {seconds:.1}s, while the control plane kept running",
            j.temp_db
        )));
    }
    let started = std::time::Instant::now();
    load(host, &j.temp_db, &extract.join("db/dump.sql")).await?;
    Ok(super::summary(&format!(
        "dump loaded into {} in {:.1}s while the control plane kept running",
        j.temp_db,
        started.elapsed().as_secs_f64()
    )))
}

/// `swap-db`: the restored database takes the live one's name; the previous one is kept.
pub(super) async fn swap_step(
    host: &Host,
    j: &super::journal::Journal,
) -> Result<super::StepOutcome, String> {
    swap(host, &j.db_name, &j.temp_db, &j.old_db).await?;
    Ok(super::summary(&format!(
        "{} is the restored database; the previous one is kept as {}",
        j.db_name, j.old_db
    )))
}
