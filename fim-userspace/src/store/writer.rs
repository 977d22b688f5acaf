//! The single store writer: a thread that takes rows from a channel and commits them in
//! batches (up to `max_batch` rows or `max_delay` after the first one), so the event path
//! never waits for the disk.
//!
//! A failing write (full disk, I/O error, a locked database) never kills the thread: the rows
//! stay queued, the error is counted, and the batch is retried with a growing backoff. Only
//! when the queue would exceed `max_pending` are the oldest rows dropped, and that is counted
//! and recorded as a health row once writing works again: never silently.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use rusqlite::Connection;

use super::baseline;
use super::change::{self, ChangeRecord};
use super::content::{self, ContentRecord};
use super::health::{self, HealthRecord};
use super::heartbeat::{self, Heartbeat};
use crate::baseline::BaselineEntry;

/// One write for the store.
// Rows are moved into the queue once; boxing the large variant would cost an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    Change(ChangeRecord),
    Health(HealthRecord),
    Content(ContentRecord),
    BaselineUpsert(BaselineEntry),
    BaselineRemove(Vec<u8>),
    /// A directory was renamed: the rows below `from` move below `to` (replacing stale rows
    /// there); with `to` empty they are removed (moved out of every watched tree).
    BaselineMoveBelow {
        from: Vec<u8>,
        to: Vec<u8>,
    },
    /// The daemon's heartbeat row, replaced.
    Heartbeat(Heartbeat),
}

/// Where batches go: SQLite in production, a fault-injecting fake in tests.
pub trait BatchSink: Send + 'static {
    /// Writes all ops atomically (all or none).
    fn write_batch(&mut self, ops: &[StoreOp]) -> Result<()>;
}

/// Writes batches in one SQLite transaction each.
pub struct SqliteSink {
    conn: Connection,
}

impl SqliteSink {
    pub fn new(conn: Connection) -> SqliteSink {
        SqliteSink { conn }
    }
}

impl BatchSink for SqliteSink {
    fn write_batch(&mut self, ops: &[StoreOp]) -> Result<()> {
        write_ops(&mut self.conn, ops)
    }
}

/// Writes ops in one transaction.
pub(crate) fn write_ops(conn: &mut Connection, ops: &[StoreOp]) -> Result<()> {
    let tx = conn.transaction().context("starting a write batch")?;
    for op in ops {
        match op {
            StoreOp::Change(c) => change::insert(&tx, c)?,
            StoreOp::Health(h) => health::insert(&tx, h)?,
            StoreOp::Content(c) => content::insert(&tx, c)?,
            StoreOp::BaselineUpsert(e) => baseline::upsert(&tx, e)?,
            StoreOp::BaselineRemove(p) => baseline::remove(&tx, p)?,
            StoreOp::BaselineMoveBelow { from, to } => baseline::move_below(&tx, from, to)?,
            StoreOp::Heartbeat(beat) => heartbeat::write(&tx, beat)?,
        }
    }
    tx.commit().context("committing a write batch")
}

/// Batching and retry knobs.
#[derive(Debug, Clone)]
pub struct WriterSettings {
    pub max_batch: usize,
    pub max_delay: Duration,
    /// First wait after a failed write; doubles up to `max_backoff`.
    pub retry_backoff: Duration,
    pub max_backoff: Duration,
    /// Rows kept while writes fail; beyond this the oldest are dropped (and counted).
    pub max_pending: usize,
    /// Capacity of the channel in; senders block when it is full (back-pressure).
    pub channel_capacity: usize,
    /// Write attempts at shutdown before unsaved rows are given up (and counted).
    pub shutdown_attempts: u32,
}

impl Default for WriterSettings {
    fn default() -> WriterSettings {
        WriterSettings {
            max_batch: 1000,
            max_delay: Duration::from_millis(100),
            retry_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_pending: 200_000,
            channel_capacity: 10_000,
            shutdown_attempts: 3,
        }
    }
}

