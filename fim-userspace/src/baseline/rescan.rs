//! Scanning against the store with bounded memory: [`rescan`] for a whole baseline or a few
//! subtrees (after lost kernel events), [`observe_and_update`] for one path (after a kernel
//! event). Drift is reported as it is found.

use std::ops::Bound;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context as _, Result, bail};

use super::drift::{Modified, changed_fields};
use super::engine::{self, Outcome, PathRange, Segment, StoredRows};
use super::entry::{BaselineEntry, EntryFlags};
use super::scan::{ContentVersion, Context, ScanOptions, ScanStats, everything, now_ns, observe};
use crate::config::RuleSet;
use crate::store::{BaselineReader, ChangeRecord, ContentRecord, Store, local_hostname};

/// What a rescan covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every watch root; stored rows no rule covers any more are removed.
    Everything,
    /// These paths and everything below them (absolute). Stored rows elsewhere are left alone.
    Paths(Vec<PathBuf>),
}

/// One difference between the stored baseline and what is on disk.
// Handed over once; boxing `Modified` would cost an allocation per change.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriftItem {
    Added(BaselineEntry),
    Removed(BaselineEntry),
    Modified(Modified),
}

impl DriftItem {
    /// The drift from a stored row to what was observed (`None` on either side: not there).
    /// `None` when no reported field changed.
    pub fn between(
        previous: Option<BaselineEntry>,
        current: Option<BaselineEntry>,
    ) -> Option<DriftItem> {
        match (previous, current) {
            (None, None) => None,
            (None, Some(current)) => Some(DriftItem::Added(current)),
            // A placeholder for a path reported created and gone: what is there now is new.
            (Some(previous), Some(current)) if previous.flags.has(EntryFlags::VANISHED) => {
                Some(DriftItem::Added(current))
            }
            (Some(previous), None) => Some(DriftItem::Removed(previous)),
            (Some(previous), Some(current)) => {
                let changed = changed_fields(&previous, &current);
                (!changed.is_empty()).then_some(DriftItem::Modified(Modified {
                    changed,
                    previous,
                    current,
                }))
            }
        }
    }

    pub fn path(&self) -> &[u8] {
        match self {
            DriftItem::Added(e) | DriftItem::Removed(e) => &e.path,
            DriftItem::Modified(m) => &m.current.path,
        }
    }
}

/// What [`rescan`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RescanReport {
    pub stats: ScanStats,
    /// The store had no baseline at all: this scan created it and reported no drift.
    pub first_scan: bool,
    pub added: u64,
    pub removed: u64,
    pub modified: u64,
    /// Baseline rows written (drift, and silent updates such as a directory's times).
    pub rows_written: u64,
    /// Directories that could not be listed although rules may cover what is inside.
    pub unlisted_dirs: Vec<(PathBuf, i32)>,
    /// The regular files seen with more than one link (at most [`MAX_LINKED`]): another name
    /// of them, maybe outside every rule, changes them too, so the sensor watches their
    /// inodes.
    pub linked: Vec<LinkedFile>,
    /// More were seen than `linked` holds.
    pub linked_overflow: bool,
}

/// A watched regular file with more than one link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkedFile {
    pub path: Vec<u8>,
    /// `st_dev` and inode.
    pub dev: u64,
    pub inode: u64,
}

/// Linked files a rescan reports at most (the sensor's map holds 16,384).
pub const MAX_LINKED: usize = 65_536;

impl RescanReport {
    fn note_linked(&mut self, entry: &BaselineEntry) {
        if entry.kind != super::entry::FileKind::File || entry.nlink <= 1 {
            return;
        }
        if self.linked.len() >= MAX_LINKED {
            self.linked_overflow = true;
            return;
        }
        self.linked.push(LinkedFile {
            path: entry.path.clone(),
            dev: entry.dev,
            inode: entry.inode,
        });
    }
}

impl RescanReport {
    /// `N added, N removed, N modified`.
    pub fn summary(&self) -> String {
        format!(
            "{} added, {} removed, {} modified",
            self.added, self.removed, self.modified
        )
    }
}

impl StoredRows for BaselineReader {
    fn page(
        &mut self,
        lower: Bound<&[u8]>,
        upper: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<BaselineEntry>, Option<Vec<u8>>)> {
        BaselineReader::page(self, lower, upper, limit)
    }
}

