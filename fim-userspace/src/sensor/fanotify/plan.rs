//! What a set of roots asks to be marked: every directory a rule watches, and the files of
//! file rules with their directories.

use std::{
    collections::{BTreeMap, HashSet},
    os::unix::ffi::OsStrExt,
};

use super::marks::{DirMark, join, os_path};
use super::{WatchRoot, handle, mark_problem};
use crate::sensor::watch;

/// What the roots ask to be marked.
#[derive(Default)]
pub(super) struct Plan {
    pub dirs: BTreeMap<Vec<u8>, DirMark>,
    /// File rules' files.
    pub files: Vec<(Vec<u8>, u32)>,
}

impl Plan {
    pub fn of(roots: &[WatchRoot], problems: &mut Vec<String>) -> Plan {
        let mut plan = Plan::default();
        let mount_points: HashSet<Vec<u8>> = watch::mounts()
            .into_iter()
            .map(|m| m.mount_point.as_os_str().as_bytes().to_vec())
            .collect();
        for root in roots {
            let canonical = match std::fs::canonicalize(&root.path) {
                Ok(c) => c,
                Err(e) => {
                    problems.push(format!("{}: {e}", root.path.display()));
                    continue;
                }
            };
            let bytes = canonical.as_os_str().as_bytes().to_vec();
            if canonical.is_dir() {
                let mark = DirMark {
                    path: bytes.clone(),
                    recursive: root.recursive.then_some(root.rule_id),
                    children: (!root.recursive).then_some(root.rule_id),
                    root: true,
                    ..DirMark::default()
                };
                plan.add_dir(mark);
                if root.recursive {
                    plan.walk(&bytes, root.rule_id, &mount_points, problems);
                }
            } else if let (Some(parent), Some(name)) = (canonical.parent(), canonical.file_name()) {
                plan.add_dir(DirMark {
                    path: parent.as_os_str().as_bytes().to_vec(),
                    files: vec![(name.as_bytes().to_vec(), root.rule_id)],
                    ..DirMark::default()
                });
                plan.files.push((bytes, root.rule_id));
            }
        }
        plan
    }

    fn add_dir(&mut self, mark: DirMark) {
        match self.dirs.get_mut(&mark.path) {
            Some(known) => known.merge(mark),
            None => {
                self.dirs.insert(mark.path.clone(), mark);
            }
        }
    }

    /// Every directory below `top`, symlinks not followed. The walk goes on into a
    /// filesystem mounted below, unless fanotify cannot mark it (procfs, sysfs and other
    /// filesystems without file handles): that is said once, not for each directory.
    fn walk(
        &mut self,
        top: &[u8],
        rule: u32,
        mount_points: &HashSet<Vec<u8>>,
        problems: &mut Vec<String>,
    ) {
        let mut stack = vec![top.to_vec()];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(os_path(&dir)) {
                Ok(entries) => entries,
                Err(e) => {
                    problems.push(format!("{}: {e}", os_path(&dir).display()));
                    continue;
                }
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    let path = join(&dir, entry.file_name().as_bytes());
                    if mount_points.contains(&path)
                        && let Some(why) = unmarkable(&path)
                    {
                        problems.push(why);
                        continue;
                    }
                    self.add_dir(DirMark {
                        path: path.clone(),
                        recursive: Some(rule),
                        ..DirMark::default()
                    });
                    stack.push(path);
                }
            }
        }
    }
}

/// Why the filesystem mounted at `path` cannot be marked, if it cannot: it encodes no file
/// handles, or has no filesystem id. (Other errors show when the directory is marked.)
fn unmarkable(path: &[u8]) -> Option<String> {
    let error = match handle::open(os_path(path)) {
        Ok(opened) if opened.handle.fsid != 0 => return None,
        Ok(_) => std::io::Error::from_raw_os_error(libc::ENODEV),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENODEV)) => e,
        Err(_) => return None,
    };
    Some(mark_problem(os_path(path), &error))
}
