//! `fim status`: is the daemon running, on which backend, since when; what the store holds;
//! losses, rescans and the last scan.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use rusqlite::OptionalExtension;
use serde_json::{Value, json};

use super::time::format_ns;
use crate::store::ReadOnlyStore;

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

/// The daemon pid a "start" row names (`fim VERSION pid N on kernel K`).
fn started_pid(detail: &str) -> Option<u32> {
    let mut words = detail.split_whitespace();
    words.find(|w| *w == "pid")?;
    words.next()?.parse().ok()
}

fn is_fim(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "fim")
}

pub fn status(store: &ReadOnlyStore, path: &Path, json_out: bool) -> Result<()> {
    let now = super::now_ns();
    let start = last_health(store, &["start"])?;
    let stop = last_health(store, &["stop"])?;
    let pid = start
        .as_ref()
        .and_then(|s| s.detail.as_deref())
        .and_then(started_pid);
    let running = match (&start, &stop, pid) {
        (Some(start), stop, Some(pid)) => {
            stop.as_ref().is_none_or(|s| s.time_ns < start.time_ns) && is_fim(pid)
        }
        _ => false,
    };
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
        "pid": if running { pid } else { None },
        "backend": start.as_ref().and_then(|s| s.backend.clone()),
        "started": start.as_ref().map(|s| format_ns(s.time_ns)),
        "uptime_s": if running { start.as_ref().map(|s| (now - s.time_ns) / 1_000_000_000) } else { None },
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
    let daemon = if running {
        format!(
            "running (pid {}, backend {}, up {}s, since {})",
            text(&value["pid"]),
            text(&value["backend"]),
            text(&value["uptime_s"]),
            text(&value["started"])
        )
    } else {
        "not running".to_string()
    };
    writeln!(out, "daemon:          {daemon}")?;
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
