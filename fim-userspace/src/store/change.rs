//! Change rows: what changed, under which rule, and who did it.

use anyhow::{Context, Result};
use rusqlite::{Connection, params};
use serde_json::json;

use crate::baseline::{BaselineEntry, Drift, DriftItem, hex};
use crate::config::RuleSet;

/// OCSF File System Activity ids (the output contract).
pub mod activity {
    pub const CREATE: i64 = 1;
    pub const UPDATE: i64 = 3;
    pub const DELETE: i64 = 4;
    pub const RENAME: i64 = 5;
    pub const SET_ATTRIBUTES: i64 = 6;
    pub const SET_SECURITY: i64 = 7;
    pub const OTHER: i64 = 99;
}

/// The process behind a change; all `None` when unknown (e.g. found by a scan).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actor {
    pub pid: Option<u32>,
    pub ppid: Option<u32>,
    pub exe: Option<Vec<u8>>,
    pub cmdline: Option<Vec<u8>>,
    pub uid: Option<u32>,
    pub user: Option<String>,
    pub login_uid: Option<u32>,
    pub login_user: Option<String>,
    pub container_id: Option<String>,
    pub comm: Option<String>,
    /// Process start time, ns since the epoch.
    pub start_time_ns: Option<i64>,
}

/// One row of `changes`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeRecord {
    pub time_ns: i64,
    pub host: String,
    /// See [`activity`].
    pub activity: i64,
    pub path: Vec<u8>,
    /// For renames: the new path.
    pub new_path: Option<Vec<u8>>,
    pub rule: Option<String>,
    pub group: Option<String>,
    /// `lsm`, `fentry`, `tracepoint`, or `scan` for drift found by a scan.
    pub backend: String,
    /// Names of the changed fields (content, size, mode, owner, xattr, type, link_target).
    pub changed: Vec<String>,
    /// The baseline values before the change (hash, size, mode, uid, gid) as JSON.
    pub previous: Option<serde_json::Value>,
    pub hash_before: Option<String>,
    pub hash_after: Option<String>,
    pub size: Option<u64>,
    /// The type of the object now (or before, when it is gone); for the output's
    /// `file.type_id`, not stored.
    pub kind: Option<crate::baseline::FileKind>,
    /// Why a regular file has no hash (too large, unstable, unreadable); for the output's
    /// `unmapped.fim.flags`, not stored (the baseline row has them).
    pub flags: crate::baseline::EntryFlags,
    pub authorized: bool,
    pub truncated_path: bool,
    /// The name the change was made through when it is not `path` (another hard link, a
    /// bind mount, another mount namespace): `path` is then the watched name.
    pub used_path: Option<Vec<u8>>,
    pub actor: Actor,
}

/// The `previous` JSON of the output contract.
pub fn previous_json(entry: &BaselineEntry) -> serde_json::Value {
    json!({
        "hash": entry.blake3.map(|h| hex(&h)),
        "size": entry.size,
        "mode": entry.mode,
        "uid": entry.uid,
        "gid": entry.gid,
        "type": entry.kind.name(),
    })
}

impl ChangeRecord {
    /// The changes a scan found, with attribution unknown (never invented).
    pub fn from_drift(
        drift: &Drift,
        rules: &RuleSet,
        host: &str,
        time_ns: i64,
    ) -> Vec<ChangeRecord> {
        let added = drift.added.iter().cloned().map(DriftItem::Added);
        let removed = drift.removed.iter().cloned().map(DriftItem::Removed);
        let modified = drift.modified.iter().cloned().map(DriftItem::Modified);
        added
            .chain(removed)
            .chain(modified)
            .map(|item| ChangeRecord::from_drift_item(&item, rules, host, time_ns))
            .collect()
    }

    /// The change row for one drift item found by a scan (backend `scan`, attribution
    /// unknown).
    pub fn from_drift_item(
        item: &DriftItem,
        rules: &RuleSet,
        host: &str,
        time_ns: i64,
    ) -> ChangeRecord {
        let base = |path: &[u8], activity: i64| {
            let rule = rules.match_bytes(path);
            ChangeRecord {
                time_ns,
                host: host.to_string(),
                activity,
                path: path.to_vec(),
                rule: rule.map(|r| r.name.clone()),
                group: rule.map(|r| r.group.clone()),
                backend: "scan".to_string(),
                ..ChangeRecord::default()
            }
        };
        match item {
            DriftItem::Added(added) => ChangeRecord {
                hash_after: added.blake3.map(|h| hex(&h)),
                size: Some(added.size),
                kind: Some(added.kind),
                flags: added.flags,
                ..base(&added.path, activity::CREATE)
            },
            DriftItem::Removed(removed) => ChangeRecord {
                hash_before: removed.blake3.map(|h| hex(&h)),
                // A placeholder (reported created, gone before it was examined) has no
                // previous values to show.
                previous: (!removed.flags.has(crate::baseline::EntryFlags::VANISHED))
                    .then(|| previous_json(removed)),
                kind: Some(removed.kind),
                ..base(&removed.path, activity::DELETE)
            },
            DriftItem::Modified(modified) => {
                use crate::baseline::ChangedField as F;
                let content = modified
                    .changed
                    .iter()
                    .any(|c| matches!(c, F::Content | F::Size | F::Type | F::LinkTarget));
                let activity = if content {
                    activity::UPDATE
                } else {
                    activity::SET_ATTRIBUTES
                };
                ChangeRecord {
                    changed: modified
                        .changed
                        .iter()
                        .map(|c| c.name().to_string())
                        .collect(),
                    previous: Some(previous_json(&modified.previous)),
                    hash_before: modified.previous.blake3.map(|h| hex(&h)),
                    hash_after: modified.current.blake3.map(|h| hex(&h)),
                    size: Some(modified.current.size),
                    kind: Some(modified.current.kind),
                    flags: modified.current.flags,
                    ..base(&modified.current.path, activity)
                }
            }
        }
    }
}

