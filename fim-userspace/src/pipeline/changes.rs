//! The change worker: examines the paths jobs name, compares them with the baseline, and
//! produces change records and the store operations that keep the baseline current.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::assemble::{Job, JobKind};
use crate::baseline::{
    BaselineEntry, ChangedField, ContentVersion, DriftItem, EntryFlags, FileKind, changed_fields,
    hex,
};
use crate::sensor::EventKind;
use crate::store::{ChangeRecord, ContentRecord, StoreOp, activity, previous_json};

/// Stored baseline rows, one path at a time (the daemon never loads the whole baseline).
pub trait BaselineLookup: Send {
    fn get(&mut self, path: &[u8]) -> Result<Option<BaselineEntry>>;
}

/// What examining a path found.
// Made once per job and matched at once; boxing the entry would cost an allocation each.
#[allow(clippy::large_enum_variant)]
pub enum Examined {
    Present {
        entry: BaselineEntry,
        content: Option<ContentVersion>,
    },
    Vanished,
}

/// Looks at one path now: metadata, xattrs, link target, and BLAKE3 for a regular file
/// (reusing `previous`'s hash when identity and times are unchanged, unless `rehash`: after a
/// write, a same-size rewrite within one timestamp tick must not go unnoticed).
pub trait Examine: Send {
    fn examine(
        &mut self,
        path: &[u8],
        previous: Option<&BaselineEntry>,
        keep_content_up_to: Option<u64>,
        rehash: bool,
    ) -> Examined;

    /// Whether anything is at `path` now (a final symlink not followed).
    fn exists(&mut self, path: &[u8]) -> bool {
        use std::os::unix::ffi::OsStrExt;
        std::fs::symlink_metadata(std::ffi::OsStr::from_bytes(path)).is_ok()
    }
}

/// Rows this worker wrote that the store may not have committed yet: reads go here first, so
/// a second change to a path right after the first compares with the right baseline.
const OVERLAY_TTL: Duration = Duration::from_secs(30);
const OVERLAY_MAX: usize = 65_536;

pub struct ChangeMaker {
    lookup: Box<dyn BaselineLookup>,
    examine: Box<dyn Examine>,
    overlay: HashMap<Vec<u8>, (Option<BaselineEntry>, Instant)>,
    host: String,
    content_max_size: u64,
    /// Baseline lookups that failed (the change is still reported, without previous values).
    pub lookup_errors: u64,
}

/// The output of one job.
#[derive(Default)]
pub struct Made {
    pub changes: Vec<ChangeRecord>,
    /// Store writes: the changes themselves first, then baseline and content rows.
    pub ops: Vec<StoreOp>,
    /// Bytes hashed for this job (for metrics).
    pub hashed_bytes: u64,
    /// Baseline rows added minus removed (for the baseline-size gauge).
    pub baseline_delta: i64,
    /// A directory moved into a watched tree: what is below it must be scanned.
    pub scan_below: Option<Vec<u8>>,
    /// The ops move baseline rows below a directory: later lookups must see them committed.
    pub moved_below: bool,
    /// A placeholder row was written for this path (see [`EntryFlags::VANISHED`]): if its
    /// delete or rename record never comes (lost), the caller must look at it again.
    pub placeholder: Option<Vec<u8>>,
}

impl Made {
    /// A content version to keep (an `upload_content` rule), stored as of `stored_at_ns`.
    fn keep_content(&mut self, c: ContentVersion, stored_at_ns: i64) {
        self.hashed_bytes += c.content.len() as u64;
        self.ops.push(StoreOp::Content(ContentRecord {
            blake3: c.blake3,
            content: c.content,
            stored_at_ns,
        }));
    }
}

/// The directory of `path` when its last component is `#` and decimal digits, the name the
/// kernel gives an inode that has none (`d_tmpfile`); only asked once the path is gone, so a
/// real file of that name that is still there is reported as itself.
fn unnamed_inode(path: &[u8]) -> Option<&[u8]> {
    let slash = path.iter().rposition(|&b| b == b'/')?;
    let leaf = &path[slash + 1..];
    let digits = leaf.strip_prefix(b"#")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(if slash == 0 {
        &path[..1]
    } else {
        &path[..slash]
    })
}

fn content_changed(changed: &[ChangedField]) -> bool {
    changed.iter().any(|c| {
        matches!(
            c,
            ChangedField::Content
                | ChangedField::Size
                | ChangedField::Type
                | ChangedField::LinkTarget
        )
    })
}

impl ChangeMaker {
    pub fn new(
        lookup: Box<dyn BaselineLookup>,
        examine: Box<dyn Examine>,
        host: String,
        content_max_size: u64,
    ) -> ChangeMaker {
        ChangeMaker {
            lookup,
            examine,
            overlay: HashMap::new(),
            host,
            content_max_size,
            lookup_errors: 0,
        }
    }

