//! The change worker: one thread that examines and hashes the paths of the jobs the event loop
//! queues, compares them with the baseline, runs the rescans, writes the outputs and feeds the
//! store's batching writer.
//!
//! Its loop takes one piece of work at a time (`Work`), then looks at its timers (placeholders
//! to look at again, retention, output flushes): a new periodic duty is one more `*_if_due`
//! step there. While a full scan runs beside it, the paths that scan saw differ are looked at
//! again between jobs (`reconcile`).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::baseline::{self, BaselineEntry, Scope};
use crate::config::Config;
use crate::pipeline::{BaselineLookup, ChangeMaker, Examine, Examined, Job, JobKind, Made};
use crate::sensor::Backend;
use crate::store::{Retention, Store, local_hostname};

use super::feeder::JOB_QUEUE;
use super::outputs::Outputs;
use super::reconcile::{self, Reconcile, ScanBeside, ScanLink, Step};
use super::rescan::{LinkedScan, Rescanned, Rescanner, scan_options};
use super::rules::LiveRules;
use super::service::ScanProgress;
use super::{LOSS, START, Work, clock_ns_monotonic, now_ns, path_from_bytes};

/// How long a placeholder (a creation reported, the path gone before it was examined) waits
/// for its delete or rename record before the path is looked at again.
const PLACEHOLDER_CHECK: Duration = Duration::from_secs(2);
/// How often old change and health rows are pruned (`[store] retention_days`, `max_changes`).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// How long after its record the change worker waits before it looks at the path of an lsm
/// record (see `wait_for_the_operation`).
pub(super) const PRE_HOOK_GRACE: Duration = Duration::from_millis(100);
/// How long the worker waits for work before it looks at its timers.
const IDLE_WAIT: Duration = Duration::from_millis(200);
/// How often the outputs are flushed and the store writer's totals exported.
const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// While a scan runs beside the worker: how long it waits for a job before it looks for a
/// path the scan saw differ.
const BESIDE_POLL: Duration = Duration::from_millis(10);
/// Paths a scan beside the worker may have handed over and the worker not looked at yet;
/// beyond this the scan waits.
const HINTS_QUEUE: usize = 1024;

/// The event loop's handle on the change worker: the queue and what both sides count.
pub(super) struct WorkerHandle {
    pub(super) tx: SyncSender<Work>,
    /// Jobs queued and not yet done by the worker (the queue-depth gauge).
    pub(super) pending: Arc<AtomicU64>,
    /// A rescan for kernel losses is queued and has not started yet (see `LOSS`).
    pub(super) loss_rescan_queued: Arc<AtomicBool>,
    /// What each rescan found about hard links (see `LinkedScan`).
    pub(super) linked: tokio::sync::mpsc::UnboundedReceiver<LinkedScan>,
    /// Where the scans beside the worker send what they found linked (see `scheduled`).
    pub(super) linked_tx: tokio::sync::mpsc::UnboundedSender<LinkedScan>,
    /// What a full scan beside the worker saw (see `reconcile`).
    pub(super) hints: SyncSender<Reconcile>,
    /// The sensor's count of drains of the ring buffer, published by the event loop once the
    /// jobs of what they read are queued (see `reconcile::Gate`).
    pub(super) drains: Arc<AtomicU64>,
    thread: JoinHandle<()>,
}

impl WorkerHandle {
    /// Hands over the last jobs (waiting for room in the queue), then stops the worker and
    /// waits until it has written everything out.
    pub(super) fn finish(self, jobs: impl IntoIterator<Item = Job>) {
        for job in jobs {
            self.pending.fetch_add(1, Ordering::Relaxed);
            let _ = self.tx.send(Work::Job(Box::new(job)));
        }
        let _ = self.tx.send(Work::Stop);
        let _ = self.thread.join();
    }
}

