//! The store's tables, indexes and the `ConfigurationChange` view.
//!
//! Conventions: times are nanoseconds since the Unix epoch (INTEGER); paths are BLOBs (raw
//! bytes, they need not be UTF-8); hashes are lower-case hex TEXT (readable in `fim sql`);
//! JSON columns are TEXT holding JSON.

use anyhow::{Context, Result, bail};
use rusqlite::Connection;

/// Bumped when the schema changes; stored in `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 5;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS baseline (
    path          BLOB PRIMARY KEY,
    inode         INTEGER NOT NULL,
    dev           INTEGER NOT NULL,
    type          TEXT NOT NULL,
    size          INTEGER NOT NULL,
    mode          INTEGER NOT NULL,
    uid           INTEGER NOT NULL,
    gid           INTEGER NOT NULL,
    mtime         INTEGER NOT NULL,
    ctime         INTEGER NOT NULL,
    blake3        TEXT,
    xattr_digest  TEXT,
    link_target   BLOB,
    flags         INTEGER NOT NULL DEFAULT 0,
    errno         INTEGER,
    scanned_at    INTEGER NOT NULL,
    -- keyed BLAKE3 over the columns above (store/integrity.rs); added in version 3
    mac           BLOB
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS changes (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    time              INTEGER NOT NULL,
    host              TEXT NOT NULL,
    activity          INTEGER NOT NULL,
    path              BLOB NOT NULL,
    new_path          BLOB,
    rule              TEXT,
    grp               TEXT,
    backend           TEXT NOT NULL,
    changed           TEXT NOT NULL DEFAULT '[]',
    previous          TEXT,
    hash_before       TEXT,
    hash_after        TEXT,
    size              INTEGER,
    authorized        INTEGER NOT NULL DEFAULT 0,
    truncated_path    INTEGER NOT NULL DEFAULT 0,
    pid               INTEGER,
    ppid              INTEGER,
    exe               BLOB,
    cmdline           BLOB,
    uid               INTEGER,
    user              TEXT,
    login_uid         INTEGER,
    login_user        TEXT,
    container_id      TEXT,
    comm              TEXT,
    process_start     INTEGER,
    -- the name the change was made through, when not `path` (version 4)
    used_path         BLOB
);
CREATE INDEX IF NOT EXISTS changes_by_path_time ON changes (path, time DESC);
CREATE INDEX IF NOT EXISTS changes_by_time ON changes (time);
-- Version 2: `fim who` follows renames backwards (which rename produced this name?).
CREATE INDEX IF NOT EXISTS changes_by_new_path ON changes (new_path, time DESC)
    WHERE new_path IS NOT NULL;

-- Version 4: the watched names of an inode (a change made through another name of it).
CREATE INDEX IF NOT EXISTS baseline_by_inode ON baseline (dev, inode);

