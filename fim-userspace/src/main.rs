//! `fim`: File Integrity Monitoring daemon and CLI.

use std::io::Write;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use fim::sensor::{self, Backend, Record};

#[derive(Parser)]
#[command(
    name = "fim",
    version,
    about = "File Integrity Monitoring with exact attribution"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the monitoring daemon in the foreground.
    Run {
        /// Use exactly this sensor backend instead of the best one that works.
        #[arg(long, value_enum)]
        backend: Option<BackendArg>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendArg {
    Lsm,
    Fentry,
    Tracepoint,
}

impl From<BackendArg> for Backend {
    fn from(arg: BackendArg) -> Backend {
        match arg {
            BackendArg::Lsm => Backend::Lsm,
            BackendArg::Fentry => Backend::Fentry,
            BackendArg::Tracepoint => Backend::Tracepoint,
        }
    }
}

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run { backend } => run(backend.map(Backend::from)).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(forced: Option<Backend>) -> Result<()> {
    let selection = sensor::start_best(forced).await?;
    for (backend, why) in &selection.skipped {
        log::warn!("backend {} skipped: {why:#}", backend.name());
    }
    let mut sensor = selection.sensor;
    log::info!(
        "sensor backend {} is running on kernel {}",
        sensor.backend().name(),
        fim::host::kernel_release()
    );

    let mut batch = Vec::new();
    let stdout = std::io::stdout();
    loop {
        tokio::select! {
            received = sensor.recv(&mut batch) => received?,
            _ = tokio::signal::ctrl_c() => {
                log::info!("interrupted; lost events: {}", sensor.lost_events().unwrap_or(0));
                return Ok(());
            }
        }
        let mut out = stdout.lock();
        for record in batch.drain(..) {
            writeln!(out, "{}", record_json(&record)).context("writing to stdout")?;
        }
        out.flush().context("flushing stdout")?;
    }
}

/// One JSON line per kernel record (the OCSF output replaces this with the daemon pipeline).
fn record_json(record: &Record) -> serde_json::Value {
    let comm_len = record
        .actor
        .comm
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(record.actor.comm.len());
    serde_json::json!({
        "kind": record.event_kind().map(|k| k.name()).unwrap_or("unknown"),
        "backend": record.backend().map(|b| b.name()).unwrap_or("unknown"),
        "ktime_ns": record.ktime_ns,
        "pid": record.actor.tgid,
        "tid": record.actor.pid,
        "uid": record.actor.uid,
        "gid": record.actor.gid,
        "comm": String::from_utf8_lossy(&record.actor.comm[..comm_len]),
    })
}
