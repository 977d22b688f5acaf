//! The baseline scan: walk the watched paths, examine each entry in parallel on all cores,
//! and reuse the previous hash of files whose identity and times did not change.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rayon::prelude::*;

use super::entry::{BaselineEntry, EntryFlags, FileKind, timestamp_ns};
use super::hash::{HashOutcome, HashRequest, ReadBudget, hash_file};
use super::walk::{Found, walk};
use super::xattr::xattr_digest;
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

#[derive(Default)]
struct Counters {
    files_hashed: AtomicU64,
    hashes_reused: AtomicU64,
    bytes_hashed: AtomicU64,
    hash_retries: AtomicU64,
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

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Builds a new baseline of everything the enabled rules cover. `previous` lets unchanged
/// files keep their hash without being read again.
pub fn scan(rules: &RuleSet, previous: &Baseline, options: &ScanOptions) -> ScanReport {
    let found = walk(rules, &rules.watch_roots());
    let progress = options.progress.then(|| {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(found.len() as u64),
            indicatif::ProgressDrawTarget::stderr(),
        );
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} scanning {pos}/{len} entries [{bar:40}] {elapsed_precise} (eta {eta})",
        ) {
            bar.set_style(style);
        }
        bar
    });
    let budget = ReadBudget::new(options.scan_bytes_per_sec);
    let counters = Counters::default();
    let examined: Vec<(BaselineEntry, Option<ContentVersion>)> = found
        .par_iter()
        .filter(|f| f.covered)
        .map_init(Vec::new, |buffer, found| {
            let result = examine(found, rules, previous, options, &budget, &counters, buffer);
            if let Some(bar) = &progress {
                bar.inc(1);
            }
            result
        })
        .flatten()
        .collect();
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }

    let mut report = ScanReport::default();
    let mut seen_contents = std::collections::HashSet::new();
    for (entry, content) in examined {
        let stats = &mut report.stats;
        stats.entries += 1;
        stats.unstable += u64::from(entry.flags.has(EntryFlags::UNSTABLE));
        stats.unreadable += u64::from(entry.flags.has(EntryFlags::UNREADABLE));
        stats.too_large += u64::from(entry.flags.has(EntryFlags::TOO_LARGE));
        if let Some(content) = content
            && seen_contents.insert(content.blake3)
        {
            report.contents.push(content);
        }
        report.baseline.insert(entry);
    }
    report.unlisted_dirs = found
        .iter()
        .filter(|f| !f.covered)
        .filter_map(|f| Some((f.path.clone(), f.list_errno?)))
        .collect();
    report.stats.files_hashed = counters.files_hashed.into_inner();
    report.stats.hashes_reused = counters.hashes_reused.into_inner();
    report.stats.bytes_hashed = counters.bytes_hashed.into_inner();
    report.stats.hash_retries = counters.hash_retries.into_inner();
    report
}

fn unreadable(path: &Path, kind: FileKind, errno: i32) -> BaselineEntry {
    BaselineEntry {
        path: path.as_os_str().as_bytes().to_vec(),
        kind,
        size: 0,
        mode: 0,
        uid: 0,
        gid: 0,
        mtime_ns: 0,
        ctime_ns: 0,
        inode: 0,
        dev: 0,
        blake3: None,
        xattr_digest: None,
        link_target: None,
        flags: EntryFlags(EntryFlags::UNREADABLE),
        errno: Some(errno),
        scanned_at_ns: now_ns(),
    }
}

/// Examines one path; `None` when it vanished since the walk listed it.
fn examine(
    found: &Found,
    rules: &RuleSet,
    previous: &Baseline,
    options: &ScanOptions,
    budget: &ReadBudget,
    counters: &Counters,
    buffer: &mut Vec<u8>,
) -> Option<(BaselineEntry, Option<ContentVersion>)> {
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
    let mut entry = BaselineEntry {
        path: path.as_os_str().as_bytes().to_vec(),
        kind,
        size: meta.size(),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime_ns: timestamp_ns(meta.mtime(), meta.mtime_nsec()),
        ctime_ns: timestamp_ns(meta.ctime(), meta.ctime_nsec()),
        inode: meta.ino(),
        dev: meta.dev(),
        blake3: None,
        xattr_digest: None,
        link_target: None,
        flags: EntryFlags::default(),
        errno: found.list_errno,
        scanned_at_ns: now_ns(),
    };
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

    if let Some(old) = previous.get(&entry.path)
        && old.blake3.is_some()
        && old.same_identity_and_times(&entry)
    {
        counters.hashes_reused.fetch_add(1, Ordering::Relaxed);
        entry.blake3 = old.blake3;
        return Some((entry, None));
    }
    if entry.size > options.max_file_size {
        entry.flags.0 |= EntryFlags::TOO_LARGE;
        return Some((entry, None));
    }
    let keep_content = rules
        .match_path(path)
        .is_some_and(|rule| rule.upload_content)
        .then_some(options.content_max_size);
    let request = HashRequest {
        budget,
        keep_content_up_to: keep_content,
        mid_read: None,
    };
    let mut content_version = None;
    match hash_file(path, &request, buffer) {
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
            return examine_again(found, rules, previous, options, budget, counters, buffer);
        }
    }
    Some((entry, content_version))
}

/// One more look at a path that changed type under us; a second change in a row is recorded
/// as unstable rather than chased forever.
fn examine_again(
    found: &Found,
    rules: &RuleSet,
    previous: &Baseline,
    options: &ScanOptions,
    budget: &ReadBudget,
    counters: &Counters,
    buffer: &mut Vec<u8>,
) -> Option<(BaselineEntry, Option<ContentVersion>)> {
    let meta = std::fs::symlink_metadata(&found.path).ok()?;
    if meta.file_type().is_file() {
        let mut entry = unreadable(&found.path, FileKind::File, 0);
        entry.flags = EntryFlags(EntryFlags::UNSTABLE);
        entry.errno = None;
        entry.size = meta.size();
        entry.mtime_ns = timestamp_ns(meta.mtime(), meta.mtime_nsec());
        entry.ctime_ns = timestamp_ns(meta.ctime(), meta.ctime_nsec());
        entry.inode = meta.ino();
        entry.dev = meta.dev();
        entry.mode = meta.mode() & 0o7777;
        entry.uid = meta.uid();
        entry.gid = meta.gid();
        return Some((entry, None));
    }
    examine(found, rules, previous, options, budget, counters, buffer)
}
