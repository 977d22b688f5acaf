//! The SQLite store: WAL mode, the batching writer (persistence at shutdown, failures counted
//! and retried, overflow accounted for), the ConfigurationChange view, the read-only
//! connection, retention, baseline and content round trips.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, bail};
use fim::baseline::{Baseline, BaselineEntry, EntryFlags, FileKind};
use fim::store::{
    Actor, BatchSink, CONFIGURATION_CHANGE_COLUMNS, ChangeRecord, ContentRecord, DaemonState,
    HealthRecord, Heartbeat, Retention, SqliteSink, Store, StoreOp, StoreWriter, WriterSettings,
    activity,
};
use rusqlite::types::Value;

fn change(i: i64) -> ChangeRecord {
    ChangeRecord {
        time_ns: i * 1_000_000_000,
        host: "web-1".to_string(),
        activity: activity::UPDATE,
        path: format!("/etc/file{i}").into_bytes(),
        backend: "tracepoint".to_string(),
        ..ChangeRecord::default()
    }
}

fn count(db: &Path, table: &str) -> i64 {
    let ro = Store::open_read_only(db).unwrap();
    let result = ro.query(&format!("SELECT count(*) FROM {table}")).unwrap();
    match result.rows[0][0] {
        Value::Integer(n) => n,
        ref other => panic!("{other:?}"),
    }
}

fn settings() -> WriterSettings {
    WriterSettings {
        max_batch: 64,
        retry_backoff: Duration::ZERO,
        max_backoff: Duration::ZERO,
        ..WriterSettings::default()
    }
}

#[test]
fn store_is_created_private_and_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let store = Store::open(&state).unwrap();
    assert_eq!(store.journal_mode().unwrap(), "wal");
    assert_eq!(store.path(), state.join("fim.db"));
    let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    // Reopening an existing store works (the schema is created only once).
    drop(store);
    assert_eq!(Store::open(&state).unwrap().journal_mode().unwrap(), "wal");
}

#[test]
fn batching_writer_persists_everything_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let writer = store.spawn_writer(settings()).unwrap();
    for i in 0..1000 {
        writer.send(StoreOp::Change(change(i))).unwrap();
    }
    for i in 0..10 {
        writer
            .send(StoreOp::Health(HealthRecord {
                time_ns: i,
                kind: "events_lost".to_string(),
                backend: Some("lsm".to_string()),
                detail: None,
                lost_events: 3,
            }))
            .unwrap();
    }
    let stats = writer.shutdown().unwrap();
    assert_eq!(stats.rows_written, 1010);
    assert_eq!(stats.write_errors, 0);
    assert_eq!(stats.rows_dropped, 0);
    assert_eq!(stats.pending, 0);
    assert!(stats.largest_batch <= 64, "{stats:?}");
    assert!(stats.batches_committed >= 1010 / 64, "{stats:?}");
    assert_eq!(count(store.path(), "changes"), 1000);
    assert_eq!(count(store.path(), "health"), 10);
}

#[test]
fn flush_returns_once_rows_are_committed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let writer = store
        .spawn_writer(WriterSettings {
            // A long delay: without the flush nothing would be committed yet.
            max_delay: Duration::from_secs(3600),
            ..settings()
        })
        .unwrap();
    for i in 0..5 {
        writer.send(StoreOp::Change(change(i))).unwrap();
    }
    writer.flush().unwrap();
    assert_eq!(count(store.path(), "changes"), 5);
    let history = store.history(b"/etc/file3", 10).unwrap();
    assert_eq!(history, [change(3)]);
    drop(writer);
}

/// Fails the first `failures` batches like a full disk, then records what it is given.
struct FlakySink {
    failures: Arc<AtomicU32>,
    broken: Arc<AtomicBool>,
    written: Arc<Mutex<Vec<StoreOp>>>,
}

impl BatchSink for FlakySink {
    fn write_batch(&mut self, ops: &[StoreOp]) -> Result<()> {
        if self.broken.load(Ordering::SeqCst) {
            bail!("database or disk is full");
        }
        if self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            bail!("database or disk is full");
        }
        self.written.lock().unwrap().extend_from_slice(ops);
        Ok(())
    }
}

