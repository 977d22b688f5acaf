//! The agent's publisher: the store's committed rows, in order, to this host's subjects,
//! each with a message id that makes a retry a duplicate the server drops. The cursor moves
//! only on the server's acknowledgement; many publishes are in flight at once and the cursor
//! follows the contiguous acknowledged prefix. While the brokers are unreachable nothing is
//! lost: the rows stay in the store, bounded by `max_backlog` (past it, an explicit gap).

use std::collections::VecDeque;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishError};
use bytes::Bytes;
use futures::FutureExt;
use tokio::sync::watch;

use super::metrics::AgentMetrics;
use super::outbox::{Outbox, Row};
use super::subjects::{self, RowKind};
use super::wire::{ChangeMessage, HealthMessage};

/// Rows read from the store per query.
const READ_BATCH: usize = 2000;
/// How often the store is looked at for new rows when there is nothing to send.
const IDLE_POLL: Duration = Duration::from_millis(25);
/// How often the acknowledged cursor is saved (and at every stop).
const SAVE_EVERY: Duration = Duration::from_millis(200);
/// Waits after a failure, doubling up to the maximum.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(3);
/// At a stop, how long what is in flight and queued may still take.
const STOP_GRACE: Duration = Duration::from_secs(3);

type AckFuture =
    Pin<Box<dyn Future<Output = Result<jetstream::publish::PublishAck, PublishError>> + Send>>;

struct InFlight {
    kind: RowKind,
    id: i64,
    ack: AckFuture,
}

const KINDS: [RowKind; 2] = [RowKind::Health, RowKind::Change];

fn slot(kind: RowKind) -> usize {
    match kind {
        RowKind::Change => 0,
        RowKind::Health => 1,
    }
}

pub struct Publisher {
    js: jetstream::Context,
    outbox: Outbox,
    host: String,
    max_backlog: u64,
    /// The last acknowledged row of each kind.
    cursor: [i64; 2],
    /// The last row of each kind sent (acknowledged or in flight).
    sent: [i64; 2],
    saved: [i64; 2],
    window: VecDeque<InFlight>,
    /// Until the cursors pass these ids, a restart must not trust the stream's last row.
    uncertain_until: Option<[i64; 2]>,
    metrics: AgentMetrics,
    backoff: Duration,
    last_save: Instant,
}

impl Publisher {
    pub fn new(
        js: jetstream::Context,
        outbox: Outbox,
        host: &str,
        max_backlog: u64,
        metrics: AgentMetrics,
    ) -> Result<Publisher> {
        let cursor = [
            outbox.cursor(RowKind::Change)?,
            outbox.cursor(RowKind::Health)?,
        ];
        Ok(Publisher {
            js,
            host: host.to_string(),
            max_backlog,
            cursor,
            sent: cursor,
            saved: cursor,
            window: VecDeque::new(),
            uncertain_until: None,
            metrics,
            backoff: FIRST_BACKOFF,
            last_save: Instant::now(),
            outbox,
        })
    }

