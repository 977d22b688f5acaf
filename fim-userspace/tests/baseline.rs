//! Baseline scan on temporary trees: entry kinds, hashes, hostile names, long paths, symlink
//! loops, FIFOs, rehash skipping (counted), unstable files (deterministic hook) and drift.

use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use fim::baseline::hash::{HashOutcome, HashRequest, ReadBudget, hash_file};
use std::collections::BTreeSet;

use fim::baseline::{
    Baseline, BaselineEntry, ChangedField, Drift, DriftItem, EntryFlags, FileKind, RescanReport,
    ScanOptions, ScanReport, Scope, changed_fields, observe_and_update, rescan, scan,
};
use fim::config::{Config, ConfigSource};

fn rules_for(root: &Path, extra: &str) -> Config {
    let text = format!(
        "[[rule]]\nname = \"tree\"\npath = \"{}\"\nrecursive = true\n{extra}",
        root.display()
    );
    Config::from_sources(&[ConfigSource {
        path: PathBuf::from("test.toml"),
        text,
    }])
    .unwrap_or_else(|e| panic!("{e}"))
}

fn options() -> ScanOptions {
    ScanOptions {
        max_file_size: 1 << 30,
        scan_bytes_per_sec: 0,
        content_max_size: 5 << 20,
        progress: false,
        entries_seen: None,
        rehash: false,
    }
}

fn run(config: &Config, previous: &Baseline) -> ScanReport {
    scan(&config.rules, previous, &options())
}

fn bytes(path: &Path) -> Vec<u8> {
    path.as_os_str().as_bytes().to_vec()
}

fn entry<'a>(report: &'a ScanReport, path: &Path) -> &'a BaselineEntry {
    report
        .baseline
        .get(&bytes(path))
        .unwrap_or_else(|| panic!("{} not in the baseline", path.display()))
}

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let c_path = CString::new(path.as_os_str().as_bytes()).unwrap();
    let c_name = CString::new(name).unwrap();
    // SAFETY: valid pointers and length.
    let rc = unsafe {
        libc::lsetxattr(
            c_path.as_ptr(),
            c_name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(rc, 0, "setxattr: {}", std::io::Error::last_os_error());
}

/// A path of exactly `total` bytes, created by a shell that descends with relative `cd`s
/// (absolute paths that long are refused by the kernel, ENAMETOOLONG).
fn make_long_path(base: &Path, total: usize) -> PathBuf {
    let segment = "d".repeat(200);
    let mut path = base.to_path_buf();
    let mut script = format!("set -e; cd '{}'", base.display());
    while path.as_os_str().len() + 1 + 200 + 1 + 10 < total {
        script.push_str(&format!("; mkdir {segment}; cd {segment}"));
        path.push(&segment);
    }
    let name_len = total - path.as_os_str().len() - 1;
    let name = "f".repeat(name_len);
    script.push_str(&format!("; printf long > {name}"));
    path.push(&name);
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(path.as_os_str().len(), total);
    path
}

#[test]
fn scan_records_every_kind_and_correct_hashes_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("plain"), b"hello world").unwrap();
    std::fs::create_dir(root.join("sub")).unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(root.join("sub/big"), &big).unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    // Symlink loops: two links pointing at each other and a link to its own directory.
    symlink("loop-b", root.join("loop-a")).unwrap();
    symlink("loop-a", root.join("loop-b")).unwrap();
    symlink(".", root.join("sub/self")).unwrap();
    // A FIFO with no writer: opening it for reading would block forever.
    mkfifo(&root.join("fifo"));
    let _socket = std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap();
    // Invalid UTF-8 and a newline in the name.
    let hostile = root.join(OsString::from_vec(b"bad\xff\nname".to_vec()));
    std::fs::write(&hostile, b"hostile").unwrap();

    let config = rules_for(root, "");
    let report = run(&config, &Baseline::new());

    let plain = entry(&report, &root.join("plain"));
    assert_eq!(plain.kind, FileKind::File);
    assert_eq!(plain.size, 11);
    assert_eq!(plain.blake3, Some(*blake3::hash(b"hello world").as_bytes()));
    assert_eq!(
        entry(&report, &root.join("sub/big")).blake3,
        Some(*blake3::hash(&big).as_bytes()),
        "multi-buffer file"
    );
    assert_eq!(
        entry(&report, &root.join("empty")).blake3,
        Some(*blake3::hash(b"").as_bytes())
    );
    let loop_a = entry(&report, &root.join("loop-a"));
    assert_eq!(loop_a.kind, FileKind::Symlink);
    assert_eq!(loop_a.link_target.as_deref(), Some(&b"loop-b"[..]));
    assert_eq!(loop_a.blake3, None);
    assert_eq!(
        entry(&report, &root.join("sub/self")).kind,
        FileKind::Symlink
    );
    let fifo = entry(&report, &root.join("fifo"));
    assert_eq!((fifo.kind, fifo.blake3), (FileKind::Fifo, None));
    assert_eq!(entry(&report, &root.join("sock")).kind, FileKind::Socket);
    let hostile_entry = entry(&report, &hostile);
    assert_eq!(
        hostile_entry.blake3,
        Some(*blake3::hash(b"hostile").as_bytes())
    );
    assert_eq!(entry(&report, root).kind, FileKind::Dir);
    assert_eq!(entry(&report, &root.join("sub")).kind, FileKind::Dir);
    // Nothing was reached through the `self` link (it would show as sub/self/big).
    assert!(
        report
            .baseline
            .get(&bytes(&root.join("sub/self/big")))
            .is_none()
    );
    assert_eq!(report.baseline.len(), 11);
    assert_eq!(report.stats.entries, 11);
    assert_eq!(report.stats.files_hashed, 4);
    assert_eq!(report.stats.bytes_hashed, 11 + 3_000_000 + 7);
    for e in report.baseline.entries() {
        assert_eq!(e.flags, EntryFlags::default(), "{e:?}");
    }
}