    /// Drops the rows remembered as recently written (after a rescan rewrote the baseline).
    pub fn forget_recent(&mut self) {
        self.overlay.clear();
    }

    /// The baseline state of `path` to compare with (placeholders are not states).
    fn baseline(&mut self, path: &[u8]) -> Option<BaselineEntry> {
        self.row(path)
            .filter(|e| !e.flags.has(EntryFlags::VANISHED))
    }

    /// Whether `path`'s row is still a placeholder (no delete or rename record removed it).
    pub fn is_placeholder(&mut self, path: &[u8]) -> bool {
        self.row(path)
            .is_some_and(|e| e.flags.has(EntryFlags::VANISHED))
    }

    /// The baseline row of `path`, placeholders included.
    fn row(&mut self, path: &[u8]) -> Option<BaselineEntry> {
        if let Some((entry, at)) = self.overlay.get(path)
            && at.elapsed() < OVERLAY_TTL
        {
            return entry.clone();
        }
        match self.lookup.get(path) {
            Ok(entry) => entry,
            Err(e) => {
                self.lookup_errors += 1;
                log::warn!("baseline lookup failed: {e:#}");
                None
            }
        }
    }

    /// Records the new baseline state of `path`; `existed` says whether it had a row before.
    fn set(&mut self, path: &[u8], entry: Option<BaselineEntry>, made: &mut Made, existed: bool) {
        made.baseline_delta += i64::from(entry.is_some()) - i64::from(existed);
        let ops = &mut made.ops;
        if self.overlay.len() >= OVERLAY_MAX {
            self.overlay.retain(|_, (_, at)| at.elapsed() < OVERLAY_TTL);
            if self.overlay.len() >= OVERLAY_MAX {
                self.overlay.clear();
            }
        }
        ops.push(match &entry {
            Some(e) => StoreOp::BaselineUpsert(e.clone()),
            None => StoreOp::BaselineRemove(path.to_vec()),
        });
        self.overlay.insert(path.to_vec(), (entry, Instant::now()));
    }

    fn record(&self, job: &Job, activity: i64, path: &[u8]) -> ChangeRecord {
        let rule = job.rule.as_ref().or(job.rule2.as_ref());
        ChangeRecord {
            time_ns: job.time_ns,
            host: self.host.clone(),
            activity,
            path: path.to_vec(),
            rule: rule.map(|r| r.name.clone()),
            group: rule.map(|r| r.group.clone()),
            backend: job.backend.to_string(),
            authorized: job.authorized,
            truncated_path: job.truncated_path,
            used_path: job.used_path.clone(),
            actor: job.process.actor.clone(),
            ..ChangeRecord::default()
        }
    }

    fn keep_content(&self, job: &Job) -> Option<u64> {
        let rule = job.rule2.as_ref().or(job.rule.as_ref());
        rule.is_some_and(|r| r.upload_content)
            .then_some(self.content_max_size)
    }

    /// Whether the removal or rename of `job.path` that the completeness layer reports is
    /// still news: the baseline has the path and it is really gone. Otherwise the kernel's
    /// record of the same operation was reported already (or the path is back).
    fn layer_name_change_is_news(&mut self, job: &Job) -> bool {
        self.row(&job.path).is_some() && !self.examine.exists(&job.path)
    }

    /// A rename the completeness layer reports that is not news: the new name is still looked
    /// at, as a creation (a rename into the tree whose old name fim never knew, or a duplicate
    /// that then reports nothing).
    fn layer_rename_not_news(&mut self, job: &Job, made: &mut Made) {
        let (Some(new_path), Some(rule)) = (&job.new_path, &job.rule2) else {
            return;
        };
        let created = Job {
            what: JobKind::Examine,
            path: new_path.clone(),
            new_path: None,
            activity: activity::CREATE,
            rule: Some(rule.clone()),
            rule2: None,
            ..job.clone()
        };
        self.examine_job(&created, made);
    }

    /// Processes one job.
    pub fn make(&mut self, job: &Job) -> Made {
        let mut made = Made::default();
        let from_layer = job.from_completeness_layer();
        match job.what {
            JobKind::Examine => self.examine_job(job, &mut made),
            JobKind::Delete if from_layer && !self.layer_name_change_is_news(job) => {}
            JobKind::Rename if from_layer && !self.layer_name_change_is_news(job) => {
                self.layer_rename_not_news(job, &mut made)
            }
            JobKind::Delete => {
                let previous = self.baseline(&job.path);
                let mut change = self.record(job, activity::DELETE, &job.path);
                if let Some(p) = &previous {
                    change.kind = Some(p.kind);
                    change.previous = Some(previous_json(p));
                    change.hash_before = p.blake3.map(|h| hex(&h));
                }
                made.changes.push(change);
                let existed = self.row(&job.path).is_some();
                self.set(&job.path, None, &mut made, existed);
            }
            JobKind::Rename => self.rename_job(job, &mut made),
        }
        let mut ops: Vec<StoreOp> = made.changes.iter().cloned().map(StoreOp::Change).collect();
        ops.append(&mut made.ops);
        made.ops = ops;
        made
    }

