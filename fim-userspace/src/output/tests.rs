use std::os::unix::ffi::OsStrExt;

use serde_json::json;

use super::*;
use crate::baseline::FileKind;
use crate::config::Output;
use crate::store::{Actor, ChangeRecord, activity};

fn change() -> ChangeRecord {
    ChangeRecord {
        time_ns: 1_700_000_000_123_456_789,
        host: "h".into(),
        activity: activity::UPDATE,
        path: b"/etc/passwd".to_vec(),
        rule: Some("etc".into()),
        group: Some("system".into()),
        backend: "lsm".into(),
        changed: vec!["content".into(), "size".into()],
        previous: Some(json!({"hash": "aa", "size": 1, "mode": 420, "uid": 0, "gid": 0})),
        hash_before: Some("aa".into()),
        hash_after: Some("bb".into()),
        size: Some(2),
        kind: Some(FileKind::File),
        authorized: false,
        truncated_path: false,
        actor: Actor {
            pid: Some(7),
            ppid: Some(1),
            exe: Some(b"/usr/bin/vi".to_vec()),
            cmdline: Some(b"vi /etc/passwd".to_vec()),
            uid: Some(0),
            user: Some("root".into()),
            login_uid: Some(1000),
            login_user: Some("alice".into()),
            container_id: None,
            comm: Some("vi".into()),
            start_time_ns: Some(1_700_000_000_000_000_000),
        },
        ..ChangeRecord::default()
    }
}

fn ctx() -> OcsfContext {
    OcsfContext {
        hostname: "web-1".into(),
        version: "0.1.0".into(),
        machine_id: Some("0123456789abcdef0123456789abcdef".into()),
    }
}

#[test]
fn update_event_has_the_contract_fields() {
    let e = event(&change(), &ctx());
    let expected = json!({
        "class_uid": 1001, "class_name": "File System Activity",
        "category_uid": 1, "category_name": "System Activity",
        "activity_id": 3, "activity_name": "Update",
        "type_uid": 100103, "type_name": "File System Activity: Update",
        "severity_id": 1, "severity": "Informational",
        "status_id": 1, "status": "Success",
        "time": 1_700_000_000_123i64, "timezone_offset": 0,
        "message": "Update /etc/passwd by /usr/bin/vi (pid 7)",
        "file": {
            "path": "/etc/passwd", "name": "passwd", "parent_folder": "/etc",
            "type_id": 1, "type": "Regular File", "size": 2,
            "hashes": [{"algorithm_id": 99, "algorithm": "BLAKE3", "value": "bb"}],
        },
        "actor": {
            "process": {
                "pid": 7, "uid": "7-1700000000000000000", "name": "vi",
                "file": {"path": "/usr/bin/vi", "name": "vi", "parent_folder": "/usr/bin",
                         "type_id": 1, "type": "Regular File"},
                "cmd_line": "vi /etc/passwd", "parent_process": {"pid": 1},
                "created_time": 1_700_000_000_000i64,
                "user": {"uid": "0", "name": "root", "type_id": 2, "type": "Admin"},
            },
            "user": {"uid": "0", "name": "root", "type_id": 2, "type": "Admin"},
        },
        "device": {
            "hostname": "web-1", "uid": "0123456789abcdef0123456789abcdef",
            "type_id": 0, "type": "Unknown",
            "os": {"name": "Linux", "type_id": 200, "type": "Linux"},
        },
        "metadata": {"version": OCSF_VERSION, "product": {"name": "fim", "vendor_name": "fim", "version": "0.1.0"}},
        "observables": [
            {"name": "device.hostname", "type_id": 1, "value": "web-1"},
            {"name": "file.name", "type_id": 7, "value": "passwd"},
            {"name": "actor.process.name", "type_id": 9, "value": "vi"},
            {"name": "actor.process.cmd_line", "type_id": 13, "value": "vi /etc/passwd"},
            {"name": "actor.user.name", "type_id": 4, "value": "root"},
        ],
        "unmapped": {"fim": {
            "rule": "etc", "group": "system", "backend": "lsm",
            "changed": ["content", "size"],
            "previous": {"hash": "aa", "size": 1, "mode": 420, "uid": 0, "gid": 0},
            "authorized": false, "truncated_path": false,
            "login_uid": 1000, "login_user": "alice",
        }},
    });
    assert_eq!(e, expected);
}

#[test]
fn renames_have_file_result_and_type_uid_follows_activity() {
    for id in [1, 3, 4, 5, 6, 7, 99] {
        let mut c = change();
        c.activity = id;
        c.new_path = (id == 5).then(|| b"/etc/passwd.new".to_vec());
        let e = event(&c, &ctx());
        assert_eq!(e["type_uid"], 100100 + id);
        assert_eq!(e["file_result"]["path"] == "/etc/passwd.new", id == 5);
    }
}

#[test]
fn unknown_attribution_is_said_not_invented() {
    let mut c = change();
    c.actor = Actor::default();
    c.backend = "scan".into();
    let e = event(&c, &ctx());
    assert_eq!(e["unmapped"]["fim"]["attribution"], "unknown");
    assert!(e["actor"]["process"].as_object().unwrap().is_empty());
}

