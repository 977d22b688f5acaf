//! The daemon's event loop, on the async main task (the hot path): reads the sensor, enriches,
//! matches rules and assembles changes into jobs for the change worker; every `TICK` it ends
//! idle write sessions, watches the sensor's losses, exports the gauges and drives what the
//! daemon tells its service manager and the heartbeat (`service`).
//!
//! Each event source is one branch of the `select!` in `EventLoop::run`: the sensor, the
//! completeness layer beside the tracepoint backend (`completeness`: its events are held until
//! the kernel records that explain them had their chance, then released at a tick), the linked
//! files a rescan found. Events go through `EventLoop::event`, then `EventLoop::feed_jobs`
//! hands the resulting jobs to the worker.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::baseline::Scope;
use crate::config::{Config, RuleSet};
use crate::enrich::ProcessCache;
use crate::fleet::ApplyRules;
use crate::metrics::Metrics;
use crate::pipeline::{Aliases, Assembler, Classifier, Job, Observation, Verdict};
use crate::sensor::{Event, EventKind, Sensor, Source, WatchRoot};
use crate::store::StoreWriter;

use super::completeness::{self, Layer};
use super::control::ControlSocket;
use super::feeder::Feeder;
use super::fleet::Fleet;
use super::links;
use super::outputs::{report_loss, writer_health};
use super::rules::LiveRules;
use super::scheduled::ScanThread;
use super::service::{Counts, Service};
use super::start::Started;
use super::worker::WorkerHandle;
use super::{LOSS, Work, clock_ns_monotonic, sensor_roots};

/// How often the event loop ends idle write sessions, looks for losses and sets the gauges.
const TICK: Duration = Duration::from_millis(100);
/// Losses are logged and recorded as health rows at most this often (their sum).
const LOSS_REPORT_EVERY: Duration = Duration::from_secs(5);

/// Kernel records lost: counted, reported, and answered with a rescan of the watched roots.
#[derive(Default)]
struct Losses {
    /// The sensor's count of lost records at the last tick.
    seen: u64,
    /// Lost records not yet logged and recorded.
    unreported: u64,
    /// The sensor's drain count when the last loss was seen; its rescan waits for a whole
    /// drain after that.
    drain_mark: Option<u64>,
    /// Jobs queued when the last loss rescan was queued.
    sent_at_rescan: u64,
    last_report: Option<Instant>,
}

/// What the event loop holds between events.
pub(super) struct EventLoop {
    sensor: Sensor,
    /// The completeness layer (fanotify) beside the tracepoint backend, or nothing.
    layer: Layer,
    /// Its lost and malformed events at the last tick.
    layer_trouble_seen: (u64, u64),
    /// Events the layer released, reused between ticks.
    released: Vec<Event>,
    backend: &'static str,
    metrics: Arc<Metrics>,
    writer: Arc<StoreWriter>,
    worker: WorkerHandle,
    feeder: Feeder,
    /// The rules in force, shared with the change worker and the scan thread.
    rules: LiveRules,
    classifier: Classifier,
    enrich: ProcessCache,
    /// Executables whose processes are dropped in the kernel once seen starting.
    excluded_exes: Vec<Vec<u8>>,
    assembler: Assembler,
    /// Records read from the sensor, and the jobs they made, reused between reads.
    batch: Vec<Event>,
    jobs: Vec<Job>,
    tick: tokio::time::Interval,
    losses: Losses,
    malformed_seen: u64,
    /// Records read from the sensor since the start.
    records: u64,
    /// The watched roots: what a loss rescan covers (set by `roots_in_force`).
    root_paths: Vec<PathBuf>,
    roots: Vec<WatchRoot>,
    /// Watched names for records made through other names (hard links, bind mounts, other
    /// mount namespaces).
    aliases: Aliases,
    /// Rules with records whose watched name could not be found: their roots are rescanned
    /// at the next tick.
    unresolved: BTreeSet<u32>,
    service: Service,
    scans: ScanThread,
    control: Option<ControlSocket>,
    /// The fleet agent: central rule sets to apply (`apply_rules`).
    fleet: Fleet,
}

