//! Archive lifecycle in the catalog: pins, deletion marks, and what running restores hold.

use super::{Catalog, CatalogError};

impl Catalog {
    /// Pins or unpins an archive; returns whether it changed.
    pub async fn set_pinned(&self, id: i64, pinned: bool) -> Result<bool, CatalogError> {
        let n = self
            .client()
            .execute(
                "UPDATE archives SET pinned = $2 WHERE id = $1 AND pinned <> $2",
                &[&id, &pinned],
            )
            .await?;
        Ok(n == 1)
    }

    /// Records the archive an open run (a restore) works with.
    pub async fn run_uses_archive(&self, run_id: i64, archive_id: i64) -> Result<(), CatalogError> {
        self.execute(
            "UPDATE runs SET archive_id = $2 WHERE id = $1",
            &[&run_id, &archive_id],
        )
        .await?;
        Ok(())
    }

    /// Archives that open runs work with: retention leaves them alone.
    pub async fn archives_in_use(&self) -> Result<Vec<(i64, String)>, CatalogError> {
        let rows = self
            .client()
            .query(
                "SELECT archive_id, kind || ' run ' || id FROM runs WHERE finished_at IS NULL AND archive_id IS NOT NULL",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}