#[test]
fn a_4096_byte_path_is_recorded_as_unreadable_with_its_errno() {
    let dir = tempfile::tempdir().unwrap();
    let long = make_long_path(dir.path(), 4096);
    let config = rules_for(dir.path(), "");
    let report = run(&config, &Baseline::new());
    let e = entry(&report, &long);
    assert!(e.flags.has(EntryFlags::UNREADABLE), "{e:?}");
    assert_eq!(e.errno, Some(libc::ENAMETOOLONG));
    assert_eq!(
        e.kind,
        FileKind::File,
        "the type comes from the directory entry"
    );
    assert_eq!(report.stats.unreadable, 1);
    // Every directory on the way is recorded normally.
    let mut parent = long.parent().unwrap();
    while parent != dir.path() {
        assert_eq!(entry(&report, parent).kind, FileKind::Dir);
        parent = parent.parent().unwrap();
    }
}

#[test]
fn a_tree_deeper_than_path_max_is_walked_without_recursion() {
    let dir = tempfile::tempdir().unwrap();
    let levels = 2100;
    // mkdirat/openat relative to the previous level: absolute paths that long are refused.
    let c_root = CString::new(dir.path().as_os_str().as_bytes()).unwrap();
    let name = CString::new("a").unwrap();
    // SAFETY: valid NUL-terminated strings; every descriptor opened here is closed here.
    unsafe {
        let mut fd = libc::open(c_root.as_ptr(), libc::O_DIRECTORY | libc::O_RDONLY);
        assert!(fd >= 0);
        for _ in 0..levels {
            assert_eq!(libc::mkdirat(fd, name.as_ptr(), 0o755), 0);
            let next = libc::openat(fd, name.as_ptr(), libc::O_DIRECTORY | libc::O_RDONLY);
            assert!(next >= 0);
            libc::close(fd);
            fd = next;
        }
        libc::close(fd);
    }
    let report = run(&rules_for(dir.path(), ""), &Baseline::new());
    // Every directory whose path the kernel accepts, the root, and the first one too long
    // (listed by its parent, recorded as unreadable); nothing deeper can be reached by path.
    let base = dir.path().as_os_str().len();
    let reachable = (1..=levels).filter(|k| base + 2 * k < 4096).count();
    assert_eq!(report.baseline.len(), 1 + reachable + 1);
    assert_eq!(report.stats.unreadable, 1);
    let too_long = report
        .baseline
        .entries()
        .find(|e| e.flags.has(EntryFlags::UNREADABLE))
        .unwrap();
    assert_eq!(too_long.errno, Some(libc::ENAMETOOLONG));
    assert_eq!(too_long.path.len(), base + 2 * (reachable + 1));
}

