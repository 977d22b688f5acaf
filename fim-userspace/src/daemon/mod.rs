//! `fim run`: the sensor feeding the pipeline, the change worker, the store, the outputs and
//! the metrics endpoint, wired together.
//!
//! Threads: the async main task reads the ring buffer, enriches, matches rules and assembles
//! (the hot path); one change worker examines and hashes paths, runs the drift check at start
//! and every rescan, writes outputs and feeds the store's batching writer.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::baseline::Scope;
use crate::config::{Config, RuleSet};
use crate::enrich::ProcessCache;
use crate::pipeline::{Assembler, Classifier, Job, Verdict};
use crate::sensor::{Backend, Event, EventKind, WatchRoot};

const TICK: Duration = Duration::from_millis(100);
/// Why a rescan runs after kernel records were lost (see `loss_rescan_queued`).
const LOSS: &str = "kernel loss";
/// Losses are logged and recorded as health rows at most this often (their sum).
const LOSS_REPORT_EVERY: Duration = Duration::from_secs(5);

mod feeder;
mod outputs;
mod rescan;
mod start;
mod worker;

use feeder::Feeder;
use outputs::{report_loss, writer_health};
use start::{Started, start};

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

/// A path from the bytes the kernel and the store carry.
fn path_from_bytes(bytes: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    PathBuf::from(std::ffi::OsStr::from_bytes(bytes))
}

pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// What the change worker is asked to do.
enum Work {
    Job(Box<Job>),
    /// Compare these places (or everything) with the baseline; why, for the health row.
    Rescan(Scope, &'static str),
    Stop,
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
    let Started {
        metrics,
        writer,
        rules,
        roots,
        mut sensor,
        clock_offset_ns,
        worker,
    } = start(&config, forced).await?;
    let backend = sensor.backend().name();
    let mut feeder = Feeder::new(worker.tx.clone(), Arc::clone(&worker.pending));
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
                    let covered = worker.loss_rescan_queued.load(Ordering::Acquire)
                        && feeder.sent == sent_at_loss_rescan;
                    if !covered {
                        worker.loss_rescan_queued.store(true, Ordering::Release);
                        sent_at_loss_rescan = feeder.sent;
                        if worker.tx.try_send(Work::Rescan(Scope::Paths(root_paths.clone()), LOSS)).is_err() {
                            worker.loss_rescan_queued.store(false, Ordering::Release);
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
                metrics.set_queue_depth(worker.pending.load(Ordering::Relaxed));
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
    worker.finish(jobs.drain(..));
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
    use std::sync::atomic::AtomicU64;
    use std::sync::mpsc;

    use super::feeder::OVERFLOW_PATHS;
    use super::worker::{PRE_HOOK_GRACE, pre_hook_wait};
    use super::*;
    use crate::pipeline::{JobKind, Process};

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
