//! The daemon's start sequence, one named step at a time, in an order that matters: the
//! metrics endpoint, the store (its baseline authenticated before anything reads it), the
//! sensor (before the drift check, so nothing that happens meanwhile is missed), the outputs,
//! then the change worker with the start scan queued first, and the scan thread with its
//! control socket (it waits for the start scan), then the fleet agent (`[fleet]`) once the
//! start row it publishes is queued. The service manager hears of each step
//! (`STATUS=`); it hears "ready" from the event loop, after the start scan.
//!
//! A new start step goes into `start` where what it needs exists, and what it leaves for the
//! event loop goes into `Started`.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::config::{Config, RuleSet};
use crate::enrich::monotonic_epoch_ns;
use crate::metrics::{self, Metrics};
use crate::sensor::{self, Backend, Sensor, SensorConfig, WatchRoot};
use crate::store::{IntegrityReport, Store, StoreWriter, WriterSettings};

use super::completeness::{Layer, UNAVAILABLE};
use super::control::{self, ControlSocket};
use super::fleet::Fleet;
use super::notify::Notifier;
use super::outputs::Outputs;
use super::rules::LiveRules;
use super::scheduled::{self, ScanThread};
use super::service::{Service, scan_progress};
use super::worker::{self, WorkerHandle};
use super::{now_ns, release_free_memory, sensor_roots};

/// What the start sequence hands to the event loop.
pub(super) struct Started {
    pub(super) metrics: Arc<Metrics>,
    pub(super) writer: Arc<StoreWriter>,
    /// The rules in force, shared with the change worker and the scan thread.
    pub(super) rules: LiveRules,
    pub(super) roots: Vec<WatchRoot>,
    pub(super) sensor: Sensor,
    /// The completeness layer beside the tracepoint backend.
    pub(super) layer: Layer,
    /// Epoch minus monotonic time, for the kernel's timestamps.
    pub(super) clock_offset_ns: i64,
    pub(super) worker: WorkerHandle,
    /// The service manager's notifications and the heartbeat.
    pub(super) service: Service,
    pub(super) scans: ScanThread,
    /// The control socket (`fim scan --now`), if it could be served.
    pub(super) control: Option<ControlSocket>,
    /// The fleet agent (an idle one without `[fleet]`).
    pub(super) fleet: Fleet,
}

/// Starts everything the event loop needs, in order, telling the service manager each step.
pub(super) async fn start(
    config: &Config,
    forced: Option<Backend>,
    notifier: Notifier,
) -> Result<Started> {
    let started_ns = now_ns();
    notifier.status("starting: metrics endpoint");
    let metrics = serve_metrics(config).await?;
    notifier.status("starting: opening the store, checking the baseline's integrity");
    let (writer, integrity) = open_store(config)?;
    let rules = LiveRules::new(config.rules.clone());
    notifier.status("starting: choosing and attaching a sensor backend");
    // The sensor starts before the drift check, so nothing that happens meanwhile is missed.
    let (sensor, roots) = start_sensor(config, &rules.get(), forced, &metrics).await?;
    let (layer, unavailable) = Layer::start(sensor.backend(), &roots).await;
    let clock_offset_ns = monotonic_epoch_ns();
    let mut outputs = Outputs::open(config, &writer, &metrics, clock_offset_ns)?;
    let backend = sensor.backend().name();
    record_start(&mut outputs, backend, &integrity);
    if let Some(why) = unavailable {
        outputs.health(UNAVAILABLE, Some(backend), why.0, 0);
    }
    let (progress, scans) = scan_progress();
    let worker = worker::spawn(config, &rules, outputs, progress)?;
    let service = Service::new(notifier, started_ns, backend, roots.len(), scans);
    let scans = scheduled::spawn(config, &rules, &worker, &metrics)?;
    let control = control::serve(&config.state_dir, Arc::clone(&scans.requests));
    let fleet = Fleet::start(config, &metrics)?;
    Ok(Started {
        metrics,
        writer,
        rules,
        roots,
        sensor,
        layer,
        clock_offset_ns,
        worker,
        service,
        scans,
        control,
        fleet,
    })
}

/// The metrics and their HTTP endpoint, served from now on.
async fn serve_metrics(config: &Config) -> Result<Arc<Metrics>> {
    let metrics = Arc::new(Metrics::new());
    let listener = metrics::bind(config.metrics_address).await?;
    tokio::spawn(metrics::serve(listener, Arc::clone(&metrics)));
    log::info!("metrics on http://{}/metrics", config.metrics_address);
    Ok(metrics)
}

/// The store, its baseline checked, and its batching writer.
fn open_store(config: &Config) -> Result<(Arc<StoreWriter>, IntegrityReport)> {
    let mut store = Store::open(&config.state_dir)?;
    // Before anything reads or writes the baseline: are its rows still the ones fim wrote?
    let checked = Instant::now();
    let integrity = store
        .check_integrity()
        .context("authenticating the baseline")?;
    log::info!(
        "baseline integrity checked in {:.2}s",
        checked.elapsed().as_secs_f64()
    );
    let writer = Arc::new(
        store
            .spawn_writer(WriterSettings::default())
            .context("starting the store writer")?,
    );
    Ok((writer, integrity))
}

/// The best backend that works (or the forced one) on the rules' roots, and those roots.
async fn start_sensor(
    config: &Config,
    rules: &RuleSet,
    forced: Option<Backend>,
    metrics: &Metrics,
) -> Result<(Sensor, Vec<WatchRoot>)> {
    let roots = sensor_roots(rules);
    log::info!(
        "watching {} roots: {}",
        roots.len(),
        roots
            .iter()
            .map(|r| r.path.display().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let sensor_config = SensorConfig {
        roots: roots.clone(),
        ring_buffer_bytes: config.ring_buffer_bytes,
        kernel_log: config.kernel_log,
        ..SensorConfig::default()
    };
    if config.kernel_log {
        log::info!(
            "kernel diagnostics on (--kernel-log): debug records with the target {}",
            sensor::kernel_log::TARGET
        );
    }
    let selection = sensor::start_best(forced, &sensor_config).await?;
    for (backend, why) in &selection.skipped {
        log::warn!("backend {} skipped: {why:#}", backend.name());
    }
    let sensor = selection.sensor;
    release_free_memory();
    let backend = sensor.backend().name();
    metrics.sensor(backend);
    log::info!(
        "sensor backend {backend} is running on kernel {}",
        crate::host::kernel_release()
    );
    Ok((sensor, roots))
}

/// The start in the store and the outputs: a health row, then the baseline check's result.
fn record_start(outputs: &mut Outputs, backend: &str, integrity: &IntegrityReport) {
    outputs.health(
        "start",
        Some(backend),
        format!(
            "fim {} pid {} on kernel {}",
            env!("CARGO_PKG_VERSION"),
            std::process::id(),
            crate::host::kernel_release()
        ),
        0,
    );
    outputs.integrity(integrity);
}