impl EventLoop {
    pub(super) fn new(started: Started, config: &Config) -> EventLoop {
        let backend = started.sensor.backend().name();
        let worker = started.worker;
        let feeder = Feeder::new(worker.tx.clone(), Arc::clone(&worker.pending));
        let classifier = Classifier::new(
            started.rules.get(),
            config.authorized.clone(),
            config.excluded.clone(),
        );
        let enrich = ProcessCache::new();
        let aliases = links::aliases(config);
        let excluded_exes: Vec<Vec<u8>> = config
            .excluded
            .iter()
            .map(|p| p.as_os_str().as_encoded_bytes().to_vec())
            .collect();
        let mut event_loop = EventLoop {
            sensor: started.sensor,
            layer: started.layer,
            layer_trouble_seen: (0, 0),
            released: Vec::new(),
            backend,
            metrics: started.metrics,
            writer: started.writer,
            worker,
            feeder,
            rules: started.rules.clone(),
            classifier,
            enrich,
            excluded_exes,
            assembler: Assembler::new(started.clock_offset_ns),
            batch: Vec::new(),
            jobs: Vec::new(),
            tick: tokio::time::interval(TICK),
            losses: Losses::default(),
            malformed_seen: 0,
            records: 0,
            root_paths: Vec::new(),
            roots: Vec::new(),
            aliases,
            unresolved: BTreeSet::new(),
            service: started.service,
            scans: started.scans,
            control: started.control,
            fleet: started.fleet,
        };
        // The sensor and the completeness layer started on these roots.
        event_loop.roots_in_force(started.rules.get(), started.roots);
        event_loop
    }

    /// `roots` (from `rules`) in force everywhere the daemon keeps roots besides the sensor
    /// and the completeness layer, which are given them first: the rule matching here, in the
    /// change worker and in the scan thread, the alias resolver, the roots a loss rescan
    /// covers and hard links are mapped to, and the count the service manager hears. The start
    /// (`new`) and a live rules change (`apply_rules`) both come through here.
    fn roots_in_force(&mut self, rules: Arc<RuleSet>, roots: Vec<WatchRoot>) {
        self.classifier.set_rules(Arc::clone(&rules));
        self.rules.set(rules);
        self.aliases.set_roots(&roots);
        self.service.set_roots(roots.len());
        self.root_paths = roots.iter().map(|r| r.path.clone()).collect();
        self.roots = roots;
    }

    /// Handles events until `stop` completes; an error reading the sensor ends it at once.
    pub(super) async fn run(&mut self, stop: impl std::future::Future<Output = ()>) -> Result<()> {
        tokio::pin!(stop);
        loop {
            // One branch per event source.
            tokio::select! {
                received = self.sensor.recv(&mut self.batch) => {
                    received?;
                    self.sensor_records();
                }
                received = self.layer.recv() => {
                    if let Err(e) = received {
                        self.layer_failed(e);
                    }
                }
                Some(scan) = self.worker.linked.recv() => {
                    links::apply_scan(
                        &mut self.sensor,
                        &mut self.layer,
                        &mut self.aliases,
                        &self.roots,
                        scan,
                    );
                }
                _ = self.tick.tick() => self.tick(),
                update = self.fleet.next() => crate::fleet::agent::answer(update, self),
                done = self.service.start_scan_finished() => {
                    let done = done.context("the change worker stopped before the start scan finished")?;
                    self.service.ready(done, self.counts(), &self.writer);
                }
                _ = &mut stop => return Ok(()),
            }
        }
    }

    /// The records just read from the sensor.
    fn sensor_records(&mut self) {
        self.metrics
            .kernel_records(self.backend, self.batch.len() as u64);
        // The layer's events of the same operations are held before these records are noted.
        if let Err(e) = self.layer.read_now() {
            self.layer_failed(e);
        }
        self.records += self.batch.len() as u64;
        let mut batch = std::mem::take(&mut self.batch);
        for event in batch.drain(..) {
            self.event(event);
        }
        self.batch = batch;
        self.feed_jobs();
    }