fn flaky(failures: u32, broken: bool) -> (FlakySink, Arc<AtomicBool>, Arc<Mutex<Vec<StoreOp>>>) {
    let broken = Arc::new(AtomicBool::new(broken));
    let written = Arc::new(Mutex::new(Vec::new()));
    (
        FlakySink {
            failures: Arc::new(AtomicU32::new(failures)),
            broken: Arc::clone(&broken),
            written: Arc::clone(&written),
        },
        broken,
        written,
    )
}

#[test]
fn failed_writes_are_counted_and_retried_without_loss_or_duplicates() {
    let (sink, _, written) = flaky(3, false);
    let writer = StoreWriter::spawn(sink, settings()).unwrap();
    for i in 0..10 {
        writer.send(StoreOp::Change(change(i))).unwrap();
    }
    // Each flush either sees the retried batch committed or reports the failure.
    let mut attempts = 0;
    while let Err(e) = writer.flush() {
        assert!(e.to_string().contains("disk is full"), "{e}");
        attempts += 1;
        assert!(attempts <= 3, "more failures than injected");
    }
    let stats = writer.shutdown().unwrap();
    assert_eq!(stats.write_errors, 3);
    assert_eq!(stats.rows_written, 10);
    assert_eq!(stats.rows_dropped, 0);
    let expected: Vec<StoreOp> = (0..10).map(|i| StoreOp::Change(change(i))).collect();
    assert_eq!(*written.lock().unwrap(), expected);
}

#[test]
fn overflow_while_broken_is_counted_and_recorded_as_health() {
    let (sink, broken, written) = flaky(0, true);
    let writer = StoreWriter::spawn(
        sink,
        WriterSettings {
            max_pending: 5,
            ..settings()
        },
    )
    .unwrap();
    for i in 0..10 {
        writer.send(StoreOp::Change(change(i))).unwrap();
    }
    // The flush is queued behind the 10 rows, so all were taken in when it fails.
    assert!(writer.flush().is_err());
    assert_eq!(writer.stats().rows_dropped, 5);
    assert_eq!(writer.stats().pending, 5);
    broken.store(false, Ordering::SeqCst);
    writer.flush().unwrap();
    let stats = writer.shutdown().unwrap();
    assert!(stats.write_errors >= 1);
    let written = written.lock().unwrap();
    assert_eq!(written.len(), 6);
    match &written[0] {
        StoreOp::Health(h) => {
            assert_eq!(h.kind, "store_rows_dropped");
            assert_eq!(h.lost_events, 5);
        }
        other => panic!("{other:?}"),
    }
    let kept: Vec<StoreOp> = (5..10).map(|i| StoreOp::Change(change(i))).collect();
    assert_eq!(written[1..], kept[..], "the newest rows are kept");
}

#[test]
fn a_really_full_database_does_not_kill_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let conn = rusqlite::Connection::open(store.path()).unwrap();
    // Cap the database at its current size: every insert now fails with SQLITE_FULL.
    let pages: i64 = conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    let _: i64 = conn
        .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| {
            r.get(0)
        })
        .unwrap();
    let writer = StoreWriter::spawn(
        SqliteSink::new(conn),
        WriterSettings {
            shutdown_attempts: 1,
            ..settings()
        },
    )
    .unwrap();
    let big = ChangeRecord {
        previous: Some(serde_json::json!({ "pad": "x".repeat(100_000) })),
        ..change(1)
    };
    writer.send(StoreOp::Change(big)).unwrap();
    let err = writer.flush().unwrap_err();
    assert!(format!("{err:#}").contains("full"), "{err:#}");
    // Still alive: it answers, counts, and reports what it could not save at shutdown.
    assert!(writer.flush().is_err());
    let stats = writer.shutdown().unwrap();
    assert!(stats.write_errors >= 2, "{stats:?}");
    assert_eq!(stats.rows_written, 0);
    assert_eq!(stats.rows_dropped, 1);
}

