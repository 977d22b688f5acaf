//! The baseline scan: walk the watched paths, examine each entry in parallel on all cores,
//! and reuse the previous hash of files whose identity and times did not change.
//!
//! [`scan`] compares with a [`Baseline`] in memory and returns the new one (small trees,
//! tests); [`super::rescan`] streams against the store with bounded memory. Both run the
//! same engine and examine each path with [`examine`].

use std::collections::BTreeMap;
use std::ops::Bound;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;

use super::engine::{self, Outcome, PathRange, Segment, StoredRows};
use super::entry::{BaselineEntry, EntryFlags, FileKind};
use super::hash::{
    HashOutcome, HashRequest, Opened, OpenedFile, ReadBudget, Snapshot, hash_opened, open_regular,
};
use super::walk::Found;
use super::xattr::{xattr_digest, xattr_digest_fd};
use crate::config::RuleSet;

/// Every recorded path, keyed (and ordered) by its raw bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Baseline {
    entries: BTreeMap<Vec<u8>, BaselineEntry>,
}

impl Baseline {
    pub fn new() -> Baseline {
        Baseline::default()
    }

    pub fn insert(&mut self, entry: BaselineEntry) {
        self.entries.insert(entry.path.clone(), entry);
    }

    pub fn get(&self, path: &[u8]) -> Option<&BaselineEntry> {
        self.entries.get(path)
    }

    pub fn remove(&mut self, path: &[u8]) -> Option<BaselineEntry> {
        self.entries.remove(path)
    }

    pub fn entries(&self) -> impl Iterator<Item = &BaselineEntry> {
        self.entries.values()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// An in-memory baseline as the engine's sorted stored rows.
impl StoredRows for &Baseline {
    fn page(
        &mut self,
        lower: Bound<&[u8]>,
        upper: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<BaselineEntry>, Option<Vec<u8>>)> {
        let upper = upper.map_or(Bound::Unbounded, Bound::Excluded);
        let rows: Vec<BaselineEntry> = self
            .entries
            .range::<[u8], _>((lower, upper))
            .take(limit)
            .map(|(_, entry)| entry.clone())
            .collect();
        let after = if rows.len() == limit {
            rows.last().map(|row| row.path.clone())
        } else {
            None
        };
        Ok((rows, after))
    }
}

impl FromIterator<BaselineEntry> for Baseline {
    fn from_iter<I: IntoIterator<Item = BaselineEntry>>(iter: I) -> Baseline {
        let mut baseline = Baseline::new();
        for entry in iter {
            baseline.insert(entry);
        }
        baseline
    }
}

/// Scan settings (from `[hashing]` and `[store]`).
#[derive(Debug, Clone)]
pub struct ScanOptions {
    pub max_file_size: u64,
    /// 0: unlimited.
    pub scan_bytes_per_sec: u64,
    /// Content of files under `upload_content` rules up to this size is kept.
    pub content_max_size: u64,
    /// Draw a progress bar on stderr (the caller checks that stderr is a terminal).
    pub progress: bool,
    /// Counts the entries compared as the scan goes, for a caller that reports progress
    /// elsewhere (the daemon's status for its service manager).
    pub entries_seen: Option<Arc<AtomicU64>>,
    /// Hash every file, even those whose stored hash could be reused (`fim scan --rehash`,
    /// and the realtime path after a write, where a same-size rewrite within one timestamp
    /// tick would otherwise go unnoticed).
    pub rehash: bool,
}

/// What a scan did; `files_hashed` vs `hashes_reused` shows the rehash skipping at work.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanStats {
    pub entries: u64,
    pub files_hashed: u64,
    pub hashes_reused: u64,
    pub bytes_hashed: u64,
    pub hash_retries: u64,
    pub unstable: u64,
    pub unreadable: u64,
    pub too_large: u64,
}

impl ScanStats {
    /// The counts `fim scan --json` and `fim scan --now --json` print under `stats`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "entries": self.entries,
            "files_hashed": self.files_hashed,
            "hashes_reused": self.hashes_reused,
            "bytes_hashed": self.bytes_hashed,
            "unreadable": self.unreadable,
            "unstable": self.unstable,
            "too_large": self.too_large,
        })
    }
}

