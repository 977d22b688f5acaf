//! Turning watched paths into the kernel's filter maps: (dev, inode) keys for the LSM and
//! fentry backends, FNV-1a hashes of path strings for the tracepoint backend.

use std::{
    collections::HashMap,
    ffi::OsStr,
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use fim_common::{WatchKey, WatchValue, record::fnv1a, watch};

/// One watched place.
#[derive(Clone, Debug)]
pub struct WatchRoot {
    pub path: PathBuf,
    pub rule_id: u32,
    /// For a directory: everything below it (true) or only its direct entries (false).
    pub recursive: bool,
}

/// The kernel's device number encoding (`MKDEV`: major << 20 | minor).
pub fn kernel_dev(st_dev: u64) -> u32 {
    let major = libc::major(st_dev);
    let minor = libc::minor(st_dev);
    (major << 20) | (minor & 0xfffff)
}

/// Everything the kernel maps should hold for a set of roots.
#[derive(Default, Debug)]
pub struct FilterEntries {
    pub inodes: Vec<(WatchKey, WatchValue)>,
    pub prefixes: Vec<(u64, WatchValue, Vec<u8>)>,
    /// Roots that could not be registered, with the reason (reported, never silently dropped).
    pub problems: Vec<String>,
}

/// A mount from /proc/self/mountinfo.
#[derive(Clone, Debug)]
pub struct Mount {
    pub dev: u32,
    pub root: Vec<u8>,
    pub mount_point: PathBuf,
}

pub fn mounts() -> Vec<Mount> {
    let Ok(text) = std::fs::read("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.split(|&b| b == b'\n')
        .filter_map(|line| {
            let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
            if fields.len() < 5 {
                return None;
            }
            let dev_text = std::str::from_utf8(fields[2]).ok()?;
            let (major, minor) = dev_text.split_once(':')?;
            let dev = (major.parse::<u32>().ok()? << 20) | minor.parse::<u32>().ok()?;
            Some(Mount {
                dev,
                root: unescape(fields[3]),
                mount_point: PathBuf::from(OsStr::from_bytes(&unescape(fields[4]))),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\'
            && i + 3 < field.len()
            && field[i + 1..i + 4].iter().all(u8::is_ascii_digit)
        {
            let value =
                (field[i + 1] - b'0') * 64 + (field[i + 2] - b'0') * 8 + (field[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(field[i]);
            i += 1;
        }
    }
    out
}

/// Top-level symlinks such as `/bin -> usr/bin` on merged-/usr systems: a syscall string may
/// name a watched file through them, so their spellings are registered as prefixes too.
fn top_level_aliases() -> Vec<(PathBuf, PathBuf)> {
    let Ok(entries) = std::fs::read_dir("/") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let link = e.path();
            let target = std::fs::read_link(&link).ok()?;
            let target = if target.is_absolute() {
                target
            } else {
                Path::new("/").join(target)
            };
            Some((link, target))
        })
        .collect()
}

pub fn entries(roots: &[WatchRoot]) -> FilterEntries {
    let mut out = FilterEntries::default();
    let all_mounts = mounts();
    let aliases = top_level_aliases();
    let mut seen: HashMap<WatchKey, usize> = HashMap::new();
    for root in roots {
        if let Err(e) = add_root(root, &all_mounts, &aliases, &mut out, &mut seen) {
            out.problems.push(format!("{}: {e:#}", root.path.display()));
        }
    }
    out.prefixes = merge_prefixes(std::mem::take(&mut out.prefixes));
    out
}

fn add_root(
    root: &WatchRoot,
    all_mounts: &[Mount],
    aliases: &[(PathBuf, PathBuf)],
    out: &mut FilterEntries,
    seen: &mut HashMap<WatchKey, usize>,
) -> Result<()> {
    let meta =
        std::fs::metadata(&root.path).with_context(|| format!("stat {}", root.path.display()))?;
    let canonical = std::fs::canonicalize(&root.path)
        .with_context(|| format!("resolving {}", root.path.display()))?;
    let flags = if meta.is_dir() {
        watch::SELF
            | if root.recursive {
                watch::RECURSIVE
            } else {
                watch::CHILDREN
            }
    } else {
        watch::SELF
    };
    let value = WatchValue {
        rule_id: root.rule_id,
        flags,
    };
    let mut add_inode = |dev: u32, ino: u64, value: WatchValue| {
        let key = WatchKey { dev, _pad: 0, ino };
        match seen.get(&key) {
            // Two roots on one inode: keep the widest flags.
            Some(&i) => out.inodes[i].1.flags |= value.flags,
            None => {
                seen.insert(key, out.inodes.len());
                out.inodes.push((key, value));
            }
        }
    };
    add_inode(kernel_dev(meta.dev()), meta.ino(), value);
    if meta.is_dir() && root.recursive {
        // The kernel walk stops at a filesystem root: register every mount below this root.
        for mount in all_mounts {
            if mount.mount_point.starts_with(&canonical)
                && mount.mount_point != canonical
                && let Ok(m) = std::fs::metadata(&mount.mount_point)
            {
                add_inode(kernel_dev(m.dev()), m.ino(), value);
            }
        }
    }
    let mut spellings = vec![canonical.clone()];
    if root.path != canonical && root.path.is_absolute() {
        spellings.push(root.path.clone());
    }
    for (link, target) in aliases {
        if let Ok(rest) = canonical.strip_prefix(target) {
            spellings.push(link.join(rest));
        }
    }
    for spelling in spellings {
        let bytes = spelling.as_os_str().as_bytes();
        let bytes = if bytes.len() > 1 {
            bytes.strip_suffix(b"/").unwrap_or(bytes)
        } else {
            bytes
        };
        out.prefixes.push((fnv1a(bytes), value, bytes.to_vec()));
        // Every proper ancestor ("/a", "/a/b" of "/a/b/c"), so the kernel can stop scanning
        // a path at its first prefix that leads to no watched root.
        for (i, _) in bytes
            .iter()
            .enumerate()
            .skip(1)
            .filter(|(_, b)| **b == b'/')
        {
            let ancestor = &bytes[..i];
            let value = WatchValue {
                rule_id: 0,
                flags: watch::ANCESTOR,
            };
            out.prefixes
                .push((fnv1a(ancestor), value, ancestor.to_vec()));
        }
    }
    Ok(())
}

/// One map entry per hash: a path that is both watched and an ancestor of another watched
/// path keeps both flags and its rule.
fn merge_prefixes(prefixes: Vec<(u64, WatchValue, Vec<u8>)>) -> Vec<(u64, WatchValue, Vec<u8>)> {
    let mut merged: Vec<(u64, WatchValue, Vec<u8>)> = Vec::with_capacity(prefixes.len());
    let mut index: HashMap<u64, usize> = HashMap::new();
    for (hash, value, bytes) in prefixes {
        match index.get(&hash) {
            Some(&i) => {
                let entry = &mut merged[i].1;
                entry.flags |= value.flags;
                if entry.rule_id == 0 {
                    entry.rule_id = value.rule_id;
                }
            }
            None => {
                index.insert(hash, merged.len());
                merged.push((hash, value, bytes));
            }
        }
    }
    merged
}

/// The mount point to prefix to a path the kernel built relative to the root of filesystem
/// `dev` (hooks that only know a dentry). `None` when no mount shows that filesystem's root.
pub fn mount_point_of(mounts: &[Mount], dev: u32) -> Option<&Path> {
    mounts
        .iter()
        .find(|m| m.dev == dev && m.root == b"/")
        .map(|m| m.mount_point.as_path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_dev_encoding_matches_mkdev() {
        // st_dev 8:1 (glibc encoding) -> kernel 8 << 20 | 1
        let st_dev = libc::makedev(8, 1);
        assert_eq!(kernel_dev(st_dev), (8 << 20) | 1);
        let st_dev = libc::makedev(259, 70000);
        assert_eq!(kernel_dev(st_dev), (259 << 20) | 70000);
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(
            unescape(br"/mnt/with\040space"),
            b"/mnt/with space".to_vec()
        );
        assert_eq!(unescape(br"/plain"), b"/plain".to_vec());
        assert_eq!(unescape(br"/tab\011x\134"), b"/tab\tx\\".to_vec());
    }

    #[test]
    fn directory_roots_get_recursive_or_children_flags() {
        let dir = std::env::temp_dir().join(format!("fim-watch-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("f");
        std::fs::write(&file, b"x").unwrap();
        let e = entries(&[
            WatchRoot {
                path: dir.clone(),
                rule_id: 7,
                recursive: true,
            },
            WatchRoot {
                path: file.clone(),
                rule_id: 8,
                recursive: false,
            },
            WatchRoot {
                path: dir.join("missing"),
                rule_id: 9,
                recursive: false,
            },
        ]);
        assert_eq!(
            e.inodes[0].1,
            WatchValue {
                rule_id: 7,
                flags: watch::SELF | watch::RECURSIVE
            }
        );
        assert_eq!(
            e.inodes[1].1,
            WatchValue {
                rule_id: 8,
                flags: watch::SELF
            }
        );
        assert_eq!(e.problems.len(), 1, "{:?}", e.problems);
        let canonical = std::fs::canonicalize(&dir).unwrap();
        assert!(
            e.prefixes
                .iter()
                .any(|(h, v, _)| *h == fnv1a(canonical.as_os_str().as_bytes()) && v.rule_id == 7)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ancestors_are_registered_once_and_keep_root_flags() {
        let prefixes = |bytes: &[u8], rule_id, flags| {
            (fnv1a(bytes), WatchValue { rule_id, flags }, bytes.to_vec())
        };
        let mut list = vec![prefixes(b"/a/b", 3, watch::SELF | watch::RECURSIVE)];
        list.push(prefixes(b"/a", 0, watch::ANCESTOR));
        list.push(prefixes(b"/a/b/c", 4, watch::SELF));
        list.push(prefixes(b"/a", 0, watch::ANCESTOR));
        list.push(prefixes(b"/a/b", 0, watch::ANCESTOR));
        let merged = merge_prefixes(list);
        assert_eq!(merged.len(), 3);
        assert_eq!(
            merged[0].1,
            WatchValue {
                rule_id: 3,
                flags: watch::SELF | watch::RECURSIVE | watch::ANCESTOR
            }
        );
        assert_eq!(
            merged[1].1,
            WatchValue {
                rule_id: 0,
                flags: watch::ANCESTOR
            }
        );
        assert_eq!(
            merged[2].1,
            WatchValue {
                rule_id: 4,
                flags: watch::SELF
            }
        );
    }
}
