//! The tamper-evident baseline: rows signed with a keyed BLAKE3 MAC, the set of rows
//! authenticated as a whole, the key created once, mode 0400; every kind of offline edit is
//! found by `Store::check_integrity` and a clean store passes.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use fim::baseline::{BaselineEntry, EntryFlags, FileKind};
use fim::store::{KEY_FILE, Store, StoreOp};
use rusqlite::Connection;

fn entry(path: &[u8], content: &[u8]) -> BaselineEntry {
    BaselineEntry {
        path: path.to_vec(),
        kind: FileKind::File,
        size: content.len() as u64,
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime_ns: 1,
        ctime_ns: 2,
        inode: 7,
        dev: 8,
        blake3: Some(*blake3::hash(content).as_bytes()),
        xattr_digest: None,
        link_target: None,
        flags: EntryFlags::default(),
        errno: None,
        scanned_at_ns: 3,
        nlink: 0,
    }
}

/// A store with three signed rows, closed.
fn signed_store(dir: &Path) -> std::path::PathBuf {
    let db = dir.join("fim.db");
    let mut store = Store::open_path(&db).unwrap();
    store
        .write(&[
            StoreOp::BaselineUpsert(entry(b"/etc/passwd", b"root:x:0:0")),
            StoreOp::BaselineUpsert(entry(b"/etc/shadow", b"root:*")),
            StoreOp::BaselineUpsert(entry(b"/usr/bin/bad\xff\nname", b"elf")),
        ])
        .unwrap();
    let report = store.check_integrity().unwrap();
    assert!(!report.alert(), "{report:?}");
    assert_eq!(report.rows, 3);
    db
}

/// What someone with write access to the file but without the key can do: open it with
/// plain SQLite (no fim functions, so the triggers must go first) and edit.
fn tamper(db: &Path, sql: &str) {
    let conn = Connection::open(db).unwrap();
    conn.execute_batch(
        "DROP TRIGGER baseline_set_insert; DROP TRIGGER baseline_set_delete;
         DROP TRIGGER baseline_set_update;",
    )
    .unwrap();
    conn.execute_batch(sql).unwrap();
}

fn paths(db: &Path) -> Vec<Vec<u8>> {
    let conn = Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT path FROM baseline ORDER BY path")
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn the_key_is_created_once_private_and_a_clean_store_passes() {
    let dir = tempfile::tempdir().unwrap();
    let db = signed_store(dir.path());
    let key = dir.path().join(KEY_FILE);
    let meta = std::fs::metadata(&key).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o400);
    assert_eq!(meta.len(), 32);
    let before = std::fs::read(&key).unwrap();
    // Reopened (as every start does), with more writes in between: still clean, same key.
    let mut store = Store::open_path(&db).unwrap();
    store
        .write(&[
            StoreOp::BaselineUpsert(entry(b"/etc/passwd", b"changed")),
            StoreOp::BaselineRemove(b"/etc/shadow".to_vec()),
            StoreOp::BaselineUpsert(entry(b"/etc/group", b"root:x:0:")),
        ])
        .unwrap();
    drop(store);
    let mut store = Store::open_path(&db).unwrap();
    let report = store.check_integrity().unwrap();
    assert!(!report.alert(), "{report:?}");
    assert_eq!(report.rows, 3);
    assert_eq!(std::fs::read(&key).unwrap(), before);
    // Every row carries a 32-byte MAC.
    let conn = Connection::open(&db).unwrap();
    let macs: i64 = conn
        .query_row(
            "SELECT count(*) FROM baseline WHERE length(mac) = 32",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(macs, 3);
}

#[test]
fn an_edited_row_is_reported_by_path_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let db = signed_store(dir.path());
    // The trojan's hash written over the real one.
    let trojan = blake3::hash(b"trojan").to_hex();
    tamper(
        &db,
        &format!(
            "UPDATE baseline SET blake3 = '{trojan}' WHERE path = CAST('/etc/passwd' AS BLOB)"
        ),
    );
    let mut store = Store::open_path(&db).unwrap();
    let report = store.check_integrity().unwrap();
    assert!(report.alert());
    assert_eq!(report.bad_rows, 1, "{report:?}");
    assert_eq!(report.bad_paths, [b"/etc/passwd".to_vec()]);
    assert!(!report.set_mismatch, "an edit keeps the set of MACs");
    assert!(
        report.summary().contains("/etc/passwd"),
        "{}",
        report.summary()
    );
    // The row is gone (the scan reports the file afresh); the next start is clean.
    assert!(!paths(&db).contains(&b"/etc/passwd".to_vec()));
    drop(store);
    let report = Store::open_path(&db).unwrap().check_integrity().unwrap();
    assert!(!report.alert(), "{report:?}");
    assert_eq!(report.rows, 2);
}

