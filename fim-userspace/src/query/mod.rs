//! The query commands: `fim who`, `fim events`, `fim sql`, `fim diff`, `fim status`. They only
//! read the store, through a read-only connection, and print tables (escaped: a file name can
//! hold newlines and invalid UTF-8) or, with `--json`, one JSON object per line.

mod diff;
mod events;
mod sql;
mod status;
mod table;
mod time;
mod who;

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use serde_json::{Value, json};

pub use diff::diff;
pub use events::{Condition, EventFilter, FilterValue, events, print_events};
pub use sql::sql;
pub use status::status;
pub use table::Table;
pub use time::{format_ns, parse_time};
pub use who::{Name, print_who, who, who_history};

use crate::baseline::display_path;
use crate::config::Config;
use crate::metrics::activity_label;
use crate::store::{ChangeRecord, DATABASE_FILE, ReadOnlyStore, Store};

/// The store the query commands read: `--store PATH`, else `<state_dir>/fim.db` of the
/// configuration. Never created: a missing store is an error.
pub fn open(config: Option<&Path>, store: Option<&Path>) -> Result<(ReadOnlyStore, PathBuf)> {
    let path = match store {
        Some(path) => path.to_path_buf(),
        None => {
            let config = Config::load(config)
                .map_err(|errors| anyhow::anyhow!("invalid configuration:\n{errors}"))?;
            config.state_dir.join(DATABASE_FILE)
        }
    };
    if !path.exists() {
        bail!(
            "no store at {}: run `fim scan` or start `fim run` first",
            path.display()
        );
    }
    Ok((Store::open_read_only(&path)?, path))
}

/// Nanoseconds since the epoch now.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// A path as a JSON string, plus its exact bytes as hex when it is not UTF-8.
fn path_fields(out: &mut serde_json::Map<String, Value>, key: &str, path: &[u8]) {
    out.insert(key.into(), json!(display_path(path)));
    if std::str::from_utf8(path).is_err() {
        out.insert(format!("{key}_hex"), json!(crate::baseline::hex(path)));
    }
}

/// One change row as the query commands print it with `--json`.
pub fn change_json(id: i64, c: &ChangeRecord) -> Value {
    let mut out = serde_json::Map::new();
    out.insert("id".into(), json!(id));
    out.insert("time".into(), json!(time::format_ns(c.time_ns)));
    out.insert("time_ns".into(), json!(c.time_ns));
    out.insert("activity".into(), json!(activity_label(c.activity)));
    out.insert("activity_id".into(), json!(c.activity));
    path_fields(&mut out, "path", &c.path);
    if let Some(new_path) = &c.new_path {
        path_fields(&mut out, "new_path", new_path);
    }
    out.insert("changed".into(), json!(c.changed));
    out.insert("previous".into(), c.previous.clone().unwrap_or(Value::Null));
    out.insert("hash_before".into(), json!(c.hash_before));
    out.insert("hash_after".into(), json!(c.hash_after));
    out.insert("size".into(), json!(c.size));
    out.insert("rule".into(), json!(c.rule));
    out.insert("group".into(), json!(c.group));
    out.insert("backend".into(), json!(c.backend));
    out.insert("authorized".into(), json!(c.authorized));
    out.insert("truncated_path".into(), json!(c.truncated_path));
    let a = &c.actor;
    out.insert("pid".into(), json!(a.pid));
    out.insert("ppid".into(), json!(a.ppid));
    out.insert("exe".into(), json!(a.exe.as_deref().map(display_path)));
    out.insert(
        "cmdline".into(),
        json!(a.cmdline.as_deref().map(display_path)),
    );
    out.insert("uid".into(), json!(a.uid));
    out.insert("user".into(), json!(a.user));
    out.insert("login_uid".into(), json!(a.login_uid));
    out.insert("login_user".into(), json!(a.login_user));
    out.insert("container_id".into(), json!(a.container_id));
    out.insert("comm".into(), json!(a.comm));
    Value::Object(out)
}

/// Who did it, in one cell: `exe (pid N, user)`, or `unknown`.
pub fn actor_cell(c: &ChangeRecord) -> String {
    let a = &c.actor;
    let Some(pid) = a.pid else {
        return "unknown".into();
    };
    let name = a
        .exe
        .as_deref()
        .map(display_path)
        .or_else(|| a.comm.clone())
        .unwrap_or_else(|| "?".into());
    let user = match (&a.user, a.uid) {
        (Some(user), _) => user.clone(),
        (None, Some(uid)) => uid.to_string(),
        _ => "?".into(),
    };
    let login = match (&a.login_user, a.login_uid) {
        (Some(login), _) if Some(login) != a.user.as_ref() => format!(", login {login}"),
        (None, Some(uid)) if Some(uid) != a.uid => format!(", login uid {uid}"),
        _ => String::new(),
    };
    format!("{name} (pid {pid}, {user}{login})")
}
