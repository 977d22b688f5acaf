//! The process behind a fanotify event, as far as it can be known for certain.
//!
//! fanotify gives the pid (the thread group; io_uring work done by the kernel's io-wq
//! workers carries the submitting process's) and, with `FAN_REPORT_PIDFD`, a pidfd of that
//! very process while it still exists. /proc/PID is read, and then the pidfd is asked whether
//! its process still exists: if it does, the pid was not reused in between and what /proc
//! said is about the process that caused the event. Otherwise only the pid is reported.
//! The start time (from /proc, so to the clock tick) lets the enrichment find the process in
//! its cache and tell it from a later one with the same pid (`enrich`).

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};

use fim_common::Actor;

use crate::host::{ProcStat, parse_proc_stat};

/// What /proc/PID said about a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcInfo {
    pub ppid: u32,
    pub start_ticks: u64,
    pub comm: [u8; 16],
    pub uid: u32,
    pub euid: u32,
    pub gid: u32,
    pub loginuid: u32,
}

/// `/proc/PID/status`: real and effective uid, real gid.
pub fn parse_status(status: &[u8]) -> Option<(u32, u32, u32)> {
    let text = std::str::from_utf8(status).ok()?;
    let ids = |key: &str| -> Option<Vec<u32>> {
        let line = text.lines().find_map(|l| l.strip_prefix(key))?;
        line.split_ascii_whitespace()
            .map(|v| v.parse().ok())
            .collect()
    };
    let uids = ids("Uid:")?;
    let gids = ids("Gid:")?;
    Some((*uids.first()?, *uids.get(1)?, *gids.first()?))
}

fn read_proc(pid: i32) -> Option<ProcInfo> {
    let dir = format!("/proc/{pid}");
    let ProcStat {
        comm,
        ppid,
        start_ticks,
    } = parse_proc_stat(&std::fs::read(format!("{dir}/stat")).ok()?)?;
    let (uid, euid, gid) = parse_status(&std::fs::read(format!("{dir}/status")).ok()?)?;
    let loginuid = std::fs::read_to_string(format!("{dir}/loginuid"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(u32::MAX);
    Some(ProcInfo {
        ppid,
        start_ticks,
        comm,
        uid,
        euid,
        gid,
        loginuid,
    })
}

/// Whether the process of `pidfd` still exists (running or not yet reaped): its pid has
/// not been given to another process.
fn still_exists(pidfd: &OwnedFd) -> bool {
    // SAFETY: signal 0 only checks; a null siginfo is allowed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    rc == 0
}

/// Actors of the events of one read: /proc is read once per process per read.
pub struct Actors {
    ns_per_tick: u64,
    batch: HashMap<i32, Option<ProcInfo>>,
}

impl Default for Actors {
    fn default() -> Self {
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let ticks = if ticks > 0 { ticks as u64 } else { 100 };
        Actors {
            ns_per_tick: 1_000_000_000 / ticks,
            batch: HashMap::new(),
        }
    }
}

impl Actors {
    /// A new read: what was learnt about processes before is not trusted any more.
    pub fn next_batch(&mut self) {
        self.batch.clear();
    }

    /// The actor of an event of process `pid` that came with `pidfd`.
    ///
    /// Within one read, a process found for one event is the process of another event with
    /// the same pid whose own pidfd still exists: two processes cannot hold one pid at once.
    pub fn actor(&mut self, pid: i32, pidfd: Option<&OwnedFd>) -> Actor {
        if pid <= 0 {
            return Actor::default();
        }
        let mut actor = Actor {
            tgid: pid as u32,
            pid: pid as u32,
            loginuid: u32::MAX,
            ..Actor::default()
        };
        let Some(pidfd) = pidfd else {
            return actor;
        };
        let info = match self.batch.get(&pid) {
            Some(known) => known.filter(|_| still_exists(pidfd)),
            None => {
                let read = read_proc(pid).filter(|_| still_exists(pidfd));
                self.batch.insert(pid, read);
                read
            }
        };
        if let Some(p) = info {
            actor.ppid = p.ppid;
            actor.uid = p.uid;
            actor.euid = p.euid;
            actor.gid = p.gid;
            actor.loginuid = p.loginuid;
            actor.comm = p.comm;
            actor.start_boottime_ns = p.start_ticks * self.ns_per_tick;
        }
        actor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_give_the_ids() {
        let status = b"Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t100\t100\t100\t100\n";
        assert_eq!(parse_status(status), Some((1000, 0, 100)));
        assert_eq!(parse_status(b"Name:\tx\n"), None);
    }

    #[test]
    fn a_live_process_is_described_and_a_missing_pidfd_leaves_only_the_pid() {
        let me = std::process::id() as i32;
        // SAFETY: pidfd_open of this process.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, me, 0) } as i32;
        assert!(fd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
        // SAFETY: just opened.
        let pidfd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let mut actors = Actors::default();
        let a = actors.actor(me, Some(&pidfd));
        assert_eq!(a.tgid, me as u32);
        assert!(a.start_boottime_ns > 0);
        assert_ne!(a.comm[0], 0);
        // SAFETY: getuid has no preconditions.
        assert_eq!(a.uid, unsafe { libc::getuid() });
        let bare = actors.actor(me, None);
        assert_eq!(
            (bare.tgid, bare.start_boottime_ns, bare.comm[0]),
            (me as u32, 0, 0)
        );
        assert_eq!(actors.actor(0, Some(&pidfd)).tgid, 0);
    }

    #[test]
    fn an_exited_process_is_not_described_even_if_its_pid_is_taken_again() {
        let mut child = std::process::Command::new("/bin/true").spawn().unwrap();
        let pid = child.id() as i32;
        // SAFETY: pidfd_open of our child, before it is reaped.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
        assert!(fd >= 0);
        // SAFETY: just opened.
        let pidfd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        child.wait().unwrap();
        let a = Actors::default().actor(pid, Some(&pidfd));
        assert_eq!((a.tgid, a.start_boottime_ns, a.uid), (pid as u32, 0, 0));
    }
}
