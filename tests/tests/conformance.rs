//! The conformance scenarios (DESIGN.md): each drives real syscalls from a separate process
//! (`fim-test-actor`) and asserts the exact records (kind, paths) and their attribution (pid,
//! parent, uid, comm), for every backend that must work where the tests run: natively the
//! tracepoint backend, in the QEMU VMs all three. A backend that cannot see something has it
//! written down in README's backend table, and the scenario asserts that documented behaviour.

use std::{
    ffi::{OsStr, OsString},
    os::unix::ffi::OsStringExt,
    path::{Path, PathBuf},
    time::Duration,
};

use fim::sensor::{Backend, Event, EventKind, SensorConfig};
use fim_tests::{
    TestEnv, WATCHED_RULE, bytes, collect, deep_tree, drain, run_actor, test_env, trees,
    watched_tree_config, with_own_sensor, with_sensor,
};

/// One expected record.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Expected {
    kind: EventKind,
    path: Vec<u8>,
    path2: Vec<u8>,
}

fn ev(kind: EventKind, path: &Path) -> Expected {
    Expected {
        kind,
        path: bytes(path),
        path2: Vec::new(),
    }
}

fn ev2(kind: EventKind, path: &Path, path2: &[u8]) -> Expected {
    Expected {
        kind,
        path: bytes(path),
        path2: path2.to_vec(),
    }
}

impl Expected {
    /// What a record says, in the terms scenarios expect.
    fn of(e: &Event) -> Expected {
        Expected {
            kind: e.kind,
            path: e.path.clone(),
            path2: e.path2.clone(),
        }
    }
}

/// What a scenario does and expects.
struct Scenario {
    actor: Vec<OsString>,
    expect: Vec<Expected>,
}

fn args(parts: &[&OsStr]) -> Vec<OsString> {
    parts.iter().map(|p| p.to_os_string()).collect()
}

/// Whether the backend hooks the LSM points (lsm, and fentry through the security_* functions).
fn lsm_like(backend: Backend) -> bool {
    matches!(backend, Backend::Lsm | Backend::Fentry)
}

