//! `fim scan --now` and `fim status` as an operator runs them, against `fim run` as a separate
//! process (tracepoint backend, forced, as in robustness.rs; root): a scan asked for and its
//! output, the status lines of the last and next scan, the socket's mode, the daemon killed
//! in the middle of a scan (the client says so; the next start reports the change), and the
//! error without a daemon.
//!
//! The changes are made by a copy of `cp` listed as `excluded`: fim does not report what an
//! excluded executable does in realtime, on any backend, so only a scan finds them (see
//! tests/tests/scheduled_scan.rs for the same in the VMs).

use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{Fim, require_root, wait_for_start_scan};

/// The scans' read budget: the large file takes seconds to hash, long enough to kill fim in
/// the middle of a scan.
const BYTES_PER_SEC: u64 = 1 << 20;
const LARGE: usize = 4 << 20;

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    tree: PathBuf,
    config: PathBuf,
    output: PathBuf,
    db: PathBuf,
    /// A copy of cp that fim excludes.
    blind_cp: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let tree = root.join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("a"), b"a as it was\n").unwrap();
    std::fs::write(tree.join("large"), vec![1u8; LARGE]).unwrap();
    let cp = ["/usr/bin/cp", "/bin/cp"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("cp is installed");
    let blind_cp = root.join("blind-cp");
    std::fs::copy(cp, &blind_cp).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let metrics = SocketAddr::from(([127, 0, 0, 1], port));
    let config = root.join("fim.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{state}\"\nexcluded = [\"{blind}\"]\n[output]\nfile = \"{out}\"\n\
             [metrics]\naddress = \"{metrics}\"\n[hashing]\nscan_bytes_per_sec = {BYTES_PER_SEC}\n\
             [scan]\ninterval = \"0\"\n\n[[rule]]\nname = \"tree\"\npath = \"{tree}\"\n\
             recursive = true\n",
            state = root.join("state").display(),
            blind = blind_cp.display(),
            out = root.join("out/fim.json").display(),
            tree = tree.display(),
        ),
    )
    .unwrap();
    Setup {
        output: root.join("out/fim.json"),
        db: root.join("state/fim.db"),
        _dir: dir,
        root,
        tree,
        config,
        blind_cp,
    }
}

impl Setup {
    fn fim(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_fim"))
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "warn")
            .output()
            .expect("running fim")
    }

    fn spawn_daemon(&self) -> Fim {
        let fim = Fim(Command::new(env!("CARGO_BIN_EXE_fim"))
            .args(["run", "--backend", "tracepoint", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting fim run"));
        wait_for_start_scan(&self.db, fim.id(), Duration::from_secs(120));
        fim
    }

    /// `path` gets `content`, written by the excluded cp (unseen by the sensor).
    fn unseen_write(&self, path: &Path, content: &[u8]) {
        let source = self.root.join("source");
        std::fs::write(&source, content).unwrap();
        let status = Command::new(&self.blind_cp)
            .arg(&source)
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn events_for(&self, path: &Path) -> Vec<Value> {
        let path = path.to_string_lossy();
        std::fs::read_to_string(&self.output)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|e| e["file"]["path"] == *path)
            .collect()
    }

    fn status(&self) -> Value {
        let out = self.fim(&["status", "--json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn stop(mut fim: Fim) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(fim.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(60);
    while fim.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "fim run did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn scan_now_asks_the_running_daemon_and_fails_clearly_without_one() {
    require_root();
    let s = setup();
    let (a, large) = (s.tree.join("a"), s.tree.join("large"));
    let socket = s.root.join("state/fim.sock");

    // No daemon yet: a clear error, exit 1, and the way out.
    let out = s.fim(&["scan", "--now"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("no fim daemon is running"), "{stderr}");
    assert!(stderr.contains("`fim scan` (without --now)"), "{stderr}");

    let daemon = s.spawn_daemon();
    let mode = std::fs::symlink_metadata(&socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the control socket's mode");
    let status = s.status();
    assert_eq!(status["last_scan"]["kind"], "start", "{status:#}");
    assert_eq!(status["next_scan"]["planned"], true, "{status:#}");
    assert_eq!(status["next_scan"]["time"], Value::Null, "{status:#}");
    let lines = text(&s.fim(&["status"]).stdout);
    assert!(
        lines.contains("next scan:       none: scheduled scans are off"),
        "{lines}"
    );

    // Changed unseen; asked for, the daemon's scan finds it and prints it like `fim scan`.
    s.unseen_write(&a, b"a changed unseen\n");
    let out = s.fim(&["scan", "--now"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("requested scan by the daemon (pid "),
        "{stdout}"
    );
    assert!(
        stdout.contains("drift: 0 added, 0 removed, 1 modified\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "  modified  {:?} (content, size)",
            a.to_string_lossy()
        )),
        "{stdout}"
    );
    let events = s.events_for(&a);
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["unmapped"]["fim"]["backend"], "scan");
    let status = s.status();
    assert_eq!(status["last_scan"]["kind"], "requested", "{status:#}");
    assert_eq!(status["last_scan"]["modified"], 1, "{status:#}");
    assert!(
        status["last_scan"]["duration_s"].as_f64().is_some(),
        "{status:#}"
    );
    // --json: nothing more to find now.
    let out = s.fim(&["scan", "--now", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["counts"]["modified"], 0, "{result:#}");
    assert_eq!(result["stats"]["entries"], 3, "{result:#}");

    // Killed in the middle of a scan (hashing the large file at 1 MiB/s): the client says
    // the daemon went away; the change is not lost, the next start reports it.
    s.unseen_write(&large, &vec![2u8; LARGE]);
    let client = Command::new(env!("CARGO_BIN_EXE_fim"))
        .args(["scan", "--now", "--config"])
        .arg(&s.config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let mut daemon = daemon;
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    let out = client.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("closed the connection before the scan finished"),
        "{stderr}"
    );
    assert!(
        s.events_for(&large).is_empty(),
        "{:#?}",
        s.events_for(&large)
    );
    let daemon = s.spawn_daemon();
    let events = s.events_for(&large);
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["unmapped"]["fim"]["backend"], "scan");
    assert_eq!(events[0]["unmapped"]["fim"]["changed"][0], "content");
    stop(daemon);

    // Stopped: the socket is gone, and the error is the one without a daemon.
    assert!(!socket.exists(), "the control socket outlived the daemon");
    let out = s.fim(&["scan", "--now"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no fim daemon is running"));
}
