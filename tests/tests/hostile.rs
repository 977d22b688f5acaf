//! Hostile paths and files, end to end: `fim run` (in this process, natively on the
//! tracepoint backend) watches a tree while a separate process fills it with names that are
//! not text, paths as long and as deep as the kernel allows (and longer), symlink loops and
//! links out of the tree, hard links shared with an unwatched directory, a FIFO and a device
//! node, a sparse 100 GiB file, and files deleted or truncated while fim hashes them.
//!
//! The daemon must keep running and keep reporting (a plain change at the end arrives within
//! seconds), report each object with its exact path bytes, its type, and either the hash of
//! content the file really had or no hash with the reason, flag the paths it could not build
//! whole, and keep a baseline that matches the disk. A write through the unwatched name of a
//! hard link is reported in realtime at the watched name. A restart then checks the scan path
//! on the same objects: no crash, the same paths, and no drift except the paths no syscall
//! takes.
//!
//! Native only (`cargo xtask vm-test` leaves it out): the expectations are the tracepoint
//! backend's; the conformance suite covers what differs per backend at the sensor level.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fim_tests::daemon::{Daemon, metric, wait_until, write_config};
use fim_tests::prometheus::free_port;
use fim_tests::{pattern, require_root, run_actor};
use serde_json::Value;

/// What the actor's `create` writes.
const CREATED: &[u8] = b"created\n";
/// Larger than the default `[hashing] max_file_size` (1 GiB): metadata only.
const SPARSE_SIZE: u64 = 100 << 30;
/// Hashed at [`HASH_BUDGET`] bytes per second, this takes 1.5 s: long enough for the actor to
/// delete or truncate the file in the middle of it, deterministically.
const BIG: usize = 48 << 20;
const HASH_BUDGET: u64 = 32 << 20;
/// The size `shrink` is cut to while fim hashes it (not a page or window multiple).
const SHRUNK: usize = (1 << 20) + 123;
/// Linux's PATH_MAX counts the NUL: 4095 bytes is the longest path a syscall accepts.
const LONGEST: usize = 4095;

