//! Tamper evidence for the baseline.
//!
//! Every baseline row carries `mac`: a keyed BLAKE3 hash of all its columns (path included).
//! `meta.baseline_set` holds the XOR of a second keyed hash of every row's MAC, kept up to date
//! by triggers, so a row removed or added by anything but fim changes a value nobody without
//! the key can recompute. The key is 32 random bytes in `baseline.key` next to the database,
//! created mode 0400 by the first read-write open; `meta.baseline_key` names the key (a hash of
//! it) that signed the rows.
//!
//! SQLite computes both through functions registered on every read-write connection
//! (`fim_mac`, `fim_set_xor`), so the same code signs an insert, the rows a directory rename
//! moves, and what the check at start recomputes. A connection without them (the `sqlite3`
//! shell, say) cannot write baseline rows at all: the triggers fail.
//!
//! What it cannot do: a user who can read the key (root) can forge rows, and a whole older
//! copy of the database is consistent with the key (see docs/security.md, "Tamper-evident baseline").

use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rusqlite::functions::FunctionFlags;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, params};

/// The key file's name, next to the database.
pub const KEY_FILE: &str = "baseline.key";

/// Bad rows named in the alert's detail; the log names up to [`LOGGED_PATHS`].
const DETAIL_PATHS: usize = 10;
const LOGGED_PATHS: usize = 1000;

/// The two keys derived from the key file: one signs rows, one hashes row MACs into the set.
#[derive(Clone)]
pub struct BaselineKey {
    row: [u8; 32],
    set: [u8; 32],
    /// Names the key in `meta.baseline_key` (a hash, not the key).
    id: String,
}

/// Whether this open found the key file or had to create it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyOrigin {
    Existing,
    Created,
}

impl BaselineKey {
    pub fn from_secret(secret: &[u8; 32]) -> BaselineKey {
        let id = blake3::derive_key("fim baseline key id", secret);
        BaselineKey {
            row: blake3::derive_key("fim baseline row mac", secret),
            set: blake3::derive_key("fim baseline set term", secret),
            id: crate::baseline::hex(&id[..8]),
        }
    }

    /// Reads `<dir>/baseline.key`, creating it (32 random bytes, mode 0400, this process's
    /// user) when it does not exist. Two processes starting at once agree on one key
    /// (O_EXCL; the loser reads the winner's).
    pub fn load_or_create(dir: &Path) -> Result<(BaselineKey, KeyOrigin, PathBuf)> {
        let path = dir.join(KEY_FILE);
        for _ in 0..50 {
            match std::fs::File::open(&path) {
                Ok(mut file) => {
                    let mut secret = [0u8; 32];
                    let mut extra = [0u8; 1];
                    let complete = file.read_exact(&mut secret).is_ok()
                        && matches!(file.read(&mut extra), Ok(0));
                    if complete {
                        return Ok((BaselineKey::from_secret(&secret), KeyOrigin::Existing, path));
                    }
                    // Being written by a process that created it a moment ago?
                    let young = file
                        .metadata()
                        .ok()
                        .and_then(|m| m.modified().ok())
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age.as_secs() < 2);
                    if !young {
                        bail!(
                            "{} is not a 32-byte key: the baseline cannot be authenticated \
                             (move it away to start over with a new key)",
                            path.display()
                        );
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    let mut secret = [0u8; 32];
                    random(&mut secret)?;
                    match std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o400)
                        .open(&path)
                    {
                        Ok(mut file) => {
                            file.write_all(&secret)
                                .and_then(|()| file.sync_all())
                                .with_context(|| format!("writing {}", path.display()))?;
                            return Ok((
                                BaselineKey::from_secret(&secret),
                                KeyOrigin::Created,
                                path,
                            ));
                        }
                        Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                        Err(e) => {
                            return Err(e)
                                .with_context(|| format!("creating the key {}", path.display()));
                        }
                    }
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("reading the key {}", path.display()));
                }
            }
        }
        bail!("{} stayed incomplete", path.display())
    }

    /// The MAC of one row, from its column values in `COLUMNS` order.
    pub fn row_mac(&self, columns: &[ValueRef<'_>]) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_keyed(&self.row);
        for value in columns {
            // Type tag and length first: no two different rows encode alike.
            let (tag, bytes): (u8, std::borrow::Cow<'_, [u8]>) = match value {
                ValueRef::Null => (0, (&[][..]).into()),
                ValueRef::Integer(i) => (1, i.to_le_bytes().to_vec().into()),
                ValueRef::Real(r) => (2, r.to_le_bytes().to_vec().into()),
                ValueRef::Text(t) => (3, (*t).into()),
                ValueRef::Blob(b) => (4, (*b).into()),
            };
            hasher.update(&[tag]);
            hasher.update(&(bytes.len() as u64).to_le_bytes());
            hasher.update(&bytes);
        }
        *hasher.finalize().as_bytes()
    }

    /// What one row's MAC contributes to `meta.baseline_set`.
    fn set_term(&self, mac: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.set, mac).as_bytes()
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

fn random(buf: &mut [u8]) -> Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: the pointer and length describe the unfilled part of `buf`.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("getrandom for the baseline key");
        }
        filled += n as usize;
    }
    Ok(())
}

