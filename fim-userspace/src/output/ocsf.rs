//! Change records as OCSF 1.x File System Activity events (class 1001), the output contract
//! other tools parse (docs/output.md).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use serde_json::{Map, Value, json};

use crate::baseline::FileKind;
use crate::store::{ChangeRecord, activity};

/// The OCSF schema version the events follow.
pub const OCSF_VERSION: &str = "1.3.0";

/// What every event shares.
#[derive(Debug, Clone)]
pub struct OcsfContext {
    pub hostname: String,
    /// fim's version (`metadata.product.version`).
    pub version: String,
}

impl OcsfContext {
    pub fn new(hostname: String) -> OcsfContext {
        OcsfContext {
            hostname,
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
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

fn file_object(path: &[u8], raw: &mut Map<String, Value>, key: &str) -> Map<String, Value> {
    let as_path = Path::new(OsStr::from_bytes(path));
    let mut file = Map::new();
    file.insert("path".into(), json!(path_text(path, raw, key)));
    if let Some(name) = as_path.file_name() {
        file.insert("name".into(), json!(name.to_string_lossy()));
    }
    if let Some(parent) = as_path.parent() {
        file.insert("parent_folder".into(), json!(parent.to_string_lossy()));
    }
    file
}

/// The OCSF event for one change.
pub fn event(change: &ChangeRecord, ctx: &OcsfContext) -> Value {
    let mut raw = Map::new();
    let mut file = file_object(&change.path, &mut raw, "path_hex");
    file.insert("type_id".into(), json!(type_id(change.kind)));
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
    let mut process = Map::new();
    if let Some(pid) = a.pid {
        process.insert("pid".into(), json!(pid));
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
        process.insert(
            "file".into(),
            json!({"path": path_text(exe, &mut raw, "exe_hex")}),
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
    let mut user = Map::new();
    if let Some(uid) = a.uid {
        user.insert("uid".into(), json!(uid.to_string()));
    }
    if let Some(name) = &a.user {
        user.insert("name".into(), json!(name));
    }
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
    let flags = change.flags.names();
    if !flags.is_empty() {
        // Why `file.hashes` is missing: too_large, unstable, unreadable.
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
    event.insert("time".into(), json!(change.time_ns / 1_000_000));
    event.insert("file".into(), Value::Object(file));
    if let Some(new_path) = &change.new_path {
        let result = file_object(new_path, &mut raw, "new_path_hex");
        event.insert("file_result".into(), Value::Object(result));
    }
    event.insert("actor".into(), Value::Object(actor));
    event.insert("device".into(), json!({"hostname": ctx.hostname}));
    event.insert(
        "metadata".into(),
        json!({
            "version": OCSF_VERSION,
            "product": {"name": "fim", "vendor_name": "fim", "version": ctx.version},
        }),
    );
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
    json!({
        "class_uid": 2004,
        "class_name": "Detection Finding",
        "category_uid": 2,
        "category_name": "Findings",
        "activity_id": 1,
        "activity_name": "Create",
        "type_uid": 200401,
        "severity_id": 5,
        "severity": "Critical",
        "status_id": 1,
        "time": time_ns / 1_000_000,
        "message": format!("fim baseline integrity check failed: {}", report.summary()),
        "finding_info": {
            "uid": format!("fim-baseline-integrity-{time_ns}"),
            "title": "Stored baseline failed authentication",
            "desc": report.summary(),
            "types": ["Tampering"],
        },
        "device": {"hostname": ctx.hostname},
        "metadata": {
            "version": OCSF_VERSION,
            "product": {"name": "fim", "vendor_name": "fim", "version": ctx.version},
        },
        "unmapped": {"fim": {
            "integrity": {
                "rows": report.rows,
                "bad_rows": report.bad_rows,
                "bad_paths": paths,
                "set_mismatch": report.set_mismatch,
                "key_problems": report.key_problems,
            },
        }},
    })
}