/// Equal apart from when it was examined: nothing to write.
fn same_record(a: &BaselineEntry, b: &BaselineEntry) -> bool {
    a.path == b.path
        && a.kind == b.kind
        && a.size == b.size
        && a.mode == b.mode
        && a.uid == b.uid
        && a.gid == b.gid
        && a.mtime_ns == b.mtime_ns
        && a.ctime_ns == b.ctime_ns
        && a.inode == b.inode
        && a.dev == b.dev
        && a.blake3 == b.blake3
        && a.xattr_digest == b.xattr_digest
        && a.link_target == b.link_target
        && a.flags == b.flags
        && a.errno == b.errno
}

/// Normalised subtree roots: absolute, no trailing `/`, none inside another, sorted.
fn subtrees(paths: &[PathBuf]) -> Result<Vec<Vec<u8>>> {
    let mut roots: Vec<Vec<u8>> = Vec::new();
    for path in paths {
        let mut bytes = path.as_os_str().as_bytes().to_vec();
        if bytes.first() != Some(&b'/') {
            bail!("rescan path {} is not absolute", path.display());
        }
        while bytes.len() > 1 && bytes.last() == Some(&b'/') {
            bytes.pop();
        }
        roots.push(bytes);
    }
    roots.sort();
    roots.dedup();
    let mut kept: Vec<Vec<u8>> = Vec::new();
    for root in roots {
        let inside = kept.iter().any(|outer| {
            outer.as_slice() == b"/"
                || (root.starts_with(outer) && root.get(outer.len()) == Some(&b'/'))
        });
        if !inside {
            kept.push(root);
        }
    }
    Ok(kept)
}

/// The walk of one subtree and the stored rows it is authoritative for: the path itself and
/// everything below `path/` (not `path-x` or `path.d`, which sort in between).
fn subtree_segment(root: Vec<u8>) -> Segment {
    let ranges = if root.as_slice() == b"/" {
        vec![PathRange {
            start: root.clone(),
            end: None,
        }]
    } else {
        let mut exact_end = root.clone();
        exact_end.push(0);
        let mut below = root.clone();
        below.push(b'/');
        let mut below_end = root.clone();
        below_end.push(b'/' + 1);
        vec![
            PathRange {
                start: root.clone(),
                end: Some(exact_end),
            },
            PathRange {
                start: below,
                end: Some(below_end),
            },
        ]
    };
    Segment {
        roots: vec![PathBuf::from(std::ffi::OsString::from(
            std::ffi::OsStr::from_bytes(&root),
        ))],
        ranges,
    }
}

/// Scans `scope` against the stored baseline with bounded memory, writing what changed in
/// batches (each changed baseline row and its change record in the same transaction) and
/// calling `on_change` for each drift item, in path order, as it is found.
///
/// Hashes are reused for files whose (dev, inode, size, mtime, ctime) match their stored
/// row (unless `options.rehash`). Stored rows within the scope that the walk does not find
/// are removed; rows below a directory that cannot be listed are kept as they are (their
/// state is unknown). When the store holds no baseline at all, this scan creates it and
/// reports no drift (`first_scan`).
pub fn rescan(
    store: &mut Store,
    rules: &RuleSet,
    options: &ScanOptions,
    scope: &Scope,
    on_change: impl FnMut(DriftItem),
) -> Result<RescanReport> {
    rescan_with(
        store,
        rules,
        options,
        scope,
        &RescanControl::default(),
        on_change,
    )
}

/// How [`rescan_with`] runs, beyond what [`rescan`] does.
#[derive(Debug, Default)]
pub struct RescanControl<'a> {
    /// Compare only: write nothing (no baseline rows, no change records) and hand each drift
    /// item to the caller, who reconciles it. For a scan that runs beside another writer of
    /// the baseline (the daemon's scheduled scan beside its change worker); the counts of the
    /// report are then what the scan saw, not what was written.
    pub compare_only: bool,
    /// Checked between entries: once it is set, the scan stops with an error.
    pub cancel: Option<&'a AtomicBool>,
}

