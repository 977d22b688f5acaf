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

/// One condition of an [`EventFilter`], for a store to bind in its own SQL dialect (SQLite
/// here, PostgreSQL for `--fleet`): the filters are listed once, in
/// [`EventFilter::conditions`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Condition<'a> {
    /// The path or the new path matches this glob (`*` also matches `/`).
    PathGlob(&'a str),
    /// The activity is one of these OCSF ids.
    Activities(&'a [i64]),
    /// At or after this time (epoch ns).
    Since(i64),
    /// At or before this time (epoch ns).
    Until(i64),
    /// The column (its name is the same in both stores) equals the value.
    Equals(&'static str, FilterValue<'a>),
}

/// A value a [`Condition::Equals`] compares with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FilterValue<'a> {
    Int(i64),
    Text(&'a str),
    /// A path: bytes in the local store, text in PostgreSQL.
    Path(&'a str),
    Bool(bool),
}

impl EventFilter {
    /// The filter's conditions, all of which a row must meet.
    pub fn conditions(&self) -> Vec<Condition<'_>> {
        let mut all = Vec::new();
        if !self.activities.is_empty() {
            all.push(Condition::Activities(&self.activities));
        }
        if let Some(glob) = &self.path {
            all.push(Condition::PathGlob(glob));
        }
        all.extend(self.since_ns.map(Condition::Since));
        all.extend(self.until_ns.map(Condition::Until));
        let equals = [
            ("pid", self.pid.map(|v| FilterValue::Int(v.into()))),
            ("exe", self.exe.as_deref().map(FilterValue::Path)),
            ("uid", self.uid.map(|v| FilterValue::Int(v.into()))),
            (
                "container_id",
                self.container.as_deref().map(FilterValue::Text),
            ),
            ("grp", self.group.as_deref().map(FilterValue::Text)),
            ("rule", self.rule.as_deref().map(FilterValue::Text)),
            ("authorized", self.authorized.map(FilterValue::Bool)),
        ];
        for (column, value) in equals {
            all.extend(value.map(|v| Condition::Equals(column, v)));
        }
        all
    }
}

pub fn events(store: &ReadOnlyStore, filter: &EventFilter, json_out: bool) -> Result<()> {
    let mut conditions: Vec<String> = vec!["1".into()];
    let mut params: Vec<Box<dyn rusqlite::ToSql + '_>> = Vec::new();
    for condition in filter.conditions() {
        let (sql, value): (String, Box<dyn rusqlite::ToSql>) = match condition {
            Condition::Activities(list) => {
                let list: Vec<String> = list.iter().map(i64::to_string).collect();
                conditions.push(format!("activity IN ({})", list.join(",")));
                continue;
            }
            // Both placeholders take the same parameter.
            Condition::PathGlob(glob) => (
                "(CAST(path AS TEXT) GLOB ? OR CAST(new_path AS TEXT) GLOB ?)".into(),
                Box::new(glob),
            ),
            Condition::Since(t) => ("time >= ?".into(), Box::new(t)),
            Condition::Until(t) => ("time <= ?".into(), Box::new(t)),
            Condition::Equals(column, value) => (
                format!("{column} = ?"),
                match value {
                    FilterValue::Int(v) => Box::new(v),
                    FilterValue::Text(v) => Box::new(v),
                    FilterValue::Path(v) => Box::new(v.as_bytes()),
                    FilterValue::Bool(v) => Box::new(v),
                },
            ),
        };
        params.push(value);
        conditions.push(sql.replace('?', &format!("?{}", params.len())));
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
