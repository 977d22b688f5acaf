//! Pruning old rows so the store stays bounded: by age, then by count (oldest first).

use anyhow::{Context, Result};
use rusqlite::{Connection, params};

/// Limits for [`prune`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Rows older than this (ns since the epoch) go.
    pub older_than_ns: i64,
    /// At most this many change rows (and as many health rows) stay.
    pub max_changes: u64,
}

/// What [`prune`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub changes: u64,
    pub health: u64,
    pub content_versions: u64,
}

pub(crate) fn prune(conn: &mut Connection, retention: Retention) -> Result<Pruned> {
    let tx = conn
        .transaction()
        .context("starting the prune transaction")?;
    let keep = retention.max_changes.min(i64::MAX as u64) as i64;
    let mut pruned = Pruned::default();
    for (table, count) in [
        ("changes", &mut pruned.changes),
        ("health", &mut pruned.health),
    ] {
        let by_age = tx
            .execute(
                &format!("DELETE FROM {table} WHERE time < ?1"),
                params![retention.older_than_ns],
            )
            .with_context(|| format!("pruning old {table} rows"))?;
        // Ids grow with insertion order, so the highest `keep` ids are the newest rows.
        let by_count = tx
            .execute(
                &format!(
                    "DELETE FROM {table} WHERE id <= (SELECT id FROM {table} ORDER BY id DESC LIMIT 1 OFFSET ?1)"
                ),
                params![keep],
            )
            .with_context(|| format!("pruning excess {table} rows"))?;
        *count = (by_age + by_count) as u64;
    }
    // Content versions nobody refers to any more.
    pruned.content_versions = tx
        .execute(
            "DELETE FROM content_versions WHERE blake3 NOT IN (
                 SELECT hash_after FROM changes WHERE hash_after IS NOT NULL
                 UNION SELECT hash_before FROM changes WHERE hash_before IS NOT NULL
                 UNION SELECT blake3 FROM baseline WHERE blake3 IS NOT NULL)",
            [],
        )
        .context("pruning unreferenced content versions")? as u64;
    tx.commit().context("committing the prune")?;
    Ok(pruned)
}
