//! The pipeline's logic with injected records, an in-memory baseline and a fake filesystem.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use fim_common::{Actor as KernelActor, Args, Target, flags};

use super::*;
use crate::baseline::{BaselineEntry, DriftItem, EntryFlags, FileKind};
use crate::config::{Authorized, PathPattern, PathType, Rule, RuleSet};
use crate::sensor::{Backend, Event, EventKind};
use crate::store::{StoreOp, activity};

/// The fake filesystem: path -> (content digest byte, size, mode).
type Files = Arc<Mutex<HashMap<Vec<u8>, (u8, u64, u32)>>>;

fn entry(path: &[u8], (digest, size, mode): (u8, u64, u32)) -> BaselineEntry {
    BaselineEntry {
        path: path.to_vec(),
        kind: FileKind::File,
        size,
        mode,
        uid: 0,
        gid: 0,
        mtime_ns: 0,
        ctime_ns: 0,
        inode: 1,
        dev: 1,
        blake3: Some([digest; 32]),
        xattr_digest: None,
        link_target: None,
        flags: EntryFlags::default(),
        errno: None,
        scanned_at_ns: 0,
        nlink: 0,
    }
}

struct FakeFs(Files);

impl Examine for FakeFs {
    fn exists(&mut self, path: &[u8]) -> bool {
        self.0.lock().unwrap().contains_key(path)
    }

    fn examine(
        &mut self,
        path: &[u8],
        _: Option<&BaselineEntry>,
        _: Option<u64>,
        _: bool,
    ) -> Examined {
        match self.0.lock().unwrap().get(path) {
            Some(state) => Examined::Present {
                entry: entry(path, *state),
                content: None,
            },
            None => Examined::Vanished,
        }
    }
}

struct MemoryBaseline(Arc<Mutex<HashMap<Vec<u8>, BaselineEntry>>>);

impl BaselineLookup for MemoryBaseline {
    fn get(&mut self, path: &[u8]) -> anyhow::Result<Option<BaselineEntry>> {
        Ok(self.0.lock().unwrap().get(path).cloned())
    }
}

struct Harness {
    files: Files,
    stored: Arc<Mutex<HashMap<Vec<u8>, BaselineEntry>>>,
    classifier: Classifier,
    assembler: Assembler,
    maker: ChangeMaker,
    ktime: u64,
    /// Where the records fed come from.
    source: crate::sensor::Source,
}

fn rules() -> RuleSet {
    RuleSet::new(vec![Rule {
        name: "etc".into(),
        group: "system".into(),
        path: PathPattern::new("/etc").unwrap(),
        path_type: PathType::Folder,
        recursive: true,
        enabled: true,
        upload_content: false,
        ignore: Vec::new(),
    }])
}

impl Harness {
    fn new() -> Harness {
        let files: Files = Arc::default();
        let stored: Arc<Mutex<HashMap<Vec<u8>, BaselineEntry>>> = Arc::default();
        Harness {
            files: Arc::clone(&files),
            stored: Arc::clone(&stored),
            classifier: Classifier::new(Arc::new(rules()), Authorized::default(), Vec::new()),
            assembler: Assembler::new(0),
            maker: ChangeMaker::new(
                Box::new(MemoryBaseline(stored)),
                Box::new(FakeFs(files)),
                "host".into(),
                1 << 20,
            ),
            ktime: 1_000_000_000,
            source: crate::sensor::Source::Kernel,
        }
    }

    fn baseline(&self, path: &str, state: (u8, u64, u32)) {
        self.files.lock().unwrap().insert(path.into(), state);
        self.stored
            .lock()
            .unwrap()
            .insert(path.into(), entry(path.as_bytes(), state));
    }

    fn disk(&self, path: &str, state: Option<(u8, u64, u32)>) {
        let mut files = self.files.lock().unwrap();
        match state {
            Some(s) => files.insert(path.into(), s),
            None => files.remove(path.as_bytes()),
        };
    }

    /// Feeds one record; returns the changes of the jobs it completed.
    fn feed(
        &mut self,
        kind: EventKind,
        path: &str,
        path2: &str,
        open_flags: u32,
    ) -> Vec<crate::store::ChangeRecord> {
        let record_flags = if kind == EventKind::SetXattr {
            flags::PATH2_IS_STRING
        } else {
            0
        };
        self.feed_flagged(kind, path, path2, open_flags, record_flags)
    }

