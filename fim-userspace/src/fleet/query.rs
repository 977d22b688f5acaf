//! `fim who|events|status --fleet`: the same questions as the local commands, asked of
//! PostgreSQL across every host, answered in the same shapes plus the host. Hosts that are
//! offline keep their history.

use std::io::Write;

use anyhow::{Context, Result};
use serde_json::json;
use tokio_postgres::types::ToSql;

use crate::query::{
    Condition, EventFilter, FilterValue, Name, format_ns, print_events, print_who, who_history,
};
use crate::store::{Actor, ChangeRecord};

/// A connection to the central store for one command (queries run one at a time).
pub struct Central {
    runtime: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl Central {
    pub fn connect(connection_string: &str) -> Result<Central> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a runtime")?;
        let client = runtime.block_on(super::pg::connect(connection_string))?;
        Ok(Central { runtime, client })
    }

    fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<tokio_postgres::Row>> {
        self.runtime
            .block_on(self.client.query(sql, params))
            .with_context(|| {
                format!(
                    "querying PostgreSQL ({})",
                    sql.split_whitespace().take(6).collect::<Vec<_>>().join(" ")
                )
            })
    }
}

const COLUMNS: &str = "host, id, computer, time_ns, activity, path, path_hex, new_path, \
    new_path_hex, rule, grp, backend, changed::text, previous::text, hash_before, hash_after, \
    size, authorized, truncated_path, pid, ppid, exe, exe_hex, cmdline, uid, usr, login_uid, \
    login_user, container_id, comm, process_start_ns, used_path, used_path_hex";

fn bytes(text: Option<String>, hex: Option<String>) -> Option<Vec<u8>> {
    match hex {
        Some(hex) => Some(super::wire::WireBytes::Hex { hex }.to_bytes()),
        None => text.map(String::into_bytes),
    }
}

fn record(row: &tokio_postgres::Row) -> (String, i64, ChangeRecord) {
    let u32_of = |i: usize| row.get::<_, Option<i64>>(i).map(|v| v as u32);
    let changed: String = row.get(12);
    let previous: Option<String> = row.get(13);
    (
        row.get(0),
        row.get(1),
        ChangeRecord {
            host: row.get(2),
            time_ns: row.get(3),
            activity: i64::from(row.get::<_, i32>(4)),
            path: bytes(row.get(5), row.get(6)).unwrap_or_default(),
            new_path: bytes(row.get(7), row.get(8)),
            rule: row.get(9),
            group: row.get(10),
            backend: row.get(11),
            changed: serde_json::from_str(&changed).unwrap_or_default(),
            previous: previous.and_then(|p| serde_json::from_str(&p).ok()),
            hash_before: row.get(14),
            hash_after: row.get(15),
            size: row.get::<_, Option<i64>>(16).map(|s| s as u64),
            kind: None,
            flags: Default::default(),
            authorized: row.get(17),
            truncated_path: row.get(18),
            used_path: bytes(row.get(31), row.get(32)),
            actor: Actor {
                pid: u32_of(19),
                ppid: u32_of(20),
                exe: bytes(row.get(21), row.get(22)),
                cmdline: row.get::<_, Option<String>>(23).map(String::into_bytes),
                uid: u32_of(24),
                user: row.get(25),
                login_uid: u32_of(26),
                login_user: row.get(27),
                container_id: row.get(28),
                comm: row.get(29),
                start_time_ns: row.get(30),
            },
        },
    )
}

/// The text a path is stored under centrally (what a query must match).
fn path_text(path: &[u8]) -> String {
    crate::baseline::display_path(path)
}

/// `fim who PATH --fleet`: every host's history of PATH, each followed back through its
/// renames exactly as `fim who` does on that host.
pub fn who(
    central: &Central,
    path: &[u8],
    limit: usize,
    host: Option<&str>,
    json_out: bool,
) -> Result<()> {
    let text = path_text(path);
    let hosts: Vec<String> = central
        .query(
            "SELECT DISTINCT host FROM fim_changes
             WHERE (path = $1 OR (activity = 5 AND new_path = $1)) AND ($2::text IS NULL OR host = $2)
             ORDER BY host",
            &[&text, &host],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut histories: Vec<(Option<String>, Vec<Name>)> = Vec::new();
    let sql = format!(
        "SELECT {COLUMNS} FROM fim_changes
         WHERE host = $1 AND (path = $2 OR (activity = 5 AND new_path = $2)) AND time_ns <= $3
         ORDER BY time_ns DESC, id DESC LIMIT $4"
    );
    for host in hosts {
        let names = who_history(
            &mut |current, before, left| {
                let current = path_text(current);
                let limit = left as i64;
                Ok(central
                    .query(&sql, &[&host, &current, &before, &limit])?
                    .iter()
                    .map(|row| {
                        let (_, id, change) = record(row);
                        (id, change)
                    })
                    .collect())
            },
            path,
            limit,
        )?;
        histories.push((Some(host), names));
    }
    print_who(&histories, path, json_out)
}

/// A SQLite GLOB (`*` also matches `/`) as a PostgreSQL regular expression.
pub fn glob_regex(glob: &str) -> String {
    let mut out = String::from("^");
    let mut chars = glob.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => out.push_str(".*"),
            '?' => out.push('.'),
            '[' => {
                out.push('[');
                if chars.peek() == Some(&'^') {
                    chars.next();
                    out.push('^');
                }
                for c in chars.by_ref() {
                    if c == ']' {
                        break;
                    }
                    if c == '\\' {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out.push(']');
            }
            c if c.is_alphanumeric() || c == '/' || c == ' ' => out.push(c),
            c => {
                out.push('\\');
                out.push(c);
            }
        }
    }
    out.push('$');
    out
}

/// `fim events --fleet`: the local command's filters, across hosts (or one with `host`).
pub fn events(
    central: &Central,
    filter: &EventFilter,
    host: Option<&str>,
    json_out: bool,
) -> Result<()> {
    let mut conditions: Vec<String> = vec!["TRUE".into()];
    let mut params: Vec<Box<dyn ToSql + Sync>> = Vec::new();
    if let Some(host) = host {
        params.push(Box::new(host.to_string()));
        conditions.push("host = $1".into());
    }
    for condition in filter.conditions() {
        let (sql, value): (String, Box<dyn ToSql + Sync>) = match condition {
            Condition::Activities(list) => (
                "activity = ANY(?)".into(),
                Box::new(list.iter().map(|a| *a as i32).collect::<Vec<i32>>()),
            ),
            // Both placeholders take the same parameter.
            Condition::PathGlob(glob) => (
                "(path ~ ? OR coalesce(new_path, '') ~ ?)".into(),
                Box::new(glob_regex(glob)),
            ),
            Condition::Since(t) => ("time_ns >= ?".into(), Box::new(t)),
            Condition::Until(t) => ("time_ns <= ?".into(), Box::new(t)),
            Condition::Equals(column, value) => (
                format!("{column} = ?"),
                match value {
                    FilterValue::Int(v) => Box::new(v),
                    FilterValue::Text(v) | FilterValue::Path(v) => Box::new(v.to_string()),
                    FilterValue::Bool(v) => Box::new(v),
                },
            ),
        };
        params.push(value);
        conditions.push(sql.replace('?', &format!("${}", params.len())));
    }
    let sql = format!(
        "SELECT {COLUMNS} FROM fim_changes WHERE {} ORDER BY time_ns DESC, host, id DESC LIMIT {}",
        conditions.join(" AND "),
        filter.limit
    );
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref()).collect();
    let rows: Vec<(Option<String>, i64, ChangeRecord)> = central
        .query(&sql, &refs)?
        .iter()
        .map(|row| {
            let (host, id, change) = record(row);
            (Some(host), id, change)
        })
        .collect();
    print_events(&rows, json_out)
}

