//! Changes made through another name of a watched object.
//!
//! The lsm and fentry programs decide on inodes (and so do the tracepoint programs for opens
//! and fd-based syscalls), but the path they build is the name that was used: through a bind
//! mount of a watched directory mounted elsewhere, in another mount namespace, or through a
//! hard link in a directory no rule covers, no rule matches it. Such a record carries the
//! kernel's verdict (its rule), the object's inode and the inode of the directory holding
//! each name: [`Aliases`] finds the watched name(s) from those, in fim's own view of the
//! filesystem, and keeps the name used for the report (`used_path`).
//!
//! Where it looks, in order: the watched roots themselves; the baseline's rows by inode
//! (index `baseline_by_inode`); for a name the baseline does not know yet (just created), the
//! directory that holds it, by the same means; and last the name used, as fim or the actor
//! sees it (`realpath` of its directory, or through `/proc/PID/root`). Every name found is
//! checked against the filesystem before it is used: the same device and inode, or, for a
//! name already gone (a delete, the old name of a rename), a baseline row that recorded that
//! inode. Nothing found: the change is reported by a rescan of its rule's roots instead
//! (counted in `fim_unresolved_changes_total`), never dropped silently.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use fim_common::{EventKind, flags};

use crate::sensor::{Event, Source, WatchRoot, watch::kernel_dev};

/// The baseline's paths of one inode.
pub trait InodeNames: Send {
    /// Paths whose baseline rows name inode `ino` of `st_dev`, in path order.
    fn paths_of_inode(&mut self, st_dev: u64, ino: u64) -> Vec<Vec<u8>>;
}

/// No baseline to ask (tests, or a store that cannot be opened).
pub struct NoNames;

impl InodeNames for NoNames {
    fn paths_of_inode(&mut self, _st_dev: u64, _ino: u64) -> Vec<Vec<u8>> {
        Vec::new()
    }
}

/// Finds watched names for records made through other names (see the module's comment).
pub struct Aliases {
    names: Box<dyn InodeNames>,
    /// The watched roots by (kernel dev, inode), and the roots of each rule.
    roots: HashMap<(u32, u64), Vec<u8>>,
    rule_roots: HashMap<u32, Vec<PathBuf>>,
    /// Watched regular files with more than one link, by (kernel dev, inode): a change
    /// through one of their watched names changes the others too.
    linked: HashSet<(u32, u64)>,
    /// `/proc`, for the actor's view of a name (tests point it elsewhere).
    proc_root: PathBuf,
    /// Records whose watched name could not be found (their rule's roots are rescanned).
    pub unresolved: u64,
}

/// A name and how it was found.
struct Found {
    name: Vec<u8>,
}

impl Aliases {
    pub fn new(names: Box<dyn InodeNames>) -> Aliases {
        Aliases {
            names,
            roots: HashMap::new(),
            rule_roots: HashMap::new(),
            linked: HashSet::new(),
            proc_root: PathBuf::from("/proc"),
            unresolved: 0,
        }
    }

    /// The roots as they are registered with the sensor (after every change of the rules).
    pub fn set_roots(&mut self, roots: &[WatchRoot]) {
        self.roots.clear();
        self.rule_roots.clear();
        for root in roots {
            self.rule_roots
                .entry(root.rule_id)
                .or_default()
                .push(root.path.clone());
            if let Ok(meta) = std::fs::metadata(&root.path) {
                self.roots.insert(
                    (kernel_dev(meta.dev()), meta.ino()),
                    root.path.as_os_str().as_bytes().to_vec(),
                );
            }
        }
    }

    /// The roots of a rule (for the rescan of what could not be resolved).
    pub fn roots_of(&self, rule_id: u32) -> Vec<PathBuf> {
        self.rule_roots.get(&rule_id).cloned().unwrap_or_default()
    }

    /// Watched regular files with more than one link (`st_dev`, inode), as a scan found them
    /// (`replace`: the whole set), or one more (a link record).
    pub fn set_linked(&mut self, files: impl IntoIterator<Item = (u64, u64)>, replace: bool) {
        if replace {
            self.linked.clear();
        }
        self.linked.extend(
            files
                .into_iter()
                .map(|(st_dev, ino)| (kernel_dev(st_dev), ino)),
        );
    }