    /// [`Harness::feed`] with the record's flags given.
    fn feed_flagged(
        &mut self,
        kind: EventKind,
        path: &str,
        path2: &str,
        open_flags: u32,
        record_flags: u16,
    ) -> Vec<crate::store::ChangeRecord> {
        self.ktime += 1_000_000;
        let event = Event {
            kind,
            backend: Backend::Tracepoint,
            source: self.source,
            flags: record_flags,
            rule_id: 1,
            ktime_ns: self.ktime,
            actor: KernelActor {
                tgid: 4242,
                pid: 4242,
                ppid: 1,
                uid: 1000,
                loginuid: u32::MAX,
                ..KernelActor::default()
            },
            target: Target::default(),
            args: Args {
                flags: open_flags,
                ..Args::default()
            },
            path: path.as_bytes().to_vec(),
            path2: path2.as_bytes().to_vec(),
            used_path: None,
        };
        let mut jobs = Vec::new();
        match self.classifier.classify(event, &mut KernelOnly) {
            Verdict::Report(o) => self.assembler.observe(*o, &mut jobs),
            Verdict::Reports(os) => os
                .into_iter()
                .for_each(|o| self.assembler.observe(o, &mut jobs)),
            Verdict::NoRule | Verdict::Excluded | Verdict::Exec | Verdict::Unresolved(_) => {}
        }
        self.run(jobs)
    }

    fn run(&mut self, jobs: Vec<Job>) -> Vec<crate::store::ChangeRecord> {
        let mut out = Vec::new();
        for job in jobs {
            let made = self.maker.make(&job);
            // The store applies the baseline ops (as the writer would).
            for op in &made.ops {
                match op {
                    StoreOp::BaselineUpsert(e) => {
                        self.stored
                            .lock()
                            .unwrap()
                            .insert(e.path.clone(), e.clone());
                    }
                    StoreOp::BaselineRemove(p) => {
                        self.stored.lock().unwrap().remove(p);
                    }
                    StoreOp::BaselineMoveBelow { from, to } => {
                        let mut stored = self.stored.lock().unwrap();
                        let mut below = from.clone();
                        below.push(b'/');
                        let moved: Vec<Vec<u8>> = stored
                            .keys()
                            .filter(|p| p.starts_with(&below))
                            .cloned()
                            .collect();
                        for path in moved {
                            let mut e = stored.remove(&path).unwrap();
                            if !to.is_empty() {
                                e.path = [to.as_slice(), &path[from.len()..]].concat();
                                stored.insert(e.path.clone(), e);
                            }
                        }
                    }
                    _ => {}
                }
            }
            out.extend(made.changes);
        }
        out
    }

    fn tick(&mut self, after_ms: u64) -> Vec<crate::store::ChangeRecord> {
        self.ktime += after_ms * 1_000_000;
        let mut jobs = Vec::new();
        self.assembler.tick(self.ktime, &mut jobs);
        self.run(jobs)
    }
}

const O_WRONLY: u32 = libc::O_WRONLY as u32;

#[test]
fn writes_of_one_open_close_become_one_update_with_previous_values() {
    let mut h = Harness::new();
    h.baseline("/etc/passwd", (1, 10, 0o644));
    assert!(
        h.feed(EventKind::OpenWrite, "/etc/passwd", "", O_WRONLY)
            .is_empty()
    );
    h.disk("/etc/passwd", Some((2, 12, 0o644)));
    let changes = h.feed(EventKind::Modified, "/etc/passwd", "", 0);
    assert_eq!(changes.len(), 1);
    let c = &changes[0];
    assert_eq!(c.activity, activity::UPDATE);
    assert_eq!(c.changed, ["content", "size"]);
    assert_eq!(c.previous.as_ref().unwrap()["size"], 10);
    assert_eq!(c.hash_before.as_deref(), Some(&"01".repeat(32)[..]));
    assert_eq!(c.hash_after.as_deref(), Some(&"02".repeat(32)[..]));
    assert_eq!(c.actor.pid, Some(4242));
    assert_eq!(c.rule.as_deref(), Some("etc"));
    assert_eq!(c.group.as_deref(), Some("system"));
    // The baseline now holds the new state: the same write again reports nothing.
    h.feed(EventKind::OpenWrite, "/etc/passwd", "", O_WRONLY);
    assert!(h.feed(EventKind::Modified, "/etc/passwd", "", 0).is_empty());
}

#[test]
fn two_writers_are_reported_once_after_the_last_close() {
    let mut h = Harness::new();
    h.baseline("/etc/hosts", (1, 10, 0o644));
    h.feed(EventKind::OpenWrite, "/etc/hosts", "", O_WRONLY);
    h.feed(EventKind::OpenWrite, "/etc/hosts", "", O_WRONLY);
    h.disk("/etc/hosts", Some((3, 10, 0o644)));
    assert!(h.feed(EventKind::Modified, "/etc/hosts", "", 0).is_empty());
    let changes = h.feed(EventKind::Modified, "/etc/hosts", "", 0);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].changed, ["content"]);
}

