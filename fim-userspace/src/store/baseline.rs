//! The `baseline` table: one row per watched path.

use anyhow::{Context, Result};
use rusqlite::{Connection, params};

use crate::baseline::{Baseline, BaselineEntry, EntryFlags, FileKind, hex, parse_hex32};

pub(crate) fn upsert(conn: &Connection, e: &BaselineEntry) -> Result<()> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO baseline (path, inode, dev, type, size, mode, uid, gid, mtime,
             ctime, blake3, xattr_digest, link_target, flags, errno, scanned_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
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

pub(crate) fn load(conn: &Connection) -> Result<Baseline> {
    let mut stmt = conn.prepare(
        "SELECT path, inode, dev, type, size, mode, uid, gid, mtime, ctime, blake3,
             xattr_digest, link_target, flags, errno, scanned_at FROM baseline",
    )?;
    let rows = stmt.query_map([], |row| {
        let kind: String = row.get(3)?;
        let blake3: Option<String> = row.get(10)?;
        let xattr: Option<String> = row.get(11)?;
        Ok((
            kind,
            blake3,
            xattr,
            BaselineEntry {
                path: row.get(0)?,
                kind: FileKind::File,
                inode: row.get::<_, i64>(1)? as u64,
                dev: row.get::<_, i64>(2)? as u64,
                size: row.get::<_, i64>(4)? as u64,
                mode: row.get(5)?,
                uid: row.get(6)?,
                gid: row.get(7)?,
                mtime_ns: row.get(8)?,
                ctime_ns: row.get(9)?,
                blake3: None,
                xattr_digest: None,
                link_target: row.get(12)?,
                flags: EntryFlags(row.get(13)?),
                errno: row.get(14)?,
                scanned_at_ns: row.get(15)?,
            },
        ))
    })?;
    let mut baseline = Baseline::new();
    for row in rows {
        let (kind, blake3, xattr, mut entry) = row.context("reading the baseline")?;
        // A row this fim cannot interpret is skipped: the next scan reports it as added,
        // which is visible, rather than failing every later scan.
        let Some(kind) = FileKind::parse(&kind) else {
            log::warn!("baseline row with unknown type {kind:?} ignored");
            continue;
        };
        entry.kind = kind;
        entry.blake3 = blake3.as_deref().and_then(parse_hex32);
        entry.xattr_digest = xattr.as_deref().and_then(parse_hex32);
        baseline.insert(entry);
    }
    Ok(baseline)
}
