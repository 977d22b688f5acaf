//! Evasions: a change to a watched file made through another name, link, mount, namespace,
//! chroot, file handle, system call or submission interface (io_uring) is reported in realtime, at its watched name, with its
//! actor, on every backend (natively the tracepoint backend; in the VMs lsm, fentry and
//! tracepoint). The daemon runs in this process (`fim run`'s pipeline) on the backend under
//! test; a separate process (`fim-test-actor`) makes each change, and the test looks for the
//! OCSF line.
//!
//! Every scenario runs even when an earlier one failed; the test fails at the end with the
//! list of scenarios that did, so one run tells the whole story of a backend.

use std::ffi::{CString, OsString};
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fim::sensor::Backend;
use fim_tests::daemon::{Daemon, json_lines, metric};
use fim_tests::prometheus::free_port;
use fim_tests::{TestEnv, actor_path, require_root, test_env, unavailable};
use serde_json::Value;

const CREATE: i64 = 1;
const UPDATE: i64 = 3;
const DELETE: i64 = 4;
const RENAME: i64 = 5;
const SET_ATTRIBUTES: i64 = 6;

/// What must show up for one change.
struct Expect {
    /// The watched name the change must be reported at.
    path: PathBuf,
    activity: i64,
    /// The name the change was made through, when the report must say it (`used_path`).
    used: Option<PathBuf>,
}

struct Scenario {
    name: &'static str,
    /// Operations of one actor process (`fim-test-actor` arguments, `--` between them).
    actor: Vec<OsString>,
    expect: Vec<Expect>,
}

fn args(parts: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    parts.iter().map(|p| p.as_ref().to_owned()).collect()
}

struct Place {
    _dir: tempfile::TempDir,
    watched: PathBuf,
    outside: PathBuf,
    mounts: Vec<PathBuf>,
}

