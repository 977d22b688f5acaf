//! Change records as OCSF 1.x File System Activity events (class 1001), the output contract
//! other tools parse (docs/output.md).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use serde_json::{Map, Value, json};

use crate::baseline::{EntryFlags, FileKind};
use crate::store::{ChangeRecord, activity};

/// The OCSF schema version the events follow.
pub const OCSF_VERSION: &str = "1.3.0";

/// What every event shares.
#[derive(Debug, Clone)]
pub struct OcsfContext {
    pub hostname: String,
    /// fim's version (`metadata.product.version`).
    pub version: String,
    /// `/etc/machine-id` (`device.uid`): the host's stable identity, which a host name is not.
    pub machine_id: Option<String>,
}

impl OcsfContext {
    pub fn new(hostname: String) -> OcsfContext {
        let machine_id = std::fs::read_to_string("/etc/machine-id")
            .ok()
            .map(|id| id.trim().to_string())
            .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()));
        OcsfContext {
            hostname,
            version: env!("CARGO_PKG_VERSION").to_string(),
            machine_id,
        }
    }

    /// `device`: this host. Its kind (server, desktop, ...) is not something fim knows, so
    /// `type_id` is 0 Unknown, as OCSF asks rather than a guess.
    fn device(&self) -> Value {
        let mut device = json!({
            "hostname": self.hostname,
            "type_id": 0,
            "type": "Unknown",
            "os": {"name": "Linux", "type_id": 200, "type": "Linux"},
        });
        if let Some(id) = &self.machine_id {
            device["uid"] = json!(id);
        }
        device
    }

    fn metadata(&self) -> Value {
        json!({
            "version": OCSF_VERSION,
            "product": {"name": "fim", "vendor_name": "fim", "version": self.version},
        })
    }
}

pub fn activity_name(id: i64) -> &'static str {
    match id {
        activity::CREATE => "Create",
        activity::UPDATE => "Update",
        activity::DELETE => "Delete",
        activity::RENAME => "Rename",
        activity::SET_ATTRIBUTES => "Set Attributes",
        activity::SET_SECURITY => "Set Security",
        _ => "Other",
    }
}

/// The `activity_id` written for a change's activity: one of the contract's ids (docs/output.md), anything else as 99 (Other), so that `activity_name` names it and
/// `type_uid` (100100 + id) stays in range whatever the record holds.
pub fn activity_id(id: i64) -> i64 {
    match id {
        activity::CREATE
        | activity::UPDATE
        | activity::DELETE
        | activity::RENAME
        | activity::SET_ATTRIBUTES
        | activity::SET_SECURITY => id,
        _ => activity::OTHER,
    }
}

/// OCSF `file.type_id`.
pub fn type_id(kind: Option<FileKind>) -> i64 {
    match kind {
        None => 0,
        Some(FileKind::File) => 1,
        Some(FileKind::Dir) => 2,
        Some(FileKind::Char) => 3,
        Some(FileKind::Block) => 4,
        Some(FileKind::Socket) => 5,
        Some(FileKind::Fifo) => 6,
        Some(FileKind::Symlink) => 7,
    }
}

/// A path as a JSON string. Linux paths are bytes: a path that is not UTF-8 is written with
/// U+FFFD in place of the bad bytes, and `raw` receives its exact bytes as hex so nothing is
/// lost.
fn path_text(path: &[u8], raw: &mut Map<String, Value>, key: &str) -> String {
    match std::str::from_utf8(path) {
        Ok(text) => text.to_string(),
        Err(_) => {
            raw.insert(key.to_string(), json!(crate::baseline::hex(path)));
            String::from_utf8_lossy(path).into_owned()
        }
    }
}