#[test]
fn configuration_change_view_uses_azure_column_names() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let record = ChangeRecord {
        time_ns: 1_764_288_000_123_000_000,
        host: "web-1".to_string(),
        activity: activity::UPDATE,
        path: b"/etc/ssh/sshd_config".to_vec(),
        rule: Some("ssh-config".to_string()),
        group: Some("ssh".to_string()),
        backend: "lsm".to_string(),
        changed: vec!["content".to_string(), "size".to_string()],
        previous: Some(
            serde_json::json!({ "hash": "aa", "size": 10, "mode": 420, "uid": 0, "gid": 0 }),
        ),
        hash_before: Some("aa".to_string()),
        hash_after: Some("bb".to_string()),
        size: Some(12),
        authorized: false,
        truncated_path: false,
        actor: Actor {
            pid: Some(4242),
            ppid: Some(1),
            exe: Some(b"/usr/bin/vim.basic".to_vec()),
            cmdline: Some(b"vim /etc/ssh/sshd_config".to_vec()),
            uid: Some(0),
            user: Some("root".to_string()),
            login_uid: Some(1000),
            login_user: Some("alice".to_string()),
            container_id: None,
            comm: Some("vim".to_string()),
            start_time_ns: Some(1_764_287_990_000_000_000),
        },
        ..ChangeRecord::default()
    };
    let mut added = change(7);
    added.activity = activity::CREATE;
    let mut removed = change(8);
    removed.activity = activity::DELETE;
    let mut renamed = change(9);
    renamed.activity = activity::RENAME;
    renamed.new_path = Some(b"/etc/file9.new".to_vec());
    store
        .write(&[
            StoreOp::Change(record),
            StoreOp::Change(added),
            StoreOp::Change(removed),
            StoreOp::Change(renamed),
        ])
        .unwrap();

    let ro = Store::open_read_only(store.path()).unwrap();
    let result = ro
        .query("SELECT * FROM ConfigurationChange ORDER BY TimeGenerated DESC")
        .unwrap();
    assert_eq!(result.columns, CONFIGURATION_CHANGE_COLUMNS);
    let row: std::collections::HashMap<&str, &Value> = result
        .columns
        .iter()
        .map(String::as_str)
        .zip(result.rows[0].iter())
        .collect();
    let text = |v: &str| Value::Text(v.to_string());
    assert_eq!(*row["TimeGenerated"], text("2025-11-28T00:00:00.123Z"));
    assert_eq!(*row["Computer"], text("web-1"));
    assert_eq!(*row["ConfigChangeType"], text("Files"));
    assert_eq!(*row["ChangeCategory"], text("Modified"));
    assert_eq!(*row["FileSystemPath"], text("/etc/ssh/sshd_config"));
    assert_eq!(*row["FileContentChecksum"], text("bb"));
    assert_eq!(*row["PreviousFileContentChecksum"], text("aa"));
    assert_eq!(*row["Size"], Value::Integer(12));
    assert_eq!(*row["PreviousSize"], Value::Integer(10));
    assert_eq!(*row["FieldsChanged"], text("[\"content\",\"size\"]"));
    assert_eq!(*row["InitiatingProcessId"], Value::Integer(4242));
    assert_eq!(*row["InitiatingProcessParentId"], Value::Integer(1));
    assert_eq!(*row["InitiatingProcessFileName"], text("vim.basic"));
    assert_eq!(
        *row["InitiatingProcessFolderPath"],
        text("/usr/bin/vim.basic")
    );
    assert_eq!(
        *row["InitiatingProcessCommandLine"],
        text("vim /etc/ssh/sshd_config")
    );
    assert_eq!(*row["InitiatingProcessAccountName"], text("root"));
    assert_eq!(*row["InitiatingProcessAccountUid"], Value::Integer(0));
    assert_eq!(*row["InitiatingProcessLoginName"], text("alice"));
    assert_eq!(*row["InitiatingProcessLoginUid"], Value::Integer(1000));
    assert_eq!(*row["InitiatingProcessContainerId"], Value::Null);
    assert_eq!(
        *row["InitiatingProcessCreationTime"],
        text("2025-11-27T23:59:50.000Z")
    );
    assert_eq!(*row["RuleName"], text("ssh-config"));
    assert_eq!(*row["RuleGroup"], text("ssh"));
    assert_eq!(*row["Backend"], text("lsm"));

    let categories = ro
        .query("SELECT ChangeCategory, NewFileSystemPath FROM ConfigurationChange ORDER BY FileSystemPath")
        .unwrap();
    assert_eq!(
        categories.rows[..3],
        [
            vec![text("Added"), Value::Null],
            vec![text("Removed"), Value::Null],
            vec![text("Renamed"), text("/etc/file9.new")],
        ]
    );
}

