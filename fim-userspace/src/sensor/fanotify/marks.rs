//! What the completeness layer has marked, by file handle and by path: the watched
//! directories (the way from an event's directory handle back to its watched path) and the
//! watched non-directories (a file rule's file; the watched names of files with more than one
//! link). Kept right as directories are renamed and removed. Plain bookkeeping: the marks
//! themselves are placed by the caller.

use std::collections::{BTreeMap, HashMap};

use super::decode::Handle;

/// Events a watched directory reports about its entries and itself.
const ENTRY_NAMES: u64 = libc::FAN_CREATE | libc::FAN_DELETE | libc::FAN_RENAME | libc::FAN_ONDIR;
const ENTRY_CHANGES: u64 =
    libc::FAN_EVENT_ON_CHILD | libc::FAN_MODIFY | libc::FAN_CLOSE_WRITE | libc::FAN_ATTRIB;
/// What a watched non-directory reports through any of its names.
pub const OBJECT_MASK: u64 = libc::FAN_MODIFY | libc::FAN_CLOSE_WRITE | libc::FAN_ATTRIB;

/// One marked directory and why.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirMark {
    pub path: Vec<u8>,
    /// Watched with everything below it, under this rule (a recursive root or a directory
    /// in one).
    pub recursive: Option<u32>,
    /// A `children` root: it and its direct entries are watched.
    pub children: Option<u32>,
    /// File rules whose file is an entry here: (name, rule). Other entries are not watched.
    pub files: Vec<(Vec<u8>, u32)>,
    /// A configured root: its own removal or move is reported (its parent is not marked).
    pub root: bool,
}

impl DirMark {
    /// The fanotify mask this directory needs.
    pub fn mask(&self) -> u64 {
        let mut mask = 0;
        if !self.files.is_empty() {
            mask |= ENTRY_NAMES;
        }
        if self.recursive.is_some() || self.children.is_some() {
            mask |= ENTRY_NAMES | ENTRY_CHANGES;
            if self.root {
                mask |= libc::FAN_DELETE_SELF | libc::FAN_MOVE_SELF;
            }
        }
        mask
    }

    /// The rule the entry `name` of this directory is watched under.
    pub fn covers(&self, name: &[u8]) -> Option<u32> {
        self.recursive.or(self.children).or_else(|| {
            self.files
                .iter()
                .find(|(n, _)| n.as_slice() == name)
                .map(|(_, rule)| *rule)
        })
    }

    /// The rule the directory itself is watched under.
    pub fn itself(&self) -> Option<u32> {
        self.recursive.or(self.children)
    }

    /// Merges another reason to mark the same directory (two roots meeting).
    pub fn merge(&mut self, other: DirMark) {
        self.recursive = self.recursive.or(other.recursive);
        self.children = self.children.or(other.children);
        self.root |= other.root;
        for file in other.files {
            if !self.files.contains(&file) {
                self.files.push(file);
            }
        }
    }
}

/// Where a watched name of a non-directory comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A file rule's own path.
    Rule,
    /// A name the daemon handed over as one of a multi-link file's watched names.
    Link,
}

/// A watched name of a marked non-directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Name {
    pub path: Vec<u8>,
    pub rule: u32,
    pub origin: Origin,
}

/// Path bytes as a `Path`.
pub fn os_path(bytes: &[u8]) -> &std::path::Path {
    std::path::Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(bytes))
}

/// `dir/name`.
pub fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut path = Vec::with_capacity(dir.len() + 1 + name.len());
    path.extend_from_slice(dir);
    if !dir.ends_with(b"/") {
        path.push(b'/');
    }
    path.extend_from_slice(name);
    path
}

/// Whether `path` is `dir` or below it.
pub fn at_or_below(path: &[u8], dir: &[u8]) -> bool {
    path.starts_with(dir)
        && (path.len() == dir.len() || dir.ends_with(b"/") || path[dir.len()] == b'/')
}

/// `path` (at or below `from`) moved to below `to`.
fn moved(path: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    [to, &path[from.len()..]].concat()
}

#[derive(Default, Debug)]
pub struct Tree {
    dirs: HashMap<Handle, DirMark>,
    by_path: BTreeMap<Vec<u8>, Handle>,
    objects: HashMap<Handle, Vec<Name>>,
    object_at: HashMap<Vec<u8>, Handle>,
}

impl Tree {
    pub fn dir(&self, handle: &Handle) -> Option<&DirMark> {
        self.dirs.get(handle)
    }

    pub fn dir_at(&self, path: &[u8]) -> Option<(&Handle, &DirMark)> {
        let handle = self.by_path.get(path)?;
        Some((handle, self.dirs.get(handle)?))
    }

    pub fn dirs(&self) -> impl Iterator<Item = (&Handle, &DirMark)> {
        self.dirs.iter()
    }

