//! The scan thread: full scans beside the change worker, every `[scan] interval` (plus a
//! random spread) after the last one ended, and whenever `fim scan --now` asks.
//!
//! The first scheduled scan is one interval after the start scan (the worker runs that one
//! itself, first). A scan that ends, scheduled or asked for, sets the next one an interval
//! later. A request waits for a scan that starts after it: one that arrives while a scan
//! runs is served by the next, which starts at once, and every request that arrived
//! meanwhile shares it. How the scan and the change worker share the baseline is in
//! `reconcile`.
//!
//! The thread (and the walker and examiner threads of its scans, which inherit it) runs at a
//! lower CPU and I/O priority than the rest of the daemon, and reads at most
//! `[hashing] scan_bytes_per_sec`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::config::{Config, ScanSchedule};
use crate::metrics::Metrics;
use crate::store::SCAN_SCHEDULE_KEY;

use super::Work;
use super::reconcile::{Findings, Reconcile, ScanDone, ScanKind, ScanOutcome};
use super::rescan::Rescanner;
use super::rules::LiveRules;
use super::worker::WorkerHandle;

/// The nice value of the scan threads (the daemon's others keep theirs).
const SCAN_NICE: i32 = 10;

/// What a request gets back: the scan's outcome as JSON (see `crate::control`), or why
/// there was none.
pub(super) type Reply = Result<Arc<Value>, String>;

/// Requests for a scan, from the control socket to the scan thread.
pub(super) struct ScanRequests {
    state: Mutex<Requests>,
    changed: Condvar,
}

#[derive(Default)]
struct Requests {
    /// Waiting for the next scan to start and end.
    waiting: Vec<tokio::sync::oneshot::Sender<Reply>>,
    /// The scan running now.
    running: Option<ScanKind>,
    /// Set when the daemon stops: why no scan will come.
    closed: Option<String>,
}

