//! `fim run` under a service manager's eye: the test binds a real datagram socket, hands it
//! to `fim run` as `NOTIFY_SOCKET` and reads what fim says: `STATUS=` lines through the start,
//! `READY=1` only once the start scan has compared the baseline (its rows are in the store by
//! then, and a change made right after is seen), `WATCHDOG=1` at half of `WATCHDOG_USEC`,
//! `STOPPING=1` on SIGTERM; a socket that is not there is logged once and fim runs on. `fim
//! status` follows from the heartbeat meanwhile.
//!
//! Natively on the tracepoint backend (forced, like the robustness tests); needs root.

use std::ffi::OsStr;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
mod notify_listener;
use common::{Fim, require_root, wait_for_start_scan};
use notify_listener::{Listener, pings_after};

/// Long enough for a debug build choosing and attaching its sensor on a loaded machine.
const START_WITHIN: Duration = Duration::from_secs(180);

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    tree: PathBuf,
    db: PathBuf,
    output: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let tree = root.join("tree");
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::write(tree.join("small"), b"one\n").unwrap();
        Setup {
            db: root.join("state/fim.db"),
            output: root.join("out/fim.json"),
            _dir: dir,
            root,
            tree,
        }
    }

    /// A configuration watching the tree, its scans reading at most `bytes_per_sec` (0: no
    /// limit).
    fn config(&self, name: &str, bytes_per_sec: u64) -> PathBuf {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let path = self.root.join(name);
        std::fs::write(
            &path,
            format!(
                "state_dir = \"{}\"\n[output]\nfile = \"{}\"\n[metrics]\n\
                 address = \"127.0.0.1:{port}\"\n[hashing]\nscan_bytes_per_sec = {bytes_per_sec}\n\n\
                 [[rule]]\nname = \"tree\"\ngroup = \"notify\"\npath = \"{}\"\nrecursive = true\n",
                self.db.parent().unwrap().display(),
                self.output.display(),
                self.tree.display(),
            ),
        )
        .unwrap();
        path
    }

    fn run(&self, config: &Path, env: &[(&str, &OsStr)], stderr: Stdio) -> Fim {
        let mut command = Command::new(env!("CARGO_BIN_EXE_fim"));
        command
            .args(["run", "--backend", "tracepoint", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdout(Stdio::null())
            .stderr(stderr);
        for (key, value) in env {
            command.env(key, value);
        }
        Fim(command.spawn().expect("starting fim run"))
    }

    fn status(&self) -> Value {
        let out = Command::new(env!("CARGO_BIN_EXE_fim"))
            .args(["status", "--json", "--store"])
            .arg(&self.db)
            .env("RUST_LOG", "warn")
            .output()
            .expect("running fim status");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("fim status --json")
    }

    /// The output's events about `path`.
    fn events_of(&self, path: &Path) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.output).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("an output line"))
            .filter(|e| e["file"]["path"] == *path.to_string_lossy())
            .collect()
    }
}

fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM, then the exit status (within a minute).
fn terminate(fim: &mut Fim) -> ExitStatus {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(fim.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = fim.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "fim run did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether a `scan` health row follows this fim's `start` row in the store now.
fn start_scan_recorded(db: &Path, pid: u32) -> bool {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("opening the store");
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM health WHERE kind = 'scan'
            AND id > (SELECT max(id) FROM health WHERE kind = 'start' AND detail LIKE ?1))",
        [format!("% pid {pid} %")],
        |r| r.get(0),
    )
    .expect("reading health rows")
}

/// Drift rows the scans stored for `path`.
fn scan_changes(db: &Path, path: &Path) -> i64 {
    use std::os::unix::ffi::OsStrExt;
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("opening the store");
    conn.query_row(
        "SELECT count(*) FROM changes WHERE backend = 'scan' AND path = ?1",
        [path.as_os_str().as_bytes()],
        |r| r.get(0),
    )
    .expect("reading change rows")
}

