//! A full scan beside the change worker (scheduled, or asked for with `fim scan --now`), and
//! the worker's side of it: every path the scan saw differ from the baseline, looked at again.
//!
//! Why the scan does not write the baseline itself. The start scan and the rescans after a
//! kernel loss run on the change worker's thread: while they run no job is examined, and the
//! worker flushes its store writer before (the scan compares with everything the worker did)
//! and forgets its recent rows after (the next job compares with what the scan wrote). So
//! there is one writer of the baseline at any time, and a change is reported once: by its
//! job with its actor, or by the scan with attribution unknown, whichever looks first, the
//! other then finding the path as the baseline says. A scheduled scan can take hours (it is
//! throttled by `[hashing] scan_bytes_per_sec`): holding the jobs back that long is not
//! acceptable, so it runs on a thread of its own, and two writers comparing with each
//! other's uncommitted rows could report a change twice (the scan with a row the worker had
//! not committed yet, the job with a row the scan had not) or put back a row older than the
//! disk. So the scan only compares (`RescanControl::compare_only`) and hands the paths that
//! differ to the worker ([`Reconcile::Path`]), which stays the one writer: it looks at each
//! path again, compares with its own state of the baseline (its rows not yet committed
//! included) and reports and writes what still differs, with `backend: "scan"` and
//! attribution unknown. A change the sensor saw and the worker already reported is found as
//! the worker's state says and reported no second time; one the sensor did not see is
//! reported once, by the worker on the scan's word. The worker examines realtime jobs first
//! and these paths when it has none waiting, so realtime changes are not delayed behind the
//! scan.
//!
//! The records of a change may still be unread in the ring buffer when the worker looks at
//! its path: the worker would report it first, attribution unknown, and its job would then
//! find nothing. So, as the rescan after a kernel loss waits for a whole drain of the ring
//! buffer before it runs, what the worker saw is held ([`Held`]) until the event loop has
//! drained the ring buffer from a moment after the look and queued the jobs of what it read
//! ([`Gate`]); those jobs go first. If one of them examined the path after the look, the
//! realtime job has reported the change with its actor and the look is dropped; otherwise
//! it is reported. What is left is what no record announced yet: a file still open for
//! writing (its job comes at its close, and reports what changed after the scan's report),
//! and records lost by the kernel (answered by their own rescan).
//!
//! The guarantees are then those of the start and loss rescans: every change reported at
//! least once, none twice. One case is left for the end: the scan reads stored rows ahead of
//! where it is, so a row the worker wrote meanwhile can look old to it; if the disk then went
//! back to exactly that old state unseen, the scan sees no difference. So the paths realtime
//! jobs touched during the scan are looked at again at its end too ([`ScanBeside::done`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::time::{Duration, Instant};

use crate::baseline::{Drift, DriftItem, RescanReport, ScanStats};
use crate::config::RuleSet;
use crate::pipeline::{ChangeMaker, Examined, Job};
use crate::store::{ChangeRecord, StoreOp, local_hostname};

use super::now_ns;
use super::outputs::Outputs;
use super::rescan::health_detail;

/// Paths of realtime jobs remembered during a scan to be looked at again at its end; beyond
/// this they are counted and left to the next scan.
const MAX_TOUCHED: usize = 65_536;
/// Looks waiting for their gate; the scan waits beyond this many, or this many bytes of
/// content kept for `upload_content` rules.
const MAX_HELD: usize = 1024;
const MAX_HELD_BYTES: usize = 64 << 20;
/// A look waits at most this long for the ring buffer's drain (if the event loop is stuck,
/// the scan still ends).
const GATE_TIMEOUT: Duration = Duration::from_secs(1);
/// Differences listed in a scan's outcome (for `fim scan --now`); beyond this they are
/// counted only (all of them are reported on the outputs and in the store as always).
pub(super) const MAX_LISTED: usize = 10_000;

/// Why a full scan runs beside the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ScanKind {
    /// `[scan] interval` has passed since the last full scan.
    Scheduled,
    /// `fim scan --now` asked for it.
    Requested,
}

