//! `fim run`: the sensor feeding the pipeline, the change worker, the store, the outputs and
//! the metrics endpoint, wired together.
//!
//! Threads: the async main task reads the ring buffer, enriches, matches rules and assembles
//! (the hot path); one change worker examines and hashes paths, runs the drift check at start
//! and every rescan, writes outputs and feeds the store's batching writer.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::baseline::{self, BaselineEntry, ScanOptions, Scope};
use crate::config::{Config, RuleSet};
use crate::enrich::{ProcessCache, monotonic_epoch_ns};
use crate::metrics::{self, Metrics};
use crate::output::{OcsfContext, OutputSink};
use crate::pipeline::{
    Assembler, BaselineLookup, ChangeMaker, Classifier, Examine, Examined, Job, JobKind, Verdict,
};
use crate::sensor::{self, Backend, Event, EventKind, SensorConfig, WatchRoot};
use crate::store::{ChangeRecord, Retention, Store, WriterSettings, local_hostname};

const TICK: Duration = Duration::from_millis(100);
/// How long a placeholder (a creation reported, the path gone before it was examined) waits
/// for its delete or rename record before the path is looked at again.
const PLACEHOLDER_CHECK: Duration = Duration::from_secs(2);
/// How often old change and health rows are pruned (`[store] retention_days`, `max_changes`).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Why a rescan runs after kernel records were lost (see `loss_rescan_queued`).
const LOSS: &str = "kernel loss";
/// Losses are logged and recorded as health rows at most this often (their sum).
const LOSS_REPORT_EVERY: Duration = Duration::from_secs(5);
/// How long after its record the change worker waits before it looks at the path of an lsm
/// record (see `wait_for_the_operation`).
const PRE_HOOK_GRACE: Duration = Duration::from_millis(100);

mod feeder;
mod outputs;

use feeder::{Feeder, JOB_QUEUE};
use outputs::{Outputs, report_loss, writer_health};

/// The sensor's roots from the configured rules: the literal prefix of each enabled rule's
/// path, recursive unless the rule only reaches the root itself or its direct entries.
/// Roots that do not exist are left out (the sensor reports what it could not register).
pub fn sensor_roots(rules: &RuleSet) -> Vec<WatchRoot> {
    rules
        .watch_roots()
        .into_iter()
        .enumerate()
        .filter(|(_, root)| root.path.exists())
        .map(|(i, root)| WatchRoot {
            path: root.path,
            rule_id: i as u32 + 1,
            recursive: root.max_depth.is_none_or(|depth| depth > 1),
        })
        .collect()
}

/// Gives memory freed by a burst of work (the kernel's BTF parsed while choosing a backend, a
/// rescan) back to the system: glibc keeps freed heap otherwise, and it shows as resident.
fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

fn scan_options(config: &Config, rehash: bool) -> ScanOptions {
    ScanOptions {
        max_file_size: config.hashing.max_file_size,
        scan_bytes_per_sec: config.hashing.scan_bytes_per_sec,
        content_max_size: config.store.content_max_size,
        progress: false,
        rehash,
    }
}

/// Baseline rows from the store, one path at a time.
struct StoreLookup(Store);

impl BaselineLookup for StoreLookup {
    fn get(&mut self, path: &[u8]) -> Result<Option<BaselineEntry>> {
        self.0.baseline_entry(path)
    }
}

/// The filesystem as the scan sees it.
struct FsExamine {
    rules: Arc<RuleSet>,
    config: Config,
}

impl Examine for FsExamine {
    fn examine(
        &mut self,
        path: &[u8],
        previous: Option<&BaselineEntry>,
        keep_content_up_to: Option<u64>,
        rehash: bool,
    ) -> Examined {
        use std::os::unix::ffi::OsStrExt;
        let mut options = scan_options(&self.config, rehash);
        if let Some(limit) = keep_content_up_to {
            options.content_max_size = limit;
        }
        let path = Path::new(std::ffi::OsStr::from_bytes(path));
        match baseline::observe(path, &self.rules, &options, previous) {
            Some((entry, content)) => Examined::Present { entry, content },
            None => Examined::Vanished,
        }
    }
}

