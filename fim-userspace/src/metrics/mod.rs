//! Prometheus metrics: what the daemon counts, and the text it serves on `/metrics`.
//!
//! One [`Metrics`] value (shared as `Arc<Metrics>`) owns every metric; the pipeline calls its
//! small methods and [`serve`] exposes [`Metrics::encode`] over HTTP. Labels are bounded: the
//! activity is one of the OCSF ids, backends are few, and rule groups (free text from the
//! configuration) are capped at [`MAX_GROUPS`] distinct values, the rest counted as
//! [`OVERFLOW_LABEL`]. Paths, pids and other unbounded values never become labels.

mod http;

pub use http::{CONTENT_TYPE, bind, serve};

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::store::activity;

/// At most this many distinct `group` label values; later groups are counted as
/// [`OVERFLOW_LABEL`]. Groups come from the configuration, so this only guards against a
/// configuration with hundreds of groups blowing up every scrape.
pub const MAX_GROUPS: usize = 64;
/// At most this many distinct `backend` label values (fim has a handful of backends).
pub const MAX_BACKENDS: usize = 16;
/// The label value that absorbs everything beyond a cap.
pub const OVERFLOW_LABEL: &str = "other";

/// Upper bounds (seconds) of the hash duration buckets: from small config files to
/// multi-gigabyte binaries.
const HASH_BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0,
];
/// Upper bounds (seconds) of the event-to-output latency buckets; the goal is well under a
/// second.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Every OCSF activity fim reports, with its label value (the output contract's ids).
const ACTIVITIES: &[(i64, &str)] = &[
    (activity::CREATE, "create"),
    (activity::UPDATE, "update"),
    (activity::DELETE, "delete"),
    (activity::RENAME, "rename"),
    (activity::SET_ATTRIBUTES, "set_attributes"),
    (activity::SET_SECURITY, "set_security"),
    (activity::OTHER, "other"),
];

/// The `activity` label value of an OCSF activity id; unknown ids count as `other`.
pub fn activity_label(activity_id: i64) -> &'static str {
    ACTIVITIES
        .iter()
        .find(|(id, _)| *id == activity_id)
        .map_or("other", |(_, name)| name)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActivityLabel {
    activity: &'static str,
}

/// Why a scan ran, as the `kind` label of the scan metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScanKindLabel {
    kind: &'static str,
}

/// Every `kind` of scan: the start scan, the scheduled one, one asked for with
/// `fim scan --now`, the rescan after lost kernel records or a full job queue, and the
/// targeted rescans of a few paths (a directory moved in, a vanished path, ...).
pub const SCAN_KINDS: &[&str] = &["start", "scheduled", "requested", "loss", "targeted"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabel {
    group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabel {
    backend: String,
}

/// Locks a mutex even if a panicking thread poisoned it: the data are plain counters
/// bookkeeping, valid at every step, and metrics must never take the daemon down.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Admits label values up to a fixed number of distinct ones; later ones become
/// [`OVERFLOW_LABEL`].
#[derive(Debug)]
struct LabelCap {
    max: usize,
    seen: Mutex<HashSet<String>>,
}

impl LabelCap {
    fn new(max: usize) -> Self {
        LabelCap {
            max,
            seen: Mutex::new(HashSet::new()),
        }
    }

    fn admit(&self, value: &str) -> String {
        let mut seen = lock(&self.seen);
        if seen.contains(value) {
            return value.to_string();
        }
        // The overflow value itself takes no slot: it is always allowed.
        if value == OVERFLOW_LABEL || seen.len() >= self.max {
            return OVERFLOW_LABEL.to_string();
        }
        seen.insert(value.to_string());
        value.to_string()
    }
}

/// Turns monotonic totals read elsewhere (the kernel's drop counters, the store writer's
/// counters) into counter increments. A total smaller than the last one means its source
/// started again from zero (a reloaded sensor), so the whole new total is the increment.
#[derive(Debug, Default)]
struct Deltas(Mutex<HashMap<String, u64>>);

impl Deltas {
    fn advance(&self, key: &str, total: u64) -> u64 {
        let mut last = lock(&self.0);
        let previous = last.insert(key.to_string(), total).unwrap_or(0);
        if total >= previous {
            total - previous
        } else {
            total
        }
    }
}

/// Encodes `main` and then `extra` as one exposition with a single `# EOF`.
pub fn encode_all(
    out: &mut String,
    main: &Registry,
    extra: &[Registry],
) -> Result<(), std::fmt::Error> {
    text::encode_registry(out, main)?;
    for registry in extra {
        text::encode_registry(out, registry)?;
    }
    text::encode_eof(out)
}

/// What the `/metrics` endpoint serves: fim's [`Metrics`], or another process's own
/// registry (the fleet collector's).
pub trait Exposition: Send + Sync + 'static {
    fn encode(&self) -> String;
}

impl Exposition for Metrics {
    fn encode(&self) -> String {
        Metrics::encode(self)
    }
}

impl Exposition for Registry {
    fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = encode_all(&mut out, self, &[]) {
            log::error!("encoding the metrics failed: {e}");
        }
        out
    }
}

