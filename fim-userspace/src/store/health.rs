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