/// Counted by the examiners.
#[derive(Default)]
pub(crate) struct Counters {
    files_hashed: AtomicU64,
    hashes_reused: AtomicU64,
    bytes_hashed: AtomicU64,
    hash_retries: AtomicU64,
}

impl Counters {
    pub(crate) fn add_to(&self, stats: &mut ScanStats) {
        stats.files_hashed += self.files_hashed.load(Ordering::Relaxed);
        stats.hashes_reused += self.hashes_reused.load(Ordering::Relaxed);
        stats.bytes_hashed += self.bytes_hashed.load(Ordering::Relaxed);
        stats.hash_retries += self.hash_retries.load(Ordering::Relaxed);
    }
}

/// Everything examining a path needs, shared by the examiners of one scan.
pub(crate) struct Context<'a> {
    pub rules: &'a RuleSet,
    pub options: &'a ScanOptions,
    pub budget: ReadBudget,
    pub counters: Counters,
}

impl<'a> Context<'a> {
    pub(crate) fn new(rules: &'a RuleSet, options: &'a ScanOptions) -> Context<'a> {
        Context {
            rules,
            options,
            budget: ReadBudget::new(options.scan_bytes_per_sec),
            counters: Counters::default(),
        }
    }
}

/// A file's content kept for an `upload_content` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentVersion {
    pub blake3: [u8; 32],
    pub content: Vec<u8>,
}

/// The result of [`scan`].
#[derive(Debug, Clone, Default)]
pub struct ScanReport {
    pub baseline: Baseline,
    pub stats: ScanStats,
    /// Directories that could not be listed although rules may cover what is inside.
    pub unlisted_dirs: Vec<(PathBuf, i32)>,
    /// Contents of files under `upload_content` rules (deduplicated by hash).
    pub contents: Vec<ContentVersion>,
}

pub(crate) fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// The walk of every watch root of the enabled rules, authoritative for all stored rows.
pub(crate) fn everything(rules: &RuleSet) -> Segment {
    Segment {
        roots: rules.watch_roots().into_iter().map(|r| r.path).collect(),
        ranges: vec![PathRange {
            start: Vec::new(),
            end: None,
        }],
    }
}

/// Builds a new baseline of everything the enabled rules cover, in memory. `previous` lets
/// unchanged files keep their hash without being read again. A directory that cannot be
/// listed keeps the entries `previous` had below it (their state is unknown, not gone).
pub fn scan(rules: &RuleSet, previous: &Baseline, options: &ScanOptions) -> ScanReport {
    let ctx = Context::new(rules, options);
    let mut report = ScanReport::default();
    let mut seen_contents = std::collections::HashSet::new();
    let mut sink = |outcome: Outcome| -> Result<()> {
        match outcome {
            Outcome::Seen {
                current, content, ..
            } => {
                if let Some(content) = content
                    && seen_contents.insert(content.blake3)
                {
                    report.contents.push(content);
                }
                report.baseline.insert(current);
            }
            Outcome::Kept(entry) => report.baseline.insert(entry),
            Outcome::Removed(_) => {}
            Outcome::Unlisted(path, errno) => report.unlisted_dirs.push((path, errno)),
        }
        Ok(())
    };
    // Neither side can fail in memory.
    let stats = engine::run(&ctx, &[everything(rules)], previous, &mut sink).unwrap_or_else(|e| {
        log::error!("scan: {e:#}");
        ScanStats::default()
    });
    report.stats = stats;
    report
}

fn unreadable(path: &Path, kind: FileKind, errno: i32) -> BaselineEntry {
    BaselineEntry::without_state(
        path.as_os_str().as_bytes().to_vec(),
        kind,
        EntryFlags(EntryFlags::UNREADABLE),
        Some(errno),
        now_ns(),
    )
}

fn entry_of(path: &Path, kind: FileKind, snapshot: &Snapshot) -> BaselineEntry {
    BaselineEntry {
        path: path.as_os_str().as_bytes().to_vec(),
        kind,
        size: snapshot.size,
        mode: snapshot.mode & 0o7777,
        uid: snapshot.uid,
        gid: snapshot.gid,
        mtime_ns: snapshot.mtime_ns,
        ctime_ns: snapshot.ctime_ns,
        inode: snapshot.inode,
        dev: snapshot.dev,
        blake3: None,
        xattr_digest: None,
        link_target: None,
        flags: EntryFlags::default(),
        errno: None,
        scanned_at_ns: now_ns(),
        nlink: snapshot.nlink,
    }
}