#[test]
fn read_only_connection_refuses_writes_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    store.write(&[StoreOp::Change(change(1))]).unwrap();
    let ro = Store::open_read_only(store.path()).unwrap();
    for sql in [
        "INSERT INTO changes (time, host, activity, path, backend) VALUES (1, 'h', 1, x'2f', 'x')",
        "DELETE FROM changes",
        "DROP VIEW ConfigurationChange",
        "CREATE TABLE t (x)",
    ] {
        let err = ro.query(sql).unwrap_err().to_string();
        assert!(
            err.contains("read-only: only queries are allowed"),
            "{sql}: {err}"
        );
    }
    assert_eq!(count(store.path(), "changes"), 1);
    let pragma = ro.query("PRAGMA query_only").unwrap();
    assert_eq!(pragma.rows, [vec![Value::Integer(1)]]);
}

#[test]
fn prune_removes_by_age_then_by_count_and_orphaned_contents() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let kept_content = ContentRecord {
        blake3: *blake3::hash(b"kept").as_bytes(),
        content: b"kept".to_vec(),
        stored_at_ns: 0,
    };
    let orphan_content = ContentRecord {
        blake3: *blake3::hash(b"orphan").as_bytes(),
        content: b"orphan".to_vec(),
        stored_at_ns: 0,
    };
    let mut ops: Vec<StoreOp> = (1..=10).map(|i| StoreOp::Change(change(i))).collect();
    // The newest change refers to one content version; the oldest to the other.
    if let StoreOp::Change(c) = &mut ops[9] {
        c.hash_after = Some(blake3::hash(b"kept").to_hex().to_string());
    }
    if let StoreOp::Change(c) = &mut ops[0] {
        c.hash_after = Some(blake3::hash(b"orphan").to_hex().to_string());
    }
    ops.push(StoreOp::Content(kept_content.clone()));
    ops.push(StoreOp::Content(orphan_content.clone()));
    for i in 1..=4 {
        ops.push(StoreOp::Health(HealthRecord {
            time_ns: i * 1_000_000_000,
            kind: "rescan".to_string(),
            ..HealthRecord::default()
        }));
    }
    store.write(&ops).unwrap();

    // Older than t=3s goes (changes 1, 2; health 1, 2), then at most 5 changes stay.
    let pruned = store
        .prune(Retention {
            older_than_ns: 3_000_000_000,
            max_changes: 5,
        })
        .unwrap();
    assert_eq!(pruned.changes, 5);
    assert_eq!(pruned.health, 2);
    assert_eq!(pruned.content_versions, 1);
    let ro = Store::open_read_only(store.path()).unwrap();
    let left = ro
        .query("SELECT time / 1000000000 FROM changes ORDER BY time")
        .unwrap();
    let times: Vec<Value> = left.rows.into_iter().map(|mut r| r.remove(0)).collect();
    assert_eq!(times, (6..=10).map(Value::Integer).collect::<Vec<_>>());
    assert_eq!(
        store.content(&kept_content.blake3).unwrap(),
        Some(b"kept".to_vec())
    );
    assert_eq!(store.content(&orphan_content.blake3).unwrap(), None);
}

#[test]
fn content_versions_are_deduplicated_and_compressed() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let text = "PermitRootLogin no\n".repeat(10_000).into_bytes();
    let record = ContentRecord {
        blake3: *blake3::hash(&text).as_bytes(),
        content: text.clone(),
        stored_at_ns: 1,
    };
    store
        .write(&[
            StoreOp::Content(record.clone()),
            StoreOp::Content(record.clone()),
        ])
        .unwrap();
    store.write(&[StoreOp::Content(record.clone())]).unwrap();
    assert_eq!(count(store.path(), "content_versions"), 1);
    let ro = Store::open_read_only(store.path()).unwrap();
    let sizes = ro
        .query("SELECT size, length(zstd) FROM content_versions")
        .unwrap();
    let (Value::Integer(size), Value::Integer(compressed)) = (&sizes.rows[0][0], &sizes.rows[0][1])
    else {
        panic!("{sizes:?}")
    };
    assert_eq!(*size as usize, text.len());
    assert!((*compressed as usize) < text.len() / 10, "{compressed}");
    assert_eq!(store.content(&record.blake3).unwrap(), Some(text));
}