#[test]
fn a_created_file_is_one_create_with_its_hash() {
    let mut h = Harness::new();
    h.disk("/etc/new", Some((5, 3, 0o600)));
    assert!(
        h.feed(
            EventKind::Create,
            "/etc/new",
            "",
            O_WRONLY | libc::O_CREAT as u32
        )
        .is_empty()
    );
    let changes = h.feed(EventKind::Modified, "/etc/new", "", 0);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].activity, activity::CREATE);
    assert_eq!(changes[0].hash_after.as_deref(), Some(&"05".repeat(32)[..]));
    assert_eq!(changes[0].size, Some(3));
}

#[test]
fn a_creation_without_a_writer_settles_on_the_tick() {
    let mut h = Harness::new();
    h.disk("/etc/fifo", Some((0, 0, 0o600)));
    assert!(h.feed(EventKind::Create, "/etc/fifo", "", 0).is_empty());
    assert!(h.tick(50).is_empty(), "reported before it settled");
    let changes = h.tick(300);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].activity, activity::CREATE);
}

#[test]
fn a_truncated_path_is_reported_once_at_once_not_every_few_seconds() {
    let mut h = Harness::new();
    // The creating open's path did not fit (the tracepoint backend keeps its start); the
    // close comes with the other end of the path, which no rule covers and never matches.
    let cut = format!("/etc/{}", "d/".repeat(40));
    let changes = h.feed_flagged(
        EventKind::Create,
        &cut,
        "",
        O_WRONLY | libc::O_CREAT as u32,
        flags::PATH1_TRUNCATED,
    );
    assert_eq!(changes.len(), 1, "reported when it happened");
    assert_eq!(changes[0].activity, activity::CREATE);
    assert!(changes[0].truncated_path);
    assert!(
        changes[0].hash_after.is_none(),
        "an incomplete path is not examined"
    );
    assert!(
        h.feed_flagged(
            EventKind::Modified,
            "/d/d/d/file",
            "",
            0,
            flags::PATH1_TRUNCATED
        )
        .is_empty()
    );
    assert_eq!(h.assembler.open_sessions(), 0, "nothing waits for a close");
    for _ in 0..3 {
        assert!(h.tick(6000).is_empty(), "reported again");
    }
    // A write through an open whose path did not fit: one update, at once.
    let changes = h.feed_flagged(
        EventKind::OpenWrite,
        &cut,
        "",
        O_WRONLY,
        flags::PATH1_TRUNCATED,
    );
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].activity, activity::UPDATE);
    assert_eq!(h.assembler.open_sessions(), 0);
    // Not examined, but the type the record gives is said.
    let changes = h.feed_flagged(EventKind::Mkdir, &cut, "", 0, flags::PATH1_TRUNCATED);
    assert_eq!(changes.len(), 1);
    assert!(changes[0].truncated_path);
    assert_eq!(changes[0].kind, Some(FileKind::Dir));
}

#[test]
fn a_long_writer_is_reported_periodically() {
    let mut h = Harness::new();
    h.baseline("/etc/log", (1, 1, 0o644));
    h.feed(EventKind::OpenWrite, "/etc/log", "", O_WRONLY);
    h.disk("/etc/log", Some((2, 2, 0o644)));
    assert!(h.tick(1000).is_empty());
    let changes = h.tick(5000);
    assert_eq!(
        changes.len(),
        1,
        "a writer holding the file open must not hide changes"
    );
    assert_eq!(changes[0].activity, activity::UPDATE);
}

#[test]
fn created_then_removed_before_settling_is_still_reported() {
    let mut h = Harness::new();
    h.feed(
        EventKind::Create,
        "/etc/tmp",
        "",
        O_WRONLY | libc::O_CREAT as u32,
    );
    let changes = h.feed(EventKind::Unlink, "/etc/tmp", "", 0);
    let kinds: Vec<i64> = changes.iter().map(|c| c.activity).collect();
    assert_eq!(kinds, [activity::CREATE, activity::DELETE]);
}