/// What the change worker is asked to do.
enum Work {
    Job(Box<Job>),
    /// Compare these places (or everything) with the baseline; why, for the health row.
    Rescan(Scope, &'static str),
    Stop,
}

fn change_worker(
    work: Receiver<Work>,
    mut maker: ChangeMaker,
    mut outputs: Outputs,
    config: Config,
    rules: Arc<RuleSet>,
    pending: Arc<AtomicU64>,
    loss_rescan_queued: Arc<AtomicBool>,
) {
    let host = local_hostname();
    let mut store = match Store::open(&config.state_dir) {
        Ok(store) => Some(store),
        Err(e) => {
            log::error!("the change worker cannot open the store for rescans: {e:#}");
            None
        }
    };
    let mut last_flush = Instant::now();
    let mut last_prune: Option<Instant> = None;
    let mut baseline_files: i64 = 0;
    let mut placeholders: std::collections::VecDeque<(Instant, Vec<u8>)> =
        std::collections::VecDeque::new();
    loop {
        let item = match work.recv_timeout(Duration::from_millis(200)) {
            Ok(item) => Some(item),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        match item {
            Some(Work::Job(job)) => {
                wait_for_the_operation(&job);
                let started = Instant::now();
                let made = maker.make(&job);
                if made.baseline_delta != 0 {
                    baseline_files = (baseline_files + made.baseline_delta).max(0);
                    outputs.metrics.set_baseline_files(baseline_files as u64);
                }
                if made.hashed_bytes > 0 {
                    outputs.metrics.hashed(made.hashed_bytes, started.elapsed());
                }
                for change in &made.changes {
                    outputs.emit(change, Some(job.ktime_ns));
                }
                if !made.changes.is_empty() {
                    // The report leaves fim before the baseline moves on: killed in between,
                    // the next start finds the change again (at least once, never zero).
                    outputs.flush();
                }
                for op in made.ops {
                    outputs.store(op);
                }
                if made.moved_below {
                    // The next lookups read below the new name from SQLite.
                    let _ = outputs.writer.flush();
                }
                if let Some(path) = made.placeholder {
                    placeholders.push_back((Instant::now() + PLACEHOLDER_CHECK, path));
                }
                if let Some(dir) = made.scan_below {
                    use std::os::unix::ffi::OsStrExt;
                    let dir = PathBuf::from(std::ffi::OsStr::from_bytes(&dir));
                    rescan_now(
                        &mut store,
                        &mut maker,
                        &mut outputs,
                        &config,
                        &rules,
                        &host,
                        Scope::Paths(vec![dir]),
                        "directory moved in",
                        &mut baseline_files,
                    );
                }
                pending.fetch_sub(1, Ordering::Relaxed);
            }
            Some(Work::Rescan(scope, why)) => {
                if why == LOSS {
                    // Losses from now on need a rescan of their own.
                    loss_rescan_queued.store(false, Ordering::Release);
                }
                rescan_now(
                    &mut store,
                    &mut maker,
                    &mut outputs,
                    &config,
                    &rules,
                    &host,
                    scope,
                    why,
                    &mut baseline_files,
                );
            }
            Some(Work::Stop) => break,
            None => {}
        }
        // Placeholders whose delete or rename record never came (lost): look again.
        let mut due = Vec::new();
        while placeholders
            .front()
            .is_some_and(|(at, _)| *at <= Instant::now())
        {
            if let Some((_, path)) = placeholders.pop_front()
                && maker.is_placeholder(&path)
            {
                use std::os::unix::ffi::OsStrExt;
                due.push(PathBuf::from(std::ffi::OsStr::from_bytes(&path)));
            }
        }
        if !due.is_empty() {
            rescan_now(
                &mut store,
                &mut maker,
                &mut outputs,
                &config,
                &rules,
                &host,
                Scope::Paths(due),
                "unexplained disappearance",
                &mut baseline_files,
            );
        }
        // Retention, like `fim scan` applies it: at start and then every hour.
        if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY)
            && let Some(store) = store.as_mut()
        {
            last_prune = Some(Instant::now());
            let retention_ns =
                i64::from(config.store.retention_days).saturating_mul(86_400 * 1_000_000_000);
            let retention = Retention {
                older_than_ns: now_ns().saturating_sub(retention_ns),
                max_changes: config.store.max_changes,
            };
            if let Err(e) = store.prune(retention) {
                outputs.metrics.store_error();
                log::warn!("pruning old rows: {e:#}");
            }
        }
        if last_flush.elapsed() >= Duration::from_millis(200) {
            last_flush = Instant::now();
            if let Err(e) = outputs.sink.flush() {
                outputs.metrics.output_error();
                log::warn!("output: {e:#}");
            }
            let stats = outputs.writer.stats();
            outputs
                .metrics
                .set_store_totals(stats.write_errors, stats.rows_dropped, stats.pending);
        }
    }
    let _ = outputs.sink.flush();
}

/// Compares `scope` with the baseline now (start, kernel loss, overflow, a directory moved in)
/// and reports what differs, attribution unknown.
#[allow(clippy::too_many_arguments)]
fn rescan_now(
    store: &mut Option<Store>,
    maker: &mut ChangeMaker,
    outputs: &mut Outputs,
    config: &Config,
    rules: &RuleSet,
    host: &str,
    scope: Scope,
    why: &'static str,
    baseline_files: &mut i64,
) {
    let Some(store) = store.as_mut() else {
        return;
    };
    // Let the writer commit what is queued, so the scan compares with it.
    let _ = outputs.writer.flush();
    outputs.metrics.rescan();
    let started = Instant::now();
    let options = scan_options(config, false);
    // Each change is written out before the scan commits the rows it explains (the scan
    // commits after this callback returns): killed in between, the next start reports it again.
    let result = baseline::rescan(store, rules, &options, &scope, |item| {
        outputs.emit(
            &ChangeRecord::from_drift_item(&item, rules, host, now_ns()),
            None,
        );
        outputs.flush();
    });
    maker.forget_recent();
    release_free_memory();
    match result {
        Ok(report) => {
            let kind = if why == "start" { "scan" } else { "rescan" };
            outputs.health(
                kind,
                None,
                format!(
                    "{why}: {}{} in {:.1}s; {} entries, {} hashed",
                    report.summary(),
                    if report.first_scan {
                        " (baseline created)"
                    } else {
                        ""
                    },
                    started.elapsed().as_secs_f64(),
                    report.stats.entries,
                    report.stats.files_hashed,
                ),
                0,
            );
            if let Ok(n) = store.baseline_len() {
                *baseline_files = n as i64;
                outputs.metrics.set_baseline_files(n);
            }
        }
        Err(e) => {
            outputs.metrics.store_error();
            log::error!("rescan ({why}) failed: {e:#}");
        }
    }
}

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn run(config: Config, forced: Option<Backend>) -> Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let stop = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    };
    run_until(config, forced, stop).await
}

