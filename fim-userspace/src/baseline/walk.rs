//! Walking the watch roots in byte order of the full paths, descending only where a rule could
//! match and never following symlinks (so symlink loops and links out of the tree are
//! harmless).
//!
//! Byte order is the order of the `baseline` table's primary key, so a scan can merge what it
//! finds with the stored rows as two sorted streams instead of loading either side whole.
//! Depth-first order with sorted names is not byte order (`/a/b-x` sorts between `/a/b` and
//! `/a/b/c`, since `-` < `/`), so the walk keeps its frontier in a min-heap keyed by full
//! path: a directory is listed when its own path is taken from the heap and its children go
//! back into it. Every child sorts after its directory, so paths come out in order; the heap
//! holds the not yet visited entries of the directories on the current path, the same as a
//! depth-first stack would, and nothing recurses (a hostile tree thousands of levels deep
//! cannot overflow a stack).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use super::entry::FileKind;
use crate::config::RuleSet;

/// A path found by the walk: one some rule covers, or a directory that could not be listed
/// (then what it holds is unknown, which the scan must say).
#[derive(Debug)]
pub struct Found {
    pub path: PathBuf,
    /// The type from the directory entry (from `lstat` for roots), used when `lstat` fails.
    pub kind_hint: Option<FileKind>,
    pub covered: bool,
    /// The covering rule keeps content versions (`upload_content`).
    pub upload_content: bool,
    /// For directories that could not be listed: the errno.
    pub list_errno: Option<i32>,
}

/// The walk as an iterator of [`Found`] in byte order of their paths, each path once (roots
/// that overlap are merged).
pub struct SortedWalk<'r> {
    rules: &'r RuleSet,
    /// Paths not yet visited with the type their directory entry gave.
    heap: BinaryHeap<Reverse<(Vec<u8>, Option<FileKind>)>>,
    /// Roots that could not even be examined, reported in order with the rest.
    failed_roots: Vec<(Vec<u8>, i32)>,
    last: Option<Vec<u8>>,
}

impl<'r> SortedWalk<'r> {
    /// Starts at these roots (absolute paths); roots that do not exist yield nothing.
    pub fn new(rules: &'r RuleSet, roots: &[PathBuf]) -> SortedWalk<'r> {
        let mut heap = BinaryHeap::new();
        let mut failed_roots = Vec::new();
        for root in roots {
            let bytes = root.as_os_str().as_bytes().to_vec();
            match std::fs::symlink_metadata(root) {
                Ok(meta) => heap.push(Reverse((bytes, kind_of(meta.file_type())))),
                // A rule may name a path that does not exist (yet): nothing to record.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => failed_roots.push((bytes, e.raw_os_error().unwrap_or(libc::EIO))),
            }
        }
        // Reported in byte order too, popped from the end.
        failed_roots.sort_by(|a, b| b.0.cmp(&a.0));
        SortedWalk {
            rules,
            heap,
            failed_roots,
            last: None,
        }
    }

    fn next_failed_root(&mut self) -> Option<Found> {
        let (path, errno) = self.failed_roots.pop()?;
        let path = PathBuf::from(OsString::from_vec(path));
        let rule = self.rules.match_path(&path);
        Some(Found {
            covered: rule.is_some(),
            upload_content: rule.is_some_and(|r| r.upload_content),
            path,
            kind_hint: None,
            list_errno: Some(errno),
        })
    }
}

impl Iterator for SortedWalk<'_> {
    type Item = Found;

    fn next(&mut self) -> Option<Found> {
        loop {
            let failed_first = match (self.failed_roots.last(), self.heap.peek()) {
                (Some(_), None) => true,
                (Some((failed, _)), Some(Reverse((next, _)))) => failed < next,
                (None, _) => false,
            };
            if failed_first {
                return self.next_failed_root();
            }
            let Reverse((path, kind)) = self.heap.pop()?;
            // The same path reached from two overlapping roots comes out twice in a row.
            if self.last.as_deref() == Some(path.as_slice()) {
                continue;
            }
            self.last = Some(path.clone());
            if let Some(found) = self.visit(path, kind) {
                return Some(found);
            }
        }
    }
}