/// A fresh directory for one scenario inside the watched tree (created by this process,
/// which the sensor excludes, so the setup itself produces no records).
fn scenario_dir(name: &str, backend: Backend) -> PathBuf {
    let dir = trees().watched.join(format!("{name}-{}", backend.name()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating the scenario directory");
    dir
}

fn unwatched_dir(name: &str, backend: Backend) -> PathBuf {
    let dir = trees().unwatched.join(format!("{name}-{}", backend.name()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating the unwatched directory");
    dir
}

fn show(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            format!(
                "{} {:?} {:?} flags={:#x}",
                e.kind.name(),
                String::from_utf8_lossy(&e.path),
                String::from_utf8_lossy(&e.path2),
                e.flags
            )
        })
        .collect()
}

fn run_scenario(backend: Backend, name: &str, build: impl FnOnce(Backend) -> Scenario) {
    with_sensor(backend, |runtime, sensor| {
        let scenario = build(backend);
        drain(runtime, sensor);
        let pid = run_actor(&scenario.actor).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let events = collect(
            runtime,
            sensor,
            pid,
            scenario.expect.len(),
            Duration::from_secs(10),
        );
        let actual: Vec<Expected> = events.iter().map(Expected::of).collect();
        assert_eq!(
            actual,
            scenario.expect,
            "{name} on the {} backend ({:?}):\n  got:      {:#?}\n  expected: {:#?}",
            backend.name(),
            test_env(),
            show(&events),
            scenario
                .expect
                .iter()
                .map(|e| format!(
                    "{} {:?} {:?}",
                    e.kind.name(),
                    String::from_utf8_lossy(&e.path),
                    String::from_utf8_lossy(&e.path2)
                ))
                .collect::<Vec<_>>()
        );
        for event in &events {
            assert_eq!(event.backend, backend);
            assert_eq!(event.actor.tgid, pid, "{name}: pid");
            assert_eq!(
                event.actor.ppid,
                std::process::id(),
                "{name}: parent of the actor"
            );
            assert_eq!(event.actor.uid, 0, "{name}: uid");
            assert_eq!(event.actor.euid, 0, "{name}: euid");
            assert_eq!(event.comm(), "fim-test-actor", "{name}: comm");
            assert!(
                event.actor.start_boottime_ns > 0,
                "{name}: process start time"
            );
            assert!(
                !event.truncated(),
                "{name}: a short path must not be marked truncated"
            );
            if event.rule_id != 0 {
                assert_eq!(event.rule_id, WATCHED_RULE, "{name}: rule id");
            }
            assert_eq!(
                event.flags & fim_common::flags::PATH1_D_PATH != 0,
                d_path_expected(backend, name, event.kind),
                "{name}: path of {} from bpf_d_path",
                event.kind.name()
            );
        }
        assert_eq!(
            sensor.lost_events().unwrap(),
            0,
            "{name}: records were lost"
        );
    });
}

/// Whether a record's path comes from bpf_d_path (README, "How the kernel side works"): lsm
/// and fentry use it where the kernel allows it, except for a chrooted process (d_path would
/// stop at its root); every other path is walked.
fn d_path_expected(backend: Backend, scenario: &str, kind: EventKind) -> bool {
    if !lsm_like(backend) || scenario == CHROOTED {
        return false;
    }
    match kind {
        // The LSM file_open hook and fexit on security_file_open.
        EventKind::OpenWrite => true,
        // fexit on security_path_truncate (the LSM path hooks may use it only from 6.8).
        // From 6.2 only truncate(2) goes through it: ftruncate and truncating opens call
        // security_file_truncate, which may not.
        EventKind::Truncate => {
            backend == Backend::Fentry && (scenario == "truncate_path" || !kernel_at_least(6, 2))
        }
        _ => false,
    }
}

/// Whether the running kernel is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = fim::host::kernel_release();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    version >= (major, minor)
}

/// Tests named lsm, fentry and tracepoint in module `$name`, each running `$case(backend)`.
macro_rules! each_backend {
    ($name:ident, $case:ident) => {
        mod $name {
            use super::*;

            #[test]
            fn lsm() {
                $case(Backend::Lsm);
            }

            #[test]
            fn fentry() {
                $case(Backend::Fentry);
            }

            #[test]
            fn tracepoint() {
                $case(Backend::Tracepoint);
            }
        }
    };
}

macro_rules! scenario {
    ($name:ident, $build:expr) => {
        mod $name {
            use super::*;

            #[test]
            fn lsm() {
                run_scenario(Backend::Lsm, stringify!($name), $build);
            }

            #[test]
            fn fentry() {
                run_scenario(Backend::Fentry, stringify!($name), $build);
            }

            #[test]
            fn tracepoint() {
                run_scenario(Backend::Tracepoint, stringify!($name), $build);
            }
        }
    };
}

fn touch(path: &Path) {
    std::fs::write(path, b"initial\n").expect("setup write");
}

scenario!(create, |b| {
    let dir = scenario_dir("create", b);
    let f = dir.join("new");
    Scenario {
        actor: args(&["create".as_ref(), f.as_ref()]),
        expect: created_written_closed(b, &f),
    }
});

scenario!(write_close, |b| existing_file_case(
    "write",
    b,
    &["write"],
    WRITE_CLOSE
));

scenario!(append, |b| existing_file_case(
    "append",
    b,
    &["append"],
    WRITE_CLOSE
));

scenario!(truncate_path, |b| existing_file_case(
    "truncate",
    b,
    &["truncate"],
    &[EventKind::Truncate]
));

// ftruncate on an open file: every backend reports the truncation between the open and the
// close (lsm/fentry through path_truncate on 6.1 and file_truncate from 6.2 on).
scenario!(ftruncate, |b| existing_file_case(
    "ftruncate",
    b,
    &["ftruncate"],
    &[
        EventKind::OpenWrite,
        EventKind::Truncate,
        EventKind::Modified
    ]
));

// open(O_TRUNC) of an existing file: the LSM backends see the truncation as such; the
// tracepoint backend sees an open whose flags carry O_TRUNC (README's backend table).
scenario!(open_with_o_trunc, |b| {
    let kinds: &[EventKind] = if lsm_like(b) {
        &[
            EventKind::OpenWrite,
            EventKind::Truncate,
            EventKind::Modified,
        ]
    } else {
        &[EventKind::OpenWrite, EventKind::Modified]
    };
    existing_file_case("opentrunc", b, &["opentrunc"], kinds)
});

/// `op [args...]` on an existing file (`op FILE ARGS...` for the actor) must produce exactly
/// the `kinds` records for it.
fn existing_file_case(name: &str, b: Backend, op: &[&str], kinds: &[EventKind]) -> Scenario {
    let f = scenario_dir(name, b).join("file");
    touch(&f);
    let mut actor = vec![OsString::from(op[0]), f.clone().into_os_string()];
    actor.extend(op[1..].iter().map(OsString::from));
    Scenario {
        actor,
        expect: kinds.iter().map(|k| ev(*k, &f)).collect(),
    }
}

/// A file created by open(O_CREAT), written and closed: lsm and fentry see path_mknod, then
/// file_open with write intent; the tracepoint backend sees the open that created it (at
/// exit); all report `modified` at the close.
fn created_written_closed(b: Backend, f: &Path) -> Vec<Expected> {
    let mut expect = vec![ev(EventKind::Create, f)];
    if lsm_like(b) {
        expect.push(ev(EventKind::OpenWrite, f));
    }
    expect.push(ev(EventKind::Modified, f));
    expect
}

/// Opened for writing, written, closed: the open and, at the close, `modified`.
const WRITE_CLOSE: &[EventKind] = &[EventKind::OpenWrite, EventKind::Modified];

/// Renames `from` (created first) to `to` (created first too when `replacing`).
fn rename_case(from: PathBuf, to: PathBuf, replacing: bool) -> Scenario {
    touch(&from);
    if replacing {
        touch(&to);
    }
    Scenario {
        actor: args(&["rename".as_ref(), from.as_ref(), to.as_ref()]),
        expect: vec![ev2(EventKind::Rename, &from, &bytes(&to))],
    }
}

scenario!(rename_within, |b| {
    let dir = scenario_dir("rename-within", b);
    rename_case(dir.join("a"), dir.join("b"), false)
});

scenario!(rename_into_watched, |b| {
    rename_case(
        unwatched_dir("rename-into", b).join("a"),
        scenario_dir("rename-into", b).join("a"),
        false,
    )
});

scenario!(rename_out_of_watched, |b| {
    rename_case(
        scenario_dir("rename-out", b).join("a"),
        unwatched_dir("rename-out", b).join("a"),
        false,
    )
});

// The kernel memoises the last directory's verdict per CPU (fim-ebpf's dirmemo.rs), valid
// while no rename has run: a directory moved into or out of the watched tree takes its new
// verdict at once. The move runs on another CPU than the writes: on the writes' CPU the
// memo then still holds the directory's old verdict, which the rename must void. (On the
// same CPU the rename's own filter checks would replace the memo and test nothing.)

/// Writes `from/file` on CPU 0, moves `from` to `to` on CPU 1, writes `to/file` on CPU 0.
fn moved_directory_case(from: PathBuf, to: PathBuf) -> Vec<OsString> {
    std::fs::create_dir(&from).expect("creating the directory to move");
    touch(&from.join("file"));
    args(&[
        "--cpu".as_ref(),
        "0".as_ref(),
        "write".as_ref(),
        from.join("file").as_ref(),
        "--".as_ref(),
        "cpu".as_ref(),
        "1".as_ref(),
        "--".as_ref(),
        "rename".as_ref(),
        from.as_ref(),
        to.as_ref(),
        "--".as_ref(),
        "cpu".as_ref(),
        "0".as_ref(),
        "--".as_ref(),
        "write".as_ref(),
        to.join("file").as_ref(),
    ])
}

scenario!(directory_moved_into_watched, |b| {
    let (from, to) = (
        unwatched_dir("dir-into", b).join("d"),
        scenario_dir("dir-into", b).join("d"),
    );
    let mut expect = vec![ev2(EventKind::Rename, &from, &bytes(&to))];
    expect.extend(WRITE_CLOSE.iter().map(|k| ev(*k, &to.join("file"))));
    Scenario {
        actor: moved_directory_case(from, to),
        expect,
    }
});

scenario!(directory_moved_out_of_watched, |b| {
    let (from, to) = (
        scenario_dir("dir-out", b).join("d"),
        unwatched_dir("dir-out", b).join("d"),
    );
    let mut expect: Vec<Expected> = WRITE_CLOSE
        .iter()
        .map(|k| ev(*k, &from.join("file")))
        .collect();
    expect.push(ev2(EventKind::Rename, &from, &bytes(&to)));
    Scenario {
        actor: moved_directory_case(from, to),
        expect,
    }
});

// The kernel also memoises the path of the last directory a path was built in (lsm and
// fentry; fim-ebpf's pathmemo.rs): a directory renamed inside the watched tree on another CPU
// must not leave its old path there.
scenario!(directory_moved_within_watched, |b| {
    let dir = scenario_dir("dir-within", b);
    let (from, to) = (dir.join("d"), dir.join("e"));
    Scenario {
        expect: moved_within_expected(&from, &to),
        actor: moved_directory_case(from, to),
    }
});

/// What `moved_directory_case` gives when both names are watched: the first write at the old
/// path, the rename, the second write at the new path.
fn moved_within_expected(from: &Path, to: &Path) -> Vec<Expected> {
    let mut expect: Vec<Expected> = WRITE_CLOSE
        .iter()
        .map(|k| ev(*k, &from.join("file")))
        .collect();
    expect.push(ev2(EventKind::Rename, from, &bytes(to)));
    expect.extend(WRITE_CLOSE.iter().map(|k| ev(*k, &to.join("file"))));
    expect
}

// The same with a directory exchanged with a file (renameat2 RENAME_EXCHANGE, the file
// named first): the kernel moves both, so the directory moves though the rename's source is
// a file, and the memos must drop its old path.
scenario!(directory_exchanged_with_file, |b| {
    let dir = scenario_dir("dir-exchanged", b);
    let (d, f) = (dir.join("d"), dir.join("f"));
    std::fs::create_dir(&d).expect("creating the directory to exchange");
    touch(&d.join("file"));
    touch(&f);
    let mut expect: Vec<Expected> = WRITE_CLOSE
        .iter()
        .map(|k| ev(*k, &d.join("file")))
        .collect();
    expect.push(ev2(EventKind::Rename, &f, &bytes(&d)));
    expect.extend(WRITE_CLOSE.iter().map(|k| ev(*k, &f.join("file"))));
    Scenario {
        actor: args(&[
            "--cpu".as_ref(),
            "0".as_ref(),
            "write".as_ref(),
            d.join("file").as_ref(),
            "--".as_ref(),
            "cpu".as_ref(),
            "1".as_ref(),
            "--".as_ref(),
            "exchange".as_ref(),
            f.as_ref(),
            d.as_ref(),
            "--".as_ref(),
            "cpu".as_ref(),
            "0".as_ref(),
            "--".as_ref(),
            "write".as_ref(),
            f.join("file").as_ref(),
        ]),
        expect,
    }
});

/// With the memos off (`SensorConfig::memos`) no program counts directory moves, and only the
/// dentry generation's untracked bit keeps the memos from being used: a directory renamed on
/// another CPU between two writes in it must still give the second write its new path.
fn memos_off_case(b: Backend) {
    let config = SensorConfig {
        memos: false,
        ..watched_tree_config()
    };
    with_own_sensor(b, &config, |runtime, sensor| {
        assert!(!sensor.dir_memo() && !sensor.path_memo(), "memos are on");
        let dir = scenario_dir("memos-off", b);
        let (from, to) = (dir.join("d"), dir.join("e"));
        let expect = moved_within_expected(&from, &to);
        drain(runtime, sensor);
        let pid = run_actor(&moved_directory_case(from, to)).expect("memos_off actor");
        let events = collect(runtime, sensor, pid, expect.len(), Duration::from_secs(10));
        let actual: Vec<Expected> = events.iter().map(Expected::of).collect();
        assert_eq!(actual, expect, "{:#?}", show(&events));
    });
}

each_backend!(memos_off, memos_off_case);

/// The configuration of a test's own sensor that watches `dir` (recursively, under
/// `WATCHED_RULE`) and nothing else.
fn own_root_config(dir: &Path) -> SensorConfig {
    SensorConfig {
        roots: vec![fim::sensor::WatchRoot {
            path: dir.to_path_buf(),
            rule_id: WATCHED_RULE,
            recursive: true,
        }],
        ..SensorConfig::default()
    }
}

/// Setting the same roots again, as the daemon's start-up self-test does twice, must not
/// leave a moment in which they are unwatched: while another process changes a watched file
/// `CHMODS` times, the roots are set again and again, and every change is reported. (When
/// the maps were emptied and filled again, this lost 5-10% of the changes on every backend.)
///
/// The memos are off: with them, lsm and fentry take the directory's verdict from the memo
/// they filled before the roots were set again, and only a change in another directory would
/// have looked up the maps in the gap.
fn roots_set_again_case(b: Backend) {
    const CHMODS: usize = 20_000;
    let dir = unwatched_dir("roots-again", b);
    let file = dir.join("file");
    touch(&file);
    let config = SensorConfig {
        memos: false,
        ..own_root_config(&dir)
    };
    with_own_sensor(b, &config, |runtime, sensor| {
        drain(runtime, sensor);
        let lost_before = sensor.lost_events().expect("reading the lost count");
        let mut child = std::process::Command::new(fim_tests::actor_path())
            .args([
                "chmods".as_ref(),
                file.as_os_str(),
                CHMODS.to_string().as_ref(),
            ])
            .spawn()
            .expect("spawning the test actor");
        let mut resets = 0u32;
        let status = loop {
            if let Some(status) = child.try_wait().expect("waiting for the test actor") {
                break status;
            }
            let problems = sensor
                .set_roots(&config.roots)
                .expect("setting the roots again");
            assert!(problems.is_empty(), "{problems:?}");
            resets += 1;
        };
        assert!(status.success(), "the test actor failed: {status}");
        let events = collect(runtime, sensor, child.id(), CHMODS, Duration::from_secs(60));
        let lost = sensor.lost_events().expect("reading the lost count") - lost_before;
        let chmods = events
            .iter()
            .filter(|e| e.kind == EventKind::Chmod && e.path == bytes(&file))
            .count();
        eprintln!(
            "roots_set_again on {}: {chmods} of {CHMODS} chmod records, roots set {resets} times, {lost} lost",
            b.name()
        );
        assert!(
            resets > 0,
            "the actor finished before the roots were set again"
        );
        assert_eq!(lost, 0, "records were lost in the ring buffer");
        assert_eq!(
            chmods, CHMODS,
            "chmod records while the roots were set again"
        );
        assert_eq!(
            events.len(),
            CHMODS,
            "{:#?}",
            show(&events[..events.len().min(20)])
        );
    });
}

each_backend!(roots_set_again, roots_set_again_case);

/// A program preempted while it builds a record holds its CPU's scratch slot (fim-ebpf's
/// `emit`); a program of another task on that CPU then drops its event and counts it as lost
/// rather than write into the half-built record. With the slot marked as held on every CPU,
/// a watched chmod is not reported by lsm and fentry, and the lost count grows. The
/// tracepoint backend's `sys_exit` programs, which run with preemption off, do not hold the
/// slot and still report it (its exec record, which does, is lost).
fn held_scratch_case(b: Backend) {
    let dir = unwatched_dir("held-scratch", b);
    let file = dir.join("file");
    touch(&file);
    let config = own_root_config(&dir);
    let chmod = |mode: &str| args(&["chmod".as_ref(), file.as_os_str(), OsStr::new(mode)]);
    let chmods = |events: &[Event]| {
        events
            .iter()
            .filter(|e| e.kind == EventKind::Chmod && e.path == bytes(&file))
            .count()
    };
    with_own_sensor(b, &config, |runtime, sensor| {
        drain(runtime, sensor);
        let pid = run_actor(&chmod("0600")).expect("chmod with the slot free");
        let events = collect(runtime, sensor, pid, 1, Duration::from_secs(10));
        assert_eq!(chmods(&events), 1, "{:#?}", show(&events));
        let lost_before = sensor.lost_events().expect("reading the lost count");
        sensor
            .hold_scratch_for_test()
            .expect("marking the slot held");
        let pid = run_actor(&chmod("0644")).expect("chmod with the slot held");
        let events = collect(runtime, sensor, pid, 1, Duration::from_secs(3));
        let lost = sensor.lost_events().expect("reading the lost count") - lost_before;
        if lsm_like(b) {
            assert_eq!(chmods(&events), 0, "{:#?}", show(&events));
        } else {
            assert_eq!(chmods(&events), 1, "{:#?}", show(&events));
        }
        // The chmod (lsm, fentry) and the actor's exec record, at least.
        let least = if lsm_like(b) { 2 } else { 1 };
        assert!(lost >= least, "{lost} lost, expected at least {least}");
    });
}

each_backend!(held_scratch, held_scratch_case);

scenario!(rename_replacing, |b| {
    let dir = scenario_dir("rename-replace", b);
    rename_case(dir.join("a"), dir.join("b"), true)
});

scenario!(atomic_save, |b| {
    let dir = scenario_dir("atomic-save", b);
    let (tmp, target) = (dir.join(".target.swp"), dir.join("target"));
    touch(&target);
    let mut expect = created_written_closed(b, &tmp);
    expect.push(ev2(EventKind::Rename, &tmp, &bytes(&target)));
    Scenario {
        actor: args(&[
            "create".as_ref(),
            tmp.as_ref(),
            "--".as_ref(),
            "rename".as_ref(),
            tmp.as_ref(),
            target.as_ref(),
        ]),
        expect,
    }
});

scenario!(unlink, |b| existing_file_case(
    "unlink",
    b,
    &["unlinkat"],
    &[EventKind::Unlink]
));

scenario!(unlink_glibc, |b| existing_file_case(
    "unlink-glibc",
    b,
    &["unlink"],
    &[EventKind::Unlink]
));

scenario!(mkdir_rmdir, |b| {
    let d = scenario_dir("mkdir", b).join("sub");
    Scenario {
        actor: args(&[
            "mkdir".as_ref(),
            d.as_ref(),
            "--".as_ref(),
            "rmdir".as_ref(),
            d.as_ref(),
        ]),
        expect: vec![ev(EventKind::Mkdir, &d), ev(EventKind::Rmdir, &d)],
    }
});

scenario!(chmod, |b| existing_file_case(
    "chmod",
    b,
    &["chmod", "0o600"],
    &[EventKind::Chmod]
));

scenario!(fchmod, |b| existing_file_case(
    "fchmod",
    b,
    &["fchmod", "0o640"],
    &[EventKind::Chmod]
));

scenario!(chown, |b| existing_file_case(
    "chown",
    b,
    &["chown", "1", "1"],
    &[EventKind::Chown]
));

scenario!(xattr_set_remove, |b| {
    let f = scenario_dir("xattr", b).join("file");
    touch(&f);
    // trusted.* works on tmpfs (the VMs' /tmp) and disk filesystems alike.
    let name = "trusted.fim";
    Scenario {
        actor: args(&[
            "setxattr".as_ref(),
            f.as_ref(),
            name.as_ref(),
            "--".as_ref(),
            "removexattr".as_ref(),
            f.as_ref(),
            name.as_ref(),
        ]),
        expect: vec![
            ev2(EventKind::SetXattr, &f, name.as_bytes()),
            ev2(EventKind::RemoveXattr, &f, name.as_bytes()),
        ],
    }
});

scenario!(hard_link_then_write, |b| {
    let dir = scenario_dir("link", b);
    let (f, g) = (dir.join("file"), dir.join("other-name"));
    touch(&f);
    Scenario {
        actor: args(&[
            "link".as_ref(),
            f.as_ref(),
            g.as_ref(),
            "--".as_ref(),
            "write".as_ref(),
            g.as_ref(),
        ]),
        expect: vec![
            ev2(EventKind::Link, &f, &bytes(&g)),
            ev(EventKind::OpenWrite, &g),
            ev(EventKind::Modified, &g),
        ],
    }
});

scenario!(symlink, |b| {
    let s = scenario_dir("symlink", b).join("link");
    Scenario {
        actor: args(&["symlink".as_ref(), "../some/target".as_ref(), s.as_ref()]),
        expect: vec![ev2(EventKind::Symlink, &s, b"../some/target")],
    }
});

scenario!(shared_mmap_write, |b| {
    let f = scenario_dir("mmap", b).join("file");
    std::fs::write(&f, vec![0u8; 4096]).unwrap();
    let mut expect = vec![ev(EventKind::OpenWrite, &f)];
    if lsm_like(b) {
        // The tracepoint backend has no mmap tracepoint: README's backend table says so.
        expect.push(ev(EventKind::MmapSharedWrite, &f));
    }
    expect.push(ev(EventKind::Modified, &f));
    Scenario {
        actor: args(&["mmapwrite".as_ref(), f.as_ref()]),
        expect,
    }
});

scenario!(relative_path_process_exits_at_once, |b| {
    let dir = scenario_dir("relative", b);
    Scenario {
        actor: args(&[
            "--cwd".as_ref(),
            dir.as_ref(),
            "mkdir".as_ref(),
            "sub".as_ref(),
        ]),
        expect: vec![ev(EventKind::Mkdir, &dir.join("sub"))],
    }
});

scenario!(odd_bytes_in_names, |b| {
    let dir = scenario_dir("odd-names", b);
    let name = OsString::from_vec(b"with space\nnewline \xff\xfe end".to_vec());
    let f = dir.join(&name);
    Scenario {
        actor: args(&["create".as_ref(), f.as_ref()]),
        expect: created_written_closed(b, &f),
    }
});

// `..` components climbing from an unwatched directory into the watched tree: the kernel's
// string filter cannot decide (tracepoint) and user space resolves the path.
scenario!(dot_dot_into_watched, |b| {
    let from = unwatched_dir("dotdot", b);
    let into = scenario_dir("dotdot", b);
    let mut spelled = from.into_os_string();
    spelled.push(format!("/../../watched/dotdot-{}/sub", b.name()));
    Scenario {
        actor: args(&["mkdir".as_ref(), spelled.as_ref()]),
        expect: vec![ev(EventKind::Mkdir, &into.join("sub"))],
    }
});

// `.` components and doubled slashes inside the watched tree: the path is reported clean.
scenario!(dot_and_double_slash, |b| {
    let dir = scenario_dir("dot-slash", b);
    let mut spelled = dir.clone().into_os_string();
    spelled.push("/.//sub");
    Scenario {
        actor: args(&["mkdir".as_ref(), spelled.as_ref()]),
        expect: vec![ev(EventKind::Mkdir, &dir.join("sub"))],
    }
});

// A file deeper below its watched root than the kernel's parent walk goes (64 levels): the
// kernel cannot decide, user space does, and the path is complete.
scenario!(deeper_than_the_walk_limit, |b| {
    let mut dir = scenario_dir("deep", b);
    for _ in 0..70 {
        dir.push("d");
    }
    std::fs::create_dir_all(&dir).expect("creating the deep tree");
    Scenario {
        actor: args(&["mkdir".as_ref(), dir.join("leaf").as_ref()]),
        expect: vec![ev(EventKind::Mkdir, &dir.join("leaf"))],
    }
});

// Deeper than the kernel's path walk used to go (128 steps): every path, including the one
// built from the file at its close, comes out whole.
scenario!(deeper_than_the_old_path_walk, |b| {
    let mut dir = scenario_dir("deeper", b);
    for _ in 0..140 {
        dir.push("d");
    }
    std::fs::create_dir_all(&dir).expect("creating the deep tree");
    let f = dir.join("f");
    Scenario {
        actor: args(&["create".as_ref(), f.as_ref()]),
        expect: created_written_closed(b, &f),
    }
});

// The longest path a syscall accepts (4095 bytes and the NUL): complete, not flagged
// truncated although it fills the kernel's buffer.
scenario!(a_path_of_exactly_4095_bytes, |b| {
    let mut dir = scenario_dir("longest", b);
    let target = 4095 - 1 - 20;
    while dir.as_os_str().len() < target {
        let remaining = target - dir.as_os_str().len();
        let mut name = (remaining - 1).min(200);
        if remaining - 1 - name == 1 {
            name -= 1;
        }
        dir.push("L".repeat(name));
    }
    std::fs::create_dir_all(&dir).expect("creating the long tree");
    let f = dir.join("F".repeat(20));
    assert_eq!(f.as_os_str().len(), 4095);
    Scenario {
        actor: args(&["create".as_ref(), f.as_ref()]),
        expect: created_written_closed(b, &f),
    }
});

// mkfifo(3) (the mknodat syscall) and mknod(2) of a character device: lsm and fentry see
// path_mknod, the tracepoint backend the two syscalls.
scenario!(fifo_and_device_node, |b| {
    let dir = scenario_dir("mknod", b);
    let (fifo, device) = (dir.join("fifo"), dir.join("zero"));
    Scenario {
        actor: args(&[
            "mkfifo".as_ref(),
            fifo.as_ref(),
            "--".as_ref(),
            "mknod".as_ref(),
            device.as_ref(),
            "1".as_ref(),
            "5".as_ref(),
        ]),
        expect: vec![ev(EventKind::Create, &fifo), ev(EventKind::Create, &device)],
    }
});

// A shared writable mapping of anonymous memory reaches mmap_file with a null file: nothing
// to report, and nothing may be read through it (a verifier that takes the hook's argument
// for trusted drops the program's null check). The creation after it shows the sensor
// carried on.
scenario!(anonymous_shared_mmap, |b| {
    let f = scenario_dir("mmapanon", b).join("after");
    Scenario {
        actor: args(&[
            "mmapanon".as_ref(),
            "--".as_ref(),
            "create".as_ref(),
            f.as_ref(),
        ]),
        expect: created_written_closed(b, &f),
    }
});

scenario!(unwatched_directory_is_silent, |b| {
    let f = unwatched_dir("silent", b).join("file");
    Scenario {
        actor: args(&[
            "create".as_ref(),
            f.as_ref(),
            "--".as_ref(),
            "chmod".as_ref(),
            f.as_ref(),
            "0o600".as_ref(),
            "--".as_ref(),
            "unlink".as_ref(),
            f.as_ref(),
        ]),
        expect: Vec::new(),
    }
});

/// A path longer than the kernel's path buffer (4096 bytes): reported with its leaf end and
/// flagged truncated, never as a wrong complete path.
fn longer_than_the_path_buffer(backend: Backend) {
    with_sensor(backend, |runtime, sensor| {
        let base = scenario_dir("long", backend);
        let deep = deep_tree(&base, &"n".repeat(200), 24);
        assert!(deep.as_os_str().len() > 4800);
        drain(runtime, sensor);
        let pid = run_actor(&[
            OsStr::new("--cwd"),
            deep.as_os_str(),
            OsStr::new("mkdir"),
            OsStr::new("leaf"),
        ])
        .expect("actor");
        let events = collect(runtime, sensor, pid, 1, Duration::from_secs(10));
        assert_eq!(events.len(), 1, "{:#?}", show(&events));
        let event = &events[0];
        assert_eq!(event.kind, EventKind::Mkdir);
        assert!(
            event.truncated(),
            "not flagged truncated: {:?}",
            show(&events)
        );
        let full = bytes(&deep.join("leaf"));
        assert!(
            event.path.len() < full.len() && full.ends_with(&event.path),
            "{} bytes reported are not the end of the {}-byte path",
            event.path.len(),
            full.len()
        );
        // The shared sensors run as `fim run` without --kernel-log: a kernel diagnostic for
        // this record is not even compiled into their programs (kernel_log.rs has it on).
        assert!(
            !sensor.kernel_log_calls(),
            "the {} sensor without kernel_log loaded programs with log calls",
            backend.name()
        );
    });
}

/// Every backend reports program executions with the executable (as /proc/PID/exe names it)
/// and the arguments, so a process that is gone by the time its change is processed still
/// has them.
fn exec_is_reported(backend: Backend) {
    with_sensor(backend, |runtime, sensor| {
        let dir = scenario_dir("exec", backend);
        drain(runtime, sensor);
        let pid = run_actor(&[OsStr::new("mkdir"), dir.join("sub").as_os_str()]).expect("actor");
        let events = fim_tests::collect_all(runtime, sensor, pid, 2, Duration::from_secs(10), true);
        let exec: Vec<&Event> = events
            .iter()
            .filter(|e| e.kind == EventKind::Exec)
            .collect();
        assert_eq!(exec.len(), 1, "{:#?}", show(&events));
        let actor = std::fs::canonicalize(fim_tests::actor_path()).unwrap();
        assert_eq!(exec[0].path, bytes(&actor));
        let mut args = fim_tests::actor_path().into_os_string().into_vec();
        args.extend_from_slice(b"\0mkdir\0");
        args.extend_from_slice(&bytes(&dir.join("sub")));
        args.push(0);
        assert_eq!(exec[0].path2, args);
        assert_eq!(exec[0].actor.tgid, pid);
    });
}

each_backend!(exec_record, exec_is_reported);

each_backend!(path_longer_than_the_buffer, longer_than_the_path_buffer);

/// fim's own process is an excluded actor: its changes in a watched tree are dropped in the
/// kernel. Then a separate process's change in the same place is still seen.
/// A configured excluded executable is dropped in the kernel for the process that ran it
/// (known from its exec record: pid and start time), and only for that process: the same
/// pid with another start time (a reused pid) is still reported.
fn configured_exclusion(backend: Backend) {
    with_sensor(backend, |runtime, sensor| {
        let dir = scenario_dir("configured-exclusion", backend);
        drain(runtime, sensor);
        let run = |sensor: &mut fim::sensor::Sensor, name: &str, start_offset: Option<u64>| {
            let target = dir.join(name);
            let mut child = std::process::Command::new(fim_tests::actor_path())
                .args([OsStr::new("sleep"), OsStr::new("700"), OsStr::new("--")])
                .args([OsStr::new("mkdir"), target.as_os_str()])
                .spawn()
                .expect("spawning the actor");
            let pid = child.id();
            let exec =
                fim_tests::collect_all(runtime, sensor, pid, 1, Duration::from_secs(5), true);
            let start = exec
                .iter()
                .find(|e| e.kind == EventKind::Exec)
                .map(|e| e.actor.start_boottime_ns)
                .expect("the actor's exec record");
            if let Some(offset) = start_offset {
                sensor
                    .exclude_actor(pid, start + offset)
                    .expect("excluding");
            }
            assert!(child.wait().unwrap().success());
            collect(runtime, sensor, pid, 1, Duration::from_secs(2))
        };
        let excluded = run(sensor, "by-excluded", Some(0));
        assert!(
            excluded.is_empty(),
            "excluded process reported: {:?}",
            show(&excluded)
        );
        let reused = run(sensor, "by-reused-pid", Some(1));
        assert_eq!(
            reused.iter().map(|e| e.kind).collect::<Vec<_>>(),
            vec![EventKind::Mkdir],
            "a process with another start time must not be excluded"
        );
    });
}

each_backend!(configured_exclusion, configured_exclusion);

fn excluded_actor(backend: Backend) {
    with_sensor(backend, |runtime, sensor| {
        let dir = scenario_dir("excluded", backend);
        drain(runtime, sensor);
        let own = dir.join("by-the-excluded-process");
        std::fs::write(&own, b"x").unwrap();
        std::fs::remove_file(&own).unwrap();
        let events = collect(
            runtime,
            sensor,
            std::process::id(),
            1,
            Duration::from_millis(700),
        );
        assert!(
            events.is_empty(),
            "excluded actor's changes were reported: {:?}",
            show(&events)
        );
        let f = dir.join("by-the-actor");
        touch(&f);
        let pid = run_actor(&[OsStr::new("unlink"), f.as_os_str()]).unwrap();
        let events = collect(runtime, sensor, pid, 1, Duration::from_secs(10));
        assert_eq!(
            events.iter().map(|e| e.kind).collect::<Vec<_>>(),
            vec![EventKind::Unlink]
        );
    });
}

each_backend!(excluded_actor, excluded_actor);

/// In the VMs the kernel is booted with `bpf` in `lsm=`; if that ever silently stops being
/// true the LSM results would be meaningless, so it is asserted on its own.
#[test]
fn bpf_lsm_is_active_in_the_vm() {
    fim_tests::require_root();
    let lsms = fim::host::active_lsms().expect("reading /sys/kernel/security/lsm");
    eprintln!("active LSMs: {}", lsms.join(","));
    if test_env() == TestEnv::Vm {
        assert!(
            lsms.iter().any(|l| l == "bpf"),
            "bpf missing from the VM's LSM list: {lsms:?}"
        );
    }
}

/// A mount this test made; unmounted (lazily) when dropped.
struct Mounted(PathBuf);

fn cstring(path: &Path) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes()).expect("no NUL in test paths")
}

