//! The event loop's side of the job queue: jobs for the change worker, and what happens when
//! the queue is full.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};

use crate::baseline::Scope;
use crate::pipeline::Job;

use super::Work;

/// Jobs waiting for the change worker; beyond this the paths are remembered for a rescan
/// instead (never dropped silently; see docs/running.md, "Back-pressure").
pub(super) const JOB_QUEUE: usize = 65_536;
/// Paths remembered while the queue is full; beyond this the next rescan covers everything.
pub(super) const OVERFLOW_PATHS: usize = 10_000;

/// Jobs for the worker, with the overflow policy: when the queue is full the path is kept for
/// a targeted rescan, so a storm costs latency and attribution, never a change.
pub(super) struct Feeder {
    tx: SyncSender<Work>,
    pub(super) overflow: BTreeSet<PathBuf>,
    pub(super) overflow_everything: bool,
    /// Jobs sent and not yet done by the worker (the queue-depth gauge).
    pub(super) pending: Arc<AtomicU64>,
    /// Jobs that found the queue full (their paths went to `overflow`).
    pub(super) overflowed: u64,
    /// Jobs queued so far.
    pub(super) sent: u64,
}

impl Feeder {
    pub(super) fn new(tx: SyncSender<Work>, pending: Arc<AtomicU64>) -> Feeder {
        Feeder {
            tx,
            overflow: BTreeSet::new(),
            overflow_everything: false,
            pending,
            overflowed: 0,
            sent: 0,
        }
    }

    pub(super) fn job(&mut self, job: Job) {
        use std::os::unix::ffi::OsStrExt;
        let paths: Vec<Vec<u8>> = std::iter::once(job.path.clone())
            .chain(job.new_path.clone())
            .collect();
        match self.tx.try_send(Work::Job(Box::new(job))) {
            Ok(()) => {
                self.pending.fetch_add(1, Ordering::Relaxed);
                self.sent += 1;
            }
            Err(TrySendError::Full(_)) => {
                self.overflowed += 1;
                if self.overflow.is_empty() && !self.overflow_everything {
                    log::warn!(
                        "change queue full ({JOB_QUEUE} jobs): remembering paths for a rescan"
                    );
                }
                for path in paths {
                    if self.overflow.len() >= OVERFLOW_PATHS {
                        self.overflow_everything = true;
                    } else {
                        self.overflow
                            .insert(PathBuf::from(std::ffi::OsStr::from_bytes(&path)));
                    }
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Asks for the rescan of what overflowed, once there is room again.
    pub(super) fn drain_overflow(&mut self) {
        if self.overflow.is_empty() && !self.overflow_everything {
            return;
        }
        let scope = if self.overflow_everything {
            Scope::Everything
        } else {
            // Each path's parent: a path that overflowed may have been renamed or removed.
            let parents: BTreeSet<PathBuf> = self
                .overflow
                .iter()
                .map(|p| {
                    p.parent()
                        .map(Path::to_path_buf)
                        .unwrap_or_else(|| p.clone())
                })
                .collect();
            Scope::Paths(parents.into_iter().collect())
        };
        if self
            .tx
            .try_send(Work::Rescan(scope, "queue overflow"))
            .is_ok()
        {
            self.overflow.clear();
            self.overflow_everything = false;
        }
    }
}
