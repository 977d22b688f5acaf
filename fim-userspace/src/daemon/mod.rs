//! `fim run`: the sensor feeding the pipeline, the change worker, the store, the outputs and
//! the metrics endpoint, wired together.
//!
//! Threads: the async main task reads the ring buffer, enriches, matches rules and assembles
//! (the hot path); one change worker examines and hashes paths, runs the drift check at start
//! and every rescan, writes outputs and feeds the store's batching writer.
//!
//! `run_until` is the whole life: `start` (the start sequence, step by step), then
//! `event_loop` (one `select!` branch per event source, then the shutdown). The worker thread
//! is in `worker`, its rescans in `rescan`; `feeder` is the job queue's overflow policy and
//! `outputs` where findings go (output sink, store writer, metrics); `fleet` is the fleet
//! agent (`[fleet]`), whose central rule sets the event loop applies live.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::baseline::Scope;
use crate::config::{Config, RuleSet};
use crate::pipeline::Job;
use crate::sensor::{Backend, WatchRoot};

/// Why a rescan runs after kernel records were lost (see `loss_rescan_queued`).
const LOSS: &str = "kernel loss";
/// Why the first rescan runs: the changes made while fim was not running.
const START: &str = "start";

mod completeness;
mod control;
mod event_loop;
mod feeder;
mod fleet;
mod links;
mod notify;
mod outputs;
mod reconcile;
mod rescan;
mod rules;
mod scheduled;
mod service;
mod start;
mod worker;

use event_loop::EventLoop;
use notify::Notifier;
use start::start;

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
    /// Answered once everything queued before it is done.
    Barrier(std::sync::mpsc::SyncSender<()>),
    /// A full scan starts beside the worker (see `reconcile`); answered when it may.
    ScanBegins(std::sync::mpsc::SyncSender<()>),
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
    let started = start(&config, forced, Notifier::from_env()).await?;
    let mut event_loop = EventLoop::new(started, &config);
    event_loop.run(stop).await?;
    event_loop.shutdown()
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
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;

    use super::feeder::{Feeder, OVERFLOW_PATHS};
    use super::worker::{PRE_HOOK_GRACE, pre_hook_wait};
    use super::*;
    use crate::pipeline::{JobKind, Process};
    use crate::sensor::EventKind;

    pub(super) fn job(path: &str) -> Job {
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
            used_path: None,
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