/// An OCSF `file` object: path, name, parent folder, extension (when the name has one) and
/// type. OCSF requires `name`; a path without a last component (`/`) is named by itself.
fn file_object(
    path: &[u8],
    type_id: i64,
    raw: &mut Map<String, Value>,
    key: &str,
) -> Map<String, Value> {
    let as_path = Path::new(OsStr::from_bytes(path));
    let mut file = Map::new();
    let text = path_text(path, raw, key);
    let name = as_path
        .file_name()
        .map_or_else(|| text.clone(), |n| n.to_string_lossy().into_owned());
    file.insert("path".into(), json!(text));
    if let Some(ext) = as_path
        .extension()
        .filter(|e| type_id != 2 && !e.is_empty())
    {
        file.insert("ext".into(), json!(ext.to_string_lossy()));
    }
    file.insert("name".into(), json!(name));
    if let Some(parent) = as_path.parent() {
        file.insert("parent_folder".into(), json!(parent.to_string_lossy()));
    }
    file.insert("type_id".into(), json!(type_id));
    file.insert("type".into(), json!(type_name(type_id)));
    file
}

/// OCSF's caption of a `file.type_id`.
fn type_name(type_id: i64) -> &'static str {
    match type_id {
        1 => "Regular File",
        2 => "Folder",
        3 => "Character Device",
        4 => "Block Device",
        5 => "Local Socket",
        6 => "Named Pipe",
        7 => "Symbolic Link",
        _ => "Unknown",
    }
}

/// `user`: the uid, its name when known, and its kind as far as a uid says it: root is the
/// administrator; any other uid's kind (person, service account) is not known, so 0 Unknown.
fn user_object(a: &crate::store::Actor) -> Map<String, Value> {
    let mut user = Map::new();
    if let Some(uid) = a.uid {
        user.insert("uid".into(), json!(uid.to_string()));
        let (type_id, type_name) = if uid == 0 {
            (2, "Admin")
        } else {
            (0, "Unknown")
        };
        user.insert("type_id".into(), json!(type_id));
        user.insert("type".into(), json!(type_name));
    }
    if let Some(name) = &a.user {
        user.insert("name".into(), json!(name));
    }
    user
}

