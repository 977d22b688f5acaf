//! The daemon's side of the fleet (`[fleet]` in fim.toml): the agent ([`crate::fleet::Agent`])
//! started with the daemon, the rule sets it receives handed to the event loop (which applies
//! them, see `EventLoop::apply_rules`), and the agent stopped last.

use anyhow::{Context, Result};

use crate::config::Config;
use crate::fleet::{Agent, RuleUpdate};
use crate::metrics::Metrics;

/// The agent, when configured, and the rule sets it hands over.
pub(super) struct Fleet {
    agent: Option<Agent>,
    updates: Option<tokio::sync::mpsc::Receiver<RuleUpdate>>,
}

impl Fleet {
    /// Starts the agent when `[fleet]` is configured (nothing otherwise).
    pub(super) fn start(config: &Config, metrics: &Metrics) -> Result<Fleet> {
        let mut agent = Agent::start(config, metrics).context("starting the fleet agent")?;
        let updates = agent.as_mut().and_then(|a| a.rule_updates.take());
        if let Some(settings) = &config.fleet {
            log::info!(
                "fleet: publishing as host {} to {}",
                settings.host_id,
                settings.servers.join(", ")
            );
        }
        Ok(Fleet { agent, updates })
    }

    /// The next rule set to apply (never, without an agent).
    pub(super) async fn next(&mut self) -> RuleUpdate {
        match self.updates.as_mut() {
            Some(updates) => match updates.recv().await {
                Some(update) => update,
                None => {
                    self.updates = None;
                    std::future::pending().await
                }
            },
            None => std::future::pending().await,
        }
    }

    /// Publishes what it still can (bounded) and stops.
    pub(super) fn stop(self) {
        if let Some(agent) = self.agent {
            agent.stop();
        }
    }
}