impl SortedWalk<'_> {
    /// Looks at one path; a directory worth descending into is listed and its entries queued.
    fn visit(&mut self, path: Vec<u8>, kind: Option<FileKind>) -> Option<Found> {
        let rule = self.rules.match_bytes(&path);
        let covered = rule.is_some();
        let upload_content = rule.is_some_and(|r| r.upload_content);
        let descend = kind == Some(FileKind::Dir) && self.rules.should_descend(bytes_os(&path));
        let mut list_errno = None;
        if descend {
            list_errno = list_into(&path, &mut self.heap).err();
        }
        (covered || list_errno.is_some()).then(|| Found {
            path: PathBuf::from(OsString::from_vec(path)),
            kind_hint: kind,
            covered,
            upload_content,
            list_errno,
        })
    }
}

fn bytes_os(path: &[u8]) -> &std::ffi::OsStr {
    std::ffi::OsStr::from_bytes(path)
}

/// Lists a directory into the heap; the errno when it cannot be listed (completely).
fn list_into(
    dir: &[u8],
    heap: &mut BinaryHeap<Reverse<(Vec<u8>, Option<FileKind>)>>,
) -> Result<(), i32> {
    let entries = std::fs::read_dir(Path::new(bytes_os(dir)))
        .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
    let mut failed = None;
    for entry in entries {
        match entry {
            Ok(entry) => {
                // d_type (or lstat when the file system lacks it): never follows links.
                let kind = entry.file_type().ok().and_then(kind_of);
                heap.push(Reverse((join(dir, entry.file_name().as_bytes()), kind)));
            }
            Err(e) => failed = Some(e.raw_os_error().unwrap_or(libc::EIO)),
        }
    }
    failed.map_or(Ok(()), Err)
}

/// `dir/name` on raw bytes (no normalisation).
pub fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(dir.len() + 1 + name.len());
    bytes.extend_from_slice(dir);
    if bytes.last() != Some(&b'/') {
        bytes.push(b'/');
    }
    bytes.extend_from_slice(name);
    bytes
}

pub fn kind_of(file_type: std::fs::FileType) -> Option<FileKind> {
    use std::os::unix::fs::FileTypeExt;
    Some(if file_type.is_file() {
        FileKind::File
    } else if file_type.is_dir() {
        FileKind::Dir
    } else if file_type.is_symlink() {
        FileKind::Symlink
    } else if file_type.is_fifo() {
        FileKind::Fifo
    } else if file_type.is_socket() {
        FileKind::Socket
    } else if file_type.is_char_device() {
        FileKind::Char
    } else if file_type.is_block_device() {
        FileKind::Block
    } else {
        return None;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_come_out_in_byte_order_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in ["b", "b/c", "b-x", "b.d", "b0"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for f in ["b/c/f", "b-x/f", "b/z", "a"] {
            std::fs::write(root.join(f), b"x").unwrap();
        }
        let text = format!(
            "[[rule]]\nname = \"t\"\npath = \"{}\"\nrecursive = true\n",
            root.display()
        );
        let config = crate::config::Config::from_sources(&[crate::config::ConfigSource {
            path: PathBuf::from("t.toml"),
            text,
        }])
        .unwrap();
        // Overlapping roots: the tree and one of its subdirectories.
        let roots = [root.join("b"), root.to_path_buf()];
        let found: Vec<Vec<u8>> = SortedWalk::new(&config.rules, &roots)
            .map(|f| f.path.as_os_str().as_bytes().to_vec())
            .collect();
        let mut sorted = found.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(found, sorted);
        assert_eq!(found.len(), 1 + 5 + 4);
    }
}
