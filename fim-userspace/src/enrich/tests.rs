use std::os::unix::ffi::OsStrExt;

use fim_common::{Actor as KernelActor, Args, Target, flags};

use super::*;
use crate::sensor::{Backend, EventKind};

/// A record as the kernel would write it for process `pid` started at `start_boottime_ns`.
fn event_of(pid: u32, start_boottime_ns: u64, comm: &str) -> Event {
    let mut comm_bytes = [0u8; 16];
    comm_bytes[..comm.len().min(15)].copy_from_slice(&comm.as_bytes()[..comm.len().min(15)]);
    Event {
        kind: EventKind::Chmod,
        backend: Backend::Lsm,
        source: crate::sensor::Source::Kernel,
        flags: 0,
        rule_id: 1,
        ktime_ns: 0,
        actor: KernelActor {
            tgid: pid,
            pid,
            ppid: 1,
            uid: 0,
            loginuid: u32::MAX,
            start_boottime_ns,
            comm: comm_bytes,
            ..KernelActor::default()
        },
        target: Target::default(),
        args: Args::default(),
        path: b"/etc/x".to_vec(),
        path2: Vec::new(),
        used_path: None,
    }
}

/// This process's start time in ns since boot, from /proc (tick precision).
fn own_start_ns() -> u64 {
    let cache = ProcessCache::new();
    let ticks = cache.proc_start_ticks(std::process::id()).unwrap();
    ticks * (1_000_000_000 / cache.ticks_per_sec)
}

#[test]
fn a_live_process_is_fully_attributed_and_then_cached() {
    let mut cache = ProcessCache::new();
    let event = event_of(std::process::id(), own_start_ns(), "test");
    let p = cache.actor(&event);
    let exe = std::env::current_exe().unwrap();
    assert_eq!(p.actor.exe.as_deref(), Some(exe.as_os_str().as_bytes()));
    let cmdline = String::from_utf8_lossy(p.actor.cmdline.as_deref().unwrap()).into_owned();
    let name = exe.file_name().unwrap().to_string_lossy().into_owned();
    assert!(cmdline.contains(&name), "{cmdline}");
    assert_eq!(p.actor.user.as_deref(), Some("root"));
    let again = cache.actor(&event);
    assert!(Arc::ptr_eq(&p, &again));
    assert_eq!((cache.hits, cache.misses), (1, 1));
}

#[test]
fn a_reused_pid_is_not_attributed_to_the_new_process() {
    let mut cache = ProcessCache::new();
    // Our pid, but a start time an hour off: the record was about another process.
    let event = event_of(
        std::process::id(),
        own_start_ns() + 3_600_000_000_000,
        "old",
    );
    let p = cache.actor(&event);
    assert_eq!(p.actor.exe, None);
    assert_eq!(p.actor.cmdline, None);
    assert_eq!(p.actor.pid, Some(std::process::id()));
    assert_eq!(p.actor.comm.as_deref(), Some("old"));
}

