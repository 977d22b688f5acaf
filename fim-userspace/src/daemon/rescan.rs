//! Rescans in the daemon: part of the watched trees (or all of it) compared with the baseline
//! now, and what differs reported with attribution unknown.
//!
//! The change worker's own rescans ([`Rescanner::rescan`]: the start scan, after a kernel
//! loss, ...) write the baseline themselves while the worker waits; a full scan beside the
//! worker ([`Rescanner::compare`]: scheduled, or asked for) only compares, and the worker
//! reconciles what it saw (see `reconcile`). Both go through [`Rescanner::run`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};

use crate::baseline::{
    self, DriftItem, LinkedFile, RescanControl, RescanReport, ScanOptions, Scope,
};
use crate::config::{Config, RuleSet};
use crate::pipeline::ChangeMaker;
use crate::store::{ChangeRecord, Store, local_hostname};

use super::outputs::Outputs;
use super::rules::LiveRules;
use super::{LOSS, START, now_ns, release_free_memory};

/// Scan settings from `[hashing]` and `[store]`.
pub(super) fn scan_options(config: &Config, rehash: bool) -> ScanOptions {
    ScanOptions {
        max_file_size: config.hashing.max_file_size,
        scan_bytes_per_sec: config.hashing.scan_bytes_per_sec,
        content_max_size: config.store.content_max_size,
        progress: false,
        entries_seen: None,
        rehash,
    }
}

/// The watched regular files a rescan saw with more than one link, for the event loop, which
/// hands them to the sensor (their other names are watched too) and to the alias resolver.
pub(super) struct LinkedScan {
    pub(super) files: Vec<LinkedFile>,
    /// The rescan covered everything: inodes it did not see linked may be forgotten.
    pub(super) everything: bool,
    pub(super) started: Instant,
}

/// What a rescan that ran left behind.
pub(super) struct Rescanned {
    /// Baseline rows after it, when known.
    pub(super) baseline_files: Option<u64>,
    /// What it found and how long it took (its health row's detail).
    pub(super) detail: String,
}

/// What the change worker rescans with: its own connection to the store (also used for
/// pruning), the rules, the scan settings and the host name for the records.
pub(super) struct Rescanner {
    /// None when the store could not be opened: then nothing is rescanned (logged at start).
    store: Option<Store>,
    /// Read when a scan starts: the scan runs on one rule set.
    rules: LiveRules,
    options: ScanOptions,
    host: String,
    linked: tokio::sync::mpsc::UnboundedSender<LinkedScan>,
}

impl Rescanner {
    pub(super) fn open(
        config: &Config,
        rules: LiveRules,
        linked: tokio::sync::mpsc::UnboundedSender<LinkedScan>,
    ) -> Rescanner {
        let host = local_hostname();
        let store = match Store::open(&config.state_dir) {
            Ok(store) => Some(store),
            Err(e) => {
                log::error!("the change worker cannot open the store for rescans: {e:#}");
                None
            }
        };
        Rescanner {
            store,
            rules,
            options: scan_options(config, false),
            host,
            linked,
        }
    }

    /// Every rescan from now on counts the entries it compares into `seen`.
    pub(super) fn count_entries(&mut self, seen: Arc<AtomicU64>) {
        self.options.entries_seen = Some(seen);
    }

    /// The store connection, if it opened.
    pub(super) fn store(&mut self) -> Option<&mut Store> {
        self.store.as_mut()
    }

