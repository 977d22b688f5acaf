//! Records the kernel could not decide (a path string with `.`/`..` components or doubled
//! slashes from the tracepoint backend, or a dentry deeper than the walk limit): user space
//! normalises their paths and decides with the same roots, so nothing is dropped unseen and
//! nothing unwatched gets through.

use std::{
    ffi::OsStr,
    os::unix::ffi::{OsStrExt, OsStringExt},
    path::{Path, PathBuf},
};

use fim_common::flags;

use super::{Event, WatchRoot};

/// Whether a path string has no `.`, `..` or empty components (other than a lone "/"); the
/// first byte is taken for the leading '/'.
///
/// Every record's path goes through this, so it looks at eight bytes at a time and only at
/// the components after a '/' (a split iterator cost about 490 instructions for a path of 56
/// bytes, this about 240).
pub fn is_canonical(path: &[u8]) -> bool {
    if path.len() <= 1 {
        return true;
    }
    let s = &path[1..];
    if bad_component_at(s, 0) {
        return false;
    }
    const ONES: u64 = 0x0101_0101_0101_0101;
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let mut chunks = s.chunks_exact(8);
    let mut base = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word) ^ (ONES * u64::from(b'/'));
        // The high bit of each byte of x that is zero, that is of each '/' of the chunk.
        let mut slashes = !(((x & LOW7) + LOW7) | x | LOW7);
        while slashes != 0 {
            let at = base + (slashes.trailing_zeros() / 8) as usize;
            if bad_component_at(s, at + 1) {
                return false;
            }
            slashes &= slashes - 1;
        }
        base += 8;
    }
    for (i, &b) in chunks.remainder().iter().enumerate() {
        if b == b'/' && bad_component_at(s, base + i + 1) {
            return false;
        }
    }
    true
}

/// Whether the component of `s` that starts at `at` is empty, `.` or `..`.
fn bad_component_at(s: &[u8], at: usize) -> bool {
    matches!(
        s.get(at..),
        None | Some(
            [] | [b'/', ..] | [b'.'] | [b'.', b'/', ..] | [b'.', b'.'] | [b'.', b'.', b'/', ..]
        )
    )
}

/// The absolute path `path` names: the deepest existing directory above the last component is
/// resolved through the filesystem (so `..` after a symlink goes where the kernel went), the
/// rest lexically.
pub fn normalize(path: &[u8]) -> Vec<u8> {
    let lexical = lexical(path);
    let as_path = Path::new(OsStr::from_bytes(path));
    if let (Some(parent), Some(name)) = (as_path.parent(), as_path.file_name())
        && name != ".."
        && name != "."
        && let Ok(real) = std::fs::canonicalize(parent)
    {
        return real.join(name).into_os_string().into_vec();
    }
    lexical
}

/// `.` dropped, `..` pops a component (never above "/"), doubled slashes collapsed.
fn lexical(path: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for component in path.split(|&b| b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return b"/".to_vec();
    }
    let mut out = Vec::with_capacity(path.len());
    for part in parts {
        out.push(b'/');
        out.extend_from_slice(part);
    }
    out
}

/// The rule of the root `path` lies under, if any. Roots match on component boundaries, in
/// their canonical spelling and as written.
pub fn rule_for(path: &[u8], roots: &[(PathBuf, u32, bool)]) -> Option<u32> {
    let path = Path::new(OsStr::from_bytes(path));
    roots
        .iter()
        .filter(|(root, _, recursive)| {
            path == root
                || if *recursive {
                    path.starts_with(root)
                } else {
                    path.parent() == Some(root.as_path())
                }
        })
        // The deepest root wins, like the kernel's walk up from the object.
        .max_by_key(|(root, _, _)| root.as_os_str().len())
        .map(|(_, rule, _)| *rule)
}

/// The roots as (path, rule, recursive), with canonical spellings added.
pub fn spellings(roots: &[WatchRoot]) -> Vec<(PathBuf, u32, bool)> {
    let mut out = Vec::new();
    for root in roots {
        out.push((root.path.clone(), root.rule_id, root.recursive));
        if let Ok(canonical) = std::fs::canonicalize(&root.path)
            && canonical != root.path
        {
            out.push((canonical, root.rule_id, root.recursive));
        }
    }
    out
}

