//! Drift: how a new scan differs from the stored baseline.

use serde_json::{Value, json};

use super::entry::{BaselineEntry, FileKind, display_path, hex};
use super::scan::Baseline;

/// A field whose change is reported (the `changed` list of the output contract).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChangedField {
    Content,
    Size,
    Mode,
    Owner,
    Xattr,
    Type,
    LinkTarget,
}

impl ChangedField {
    pub fn name(self) -> &'static str {
        match self {
            ChangedField::Content => "content",
            ChangedField::Size => "size",
            ChangedField::Mode => "mode",
            ChangedField::Owner => "owner",
            ChangedField::Xattr => "xattr",
            ChangedField::Type => "type",
            ChangedField::LinkTarget => "link_target",
        }
    }
}

/// The fields that differ between two states of the same path. Content counts only when both
/// sides have a hash (a file that became unreadable has no known content). A directory's size
/// is left out: it follows its entries, which are reported as added/removed themselves.
pub fn changed_fields(old: &BaselineEntry, new: &BaselineEntry) -> Vec<ChangedField> {
    let mut changed = Vec::new();
    if old.kind != new.kind {
        changed.push(ChangedField::Type);
    }
    if let (Some(a), Some(b)) = (old.blake3, new.blake3)
        && a != b
    {
        changed.push(ChangedField::Content);
    }
    let is_dir = old.kind == FileKind::Dir && new.kind == FileKind::Dir;
    if old.size != new.size && !is_dir {
        changed.push(ChangedField::Size);
    }
    if old.mode != new.mode {
        changed.push(ChangedField::Mode);
    }
    if old.uid != new.uid || old.gid != new.gid {
        changed.push(ChangedField::Owner);
    }
    if old.xattr_digest != new.xattr_digest {
        changed.push(ChangedField::Xattr);
    }
    if old.link_target != new.link_target {
        changed.push(ChangedField::LinkTarget);
    }
    changed
}

/// One path present in both baselines with different recorded state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Modified {
    pub changed: Vec<ChangedField>,
    pub previous: BaselineEntry,
    pub current: BaselineEntry,
}

/// Everything that differs between the stored baseline and a new scan, each list in path order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drift {
    pub added: Vec<BaselineEntry>,
    pub removed: Vec<BaselineEntry>,
    pub modified: Vec<Modified>,
}

impl Drift {
    pub fn between(previous: &Baseline, current: &Baseline) -> Drift {
        let mut drift = Drift::default();
        for entry in current.entries() {
            match previous.get(&entry.path) {
                None => drift.added.push(entry.clone()),
                Some(old) => {
                    let changed = changed_fields(old, entry);
                    if !changed.is_empty() {
                        drift.modified.push(Modified {
                            changed,
                            previous: old.clone(),
                            current: entry.clone(),
                        });
                    }
                }
            }
        }
        drift.removed = previous
            .entries()
            .filter(|old| current.get(&old.path).is_none())
            .cloned()
            .collect();
        drift
    }

    /// Adds one item found by a streaming scan (which reports them in path order).
    pub fn push(&mut self, item: super::DriftItem) {
        match item {
            super::DriftItem::Added(e) => self.added.push(e),
            super::DriftItem::Removed(e) => self.removed.push(e),
            super::DriftItem::Modified(m) => self.modified.push(m),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.modified.is_empty()
    }

    /// `N added, N removed, N modified`.
    pub fn summary(&self) -> String {
        format!(
            "{} added, {} removed, {} modified",
            self.added.len(),
            self.removed.len(),
            self.modified.len()
        )
    }

    /// The full drift as JSON (`fim scan --json`).
    pub fn to_json(&self) -> Value {
        json!({
            "added": self.added.iter().map(entry_json).collect::<Vec<_>>(),
            "removed": self.removed.iter().map(entry_json).collect::<Vec<_>>(),
            "modified": self.modified.iter().map(|m| json!({
                "path": display_path(&m.current.path),
                "changed": m.changed.iter().map(|c| c.name()).collect::<Vec<_>>(),
                "previous": entry_json(&m.previous),
                "current": entry_json(&m.current),
            })).collect::<Vec<_>>(),
        })
    }
}

/// One entry as JSON; paths with invalid UTF-8 show those bytes as `\xNN`.
pub fn entry_json(entry: &BaselineEntry) -> Value {
    json!({
        "path": display_path(&entry.path),
        "type": entry.kind.name(),
        "size": entry.size,
        "mode": format!("{:04o}", entry.mode),
        "uid": entry.uid,
        "gid": entry.gid,
        "mtime_ns": entry.mtime_ns,
        "ctime_ns": entry.ctime_ns,
        "inode": entry.inode,
        "dev": entry.dev,
        "blake3": entry.blake3.map(|h| hex(&h)),
        "xattr_digest": entry.xattr_digest.map(|h| hex(&h)),
        "link_target": entry.link_target.as_deref().map(display_path),
        "flags": entry.flags.names(),
        "errno": entry.errno,
    })
}
