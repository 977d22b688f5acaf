//! Sensor health rows: backend starts, lost events, rescans, store trouble.

use anyhow::{Context, Result};
use rusqlite::{Connection, params};

/// One row of `health`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthRecord {
    pub time_ns: i64,
    /// e.g. `backend_started`, `events_lost`, `rescan`, `store_write_failed`.
    pub kind: String,
    pub backend: Option<String>,
    pub detail: Option<String>,
    pub lost_events: u64,
}

pub(crate) fn insert(conn: &Connection, health: &HealthRecord) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO health (time, kind, backend, detail, lost_events) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        health.time_ns,
        health.kind,
        health.backend,
        health.detail,
        health.lost_events as i64
    ])
    .context("inserting a health record")?;
    Ok(())
}

/// Health rows with ids above `after`, in id order (what the fleet outbox publishes next).
pub fn after(conn: &Connection, after: i64, limit: usize) -> Result<Vec<(i64, HealthRecord)>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, time, kind, backend, detail, lost_events FROM health WHERE id > ?1 \
             ORDER BY id LIMIT ?2",
        )
        .context("preparing the outbox query")?;
    let rows = stmt.query_map(params![after, limit as i64], |row| {
        Ok((
            row.get(0)?,
            HealthRecord {
                time_ns: row.get(1)?,
                kind: row.get(2)?,
                backend: row.get(3)?,
                detail: row.get(4)?,
                lost_events: row.get::<_, i64>(5)?.max(0) as u64,
            },
        ))
    })?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .context("reading health rows")
}
