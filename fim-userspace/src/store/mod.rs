//! The local store: SQLite (WAL) at `<state_dir>/fim.db` holding the baseline, changes with
//! their attribution, content versions and sensor health. One writer thread batches the
//! daemon's writes ([`StoreWriter`]); `fim sql` reads through [`ReadOnlyStore`].

mod baseline;
mod change;
mod content;
mod health;
mod heartbeat;
mod integrity;
mod retention;
mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags};

pub use baseline::{BaselineBatch, BaselineReader};
pub use change::{Actor, ChangeRecord, activity, local_hostname, previous_json};
pub use content::ContentRecord;
pub use health::HealthRecord;
pub use heartbeat::{DaemonState, HEARTBEAT_EVERY, HEARTBEAT_STALE_AFTER, Heartbeat};
pub use integrity::{BaselineKey, IntegrityReport, KEY_FILE, KeyOrigin};
pub use retention::{Pruned, Retention};
pub use schema::{CONFIGURATION_CHANGE_COLUMNS, SCHEMA_VERSION};
/// What the fleet outbox reads: rows after a cursor, in commit order, and health rows it adds.
pub(crate) mod outbox_rows {
    pub(crate) use super::change::after as changes_after;
    pub(crate) use super::health::{after as health_after, insert as insert_health};
}
pub use writer::{
    BatchSink, SqliteSink, StoreOp, StoreWriter, WriterCounters, WriterSettings, WriterStats,
};

use crate::baseline::{Baseline, BaselineEntry};

/// The database file name under the state directory.
pub const DATABASE_FILE: &str = "fim.db";
/// The `meta` row where the daemon says when its next scheduled scan is due (JSON:
/// `{"pid": N, "next_ns": N or null, "interval_s": N, "spread_s": N}`), for `fim status`.
pub const SCAN_SCHEDULE_KEY: &str = "scan_schedule";

/// How long a connection waits for another one's lock (the daemon's writer vs `fim scan`).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A read-write connection to the store.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    key: BaselineKey,
    key_origin: KeyOrigin,
    key_path: PathBuf,
}

/// A read-write connection with the baseline's signing functions (see [`integrity`]), and
/// whether its key was created by this open.
fn open_read_write(path: &Path) -> Result<Connection> {
    Ok(open_signed(path)?.0)
}

fn open_signed(path: &Path) -> Result<(Connection, BaselineKey, KeyOrigin, PathBuf)> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let (key, origin, key_path) = BaselineKey::load_or_create(dir)?;
    // SQLite creates the database with the umask's mode and gives its -wal and -shm files the
    // database's: create it 0600 first, and mend files an older fim left wider.
    crate::owner_only::create_or_restrict(path)?;
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        crate::owner_only::restrict_path(Path::new(&side))?;
    }
    let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    integrity::register(&conn, &key)?;
    // INSERT OR REPLACE deletes the row it replaces; the set's delete trigger must see that.
    conn.pragma_update(None, "recursive_triggers", true)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .context("switching the store to WAL mode")?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(anyhow!(
            "{} could not be put in WAL mode (journal_mode is {mode})",
            path.display()
        ));
    }
    // NORMAL is durable across application crashes in WAL mode; a power loss may lose the
    // last transactions, which the next start's rescan finds again.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok((conn, key, origin, key_path))
}