/// The creation is reported from the kernel record and the path is gone: the store keeps a
/// placeholder until the delete record comes, so a crash in between cannot leave the store
/// believing only in the creation (the next scan reports the placeholder's path gone).
#[test]
fn a_creation_gone_before_examination_leaves_a_placeholder_until_its_delete() {
    let mut h = Harness::new();
    // mknod: a creation without a writer.
    h.feed(EventKind::Create, "/etc/tmp", "", 0);
    // Settled (the 200 ms) with the file already gone, before its unlink record is read.
    let changes = h.tick(300);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].activity, activity::CREATE);
    let placeholder = h.stored.lock().unwrap().get(&b"/etc/tmp"[..]).cloned();
    let placeholder = placeholder.expect("a placeholder row");
    assert!(placeholder.flags.has(EntryFlags::VANISHED));
    // What the next scan would conclude, if fim were killed now.
    match DriftItem::between(Some(placeholder.clone()), None) {
        Some(DriftItem::Removed(_)) => {}
        other => panic!("{other:?}"),
    }
    let recreated = entry(b"/etc/tmp", (1, 1, 0o644));
    match DriftItem::between(Some(placeholder), Some(recreated)) {
        Some(DriftItem::Added(_)) => {}
        other => panic!("{other:?}"),
    }
    // The delete record arrives: reported, placeholder gone, no previous values invented.
    let changes = h.feed(EventKind::Unlink, "/etc/tmp", "", 0);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].activity, activity::DELETE);
    assert!(changes[0].previous.is_none());
    assert!(h.stored.lock().unwrap().get(&b"/etc/tmp"[..]).is_none());
}

#[test]
fn delete_carries_the_previous_values() {
    let mut h = Harness::new();
    h.baseline("/etc/shadow", (9, 100, 0o640));
    h.disk("/etc/shadow", None);
    let changes = h.feed(EventKind::Unlink, "/etc/shadow", "", 0);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].activity, activity::DELETE);
    assert_eq!(changes[0].previous.as_ref().unwrap()["mode"], 0o640);
    assert!(h.stored.lock().unwrap().get(&b"/etc/shadow"[..]).is_none());
}

#[test]
fn atomic_save_is_a_rename_that_lists_what_changed_in_the_target() {
    let mut h = Harness::new();
    h.baseline("/etc/conf", (1, 10, 0o644));
    // An editor writes a temp file, then renames it over the original.
    h.disk("/etc/.conf.swp", Some((2, 11, 0o644)));
    h.feed(
        EventKind::Create,
        "/etc/.conf.swp",
        "",
        O_WRONLY | libc::O_CREAT as u32,
    );
    let created = h.feed(EventKind::Modified, "/etc/.conf.swp", "", 0);
    assert_eq!(created.len(), 1);
    h.disk("/etc/.conf.swp", None);
    h.disk("/etc/conf", Some((2, 11, 0o644)));
    let changes = h.feed(EventKind::Rename, "/etc/.conf.swp", "/etc/conf", 0);
    assert_eq!(changes.len(), 1);
    let c = &changes[0];
    assert_eq!(c.activity, activity::RENAME);
    assert_eq!(c.new_path.as_deref(), Some(&b"/etc/conf"[..]));
    assert_eq!(c.changed, ["content", "size"]);
    assert_eq!(c.previous.as_ref().unwrap()["size"], 10);
    let stored = h.stored.lock().unwrap();
    assert!(stored.get(&b"/etc/.conf.swp"[..]).is_none());
    assert_eq!(stored.get(&b"/etc/conf"[..]).unwrap().size, 11);
}

#[test]
fn a_renamed_directory_takes_its_entries_along() {
    let mut h = Harness::new();
    h.baseline("/etc/dir", (0, 4096, 0o755));
    h.baseline("/etc/dir/f", (1, 1, 0o644));
    h.stored
        .lock()
        .unwrap()
        .get_mut(&b"/etc/dir"[..])
        .unwrap()
        .kind = FileKind::Dir;
    h.disk("/etc/dir", None);
    h.disk("/etc/dir/f", None);
    h.disk("/etc/dir2", Some((0, 4096, 0o755)));
    h.disk("/etc/dir2/f", Some((1, 1, 0o644)));
    let changes = h.feed(EventKind::Rename, "/etc/dir", "/etc/dir2", 0);
    assert_eq!(changes.len(), 1);
    let stored = h.stored.lock().unwrap();
    let mut paths: Vec<&[u8]> = stored.keys().map(Vec::as_slice).collect();
    paths.sort();
    assert_eq!(paths, [&b"/etc/dir2"[..], &b"/etc/dir2/f"[..]]);
    drop(stored);
    // A later write below the new name compares with the moved entry: an update, not a create.
    h.disk("/etc/dir2/f", Some((2, 2, 0o644)));
    h.feed(EventKind::OpenWrite, "/etc/dir2/f", "", O_WRONLY);
    let changes = h.feed(EventKind::Modified, "/etc/dir2/f", "", 0);
    assert_eq!(changes[0].activity, activity::UPDATE);
}

#[test]
fn rename_out_of_the_watched_tree_drops_the_baseline_entry() {
    let mut h = Harness::new();
    h.baseline("/etc/a", (1, 1, 0o644));
    h.disk("/etc/a", None);
    let changes = h.feed(EventKind::Rename, "/etc/a", "/tmp/a", 0);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].rule.as_deref(), Some("etc"));
    assert!(h.stored.lock().unwrap().is_empty());
}