pub(crate) fn insert(conn: &Connection, change: &ChangeRecord) -> Result<()> {
    let a = &change.actor;
    conn.prepare_cached(
        "INSERT INTO changes (time, host, activity, path, new_path, rule, grp, backend, changed,
             previous, hash_before, hash_after, size, authorized, truncated_path, pid, ppid, exe,
             cmdline, uid, user, login_uid, login_user, container_id, comm, process_start,
             used_path)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
             ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27)",
    )?
    .execute(params![
        change.time_ns,
        change.host,
        change.activity,
        change.path,
        change.new_path,
        change.rule,
        change.group,
        change.backend,
        serde_json::to_string(&change.changed)?,
        change.previous.as_ref().map(|p| p.to_string()),
        change.hash_before,
        change.hash_after,
        change.size.map(|s| s as i64),
        change.authorized,
        change.truncated_path,
        a.pid,
        a.ppid,
        a.exe,
        a.cmdline,
        a.uid,
        a.user,
        a.login_uid,
        a.login_user,
        a.container_id,
        a.comm,
        a.start_time_ns,
        change.used_path,
    ])
    .context("inserting a change")?;
    Ok(())
}

/// The newest changes of one path first (what `fim who PATH` shows).
pub(crate) fn history(conn: &Connection, path: &[u8], limit: usize) -> Result<Vec<ChangeRecord>> {
    Ok(select(conn, "path = ?1", &[&path], limit)?
        .into_iter()
        .map(|(_, change)| change)
        .collect())
}

/// The columns [`from_row`] reads, in order.
const COLUMNS: &str =
    "id, time, host, activity, path, new_path, rule, grp, backend, changed, previous,
             hash_before, hash_after, size, authorized, truncated_path, pid, ppid, exe, cmdline,
             uid, user, login_uid, login_user, container_id, comm, process_start, used_path";

/// Change rows matching an SQL condition over the `changes` columns (`?1`... bound to
/// `params`), newest first, with their row ids.
pub fn select(
    conn: &Connection,
    condition: &str,
    params: &[&dyn rusqlite::ToSql],
    limit: usize,
) -> Result<Vec<(i64, ChangeRecord)>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM changes WHERE {condition} ORDER BY time DESC, id DESC LIMIT {limit}"
    );
    let mut stmt = conn
        .prepare_cached(&sql)
        .context("preparing a change query")?;
    let rows = stmt.query_map(params, from_row)?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .context("reading changes")
}

/// Change rows with ids above `after`, in id (commit) order: what the fleet outbox
/// publishes next.
pub fn after(conn: &Connection, after: i64, limit: usize) -> Result<Vec<(i64, ChangeRecord)>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM changes WHERE id > ?1 ORDER BY id LIMIT ?2"
        ))
        .context("preparing the outbox query")?;
    let rows = stmt.query_map(params![after, limit as i64], from_row)?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .context("reading changes")
}

/// One row of [`COLUMNS`].
fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, ChangeRecord)> {
    let changed: String = row.get(9)?;
    let previous: Option<String> = row.get(10)?;
    Ok((
        row.get(0)?,
        ChangeRecord {
            kind: None,
            flags: Default::default(),
            time_ns: row.get(1)?,
            host: row.get(2)?,
            activity: row.get(3)?,
            path: row.get(4)?,
            new_path: row.get(5)?,
            rule: row.get(6)?,
            group: row.get(7)?,
            backend: row.get(8)?,
            // Written by `insert` as JSON; unreadable JSON (edited by hand) reads as empty.
            changed: serde_json::from_str(&changed).unwrap_or_default(),
            previous: previous.and_then(|p| serde_json::from_str(&p).ok()),
            hash_before: row.get(11)?,
            hash_after: row.get(12)?,
            size: row.get::<_, Option<i64>>(13)?.map(|s| s as u64),
            authorized: row.get(14)?,
            truncated_path: row.get(15)?,
            used_path: row.get(27)?,
            actor: Actor {
                pid: row.get(16)?,
                ppid: row.get(17)?,
                exe: row.get(18)?,
                cmdline: row.get(19)?,
                uid: row.get(20)?,
                user: row.get(21)?,
                login_uid: row.get(22)?,
                login_user: row.get(23)?,
                container_id: row.get(24)?,
                comm: row.get(25)?,
                start_time_ns: row.get(26)?,
            },
        },
    ))
}

/// This host's name for the `host` column (`Computer` in the view); "unknown" if unavailable.
pub fn local_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer and its length are valid; gethostname NUL-terminates within it on
    // success (we also stop at the buffer's end).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".to_string();
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..len]).into_owned()
}