fn xor_into(acc: &mut [u8; 32], term: &[u8; 32]) {
    for (a, t) in acc.iter_mut().zip(term) {
        *a ^= t;
    }
}

fn parse_set(text: &str) -> [u8; 32] {
    crate::baseline::parse_hex32(text).unwrap_or([0; 32])
}

/// Registers `fim_mac(<16 columns>)` and `fim_set_xor(set_hex, mac)` on `conn`.
pub(crate) fn register(conn: &Connection, key: &BaselineKey) -> Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    let k = key.clone();
    conn.create_scalar_function("fim_mac", COLUMN_COUNT as i32, flags, move |ctx| {
        let values: Vec<ValueRef<'_>> = (0..ctx.len()).map(|i| ctx.get_raw(i)).collect();
        Ok(k.row_mac(&values).to_vec())
    })
    .context("registering fim_mac")?;
    let k = key.clone();
    conn.create_scalar_function("fim_set_xor", 2, flags, move |ctx| {
        let set = match ctx.get_raw(0) {
            ValueRef::Text(t) => parse_set(std::str::from_utf8(t).unwrap_or("")),
            _ => [0; 32],
        };
        let mut set = set;
        if let ValueRef::Blob(mac) = ctx.get_raw(1) {
            xor_into(&mut set, &k.set_term(mac));
        }
        Ok(crate::baseline::hex(&set))
    })
    .context("registering fim_set_xor")?;
    Ok(())
}

/// The baseline's columns, in the order `fim_mac` takes them (store/baseline.rs's COLUMNS).
pub(crate) const COLUMN_COUNT: usize = 16;

/// Triggers keeping `meta.baseline_set` equal to the XOR of every row's set term.
pub(crate) const TRIGGERS: &str = r#"
INSERT OR IGNORE INTO meta (key, value) VALUES ('baseline_set', '');
CREATE TRIGGER IF NOT EXISTS baseline_set_insert AFTER INSERT ON baseline BEGIN
    UPDATE meta SET value = fim_set_xor(value, NEW.mac) WHERE key = 'baseline_set';
END;
CREATE TRIGGER IF NOT EXISTS baseline_set_delete AFTER DELETE ON baseline BEGIN
    UPDATE meta SET value = fim_set_xor(value, OLD.mac) WHERE key = 'baseline_set';
END;
CREATE TRIGGER IF NOT EXISTS baseline_set_update AFTER UPDATE ON baseline BEGIN
    UPDATE meta SET value = fim_set_xor(fim_set_xor(value, OLD.mac), NEW.mac)
        WHERE key = 'baseline_set';
END;
"#;