impl Drop for Place {
    fn drop(&mut self) {
        for mount in self.mounts.iter().rev() {
            let target = CString::new(mount.as_os_str().as_bytes()).unwrap();
            // SAFETY: a valid path; a failure only leaves a mount in a temporary directory.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

fn bind(source: &Path, target: &Path) {
    let (s, t) = (
        CString::new(source.as_os_str().as_bytes()).unwrap(),
        CString::new(target.as_os_str().as_bytes()).unwrap(),
    );
    // SAFETY: valid paths; the test runs as root.
    let rc = unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    assert_eq!(
        rc,
        0,
        "bind-mounting {} on {}: {}",
        source.display(),
        target.display(),
        std::io::Error::last_os_error()
    );
}

/// The tree, its files, the links and mounts the scenarios use, made before the daemon
/// starts (so its start scan sees them: a hard link's count among them).
fn place() -> Place {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(dir.path()).unwrap();
    let watched = base.join("watched");
    let outside = base.join("outside");
    std::fs::create_dir_all(watched.join("sub")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    for name in [
        "via-symlink",
        "via-link",
        "via-bind",
        "via-parent-bind",
        "via-namespace",
        "via-procfd",
        "via-procroot",
        "via-handle",
        "via-copy-range",
        "via-splice",
        "via-sendfile",
        "punched",
        "leaderless",
        "uring-written",
        "uring-renamed",
        "uring-unlinked",
        "uring-fallocated",
        "via-uring-link",
    ] {
        std::fs::write(
            watched.join(name),
            format!("{name}: the original content\n"),
        )
        .unwrap();
    }
    std::os::unix::fs::symlink(watched.join("via-symlink"), outside.join("symlink")).unwrap();
    std::fs::hard_link(watched.join("via-link"), outside.join("hardlink")).unwrap();
    std::fs::hard_link(
        watched.join("via-uring-link"),
        outside.join("uring-hardlink"),
    )
    .unwrap();
    std::fs::write(outside.join("source"), b"content from outside\n").unwrap();
    std::fs::write(outside.join("linked-later"), b"an outside file\n").unwrap();
    for name in ["bind", "parent-bind", "ns-bind", "ns-root"] {
        std::fs::create_dir(outside.join(name)).unwrap();
    }
    bind(&watched, &outside.join("bind"));
    // The directory above the tree, bound below itself: the tree is then reachable through
    // a mount whose root is not the tree (a plain bind takes no submounts, so no loop).
    bind(&base, &outside.join("parent-bind"));
    let mounts = vec![outside.join("bind"), outside.join("parent-bind")];
    Place {
        _dir: dir,
        watched,
        outside,
        mounts,
    }
}

fn scenarios(p: &Place) -> Vec<Scenario> {
    let (w, o) = (&p.watched, &p.outside);
    let e = |path: PathBuf, activity: i64, used: Option<PathBuf>| Expect {
        path,
        activity,
        used,
    };
    vec![
        Scenario {
            name: "write through a symlink outside the tree",
            actor: args(&[&"write", &o.join("symlink")]),
            expect: vec![e(w.join("via-symlink"), UPDATE, None)],
        },
        Scenario {
            name: "write through a hard link outside the tree",
            actor: args(&[&"write", &o.join("hardlink")]),
            expect: vec![e(w.join("via-link"), UPDATE, Some(o.join("hardlink")))],
        },
        Scenario {
            name: "chmod through a hard link outside the tree",
            actor: args(&[&"chmod", &o.join("hardlink"), &"0o600"]),
            expect: vec![e(w.join("via-link"), SET_ATTRIBUTES, None)],
        },
        Scenario {
            name: "truncate(2) through a hard link outside the tree",
            actor: args(&[&"truncate", &o.join("hardlink")]),
            expect: vec![e(w.join("via-link"), UPDATE, None)],
        },
        Scenario {
            name: "chown through a hard link outside the tree",
            actor: args(&[&"chown", &o.join("hardlink"), &"4321", &"4321"]),
            expect: vec![e(w.join("via-link"), SET_ATTRIBUTES, None)],
        },
        Scenario {
            // trusted.* works on tmpfs (the VMs' /tmp) and disk filesystems alike.
            name: "setxattr through a hard link outside the tree",
            actor: args(&[&"setxattr", &o.join("hardlink"), &"trusted.fim"]),
            expect: vec![e(w.join("via-link"), SET_ATTRIBUTES, None)],
        },
        Scenario {
            name: "hard link made while fim runs, then written through its outside name",
            actor: args(&[
                &"link",
                &o.join("linked-later"),
                &w.join("linked-later"),
                &"--",
                &"sleep",
                &"1000",
                &"--",
                &"write",
                &o.join("linked-later"),
            ]),
            expect: vec![
                e(w.join("linked-later"), CREATE, None),
                e(w.join("linked-later"), UPDATE, Some(o.join("linked-later"))),
            ],
        },
        Scenario {
            name: "write through a bind mount of the tree outside it",
            actor: args(&[&"write", &o.join("bind/via-bind")]),
            expect: vec![e(w.join("via-bind"), UPDATE, Some(o.join("bind/via-bind")))],
        },
        Scenario {
            name: "write through a bind mount of the directory above the tree",
            actor: args(&[&"write", &o.join("parent-bind/watched/via-parent-bind")]),
            expect: vec![e(
                w.join("via-parent-bind"),
                UPDATE,
                Some(o.join("parent-bind/watched/via-parent-bind")),
            )],
        },
        Scenario {
            name: "create through a bind mount of the tree outside it",
            actor: args(&[&"create", &o.join("bind/sub/made-through-bind")]),
            expect: vec![e(w.join("sub/made-through-bind"), CREATE, None)],
        },
        Scenario {
            name: "chmod through a bind mount of the tree outside it",
            actor: args(&[&"chmod", &o.join("bind/via-bind"), &"0o640"]),
            expect: vec![e(w.join("via-bind"), SET_ATTRIBUTES, None)],
        },
        Scenario {
            name: "write through a bind mount made in another mount namespace",
            actor: args(&[
                &"unshare-bind",
                w,
                &o.join("ns-bind"),
                &"--",
                &"write",
                &o.join("ns-bind/via-namespace"),
            ]),
            expect: vec![e(
                w.join("via-namespace"),
                UPDATE,
                Some(o.join("ns-bind/via-namespace")),
            )],
        },
        Scenario {
            name: "write through /proc/self/fd after a read-only open",
            actor: args(&[&"procfd-write", &w.join("via-procfd")]),
            expect: vec![e(w.join("via-procfd"), UPDATE, None)],
        },
        Scenario {
            name: "write through /proc/PID/root of a process in another mount namespace",
            actor: args(&[
                &"unshare-bind",
                w,
                &o.join("ns-root"),
                &"--",
                &"write",
                &PathBuf::from(format!(
                    "/proc/self/root{}",
                    o.join("ns-root/via-procroot").display()
                )),
            ]),
            expect: vec![e(w.join("via-procroot"), UPDATE, None)],
        },
        Scenario {
            name: "create from a chroot inside the tree",
            actor: args(&[&"--root", w, &"create", &"/made-in-chroot"]),
            expect: vec![e(w.join("made-in-chroot"), CREATE, None)],
        },
        Scenario {
            name: "write through open_by_handle_at",
            actor: args(&[&"handle-write", &w.join("via-handle")]),
            expect: vec![e(w.join("via-handle"), UPDATE, None)],
        },
        Scenario {
            name: "copy_file_range into a watched file",
            actor: args(&[&"copy-range", &o.join("source"), &w.join("via-copy-range")]),
            expect: vec![e(w.join("via-copy-range"), UPDATE, None)],
        },
        Scenario {
            name: "splice into a watched file",
            actor: args(&[&"splice", &o.join("source"), &w.join("via-splice")]),
            expect: vec![e(w.join("via-splice"), UPDATE, None)],
        },
        Scenario {
            name: "sendfile into a watched file",
            actor: args(&[&"sendfile", &o.join("source"), &w.join("via-sendfile")]),
            expect: vec![e(w.join("via-sendfile"), UPDATE, None)],
        },
        Scenario {
            name: "fallocate punching a hole",
            actor: args(&[&"punch", &w.join("punched"), &"0", &"8"]),
            expect: vec![e(w.join("punched"), UPDATE, None)],
        },
        Scenario {
            name: "O_TMPFILE written, then linked in with linkat",
            actor: args(&[&"tmpfile-link", w, &"from-tmpfile"]),
            expect: vec![e(w.join("from-tmpfile"), CREATE, None)],
        },
        Scenario {
            name: "write by a thread of a process whose leader exited",
            actor: args(&[&"leaderless-write", &w.join("leaderless")]),
            expect: vec![e(w.join("leaderless"), UPDATE, None)],
        },
        // io_uring only: no open, write, rename, unlink or mkdir system call is made (the
        // actor's uring-* operations), which blinds monitors built on syscall tracepoints.
        Scenario {
            name: "create and write with io_uring only",
            actor: args(&[
                &"uring-create",
                &w.join("sub/uring-created"),
                &"made by io_uring",
            ]),
            expect: vec![e(w.join("sub/uring-created"), CREATE, None)],
        },
        Scenario {
            name: "write with io_uring only",
            actor: args(&[
                &"uring-write",
                &w.join("uring-written"),
                &"changed by io_uring",
            ]),
            expect: vec![e(w.join("uring-written"), UPDATE, None)],
        },
        Scenario {
            name: "rename with io_uring only",
            actor: args(&[
                &"uring-rename",
                &w.join("uring-renamed"),
                &w.join("sub/uring-renamed"),
            ]),
            expect: vec![e(w.join("uring-renamed"), RENAME, None)],
        },
        Scenario {
            name: "unlink with io_uring only",
            actor: args(&[&"uring-unlink", &w.join("uring-unlinked")]),
            expect: vec![e(w.join("uring-unlinked"), DELETE, None)],
        },
        Scenario {
            name: "fallocate with io_uring only",
            actor: args(&[&"uring-fallocate", &w.join("uring-fallocated"), &"65536"]),
            expect: vec![e(w.join("uring-fallocated"), UPDATE, None)],
        },
        Scenario {
            name: "mkdir with io_uring only",
            actor: args(&[&"uring-mkdir", &w.join("uring-dir")]),
            expect: vec![e(w.join("uring-dir"), CREATE, None)],
        },
        Scenario {
            name: "write with io_uring through a hard link outside the tree",
            actor: args(&[
                &"uring-write",
                &o.join("uring-hardlink"),
                &"changed by io_uring",
            ]),
            expect: vec![e(w.join("via-uring-link"), UPDATE, None)],
        },
    ]
}

fn write_config(dir: &Path, tree: &Path, metrics: SocketAddr) -> PathBuf {
    let path = dir.join("fim.toml");
    std::fs::write(
        &path,
        format!(
            "state_dir = \"{}\"\n[output]\nfile = \"{}\"\n[metrics]\naddress = \"{metrics}\"\n\n\
             [[rule]]\nname = \"tree\"\ngroup = \"evasion\"\npath = \"{}\"\nrecursive = true\n",
            dir.join("state").display(),
            dir.join("out/fim.json").display(),
            tree.display()
        ),
    )
    .unwrap();
    path
}

/// The report of `expect` made by process `pid`, if there is one yet.
fn find<'a>(events: &'a [Value], expect: &Expect, pid: u32) -> Option<&'a Value> {
    let path = expect.path.to_string_lossy();
    events.iter().find(|e| {
        e["file"]["path"] == *path
            && e["activity_id"] == expect.activity
            && e["actor"]["process"]["pid"] == pid
    })
}

/// Reports at the expected path by anyone (to say what came instead).
fn others<'a>(events: &'a [Value], expect: &Expect) -> Vec<&'a Value> {
    let path = expect.path.to_string_lossy();
    events
        .iter()
        .filter(|e| e["file"]["path"] == *path)
        .collect()
}

