//! `stage`: the archive streamed once into the restore's directory in the staging area — size,
//! digest and every entry checked, files extracted, the dump loaded into the temporary database on
//! the way — and the journal created first; or, for device preparation alone, only the journal.
//! Nothing live changes here: a mismatch found at the end drops the temporary database.

use std::path::Path;

use ferry_archive::{ArchiveError, Entry, Manifest, Metadata, ReadOptions, read_archive_into};
use ferry_proto::restore::{DatabaseAccess, plan};
use ferry_proto::v1::Component;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::RestoreContext;
use super::database::Loader;
use super::journal::Journal;
use crate::tasks::database::{Endpoint, Override};
use crate::tasks::facts::DatabaseKind;

/// What the controller asks for with the first chunk.
#[derive(Debug, Clone, Default)]
pub struct StageRequest {
    pub restore_id: String,
    pub expected_sha256: String,
    pub expected_size: u64,
    pub keep_old_db: bool,
    pub components: Vec<Component>,
    pub prepare_only: bool,
    pub database_override: Override,
    pub lease_seconds: u32,
}

/// Receives the archive in one pass (§ [`receive_once`]) into the restore's directory, loading the
/// dump into the temporary database on the way when the restore puts the built-in database back;
/// the journal, with the temporary database's name, is written before anything else.
pub async fn receive<E: std::fmt::Display>(
    ctx: &RestoreContext,
    dir: &Path,
    req: &StageRequest,
    first: bytes::Bytes,
    rest: impl tokio_stream::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
) -> Result<(u64, String), ReceiveError> {
    room_for(&ctx.staging_dir, req.expected_size, ctx.keep_free)
        .map_err(ReceiveError::Environment)?;
    // From service-config.yaml alone: stage makes no calls of its own on the host.
    let database = crate::tasks::facts::database(&ctx.host);
    let access = if database.kind == DatabaseKind::External {
        DatabaseAccess::External
    } else {
        DatabaseAccess::Builtin
    };
    let load = access == DatabaseAccess::Builtin
        && ferry_proto::restore::chosen(&req.components).contains(&Component::Db);
    let io = |e: std::io::Error| ReceiveError::Environment(format!("staging: {e}"));
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(io)?;
    let (temp_db, old_db) = temporary_names(&req.restore_id, &database.name);
    let mut journal = Journal {
        restore_id: req.restore_id.clone(),
        archive_sha256: req.expected_sha256.clone(),
        archive_size: req.expected_size,
        keep_old_db: req.keep_old_db,
        components: ferry_proto::restore::chosen(&req.components)
            .iter()
            .map(|c| c.name().to_string())
            .collect(),
        lease_seconds: req.lease_seconds,
        partial: !req.components.is_empty(),
        db_name: database.name.clone(),
        temp_db,
        old_db,
        restores_database: load,
        ..Default::default()
    };
    journal.set_plan(&plan(&req.components, false, access));
    // Journal first: the temporary database is on record before it exists.
    journal.save(dir).map_err(io)?;
    let staged = receive_once(
        &ctx.host,
        &dir.join("extract"),
        &req.expected_sha256,
        req.expected_size,
        load.then_some(journal.temp_db.as_str()),
        first,
        rest,
    )
    .await?;
    std::fs::write(
        dir.join(STAGED),
        serde_json::to_vec(&staged).map_err(|e| ReceiveError::Archive(e.to_string()))?,
    )
    .map_err(io)?;
    journal.loaded_seconds = staged.loaded_seconds;
    journal.save(dir).map_err(io)?;
    Ok((staged.size, staged.sha256))
}

/// `<db>_restore_<8 hex>` and `<db>_old_<8 hex>`, from the restore id (upstream's 4 random bytes).
pub fn temporary_names(restore_id: &str, db: &str) -> (String, String) {
    let digest = Sha256::digest(restore_id.as_bytes());
    let tag = ferry_archive::hex(&digest[..4]);
    (format!("{db}_restore_{tag}"), format!("{db}_old_{tag}"))
}

/// Where `stage` keeps what its pass over the archive found, for `verify`.
pub const STAGED: &str = "staged.json";

/// What one pass over an incoming archive found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Staged {
    pub size: u64,
    pub sha256: String,
    pub metadata: Option<Metadata>,
    pub manifest: Option<Manifest>,
    pub entries: Vec<Entry>,
    /// How long the pass took when it loaded the dump into a database.
    pub loaded_seconds: Option<f64>,
}

