//! The daemon's heartbeat: one row, rewritten by the event loop every few seconds, so that
//! `fim status` can tell a running daemon from one that stopped, died or is stuck (a process
//! id alone cannot: it may be reused, or live in another pid namespace).

use std::time::Duration;

use anyhow::{Context, Result};
use rusqlite::{Connection, OptionalExtension, params};

/// How often the daemon rewrites its heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);
/// A heartbeat older than this (three missed beats) says the daemon is not running, or stuck.
pub const HEARTBEAT_STALE_AFTER: Duration = Duration::from_secs(30);

/// What the daemon is doing, as its heartbeat says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaemonState {
    /// The sensor runs; the start scan is still comparing the baseline.
    Starting,
    /// The start scan is done: every change is seen from now on.
    Running,
    /// Stopped cleanly (the last heartbeat, written at shutdown).
    Stopped,
}

impl DaemonState {
    pub fn name(self) -> &'static str {
        match self {
            DaemonState::Starting => "starting",
            DaemonState::Running => "running",
            DaemonState::Stopped => "stopped",
        }
    }

    fn from_name(name: &str) -> Option<DaemonState> {
        [
            DaemonState::Starting,
            DaemonState::Running,
            DaemonState::Stopped,
        ]
        .into_iter()
        .find(|s| s.name() == name)
    }
}

/// The `heartbeat` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// When it was written (ns since the epoch).
    pub time_ns: i64,
    pub pid: u32,
    pub version: String,
    pub backend: String,
    pub state: DaemonState,
    /// When this daemon started.
    pub started_ns: i64,
    /// When its last scan (the start scan or a rescan) finished, if one did.
    pub last_scan_ns: Option<i64>,
    /// Records read from the kernel since the start, and records the kernel lost.
    pub kernel_records: u64,
    pub kernel_lost: u64,
    /// Jobs handed to the change worker since the start, and those still queued.
    pub jobs: u64,
    pub queue_depth: u64,
}

pub(crate) fn write(conn: &Connection, beat: &Heartbeat) -> Result<()> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO heartbeat (id, time, pid, version, backend, state, started, \
         last_scan, kernel_records, kernel_lost, jobs, queue_depth) \
         VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        beat.time_ns,
        beat.pid,
        beat.version,
        beat.backend,
        beat.state.name(),
        beat.started_ns,
        beat.last_scan_ns,
        beat.kernel_records as i64,
        beat.kernel_lost as i64,
        beat.jobs as i64,
        beat.queue_depth as i64,
    ])
    .context("writing the heartbeat")?;
    Ok(())
}

/// The heartbeat, or `None` when no daemon ever wrote one (or the store predates it).
pub(crate) fn read(conn: &Connection) -> Result<Option<Heartbeat>> {
    let exists: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'heartbeat')",
            [],
            |r| r.get(0),
        )
        .context("looking for the heartbeat table")?;
    if !exists {
        return Ok(None);
    }
    conn.query_row(
        "SELECT time, pid, version, backend, state, started, last_scan, kernel_records, \
         kernel_lost, jobs, queue_depth FROM heartbeat WHERE id = 1",
        [],
        |r| {
            let state: String = r.get(4)?;
            Ok(Heartbeat {
                time_ns: r.get(0)?,
                pid: r.get(1)?,
                version: r.get(2)?,
                backend: r.get(3)?,
                // A state this fim does not know (a newer one wrote it) reads as running.
                state: DaemonState::from_name(&state).unwrap_or(DaemonState::Running),
                started_ns: r.get(5)?,
                last_scan_ns: r.get(6)?,
                kernel_records: r.get::<_, i64>(7)?.max(0) as u64,
                kernel_lost: r.get::<_, i64>(8)?.max(0) as u64,
                jobs: r.get::<_, i64>(9)?.max(0) as u64,
                queue_depth: r.get::<_, i64>(10)?.max(0) as u64,
            })
        },
    )
    .optional()
    .context("reading the heartbeat")
}