#[test]
fn mtimes_beyond_2262_do_not_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("future");
    std::fs::write(&path, b"x").unwrap();
    // Year 2400: past the last nanosecond an i64 can count from 1970.
    let far = SystemTime::UNIX_EPOCH + Duration::from_secs(13_569_465_600);
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    if file.set_modified(far).is_err() {
        eprintln!("this file system cannot store the year 2400; nothing to check");
        return;
    }
    drop(file);
    let report = run(&rules_for(dir.path(), ""), &Baseline::new());
    let e = entry(&report, &path);
    assert_eq!(e.mtime_ns, i64::MAX);
    assert_eq!(e.blake3, Some(*blake3::hash(b"x").as_bytes()));
}

#[test]
fn unreadable_files_are_recorded_with_errno() {
    // Root reads anything, so this case needs an unprivileged run; the 4096-byte path test
    // covers unreadable entries for root.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        eprintln!("running as root: permission-denied case not applicable");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, b"x").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o000)).unwrap();
    let report = run(&rules_for(dir.path(), ""), &Baseline::new());
    let e = entry(&report, &secret);
    assert!(e.flags.has(EntryFlags::UNREADABLE));
    assert_eq!(e.errno, Some(libc::EACCES));
}

#[test]
fn rescans_reuse_hashes_of_unchanged_files() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..20 {
        std::fs::write(dir.path().join(format!("f{i}")), format!("content {i}")).unwrap();
    }
    let config = rules_for(dir.path(), "");
    let first = run(&config, &Baseline::new());
    assert_eq!(first.stats.files_hashed, 20);
    assert_eq!(first.stats.hashes_reused, 0);

    let second = run(&config, &first.baseline);
    assert_eq!(
        second.stats.files_hashed, 0,
        "nothing changed: nothing read"
    );
    assert_eq!(second.stats.hashes_reused, 20);
    assert!(Drift::between(&first.baseline, &second.baseline).is_empty());

    // A size change (append) forces a rehash of that file only.
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("f3"))
        .unwrap();
    f.write_all(b" more").unwrap();
    drop(f);
    let third = run(&config, &second.baseline);
    assert_eq!(third.stats.files_hashed, 1);
    assert_eq!(third.stats.hashes_reused, 19);
    assert_eq!(
        entry(&third, &dir.path().join("f3")).blake3,
        Some(*blake3::hash(b"content 3 more").as_bytes())
    );
}

#[test]
fn files_above_the_size_limit_get_metadata_only() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("large"), vec![7u8; 100]).unwrap();
    std::fs::write(dir.path().join("small"), b"ok").unwrap();
    let config = rules_for(dir.path(), "");
    let options = ScanOptions {
        max_file_size: 10,
        ..options()
    };
    let report = scan(&config.rules, &Baseline::new(), &options);
    let large = entry(&report, &dir.path().join("large"));
    assert!(large.flags.has(EntryFlags::TOO_LARGE));
    assert_eq!((large.size, large.blake3), (100, None));
    assert!(entry(&report, &dir.path().join("small")).blake3.is_some());
    assert_eq!(report.stats.too_large, 1);
}