impl Store {
    /// Opens (creating if needed) `<state_dir>/fim.db`; the directory is created mode 0700
    /// because the store holds file contents and command lines.
    pub fn open(state_dir: &Path) -> Result<Store> {
        if !state_dir.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(state_dir)
                .with_context(|| format!("creating the state directory {}", state_dir.display()))?;
        } else if let Some(warning) = crate::owner_only::exposed_dir_warning(state_dir) {
            log::warn!("{warning}");
        }
        Store::open_path(&state_dir.join(DATABASE_FILE))
    }

    /// Opens (creating if needed) the database at exactly this path.
    pub fn open_path(path: &Path) -> Result<Store> {
        let (mut conn, key, mut key_origin, key_path) = open_signed(path)?;
        schema::migrate(&conn).with_context(|| format!("preparing {}", path.display()))?;
        if key_origin == KeyOrigin::Created && !integrity::signed(&conn)? {
            // A new store, or one from before rows were signed: its rows are signed now, by
            // the key just created (trust on first use). A store some key signed before is
            // left to [`Store::check_integrity`], which reports the missing key.
            let rows = integrity::sign_all(&mut conn, &key)?;
            if rows > 0 {
                log::info!(
                    "created {}; signed the {rows} existing baseline rows",
                    key_path.display()
                );
            }
            key_origin = KeyOrigin::Existing;
        }
        Ok(Store {
            conn,
            path: path.to_path_buf(),
            key,
            key_origin,
            key_path,
        })
    }

    /// Authenticates every baseline row and the set of rows (see [`integrity`]). Rows that
    /// fail are removed, so the scan that follows reports those files as found; the report
    /// is the alert. Run once at start, before the scan.
    pub fn check_integrity(&mut self) -> Result<IntegrityReport> {
        let report = integrity::check(&mut self.conn, &self.key, self.key_origin, &self.key_path)?;
        self.key_origin = KeyOrigin::Existing;
        Ok(report)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `wal` once open (checked by tests and `fim status`).
    pub fn journal_mode(&self) -> Result<String> {
        Ok(self
            .conn
            .query_row("PRAGMA journal_mode", [], |row| row.get(0))?)
    }

    pub fn load_baseline(&self) -> Result<Baseline> {
        baseline::load(&self.conn)
    }

    /// The stored baseline row of one path (primary-key lookup; what the realtime path
    /// compares a rehashed file with).
    pub fn baseline_entry(&self, path: &[u8]) -> Result<Option<BaselineEntry>> {
        baseline::get(&self.conn, path)
    }

    /// Writes one baseline row (insert or replace).
    pub fn upsert_baseline(&mut self, entry: &BaselineEntry) -> Result<()> {
        baseline::upsert(&self.conn, entry)
    }

    /// Deletes one baseline row (nothing if there is none).
    pub fn remove_baseline(&mut self, path: &[u8]) -> Result<()> {
        baseline::remove(&self.conn, path)
    }

    /// Whether no baseline row exists yet (the first scan only establishes one).
    pub fn baseline_is_empty(&self) -> Result<bool> {
        baseline::is_empty(&self.conn)
    }

    /// The number of baseline rows.
    pub fn baseline_len(&self) -> Result<u64> {
        baseline::count(&self.conn)
    }

    /// Sets a `meta` row the daemon keeps for `fim status` (see [`SCAN_SCHEDULE_KEY`]).
    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [key, value],
            )
            .with_context(|| format!("writing meta {key}"))?;
        Ok(())
    }

    /// A second connection that reads the baseline in path order, for a scan's walker.
    pub fn baseline_reader(&self) -> Result<BaselineReader> {
        BaselineReader::open(&self.path)
    }

    /// Batched baseline writes on this connection (one transaction per batch).
    pub fn baseline_batch(&mut self) -> BaselineBatch<'_> {
        BaselineBatch::new(&self.conn)
    }

    /// Replaces the stored baseline with this one, atomically.
    pub fn replace_baseline(&mut self, new: &Baseline) -> Result<()> {
        baseline::replace(&mut self.conn, new)
    }

    /// Writes these rows in one transaction (the CLI's path; the daemon uses the writer).
    pub fn write(&mut self, ops: &[StoreOp]) -> Result<()> {
        writer::write_ops(&mut self.conn, ops)
    }

    /// The newest changes of one path first.
    pub fn history(&self, path: &[u8], limit: usize) -> Result<Vec<ChangeRecord>> {
        change::history(&self.conn, path, limit)
    }

    /// A stored content version.
    pub fn content(&self, blake3: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        content::get(&self.conn, blake3)
    }

    /// Deletes rows beyond the retention limits.
    pub fn prune(&mut self, retention: Retention) -> Result<Pruned> {
        retention::prune(&mut self.conn, retention)
    }

    /// Starts the batching writer on its own connection to this database.
    pub fn spawn_writer(&self, settings: WriterSettings) -> Result<StoreWriter> {
        StoreWriter::spawn(SqliteSink::new(open_read_write(&self.path)?), settings)
    }

    /// Read-only access to the database at `path` (for `fim sql`).
    pub fn open_read_only(path: &Path) -> Result<ReadOnlyStore> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("opening {} read-only", path.display()))?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Belt and braces: even a writable handle (e.g. through ATTACH) refuses writes.
        conn.pragma_update(None, "query_only", true)?;
        Ok(ReadOnlyStore { conn })
    }
}

/// The result of a read-only query.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
}

/// A connection that can only read (SQLITE_OPEN_READ_ONLY and `PRAGMA query_only`).
pub struct ReadOnlyStore {
    conn: Connection,
}

impl ReadOnlyStore {
    /// Change rows matching `condition` (SQL over the `changes` columns, `?1`... bound to
    /// `params`), newest first, with their ids.
    pub fn changes(
        &self,
        condition: &str,
        params: &[&dyn rusqlite::ToSql],
        limit: usize,
    ) -> Result<Vec<(i64, ChangeRecord)>> {
        change::select(&self.conn, condition, params, limit)
    }

    /// A stored content version.
    pub fn content(&self, blake3: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        content::get(&self.conn, blake3)
    }

    /// The baseline paths of one inode (`dev` as `st_dev` gives it), in path order.
    pub fn paths_of_inode(&self, dev: u64, inode: u64) -> Result<Vec<Vec<u8>>> {
        baseline::paths_of_inode(&self.conn, dev, inode)
    }

    /// The daemon's heartbeat, if one was ever written.
    pub fn heartbeat(&self) -> Result<Option<Heartbeat>> {
        heartbeat::read(&self.conn)
    }

    /// The connection, for the query commands' own read-only statements.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Runs one SQL statement and returns all its rows.
    pub fn query(&self, sql: &str) -> Result<QueryResult> {
        let explain = |e: rusqlite::Error| -> anyhow::Error {
            let read_only = matches!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::ReadOnly))
                || e.to_string().contains("readonly");
            if read_only {
                anyhow!("the store is opened read-only: only queries are allowed ({e})")
            } else {
                anyhow!(e).context("running the query")
            }
        };
        let mut stmt = self.conn.prepare(sql).map_err(explain)?;
        // SQLite's own verdict: anything that could write (or change how the connection
        // writes, like PRAGMA writable_schema) is refused before it runs.
        let setting_pragma =
            sql.trim_start().to_ascii_lowercase().starts_with("pragma") && sql.contains('=');
        if !stmt.readonly() || setting_pragma {
            return Err(anyhow!(
                "the store is opened read-only: only queries are allowed (this statement writes)"
            ));
        }
        let columns: Vec<String> = stmt.column_names().iter().map(|c| c.to_string()).collect();
        let count = columns.len();
        let mut rows = stmt.query([]).map_err(explain)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(explain)? {
            let mut values = Vec::with_capacity(count);
            for i in 0..count {
                values.push(row.get::<_, Value>(i).map_err(explain)?);
            }
            out.push(values);
        }
        Ok(QueryResult { columns, rows: out })
    }
}
