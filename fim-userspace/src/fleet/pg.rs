//! The central store in PostgreSQL: versioned migrations, batch inserts keyed by (host,
//! store, row id) so every row lands exactly once, and the `ConfigurationChange` view.

use anyhow::{Context, Result, bail};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls};

use super::wire::{AppliedMessage, ChangeMessage, HealthMessage, HeartbeatMessage};

/// The schema's migrations, applied in order, each once (recorded in
/// `fim_schema_migrations`). Never edit one that has shipped: add the next.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "fleet tables and the ConfigurationChange view",
        MIGRATION_1,
    ),
    (2, "the name a change was made through", MIGRATION_2),
];

/// `used_path` of the local store (a change made through another name than the watched one).
const MIGRATION_2: &str = "
ALTER TABLE fim_changes ADD COLUMN used_path TEXT, ADD COLUMN used_path_hex TEXT;
";

const MIGRATION_1: &str = r#"
CREATE TABLE fim_changes (
    host              TEXT NOT NULL,
    store             TEXT NOT NULL,
    id                BIGINT NOT NULL,
    computer          TEXT NOT NULL,
    time_ns           BIGINT NOT NULL,
    activity          INTEGER NOT NULL,
    path              TEXT NOT NULL,
    path_hex          TEXT,
    new_path          TEXT,
    new_path_hex      TEXT,
    rule              TEXT,
    grp               TEXT,
    backend           TEXT NOT NULL,
    changed           JSONB NOT NULL,
    previous          JSONB,
    hash_before       TEXT,
    hash_after        TEXT,
    size              BIGINT,
    authorized        BOOLEAN NOT NULL,
    truncated_path    BOOLEAN NOT NULL,
    pid               BIGINT,
    ppid              BIGINT,
    exe               TEXT,
    exe_hex           TEXT,
    cmdline           TEXT,
    uid               BIGINT,
    usr               TEXT,
    login_uid         BIGINT,
    login_user        TEXT,
    container_id      TEXT,
    comm              TEXT,
    process_start_ns  BIGINT,
    received_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (host, store, id)
);
CREATE INDEX fim_changes_by_path_time ON fim_changes (path, time_ns DESC);
CREATE INDEX fim_changes_by_new_path ON fim_changes (new_path, time_ns DESC) WHERE new_path IS NOT NULL;
CREATE INDEX fim_changes_by_time ON fim_changes (time_ns DESC);
CREATE INDEX fim_changes_by_host_time ON fim_changes (host, time_ns DESC);

CREATE TABLE fim_health (
    host         TEXT NOT NULL,
    store        TEXT NOT NULL,
    id           BIGINT NOT NULL,
    time_ns      BIGINT NOT NULL,
    kind         TEXT NOT NULL,
    backend      TEXT,
    detail       TEXT,
    lost_events  BIGINT NOT NULL,
    received_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (host, store, id)
);
CREATE INDEX fim_health_by_host_kind ON fim_health (host, kind, time_ns DESC);