#[test]
fn a_file_changing_once_while_hashed_is_rehashed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("moving");
    std::fs::write(&path, b"first version").unwrap();
    let budget = ReadBudget::new(0);
    let change_once = |attempt: u32| {
        if attempt == 1 {
            std::fs::write(&path, b"second, longer version").unwrap();
        }
    };
    let request = HashRequest {
        budget: &budget,
        keep_content_up_to: None,
        mid_read: Some(&change_once),
    };
    match hash_file(&path, &request, &mut Vec::new()) {
        HashOutcome::Hashed {
            digest, attempts, ..
        } => {
            assert_eq!(attempts, 2);
            assert_eq!(digest, *blake3::hash(b"second, longer version").as_bytes());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_file_that_keeps_changing_is_recorded_unstable_not_hashed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("moving");
    std::fs::write(&path, b"v").unwrap();
    let budget = ReadBudget::new(0);
    let grow = |attempt: u32| {
        std::fs::write(&path, "v".repeat(attempt as usize + 1)).unwrap();
    };
    let request = HashRequest {
        budget: &budget,
        keep_content_up_to: None,
        mid_read: Some(&grow),
    };
    match hash_file(&path, &request, &mut Vec::new()) {
        HashOutcome::Unstable { attempts, .. } => assert_eq!(attempts, 3),
        other => panic!("{other:?}"),
    }
}

#[test]
fn hashing_never_opens_fifos_or_follows_symlinks() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let link = dir.path().join("link");
    std::fs::write(dir.path().join("target"), b"t").unwrap();
    symlink("target", &link).unwrap();
    let budget = ReadBudget::new(0);
    let request = HashRequest {
        budget: &budget,
        keep_content_up_to: None,
        mid_read: None,
    };
    // A FIFO swapped in for a file: O_NONBLOCK open, fstat says not regular, no read.
    assert_eq!(
        hash_file(&fifo, &request, &mut Vec::new()),
        HashOutcome::NotRegular
    );
    assert_eq!(
        hash_file(&link, &request, &mut Vec::new()),
        HashOutcome::NotRegular
    );
}

#[test]
fn upload_content_rules_keep_small_contents_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a"), b"same").unwrap();
    std::fs::write(dir.path().join("b"), b"same").unwrap();
    std::fs::write(dir.path().join("c"), b"other").unwrap();
    let config = rules_for(dir.path(), "upload_content = true\n");
    let report = run(&config, &Baseline::new());
    let mut contents: Vec<&[u8]> = report
        .contents
        .iter()
        .map(|c| c.content.as_slice())
        .collect();
    contents.sort();
    assert_eq!(contents, [&b"other"[..], &b"same"[..]]);
    for c in &report.contents {
        assert_eq!(c.blake3, *blake3::hash(&c.content).as_bytes());
    }
    // Without upload_content nothing is kept.
    assert!(
        run(&rules_for(dir.path(), ""), &Baseline::new())
            .contents
            .is_empty()
    );
}

fn touch_later(path: &Path) {
    // An explicit, different mtime: the change is seen even within one timestamp tick.
    let later = SystemTime::now() + Duration::from_secs(3600);
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.set_modified(later).unwrap();
}

fn changed(drift: &Drift, path: &Path) -> Vec<ChangedField> {
    drift
        .modified
        .iter()
        .find(|m| m.current.path == bytes(path))
        .map(|m| m.changed.clone())
        .unwrap_or_default()
}