impl ScanKind {
    /// The `kind` label of the scan metrics and the word in logs and replies.
    pub(super) fn name(self) -> &'static str {
        match self {
            ScanKind::Scheduled => "scheduled",
            ScanKind::Requested => "requested",
        }
    }

    /// The health row's kind.
    fn health_kind(self) -> &'static str {
        match self {
            ScanKind::Scheduled => "scheduled_scan",
            ScanKind::Requested => "requested_scan",
        }
    }
}

/// Bytes of content a look keeps (for an `upload_content` rule).
fn content_len(examined: &Examined) -> usize {
    match examined {
        Examined::Present {
            content: Some(c), ..
        } => c.content.len(),
        _ => 0,
    }
}

/// What the scan beside the worker tells it, in order.
pub(super) enum Reconcile {
    /// The scan saw this path differ from the stored baseline.
    Path(Vec<u8>),
    /// The scan is over: the worker finishes once the paths before this are looked at.
    Done(Box<ScanDone>),
    /// (The worker's own, after `Done` and the touched paths.)
    Finish(Box<ScanDone>),
}

/// The end of a scan beside the worker.
pub(super) struct ScanDone {
    pub(super) kind: ScanKind,
    pub(super) started: Instant,
    /// The scan's report (its counts are what it saw, not what was confirmed), or why it
    /// failed.
    pub(super) report: Result<RescanReport, String>,
    /// Where the worker sends the outcome.
    pub(super) reply: Sender<ScanOutcome>,
}

/// A scan beside the worker, as the worker confirmed it.
#[derive(Debug, Clone)]
pub(super) struct ScanOutcome {
    pub(super) kind: ScanKind,
    pub(super) took: Duration,
    pub(super) result: Result<Findings, String>,
}

/// What a scan beside the worker found and the worker reported.
#[derive(Debug, Clone, Default)]
pub(super) struct Findings {
    pub(super) stats: ScanStats,
    /// The differences reported, the first [`MAX_LISTED`] of them.
    pub(super) listed: Drift,
    pub(super) added: u64,
    pub(super) removed: u64,
    pub(super) modified: u64,
    /// The baseline was empty (no start scan had built it): the worker built it instead, and
    /// nothing was compared.
    pub(super) first_scan: bool,
}

impl Findings {
    fn push(&mut self, item: DriftItem) {
        match &item {
            DriftItem::Added(_) => self.added += 1,
            DriftItem::Removed(_) => self.removed += 1,
            DriftItem::Modified(_) => self.modified += 1,
        }
        let listed = &self.listed;
        if listed.added.len() + listed.removed.len() + listed.modified.len() < MAX_LISTED {
            self.listed.push(item);
        }
    }

    pub(super) fn total(&self) -> u64 {
        self.added + self.removed + self.modified
    }
}

/// When what the worker saw of a path may be reported: once the event loop has drained the
/// ring buffer in a drain that began after the look (its count of drains, see
/// `Sensor::drains`, published every tick after the jobs of the records read are queued).
#[derive(Debug, Clone, Copy)]
struct Gate {
    /// The count published when the path was looked at (read after the look).
    taken_at: u64,
    /// The count to reach: two more than the first one published after `taken_at` (that
    /// publication came after the look and counts every drain finished before it; the drain
    /// after the next one began after it).
    target: Option<u64>,
    since: Instant,
}

impl Gate {
    fn new(published: u64) -> Gate {
        Gate {
            taken_at: published,
            target: None,
            since: Instant::now(),
        }
    }

    /// Whether the gate is open, given the count published now.
    fn passed(&self, published: u64) -> bool {
        self.target.is_some_and(|target| published >= target)
            || self.since.elapsed() >= GATE_TIMEOUT
    }
}

/// A path as the worker saw it, waiting for its gate.
struct Held {
    path: Vec<u8>,
    examined: Examined,
    gate: Gate,
    /// The realtime jobs examined before the look (see `ScanBeside::touched`).
    jobs_before: u64,
}

/// What the worker does next for the scan beside it.
pub(super) enum Step {
    /// Look at this path now.
    Look(Vec<u8>),
    /// Report what was seen of a path, unless a realtime job examined it since.
    Settle(Box<HeldPath>),
    /// The scan is over.
    Done(Box<ScanDone>),
    /// Everything the scan handed over is settled.
    Finish(Box<ScanDone>),
}