/// mount(2), panicking with the error.
fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: &str,
) {
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
    let (source, target, fstype, data) =
        (source.map(cstring), cstring(target), fstype.map(c), c(data));
    let ptr = |s: &Option<std::ffi::CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: valid strings or null where mount(2) allows it.
    let rc = unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            data.as_ptr().cast(),
        )
    };
    assert_eq!(
        rc,
        0,
        "mount at {} (flags {flags:#x}): {}",
        target.to_string_lossy(),
        std::io::Error::last_os_error()
    );
}

impl Mounted {
    /// A small tmpfs at `at`.
    fn tmpfs(at: &Path) -> Mounted {
        mount(Some(Path::new("tmpfs")), at, Some("tmpfs"), 0, "size=1m");
        Mounted(at.to_path_buf())
    }

    /// `source` shown again at `at`.
    fn bind(source: &Path, at: &Path) -> Mounted {
        mount(Some(source), at, None, libc::MS_BIND, "");
        Mounted(at.to_path_buf())
    }

    /// Moves this mount to `to` (`mount --move`).
    fn move_to(self, to: &Path) -> Mounted {
        let from = self.0.clone();
        std::mem::forget(self);
        mount(Some(&from), to, None, libc::MS_MOVE, "");
        Mounted(to.to_path_buf())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        // SAFETY: unmounting what this test mounted.
        unsafe { libc::umount2(cstring(&self.0).as_ptr(), libc::MNT_DETACH) };
    }
}