    /// One event: attributed, matched with the rules, and assembled into changes (the jobs
    /// wait in `jobs` until `feed_jobs`).
    fn event(&mut self, mut event: Event) {
        // An actor the completeness layer could not read in /proc (gone already): its start
        // time from the sensor's record of its fork ties it to its exec record.
        if event.source == Source::Fanotify
            && event.actor.start_boottime_ns == 0
            && event.actor.tgid != 0
            && let Some(start) = self.sensor.process_start(event.actor.tgid)
        {
            event.actor.start_boottime_ns = start;
        }
        // An excluded executable starting: drop that process in the kernel too.
        if event.kind == EventKind::Exec
            && self.excluded_exes.contains(&event.path)
            && let Err(e) = self
                .sensor
                .exclude_actor(event.actor.tgid, event.actor.start_boottime_ns)
        {
            log::warn!("excluding pid {} in the kernel: {e:#}", event.actor.tgid);
        }
        let verdict = self
            .classifier
            .classify_with(event, &mut self.enrich, &mut self.aliases);
        match verdict {
            Verdict::Report(o) => self.observe(*o),
            Verdict::Reports(os) => os.into_iter().for_each(|o| self.observe(o)),
            Verdict::Unresolved(rule_id) => {
                self.metrics.unresolved();
                self.unresolved.insert(rule_id);
            }
            Verdict::NoRule | Verdict::Excluded | Verdict::Exec => {}
        }
    }

    /// A change to report, into its write session or its job.
    fn observe(&mut self, o: Observation) {
        self.layer.note(&o.event);
        self.layer.new_name(&o.event);
        if o.event.kind == EventKind::Link && o.rule2.is_some() {
            links::note_link(
                &mut self.sensor,
                &mut self.layer,
                &mut self.aliases,
                &self.roots,
                &o.event.path2,
            );
        }
        self.assembler.observe(o, &mut self.jobs);
    }

