//! The `baseline` table: one row per watched path.

use std::ops::Bound;
use std::path::Path;

use anyhow::{Context, Result};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::change::{self, ChangeRecord};
use super::content::{self, ContentRecord};
use crate::baseline::{Baseline, BaselineEntry, EntryFlags, FileKind, hex, parse_hex32};

/// The columns every row is signed over, in `fim_mac`'s order (store/integrity.rs).
pub(crate) const COLUMNS: &str = "path, inode, dev, type, size, mode, uid, gid, mtime, ctime, blake3, \
     xattr_digest, link_target, flags, errno, scanned_at";

pub(crate) fn upsert(conn: &Connection, e: &BaselineEntry) -> Result<()> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO baseline (path, inode, dev, type, size, mode, uid, gid, mtime,
             ctime, blake3, xattr_digest, link_target, flags, errno, scanned_at, mac)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                 fim_mac(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16))",
    )?
    .execute(params![
        e.path,
        // SQLite integers are signed 64-bit; inode and dev round-trip through the cast.
        e.inode as i64,
        e.dev as i64,
        e.kind.name(),
        e.size as i64,
        e.mode,
        e.uid,
        e.gid,
        e.mtime_ns,
        e.ctime_ns,
        e.blake3.map(|h| hex(&h)),
        e.xattr_digest.map(|h| hex(&h)),
        e.link_target,
        e.flags.0,
        e.errno,
        e.scanned_at_ns,
    ])
    .context("writing a baseline row")?;
    Ok(())
}

pub(crate) fn remove(conn: &Connection, path: &[u8]) -> Result<()> {
    conn.prepare_cached("DELETE FROM baseline WHERE path = ?1")?
        .execute(params![path])
        .context("removing a baseline row")?;
    Ok(())
}

/// Moves the rows below directory `from` to below `to` (`to` empty: removes them). Paths are
/// BLOBs and compared as bytes: everything below `from/` sorts in [`from/`, `from0`).
pub(crate) fn move_below(conn: &Connection, from: &[u8], to: &[u8]) -> Result<()> {
    let mut lower = from.to_vec();
    lower.push(b'/');
    let mut upper = from.to_vec();
    upper.push(b'0');
    if to.is_empty() {
        conn.prepare_cached("DELETE FROM baseline WHERE path >= ?1 AND path < ?2")?
            .execute(params![lower, upper])
            .context("removing baseline rows below a directory")?;
        return Ok(());
    }
    // `||` yields TEXT; the CAST gives the same bytes back as a BLOB, like every other path.
    // The path is signed with the rest of the row: the moved rows are signed anew.
    conn.prepare_cached(
        "UPDATE OR REPLACE baseline SET path = CAST(?1 || substr(path, ?2) AS BLOB),
             mac = fim_mac(CAST(?1 || substr(path, ?2) AS BLOB), inode, dev, type, size, mode,
                 uid, gid, mtime, ctime, blake3, xattr_digest, link_target, flags, errno,
                 scanned_at)
         WHERE path >= ?3 AND path < ?4",
    )?
    .execute(params![to, from.len() as i64 + 1, lower, upper])
    .context("moving baseline rows below a renamed directory")?;
    Ok(())
}

/// Replaces the whole table in one transaction (readers see the old or the new baseline).
pub(crate) fn replace(conn: &mut Connection, baseline: &Baseline) -> Result<()> {
    let tx = conn
        .transaction()
        .context("starting the baseline transaction")?;
    tx.execute("DELETE FROM baseline", [])
        .context("clearing the baseline")?;
    for entry in baseline.entries() {
        upsert(&tx, entry)?;
    }
    tx.commit().context("committing the baseline")?;
    Ok(())
}

/// One row; `None` for a type this fim cannot interpret. Such a row is skipped: the next
/// scan reports the path as added, which is visible, rather than failing every later scan.
fn entry_of(row: &Row<'_>) -> rusqlite::Result<Option<BaselineEntry>> {
    let kind: String = row.get(3)?;
    let Some(kind) = FileKind::parse(&kind) else {
        log::warn!("baseline row with unknown type {kind:?} ignored");
        return Ok(None);
    };
    let blake3: Option<String> = row.get(10)?;
    let xattr: Option<String> = row.get(11)?;
    Ok(Some(BaselineEntry {
        path: row.get(0)?,
        kind,
        // SQLite integers are signed 64-bit; inode and dev round-trip through the cast.
        inode: row.get::<_, i64>(1)? as u64,
        dev: row.get::<_, i64>(2)? as u64,
        size: row.get::<_, i64>(4)? as u64,
        mode: row.get(5)?,
        uid: row.get(6)?,
        gid: row.get(7)?,
        mtime_ns: row.get(8)?,
        ctime_ns: row.get(9)?,
        blake3: blake3.as_deref().and_then(parse_hex32),
        xattr_digest: xattr.as_deref().and_then(parse_hex32),
        link_target: row.get(12)?,
        flags: EntryFlags(row.get(13)?),
        errno: row.get(14)?,
        scanned_at_ns: row.get(15)?,
        nlink: 0,
    }))
}

pub(crate) fn load(conn: &Connection) -> Result<Baseline> {
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM baseline"))?;
    let rows = stmt.query_map([], entry_of)?;
    let mut baseline = Baseline::new();
    for row in rows {
        if let Some(entry) = row.context("reading the baseline")? {
            baseline.insert(entry);
        }
    }
    Ok(baseline)
}