/// The shared sensor's roots: the watched tree and `extra` (a scenario's own root, under
/// `WATCHED_RULE` too).
fn set_roots(sensor: &mut fim::sensor::Sensor, extra: Option<(&Path, bool)>) {
    let root = |path: &Path, recursive| fim::sensor::WatchRoot {
        path: path.to_path_buf(),
        rule_id: WATCHED_RULE,
        recursive,
    };
    let mut roots = vec![root(&trees().watched, true)];
    roots.extend(extra.map(|(path, recursive)| root(path, recursive)));
    let problems = sensor.set_roots(&roots).expect("registering the roots");
    assert!(problems.is_empty(), "{problems:?}");
}

/// The shared sensor's roots again, so that mounts made since are (un)registered and a
/// scenario's own root is gone.
fn reregister(backend: Backend) {
    with_sensor(backend, |_, sensor| set_roots(sensor, None));
}

/// A directory that becomes watched while the sensor runs is watched at once, even on a CPU
/// whose directory memo still holds its "unwatched" verdict (the roots' generation voids it).
fn root_added_while_running_case(b: Backend) {
    let dir = unwatched_dir("root-added", b);
    let file = dir.join("file");
    touch(&file);
    let write = args(&[
        "--cpu".as_ref(),
        "0".as_ref(),
        "write".as_ref(),
        file.as_ref(),
    ]);
    with_sensor(b, |runtime, sensor| {
        drain(runtime, sensor);
        // Unwatched: nothing reported, and CPU 0 remembers so.
        run_actor(&write).expect("writing in the unwatched directory");
        drain(runtime, sensor);
        set_roots(sensor, Some((&dir, true)));
    });
    run_scenario(b, "root_added_while_running", |_| Scenario {
        actor: write.clone(),
        expect: WRITE_CLOSE.iter().map(|k| ev(*k, &file)).collect(),
    });
    reregister(b);
}