/// Runs the daemon until `stop` completes (tests and embedders stop it this way).
pub async fn run_until(
    config: Config,
    forced: Option<Backend>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let metrics = Arc::new(Metrics::new());
    let listener = metrics::bind(config.metrics_address).await?;
    tokio::spawn(metrics::serve(listener, Arc::clone(&metrics)));
    log::info!("metrics on http://{}/metrics", config.metrics_address);

    let mut store = Store::open(&config.state_dir)?;
    // Before anything reads or writes the baseline: are its rows still the ones fim wrote?
    let checked = Instant::now();
    let integrity = store
        .check_integrity()
        .context("authenticating the baseline")?;
    log::info!(
        "baseline integrity checked in {:.2}s",
        checked.elapsed().as_secs_f64()
    );
    let writer = Arc::new(
        store
            .spawn_writer(WriterSettings::default())
            .context("starting the store writer")?,
    );
    let rules = Arc::new(config.rules.clone());

    // The sensor starts before the drift check, so nothing that happens meanwhile is missed.
    let roots = sensor_roots(&rules);
    log::info!(
        "watching {} roots: {}",
        roots.len(),
        roots
            .iter()
            .map(|r| r.path.display().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let sensor_config = SensorConfig {
        roots: roots.clone(),
        ring_buffer_bytes: config.ring_buffer_bytes,
        ..SensorConfig::default()
    };
    let selection = sensor::start_best(forced, &sensor_config).await?;
    for (backend, why) in &selection.skipped {
        log::warn!("backend {} skipped: {why:#}", backend.name());
    }
    let mut sensor = selection.sensor;
    release_free_memory();
    let backend = sensor.backend().name();
    metrics.sensor(backend);
    log::info!(
        "sensor backend {backend} is running on kernel {}",
        crate::host::kernel_release()
    );

    let clock_offset_ns = monotonic_epoch_ns();
    let mut outputs = Outputs {
        sink: OutputSink::open(&config.output, OcsfContext::new(local_hostname()))
            .context("opening the output")?,
        writer: Arc::clone(&writer),
        metrics: Arc::clone(&metrics),
        clock_offset_ns,
    };
    outputs.health(
        "start",
        Some(backend),
        format!(
            "fim {} pid {} on kernel {}",
            env!("CARGO_PKG_VERSION"),
            std::process::id(),
            crate::host::kernel_release()
        ),
        0,
    );
    outputs.integrity(&integrity);
    let maker = ChangeMaker::new(
        Box::new(StoreLookup(Store::open(&config.state_dir)?)),
        Box::new(FsExamine {
            rules: Arc::clone(&rules),
            config: config.clone(),
        }),
        local_hostname(),
        config.store.content_max_size,
    );
    let (tx, rx) = mpsc::sync_channel(JOB_QUEUE);
    let pending = Arc::new(AtomicU64::new(0));
    // Changes made while fim was not running come first.
    tx.send(Work::Rescan(Scope::Everything, "start"))
        .context("queueing the start scan")?;
    let loss_rescan_queued = Arc::new(AtomicBool::new(false));
    let worker = {
        let (config, rules, done) = (config.clone(), Arc::clone(&rules), Arc::clone(&pending));
        let queued = Arc::clone(&loss_rescan_queued);
        std::thread::Builder::new()
            .name("fim-changes".into())
            .spawn(move || change_worker(rx, maker, outputs, config, rules, done, queued))
            .context("starting the change worker")?
    };
    let mut feeder = Feeder::new(tx.clone(), Arc::clone(&pending));
    let classifier = Classifier::new(
        Arc::clone(&rules),
        config.authorized.clone(),
        config.excluded.clone(),
    );
    let mut enrich = ProcessCache::new();
    let excluded_exes: Vec<Vec<u8>> = config
        .excluded
        .iter()
        .map(|p| p.as_os_str().as_encoded_bytes().to_vec())
        .collect();
    let mut assembler = Assembler::new(clock_offset_ns);
    let mut batch: Vec<Event> = Vec::new();
    let mut jobs: Vec<Job> = Vec::new();
    let mut tick = tokio::time::interval(TICK);
    let mut lost_seen = 0u64;
    let mut unreported_loss = 0u64;
    let mut loss_drain_mark: Option<u64> = None;
    let mut sent_at_loss_rescan = 0u64;
    let mut last_loss_report: Option<Instant> = None;
    let mut malformed_seen = 0u64;
    let root_paths: Vec<PathBuf> = roots.iter().map(|r| r.path.clone()).collect();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            received = sensor.recv(&mut batch) => {
                received?;
                metrics.kernel_records(backend, batch.len() as u64);
                for event in batch.drain(..) {
                    // An excluded executable starting: drop that process in the kernel too.
                    if event.kind == EventKind::Exec
                        && excluded_exes.contains(&event.path)
                        && let Err(e) = sensor.exclude_actor(event.actor.tgid, event.actor.start_boottime_ns)
                    {
                        log::warn!("excluding pid {} in the kernel: {e:#}", event.actor.tgid);
                    }
                    match classifier.classify(event, &mut enrich) {
                        Verdict::Report(o) => assembler.observe(*o, &mut jobs),
                        Verdict::NoRule | Verdict::Excluded | Verdict::Exec => {}
                    }
                }
                for job in jobs.drain(..) {
                    feeder.job(job);
                }
            }
            _ = tick.tick() => {
                let now = clock_ns_monotonic();
                assembler.tick(now, &mut jobs);
                for job in jobs.drain(..) {
                    feeder.job(job);
                }
                feeder.drain_overflow();
                let lost = sensor.lost_events().unwrap_or(lost_seen);
                metrics.set_lost(backend, lost);
                let malformed = sensor.malformed_records();
                metrics.malformed(malformed - malformed_seen);
                malformed_seen = malformed;
                if lost > lost_seen {
                    unreported_loss += lost - lost_seen;
                    lost_seen = lost;
                    // The lost records may include the closes of open write sessions, which
                    // would then never end: examine them all now. A writer still open is
                    // examined again at its close (a close without a session is examined).
                    assembler.flush_all(&mut jobs);
                    for job in jobs.drain(..) {
                        feeder.job(job);
                    }
                    // The rescan must come after the jobs of every record the kernel wrote
                    // before the loss: those may still be unread in the ring. Wait for a
                    // whole drain that started after now.
                    loss_drain_mark = Some(sensor.drains());
                }
                if let Some(mark) = loss_drain_mark
                    && sensor.drains() >= mark + 2
                {
                    loss_drain_mark = None;
                    // A loss rescan still waiting with no job queued behind it covers this
                    // loss too; otherwise a new one goes behind those jobs (a stale delete
                    // processed after the rescan would drop a file that is there).
                    let covered = loss_rescan_queued.load(Ordering::Acquire)
                        && feeder.sent == sent_at_loss_rescan;
                    if !covered {
                        loss_rescan_queued.store(true, Ordering::Release);
                        sent_at_loss_rescan = feeder.sent;
                        if tx.try_send(Work::Rescan(Scope::Paths(root_paths.clone()), LOSS)).is_err() {
                            loss_rescan_queued.store(false, Ordering::Release);
                            feeder.overflow_everything = true;
                        }
                    }
                }
                // Logged and recorded at most every few seconds while losses go on.
                if unreported_loss > 0 && last_loss_report.is_none_or(|at| at.elapsed() >= LOSS_REPORT_EVERY) {
                    report_loss(&writer, backend, unreported_loss);
                    unreported_loss = 0;
                    last_loss_report = Some(Instant::now());
                }
                metrics.set_queue_depth(pending.load(Ordering::Relaxed));
                metrics.set_backpressure_totals(feeder.overflowed, assembler.evicted);
            }
            _ = &mut stop => break,
        }
    }
    if unreported_loss > 0 {
        report_loss(&writer, backend, unreported_loss);
    }
    log::info!("stopping; lost kernel records: {lost_seen}");
    assembler.flush_all(&mut jobs);
    for job in jobs.drain(..) {
        pending.fetch_add(1, Ordering::Relaxed);
        let _ = tx.send(Work::Job(Box::new(job)));
    }
    let _ = tx.send(Work::Stop);
    let _ = worker.join();
    writer_health(&writer, "stop", backend, "stopped".into(), 0);
    drop(feeder);
    match Arc::try_unwrap(writer) {
        Ok(writer) => {
            writer.shutdown().context("flushing the store")?;
        }
        Err(writer) => {
            writer.flush().context("flushing the store")?;
        }
    }
    Ok(())
}