CREATE TABLE fim_hosts (
    host               TEXT PRIMARY KEY,
    computer           TEXT NOT NULL,
    last_heartbeat_ns  BIGINT NOT NULL,
    version            TEXT NOT NULL,
    store              TEXT NOT NULL,
    backend            TEXT,
    groups             JSONB NOT NULL,
    applied            JSONB NOT NULL,
    rejected           JSONB,
    backlog            BIGINT NOT NULL,
    losses             BIGINT NOT NULL,
    gaps               BIGINT NOT NULL,
    published          BIGINT NOT NULL,
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE fim_rules_applied (
    host         TEXT NOT NULL,
    time_ns      BIGINT NOT NULL,
    applied      JSONB NOT NULL,
    rejected     JSONB,
    received_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (host, time_ns)
);

-- The local store's ConfigurationChange columns (Azure Change Tracking's names), plus the
-- fleet host id. TimeGenerated is a timestamptz here.
CREATE VIEW "ConfigurationChange" AS
SELECT
    to_timestamp(c.time_ns / 1e9) AS "TimeGenerated",
    c.computer AS "Computer",
    'Files' AS "ConfigChangeType",
    CASE c.activity
        WHEN 1 THEN 'Added'
        WHEN 4 THEN 'Removed'
        WHEN 5 THEN 'Renamed'
        ELSE 'Modified'
    END AS "ChangeCategory",
    c.path AS "FileSystemPath",
    c.new_path AS "NewFileSystemPath",
    c.hash_after AS "FileContentChecksum",
    c.hash_before AS "PreviousFileContentChecksum",
    c.size AS "Size",
    (c.previous ->> 'size')::bigint AS "PreviousSize",
    c.changed AS "FieldsChanged",
    c.rule AS "RuleName",
    c.grp AS "RuleGroup",
    c.backend AS "Backend",
    c.authorized AS "Authorized",
    c.truncated_path AS "TruncatedPath",
    c.pid AS "InitiatingProcessId",
    c.ppid AS "InitiatingProcessParentId",
    CASE WHEN c.exe IS NULL THEN c.comm ELSE regexp_replace(c.exe, '^.*/', '') END
        AS "InitiatingProcessFileName",
    c.exe AS "InitiatingProcessFolderPath",
    c.cmdline AS "InitiatingProcessCommandLine",
    c.usr AS "InitiatingProcessAccountName",
    c.uid AS "InitiatingProcessAccountUid",
    c.login_user AS "InitiatingProcessLoginName",
    c.login_uid AS "InitiatingProcessLoginUid",
    c.container_id AS "InitiatingProcessContainerId",
    CASE WHEN c.process_start_ns IS NULL THEN NULL
         ELSE to_timestamp(c.process_start_ns / 1e9) END AS "InitiatingProcessCreationTime",
    c.host AS "HostId"
FROM fim_changes AS c;
"#;

/// Connects; the connection runs on its own task.
pub async fn connect(connection_string: &str) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(connection_string, NoTls)
        .await
        .with_context(|| format!("connecting to PostgreSQL ({})", redact(connection_string)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            log::warn!("PostgreSQL connection: {e}");
        }
    });
    Ok(client)
}

/// A connection string without its password, for messages.
fn redact(connection_string: &str) -> String {
    connection_string
        .split_whitespace()
        .map(|part| {
            if part.starts_with("password=") {
                "password=***"
            } else {
                part
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Applies the migrations not yet applied, each in its own transaction, under an advisory
/// lock (two collectors starting together apply each once). Refuses a schema newer than
/// this fim knows.
pub async fn migrate(client: &mut Client) -> Result<i32> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS fim_schema_migrations (
                 version     INTEGER PRIMARY KEY,
                 name        TEXT NOT NULL,
                 applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
             )",
        )
        .await
        .context("creating fim_schema_migrations")?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock(71462019)", &[])
        .await
        .context("taking the migration lock")?;
    let current: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM fim_schema_migrations",
            &[],
        )
        .await?
        .get(0);
    let newest = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > newest {
        bail!(
            "the central schema is at version {current}, newer than this fim knows ({newest}): \
             upgrade fim"
        );
    }
    for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        tx.batch_execute(sql)
            .await
            .with_context(|| format!("applying migration {version} ({name})"))?;
        tx.execute(
            "INSERT INTO fim_schema_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await?;
        log::info!("PostgreSQL schema: applied migration {version} ({name})");
    }
    tx.commit().await.context("committing the migrations")?;
    Ok(newest)
}

/// Rows inserted and rows that were already there.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Inserted {
    pub inserted: u64,
    pub duplicates: u64,
}

const CHANGE_COLUMNS: &[&str] = &[
    "host",
    "store",
    "id",
    "computer",
    "time_ns",
    "activity",
    "path",
    "path_hex",
    "new_path",
    "new_path_hex",
    "rule",
    "grp",
    "backend",
    "changed",
    "previous",
    "hash_before",
    "hash_after",
    "size",
    "authorized",
    "truncated_path",
    "pid",
    "ppid",
    "exe",
    "exe_hex",
    "cmdline",
    "uid",
    "usr",
    "login_uid",
    "login_user",
    "container_id",
    "comm",
    "process_start_ns",
    "used_path",
    "used_path_hex",
];
/// Columns passed as text and cast (JSONB).
const JSON_COLUMNS: &[&str] = &["changed", "previous"];

