//! Process enrichment: the executable, command line, user names, container and ancestry of
//! the process behind a kernel record, from /proc, cached per (pid, start time).
//!
//! Attribution is never guessed: /proc is used only when the process there has the start
//! time the kernel recorded (pids are reused); otherwise only what the record itself carries
//! (pid, parent, uids, comm, start time) is reported and the rest stays unknown.

mod container;
mod users;

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;

pub use container::container_id;
pub use users::Users;

use crate::pipeline::{Enrich, Process, kernel_actor};
use crate::sensor::{Event, Source};
use fim_common::flags;

/// Processes kept; beyond this the cache starts over (a process seen again is re-read).
const CACHE_MAX: usize = 16_384;
/// Ancestors read for package-manager detection.
const ANCESTRY_DEPTH: usize = 8;

/// Reads /proc once per process and remembers it.
pub struct ProcessCache {
    proc_root: PathBuf,
    /// Keyed by pid, start time and comm: an exec keeps the first two but changes the comm.
    cache: HashMap<(u32, u64, [u8; 16]), Arc<Process>>,
    /// The newest exec of each pid (to find a parent's entry).
    last_exec: HashMap<u32, LastExec>,
    users: Users,
    ticks_per_sec: u64,
    /// CLOCK_REALTIME - CLOCK_BOOTTIME: turns the kernel's boot-time stamps into wall time.
    boot_epoch_ns: i64,
    /// Lookups answered from /proc (misses) and from the cache (hits).
    pub misses: u64,
    pub hits: u64,
}

fn clock_ns(clock: libc::clockid_t) -> i64 {
    // SAFETY: clock_gettime fills the struct it is given.
    let ts = unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(clock, &mut ts);
        ts
    };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// Wall-clock ns at boot (for the kernel's CLOCK_BOOTTIME stamps).
pub fn boot_epoch_ns() -> i64 {
    clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_BOOTTIME)
}

/// Wall-clock ns at boot for the kernel's CLOCK_MONOTONIC stamps (`bpf_ktime_get_ns`).
pub fn monotonic_epoch_ns() -> i64 {
    clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC)
}

impl Default for ProcessCache {
    fn default() -> Self {
        ProcessCache::new()
    }
}

impl ProcessCache {
    pub fn new() -> ProcessCache {
        ProcessCache::with_roots(PathBuf::from("/proc"), Users::system())
    }