/// READY=1 comes only after the start scan has compared the baseline: at that moment the
/// scan's health row and the drift it found are committed and on the output, the status lines
/// before it named each start step, the backend and the scan's progress (which extended the
/// start timeout), and a change made right after it is reported with its process.
#[test]
fn ready_comes_once_the_start_scan_has_compared_the_baseline() {
    require_root();
    let setup = Setup::new();
    // Unchanged files first in the walk's (byte) order: the scan hands its entries over in
    // batches of 32, and those before the big ones are compared at once.
    for i in 0..64 {
        std::fs::write(setup.tree.join(format!("a-{i:02}")), b"same\n").unwrap();
    }
    let bigs: Vec<PathBuf> = (0..4)
        .map(|i| setup.tree.join(format!("big-{i}")))
        .collect();
    for (i, big) in bigs.iter().enumerate() {
        std::fs::write(big, vec![i as u8; 1 << 20]).unwrap();
    }
    let baseline = Command::new(env!("CARGO_BIN_EXE_fim"))
        .args(["scan", "--config"])
        .arg(setup.config("fast.toml", 0))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(baseline.status.success(), "{baseline:?}");
    // Changed while fim is not running. The start scan finds these, and hashing 4 MiB at
    // 1 MB/s keeps it busy for about 4 s: long enough to tell READY before it from READY after.
    for (i, big) in bigs.iter().enumerate() {
        std::fs::write(big, vec![i as u8 + 10; 1 << 20]).unwrap();
    }
    let small = setup.tree.join("small");
    std::fs::write(&small, b"two\n").unwrap();

    let listener = Listener::at_path(&setup.root.join("notify"));
    let slow = setup.config("slow.toml", 1_000_000);
    let mut fim = setup.run(
        &slow,
        &[("NOTIFY_SOCKET", &listener.variable)],
        Stdio::inherit(),
    );
    let pid = fim.id();
    let ready = listener.wait_for("READY=1", START_WITHIN, |m| m.has("READY=1"));

    // At READY, the store already holds the start scan's row and its drift, the output its
    // events.
    assert!(
        start_scan_recorded(&setup.db, pid),
        "READY=1 before the start scan's row was in the store"
    );
    assert!(
        scan_changes(&setup.db, &small) >= 1,
        "no stored drift for {small:?}"
    );
    for path in bigs.iter().chain([&small]) {
        assert!(
            setup
                .events_of(path)
                .iter()
                .any(|e| e["activity_id"] == 3 && e["unmapped"]["fim"]["backend"] == "scan"),
            "READY=1 before the start scan's event for {path:?} was written"
        );
    }

    let messages = listener.messages();
    let before: Vec<_> = messages.iter().filter(|m| m.at < ready.at).collect();
    let statuses: Vec<&str> = before.iter().filter_map(|m| m.value("STATUS")).collect();
    for step in [
        "starting: metrics endpoint",
        "starting: opening the store, checking the baseline's integrity",
        "starting: choosing and attaching a sensor backend",
        "sensor tracepoint attached to 1 roots; start scan comparing the baseline",
    ] {
        assert!(statuses.contains(&step), "no {step:?} in {statuses:#?}");
    }
    let progress = before
        .iter()
        .find(|m| {
            m.value("STATUS")
                .is_some_and(|s| s.starts_with("start scan: "))
        })
        .unwrap_or_else(|| panic!("no start scan progress before READY: {messages:#?}"));
    assert!(
        progress
            .value("STATUS")
            .unwrap()
            .ends_with(" entries compared; sensor tracepoint attached"),
        "{progress:?}"
    );
    assert_eq!(
        progress.value("EXTEND_TIMEOUT_USEC"),
        Some("300000000"),
        "a start scan that progresses extends the start timeout: {progress:?}"
    );
    let status = ready.value("STATUS").unwrap_or_default();
    assert!(
        status.starts_with(
            "watching 1 roots with tracepoint; start scan: 0 added, 0 removed, 5 modified in "
        ),
        "{status}"
    );
    assert!(
        !messages.iter().any(|m| m.has("WATCHDOG=1")),
        "watchdog pings nobody asked for"
    );

    // From READY on, changes are seen in realtime.
    let after = setup.tree.join("after-ready");
    std::fs::write(&after, b"seen\n").unwrap();
    wait_until(
        "the change made after READY",
        Duration::from_secs(30),
        || {
            setup.events_of(&after).iter().any(|e| {
                e["activity_id"] == 1 && e["actor"]["process"]["pid"] == std::process::id()
            })
        },
    );

    wait_until("fim status to say running", Duration::from_secs(15), || {
        let value = setup.status();
        value["daemon"] == "running" && value["pid"] == pid
    });
    let value = setup.status();
    assert_eq!(value["backend"], "tracepoint");
    assert!(
        value["heartbeat"]["age_s"].as_i64().unwrap() <= 10,
        "{value}"
    );
    assert!(value["heartbeat"]["last_scan"].is_string(), "{value}");
    // The event loop beats again within its period (10 s), not only at READY.
    let first = value["heartbeat"]["time"].clone();
    wait_until("a newer heartbeat", Duration::from_secs(20), || {
        let value = setup.status();
        value["daemon"] == "running" && value["heartbeat"]["time"] != first
    });

    let exit = terminate(&mut fim);
    assert!(exit.success(), "fim run exited with {exit}");
    let stopping = listener.wait_for("STOPPING=1", Duration::from_secs(5), |m| {
        m.has("STOPPING=1")
    });
    assert!(stopping.at > ready.at);
    let value = setup.status();
    assert_eq!(
        (&value["daemon"], &value["running"]),
        (&Value::from("stopped"), &Value::Bool(false)),
        "{value}"
    );
}