/// A [`Held`] look, handed to the worker.
pub(super) struct HeldPath(Held);

/// Whether the scan beside the worker has a step to take now.
pub(super) enum Ready {
    Yes(Step),
    No,
    /// The scan's thread is gone without saying it is done.
    Abandoned,
}

/// The change worker's end of the scans beside it: what they hand over, and the event loop's
/// count of drains of the ring buffer (see [`Gate`]).
pub(super) struct ScanLink {
    pub(super) hints: Receiver<Reconcile>,
    pub(super) drains: Arc<AtomicU64>,
}

/// The change worker's state while a full scan runs beside it.
pub(super) struct ScanBeside {
    host: String,
    /// Paths of the realtime jobs examined since the scan began, with the number of jobs
    /// examined up to the last one of each.
    touched: HashMap<Vec<u8>, u64>,
    touched_beyond: u64,
    /// Realtime jobs examined since the scan began.
    jobs: u64,
    /// What the scan handed over, then what the worker queued itself (the touched paths and
    /// `Finish`), in order.
    pending: VecDeque<Reconcile>,
    /// Looks waiting for their gate, in order.
    held: VecDeque<Held>,
    /// Content bytes the held looks keep (files under `upload_content` rules).
    held_bytes: usize,
    /// How many held looks at the front have their gate's target.
    targeted: usize,
    /// The last count of drains seen published.
    last_published: u64,
    findings: Findings,
}

impl ScanBeside {
    pub(super) fn new() -> ScanBeside {
        ScanBeside {
            host: local_hostname(),
            touched: HashMap::new(),
            touched_beyond: 0,
            jobs: 0,
            pending: VecDeque::new(),
            held: VecDeque::new(),
            held_bytes: 0,
            targeted: 0,
            last_published: 0,
            findings: Findings::default(),
        }
    }

    /// The next step, given the count of drains `published` now. The caller reads that count
    /// before it looks for jobs: the jobs of what the drains read are queued by then, found
    /// first, and examined before any step.
    pub(super) fn ready(&mut self, hints: &Receiver<Reconcile>, published: u64) -> Ready {
        if published > self.last_published {
            // The first count published after these looks: their targets.
            self.last_published = published;
            while let Some(held) = self.held.get_mut(self.targeted)
                && held.gate.taken_at < published
            {
                held.gate.target = Some(published + 2);
                self.targeted += 1;
            }
        }
        if self.held.front().is_some_and(|h| h.gate.passed(published)) {
            let held = self.held.pop_front().map(HeldPath);
            self.targeted = self.targeted.saturating_sub(1);
            if let Some(held) = held {
                self.held_bytes -= content_len(&held.0.examined);
                return Ready::Yes(Step::Settle(Box::new(held)));
            }
        }
        let abandoned = if self.pending.is_empty() {
            match hints.try_recv() {
                Ok(item) => {
                    self.pending.push_back(item);
                    false
                }
                Err(TryRecvError::Empty) => false,
                Err(TryRecvError::Disconnected) => true,
            }
        } else {
            false
        };
        let room = self.held.len() < MAX_HELD && self.held_bytes < MAX_HELD_BYTES;
        let step = match self.pending.front() {
            Some(Reconcile::Path(_)) if room => match self.pending.pop_front() {
                Some(Reconcile::Path(path)) => Some(Step::Look(path)),
                _ => None,
            },
            Some(Reconcile::Done(_)) => match self.pending.pop_front() {
                Some(Reconcile::Done(done)) => Some(Step::Done(done)),
                _ => None,
            },
            Some(Reconcile::Finish(_)) if self.held.is_empty() => match self.pending.pop_front() {
                Some(Reconcile::Finish(done)) => Some(Step::Finish(done)),
                _ => None,
            },
            _ => None,
        };
        match step {
            Some(step) => Ready::Yes(step),
            None if abandoned && self.held.is_empty() => Ready::Abandoned,
            None => Ready::No,
        }
    }