impl Staged {
    /// Whether the archive has an entry of `kind` at `path`.
    pub fn has(&self, path: &str, kind: ferry_archive::EntryKind) -> bool {
        self.entries
            .iter()
            .any(|e| e.path == path && e.kind == kind)
    }

    /// What every restorable archive holds, or the first thing missing: metadata, PKI, config.
    pub fn required(&self) -> Result<&Metadata, String> {
        use ferry_archive::EntryKind;
        let metadata = self.metadata.as_ref().ok_or("no metadata.json")?;
        if !self.has("pki", EntryKind::Dir) {
            return Err(
                "it has no pki/: restoring without the CA would force every device to re-enroll"
                    .into(),
            );
        }
        if !self.has("config/service-config.yaml", EntryKind::File) {
            return Err("it has no config/service-config.yaml".into());
        }
        Ok(metadata)
    }

    pub fn load(dir: &Path) -> Result<Staged, String> {
        let path = dir.join(STAGED);
        let text = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Streams an archive from the controller once: its size and digest, every entry checked and
/// extracted under `extract`, and, when `load_into` names a database, `db/dump.sql` piped into
/// `psql` inside the DB container instead of onto disk. Whatever does not match is an error; the
/// caller drops the database, which the live control plane never saw.
pub async fn receive_once<E: std::fmt::Display>(
    host: &crate::host::Host,
    extract: &Path,
    expected_sha256: &str,
    expected_size: u64,
    load_into: Option<&str>,
    first: bytes::Bytes,
    mut rest: impl tokio_stream::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
) -> Result<Staged, ReceiveError> {
    use tokio_stream::StreamExt;
    let env = ReceiveError::Environment;
    let _ = std::fs::remove_dir_all(extract);
    std::fs::create_dir_all(extract).map_err(|e| env(format!("staging: {e}")))?;
    let started = std::time::Instant::now();
    let (child, stdin) = match load_into {
        Some(db) => {
            let loader = Loader::start(host, db)
                .await
                .map_err(|e| env(format!("creating the database {db}: {e}")))?;
            (Some(loader.child), Some(loader.stdin))
        }
        None => (None, None),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(16);
    let target = extract.to_path_buf();
    let reader = tokio::task::spawn_blocking(move || {
        // psql sees the dump only through the guard: a line asking for a meta-command stops the
        // load before it is passed on.
        let mut guard = stdin.map(ferry_archive::DumpGuard::new);
        let divert = guard
            .as_mut()
            .map(|g| ("db/dump.sql", g as &mut dyn std::io::Write));
        let options = ReadOptions {
            extract_to: Some(&target),
            expected_sha256: None,
            keep: None,
        };
        let read = read_archive_into(ChannelReader::new(rx), &options, divert);
        // A last line without a newline is checked and passed on only when all went well; the
        // guard (and psql's stdin) is closed either way: end of input for psql.
        match (read, guard) {
            (Ok(v), Some(g)) => g.finish().map(|_| v).map_err(ArchiveError::Io),
            (read, _) => read,
        }
    });
    // The digest of every byte received, also after the reader stopped at an error: a byte that
    // differs from the catalog's archive is reported as that, whatever it broke.
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut reading = true;
    let mut broke = None;
    let mut chunk = Some(first);
    loop {
        if let Some(data) = chunk.take() {
            hasher.update(&data);
            size += data.len() as u64;
            if reading && !data.is_empty() && tx.send(data).await.is_err() {
                reading = false; // the reader stopped at an error it reports
            }
        }
        match rest.next().await {
            Some(Ok(data)) => chunk = Some(data),
            None => break,
            Some(Err(e)) => {
                broke = Some(format!("the stream from the controller broke: {e}"));
                break;
            }
        }
    }
    drop(tx);
    let read = reader
        .await
        .map_err(|e| ReceiveError::Archive(format!("reading the archive: {e}")))?;
    let loaded = match child {
        Some(child) => Loader::finish(child).await,
        None => Ok(()),
    };
    if let Some(broke) = broke {
        return Err(env(broke));
    }
    let sha256 = ferry_archive::hex(&hasher.finalize());
    if size != expected_size || sha256 != expected_sha256 {
        return Err(ReceiveError::Archive(format!(
            "digest mismatch: received {size} bytes sha256 {sha256}, the catalog says {expected_size} bytes sha256 {expected_sha256}; nothing was changed"
        )));
    }
    // psql's own failure: the host's (its disk, its memory) or the SQL's.
    let psql = |e: String| {
        if [
            "No space left on device",
            "could not extend file",
            "out of memory",
            "could not write",
        ]
        .iter()
        .any(|m| e.contains(m))
        {
            env(e)
        } else {
            ReceiveError::Archive(e)
        }
    };
    let verified = match (read, loaded) {
        (Ok(v), Ok(())) => v,
        // psql stopped first (the SQL failed); the reader only saw the pipe close.
        (Err(ArchiveError::Io(e)), Err(failed)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            return Err(psql(failed));
        }
        (Ok(_), Err(failed)) => return Err(psql(failed)),
        // Extraction that ran out of room is the host's.
        (Err(ArchiveError::Io(e)), _)
            if matches!(
                e.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            ) =>
        {
            return Err(env(format!("staging: {e}")));
        }
        // The archive itself is wrong (psql may have choked on the same truncated input).
        (Err(e), _) => return Err(ReceiveError::Archive(format!("archive refused: {e}"))),
    };
    Ok(Staged {
        size: verified.size,
        sha256: verified.sha256,
        metadata: verified.metadata,
        manifest: verified.manifest,
        entries: verified.entries,
        loaded_seconds: load_into.map(|_| started.elapsed().as_secs_f64()),
    })
}

/// Why an archive was not received: the archive's fault, or the host's (its staging space, its
/// database server, a broken stream), which says nothing of the archive.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiveError {
    #[error("{0}")]
    Archive(String),
    #[error("{0}")]
    Environment(String),
}

/// The bytes the async side forwards, read on a blocking thread.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    buf: bytes::Bytes,
}

impl ChannelReader {
    fn new(rx: tokio::sync::mpsc::Receiver<bytes::Bytes>) -> Self {
        ChannelReader {
            rx,
            buf: bytes::Bytes::new(),
        }
    }
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        use bytes::Buf;
        while self.buf.is_empty() {
            match self.rx.blocking_recv() {
                Some(data) => self.buf = data,
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        self.buf.advance(n);
        Ok(n)
    }
}

/// Starts a device-preparation-only run on the host's current database; an external one must answer
/// now, so a wrong address, TLS or password changes nothing.
pub async fn prepare_only(
    ctx: &RestoreContext,
    dir: &Path,
    req: &StageRequest,
) -> Result<(), String> {
    let facts = ctx.facts().await;
    let over = &req.database_override;
    let external = match facts.database.kind {
        DatabaseKind::Builtin if over.is_empty() => false,
        DatabaseKind::Builtin => {
            return Err(
                "--db-host/--db-port/--db-name are for an external database; this host uses the built-in one (db.type: builtin)"
                    .into(),
            );
        }
        _ => {
            Endpoint::external(&ctx.host, &facts.database, over)
                .map_err(|e| format!("external database: {e}"))?
                .connect(&ctx.host)
                .await
                .map_err(|e| format!("external database: {e}"))?;
            true
        }
    };
    let version = facts.version.clone().ok_or_else(|| {
        format!(
            "the Flight Control version is unknown ({})",
            facts.version_detail
        )
    })?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("staging: {e}"))?;
    let access = if external {
        DatabaseAccess::External
    } else {
        DatabaseAccess::Builtin
    };
    let mut journal = Journal {
        restore_id: req.restore_id.clone(),
        components: vec![Component::Db.name().into()],
        version,
        restores_database: false,
        external_database: external,
        database_override: over.clone(),
        db_name: facts.database.name.clone(),
        lease_seconds: req.lease_seconds,
        ..Default::default()
    };
    journal.set_plan(&plan(&[], true, access));
    journal.save(dir).map_err(|e| format!("staging: {e}"))
}

/// Refuses when the staging filesystem cannot hold an archive of `size`, its extraction, and still
/// keep `keep_free` bytes free.
pub fn room_for(staging: &Path, size: u64, keep_free: u64) -> Result<(), String> {
    let (free, _) = crate::tasks::facts::disk_space(staging);
    let needed = size
        .saturating_mul(3)
        .saturating_add(64 << 20)
        .saturating_add(keep_free);
    if free < needed {
        return Err(format!(
            "not enough space in {}: {} MiB free, {} MiB needed for the archive and its extraction{}; nothing was changed",
            staging.display(),
            free >> 20,
            needed >> 20,
            if keep_free > 0 {
                format!(
                    " while keeping {} MiB free (keep_free_bytes in agent.yaml)",
                    keep_free >> 20
                )
            } else {
                String::new()
            }
        ));
    }
    Ok(())
}