/// Starts the change worker, the start scan queued as its first work; `progress` hears how
/// its scans go and when the start scan is done.
pub(super) fn spawn(
    config: &Config,
    rules: &LiveRules,
    outputs: Outputs,
    progress: ScanProgress,
) -> Result<WorkerHandle> {
    let maker = change_maker(config, rules)?;
    let (tx, rx) = mpsc::sync_channel(JOB_QUEUE);
    let pending = Arc::new(AtomicU64::new(0));
    // Changes made while fim was not running come first.
    tx.send(Work::Rescan(Scope::Everything, START))
        .context("queueing the start scan")?;
    let loss_rescan_queued = Arc::new(AtomicBool::new(false));
    let (linked_tx, linked) = tokio::sync::mpsc::unbounded_channel();
    let (hints, hints_rx) = mpsc::sync_channel(HINTS_QUEUE);
    let drains = Arc::new(AtomicU64::new(0));
    let thread = {
        let (config, rules) = (config.clone(), rules.clone());
        let shared = Shared {
            pending: Arc::clone(&pending),
            loss_rescan_queued: Arc::clone(&loss_rescan_queued),
            progress,
            linked: linked_tx.clone(),
        };
        let link = ScanLink {
            hints: hints_rx,
            drains: Arc::clone(&drains),
        };
        std::thread::Builder::new()
            .name("fim-changes".into())
            .spawn(move || Worker::new(maker, rules, outputs, config, shared).run(rx, link))
            .context("starting the change worker")?
    };
    Ok(WorkerHandle {
        tx,
        pending,
        loss_rescan_queued,
        linked,
        linked_tx,
        hints,
        drains,
        thread,
    })
}

/// The change maker over the store's baseline and the filesystem.
fn change_maker(config: &Config, rules: &LiveRules) -> Result<ChangeMaker> {
    Ok(ChangeMaker::new(
        Box::new(StoreLookup(Store::open(&config.state_dir)?)),
        Box::new(FsExamine {
            rules: rules.clone(),
            config: config.clone(),
        }),
        local_hostname(),
        config.store.content_max_size,
    ))
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
    rules: LiveRules,
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
        match baseline::observe(path, &self.rules.get(), &options, previous) {
            Some((entry, content)) => Examined::Present { entry, content },
            None => Examined::Vanished,
        }
    }
}

/// What the worker shares with the event loop.
struct Shared {
    pending: Arc<AtomicU64>,
    loss_rescan_queued: Arc<AtomicBool>,
    progress: ScanProgress,
    /// Where rescans send the linked files they saw.
    linked: tokio::sync::mpsc::UnboundedSender<LinkedScan>,
}

/// The change worker's state, owned by its thread.
struct Worker {
    maker: ChangeMaker,
    /// The rules in force (those `maker` examines with).
    rules: LiveRules,
    outputs: Outputs,
    rescanner: Rescanner,
    config: Config,
    pending: Arc<AtomicU64>,
    loss_rescan_queued: Arc<AtomicBool>,
    progress: ScanProgress,
    /// Baseline rows now (the baseline-size gauge).
    baseline_files: i64,
    /// Paths written as placeholders, and when to look at each again.
    placeholders: VecDeque<(Instant, Vec<u8>)>,
    last_flush: Instant,
    last_prune: Option<Instant>,
    /// A full scan running beside the worker, if one does.
    beside: Option<ScanBeside>,
}

/// What the worker does next.
enum Next {
    Work(Work),
    Reconcile(Step),
    Idle,
    Stop,
}

impl Worker {
    fn new(
        maker: ChangeMaker,
        rules: LiveRules,
        outputs: Outputs,
        config: Config,
        shared: Shared,
    ) -> Worker {
        let Shared {
            pending,
            loss_rescan_queued,
            progress,
            linked,
        } = shared;
        let mut rescanner = Rescanner::open(&config, rules.clone(), linked);
        rescanner.count_entries(Arc::clone(&progress.entries));
        Worker {
            maker,
            rules,
            outputs,
            rescanner,
            config,
            pending,
            loss_rescan_queued,
            progress,
            baseline_files: 0,
            placeholders: VecDeque::new(),
            last_flush: Instant::now(),
            last_prune: None,
            beside: None,
        }
    }

