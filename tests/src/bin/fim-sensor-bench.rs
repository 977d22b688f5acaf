//! `cargo xtask bench sensor`: the cost of the sensor on a file-changing workload.
//!
//! The workload (create+write+close, rename, chmod, unlink, in a loop) runs as a separate
//! process in a watched and in an unwatched directory, without fim and with every backend that
//! starts here. Runs are interleaved (round by round, every mode in turn) so that machine noise
//! hits all modes alike; the table shows medians and their ratio to the no-monitor median of
//! the same directory kind. Results also go to a JSON file.
//!
//! Each backend's floor row (`lsm-floor`, `fentry-floor`, `tp-floor`) attaches programs that
//! return at once wherever that backend attaches: the cost of the kernel's hook and
//! trampoline (or syscall-tracing) path alone, below which none of its programs can go.
//!
//! With `--profile`, one more pass per backend and tree runs with the kernel's BPF run-time
//! statistics on and prints, per program, how often it ran and its mean cost: where the
//! sensor's time goes. (The statistics cost two clock reads per program run themselves, so
//! that pass is kept apart from the timed rounds.)
//!
//! `--backends lsm,fentry` measures only the backends named (and always the no-monitor runs):
//! quicker when working on one of them.
//!
//! `--depth N` puts both directories N levels further down, where the filter's walk to the
//! filesystem root is longer.
//!
//! `--fanotify` adds two rows for the tracepoint backend with its completeness layer
//! (`sensor::fanotify`) running beside it, read the way the daemon reads them (the layer
//! first, its events held and deduplicated against the kernel records): `fanotify` with
//! the layer's inode marks on the watched tree, `fanotify-fs` with one filesystem mark
//! (`FAN_MARK_FILESYSTEM`) and the filtering done in user space, the alternative the inode
//! marks were chosen over. Their `layer/run` column counts the layer's events that no
//! kernel record explained (the workload only makes syscalls: ideally none).
//!
//! Usage: fim-sensor-bench [--rounds R] [--iterations N] [--out FILE] [--profile]
//! [--backends NAME,...] [--depth N] [--fanotify]

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use fim::sensor::{
    self, Backend, SensorConfig, WatchRoot,
    fanotify::{Completeness, MarkScope},
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = if args.first().map(String::as_str) == Some("workload") {
        workload(&args[1..])
    } else {
        bench(&args)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fim-sensor-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The measured workload: N times create+write+close, rename, chmod, unlink.
fn workload(args: &[String]) -> Result<()> {
    let dir = PathBuf::from(args.first().context("workload DIR N")?);
    let n: usize = args.get(1).context("workload DIR N")?.parse()?;
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).expect("no NUL in bench paths");
    for i in 0..n {
        let a = c(&dir.join(format!("f{i}")));
        let b = c(&dir.join(format!("g{i}")));
        // SAFETY: valid C strings and a buffer of the given length.
        unsafe {
            let fd = libc::open(
                a.as_ptr(),
                libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC | libc::O_CLOEXEC,
                0o644,
            );
            if fd < 0 {
                bail!("open: {}", std::io::Error::last_os_error());
            }
            libc::write(fd, b"benchmark data\n".as_ptr().cast(), 15);
            libc::close(fd);
            if libc::rename(a.as_ptr(), b.as_ptr()) != 0
                || libc::chmod(b.as_ptr(), 0o600) != 0
                || libc::unlink(b.as_ptr()) != 0
            {
                bail!("workload step failed: {}", std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    None,
    /// A backend's attach points with programs that return at once.
    Floor(Backend),
    With(Backend),
    /// The tracepoint backend with its completeness layer, marks in that scope.
    WithLayer(MarkScope),
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Floor(Backend::Lsm) => "lsm-floor",
            Mode::Floor(Backend::Fentry) => "fentry-floor",
            Mode::Floor(Backend::Tracepoint) => "tp-floor",
            Mode::With(b) => b.name(),
            Mode::WithLayer(MarkScope::Inodes) => "fanotify",
            Mode::WithLayer(MarkScope::Filesystem) => "fanotify-fs",
        }
    }
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// CPU seconds (user + system) of the children waited for so far.
fn children_cpu() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Runs the workload once; returns (wall seconds, CPU seconds of the workload process).
/// The CPU time includes the eBPF programs (they run in the workload's syscalls) but not the
/// time spent waiting for a CPU, so it is far less noisy on a shared machine.
fn time_workload(dir: &Path, iterations: usize) -> Result<(f64, f64)> {
    let cpu_before = children_cpu();
    let started = Instant::now();
    let status = Command::new(std::env::current_exe()?)
        .arg("workload")
        .arg(dir)
        .arg(iterations.to_string())
        .status()
        .context("running the workload")?;
    if !status.success() {
        bail!("workload failed: {status}");
    }
    Ok((started.elapsed().as_secs_f64(), children_cpu() - cpu_before))
}

/// A started sensor (and completeness layer) drained by its own thread until dropped.
struct Running {
    stop: Arc<AtomicBool>,
    events: Arc<AtomicU64>,
    layer_events: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

/// What the draining thread holds.
struct Drained {
    sensor: sensor::Sensor,
    layer: Option<Completeness>,
    dedup: fim::pipeline::Dedup,
    events: Arc<AtomicU64>,
    layer_events: Arc<AtomicU64>,
}

impl Drained {
    /// One wait for records, read as the daemon reads them: the layer first, and what it has
    /// queued before a batch of kernel records is noted.
    async fn once(&mut self) {
        let (mut from_layer, mut from_kernel) = (Vec::new(), Vec::new());
        match &mut self.layer {
            Some(layer) => {
                tokio::select! {
                    biased;
                    _ = layer.recv(&mut from_layer) => {}
                    _ = self.sensor.recv(&mut from_kernel) => {
                        let _ = layer.read_now(&mut from_layer);
                    }
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
            None => {
                let _ = tokio::time::timeout(
                    Duration::from_millis(100),
                    self.sensor.recv(&mut from_kernel),
                )
                .await;
            }
        }
        for event in from_layer {
            self.dedup.hold(event);
        }
        let now = sensor::fanotify::monotonic_ns();
        for event in &from_kernel {
            self.dedup.note(event, now);
        }
        self.events
            .fetch_add(from_kernel.len() as u64, Ordering::Relaxed);
        let mut released = Vec::new();
        self.dedup.release(now, &mut released);
        self.layer_events
            .fetch_add(released.len() as u64, Ordering::Relaxed);
    }

    fn lost(&self) -> u64 {
        self.sensor.lost_events().unwrap_or(0) + self.layer.as_ref().map_or(0, |l| l.lost_events())
    }
}

impl Running {
    fn start(backend: Backend, watched: &Path, layer: Option<MarkScope>) -> Result<Running> {
        let config = SensorConfig {
            roots: vec![WatchRoot {
                path: watched.to_path_buf(),
                rule_id: 1,
                recursive: true,
            }],
            ..SensorConfig::default()
        };
        let stop = Arc::new(AtomicBool::new(false));
        let events = Arc::new(AtomicU64::new(0));
        let layer_events = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop2, events2, layer2) = (
            Arc::clone(&stop),
            Arc::clone(&events),
            Arc::clone(&layer_events),
        );
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let started = async {
                    let sensor = sensor::start(backend, &config).await?;
                    let layer = match layer {
                        Some(scope) => {
                            Some(Completeness::start_with(backend, &config.roots, scope).await?)
                        }
                        None => None,
                    };
                    anyhow::Ok((sensor, layer))
                };
                let mut drained = match started.await {
                    Ok((sensor, layer)) => {
                        let _ = ready_tx.send(Ok(()));
                        Drained {
                            sensor,
                            layer,
                            dedup: fim::pipeline::Dedup::new(),
                            events: events2,
                            layer_events: layer2,
                        }
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("{e:#}")));
                        return 0;
                    }
                };
                while !stop2.load(Ordering::Relaxed) {
                    drained.once().await;
                }
                drained.lost()
            })
        });
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Running {
                stop,
                events,
                layer_events,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                bail!("{e}")
            }
            Err(_) => bail!("sensor thread died"),
        }
    }

    /// Stops draining; returns (kernel events seen, layer events not explained, events lost).
    fn finish(mut self) -> (u64, u64, u64) {
        // Let the drain catch up with the last records before stopping.
        std::thread::sleep(Duration::from_millis(300));
        self.stop.store(true, Ordering::Relaxed);
        let lost = self
            .thread
            .take()
            .map(|t| t.join().unwrap_or(0))
            .unwrap_or(0);
        (
            self.events.load(Ordering::Relaxed),
            self.layer_events.load(Ordering::Relaxed),
            lost,
        )
    }
}

