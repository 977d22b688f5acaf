//! The query commands (`fim who`, `events`, `sql`, `diff`, `status`) on stores with known
//! rows, through the real binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fim::store::{
    Actor, ChangeRecord, ContentRecord, DaemonState, HealthRecord, Heartbeat, Store, StoreOp,
    activity,
};
use serde_json::Value;

fn fim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fim"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running fim")
}

fn json_lines(out: &Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

const SEC: i64 = 1_000_000_000;
const T0: i64 = 1_795_846_800 * SEC; // 2026-11-28T06:20:00Z

fn change(t: i64, act: i64, path: &str, new_path: Option<&str>, pid: u32) -> ChangeRecord {
    ChangeRecord {
        time_ns: T0 + t * SEC,
        host: "h".into(),
        activity: act,
        path: path.as_bytes().to_vec(),
        new_path: new_path.map(|p| p.as_bytes().to_vec()),
        rule: Some("etc".into()),
        group: Some(if pid == 9 { "other" } else { "system" }.into()),
        backend: "lsm".into(),
        authorized: pid == 3,
        actor: Actor {
            pid: Some(pid),
            exe: Some(format!("/usr/bin/tool{pid}").into_bytes()),
            uid: Some(1000 + pid),
            ..Actor::default()
        },
        ..ChangeRecord::default()
    }
}

fn hash(text: &[u8]) -> String {
    blake3::hash(text).to_hex().to_string()
}

/// A store with a renamed file's history, an unrelated file and a file with two kept
/// contents.
fn store(dir: &Path) -> PathBuf {
    let path = dir.join("fim.db");
    let mut store = Store::open_path(&path).unwrap();
    let mut update_c = change(6, activity::UPDATE, "/etc/c", None, 6);
    update_c.hash_before = Some(hash(b"one\n"));
    update_c.hash_after = Some(hash(b"two\n"));
    update_c.changed = vec!["content".into()];
    let mut ops = vec![
        StoreOp::Change(change(1, activity::CREATE, "/etc/a.tmp", None, 1)),
        StoreOp::Change(change(2, activity::UPDATE, "/etc/a.tmp", None, 2)),
        StoreOp::Change(change(3, activity::RENAME, "/etc/a.tmp", Some("/etc/a"), 3)),
        StoreOp::Change(change(4, activity::SET_ATTRIBUTES, "/etc/a", None, 4)),
        StoreOp::Change(change(5, activity::DELETE, "/etc/b", None, 9)),
        StoreOp::Change(update_c),
    ];
    for text in [&b"one\n"[..], b"two\n"] {
        ops.push(StoreOp::Content(ContentRecord {
            blake3: *blake3::hash(text).as_bytes(),
            content: text.to_vec(),
            stored_at_ns: T0,
        }));
    }
    store.write(&ops).unwrap();
    path
}

fn ids(lines: &[Value]) -> Vec<i64> {
    lines.iter().map(|l| l["id"].as_i64().unwrap()).collect()
}

#[test]
fn who_follows_the_file_back_through_its_rename() {
    let dir = tempfile::tempdir().unwrap();
    let db = store(dir.path());
    let out = fim(&["who", "/etc/a", "--json", "--store", db.to_str().unwrap()]);
    let lines = json_lines(&out);
    assert_eq!(ids(&lines), [4, 3, 2, 1]);
    let names: Vec<&str> = lines.iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["/etc/a", "/etc/a", "/etc/a.tmp", "/etc/a.tmp"]);
    assert_eq!(lines[1]["activity"], "rename");
    assert_eq!(lines[1]["new_path"], "/etc/a");
    assert_eq!(lines[0]["exe"], "/usr/bin/tool4");
    assert_eq!(lines[0]["uid"], 1004);
    // The table names the actor.
    let out = fim(&["who", "/etc/a", "--store", db.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("/usr/bin/tool3 (pid 3, 1003)"), "{text}");
    assert!(text.contains("/etc/a.tmp -> /etc/a"), "{text}");
    // --limit counts changes across names.
    let out = fim(&[
        "who",
        "/etc/a",
        "--json",
        "--limit",
        "3",
        "--store",
        db.to_str().unwrap(),
    ]);
    assert_eq!(ids(&json_lines(&out)), [4, 3, 2]);
}

#[test]
fn events_filters_combine() {
    let dir = tempfile::tempdir().unwrap();
    let db = store(dir.path());
    let run = |args: &[&str]| {
        let mut all = vec!["events", "--json", "--store", db.to_str().unwrap()];
        all.extend_from_slice(args);
        ids(&json_lines(&fim(&all)))
    };
    assert_eq!(run(&[]), [6, 5, 4, 3, 2, 1]);
    assert_eq!(run(&["--activity", "update"]), [6, 2]);
    assert_eq!(
        run(&["--activity", "create", "--activity", "delete"]),
        [5, 1]
    );
    assert_eq!(run(&["--path", "/etc/a*"]), [4, 3, 2, 1]);
    assert_eq!(run(&["--pid", "4"]), [4]);
    assert_eq!(run(&["--exe", "/usr/bin/tool2"]), [2]);
    assert_eq!(run(&["--uid", "1009"]), [5]);
    assert_eq!(run(&["--group", "other"]), [5]);
    assert_eq!(run(&["--authorized", "true"]), [3]);
    assert_eq!(run(&["--since", "2026-11-28T06:20:04Z"]), [6, 5, 4]);
    assert_eq!(
        run(&[
            "--since",
            "2026-11-28T06:20:02Z",
            "--until",
            "2026-11-28T06:20:03Z"
        ]),
        [3, 2]
    );
    assert_eq!(run(&["--limit", "2"]), [6, 5]);
    let bad = fim(&[
        "events",
        "--since",
        "yesterday",
        "--store",
        db.to_str().unwrap(),
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("RFC 3339"));
}

#[test]
fn sql_reads_and_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let db = store(dir.path());
    let db = db.to_str().unwrap();
    let out = fim(&[
        "sql",
        "SELECT count(*) AS n FROM changes",
        "--json",
        "--store",
        db,
    ]);
    assert_eq!(json_lines(&out), [serde_json::json!({"n": 6})]);
    let out = fim(&[
        "sql",
        "SELECT FileSystemPath, ChangeCategory FROM ConfigurationChange WHERE InitiatingProcessId = 9",
        "--json",
        "--store",
        db,
    ]);
    assert_eq!(
        json_lines(&out),
        [serde_json::json!({"FileSystemPath": "/etc/b", "ChangeCategory": "Removed"})]
    );
    for write in [
        "DELETE FROM changes",
        "INSERT INTO meta VALUES ('a', 'b')",
        "DROP TABLE baseline",
        "PRAGMA writable_schema = 1",
    ] {
        let out = fim(&["sql", write, "--store", db]);
        assert!(!out.status.success(), "{write} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("read-only") || err.contains("readonly"),
            "{write}: {err}"
        );
    }
    let out = fim(&[
        "sql",
        "SELECT count(*) AS n FROM changes",
        "--json",
        "--store",
        db,
    ]);
    assert_eq!(json_lines(&out), [serde_json::json!({"n": 6})]);
}

#[test]
fn diff_shows_the_content_when_it_was_kept() {
    let dir = tempfile::tempdir().unwrap();
    let db = store(dir.path());
    let db = db.to_str().unwrap();
    let out = fim(&["diff", "/etc/c", "--json", "--store", db]);
    let value = &json_lines(&out)[0];
    assert_eq!(value["to"]["id"], 6);
    assert_eq!(value["hash_before"], hash(b"one\n"));
    assert_eq!(value["hash_after"], hash(b"two\n"));
    let text = value["diff"].as_str().unwrap();
    assert!(text.contains("-one\n") && text.contains("+two\n"), "{text}");
    // Without kept content: the metadata and why there is no diff.
    let out = fim(&["diff", "/etc/a", "--store", db]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("to:      #4"), "{text}");
    assert!(text.contains("from:    #3"), "{text}");
    // --from/--to by id.
    let out = fim(&[
        "diff", "/etc/a", "--from", "3", "--to", "4", "--json", "--store", db,
    ]);
    let value = &json_lines(&out)[0];
    assert_eq!(
        (value["from"]["id"].as_i64(), value["to"]["id"].as_i64()),
        (Some(3), Some(4))
    );
    let out = fim(&["diff", "/etc/a", "--from", "4", "--to", "3", "--store", db]);
    assert!(!out.status.success());
}

/// `fim status` decides from the heartbeat row: absent (never ran), recent (running or
/// starting, with its age), older than three beats (not running, or stuck), or a clean stop.
#[test]
fn status_tells_from_the_heartbeat_whether_the_daemon_runs() {
    let dir = tempfile::tempdir().unwrap();
    let db = store(dir.path());
    let db = db.to_str().unwrap();
    let json = || json_lines(&fim(&["status", "--json", "--store", db]))[0].clone();
    let text = || {
        let out = fim(&["status", "--store", db]);
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut writer = Store::open_path(Path::new(db)).unwrap();
    // Health rows of a start, a scan and a loss, as the daemon writes them; its pid is no
    // evidence any more (a pid may be reused, or live in another namespace).
    let health = |kind: &str, detail: &str| {
        StoreOp::Health(HealthRecord {
            time_ns: fim::query::now_ns() - 600 * SEC,
            kind: kind.into(),
            backend: Some("tracepoint".into()),
            detail: Some(detail.into()),
            lost_events: if kind == "loss" { 7 } else { 0 },
        })
    };
    writer
        .write(&[
            health(
                "start",
                &format!("fim 0.1.0 pid {} on kernel 6.1", std::process::id()),
            ),
            health("scan", "start: 0 added"),
            health("loss", "7 lost"),
        ])
        .unwrap();

    let value = json();
    assert_eq!(
        (&value["running"], &value["daemon"], &value["heartbeat"]),
        (&Value::Bool(false), &Value::from("never"), &Value::Null),
        "{value}"
    );
    assert_eq!(value["pid"], Value::Null);
    assert_eq!(value["changes"], 6);
    assert_eq!(value["kernel_losses"], 7);
    assert_eq!(value["last_scan"]["detail"], "start: 0 added");
    let out = text();
    assert!(
        out.contains("daemon:          not running (no heartbeat: fim has not run on this store)"),
        "{out}"
    );

    let now = fim::query::now_ns();
    let mut beat = |age_s: i64, state: DaemonState| {
        let heartbeat = Heartbeat {
            time_ns: now - age_s * SEC,
            pid: 4242,
            version: "0.1.0".into(),
            backend: "tracepoint".into(),
            state,
            started_ns: now - 600 * SEC,
            last_scan_ns: Some(now - 590 * SEC),
            kernel_records: 1234,
            kernel_lost: 7,
            jobs: 99,
            queue_depth: 3,
        };
        writer.write(&[StoreOp::Heartbeat(heartbeat)]).unwrap();
    };

    beat(2, DaemonState::Running);
    let value = json();
    assert_eq!(value["running"], true, "{value}");
    assert_eq!(value["daemon"], "running");
    assert_eq!(value["pid"], 4242);
    assert_eq!(value["backend"], "tracepoint");
    assert!(value["uptime_s"].as_i64().unwrap() >= 600, "{value}");
    let heartbeat = &value["heartbeat"];
    let age = heartbeat["age_s"].as_i64().unwrap();
    assert!((2..30).contains(&age), "{value}");
    assert_eq!(
        (&heartbeat["kernel_records"], &heartbeat["kernel_lost"]),
        (&Value::from(1234), &Value::from(7))
    );
    assert_eq!(heartbeat["queue_depth"], 3);
    assert!(heartbeat["last_scan"].as_str().is_some(), "{value}");
    let out = text();
    assert!(
        out.contains("daemon:          running (pid 4242, backend tracepoint, up 10 min, since "),
        "{out}"
    );
    assert!(
        out.contains("; heartbeat ") && out.contains(" s ago)"),
        "{out}"
    );

    beat(1, DaemonState::Starting);
    let value = json();
    assert_eq!(
        (&value["running"], &value["daemon"]),
        (&Value::Bool(true), &Value::from("starting"))
    );
    let out = text();
    assert!(
        out.contains(
            "daemon:          starting: the start scan is comparing the baseline (pid 4242"
        ),
        "{out}"
    );

    // Three beats missed: not running, or stuck; the same state a few seconds younger runs.
    beat(25, DaemonState::Running);
    assert_eq!(json()["daemon"], "running");
    beat(180, DaemonState::Running);
    let value = json();
    assert_eq!(
        (&value["running"], &value["daemon"], &value["pid"]),
        (&Value::Bool(false), &Value::from("stale"), &Value::Null),
        "{value}"
    );
    assert_eq!(value["heartbeat"]["pid"], 4242);
    let out = text();
    assert!(
        out.contains("daemon:          fim's last heartbeat was 3 min ago: not running, or stuck (pid 4242, backend tracepoint, "),
        "{out}"
    );

    beat(3 * 3600, DaemonState::Stopped);
    let value = json();
    assert_eq!(
        (&value["running"], &value["daemon"]),
        (&Value::Bool(false), &Value::from("stopped"))
    );
    let out = text();
    assert!(
        out.contains("daemon:          not running (stopped 3 h ago, "),
        "{out}"
    );
}

#[test]
fn a_missing_store_is_an_error_and_is_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("none.db");
    for verb in [
        &["status"][..],
        &["who", "/etc/a"],
        &["events"],
        &["sql", "SELECT 1"],
    ] {
        let mut args = verb.to_vec();
        args.extend(["--store", db.to_str().unwrap()]);
        let out = fim(&args);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("no store at"));
        assert!(!db.exists());
    }
}

#[test]
fn hostile_names_are_escaped_in_tables() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fim.db");
    let mut store = Store::open_path(&path).unwrap();
    let mut c = change(1, activity::CREATE, "/etc/x", None, 1);
    c.path = b"/etc/new\nline\x1b[31m\xff".to_vec();
    store.write(&[StoreOp::Change(c)]).unwrap();
    let out = fim(&["events", "--store", path.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("/etc/new\\nline\\u{1b}[31m\\xff"), "{text}");
    assert_eq!(text.lines().count(), 2, "{text}");
    let lines = json_lines(&fim(&[
        "events",
        "--json",
        "--store",
        path.to_str().unwrap(),
    ]));
    assert_eq!(
        lines[0]["path_hex"],
        fim::baseline::hex(b"/etc/new\nline\x1b[31m\xff")
    );
}