/// Looks at one path now: what [`scan`] records for it, or `None` when nothing is there.
/// `previous` (its stored entry) lets an unchanged file keep its hash unless
/// `options.rehash`. This is what the realtime path calls after a kernel event.
pub fn observe(
    path: &Path,
    rules: &RuleSet,
    options: &ScanOptions,
    previous: Option<&BaselineEntry>,
) -> Option<(BaselineEntry, Option<ContentVersion>)> {
    let ctx = Context::new(rules, options);
    let found = Found {
        path: path.to_path_buf(),
        kind_hint: None,
        covered: true,
        upload_content: rules.match_path(path).is_some_and(|r| r.upload_content),
        list_errno: None,
    };
    examine(&found, previous, &ctx, &mut Vec::new())
}

/// Whether the stored hash of `previous` stands for the file `entry` describes.
fn reusable<'p>(
    previous: Option<&'p BaselineEntry>,
    entry: &BaselineEntry,
    options: &ScanOptions,
) -> Option<&'p BaselineEntry> {
    previous
        .filter(|old| !options.rehash && old.blake3.is_some() && old.same_identity_and_times(entry))
}

/// Examines one path; `None` when it vanished since the walk listed it.
pub(crate) fn examine(
    found: &Found,
    previous: Option<&BaselineEntry>,
    ctx: &Context<'_>,
    buffer: &mut Vec<u8>,
) -> Option<(BaselineEntry, Option<ContentVersion>)> {
    // A regular file that will be read anyway is opened first: its fstat and flistxattr
    // replace lstat and llistxattr, two path lookups fewer per file.
    let may_reuse = !ctx.options.rehash
        && previous.is_some_and(|old| old.kind == FileKind::File && old.blake3.is_some());
    if found.kind_hint == Some(FileKind::File)
        && found.list_errno.is_none()
        && !may_reuse
        && let Opened::File(opened) = open_regular(&found.path)
    {
        return examine_opened(found, opened, previous, ctx, buffer);
    }
    let path = found.path.as_path();
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            // The type the directory listing reported; a root has none, and "file" is the
            // likeliest for a path that exists but cannot be examined.
            let kind = found.kind_hint.unwrap_or(FileKind::File);
            return Some((
                unreadable(path, kind, e.raw_os_error().unwrap_or(libc::EIO)),
                None,
            ));
        }
    };
    let kind = FileKind::from_mode(meta.mode())?;
    let mut entry = entry_of(path, kind, &Snapshot::of(&meta));
    entry.errno = found.list_errno;
    if found.list_errno.is_some() {
        entry.flags.0 |= EntryFlags::UNREADABLE;
    }
    match xattr_digest(path) {
        Ok(digest) => entry.xattr_digest = digest,
        Err(e) => {
            entry.flags.0 |= EntryFlags::UNREADABLE;
            entry.errno = e.raw_os_error();
        }
    }
    if kind == FileKind::Symlink {
        match std::fs::read_link(path) {
            Ok(target) => entry.link_target = Some(target.as_os_str().as_bytes().to_vec()),
            Err(e) => {
                entry.flags.0 |= EntryFlags::UNREADABLE;
                entry.errno = e.raw_os_error();
            }
        }
    }
    if kind != FileKind::File {
        return Some((entry, None));
    }
    if let Some(old) = reusable(previous, &entry, ctx.options) {
        ctx.counters.hashes_reused.fetch_add(1, Ordering::Relaxed);
        entry.blake3 = old.blake3;
        return Some((entry, None));
    }
    if entry.size > ctx.options.max_file_size {
        entry.flags.0 |= EntryFlags::TOO_LARGE;
        return Some((entry, None));
    }
    hash_into(found, entry, None, previous, ctx, buffer)
}

