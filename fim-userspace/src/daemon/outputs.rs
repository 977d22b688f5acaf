//! Where the daemon's findings go: the output sink (OCSF JSON lines), the store's writer
//! (changes and health rows) and the metrics.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::output::{OcsfContext, OutputSink};
use crate::store::{
    ChangeRecord, HealthRecord, IntegrityReport, StoreOp, StoreWriter, local_hostname,
};

use super::now_ns;

/// The change worker's outputs.
pub(super) struct Outputs {
    pub(super) sink: OutputSink,
    pub(super) writer: Arc<StoreWriter>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) clock_offset_ns: i64,
}

impl Outputs {
    /// The configured output, with the store writer and metrics the event loop uses too.
    pub(super) fn open(
        config: &Config,
        writer: &Arc<StoreWriter>,
        metrics: &Arc<Metrics>,
        clock_offset_ns: i64,
    ) -> Result<Outputs> {
        Ok(Outputs {
            sink: OutputSink::open(&config.output, OcsfContext::new(local_hostname()))
                .context("opening the output")?,
            writer: Arc::clone(writer),
            metrics: Arc::clone(metrics),
            clock_offset_ns,
        })
    }

    pub(super) fn emit(&mut self, change: &ChangeRecord, ktime_ns: Option<u64>) {
        if let Err(e) = self.sink.write(change) {
            self.metrics.output_error();
            log::warn!("output: {e:#}");
        }
        self.metrics
            .change(change.activity, change.group.as_deref());
        if let Some(ktime) = ktime_ns {
            let now = now_ns() - self.clock_offset_ns;
            self.metrics.latency(Duration::from_nanos(
                now.saturating_sub(ktime as i64).max(0) as u64,
            ));
        }
    }

    pub(super) fn flush(&mut self) {
        if let Err(e) = self.sink.flush() {
            self.metrics.output_error();
            log::warn!("output: {e:#}");
        }
    }

    pub(super) fn store(&self, op: StoreOp) {
        if self.writer.send(op).is_err() {
            self.metrics.store_error();
        }
    }

    /// The start's baseline check: an alert on every channel when something is wrong.
    pub(super) fn integrity(&mut self, report: &IntegrityReport) {
        if !report.alert() {
            log::info!("baseline integrity: {}", report.summary());
            return;
        }
        report.log_alert();
        self.metrics.integrity_alert();
        if let Err(e) = self.sink.write_value(&crate::output::integrity_finding(
            report,
            now_ns(),
            self.sink.context(),
        )) {
            self.metrics.output_error();
            log::warn!("output: {e:#}");
        }
        self.flush();
        self.health("integrity", None, report.summary(), 0);
    }

    pub(super) fn health(&self, kind: &str, backend: Option<&str>, detail: String, lost: u64) {
        log::info!("health: {kind}: {detail}");
        self.store(StoreOp::Health(HealthRecord {
            time_ns: now_ns(),
            kind: kind.to_string(),
            backend: backend.map(str::to_string),
            detail: Some(detail),
            lost_events: lost,
        }));
    }
}

pub(super) fn report_loss(writer: &StoreWriter, backend: &str, lost: u64) {
    let detail = format!("{lost} kernel records lost; rescanning the watched roots");
    log::warn!("{detail}");
    writer_health(writer, "loss", backend, detail, lost);
}

pub(super) fn writer_health(
    writer: &StoreWriter,
    kind: &str,
    backend: &str,
    detail: String,
    lost: u64,
) {
    let _ = writer.send(StoreOp::Health(HealthRecord {
        time_ns: now_ns(),
        kind: kind.to_string(),
        backend: Some(backend.to_string()),
        detail: Some(detail),
        lost_events: lost,
    }));
}