fn hash(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

fn join(dir: &Path, name: &[u8]) -> PathBuf {
    dir.join(OsStr::from_bytes(name))
}

fn bytes(path: &Path) -> Vec<u8> {
    path.as_os_str().as_bytes().to_vec()
}

/// One actor invocation: operations separated by `--`, optionally from a working directory.
#[derive(Default)]
struct Ops {
    args: Vec<OsString>,
    ops: usize,
}

impl Ops {
    fn cwd(dir: &Path) -> Ops {
        Ops {
            args: vec!["--cwd".into(), dir.into()],
            ops: 0,
        }
    }

    fn op(mut self, name: &str, args: &[&OsStr]) -> Ops {
        if self.ops > 0 {
            self.args.push("--".into());
        }
        self.ops += 1;
        self.args.push(name.into());
        self.args.extend(args.iter().map(|a| a.to_os_string()));
        self
    }

    fn run(self, what: &str) -> u32 {
        run_actor(&self.args).unwrap_or_else(|e| panic!("{what}: {e:#}"))
    }
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// The hostile objects of one directory (made before the daemon starts for the scan path,
/// and while it runs for the realtime path), and what they are.
struct Hostile {
    dir: PathBuf,
    /// Regular files holding [`CREATED`], with names that are not text or look like options.
    names: Vec<PathBuf>,
    /// The directory whose entries' paths reach [`LONGEST`] bytes.
    long_dir: PathBuf,
    /// A file whose path is exactly [`LONGEST`] bytes.
    longest: PathBuf,
    /// A file whose path is longer than any syscall accepts, made relative to `long_dir`.
    beyond: PathBuf,
    /// A directory like `beyond`, and a file made in it from there (the working directory
    /// itself too long for the kernel's buffer).
    beyond_dir: PathBuf,
    beyond_deeper: PathBuf,
    /// Files below directories deeper than the kernel's filter walk (64) and deeper than its
    /// path walk used to go (128).
    deep: Vec<PathBuf>,
    loop_a: PathBuf,
    loop_b: PathBuf,
    /// A symlink to a directory outside the tree.
    out_link: PathBuf,
    /// A hard link to a file of the unwatched directory.
    shared: PathBuf,
    shared_outside: PathBuf,
    fifo: PathBuf,
    /// A character device with /dev/zero's numbers: reading it never ends.
    zero: PathBuf,
    sparse: PathBuf,
}

impl Hostile {
    fn new(dir: PathBuf, outside: &Path) -> Hostile {
        let names = [
            &b"new\nline"[..],
            b"tab\there",
            b"bad\xff\xfe",
            b"-rf",
            &[b'n'; 255],
        ]
        .iter()
        .map(|n| join(&dir, n))
        .collect();
        // Directories of up to 250 bytes until a 50-byte name makes the path 4095 bytes long.
        let mut long_dir = dir.join("long");
        let target = LONGEST - 1 - 50;
        while long_dir.as_os_str().len() < target {
            let remaining = target - long_dir.as_os_str().len();
            let mut name = (remaining - 1).min(250);
            if remaining - 1 - name == 1 {
                name -= 1;
            }
            long_dir = join(&long_dir, &vec![b'L'; name]);
        }
        let longest = join(&long_dir, &[b'F'; 50]);
        assert_eq!(longest.as_os_str().len(), LONGEST);
        let beyond = join(&long_dir, &[b'C'; 100]);
        let beyond_dir = join(&long_dir, &[b'D'; 100]);
        let beyond_deeper = beyond_dir.join("g");
        let deep_dir = |levels: usize| {
            let mut d = dir.join("deep");
            for _ in 0..levels {
                d.push("d");
            }
            d
        };
        let deep = vec![deep_dir(70).join("f"), deep_dir(140).join("f")];
        let tag = dir.file_name().unwrap().to_string_lossy().into_owned();
        Hostile {
            names,
            longest,
            beyond,
            beyond_dir,
            beyond_deeper,
            deep,
            loop_a: dir.join("loop_a"),
            loop_b: dir.join("loop_b"),
            out_link: dir.join("out"),
            shared: dir.join("shared"),
            shared_outside: outside.join(format!("shared-{tag}")),
            fifo: dir.join("fifo"),
            zero: dir.join("zero"),
            sparse: dir.join("sparse"),
            long_dir,
            dir,
        }
    }

    /// The directories below `dir` that `long_dir` and the deep files need, parents first.
    fn dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = [self.long_dir.as_path(), self.deep[1].parent().unwrap()]
            .into_iter()
            .flat_map(|leaf| leaf.ancestors().take_while(|a| *a != self.dir))
            .map(Path::to_path_buf)
            .collect();
        dirs.sort_by_key(|d| d.as_os_str().len());
        dirs
    }
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

/// The exact bytes of an event's path (`file`) or new path (`file_result`): the hex in
/// `unmapped.fim.raw` when it is not UTF-8 (then the text must be its lossy form).
fn path_of(e: &Value, object: &str) -> Vec<u8> {
    let key = if object == "file" {
        "path_hex"
    } else {
        "new_path_hex"
    };
    let text = e[object]["path"].as_str().expect("a path");
    match e["unmapped"]["fim"]["raw"][key].as_str() {
        Some(hex) => {
            let raw = unhex(hex);
            assert!(std::str::from_utf8(&raw).is_err(), "hex for a UTF-8 path");
            assert_eq!(text, String::from_utf8_lossy(&raw), "{e:#}");
            raw
        }
        None => text.as_bytes().to_vec(),
    }
}

fn read_events(output: &Path) -> Vec<Value> {
    fim_tests::daemon::json_lines(output)
}

fn about<'a>(events: &'a [Value], path: &Path) -> Vec<&'a Value> {
    let path = bytes(path);
    events
        .iter()
        .filter(|e| path_of(e, "file") == path)
        .collect()
}

fn hash_of(e: &Value) -> Option<&str> {
    e["file"]["hashes"][0]["value"].as_str()
}

fn wait_for(output: &Path, what: &str, timeout: Duration, done: impl Fn(&[Value]) -> bool) {
    wait_until(what, timeout, || done(&read_events(output)));
}

/// Waits until `path` has an event of `activity`; returns how long that took.
fn wait_activity(output: &Path, path: &Path, activity: i64) -> Duration {
    let started = Instant::now();
    wait_for(
        output,
        &format!("activity {activity} for {}", path.display()),
        Duration::from_secs(15),
        |all| {
            all.iter()
                .any(|e| e["activity_id"] == activity && path_of(e, "file") == bytes(path))
        },
    );
    let took = started.elapsed();
    // Never stuck: even the file hashed at HASH_BUDGET is reported within seconds.
    assert!(
        took < Duration::from_secs(5),
        "{} took {took:?}",
        path.display()
    );
    took
}

/// What is on disk: type (fim's names), size, BLAKE3 of regular files up to the default
/// `max_file_size` (1 GiB), symlink targets; paths no syscall accepts are listed from their
/// directory with the type it gives.
#[derive(Debug, Clone, PartialEq)]
struct OnDisk {
    kind: &'static str,
    size: Option<u64>,
    blake3: Option<String>,
    link_target: Option<Vec<u8>>,
}