CREATE TABLE IF NOT EXISTS content_versions (
    blake3      TEXT PRIMARY KEY,
    size        INTEGER NOT NULL,
    zstd        BLOB NOT NULL,
    stored_at   INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS health (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    time          INTEGER NOT NULL,
    kind          TEXT NOT NULL,
    backend       TEXT,
    detail        TEXT,
    lost_events   INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS health_by_time ON health (time);

-- Azure Change Tracking's ConfigurationChange columns, so its hunting queries carry over.
-- ChangeCategory maps OCSF activity ids: 1 Added, 4 Removed, 5 Renamed, others Modified.
CREATE VIEW IF NOT EXISTS ConfigurationChange AS
SELECT
    strftime('%Y-%m-%dT%H:%M:%fZ', c.time / 1000000000.0, 'unixepoch') AS TimeGenerated,
    c.host AS Computer,
    'Files' AS ConfigChangeType,
    CASE c.activity
        WHEN 1 THEN 'Added'
        WHEN 4 THEN 'Removed'
        WHEN 5 THEN 'Renamed'
        ELSE 'Modified'
    END AS ChangeCategory,
    CAST(c.path AS TEXT) AS FileSystemPath,
    CAST(c.new_path AS TEXT) AS NewFileSystemPath,
    c.hash_after AS FileContentChecksum,
    c.hash_before AS PreviousFileContentChecksum,
    c.size AS Size,
    json_extract(c.previous, '$.size') AS PreviousSize,
    c.changed AS FieldsChanged,
    c.rule AS RuleName,
    c.grp AS RuleGroup,
    c.backend AS Backend,
    c.authorized AS Authorized,
    c.truncated_path AS TruncatedPath,
    c.pid AS InitiatingProcessId,
    c.ppid AS InitiatingProcessParentId,
    CASE WHEN c.exe IS NULL THEN c.comm
         ELSE replace(CAST(c.exe AS TEXT), rtrim(CAST(c.exe AS TEXT), replace(CAST(c.exe AS TEXT), '/', '')), '')
    END AS InitiatingProcessFileName,
    CAST(c.exe AS TEXT) AS InitiatingProcessFolderPath,
    CAST(c.cmdline AS TEXT) AS InitiatingProcessCommandLine,
    c.user AS InitiatingProcessAccountName,
    c.uid AS InitiatingProcessAccountUid,
    c.login_user AS InitiatingProcessLoginName,
    c.login_uid AS InitiatingProcessLoginUid,
    c.container_id AS InitiatingProcessContainerId,
    CASE WHEN c.process_start IS NULL THEN NULL
         ELSE strftime('%Y-%m-%dT%H:%M:%fZ', c.process_start / 1000000000.0, 'unixepoch')
    END AS InitiatingProcessCreationTime
FROM changes AS c;

CREATE TABLE IF NOT EXISTS meta (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
) WITHOUT ROWID;

-- Version 5: the daemon's heartbeat (one row, rewritten every 10 s; store/heartbeat.rs).
CREATE TABLE IF NOT EXISTS heartbeat (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    time            INTEGER NOT NULL,
    pid             INTEGER NOT NULL,
    version         TEXT NOT NULL,
    backend         TEXT NOT NULL,
    state           TEXT NOT NULL,
    started         INTEGER NOT NULL,
    last_scan       INTEGER,
    kernel_records  INTEGER NOT NULL,
    kernel_lost     INTEGER NOT NULL,
    jobs            INTEGER NOT NULL,
    queue_depth     INTEGER NOT NULL
);
"#;

/// The column names of the `ConfigurationChange` view, in order (documented in docs/store.md).
pub const CONFIGURATION_CHANGE_COLUMNS: &[&str] = &[
    "TimeGenerated",
    "Computer",
    "ConfigChangeType",
    "ChangeCategory",
    "FileSystemPath",
    "NewFileSystemPath",
    "FileContentChecksum",
    "PreviousFileContentChecksum",
    "Size",
    "PreviousSize",
    "FieldsChanged",
    "RuleName",
    "RuleGroup",
    "Backend",
    "Authorized",
    "TruncatedPath",
    "InitiatingProcessId",
    "InitiatingProcessParentId",
    "InitiatingProcessFileName",
    "InitiatingProcessFolderPath",
    "InitiatingProcessCommandLine",
    "InitiatingProcessAccountName",
    "InitiatingProcessAccountUid",
    "InitiatingProcessLoginName",
    "InitiatingProcessLoginUid",
    "InitiatingProcessContainerId",
    "InitiatingProcessCreationTime",
];

/// Creates what is missing; refuses a database written by a newer fim.
pub fn migrate(conn: &Connection) -> Result<()> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .context("reading the schema version")?;
    if version > SCHEMA_VERSION {
        bail!(
            "the store has schema version {version}, newer than this fim understands \
             ({SCHEMA_VERSION}); upgrade fim"
        );
    }
    conn.execute_batch(SCHEMA)
        .context("creating the store schema")?;
    // Version 3 signs baseline rows: older tables get the column (the rows are signed when
    // the key is created, see Store::open_path).
    let has_mac: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM pragma_table_info('baseline') WHERE name = 'mac')",
            [],
            |row| row.get(0),
        )
        .context("reading the baseline's columns")?;
    if !has_mac {
        conn.execute_batch("ALTER TABLE baseline ADD COLUMN mac BLOB")
            .context("adding the baseline's mac column")?;
    }
    // Version 4 records the name a change was made through.
    let has_used_path: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM pragma_table_info('changes') WHERE name = 'used_path')",
            [],
            |row| row.get(0),
        )
        .context("reading the changes' columns")?;
    if !has_used_path {
        conn.execute_batch("ALTER TABLE changes ADD COLUMN used_path BLOB")
            .context("adding the changes' used_path column")?;
    }
    conn.execute_batch(super::integrity::TRIGGERS)
        .context("creating the baseline set triggers")?;
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)
        .context("recording the schema version")?;
    Ok(())
}