each_backend!(root_added_while_running, root_added_while_running_case);

/// A single file watched on its own (a file rule, like one on /etc/passwd) in a directory
/// nothing watches: a write and a chmod of it, and a rename over it, are reported; the kernel
/// matches the object itself, not a directory above it. An unlink of a neighbour of the file
/// is not reported.
fn watched_file_case(b: Backend) {
    let dir = unwatched_dir("file-rule", b);
    let (file, other, neighbour) = (dir.join("file"), dir.join("other"), dir.join("neighbour"));
    touch(&file);
    touch(&other);
    touch(&neighbour);
    with_sensor(b, |_, sensor| set_roots(sensor, Some((&file, false))));
    run_scenario(b, "watched_file", |_| {
        let mut expect: Vec<Expected> = WRITE_CLOSE.iter().map(|k| ev(*k, &file)).collect();
        expect.push(ev(EventKind::Chmod, &file));
        expect.push(ev2(EventKind::Rename, &other, &bytes(&file)));
        Scenario {
            actor: args(&[
                "write".as_ref(),
                file.as_ref(),
                "--".as_ref(),
                "unlink".as_ref(),
                neighbour.as_ref(),
                "--".as_ref(),
                "chmod".as_ref(),
                file.as_ref(),
                "0o600".as_ref(),
                "--".as_ref(),
                "rename".as_ref(),
                other.as_ref(),
                file.as_ref(),
            ]),
            expect,
        }
    });
    reregister(b);
}