/// A regular file already open: metadata and xattrs from the descriptor, then its hash.
fn examine_opened(
    found: &Found,
    opened: OpenedFile,
    previous: Option<&BaselineEntry>,
    ctx: &Context<'_>,
    buffer: &mut Vec<u8>,
) -> Option<(BaselineEntry, Option<ContentVersion>)> {
    let mut entry = entry_of(&found.path, FileKind::File, &opened.snapshot);
    match xattr_digest_fd(opened.file.as_fd()) {
        Ok(digest) => entry.xattr_digest = digest,
        Err(e) => {
            entry.flags.0 |= EntryFlags::UNREADABLE;
            entry.errno = e.raw_os_error();
        }
    }
    if let Some(old) = reusable(previous, &entry, ctx.options) {
        ctx.counters.hashes_reused.fetch_add(1, Ordering::Relaxed);
        entry.blake3 = old.blake3;
        return Some((entry, None));
    }
    if entry.size > ctx.options.max_file_size {
        entry.flags.0 |= EntryFlags::TOO_LARGE;
        return Some((entry, None));
    }
    hash_into(found, entry, Some(opened), previous, ctx, buffer)
}

/// Hashes the regular file `entry` describes and records the result in it.
fn hash_into(
    found: &Found,
    mut entry: BaselineEntry,
    opened: Option<OpenedFile>,
    previous: Option<&BaselineEntry>,
    ctx: &Context<'_>,
    buffer: &mut Vec<u8>,
) -> Option<(BaselineEntry, Option<ContentVersion>)> {
    let path = found.path.as_path();
    let keep_content = found.upload_content.then_some(ctx.options.content_max_size);
    let request = HashRequest {
        budget: &ctx.budget,
        keep_content_up_to: keep_content,
        mid_read: None,
    };
    let counters = &ctx.counters;
    let mut content_version = None;
    match hash_opened(path, opened, &request, buffer) {
        HashOutcome::Hashed {
            digest,
            snapshot,
            bytes_read,
            attempts,
            content,
        } => {
            counters.files_hashed.fetch_add(1, Ordering::Relaxed);
            counters
                .bytes_hashed
                .fetch_add(bytes_read, Ordering::Relaxed);
            counters
                .hash_retries
                .fetch_add(u64::from(attempts - 1), Ordering::Relaxed);
            // The metadata the hash belongs to, not the (possibly older) lstat.
            entry.size = snapshot.size;
            entry.mode = snapshot.mode & 0o7777;
            entry.uid = snapshot.uid;
            entry.gid = snapshot.gid;
            entry.mtime_ns = snapshot.mtime_ns;
            entry.ctime_ns = snapshot.ctime_ns;
            entry.inode = snapshot.inode;
            entry.dev = snapshot.dev;
            entry.blake3 = Some(digest);
            content_version = content.map(|content| ContentVersion {
                blake3: digest,
                content,
            });
        }
        HashOutcome::Unstable { snapshot, attempts } => {
            counters
                .hash_retries
                .fetch_add(u64::from(attempts - 1), Ordering::Relaxed);
            entry.size = snapshot.size;
            entry.mtime_ns = snapshot.mtime_ns;
            entry.ctime_ns = snapshot.ctime_ns;
            entry.flags.0 |= EntryFlags::UNSTABLE;
        }
        HashOutcome::Unreadable { errno } => {
            entry.flags.0 |= EntryFlags::UNREADABLE;
            entry.errno = Some(errno);
        }
        // Replaced between lstat and open: examine what is there now.
        HashOutcome::NotRegular => {
            return examine_again(found, previous, ctx, buffer);
        }
    }
    Some((entry, content_version))
}

/// One more look at a path that changed type under us; a second change in a row is recorded
/// as unstable rather than chased forever.
fn examine_again(
    found: &Found,
    previous: Option<&BaselineEntry>,
    ctx: &Context<'_>,
    buffer: &mut Vec<u8>,
) -> Option<(BaselineEntry, Option<ContentVersion>)> {
    let meta = std::fs::symlink_metadata(&found.path).ok()?;
    if meta.file_type().is_file() {
        let mut entry = entry_of(&found.path, FileKind::File, &Snapshot::of(&meta));
        entry.flags = EntryFlags(EntryFlags::UNSTABLE);
        return Some((entry, None));
    }
    // Not a regular file any more: never opened for hashing again, so this ends.
    let found = Found {
        path: found.path.clone(),
        kind_hint: None,
        covered: found.covered,
        upload_content: found.upload_content,
        list_errno: found.list_errno,
    };
    examine(&found, previous, ctx, buffer)
}