    /// Works until told to stop or until the event loop is gone, then flushes the outputs.
    fn run(mut self, work: Receiver<Work>, link: ScanLink) {
        loop {
            match self.next(&work, &link) {
                Next::Work(Work::Job(job)) => self.job(&job),
                Next::Work(Work::Rescan(scope, why)) => self.requested_rescan(scope, why),
                Next::Work(Work::Barrier(done)) => {
                    let _ = done.send(());
                }
                Next::Work(Work::ScanBegins(ack)) => self.scan_begins(ack),
                Next::Reconcile(item) => self.reconcile(item, &link),
                Next::Work(Work::Stop) | Next::Stop => break,
                Next::Idle => {}
            }
            self.recheck_placeholders_if_due();
            self.prune_if_due();
            self.flush_if_due();
        }
        let _ = self.outputs.sink.flush();
    }

    /// The next piece of work: jobs first; while a scan runs beside the worker, one of its
    /// paths when no job is waiting.
    fn next(&mut self, work: &Receiver<Work>, link: &ScanLink) -> Next {
        let Some(scan) = self.beside.as_mut() else {
            return match work.recv_timeout(IDLE_WAIT) {
                Ok(w) => Next::Work(w),
                Err(RecvTimeoutError::Timeout) => Next::Idle,
                Err(RecvTimeoutError::Disconnected) => Next::Stop,
            };
        };
        // The count first: the jobs of every record the drains it counts read are queued by
        // then, so they are found below and go first.
        let published = link.drains.load(Ordering::Acquire);
        let ready = scan.ready(&link.hints, published);
        match work.try_recv() {
            Ok(w) => return Next::Work(w),
            Err(TryRecvError::Disconnected) => return Next::Stop,
            Err(TryRecvError::Empty) => {}
        }
        match ready {
            reconcile::Ready::Yes(step) => return Next::Reconcile(step),
            reconcile::Ready::Abandoned => {
                log::error!("the scan beside the change worker stopped without finishing");
                self.beside = None;
            }
            reconcile::Ready::No => {}
        }
        match work.recv_timeout(BESIDE_POLL) {
            Ok(w) => Next::Work(w),
            Err(RecvTimeoutError::Timeout) => Next::Idle,
            Err(RecvTimeoutError::Disconnected) => Next::Stop,
        }
    }

    /// A full scan starts beside the worker: what the worker did so far is committed first,
    /// so the scan compares with it (see `reconcile`).
    fn scan_begins(&mut self, ack: SyncSender<()>) {
        let _ = self.outputs.writer.flush();
        self.beside = Some(ScanBeside::new());
        let _ = ack.send(());
    }

    /// One step of the scan beside the worker.
    fn reconcile(&mut self, step: Step, link: &ScanLink) {
        let Some(scan) = self.beside.as_mut() else {
            return;
        };
        match step {
            Step::Look(path) => {
                let examined = self.maker.look(&path);
                // Read after the look (see `reconcile::Gate`).
                scan.hold(path, examined, link.drains.load(Ordering::Acquire));
            }
            Step::Settle(held) => {
                let delta =
                    scan.settle(*held, &mut self.maker, &mut self.outputs, &self.rules.get());
                self.count_baseline(delta);
            }
            Step::Done(done) => scan.done(done),
            Step::Finish(done) => {
                let Some(scan) = self.beside.take() else {
                    return;
                };
                if done.report.as_ref().is_ok_and(|r| r.first_scan) {
                    // Nothing to compare with: the worker builds the baseline (no drift).
                    self.rescan(Scope::Everything, "empty baseline");
                }
                let done = *done;
                let reply = done.reply.clone();
                let _ = reply.send(scan.finish(done, &self.outputs));
            }
        }
    }

    /// One job: examine (and hash) its path, report the changes, then move the baseline on.
    fn job(&mut self, job: &Job) {
        if let Some(scan) = self.beside.as_mut() {
            scan.touched_by(job);
        }
        wait_for_the_operation(job);
        let started = Instant::now();
        let made = self.maker.make(job);
        self.count(&made, started);
        for change in &made.changes {
            self.outputs.emit(change, Some(job.ktime_ns));
        }
        if !made.changes.is_empty() {
            // The report leaves fim before the baseline moves on: killed in between,
            // the next start finds the change again (at least once, never zero).
            self.outputs.flush();
        }
        for op in made.ops {
            self.outputs.store(op);
        }
        if made.moved_below {
            // The next lookups read below the new name from SQLite.
            let _ = self.outputs.writer.flush();
        }
        if let Some(path) = made.placeholder {
            self.placeholders
                .push_back((Instant::now() + PLACEHOLDER_CHECK, path));
        }
        if let Some(dir) = made.scan_below {
            let dir = path_from_bytes(&dir);
            self.rescan(Scope::Paths(vec![dir]), "directory moved in");
        }
        self.pending.fetch_sub(1, Ordering::Relaxed);
    }

