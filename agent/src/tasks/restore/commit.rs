//! `commit`: the point of no return — the pre-restore copies go, then the restore's directory.

use std::path::Path;

use ferry_proto::v1::Step;

use super::journal::Journal;
use super::{StepOutcome, database, files, summary};
use crate::host::Host;

/// Drops the previous database (unless kept) and the pre-restore files; forgets the restore.
pub(super) async fn run(host: &Host, dir: &Path, j: &mut Journal) -> Result<StepOutcome, String> {
    // The point of no return is on record before the first copy goes.
    j.committing = true;
    j.save(dir).map_err(|e| e.to_string())?;
    if j.is_done(Step::SwapDb) && !j.keep_old_db {
        database::drop_database(host, &j.old_db).await?;
    }
    files::drop_old(j);
    let kept = if j.keep_old_db {
        format!("; previous database kept as {}", j.old_db)
    } else {
        String::new()
    };
    std::fs::remove_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !j.plan().contains(&Step::Verify) {
        return Ok(summary("device preparation done; nothing else to commit"));
    }
    Ok(summary(&format!(
        "restore committed; pre-restore copies removed{kept}"
    )))
}