#[test]
fn chmod_to_the_same_mode_reports_nothing_and_a_real_one_reports_mode() {
    let mut h = Harness::new();
    h.baseline("/etc/x", (1, 1, 0o644));
    assert!(h.feed(EventKind::Chmod, "/etc/x", "", 0).is_empty());
    h.disk("/etc/x", Some((1, 1, 0o600)));
    let changes = h.feed(EventKind::Chmod, "/etc/x", "", 0);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].activity, activity::SET_ATTRIBUTES);
    assert_eq!(changes[0].changed, ["mode"]);
}

#[test]
fn a_change_to_a_path_gone_before_examination_is_still_reported() {
    let mut h = Harness::new();
    h.baseline("/etc/x", (1, 1, 0o644));
    // chmod, then the file is removed before the worker looks at it.
    h.disk("/etc/x", None);
    let changes = h.feed(EventKind::Chmod, "/etc/x", "", 0);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].activity, activity::SET_ATTRIBUTES);
    assert_eq!(changes[0].changed, ["mode"]);
    assert_eq!(changes[0].previous.as_ref().unwrap()["mode"], 0o644);
}

#[test]
fn security_xattrs_are_set_security() {
    let mut h = Harness::new();
    h.baseline("/etc/x", (1, 1, 0o644));
    h.disk("/etc/x", Some((1, 1, 0o600)));
    let changes = h.feed(EventKind::SetXattr, "/etc/x", "security.selinux", 0);
    assert_eq!(changes[0].activity, activity::SET_SECURITY);
}

#[test]
fn paths_no_rule_covers_produce_nothing() {
    let mut h = Harness::new();
    h.disk("/var/tmp/x", Some((1, 1, 0o644)));
    assert!(h.feed(EventKind::Mkdir, "/var/tmp/x", "", 0).is_empty());
    assert_eq!(h.assembler.open_sessions(), 0);
}

#[test]
fn authorized_and_excluded_executables() {
    struct WithExe(&'static str);
    impl Enrich for WithExe {
        fn actor(&mut self, event: &Event) -> Arc<Process> {
            let mut actor = kernel_actor(event);
            actor.exe = Some(self.0.as_bytes().to_vec());
            let ancestors = if self.0 == "/bin/sh" {
                vec![b"/usr/bin/dpkg".to_vec()]
            } else {
                Vec::new()
            };
            Arc::new(Process { actor, ancestors })
        }
    }
    let classifier = Classifier::new(
        Arc::new(rules()),
        Authorized {
            exes: vec!["/usr/sbin/chef".into()],
            package_managers: true,
        },
        vec!["/usr/bin/backup".into()],
    );
    let event = |path: &str| Event {
        kind: EventKind::Chmod,
        backend: Backend::Lsm,
        source: crate::sensor::Source::Kernel,
        flags: 0,
        rule_id: 1,
        ktime_ns: 1,
        actor: KernelActor::default(),
        target: Target::default(),
        args: Args::default(),
        path: path.as_bytes().to_vec(),
        path2: Vec::new(),
        used_path: None,
    };
    let authorized = |exe| match classifier.classify(event("/etc/a"), &mut WithExe(exe)) {
        Verdict::Report(o) => Some(o.authorized),
        _ => None,
    };
    assert_eq!(authorized("/usr/sbin/chef"), Some(true));
    assert_eq!(authorized("/usr/bin/dpkg"), Some(true));
    assert_eq!(authorized("/usr/lib/apt/methods/http"), Some(true));
    assert_eq!(authorized("/usr/bin/vi"), Some(false));
    // A maintainer script run by dpkg is inside the package transaction.
    assert_eq!(authorized("/bin/sh"), Some(true));
    assert_eq!(authorized("/usr/bin/backup"), None);
}

/// More files open for writing than the assembler keeps: the least recently written are
/// examined at once (reported, not dropped) and memory stays bounded; a later close of one of
/// them is examined again.
#[test]
fn too_many_open_writers_are_examined_early_not_dropped() {
    use super::assemble::MAX_SESSIONS;
    let mut h = Harness::new();
    for i in 0..MAX_SESSIONS {
        let path = format!("/etc/w{i}");
        h.disk(&path, Some((i as u8, 1, 0o644)));
        assert!(h.feed(EventKind::OpenWrite, &path, "", O_WRONLY).is_empty());
    }
    assert_eq!(h.assembler.open_sessions(), MAX_SESSIONS);
    h.disk("/etc/one-more", Some((1, 1, 0o644)));
    let early = h.feed(EventKind::OpenWrite, "/etc/one-more", "", O_WRONLY);
    assert_eq!(early.len(), MAX_SESSIONS / 8);
    assert_eq!(h.assembler.evicted, (MAX_SESSIONS / 8) as u64);
    // The oldest went first, each reported as what it is (a file fim has not seen: created).
    assert_eq!(early[0].path, b"/etc/w0");
    assert!(early.iter().all(|c| c.activity == activity::CREATE));
    assert_eq!(
        h.assembler.open_sessions(),
        MAX_SESSIONS - MAX_SESSIONS / 8 + 1
    );
    // w0's writer closes after it was examined: examined again, the new content reported.
    h.disk("/etc/w0", Some((200, 2, 0o644)));
    let later = h.feed(EventKind::Modified, "/etc/w0", "", O_WRONLY);
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].activity, activity::UPDATE);
}