/// Decides an undecided record: `false` to drop it. Truncated paths cannot be decided and are
/// kept (reported as truncated, never guessed away).
/// Also cleans the paths of decided records (a syscall string such as `/etc/./passwd` under a
/// watched root is decided in the kernel but reported as `/etc/passwd`).
pub fn decide(event: &mut Event, roots: &[(PathBuf, u32, bool)]) -> bool {
    if event.truncated() || event.flags & flags::PATH_FS_RELATIVE != 0 {
        return true;
    }
    if !is_canonical(&event.path) {
        event.path = normalize(&event.path);
    }
    let two_paths = event.flags & flags::PATH2_IS_STRING == 0 && !event.path2.is_empty();
    if two_paths && !is_canonical(&event.path2) {
        event.path2 = normalize(&event.path2);
    }
    if event.flags & flags::FILTER_UNDECIDED == 0 {
        return true;
    }
    let rule = rule_for(&event.path, roots).or_else(|| {
        if two_paths {
            rule_for(&event.path2, roots)
        } else {
            None
        }
    });
    match rule {
        Some(rule) => {
            event.rule_id = rule;
            event.flags &= !flags::FILTER_UNDECIDED;
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_paths_are_recognised() {
        assert!(is_canonical(b"/"));
        assert!(is_canonical(b"/etc/passwd"));
        assert!(is_canonical(b"/etc/..x/...y/.z"));
        assert!(!is_canonical(b"/etc/./passwd"));
        assert!(!is_canonical(b"/etc/../passwd"));
        assert!(!is_canonical(b"/etc//passwd"));
        assert!(!is_canonical(b"/etc/.."));
        assert!(!is_canonical(b"/etc/."));
        assert!(!is_canonical(b"/etc/"));
        assert!(!is_canonical(b"/a-long-component/b-long-component/./c"));
        assert!(is_canonical(b"/a-long-component/b-long-component/.c"));
    }

    /// Against the plain definition, for every string of up to 10 bytes over 'a', '.' and '/'
    /// (the word-at-a-time scan has a chunk edge at 9 bytes).
    #[test]
    fn canonical_check_matches_its_definition() {
        let by_definition = |path: &[u8]| {
            path.len() <= 1
                || !path[1..]
                    .split(|&b| b == b'/')
                    .any(|c| c.is_empty() || c == b"." || c == b"..")
        };
        let alphabet = [b'a', b'.', b'/'];
        for len in 0..=10u32 {
            for mut n in 0..3u32.pow(len) {
                let mut path = Vec::new();
                for _ in 0..len {
                    path.push(alphabet[(n % 3) as usize]);
                    n /= 3;
                }
                assert_eq!(
                    is_canonical(&path),
                    by_definition(&path),
                    "{:?}",
                    String::from_utf8_lossy(&path)
                );
            }
        }
    }

    #[test]
    fn lexical_normalisation() {
        assert_eq!(lexical(b"/a/./b//c/../d"), b"/a/b/d");
        assert_eq!(lexical(b"/../../x"), b"/x");
        assert_eq!(lexical(b"/a/.."), b"/");
    }

    #[test]
    fn dot_dot_after_a_symlink_follows_the_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real/deep");
        std::fs::create_dir_all(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
        // link/.. is real/, not dir/.
        let path = dir.path().join("link/../file");
        let normal = normalize(path.as_os_str().as_bytes());
        let expected = std::fs::canonicalize(dir.path().join("real"))
            .unwrap()
            .join("file");
        assert_eq!(normal, expected.as_os_str().as_bytes());
    }

    #[test]
    fn roots_match_on_component_boundaries() {
        let roots = vec![
            (PathBuf::from("/etc"), 1, true),
            (PathBuf::from("/etc/ssh"), 2, true),
            (PathBuf::from("/root/.ssh"), 3, false),
        ];
        assert_eq!(rule_for(b"/etc/passwd", &roots), Some(1));
        assert_eq!(rule_for(b"/etc/ssh/sshd_config", &roots), Some(2));
        assert_eq!(rule_for(b"/etcetera/x", &roots), None);
        assert_eq!(rule_for(b"/root/.ssh/authorized_keys", &roots), Some(3));
        assert_eq!(rule_for(b"/root/.ssh/sub/x", &roots), None);
        assert_eq!(rule_for(b"/root/.ssh", &roots), Some(3));
    }
}
