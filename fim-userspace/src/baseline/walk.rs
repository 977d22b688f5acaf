//! Walking the watch roots in parallel, descending only where a rule could match and never
//! following symlinks (so symlink loops and links out of the tree are harmless).

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::entry::FileKind;
use crate::config::{RuleSet, WatchRoot};

/// A path found by the walk: one some rule covers, or a directory that could not be listed
/// (then what it holds is unknown, which the scan must say).
#[derive(Debug)]
pub struct Found {
    pub path: PathBuf,
    /// The type from the directory entry (`None` for roots), used when `lstat` fails.
    pub kind_hint: Option<FileKind>,
    pub covered: bool,
    /// For directories that could not be listed: the errno.
    pub list_errno: Option<i32>,
}

/// All paths under the roots that an enabled rule covers (roots included when covered).
///
/// Breadth first, one level at a time with the directories of a level listed in parallel: no
/// recursion, so a hostile tree thousands of levels deep cannot overflow a stack.
pub fn walk(rules: &RuleSet, roots: &[WatchRoot]) -> Vec<Found> {
    let mut found = Vec::new();
    let mut level: Vec<(PathBuf, Option<FileKind>)> = Vec::new();
    for root in roots {
        match std::fs::symlink_metadata(&root.path) {
            Ok(meta) => level.push((root.path.clone(), kind_of(meta.file_type()))),
            // A rule may name a path that does not exist (yet): nothing to record.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => found.push(Found {
                path: root.path.clone(),
                kind_hint: None,
                covered: rules.match_path(&root.path).is_some(),
                list_errno: e.raw_os_error(),
            }),
        }
    }
    while !level.is_empty() {
        let visited: Vec<Visited> = level
            .into_par_iter()
            .map(|(path, kind)| visit(rules, path, kind))
            .collect();
        level = Vec::new();
        for visited in visited {
            found.extend(visited.entry);
            level.extend(visited.children);
        }
    }
    found
}

/// What looking at one path gave: whether to record it, and the children to visit next.
struct Visited {
    entry: Option<Found>,
    children: Vec<(PathBuf, Option<FileKind>)>,
}

/// Looks at one path; a directory worth descending into is listed.
fn visit(rules: &RuleSet, path: PathBuf, kind: Option<FileKind>) -> Visited {
    let covered = rules.match_path(&path).is_some();
    if kind != Some(FileKind::Dir) || !rules.should_descend(&path) {
        let entry = covered.then_some(Found {
            path,
            kind_hint: kind,
            covered,
            list_errno: None,
        });
        return Visited {
            entry,
            children: Vec::new(),
        };
    }
    let mut children = Vec::new();
    let mut list_errno = None;
    match std::fs::read_dir(&path) {
        Ok(entries) => {
            for entry in entries {
                match entry {
                    Ok(entry) => {
                        // d_type (or lstat when the file system lacks it): never follows links.
                        let kind = entry.file_type().ok().and_then(kind_of);
                        children.push((join(&path, &entry.file_name()), kind));
                    }
                    Err(e) => list_errno = e.raw_os_error(),
                }
            }
        }
        Err(e) => list_errno = e.raw_os_error(),
    }
    let entry = (covered || list_errno.is_some()).then_some(Found {
        path,
        kind_hint: kind,
        covered,
        list_errno,
    });
    Visited { entry, children }
}

/// `dir/name` on raw bytes (PathBuf::join would be fine too; this avoids any normalisation).
fn join(dir: &Path, name: &OsString) -> PathBuf {
    let mut bytes = dir.as_os_str().as_bytes().to_vec();
    if bytes.last() != Some(&b'/') {
        bytes.push(b'/');
    }
    bytes.extend_from_slice(name.as_bytes());
    PathBuf::from(OsString::from_vec(bytes))
}

fn kind_of(file_type: std::fs::FileType) -> Option<FileKind> {
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
