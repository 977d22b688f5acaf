//! A fleet host for the fleet tests and benchmarks: fim's real fleet agent (outbox
//! publisher, heartbeats, central rules) on a real store, with the changes written into the
//! store at a chosen rate instead of coming from the kernel, and central rule sets applied
//! to a stand-in for the sensor that records what it was given. Many of them run on one
//! machine, each with its own state directory and host id, and they can be killed -9.
//!
//! Usage: fim-fleet-agent --config FILE [--generate N] [--rate PER_S] [--applied FILE]
//!        [--metrics ADDR] [--exit-when-done]

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use fim::config::{Config, RuleSet};
use fim::fleet::{Agent, ApplyRules};
use fim::metrics::Metrics;
use fim::store::{Store, StoreOp, WriterSettings};
use fim_tests::fleet::stand_in_change;

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// Records each rule set it is asked to apply (its roots), one JSON line each.
struct Recorder(Option<PathBuf>);

impl ApplyRules for Recorder {
    fn apply_rules(&mut self, rules: Arc<RuleSet>) -> Result<()> {
        let roots: Vec<String> = rules
            .watch_roots()
            .iter()
            .map(|r| r.path.display().to_string())
            .collect();
        let names: Vec<&str> = rules.rules().iter().map(|r| r.name.as_str()).collect();
        if let Some(path) = &self.0 {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            writeln!(
                file,
                "{}",
                serde_json::json!({"time_ns": fim::daemon::now_ns(), "rules": names, "roots": roots})
            )?;
        }
        Ok(())
    }
}

fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args: Vec<String> = std::env::args().collect();
    let config_path = PathBuf::from(flag(&args, "--config").context("--config FILE")?);
    let config = Config::load(Some(&config_path)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let generate: u64 = flag(&args, "--generate").map_or(Ok(0), |v| v.parse())?;
    let rate: u64 = flag(&args, "--rate").map_or(Ok(0), |v| v.parse())?;
    let applied = flag(&args, "--applied").map(PathBuf::from);
    let exit_when_done = args.iter().any(|a| a == "--exit-when-done");
    let host = config
        .fleet
        .as_ref()
        .context("the configuration has no [fleet] section")?
        .host_id
        .clone();

    let store = Store::open(&config.state_dir)?;
    let writer = store.spawn_writer(WriterSettings::default())?;
    let metrics = Arc::new(Metrics::new());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if let Some(address) = flag(&args, "--metrics") {
        let address: SocketAddr = address.parse()?;
        let metrics = Arc::clone(&metrics);
        runtime.block_on(async {
            let listener = fim::metrics::bind(address).await?;
            tokio::spawn(fim::metrics::serve(listener, metrics));
            anyhow::Ok(())
        })?;
    }
    let mut agent = Agent::start(&config, &metrics)?.context("no agent")?;
    let mut updates = agent.rule_updates.take().context("rule updates")?;

    // The changes: up to `generate` rows in the store in all (a restarted process goes on).
    let existing: u64 = rusqlite::Connection::open(config.state_dir.join("fim.db"))?.query_row(
        "SELECT count(*) FROM changes",
        [],
        |r| r.get(0),
    )?;
    let generator = std::thread::spawn(move || -> Result<()> {
        let started = Instant::now();
        for (n, i) in (existing..generate).enumerate() {
            if rate > 0 {
                let due = started + Duration::from_secs_f64(n as f64 / rate as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            writer.send(StoreOp::Change(stand_in_change(i, &host)))?;
        }
        writer.flush()?;
        Ok(())
    });

    runtime.block_on(async {
        let mut recorder = Recorder(applied);
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut check = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                Some(update) = updates.recv() => fim::fleet::agent::answer(update, &mut recorder),
                _ = terminate.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
                _ = check.tick() => {
                    if exit_when_done && generator.is_finished() {
                        let text = metrics.encode();
                        let depth = text.lines().find_map(|l| l.strip_prefix("fim_fleet_outbox_depth "));
                        if depth.is_some_and(|d| d.trim() == "0") {
                            break;
                        }
                    }
                }
            }
        }
        anyhow::Ok(())
    })?;
    agent.stop();
    Ok(())
}