#[test]
fn drift_reports_each_changed_field_with_previous_values() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    for name in [
        "content", "size", "mode", "xattr", "type", "removed", "owner",
    ] {
        std::fs::write(p(name), b"12345").unwrap();
    }
    symlink("old-target", p("link")).unwrap();
    let config = rules_for(dir.path(), "");
    let before = run(&config, &Baseline::new());

    std::fs::write(p("content"), b"54321").unwrap();
    touch_later(&p("content"));
    std::fs::write(p("size"), b"123456").unwrap();
    std::fs::set_permissions(p("mode"), std::fs::Permissions::from_mode(0o600)).unwrap();
    set_xattr(&p("xattr"), "user.fim-test", b"label");
    std::fs::remove_file(p("type")).unwrap();
    std::fs::create_dir(p("type")).unwrap();
    std::fs::remove_file(p("link")).unwrap();
    symlink("new-target", p("link")).unwrap();
    std::fs::remove_file(p("removed")).unwrap();
    std::fs::write(p("added"), b"new").unwrap();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        std::os::unix::fs::lchown(p("owner"), Some(4242), Some(4243)).unwrap();
    }

    let after = run(&config, &before.baseline);
    let drift = Drift::between(&before.baseline, &after.baseline);
    use ChangedField::*;
    assert_eq!(changed(&drift, &p("content")), [Content]);
    assert_eq!(changed(&drift, &p("size")), [Content, Size]);
    assert_eq!(changed(&drift, &p("mode")), [Mode]);
    assert_eq!(changed(&drift, &p("xattr")), [Xattr]);
    assert!(changed(&drift, &p("type")).contains(&Type));
    assert_eq!(changed(&drift, &p("link")), [LinkTarget]);
    if root {
        assert_eq!(changed(&drift, &p("owner")), [Owner]);
    }
    let added: Vec<Vec<u8>> = drift.added.iter().map(|e| e.path.clone()).collect();
    let removed: Vec<Vec<u8>> = drift.removed.iter().map(|e| e.path.clone()).collect();
    assert_eq!(added, [bytes(&p("added"))]);
    assert_eq!(removed, [bytes(&p("removed"))]);
    let expected_modified = if root { 7 } else { 6 };
    // The directory itself changed only its times, which are not reported fields.
    assert_eq!(
        drift.modified.len(),
        expected_modified,
        "{:#?}",
        drift.modified
    );

    // Previous values are the old baseline's.
    let content = drift
        .modified
        .iter()
        .find(|m| m.current.path == bytes(&p("content")))
        .unwrap();
    assert_eq!(
        content.previous.blake3,
        Some(*blake3::hash(b"12345").as_bytes())
    );
    assert_eq!(
        content.current.blake3,
        Some(*blake3::hash(b"54321").as_bytes())
    );
    let mode = drift
        .modified
        .iter()
        .find(|m| m.current.path == bytes(&p("mode")))
        .unwrap();
    assert_eq!(mode.previous.mode & 0o777, 0o644 & !umask());
    assert_eq!(mode.current.mode, 0o600);

    let json = drift.to_json();
    assert_eq!(json["added"].as_array().unwrap().len(), 1);
    assert_eq!(json["removed"][0]["path"], p("removed").to_str().unwrap());
    let json_content = json["modified"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["path"] == p("content").to_str().unwrap())
        .unwrap();
    assert_eq!(json_content["changed"], serde_json::json!(["content"]));
    assert_eq!(
        json_content["previous"]["blake3"],
        blake3::hash(b"12345").to_hex().as_str()
    );
    assert_eq!(
        drift.summary(),
        format!("1 added, 1 removed, {expected_modified} modified")
    );
}

fn umask() -> u32 {
    // SAFETY: umask has no preconditions; it is restored at once.
    let mask = unsafe { libc::umask(0o022) };
    // SAFETY: as above.
    unsafe { libc::umask(mask) };
    mask
}

#[test]
fn owner_change_is_a_drift_field() {
    // Changing ownership needs root; the comparison itself is checked on recorded entries.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"x").unwrap();
    let report = run(&rules_for(dir.path(), ""), &Baseline::new());
    let old = entry(&report, &dir.path().join("f")).clone();
    let mut new = old.clone();
    new.gid = old.gid.wrapping_add(1);
    assert_eq!(changed_fields(&old, &new), [ChangedField::Owner]);
    new.uid = old.uid.wrapping_add(1);
    assert_eq!(changed_fields(&old, &new), [ChangedField::Owner]);
}

#[test]
fn walks_only_where_rules_can_match() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    for user in ["alice", "bob"] {
        std::fs::create_dir_all(home.join(user).join(".ssh")).unwrap();
        std::fs::create_dir_all(home.join(user).join("Documents")).unwrap();
        std::fs::write(home.join(user).join("Documents/notes"), b"n").unwrap();
    }
    std::fs::write(home.join("alice/.ssh/authorized_keys"), b"ssh-ed25519 AAAA").unwrap();
    std::fs::write(home.join("alice/.ssh/id_ed25519"), b"private").unwrap();
    let text = format!(
        "[[rule]]\nname = \"keys\"\npath = \"{}/*/.ssh/authorized_keys\"\npath_type = \"file\"\n",
        home.display()
    );
    let config = Config::from_sources(&[ConfigSource {
        path: PathBuf::from("t.toml"),
        text,
    }])
    .unwrap();
    let report = run(&config, &Baseline::new());
    let paths: Vec<&OsStr> = report
        .baseline
        .entries()
        .map(|e| OsStr::from_bytes(&e.path))
        .collect();
    assert_eq!(paths, [home.join("alice/.ssh/authorized_keys").as_os_str()]);
}

fn store_in(dir: &Path) -> fim::store::Store {
    fim::store::Store::open(&dir.join("state")).unwrap()
}