/// Found by the `decoder` fuzz target: a record whose monotonic timestamp (0x7e00_0000_0000_4c4c)
/// plus the wall-clock offset overflows i64. The job's time saturates instead of panicking
/// (debug) or wrapping (release).
#[test]
fn a_timestamp_beyond_any_uptime_does_not_overflow() {
    // The fuzzer's input as it was (a chown by lsm of "/////bin/" with NULs after it).
    const RECORD: &[u8] = &[
        0x0a, 0x00, 0x01, 0x00, 0x00, 0x00, 0x0c, 0x00, 0x00, 0x00, 0x00, 0xff, 0x4c, 0x4c, 0x4c,
        0x4c, 0x4c, 0x4c, 0x00, 0x00, 0x00, 0x00, 0x00, 0x7e, 0x00, 0x00, 0x00, 0xff, 0x6e, 0x2f,
        0x2f, 0x00, 0x6e, 0x2f, 0x2f, 0x00, 0x00, 0x00, 0x00, 0xef, 0xbf, 0xae, 0xef, 0xef, 0xef,
        0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xff, 0xff, 0xff, 0x00, 0x06, 0x00, 0x6e, 0x2f, 0x2f,
        0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0x2f, 0x2f, 0x2f, 0x2f, 0x2f, 0x62, 0x69,
        0x6e, 0x2f, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x06, 0xff, 0xff, 0xff, 0xff, 0xff,
        0x2f, 0x2f, 0x2f, 0x2f, 0x2f, 0x62, 0x69, 0x6e, 0x2f, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x06, 0xef, 0xef, 0xef, 0xef, 0xff, 0xff, 0xff, 0xff, 0xff, 0x2f, 0x2f, 0x2f, 0x2f,
        0x2f, 0x62, 0x69, 0x6e, 0x2f, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x06,
    ];
    // The header has since grown by the target's two directory inode numbers (16 bytes
    // after `target.ino`, at offset 104): they go in as zeros, the rest is the input as found.
    let at = std::mem::offset_of!(fim_common::RecordHeader, target)
        + std::mem::offset_of!(fim_common::Target, dir_ino);
    assert_eq!(at, 104, "the layout the input was found with");
    let record = [&RECORD[..at], &[0u8; 16][..], &RECORD[at..]].concat();
    let event = Event::decode(&record).expect("the crash input decodes");
    assert_eq!(event.ktime_ns, 0x7e00_0000_0000_4c4c);
    let classifier = Classifier::new(
        Arc::new(crate::config::default_rules()),
        Authorized::default(),
        Vec::new(),
    );
    let Verdict::Report(observation) = classifier.classify(event, &mut KernelOnly) else {
        panic!("/bin is watched by the built-in rules");
    };
    // Mid 2026: wall clock minus monotonic clock, as the daemon computes it.
    let mut assembler = Assembler::new(1_780_000_000_000_000_000);
    let mut jobs = Vec::new();
    assembler.observe(*observation, &mut jobs);
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].time_ns, i64::MAX);
    assert_eq!(jobs[0].activity, activity::SET_ATTRIBUTES);
}