    /// A realtime job was examined: a look at its paths from before it is dropped, and they
    /// are looked at again at the end (see the module's comment).
    pub(super) fn touched_by(&mut self, job: &Job) {
        self.jobs += 1;
        for path in std::iter::once(&job.path).chain(&job.new_path) {
            if self.touched.len() < MAX_TOUCHED || self.touched.contains_key(path) {
                self.touched.insert(path.clone(), self.jobs);
            } else {
                self.touched_beyond += 1;
            }
        }
    }

    /// The worker looked at `path` (`examined`); `published`: the count of drains read after
    /// the look.
    pub(super) fn hold(&mut self, path: Vec<u8>, examined: Examined, published: u64) {
        self.held_bytes += content_len(&examined);
        self.held.push_back(Held {
            path,
            examined,
            gate: Gate::new(published),
            jobs_before: self.jobs,
        });
    }

    /// Reports what `held` saw of its path, compared with the worker's state of the baseline
    /// now, unless a realtime job examined the path after the look (it reported the change,
    /// with its actor). Returns the change in baseline rows.
    pub(super) fn settle(
        &mut self,
        held: HeldPath,
        maker: &mut ChangeMaker,
        outputs: &mut Outputs,
        rules: &RuleSet,
    ) -> i64 {
        if self.taken_over(&held.0) {
            return 0;
        }
        let Held { path, examined, .. } = held.0;
        let (drift, made) = maker.reconcile(&path, examined);
        if let Some(item) = drift {
            let change = ChangeRecord::from_drift_item(&item, rules, &self.host, now_ns());
            outputs.emit(&change, None);
            // The report leaves fim before the baseline moves on: killed in between, the
            // next start finds the change again (at least once, never zero).
            outputs.flush();
            outputs.store(StoreOp::Change(change));
            self.findings.push(item);
        }
        for op in made.ops {
            outputs.store(op);
        }
        made.baseline_delta
    }

    /// Whether a realtime job examined the path after the look.
    fn taken_over(&self, held: &Held) -> bool {
        self.touched
            .get(&held.path)
            .is_some_and(|&job| job > held.jobs_before)
    }

    /// The scan is over: the paths realtime jobs touched meanwhile are looked at again, then
    /// the scan finishes (once every look is settled).
    pub(super) fn done(&mut self, done: Box<ScanDone>) {
        if done.report.as_ref().is_ok_and(|r| !r.first_scan) {
            let touched: Vec<Vec<u8>> = self.touched.keys().cloned().collect();
            self.pending
                .extend(touched.into_iter().map(Reconcile::Path));
        }
        self.pending.push_back(Reconcile::Finish(done));
    }

