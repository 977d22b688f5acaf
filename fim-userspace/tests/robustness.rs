//! `fim run` as a separate process, treated badly: killed with SIGKILL at random moments while
//! a writer storms the watched tree (`FIM_CRASH_ITERATIONS`, default 100), and starved of
//! ring-buffer space. Afterwards the store must match the disk exactly, every change the store
//! recorded must be on the event output, and SQLite must find its database intact each time.
//!
//! Natively these run on the tracepoint backend (forced, to save the seconds that trying lsm
//! and fentry costs per start); they load eBPF programs and need root.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{Fim, require_root, wait_for_start_scan};

/// A small deterministic generator (the seed is printed, so a failure can be replayed).
struct Rng(u64);

impl Rng {
    fn from_env() -> Rng {
        let seed = std::env::var("FIM_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        println!("FIM_TEST_SEED={seed}");
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    tree: PathBuf,
    config: PathBuf,
    output: PathBuf,
    db: PathBuf,
    metrics: SocketAddr,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn setup(extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let tree = root.join("tree");
    for sub in 0..4 {
        std::fs::create_dir_all(tree.join(format!("d{sub}"))).unwrap();
    }
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = root.join("fim.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{state}\"\n{extra}\n[output]\nfile = \"{out}\"\n[metrics]\n\
             address = \"{metrics}\"\n\n[[rule]]\nname = \"tree\"\ngroup = \"robustness\"\n\
             path = \"{tree}\"\nrecursive = true\n",
            state = root.join("state").display(),
            out = root.join("out/fim.json").display(),
            tree = tree.display(),
        ),
    )
    .unwrap();
    Setup {
        output: root.join("out/fim.json"),
        db: root.join("state/fim.db"),
        _dir: dir,
        tree,
        config,
        metrics,
    }
}

fn spawn_fim(setup: &Setup) -> Fim {
    Fim(Command::new(env!("CARGO_BIN_EXE_fim"))
        .args(["run", "--backend", "tracepoint", "--config"])
        .arg(&setup.config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting fim run"))
}

/// SIGTERM and wait: a clean stop must succeed within a deadline.
fn stop_fim(mut child: Fim) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "fim run exited with {status}");
            return;
        }
        assert!(Instant::now() < deadline, "fim run did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn integrity_check(db: &Path) -> String {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("opening the store");
    conn.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0))
        .expect("PRAGMA integrity_check")
}

/// Waits until fim has nothing left to do: no queued job, no unwritten row, and every rescan
/// it started has finished (its health row is in the store), for 3 s in a row.
fn wait_until_quiet(setup: &Setup, within: Duration) {
    let deadline = Instant::now() + within;
    let mut quiet_since: Option<Instant> = None;
    loop {
        let depth = metric(setup.metrics, "fim_queue_depth").unwrap_or(1.0);
        let pending = metric(setup.metrics, "fim_store_pending_rows").unwrap_or(1.0);
        let started = metric(setup.metrics, "fim_rescans_total").unwrap_or(-1.0);
        let finished = rusqlite::Connection::open(&setup.db)
            .ok()
            .and_then(|c| {
                c.query_row(
                    "SELECT count(*) FROM health WHERE kind IN ('scan', 'rescan')
                        AND id > (SELECT max(id) FROM health WHERE kind = 'start')",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .ok()
            })
            .unwrap_or(-2);
        if depth == 0.0 && pending == 0.0 && started == finished as f64 {
            let since = *quiet_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(3) {
                return;
            }
        } else {
            quiet_since = None;
        }
        if Instant::now() >= deadline {
            let recent: Vec<String> = rusqlite::Connection::open(&setup.db)
                .and_then(|c| {
                    let mut stmt = c.prepare(
                        "SELECT kind || ': ' || coalesce(detail, '') FROM health
                         ORDER BY id DESC LIMIT 8",
                    )?;
                    let rows = stmt.query_map([], |r| r.get(0))?;
                    rows.collect()
                })
                .unwrap_or_default();
            panic!(
                "fim did not catch up: queue {depth}, rows pending {pending}, rescans started \
                 {started}, finished {finished}; latest health rows:\n{}",
                recent.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn metric(address: SocketAddr, name: &str) -> Option<f64> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: fim\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    body.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        rest.starts_with(' ').then(|| rest.trim().parse().ok())?
    })
}

/// The writer: creates, rewrites (unique content each time), chmods and removes files among
/// 256 (or `names`) names in four directories as fast as it can, until told to stop.
fn storm(tree: PathBuf, stop: Arc<AtomicBool>, ops: Arc<AtomicU64>, seed: u64) {
    storm_over(tree, stop, ops, seed, 256);
}

fn storm_over(tree: PathBuf, stop: Arc<AtomicBool>, ops: Arc<AtomicU64>, seed: u64, names: u64) {
    let mut rng = Rng(seed | 1);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let i = rng.below(names);
        let path = tree.join(format!("d{}/f{i}", i % 4));
        match rng.below(10) {
            0..=5 => {
                n += 1;
                let _ = std::fs::write(
                    &path,
                    format!("content {seed} {n}\n").repeat(1 + (n % 7) as usize),
                );
            }
            6 | 7 => {
                let _ = std::fs::remove_file(&path);
            }
            _ => {
                let mode = if rng.below(2) == 0 { 0o600 } else { 0o644 };
                let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode));
            }
        }
        ops.fetch_add(1, Ordering::Relaxed);
        if n.is_multiple_of(64) {
            // A storm, not a fork bomb: leave the daemon some of the machine's two CPUs.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// What the disk holds below `tree`: path -> (is_dir, mode, size, BLAKE3 of files).
fn disk_state(tree: &Path) -> BTreeMap<Vec<u8>, (bool, u32, u64, Option<String>)> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![tree.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let meta = std::fs::symlink_metadata(&dir).unwrap();
        out.insert(
            dir.as_os_str().as_bytes().to_vec(),
            (true, meta.mode() & 0o7777, meta.size(), None),
        );
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path);
            } else {
                let hash = blake3::hash(&std::fs::read(&path).unwrap())
                    .to_hex()
                    .to_string();
                out.insert(
                    path.as_os_str().as_bytes().to_vec(),
                    (false, meta.mode() & 0o7777, meta.size(), Some(hash)),
                );
            }
        }
    }
    out
}