/// A pause between runs, so that one run's teardown is not timed as part of the next.
const SETTLE: Duration = Duration::from_millis(300);

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn bench(args: &[String]) -> Result<()> {
    let rounds: usize = flag(args, "--rounds")
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(7);
    let iterations: usize = flag(args, "--iterations")
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(20_000);
    let out = flag(args, "--out")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/bench/sensor.json"));
    // `--depth N`: both trees N directories further down (the kernel filter walks from the
    // workload's directory up to the filesystem root).
    let depth: usize = flag(args, "--depth")
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(0);
    let base = std::env::temp_dir().join(format!("fim-bench-{}", std::process::id()));
    let nested =
        |tree: &str| (0..depth).fold(base.join(tree), |dir, level| dir.join(format!("d{level}")));
    let watched = nested("watched");
    let unwatched = nested("unwatched");
    std::fs::create_dir_all(&watched)?;
    std::fs::create_dir_all(&unwatched)?;
    let watched = std::fs::canonicalize(&watched)?;

    let wanted: Vec<Backend> = match flag(args, "--backends") {
        None => Backend::ALL.to_vec(),
        Some(list) => list
            .split(',')
            .map(|name| {
                Backend::ALL
                    .into_iter()
                    .find(|b| b.name() == name)
                    .with_context(|| {
                        format!("unknown backend {name:?} in --backends: lsm, fentry or tracepoint")
                    })
            })
            .collect::<Result<_>>()?,
    };
    let mut modes = vec![Mode::None];
    for backend in wanted {
        match Running::start(backend, &watched, None) {
            Ok(running) => {
                running.finish();
                modes.push(Mode::Floor(backend));
                modes.push(Mode::With(backend));
            }
            Err(e) => println!("backend {} not measured: {e}", backend.name()),
        }
    }
    if args.iter().any(|a| a == "--fanotify") {
        if !modes.contains(&Mode::With(Backend::Tracepoint)) {
            bail!(
                "--fanotify measures the tracepoint backend's completeness layer: the tracepoint backend must be measured too"
            );
        }
        for scope in [MarkScope::Inodes, MarkScope::Filesystem] {
            Running::start(Backend::Tracepoint, &watched, Some(scope))
                .with_context(|| format!("starting the {} mode", Mode::WithLayer(scope).name()))?
                .finish();
            modes.push(Mode::WithLayer(scope));
        }
    }
    println!(
        "kernel {}: {rounds} rounds x {iterations} iterations of create+write+close, rename, chmod, unlink",
        fim::host::kernel_release()
    );
    // times[mode][tree] = samples; tree 0 = unwatched, 1 = watched
    let mut times = vec![[Vec::new(), Vec::new()]; modes.len()];
    let mut cpu = vec![[Vec::new(), Vec::new()]; modes.len()];
    let mut seen = vec![[0u64; 2]; modes.len()];
    let mut layer_seen = vec![[0u64; 2]; modes.len()];
    let mut lost = vec![0u64; modes.len()];
    // One untimed run per tree first: the first run after boot (or after the directories are
    // made) is slower by a few percent (the kernel's caches and slabs grow), and in a
    // one-round run it was always the no-monitor baseline, which made every ratio look
    // smaller than it is.
    for dir in [&unwatched, &watched] {
        time_workload(dir, iterations)?;
    }
    for round in 0..rounds {
        // Each round starts at another mode and alternates the trees: whatever a run leaves
        // behind (a detached sensor's deferred frees, a directory's state) then slows a
        // different mode each time instead of always the one after it.
        for step in 0..modes.len() {
            let m = (round + step) % modes.len();
            let mode = &modes[m];
            let mut trees = [(0, &unwatched), (1, &watched)];
            if round % 2 == 1 {
                trees.reverse();
            }
            for (t, dir) in trees {
                let running = match mode {
                    Mode::With(b) => Some(Running::start(*b, &watched, None)?),
                    Mode::WithLayer(scope) => {
                        Some(Running::start(Backend::Tracepoint, &watched, Some(*scope))?)
                    }
                    _ => None,
                };
                let floor = match mode {
                    Mode::Floor(b) => Some(sensor::attach_floor(*b)?),
                    _ => None,
                };
                // Whatever the kernel does right after creating maps and attaching programs
                // (it is not the workload's cost) happens before the timing starts.
                std::thread::sleep(SETTLE);
                let (elapsed, cpu_s) = time_workload(dir, iterations)?;
                drop(floor);
                if let Some(r) = running {
                    let (events, layer_events, l) = r.finish();
                    seen[m][t] += events;
                    layer_seen[m][t] += layer_events;
                    lost[m] += l;
                }
                std::thread::sleep(SETTLE);
                times[m][t].push(elapsed);
                cpu[m][t].push(cpu_s);
            }
        }
        eprintln!("round {}/{rounds} done", round + 1);
    }
    let mut rows = Vec::new();
    let mut baseline = [0.0f64; 2];
    let mut cpu_baseline = [0.0f64; 2];
    println!(
        "{:<12} {:<10} {:>10} {:>8} {:>10} {:>8} {:>12} {:>6} {:>10}",
        "mode", "tree", "wall s", "ratio", "cpu s", "ratio", "events/run", "lost", "layer/run"
    );
    for (m, mode) in modes.iter().enumerate() {
        for (t, tree) in ["unwatched", "watched"].iter().enumerate() {
            let med = median(&mut times[m][t].clone());
            let cpu_med = median(&mut cpu[m][t].clone());
            if *mode == Mode::None {
                baseline[t] = med;
                cpu_baseline[t] = cpu_med;
            }
            let ratio = med / baseline[t];
            let cpu_ratio = cpu_med / cpu_baseline[t];
            let per_run = seen[m][t] / rounds as u64;
            let layer_per_run = layer_seen[m][t] / rounds as u64;
            println!(
                "{:<12} {:<10} {:>10.3} {:>7.3}x {:>10.3} {:>7.3}x {:>12} {:>6} {:>10}",
                mode.name(),
                tree,
                med,
                ratio,
                cpu_med,
                cpu_ratio,
                per_run,
                lost[m],
                layer_per_run
            );
            rows.push(serde_json::json!({
                "mode": mode.name(), "tree": tree, "median_s": med, "ratio_to_none": ratio,
                "samples_s": times[m][t],
                "cpu_median_s": cpu_med, "cpu_ratio_to_none": cpu_ratio, "cpu_samples_s": cpu[m][t], "events_per_run": per_run, "lost": lost[m],
                "layer_events_per_run": layer_per_run,
            }));
        }
    }
    let report = serde_json::json!({
        "kernel": fim::host::kernel_release(),
        "rounds": rounds,
        "iterations": iterations,
        "depth": depth,
        "workload": "create+write+close, rename, chmod, unlink",
        "results": rows,
    });
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    println!("written to {}", out.display());
    if args.iter().any(|a| a == "--profile") {
        for mode in &modes {
            if let Mode::With(backend) = mode {
                for (tree, dir) in [("unwatched", &unwatched), ("watched", &watched)] {
                    profile(*backend, &watched, tree, dir, iterations)?;
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}

/// Run count and run time (ns) of every loaded BPF program, by id.
fn program_stats() -> std::collections::BTreeMap<u32, (String, u64, u64)> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| {
            let name = p.name_as_str().unwrap_or("?").to_string();
            (
                p.id(),
                (name, p.run_count(), p.run_time().as_nanos() as u64),
            )
        })
        .collect()
}

/// One workload run with BPF statistics on: per program of this sensor, runs and mean cost.
fn profile(backend: Backend, watched: &Path, tree: &str, dir: &Path, n: usize) -> Result<()> {
    let before_load = program_stats();
    let running = Running::start(backend, watched, None)?;
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("enabling BPF run-time statistics")?;
    let before = program_stats();
    time_workload(dir, n)?;
    let after = program_stats();
    running.finish();
    println!(
        "profile {} {tree}: {:<16} {:>10} {:>8} {:>12}",
        backend.name(),
        "program",
        "runs",
        "ns/run",
        "ns/iter"
    );
    let mut total = 0u64;
    for (id, (name, runs, ns)) in &after {
        if before_load.contains_key(id) {
            continue;
        }
        let (r0, t0) = before.get(id).map(|(_, r, t)| (*r, *t)).unwrap_or((0, 0));
        let (runs, ns) = (runs - r0, ns - t0);
        if runs == 0 {
            continue;
        }
        total += ns;
        println!(
            "profile {} {tree}: {name:<16} {runs:>10} {:>8.0} {:>12.1}",
            backend.name(),
            ns as f64 / runs as f64,
            ns as f64 / n as f64
        );
    }
    println!(
        "profile {} {tree}: {:<16} {:>10} {:>8} {:>12.1}",
        backend.name(),
        "total",
        "",
        "",
        total as f64 / n as f64
    );
    Ok(())
}