    /// Looks at `path` now for a scan that runs beside this worker and saw it differ from the
    /// stored baseline (the hash of an unchanged file is reused from this worker's state).
    /// [`ChangeMaker::reconcile`] then decides what to report.
    pub fn look(&mut self, path: &[u8]) -> Examined {
        let state = self.baseline(path);
        self.examine.examine(path, state.as_ref(), None, false)
    }

    /// What `examined` (from [`ChangeMaker::look`]) differs in from this worker's state of
    /// the baseline (which includes what it wrote and the store may not have committed yet),
    /// `None` when the path is as that state says, and the store operations that move the
    /// baseline on (the caller writes its change record before them).
    pub fn reconcile(&mut self, path: &[u8], examined: Examined) -> (Option<DriftItem>, Made) {
        let mut made = Made::default();
        let row = self.row(path);
        let state = row.as_ref().filter(|e| !e.flags.has(EntryFlags::VANISHED));
        match examined {
            Examined::Present { entry, content } => {
                if let Some(c) = content {
                    made.keep_content(c, entry.scanned_at_ns);
                }
                let refreshed = state.is_none_or(|s| !s.same_identity_and_times(&entry));
                let drift = DriftItem::between(row.clone(), Some(entry.clone()));
                if drift.is_some() || refreshed {
                    self.set(path, Some(entry), &mut made, row.is_some());
                }
                (drift, made)
            }
            Examined::Vanished => {
                let drift = DriftItem::between(row.clone(), None);
                if row.is_some() {
                    self.set(path, None, &mut made, true);
                }
                (drift, made)
            }
        }
    }

    fn examine_job(&mut self, job: &Job, made: &mut Made) {
        if job.truncated_path {
            // The path is not complete: report what the kernel said (the type it saw
            // included), examine nothing.
            let mut change = self.record(job, job.activity, &job.path);
            change.kind = job.file_kind;
            made.changes.push(change);
            return;
        }
        let previous = self.baseline(&job.path);
        let keep = self.keep_content(job);
        let written = matches!(job.activity, activity::CREATE | activity::UPDATE);
        match self
            .examine
            .examine(&job.path, previous.as_ref(), keep, written)
        {
            Examined::Vanished if unnamed_inode(&job.path).is_some() => {
                // The kernel names an inode that has no name (`open(O_TMPFILE)`) `#<inode>`:
                // no such path ever exists, so report the directory it lives in, flagged,
                // and leave no placeholder (no delete of a name that never was follows).
                let dir = unnamed_inode(&job.path).unwrap_or(&job.path);
                let mut change = self.record(job, job.activity, dir);
                change.changed = vec!["content".to_string()];
                change.kind = Some(FileKind::Dir);
                change.flags = EntryFlags(EntryFlags::UNNAMED);
                made.changes.push(change);
            }
            // The completeness layer's change of a path gone since: its removal or rename is
            // reported by its own event, and a kernel record may have reported this one.
            Examined::Vanished if job.from_completeness_layer() => {}
            Examined::Vanished => {
                // Gone (renamed or removed) before it could be examined: what the kernel saw
                // is still reported, without the new content; its delete or rename record
                // follows.
                let mut change = self.record(job, job.activity, &job.path);
                if job.activity != activity::CREATE || previous.is_some() {
                    let field = match job.kind {
                        EventKind::Chmod => "mode",
                        EventKind::Chown => "owner",
                        EventKind::SetXattr | EventKind::RemoveXattr => "xattr",
                        _ => "content",
                    };
                    change.changed = vec![field.to_string()];
                }
                change.kind = job.file_kind;
                if let Some(p) = &previous {
                    change.kind = change.kind.or(Some(p.kind));
                    change.previous = Some(previous_json(p));
                    change.hash_before = p.blake3.map(|h| hex(&h));
                }
                made.changes.push(change);
                if previous.is_none() && self.row(&job.path).is_none() {
                    // The store must remember that this path was reported as existing: if
                    // fim is killed before its delete or rename record arrives, the next
                    // scan compares with this placeholder and reports the path gone.
                    let placeholder = BaselineEntry::without_state(
                        job.path.clone(),
                        job.file_kind.unwrap_or(FileKind::File),
                        EntryFlags(EntryFlags::VANISHED),
                        None,
                        job.time_ns,
                    );
                    self.set(&job.path, Some(placeholder), made, false);
                    made.placeholder = Some(job.path.clone());
                }
            }
            Examined::Present { mut entry, content } => {
                // A path no syscall takes (longer than 4095 bytes) cannot be examined: its
                // type is the one the record says (a mkdir), not a guess.
                if entry.flags.has(EntryFlags::UNREADABLE)
                    && let Some(kind) = job.file_kind
                {
                    entry.kind = kind;
                }
                if let Some(c) = content {
                    made.keep_content(c, job.time_ns);
                }
                let change = match &previous {
                    None => {
                        let mut change = self.record(job, activity::CREATE, &job.path);
                        change.hash_after = entry.blake3.map(|h| hex(&h));
                        change.size = Some(entry.size);
                        Some(change)
                    }
                    Some(old) => {
                        let changed = changed_fields(old, &entry);
                        if changed.is_empty() {
                            None
                        } else {
                            let activity = match job.activity {
                                activity::SET_ATTRIBUTES | activity::SET_SECURITY => job.activity,
                                _ if content_changed(&changed) => activity::UPDATE,
                                _ => activity::SET_ATTRIBUTES,
                            };
                            let mut change = self.record(job, activity, &job.path);
                            change.changed = changed.iter().map(|c| c.name().to_string()).collect();
                            change.previous = Some(previous_json(old));
                            change.hash_before = old.blake3.map(|h| hex(&h));
                            change.hash_after = entry.blake3.map(|h| hex(&h));
                            change.size = Some(entry.size);
                            Some(change)
                        }
                    }
                };
                made.changes.extend(change.map(|mut c| {
                    c.kind = Some(entry.kind);
                    c.flags = entry.flags;
                    c
                }));
                let existed = previous.is_some() || self.row(&job.path).is_some();
                self.set(&job.path, Some(entry), made, existed);
            }
        }
    }