each_backend!(watched_file, watched_file_case);

/// Each record names its object as stat(2) does (device, inode number, file type): the daemon
/// goes by them. lsm and fentry know the object of every record; the tracepoint backend that
/// of an open file (open for writing, the close after a write), not of a path-only syscall.
fn target_identity_case(b: Backend) {
    use std::os::unix::fs::MetadataExt;
    let dir = scenario_dir("target-identity", b);
    let (file, gone) = (dir.join("file"), dir.join("gone"));
    touch(&file);
    touch(&gone);
    let stat = |p: &Path| std::fs::metadata(p).expect("stat");
    let (file_meta, gone_meta) = (stat(&file), stat(&gone));
    let actor = args(&[
        "write".as_ref(),
        file.as_ref(),
        "--".as_ref(),
        "chmod".as_ref(),
        file.as_ref(),
        "0o600".as_ref(),
        "--".as_ref(),
        "unlink".as_ref(),
        gone.as_ref(),
    ]);
    let kinds = [
        EventKind::OpenWrite,
        EventKind::Modified,
        EventKind::Chmod,
        EventKind::Unlink,
    ];
    with_sensor(b, |runtime, sensor| {
        drain(runtime, sensor);
        let pid = run_actor(&actor).expect("target_identity actor");
        let events = collect(runtime, sensor, pid, kinds.len(), Duration::from_secs(10));
        assert_eq!(
            events.iter().map(|e| e.kind).collect::<Vec<_>>(),
            kinds,
            "{:#?}",
            show(&events)
        );
        for event in &events {
            let meta = if event.kind == EventKind::Unlink {
                &gone_meta
            } else {
                &file_meta
            };
            let known = event.flags & fim_common::flags::TARGET_KNOWN != 0;
            let expected_known =
                lsm_like(b) || matches!(event.kind, EventKind::OpenWrite | EventKind::Modified);
            assert_eq!(known, expected_known, "{}: target known", event.kind.name());
            if !known {
                continue;
            }
            assert_eq!(event.target.ino, meta.ino(), "{}: inode", event.kind.name());
            assert_eq!(
                event.target.dev,
                fim::sensor::watch::kernel_dev(meta.dev()),
                "{}: device",
                event.kind.name()
            );
            assert_eq!(
                event.target.mode & libc::S_IFMT,
                libc::S_IFREG,
                "{}: file type",
                event.kind.name()
            );
        }
    });
}

