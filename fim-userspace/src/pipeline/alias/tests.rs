use std::os::unix::fs::MetadataExt;
use std::path::Path;

use fim_common::{Actor, Args, Backend, Target};

use super::*;

/// A baseline that knows some paths by inode.
struct Known(Vec<(u64, u64, Vec<u8>)>);

impl InodeNames for Known {
    fn paths_of_inode(&mut self, st_dev: u64, ino: u64) -> Vec<Vec<u8>> {
        self.0
            .iter()
            .filter(|(d, i, _)| *d == st_dev && *i == ino)
            .map(|(_, _, p)| p.clone())
            .collect()
    }
}

fn bytes(p: &Path) -> Vec<u8> {
    p.as_os_str().as_bytes().to_vec()
}

fn ids(p: &Path) -> (u32, u64, u64) {
    let meta = std::fs::symlink_metadata(p).unwrap();
    (kernel_dev(meta.dev()), meta.ino(), meta.dev())
}

fn event(kind: EventKind, path: &[u8], target: Target, record_flags: u16) -> Event {
    Event {
        kind,
        backend: Backend::Lsm,
        source: Source::Kernel,
        flags: record_flags,
        rule_id: 7,
        ktime_ns: 1,
        actor: Actor {
            tgid: 4242,
            pid: 4242,
            ..Actor::default()
        },
        target,
        args: Args::default(),
        path: path.to_vec(),
        path2: Vec::new(),
        used_path: None,
    }
}

struct Tree {
    _dir: tempfile::TempDir,
    watched: PathBuf,
    outside: PathBuf,
}

fn tree() -> Tree {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(dir.path()).unwrap();
    let watched = base.join("watched");
    let outside = base.join("outside");
    std::fs::create_dir_all(watched.join("sub")).unwrap();
    std::fs::create_dir(&outside).unwrap();
    Tree {
        _dir: dir,
        watched,
        outside,
    }
}

fn aliases(tree: &Tree, known: Vec<(u64, u64, Vec<u8>)>) -> Aliases {
    let mut a = Aliases::new(Box::new(Known(known)));
    a.set_roots(&[WatchRoot {
        path: tree.watched.clone(),
        rule_id: 7,
        recursive: true,
    }]);
    a
}

#[test]
fn a_name_created_through_another_mount_gets_its_watched_directory() {
    let t = tree();
    let (dev, dir_ino, _) = ids(&t.watched);
    let mut a = aliases(&t, Vec::new());
    let target = Target {
        dev,
        dir_ino,
        ..Target::default()
    };
    // The bind mount's path does not exist in this view at all.
    let out = a.resolve(&event(EventKind::Create, b"/elsewhere/new", target, 0));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].path, bytes(&t.watched.join("new")));
    assert_eq!(out[0].used_path.as_deref(), Some(&b"/elsewhere/new"[..]));
    assert_eq!(out[0].kind, EventKind::Create);
}

#[test]
fn a_subdirectory_is_found_in_the_baseline_by_its_inode() {
    let t = tree();
    let sub = t.watched.join("sub");
    let (dev, ino, st_dev) = ids(&sub);
    let mut a = aliases(&t, vec![(st_dev, ino, bytes(&sub))]);
    let target = Target {
        dev,
        dir_ino: ino,
        ..Target::default()
    };
    let out = a.resolve(&event(EventKind::Mkdir, b"/mnt/x/d", target, 0));
    assert_eq!(out[0].path, bytes(&sub.join("d")));
}

#[test]
fn a_write_through_a_hard_link_is_reported_at_every_watched_name() {
    let t = tree();
    let (a1, a2, outside) = (
        t.watched.join("a"),
        t.watched.join("sub/a2"),
        t.outside.join("b"),
    );
    std::fs::write(&a1, b"x").unwrap();
    std::fs::hard_link(&a1, &a2).unwrap();
    std::fs::hard_link(&a1, &outside).unwrap();
    let (dev, ino, st_dev) = ids(&a1);
    let (_, outside_dir, _) = ids(&t.outside);
    let stale = t.watched.join("stale");
    std::fs::write(&stale, b"another inode now").unwrap();
    let known = vec![
        (st_dev, ino, bytes(&a1)),
        (st_dev, ino, bytes(&a2)),
        // A row whose name now holds another file is not reported.
        (st_dev, ino, bytes(&stale)),
    ];
    let mut a = aliases(&t, known);
    let target = Target {
        dev,
        ino,
        mode: 0o100644,
        dir_ino: outside_dir,
        ..Target::default()
    };
    let flags = flags::TARGET_KNOWN | flags::VIA_LINK;
    let out = a.resolve(&event(
        EventKind::OpenWrite,
        &bytes(&outside),
        target,
        flags,
    ));
    let names: Vec<&[u8]> = out.iter().map(|e| e.path.as_slice()).collect();
    assert_eq!(names, [bytes(&a1).as_slice(), bytes(&a2).as_slice()]);
    assert!(
        out.iter()
            .all(|e| e.used_path.as_deref() == Some(&bytes(&outside)[..]))
    );

    // Removing the outside name changes only the link count.
    let out = a.resolve(&event(EventKind::Unlink, &bytes(&outside), target, flags));
    assert!(out.iter().all(|e| e.kind == EventKind::AttributesChanged));

    // A write through a1 also changes a2.
    a.set_linked([(st_dev, ino)], true);
    let out = a.other_names(&event(
        EventKind::Modified,
        &bytes(&a1),
        target,
        flags::TARGET_KNOWN,
    ));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].path, bytes(&a2));
    assert_eq!(out[0].used_path.as_deref(), Some(&bytes(&a1)[..]));
}

