//! `fim events`: change rows matching filters, newest first.

use std::io::Write;

use anyhow::Result;

use super::{Table, actor_cell, change_json, time::format_ns};
use crate::baseline::display_path;
use crate::metrics::activity_label;
use crate::store::{ChangeRecord, ReadOnlyStore};

/// The filters of `fim events`; all optional, combined with AND.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// SQLite GLOB over the path or the new path (`*` also matches `/`).
    pub path: Option<String>,
    pub since_ns: Option<i64>,
    pub until_ns: Option<i64>,
    /// OCSF activity ids; any of them.
    pub activities: Vec<i64>,
    pub pid: Option<u32>,
    pub exe: Option<String>,
    pub uid: Option<u32>,
    pub container: Option<String>,
    pub group: Option<String>,
    pub rule: Option<String>,
    pub authorized: Option<bool>,
    pub limit: usize,
}

pub fn events(store: &ReadOnlyStore, filter: &EventFilter, json_out: bool) -> Result<()> {
    let mut conditions: Vec<String> = vec!["1".into()];
    if !filter.activities.is_empty() {
        let list: Vec<String> = filter.activities.iter().map(i64::to_string).collect();
        conditions.push(format!("activity IN ({})", list.join(",")));
    }
    let mut params: Vec<Box<dyn rusqlite::ToSql>> = Vec::new();
    let mut bind = |condition: &str, value: Box<dyn rusqlite::ToSql>| {
        params.push(value);
        conditions.push(condition.replace('?', &format!("?{}", params.len())));
    };
    if let Some(glob) = &filter.path {
        // Both placeholders take the same parameter.
        bind(
            "(CAST(path AS TEXT) GLOB ? OR CAST(new_path AS TEXT) GLOB ?)",
            Box::new(glob.clone()),
        );
    }
    if let Some(t) = filter.since_ns {
        bind("time >= ?", Box::new(t));
    }
    if let Some(t) = filter.until_ns {
        bind("time <= ?", Box::new(t));
    }
    if let Some(pid) = filter.pid {
        bind("pid = ?", Box::new(pid));
    }
    if let Some(exe) = &filter.exe {
        bind("exe = ?", Box::new(exe.as_bytes().to_vec()));
    }
    if let Some(uid) = filter.uid {
        bind("uid = ?", Box::new(uid));
    }
    if let Some(container) = &filter.container {
        bind("container_id = ?", Box::new(container.clone()));
    }
    if let Some(group) = &filter.group {
        bind("grp = ?", Box::new(group.clone()));
    }
    if let Some(rule) = &filter.rule {
        bind("rule = ?", Box::new(rule.clone()));
    }
    if let Some(authorized) = filter.authorized {
        bind("authorized = ?", Box::new(authorized));
    }
    let refs: Vec<&dyn rusqlite::ToSql> = params.iter().map(|p| p.as_ref()).collect();
    let rows = store.changes(&conditions.join(" AND "), &refs, filter.limit)?;
    let rows: Vec<(Option<String>, i64, ChangeRecord)> =
        rows.into_iter().map(|(id, c)| (None, id, c)).collect();
    print_events(&rows, json_out)
}

/// Prints change rows: one store's (host `None`) or several fleet hosts' (a `host` column
/// and field; otherwise the same shapes).
pub fn print_events(rows: &[(Option<String>, i64, ChangeRecord)], json_out: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json_out {
        for (host, id, change) in rows {
            let mut value = change_json(*id, change);
            if let Some(host) = host {
                value["host"] = serde_json::json!(host);
            }
            writeln!(out, "{value}")?;
        }
        return Ok(());
    }
    let fleet = rows.iter().any(|(host, _, _)| host.is_some());
    let mut headers = vec!["id", "time", "activity", "changed", "by", "rule", "path"];
    if fleet {
        headers.insert(0, "host");
    }
    let mut table = Table::new(&headers);
    for (host, id, c) in rows {
        let path = match &c.new_path {
            Some(new) => format!("{} -> {}", display_path(&c.path), display_path(new)),
            None => display_path(&c.path),
        };
        let mut row = vec![
            id.to_string(),
            format_ns(c.time_ns),
            activity_label(c.activity).to_string(),
            c.changed.join(","),
            actor_cell(c),
            c.rule.clone().unwrap_or_default(),
            path,
        ];
        if let Some(host) = host {
            row.insert(0, host.clone());
        }
        table.row(row);
    }
    if table.is_empty() {
        writeln!(out, "no matching changes")?;
        return Ok(());
    }
    table.print(&mut out)?;
    Ok(())
}