/// What the check at start found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IntegrityReport {
    /// Rows checked.
    pub rows: u64,
    /// Rows whose MAC is missing or wrong (edited or added outside fim); removed from the
    /// baseline, so the scan that follows reports those files afresh.
    pub bad_rows: u64,
    /// The first [`LOGGED_PATHS`] of them.
    pub bad_paths: Vec<Vec<u8>>,
    /// The set of rows is not the one fim left: rows were removed (or added) outside fim.
    pub set_mismatch: bool,
    /// Problems with the key itself (missing while the store names one, another key, the key
    /// file readable by others).
    pub key_problems: Vec<String>,
}

impl IntegrityReport {
    /// Whether anything was found that an administrator must look at.
    pub fn alert(&self) -> bool {
        self.bad_rows > 0 || self.set_mismatch || !self.key_problems.is_empty()
    }

    /// One line for the health row and the log.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for problem in &self.key_problems {
            let _ = write!(out, "{problem}; ");
        }
        if self.bad_rows > 0 {
            let _ = write!(
                out,
                "{} of {} baseline rows fail authentication (edited or added outside fim; \
                 removed from the baseline, the files are reported again): ",
                self.bad_rows, self.rows
            );
            let shown: Vec<String> = self
                .bad_paths
                .iter()
                .take(DETAIL_PATHS)
                .map(|p| crate::baseline::display_path(p))
                .collect();
            out.push_str(&shown.join(", "));
            if self.bad_rows as usize > DETAIL_PATHS {
                let _ = write!(out, " and {} more", self.bad_rows as usize - DETAIL_PATHS);
            }
            out.push_str("; ");
        }
        if self.set_mismatch {
            out.push_str("baseline rows were removed or added outside fim; ");
        }
        if out.is_empty() {
            let _ = write!(out, "{} baseline rows authenticated; ", self.rows);
        }
        out.truncate(out.trim_end_matches("; ").len());
        out
    }

    /// Paths for the log (more than the detail holds).
    pub fn logged_paths(&self) -> impl Iterator<Item = String> + '_ {
        self.bad_paths
            .iter()
            .map(|p| crate::baseline::display_path(p))
    }

    /// The alert in the log: the summary, then each failing path on its own line.
    pub fn log_alert(&self) {
        log::error!("BASELINE INTEGRITY ALERT: {}", self.summary());
        for path in self.logged_paths() {
            log::error!("baseline row failed authentication: {path}");
        }
    }
}

fn meta_get(conn: &Connection, key: &str) -> Result<Option<String>> {
    use rusqlite::OptionalExtension;
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
        .with_context(|| format!("reading meta {key}"))
}

fn meta_set(conn: &Connection, key: &str, value: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )
    .with_context(|| format!("writing meta {key}"))?;
    Ok(())
}

/// Whether some key has signed this store.
pub(crate) fn signed(conn: &Connection) -> Result<bool> {
    Ok(meta_get(conn, "baseline_key")?.is_some())
}

/// Signs every row and records the key: a new store, or one written before rows were signed.
/// Only ever done right after this process created the key, and only when no key had signed
/// the store before (checked by the caller).
pub(crate) fn sign_all(conn: &mut Connection, key: &BaselineKey) -> Result<u64> {
    rewrite(
        conn,
        key,
        "UPDATE baseline SET mac = fim_mac({COLUMNS})",
        "signing the baseline rows",
    )
}

/// Runs `sql` (`{COLUMNS}` stands for the signed columns) on the baseline, then records the
/// set of rows as it now is and this key as the one that signed it, in one transaction.
fn rewrite(conn: &mut Connection, key: &BaselineKey, sql: &str, what: &str) -> Result<u64> {
    let tx = conn.transaction()?;
    let n = tx
        .execute(&sql.replace("{COLUMNS}", super::baseline::COLUMNS), [])
        .with_context(|| what.to_string())?;
    recompute_set(&tx, key)?;
    meta_set(&tx, "baseline_key", key.id())?;
    tx.commit()?;
    Ok(n as u64)
}

