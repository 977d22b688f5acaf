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
pub fn walk(rules: &RuleSet, roots: &[WatchRoot]) -> Vec<Found> {
    roots
        .par_iter()
        .flat_map(|root| {
            let mut found = Vec::new();
            match std::fs::symlink_metadata(&root.path) {
                Ok(meta) => {
                    let kind = kind_of(meta.file_type());
                    visit(rules, root.path.clone(), kind, &mut found);
                }
                // A rule may name a path that does not exist (yet): nothing to record.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => found.push(Found {
                    path: root.path.clone(),
                    kind_hint: None,
                    covered: rules.match_path(&root.path).is_some(),
                    list_errno: e.raw_os_error(),
                }),
            }
            found
        })
        .collect()
}

/// Records `path` if covered, then its children (in parallel) if it is a directory worth
/// descending into.
fn visit(rules: &RuleSet, path: PathBuf, kind: Option<FileKind>, found: &mut Vec<Found>) {
    let covered = rules.match_path(&path).is_some();
    if kind != Some(FileKind::Dir) || !rules.should_descend(&path) {
        if covered {
            found.push(Found {
                path,
                kind_hint: kind,
                covered,
                list_errno: None,
            });
        }
        return;
    }
    let mut children: Vec<(PathBuf, Option<FileKind>)> = Vec::new();
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
    if covered || list_errno.is_some() {
        found.push(Found {
            path,
            kind_hint: kind,
            covered,
            list_errno,
        });
    }
    let below: Vec<Found> = children
        .into_par_iter()
        .flat_map_iter(|(child, kind)| {
            let mut found = Vec::new();
            visit(rules, child, kind, &mut found);
            found
        })
        .collect();
    found.extend(below);
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
