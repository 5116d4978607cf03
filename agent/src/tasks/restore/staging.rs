//! `stage`: the archive streamed into the restore's directory in the staging area, its size and
//! digest checked, and the journal created; or, for device preparation alone, only the journal.
//! Nothing on the host changes here.

use std::path::Path;

use ferry_proto::restore::{DatabaseAccess, plan};
use ferry_proto::v1::Component;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::RestoreContext;
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

/// Writes the streamed archive into `dir/archive`, checking size and digest; creates the journal.
pub async fn receive<E: std::fmt::Display>(
    ctx: &RestoreContext,
    dir: &Path,
    req: &StageRequest,
    first: bytes::Bytes,
    rest: impl tokio_stream::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
) -> Result<(u64, String), String> {
    room_for(&ctx.staging_dir, req.expected_size, ctx.keep_free)?;
    let (size, sha256) =
        receive_archive(dir, &req.expected_sha256, req.expected_size, first, rest).await?;
    let io = |e: std::io::Error| format!("staging: {e}");
    let mut journal = Journal {
        restore_id: req.restore_id.clone(),
        archive_sha256: sha256.clone(),
        archive_size: size,
        keep_old_db: req.keep_old_db,
        components: ferry_proto::restore::chosen(&req.components)
            .iter()
            .map(|c| c.name().to_string())
            .collect(),
        lease_seconds: req.lease_seconds,
        partial: !req.components.is_empty(),
        ..Default::default()
    };
    journal.set_plan(&plan(&req.components, false, DatabaseAccess::Builtin));
    journal.save(dir).map_err(io)?;
    Ok((size, sha256))
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

/// Streams an archive into `dir/archive` (created afresh), checking its size and digest.
pub async fn receive_archive<E: std::fmt::Display>(
    dir: &Path,
    expected_sha256: &str,
    expected_size: u64,
    first: bytes::Bytes,
    mut rest: impl tokio_stream::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
) -> Result<(u64, String), String> {
    use tokio_stream::StreamExt;
    let io = |e: std::io::Error| format!("staging: {e}");
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(io)?;
    let part = dir.join("archive.part");
    let mut file = tokio::io::BufWriter::with_capacity(
        1 << 20,
        tokio::fs::File::create(&part).await.map_err(io)?,
    );
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut chunk = Some(first);
    loop {
        if let Some(data) = chunk.take() {
            hasher.update(&data);
            size += data.len() as u64;
            file.write_all(&data).await.map_err(io)?;
        }
        match rest.next().await {
            Some(Ok(data)) => chunk = Some(data),
            None => break,
            Some(Err(e)) => return Err(format!("the stream from the controller broke: {e}")),
        }
    }
    file.flush().await.map_err(io)?;
    file.into_inner().sync_all().await.map_err(io)?;
    let sha256 = ferry_proto::archive::hex(&hasher.finalize());
    if size != expected_size || sha256 != expected_sha256 {
        return Err(format!(
            "digest mismatch: received {size} bytes sha256 {sha256}, the catalog says {expected_size} bytes sha256 {expected_sha256}; nothing was changed"
        ));
    }
    std::fs::rename(&part, dir.join("archive")).map_err(io)?;
    Ok((size, sha256))
}