    /// The baseline-size gauge and the hashing metrics after a job.
    fn count(&mut self, made: &Made, started: Instant) {
        self.count_baseline(made.baseline_delta);
        if made.hashed_bytes > 0 {
            self.outputs
                .metrics
                .hashed(made.hashed_bytes, started.elapsed());
        }
    }

    /// The baseline-size gauge after rows were added or removed.
    fn count_baseline(&mut self, delta: i64) {
        if delta != 0 {
            self.baseline_files = (self.baseline_files + delta).max(0);
            self.outputs
                .metrics
                .set_baseline_files(self.baseline_files as u64);
        }
    }

    /// A rescan the event loop asked for (start, kernel loss, queue overflow).
    fn requested_rescan(&mut self, scope: Scope, why: &'static str) {
        if why == LOSS {
            // Losses from now on need a rescan of their own.
            self.loss_rescan_queued.store(false, Ordering::Release);
        }
        self.rescan(scope, why);
    }

    fn rescan(&mut self, scope: Scope, why: &'static str) {
        let rescanned = self
            .rescanner
            .rescan(&mut self.maker, &mut self.outputs, scope, why);
        if let Some(Rescanned {
            baseline_files: Some(n),
            ..
        }) = rescanned
        {
            self.baseline_files = n as i64;
            self.outputs.metrics.set_baseline_files(n);
        }
        if rescanned.is_some() {
            self.progress.scan_finished();
        }
        if why == START {
            let done = rescanned.map(|r| r.detail);
            self.progress
                .start_scan_finished(&self.outputs.writer, done);
        }
    }

    /// Placeholders whose delete or rename record never came (lost): look again.
    fn recheck_placeholders_if_due(&mut self) {
        let mut due = Vec::new();
        while self
            .placeholders
            .front()
            .is_some_and(|(at, _)| *at <= Instant::now())
        {
            if let Some((_, path)) = self.placeholders.pop_front()
                && self.maker.is_placeholder(&path)
            {
                due.push(path_from_bytes(&path));
            }
        }
        if !due.is_empty() {
            self.rescan(Scope::Paths(due), "unexplained disappearance");
        }
    }

    /// Retention, like `fim scan` applies it: at start and then every hour.
    fn prune_if_due(&mut self) {
        if self.last_prune.is_some_and(|at| at.elapsed() < PRUNE_EVERY) {
            return;
        }
        let Some(store) = self.rescanner.store() else {
            return;
        };
        self.last_prune = Some(Instant::now());
        let retention_ns =
            i64::from(self.config.store.retention_days).saturating_mul(86_400 * 1_000_000_000);
        let retention = Retention {
            older_than_ns: now_ns().saturating_sub(retention_ns),
            max_changes: self.config.store.max_changes,
        };
        if let Err(e) = store.prune(retention) {
            self.outputs.metrics.store_error();
            log::warn!("pruning old rows: {e:#}");
        }
    }

    /// The outputs flushed and the store writer's totals exported, every `FLUSH_EVERY`.
    fn flush_if_due(&mut self) {
        if self.last_flush.elapsed() < FLUSH_EVERY {
            return;
        }
        self.last_flush = Instant::now();
        self.outputs.flush();
        let stats = self.outputs.writer.stats();
        self.outputs.metrics.set_store_totals(
            stats.write_errors,
            stats.rows_dropped,
            stats.pending,
        );
    }
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
pub(super) fn pre_hook_wait(job: &Job, now_ns: u64) -> Option<Duration> {
    if job.backend != Backend::Lsm.name() || job.what == JobKind::Delete {
        return None;
    }
    let grace = PRE_HOOK_GRACE.as_nanos() as u64;
    let due = job.ktime_ns.saturating_add(grace);
    // A record stamped after `now` (clock skew, never expected) waits no longer than one grace.
    (now_ns < due).then(|| Duration::from_nanos((due - now_ns).min(grace)))
}