/// `INSERT ... VALUES (...), (...) ON CONFLICT DO NOTHING` for `rows` rows.
fn insert_sql(table: &str, columns: &[&str], rows: usize) -> String {
    let mut sql = format!("INSERT INTO {table} ({}) VALUES ", columns.join(", "));
    let mut n = 0;
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for (i, column) in columns.iter().enumerate() {
            n += 1;
            if i > 0 {
                sql.push_str(", ");
            }
            if JSON_COLUMNS.contains(column) {
                sql.push_str(&format!("${n}::text::jsonb"));
            } else {
                sql.push_str(&format!("${n}"));
            }
        }
        sql.push(')');
    }
    sql.push_str(" ON CONFLICT DO NOTHING");
    sql
}

/// Inserts change rows (a retry or redelivery of a row already there is a duplicate, not
/// a second row).
pub async fn insert_changes(
    tx: &tokio_postgres::Transaction<'_>,
    rows: &[ChangeMessage],
) -> Result<Inserted> {
    let mut result = Inserted::default();
    // At most 65535 parameters per statement.
    for chunk in rows.chunks(1000) {
        struct Owned {
            path: String,
            path_hex: Option<String>,
            new_path: Option<String>,
            new_path_hex: Option<String>,
            used_path: Option<String>,
            used_path_hex: Option<String>,
            changed: String,
            previous: Option<String>,
            size: Option<i64>,
            pid: Option<i64>,
            ppid: Option<i64>,
            exe: Option<String>,
            exe_hex: Option<String>,
            cmdline: Option<String>,
            uid: Option<i64>,
            login_uid: Option<i64>,
            activity: i32,
        }
        let owned: Vec<Owned> = chunk
            .iter()
            .map(|c| Owned {
                path: c.path.display(),
                path_hex: c.path.hex(),
                new_path: c.new_path.as_ref().map(|p| p.display()),
                new_path_hex: c.new_path.as_ref().and_then(|p| p.hex()),
                used_path: c.used_path.as_ref().map(|p| p.display()),
                used_path_hex: c.used_path.as_ref().and_then(|p| p.hex()),
                changed: serde_json::to_string(&c.changed).unwrap_or_else(|_| "[]".into()),
                previous: c.previous.as_ref().map(|p| p.to_string()),
                size: c.size.map(|s| s.min(i64::MAX as u64) as i64),
                pid: c.pid.map(i64::from),
                ppid: c.ppid.map(i64::from),
                exe: c.exe.as_ref().map(|p| p.display()),
                exe_hex: c.exe.as_ref().and_then(|p| p.hex()),
                cmdline: c.cmdline.as_ref().map(|p| p.display()),
                uid: c.uid.map(i64::from),
                login_uid: c.login_uid.map(i64::from),
                activity: c.activity.clamp(i32::MIN as i64, i32::MAX as i64) as i32,
            })
            .collect();
        let mut params: Vec<&(dyn ToSql + Sync)> =
            Vec::with_capacity(chunk.len() * CHANGE_COLUMNS.len());
        for (c, o) in chunk.iter().zip(&owned) {
            params.extend_from_slice(&[
                &c.host,
                &c.store,
                &c.id,
                &c.computer,
                &c.time_ns,
                &o.activity,
                &o.path,
                &o.path_hex,
                &o.new_path,
                &o.new_path_hex,
                &c.rule,
                &c.group,
                &c.backend,
                &o.changed,
                &o.previous,
                &c.hash_before,
                &c.hash_after,
                &o.size,
                &c.authorized,
                &c.truncated_path,
                &o.pid,
                &o.ppid,
                &o.exe,
                &o.exe_hex,
                &o.cmdline,
                &o.uid,
                &c.user,
                &o.login_uid,
                &c.login_user,
                &c.container_id,
                &c.comm,
                &c.process_start_ns,
                &o.used_path,
                &o.used_path_hex,
            ]);
        }
        let sql = insert_sql("fim_changes", CHANGE_COLUMNS, chunk.len());
        let n = tx
            .execute(&sql, &params)
            .await
            .context("inserting change rows")?;
        result.inserted += n;
        result.duplicates += chunk.len() as u64 - n;
    }
    Ok(result)
}