    /// The health row, the metrics and the outcome of a scan whose paths were all looked at.
    pub(super) fn finish(self, done: ScanDone, outputs: &Outputs) -> ScanOutcome {
        let took = done.started.elapsed();
        let kind = done.kind;
        let result = match done.report {
            Ok(report) => {
                let findings = Findings {
                    stats: report.stats.clone(),
                    first_scan: report.first_scan,
                    ..self.findings
                };
                let confirmed = RescanReport {
                    added: findings.added,
                    removed: findings.removed,
                    modified: findings.modified,
                    ..report
                };
                outputs.health(
                    kind.health_kind(),
                    None,
                    health_detail(kind.name(), &confirmed, took),
                    0,
                );
                outputs.metrics.full_scan_finished();
                outputs
                    .metrics
                    .scan_finished(kind.name(), took, findings.total());
                if self.touched_beyond > 0 {
                    log::warn!(
                        "{} more paths changed during the {} scan than it looks at again \
                         ({MAX_TOUCHED}): the next scan covers them",
                        self.touched_beyond,
                        kind.name()
                    );
                }
                Ok(findings)
            }
            Err(e) => {
                log::error!("the {} scan failed: {e}", kind.name());
                Err(e)
            }
        };
        // What the scan reported is in the store before anyone hears it is over (`fim
        // status` right after `fim scan --now` shows it).
        let _ = outputs.writer.flush();
        ScanOutcome { kind, took, result }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn look(scan: &mut ScanBeside, rx: &Receiver<Reconcile>, published: u64) -> Vec<u8> {
        match scan.ready(rx, published) {
            Ready::Yes(Step::Look(path)) => path,
            _ => panic!("a look"),
        }
    }

    fn settled(scan: &mut ScanBeside, rx: &Receiver<Reconcile>, published: u64) -> Option<Vec<u8>> {
        match scan.ready(rx, published) {
            Ready::Yes(Step::Settle(held)) => Some(held.0.path),
            Ready::Yes(_) => panic!("not a settle"),
            _ => None,
        }
    }

    #[test]
    fn a_look_settles_two_drains_after_the_first_count_published_after_it() {
        let (tx, rx) = std::sync::mpsc::sync_channel(8);
        let mut scan = ScanBeside::new();
        tx.send(Reconcile::Path(b"/w/a".to_vec())).unwrap();
        let path = look(&mut scan, &rx, 10);
        scan.hold(path, Examined::Vanished, 10);
        // Nothing published since the look: the drains counted may all be older.
        assert_eq!(settled(&mut scan, &rx, 10), None);
        // 13 was published after: drains up to 13 were over then, 14 may have begun before,
        // 15 began after.
        assert_eq!(settled(&mut scan, &rx, 13), None);
        assert_eq!(settled(&mut scan, &rx, 14), None);
        assert_eq!(settled(&mut scan, &rx, 15), Some(b"/w/a".to_vec()));
    }

    #[test]
    fn a_gate_opens_after_its_timeout_when_nothing_is_published() {
        let mut gate = Gate::new(3);
        assert!(!gate.passed(3));
        gate.since = Instant::now() - GATE_TIMEOUT;
        assert!(gate.passed(3));
    }

    #[test]
    fn looks_go_on_while_earlier_ones_wait_and_finish_waits_for_all() {
        let (tx, rx) = std::sync::mpsc::sync_channel(8);
        let mut scan = ScanBeside::new();
        for path in ["/w/a", "/w/b"] {
            tx.send(Reconcile::Path(path.as_bytes().to_vec())).unwrap();
        }
        let a = look(&mut scan, &rx, 5);
        scan.hold(a, Examined::Vanished, 5);
        // /w/b is looked at while /w/a waits.
        let b = look(&mut scan, &rx, 6);
        scan.hold(b, Examined::Vanished, 6);
        let (reply, _) = std::sync::mpsc::channel();
        let done = ScanDone {
            kind: ScanKind::Scheduled,
            started: Instant::now(),
            report: Ok(RescanReport::default()),
            reply,
        };
        tx.send(Reconcile::Done(Box::new(done))).unwrap();
        match scan.ready(&rx, 7) {
            Ready::Yes(Step::Done(done)) => scan.done(done),
            _ => panic!("the end of the scan"),
        }
        // Each look has its own gate: /w/a (taken at 5, 6 published after it) opens at 8,
        // /w/b (taken at 6, 7 published after it) at 9; Finish waits for both.
        assert_eq!(settled(&mut scan, &rx, 8), Some(b"/w/a".to_vec()));
        assert!(matches!(scan.ready(&rx, 8), Ready::No));
        assert_eq!(settled(&mut scan, &rx, 9), Some(b"/w/b".to_vec()));
        assert!(matches!(scan.ready(&rx, 9), Ready::Yes(Step::Finish(_))));
        drop(tx);
        assert!(matches!(scan.ready(&rx, 9), Ready::Abandoned));
    }

    #[test]
    fn a_realtime_job_after_the_look_takes_the_path_over() {
        let mut scan = ScanBeside::new();
        let job = super::super::tests::job;
        scan.touched_by(&job("/w/a"));
        scan.hold(b"/w/a".to_vec(), Examined::Vanished, 1);
        scan.hold(b"/w/b".to_vec(), Examined::Vanished, 1);
        scan.touched_by(&job("/w/b"));
        let a = scan.held.pop_front().unwrap();
        let b = scan.held.pop_front().unwrap();
        // /w/a was examined by its job before the look: the look stands.
        assert!(!scan.taken_over(&a));
        // /w/b's job came after the look: it reported the change, the look is dropped.
        assert!(scan.taken_over(&b));
    }
}