each_backend!(target_identity, target_identity_case);

/// The directory memo needs `rename_lock` from /proc/kallsyms, and the path memo `mount_lock`
/// too, which the VM kernels (Debian's) list; without them the memo scenarios above would pass
/// without exercising them.
#[test]
fn directory_memo_is_on_in_the_vm() {
    if test_env() != TestEnv::Vm {
        eprintln!("not in the VM: the memo is on where /proc/kallsyms lists rename_lock");
        return;
    }
    with_sensor(Backend::Lsm, |_, sensor| {
        assert!(
            sensor.dir_memo(),
            "the kernel side's directory memo is off in the VM"
        );
        assert!(
            sensor.path_memo(),
            "the kernel side's path memo is off in the VM (needs mount_lock in /proc/kallsyms)"
        );
    });
}

/// One directory through two mounts (a bind mount, both in the watched tree): a write in each
/// on the same CPU is reported at its own path. The path memo's key holds the mount, or the
/// second would come out at the first one's path.
fn bind_mounted_directory_case(b: Backend) {
    let dir = scenario_dir("bind", b);
    let (real, bound) = (dir.join("real"), dir.join("bound"));
    std::fs::create_dir(&real).expect("creating the directory");
    std::fs::create_dir(&bound).expect("creating the mount point");
    touch(&real.join("file"));
    let mounted = Mounted::bind(&real, &bound);
    reregister(b);
    run_scenario(b, "bind_mounted_directory", |_| {
        let mut expect: Vec<Expected> = WRITE_CLOSE
            .iter()
            .map(|k| ev(*k, &real.join("file")))
            .collect();
        expect.extend(WRITE_CLOSE.iter().map(|k| ev(*k, &bound.join("file"))));
        Scenario {
            actor: args(&[
                "--cpu".as_ref(),
                "0".as_ref(),
                "write".as_ref(),
                real.join("file").as_ref(),
                "--".as_ref(),
                "write".as_ref(),
                bound.join("file").as_ref(),
            ]),
            expect,
        }
    });
    drop(mounted);
    reregister(b);
}

each_backend!(bind_mounted_directory, bind_mounted_directory_case);

/// A filesystem moved (`mount --move`) inside the watched tree between two writes on the same
/// CPU: the second is reported at the new place, so the move must void the path memo. Either
/// of its checks does that here: the mount sequence, and the rename sequence, which the move
/// bumps too (the kernel marks the destination a mount point under `rename_lock`, in
/// `d_set_mounted`). The moves happen inside a private tmpfs of the test's own (a mount under a
/// shared one cannot be moved).
fn mount_moved_case(b: Backend) {
    let arena = scenario_dir("mount-moved", b).join("arena");
    std::fs::create_dir(&arena).expect("creating the arena");
    let outer = Mounted::tmpfs(&arena);
    mount(None, &arena, None, libc::MS_PRIVATE, "");
    let (from, to) = (arena.join("m1"), arena.join("m2"));
    std::fs::create_dir(&from).expect("creating a mount point");
    std::fs::create_dir(&to).expect("creating a mount point");
    let inner = Mounted::tmpfs(&from);
    touch(&from.join("file"));
    reregister(b);
    let write = |dir: &Path| {
        args(&[
            "--cpu".as_ref(),
            "0".as_ref(),
            "write".as_ref(),
            dir.join("file").as_ref(),
        ])
    };
    // CPU 0 builds (and remembers) the path in the filesystem at its first place.
    with_sensor(b, |runtime, sensor| {
        drain(runtime, sensor);
        run_actor(&write(&from)).expect("writing before the move");
        drain(runtime, sensor);
    });
    let inner = inner.move_to(&to);
    run_scenario(b, "mount_moved", |_| Scenario {
        actor: write(&to),
        expect: WRITE_CLOSE
            .iter()
            .map(|k| ev(*k, &to.join("file")))
            .collect(),
    });
    drop(inner);
    drop(outer);
    reregister(b);
}

each_backend!(mount_moved, mount_moved_case);

