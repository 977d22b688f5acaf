//! The streaming scan engine shared by [`super::scan`] (in memory) and [`super::rescan`]
//! (against the store): bounded memory for any number of files.
//!
//! Three stages run at once:
//! - the walker (one thread) yields paths in byte order ([`SortedWalk`]) and merges them with
//!   the stored rows of the same scope, read in the same order a page at a time: a stored row
//!   the walk passes by without finding is removed, one it finds goes along with the path so
//!   the hash of an unchanged file can be reused;
//! - examiners (one per core) `lstat`, read xattrs and link targets, and hash;
//! - the caller's thread takes the results back in walk order and hands them to its sink
//!   (collect a [`Baseline`](super::Baseline), or write the store in batches).
//!
//! At most [`WINDOW`] paths are between the walker and the sink, so memory does not grow with
//! the tree, and a large file being hashed does not stop the other cores.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Condvar, Mutex};

use anyhow::{Result, anyhow};

use super::entry::{BaselineEntry, EntryFlags};
use super::scan::{ContentVersion, Context, ScanStats, examine};
use super::walk::{Found, SortedWalk};

/// Paths in flight between the walker and the sink.
pub const WINDOW: u64 = 2048;
/// Jobs handed over at once: fewer wake-ups of the threads than one path at a time.
const BATCH: usize = 32;
/// Stored rows read per query.
const PAGE: usize = 512;

/// Stored baseline rows in path (byte) order: the store's table or an in-memory baseline.
pub trait StoredRows: Send {
    /// Up to `limit` rows with `lower` < or <= path < `upper` (unbounded when `None`), in
    /// path order, and the path to continue after (`None` once the range is exhausted).
    #[allow(clippy::type_complexity)]
    fn page(
        &mut self,
        lower: Bound<&[u8]>,
        upper: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<BaselineEntry>, Option<Vec<u8>>)>;
}

/// A half-open range of paths: `start` <= path < `end` (no end: to the last path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRange {
    pub start: Vec<u8>,
    pub end: Option<Vec<u8>>,
}

/// One walk and the stored rows it is compared with.
#[derive(Debug, Clone)]
pub struct Segment {
    pub roots: Vec<PathBuf>,
    /// In order, not overlapping: the stored rows the walk is authoritative for.
    pub ranges: Vec<PathRange>,
}

/// What the walker sends on.
enum Job {
    Examine {
        found: Found,
        previous: Option<BaselineEntry>,
    },
    /// A stored row nothing was found for.
    Removed(BaselineEntry),
    /// A stored row below a directory that could not be listed: its state is unknown, so it
    /// stays as it was.
    Kept(BaselineEntry),
    /// A directory no rule covers itself that could not be listed.
    Unlisted(PathBuf, i32),
}

/// What the sink receives, in walk order.
// Moved once from examiner to sink; boxing the large variant would cost an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Outcome {
    /// A covered path as it is now, with its stored row if there was one.
    Seen {
        current: BaselineEntry,
        previous: Option<BaselineEntry>,
        content: Option<ContentVersion>,
    },
    Removed(BaselineEntry),
    Kept(BaselineEntry),
    Unlisted(PathBuf, i32),
}

/// The stored rows of a segment's ranges, read a page at a time.
///
/// Keyset paging (`path > last read`) stays correct while the sink writes the same table:
/// every row the sink inserts sorts before the cursor's current row, and every row it
/// updates or deletes was already read.
struct Cursor<'s, S: StoredRows> {
    source: &'s mut S,
    ranges: VecDeque<PathRange>,
    buffer: VecDeque<BaselineEntry>,
    /// The last path read in the front range.
    after: Option<Vec<u8>>,
}

impl<'s, S: StoredRows> Cursor<'s, S> {
    fn new(source: &'s mut S, ranges: Vec<PathRange>) -> Self {
        Cursor {
            source,
            ranges: ranges.into(),
            buffer: VecDeque::new(),
            after: None,
        }
    }

    fn peek(&mut self) -> Result<Option<&BaselineEntry>> {
        while self.buffer.is_empty() {
            let Some(range) = self.ranges.front() else {
                return Ok(None);
            };
            let lower = match &self.after {
                Some(after) => Bound::Excluded(after.as_slice()),
                None => Bound::Included(range.start.as_slice()),
            };
            let (page, after) = self.source.page(lower, range.end.as_deref(), PAGE)?;
            if after.is_none() {
                self.ranges.pop_front();
            }
            self.after = after;
            self.buffer.extend(page);
        }
        Ok(self.buffer.front())
    }