    pub fn dir_count(&self) -> usize {
        self.dirs.len()
    }

    /// Records `mark` for the directory `handle`; what was recorded at its path for another
    /// handle (a directory since replaced) is returned so its mark can be removed.
    pub fn insert_dir(&mut self, handle: Handle, mark: DirMark) -> Option<(Handle, DirMark)> {
        let stale = match self.by_path.get(&mark.path) {
            Some(old) if *old != handle => {
                let old = old.clone();
                self.remove_dir(&old).map(|m| (old, m))
            }
            _ => None,
        };
        if let Some(previous) = self.dirs.get(&handle)
            && previous.path != mark.path
        {
            self.by_path.remove(&previous.path);
        }
        self.by_path.insert(mark.path.clone(), handle.clone());
        self.dirs.insert(handle, mark);
        stale
    }

    pub fn remove_dir(&mut self, handle: &Handle) -> Option<DirMark> {
        let mark = self.dirs.remove(handle)?;
        if self.by_path.get(&mark.path) == Some(handle) {
            self.by_path.remove(&mark.path);
        }
        Some(mark)
    }

    /// Forgets the directory at `path` and every marked directory below it.
    pub fn take_below(&mut self, path: &[u8]) -> Vec<(Handle, DirMark)> {
        let below: Vec<Handle> = self
            .by_path
            .range(path.to_vec()..)
            .take_while(|(p, _)| p.starts_with(path))
            .filter(|(p, _)| at_or_below(p, path))
            .map(|(_, h)| h.clone())
            .collect();
        below
            .into_iter()
            .filter_map(|h| self.remove_dir(&h).map(|m| (h, m)))
            .collect()
    }

    /// A directory moved from `from` to `to`: the marked directories at and below it, and the
    /// watched names below it, take the new prefix. `recursive`: the rule they are watched
    /// under from now on.
    pub fn move_below(&mut self, from: &[u8], to: &[u8], recursive: Option<u32>) {
        for (handle, mut mark) in self.take_below(from) {
            mark.path = moved(&mark.path, from, to);
            if mark.recursive.is_some() {
                mark.recursive = recursive.or(mark.recursive);
            }
            // The move made it an entry of another directory: only a configured root is
            // reported for its own removal.
            if mark.path != to || !mark.root {
                mark.root = false;
            }
            self.insert_dir(handle, mark);
        }
        let names: Vec<Vec<u8>> = self
            .object_at
            .keys()
            .filter(|p| at_or_below(p, from))
            .cloned()
            .collect();
        for old in names {
            if let Some(handle) = self.object_at.remove(&old) {
                let new = moved(&old, from, to);
                if let Some(list) = self.objects.get_mut(&handle) {
                    for name in list.iter_mut().filter(|n| n.path == old) {
                        name.path = new.clone();
                    }
                }
                self.object_at.insert(new, handle);
            }
        }
    }

    pub fn object(&self, handle: &Handle) -> Option<&[Name]> {
        self.objects.get(handle).map(Vec::as_slice)
    }

    pub fn object_at(&self, path: &[u8]) -> Option<&Handle> {
        self.object_at.get(path)
    }

    pub fn objects(&self) -> impl Iterator<Item = (&Handle, &[Name])> {
        self.objects.iter().map(|(h, n)| (h, n.as_slice()))
    }

    /// Adds a watched name of the non-directory `handle`. A name another object had (the
    /// file at that name was replaced) moves to this one; that object's handle is returned
    /// when it has no name left, so its mark can be removed.
    pub fn add_name(&mut self, handle: Handle, name: Name) -> Option<Handle> {
        let mut emptied = None;
        if let Some(old) = self.object_at.get(&name.path).cloned()
            && old != handle
        {
            emptied = self.forget_name(&name.path);
        }
        let list = self.objects.entry(handle.clone()).or_default();
        if !list.contains(&name) {
            list.retain(|n| n.path != name.path);
            self.object_at.insert(name.path.clone(), handle);
            list.push(name);
        }
        emptied
    }