/// The lsm backend reports from the kernel's LSM hooks, which run before the operation they
/// announce takes effect: a job examined at once could look before a chmod, a rename or a
/// mkdir was done, and report nothing changed or a path that is not there (seen in the 6.12
/// test VM: a renamed file's row missing, so its later delete had no previous state). So
/// the worker does not look at a path before `PRE_HOOK_GRACE` has passed since the record.
/// The other backends report after the operation (fexit, sys_exit); a delete looks at
/// nothing. In a burst only the first job waits: the ones behind it are older by then.
fn wait_for_the_operation(job: &Job) {
    if let Some(wait) = pre_hook_wait(job, clock_ns_monotonic()) {
        std::thread::sleep(wait);
    }
}

/// How long `job` must still wait at monotonic time `now_ns` (see `wait_for_the_operation`).
fn pre_hook_wait(job: &Job, now_ns: u64) -> Option<Duration> {
    if job.backend != Backend::Lsm.name() || job.what == JobKind::Delete {
        return None;
    }
    let grace = PRE_HOOK_GRACE.as_nanos() as u64;
    let due = job.ktime_ns.saturating_add(grace);
    // A record stamped after `now` (clock skew, never expected) waits no longer than one grace.
    (now_ns < due).then(|| Duration::from_nanos((due - now_ns).min(grace)))
}