    /// Compares `scope` with the baseline now (start, kernel loss, overflow, a directory moved
    /// in) and reports what differs, attribution unknown. `None` when it could not run.
    pub(super) fn rescan(
        &mut self,
        maker: &mut ChangeMaker,
        outputs: &mut Outputs,
        scope: Scope,
        why: &'static str,
    ) -> Option<Rescanned> {
        self.store.as_ref()?;
        // Let the writer commit what is queued, so the scan compares with it.
        let _ = outputs.writer.flush();
        outputs.metrics.rescan();
        let started = Instant::now();
        let everything = scope == Scope::Everything;
        let (rules, host) = (self.rules.get(), self.host.clone());
        let mut drift = 0;
        // Each change is written out before the scan commits the rows it explains (the scan
        // commits after this callback returns): killed in between, the next start reports it again.
        let result = self.run(&rules, &scope, &RescanControl::default(), |item| {
            drift += 1;
            outputs.emit(
                &ChangeRecord::from_drift_item(&item, &rules, &host, now_ns()),
                None,
            );
            outputs.flush();
        });
        maker.forget_recent();
        release_free_memory();
        match result {
            Ok(mut report) => {
                if everything {
                    outputs.metrics.full_scan_finished();
                }
                outputs
                    .metrics
                    .scan_finished(scan_kind(why), started.elapsed(), drift);
                let kind = if why == START { "scan" } else { "rescan" };
                let detail = health_detail(why, &report, started.elapsed());
                outputs.health(kind, None, detail.clone(), 0);
                self.hand_linked(&mut report, everything, started);
                Some(Rescanned {
                    baseline_files: self.store.as_ref()?.baseline_len().ok(),
                    detail,
                })
            }
            Err(e) => {
                outputs.metrics.store_error();
                log::error!("rescan ({why}) failed: {e:#}");
                None
            }
        }
    }

    /// Compares every watched path with the baseline and hands each difference to `drift`,
    /// writing nothing: for a scan beside the change worker, which reconciles what it saw
    /// (see `reconcile`). Stops with an error once `cancel` is set.
    pub(super) fn compare(
        &mut self,
        cancel: &AtomicBool,
        drift: impl FnMut(DriftItem),
    ) -> Result<RescanReport> {
        let control = RescanControl {
            compare_only: true,
            cancel: Some(cancel),
        };
        let started = Instant::now();
        let mut result = self.run(&self.rules.get(), &Scope::Everything, &control, drift);
        release_free_memory();
        if let Ok(report) = &mut result {
            self.hand_linked(report, true, started);
        }
        result
    }

    /// The linked files a rescan saw, to the event loop (see [`LinkedScan`]).
    fn hand_linked(&self, report: &mut RescanReport, everything: bool, started: Instant) {
        if report.linked_overflow {
            log::warn!(
                "more than {} watched files have other hard links: the others are \
                 caught by scans only",
                baseline::MAX_LINKED
            );
        }
        // The event loop may be gone (shutting down): nothing to tell then.
        let _ = self.linked.send(LinkedScan {
            files: std::mem::take(&mut report.linked),
            everything,
            started,
        });
    }

    /// Every rescan of the daemon runs here: `scope` compared with the stored baseline under
    /// `rules`, the way `control` says.
    fn run(
        &mut self,
        rules: &RuleSet,
        scope: &Scope,
        control: &RescanControl<'_>,
        on_change: impl FnMut(DriftItem),
    ) -> Result<RescanReport> {
        let store = self
            .store
            .as_mut()
            .ok_or_else(|| anyhow!("the store could not be opened for scans"))?;
        baseline::rescan_with(store, rules, &self.options, scope, control, on_change)
    }
}

/// The `kind` label of the scan metrics for a rescan the change worker runs itself.
fn scan_kind(why: &str) -> &'static str {
    match why {
        "start" => "start",
        LOSS | "queue overflow" => "loss",
        _ => "targeted",
    }
}

/// The health row's detail for a rescan that ran: why, what it found, how long it took.
pub(super) fn health_detail(why: &str, report: &RescanReport, took: Duration) -> String {
    format!(
        "{why}: {}{} in {:.1}s; {} entries, {} hashed",
        report.summary(),
        if report.first_scan {
            " (baseline created)"
        } else {
            ""
        },
        took.as_secs_f64(),
        report.stats.entries,
        report.stats.files_hashed,
    )
}
