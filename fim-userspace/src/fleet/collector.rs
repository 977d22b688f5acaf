//! `fim collector`: durable consumers on the fleet streams, writing PostgreSQL. A batch of
//! messages is inserted in one transaction keyed by (host, store, row id) and acknowledged
//! only after the commit: killed anywhere, the stream delivers the batch again and the key
//! turns what was already committed into counted duplicates. Every change lands exactly
//! once. Several collectors may share the durable consumer.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use async_nats::jetstream::{self, consumer::AckPolicy, consumer::pull};
use futures::StreamExt;
use tokio::sync::watch;

use super::metrics::CollectorMetrics;
use super::pg;
use super::settings::FleetSettings;
use super::subjects;
use super::wire::{AppliedMessage, ChangeMessage, HealthMessage, HeartbeatMessage};

/// Messages per transaction at most.
const BATCH: usize = 1000;
/// How long a batch waits to fill once it has its first message.
const BATCH_WINDOW: Duration = Duration::from_millis(20);
/// Unacknowledged messages the server lets one consumer have.
const MAX_ACK_PENDING: i64 = 20_000;
/// A delivered message not acknowledged within this is delivered again.
const ACK_WAIT: Duration = Duration::from_secs(30);

/// What `fim collector` needs.
pub struct CollectorSettings {
    pub nats: FleetSettings,
    pub postgres: String,
}

/// Runs until `stop` turns true.
pub async fn run(
    settings: CollectorSettings,
    metrics: CollectorMetrics,
    stop: watch::Receiver<bool>,
) -> Result<()> {
    let mut db = pg::connect(&settings.postgres).await?;
    let version = pg::migrate(&mut db).await?;
    log::info!("collector: PostgreSQL schema at version {version}");
    let client = super::nats::connect(&settings.nats, "fim collector").await?;
    // The servers may be down at start: wait for them, like for everything else.
    let server = loop {
        match super::nats::server_version(&client).await {
            Ok(version) => break version,
            Err(_) if *stop.borrow() => return Ok(()),
            Err(_) => log::warn!("collector: waiting for a NATS server"),
        }
    };
    super::nats::require_minimum(server)?;
    log::info!("collector: NATS server {server}");
    let js = super::nats::jetstream(client.clone());
    let status_db = pg::connect(&settings.postgres).await?;
    let events = {
        let (js, metrics, stop) = (js.clone(), metrics.clone(), stop.clone());
        tokio::spawn(async move {
            let db = Arc::new(tokio::sync::Mutex::new(db));
            again("events", stop.clone(), || {
                consume_events(js.clone(), Arc::clone(&db), metrics.clone(), stop.clone())
            })
            .await
        })
    };
    let status = {
        let (js, metrics, stop) = (js.clone(), metrics.clone(), stop.clone());
        tokio::spawn(async move {
            let db = Arc::new(status_db);
            again("status", stop.clone(), || {
                consume_status(js.clone(), Arc::clone(&db), metrics.clone(), stop.clone())
            })
            .await
        })
    };
    let (events, status) = tokio::join!(events, status);
    events.map_err(|e| anyhow!("events task: {e}"))?;
    status.map_err(|e| anyhow!("status task: {e}"))?;
    Ok(())
}

