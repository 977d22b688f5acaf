//! `fim who PATH`: the history of a path, newest first, followed back through renames.

use std::io::Write;

use anyhow::Result;
use serde_json::json;

use super::{Table, actor_cell, change_json, time::format_ns};
use crate::baseline::display_path;
use crate::metrics::activity_label;
use crate::store::{ReadOnlyStore, activity};

/// Renames followed backwards at most (a rename cycle stops earlier: names are not revisited).
const MAX_NAMES: usize = 32;

/// One name the file had, and its changes while it had it (newest first).
pub struct Name {
    pub path: Vec<u8>,
    pub changes: Vec<(i64, crate::store::ChangeRecord)>,
}

/// The changes of one path or of the rename that gave it this name, at or before a time
/// (ns), newest first, at most `limit`: one store's (or one fleet host's) rows.
pub type FetchChanges<'a> =
    dyn FnMut(&[u8], i64, usize) -> Result<Vec<(i64, crate::store::ChangeRecord)>> + 'a;

/// The history of `path`, followed back through renames, from the rows `fetch` returns.
pub fn who_history(fetch: &mut FetchChanges<'_>, path: &[u8], limit: usize) -> Result<Vec<Name>> {
    let mut names = Vec::new();
    let mut current = path.to_vec();
    let mut before = i64::MAX;
    let mut left = limit;
    while names.len() < MAX_NAMES && left > 0 {
        let changes = fetch(&current, before, left)?;
        // The rename that gave the file this name ends this name's history.
        let arrival = changes.iter().position(|(_, c)| {
            c.activity == activity::RENAME && c.new_path.as_deref() == Some(&current[..])
        });
        let kept: Vec<_> = match arrival {
            Some(i) => changes[..=i].to_vec(),
            None => changes,
        };
        left = left.saturating_sub(kept.len());
        let next = arrival.map(|i| (kept[i].1.path.clone(), kept[i].1.time_ns));
        names.push(Name {
            path: current.clone(),
            changes: kept,
        });
        match next {
            Some((old, time)) if !names.iter().any(|n| n.path == old) => {
                current = old;
                // Strictly before the rename: the rename row itself is listed once.
                before = time - 1;
            }
            _ => break,
        }
    }
    Ok(names)
}

pub fn who(store: &ReadOnlyStore, path: &[u8], limit: usize, json_out: bool) -> Result<()> {
    let names = who_history(
        &mut |current, before, left| {
            store.changes(
                "(path = ?1 OR (activity = 5 AND new_path = ?1)) AND time <= ?2",
                &[&current, &before],
                left,
            )
        },
        path,
        limit,
    )?;
    print_who(&[(None, names)], path, json_out)
}

/// Prints histories: one store's (host `None`) or several fleet hosts' (a `host` column
/// and field first; otherwise the same shapes).
pub fn print_who(
    histories: &[(Option<String>, Vec<Name>)],
    path: &[u8],
    json_out: bool,
) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json_out {
        for (host, names) in histories {
            for (depth, name) in names.iter().enumerate() {
                for (id, change) in &name.changes {
                    let mut value = change_json(*id, change);
                    value["name"] = json!(display_path(&name.path));
                    value["name_depth"] = json!(depth);
                    if let Some(host) = host {
                        value["host"] = json!(host);
                    }
                    writeln!(out, "{value}")?;
                }
            }
        }
        return Ok(());
    }
    let fleet = histories.iter().any(|(host, _)| host.is_some());
    let mut headers = vec!["time", "activity", "changed", "by", "backend", "path"];
    if fleet {
        headers.insert(0, "host");
    }
    let mut table = Table::new(&headers);
    for (host, names) in histories {
        for name in names {
            for (_, c) in &name.changes {
                let shown = match (&c.new_path, c.activity) {
                    (Some(new), activity::RENAME) => {
                        format!("{} -> {}", display_path(&c.path), display_path(new))
                    }
                    _ => display_path(&c.path),
                };
                let mut row = vec![
                    format_ns(c.time_ns),
                    activity_label(c.activity).to_string(),
                    c.changed.join(","),
                    actor_cell(c),
                    c.backend.clone(),
                    shown,
                ];
                if let Some(host) = host {
                    row.insert(0, host.clone());
                }
                table.row(row);
            }
        }
    }
    if table.is_empty() {
        writeln!(
            out,
            "no recorded changes of {}",
            super::table::cell(&display_path(path))
        )?;
        return Ok(());
    }
    table.print(&mut out)?;
    Ok(())
}
