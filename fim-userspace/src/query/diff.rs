//! `fim diff PATH`: what changed in a path between two of its recorded changes: the metadata
//! fields, and the content as a unified diff when both versions were kept (`upload_content`).

use std::io::Write;

use anyhow::{Context, Result, bail};
use serde_json::json;

use super::{actor_cell, change_json, parse_time, table::cell, time::format_ns};
use crate::baseline::{display_path, parse_hex32};
use crate::metrics::activity_label;
use crate::store::{ChangeRecord, ReadOnlyStore};

/// A change row picked by id or by time (the newest change at or before it).
fn pick(rows: &[(i64, ChangeRecord)], spec: &str, now_ns: i64) -> Result<usize> {
    if let Ok(id) = spec.parse::<i64>() {
        return rows
            .iter()
            .position(|(row, _)| *row == id)
            .with_context(|| format!("change {id} is not a change of this path"));
    }
    let at = parse_time(spec, now_ns)?;
    rows.iter()
        .position(|(_, c)| c.time_ns <= at)
        .with_context(|| format!("no change of this path at or before {spec}"))
}

/// The content after a change, when it was kept.
fn content(store: &ReadOnlyStore, hash: Option<&str>) -> Result<Option<Vec<u8>>> {
    match hash.and_then(parse_hex32) {
        Some(h) => store.content(&h),
        None => Ok(None),
    }
}

pub fn diff(
    store: &ReadOnlyStore,
    path: &[u8],
    from: Option<&str>,
    to: Option<&str>,
    json_out: bool,
) -> Result<()> {
    let rows = store.changes("path = ?1 OR new_path = ?1", &[&path], 10_000)?;
    if rows.is_empty() {
        bail!("no recorded changes of {}", display_path(path));
    }
    let now = super::now_ns();
    let to_index = match to {
        Some(spec) => pick(&rows, spec, now)?,
        None => 0,
    };
    let from_index = match from {
        Some(spec) => Some(pick(&rows, spec, now)?),
        None => (to_index + 1 < rows.len()).then_some(to_index + 1),
    };
    if from_index.is_some_and(|f| f < to_index) {
        bail!("--from must be older than --to");
    }
    let (to_id, newer) = &rows[to_index];
    let older = from_index.map(|i| &rows[i]);
    // The content before: the older change's result, else what the newer change replaced.
    let before_hash = match older {
        Some((_, c)) => c.hash_after.clone().or(c.hash_before.clone()),
        None => newer.hash_before.clone(),
    };
    let after_hash = newer.hash_after.clone();
    let before = content(store, before_hash.as_deref())?;
    let after = content(store, after_hash.as_deref())?;
    let text_diff = match (&before, &after) {
        (Some(a), Some(b)) => match (std::str::from_utf8(a), std::str::from_utf8(b)) {
            (Ok(a), Ok(b)) => Some(
                similar::TextDiff::from_lines(a, b)
                    .unified_diff()
                    .context_radius(3)
                    .header("before", "after")
                    .to_string(),
            ),
            _ => None,
        },
        _ => None,
    };
    let content_note = match (&before, &after) {
        (Some(_), Some(_)) if text_diff.is_none() => "binary content differs".to_string(),
        (Some(_), Some(_)) => String::new(),
        _ if before_hash == after_hash => "content unchanged".to_string(),
        _ => format!(
            "content not kept: rule {} has upload_content = false, or a version was larger \
             than [store] content_max_size",
            newer.rule.as_deref().unwrap_or("(none)")
        ),
    };
    let mut out = std::io::stdout().lock();
    if json_out {
        let value = json!({
            "path": display_path(path),
            "from": older.map(|(id, c)| change_json(*id, c)),
            "to": change_json(*to_id, newer),
            "hash_before": before_hash,
            "hash_after": after_hash,
            "diff": text_diff,
            "note": (!content_note.is_empty()).then_some(&content_note),
        });
        writeln!(out, "{value}")?;
        return Ok(());
    }
    writeln!(out, "path:    {}", cell(&display_path(path)))?;
    if let Some((id, c)) = older {
        writeln!(
            out,
            "from:    #{id} {} {} by {}",
            format_ns(c.time_ns),
            activity_label(c.activity),
            cell(&actor_cell(c))
        )?;
    }
    writeln!(
        out,
        "to:      #{to_id} {} {} by {}",
        format_ns(newer.time_ns),
        activity_label(newer.activity),
        cell(&actor_cell(newer))
    )?;
    if !newer.changed.is_empty() {
        writeln!(out, "changed: {}", newer.changed.join(", "))?;
    }
    if let Some(previous) = &newer.previous {
        writeln!(out, "previous: {previous}")?;
    }
    writeln!(
        out,
        "content: {} -> {}",
        before_hash.as_deref().unwrap_or("?"),
        after_hash.as_deref().unwrap_or("?")
    )?;
    if let Some(text) = text_diff {
        write!(out, "{text}")?;
    } else if !content_note.is_empty() {
        writeln!(out, "{content_note}")?;
    }
    Ok(())
}