#[test]
fn a_file_bind_mounted_elsewhere_keeps_its_own_name() {
    let t = tree();
    let f = t.watched.join("config");
    std::fs::write(&f, b"x").unwrap();
    let (dev, ino, st_dev) = ids(&f);
    let (_, dir_ino, _) = ids(&t.watched);
    let mut a = aliases(&t, vec![(st_dev, ino, bytes(&f))]);
    let target = Target {
        dev,
        ino,
        mode: 0o100644,
        dir_ino,
        ..Target::default()
    };
    // Mounted at /srv/other-name: the leaf of the name used is not the watched one.
    let out = a.resolve(&event(
        EventKind::Chmod,
        b"/srv/other-name",
        target,
        flags::TARGET_KNOWN,
    ));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].path, bytes(&f));
}

#[test]
fn a_rename_resolves_both_names() {
    let t = tree();
    let old = t.watched.join("old");
    std::fs::write(&old, b"x").unwrap();
    let (dev, ino, st_dev) = ids(&old);
    let (_, dir_ino, _) = ids(&t.watched);
    // Renamed by now: the old name is gone, the baseline row recorded its inode.
    std::fs::rename(&old, t.watched.join("new")).unwrap();
    let mut a = aliases(&t, vec![(st_dev, ino, bytes(&old))]);
    let target = Target {
        dev,
        ino,
        mode: 0o100644,
        dir_ino,
        dir2_ino: dir_ino,
    };
    let mut e = event(EventKind::Rename, b"/b/old", target, flags::TARGET_KNOWN);
    e.path2 = b"/b/new".to_vec();
    let out = a.resolve(&e);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].path, bytes(&old));
    assert_eq!(out[0].path2, bytes(&t.watched.join("new")));
}

#[test]
fn the_actors_view_is_the_last_resort() {
    let t = tree();
    // /proc/4242/root of the actor is the directory above `watched` (a chroot, say); its
    // record has no directory inode (a path-only syscall).
    let procs = tempfile::tempdir().unwrap();
    std::fs::create_dir(procs.path().join("4242")).unwrap();
    std::os::unix::fs::symlink(t.watched.parent().unwrap(), procs.path().join("4242/root"))
        .unwrap();
    let mut a = aliases(&t, Vec::new()).with_proc_root(procs.path());
    let out = a.resolve(&event(
        EventKind::Create,
        b"/watched/sub/../f",
        Target::default(),
        0,
    ));
    // "/watched/sub/.." in the actor's view is the watched root.
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].path, bytes(&t.watched.join("f")));
}

#[test]
fn nothing_found_is_counted_not_guessed() {
    let t = tree();
    let mut a = aliases(&t, Vec::new());
    let target = Target {
        dev: 1,
        ino: 99,
        dir_ino: 98,
        mode: 0o100644,
        ..Target::default()
    };
    let out = a.resolve(&event(
        EventKind::OpenWrite,
        b"/nowhere/x",
        target,
        flags::TARGET_KNOWN,
    ));
    assert!(out.is_empty());
    assert_eq!(a.unresolved, 1);
    assert_eq!(a.roots_of(7), vec![t.watched.clone()]);
}

#[test]
fn only_kernel_decisions_on_inodes_are_candidates() {
    let mut e = event(EventKind::Create, b"/x", Target::default(), 0);
    assert!(Aliases::is_candidate(&e));
    e.flags = flags::FILTER_UNDECIDED;
    assert!(!Aliases::is_candidate(&e));
    e.flags = 0;
    e.rule_id = 0;
    assert!(!Aliases::is_candidate(&e));
    e.rule_id = 7;
    e.source = Source::Fanotify;
    assert!(!Aliases::is_candidate(&e));
}