#[test]
fn hostile_paths_stay_valid_json_and_lose_nothing() {
    let mut c = change();
    let mut path = b"/etc/new\nline \xff\xfe".to_vec();
    path.extend(std::iter::repeat_n(b'x', 4000));
    c.path = path.clone();
    let line = serde_json::to_string(&event(&c, &ctx())).unwrap();
    assert!(!line.contains('\n'), "one event per line");
    let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
    let hex = parsed["unmapped"]["fim"]["raw"]["path_hex"]
        .as_str()
        .unwrap();
    assert_eq!(hex, crate::baseline::hex(&path));
    assert!(
        parsed["file"]["path"]
            .as_str()
            .unwrap()
            .starts_with("/etc/new\nline ")
    );
}

/// What a scan found (at the start, after a loss) says what kind of object it is and why a
/// regular file has no hash, like a realtime change does.
#[test]
fn scan_drift_events_carry_the_type_and_why_there_is_no_hash() {
    use crate::baseline::{BaselineEntry, DriftItem, EntryFlags};
    let entry = |path: &[u8], kind: FileKind, flags: u32| BaselineEntry {
        path: path.to_vec(),
        kind,
        size: 100 << 30,
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime_ns: 0,
        ctime_ns: 0,
        inode: 1,
        dev: 1,
        blake3: None,
        xattr_digest: None,
        link_target: None,
        flags: EntryFlags(flags),
        errno: None,
        scanned_at_ns: 0,
        nlink: 0,
    };
    let rules = crate::config::RuleSet::new(Vec::new());
    let added = |path: &[u8], kind, flags| {
        let item = DriftItem::Added(entry(path, kind, flags));
        event(
            &ChangeRecord::from_drift_item(&item, &rules, "h", 0),
            &ctx(),
        )
    };
    let fifo = added(b"/etc/fifo", FileKind::Fifo, 0);
    assert_eq!(fifo["file"]["type_id"], 6);
    assert!(fifo["unmapped"]["fim"].get("flags").is_none());
    assert_eq!(added(b"/etc/null", FileKind::Char, 0)["file"]["type_id"], 3);
    let big = added(b"/etc/big", FileKind::File, EntryFlags::TOO_LARGE);
    assert_eq!(big["file"]["type_id"], 1);
    assert!(big["file"].get("hashes").is_none());
    assert_eq!(big["file"]["size"], 100u64 << 30);
    assert_eq!(big["unmapped"]["fim"]["flags"], json!(["too_large"]));
    let gone = DriftItem::Removed(entry(b"/etc/link", FileKind::Symlink, 0));
    let gone = event(
        &ChangeRecord::from_drift_item(&gone, &rules, "h", 0),
        &ctx(),
    );
    assert_eq!(gone["file"]["type_id"], 7);
}

#[test]
fn file_output_rotates_by_size_and_keeps_n() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fim.json");
    let output = Output::File {
        path: path.clone(),
        max_size_bytes: 4096,
        keep: 2,
    };
    let mut sink = OutputSink::open(&output, ctx()).unwrap();
    for _ in 0..40 {
        sink.write(&change()).unwrap();
    }
    sink.flush().unwrap();
    let names: Vec<String> = {
        let mut v: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().as_bytes().escape_ascii().to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names, ["fim.json", "fim.json.1", "fim.json.2"]);
    for name in &names {
        let text = std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert!(text.len() <= 4096, "{name} is {} bytes", text.len());
        for line in text.lines() {
            let e: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(e["class_uid"], 1001);
        }
    }
}

#[test]
fn file_output_reopens_after_an_external_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out/fim.json");
    let output = Output::File {
        path: path.clone(),
        max_size_bytes: 1 << 20,
        keep: 1,
    };
    let mut sink = OutputSink::open(&output, ctx()).unwrap();
    sink.write(&change()).unwrap();
    sink.flush().unwrap();
    std::fs::rename(&path, dir.path().join("moved")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    sink.write(&change()).unwrap();
    sink.flush().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 1, "the new file gets the new line");
}

/// Found by the `ocsf` fuzz target: an activity id near i64::MAX overflowed `type_uid`
/// (100100 + id). Ids outside the contract are written as 99 (Other), consistently.
#[test]
fn an_activity_outside_the_contract_is_written_as_other() {
    // The fuzzer's input: no optional field, activity 0x7fff_ffff_ffff_212e, the rest empty.
    let c = ChangeRecord {
        activity: 0x7fff_ffff_ffff_212e,
        ..ChangeRecord::default()
    };
    for activity in [c.activity, i64::MIN, -1, 0, 2, 8, 100] {
        let e = event(
            &ChangeRecord {
                activity,
                ..c.clone()
            },
            &ctx(),
        );
        assert_eq!(e["activity_id"], 99, "{activity}");
        assert_eq!(e["activity_name"], "Other");
        assert_eq!(e["type_uid"], 100199);
        assert_eq!(e["type_name"], "File System Activity: Other");
    }
    for known in [activity::CREATE, activity::SET_SECURITY, activity::OTHER] {
        let e = event(
            &ChangeRecord {
                activity: known,
                ..c.clone()
            },
            &ctx(),
        );
        assert_eq!(e["activity_id"], known);
        assert_eq!(e["type_uid"], 100100 + known);
    }
}