    /// Forgets the watched name `path`; returns its object's handle when that has no name left.
    pub fn forget_name(&mut self, path: &[u8]) -> Option<Handle> {
        let handle = self.object_at.remove(path)?;
        let list = self.objects.get_mut(&handle)?;
        list.retain(|n| n.path != path);
        if list.is_empty() {
            self.objects.remove(&handle);
            return Some(handle);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u8) -> Handle {
        Handle {
            fsid: 1,
            kind: 1,
            bytes: vec![n],
        }
    }

    fn recursive(path: &str, rule: u32) -> DirMark {
        DirMark {
            path: path.as_bytes().to_vec(),
            recursive: Some(rule),
            ..DirMark::default()
        }
    }

    #[test]
    fn masks_and_coverage_follow_the_reason_for_the_mark() {
        let file_parent = DirMark {
            path: b"/etc".to_vec(),
            files: vec![(b"passwd".to_vec(), 3)],
            ..DirMark::default()
        };
        assert_eq!(file_parent.covers(b"passwd"), Some(3));
        assert_eq!(file_parent.covers(b"shadow"), None);
        assert_eq!(file_parent.itself(), None);
        assert_eq!(file_parent.mask() & libc::FAN_EVENT_ON_CHILD, 0);
        assert_ne!(file_parent.mask() & libc::FAN_RENAME, 0);
        let mut root = recursive("/srv", 1);
        root.root = true;
        assert_eq!(root.covers(b"any"), Some(1));
        assert_ne!(root.mask() & libc::FAN_DELETE_SELF, 0);
        assert_eq!(recursive("/srv/a", 1).mask() & libc::FAN_DELETE_SELF, 0);
        let mut both = file_parent.clone();
        both.merge(DirMark {
            path: b"/etc".to_vec(),
            children: Some(4),
            root: true,
            ..DirMark::default()
        });
        assert_eq!((both.covers(b"shadow"), both.itself()), (Some(4), Some(4)));
    }

    #[test]
    fn paths_join_and_nest() {
        assert_eq!(join(b"/", b"etc"), b"/etc");
        assert_eq!(join(b"/etc", b"passwd"), b"/etc/passwd");
        assert!(at_or_below(b"/a/b", b"/a"));
        assert!(at_or_below(b"/a", b"/a"));
        assert!(!at_or_below(b"/ab", b"/a"));
        assert!(at_or_below(b"/a", b"/"));
    }

    #[test]
    fn a_renamed_directory_takes_its_subtree_and_names_along() {
        let mut t = Tree::default();
        t.insert_dir(h(1), recursive("/w", 1));
        t.insert_dir(h(2), recursive("/w/a", 1));
        t.insert_dir(h(3), recursive("/w/a/b", 1));
        t.insert_dir(h(4), recursive("/w/ab", 1));
        t.add_name(
            h(9),
            Name {
                path: b"/w/a/b/f".to_vec(),
                rule: 1,
                origin: Origin::Link,
            },
        );
        t.move_below(b"/w/a", b"/w/z", None);
        assert_eq!(t.dir(&h(2)).unwrap().path, b"/w/z");
        assert_eq!(t.dir(&h(3)).unwrap().path, b"/w/z/b");
        assert_eq!(
            t.dir(&h(4)).unwrap().path,
            b"/w/ab",
            "a sibling with the prefix"
        );
        assert!(t.dir_at(b"/w/a").is_none());
        assert_eq!(t.dir_at(b"/w/z/b").unwrap().0, &h(3));
        assert_eq!(t.object(&h(9)).unwrap()[0].path, b"/w/z/b/f");
        assert_eq!(t.object_at(b"/w/z/b/f"), Some(&h(9)));
        let gone = t.take_below(b"/w/z");
        assert_eq!(gone.len(), 2);
        assert_eq!(t.dir_count(), 2);
    }

    #[test]
    fn a_directory_replaced_at_its_path_is_returned_for_unmarking() {
        let mut t = Tree::default();
        t.insert_dir(h(1), recursive("/w/d", 1));
        let stale = t.insert_dir(h(2), recursive("/w/d", 1));
        assert_eq!(stale.map(|(h, _)| h), Some(h(1)));
        assert!(t.dir(&h(1)).is_none());
        assert_eq!(t.dir_at(b"/w/d").unwrap().0, &h(2));
    }

    #[test]
    fn names_of_objects_come_and_go_by_origin() {
        let mut t = Tree::default();
        let name = |p: &str, origin| Name {
            path: p.as_bytes().to_vec(),
            rule: 1,
            origin,
        };
        assert_eq!(t.add_name(h(5), name("/etc/passwd", Origin::Rule)), None);
        assert_eq!(t.add_name(h(5), name("/w/hard", Origin::Link)), None);
        assert_eq!(t.object(&h(5)).unwrap().len(), 2);
        // The rule's file is replaced (an atomic save): the old inode loses its last name.
        assert_eq!(t.add_name(h(6), name("/etc/passwd", Origin::Rule)), None);
        assert_eq!(t.object(&h(5)).unwrap().len(), 1);
        assert_eq!(t.forget_name(b"/w/hard"), Some(h(5)));
        assert!(t.object(&h(5)).is_none());
        assert_eq!(t.object_at(b"/etc/passwd"), Some(&h(6)));
        assert_eq!(t.forget_name(b"/etc/passwd"), Some(h(6)));
        assert_eq!(t.objects().count(), 0);
    }
}
