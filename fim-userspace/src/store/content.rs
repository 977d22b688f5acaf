//! Content versions of files under `upload_content` rules: zstd-compressed, stored once per
//! BLAKE3 (a file flipping between two versions costs two rows, not one per change).

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, OptionalExtension, params};

use crate::baseline::hex;

/// Compression level: a good ratio for config files at little CPU.
const ZSTD_LEVEL: i32 = 9;

/// One content version to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentRecord {
    pub blake3: [u8; 32],
    pub content: Vec<u8>,
    pub stored_at_ns: i64,
}

pub(crate) fn insert(conn: &Connection, record: &ContentRecord) -> Result<()> {
    let key = hex(&record.blake3);
    let known: bool = conn
        .prepare_cached("SELECT 1 FROM content_versions WHERE blake3 = ?1")?
        .exists(params![key])?;
    if known {
        return Ok(());
    }
    let compressed =
        zstd::bulk::compress(&record.content, ZSTD_LEVEL).context("compressing content")?;
    conn.prepare_cached(
        "INSERT OR IGNORE INTO content_versions (blake3, size, zstd, stored_at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![key, record.content.len() as i64, compressed, record.stored_at_ns])
    .context("inserting a content version")?;
    Ok(())
}

/// The content with this hash, if stored (checked against the hash on the way out).
pub(crate) fn get(conn: &Connection, blake3: &[u8; 32]) -> Result<Option<Vec<u8>>> {
    let row: Option<(i64, Vec<u8>)> = conn
        .prepare_cached("SELECT size, zstd FROM content_versions WHERE blake3 = ?1")?
        .query_row(params![hex(blake3)], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let Some((size, compressed)) = row else {
        return Ok(None);
    };
    let content = zstd::bulk::decompress(&compressed, size.max(0) as usize)
        .context("decompressing a content version")?;
    if blake3::hash(&content).as_bytes() != blake3 {
        bail!("content version {} is corrupt (hash mismatch)", hex(blake3));
    }
    Ok(Some(content))
}
