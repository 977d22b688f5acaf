//! `fim status`: is the daemon running (its heartbeat), on which backend, since when; what
//! the store holds; losses, rescans, the last full scan and the next scheduled one.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use rusqlite::OptionalExtension;
use serde_json::{Value, json};

use super::time::format_ns;
use crate::store::{DaemonState, HEARTBEAT_STALE_AFTER, Heartbeat, ReadOnlyStore};

struct Health {
    kind: String,
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
                "SELECT time, backend, detail, kind FROM health WHERE kind IN ({}) \
                 ORDER BY time DESC, id DESC LIMIT 1",
                list.join(",")
            ),
            [],
            |r| {
                Ok(Health {
                    time_ns: r.get(0)?,
                    backend: r.get(1)?,
                    detail: r.get(2)?,
                    kind: r.get(3)?,
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

/// The health kinds of scans of every watched path: the start scan and `fim scan` (`scan`),
/// the daemon's scheduled scans and those `fim scan --now` asked for.
const FULL_SCAN_KINDS: [&str; 3] = ["scan", "scheduled_scan", "requested_scan"];

/// The last full scan: when, which kind, and what its detail says (how long it took, what it
/// found: `... 0 added, 0 removed, 1 modified in 2.3s; ...`).
fn last_scan_json(scan: &Health) -> Value {
    let detail = scan.detail.as_deref().unwrap_or("");
    let kind = match &scan.kind[..] {
        "scheduled_scan" => "scheduled",
        "requested_scan" => "requested",
        _ if detail.starts_with("start:") => "start",
        // `fim scan`, without the daemon.
        _ => "offline",
    };
    let mut value = json!({"time": format_ns(scan.time_ns), "kind": kind, "detail": scan.detail});
    if let Some((added, removed, modified)) = drift_counts(detail) {
        value["added"] = json!(added);
        value["removed"] = json!(removed);
        value["modified"] = json!(modified);
    }
    if let Some(seconds) = duration_s(detail) {
        value["duration_s"] = json!(seconds);
    }
    value
}

/// `N added, N removed, N modified` in a scan's health detail.
fn drift_counts(detail: &str) -> Option<(u64, u64, u64)> {
    let re = regex::Regex::new(r"(\d+) added, (\d+) removed, (\d+) modified").ok()?;
    let c = re.captures(detail)?;
    Some((c[1].parse().ok()?, c[2].parse().ok()?, c[3].parse().ok()?))
}

/// `in 2.3s` in a daemon scan's health detail.
fn duration_s(detail: &str) -> Option<f64> {
    let re = regex::Regex::new(r" in ([0-9]+(?:\.[0-9]+)?)s\b").ok()?;
    re.captures(detail)?[1].parse().ok()
}

/// When the running daemon (`pid`) plans its next scheduled scan, from the row it keeps
/// (`SCAN_SCHEDULE_KEY`); a row of an earlier daemon means this one has not planned yet.
fn next_scan_json(store: &ReadOnlyStore, pid: Option<u32>) -> Result<Value> {
    let row: Option<String> = store
        .connection()
        .query_row(
            "SELECT value FROM meta WHERE key = ?1",
            [crate::store::SCAN_SCHEDULE_KEY],
            |r| r.get(0),
        )
        .optional()
        .context("reading the scan schedule")?;
    let row: Value = row
        .and_then(|r| serde_json::from_str(&r).ok())
        .unwrap_or(Value::Null);
    if pid.is_none() || row["pid"].as_u64() != pid.map(u64::from) {
        return Ok(json!({"planned": false}));
    }
    Ok(json!({
        "planned": true,
        "time": row["next_ns"].as_i64().map(format_ns),
        "interval_s": row["interval_s"],
        "spread_s": row["spread_s"],
    }))
}

fn next_scan_text(next: &Value) -> String {
    if next["planned"] != true {
        return "after the start scan".to_string();
    }
    let Some(time) = next["time"].as_str() else {
        return "none: scheduled scans are off ([scan] interval = \"0\")".to_string();
    };
    let duration = |v: &Value| {
        crate::config::format_duration(std::time::Duration::from_secs(v.as_u64().unwrap_or(0)))
    };
    format!(
        "{time} (every {}, plus up to {} at random)",
        duration(&next["interval_s"]),
        duration(&next["spread_s"])
    )
}

pub fn status(store: &ReadOnlyStore, path: &Path, json_out: bool) -> Result<()> {
    let now = super::now_ns();
    let start = last_health(store, &["start"])?;
    let heartbeat = store.heartbeat()?;
    let liveness = Liveness::of(heartbeat.as_ref(), now);
    let running = matches!(liveness, Liveness::Alive(_));
    let beat = heartbeat.as_ref();
    let scan = last_health(store, &FULL_SCAN_KINDS)?;
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
        "last_scan": scan.as_ref().map(last_scan_json),
        "next_scan": if running { next_scan_json(store, beat.map(|b| b.pid))? } else { Value::Null },
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
            "last scan:       {} {} {}",
            format_ns(s.time_ns),
            text(&value["last_scan"]["kind"]),
            super::table::cell(s.detail.as_deref().unwrap_or(""))
        )?,
        None => writeln!(out, "last scan:       never")?,
    }
    if running {
        writeln!(
            out,
            "next scan:       {}",
            next_scan_text(&value["next_scan"])
        )?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn health(kind: &str, detail: &str) -> Health {
        Health {
            kind: kind.to_string(),
            time_ns: 1_800_000_000_000_000_000,
            backend: None,
            detail: Some(detail.to_string()),
        }
    }

    #[test]
    fn the_last_scan_says_its_kind_duration_and_drift() {
        let scheduled = last_scan_json(&health(
            "scheduled_scan",
            "scheduled: 1 added, 0 removed, 2 modified in 2.3s; 120 entries, 3 hashed",
        ));
        assert_eq!(scheduled["kind"], "scheduled");
        assert_eq!(scheduled["added"], 1);
        assert_eq!(scheduled["removed"], 0);
        assert_eq!(scheduled["modified"], 2);
        assert_eq!(scheduled["duration_s"], 2.3);
        let start = last_scan_json(&health(
            "scan",
            "start: 0 added, 0 removed, 0 modified (baseline created) in 0.1s; 5 entries, 2 hashed",
        ));
        assert_eq!(start["kind"], "start");
        assert_eq!(start["duration_s"], 0.1);
        assert_eq!(
            last_scan_json(&health(
                "requested_scan",
                "requested: 0 added, 0 removed, 0 modified in 12s; 1 entries, 0 hashed"
            ))["duration_s"],
            12.0
        );
        // `fim scan` without the daemon: no duration in its row.
        let offline = last_scan_json(&health(
            "scan",
            "7 entries, 7 hashed, 0 reused, 0 unreadable, 0 unstable, 0 too large; 0 added, 1 removed, 0 modified",
        ));
        assert_eq!(offline["kind"], "offline");
        assert_eq!(offline["removed"], 1);
        assert!(offline.get("duration_s").is_none());
        // A detail in another form is shown as it is.
        let odd = last_scan_json(&health("scan", "start: 0 added"));
        assert!(odd.get("added").is_none());
        assert_eq!(odd["detail"], "start: 0 added");
    }

    #[test]
    fn the_next_scan_reads_as_a_time_or_why_there_is_none() {
        assert_eq!(
            next_scan_text(&json!({"planned": false})),
            "after the start scan"
        );
        assert!(
            next_scan_text(&json!({"planned": true, "time": null, "interval_s": null}))
                .contains("off")
        );
        assert_eq!(
            next_scan_text(&json!({
                "planned": true, "time": "2026-12-06T20:00:00.000Z",
                "interval_s": 43200, "spread_s": 3600,
            })),
            "2026-12-06T20:00:00.000Z (every 12h, plus up to 1h at random)"
        );
    }
}