/// Runs `work` again after every failure (brokers down, a consumer lost with its leader)
/// until `stop`: the collector waits out outages instead of exiting.
async fn again<F, Fut>(what: &str, stop: watch::Receiver<bool>, mut work: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut backoff = Duration::from_millis(200);
    loop {
        match work().await {
            Ok(()) => return,
            Err(e) => {
                if *stop.borrow() {
                    return;
                }
                log::warn!("collector: {what}: {e:#}; again in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(3));
            }
        }
    }
}

async fn durable(
    js: &jetstream::Context,
    stream: &str,
    name: &str,
) -> Result<jetstream::consumer::Consumer<pull::Config>> {
    let stream = js
        .get_stream(stream)
        .await
        .with_context(|| format!("opening stream {stream} (run `fim fleet init` first)"))?;
    stream
        .get_or_create_consumer(
            name,
            pull::Config {
                durable_name: Some(name.to_string()),
                ack_policy: AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                max_ack_pending: MAX_ACK_PENDING,
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("creating the durable consumer {name}"))
}

/// Takes up to `BATCH` messages: waits for the first, then briefly for more.
async fn next_batch(
    messages: &mut pull::Stream,
    stop: &mut watch::Receiver<bool>,
) -> Result<Option<Vec<jetstream::Message>>> {
    let first = tokio::select! {
        m = messages.next() => m,
        _ = stop.changed() => return Ok(None),
    };
    let Some(first) = first else {
        return Err(anyhow!("the consumer's message stream ended"));
    };
    let mut batch = vec![
        first
            .map_err(|e| anyhow!(e))
            .context("receiving a message")?,
    ];
    let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
    while batch.len() < BATCH {
        match tokio::time::timeout_at(deadline, messages.next()).await {
            Ok(Some(Ok(m))) => batch.push(m),
            Ok(Some(Err(e))) => {
                log::debug!("collector: {e}");
                break;
            }
            Ok(None) | Err(_) => break,
        }
    }
    Ok(Some(batch))
}

async fn consume_events(
    js: jetstream::Context,
    db: Arc<tokio::sync::Mutex<tokio_postgres::Client>>,
    metrics: CollectorMetrics,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let consumer = durable(&js, subjects::EVENTS_STREAM, subjects::COLLECTOR_EVENTS).await?;
    let _lag = AbortOnDrop(tokio::spawn(track_lag(
        consumer.clone(),
        metrics.lag.clone(),
        stop.clone(),
    )));
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(BATCH)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .context("pulling from the events stream")?;
    while let Some(batch) = next_batch(&mut messages, &mut stop).await? {
        metrics.consumed.inc_by(batch.len() as u64);
        let mut changes = Vec::new();
        let mut health = Vec::new();
        for message in &batch {
            let subject = message.subject.as_str();
            let decoded = if subject.starts_with("fim.v1.change.") {
                serde_json::from_slice::<ChangeMessage>(&message.payload).map(|c| changes.push(c))
            } else {
                serde_json::from_slice::<HealthMessage>(&message.payload).map(|h| health.push(h))
            };
            if let Err(e) = decoded {
                metrics.malformed.inc();
                log::warn!("collector: a message on {subject} is not a fim row ({e}); dropped");
            }
        }
        // The subject names the host: a row claiming another host is not believed (the
        // server's permissions only check the subject).
        changes.retain(|c| subject_host_matches(&batch, &c.host, "change"));
        health.retain(|h| subject_host_matches(&batch, &h.host, "health"));
        loop {
            match commit(&mut *db.lock().await, &changes, &health).await {
                Ok(result) => {
                    metrics.inserted.inc_by(result.inserted);
                    metrics.duplicates.inc_by(result.duplicates);
                    break;
                }
                Err(e) => {
                    metrics.errors.inc();
                    log::warn!("collector: writing a batch failed: {e:#}; retrying");
                    if *stop.borrow() {
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        // Only now: the rows are committed.
        for message in &batch {
            if let Err(e) = message.ack().await {
                log::debug!("collector: ack: {e}");
            }
        }
    }
    Ok(())
}

/// Ends a task when the scope that started it ends (an error return included).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps the lag gauge current every second, whether messages flow or not (refreshed only
/// between batches, a caught-up collector would go on showing the last backlog it saw).
async fn track_lag(
    consumer: jetstream::consumer::Consumer<pull::Config>,
    lag: prometheus_client::metrics::gauge::Gauge,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if let Ok(info) = consumer.get_info().await {
            lag.set(info.num_pending.min(i64::MAX as u64) as i64);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Whether some message of the batch on `fim.v1.<kind>.<host>` carried this host's row.
fn subject_host_matches(batch: &[jetstream::Message], host: &str, kind: &str) -> bool {
    let subject = format!("fim.v1.{kind}.{host}");
    let ok = batch.iter().any(|m| m.subject.as_str() == subject);
    if !ok {
        log::warn!("collector: a {kind} row names host {host} on another host's subject; dropped");
    }
    ok
}

async fn commit(
    db: &mut tokio_postgres::Client,
    changes: &[ChangeMessage],
    health: &[HealthMessage],
) -> Result<pg::Inserted> {
    let tx = db.transaction().await.context("starting a transaction")?;
    let a = pg::insert_changes(&tx, changes).await?;
    let b = pg::insert_health(&tx, health).await?;
    tx.commit().await.context("committing a batch")?;
    Ok(pg::Inserted {
        inserted: a.inserted + b.inserted,
        duplicates: a.duplicates + b.duplicates,
    })
}

async fn consume_status(
    js: jetstream::Context,
    db: Arc<tokio_postgres::Client>,
    metrics: CollectorMetrics,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let consumer = durable(&js, subjects::STATUS_STREAM, subjects::COLLECTOR_STATUS).await?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(100)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .context("pulling from the status stream")?;
    while let Some(batch) = next_batch(&mut messages, &mut stop).await? {
        for message in batch {
            let subject = message.subject.as_str().to_string();
            let result = if let Some(host) = subject.strip_prefix("fim.v1.heartbeat.") {
                match serde_json::from_slice::<HeartbeatMessage>(&message.payload) {
                    Ok(beat) if beat.host == host => pg::upsert_heartbeat(&db, &beat).await,
                    Ok(_) => Err(anyhow!("a heartbeat for another host")),
                    Err(e) => Err(anyhow!(e)),
                }
            } else if let Some(host) = subject.strip_prefix("fim.v1.applied.") {
                match serde_json::from_slice::<AppliedMessage>(&message.payload) {
                    Ok(report) if report.host == host => pg::record_applied(&db, &report).await,
                    Ok(_) => Err(anyhow!("a report for another host")),
                    Err(e) => Err(anyhow!(e)),
                }
            } else {
                Err(anyhow!("unexpected subject"))
            };
            if let Err(e) = result {
                if db.is_closed() {
                    // Not acknowledged: delivered again once PostgreSQL is back.
                    return Err(e.context("PostgreSQL connection lost"));
                }
                metrics.malformed.inc();
                log::warn!("collector: {subject}: {e:#}");
            }
            let _ = message.ack().await;
        }
    }
    Ok(())
}
