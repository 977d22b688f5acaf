//! The scheduled scan end to end: `fim run`'s pipeline in this process (tracepoint natively,
//! lsm in the VMs) with a short `[scan] interval`, a change its sensor cannot see, and what
//! comes out; then a scan asked for through the control socket (`fim scan --now`'s client)
//! with scheduled scans off.
//!
//! How the change stays unseen: it is made by an `excluded` executable (a copy of the test
//! actor under another name). fim drops an excluded process's events in the kernel once it
//! has seen it start, and in user space before that, on every backend: the change is
//! invisible to the sensor by configuration, not because of a gap a sensor change could
//! close (a write through a hard link outside the watched tree, say, is made visible in
//! realtime by the sensor work on hard links). Only a scan comparing the disk with the
//! baseline can find it, and must, with `backend: "scan"` and attribution unknown.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fim_tests::daemon::{Daemon, events, metric, wait_until};
use fim_tests::prometheus::free_port;
use fim_tests::{TestEnv, actor_path, require_root, run_actor, test_env};
use serde_json::Value;

/// How long a daemon may take to start and finish its start scan (the VMs load the lsm
/// backend under TCG).
const START: Duration = Duration::from_secs(120);

/// A watched tree with files `a` and `b`, and a configuration for it with `scan` as its
/// `[scan]` section and a copy of the test actor as an excluded executable.
struct Setup {
    _dir: tempfile::TempDir,
    tree: PathBuf,
    state: PathBuf,
    config: PathBuf,
    output: PathBuf,
    metrics: SocketAddr,
    /// The excluded copy of the test actor: what it does, the sensor does not report.
    blind: PathBuf,
}

fn setup(scan: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let tree = root.join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("a"), b"a as it was\n").unwrap();
    std::fs::write(tree.join("b"), b"b as it was\n").unwrap();
    let blind = root.join("blind-actor");
    std::fs::copy(actor_path(), &blind).expect("copying the test actor");
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let config = root.join("fim.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{state}\"\nexcluded = [\"{blind}\"]\n[output]\nfile = \"{out}\"\n\
             [metrics]\naddress = \"{metrics}\"\n[scan]\n{scan}\n\n[[rule]]\nname = \"tree\"\n\
             group = \"scan-test\"\npath = \"{tree}\"\nrecursive = true\n",
            state = root.join("state").display(),
            blind = blind.display(),
            out = root.join("out/fim.json").display(),
            tree = tree.display(),
        ),
    )
    .unwrap();
    Setup {
        state: root.join("state"),
        output: root.join("out/fim.json"),
        _dir: dir,
        tree,
        config,
        metrics,
        blind,
    }
}

impl Setup {
    /// The excluded actor does `op` on `path` (and waits for it).
    fn unseen(&self, op: &str, path: &Path) {
        let status = Command::new(&self.blind)
            .arg(op)
            .arg(path)
            .status()
            .expect("running the excluded actor");
        assert!(status.success(), "the excluded actor's {op} failed");
    }

    fn events_for(&self, path: &Path) -> Vec<Value> {
        let path = path.to_string_lossy();
        events(&self.output, &self.tree)
            .into_iter()
            .filter(|e| e["file"]["path"] == *path)
            .collect()
    }