/// Counters shared with the writer thread (for metrics and tests).
#[derive(Debug, Default)]
pub struct WriterCounters {
    pub rows_written: AtomicU64,
    pub batches_committed: AtomicU64,
    pub largest_batch: AtomicU64,
    pub write_errors: AtomicU64,
    pub rows_dropped: AtomicU64,
    pub pending: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    pub rows_written: u64,
    pub batches_committed: u64,
    pub largest_batch: u64,
    pub write_errors: u64,
    pub rows_dropped: u64,
    pub pending: u64,
}

impl WriterCounters {
    fn snapshot(&self) -> WriterStats {
        WriterStats {
            rows_written: self.rows_written.load(Ordering::Relaxed),
            batches_committed: self.batches_committed.load(Ordering::Relaxed),
            largest_batch: self.largest_batch.load(Ordering::Relaxed),
            write_errors: self.write_errors.load(Ordering::Relaxed),
            rows_dropped: self.rows_dropped.load(Ordering::Relaxed),
            pending: self.pending.load(Ordering::Relaxed),
        }
    }
}

#[allow(clippy::large_enum_variant)]
enum Message {
    Op(StoreOp),
    /// Answered once everything sent before it is committed, or with the error of the
    /// attempt that failed.
    Flush(mpsc::Sender<std::result::Result<(), String>>),
}

/// The handle to the writer thread. Dropping it without [`StoreWriter::shutdown`] still
/// drains the queue (the thread finishes on its own).
pub struct StoreWriter {
    sender: Option<SyncSender<Message>>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<WriterCounters>,
}

impl StoreWriter {
    pub fn spawn(sink: impl BatchSink, settings: WriterSettings) -> Result<StoreWriter> {
        let (sender, receiver) = mpsc::sync_channel(settings.channel_capacity.max(1));
        let counters = Arc::new(WriterCounters::default());
        let thread_counters = Arc::clone(&counters);
        let thread = std::thread::Builder::new()
            .name("fim-store-writer".to_string())
            .spawn(move || {
                WriterLoop {
                    sink,
                    settings,
                    counters: thread_counters,
                    pending: VecDeque::new(),
                    dropped_unreported: 0,
                }
                .run(receiver)
            })
            .context("starting the store writer thread")?;
        Ok(StoreWriter {
            sender: Some(sender),
            thread: Some(thread),
            counters,
        })
    }

    /// Queues one write (blocks while the channel is full).
    pub fn send(&self, op: StoreOp) -> Result<()> {
        self.sender
            .as_ref()
            .ok_or_else(|| anyhow!("the store writer is shut down"))?
            .send(Message::Op(op))
            .map_err(|_| anyhow!("the store writer thread has stopped"))
    }

    /// Waits until everything sent so far is committed; fails with the write error if the
    /// attempt made for it failed (the rows stay queued and are retried).
    pub fn flush(&self) -> Result<()> {
        let (ack, done) = mpsc::channel();
        self.sender
            .as_ref()
            .ok_or_else(|| anyhow!("the store writer is shut down"))?
            .send(Message::Flush(ack))
            .map_err(|_| anyhow!("the store writer thread has stopped"))?;
        match done.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(anyhow!("store write failed: {message}")),
            Err(_) => Err(anyhow!("the store writer thread has stopped")),
        }
    }

    pub fn stats(&self) -> WriterStats {
        self.counters.snapshot()
    }

    /// Closes the channel, lets the thread commit what is queued, and waits for it.
    pub fn shutdown(mut self) -> Result<WriterStats> {
        self.sender.take();
        if let Some(thread) = self.thread.take() {
            thread
                .join()
                .map_err(|_| anyhow!("the store writer thread panicked"))?;
        }
        Ok(self.counters.snapshot())
    }
}