/// A file opened with O_TMPFILE has no name; the kernel calls it `#<inode>`. Its write is
/// reported on the directory it lives in, flagged `unnamed`, and no delete of a name that
/// never existed follows (nor a placeholder row that would make a scan report one).
#[test]
fn a_write_to_an_unnamed_o_tmpfile_inode_is_reported_on_its_directory() {
    let mut h = Harness::new();
    h.feed(
        EventKind::OpenWrite,
        "/etc/app/#803642",
        "",
        O_WRONLY | libc::O_TMPFILE as u32,
    );
    let changes = h.feed(EventKind::Modified, "/etc/app/#803642", "", 0);
    assert_eq!(changes.len(), 1, "{changes:?}");
    let c = &changes[0];
    assert_eq!(c.path, b"/etc/app");
    assert_eq!(c.activity, activity::UPDATE);
    assert_eq!(c.changed, ["content"]);
    assert_eq!(c.kind, Some(FileKind::Dir));
    assert_eq!(c.flags.names(), ["unnamed"]);
    assert_eq!(c.actor.pid, Some(4242));
    assert!(
        h.stored.lock().unwrap().is_empty(),
        "no row for a name that never was"
    );
    assert!(
        h.tick(10_000).is_empty(),
        "nothing follows: {:?}",
        h.tick(0)
    );

    // A real file of such a name, still there when examined, is reported as itself.
    h.baseline("/etc/app/#12", (1, 10, 0o644));
    h.feed(EventKind::OpenWrite, "/etc/app/#12", "", O_WRONLY);
    h.disk("/etc/app/#12", Some((2, 10, 0o644)));
    let changes = h.feed(EventKind::Modified, "/etc/app/#12", "", 0);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].path, b"/etc/app/#12");
    assert!(changes[0].flags.names().is_empty());
}

/// The completeness layer (fanotify) reports a write without open and close: examined once
/// the writes settle, under its own backend name.
#[test]
fn a_write_only_the_completeness_layer_saw_settles_into_one_update() {
    let mut h = Harness::new();
    h.source = crate::sensor::Source::Fanotify;
    h.baseline("/etc/motd", (1, 10, 0o644));
    h.disk("/etc/motd", Some((2, 20, 0o644)));
    for _ in 0..3 {
        assert!(h.feed(EventKind::Written, "/etc/motd", "", 0).is_empty());
    }
    assert!(h.tick(50).is_empty(), "reported before the writes settled");
    let changes = h.tick(300);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].activity, activity::UPDATE);
    assert_eq!(changes[0].backend, "fanotify");
    assert_eq!(changes[0].changed, ["content", "size"]);
    // An attribute change that changed nothing fim tracks reports nothing.
    assert!(
        h.feed(EventKind::AttributesChanged, "/etc/motd", "", 0)
            .is_empty()
    );
    h.disk("/etc/motd", Some((2, 20, 0o600)));
    let changes = h.feed(EventKind::AttributesChanged, "/etc/motd", "", 0);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].changed, ["mode"]);
}

/// A removal or rename the kernel records reported already is not reported again when the
/// completeness layer's event of it slips through the deduplication.
#[test]
fn the_completeness_layer_reports_a_removal_or_rename_only_while_it_is_news() {
    let mut h = Harness::new();
    h.baseline("/etc/a", (1, 1, 0o644));
    h.disk("/etc/a", None);
    assert_eq!(h.feed(EventKind::Unlink, "/etc/a", "", 0).len(), 1);
    h.source = crate::sensor::Source::Fanotify;
    assert!(h.feed(EventKind::Unlink, "/etc/a", "", 0).is_empty());
    // Only the completeness layer saw it: reported, with the previous values.
    h.baseline("/etc/b", (1, 1, 0o640));
    h.disk("/etc/b", None);
    let changes = h.feed(EventKind::Unlink, "/etc/b", "", 0);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].activity, activity::DELETE);
    assert_eq!(changes[0].previous.as_ref().unwrap()["mode"], 0o640);
    // Still there (recreated since): not gone, nothing to report.
    h.baseline("/etc/c", (1, 1, 0o644));
    assert!(h.feed(EventKind::Unlink, "/etc/c", "", 0).is_empty());
    assert!(h.stored.lock().unwrap().contains_key(&b"/etc/c"[..]));
    // A rename reported by the kernel first; the layer's copy then reports nothing.
    h.baseline("/etc/d", (4, 4, 0o644));
    h.disk("/etc/d", None);
    h.disk("/etc/e", Some((4, 4, 0o644)));
    h.source = crate::sensor::Source::Kernel;
    assert_eq!(h.feed(EventKind::Rename, "/etc/d", "/etc/e", 0).len(), 1);
    h.source = crate::sensor::Source::Fanotify;
    assert!(h.feed(EventKind::Rename, "/etc/d", "/etc/e", 0).is_empty());
    // Only the layer saw it: one rename.
    h.baseline("/etc/f", (5, 5, 0o644));
    h.disk("/etc/f", None);
    h.disk("/etc/g", Some((5, 5, 0o644)));
    let changes = h.feed(EventKind::Rename, "/etc/f", "/etc/g", 0);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].activity, activity::RENAME);
    assert!(h.stored.lock().unwrap().contains_key(&b"/etc/g"[..]));
}