/// [`rescan`], with the choices of `control`.
pub fn rescan_with(
    store: &mut Store,
    rules: &RuleSet,
    options: &ScanOptions,
    scope: &Scope,
    control: &RescanControl<'_>,
    mut on_change: impl FnMut(DriftItem),
) -> Result<RescanReport> {
    let segments = match scope {
        Scope::Everything => vec![everything(rules)],
        Scope::Paths(paths) => subtrees(paths)?.into_iter().map(subtree_segment).collect(),
    };
    let first_scan = store.baseline_is_empty()?;
    let reader = store.baseline_reader()?;
    let host = local_hostname();
    let ctx = Context::new(rules, options);
    let mut report = RescanReport {
        first_scan,
        ..RescanReport::default()
    };
    let write = !control.compare_only;
    let mut batch = store.baseline_batch();
    let record = |item: &DriftItem, batch: &mut crate::store::BaselineBatch<'_>| {
        if first_scan || !write {
            return Ok(());
        }
        batch.change(&ChangeRecord::from_drift_item(item, rules, &host, now_ns()))
    };
    let mut sink = |outcome: Outcome| -> Result<()> {
        if control.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            bail!("the scan was cancelled");
        }
        match outcome {
            Outcome::Seen {
                current,
                previous,
                content,
            } => {
                if let Some(ContentVersion { blake3, content }) = content
                    && write
                {
                    batch.content(&ContentRecord {
                        blake3,
                        content,
                        stored_at_ns: now_ns(),
                    })?;
                }
                report.note_linked(&current);
                if previous.as_ref().is_some_and(|p| same_record(p, &current)) {
                    return Ok(());
                }
                if write {
                    batch.upsert(&current)?;
                    report.rows_written += 1;
                }
                if let Some(item) = DriftItem::between(previous, Some(current)) {
                    match &item {
                        DriftItem::Added(_) => report.added += u64::from(!first_scan),
                        DriftItem::Modified(_) => report.modified += 1,
                        DriftItem::Removed(_) => {}
                    }
                    record(&item, &mut batch)?;
                    if !first_scan {
                        on_change(item);
                    }
                }
            }
            Outcome::Removed(previous) => {
                if write {
                    batch.remove(&previous.path)?;
                    report.rows_written += 1;
                }
                report.removed += 1;
                let item = DriftItem::Removed(previous);
                record(&item, &mut batch)?;
                on_change(item);
            }
            Outcome::Kept(_) => {}
            Outcome::Unlisted(path, errno) => report.unlisted_dirs.push((path, errno)),
        }
        batch.maybe_commit()
    };
    let stats = engine::run(&ctx, &segments, reader, &mut sink).context("scanning")?;
    batch.commit()?;
    report.stats = stats;
    Ok(report)
}

/// Looks at one path now and brings its baseline row up to date: rehashes it (or reuses the
/// stored hash when `options.rehash` is off and identity and times are unchanged), compares
/// with the stored row, and writes the new row (or deletes it when the path is gone). Returns
/// the drift with the previous values, `None` when nothing reported changed. A path no
/// enabled rule covers is left alone. The caller records the change with its attribution.
pub fn observe_and_update(
    store: &mut Store,
    rules: &RuleSet,
    options: &ScanOptions,
    path: &Path,
) -> Result<Option<DriftItem>> {
    if rules.match_path(path).is_none() {
        return Ok(None);
    }
    let bytes = path.as_os_str().as_bytes();
    let previous = store.baseline_entry(bytes)?;
    let observed = observe(path, rules, options, previous.as_ref());
    let mut batch = store.baseline_batch();
    let current = match observed {
        Some((current, content)) => {
            if let Some(ContentVersion { blake3, content }) = content {
                batch.content(&ContentRecord {
                    blake3,
                    content,
                    stored_at_ns: now_ns(),
                })?;
            }
            if !previous.as_ref().is_some_and(|p| same_record(p, &current)) {
                batch.upsert(&current)?;
            }
            Some(current)
        }
        None => {
            if previous.is_some() {
                batch.remove(bytes)?;
            }
            None
        }
    };
    batch.commit()?;
    Ok(DriftItem::between(previous, current))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtrees_are_normalised_and_nested_ones_dropped() {
        let paths = ["/etc/ssh/", "/etc", "/usr/lib", "/usr/lib-x", "/etc/ssh"]
            .map(PathBuf::from)
            .to_vec();
        assert_eq!(
            subtrees(&paths).unwrap(),
            [
                b"/etc".to_vec(),
                b"/usr/lib".to_vec(),
                b"/usr/lib-x".to_vec()
            ]
        );
        assert!(subtrees(&[PathBuf::from("etc")]).is_err());
        assert_eq!(
            subtrees(&[PathBuf::from("/"), PathBuf::from("/etc")]).unwrap(),
            [b"/".to_vec()]
        );
    }

    #[test]
    fn a_subtree_segment_excludes_siblings_that_sort_inside_it() {
        let segment = subtree_segment(b"/a/b".to_vec());
        let inside = |path: &[u8]| {
            segment.ranges.iter().any(|r| {
                path >= r.start.as_slice() && r.end.as_deref().is_none_or(|end| path < end)
            })
        };
        assert!(inside(b"/a/b"));
        assert!(inside(b"/a/b/c"));
        assert!(inside(b"/a/b/\xff"));
        assert!(!inside(b"/a/b-x"));
        assert!(!inside(b"/a/b.d"));
        assert!(!inside(b"/a/b0"));
        assert!(!inside(b"/a/a"));
    }
}