    /// The next row if its path sorts before `path`.
    fn take_before(&mut self, path: &[u8]) -> Result<Option<BaselineEntry>> {
        if self.peek()?.is_some_and(|row| row.path.as_slice() < path) {
            return Ok(self.buffer.pop_front());
        }
        Ok(None)
    }

    /// The next row if its path is `path`.
    fn take_equal(&mut self, path: &[u8]) -> Result<Option<BaselineEntry>> {
        if self.peek()?.is_some_and(|row| row.path == path) {
            return Ok(self.buffer.pop_front());
        }
        Ok(None)
    }

    fn take_any(&mut self) -> Result<Option<BaselineEntry>> {
        self.peek()?;
        Ok(self.buffer.pop_front())
    }
}

/// Limits how far the walker runs ahead of the sink.
struct Window {
    /// (number of results the sink has handled, aborted)
    state: Mutex<(u64, bool)>,
    changed: Condvar,
}

impl Window {
    fn new() -> Window {
        Window {
            state: Mutex::new((0, false)),
            changed: Condvar::new(),
        }
    }

    /// Whether job `seq` may be sent right now.
    fn open_for(&self, seq: u64) -> bool {
        self.state
            .lock()
            .map(|state| !state.1 && seq < state.0 + WINDOW)
            .unwrap_or(false)
    }

    /// Waits until job `seq` may be sent; false once the scan is aborted.
    fn admit(&self, seq: u64) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        while !state.1 && seq >= state.0 + WINDOW {
            state = match self.changed.wait(state) {
                Ok(state) => state,
                Err(_) => return false,
            };
        }
        !state.1
    }

    fn handled(&self, count: u64) {
        if let Ok(mut state) = self.state.lock() {
            state.0 = count;
        }
        self.changed.notify_all();
    }

    fn abort(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.1 = true;
        }
        self.changed.notify_all();
    }
}

/// The walker: merges each segment's walk with its stored rows and sends the jobs in order.
fn produce<S: StoredRows>(
    ctx: &Context<'_>,
    segments: &[Segment],
    stored: &mut S,
    jobs: &SyncSender<Vec<(u64, Job)>>,
    window: &Window,
) -> Result<()> {
    let mut seq = 0u64;
    let mut batch: Vec<(u64, Job)> = Vec::with_capacity(BATCH);
    // Sends what is batched before waiting for the window: the sink may need exactly those.
    let mut send = |job: Option<Job>| -> Result<bool> {
        let Some(job) = job else {
            return Ok(batch.is_empty() || jobs.send(std::mem::take(&mut batch)).is_ok());
        };
        if !window.open_for(seq) {
            if !batch.is_empty() && jobs.send(std::mem::take(&mut batch)).is_err() {
                return Ok(false);
            }
            if !window.admit(seq) {
                return Ok(false);
            }
        }
        batch.push((seq, job));
        seq += 1;
        if batch.len() >= BATCH
            && jobs
                .send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))
                .is_err()
        {
            return Ok(false);
        }
        Ok(true)
    };
    // Directories that could not be listed, as `dir/`: stored rows below them are kept.
    let mut unlisted: Vec<Vec<u8>> = Vec::new();
    let removed_or_kept = |row: BaselineEntry, unlisted: &[Vec<u8>]| {
        if unlisted.iter().any(|dir| row.path.starts_with(dir)) {
            Job::Kept(row)
        } else {
            Job::Removed(row)
        }
    };
    for segment in segments {
        let mut cursor = Cursor::new(stored, segment.ranges.clone());
        unlisted.clear();
        for found in SortedWalk::new(ctx.rules, &segment.roots) {
            use std::os::unix::ffi::OsStrExt;
            let path = found.path.as_os_str().as_bytes();
            while let Some(row) = cursor.take_before(path)? {
                if !send(Some(removed_or_kept(row, &unlisted)))? {
                    return Ok(());
                }
            }
            let previous = cursor.take_equal(path)?;
            if found.list_errno.is_some() {
                let mut dir = path.to_vec();
                if dir.last() != Some(&b'/') {
                    dir.push(b'/');
                }
                unlisted.push(dir);
            }
            let job = if found.covered {
                Job::Examine { found, previous }
            } else {
                // Not covered any more (the rules changed): the stored row goes.
                if let Some(row) = previous
                    && !send(Some(Job::Removed(row)))?
                {
                    return Ok(());
                }
                match found.list_errno {
                    Some(errno) => Job::Unlisted(found.path, errno),
                    None => continue,
                }
            };
            if !send(Some(job))? {
                return Ok(());
            }
        }
        while let Some(row) = cursor.take_any()? {
            if !send(Some(removed_or_kept(row, &unlisted)))? {
                return Ok(());
            }
        }
    }
    send(None)?;
    Ok(())
}