/// All of fim's metrics. `Send + Sync`: share it as `Arc<Metrics>`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    events: Family<ActivityLabel, Counter>,
    changes: Family<GroupLabel, Counter>,
    kernel_records: Family<BackendLabel, Counter>,
    kernel_lost: Family<BackendLabel, Counter>,
    sensor_info: Family<BackendLabel, Gauge>,
    rescans: Counter,
    hash_bytes: Counter,
    hash_duration: Histogram,
    latency: Histogram,
    baseline_files: Gauge,
    queue_depth: Gauge,
    store_pending: Gauge,
    store_errors: Counter,
    store_dropped: Counter,
    output_errors: Counter,
    malformed: Counter,
    integrity_alerts: Counter,
    queue_overflow: Counter,
    sessions_evicted: Counter,
    last_full_scan: Gauge<f64, AtomicU64>,
    unresolved: Counter,
    scan_duration: Family<ScanKindLabel, Gauge<f64, AtomicU64>>,
    scan_drift: Family<ScanKindLabel, Counter>,
    next_scan: Gauge<f64, AtomicU64>,
    groups: LabelCap,
    backends: LabelCap,
    totals: Deltas,
    /// Registries added after start (the fleet publisher's), encoded after the main one.
    attached: Mutex<Vec<Registry>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A `u64` as a gauge value (gauges are `i64`); saturates instead of wrapping negative.
fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Metrics {
    /// Registers every metric; counters by activity start at zero so rates work from the
    /// first scrape.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("fim");
        let metrics = Metrics {
            events: Family::default(),
            changes: Family::default(),
            kernel_records: Family::default(),
            kernel_lost: Family::default(),
            sensor_info: Family::default(),
            rescans: Counter::default(),
            hash_bytes: Counter::default(),
            hash_duration: Histogram::new(HASH_BUCKETS.iter().copied()),
            latency: Histogram::new(LATENCY_BUCKETS.iter().copied()),
            baseline_files: Gauge::default(),
            queue_depth: Gauge::default(),
            store_pending: Gauge::default(),
            store_errors: Counter::default(),
            store_dropped: Counter::default(),
            output_errors: Counter::default(),
            malformed: Counter::default(),
            integrity_alerts: Counter::default(),
            queue_overflow: Counter::default(),
            sessions_evicted: Counter::default(),
            last_full_scan: Gauge::default(),
            unresolved: Counter::default(),
            scan_duration: Family::default(),
            scan_drift: Family::default(),
            next_scan: Gauge::default(),
            groups: LabelCap::new(MAX_GROUPS),
            backends: LabelCap::new(MAX_BACKENDS),
            totals: Deltas::default(),
            attached: Mutex::new(Vec::new()),
            registry: Registry::default(),
        };
        for (_, name) in ACTIVITIES {
            let _ = metrics
                .events
                .get_or_create(&ActivityLabel { activity: name });
        }
        for kind in SCAN_KINDS {
            let label = ScanKindLabel { kind };
            let _ = metrics.scan_duration.get_or_create(&label);
            let _ = metrics.scan_drift.get_or_create(&label);
        }

        let r = &mut registry;
        r.register(
            "build",
            "fim's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let start_time: Gauge<f64, AtomicU64> = Gauge::default();
        start_time.set(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        r.register_with_unit(
            "start_time",
            "When this fim process started, in seconds since the Unix epoch",
            Unit::Seconds,
            start_time,
        );
        r.register(
            "sensor_info",
            "The sensor backend that is running (value 1)",
            metrics.sensor_info.clone(),
        );
        r.register(
            "events",
            "Change events fim reported, by OCSF activity",
            metrics.events.clone(),
        );
        r.register(
            "changes",
            format!(
                "Change events fim reported, by rule group (at most {MAX_GROUPS} groups, \
                 the rest as \"{OVERFLOW_LABEL}\")"
            ),
            metrics.changes.clone(),
        );
        r.register(
            "kernel_records",
            "Records read from the kernel sensor, by backend",
            metrics.kernel_records.clone(),
        );
        r.register(
            "kernel_events_lost",
            "Kernel events lost before user space read them (ring buffer full), by backend",
            metrics.kernel_lost.clone(),
        );
        r.register(
            "malformed_records",
            "Kernel records that could not be decoded",
            metrics.malformed.clone(),
        );
        r.register(
            "baseline_integrity_alerts",
            "Starts at which the stored baseline failed authentication (rows edited, added or \
             removed outside fim, or its key replaced)",
            metrics.integrity_alerts.clone(),
        );
        r.register(
            "unresolved_changes",
            "Kernel records of a watched object made through a name fim could not map to a \
             watched name; the rule's roots are rescanned instead (attribution unknown)",
            metrics.unresolved.clone(),
        );
        r.register(
            "job_queue_overflow",
            "Changes that found the change worker's queue full; their paths are rescanned \
             instead (attribution unknown)",
            metrics.queue_overflow.clone(),
        );
        r.register(
            "write_sessions_evicted",
            "Files being written that were examined early because too many were open at once",
            metrics.sessions_evicted.clone(),
        );
        r.register(
            "rescans",
            "Rescans started to recover changes that may have been missed",
            metrics.rescans.clone(),
        );
        r.register_with_unit(
            "last_full_scan_timestamp",
            "When the last scan of every watched path finished, in seconds since the Unix \
             epoch (0 until the start scan has)",
            Unit::Seconds,
            metrics.last_full_scan.clone(),
        );
        r.register_with_unit(
            "scan_duration",
            "How long the last scan of each kind took (start, scheduled, requested, loss, \
             targeted); 0 until one has run",
            Unit::Seconds,
            metrics.scan_duration.clone(),
        );
        r.register(
            "scan_drift",
            "Differences from the baseline that scans found and reported (attribution \
             unknown), by kind of scan",
            metrics.scan_drift.clone(),
        );
        r.register_with_unit(
            "scan_next_timestamp",
            "When the next scheduled scan is due, in seconds since the Unix epoch (0: none \
             planned, or scheduled scans are off)",
            Unit::Seconds,
            metrics.next_scan.clone(),
        );
        r.register_with_unit(
            "hash",
            "Bytes of file content hashed",
            Unit::Bytes,
            metrics.hash_bytes.clone(),
        );
        r.register_with_unit(
            "hash_duration",
            "Time to hash one file",
            Unit::Seconds,
            metrics.hash_duration.clone(),
        );
        r.register_with_unit(
            "event_latency",
            "Time from the kernel event to its output",
            Unit::Seconds,
            metrics.latency.clone(),
        );
        r.register(
            "baseline_files",
            "Entries in the baseline",
            metrics.baseline_files.clone(),
        );
        r.register(
            "queue_depth",
            "Events waiting in the pipeline between the sensor and the outputs",
            metrics.queue_depth.clone(),
        );
        r.register(
            "store_pending_rows",
            "Rows waiting for the store writer",
            metrics.store_pending.clone(),
        );
        r.register(
            "store_errors",
            "Failed store writes (retried)",
            metrics.store_errors.clone(),
        );
        r.register(
            "store_dropped",
            "Store rows dropped because the write queue was full",
            metrics.store_dropped.clone(),
        );
        r.register(
            "output_errors",
            "Failed writes to the event output",
            metrics.output_errors.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    /// A change event was reported: counts it by activity (OCSF id) and rule group.
    pub fn change(&self, activity_id: i64, group: Option<&str>) {
        self.events
            .get_or_create(&ActivityLabel {
                activity: activity_label(activity_id),
            })
            .inc();
        if let Some(group) = group {
            self.changes
                .get_or_create(&GroupLabel {
                    group: self.groups.admit(group),
                })
                .inc();
        }
    }

    /// The sensor backend now running (`Backend::name()`); replaces the previous one in
    /// `fim_sensor_info` and starts its record and loss counters at zero.
    pub fn sensor(&self, backend: &str) {
        let label = self.backend_label(backend);
        self.sensor_info.clear();
        self.sensor_info.get_or_create(&label).set(1);
        let _ = self.kernel_records.get_or_create(&label);
        let _ = self.kernel_lost.get_or_create(&label);
    }

    /// `n` records were read from the kernel.
    pub fn kernel_records(&self, backend: &str, n: u64) {
        self.kernel_records
            .get_or_create(&self.backend_label(backend))
            .inc_by(n);
    }

    /// The kernel's own running total of lost events for a backend (e.g.
    /// `Sensor::lost_events`). The counter grows by the difference to the last total seen;
    /// a smaller total means a new sensor counting from zero.
    pub fn set_lost(&self, backend: &str, total: u64) {
        let label = self.backend_label(backend);
        let delta = self
            .totals
            .advance(&format!("lost/{}", label.backend), total);
        self.kernel_lost.get_or_create(&label).inc_by(delta);
    }

    /// `n` records could not be decoded.
    pub fn malformed(&self, n: u64) {
        self.malformed.inc_by(n);
    }

    /// A rescan started.
    pub fn rescan(&self) {
        self.rescans.inc();
    }

    /// One file was hashed: its size and how long it took.
    pub fn hashed(&self, bytes: u64, took: Duration) {
        self.hash_bytes.inc_by(bytes);
        self.hash_duration.observe(took.as_secs_f64());
    }

    /// Time from a kernel event to its output.
    pub fn latency(&self, took: Duration) {
        self.latency.observe(took.as_secs_f64());
    }

    pub fn set_baseline_files(&self, n: u64) {
        self.baseline_files.set(gauge_value(n));
    }

    pub fn set_queue_depth(&self, n: u64) {
        self.queue_depth.set(gauge_value(n));
    }

    /// One failed store write.
    pub fn store_error(&self) {
        self.store_errors.inc();
    }

    /// `n` store rows were dropped.
    pub fn store_dropped(&self, n: u64) {
        self.store_dropped.inc_by(n);
    }

    /// The store writer's own running totals (`WriterStats`): write errors, dropped rows and
    /// pending rows. Use this or [`store_error`](Self::store_error) /
    /// [`store_dropped`](Self::store_dropped), not both, or failures are counted twice.
    pub fn set_store_totals(&self, write_errors: u64, rows_dropped: u64, pending: u64) {
        self.store_errors
            .inc_by(self.totals.advance("store_errors", write_errors));
        self.store_dropped
            .inc_by(self.totals.advance("store_dropped", rows_dropped));
        self.store_pending.set(gauge_value(pending));
    }

    /// Brings the back-pressure counters up to these totals.
    pub fn set_backpressure_totals(&self, queue_overflow: u64, sessions_evicted: u64) {
        let add = |c: &Counter, total: u64| {
            let now = c.get();
            if total > now {
                c.inc_by(total - now);
            }
        };
        add(&self.queue_overflow, queue_overflow);
        add(&self.sessions_evicted, sessions_evicted);
    }

    /// A scan of every watched path finished now.
    pub fn full_scan_finished(&self) {
        self.last_full_scan.set(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
    }

    /// A record made through a name no watched name was found for (see `pipeline::Aliases`).
    pub fn unresolved(&self) {
        self.unresolved.inc();
    }

    /// A scan of this kind (one of [`SCAN_KINDS`]; others count as `targeted`) finished:
    /// how long it took and how many differences it reported.
    pub fn scan_finished(&self, kind: &str, took: Duration, drift: u64) {
        let kind = SCAN_KINDS
            .iter()
            .find(|k| **k == kind)
            .copied()
            .unwrap_or("targeted");
        let label = ScanKindLabel { kind };
        self.scan_duration
            .get_or_create(&label)
            .set(took.as_secs_f64());
        self.scan_drift.get_or_create(&label).inc_by(drift);
    }

    /// When the next scheduled scan is due; `None`: none is planned.
    pub fn set_next_scan(&self, at: Option<SystemTime>) {
        self.next_scan.set(
            at.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0.0, |d| d.as_secs_f64()),
        );
    }

    pub fn integrity_alert(&self) {
        self.integrity_alerts.inc();
    }

    pub fn output_error(&self) {
        self.output_errors.inc();
    }

    /// The OpenMetrics text exposition of every metric (served with [`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an error would be a bug in a metric's encoder,
        // which must not take the daemon down.
        if let Err(e) = encode_all(&mut out, &self.registry, &lock(&self.attached)) {
            log::error!("encoding the metrics failed: {e}");
        }
        out
    }

    /// Adds the metrics of `registry` to what [`Metrics::encode`] serves (the fleet
    /// publisher's, registered when `[fleet]` is configured).
    pub fn attach(&self, registry: Registry) {
        lock(&self.attached).push(registry);
    }

    fn backend_label(&self, backend: &str) -> BackendLabel {
        BackendLabel {
            backend: self.backends.admit(backend),
        }
    }
}

#[cfg(test)]
mod tests;