/// `fim status --fleet`: one line (or JSON object) per host: last heartbeat, the rule
/// revisions in force (and a refused one), backlog, kernel losses, gaps, changes held.
pub fn status(central: &Central, stale_after_s: i64, json_out: bool) -> Result<()> {
    let now = crate::query::now_ns();
    let rows = central.query(
        "SELECT h.host, h.computer, h.last_heartbeat_ns, h.version, h.backend,
                h.groups::text, h.applied::text, h.rejected::text, h.backlog, h.losses,
                h.gaps, h.published,
                (SELECT count(*) FROM fim_changes c WHERE c.host = h.host),
                (SELECT coalesce(sum(lost_events), 0)::bigint FROM fim_health e
                     WHERE e.host = h.host AND e.kind = 'loss')
         FROM fim_hosts h ORDER BY h.host",
        &[],
    )?;
    let mut out = std::io::stdout().lock();
    let mut table = crate::query::Table::new(&[
        "host",
        "state",
        "last heartbeat",
        "rules",
        "backlog",
        "losses",
        "gaps",
        "changes",
        "version",
    ]);
    for row in &rows {
        let host: String = row.get(0);
        let last: i64 = row.get(2);
        let age_s = (now - last) / 1_000_000_000;
        let online = age_s <= stale_after_s;
        let applied: serde_json::Value =
            serde_json::from_str(&row.get::<_, String>(6)).unwrap_or_default();
        let rejected: Option<serde_json::Value> = row
            .get::<_, Option<String>>(7)
            .and_then(|r| serde_json::from_str(&r).ok());
        let losses = row.get::<_, i64>(9).max(row.get::<_, i64>(13));
        let value = json!({
            "host": host,
            "computer": row.get::<_, String>(1),
            "online": online,
            "last_heartbeat": format_ns(last),
            "last_heartbeat_age_s": age_s,
            "version": row.get::<_, String>(3),
            "backend": row.get::<_, Option<String>>(4),
            "groups": serde_json::from_str::<serde_json::Value>(&row.get::<_, String>(5)).unwrap_or_default(),
            "rules": applied,
            "rules_rejected": rejected,
            "backlog": row.get::<_, i64>(8),
            "kernel_losses": losses,
            "gaps": row.get::<_, i64>(10),
            "published": row.get::<_, i64>(11),
            "changes": row.get::<_, i64>(12),
        });
        if json_out {
            writeln!(out, "{value}")?;
            continue;
        }
        let revisions = value["rules"]["revisions"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(g, r)| format!("{g}@{r}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        let rules = match &value["rules_rejected"] {
            serde_json::Value::Null => revisions,
            r => format!("{revisions} (REJECTED {})", r["revisions"]),
        };
        table.row(vec![
            host.clone(),
            if online { "online" } else { "OFFLINE" }.into(),
            format!("{} ({age_s}s ago)", format_ns(last)),
            rules,
            value["backlog"].to_string(),
            losses.to_string(),
            value["gaps"].to_string(),
            value["changes"].to_string(),
            value["version"].as_str().unwrap_or("").into(),
        ]);
    }
    if !json_out {
        if table.is_empty() {
            writeln!(out, "no hosts have reported yet")?;
        } else {
            table.print(&mut out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_become_anchored_regexes() {
        assert_eq!(glob_regex("/etc/*"), "^/etc/.*$");
        assert_eq!(glob_regex("/a?.conf"), "^/a.\\.conf$");
        assert_eq!(glob_regex("/x/[!ab]"), "^/x/[!ab]$");
        assert_eq!(glob_regex("/x/[^ab]*"), "^/x/[^ab].*$");
    }
}