fn rescan_collect(
    store: &mut fim::store::Store,
    config: &Config,
    scope: &Scope,
) -> (RescanReport, Vec<DriftItem>) {
    let mut items = Vec::new();
    let report = rescan(store, &config.rules, &options(), scope, |item| {
        items.push(item)
    })
    .unwrap();
    (report, items)
}

fn paths_of(items: &[DriftItem], pick: fn(&DriftItem) -> bool) -> BTreeSet<Vec<u8>> {
    items
        .iter()
        .filter(|i| pick(i))
        .map(|i| i.path().to_vec())
        .collect()
}

#[test]
fn a_streaming_rescan_of_20000_files_reports_exact_drift() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    let file = |d: usize, f: usize| tree.join(format!("d{d:02}/f{f:04}"));
    for d in 0..20 {
        std::fs::create_dir_all(tree.join(format!("d{d:02}"))).unwrap();
        for f in 0..1000 {
            std::fs::write(file(d, f), format!("{d} {f}")).unwrap();
        }
    }
    let config = rules_for(&tree, "");
    let mut store = store_in(dir.path());

    let (first, items) = rescan_collect(&mut store, &config, &Scope::Everything);
    assert!(first.first_scan);
    assert!(items.is_empty(), "the first scan only creates the baseline");
    assert_eq!(first.stats.entries, 1 + 20 + 20_000);
    assert_eq!(first.stats.files_hashed, 20_000);
    assert_eq!(store.baseline_len().unwrap(), 1 + 20 + 20_000);
    let stored = store
        .baseline_entry(&bytes(&file(7, 123)))
        .unwrap()
        .unwrap();
    assert_eq!(stored.blake3, Some(*blake3::hash(b"7 123").as_bytes()));

    let mut want_added = BTreeSet::new();
    let mut want_removed = BTreeSet::new();
    let mut want_content = BTreeSet::new();
    let mut want_mode = BTreeSet::new();
    for k in 0..37 {
        let p = file(k % 20, 10 + k * 7);
        std::fs::write(&p, format!("changed {k}")).unwrap();
        touch_later(&p);
        want_content.insert(bytes(&p));
    }
    for k in 0..23 {
        let p = file((k * 3) % 20, 500 + k);
        std::fs::remove_file(&p).unwrap();
        want_removed.insert(bytes(&p));
    }
    for k in 0..5 {
        let p = file(19, 900 + k);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        want_mode.insert(bytes(&p));
    }
    let new_dir = tree.join("d05-new");
    std::fs::create_dir(&new_dir).unwrap();
    want_added.insert(bytes(&new_dir));
    for k in 0..40 {
        let p = new_dir.join(format!("n{k}"));
        std::fs::write(&p, b"new").unwrap();
        want_added.insert(bytes(&p));
    }
    // Sorts between d05 and d05/...: the merge must not take it for a removal or a child.
    std::fs::write(tree.join("d05.txt"), b"x").unwrap();
    want_added.insert(bytes(&tree.join("d05.txt")));

    let (second, items) = rescan_collect(&mut store, &config, &Scope::Everything);
    assert!(!second.first_scan);
    let added = paths_of(&items, |i| matches!(i, DriftItem::Added(_)));
    let removed = paths_of(&items, |i| matches!(i, DriftItem::Removed(_)));
    assert_eq!(added, want_added);
    assert_eq!(removed, want_removed);
    let mut content = BTreeSet::new();
    let mut mode = BTreeSet::new();
    for item in &items {
        if let DriftItem::Modified(m) = item {
            if m.changed.contains(&ChangedField::Content) {
                content.insert(m.current.path.clone());
                assert!(m.previous.blake3.is_some() && m.previous.blake3 != m.current.blake3);
            } else {
                assert_eq!(m.changed, [ChangedField::Mode], "{m:?}");
                assert_eq!(m.current.mode, 0o600);
                mode.insert(m.current.path.clone());
            }
        }
    }
    assert_eq!(content, want_content);
    assert_eq!(mode, want_mode);
    assert_eq!(
        (second.added, second.removed, second.modified),
        (42, 23, 42),
        "{}",
        second.summary()
    );
    // Drift comes in path order.
    let order: Vec<&[u8]> = items.iter().map(|i| i.path()).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]));
    // Only changed files were read again (a chmod changes the ctime, so those too).
    assert_eq!(second.stats.files_hashed, 37 + 41 + 5);
    assert_eq!(
        store.baseline_len().unwrap(),
        1 + 20 + 20_000 - 23 + 42,
        "the table follows the tree"
    );
    // Each drift item was recorded as a change with its previous values.
    let gone = want_removed.iter().next().unwrap();
    let history = store.history(gone, 10).unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].activity, fim::store::activity::DELETE);
    assert_eq!(history[0].backend, "scan");

    let (third, items) = rescan_collect(&mut store, &config, &Scope::Everything);
    assert!(items.is_empty(), "{items:?}");
    assert_eq!(third.stats.files_hashed, 0);
    assert_eq!(third.rows_written, 0, "nothing changed: nothing written");

    // A targeted rescan covers its subtree only.
    std::fs::remove_file(file(3, 1)).unwrap();
    std::fs::remove_file(file(4, 1)).unwrap();
    let scope = Scope::Paths(vec![tree.join("d03")]);
    let (_, items) = rescan_collect(&mut store, &config, &scope);
    assert_eq!(
        items.iter().map(|i| i.path().to_vec()).collect::<Vec<_>>(),
        [bytes(&file(3, 1))]
    );
    let (_, items) = rescan_collect(&mut store, &config, &Scope::Everything);
    assert_eq!(
        items.iter().map(|i| i.path().to_vec()).collect::<Vec<_>>(),
        [bytes(&file(4, 1))]
    );
}