    fn health_kinds(&self, kind: &str) -> Vec<String> {
        let db = rusqlite::Connection::open(self.state.join("fim.db")).unwrap();
        db.prepare("SELECT detail FROM health WHERE kind = ?1 ORDER BY id")
            .unwrap()
            .query_map([kind], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }
}

fn by_the_scan(event: &Value) {
    assert_eq!(event["unmapped"]["fim"]["backend"], "scan", "{event:#}");
    assert_eq!(
        event["unmapped"]["fim"]["attribution"], "unknown",
        "{event:#}"
    );
    assert!(event["actor"]["process"].get("pid").is_none(), "{event:#}");
}

fn hash(content: &[u8]) -> String {
    blake3::hash(content).to_hex().to_string()
}

#[test]
fn scheduled_scans_report_what_the_sensor_cannot_see() {
    require_root();
    let s = setup("interval = \"2s\"\nspread = \"0\"");
    let (a, b, c) = (s.tree.join("a"), s.tree.join("b"), s.tree.join("c"));
    let daemon = Daemon::start(&s.config);
    wait_until("the start scan", START, || {
        metric(s.metrics, "fim_baseline_files") == Some(3.0)
    });

    // A change the sensor sees: reported once, with its actor, by no scan after it.
    let pid = run_actor(&[OsStr::new("append"), a.as_os_str()]).expect("actor");
    wait_until("the realtime change", Duration::from_secs(30), || {
        !s.events_for(&a).is_empty()
    });

    // Changes it cannot see: found by the next scheduled scan, within about one interval.
    let unseen_at = Instant::now();
    s.unseen("append", &b);
    s.unseen("create", &c);
    wait_until(
        "the scheduled scan's report",
        Duration::from_secs(60),
        || !s.events_for(&b).is_empty() && !s.events_for(&c).is_empty(),
    );
    println!(
        "the unseen changes were reported {:.1}s after they were made ([scan] interval 2s)",
        unseen_at.elapsed().as_secs_f64()
    );
    let b_events = s.events_for(&b);
    by_the_scan(&b_events[0]);
    assert_eq!(b_events[0]["activity_id"], 3, "{b_events:#?}");
    assert_eq!(
        b_events[0]["unmapped"]["fim"]["previous"]["hash"],
        hash(b"b as it was\n")
    );
    assert_eq!(
        b_events[0]["file"]["hashes"][0]["value"],
        hash(b"b as it was\nappended\n")
    );
    let c_events = s.events_for(&c);
    by_the_scan(&c_events[0]);
    assert_eq!(c_events[0]["activity_id"], 1, "{c_events:#?}");

    // Two more scheduled scans: nothing is reported twice, the realtime change included.
    let scans = s.health_kinds("scheduled_scan").len();
    wait_until("two more scheduled scans", Duration::from_secs(60), || {
        s.health_kinds("scheduled_scan").len() >= scans + 2
    });
    let a_events = s.events_for(&a);
    assert_eq!(a_events.len(), 1, "{a_events:#?}");
    assert_eq!(a_events[0]["actor"]["process"]["pid"], pid, "{a_events:#?}");
    assert_ne!(
        a_events[0]["unmapped"]["fim"]["backend"], "scan",
        "{a_events:#?}"
    );
    assert_eq!(s.events_for(&b).len(), 1);
    assert_eq!(s.events_for(&c).len(), 1);

    // The health rows, the schedule for `fim status`, the metrics.
    let details = s.health_kinds("scheduled_scan");
    assert!(
        details
            .iter()
            .any(|d| d.contains("1 modified") || d.contains("1 added")),
        "{details:#?}"
    );
    assert!(
        details.iter().all(|d| d.starts_with("scheduled: ")),
        "{details:#?}"
    );
    let schedule: Value = {
        let db = rusqlite::Connection::open(s.state.join("fim.db")).unwrap();
        let row: String = db
            .query_row(
                "SELECT value FROM meta WHERE key = 'scan_schedule'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        serde_json::from_str(&row).unwrap()
    };
    assert_eq!(schedule["pid"], std::process::id(), "{schedule}");
    assert_eq!(schedule["interval_s"], 2, "{schedule}");
    assert!(schedule["next_ns"].as_i64().is_some(), "{schedule}");
    let scheduled_drift = metric(s.metrics, "fim_scan_drift_total{kind=\"scheduled\"}");
    assert_eq!(scheduled_drift, Some(2.0));
    assert!(metric(s.metrics, "fim_scan_duration_seconds{kind=\"scheduled\"}").is_some());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let last = metric(s.metrics, "fim_last_full_scan_timestamp_seconds").unwrap();
    assert!(
        now - last < 30.0,
        "the last full scan was {:.0}s ago",
        now - last
    );
    let next = metric(s.metrics, "fim_scan_next_timestamp_seconds").unwrap();
    assert!(
        next > now - 30.0 && next < now + 30.0,
        "next scan at {next}, now {now}"
    );
    daemon.stop();
}

#[test]
fn a_scan_asked_for_reports_at_once_and_interval_zero_schedules_none() {
    require_root();
    let s = setup("interval = \"0\"");
    let a = s.tree.join("a");
    let daemon = Daemon::start(&s.config);
    wait_until("the start scan", START, || {
        metric(s.metrics, "fim_baseline_files") == Some(3.0)
    });
    s.unseen("append", &a);
    // Scheduled scans are off: a few seconds later nothing has found the change.
    std::thread::sleep(Duration::from_secs(4));
    assert!(s.events_for(&a).is_empty(), "{:#?}", s.events_for(&a));
    assert!(s.health_kinds("scheduled_scan").is_empty());
    assert_eq!(
        metric(s.metrics, "fim_scan_next_timestamp_seconds"),
        Some(0.0)
    );

    // Asked for (`fim scan --now`'s client): the reply lists the change, reported once.
    let mut accepted = Value::Null;
    let result =
        fim::control::request_scan(&s.state, |a| accepted = a.clone()).expect("the daemon's scan");
    assert_eq!(accepted["accepted"], true, "{accepted}");
    assert_eq!(result["kind"], "requested", "{result:#}");
    assert_eq!(
        result["counts"],
        serde_json::json!({"added": 0, "removed": 0, "modified": 1}),
        "{result:#}"
    );
    assert_eq!(result["modified"][0]["path"], *a.to_string_lossy());
    assert_eq!(result["modified"][0]["changed"][0], "content");
    assert_eq!(result["stats"]["entries"], 3, "{result:#}");
    let a_events = s.events_for(&a);
    assert_eq!(a_events.len(), 1, "{a_events:#?}");
    by_the_scan(&a_events[0]);
    assert_eq!(
        metric(s.metrics, "fim_scan_drift_total{kind=\"requested\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(s.metrics, "fim_scan_drift_total{kind=\"scheduled\"}"),
        Some(0.0)
    );
    assert_eq!(s.health_kinds("requested_scan").len(), 1);

    // Several at once: every one is answered, by a scan that started after it was asked
    // (they may share one); the change is not reported again.
    let askers: Vec<_> = (0..3)
        .map(|_| {
            let state = s.state.clone();
            std::thread::spawn(move || fim::control::request_scan(&state, |_| {}))
        })
        .collect();
    for asker in askers {
        let result = asker.join().unwrap().expect("a scan for every request");
        assert_eq!(result["counts"]["modified"], 0, "{result:#}");
    }
    assert_eq!(s.events_for(&a).len(), 1);
    let requested = s.health_kinds("requested_scan").len();
    assert!((2..=4).contains(&requested), "{requested} requested scans");
    daemon.stop();

    // No daemon: a clear error that points at `fim scan`.
    let error = fim::control::request_scan(&s.state, |_| {}).unwrap_err();
    let text = format!("{error:#}");
    assert!(text.contains("no fim daemon is running"), "{text}");
    assert!(text.contains("`fim scan` (without --now)"), "{text}");
}

#[test]
fn realtime_changes_during_scheduled_scans_are_reported_once_with_their_actor() {
    require_root();
    let s = setup("interval = \"1s\"\nspread = \"0\"");
    const FILES: usize = 30;
    const APPENDS: usize = 150;
    let files: Vec<PathBuf> = (0..FILES).map(|i| s.tree.join(format!("f{i}"))).collect();
    for file in &files {
        std::fs::write(file, b"").unwrap();
    }
    let daemon = Daemon::start(&s.config);
    wait_until("the start scan", START, || {
        metric(s.metrics, "fim_baseline_files") == Some(3.0 + FILES as f64)
    });
    // One process appends to the files in turn for a few seconds, while a scan starts every
    // second: the scans see files the worker is about to report or has just reported.
    let scans_before = s.health_kinds("scheduled_scan").len();
    // Under TCG a scan of the tree takes seconds: the appends last long enough there for one
    // to finish while they go on.
    let gap = if test_env() == TestEnv::Vm {
        "150"
    } else {
        "20"
    };
    let mut ops: Vec<&OsStr> = Vec::new();
    for i in 0..APPENDS {
        if i > 0 {
            ops.extend([
                OsStr::new("--"),
                OsStr::new("sleep"),
                OsStr::new(gap),
                OsStr::new("--"),
            ]);
        }
        ops.extend([OsStr::new("append"), files[i % FILES].as_os_str()]);
    }
    let pid = run_actor(&ops).expect("the appending actor");
    // Quiet again: the jobs are done and two scans ran after the last append.
    let scans_after_storm = s.health_kinds("scheduled_scan").len();
    assert!(
        scans_after_storm > scans_before,
        "no scheduled scan ran during the appends"
    );
    wait_until(
        "two scans after the appends",
        Duration::from_secs(60),
        || {
            s.health_kinds("scheduled_scan").len() >= scans_after_storm + 2
                && metric(s.metrics, "fim_queue_depth") == Some(0.0)
        },
    );
    let db = rusqlite::Connection::open(s.state.join("fim.db")).unwrap();
    for file in &files {
        let events = s.events_for(file);
        assert!(!events.is_empty(), "no event for {}", file.display());
        for event in &events {
            // Every append was seen: no scan reported one (nor one twice).
            assert_eq!(event["actor"]["process"]["pid"], pid, "{event:#}");
            assert_ne!(event["unmapped"]["fim"]["backend"], "scan", "{event:#}");
        }
        // Nothing lost: the last report and the baseline are what is on disk.
        let on_disk = hash(&std::fs::read(file).unwrap());
        let last = events.last().unwrap();
        assert_eq!(last["file"]["hashes"][0]["value"], *on_disk, "{last:#}");
        let stored: String = db
            .query_row(
                "SELECT blake3 FROM baseline WHERE path = ?1",
                [file.as_os_str().as_encoded_bytes()],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(stored, on_disk, "{}", file.display());
    }
    println!(
        "{} scheduled scans ran during {APPENDS} appends",
        scans_after_storm - scans_before
    );
    daemon.stop();
}