/// Sets `meta.baseline_set` from the rows as they are.
fn recompute_set(conn: &Connection, key: &BaselineKey) -> Result<()> {
    let mut set = [0u8; 32];
    let mut stmt = conn.prepare("SELECT mac FROM baseline WHERE mac IS NOT NULL")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        if let ValueRef::Blob(mac) = row.get_ref(0)? {
            xor_into(&mut set, &key.set_term(mac));
        }
    }
    meta_set(conn, "baseline_set", &crate::baseline::hex(&set))
}

/// Checks every row's MAC and the set; removes the rows that fail and records the set as it
/// now is, so the next start checks from a clean state (the alert is the record of it).
pub(crate) fn check(
    conn: &mut Connection,
    key: &BaselineKey,
    origin: KeyOrigin,
    key_path: &Path,
) -> Result<IntegrityReport> {
    // A store no key had signed was signed when this key was created (Store::open_path).
    let mut report = IntegrityReport::default();
    if let Ok(meta) = std::fs::metadata(key_path) {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        if meta.permissions().mode() & 0o077 != 0 || meta.uid() != euid {
            report.key_problems.push(format!(
                "the key {} is accessible to other users (mode {:o}, owner {}): anyone who can \
                 read it can forge baseline rows",
                key_path.display(),
                meta.permissions().mode() & 0o7777,
                meta.uid()
            ));
        }
    }
    let signed_by = meta_get(conn, "baseline_key")?;
    let rows: u64 =
        conn.query_row("SELECT count(*) FROM baseline", [], |r| r.get::<_, i64>(0))? as u64;
    match (&signed_by, origin) {
        (_, KeyOrigin::Created) => report.key_problems.push(format!(
            "the key that signed the baseline is gone ({} was missing and has been created \
             anew): no stored row can be authenticated",
            key_path.display()
        )),
        (Some(id), KeyOrigin::Existing) if id != key.id() => report.key_problems.push(format!(
            "the baseline was signed by another key (key id {id}, {} has {})",
            key_path.display(),
            key.id()
        )),
        (None, KeyOrigin::Existing) if rows > 0 => report
            .key_problems
            .push("the store's record of its signing key was removed outside fim".to_string()),
        _ => {}
    }

    // Every row, recomputed here with the same function SQLite signs with.
    let mut set = [0u8; 32];
    {
        let mut stmt = conn.prepare(&format!(
            "SELECT {}, mac FROM baseline",
            super::baseline::COLUMNS
        ))?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next().context("reading the baseline to check it")? {
            report.rows += 1;
            let values: Vec<ValueRef<'_>> = (0..COLUMN_COUNT)
                .map(|i| row.get_ref(i))
                .collect::<rusqlite::Result<_>>()?;
            let expected = key.row_mac(&values);
            let stored = row.get_ref(COLUMN_COUNT)?;
            let good = matches!(stored, ValueRef::Blob(mac) if mac == expected);
            if let ValueRef::Blob(mac) = stored {
                xor_into(&mut set, &key.set_term(mac));
            }
            if !good {
                report.bad_rows += 1;
                if report.bad_paths.len() < LOGGED_PATHS {
                    let path = match values[0] {
                        ValueRef::Blob(b) | ValueRef::Text(b) => b.to_vec(),
                        _ => Vec::new(),
                    };
                    report.bad_paths.push(path);
                }
            }
        }
    }
    let stored_set = meta_get(conn, "baseline_set")?.unwrap_or_default();
    report.set_mismatch = parse_set(&stored_set) != set && report.key_problems.is_empty();

    if report.alert() {
        // Start over from what can be trusted: drop the rows that fail, sign the rest as
        // they are, record this key.
        rewrite(
            conn,
            key,
            "DELETE FROM baseline WHERE mac IS NULL OR mac != fim_mac({COLUMNS})",
            "removing the baseline rows that fail authentication",
        )?;
    }
    Ok(report)
}
