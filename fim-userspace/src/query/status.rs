//! `fim status`: is the daemon running (its heartbeat), on which backend, since when; what
//! the store holds; losses, rescans and the last scan.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use rusqlite::OptionalExtension;
use serde_json::{Value, json};

use super::time::format_ns;
use crate::store::{DaemonState, HEARTBEAT_STALE_AFTER, Heartbeat, ReadOnlyStore};

struct Health {
    time_ns: i64,
    backend: Option<String>,
    detail: Option<String>,
}

fn last_health(store: &ReadOnlyStore, kinds: &[&str]) -> Result<Option<Health>> {
    let list: Vec<String> = kinds.iter().map(|k| format!("'{k}'")).collect();
    store
        .connection()
        .query_row(
            &format!(
                "SELECT time, backend, detail FROM health WHERE kind IN ({}) \
                 ORDER BY time DESC, id DESC LIMIT 1",
                list.join(",")
            ),
            [],
            |r| {
                Ok(Health {
                    time_ns: r.get(0)?,
                    backend: r.get(1)?,
                    detail: r.get(2)?,
                })
            },
        )
        .optional()
        .context("reading health rows")
}

fn count(store: &ReadOnlyStore, sql: &str) -> Result<i64> {
    store
        .connection()
        .query_row(sql, [], |r| r.get::<_, Option<i64>>(0))
        .map(|v| v.unwrap_or(0))
        .with_context(|| format!("running {sql}"))
}

/// The daemon as its heartbeat shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Liveness {
    /// No heartbeat: no daemon has run on this store (or only one older than heartbeats).
    Never,
    /// A recent heartbeat: the daemon runs (and is starting or running).
    Alive(DaemonState),
    /// Its last heartbeat said it stopped cleanly.
    Stopped,
    /// Its last heartbeat is older than `HEARTBEAT_STALE_AFTER`: it died, or is stuck.
    Stale,
}

impl Liveness {
    /// What `heartbeat` says at `now_ns`.
    fn of(heartbeat: Option<&Heartbeat>, now_ns: i64) -> Liveness {
        match heartbeat {
            None => Liveness::Never,
            Some(beat) if beat.state == DaemonState::Stopped => Liveness::Stopped,
            Some(beat) if age_s(beat, now_ns) > HEARTBEAT_STALE_AFTER.as_secs() as i64 => {
                Liveness::Stale
            }
            Some(beat) => Liveness::Alive(beat.state),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Liveness::Never => "never",
            Liveness::Alive(state) => state.name(),
            Liveness::Stopped => "stopped",
            Liveness::Stale => "stale",
        }
    }
}

/// Seconds since the heartbeat (0 for one from the future: clocks disagree).
fn age_s(beat: &Heartbeat, now_ns: i64) -> i64 {
    (now_ns - beat.time_ns).max(0) / 1_000_000_000
}

/// `12 s`, `3 min`, `5 h`, `4 days`.
fn ago(secs: i64) -> String {
    if secs < 120 {
        format!("{secs} s")
    } else if secs < 7200 {
        format!("{} min", secs / 60)
    } else if secs < 172_800 {
        format!("{} h", secs / 3600)
    } else {
        format!("{} days", secs / 86_400)
    }
}

/// The heartbeat in `fim status --json`.
fn heartbeat_json(beat: &Heartbeat, now_ns: i64) -> Value {
    json!({
        "time": format_ns(beat.time_ns),
        "age_s": age_s(beat, now_ns),
        "state": beat.state.name(),
        "pid": beat.pid,
        "version": beat.version,
        "backend": beat.backend,
        "started": format_ns(beat.started_ns),
        "last_scan": beat.last_scan_ns.map(format_ns),
        "kernel_records": beat.kernel_records,
        "kernel_lost": beat.kernel_lost,
        "jobs": beat.jobs,
        "queue_depth": beat.queue_depth,
    })
}

/// The `daemon:` line of `fim status`.
fn daemon_line(liveness: Liveness, beat: Option<&Heartbeat>, now_ns: i64) -> String {
    let Some(beat) = beat else {
        return "not running (no heartbeat: fim has not run on this store)".to_string();
    };
    let age = ago(age_s(beat, now_ns));
    let who = format!(
        "pid {}, backend {}",
        beat.pid,
        super::table::cell(&beat.backend)
    );
    let up = ago((now_ns - beat.started_ns).max(0) / 1_000_000_000);
    let since = format_ns(beat.started_ns);
    match liveness {
        Liveness::Alive(DaemonState::Starting) => format!(
            "starting: the start scan is comparing the baseline ({who}, up {up}, since {since}; \
             heartbeat {age} ago)"
        ),
        Liveness::Alive(_) => {
            format!("running ({who}, up {up}, since {since}; heartbeat {age} ago)")
        }
        Liveness::Stopped => format!(
            "not running (stopped {age} ago, {})",
            format_ns(beat.time_ns)
        ),
        Liveness::Stale | Liveness::Never => format!(
            "fim's last heartbeat was {age} ago: not running, or stuck ({who}, {})",
            format_ns(beat.time_ns)
        ),
    }
}