/// With `WATCHDOG_USEC` (here on an abstract socket) the event loop pings at half the
/// interval, never more often.
#[test]
fn the_watchdog_is_pinged_at_half_its_interval_on_an_abstract_socket() {
    require_root();
    let setup = Setup::new();
    let listener = Listener::abstract_named(&format!("fim-test-watchdog-{}", std::process::id()));
    let config = setup.config("fim.toml", 0);
    let mut fim = setup.run(
        &config,
        &[
            ("NOTIFY_SOCKET", &listener.variable),
            ("WATCHDOG_USEC", OsStr::new("1000000")),
        ],
        Stdio::inherit(),
    );
    let ready = listener.wait_for("READY=1", START_WITHIN, |m| m.has("READY=1"));
    std::thread::sleep(Duration::from_secs(5));
    let pings = pings_after(&listener.messages(), ready.at);
    let mut gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort_unstable();
    assert!(pings.len() >= 6, "{} pings in 5 s: {gaps:?}", pings.len());
    let median = gaps[gaps.len() / 2];
    assert!(
        (Duration::from_millis(450)..=Duration::from_millis(800)).contains(&median),
        "median gap {median:?}: {gaps:?}"
    );
    // Arrival times jitter a little; a ping every tick (100 ms) would not.
    assert!(gaps[0] >= Duration::from_millis(350), "{gaps:?}");

    let exit = terminate(&mut fim);
    assert!(exit.success(), "fim run exited with {exit}");
    listener.wait_for("STOPPING=1", Duration::from_secs(5), |m| {
        m.has("STOPPING=1")
    });
}

/// A `NOTIFY_SOCKET` nobody listens on is logged once, however many messages fim sends, and
/// fim works as without it.
#[test]
fn a_missing_notification_socket_is_logged_once_and_fim_runs_on() {
    require_root();
    let setup = Setup::new();
    let config = setup.config("fim.toml", 0);
    let log = setup.root.join("fim.log");
    let missing = setup.root.join("no-such-dir/notify");
    let mut fim = setup.run(
        &config,
        &[
            ("NOTIFY_SOCKET", missing.as_os_str()),
            // A ping every 200 ms: many sends fail.
            ("WATCHDOG_USEC", OsStr::new("400000")),
        ],
        Stdio::from(std::fs::File::create(&log).unwrap()),
    );
    wait_for_start_scan(&setup.db, fim.id(), START_WITHIN);
    let file = setup.tree.join("created");
    std::fs::write(&file, b"x\n").unwrap();
    wait_until("the change", Duration::from_secs(30), || {
        !setup.events_of(&file).is_empty()
    });
    std::thread::sleep(Duration::from_secs(2));
    let exit = terminate(&mut fim);
    assert!(exit.success(), "fim run exited with {exit}");
    let text = std::fs::read_to_string(&log).unwrap();
    let warnings = text
        .matches("cannot notify the service manager at NOTIFY_SOCKET=")
        .count();
    assert_eq!(warnings, 1, "{text}");
}