/// `actor.process`: empty when no process is known (a change found by a scan).
fn process_object(
    a: &crate::store::Actor,
    user: &Map<String, Value>,
    raw: &mut Map<String, Value>,
) -> Map<String, Value> {
    let mut process = Map::new();
    if let Some(pid) = a.pid {
        process.insert("pid".into(), json!(pid));
        // The kernel's start time tells apart two processes that had the same pid.
        if let Some(start) = a.start_time_ns {
            process.insert("uid".into(), json!(format!("{pid}-{start}")));
        }
    }
    let name = a
        .exe
        .as_deref()
        .and_then(|exe| Path::new(OsStr::from_bytes(exe)).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .or_else(|| a.comm.clone());
    if let Some(name) = name {
        process.insert("name".into(), json!(name));
    }
    if let Some(exe) = &a.exe {
        // What a process executes is a regular file (execve refuses anything else).
        process.insert(
            "file".into(),
            Value::Object(file_object(exe, 1, raw, "exe_hex")),
        );
    }
    if let Some(cmdline) = &a.cmdline {
        process.insert("cmd_line".into(), json!(String::from_utf8_lossy(cmdline)));
    }
    if let Some(ppid) = a.ppid {
        process.insert("parent_process".into(), json!({"pid": ppid}));
    }
    if let Some(start) = a.start_time_ns {
        process.insert("created_time".into(), json!(start / 1_000_000));
    }
    if !user.is_empty() {
        process.insert("user".into(), Value::Object(user.clone()));
    }
    process
}

/// One line a person can read: what happened to which path, by whom.
fn message(change: &ChangeRecord, activity: &str, file: &Map<String, Value>) -> String {
    let path = file["path"].as_str().unwrap_or_default();
    let what = if change.flags.has(EntryFlags::UNNAMED) {
        format!("{activity} of a file without a name (O_TMPFILE) in {path}")
    } else {
        format!("{activity} {path}")
    };
    let to = change
        .new_path
        .as_deref()
        .map(|p| format!(" to {}", String::from_utf8_lossy(p)))
        .unwrap_or_default();
    let by = match (&change.actor.exe, change.actor.pid) {
        (Some(exe), Some(pid)) => format!(" by {} (pid {pid})", String::from_utf8_lossy(exe)),
        (None, Some(pid)) => format!(" by pid {pid}"),
        _ => " (found by a scan; the process is unknown)".to_string(),
    };
    format!("{what}{to}{by}")
}

/// `observables`: the values of this event a SIEM indexes for pivoting.
fn observables(event: &Map<String, Value>) -> Value {
    let mut list = Vec::new();
    let mut add = |name: &str, type_id: i64, value: Option<&Value>| {
        if let Some(Value::String(value)) = value {
            list.push(json!({"name": name, "type_id": type_id, "value": value}));
        }
    };
    add(
        "device.hostname",
        1,
        event.get("device").and_then(|d| d.get("hostname")),
    );
    add(
        "file.name",
        7,
        event.get("file").and_then(|f| f.get("name")),
    );
    add(
        "file_result.name",
        7,
        event.get("file_result").and_then(|f| f.get("name")),
    );
    let process = event.get("actor").and_then(|a| a.get("process"));
    add("actor.process.name", 9, process.and_then(|p| p.get("name")));
    add(
        "actor.process.cmd_line",
        13,
        process.and_then(|p| p.get("cmd_line")),
    );
    let user = event.get("actor").and_then(|a| a.get("user"));
    add("actor.user.name", 4, user.and_then(|u| u.get("name")));
    Value::Array(list)
}

/// The OCSF event for one change.
pub fn event(change: &ChangeRecord, ctx: &OcsfContext) -> Value {
    let mut raw = Map::new();
    let mut file = file_object(&change.path, type_id(change.kind), &mut raw, "path_hex");
    if let Some(size) = change.size {
        file.insert("size".into(), json!(size));
    }
    if let Some(hash) = &change.hash_after {
        file.insert(
            "hashes".into(),
            json!([{"algorithm_id": 99, "algorithm": "BLAKE3", "value": hash}]),
        );
    }
    let a = &change.actor;
    let user = user_object(a);
    let process = process_object(a, &user, &mut raw);
    let mut actor = Map::new();
    actor.insert("process".into(), Value::Object(process));
    actor.insert("user".into(), Value::Object(user));

    let mut fim = Map::new();
    fim.insert("rule".into(), json!(change.rule));
    fim.insert("group".into(), json!(change.group));
    fim.insert("backend".into(), json!(change.backend));
    fim.insert("changed".into(), json!(change.changed));
    fim.insert(
        "previous".into(),
        change.previous.clone().unwrap_or(Value::Null),
    );
    fim.insert("authorized".into(), json!(change.authorized));
    fim.insert("truncated_path".into(), json!(change.truncated_path));
    if let Some(used) = &change.used_path {
        // The name the change was made through (a hard link, a bind mount, another mount
        // namespace); `file.path` is the watched name.
        fim.insert(
            "used_path".into(),
            json!(path_text(used, &mut raw, "used_path_hex")),
        );
    }
    let flags = change.flags.names();
    if !flags.is_empty() {
        // Why `file.hashes` is missing: too_large, unstable, unreadable; or `unnamed`.
        fim.insert("flags".into(), json!(flags));
    }
    if let Some(uid) = a.login_uid {
        fim.insert("login_uid".into(), json!(uid));
    }
    if let Some(name) = &a.login_user {
        fim.insert("login_user".into(), json!(name));
    }
    if let Some(id) = &a.container_id {
        fim.insert("container_id".into(), json!(id));
    }
    if a.pid.is_none() {
        fim.insert("attribution".into(), json!("unknown"));
    }

    let mut event = Map::new();
    let id = activity_id(change.activity);
    event.insert("class_uid".into(), json!(1001));
    event.insert("class_name".into(), json!("File System Activity"));
    event.insert("category_uid".into(), json!(1));
    event.insert("category_name".into(), json!("System Activity"));
    event.insert("activity_id".into(), json!(id));
    event.insert("activity_name".into(), json!(activity_name(id)));
    event.insert("type_uid".into(), json!(100_100 + id));
    event.insert(
        "type_name".into(),
        json!(format!("File System Activity: {}", activity_name(id))),
    );
    event.insert("severity_id".into(), json!(1));
    event.insert("severity".into(), json!("Informational"));
    // The syscall tracepoints and fexit report operations that succeeded, and a scan saw the
    // result on disk; an lsm hook runs before the operation, which another LSM or the file
    // system may still refuse: its outcome is known only when examining the path afterwards
    // showed the change. (OCSF 1.3 has no "unknown" status for this class: left out.)
    if change.backend != "lsm" || !change.changed.is_empty() {
        event.insert("status_id".into(), json!(1));
        event.insert("status".into(), json!("Success"));
    }
    event.insert("time".into(), json!(change.time_ns / 1_000_000));
    // `time` is epoch milliseconds, which is UTC.
    event.insert("timezone_offset".into(), json!(0));
    event.insert(
        "message".into(),
        json!(message(change, activity_name(id), &file)),
    );
    if let Some(new_path) = &change.new_path {
        // A rename keeps the object (its inode), so the result has the same type.
        let result = file_object(new_path, type_id(change.kind), &mut raw, "new_path_hex");
        event.insert("file_result".into(), Value::Object(result));
    }
    event.insert("file".into(), Value::Object(file));
    event.insert("actor".into(), Value::Object(actor));
    event.insert("device".into(), ctx.device());
    event.insert("metadata".into(), ctx.metadata());
    let observables = observables(&event);
    event.insert("observables".into(), observables);
    if !raw.is_empty() {
        fim.insert("raw".into(), Value::Object(raw));
    }
    event.insert("unmapped".into(), json!({ "fim": fim }));
    Value::Object(event)
}

/// The baseline failed authentication at start: an OCSF Detection Finding (class 2004), so
/// the alert reaches whatever reads fim's change events.
pub fn integrity_finding(
    report: &crate::store::IntegrityReport,
    time_ns: i64,
    ctx: &OcsfContext,
) -> Value {
    let paths: Vec<String> = report.logged_paths().take(100).collect();
    // The rows that failed: evidence (a file whose type the row can no longer vouch for) and
    // the affected resources.
    let evidences: Vec<Value> = paths
        .iter()
        .map(|path| {
            let mut raw = Map::new();
            let file = file_object(path.as_bytes(), 0, &mut raw, "path_hex");
            json!({"file": file})
        })
        .collect();
    let resources: Vec<Value> = paths
        .iter()
        .map(|path| json!({"name": path, "type": "baseline row"}))
        .collect();
    let mut finding = json!({
        "class_uid": 2004,
        "class_name": "Detection Finding",
        "category_uid": 2,
        "category_name": "Findings",
        "activity_id": 1,
        "activity_name": "Create",
        "type_uid": 200401,
        "type_name": "Detection Finding: Create",
        "severity_id": 5,
        "severity": "Critical",
        "status_id": 1,
        "status": "New",
        // A MAC that does not verify under the key is not a heuristic.
        "confidence_id": 3,
        "confidence": "High",
        "time": time_ns / 1_000_000,
        "timezone_offset": 0,
        "message": format!("fim baseline integrity check failed: {}", report.summary()),
        "finding_info": {
            "uid": format!("fim-baseline-integrity-{time_ns}"),
            "title": "Stored baseline failed authentication",
            "desc": report.summary(),
            "types": ["Tampering"],
            "analytic": {
                "name": "baseline-integrity",
                "uid": "fim-baseline-integrity",
                "type_id": 1,
                "type": "Rule",
            },
        },
        "device": ctx.device(),
        "metadata": ctx.metadata(),
        "observables": [{"name": "device.hostname", "type_id": 1, "value": ctx.hostname}],
        "unmapped": {"fim": {
            "integrity": {
                "rows": report.rows,
                "bad_rows": report.bad_rows,
                "bad_paths": paths,
                "set_mismatch": report.set_mismatch,
                "key_problems": report.key_problems,
            },
        }},
    });
    if !evidences.is_empty() {
        finding["evidences"] = Value::Array(evidences);
        finding["resources"] = Value::Array(resources);
    }
    finding
}