#[test]
fn observe_and_update_rehashes_one_path_and_reports_previous_values() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    let path = tree.join("passwd");
    std::fs::write(&path, b"root:x:0:0").unwrap();
    let config = rules_for(&tree, "");
    let mut store = store_in(dir.path());
    rescan_collect(&mut store, &config, &Scope::Everything);

    // Same size, rewritten at once: only a forced rehash can tell (the realtime case).
    std::fs::write(&path, b"evil:x:0:0").unwrap();
    let options = ScanOptions {
        rehash: true,
        ..options()
    };
    let item = observe_and_update(&mut store, &config.rules, &options, &path)
        .unwrap()
        .expect("a content change");
    let DriftItem::Modified(m) = item else {
        panic!("{item:?}");
    };
    assert_eq!(m.changed, [ChangedField::Content]);
    assert_eq!(
        m.previous.blake3,
        Some(*blake3::hash(b"root:x:0:0").as_bytes())
    );
    assert_eq!(
        store.baseline_entry(&bytes(&path)).unwrap().unwrap().blake3,
        Some(*blake3::hash(b"evil:x:0:0").as_bytes())
    );
    assert_eq!(
        observe_and_update(&mut store, &config.rules, &options, &path).unwrap(),
        None
    );
    std::fs::remove_file(&path).unwrap();
    let item = observe_and_update(&mut store, &config.rules, &options, &path).unwrap();
    assert!(matches!(item, Some(DriftItem::Removed(_))), "{item:?}");
    assert_eq!(store.baseline_entry(&bytes(&path)).unwrap(), None);
    // Outside every rule: left alone.
    let outside = dir.path().join("elsewhere");
    std::fs::write(&outside, b"x").unwrap();
    assert_eq!(
        observe_and_update(&mut store, &config.rules, &options, &outside).unwrap(),
        None
    );
}

#[test]
fn a_large_file_is_hashed_like_a_small_one() {
    // Above the mapping threshold and across windows: the mapped path must agree with BLAKE3.
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..(17usize << 20) + 7)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    std::fs::write(dir.path().join("big"), &data).unwrap();
    std::fs::write(dir.path().join("mid"), &data[..70_000]).unwrap();
    let report = run(&rules_for(dir.path(), ""), &Baseline::new());
    assert_eq!(
        entry(&report, &dir.path().join("big")).blake3,
        Some(*blake3::hash(&data).as_bytes())
    );
    assert_eq!(
        entry(&report, &dir.path().join("mid")).blake3,
        Some(*blake3::hash(&data[..70_000]).as_bytes())
    );
    assert_eq!(report.stats.bytes_hashed, data.len() as u64 + 70_000);
}