    /// The roots of rules with records no watched name was found for, rescanned (the change
    /// is reported by the rescan, attribution unknown).
    fn rescan_unresolved(&mut self) {
        if self.unresolved.is_empty() {
            return;
        }
        let roots: Vec<PathBuf> = std::mem::take(&mut self.unresolved)
            .into_iter()
            .flat_map(|rule| self.aliases.roots_of(rule))
            .collect();
        log::warn!(
            "changes made through names fim could not map to a watched name: rescanning {}",
            roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let scope = if roots.is_empty() {
            Scope::Everything
        } else {
            Scope::Paths(roots)
        };
        if self
            .worker
            .tx
            .try_send(Work::Rescan(scope, "unresolved name"))
            .is_err()
        {
            self.feeder.overflow_everything = true;
        }
    }

    /// The jobs assembled so far, to the change worker.
    fn feed_jobs(&mut self) {
        for job in self.jobs.drain(..) {
            self.feeder.job(job);
        }
    }

    /// Every `TICK`: idle write sessions end, overflowed paths get their rescan, losses are
    /// answered, the gauges are set.
    fn tick(&mut self) {
        self.release_layer_events();
        let now = clock_ns_monotonic();
        self.assembler.tick(now, &mut self.jobs);
        self.feed_jobs();
        self.feeder.drain_overflow();
        self.rescan_unresolved();
        self.count_sensor_trouble();
        self.rescan_after_loss_once_drained();
        self.report_losses_if_due();
        self.set_gauges();
        self.service.tick(self.counts(), &self.writer);
        // After the jobs of every record read so far are queued (see `reconcile::Gate`).
        self.worker
            .drains
            .store(self.sensor.drains(), Ordering::Release);
    }

    /// What the heartbeat carries.
    fn counts(&self) -> Counts {
        Counts {
            kernel_records: self.records,
            kernel_lost: self.losses.seen,
            jobs: self.feeder.sent,
            queue_depth: self.worker.pending.load(Ordering::Relaxed),
        }
    }

    /// The completeness layer's events that no kernel record explained, now due.
    fn release_layer_events(&mut self) {
        self.layer.release(&mut self.released);
        self.layer_events();
    }

    fn layer_events(&mut self) {
        if self.released.is_empty() {
            return;
        }
        self.metrics
            .kernel_records(completeness::LABEL, self.released.len() as u64);
        let mut released = std::mem::take(&mut self.released);
        for event in released.drain(..) {
            self.event(event);
        }
        self.released = released;
        self.feed_jobs();
    }

    /// The completeness layer failed: it stops (what it held is reported), the failure is
    /// recorded, and the watched roots are rescanned for what it may have missed.
    fn layer_failed(&mut self, e: anyhow::Error) {
        let detail = format!(
            "the completeness layer stopped: {e:#}; changes the tracepoint backend cannot see \
             are found by rescans only from now on"
        );
        log::error!("{detail}");
        writer_health(
            &self.writer,
            completeness::UNAVAILABLE,
            self.backend,
            detail,
            0,
        );
        self.layer.stop(&mut self.released);
        self.layer_events();
        self.after_loss();
    }

    /// The sensor's lost and malformed records, counted; a new loss is answered at once.
    fn count_sensor_trouble(&mut self) {
        let lost = self.sensor.lost_events().unwrap_or(self.losses.seen);
        self.metrics.set_lost(self.backend, lost);
        let malformed = self.sensor.malformed_records();
        self.metrics.malformed(malformed - self.malformed_seen);
        self.malformed_seen = malformed;
        if lost > self.losses.seen {
            self.losses.unreported += lost - self.losses.seen;
            self.losses.seen = lost;
            self.after_loss();
        }
        self.count_layer_trouble();
    }

    /// The same for the completeness layer: its queue overflowing loses events like a full
    /// ring, and is answered the same way.
    fn count_layer_trouble(&mut self) {
        let Some((lost, malformed)) = self.layer.trouble() else {
            return;
        };
        let (lost_seen, malformed_seen) = self.layer_trouble_seen;
        self.metrics.set_lost(completeness::LABEL, lost);
        self.metrics
            .malformed(malformed.saturating_sub(malformed_seen));
        self.layer_trouble_seen = (lost, malformed);
        if lost > lost_seen {
            self.losses.unreported += lost - lost_seen;
            self.after_loss();
        }
    }

    /// Kernel records were just lost.
    fn after_loss(&mut self) {
        // The lost records may include the closes of open write sessions, which
        // would then never end: examine them all now. A writer still open is
        // examined again at its close (a close without a session is examined).
        self.assembler.flush_all(&mut self.jobs);
        self.feed_jobs();
        // The rescan must come after the jobs of every record the kernel wrote
        // before the loss: those may still be unread in the ring. Wait for a
        // whole drain that started after now.
        self.losses.drain_mark = Some(self.sensor.drains());
    }

    /// The rescan for a loss, queued once the ring has been drained past it.
    fn rescan_after_loss_once_drained(&mut self) {
        let Some(mark) = self.losses.drain_mark else {
            return;
        };
        if self.sensor.drains() < mark + 2 {
            return;
        }
        self.losses.drain_mark = None;
        // A loss rescan still waiting with no job queued behind it covers this
        // loss too; otherwise a new one goes behind those jobs (a stale delete
        // processed after the rescan would drop a file that is there).
        let queued = &self.worker.loss_rescan_queued;
        let covered =
            queued.load(Ordering::Acquire) && self.feeder.sent == self.losses.sent_at_rescan;
        if covered {
            return;
        }
        queued.store(true, Ordering::Release);
        self.losses.sent_at_rescan = self.feeder.sent;
        let rescan = Work::Rescan(Scope::Paths(self.root_paths.clone()), LOSS);
        if self.worker.tx.try_send(rescan).is_err() {
            queued.store(false, Ordering::Release);
            self.feeder.overflow_everything = true;
        }
    }

    /// Logged and recorded at most every few seconds while losses go on.
    fn report_losses_if_due(&mut self) {
        if self.losses.unreported > 0
            && self
                .losses
                .last_report
                .is_none_or(|at| at.elapsed() >= LOSS_REPORT_EVERY)
        {
            report_loss(&self.writer, self.backend, self.losses.unreported);
            self.losses.unreported = 0;
            self.losses.last_report = Some(Instant::now());
        }
    }

    fn set_gauges(&self) {
        self.metrics
            .set_queue_depth(self.worker.pending.load(Ordering::Relaxed));
        self.metrics
            .set_backpressure_totals(self.feeder.overflowed, self.assembler.evicted);
    }

    /// Stops in order: the service manager told, the scan thread (a scan running is
    /// abandoned; it wrote nothing) and the control socket, the completeness layer's held
    /// events, the losses not yet reported, the write sessions still open (their jobs go to
    /// the worker), the worker (it writes out everything queued), the stop row and last
    /// heartbeat, the
    /// store writer, the fleet agent (it publishes the stop row) and last the sensor.
    pub(super) fn shutdown(mut self) -> Result<()> {
        self.service.stopping();
        self.layer.finish(&mut self.released);
        self.layer_events();
        // The worker is about to write out what is queued.
        let counts = Counts {
            queue_depth: 0,
            ..self.counts()
        };
        let EventLoop {
            sensor,
            backend,
            writer,
            worker,
            feeder,
            mut assembler,
            mut jobs,
            losses,
            mut service,
            scans,
            control,
            fleet,
            ..
        } = self;
        scans.stop();
        drop(control);
        if losses.unreported > 0 {
            report_loss(&writer, backend, losses.unreported);
        }
        log::info!("stopping; lost kernel records: {}", losses.seen);
        assembler.flush_all(&mut jobs);
        worker.finish(jobs.drain(..));
        writer_health(&writer, "stop", backend, "stopped".into(), 0);
        service.stopped(counts, &writer);
        drop(feeder);
        match Arc::try_unwrap(writer) {
            Ok(writer) => {
                writer.shutdown().context("flushing the store")?;
            }
            Err(writer) => {
                writer.flush().context("flushing the store")?;
            }
        }
        // After the stop row is committed, so it is published too.
        fleet.stop();
        drop(sensor);
        Ok(())
    }
}

impl ApplyRules for EventLoop {
    /// The roots a start with `rules` would watch, put in force as the start does: the
    /// sensor's first (replaced without a moment in which a kept root is unwatched; if the
    /// kernel refuses them, nothing else changes), the completeness layer's (the same way;
    /// if it fails, it stops as it would at any time), then `roots_in_force`, and a scan of
    /// the roots that are new (their files enter the baseline; found by a scan, attribution
    /// unknown).
    fn apply_rules(&mut self, rules: Arc<RuleSet>) -> Result<()> {
        let roots = sensor_roots(&rules);
        let failed = self
            .sensor
            .set_roots(&roots)
            .context("setting the sensor's roots")?;
        for problem in &failed {
            log::warn!("fleet rules: {problem}");
        }
        if let Err(e) = self.layer.set_roots(&roots) {
            self.layer_failed(e);
        }
        // Names not found under the old rules' roots are rescanned there.
        self.rescan_unresolved();
        let old: BTreeSet<&PathBuf> = self.root_paths.iter().collect();
        let added: Vec<PathBuf> = roots
            .iter()
            .map(|r| &r.path)
            .filter(|p| !old.contains(p))
            .cloned()
            .collect();
        self.roots_in_force(rules, roots);
        // Never waits on the hot path: a full queue turns it into a rescan of everything.
        if !added.is_empty()
            && self
                .worker
                .tx
                .try_send(Work::Rescan(
                    Scope::Paths(added),
                    "central rules added roots",
                ))
                .is_err()
        {
            self.feeder.overflow_everything = true;
        }
        Ok(())
    }
}