impl Drop for StoreWriter {
    fn drop(&mut self) {
        self.sender.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct WriterLoop<S: BatchSink> {
    sink: S,
    settings: WriterSettings,
    counters: Arc<WriterCounters>,
    pending: VecDeque<StoreOp>,
    /// Rows dropped since the last health row about it was written.
    dropped_unreported: u64,
}

impl<S: BatchSink> WriterLoop<S> {
    fn run(mut self, receiver: Receiver<Message>) {
        let mut backoff = self.settings.retry_backoff;
        let mut retry_at: Option<Instant> = None;
        let mut flushes: Vec<mpsc::Sender<std::result::Result<(), String>>> = Vec::new();
        let mut open = true;
        while open {
            // Collect a batch: block for the first row, then until full or the delay is up.
            let deadline = match retry_at {
                Some(at) => Some(at),
                None if self.pending.is_empty() => None,
                None => Some(Instant::now() + self.settings.max_delay),
            };
            let mut batch_started = deadline;
            loop {
                let message = match batch_started {
                    None => receiver.recv().map_err(|_| RecvTimeoutError::Disconnected),
                    Some(at) => receiver.recv_timeout(at.saturating_duration_since(Instant::now())),
                };
                match message {
                    Ok(Message::Op(op)) => {
                        self.enqueue(op);
                        if batch_started.is_none() {
                            batch_started = Some(Instant::now() + self.settings.max_delay);
                        }
                        if retry_at.is_none() && self.pending.len() >= self.settings.max_batch {
                            break;
                        }
                    }
                    Ok(Message::Flush(ack)) => {
                        flushes.push(ack);
                        break;
                    }
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            match self.write_pending() {
                Ok(()) => {
                    backoff = self.settings.retry_backoff;
                    retry_at = None;
                    for ack in flushes.drain(..) {
                        let _ = ack.send(Ok(()));
                    }
                }
                Err(e) => {
                    let message = format!("{e:#}");
                    for ack in flushes.drain(..) {
                        let _ = ack.send(Err(message.clone()));
                    }
                    retry_at = Some(Instant::now() + backoff);
                    backoff = backoff.saturating_mul(2).min(self.settings.max_backoff);
                }
            }
        }
        // The channel is closed: a few last attempts, then what is left is counted as lost.
        for _ in 0..self.settings.shutdown_attempts {
            if self.pending.is_empty() || self.write_pending().is_ok() {
                break;
            }
            std::thread::sleep(backoff);
            backoff = backoff.saturating_mul(2).min(self.settings.max_backoff);
        }
        let lost = self.pending.len() as u64;
        if lost > 0 {
            self.counters
                .rows_dropped
                .fetch_add(lost, Ordering::Relaxed);
            log::error!("store writer stopping with {lost} rows that could not be written");
        }
    }

    fn enqueue(&mut self, op: StoreOp) {
        self.pending.push_back(op);
        if self.pending.len() > self.settings.max_pending {
            self.pending.pop_front();
            self.dropped_unreported += 1;
            self.counters.rows_dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.counters
            .pending
            .store(self.pending.len() as u64, Ordering::Relaxed);
    }

    /// Writes everything pending in batches of `max_batch`; stops at the first failure.
    fn write_pending(&mut self) -> Result<()> {
        if self.dropped_unreported > 0 {
            let dropped = self.dropped_unreported;
            self.dropped_unreported = 0;
            self.pending.push_front(StoreOp::Health(HealthRecord {
                time_ns: now_ns(),
                kind: "store_rows_dropped".to_string(),
                backend: None,
                detail: Some(format!(
                    "{dropped} rows were dropped while the store could not be written"
                )),
                lost_events: dropped,
            }));
        }
        while !self.pending.is_empty() {
            let n = self.pending.len().min(self.settings.max_batch.max(1));
            let batch = self.pending.make_contiguous();
            if let Err(e) = self.sink.write_batch(&batch[..n]) {
                let errors = self.counters.write_errors.fetch_add(1, Ordering::Relaxed) + 1;
                // Log the first failure and then sparsely: a full disk fails every attempt.
                if errors == 1 || errors.is_power_of_two() {
                    log::warn!(
                        "store write failed ({errors} failures so far, {} rows queued): {e:#}",
                        self.pending.len()
                    );
                }
                return Err(e);
            }
            self.pending.drain(..n);
            self.counters
                .rows_written
                .fetch_add(n as u64, Ordering::Relaxed);
            self.counters
                .batches_committed
                .fetch_add(1, Ordering::Relaxed);
            self.counters
                .largest_batch
                .fetch_max(n as u64, Ordering::Relaxed);
            self.counters
                .pending
                .store(self.pending.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}