/// Asserts that the store's baseline is exactly the disk below `tree`.
fn assert_store_matches_disk(db: &Path, tree: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let disk = disk_state(tree);
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT path, type, mode, size, blake3 FROM baseline")
        .unwrap();
    let prefix = tree.as_os_str().as_bytes();
    let stored: BTreeMap<Vec<u8>, (bool, u32, u64, Option<String>)> = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                (
                    r.get::<_, String>(1)? == "dir",
                    r.get::<_, u32>(2)?,
                    r.get::<_, i64>(3)? as u64,
                    r.get::<_, Option<String>>(4)?,
                ),
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .filter(|(path, _)| path.starts_with(prefix))
        .collect();
    let mut wrong = Vec::new();
    for (path, state) in &disk {
        match stored.get(path) {
            None => wrong.push(format!(
                "missing from the store: {}",
                String::from_utf8_lossy(path)
            )),
            Some(s) if s.0 != state.0 || s.1 != state.1 => wrong.push(format!(
                "{}: store {s:?}, disk {state:?}",
                String::from_utf8_lossy(path)
            )),
            // A directory's size is whatever the file system says; files must match exactly.
            Some(s) if !state.0 && (s.2 != state.2 || s.3 != state.3) => wrong.push(format!(
                "{}: store {s:?}, disk {state:?}",
                String::from_utf8_lossy(path)
            )),
            Some(_) => {}
        }
    }
    for path in stored.keys() {
        if !disk.contains_key(path) {
            wrong.push(format!(
                "in the store, not on disk: {}",
                String::from_utf8_lossy(path)
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} differences between the store and the disk:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// (path, activity, hash) of each change: from the store, and from the OCSF output (with the
/// number of lines that are not JSON: a line torn by SIGKILL mid-write).
type Report = (Vec<u8>, i64, Option<String>);

fn store_changes(db: &Path) -> Vec<Report> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT path, activity, hash_after FROM changes ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn output_changes(output: &Path) -> (Vec<Report>, usize, usize) {
    let text = std::fs::read(output).unwrap_or_default();
    let mut out = Vec::new();
    let (mut torn, mut findings) = (0, 0);
    for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let Ok(event) = serde_json::from_slice::<Value>(line) else {
            torn += 1;
            continue;
        };
        if event["class_uid"] == 2004 {
            findings += 1;
            continue;
        }
        let path = event["file"]["path"].as_str().unwrap_or_default();
        out.push((
            path.as_bytes().to_vec(),
            event["activity_id"].as_i64().unwrap_or(0),
            event["file"]["hashes"][0]["value"]
                .as_str()
                .map(str::to_string),
        ));
    }
    (out, torn, findings)
}

#[test]
fn killed_at_random_moments_under_a_write_storm_nothing_is_lost() {
    require_root();
    let iterations: u32 = std::env::var("FIM_CRASH_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let setup = setup("");
    let mut rng = Rng::from_env();
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let writer = {
        let (tree, stop, ops, seed) = (setup.tree.clone(), stop.clone(), ops.clone(), rng.next());
        std::thread::spawn(move || storm(tree, stop, ops, seed))
    };
    let started = Instant::now();
    let mut killed_after_start_scan = 0;
    for i in 0..iterations {
        let child = spawn_fim(&setup);
        // Anywhere from before the sensor is up to well into realtime monitoring (starting
        // takes about a second here).
        let delay = Duration::from_millis(rng.below(2500));
        std::thread::sleep(delay);
        let mut child = child;
        child.kill().unwrap();
        child.wait().unwrap();
        if setup.db.exists() {
            let check = integrity_check(&setup.db);
            assert_eq!(check, "ok", "PRAGMA integrity_check after kill {i}");
            let conn = rusqlite::Connection::open(&setup.db).unwrap();
            let scanned: bool = conn
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM health WHERE kind = 'scan'
                        AND id > (SELECT max(id) FROM health WHERE kind = 'start'))",
                    [],
                    |r| r.get(0),
                )
                .unwrap_or(false);
            killed_after_start_scan += usize::from(scanned);
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let storm_ops = ops.load(Ordering::Relaxed);

    // The last start: it finds what happened while fim was dead, then stops cleanly.
    let child = spawn_fim(&setup);
    wait_for_start_scan(&setup.db, child.id(), Duration::from_secs(120));
    // Let realtime records from the start's first moments settle.
    std::thread::sleep(Duration::from_secs(2));
    stop_fim(child);
    assert_eq!(integrity_check(&setup.db), "ok");

    assert_store_matches_disk(&setup.db, &setup.tree);
    // Every change the store recorded is on the output (the output is written first).
    let stored = store_changes(&setup.db);
    let (emitted, torn, findings) = output_changes(&setup.output);
    assert_eq!(
        findings, 0,
        "a crash must never look like tampering with the baseline"
    );
    let emitted_set: HashSet<&Report> = emitted.iter().collect();
    let missing: Vec<&Report> = stored.iter().filter(|c| !emitted_set.contains(c)).collect();
    assert!(
        missing.is_empty(),
        "{} stored changes are not on the output, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    // And the final state of every file is what the store's last change of it says.
    let disk = disk_state(&setup.tree);
    let mut last: BTreeMap<&[u8], &Report> = BTreeMap::new();
    for change in &stored {
        last.insert(&change.0, change);
    }
    for (path, change) in &last {
        match disk.get(*path) {
            Some((false, _, _, hash)) => {
                assert_ne!(
                    change.1,
                    4,
                    "{}: last change is a delete",
                    String::from_utf8_lossy(path)
                );
                let last_hash = stored
                    .iter()
                    .rev()
                    .find(|c| c.0 == *path && c.2.is_some())
                    .and_then(|c| c.2.clone());
                if last_hash.is_some() {
                    assert_eq!(&last_hash, hash, "{}", String::from_utf8_lossy(path));
                }
            }
            Some((true, ..)) => {}
            None => assert_eq!(
                change.1,
                4,
                "{} is gone but its last change is {change:?}",
                String::from_utf8_lossy(path)
            ),
        }
    }
    let files: BTreeSet<&Vec<u8>> = disk.iter().filter(|(_, s)| !s.0).map(|(p, _)| p).collect();
    let output_only = emitted.len().saturating_sub(stored.len());
    println!(
        "crash test: {iterations} SIGKILLs in {:.0}s ({killed_after_start_scan} after the start \
         scan had finished), {storm_ops} storm operations, {} files at the end; {} changes \
         stored, {} output lines ({output_only} more than stored: reports written before a \
         kill that the store had not committed yet), {torn} torn lines; store = disk, \
         integrity_check ok every time",
        started.elapsed().as_secs_f64(),
        files.len(),
        stored.len(),
        emitted.len(),
    );
}

/// A 4 KiB ring buffer cannot hold a storm: records are lost, and that must be counted (metric
/// and `fim status`) and answered by a rescan, so that in the end the store matches the disk
/// and every change is reported.
#[test]
fn a_ring_buffer_overflow_is_counted_and_recovered_by_a_rescan() {
    require_root();
    let setup = setup("[sensor]\nring_buffer_kib = 4\n");
    let child = spawn_fim(&setup);
    wait_for_start_scan(&setup.db, child.id(), Duration::from_secs(120));
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let writer = {
        let (tree, stop, ops) = (setup.tree.clone(), stop.clone(), ops.clone());
        std::thread::spawn(move || storm(tree, stop, ops, 7))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(
        setup.metrics,
        "fim_kernel_events_lost_total{backend=\"tracepoint\"}",
    )
    .unwrap_or(0.0)
        == 0.0
    {
        assert!(
            Instant::now() < deadline,
            "no kernel loss with a 4 KiB ring buffer"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    // Quiet now: the rescans the losses asked for run, then nothing is left to do.
    wait_until_quiet(&setup, Duration::from_secs(120));
    let lost = metric(
        setup.metrics,
        "fim_kernel_events_lost_total{backend=\"tracepoint\"}",
    )
    .unwrap();
    let rescans = metric(setup.metrics, "fim_rescans_total").unwrap();
    assert!(
        rescans >= 2.0,
        "the start scan and at least one loss rescan: {rescans}"
    );
    // While fim still runs: the store matches the disk (nothing is left for a later start).
    assert_store_matches_disk(&setup.db, &setup.tree);
    let status = Command::new(env!("CARGO_BIN_EXE_fim"))
        .args(["status", "--json", "--config"])
        .arg(&setup.config)
        .output()
        .unwrap();
    let status: Value = serde_json::from_slice(&status.stdout).expect("fim status --json");
    assert!(
        status["kernel_losses"].as_f64().unwrap_or(0.0) > 0.0,
        "fim status shows the losses: {status}"
    );
    assert!(status["rescans"].as_f64().unwrap_or(0.0) >= 1.0, "{status}");
    stop_fim(child);
    // Every change the store recorded is on the output.
    let stored = store_changes(&setup.db);
    let (emitted, torn, _) = output_changes(&setup.output);
    assert_eq!(torn, 0);
    let emitted_set: HashSet<&Report> = emitted.iter().collect();
    assert!(stored.iter().all(|c| emitted_set.contains(c)));
    let scan_changes = stored.len();
    println!(
        "overflow test: {} storm operations, {lost} kernel records lost, {rescans} rescans, \
         {scan_changes} changes stored; store = disk",
        ops.load(Ordering::Relaxed)
    );
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A sustained storm over 20,000 names, more than the change worker keeps up with: once the
/// job queue is full (65,536 jobs), the daemon's resident memory must stop growing while the
/// storm goes on, the overflow must be counted, and once the storm is over the store must
/// match the disk (overflowing jobs become rescans, never losses).
#[test]
fn a_sustained_storm_keeps_memory_bounded_and_loses_nothing() {
    require_root();
    let seconds: u64 = std::env::var("FIM_STORM_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let setup = setup("");
    let child = spawn_fim(&setup);
    let pid = child.id();
    wait_for_start_scan(&setup.db, pid, Duration::from_secs(60));
    let before = rss_kib(pid).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..2)
        .map(|k| {
            let (tree, stop, ops) = (setup.tree.clone(), stop.clone(), ops.clone());
            std::thread::spawn(move || storm_over(tree, stop, ops, 11 + k, 20_000))
        })
        .collect();
    // Until the queue is full: from then on every further job is remembered as a path.
    let deadline = Instant::now() + Duration::from_secs(120);
    while metric(setup.metrics, "fim_job_queue_overflow_total").unwrap_or(0.0) == 0.0 {
        assert!(
            Instant::now() < deadline,
            "the storm never filled the job queue"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let at_full = rss_kib(pid).unwrap();
    let mut peak = at_full;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(seconds) {
        peak = peak.max(rss_kib(pid).expect("fim is running"));
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let overflow = metric(setup.metrics, "fim_job_queue_overflow_total").unwrap_or(0.0);
    let lost = metric(
        setup.metrics,
        "fim_kernel_events_lost_total{backend=\"tracepoint\"}",
    )
    .unwrap_or(0.0);
    // Catch up: the queue drains and the rescans the overflow asked for run.
    wait_until_quiet(&setup, Duration::from_secs(600));
    let caught_up = started.elapsed().as_secs_f64() - seconds as f64;
    let rescans = metric(setup.metrics, "fim_rescans_total").unwrap_or(0.0);
    assert_store_matches_disk(&setup.db, &setup.tree);
    stop_fim(child);
    println!(
        "storm test: {} operations by 2 writers over 20,000 names; fim resident {} MiB before, \
         {} MiB when the job queue filled, peak {} MiB over the next {seconds}s of storm; \
         {overflow} jobs overflowed into rescans, {lost} kernel records lost, {rescans} \
         rescans, caught up {caught_up:.0}s after the storm; store = disk",
        ops.load(Ordering::Relaxed),
        before / 1024,
        at_full / 1024,
        peak / 1024,
    );
    assert!(overflow > 0.0);
    assert!(
        peak <= at_full + 16 * 1024,
        "memory kept growing with the queue full: {at_full} KiB then {peak} KiB"
    );
}