const HEALTH_COLUMNS: &[&str] = &[
    "host",
    "store",
    "id",
    "time_ns",
    "kind",
    "backend",
    "detail",
    "lost_events",
];

pub async fn insert_health(
    tx: &tokio_postgres::Transaction<'_>,
    rows: &[HealthMessage],
) -> Result<Inserted> {
    let mut result = Inserted::default();
    for chunk in rows.chunks(1000) {
        let lost: Vec<i64> = chunk
            .iter()
            .map(|h| h.lost_events.min(i64::MAX as u64) as i64)
            .collect();
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(chunk.len() * 8);
        for (h, lost) in chunk.iter().zip(&lost) {
            params.extend_from_slice(&[
                &h.host, &h.store, &h.id, &h.time_ns, &h.kind, &h.backend, &h.detail, lost,
            ]);
        }
        let sql = insert_sql("fim_health", HEALTH_COLUMNS, chunk.len());
        let n = tx
            .execute(&sql, &params)
            .await
            .context("inserting health rows")?;
        result.inserted += n;
        result.duplicates += chunk.len() as u64 - n;
    }
    Ok(result)
}

/// Records a heartbeat (the newest one per host wins; an older one arriving late is
/// ignored).
pub async fn upsert_heartbeat(client: &Client, beat: &HeartbeatMessage) -> Result<()> {
    let groups = serde_json::to_string(&beat.groups)?;
    let applied = serde_json::to_string(&beat.applied)?;
    let clamp = |n: u64| n.min(i64::MAX as u64) as i64;
    client
        .execute(
            "INSERT INTO fim_hosts (host, computer, last_heartbeat_ns, version, store, backend,
                 groups, applied, backlog, losses, gaps, published)
             VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb, $8::text::jsonb, $9, $10, $11, $12)
             ON CONFLICT (host) DO UPDATE SET computer = excluded.computer,
                 last_heartbeat_ns = excluded.last_heartbeat_ns, version = excluded.version,
                 store = excluded.store, backend = excluded.backend, groups = excluded.groups,
                 applied = excluded.applied, backlog = excluded.backlog,
                 losses = excluded.losses, gaps = excluded.gaps,
                 published = excluded.published, updated_at = now()
             WHERE fim_hosts.last_heartbeat_ns <= excluded.last_heartbeat_ns",
            &[
                &beat.host,
                &beat.computer,
                &beat.time_ns,
                &beat.version,
                &beat.store,
                &beat.backend,
                &groups,
                &applied,
                &clamp(beat.backlog),
                &clamp(beat.losses),
                &clamp(beat.gaps),
                &clamp(beat.published),
            ],
        )
        .await
        .context("recording a heartbeat")?;
    Ok(())
}

/// Records an applied-rules report, and on the host's row what is in force and what was
/// refused.
pub async fn record_applied(client: &Client, report: &AppliedMessage) -> Result<()> {
    let applied = serde_json::to_string(&report.applied)?;
    let rejected = report
        .rejected
        .as_ref()
        .map(serde_json::to_string)
        .transpose()?;
    client
        .execute(
            "INSERT INTO fim_rules_applied (host, time_ns, applied, rejected)
             VALUES ($1, $2, $3::text::jsonb, $4::text::jsonb) ON CONFLICT DO NOTHING",
            &[&report.host, &report.time_ns, &applied, &rejected],
        )
        .await
        .context("recording an applied-rules report")?;
    client
        .execute(
            "UPDATE fim_hosts SET applied = $2::text::jsonb, rejected = $3::text::jsonb,
                 updated_at = now() WHERE host = $1",
            &[&report.host, &applied, &rejected],
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_inserts_number_every_parameter_and_cast_json() {
        let sql = insert_sql("t", &["a", "changed"], 2);
        assert_eq!(
            sql,
            "INSERT INTO t (a, changed) VALUES ($1, $2::text::jsonb), ($3, $4::text::jsonb) \
             ON CONFLICT DO NOTHING"
        );
        assert_eq!(CHANGE_COLUMNS.len(), 34);
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redact("host=/tmp user=fim password=secret dbname=fim"),
            "host=/tmp user=fim password=*** dbname=fim"
        );
    }
}