impl ScanRequests {
    fn new() -> ScanRequests {
        ScanRequests {
            state: Mutex::new(Requests::default()),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Requests> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks for a scan that starts after now. Returns where its reply comes and the scan
    /// running now (the request waits for it to end first), or why no scan will come.
    pub(super) fn submit(
        &self,
    ) -> Result<(tokio::sync::oneshot::Receiver<Reply>, Option<ScanKind>), String> {
        let mut state = self.lock();
        if let Some(why) = &state.closed {
            return Err(why.clone());
        }
        let (reply, replied) = tokio::sync::oneshot::channel();
        state.waiting.push(reply);
        self.changed.notify_all();
        Ok((replied, state.running))
    }

    /// Waits until a scan is due: asked for (it takes the requests waiting now), or
    /// scheduled at `due`. `None` once the daemon stops.
    #[allow(clippy::type_complexity)]
    fn next_scan(
        &self,
        due: Option<Instant>,
    ) -> Option<(ScanKind, Vec<tokio::sync::oneshot::Sender<Reply>>)> {
        let mut state = self.lock();
        loop {
            if state.closed.is_some() {
                return None;
            }
            let kind = if !state.waiting.is_empty() {
                ScanKind::Requested
            } else if due.is_some_and(|due| due <= Instant::now()) {
                ScanKind::Scheduled
            } else {
                state = match due {
                    Some(due) => {
                        let wait = due.saturating_duration_since(Instant::now());
                        self.changed
                            .wait_timeout(state, wait)
                            .unwrap_or_else(|p| p.into_inner())
                            .0
                    }
                    None => self.changed.wait(state).unwrap_or_else(|p| p.into_inner()),
                };
                continue;
            };
            state.running = Some(kind);
            return Some((kind, std::mem::take(&mut state.waiting)));
        }
    }

    fn finished(&self) {
        self.lock().running = None;
    }

    /// No scan will come any more: the requests waiting are told why.
    fn close(&self, why: &str) {
        let mut state = self.lock();
        state.closed = Some(why.to_string());
        for waiter in state.waiting.drain(..) {
            let _ = waiter.send(Err(why.to_string()));
        }
        self.changed.notify_all();
    }
}

/// The event loop's handle on the scan thread.
pub(super) struct ScanThread {
    pub(super) requests: Arc<ScanRequests>,
    cancel: Arc<AtomicBool>,
}

impl ScanThread {
    /// Stops the scan thread: the scan running is abandoned (it wrote nothing; what the
    /// worker confirmed of it is reported and stored), requests waiting are told.
    pub(super) fn stop(&self) {
        self.cancel.store(true, Ordering::Relaxed);
        self.requests
            .close("fim is stopping: the scan did not finish");
    }
}

impl Drop for ScanThread {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts the scan thread. It waits for the start scan, which the worker runs first.
pub(super) fn spawn(
    config: &Config,
    rules: &LiveRules,
    worker: &WorkerHandle,
    metrics: &Arc<Metrics>,
) -> Result<ScanThread> {
    let requests = Arc::new(ScanRequests::new());
    let cancel = Arc::new(AtomicBool::new(false));
    let scanner = Scanner {
        schedule: config.scan,
        rescanner: Rescanner::open(config, rules.clone(), worker.linked_tx.clone()),
        work: worker.tx.clone(),
        hints: worker.hints.clone(),
        requests: Arc::clone(&requests),
        cancel: Arc::clone(&cancel),
        metrics: Arc::clone(metrics),
    };
    std::thread::Builder::new()
        .name("fim-scans".into())
        .spawn(move || scanner.run())
        .context("starting the scan thread")?;
    Ok(ScanThread { requests, cancel })
}

/// The scan thread's state.
struct Scanner {
    schedule: ScanSchedule,
    /// Its own connection to the store, for the scans and the schedule row.
    rescanner: Rescanner,
    work: SyncSender<Work>,
    hints: SyncSender<Reconcile>,
    requests: Arc<ScanRequests>,
    cancel: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

impl Scanner {
    fn run(mut self) {
        lower_priority();
        // The worker's first work is the start scan: this barrier is answered after it.
        let (done, barrier) = mpsc::sync_channel(1);
        if self.work.send(Work::Barrier(done)).is_err() || barrier.recv().is_err() {
            self.requests.close("fim is stopping");
            return;
        }
        loop {
            let due = self.plan();
            let Some((kind, waiters)) = self.requests.next_scan(due) else {
                break;
            };
            let outcome = self.scan(kind);
            self.requests.finished();
            let reply: Reply = outcome
                .result
                .as_ref()
                .map(|findings| Arc::new(outcome_json(&outcome, findings)))
                .map_err(Clone::clone);
            for waiter in waiters {
                let _ = waiter.send(reply.clone());
            }
            if self.cancel.load(Ordering::Relaxed) {
                break;
            }
        }
        self.requests.close("fim is stopping");
    }

    /// When the next scheduled scan is due (`None`: off), in the metrics and the store.
    fn plan(&mut self) -> Option<Instant> {
        let wait = self.schedule.next_wait(random_u64());
        let at = wait.map(|w| SystemTime::now() + w);
        self.metrics.set_next_scan(at);
        let next_ns = at
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as i64);
        let row = json!({
            "pid": std::process::id(),
            "next_ns": next_ns,
            "interval_s": self.schedule.interval.map(|i| i.as_secs()),
            "spread_s": self.schedule.spread.as_secs(),
        });
        if let Some(store) = self.rescanner.store()
            && let Err(e) = store.set_meta(SCAN_SCHEDULE_KEY, &row.to_string())
        {
            log::warn!("recording the next scan's time for fim status: {e:#}");
        }
        match wait {
            Some(wait) => log::info!(
                "next scheduled scan in {}",
                crate::config::format_duration(Duration::from_secs(wait.as_secs()))
            ),
            None => log::info!("scheduled scans are off ([scan] interval = \"0\")"),
        }
        wait.map(|w| Instant::now() + w)
    }

    /// One full scan beside the worker, to its outcome.
    fn scan(&mut self, kind: ScanKind) -> ScanOutcome {
        let started = Instant::now();
        let failed = |why: &str| ScanOutcome {
            kind,
            took: started.elapsed(),
            result: Err(why.to_string()),
        };
        log::info!("{} scan started", kind.name());
        self.metrics.rescan();
        // The worker commits what it did before the scan reads the baseline.
        let (ack, acked) = mpsc::sync_channel(1);
        if self.work.send(Work::ScanBegins(ack)).is_err() || acked.recv().is_err() {
            return failed("fim is stopping: the scan did not start");
        }
        let (hints, cancel) = (&self.hints, &*self.cancel);
        let report = self
            .rescanner
            .compare(cancel, |item| {
                if hints.send(Reconcile::Path(item.path().to_vec())).is_err() {
                    // The worker is gone (fim is stopping): nobody to confirm the rest.
                    cancel.store(true, Ordering::Relaxed);
                }
            })
            .map_err(|e| format!("{e:#}"));
        let (reply, replied) = mpsc::channel();
        let done = ScanDone {
            kind,
            started,
            report,
            reply,
        };
        if self.hints.send(Reconcile::Done(Box::new(done))).is_err() {
            return failed("fim is stopping: the scan did not finish");
        }
        match replied.recv() {
            Ok(outcome) => {
                if let Ok(findings) = &outcome.result {
                    log::info!(
                        "{} scan done in {:.1}s: {} added, {} removed, {} modified",
                        kind.name(),
                        outcome.took.as_secs_f64(),
                        findings.added,
                        findings.removed,
                        findings.modified
                    );
                }
                outcome
            }
            Err(_) => failed("fim is stopping: the scan did not finish"),
        }
    }
}

/// The reply to `fim scan --now` (documented in docs/scheduled-scan.md).
fn outcome_json(outcome: &ScanOutcome, findings: &Findings) -> Value {
    let mut value = findings.listed.to_json();
    let listed = findings.listed.added.len()
        + findings.listed.removed.len()
        + findings.listed.modified.len();
    value["kind"] = json!(outcome.kind.name());
    value["pid"] = json!(std::process::id());
    value["duration_s"] = json!(outcome.took.as_secs_f64());
    value["first_scan"] = json!(findings.first_scan);
    value["counts"] = json!({
        "added": findings.added,
        "removed": findings.removed,
        "modified": findings.modified,
    });
    value["listed_all"] = json!(listed as u64 == findings.total());
    value["stats"] = findings.stats.to_json();
    value
}

/// A random number for the spread (from the kernel; the time if that fails).
fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `len` bytes into the buffer it is given.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n == bytes.len() as isize {
        return u64::from_ne_bytes(bytes);
    }
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()).rotate_left(32)
}

/// Lowers this thread's CPU priority (nice) and I/O priority (best effort, lowest level);
/// threads it starts inherit both. Failing is not an error (the scan is throttled anyway).
fn lower_priority() {
    // SAFETY: gettid, setpriority and ioprio_set act on this thread only and take plain
    // integers.
    unsafe {
        let tid = libc::gettid();
        if libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, SCAN_NICE) != 0 {
            log::debug!(
                "lowering the scan thread's priority: {}",
                std::io::Error::last_os_error()
            );
        }
        // IOPRIO_WHO_PROCESS = 1; class best effort (2) at level 7, the lowest.
        const IOPRIO_CLASS_BE: libc::c_long = 2;
        let priority = (IOPRIO_CLASS_BE << 13) | 7;
        if libc::syscall(libc::SYS_ioprio_set, 1, tid as libc::c_long, priority) != 0 {
            log::debug!(
                "lowering the scan thread's I/O priority: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}