    fn rename_job(&mut self, job: &Job, made: &mut Made) {
        let Some(new_path) = job.new_path.clone() else {
            return;
        };
        let old_row = self.row(&job.path);
        let replaced_row = self.row(&new_path);
        let old = old_row
            .clone()
            .filter(|e| !e.flags.has(EntryFlags::VANISHED));
        let replaced = replaced_row
            .clone()
            .filter(|e| !e.flags.has(EntryFlags::VANISHED));
        let mut change = self.record(job, activity::RENAME, &job.path);
        change.new_path = Some(new_path.clone());
        change.hash_before = old.as_ref().and_then(|o| o.blake3.map(|h| hex(&h)));
        if old_row.is_some() {
            self.set(&job.path, None, made, true);
        }
        let is_dir = old
            .as_ref()
            .map(|o| o.kind)
            .or(job.file_kind)
            .is_some_and(|k| k == FileKind::Dir);
        if is_dir {
            // What was below the directory is below its new name now (or gone from view).
            let to = if job.rule2.is_some() {
                new_path.clone()
            } else {
                Vec::new()
            };
            made.ops.push(StoreOp::BaselineMoveBelow {
                from: job.path.clone(),
                to,
            });
            made.moved_below = true;
            let mut below = job.path.clone();
            below.push(b'/');
            self.overlay.retain(|path, _| !path.starts_with(&below));
            if old.is_none() && job.rule2.is_some() {
                made.scan_below = Some(new_path.clone());
            }
        }
        if job.rule2.is_some() && !job.truncated_path {
            let keep = self.keep_content(job);
            if let Examined::Present { entry, content } =
                self.examine.examine(&new_path, old.as_ref(), keep, false)
            {
                // Replacing a file (an atomic save): what changed relative to the replaced one.
                if let Some(r) = &replaced {
                    change.changed = changed_fields(r, &entry)
                        .iter()
                        .map(|c| c.name().to_string())
                        .collect();
                }
                change.hash_after = entry.blake3.map(|h| hex(&h));
                change.size = Some(entry.size);
                change.kind = Some(entry.kind);
                change.flags = entry.flags;
                if let Some(c) = content {
                    made.ops.push(StoreOp::Content(ContentRecord {
                        blake3: c.blake3,
                        content: c.content,
                        stored_at_ns: job.time_ns,
                    }));
                }
                self.set(&new_path, Some(entry), made, replaced_row.is_some());
            }
        } else if replaced_row.is_some() {
            self.set(&new_path, None, made, true);
        }
        change.previous = replaced.as_ref().or(old.as_ref()).map(previous_json);
        made.changes.push(change);
    }
}