/// A filesystem mounted inside the watched tree is watched too (its root is registered when the
/// roots are), and a filesystem with nothing watched on it is dropped at once by the kernel's
/// per-filesystem check: a creation in each, only the first reported.
fn mounted_filesystems_case(b: Backend) {
    let inside = scenario_dir("mounted", b).join("mnt");
    let outside = unwatched_dir("mounted", b).join("mnt");
    std::fs::create_dir(&inside).expect("mount point");
    std::fs::create_dir(&outside).expect("mount point");
    let mounts = (Mounted::tmpfs(&inside), Mounted::tmpfs(&outside));
    reregister(b);
    let (seen, unseen) = (inside.join("new"), outside.join("new"));
    run_scenario(b, "mounted_filesystems", |b| Scenario {
        actor: args(&[
            "create".as_ref(),
            unseen.as_ref(),
            "--".as_ref(),
            "create".as_ref(),
            seen.as_ref(),
        ]),
        expect: created_written_closed(b, &seen),
    });
    drop(mounts);
    reregister(b);
}

each_backend!(mounted_filesystems, mounted_filesystems_case);

// A chrooted process names paths from its own root: `/file` inside a jail under the watched
// tree is reported at its real place, on every backend (the tracepoint backend puts the
// root's path in front of the string; lsm and fentry walk the dentries instead of using
// `bpf_d_path`, which would stop at the jail's root).
const CHROOTED: &str = "chrooted_actor";

scenario!(chrooted_actor, |b| {
    let jail = scenario_dir("chroot", b);
    let existing = jail.join("file");
    touch(&existing);
    let created = jail.join("new");
    let mut expect: Vec<Expected> = WRITE_CLOSE.iter().map(|k| ev(*k, &existing)).collect();
    expect.extend(created_written_closed(b, &created));
    Scenario {
        actor: args(&[
            "--root".as_ref(),
            jail.as_ref(),
            "write".as_ref(),
            "/file".as_ref(),
            "--".as_ref(),
            "create".as_ref(),
            "/new".as_ref(),
        ]),
        expect,
    }
});

/// The actor of each record is the task's at that moment, also when it changes between
/// records from one process on one CPU: another thread, a new comm, new credentials (lsm and
/// fentry read them by plain loads, the tracepoint backend through helpers).
fn actor_changes_case(b: Backend) {
    let dir = scenario_dir("actor-changes", b);
    let names = ["first", "in-thread", "again", "renamed", "new-gid"];
    let paths: Vec<PathBuf> = names.iter().map(|n| dir.join(n)).collect();
    let mkdir = |p: &PathBuf| -> Vec<OsString> { args(&["mkdir".as_ref(), p.as_ref()]) };
    let mut actor = args(&["--cpu".as_ref(), "0".as_ref()]);
    let steps: Vec<Vec<OsString>> = vec![
        mkdir(&paths[0]),
        [vec!["thread".into()], mkdir(&paths[1])].concat(),
        mkdir(&paths[2]),
        args(&["comm".as_ref(), "fim-renamed".as_ref()]),
        mkdir(&paths[3]),
        args(&["setgid".as_ref(), "65534".as_ref()]),
        mkdir(&paths[4]),
    ];
    for (i, step) in steps.into_iter().enumerate() {
        if i > 0 {
            actor.push("--".into());
        }
        actor.extend(step);
    }
    with_sensor(b, |runtime, sensor| {
        drain(runtime, sensor);
        let pid = run_actor(&actor).expect("actor_changes actor");
        let events = collect(runtime, sensor, pid, names.len(), Duration::from_secs(10));
        let expected: Vec<Expected> = paths.iter().map(|p| ev(EventKind::Mkdir, p)).collect();
        let actual: Vec<Expected> = events.iter().map(Expected::of).collect();
        assert_eq!(actual, expected, "{:#?}", show(&events));
        for (event, name) in events.iter().zip(names) {
            let a = &event.actor;
            assert_eq!(a.tgid, pid, "{name}: tgid");
            assert_eq!(a.ppid, std::process::id(), "{name}: parent");
            assert_eq!((a.uid, a.euid), (0, 0), "{name}: uid, euid");
            assert_eq!(
                a.pid != a.tgid,
                name == "in-thread",
                "{name}: thread id {} in process {}",
                a.pid,
                a.tgid
            );
            let comm = if matches!(name, "renamed" | "new-gid") {
                "fim-renamed"
            } else {
                "fim-test-actor"
            };
            assert_eq!(event.comm(), comm, "{name}: comm");
            let gid = if name == "new-gid" { 65534 } else { 0 };
            assert_eq!(a.gid, gid, "{name}: gid");
        }
        assert_eq!(sensor.lost_events().unwrap(), 0, "records were lost");
    });
}

each_backend!(actor_changes, actor_changes_case);

/// A directory removed and another created, on a filesystem that frees a dentry as soon as it
/// is unused (tmpfs): the new directory's dentry often takes the old one's memory, while
/// another CPU's memos still hold the old one's address with no rename or mount since. A
/// change in the new directory must come out at its own path. Several rounds, as reuse is
/// likely, not certain.
fn directory_replaced_case(b: Backend) {
    const ROUNDS: usize = 4;
    let mnt = scenario_dir("replaced", b).join("mnt");
    std::fs::create_dir(&mnt).expect("mount point");
    let mounted = Mounted::tmpfs(&mnt);
    reregister(b);
    let mut actor: Vec<OsString> = args(&["--cpu".as_ref(), "1".as_ref()]);
    let mut expect = Vec::new();
    let mut op = |parts: &[&OsStr]| {
        if actor.len() > 2 {
            actor.push("--".into());
        }
        actor.extend(args(parts));
    };
    for round in 0..ROUNDS {
        let (old, new) = (
            mnt.join(format!("old{round}")),
            mnt.join(format!("new{round}")),
        );
        std::fs::create_dir(&old).expect("creating the directory to remove");
        let (x, y) = (old.join("x"), new.join("y"));
        op(&["cpu".as_ref(), "1".as_ref()]);
        op(&["create".as_ref(), x.as_ref()]);
        op(&["cpu".as_ref(), "0".as_ref()]);
        op(&["unlink".as_ref(), x.as_ref()]);
        op(&["rmdir".as_ref(), old.as_ref()]);
        // Past an RCU grace period, so that the old dentry is freed.
        op(&["sleep".as_ref(), "100".as_ref()]);
        op(&["mkdir".as_ref(), new.as_ref()]);
        op(&["cpu".as_ref(), "1".as_ref()]);
        op(&["create".as_ref(), y.as_ref()]);
        expect.extend(created_written_closed(b, &x));
        expect.push(ev(EventKind::Unlink, &x));
        expect.push(ev(EventKind::Rmdir, &old));
        expect.push(ev(EventKind::Mkdir, &new));
        expect.extend(created_written_closed(b, &y));
    }
    run_scenario(b, "directory_replaced", |_| Scenario { actor, expect });
    drop(mounted);
    reregister(b);
}

each_backend!(directory_replaced, directory_replaced_case);
