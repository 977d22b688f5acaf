//! What the daemon tells about itself: to its service manager (see `notify`), that it is
//! ready once the sensor runs and the start scan has compared the baseline, how the start
//! scan goes, watchdog pings while the event loop runs, that it is stopping; and to
//! `fim status`, through a heartbeat row in the store.
//!
//! Everything here is driven by the event loop (its tick and one `select!` branch), so a stuck
//! event loop stops the watchdog pings and the heartbeat: the manager and `fim status` see
//! it. The change worker only reports its scans (`ScanProgress`).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::store::{DaemonState, HEARTBEAT_EVERY, Heartbeat, StoreOp, StoreWriter};

use super::notify::Notifier;
use super::now_ns;

/// How often the start scan's progress is told while it runs.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// While the start scan compares entries, the manager's start timeout is pushed to this long
/// after the latest progress: a big tree may take longer than `TimeoutStartSec`, a scan that
/// compares nothing for this long is stuck.
pub(super) const START_PROGRESS_WINDOW: Duration = Duration::from_secs(300);

/// The start scan's outcome: its summary (the `scan` health row's detail), or `None` when it
/// failed (logged).
pub(super) type StartScanDone = Option<String>;

/// The change worker's side: counts the entries its scans compare, notes when each scan
/// finished, and says when the start scan is done.
pub(super) struct ScanProgress {
    pub(super) entries: Arc<AtomicU64>,
    last_finished_ns: Arc<AtomicI64>,
    start_done: Option<oneshot::Sender<StartScanDone>>,
}

/// The event loop's side of `ScanProgress`.
pub(super) struct ScanWatch {
    entries: Arc<AtomicU64>,
    last_finished_ns: Arc<AtomicI64>,
    start_done: Option<oneshot::Receiver<StartScanDone>>,
}

/// The two sides, connected.
pub(super) fn scan_progress() -> (ScanProgress, ScanWatch) {
    let entries = Arc::new(AtomicU64::new(0));
    let last_finished_ns = Arc::new(AtomicI64::new(0));
    let (tx, rx) = oneshot::channel();
    (
        ScanProgress {
            entries: Arc::clone(&entries),
            last_finished_ns: Arc::clone(&last_finished_ns),
            start_done: Some(tx),
        },
        ScanWatch {
            entries,
            last_finished_ns,
            start_done: Some(rx),
        },
    )
}

impl ScanProgress {
    /// A scan compared the baseline.
    pub(super) fn scan_finished(&self) {
        self.last_finished_ns.store(now_ns(), Ordering::Relaxed);
    }

    /// The start scan is over (the first one only). What it wrote is committed first, so
    /// whoever hears "ready" finds the scan's rows in the store.
    pub(super) fn start_scan_finished(&mut self, writer: &StoreWriter, done: StartScanDone) {
        let Some(tx) = self.start_done.take() else {
            return;
        };
        if let Err(e) = writer.flush() {
            log::warn!("committing the start scan's rows: {e:#}");
        }
        let _ = tx.send(done);
    }
}

/// The event loop's counts the heartbeat carries.
#[derive(Debug, Clone, Copy)]
pub(super) struct Counts {
    pub(super) kernel_records: u64,
    pub(super) kernel_lost: u64,
    pub(super) jobs: u64,
    pub(super) queue_depth: u64,
}

/// The manager's notifications and the heartbeat, as the event loop drives them.
pub(super) struct Service {
    notifier: Notifier,
    backend: &'static str,
    roots: usize,
    started_ns: i64,
    state: DaemonState,
    scans: ScanWatch,
    /// Half the manager's watchdog interval, when it asked for pings.
    watchdog_every: Option<Duration>,
    last_watchdog: Option<Instant>,
    last_heartbeat: Option<Instant>,
    last_progress: Instant,
    /// Entries compared when the start scan's progress was last told.
    entries_told: u64,
    /// The running status last sent (sent again only when it changes).
    status_told: String,
}

impl Service {
    /// How many roots are watched now (the rules changed live).
    pub(super) fn set_roots(&mut self, roots: usize) {
        self.roots = roots;
    }