    /// Whether a record that no rule covers by its path(s) is one the kernel decided on an
    /// inode: then its watched name is looked for.
    pub fn is_candidate(event: &Event) -> bool {
        event.source == Source::Kernel
            && event.rule_id != 0
            && event.rule_id != crate::sensor::SELF_TEST_RULE
            && event.flags & (flags::FILTER_UNDECIDED | flags::PATH_FS_RELATIVE) == 0
            && !event.truncated()
    }

    /// The record at its watched name(s): one event per name, each with `used_path`. Empty
    /// when none was found (counted in `unresolved`).
    pub fn resolve(&mut self, event: &Event) -> Vec<Event> {
        let via_link = event.flags & flags::VIA_LINK != 0;
        let mut kind = event.kind;
        // Removing, renaming or linking another name of a watched file changes only its
        // link count: examined like an attribute change (which reports nothing fim keeps).
        if via_link
            && matches!(
                kind,
                EventKind::Unlink | EventKind::Rename | EventKind::Link
            )
        {
            kind = EventKind::AttributesChanged;
        }
        let firsts = self.names_of_path1(event, kind, via_link);
        let second = match kind {
            EventKind::Rename | EventKind::Link => {
                self.name_in_dir(event, event.target.dir2_ino, &event.path2)
            }
            _ => None,
        };
        let mut out = Vec::new();
        match kind {
            EventKind::Rename | EventKind::Link => {
                // One side may lie outside every rule (a rename into or out of the tree):
                // that side keeps its name as used.
                let old = firsts.into_iter().next().map(|f| f.name);
                if old.is_none() && second.is_none() {
                    self.unresolved += 1;
                    return out;
                }
                let mut e = event.clone();
                if let Some(old) = old {
                    e.path = old;
                }
                if let Some(new) = second {
                    e.path2 = new.name;
                }
                e.used_path = Some(event.path.clone());
                out.push(e);
            }
            _ => {
                for found in firsts {
                    let mut e = event.clone();
                    e.kind = kind;
                    e.path = found.name;
                    e.used_path = Some(event.path.clone());
                    out.push(e);
                }
                if out.is_empty() {
                    self.unresolved += 1;
                }
            }
        }
        out
    }

    /// The other watched names of a watched file with more than one link that a record
    /// changed through one of them (content and attributes only).
    pub fn other_names(&mut self, event: &Event) -> Vec<Event> {
        if self.linked.is_empty()
            || event.flags & flags::TARGET_KNOWN == 0
            || !matches!(
                event.kind,
                EventKind::OpenWrite
                    | EventKind::Modified
                    | EventKind::Truncate
                    | EventKind::Chmod
                    | EventKind::Chown
                    | EventKind::SetXattr
                    | EventKind::RemoveXattr
                    | EventKind::MmapSharedWrite
            )
            || !self.linked.contains(&(event.target.dev, event.target.ino))
        {
            return Vec::new();
        }
        self.object_names(event.target.dev, event.target.ino, false)
            .into_iter()
            .filter(|f| f.name != event.path)
            .map(|f| {
                let mut e = event.clone();
                e.path = f.name;
                e.used_path = Some(event.path.clone());
                e
            })
            .collect()
    }

    fn names_of_path1(&mut self, event: &Event, kind: EventKind, via_link: bool) -> Vec<Found> {
        let exists = !matches!(
            kind,
            EventKind::Create | EventKind::Mkdir | EventKind::Symlink
        );
        if exists && event.flags & flags::TARGET_KNOWN != 0 && event.target.ino != 0 {
            let gone = matches!(
                kind,
                EventKind::Unlink | EventKind::Rmdir | EventKind::Rename
            );
            let names = self.object_names(event.target.dev, event.target.ino, gone);
            if !names.is_empty() || via_link {
                return names;
            }
        }
        self.name_in_dir(event, event.target.dir_ino, &event.path)
            .into_iter()
            .collect()
    }