fn kind_name(t: std::fs::FileType) -> &'static str {
    if t.is_file() {
        "file"
    } else if t.is_dir() {
        "dir"
    } else if t.is_symlink() {
        "symlink"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_char_device() {
        "char"
    } else if t.is_block_device() {
        "block"
    } else {
        "socket"
    }
}

fn on_disk(root: &Path) -> BTreeMap<Vec<u8>, OnDisk> {
    let mut found = BTreeMap::new();
    let mut pending = vec![(root.to_path_buf(), None)];
    while let Some((path, listed)) = pending.pop() {
        if path.as_os_str().len() > LONGEST {
            let kind = kind_name(listed.expect("only listed entries are that long"));
            found.insert(
                bytes(&path),
                OnDisk {
                    kind,
                    size: None,
                    blake3: None,
                    link_target: None,
                },
            );
            continue;
        }
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let kind = kind_name(meta.file_type());
        let blake3 = (kind == "file" && meta.size() <= 1 << 30)
            .then(|| hash(&std::fs::read(&path).unwrap()));
        found.insert(
            bytes(&path),
            OnDisk {
                kind,
                size: (kind != "dir").then_some(meta.size()),
                blake3,
                link_target: (kind == "symlink")
                    .then(|| bytes(&std::fs::read_link(&path).unwrap())),
            },
        );
        if kind == "dir" {
            for entry in std::fs::read_dir(&path).unwrap() {
                let entry = entry.unwrap();
                pending.push((entry.path(), Some(entry.file_type().unwrap())));
            }
        }
    }
    found
}

/// A baseline row as the test compares it.
#[derive(Debug)]
struct Row {
    kind: String,
    size: u64,
    blake3: Option<String>,
    flags: i64,
    errno: Option<i64>,
    link_target: Option<Vec<u8>>,
}

