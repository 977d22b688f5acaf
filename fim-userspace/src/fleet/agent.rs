//! The fleet agent inside `fim run`: a thread of its own (its own small async runtime, so
//! neither the sensor's hot path nor the store writer ever waits for the network) that
//! publishes the outbox, sends heartbeats, and follows this host's central rule sets.
//!
//! Applying a rule set to the running sensor is the one platform-specific step: the daemon
//! receives a [`RuleUpdate`] and answers whether it could apply it (see [`ApplyRules`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use async_nats::jetstream;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};

use super::metrics::AgentMetrics;
use super::outbox::Outbox;
use super::publisher::{Publisher, now_ns};
use super::rules::{self, Assignment, RuleSetDoc};
use super::settings::FleetSettings;
use super::subjects;
use super::wire::{AppliedMessage, AppliedRules, HeartbeatMessage, Rejected};
use crate::config::{Config, ConfigSource, RuleSet};
use crate::metrics::Metrics;

/// How often the rule sets are read again even without a notification (a notification can
/// be missed while disconnected).
const RULES_RECHECK: Duration = Duration::from_secs(30);
/// After a notification, the key is read again after 100 ms, 200 ms, ... up to this: a
/// direct get may be answered by a replica that has not stored the new revision yet (the
/// bucket is replicated), and the notification itself does not carry the revision.
const RULES_FOLLOW_UP_MAX: Duration = Duration::from_millis(3200);
const RULES_FOLLOW_UP_FIRST: Duration = Duration::from_millis(100);

/// A new rule set for the daemon to apply; it answers on `done`.
pub struct RuleUpdate {
    pub rules: Arc<RuleSet>,
    /// Group -> revision, for the log.
    pub revisions: BTreeMap<String, u64>,
    pub done: oneshot::Sender<Result<(), String>>,
}

/// What the daemon does with a [`RuleUpdate`]: put the new rules in force everywhere a start
/// with them would (the sensor's roots and the completeness layer's marks without a moment
/// where a kept root is unwatched, the rule matching, the alias resolver, the change worker
/// and the scheduled scans) and scan the roots that are new. Implemented by the platform's
/// daemon.
pub trait ApplyRules {
    fn apply_rules(&mut self, rules: Arc<RuleSet>) -> Result<()>;
}

/// Applies one update through `target` and answers it.
pub fn answer(update: RuleUpdate, target: &mut dyn ApplyRules) {
    let result = target
        .apply_rules(update.rules)
        .map_err(|e| format!("{e:#}"));
    match &result {
        Ok(()) => log::info!("fleet: central rules {:?} applied", update.revisions),
        Err(e) => log::error!(
            "fleet: central rules {:?} NOT applied: {e}",
            update.revisions
        ),
    }
    let _ = update.done.send(result);
}

/// The running agent.
pub struct Agent {
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Rule sets to apply; `None` once taken by the daemon.
    pub rule_updates: Option<mpsc::Receiver<RuleUpdate>>,
}

impl Agent {
    /// Starts the agent for this configuration, if it has a `[fleet]` section; its metrics
    /// join `metrics`.
    pub fn start(config: &Config, metrics: &Metrics) -> Result<Option<Agent>> {
        let Some(settings) = config.fleet.clone() else {
            return Ok(None);
        };
        let (agent_metrics, registry) = AgentMetrics::new();
        metrics.attach(registry);
        let outbox = Outbox::open(&config.state_dir)?;
        agent_metrics
            .outbox_depth
            .set(outbox.backlog()?.min(i64::MAX as u64) as i64);
        let state_dir = config.state_dir.clone();
        let (stop, stopped) = watch::channel(false);
        let (updates_tx, updates_rx) = mpsc::channel(4);
        let local = LocalConfig {
            sources: config.sources.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("fim-fleet".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("fim-fleet-io")
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        log::error!("fleet: starting its runtime: {e}");
                        return;
                    }
                };
                runtime.block_on(run(
                    settings,
                    state_dir,
                    outbox,
                    agent_metrics,
                    local,
                    updates_tx,
                    stopped,
                ));
            })
            .context("starting the fleet thread")?;
        Ok(Some(Agent {
            stop,
            thread: Some(thread),
            rule_updates: Some(updates_rx),
        }))
    }

    /// Publishes what it still can (a few seconds at most) and stops.
    pub fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The files of the host's own configuration, read again when central rules change.