/// A rename into the tree from a name fim never knew is the creation of the new name.
#[test]
fn a_rename_into_the_tree_from_the_completeness_layer_is_a_creation() {
    let mut h = Harness::new();
    h.source = crate::sensor::Source::Fanotify;
    h.disk("/etc/new", Some((6, 6, 0o644)));
    let changes = h.feed(EventKind::Rename, "/tmp/outside", "/etc/new", 0);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].activity, activity::CREATE);
    assert_eq!(changes[0].path, b"/etc/new");
    assert!(
        h.feed(EventKind::Rename, "/tmp/outside", "/etc/new", 0)
            .is_empty()
    );
}

/// A change the completeness layer saw to a path gone before it was examined reports
/// nothing: its removal or rename has its own event, and a kernel record may have reported
/// the change with a placeholder already.
#[test]
fn a_completeness_change_to_a_vanished_path_reports_nothing() {
    let mut h = Harness::new();
    h.source = crate::sensor::Source::Fanotify;
    h.baseline("/etc/x", (1, 1, 0o644));
    h.disk("/etc/x", None);
    assert!(
        h.feed(EventKind::AttributesChanged, "/etc/x", "", 0)
            .is_empty()
    );
    h.feed(EventKind::Create, "/etc/y", "", 0);
    assert!(h.tick(300).is_empty());
    assert!(
        !h.stored.lock().unwrap().contains_key(&b"/etc/y"[..]),
        "no placeholder"
    );
    // The kernel's own record of such a change is still reported.
    h.source = crate::sensor::Source::Kernel;
    assert_eq!(h.feed(EventKind::Chmod, "/etc/x", "", 0).len(), 1);
}

impl ChangeMaker {
    /// Looks and reconciles at once (the worker waits in between; see daemon::reconcile).
    fn reconcile_now(&mut self, path: &[u8]) -> (Option<DriftItem>, Made) {
        let examined = self.look(path);
        self.reconcile(path, examined)
    }
}

/// A scan beside the worker saw these paths differ from the store: the worker compares them
/// with its own state (its rows not yet committed included), so what it reported in realtime
/// is not reported again, and what the sensor did not see is.
#[test]
fn a_path_a_scan_saw_differ_is_compared_with_the_workers_own_state() {
    let mut h = Harness::new();
    h.baseline("/etc/a", (1, 10, 0o644));
    h.baseline("/etc/b", (1, 10, 0o644));
    // A realtime write, reported with its actor; the store has not committed its row yet.
    h.disk("/etc/a", Some((2, 12, 0o644)));
    assert!(
        h.feed(EventKind::OpenWrite, "/etc/a", "", O_WRONLY)
            .is_empty()
    );
    let changes = h.feed(EventKind::Modified, "/etc/a", "", 0);
    assert_eq!(changes.len(), 1, "{changes:?}");
    h.stored
        .lock()
        .unwrap()
        .insert(b"/etc/a".to_vec(), entry(b"/etc/a", (1, 10, 0o644)));
    // The scan saw /etc/a differ from the stored row: nothing new for the worker.
    let (drift, made) = h.maker.reconcile_now(b"/etc/a");
    assert!(drift.is_none(), "{drift:?}");
    assert!(made.ops.is_empty());
    // Changed again where the sensor did not see it: reported, from the worker's state.
    h.disk("/etc/a", Some((3, 12, 0o644)));
    match h.maker.reconcile_now(b"/etc/a") {
        (Some(DriftItem::Modified(m)), made) => {
            assert_eq!(m.previous.blake3, Some([2; 32]));
            assert_eq!(m.current.blake3, Some([3; 32]));
            assert!(
                matches!(&made.ops[..], [StoreOp::BaselineUpsert(e)] if e.blake3 == Some([3; 32]))
            );
        }
        other => panic!("{:?}", other.0),
    }
    // And once reconciled, not again.
    assert!(h.maker.reconcile_now(b"/etc/a").0.is_none());
    // Removed and added unseen.
    h.disk("/etc/b", None);
    let (drift, made) = h.maker.reconcile_now(b"/etc/b");
    assert!(matches!(drift, Some(DriftItem::Removed(ref e)) if e.path == b"/etc/b"));
    assert!(matches!(&made.ops[..], [StoreOp::BaselineRemove(p)] if p == b"/etc/b"));
    assert_eq!(made.baseline_delta, -1);
    h.disk("/etc/c", Some((4, 1, 0o600)));
    let (drift, made) = h.maker.reconcile_now(b"/etc/c");
    assert!(matches!(drift, Some(DriftItem::Added(ref e)) if e.path == b"/etc/c"));
    assert_eq!(made.baseline_delta, 1);
    // A path gone and without a row: nothing at all.
    let (drift, made) = h.maker.reconcile_now(b"/etc/never");
    assert!(drift.is_none() && made.ops.is_empty());
}