    /// A cache over another /proc and passwd (tests).
    pub fn with_roots(proc_root: PathBuf, users: Users) -> ProcessCache {
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        ProcessCache {
            proc_root,
            cache: HashMap::new(),
            last_exec: HashMap::new(),
            users,
            ticks_per_sec: if ticks > 0 { ticks as u64 } else { 100 },
            boot_epoch_ns: boot_epoch_ns(),
            misses: 0,
            hits: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    /// Forgets an exited process.
    pub fn exited(&mut self, tgid: u32, start_boottime_ns: u64) {
        self.cache
            .retain(|(pid, start, _), _| !(*pid == tgid && *start == start_boottime_ns));
        self.last_exec.remove(&tgid);
    }

    /// /proc/<pid>/stat's start time (field 22, clock ticks since boot), if readable.
    fn proc_start_ticks(&self, pid: u32) -> Option<u64> {
        let stat = std::fs::read(self.proc_root.join(pid.to_string()).join("stat")).ok()?;
        Some(crate::host::parse_proc_stat(&stat)?.start_ticks)
    }

    /// Whether two start times (ns since boot, one of them possibly only to the tick) are
    /// within a clock tick of each other.
    fn within_a_tick(&self, a_ns: u64, b_ns: u64) -> bool {
        let ns_per_tick = 1_000_000_000 / self.ticks_per_sec;
        (a_ns / ns_per_tick).abs_diff(b_ns / ns_per_tick) <= 1
    }

    fn same_process(&self, pid: u32, start_boottime_ns: u64) -> bool {
        let Some(ticks) = self.proc_start_ticks(pid) else {
            return false;
        };
        let ns_per_tick = 1_000_000_000 / self.ticks_per_sec;
        self.within_a_tick(ticks * ns_per_tick, start_boottime_ns)
    }

    fn read(&self, pid: u32, what: &str) -> Option<Vec<u8>> {
        std::fs::read(self.proc_root.join(pid.to_string()).join(what)).ok()
    }

    fn exe(&self, pid: u32) -> Option<Vec<u8>> {
        std::fs::read_link(self.proc_root.join(pid.to_string()).join("exe"))
            .ok()
            .map(|p| p.as_os_str().as_bytes().to_vec())
    }

    fn parent_of(&self, pid: u32) -> Option<u32> {
        let status = self.read(pid, "status")?;
        let text = String::from_utf8_lossy(&status);
        text.lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .and_then(|v| v.trim().parse().ok())
    }

    fn ancestry(&self, mut pid: u32) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for _ in 0..ANCESTRY_DEPTH {
            if pid <= 1 {
                break;
            }
            if let Some(exe) = self.exe(pid) {
                out.push(exe);
            }
            match self.parent_of(pid) {
                Some(parent) if parent != pid => pid = parent,
                _ => break,
            }
        }
        out
    }

    /// What the record itself tells, with the start time on the wall clock and user names.
    fn record_actor(&mut self, event: &Event) -> crate::store::Actor {
        let k = &event.actor;
        let mut actor = kernel_actor(event);
        actor.start_time_ns = Some(self.boot_epoch_ns + k.start_boottime_ns as i64);
        actor.user = self.users.name(k.uid);
        actor.login_user = actor.login_uid.and_then(|uid| self.users.name(uid));
        actor
    }

    fn examine(&mut self, event: &Event) -> Process {
        let k = &event.actor;
        let mut actor = self.record_actor(event);
        let mut ancestors = Vec::new();
        if self.same_process(k.tgid, k.start_boottime_ns) {
            actor.exe = self.exe(k.tgid);
            actor.cmdline = self.read(k.tgid, "cmdline").map(|raw| command_line(&raw));
            actor.container_id = self
                .read(k.tgid, "cgroup")
                .and_then(|c| container_id(&String::from_utf8_lossy(&c)));
            // The process may have exited between the two reads: check again before trusting.
            if !self.same_process(k.tgid, k.start_boottime_ns) {
                actor.exe = None;
                actor.cmdline = None;
                actor.container_id = None;
            } else {
                ancestors = self.ancestry(k.ppid);
            }
        }
        // Gone from /proc: the program it ran is the one its last exec before this record
        // started. A thread with a comm of its own (an io_uring worker `iou-wrk-N`, a
        // `prctl`-renamed thread) keeps its comm and thread id; the process's start time to
        // the nanosecond says it is the same process.
        if actor.exe.is_none()
            && let Some(exec) = self.exec_before(k.tgid, k.start_boottime_ns, event.ktime_ns)
        {
            actor.exe = exec.actor.exe.clone();
            actor.cmdline = exec.actor.cmdline.clone();
            actor.container_id = exec.actor.container_id.clone();
            ancestors = exec.ancestors.clone();
        }
        Process { actor, ancestors }
    }

    /// The process that process `tgid`, started at `start_boottime_ns` exactly, became at its
    /// last exec, when that exec happened before `at_ns`.
    fn exec_before(&self, tgid: u32, start_boottime_ns: u64, at_ns: u64) -> Option<Arc<Process>> {
        let last = self.last_exec.get(&tgid)?;
        (last.key.1 == start_boottime_ns && last.at_ns <= at_ns)
            .then(|| self.cache.get(&last.key).cloned())
            .flatten()
    }
}

/// NUL-separated arguments as one line; arguments with spaces or quotes are quoted.
pub fn command_line(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    for arg in raw.split(|&b| b == 0).filter(|a| !a.is_empty()) {
        if !out.is_empty() {
            out.push(b' ');
        }
        let plain = arg
            .iter()
            .all(|&b| b.is_ascii_graphic() && !matches!(b, b'\'' | b'"' | b'\\' | b'$' | b'`'));
        if plain {
            out.extend_from_slice(arg);
        } else {
            out.push(b'\'');
            for &b in arg {
                if b == b'\'' {
                    out.extend_from_slice(b"'\\''");
                } else {
                    out.push(b);
                }
            }
            out.push(b'\'');
        }
    }
    out
}

/// The last exec record of a process: its cache key, and when it happened.
struct LastExec {
    key: (u32, u64, [u8; 16]),
    at_ns: u64,
}

/// pid, start time and comm: an exec keeps the first two but changes the comm.
fn cache_key(event: &Event) -> (u32, u64, [u8; 16]) {
    (
        event.actor.tgid,
        event.actor.start_boottime_ns,
        event.actor.comm,
    )
}

impl ProcessCache {
    /// The process an exec record describes: executable and arguments from the kernel, the
    /// ancestors from the parent's own exec (or /proc).
    fn process_of_exec(&mut self, event: &Event) -> Process {
        let k = &event.actor;
        let mut actor = self.record_actor(event);
        // Only a cut executable path is unusable: arguments longer than the record holds
        // (a long `xargs` or compiler command line) are cut, the executable is still exact.
        if !event.path.is_empty() && event.flags & flags::PATH1_TRUNCATED == 0 {
            actor.exe = Some(event.path.clone());
        }
        if !event.path2.is_empty() {
            actor.cmdline = Some(command_line(&event.path2));
        }
        if self.same_process(k.tgid, k.start_boottime_ns) {
            actor.container_id = self
                .read(k.tgid, "cgroup")
                .and_then(|c| container_id(&String::from_utf8_lossy(&c)));
        }
        let ancestors = match self
            .last_exec
            .get(&k.ppid)
            .and_then(|last| self.cache.get(&last.key))
        {
            Some(parent) => parent
                .actor
                .exe
                .iter()
                .cloned()
                .chain(parent.ancestors.iter().cloned())
                .take(ANCESTRY_DEPTH)
                .collect(),
            None => self.ancestry(k.ppid),
        };
        Process { actor, ancestors }
    }
}

impl ProcessCache {
    /// The process behind a completeness-layer (fanotify) event. The layer gives the pid, and
    /// when it could read /proc for certain (the process still existed), the start time to
    /// the clock tick, comm, parent and ids (`sensor::fanotify`). With a start time the
    /// process is found like any other: its exec record when that is the same process (same
    /// pid, start within a tick, same comm), else /proc when the process there started within
    /// a tick of it; a later process with the same pid never matches. Without one, only the
    /// pid is told: nothing else is certain.
    fn completeness_actor(&mut self, event: &Event) -> Arc<Process> {
        let k = &event.actor;
        if k.start_boottime_ns == 0 {
            let actor = crate::store::Actor {
                pid: (k.tgid != 0).then_some(k.tgid),
                ..crate::store::Actor::default()
            };
            return Arc::new(Process {
                actor,
                ancestors: Vec::new(),
            });
        }
        let key = cache_key(event);
        if let Some(hit) = self.cache.get(&key) {
            self.hits += 1;
            return Arc::clone(hit);
        }
        let exec = self
            .last_exec
            .get(&k.tgid)
            .map(|last| &last.key)
            .filter(|(_, start, comm)| {
                // No comm: the process was gone when the layer read its event, and its start
                // time came from the sensor's record of its fork (`Sensor::process_start`).
                self.within_a_tick(*start, k.start_boottime_ns)
                    && (*comm == k.comm || k.comm == [0; 16])
            })
            .and_then(|exec_key| self.cache.get(exec_key))
            .cloned();
        let process = match exec {
            Some(process) => {
                self.hits += 1;
                process
            }
            None => {
                self.misses += 1;
                Arc::new(self.examine(event))
            }
        };
        if self.cache.len() >= CACHE_MAX {
            self.cache.clear();
            self.last_exec.clear();
        }
        self.cache.insert(key, Arc::clone(&process));
        process
    }
}

impl Enrich for ProcessCache {
    fn exec(&mut self, event: &Event) {
        let key = cache_key(event);
        let process = Arc::new(self.process_of_exec(event));
        if self.cache.len() >= CACHE_MAX {
            self.cache.clear();
            self.last_exec.clear();
        }
        self.cache.insert(key, process);
        self.last_exec.insert(
            event.actor.tgid,
            LastExec {
                key,
                at_ns: event.ktime_ns,
            },
        );
    }

    fn actor(&mut self, event: &Event) -> Arc<Process> {
        if event.source == Source::Fanotify {
            return self.completeness_actor(event);
        }
        let key = cache_key(event);
        if let Some(hit) = self.cache.get(&key) {
            self.hits += 1;
            return Arc::clone(hit);
        }
        self.misses += 1;
        let process = Arc::new(self.examine(event));
        if self.cache.len() >= CACHE_MAX {
            self.cache.clear();
            self.last_exec.clear();
        }
        self.cache.insert(key, Arc::clone(&process));
        process
    }
}

#[cfg(test)]
mod tests;