#[test]
fn baseline_round_trips_through_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let entry = |path: &[u8]| BaselineEntry {
        path: path.to_vec(),
        kind: FileKind::File,
        size: 5,
        mode: 0o4755,
        uid: 0,
        gid: 0,
        mtime_ns: 1,
        ctime_ns: 2,
        inode: u64::MAX - 1,
        dev: 0x0803,
        blake3: Some(*blake3::hash(b"12345").as_bytes()),
        xattr_digest: Some(*blake3::hash(b"x").as_bytes()),
        link_target: None,
        flags: EntryFlags::default(),
        errno: None,
        scanned_at_ns: 3,
        nlink: 0,
    };
    let mut odd = entry(b"/etc/bad\xff\nname");
    odd.kind = FileKind::Symlink;
    odd.blake3 = None;
    odd.link_target = Some(b"../\xfe".to_vec());
    let mut unreadable = entry(b"/etc/shadow");
    unreadable.blake3 = None;
    unreadable.flags = EntryFlags(EntryFlags::UNREADABLE);
    unreadable.errno = Some(libc::EACCES);
    let baseline: Baseline = [entry(b"/usr/bin/sudo"), odd, unreadable]
        .into_iter()
        .collect();
    store.replace_baseline(&baseline).unwrap();
    assert_eq!(store.load_baseline().unwrap(), baseline);
    // Replacing drops rows that are gone.
    let smaller: Baseline = [entry(b"/usr/bin/sudo")].into_iter().collect();
    store.replace_baseline(&smaller).unwrap();
    assert_eq!(store.load_baseline().unwrap(), smaller);
}

#[test]
fn who_history_is_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let at = |t: i64, pid: u32| ChangeRecord {
        time_ns: t,
        path: b"/etc/passwd".to_vec(),
        actor: Actor {
            pid: Some(pid),
            ..Actor::default()
        },
        ..change(0)
    };
    store
        .write(&[
            StoreOp::Change(at(1, 10)),
            StoreOp::Change(at(3, 30)),
            StoreOp::Change(at(2, 20)),
            StoreOp::Change(change(5)),
        ])
        .unwrap();
    let pids: Vec<Option<u32>> = store
        .history(b"/etc/passwd", 10)
        .unwrap()
        .iter()
        .map(|c| c.actor.pid)
        .collect();
    assert_eq!(pids, [Some(30), Some(20), Some(10)]);
    assert_eq!(store.history(b"/etc/passwd", 1).unwrap().len(), 1);
    // The (path, time) index serves this query.
    let ro = Store::open_read_only(store.path()).unwrap();
    let plan = ro
        .query("EXPLAIN QUERY PLAN SELECT * FROM changes WHERE path = x'2f6574632f706173737764' ORDER BY time DESC")
        .unwrap();
    let detail = format!("{:?}", plan.rows);
    assert!(detail.contains("changes_by_path_time"), "{detail}");
}

#[test]
fn a_version_1_store_gets_the_rename_index_when_opened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fim.db");
    drop(Store::open_path(&path).unwrap());
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("DROP INDEX changes_by_new_path; PRAGMA user_version = 1;")
            .unwrap();
    }
    drop(Store::open_path(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, fim::store::SCHEMA_VERSION);
    let index: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = 'changes_by_new_path'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(index, 1);
}

/// A heartbeat written at `time_ns` (a counter past 32 bits, to see it kept whole).
fn beat(time_ns: i64, state: DaemonState) -> Heartbeat {
    Heartbeat {
        time_ns,
        pid: 77,
        version: "0.1.0".into(),
        backend: "fentry".into(),
        state,
        started_ns: 5,
        last_scan_ns: None,
        kernel_records: u64::from(u32::MAX) + 1,
        kernel_lost: 2,
        jobs: 3,
        queue_depth: 4,
    }
}

/// The heartbeat is one row, replaced by each beat (a store from before it: see
/// `stores_at_version_3_or_4_migrate_to_5_keeping_their_rows`).
#[test]
fn the_heartbeat_is_one_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fim.db");
    let mut store = Store::open_path(&path).unwrap();
    let read = || Store::open_read_only(&path).unwrap().heartbeat().unwrap();
    assert_eq!(read(), None);
    store
        .write(&[StoreOp::Heartbeat(beat(10, DaemonState::Starting))])
        .unwrap();
    assert_eq!(read(), Some(beat(10, DaemonState::Starting)));
    store
        .write(&[
            StoreOp::Heartbeat(beat(20, DaemonState::Running)),
            StoreOp::Heartbeat(beat(30, DaemonState::Stopped)),
        ])
        .unwrap();
    assert_eq!(read(), Some(beat(30, DaemonState::Stopped)));
    assert_eq!(count(&path, "heartbeat"), 1);
}