fn baseline(state: &Path) -> BTreeMap<Vec<u8>, Row> {
    let db = rusqlite::Connection::open(state.join("fim.db")).unwrap();
    let mut stmt = db
        .prepare("SELECT path, type, size, blake3, flags, errno, link_target FROM baseline")
        .unwrap();
    stmt.query_map([], |r| {
        Ok((
            r.get::<_, Vec<u8>>(0)?,
            Row {
                kind: r.get(1)?,
                size: r.get::<_, i64>(2)? as u64,
                blake3: r.get(3)?,
                flags: r.get(4)?,
                errno: r.get(5)?,
                link_target: r.get(6)?,
            },
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// Every row matches the disk: type, size, and the hash of what the file holds now (none for
/// what is not hashed, with the flag that says why).
fn check_baseline(rows: &BTreeMap<Vec<u8>, Row>, disk: &BTreeMap<Vec<u8>, OnDisk>) {
    for (path, row) in rows {
        let shown = String::from_utf8_lossy(path);
        let d = disk
            .get(path)
            .unwrap_or_else(|| panic!("baseline row for a path not on disk: {shown:?}"));
        assert_eq!(row.kind, d.kind, "{shown:?}");
        if path.len() > LONGEST {
            // No syscall takes the path: recorded as unreadable, with the errno.
            assert_eq!(row.flags, 4, "{shown:?}");
            assert_eq!(row.errno, Some(i64::from(libc::ENAMETOOLONG)), "{shown:?}");
            assert_eq!(row.blake3, None);
            continue;
        }
        assert_eq!(row.errno, None, "{shown:?}");
        assert_eq!(row.link_target, d.link_target, "{shown:?}");
        if let Some(size) = d.size {
            assert_eq!(row.size, size, "{shown:?}");
        }
        match (d.kind, &d.blake3) {
            ("file", Some(h)) => {
                assert_eq!(row.blake3.as_ref(), Some(h), "{shown:?}");
                assert_eq!(row.flags, 0, "{shown:?}");
            }
            ("file", None) => {
                assert_eq!(row.blake3, None, "{shown:?}");
                assert_eq!(row.flags, 1, "too_large: {shown:?}");
            }
            _ => {
                assert_eq!(row.blake3, None, "{shown:?}");
                assert_eq!(row.flags, 0, "{shown:?}");
            }
        }
    }
}

/// Makes the objects of `h` with the actor, one step at a time; `after` gets each step's pid.
fn make(h: &Hostile, outside_dir: &Path, mut after: impl FnMut(&str, u32)) {
    let mut step = |what: &str, ops: Ops| {
        let pid = ops.run(what);
        after(what, pid);
    };
    let mut names = Ops::default();
    for name in &h.names {
        names = names.op("create", &[name.as_os_str()]);
    }
    step("names", names);
    let mut dirs = Ops::default();
    for dir in h.dirs() {
        dirs = dirs.op("mkdir", &[dir.as_os_str()]);
    }
    step("dirs", dirs);
    step(
        "longest",
        Ops::default().op("create", &[h.longest.as_os_str()]),
    );
    step(
        "beyond",
        Ops::cwd(&h.long_dir)
            .op("create", &[h.beyond.file_name().unwrap()])
            .op("mkdir", &[h.beyond_dir.file_name().unwrap()])
            .op("chdir", &[h.beyond_dir.file_name().unwrap()])
            .op("create", &[h.beyond_deeper.file_name().unwrap()]),
    );
    for (i, deep) in h.deep.iter().enumerate() {
        step(
            &format!("deep{i}"),
            Ops::default().op("create", &[deep.as_os_str()]),
        );
        // Separately: examined right after the creation, the new mode would already be part
        // of the created file's state.
        step(
            &format!("deep{i}-mode"),
            Ops::default().op("fchmod", &[deep.as_os_str(), os("0o600")]),
        );
    }
    step(
        "symlinks",
        Ops::default()
            .op("symlink", &[os("loop_b"), h.loop_a.as_os_str()])
            .op("symlink", &[os("loop_a"), h.loop_b.as_os_str()])
            .op(
                "symlink",
                &[outside_dir.as_os_str(), h.out_link.as_os_str()],
            ),
    );
    step(
        "link",
        Ops::default().op(
            "link",
            &[h.shared_outside.as_os_str(), h.shared.as_os_str()],
        ),
    );
    step("fifo", Ops::default().op("mkfifo", &[h.fifo.as_os_str()]));
    step(
        "device",
        Ops::default().op("mknod", &[h.zero.as_os_str(), os("1"), os("5")]),
    );
    step(
        "sparse",
        Ops::default().op(
            "sparse",
            &[
                h.sparse.as_os_str(),
                os(&SPARSE_SIZE.to_string()),
                os(&(SPARSE_SIZE / 2).to_string()),
            ],
        ),
    );
}

#[test]
fn hostile_paths_and_files_are_survived_and_reported_exactly() {
    require_root();
    let test_started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let tree = root.join("tree");
    let outside = root.join("outside");
    let outside_dir = outside.join("dir");
    std::fs::create_dir_all(&outside_dir).unwrap();
    std::fs::write(outside_dir.join("secret"), b"not watched\n").unwrap();
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("plain"), b"plain\n").unwrap();
    let pre = Hostile::new(tree.join("pre"), &outside);
    let rt = Hostile::new(tree.join("rt"), &outside);
    for h in [&pre, &rt] {
        std::fs::write(&h.shared_outside, b"shared v1\n").unwrap();
    }
    std::fs::create_dir(&pre.dir).unwrap();
    std::fs::create_dir(&rt.dir).unwrap();
    // The scan path: the same objects exist before fim starts.
    make(&pre, &outside_dir, |_, _| {});

    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let config = write_config(&root, &tree, metrics);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[hashing]\nscan_bytes_per_sec = {HASH_BUDGET}\n"
    ));
    std::fs::write(&config, text).unwrap();
    let output = root.join("out/fim.json");
    let state = root.join("state");

    let disk = on_disk(&tree);
    let daemon = Daemon::start(&config);
    wait_until("the start scan", Duration::from_secs(60), || {
        metric(metrics, "fim_baseline_files") == Some(disk.len() as f64)
    });
    eprintln!(
        "start scan of {} entries done after {:?}",
        disk.len(),
        test_started.elapsed()
    );

    // The realtime path: each step waits for its report, so each is attributed and examined
    // on its own.
    let mut pids: BTreeMap<String, u32> = BTreeMap::new();
    make(&rt, &outside_dir, |what, pid| {
        pids.insert(what.to_string(), pid);
        let (path, activity) = match what {
            "names" => (rt.names.last().unwrap(), 1),
            "dirs" => (&rt.long_dir, 1),
            "longest" => (&rt.longest, 1),
            // Reported under its cut path: waited for below.
            "beyond" => return,
            "deep0" => (&rt.deep[0], 1),
            "deep1" => (&rt.deep[1], 1),
            "deep0-mode" => (&rt.deep[0], 6),
            "deep1-mode" => (&rt.deep[1], 6),
            "symlinks" => (&rt.out_link, 1),
            "link" => (&rt.shared, 1),
            "fifo" => (&rt.fifo, 1),
            "device" => (&rt.zero, 1),
            "sparse" => (&rt.sparse, 1),
            other => panic!("{other}"),
        };
        let took = wait_activity(&output, path, activity);
        eprintln!("{what}: reported after {took:?}");
    });
    // Renamed from one name that is not UTF-8 to another: both exact, in hex.
    let renamed = join(&rt.dir, b"\xfe\xffbad");
    let pid_rename = Ops::default()
        .op("rename", &[rt.names[2].as_os_str(), renamed.as_os_str()])
        .run("rename");
    wait_activity(&output, &rt.names[2], 5);
    let beyond_cut = bytes(&rt.beyond)[..LONGEST].to_vec();
    let beyond_dir_cut = bytes(&rt.beyond_dir)[..LONGEST].to_vec();
    wait_for(&output, "the cut paths", Duration::from_secs(15), |all| {
        [&beyond_cut, &beyond_dir_cut]
            .iter()
            .all(|cut| all.iter().any(|e| path_of(e, "file") == **cut))
    });

    // A write through the watched name of the hard link, then through the unwatched one.
    let pid_write = Ops::default()
        .op("write", &[rt.shared.as_os_str()])
        .run("write shared");
    wait_activity(&output, &rt.shared, 3);
    let pid_chmod = Ops::default()
        .op("chmod", &[rt.fifo.as_os_str(), os("0o600")])
        .run("chmod fifo");
    wait_activity(&output, &rt.fifo, 6);
    // Counted in the kernel's reports only (the completeness layer's are set apart below).
    let before_unwatched = read_events(&output)
        .iter()
        .filter(|e| e["unmapped"]["fim"]["backend"] != "fanotify")
        .count();
    let pid_outside = Ops::default()
        .op("append", &[rt.shared_outside.as_os_str()])
        .run("append outside");
    // The device written: fim must never read it.
    let pid_device = Ops::default()
        .op("write", &[rt.zero.as_os_str()])
        .run("write zero");

    // Deleted and truncated while fim hashes them: the close starts the hash, which takes
    // 1.5 s at HASH_BUDGET (16 MiB windows, the first at once, then a pause to stay within
    // the budget); 200 ms after the close the file goes away or shrinks to SHRUNK, so the rest
    // of the hash reads an unlinked file whose ctime changed, or faults on pages past the new
    // end of the mapping. One at a time, so the change worker is idle when each one starts.
    let vanish = rt.dir.join("vanish");
    let shrink = rt.dir.join("shrink");
    let big = BIG.to_string();
    let pid_vanish = Ops::default()
        .op("big", &[vanish.as_os_str(), os(&big)])
        .op("sleep", &[os("200")])
        .op("unlink", &[vanish.as_os_str()])
        .run("vanish");
    let took = wait_activity(&output, &vanish, 4);
    eprintln!("deleted mid-hash: reported after {took:?}");
    let pid_shrink = Ops::default()
        .op("big", &[shrink.as_os_str(), os(&big)])
        .op("sleep", &[os("200")])
        .op("ftruncate", &[shrink.as_os_str(), os(&SHRUNK.to_string())])
        .run("shrink");
    let took = wait_activity(&output, &shrink, 1);
    eprintln!("truncated mid-hash: reported after {took:?}");

    // Still running and not stuck: a plain change is reported within seconds.
    let plain = tree.join("plain");
    let pid_plain = Ops::default()
        .op("write", &[plain.as_os_str()])
        .run("plain");
    let took = wait_activity(&output, &plain, 3);
    eprintln!("final plain change reported after {took:?}");
    // The long-writer tick (5 s) must not bring anything back.
    std::thread::sleep(Duration::from_secs(6));
    daemon.stop();

    let (layer, all): (Vec<Value>, Vec<Value>) = read_events(&output)
        .into_iter()
        .partition(|e| e["unmapped"]["fim"]["backend"] == "fanotify");
    // The completeness layer (fanotify) names what it sees from its marked directories, so
    // it reports paths longer than the kernel can build in full, complete; those alone.
    for e in &layer {
        assert!(path_of(e, "file").len() > LONGEST, "{e:#}");
        assert!(path_of(e, "file").starts_with(&bytes(&tree)), "{e:#}");
        assert_eq!(e["actor"]["process"]["pid"], pids["beyond"], "{e:#}");
    }
    eprintln!(
        "the completeness layer reported {} long path(s)",
        layer.len()
    );
    let since_unwatched = &all[before_unwatched..];
    let exe = fim_tests::actor_path().to_string_lossy().into_owned();
    let below_out_link = [bytes(&rt.out_link), b"/".to_vec()].concat();
    for e in &all {
        let path = path_of(e, "file");
        assert!(
            path.starts_with(&bytes(&tree)),
            "a path outside the tree: {e:#}"
        );
        assert!(
            !path.starts_with(&below_out_link),
            "followed a symlink: {e:#}"
        );
        assert_eq!(e["unmapped"]["fim"]["backend"], "tracepoint", "{e:#}");
        assert_eq!(e["actor"]["process"]["file"]["path"], *exe, "{e:#}");
    }
    let one = |path: &Path| -> &Value {
        let events = about(&all, path);
        assert_eq!(events.len(), 1, "{}: {events:#?}", path.display());
        events[0]
    };
    let created = |path: &Path, pid: u32, type_id: i64| -> &Value {
        let e = one(path);
        assert_eq!(e["activity_id"], 1, "{e:#}");
        assert_eq!(e["actor"]["process"]["pid"], pid, "{e:#}");
        assert_eq!(e["file"]["type_id"], type_id, "{e:#}");
        assert_eq!(e["unmapped"]["fim"]["truncated_path"], false, "{e:#}");
        if type_id != 1 {
            assert_eq!(hash_of(e), None, "{e:#}");
        }
        e
    };
    // Names: exact bytes (hex for the invalid UTF-8 one), content hashed.
    for name in &rt.names {
        let e = about(&all, name)[0];
        assert_eq!(e["activity_id"], 1, "{e:#}");
        assert_eq!(e["actor"]["process"]["pid"], pids["names"], "{e:#}");
        assert_eq!(e["file"]["type_id"], 1, "{e:#}");
        assert_eq!(hash_of(e), Some(hash(CREATED).as_str()), "{e:#}");
    }
    let bad = about(&all, &rt.names[2]);
    assert_eq!(bad.len(), 2, "{bad:#?}");
    assert!(bad[0]["unmapped"]["fim"]["raw"]["path_hex"].is_string());
    let rename = bad[1];
    assert_eq!(rename["activity_id"], 5, "{rename:#}");
    assert_eq!(rename["actor"]["process"]["pid"], pid_rename);
    assert_eq!(path_of(rename, "file_result"), bytes(&renamed));
    assert!(rename["unmapped"]["fim"]["raw"]["new_path_hex"].is_string());
    assert_eq!(hash_of(rename), Some(hash(CREATED).as_str()));
    // The longest path a syscall takes: complete, examined, hashed.
    let e = created(&rt.longest, pids["longest"], 1);
    assert_eq!(path_of(e, "file").len(), LONGEST);
    assert_eq!(hash_of(e), Some(hash(CREATED).as_str()));
    for d in rt.dirs() {
        created(&d, pids["dirs"], 2);
    }
    // Longer than any path, made relative to a directory that fits: its first 4095 bytes,
    // flagged truncated, reported once and not examined. Made relative to a directory that
    // does not fit itself: the kernel has only the end of the path, and the report says so:
    // `TREE/…/END`, flagged truncated.
    let beyond: Vec<&Value> = all
        .iter()
        .filter(|e| e["actor"]["process"]["pid"] == pids["beyond"])
        .collect();
    assert_eq!(beyond.len(), 3, "{beyond:#?}");
    let elided = path_of(beyond[2], "file");
    let mut start = bytes(&tree);
    start.extend_from_slice("/\u{2026}/".as_bytes());
    assert!(elided.starts_with(&start), "{:#}", beyond[2]);
    assert!(elided.ends_with(b"DDDD/g"), "{:#}", beyond[2]);
    assert_eq!(beyond[2]["activity_id"], 1);
    assert_eq!(beyond[2]["unmapped"]["fim"]["truncated_path"], true);
    for (e, cut, type_id) in [(beyond[0], &beyond_cut, 1), (beyond[1], &beyond_dir_cut, 2)] {
        assert_eq!(path_of(e, "file"), *cut);
        assert_eq!(e["activity_id"], 1, "{e:#}");
        assert_eq!(e["file"]["type_id"], type_id, "{e:#}");
        assert_eq!(e["unmapped"]["fim"]["truncated_path"], true, "{e:#}");
        assert_eq!(hash_of(e), None, "{e:#}");
        assert!(e["file"].get("size").is_none(), "{e:#}");
    }
    // Deeper than the kernel's walks: complete paths, then the fchmod decided in user space.
    for (i, deep) in rt.deep.iter().enumerate() {
        let events = about(&all, deep);
        assert_eq!(events.len(), 2, "{events:#?}");
        assert_eq!(events[0]["activity_id"], 1);
        assert_eq!(
            events[0]["actor"]["process"]["pid"],
            pids[&format!("deep{i}")]
        );
        assert_eq!(hash_of(events[0]), Some(hash(CREATED).as_str()));
        assert_eq!(events[1]["activity_id"], 6);
        assert_eq!(
            events[1]["actor"]["process"]["pid"],
            pids[&format!("deep{i}-mode")]
        );
        assert_eq!(
            events[1]["unmapped"]["fim"]["changed"],
            serde_json::json!(["mode"])
        );
        assert_eq!(events[1]["unmapped"]["fim"]["previous"]["mode"], 0o644);
        for e in events {
            assert_eq!(e["unmapped"]["fim"]["truncated_path"], false);
        }
    }
    // Symlinks: type 7, size = the target's length, never followed.
    for (link, target) in [
        (&rt.loop_a, OsStr::new("loop_b")),
        (&rt.loop_b, OsStr::new("loop_a")),
        (&rt.out_link, outside_dir.as_os_str()),
    ] {
        let e = created(link, pids["symlinks"], 7);
        assert_eq!(e["file"]["size"], target.len());
    }
    // The hard link: created with the content it shares, written through the watched name
    // (and then through the other name, below).
    let shared = about(&all, &rt.shared);
    assert_eq!(shared.len(), 3, "{shared:#?}");
    assert_eq!(shared[0]["activity_id"], 1);
    assert_eq!(shared[0]["actor"]["process"]["pid"], pids["link"]);
    assert_eq!(hash_of(shared[0]), Some(hash(b"shared v1\n").as_str()));
    assert_eq!(shared[1]["activity_id"], 3);
    assert_eq!(shared[1]["actor"]["process"]["pid"], pid_write);
    // The actor's write overwrites the start of the file.
    assert_eq!(hash_of(shared[1]), Some(hash(b"written\n1\n").as_str()));
    // ... and through the unwatched name: reported in realtime at the watched name (the
    // kernel knows the inode has a watched name), with the name used.
    let outside = about(since_unwatched, &rt.shared);
    assert_eq!(outside.len(), 1, "{since_unwatched:#?}");
    assert_eq!(outside[0]["activity_id"], 3);
    assert_eq!(outside[0]["actor"]["process"]["pid"], pid_outside);
    assert_eq!(
        outside[0]["unmapped"]["fim"]["used_path"],
        *rt.shared_outside.to_string_lossy()
    );
    assert_eq!(
        hash_of(outside[0]),
        Some(hash(b"written\n1\nappended\n").as_str())
    );
    // The FIFO and the device: their types, never hashed (reading /dev/zero never ends).
    let fifo = about(&all, &rt.fifo);
    assert_eq!(fifo.len(), 2, "{fifo:#?}");
    assert_eq!(fifo[0]["activity_id"], 1);
    assert_eq!(fifo[0]["file"]["type_id"], 6);
    assert_eq!(fifo[0]["actor"]["process"]["pid"], pids["fifo"]);
    assert_eq!(fifo[1]["activity_id"], 6);
    assert_eq!(fifo[1]["file"]["type_id"], 6);
    assert_eq!(fifo[1]["actor"]["process"]["pid"], pid_chmod);
    assert!(fifo.iter().all(|e| hash_of(e).is_none()));
    let e = created(&rt.zero, pids["device"], 3);
    assert_eq!(e["file"]["size"], 0);
    // Written: examined without being read, and nothing to report (what a device does with
    // the bytes is not its node's content).
    assert!(
        all.iter()
            .all(|e| e["actor"]["process"]["pid"] != pid_device)
    );
    // The sparse file: its size, no hash, and the reason.
    let e = created(&rt.sparse, pids["sparse"], 1);
    assert_eq!(e["file"]["size"], SPARSE_SIZE);
    assert_eq!(hash_of(e), None);
    assert_eq!(
        e["unmapped"]["fim"]["flags"],
        serde_json::json!(["too_large"])
    );
    // Deleted mid-hash: created (with the hash of what it held, or none: never another one),
    // then deleted.
    let mut content = vec![0u8; BIG];
    pattern(0, &mut content);
    let full = hash(&content);
    let cut_hash = hash(&content[..SHRUNK]);
    let events = about(&all, &vanish);
    let activities: Vec<&Value> = events.iter().map(|e| &e["activity_id"]).collect();
    assert_eq!(activities, [1, 4], "{events:#?}");
    for e in &events {
        assert_eq!(e["actor"]["process"]["pid"], pid_vanish);
        assert!(hash_of(e).is_none_or(|h| h == full), "{e:#}");
    }
    eprintln!(
        "deleted mid-hash: created with {}",
        if hash_of(events[0]).is_some() {
            "its hash"
        } else {
            "no hash"
        }
    );
    // Truncated mid-hash (the mapping faults): only hashes of content it really had.
    let events = about(&all, &shrink);
    assert_eq!(events.len(), 1, "{events:#?}");
    let e = events[0];
    assert_eq!(e["activity_id"], 1, "{e:#}");
    assert_eq!(e["actor"]["process"]["pid"], pid_shrink);
    assert!(
        hash_of(e).is_none_or(|h| h == full || h == cut_hash),
        "a hash of no content the file had: {e:#}"
    );
    eprintln!(
        "truncated mid-hash: reported with {}",
        match hash_of(e) {
            Some(h) if h == cut_hash => "the hash after the truncation",
            Some(_) => "the hash before the truncation",
            None => "no hash",
        }
    );
    assert_eq!(std::fs::read(&shrink).unwrap().len(), SHRUNK);
    let e = one(&plain);
    assert_eq!(e["actor"]["process"]["pid"], pid_plain);
    assert_eq!(hash_of(e), Some(hash(b"written\n").as_str()));

    // The store: a row for everything on disk that a syscall can name, matching it; a path
    // no syscall takes has none yet (the kernel's report of it was not examined) unless the
    // completeness layer reported it.
    let disk = on_disk(&tree);
    let rows = baseline(&state);
    check_baseline(&rows, &disk);
    let missing: Vec<String> = disk
        .keys()
        .filter(|p| !rows.contains_key(*p))
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    // (`on_disk` cannot look into `beyond_dir` either.) The completeness layer names them in
    // full: what it reported has an unreadable row (`check_baseline` checked it).
    let beyond_rows =
        [&rt.beyond, &rt.beyond_dir].map(|p| String::from_utf8_lossy(&bytes(p)).into_owned());
    let by_layer: Vec<String> = layer
        .iter()
        .map(|e| String::from_utf8_lossy(&path_of(e, "file")).into_owned())
        .collect();
    let expected: Vec<&String> = beyond_rows
        .iter()
        .filter(|p| !by_layer.contains(p))
        .collect();
    assert_eq!(missing.iter().collect::<Vec<_>>(), expected);
    assert!(rows.keys().all(|p| !p.starts_with(&below_out_link)));

    // Restart: the start scan meets every object again. It reports only what fim could not
    // see: the paths no syscall takes (as unreadable), unless the completeness layer
    // reported them already.
    let unseen: Vec<(&PathBuf, i64)> = [(&rt.beyond, 1), (&rt.beyond_dir, 2)]
        .into_iter()
        .filter(|(p, _)| !by_layer.contains(&String::from_utf8_lossy(&bytes(p)).into_owned()))
        .collect();
    let before = read_events(&output).len();
    let daemon = Daemon::start(&config);
    wait_until("the restart scan", Duration::from_secs(60), || {
        metric(metrics, "fim_baseline_files") == Some(disk.len() as f64)
    });
    wait_for(&output, "the drift", Duration::from_secs(15), |all| {
        all.len() >= before + unseen.len()
    });
    std::thread::sleep(Duration::from_secs(1));
    daemon.stop();
    let all = read_events(&output);
    let drift = &all[before..];
    assert_eq!(drift.len(), unseen.len(), "{drift:#?}");
    for e in drift {
        assert_eq!(e["unmapped"]["fim"]["backend"], "scan", "{e:#}");
        assert_eq!(e["unmapped"]["fim"]["attribution"], "unknown", "{e:#}");
    }
    assert!(about(drift, &rt.shared).is_empty(), "{drift:#?}");
    for (path, type_id) in unseen {
        let unreadable = about(drift, path);
        assert_eq!(unreadable.len(), 1, "{drift:#?}");
        let e = unreadable[0];
        assert_eq!(e["activity_id"], 1, "{e:#}");
        assert_eq!(e["file"]["type_id"], type_id, "{e:#}");
        assert_eq!(
            e["unmapped"]["fim"]["flags"],
            serde_json::json!(["unreadable"])
        );
        assert_eq!(e["unmapped"]["fim"]["truncated_path"], false);
    }
    let rows = baseline(&state);
    check_baseline(&rows, &on_disk(&tree));
    assert_eq!(rows.len(), disk.len(), "the same paths");
    eprintln!("done in {:?}", test_started.elapsed());
}
