//! The store as the fleet outbox: rows after the published cursor, in commit order, and the
//! cursor itself (advanced only when the stream acknowledged a row). Kept in the store's own
//! database (table `fleet_outbox`), so a restart resumes where the last acknowledgement left
//! it and the rows and their cursor are one backup.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::json;

use super::subjects::RowKind;
use crate::store::outbox_rows::{changes_after, health_after, insert_health};
use crate::store::{ChangeRecord, DATABASE_FILE, HealthRecord};

/// Paths listed at most in a gap's resync record (the rest are counted).
pub const GAP_PATHS: usize = 1000;

const TABLE: &str = "CREATE TABLE IF NOT EXISTS fleet_outbox (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
) WITHOUT ROWID;";

/// One row to publish.
#[derive(Debug, Clone)]
pub enum Row {
    Change(i64, Box<ChangeRecord>),
    Health(i64, HealthRecord),
}

impl Row {
    pub fn id(&self) -> i64 {
        match self {
            Row::Change(id, _) | Row::Health(id, _) => *id,
        }
    }
}

/// A run of rows that will never be published (pruned by retention before they were, or
/// skipped because the backlog passed `max_backlog`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub kind: RowKind,
    pub first: i64,
    pub last: i64,
    pub why: &'static str,
}

pub struct Outbox {
    conn: Connection,
    store_id: String,
}

fn key(kind: RowKind, what: &str) -> String {
    format!("{}.{what}", kind.name())
}

impl Outbox {
    /// Opens `<state_dir>/fim.db` (the daemon has created it) for the outbox.
    pub fn open(state_dir: &Path) -> Result<Outbox> {
        let path = state_dir.join(DATABASE_FILE);
        let conn = Connection::open(&path)
            .with_context(|| format!("opening {} for the fleet outbox", path.display()))?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.execute_batch(TABLE)
            .context("creating the fleet_outbox table")?;
        let store_id = match get(&conn, "store_id")? {
            Some(id) => id,
            None => {
                let id = random_id()?;
                conn.execute(
                    "INSERT OR IGNORE INTO fleet_outbox (key, value) VALUES ('store_id', ?1)",
                    params![id],
                )?;
                get(&conn, "store_id")?.context("reading the store id back")?
            }
        };
        Ok(Outbox { conn, store_id })
    }

    /// This store's identity: row ids are unique within it (a new store starts again at 1).
    pub fn store_id(&self) -> &str {
        &self.store_id
    }