pub fn status(store: &ReadOnlyStore, path: &Path, json_out: bool) -> Result<()> {
    let now = super::now_ns();
    let start = last_health(store, &["start"])?;
    let heartbeat = store.heartbeat()?;
    let liveness = Liveness::of(heartbeat.as_ref(), now);
    let running = matches!(liveness, Liveness::Alive(_));
    let beat = heartbeat.as_ref();
    let scan = last_health(store, &["scan", "rescan"])?;
    let size: u64 = ["", "-wal"]
        .iter()
        .filter_map(|suffix| {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            std::fs::metadata(name).ok().map(|m| m.len())
        })
        .sum();
    let day_ago = now - 86_400 * 1_000_000_000;
    let value = json!({
        "running": running,
        "daemon": liveness.name(),
        "pid": if running { beat.map(|b| b.pid) } else { None },
        "backend": beat.map(|b| b.backend.clone()).or_else(|| start.as_ref().and_then(|s| s.backend.clone())),
        "started": beat.map(|b| b.started_ns).or(start.as_ref().map(|s| s.time_ns)).map(format_ns),
        "uptime_s": if running { beat.map(|b| (now - b.started_ns).max(0) / 1_000_000_000) } else { None },
        "heartbeat": beat.map(|b| heartbeat_json(b, now)),
        "changes": count(store, "SELECT count(*) FROM changes")?,
        "changes_24h": count(store, &format!("SELECT count(*) FROM changes WHERE time >= {day_ago}"))?,
        "baseline_files": count(store, "SELECT count(*) FROM baseline")?,
        "kernel_losses": count(store, "SELECT sum(lost_events) FROM health WHERE kind = 'loss'")?,
        "rescans": count(store, "SELECT count(*) FROM health WHERE kind = 'rescan'")?,
        "last_scan": scan.as_ref().map(|s| json!({"time": format_ns(s.time_ns), "detail": s.detail})),
        "store": {"path": path.display().to_string(), "bytes": size},
        "last_store_problem": last_health(store, &["store_error", "store_rows_dropped"])?
            .map(|h| json!({"time": format_ns(h.time_ns), "detail": h.detail})),
        "integrity_alerts": count(store, "SELECT count(*) FROM health WHERE kind = 'integrity'")?,
        "last_integrity_alert": last_health(store, &["integrity"])?
            .map(|h| json!({"time": format_ns(h.time_ns), "detail": h.detail})),
    });
    let mut out = std::io::stdout().lock();
    if json_out {
        writeln!(out, "{value}")?;
        return Ok(());
    }
    let text = |v: &Value| match v {
        Value::Null => "-".to_string(),
        Value::String(s) => super::table::cell(s),
        other => other.to_string(),
    };
    writeln!(out, "daemon:          {}", daemon_line(liveness, beat, now))?;
    writeln!(
        out,
        "changes:         {} ({} in the last 24 h)",
        value["changes"], value["changes_24h"]
    )?;
    writeln!(out, "baseline files:  {}", value["baseline_files"])?;
    writeln!(
        out,
        "kernel losses:   {} (rescans: {})",
        value["kernel_losses"], value["rescans"]
    )?;
    match &scan {
        Some(s) => writeln!(
            out,
            "last scan:       {} {}",
            format_ns(s.time_ns),
            super::table::cell(s.detail.as_deref().unwrap_or(""))
        )?,
        None => writeln!(out, "last scan:       never")?,
    }
    writeln!(out, "store:           {} ({} bytes)", path.display(), size)?;
    match value["last_integrity_alert"].as_object() {
        Some(alert) => writeln!(
            out,
            "INTEGRITY ALERT: {} {} ({} alerts in all)",
            text(&alert["time"]),
            text(&alert["detail"]),
            value["integrity_alerts"]
        )?,
        None => writeln!(out, "integrity:       no alerts")?,
    }
    if let Some(problem) = value["last_store_problem"].as_object() {
        writeln!(
            out,
            "store problem:   {} {}",
            text(&problem["time"]),
            text(&problem["detail"])
        )?;
    }
    Ok(())
}