    /// The sensor is attached and the start scan queued; the daemon started at `started_ns`.
    pub(super) fn new(
        notifier: Notifier,
        started_ns: i64,
        backend: &'static str,
        roots: usize,
        scans: ScanWatch,
    ) -> Service {
        let watchdog_every = notifier.watchdog_interval().map(|interval| interval / 2);
        notifier.status(&format!(
            "sensor {backend} attached to {roots} roots; start scan comparing the baseline"
        ));
        Service {
            notifier,
            backend,
            roots,
            started_ns,
            state: DaemonState::Starting,
            scans,
            watchdog_every,
            last_watchdog: None,
            last_heartbeat: None,
            last_progress: Instant::now(),
            entries_told: 0,
            status_told: String::new(),
        }
    }

    /// Completes when the change worker has finished the start scan (once; pending after
    /// that); an error when the worker stopped before.
    pub(super) async fn start_scan_finished(
        &mut self,
    ) -> Result<StartScanDone, oneshot::error::RecvError> {
        match &mut self.scans.start_done {
            Some(done) => done.await,
            None => std::future::pending().await,
        }
    }

    /// The start scan is done: every change is seen from now on.
    pub(super) fn ready(&mut self, done: StartScanDone, counts: Counts, writer: &StoreWriter) {
        self.scans.start_done = None;
        self.state = DaemonState::Running;
        let scan = match done {
            Some(detail) => {
                let summary = detail.strip_prefix("start: ").unwrap_or(&detail);
                format!("start scan: {summary}")
            }
            None => "the start scan failed (see the log)".to_string(),
        };
        let status = format!(
            "watching {} roots with {}; {scan}",
            self.roots, self.backend
        );
        log::info!("ready: {status}");
        self.notifier.ready(&status);
        self.heartbeat(counts, writer);
    }

    /// Every event-loop tick: the watchdog ping, the start scan's progress, the heartbeat.
    pub(super) fn tick(&mut self, counts: Counts, writer: &StoreWriter) {
        if let Some(every) = self.watchdog_every
            && self.last_watchdog.is_none_or(|at| at.elapsed() >= every)
        {
            self.notifier.watchdog();
            self.last_watchdog = Some(Instant::now());
        }
        if self.state == DaemonState::Starting && self.last_progress.elapsed() >= PROGRESS_EVERY {
            self.tell_start_progress();
        }
        if self
            .last_heartbeat
            .is_none_or(|at| at.elapsed() >= HEARTBEAT_EVERY)
        {
            self.heartbeat(counts, writer);
            if self.state == DaemonState::Running {
                self.tell_running(counts);
            }
        }
    }

    /// How far the start scan got; while it advances, the manager waits longer for it.
    fn tell_start_progress(&mut self) {
        self.last_progress = Instant::now();
        let entries = self.scans.entries.load(Ordering::Relaxed);
        let status = format!(
            "start scan: {entries} entries compared; sensor {} attached",
            self.backend
        );
        if entries > self.entries_told {
            self.notifier.extend_start(START_PROGRESS_WINDOW, &status);
        } else {
            self.notifier.status(&status);
        }
        self.entries_told = entries;
    }

    fn tell_running(&mut self, counts: Counts) {
        let status = format!(
            "watching {} roots with {}: {} kernel records, {} lost",
            self.roots, self.backend, counts.kernel_records, counts.kernel_lost
        );
        if status != self.status_told {
            self.notifier.status(&status);
            self.status_told = status;
        }
    }

    /// Shutdown begins.
    pub(super) fn stopping(&self) {
        self.notifier
            .stopping("stopping: writing out the queued changes");
    }

    /// The last heartbeat, saying fim stopped cleanly.
    pub(super) fn stopped(&mut self, counts: Counts, writer: &StoreWriter) {
        self.state = DaemonState::Stopped;
        self.heartbeat(counts, writer);
    }

    fn heartbeat(&mut self, counts: Counts, writer: &StoreWriter) {
        self.last_heartbeat = Some(Instant::now());
        let last_scan = self.scans.last_finished_ns.load(Ordering::Relaxed);
        let _ = writer.send(StoreOp::Heartbeat(Heartbeat {
            time_ns: now_ns(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            backend: self.backend.to_string(),
            state: self.state,
            started_ns: self.started_ns,
            last_scan_ns: (last_scan > 0).then_some(last_scan),
            kernel_records: counts.kernel_records,
            kernel_lost: counts.kernel_lost,
            jobs: counts.jobs,
            queue_depth: counts.queue_depth,
        }));
    }
}