struct LocalConfig {
    sources: Vec<PathBuf>,
}

impl LocalConfig {
    fn read(&self) -> Result<Vec<ConfigSource>, String> {
        self.sources
            .iter()
            .map(|path| {
                std::fs::read_to_string(path)
                    .map(|text| ConfigSource {
                        path: path.clone(),
                        text,
                    })
                    .map_err(|e| format!("{}: cannot read: {e}", path.display()))
            })
            .collect()
    }
}

/// What the heartbeat reports about the rules.
#[derive(Default)]
struct RulesState {
    groups: Vec<String>,
    applied: AppliedRules,
}

async fn run(
    settings: FleetSettings,
    state_dir: PathBuf,
    outbox: Outbox,
    metrics: AgentMetrics,
    local: LocalConfig,
    updates: mpsc::Sender<RuleUpdate>,
    stop: watch::Receiver<bool>,
) {
    let host = settings.host_id.clone();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let client =
        match super::nats::connect_with(&settings, &format!("fim agent {host}"), Some(events_tx))
            .await
        {
            Ok(client) => client,
            Err(e) => {
                log::error!("fleet: {e:#}; the fleet agent is off (fim goes on locally)");
                return;
            }
        };
    let watcher = {
        let metrics = metrics.clone();
        let client = client.clone();
        tokio::spawn(async move {
            // The connection state, for the `connected` gauge and the log.
            while let Some(event) = events.recv().await {
                match event {
                    async_nats::Event::Connected => {
                        metrics.connected.set(1);
                        let version = client.server_info().version;
                        log::info!("fleet: connected to NATS {version}");
                    }
                    async_nats::Event::Disconnected => {
                        metrics.connected.set(0);
                        log::warn!("fleet: disconnected from NATS; the outbox keeps the rows");
                    }
                    async_nats::Event::ServerError(e) => {
                        let text = e.to_string();
                        if text.to_ascii_lowercase().contains("permissions violation") {
                            metrics.permission_denied.inc();
                        }
                        log::warn!("fleet: the NATS server says: {text}");
                    }
                    other => log::debug!("fleet: {other}"),
                }
            }
        })
    };
    // Refuse to run against a server too old for what fim relies on.
    loop {
        if *stop.borrow() {
            return;
        }
        match super::nats::server_version(&client).await {
            Ok(version) => {
                if let Err(e) = super::nats::require_minimum(version) {
                    log::error!("fleet: {e:#}; the fleet agent is off");
                    watcher.abort();
                    return;
                }
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    let js = super::nats::jetstream(client.clone());
    let store_id = outbox.store_id().to_string();
    let mut publisher = match Publisher::new(
        js.clone(),
        outbox,
        &host,
        settings.max_backlog,
        metrics.clone(),
    ) {
        Ok(p) => p,
        Err(e) => {
            log::error!("fleet: {e:#}; the fleet agent is off");
            return;
        }
    };
    let state = Arc::new(Mutex::new(RulesState {
        groups: settings.groups.clone(),
        ..RulesState::default()
    }));
    let rules_task = tokio::spawn(follow_rules(
        client.clone(),
        js.clone(),
        host.clone(),
        settings.groups.clone(),
        local,
        updates,
        Arc::clone(&state),
        metrics.clone(),
        stop.clone(),
    ));
    let heartbeat_task = {
        let (js, host, metrics, state, store_id) = (
            js.clone(),
            host.clone(),
            metrics.clone(),
            Arc::clone(&state),
            store_id.clone(),
        );
        let mut stop = stop.clone();
        let every = settings.heartbeat;
        let reader = Outbox::open(&state_dir);
        tokio::spawn(async move {
            loop {
                let (losses, backend) = match &reader {
                    Ok(reader) => reader.health_summary().unwrap_or((0, None)),
                    Err(_) => (0, None),
                };
                let beat = {
                    let s = state.lock().unwrap_or_else(|p| p.into_inner());
                    HeartbeatMessage {
                        host: host.clone(),
                        computer: crate::store::local_hostname(),
                        time_ns: now_ns(),
                        version: env!("CARGO_PKG_VERSION").to_string(),
                        store: store_id.clone(),
                        backend,
                        groups: s.groups.clone(),
                        applied: s.applied.clone(),
                        backlog: metrics.outbox_depth.get().max(0) as u64,
                        losses,
                        gaps: metrics.gaps.get(),
                        published: metrics.published.get(),
                    }
                };
                publish_status(&js, subjects::heartbeat(&host), &beat).await;
                if tokio::time::timeout(every, stop.changed()).await.is_ok() {
                    break;
                }
            }
        })
    };
    publisher.run(stop).await;
    rules_task.abort();
    heartbeat_task.abort();
    watcher.abort();
    let _ = client.flush().await;
}

/// Publishes a status document (heartbeat, applied rules) and waits briefly for its
/// acknowledgement; failures are logged at debug level (the next one follows).
async fn publish_status<T: serde::Serialize>(js: &jetstream::Context, subject: String, doc: &T) {
    let Ok(payload) = serde_json::to_vec(doc) else {
        return;
    };
    match js.publish(subject.clone(), payload.into()).await {
        Ok(ack) => {
            if let Err(e) = ack.await {
                log::debug!("fleet: {subject}: {e}");
            }
        }
        Err(e) => log::debug!("fleet: {subject}: {e}"),
    }
}

/// Reads one key of the rule bucket by direct get (the host's permissions allow exactly
/// its own keys): `None` when absent or deleted.
async fn read_key(
    stream: &jetstream::stream::Stream<()>,
    key: &str,
) -> Result<Option<(u64, bytes::Bytes)>> {
    match stream
        .direct_get_last_for_subject(subjects::bucket_subject(key))
        .await
    {
        Ok(message) => {
            let operation = message
                .headers
                .get("KV-Operation")
                .map(|v| v.as_str().to_string());
            if matches!(operation.as_deref(), Some("DEL") | Some("PURGE")) {
                Ok(None)
            } else {
                Ok(Some((message.sequence, message.payload)))
            }
        }
        Err(e) if e.kind() == jetstream::stream::DirectGetErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow!(e)).with_context(|| format!("reading {key} from the rule bucket")),
    }
}

/// The host's groups and their current rule sets.
async fn read_desired(
    stream: &jetstream::stream::Stream<()>,
    host: &str,
    local_groups: &[String],
) -> Result<(Vec<String>, BTreeMap<String, (u64, RuleSetDoc)>)> {
    let groups = match read_key(stream, &subjects::host_key(host)).await? {
        Some((_, value)) => {
            serde_json::from_slice::<Assignment>(&value)
                .context("reading this host's assignment")?
                .groups
        }
        None => local_groups.to_vec(),
    };
    let mut desired = BTreeMap::new();
    for group in &groups {
        if let Some((revision, value)) = read_key(stream, &subjects::group_key(group)).await? {
            let doc: RuleSetDoc = serde_json::from_slice(&value)
                .with_context(|| format!("reading group {group}'s rule set"))?;
            desired.insert(group.clone(), (revision, doc));
        }
    }
    Ok((groups, desired))
}

/// Follows the host's assignment and its groups' rule sets: current values first, then
/// every change (core subscriptions on the keys' subjects wake it; a periodic read covers
/// notifications missed while disconnected). A new revision is merged with the local
/// configuration, checked, handed to the daemon, and what happened is published.
#[allow(clippy::too_many_arguments)]
async fn follow_rules(
    client: async_nats::Client,
    js: jetstream::Context,
    host: String,
    local_groups: Vec<String>,
    local: LocalConfig,
    updates: mpsc::Sender<RuleUpdate>,
    state: Arc<Mutex<RulesState>>,
    metrics: AgentMetrics,
    mut stop: watch::Receiver<bool>,
) {
    let (wake_tx, mut wake) = mpsc::channel::<()>(16);
    let mut watched: BTreeMap<String, tokio::task::JoinHandle<()>> = BTreeMap::new();
    let mut watch_key = |key: String| {
        if watched.contains_key(&key) {
            return;
        }
        let (client, wake_tx) = (client.clone(), wake_tx.clone());
        let subject = subjects::bucket_subject(&key);
        watched.insert(
            key,
            tokio::spawn(async move {
                match client.subscribe(subject.clone()).await {
                    Ok(mut sub) => {
                        while sub.next().await.is_some() {
                            let _ = wake_tx.try_send(());
                        }
                    }
                    Err(e) => log::warn!("fleet: watching {subject}: {e}"),
                }
            }),
        );
    };
    watch_key(subjects::host_key(&host));
    let mut applied: Option<BTreeMap<String, u64>> = None;
    let mut rejected: Option<BTreeMap<String, u64>> = None;
    let stream = match js
        .get_stream_no_info(format!("KV_{}", subjects::RULES_BUCKET))
        .await
    {
        Ok(stream) => stream,
        Err(e) => {
            log::error!("fleet: the rule bucket: {e}");
            return;
        }
    };
    let mut follow_up: Option<Duration> = None;
    loop {
        match read_desired(&stream, &host, &local_groups).await {
            Ok((groups, desired)) => {
                for group in &groups {
                    watch_key(subjects::group_key(group));
                }
                state.lock().unwrap_or_else(|p| p.into_inner()).groups = groups;
                let revisions: BTreeMap<String, u64> =
                    desired.iter().map(|(g, (r, _))| (g.clone(), *r)).collect();
                let first = applied.is_none();
                let changed =
                    applied.as_ref() != Some(&revisions) && rejected.as_ref() != Some(&revisions);
                // Nothing central for this host yet: its own rules are in force already.
                if changed && !(first && desired.is_empty()) {
                    let outcome = apply(&local, &desired, &revisions, &updates).await;
                    match outcome {
                        Ok(()) => {
                            applied = Some(revisions.clone());
                            rejected = None;
                            let doc = AppliedRules {
                                revisions: revisions.clone(),
                                digest: rules::digest(&desired),
                            };
                            metrics
                                .rules_revision
                                .set(revisions.values().copied().max().unwrap_or(0) as i64);
                            state.lock().unwrap_or_else(|p| p.into_inner()).applied = doc.clone();
                            let report = AppliedMessage {
                                host: host.clone(),
                                time_ns: now_ns(),
                                applied: doc,
                                rejected: None,
                            };
                            publish_status(&js, subjects::applied(&host), &report).await;
                        }
                        Err(error) => {
                            metrics.rules_rejected.inc();
                            log::error!(
                                "fleet: central rule revisions {revisions:?} REJECTED; staying \
                                 on the last good ones: {error}"
                            );
                            rejected = Some(revisions.clone());
                            let current = state
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .applied
                                .clone();
                            let report = AppliedMessage {
                                host: host.clone(),
                                time_ns: now_ns(),
                                applied: current,
                                rejected: Some(Rejected { revisions, error }),
                            };
                            publish_status(&js, subjects::applied(&host), &report).await;
                        }
                    }
                } else if first {
                    applied = Some(revisions);
                }
            }
            Err(e) => log::warn!("fleet: reading the central rules: {e:#}"),
        }
        let next = follow_up.unwrap_or(RULES_RECHECK);
        tokio::select! {
            _ = wake.recv() => {
                // A burst of notifications is one read.
                while wake.try_recv().is_ok() {}
                follow_up = Some(RULES_FOLLOW_UP_FIRST);
            }
            _ = tokio::time::sleep(next) => {
                follow_up = follow_up
                    .map(|d| d * 2)
                    .filter(|d| *d <= RULES_FOLLOW_UP_MAX);
            }
            _ = stop.changed() => break,
        }
    }
    for (_, task) in watched {
        task.abort();
    }
}

/// Merges and checks the new revisions, then asks the daemon to apply them.
async fn apply(
    local: &LocalConfig,
    desired: &BTreeMap<String, (u64, RuleSetDoc)>,
    revisions: &BTreeMap<String, u64>,
    updates: &mpsc::Sender<RuleUpdate>,
) -> Result<(), String> {
    let sources = local.read()?;
    let rules = rules::merge(&sources, desired).map_err(|e| e.to_string())?;
    let (done, answer) = oneshot::channel();
    updates
        .send(RuleUpdate {
            rules,
            revisions: revisions.clone(),
            done,
        })
        .await
        .map_err(|_| "the daemon is not taking rule updates".to_string())?;
    answer
        .await
        .map_err(|_| "the daemon dropped the rule update".to_string())?
}
