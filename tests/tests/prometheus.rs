//! fim's metrics endpoint, scraped by a real Prometheus server: what Prometheus stores is
//! what fim counted. Needs the `prometheus` binary (`cargo xtask setup`); fails without it.
//! Runs natively only (the VM initramfs has no Prometheus).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use fim::metrics::{self, Metrics};
use fim::store::activity;
use fim_tests::prometheus::{Labels, PrometheusServer};

/// Scrapes happen every second; allow for a slow, busy machine.
const TIMEOUT: Duration = Duration::from_secs(60);

/// The single value of a result, if there is exactly one series.
fn single(result: &[(Labels, f64)]) -> Option<f64> {
    match result {
        [(_, value)] => Some(*value),
        _ => None,
    }
}

#[test]
fn prometheus_scrapes_what_fim_counted() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting a tokio runtime")?;
    let metrics = Arc::new(Metrics::new());
    for _ in 0..3 {
        metrics.change(activity::CREATE, Some("config"));
    }
    metrics.change(activity::DELETE, Some("ssh"));
    metrics.set_baseline_files(42);
    metrics.sensor("tracepoint");
    let listener = runtime.block_on(metrics::bind(SocketAddr::from(([127, 0, 0, 1], 0))))?;
    let endpoint = listener.local_addr()?;
    runtime.spawn(metrics::serve(listener, metrics.clone()));

    let prometheus = PrometheusServer::start(&[endpoint])?;

    let up = prometheus.wait_for("up{job=\"fim\"}", |r| single(r) == Some(1.0), TIMEOUT)?;
    ensure!(
        up[0].0.get("instance") == Some(&endpoint.to_string()),
        "scraped instance {:?}, expected {endpoint}",
        up[0].0
    );
    let creates = prometheus.wait_for(
        "fim_events_total{activity=\"create\"}",
        |r| single(r) == Some(3.0),
        TIMEOUT,
    )?;
    ensure!(creates[0].0["job"] == "fim", "labels {:?}", creates[0].0);
    prometheus.wait_for("fim_baseline_files", |r| single(r) == Some(42.0), TIMEOUT)?;
    prometheus.wait_for(
        "fim_events_total{activity=\"delete\"}",
        |r| single(r) == Some(1.0),
        TIMEOUT,
    )?;
    prometheus.wait_for(
        "fim_changes_total{group=\"config\"}",
        |r| single(r) == Some(3.0),
        TIMEOUT,
    )?;
    // The activities nobody reported exist at zero, so rate() works from the start.
    prometheus.wait_for(
        "fim_events_total",
        |r| r.len() == 7 && r.iter().map(|(_, v)| v).sum::<f64>() == 4.0,
        TIMEOUT,
    )?;
    prometheus.wait_for(
        &format!(
            "fim_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        ),
        |r| single(r) == Some(1.0),
        TIMEOUT,
    )?;
    prometheus.wait_for(
        "fim_sensor_info{backend=\"tracepoint\"}",
        |r| single(r) == Some(1.0),
        TIMEOUT,
    )?;

    // Later changes show up in later scrapes.
    metrics.set_baseline_files(43);
    metrics.change(activity::CREATE, None);
    prometheus.wait_for("fim_baseline_files", |r| single(r) == Some(43.0), TIMEOUT)?;
    prometheus.wait_for(
        "fim_events_total{activity=\"create\"}",
        |r| single(r) == Some(4.0),
        TIMEOUT,
    )?;
    Ok(())
}