#[test]
fn every_column_is_covered() {
    for (column, value) in [
        ("inode", "99"),
        ("dev", "99"),
        ("type", "'dir'"),
        ("size", "99"),
        ("mode", "511"),
        ("uid", "1000"),
        ("gid", "1000"),
        ("mtime", "99"),
        ("ctime", "99"),
        ("xattr_digest", "'00'"),
        ("link_target", "x'00'"),
        ("flags", "1"),
        ("errno", "13"),
        ("scanned_at", "99"),
        ("path", "CAST('/etc/other' AS BLOB)"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let db = signed_store(dir.path());
        tamper(
            &db,
            &format!(
                "UPDATE baseline SET {column} = {value} WHERE path = CAST('/etc/shadow' AS BLOB)"
            ),
        );
        let report = Store::open_path(&db).unwrap().check_integrity().unwrap();
        assert_eq!(report.bad_rows, 1, "{column}: {report:?}");
    }
}

#[test]
fn a_forged_row_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let db = signed_store(dir.path());
    // Copying a genuine row's MAC onto a new path does not help either.
    tamper(
        &db,
        "INSERT INTO baseline SELECT CAST('/usr/bin/backdoor' AS BLOB), inode, dev, type, size,
             mode, uid, gid, mtime, ctime, blake3, xattr_digest, link_target, flags, errno,
             scanned_at, mac FROM baseline WHERE path = CAST('/etc/shadow' AS BLOB)",
    );
    let report = Store::open_path(&db).unwrap().check_integrity().unwrap();
    assert_eq!(report.bad_rows, 1, "{report:?}");
    assert_eq!(report.bad_paths, [b"/usr/bin/backdoor".to_vec()]);
    assert!(report.set_mismatch);
    assert!(!paths(&db).contains(&b"/usr/bin/backdoor".to_vec()));
}

#[test]
fn a_removed_row_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let db = signed_store(dir.path());
    tamper(
        &db,
        "DELETE FROM baseline WHERE path = CAST('/etc/shadow' AS BLOB)",
    );
    let report = Store::open_path(&db).unwrap().check_integrity().unwrap();
    assert!(report.alert());
    assert_eq!(report.bad_rows, 0);
    assert!(report.set_mismatch, "{report:?}");
    assert!(report.summary().contains("removed or added outside fim"));
    // Recorded as it now is: the next start is clean.
    let report = Store::open_path(&db).unwrap().check_integrity().unwrap();
    assert!(!report.alert(), "{report:?}");
}

#[test]
fn removing_the_key_or_its_record_is_reported() {
    // The key file removed: a new one is made, nothing stored can be trusted.
    let dir = tempfile::tempdir().unwrap();
    let db = signed_store(dir.path());
    std::fs::remove_file(dir.path().join(KEY_FILE)).unwrap();
    let report = Store::open_path(&db).unwrap().check_integrity().unwrap();
    assert!(report.alert());
    assert!(
        report.key_problems[0].contains("is gone"),
        "{:?}",
        report.key_problems
    );
    assert_eq!(report.bad_rows, 3);
    assert!(paths(&db).is_empty(), "untrusted rows are dropped");
    let report = Store::open_path(&db).unwrap().check_integrity().unwrap();
    assert!(!report.alert(), "{report:?}");

    // The store's record of its key deleted, rows and key untouched.
    let dir = tempfile::tempdir().unwrap();
    let db = signed_store(dir.path());
    tamper(&db, "DELETE FROM meta WHERE key = 'baseline_key'");
    let report = Store::open_path(&db).unwrap().check_integrity().unwrap();
    assert_eq!(report.key_problems.len(), 1, "{report:?}");
    assert_eq!(report.bad_rows, 0);

    // Another store's key put in place.
    let dir = tempfile::tempdir().unwrap();
    let db = signed_store(dir.path());
    let other = tempfile::tempdir().unwrap();
    signed_store(other.path());
    std::fs::remove_file(dir.path().join(KEY_FILE)).unwrap();
    std::fs::copy(other.path().join(KEY_FILE), dir.path().join(KEY_FILE)).unwrap();
    let report = Store::open_path(&db).unwrap().check_integrity().unwrap();
    assert!(report.key_problems[0].contains("another key"), "{report:?}");
    assert_eq!(report.bad_rows, 3);
}

#[test]
fn a_key_others_can_read_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let db = signed_store(dir.path());
    std::fs::set_permissions(
        dir.path().join(KEY_FILE),
        std::fs::Permissions::from_mode(0o444),
    )
    .unwrap();
    let report = Store::open_path(&db).unwrap().check_integrity().unwrap();
    assert!(report.alert());
    assert!(report.key_problems[0].contains("accessible to other users"));
    // The rows themselves are fine.
    assert_eq!(report.bad_rows, 0);
    assert_eq!(paths(&db).len(), 3);
}

#[test]
fn a_store_from_before_signing_is_signed_on_first_use() {
    let dir = tempfile::tempdir().unwrap();
    let db = signed_store(dir.path());
    // What a version 2 store looked like: no mac column, no key, no key record.
    {
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch(
            "DROP TRIGGER baseline_set_insert; DROP TRIGGER baseline_set_delete;
             DROP TRIGGER baseline_set_update; ALTER TABLE baseline DROP COLUMN mac;
             DELETE FROM meta; PRAGMA user_version = 2;",
        )
        .unwrap();
    }
    std::fs::remove_file(dir.path().join(KEY_FILE)).unwrap();
    let mut store = Store::open_path(&db).unwrap();
    let report = store.check_integrity().unwrap();
    assert!(!report.alert(), "{report:?}");
    assert_eq!(paths(&db).len(), 3);
    drop(store);
    let report = Store::open_path(&db).unwrap().check_integrity().unwrap();
    assert!(!report.alert(), "{report:?}");
    assert_eq!(report.rows, 3);
}

#[test]
fn rows_moved_by_a_directory_rename_stay_authenticated() {
    let dir = tempfile::tempdir().unwrap();
    let db = signed_store(dir.path());
    let mut store = Store::open_path(&db).unwrap();
    store
        .write(&[StoreOp::BaselineMoveBelow {
            from: b"/etc".to_vec(),
            to: b"/etc.old".to_vec(),
        }])
        .unwrap();
    let report = store.check_integrity().unwrap();
    assert!(!report.alert(), "{report:?}");
    assert!(paths(&db).contains(&b"/etc.old/passwd".to_vec()));
}