/// A store left at schema 3 (`fixtures/store/version-3.sql`: before the heartbeat) or 4
/// (version 3 plus what version 4 adds: `changes.used_path`, the `baseline_by_inode` index)
/// opens as version 5 with the heartbeat table, keeping its rows and what version 4 added;
/// opening it again changes nothing. Each step checks what is there rather than the version
/// number, so the order the two schema changes land in does not matter.
#[test]
fn stores_at_version_3_or_4_migrate_to_5_keeping_their_rows() {
    let column_exists = |conn: &rusqlite::Connection, table: &str, column: &str| -> bool {
        conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2)",
            [table, column],
            |r| r.get(0),
        )
        .unwrap()
    };
    let object_exists = |conn: &rusqlite::Connection, kind: &str, name: &str| -> bool {
        conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = ?1 AND name = ?2)",
            [kind, name],
            |r| r.get(0),
        )
        .unwrap()
    };
    let version_3 = include_str!("fixtures/store/version-3.sql");
    for from in [3, 4] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fim.db");
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(version_3).unwrap();
            if from == 4 {
                conn.execute_batch(
                    "ALTER TABLE changes ADD COLUMN used_path BLOB;
                     CREATE INDEX baseline_by_inode ON baseline (dev, inode);
                     PRAGMA user_version = 4;",
                )
                .unwrap();
            }
        }
        // `fim status` on the old store, before a daemon migrated it: no heartbeat.
        let old = Store::open_read_only(&path).unwrap();
        assert_eq!(old.heartbeat().unwrap(), None);
        drop(old);
        for _ in 0..2 {
            drop(Store::open_path(&path).unwrap());
            let conn = rusqlite::Connection::open(&path).unwrap();
            let version: i64 = conn
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .unwrap();
            assert_eq!((from, version), (from, 5));
            assert!(object_exists(&conn, "table", "heartbeat"), "from {from}");
            if from == 4 {
                assert!(column_exists(&conn, "changes", "used_path"));
                assert!(object_exists(&conn, "index", "baseline_by_inode"));
            }
            assert_eq!(count(&path, "changes"), 2, "from {from}");
            assert_eq!(count(&path, "health"), 1, "from {from}");
            assert_eq!(count(&path, "heartbeat"), 0, "from {from}");
        }
        // The migrated store takes a heartbeat.
        let mut store = Store::open_path(&path).unwrap();
        store
            .write(&[StoreOp::Heartbeat(beat(10, DaemonState::Running))])
            .unwrap();
        assert_eq!(count(&path, "heartbeat"), 1, "from {from}");
    }
}

#[test]
fn rows_below_a_renamed_directory_move_byte_for_byte() {
    use fim::baseline::{BaselineEntry, EntryFlags, FileKind};
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open_path(&dir.path().join("fim.db")).unwrap();
    let entry = |path: &[u8]| BaselineEntry {
        path: path.to_vec(),
        kind: FileKind::File,
        size: 1,
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
        flags: EntryFlags::default(),
        errno: None,
        scanned_at_ns: 0,
        nlink: 0,
    };
    let paths: [&[u8]; 5] = [b"/d", b"/d/a", b"/d/sub/b\xff\n", b"/d0", b"/dx/c"];
    let ops: Vec<StoreOp> = paths
        .iter()
        .map(|p| StoreOp::BaselineUpsert(entry(p)))
        .collect();
    store.write(&ops).unwrap();
    store
        .write(&[StoreOp::BaselineMoveBelow {
            from: b"/d".to_vec(),
            to: b"/e\xfe".to_vec(),
        }])
        .unwrap();
    let mut now: Vec<Vec<u8>> = store
        .load_baseline()
        .unwrap()
        .entries()
        .map(|e| e.path.clone())
        .collect();
    now.sort();
    let expected: Vec<Vec<u8>> = vec![
        b"/d".to_vec(),
        b"/d0".to_vec(),
        b"/dx/c".to_vec(),
        b"/e\xfe/a".to_vec(),
        b"/e\xfe/sub/b\xff\n".to_vec(),
    ];
    assert_eq!(now, expected);
    // Moved out of every watched tree: removed.
    store
        .write(&[StoreOp::BaselineMoveBelow {
            from: b"/e\xfe".to_vec(),
            to: Vec::new(),
        }])
        .unwrap();
    assert_eq!(store.load_baseline().unwrap().len(), 3);
}