#[test]
fn an_exited_process_is_unknown_not_guessed() {
    let mut child = std::process::Command::new("/bin/true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    let mut cache = ProcessCache::new();
    let p = cache.actor(&event_of(pid, own_start_ns(), "true"));
    assert_eq!(p.actor.exe, None);
    assert_eq!(p.actor.comm.as_deref(), Some("true"));
}

#[test]
fn command_lines_are_quoted_where_needed() {
    assert_eq!(command_line(b"vi\0/etc/passwd\0"), b"vi /etc/passwd");
    assert_eq!(
        command_line(b"sh\0-c\0echo hi > /etc/x\0"),
        b"sh -c 'echo hi > /etc/x'"
    );
    assert_eq!(command_line(b"a\0it's\0"), b"a 'it'\\''s'");
}

/// An exec whose arguments did not fit in the record (flagged PATH2_TRUNCATED) still names
/// its executable exactly; only a cut executable path is left out.
#[test]
fn a_cut_command_line_keeps_the_executable() {
    // A pid that cannot be running: everything comes from the records.
    let pid = u32::MAX - 7;
    let exec_of = |exe: &[u8], record_flags: u16| {
        let mut exec = event_of(pid, 42, "tool");
        exec.kind = EventKind::Exec;
        exec.path = exe.to_vec();
        exec.path2 = [&b"tool\0"[..], &[b'a'; 4000]].concat();
        exec.flags = flags::PATH2_IS_STRING | record_flags;
        exec
    };
    let mut cache = ProcessCache::new();
    cache.exec(&exec_of(b"/usr/bin/tool", flags::PATH2_TRUNCATED));
    let p = cache.actor(&event_of(pid, 42, "tool"));
    assert_eq!(p.actor.exe.as_deref(), Some(&b"/usr/bin/tool"[..]));
    assert!(
        p.actor
            .cmdline
            .as_deref()
            .unwrap()
            .starts_with(b"tool aaaa")
    );

    let mut cache = ProcessCache::new();
    cache.exec(&exec_of(b"/bin/tool", flags::PATH1_TRUNCATED));
    assert_eq!(cache.actor(&event_of(pid, 42, "tool")).actor.exe, None);
}

/// What the completeness layer (fanotify) gives for process `pid`: the start time only to
/// the clock tick (from /proc), no thread id.
fn layer_event_of(pid: u32, start_boottime_ns: u64, comm: &str) -> Event {
    let cache = ProcessCache::new();
    let ns_per_tick = 1_000_000_000 / cache.ticks_per_sec;
    let mut event = event_of(pid, start_boottime_ns / ns_per_tick * ns_per_tick, comm);
    event.source = crate::sensor::Source::Fanotify;
    event
}

/// This process's comm, as /proc shows it.
fn own_comm() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn a_completeness_actor_is_found_in_proc_within_a_tick() {
    let mut cache = ProcessCache::new();
    let p = cache.actor(&layer_event_of(
        std::process::id(),
        own_start_ns(),
        &own_comm(),
    ));
    let exe = std::env::current_exe().unwrap();
    assert_eq!(p.actor.exe.as_deref(), Some(exe.as_os_str().as_bytes()));
    assert_eq!(p.actor.pid, Some(std::process::id()));
    // A start time an hour off is another process with the same pid.
    let other = cache.actor(&layer_event_of(
        std::process::id(),
        own_start_ns() + 3_600_000_000_000,
        &own_comm(),
    ));
    assert_eq!(other.actor.exe, None);
}

#[test]
fn a_completeness_actor_finds_the_exec_record_of_its_process_only() {
    // A pid that cannot be running: only the exec record can tell.
    let pid = u32::MAX - 9;
    let start = 5_000_000_123;
    let mut exec = event_of(pid, start, "tool");
    exec.kind = EventKind::Exec;
    exec.path = b"/usr/bin/tool".to_vec();
    exec.path2 = b"tool\0-x\0".to_vec();
    exec.flags = flags::PATH2_IS_STRING;
    let mut cache = ProcessCache::new();
    cache.exec(&exec);
    let p = cache.actor(&layer_event_of(pid, start, "tool"));
    assert_eq!(p.actor.exe.as_deref(), Some(&b"/usr/bin/tool"[..]));
    assert_eq!(p.actor.cmdline.as_deref(), Some(&b"tool -x"[..]));
    // The same pid started a second later, or the process after another exec: not it.
    let later = cache.actor(&layer_event_of(pid, start + 1_000_000_000, "tool"));
    assert_eq!(later.actor.exe, None);
    let renamed = cache.actor(&layer_event_of(pid, start, "other"));
    assert_eq!(renamed.actor.exe, None);
}

/// A record from a thread with a comm of its own (an io_uring worker, `iou-wrk-N`) of a
/// process gone from /proc: its program is the one the process's last exec before the
/// record started (same pid, same start to the nanosecond); the thread keeps its own comm.
/// A record from before that exec, or of another process with the pid, gets none.
#[test]
fn a_gone_process_thread_with_its_own_comm_gets_its_exec() {
    let pid = u32::MAX - 13;
    let start = 9_000_000_000;
    let mut exec = event_of(pid, start, "tool");
    exec.kind = EventKind::Exec;
    exec.ktime_ns = 10_000;
    exec.path = b"/usr/bin/tool".to_vec();
    exec.path2 = b"tool\0-y\0".to_vec();
    exec.flags = flags::PATH2_IS_STRING;
    let record = |ktime_ns: u64, start: u64| {
        let mut e = event_of(pid, start, &format!("iou-wrk-{pid}"));
        e.ktime_ns = ktime_ns;
        e
    };
    let cache_after_exec = || {
        let mut cache = ProcessCache::new();
        cache.exec(&exec);
        cache
    };
    let p = cache_after_exec().actor(&record(20_000, start));
    assert_eq!(p.actor.exe.as_deref(), Some(&b"/usr/bin/tool"[..]));
    assert_eq!(p.actor.cmdline.as_deref(), Some(&b"tool -y"[..]));
    assert!(p.actor.comm.as_deref().unwrap().starts_with("iou-wrk-"));
    let before = cache_after_exec().actor(&record(5_000, start));
    assert_eq!(before.actor.exe, None, "made before the exec");
    let other = cache_after_exec().actor(&record(20_000, start + 1));
    assert_eq!(other.actor.exe, None, "another process with the pid");
}

/// A process gone before the layer read its event: no comm, and the start time the sensor
/// recorded at its fork (to the microsecond, not the tick). Its exec record is found by pid
/// and start time; a later process with that pid is not it.
#[test]
fn a_gone_completeness_actor_is_found_by_its_recorded_fork() {
    let pid = u32::MAX - 11;
    let exec_start = 7_000_000_000;
    let mut exec = event_of(pid, exec_start, "tool");
    exec.kind = EventKind::Exec;
    exec.path = b"/usr/bin/tool".to_vec();
    exec.flags = flags::PATH2_IS_STRING;
    let mut cache = ProcessCache::new();
    cache.exec(&exec);
    let gone = |start: u64| {
        let mut event = event_of(pid, start, "");
        event.actor.comm = [0; 16];
        event.source = crate::sensor::Source::Fanotify;
        event
    };
    let p = cache.actor(&gone(exec_start + 40_000));
    assert_eq!(p.actor.exe.as_deref(), Some(&b"/usr/bin/tool"[..]));
    let later = cache.actor(&gone(exec_start + 2_000_000_000));
    assert_eq!(later.actor.exe, None);
    assert_eq!(later.actor.pid, Some(pid));
}

#[test]
fn a_completeness_actor_with_only_a_pid_is_only_a_pid() {
    let mut cache = ProcessCache::new();
    // Our own pid, which /proc would describe: without a start time it may be another
    // process's by now, so nothing is read, and no uid or parent is made up.
    let mut event = layer_event_of(std::process::id(), 0, "");
    event.actor.ppid = 0;
    let p = cache.actor(&event);
    assert_eq!(p.actor.pid, Some(std::process::id()));
    assert_eq!(
        (p.actor.exe.as_ref(), p.actor.uid, p.actor.ppid),
        (None, None, None)
    );
    assert_eq!(p.actor.comm, None);
    assert_eq!(cache.len(), 0, "nothing cached under an unknown start");
}