    /// The last row of `kind` the stream acknowledged (0: none yet).
    pub fn cursor(&self, kind: RowKind) -> Result<i64> {
        Ok(get(&self.conn, &key(kind, "cursor"))?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    pub fn save_cursor(&self, kind: RowKind, id: i64) -> Result<()> {
        set(&self.conn, &key(kind, "cursor"), &id.to_string())
    }

    /// Set when a publish failed with later rows possibly acknowledged: the stream may then
    /// hold a row after one it lacks, so a restart must not skip to the stream's last row.
    pub fn uncertain(&self) -> Result<bool> {
        Ok(get(&self.conn, "uncertain")?.is_some_and(|v| v == "1"))
    }

    pub fn set_uncertain(&self, uncertain: bool) -> Result<()> {
        set(&self.conn, "uncertain", if uncertain { "1" } else { "0" })
    }

    /// Rows skipped so far (gaps), for heartbeats and `fim status --fleet`.
    pub fn gaps(&self) -> Result<u64> {
        Ok(get(&self.conn, "gaps")?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// Rows not yet acknowledged, by the saved cursors.
    pub fn backlog(&self) -> Result<u64> {
        let mut total = 0;
        for kind in [RowKind::Change, RowKind::Health] {
            total += (self.last_id(kind)? - self.cursor(kind)?).max(0) as u64;
        }
        Ok(total)
    }

    /// The highest row id of `kind` in the store (0 when empty).
    pub fn last_id(&self, kind: RowKind) -> Result<i64> {
        let table = table(kind);
        Ok(self.conn.query_row(
            &format!("SELECT coalesce(max(id), 0) FROM {table}"),
            [],
            |r| r.get(0),
        )?)
    }

    /// Up to `limit` rows of `kind` after `after`, in id order.
    pub fn rows(&self, kind: RowKind, after: i64, limit: usize) -> Result<Vec<Row>> {
        Ok(match kind {
            RowKind::Change => changes_after(&self.conn, after, limit)?
                .into_iter()
                .map(|(id, c)| Row::Change(id, Box::new(c)))
                .collect(),
            RowKind::Health => health_after(&self.conn, after, limit)?
                .into_iter()
                .map(|(id, h)| Row::Health(id, h))
                .collect(),
        })
    }

    /// The gap, if any, right after `cursor`: rows the store no longer holds (pruned before
    /// they were published), or the oldest rows beyond `max_backlog` unpublished ones.
    pub fn gap_after(&self, kind: RowKind, cursor: i64, max_backlog: u64) -> Result<Option<Gap>> {
        let table = table(kind);
        let next: Option<i64> = self
            .conn
            .query_row(
                &format!("SELECT min(id) FROM {table} WHERE id > ?1"),
                params![cursor],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        let Some(next) = next else {
            return Ok(None);
        };
        if next > cursor + 1 {
            return Ok(Some(Gap {
                kind,
                first: cursor + 1,
                last: next - 1,
                why: "pruned from the store (retention) before they were published",
            }));
        }
        let last = self.last_id(kind)?;
        let backlog = (last - cursor).max(0) as u64;
        if kind == RowKind::Change && backlog > max_backlog {
            return Ok(Some(Gap {
                kind,
                first: cursor + 1,
                last: last - max_backlog as i64,
                why: "beyond the outbox's max_backlog while the brokers were unreachable",
            }));
        }
        Ok(None)
    }

    /// Records a gap as health rows in the store (so it is published in order, like every
    /// other row, and visible locally) and moves the cursor past it, in one transaction:
    /// a `fleet_gap` row with the id range, and a `fleet_resync` row with the current state
    /// (latest change) of each path the skipped changes touched: what a central view needs
    /// to be right again.
    pub fn record_gap(&mut self, gap: &Gap, now_ns: i64) -> Result<()> {
        let tx = self.conn.transaction()?;
        let count = (gap.last - gap.first + 1).max(0) as u64;
        let (resync, paths_total) = if gap.kind == RowKind::Change {
            resync(&tx, gap.first, gap.last)?
        } else {
            (serde_json::Value::Null, 0)
        };
        insert_health(
            &tx,
            &HealthRecord {
                time_ns: now_ns,
                kind: "fleet_gap".into(),
                backend: None,
                detail: Some(
                    json!({
                        "rows": gap.kind.name(),
                        "first_id": gap.first,
                        "last_id": gap.last,
                        "count": count,
                        "why": gap.why,
                    })
                    .to_string(),
                ),
                lost_events: count,
            },
        )?;
        if gap.kind == RowKind::Change {
            insert_health(
                &tx,
                &HealthRecord {
                    time_ns: now_ns,
                    kind: "fleet_resync".into(),
                    backend: None,
                    detail: Some(
                        json!({
                            "first_id": gap.first,
                            "last_id": gap.last,
                            "paths_total": paths_total,
                            "paths": resync,
                        })
                        .to_string(),
                    ),
                    lost_events: 0,
                },
            )?;
        }
        set(&tx, &key(gap.kind, "cursor"), &gap.last.to_string())?;
        let gaps = get(&tx, "gaps")?
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        set(&tx, "gaps", &(gaps + count).to_string())?;
        tx.commit().context("recording a fleet gap")?;
        Ok(())
    }

    /// Kernel events lost so far (the store's loss rows) and the backend of the last start.
    pub fn health_summary(&self) -> Result<(u64, Option<String>)> {
        let lost: i64 = self.conn.query_row(
            "SELECT coalesce(sum(lost_events), 0) FROM health WHERE kind = 'loss'",
            [],
            |r| r.get(0),
        )?;
        let backend: Option<String> = self
            .conn
            .query_row(
                "SELECT backend FROM health WHERE kind = 'start' ORDER BY id DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        Ok((lost.max(0) as u64, backend))
    }
}

fn table(kind: RowKind) -> &'static str {
    match kind {
        RowKind::Change => "changes",
        RowKind::Health => "health",
    }
}

/// The latest change of each path in the id range (at most [`GAP_PATHS`]) and how many
/// distinct paths there were.
fn resync(conn: &Connection, first: i64, last: i64) -> Result<(serde_json::Value, u64)> {
    let total: i64 = conn.query_row(
        "SELECT count(DISTINCT path) FROM changes WHERE id BETWEEN ?1 AND ?2",
        params![first, last],
        |r| r.get(0),
    )?;
    let mut stmt = conn.prepare(
        "SELECT path, activity, hash_after, size, time FROM changes WHERE id IN (
             SELECT max(id) FROM changes WHERE id BETWEEN ?1 AND ?2 GROUP BY path
             ORDER BY max(id) DESC LIMIT ?3)",
    )?;
    let rows = stmt.query_map(params![first, last, GAP_PATHS as i64], |r| {
        let path: Vec<u8> = r.get(0)?;
        Ok(json!({
            "path": crate::baseline::display_path(&path),
            "activity": r.get::<_, i64>(1)?,
            "hash": r.get::<_, Option<String>>(2)?,
            "size": r.get::<_, Option<i64>>(3)?,
            "time_ns": r.get::<_, i64>(4)?,
        }))
    })?;
    let paths = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    Ok((serde_json::Value::Array(paths), total.max(0) as u64))
}

fn get(conn: &Connection, key: &str) -> Result<Option<String>> {
    Ok(conn
        .query_row(
            "SELECT value FROM fleet_outbox WHERE key = ?1",
            params![key],
            |r| r.get(0),
        )
        .optional()?)
}

fn set(conn: &Connection, key: &str, value: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO fleet_outbox (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )
    .with_context(|| format!("saving fleet_outbox.{key}"))?;
    Ok(())
}

/// 16 random bytes as hex (getrandom(2)).
pub fn random_id() -> Result<String> {
    let mut bytes = [0u8; 16];
    // SAFETY: the buffer and its length are valid.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        anyhow::bail!("getrandom failed: {}", std::io::Error::last_os_error());
    }
    Ok(crate::baseline::hex(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, StoreOp, activity};

    /// A store holding `n` changes (ids 1..=n) spread over `paths` paths, as its outbox.
    fn outbox_with_changes(dir: &Path, n: u64, paths: u64) -> Outbox {
        let mut store = Store::open(dir).unwrap();
        let ops: Vec<StoreOp> = (0..n)
            .map(|i| {
                StoreOp::Change(ChangeRecord {
                    time_ns: 1_000 + i as i64,
                    activity: activity::UPDATE,
                    path: format!("/etc/f{}", i % paths).into_bytes(),
                    hash_after: Some(format!("h{i}")),
                    size: Some(i),
                    ..ChangeRecord::default()
                })
            })
            .collect();
        store.write(&ops).unwrap();
        Outbox::open(dir).unwrap()
    }

    fn health(outbox: &Outbox) -> Vec<HealthRecord> {
        outbox
            .rows(RowKind::Health, 0, 100)
            .unwrap()
            .into_iter()
            .map(|row| match row {
                Row::Health(_, h) => h,
                Row::Change(..) => unreachable!("health rows asked for"),
            })
            .collect()
    }

    fn detail(row: &HealthRecord) -> serde_json::Value {
        serde_json::from_str(row.detail.as_deref().unwrap()).unwrap()
    }

    /// Past `max_backlog` unpublished changes the oldest are skipped, never silently: a
    /// `fleet_gap` row names the range and a `fleet_resync` row carries the latest state of
    /// every path the skipped changes touched; the newest `max_backlog` are still published.
    #[test]
    fn a_backlog_past_its_bound_becomes_a_gap_row_and_a_resync_row() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = outbox_with_changes(dir.path(), 25, 10);
        assert_eq!(outbox.gap_after(RowKind::Change, 0, 25).unwrap(), None);
        // Health rows are few and never skipped for the bound.
        assert_eq!(outbox.gap_after(RowKind::Health, 0, 0).unwrap(), None);
        let gap = outbox.gap_after(RowKind::Change, 0, 5).unwrap().unwrap();
        assert_eq!((gap.kind, gap.first, gap.last), (RowKind::Change, 1, 20));
        assert!(gap.why.contains("max_backlog"), "{}", gap.why);

        outbox.record_gap(&gap, 99).unwrap();
        assert_eq!(outbox.cursor(RowKind::Change).unwrap(), 20);
        assert_eq!(outbox.gaps().unwrap(), 20);
        assert_eq!(outbox.gap_after(RowKind::Change, 20, 5).unwrap(), None);
        let next: Vec<i64> = outbox
            .rows(RowKind::Change, 20, 100)
            .unwrap()
            .iter()
            .map(Row::id)
            .collect();
        assert_eq!(next, [21, 22, 23, 24, 25], "the newest max_backlog go out");

        let rows = health(&outbox);
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(rows[0].kind, "fleet_gap");
        assert_eq!(rows[0].lost_events, 20);
        let gap_detail = detail(&rows[0]);
        assert_eq!(
            (
                &gap_detail["rows"],
                &gap_detail["first_id"],
                &gap_detail["last_id"],
                &gap_detail["count"]
            ),
            (&json!("change"), &json!(1), &json!(20), &json!(20))
        );
        assert_eq!(rows[1].kind, "fleet_resync");
        let resync = detail(&rows[1]);
        assert_eq!(resync["paths_total"], 10);
        let mut paths: Vec<(String, String, i64)> = resync["paths"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["path"].as_str().unwrap().to_string(),
                    p["hash"].as_str().unwrap().to_string(),
                    p["size"].as_i64().unwrap(),
                )
            })
            .collect();
        paths.sort();
        // Path f<k> was changed by rows k+1 and k+11 in the gap: the later one is its state.
        let expected: Vec<(String, String, i64)> = (0..10)
            .map(|k| (format!("/etc/f{k}"), format!("h{}", k + 10), k + 10))
            .collect();
        assert_eq!(paths, expected);
    }

    /// The resync row lists at most `GAP_PATHS` paths and counts the rest.
    #[test]
    fn a_resync_row_is_bounded_and_counts_what_it_leaves_out() {
        let dir = tempfile::tempdir().unwrap();
        let n = GAP_PATHS as u64 + 50;
        let mut outbox = outbox_with_changes(dir.path(), n, n);
        let gap = outbox.gap_after(RowKind::Change, 0, 10).unwrap().unwrap();
        outbox.record_gap(&gap, 1).unwrap();
        let resync = detail(&health(&outbox)[1]);
        assert_eq!(resync["paths_total"], n - 10);
        assert_eq!(resync["paths"].as_array().unwrap().len(), GAP_PATHS);
    }

    /// Rows retention pruned before they were published are a gap too, with its reason.
    #[test]
    fn rows_pruned_before_publishing_are_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = outbox_with_changes(dir.path(), 10, 3);
        outbox
            .conn
            .execute("DELETE FROM changes WHERE id <= 4", [])
            .unwrap();
        let gap = outbox
            .gap_after(RowKind::Change, 0, 1_000)
            .unwrap()
            .unwrap();
        assert_eq!((gap.first, gap.last), (1, 4));
        assert!(gap.why.contains("pruned"), "{}", gap.why);
        outbox.record_gap(&gap, 1).unwrap();
        assert_eq!(outbox.cursor(RowKind::Change).unwrap(), 4);
        assert_eq!(outbox.gap_after(RowKind::Change, 4, 1_000).unwrap(), None);
        let rows = health(&outbox);
        assert_eq!(detail(&rows[0])["count"], 4);
        // Nothing of the pruned rows is left to resync.
        assert_eq!(detail(&rows[1])["paths_total"], 0);
    }
}