fn clock_ns_monotonic() -> u64 {
    // SAFETY: clock_gettime fills the struct it is given.
    let ts = unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        ts
    };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::feeder::OVERFLOW_PATHS;
    use super::*;
    use crate::pipeline::Process;

    fn job(path: &str) -> Job {
        Job {
            what: JobKind::Examine,
            kind: EventKind::Modified,
            file_kind: None,
            path: path.as_bytes().to_vec(),
            new_path: None,
            activity: crate::store::activity::UPDATE,
            rule: None,
            rule2: None,
            process: Arc::new(Process::default()),
            authorized: false,
            backend: "tracepoint",
            truncated_path: false,
            time_ns: 0,
            ktime_ns: 0,
        }
    }

    /// Only an lsm record's job that looks at the path waits, and only until the grace since
    /// its record has passed.
    #[test]
    fn only_fresh_lsm_jobs_wait_for_their_operation() {
        let grace = PRE_HOOK_GRACE.as_nanos() as u64;
        let at = |backend: &'static str, what: JobKind, ktime_ns: u64| Job {
            backend,
            what,
            ktime_ns,
            ..job("/w/a")
        };
        let now = 10 * grace;
        let lsm = Backend::Lsm.name();
        assert_eq!(
            pre_hook_wait(&at(lsm, JobKind::Examine, now), now),
            Some(PRE_HOOK_GRACE)
        );
        assert_eq!(
            pre_hook_wait(&at(lsm, JobKind::Rename, now - grace / 4), now),
            Some(Duration::from_nanos(grace - grace / 4))
        );
        assert_eq!(
            pre_hook_wait(&at(lsm, JobKind::Examine, now - grace), now),
            None
        );
        assert_eq!(pre_hook_wait(&at(lsm, JobKind::Delete, now), now), None);
        for other in [Backend::Fentry, Backend::Tracepoint] {
            assert_eq!(
                pre_hook_wait(&at(other.name(), JobKind::Examine, now), now),
                None
            );
        }
        // A stamp from the future waits one grace at most.
        assert_eq!(
            pre_hook_wait(&at(lsm, JobKind::Examine, now + grace), now),
            Some(PRE_HOOK_GRACE)
        );
    }

    /// A full queue never loses a change: the paths are remembered and rescanned (their
    /// parents, since the path may have been renamed or removed), and every such job counted.
    #[test]
    fn a_full_job_queue_turns_into_a_counted_rescan() {
        let (tx, rx) = mpsc::sync_channel(2);
        let mut feeder = Feeder::new(tx, Arc::new(AtomicU64::new(0)));
        for path in ["/w/a", "/w/b", "/w/c", "/w/sub/d", "/w/sub/e"] {
            feeder.job(job(path));
        }
        assert_eq!(feeder.overflowed, 3);
        assert_eq!(feeder.pending.load(Ordering::Relaxed), 2);
        // No room yet: the rescan waits, nothing is forgotten.
        feeder.drain_overflow();
        assert_eq!(feeder.overflow.len(), 3);
        let queued: Vec<Vec<u8>> = (0..2)
            .map(|_| match rx.try_recv().unwrap() {
                Work::Job(j) => j.path,
                _ => panic!("a job first"),
            })
            .collect();
        assert_eq!(queued, [b"/w/a".to_vec(), b"/w/b".to_vec()]);
        feeder.drain_overflow();
        match rx.try_recv().unwrap() {
            Work::Rescan(Scope::Paths(paths), why) => {
                assert_eq!(paths, [PathBuf::from("/w"), PathBuf::from("/w/sub")]);
                assert_eq!(why, "queue overflow");
            }
            _ => panic!("a rescan of the parents"),
        }
        assert!(feeder.overflow.is_empty());
    }

    /// Past OVERFLOW_PATHS distinct paths the rescan covers everything.
    #[test]
    fn too_many_overflowing_paths_rescan_everything() {
        let (tx, rx) = mpsc::sync_channel(1);
        let mut feeder = Feeder::new(tx, Arc::new(AtomicU64::new(0)));
        for i in 0..=OVERFLOW_PATHS + 1 {
            feeder.job(job(&format!("/w/f{i}")));
        }
        assert!(feeder.overflow_everything);
        assert!(
            feeder.overflow.len() <= OVERFLOW_PATHS,
            "memory stays bounded"
        );
        let _ = rx.try_recv();
        feeder.drain_overflow();
        assert!(matches!(
            rx.try_recv().unwrap(),
            Work::Rescan(Scope::Everything, _)
        ));
    }
}