    pub fn store_id(&self) -> &str {
        self.outbox.store_id()
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Rows not yet acknowledged.
    pub fn backlog(&self) -> u64 {
        KINDS
            .iter()
            .map(|&k| {
                let last = self.outbox.last_id(k).unwrap_or(0);
                (last - self.cursor[slot(k)]).max(0) as u64
            })
            .sum()
    }

    /// After a restart: the stream may already hold rows the last run sent but did not
    /// record as acknowledged (killed in between). Its last row of this store on each of
    /// the host's subjects moves the cursor forward, unless the last run saw a failed
    /// publish with later ones in flight: then the stream could hold a row after one it
    /// lacks, and everything after the saved cursor is sent again (duplicates are dropped
    /// by the server and by the collector's unique key).
    pub async fn resume(&mut self) -> Result<()> {
        let stream = self
            .js
            .get_stream_no_info(subjects::EVENTS_STREAM)
            .await
            .context("opening the events stream")?;
        let uncertain = self.outbox.uncertain()?;
        let mut stream_last = self.cursor;
        for kind in KINDS {
            let message = match stream
                .direct_get_last_for_subject(kind.subject(&self.host))
                .await
            {
                Ok(message) => message,
                Err(e) if e.kind() == jetstream::stream::DirectGetErrorKind::NotFound => {
                    continue;
                }
                Err(e) => {
                    return Err(anyhow!(e)).with_context(|| {
                        format!(
                            "reading the last {} row of this host from stream {} (run `fim \
                             fleet init` if it does not exist)",
                            kind.name(),
                            subjects::EVENTS_STREAM
                        )
                    });
                }
            };
            let header = |name: &str| message.headers.get(name).map(|v| v.as_str().to_string());
            if header(subjects::HEADER_STORE).as_deref() != Some(self.outbox.store_id()) {
                continue;
            }
            let Some(id) = header(subjects::HEADER_ID).and_then(|v| v.parse::<i64>().ok()) else {
                continue;
            };
            let last_local = self.outbox.last_id(kind)?;
            if id > last_local {
                log::warn!(
                    "the stream holds {} row {id} of this store but the store's last is \
                     {last_local}: was the store restored from a backup? Rows up to {id} are \
                     taken as published",
                    kind.name()
                );
            }
            stream_last[slot(kind)] = id;
            let i = slot(kind);
            if id > self.cursor[i] && !uncertain {
                log::info!(
                    "fleet: the stream already holds {} rows up to {id} (saved cursor {}): \
                     resuming after it",
                    kind.name(),
                    self.cursor[i]
                );
                self.cursor[i] = id;
                self.sent[i] = id;
            }
        }
        if uncertain {
            log::info!(
                "fleet: the last run saw a failed publish; sending again from the saved \
                 cursors {:?}",
                self.cursor
            );
            self.uncertain_until = Some(stream_last);
        }
        self.save(true)?;
        Ok(())
    }

    /// One round: gaps, new rows into the window, acknowledgements out of it. Returns
    /// whether there was anything to do (the caller idles otherwise).
    pub async fn step(&mut self) -> Result<bool> {
        if self.window.is_empty() {
            for kind in KINDS {
                let i = slot(kind);
                if let Some(gap) = self
                    .outbox
                    .gap_after(kind, self.cursor[i], self.max_backlog)?
                {
                    log::warn!(
                        "fleet: {} {} rows {}..={} will not be published: {}; recorded as a \
                         fleet_gap row",
                        gap.last - gap.first + 1,
                        kind.name(),
                        gap.first,
                        gap.last,
                        gap.why
                    );
                    self.outbox.record_gap(&gap, now_ns())?;
                    self.metrics.gaps.inc_by((gap.last - gap.first + 1) as u64);
                    self.cursor[i] = gap.last;
                    self.sent[i] = gap.last;
                    self.saved[i] = gap.last;
                }
            }
        }
        let mut busy = false;
        if self.window.len() < super::nats::MAX_IN_FLIGHT / 2 {
            busy |= self.fill().await?;
        }
        // Everything that is already acknowledged, without waiting.
        while let Some(front) = self.window.front_mut() {
            match (&mut front.ack).now_or_never() {
                Some(result) => {
                    busy = true;
                    self.acknowledged(result)?;
                }
                None => break,
            }
        }
        // Nothing to send: wait for the oldest acknowledgement.
        if !busy && let Some(mut front) = self.window.pop_front() {
            let result = (&mut front.ack).await;
            self.window.push_front(front);
            self.acknowledged(result)?;
            busy = true;
        }
        if self.last_save.elapsed() >= SAVE_EVERY {
            self.save(false)?;
            self.metrics.outbox_depth.set(self.backlog() as i64);
        }
        Ok(busy)
    }

    /// Sends rows after what was sent, up to the window's room. A row that is not the next
    /// id (a gap) stops the kind until the window is empty, when the gap is recorded.
    async fn fill(&mut self) -> Result<bool> {
        let mut any = false;
        for kind in KINDS {
            let i = slot(kind);
            let room = super::nats::MAX_IN_FLIGHT - self.window.len();
            if room == 0 {
                break;
            }
            let rows = self.outbox.rows(kind, self.sent[i], room.min(READ_BATCH))?;
            for row in rows {
                if row.id() != self.sent[i] + 1 {
                    break;
                }
                let (subject, id, payload) = self.encode(&row)?;
                let mut headers = HeaderMap::new();
                headers.insert(
                    "Nats-Msg-Id",
                    subjects::message_id(&self.host, self.outbox.store_id(), kind, id).as_str(),
                );
                headers.insert(subjects::HEADER_STORE, self.outbox.store_id());
                headers.insert(subjects::HEADER_ID, id.to_string().as_str());
                headers.insert(subjects::HEADER_HOST, self.host.as_str());
                match self
                    .js
                    .publish_with_headers(subject, headers, payload)
                    .await
                {
                    Ok(ack) => {
                        self.window.push_back(InFlight {
                            kind,
                            id,
                            ack: ack.into_future(),
                        });
                        self.sent[i] = id;
                        any = true;
                    }
                    Err(e) => {
                        self.failed(anyhow!(e).context("publishing"))?;
                        return Ok(true);
                    }
                }
            }
        }
        Ok(any)
    }

    fn encode(&self, row: &Row) -> Result<(String, i64, Bytes)> {
        let store = self.outbox.store_id();
        Ok(match row {
            Row::Change(id, change) => (
                subjects::change(&self.host),
                *id,
                Bytes::from(serde_json::to_vec(&ChangeMessage::new(
                    &self.host, store, *id, change,
                ))?),
            ),
            Row::Health(id, health) => (
                subjects::health(&self.host),
                *id,
                Bytes::from(serde_json::to_vec(&HealthMessage::new(
                    &self.host, store, *id, health,
                ))?),
            ),
        })
    }

    /// The oldest in-flight publish has its answer.
    fn acknowledged(
        &mut self,
        result: Result<jetstream::publish::PublishAck, PublishError>,
    ) -> Result<()> {
        let Some(front) = self.window.pop_front() else {
            return Ok(());
        };
        match result {
            Ok(ack) => {
                self.metrics.published.inc();
                if ack.duplicate {
                    self.metrics.duplicates.inc();
                }
                self.cursor[slot(front.kind)] = front.id;
                self.backoff = FIRST_BACKOFF;
                if let Some(until) = self.uncertain_until
                    && self.cursor[0] >= until[0]
                    && self.cursor[1] >= until[1]
                {
                    self.uncertain_until = None;
                    self.outbox.set_uncertain(false)?;
                }
                Ok(())
            }
            Err(e) => self.failed(anyhow!(e).context(format!(
                "publishing {} row {}",
                front.kind.name(),
                front.id
            ))),
        }
    }

    /// A publish failed: everything after the acknowledged cursors is sent again after a
    /// pause. If later publishes were in flight, some may be in the stream already: the
    /// state is marked uncertain (see [`Publisher::resume`]) until they are acknowledged.
    fn failed(&mut self, error: anyhow::Error) -> Result<()> {
        self.metrics.publish_errors.inc();
        let errors = self.metrics.publish_errors.get();
        if errors == 1 || errors.is_power_of_two() {
            log::warn!("fleet: {error:#} ({errors} publish errors so far); retrying");
        }
        if !self.window.is_empty() {
            self.uncertain_until = Some(self.sent);
            self.outbox.set_uncertain(true)?;
        }
        self.window.clear();
        self.sent = self.cursor;
        self.save(true)?;
        Err(anyhow!(BackOff(self.backoff)))
    }

    /// Saves the cursors if they moved (or `force`).
    fn save(&mut self, force: bool) -> Result<()> {
        self.last_save = Instant::now();
        for kind in KINDS {
            let i = slot(kind);
            if force || self.cursor[i] != self.saved[i] {
                self.outbox.save_cursor(kind, self.cursor[i])?;
                self.saved[i] = self.cursor[i];
            }
        }
        Ok(())
    }

    /// Runs until `stop` turns true; then tries for a short while to publish what is left.
    pub async fn run(&mut self, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                break;
            }
            match self.resume().await {
                Ok(()) => break,
                Err(e) => {
                    self.metrics.publish_errors.inc();
                    log::warn!("fleet: {e:#}; retrying in {:?}", self.backoff);
                    let wait = self.next_backoff();
                    let _ = tokio::time::timeout(wait, stop.changed()).await;
                }
            }
        }
        let mut stop_at: Option<Instant> = None;
        loop {
            if stop_at.is_none() && *stop.borrow() {
                stop_at = Some(Instant::now() + STOP_GRACE);
            }
            if let Some(at) = stop_at
                && (Instant::now() >= at || (self.window.is_empty() && self.backlog() == 0))
            {
                break;
            }
            match self.step().await {
                Ok(true) => {}
                Ok(false) => {
                    let _ = tokio::time::timeout(IDLE_POLL, stop.changed()).await;
                }
                Err(e) => {
                    let wait = match e.downcast_ref::<BackOff>() {
                        Some(_) => self.next_backoff(),
                        None => {
                            log::warn!("fleet: {e:#}");
                            self.next_backoff()
                        }
                    };
                    if stop_at.is_some() {
                        break;
                    }
                    let _ = tokio::time::timeout(wait, stop.changed()).await;
                }
            }
        }
        // Whatever is still in flight gets its chance to be counted.
        while let Some(mut front) = self.window.pop_front() {
            match tokio::time::timeout(Duration::from_millis(500), &mut front.ack).await {
                Ok(result) => {
                    self.window.push_front(front);
                    if self.acknowledged(result).is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        if let Err(e) = self.save(true) {
            log::warn!("fleet: saving the outbox cursor: {e:#}");
        }
        self.metrics.outbox_depth.set(self.backlog() as i64);
    }

    fn next_backoff(&mut self) -> Duration {
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        wait
    }
}

/// The error of a round that failed and was handled: wait, then go on.
#[derive(Debug)]
struct BackOff(Duration);

impl std::fmt::Display for BackOff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "backing off for {:?}", self.0)
    }
}

impl std::error::Error for BackOff {}

pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}