    /// The watched names of an object: a root, or the baseline's rows of its inode, each
    /// checked on disk (`gone`: the object may no longer be there, so a name that does not
    /// exist is trusted to the baseline row that recorded this inode for it).
    fn object_names(&mut self, dev: u32, ino: u64, gone: bool) -> Vec<Found> {
        if let Some(root) = self.roots.get(&(dev, ino)) {
            return vec![Found { name: root.clone() }];
        }
        let Some(st_dev) = user_dev(dev) else {
            return Vec::new();
        };
        self.names
            .paths_of_inode(st_dev, ino)
            .into_iter()
            .filter(
                |name| match std::fs::symlink_metadata(OsStr::from_bytes(name)) {
                    Ok(meta) => kernel_dev(meta.dev()) == dev && meta.ino() == ino,
                    Err(e) => gone && e.kind() == std::io::ErrorKind::NotFound,
                },
            )
            .map(|name| Found { name })
            .collect()
    }

    /// A name's watched form from the directory that holds it: `dir_ino` (with the record's
    /// device) resolved like an object, else the name as used, resolved in fim's view or the
    /// actor's. The last component is kept as it was used.
    fn name_in_dir(&mut self, event: &Event, dir_ino: u64, used: &[u8]) -> Option<Found> {
        let (parent, leaf) = split_leaf(used)?;
        if dir_ino != 0 {
            let dev = event.target.dev;
            if let Some(dir) = self.object_names(dev, dir_ino, false).into_iter().next() {
                return Some(Found {
                    name: join(&dir.name, leaf),
                });
            }
        }
        // The name as fim sees it (a symlink in the directory's path, a bind mount in fim's
        // own mount namespace), then as the actor saw it.
        let views = [
            PathBuf::from(OsStr::from_bytes(parent)),
            self.proc_root
                .join(event.actor.tgid.to_string())
                .join("root")
                .join(OsStr::from_bytes(
                    parent.strip_prefix(b"/").unwrap_or(parent),
                )),
        ];
        for view in views {
            let Ok(meta) = std::fs::metadata(&view) else {
                continue;
            };
            if !meta.is_dir() {
                continue;
            }
            let key = (kernel_dev(meta.dev()), meta.ino());
            if let Some(root) = self.roots.get(&key) {
                return Some(Found {
                    name: join(root, leaf),
                });
            }
            if let Some(dir) = self.object_names(key.0, key.1, false).into_iter().next() {
                return Some(Found {
                    name: join(&dir.name, leaf),
                });
            }
            // In fim's own view the directory may simply be a watched one spelt through a
            // symlink.
            if view.is_absolute()
                && !view.starts_with(&self.proc_root)
                && let Ok(real) = std::fs::canonicalize(&view)
                && real.as_os_str().as_bytes() != parent
            {
                return Some(Found {
                    name: join(real.as_os_str().as_bytes(), leaf),
                });
            }
        }
        None
    }

    #[cfg(test)]
    fn with_proc_root(mut self, proc_root: &std::path::Path) -> Aliases {
        self.proc_root = proc_root.to_path_buf();
        self
    }
}

/// `st_dev` of a kernel device number (`MKDEV`: major << 20 | minor).
fn user_dev(dev: u32) -> Option<u64> {
    Some(libc::makedev(dev >> 20, dev & 0xfffff))
}

/// A path's directory and last component (`None` for "/" or a name without a '/').
fn split_leaf(path: &[u8]) -> Option<(&[u8], &[u8])> {
    let slash = path.iter().rposition(|&b| b == b'/')?;
    let leaf = &path[slash + 1..];
    if leaf.is_empty() {
        return None;
    }
    let parent = if slash == 0 {
        &path[..1]
    } else {
        &path[..slash]
    };
    Some((parent, leaf))
}

fn join(dir: &[u8], leaf: &[u8]) -> Vec<u8> {
    let mut out = dir.to_vec();
    if out.last() != Some(&b'/') {
        out.push(b'/');
    }
    out.extend_from_slice(leaf);
    out
}

#[cfg(test)]
mod tests;
