//! The daemon end to end: `fim run`'s pipeline in this process (on the best backend that
//! works here: tracepoint natively, lsm in the VMs), changes made by a separate process, and
//! what comes out: OCSF lines with exact attribution and previous values, the store, the
//! metrics. (tests/daemon_prometheus.rs checks the metrics through a real Prometheus.)
//! Then downtime: a change made while fim is stopped is reported at the next start with
//! attribution unknown.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use fim_tests::daemon::{
    Daemon, START_SCAN_TIMEOUT, events, find, metric, wait_until, write_config,
};
use fim_tests::prometheus::free_port;
use fim_tests::{actor_path, require_root, run_actor};
use serde_json::Value;

#[test]
fn changes_are_reported_with_attribution_stored_and_counted() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let tree = std::fs::canonicalize(dir.path()).unwrap().join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("a"), b"initial\n").unwrap();
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let config = write_config(dir.path(), &tree, metrics);
    let output = dir.path().join("out/fim.json");

    let daemon = Daemon::start(&config);
    // The start scan creates the baseline: the tree and `a`.
    wait_until("the start scan", START_SCAN_TIMEOUT, || {
        metric(metrics, "fim_baseline_files") == Some(2.0)
    });

    let a = tree.join("a");
    let (b, c, d) = (tree.join("b"), tree.join("c"), tree.join("d"));
    let s = |p: &Path| p.as_os_str().to_owned();
    let mut pids = Vec::new();
    for (i, op) in [
        vec!["write".into(), s(&a)],
        vec!["create".into(), s(&b)],
        vec!["chmod".into(), s(&b), "0o600".into()],
        vec!["rename".into(), s(&b), s(&c)],
        vec!["unlink".into(), s(&c)],
        vec!["mkdir".into(), s(&d)],
    ]
    .into_iter()
    .enumerate()
    {
        pids.push(run_actor(&op).expect("actor"));
        // One at a time: each change is examined before the next one replaces it (a fast
        // sequence is reported too, with less detail: see the pipeline's unit tests).
        wait_until("the change event", Duration::from_secs(20), || {
            events(&output, &tree).len() > i
        });
    }
    let all = events(&output, &tree);
    assert_eq!(all.len(), 6, "{all:#?}");
    let exe = actor_path().to_string_lossy().into_owned();
    let expect_actor = |e: &Value, pid: u32| {
        assert_eq!(e["actor"]["process"]["pid"], pid, "{e:#}");
        assert_eq!(e["actor"]["process"]["file"]["path"], *exe, "{e:#}");
        assert_eq!(e["actor"]["user"]["uid"], "0", "{e:#}");
        assert_eq!(e["unmapped"]["fim"]["rule"], "tree");
        assert_eq!(e["unmapped"]["fim"]["group"], "daemon-test");
        assert_eq!(e["class_uid"], 1001);
        assert_eq!(e["type_uid"], 100100 + e["activity_id"].as_i64().unwrap());
    };
    let update = find(&all, 3, &a);
    expect_actor(update, pids[0]);
    assert_eq!(
        update["unmapped"]["fim"]["changed"],
        serde_json::json!(["content"])
    );
    assert_eq!(
        update["unmapped"]["fim"]["previous"]["hash"],
        blake3::hash(b"initial\n").to_hex().as_str()
    );
    assert_eq!(
        update["file"]["hashes"][0]["value"],
        blake3::hash(b"written\n").to_hex().as_str()
    );
    let create = find(&all, 1, &b);
    expect_actor(create, pids[1]);
    assert_eq!(create["file"]["type_id"], 1);
    let chmod = find(&all, 6, &b);
    expect_actor(chmod, pids[2]);
    assert_eq!(
        chmod["unmapped"]["fim"]["changed"],
        serde_json::json!(["mode"])
    );
    assert_eq!(chmod["unmapped"]["fim"]["previous"]["mode"], 0o644);
    let rename = find(&all, 5, &b);
    expect_actor(rename, pids[3]);
    assert_eq!(rename["file_result"]["path"], *c.to_string_lossy());
    let delete = find(&all, 4, &c);
    expect_actor(delete, pids[4]);
    assert_eq!(
        delete["unmapped"]["fim"]["previous"]["mode"], 0o600,
        "the delete's previous mode; all events: {all:#?}"
    );
    let mkdir = find(&all, 1, &d);
    expect_actor(mkdir, pids[5]);
    assert_eq!(mkdir["file"]["type_id"], 2);

    // The metrics endpoint counts them: two creations, and a baseline of the tree, a and d.
    wait_until("the metrics", Duration::from_secs(10), || {
        metric(metrics, "fim_events_total{activity=\"create\"}") == Some(2.0)
            && metric(metrics, "fim_baseline_files") == Some(3.0)
    });
    daemon.stop();

    // The store has the six changes with their attribution.
    let db = rusqlite::Connection::open(dir.path().join("state/fim.db")).unwrap();
    let stored: i64 = db
        .query_row(
            "SELECT count(*) FROM changes WHERE backend != 'scan' AND pid IS NOT NULL AND exe IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stored, 6);
    let kinds: Vec<String> = db
        .prepare("SELECT kind FROM health ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(kinds, ["start", "scan", "stop"]);

    // Downtime: changed while fim was stopped, reported at the next start, attribution unknown.
    std::fs::write(&a, b"changed while down\n").unwrap();
    std::fs::remove_dir(&d).unwrap();
    let t = tree.join("t");
    std::fs::write(&t, b"added while down\n").unwrap();
    let before = events(&output, &tree).len();
    let daemon = Daemon::start(&config);
    wait_until("the downtime changes", START_SCAN_TIMEOUT, || {
        events(&output, &tree).len() >= before + 3
    });
    daemon.stop();
    let all = events(&output, &tree);
    let late = &all[before..];
    let unknown = |e: &Value| {
        assert_eq!(e["unmapped"]["fim"]["backend"], "scan", "{e:#}");
        assert_eq!(e["unmapped"]["fim"]["attribution"], "unknown", "{e:#}");
        assert!(e["actor"]["process"].get("pid").is_none(), "{e:#}");
    };
    let update = find(late, 3, &a);
    unknown(update);
    assert_eq!(
        update["unmapped"]["fim"]["previous"]["hash"],
        blake3::hash(b"written\n").to_hex().as_str()
    );
    assert_eq!(
        update["file"]["hashes"][0]["value"],
        blake3::hash(b"changed while down\n").to_hex().as_str()
    );
    let removed = find(late, 4, &d);
    unknown(removed);
    assert_eq!(removed["unmapped"]["fim"]["previous"]["type"], "dir");
    let added = find(late, 1, &t);
    unknown(added);
    assert_eq!(
        added["file"]["hashes"][0]["value"],
        blake3::hash(b"added while down\n").to_hex().as_str()
    );

    // A second downtime: mode and owner change, and someone edits the store's baseline row
    // of `t` (its hash, to match a replaced file): an integrity alert at the next start, and
    // `t` is reported afresh.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&a, Some(1234), Some(1234)).unwrap();
    std::fs::write(&t, b"replaced while down\n").unwrap();
    {
        let db = rusqlite::Connection::open(dir.path().join("state/fim.db")).unwrap();
        db.execute_batch("DROP TRIGGER baseline_set_update")
            .unwrap();
        db.execute(
            "UPDATE baseline SET blake3 = ?1 WHERE path = ?2",
            rusqlite::params![
                blake3::hash(b"replaced while down\n").to_hex().as_str(),
                t.as_os_str().as_encoded_bytes()
            ],
        )
        .unwrap();
    }
    let before = events(&output, &tree).len();
    let daemon = Daemon::start(&config);
    wait_until("the second downtime's changes", START_SCAN_TIMEOUT, || {
        events(&output, &tree).len() >= before + 2
    });
    wait_until(
        "the integrity alert metric",
        Duration::from_secs(10),
        || metric(metrics, "fim_baseline_integrity_alerts_total") == Some(1.0),
    );
    daemon.stop();
    let all = events(&output, &tree);
    let late = &all[before..];
    let attributes = find(late, 6, &a);
    unknown(attributes);
    assert_eq!(
        attributes["unmapped"]["fim"]["changed"],
        serde_json::json!(["mode", "owner"])
    );
    assert_eq!(attributes["unmapped"]["fim"]["previous"]["mode"], 0o644);
    assert_eq!(attributes["unmapped"]["fim"]["previous"]["uid"], 0);
    let refound = find(late, 1, &t);
    unknown(refound);
    let findings: Vec<Value> = fim_tests::daemon::json_lines(&output)
        .into_iter()
        .filter(|e| e["class_uid"] == 2004)
        .collect();
    assert_eq!(findings.len(), 1, "{findings:#?}");
    assert_eq!(
        findings[0]["unmapped"]["fim"]["integrity"]["bad_paths"],
        serde_json::json!([t.to_string_lossy()])
    );
    assert_eq!(findings[0]["severity_id"], 5);
}

/// The store's disk fills up while fim runs: changes are still reported on the output, the
/// failure shows in the metrics, and once there is space again every change reaches the store.
#[test]
fn a_full_disk_for_the_store_is_survived_and_nothing_is_lost() {
    use std::os::unix::ffi::OsStrExt;
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let tree = root.join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("a"), b"initial\n").unwrap();
    // The state directory on a small file system of its own.
    let state = root.join("state");
    std::fs::create_dir(&state).unwrap();
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid strings; the mount is undone below.
    let rc = unsafe {
        libc::mount(
            c(Path::new("tmpfs")).as_ptr(),
            c(&state).as_ptr(),
            c(Path::new("tmpfs")).as_ptr(),
            0,
            c(Path::new("size=4m")).as_ptr().cast(),
        )
    };
    assert_eq!(
        rc,
        0,
        "mounting a tmpfs: {}",
        std::io::Error::last_os_error()
    );
    struct Unmount(std::ffi::CString);
    impl Drop for Unmount {
        fn drop(&mut self) {
            // SAFETY: unmounting what this test mounted.
            unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) };
        }
    }
    let _unmount = Unmount(c(&state));
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let config = write_config(&root, &tree, metrics);
    let output = root.join("out/fim.json");
    let daemon = Daemon::start(&config);
    wait_until("the start scan", START_SCAN_TIMEOUT, || {
        metric(metrics, "fim_baseline_files") == Some(2.0)
    });
    // Fill the file system.
    let filler = state.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    let files = 20;
    for i in 0..files {
        run_actor(&["create".as_ref(), tree.join(format!("f{i}")).as_os_str()]).expect("actor");
    }
    // Monitoring goes on: the output has every change.
    wait_until("the changes on the output", Duration::from_secs(20), || {
        events(&output, &tree).len() >= files
    });
    wait_until(
        "the store failure in the metrics",
        Duration::from_secs(20),
        || metric(metrics, "fim_store_errors_total").is_some_and(|v| v > 0.0),
    );
    // Space again: everything is written.
    std::fs::remove_file(&filler).unwrap();
    let count = || -> i64 {
        let Ok(db) = rusqlite::Connection::open(state.join("fim.db")) else {
            return 0;
        };
        db.query_row(
            "SELECT count(*) FROM changes WHERE pid IS NOT NULL AND activity = 1",
            [],
            |r| r.get(0),
        )
        .unwrap_or(0)
    };
    wait_until("the changes in the store", Duration::from_secs(90), || {
        count() >= files as i64
    });
    daemon.stop();
    assert_eq!(count(), files as i64, "each change exactly once");
}