/// An examiner: takes jobs until the walker is done (or the sink went away).
fn work(
    ctx: &Context<'_>,
    jobs: &Mutex<Receiver<Vec<(u64, Job)>>>,
    results: &SyncSender<Vec<(u64, Option<Outcome>)>>,
    aborted: &AtomicBool,
) {
    let mut buffer = Vec::new();
    loop {
        if aborted.load(Ordering::Relaxed) {
            return;
        }
        let next = match jobs.lock() {
            Ok(jobs) => jobs.recv(),
            Err(_) => return,
        };
        let Ok(batch) = next else {
            return;
        };
        let mut done = Vec::with_capacity(batch.len());
        for (seq, job) in batch {
            done.push((seq, outcome_of(job, ctx, &mut buffer)));
        }
        if results.send(done).is_err() {
            return;
        }
    }
}

/// Examines what needs it; `None` when a path vanished and nothing was stored for it.
fn outcome_of(job: Job, ctx: &Context<'_>, buffer: &mut Vec<u8>) -> Option<Outcome> {
    match job {
        Job::Examine { found, previous } => match examine(&found, previous.as_ref(), ctx, buffer) {
            Some((current, content)) => Some(Outcome::Seen {
                current,
                previous,
                content,
            }),
            // Vanished since the walk listed it.
            None => previous.map(Outcome::Removed),
        },
        Job::Removed(row) => Some(Outcome::Removed(row)),
        Job::Kept(row) => Some(Outcome::Kept(row)),
        Job::Unlisted(path, errno) => Some(Outcome::Unlisted(path, errno)),
    }
}

/// Runs the scan of `segments` against `stored`, handing every outcome to `sink` in walk
/// order on the calling thread. Stops at the first error of the sink or of the stored rows.
pub fn run<S: StoredRows>(
    ctx: &Context<'_>,
    segments: &[Segment],
    mut stored: S,
    sink: &mut dyn FnMut(Outcome) -> Result<()>,
) -> Result<ScanStats> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let window = Window::new();
    let aborted = AtomicBool::new(false);
    // Capacities in batches: never reached, the window bounds what is in flight.
    let (job_tx, job_rx) = mpsc::sync_channel::<Vec<(u64, Job)>>(WINDOW as usize);
    let (result_tx, result_rx) = mpsc::sync_channel::<Vec<(u64, Option<Outcome>)>>(WINDOW as usize);
    let job_rx = Mutex::new(job_rx);
    let mut stats = ScanStats::default();
    let progress = ctx.options.progress.then(|| {
        let bar =
            indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} scanning: {pos} entries, {elapsed_precise} ({per_sec})",
        ) {
            bar.set_style(style);
        }
        bar
    });

    let sink_result = std::thread::scope(|scope| -> Result<Result<()>> {
        let walker = scope.spawn(|| {
            let result = produce(ctx, segments, &mut stored, &job_tx, &window);
            drop(job_tx);
            result
        });
        for _ in 0..workers {
            let result_tx = result_tx.clone();
            let (job_rx, aborted) = (&job_rx, &aborted);
            scope.spawn(move || work(ctx, job_rx, &result_tx, aborted));
        }
        drop(result_tx);

        let mut pending: BTreeMap<u64, Option<Outcome>> = BTreeMap::new();
        let mut next = 0u64;
        let mut sink_result = Ok(());
        'receive: for done in result_rx.iter() {
            pending.extend(done);
            while let Some(outcome) = pending.remove(&next) {
                next += 1;
                let Some(outcome) = outcome else {
                    continue;
                };
                if let Outcome::Seen { current, .. } = &outcome {
                    stats.entries += 1;
                    let flags = current.flags;
                    stats.unstable += u64::from(flags.has(EntryFlags::UNSTABLE));
                    stats.unreadable += u64::from(flags.has(EntryFlags::UNREADABLE));
                    stats.too_large += u64::from(flags.has(EntryFlags::TOO_LARGE));
                    if let Some(bar) = &progress {
                        bar.inc(1);
                    }
                    if let Some(seen) = &ctx.options.entries_seen {
                        seen.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if let Err(e) = sink(outcome) {
                    sink_result = Err(e);
                    break 'receive;
                }
            }
            window.handled(next);
        }
        if sink_result.is_err() {
            aborted.store(true, Ordering::Relaxed);
            window.abort();
        }
        // Unblocks examiners waiting to send, then the walker waiting for them.
        drop(result_rx);
        let walked = walker
            .join()
            .map_err(|_| anyhow!("the scan's walker thread panicked"))?;
        Ok(sink_result.and(walked))
    });
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    sink_result??;
    ctx.counters.add_to(&mut stats);
    Ok(stats)
}