/// What is wrong with a report (`None`: nothing).
fn check(report: &Value, expect: &Expect, pid: u32) -> Option<String> {
    let exe = actor_path().to_string_lossy().into_owned();
    let actor = &report["actor"]["process"];
    if actor["pid"] != pid {
        return Some(format!(
            "attributed to pid {} instead of {pid}",
            actor["pid"]
        ));
    }
    if actor["file"]["path"] != *exe {
        return Some(format!(
            "attributed to executable {} instead of {exe}",
            actor["file"]["path"]
        ));
    }
    if let Some(used) = &expect.used
        && report["unmapped"]["fim"]["used_path"] != *used.to_string_lossy()
    {
        return Some(format!(
            "used_path {} instead of {}",
            report["unmapped"]["fim"]["used_path"],
            used.display()
        ));
    }
    None
}

/// The backends' runs take turns: each starts a daemon, and three loading their programs at
/// once in a two-vCPU VM under TCG take minutes each.
static ONE_BACKEND_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn evasions(backend: Backend) {
    require_root();
    let _turn = ONE_BACKEND_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let place = place();
    let dir = tempfile::tempdir().unwrap();
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let config = write_config(dir.path(), &place.watched, metrics);
    let output = dir.path().join("out/fim.json");
    let mut daemon = Daemon::start_with(&config, Some(backend));
    // Ready once the start scan has stored the tree (fim_baseline_files counts its rows).
    let slow = test_env() == TestEnv::Vm;
    let start_deadline = Instant::now()
        + if slow {
            Duration::from_secs(300)
        } else {
            fim_tests::daemon::START_SCAN_TIMEOUT
        };
    loop {
        if let Some(error) = daemon.failed() {
            unavailable(backend, &error);
            return;
        }
        if metric(metrics, "fim_baseline_files").is_some_and(|n| n >= 14.0) {
            break;
        }
        assert!(
            Instant::now() < start_deadline,
            "the daemon on {} did not finish its start scan",
            backend.name()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let timeout = Duration::from_secs(if slow { 60 } else { 20 });
    let mut failures = Vec::new();
    for scenario in scenarios(&place) {
        let started = Instant::now();
        let pid = match fim_tests::run_actor(&scenario.actor) {
            Ok(pid) => pid,
            Err(e) => {
                failures.push(format!("{}: the actor failed: {e:#}", scenario.name));
                continue;
            }
        };
        for expect in &scenario.expect {
            let deadline = Instant::now() + timeout;
            let report = loop {
                let events = json_lines(&output);
                if let Some(report) = find(&events, expect, pid) {
                    break Some(report.clone());
                }
                if Instant::now() >= deadline {
                    let seen: Vec<String> = others(&events, expect)
                        .iter()
                        .map(|e| e.to_string())
                        .collect();
                    eprintln!(
                        "{}: reports at {} by others: {seen:#?}",
                        scenario.name,
                        expect.path.display()
                    );
                    break None;
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            match report {
                None => failures.push(format!(
                    "{}: no report of activity {} at {} by pid {pid} within {timeout:?}",
                    scenario.name,
                    expect.activity,
                    expect.path.display()
                )),
                Some(report) => {
                    if let Some(problem) = check(&report, expect, pid) {
                        failures.push(format!("{}: {problem}: {report}", scenario.name));
                    } else {
                        eprintln!(
                            "{} on {}: reported by {} after {:?}",
                            scenario.name,
                            backend.name(),
                            report["unmapped"]["fim"]["backend"],
                            started.elapsed()
                        );
                    }
                }
            }
        }
    }
    // Nothing outside the tree was reported as if it were a watched file.
    let outside = place.outside.to_string_lossy().into_owned();
    for event in json_lines(&output) {
        if event["file"]["path"]
            .as_str()
            .is_some_and(|p| p.starts_with(&outside))
        {
            failures.push(format!("reported at a name outside the tree: {event}"));
        }
    }
    daemon.stop();
    assert!(
        failures.is_empty(),
        "{} backend, {} scenario(s) failed:\n{}",
        backend.name(),
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn evasions_on_lsm() {
    evasions(Backend::Lsm);
}

#[test]
fn evasions_on_fentry() {
    evasions(Backend::Fentry);
}

#[test]
fn evasions_on_tracepoint() {
    evasions(Backend::Tracepoint);
}