/// The stored row of one path (a primary-key lookup).
pub(crate) fn get(conn: &Connection, path: &[u8]) -> Result<Option<BaselineEntry>> {
    Ok(conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM baseline WHERE path = ?1"))?
        .query_row(params![path], entry_of)
        .optional()
        .context("looking up a baseline row")?
        .flatten())
}

/// The paths whose rows name inode `inode` of device `dev` (`st_dev`): the watched names of
/// one object, in path order (index `baseline_by_inode`). Placeholder rows carry no inode.
pub(crate) fn paths_of_inode(conn: &Connection, dev: u64, inode: u64) -> Result<Vec<Vec<u8>>> {
    let mut stmt = conn.prepare_cached(
        "SELECT path FROM baseline WHERE dev = ?1 AND inode = ?2 ORDER BY path LIMIT 64",
    )?;
    let rows = stmt.query_map(params![dev as i64, inode as i64], |row| row.get(0))?;
    rows.collect::<rusqlite::Result<Vec<Vec<u8>>>>()
        .context("looking up baseline rows by inode")
}

pub(crate) fn is_empty(conn: &Connection) -> Result<bool> {
    let any: bool = conn
        .query_row("SELECT EXISTS (SELECT 1 FROM baseline)", [], |row| {
            row.get(0)
        })
        .context("checking for a baseline")?;
    Ok(!any)
}

pub(crate) fn count(conn: &Connection) -> Result<u64> {
    let n: i64 = conn
        .query_row("SELECT count(*) FROM baseline", [], |row| row.get(0))
        .context("counting baseline rows")?;
    Ok(n as u64)
}

/// Up to `limit` rows in path order within the bounds, and the path to continue after
/// (`None` once the range is exhausted). Paths are BLOBs, compared like `memcmp`, the same
/// order as `Vec<u8>`.
pub(crate) fn page(
    conn: &Connection,
    lower: Bound<&[u8]>,
    upper: Option<&[u8]>,
    limit: usize,
) -> Result<(Vec<BaselineEntry>, Option<Vec<u8>>)> {
    let (op, low) = match lower {
        Bound::Included(low) => (">=", low),
        Bound::Excluded(low) => (">", low),
        Bound::Unbounded => (">=", &[][..]),
    };
    let sql = match upper {
        Some(_) => format!(
            "SELECT {COLUMNS} FROM baseline WHERE path {op} ?1 AND path < ?3 ORDER BY path LIMIT ?2"
        ),
        None => format!("SELECT {COLUMNS} FROM baseline WHERE path {op} ?1 ORDER BY path LIMIT ?2"),
    };
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = match upper {
        Some(up) => stmt.query(params![low, limit as i64, up])?,
        None => stmt.query(params![low, limit as i64])?,
    };
    let mut entries = Vec::with_capacity(limit);
    let mut read = 0;
    let mut last = None;
    while let Some(row) = rows.next().context("reading baseline rows")? {
        read += 1;
        if read == limit {
            last = Some(row.get::<_, Vec<u8>>(0)?);
        }
        if let Some(entry) = entry_of(row)? {
            entries.push(entry);
        }
    }
    Ok((entries, last))
}

/// The baseline read in path order on a connection of its own (the scan's walker thread),
/// while the scan writes through the store's connection.
pub struct BaselineReader {
    conn: Connection,
}

impl BaselineReader {
    pub(crate) fn open(path: &Path) -> Result<BaselineReader> {
        Ok(BaselineReader {
            conn: super::open_read_write(path)?,
        })
    }

    pub fn page(
        &mut self,
        lower: Bound<&[u8]>,
        upper: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<BaselineEntry>, Option<Vec<u8>>)> {
        page(&self.conn, lower, upper, limit)
    }
}

/// Writes of one scan, committed every [`BaselineBatch::ROWS`] rows: each baseline row and
/// the change that explains it are in the same transaction, so a crash can repeat a change
/// report but never lose one.
pub struct BaselineBatch<'c> {
    conn: &'c Connection,
    open: bool,
    rows: usize,
}

impl<'c> BaselineBatch<'c> {
    pub const ROWS: usize = 4096;

    pub(crate) fn new(conn: &'c Connection) -> BaselineBatch<'c> {
        BaselineBatch {
            conn,
            open: false,
            rows: 0,
        }
    }

    fn begin(&mut self) -> Result<()> {
        if !self.open {
            self.conn
                .execute_batch("BEGIN IMMEDIATE")
                .context("starting a baseline batch")?;
            self.open = true;
        }
        self.rows += 1;
        Ok(())
    }

    pub fn upsert(&mut self, entry: &BaselineEntry) -> Result<()> {
        self.begin()?;
        upsert(self.conn, entry)
    }

    pub fn remove(&mut self, path: &[u8]) -> Result<()> {
        self.begin()?;
        remove(self.conn, path)
    }

    pub fn change(&mut self, record: &ChangeRecord) -> Result<()> {
        self.begin()?;
        change::insert(self.conn, record)
    }

    pub fn content(&mut self, record: &ContentRecord) -> Result<()> {
        self.begin()?;
        content::insert(self.conn, record)
    }

    /// Commits when the batch is full; call after each path's writes.
    pub fn maybe_commit(&mut self) -> Result<()> {
        if self.rows >= Self::ROWS {
            self.commit()?;
        }
        Ok(())
    }

    pub fn commit(&mut self) -> Result<()> {
        if self.open {
            self.conn
                .execute_batch("COMMIT")
                .context("committing a baseline batch")?;
            self.open = false;
        }
        self.rows = 0;
        Ok(())
    }
}

impl Drop for BaselineBatch<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}
