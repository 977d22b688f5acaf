//! Change assembly: kernel records become jobs for the change worker. The writes of one
//! open..close become one job, issued when the last writer closed the file (or, for a writer
//! that stays open, at most every `LONG_WRITER` so it cannot hide changes forever).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fim_common::flags;

use super::observe::{Observation, Process, RuleRef};
use crate::baseline::FileKind;
use crate::sensor::{Backend, EventKind, Source};
use crate::store::activity;

/// A path that was created or written and awaits its last close before it is examined.
struct Session {
    /// Writers that opened it and have not closed it yet.
    writers: u32,
    created: bool,
    first: Observation,
    /// The observation that last touched it (its actor is the one reported).
    last: Observation,
    /// Monotonic ns of the last job issued for it (or of its first record).
    flushed_ns: u64,
}

/// How long a created file without an open writer waits for one (the LSM backends report
/// the creation before the open), and how long any session with no writer left waits.
const SETTLE: Duration = Duration::from_millis(200);
/// A writer that keeps a watched file open is reported at least this often.
const LONG_WRITER: Duration = Duration::from_secs(5);
/// Open write sessions kept at most (one per path being written); beyond this the least
/// recently touched eighth are examined at once and forgotten (their later close is examined
/// like one of a file opened before fim started), so memory stays bounded and nothing is lost.
pub const MAX_SESSIONS: usize = 65_536;

/// What the change worker has to do for one path.
#[derive(Debug, Clone)]
pub struct Job {
    pub what: JobKind,
    /// The kernel record behind the job (what happened, even if the path is gone when it
    /// is examined).
    pub kind: EventKind,
    /// The object's type as the kernel saw it, when it did.
    pub file_kind: Option<FileKind>,
    pub path: Vec<u8>,
    /// Renames and links: the new path.
    pub new_path: Option<Vec<u8>>,
    /// OCSF activity the job reports, unless examination says otherwise (a write that
    /// created the file is a Create; a chmod that changed nothing reports nothing).
    pub activity: i64,
    pub rule: Option<RuleRef>,
    /// The rule of the new path (renames and links).
    pub rule2: Option<RuleRef>,
    pub process: Arc<Process>,
    pub authorized: bool,
    pub backend: &'static str,
    pub truncated_path: bool,
    /// The name the change was made through, when `path` is its watched name instead.
    pub used_path: Option<Vec<u8>>,
    /// Wall-clock ns of the kernel record (for the change's time).
    pub time_ns: i64,
    /// Monotonic ns of the kernel record (for the event-to-output latency).
    pub ktime_ns: u64,
}

impl Job {
    /// Whether the job comes from the completeness layer (fanotify), whose changes the kernel
    /// records may have reported already (see `pipeline::dedup`).
    pub fn from_completeness_layer(&self) -> bool {
        self.backend == Source::Fanotify.backend_name(Backend::Tracepoint)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// Look at the path now (hash when it is a file) and report how it differs.
    Examine,
    /// The path is gone.
    Delete,
    /// `path` moved to `new_path`.
    Rename,
}

/// Turns observations into jobs; owns the open write sessions.
#[derive(Default)]
pub struct Assembler {
    sessions: HashMap<Vec<u8>, Session>,
    /// Sessions examined early because [`MAX_SESSIONS`] were open (for metrics).
    pub evicted: u64,
    /// Wall clock minus the kernel's monotonic clock, to timestamp records.
    pub clock_offset_ns: i64,
}

fn file_kind(e: &crate::sensor::Event) -> Option<FileKind> {
    if e.flags & flags::TARGET_KNOWN == 0 {
        // Some records say it by what they are (the tracepoint backend describes no target
        // for a path-only syscall).
        return match e.kind {
            EventKind::Mkdir | EventKind::Rmdir => Some(FileKind::Dir),
            EventKind::Symlink => Some(FileKind::Symlink),
            _ => None,
        };
    }
    FileKind::from_mode(e.target.mode)
}

/// The wall-clock time of a kernel monotonic timestamp. Saturating: a timestamp beyond any real
/// uptime (a corrupt record) must not overflow, which panics in debug builds and wraps to a
/// time decades away in release builds.
fn wall_ns(ktime_ns: u64, clock_offset_ns: i64) -> i64 {
    i64::try_from(ktime_ns)
        .unwrap_or(i64::MAX)
        .saturating_add(clock_offset_ns)
}

fn write_intent(open_flags: u32) -> bool {
    open_flags & (libc::O_WRONLY as u32 | libc::O_RDWR as u32) != 0
}

fn is_security_xattr(name: &[u8]) -> bool {
    name.starts_with(b"security.") || name.starts_with(b"system.posix_acl")
}

impl Assembler {
    pub fn new(clock_offset_ns: i64) -> Assembler {
        Assembler {
            sessions: HashMap::new(),
            evicted: 0,
            clock_offset_ns,
        }
    }

    /// Write sessions waiting for a close.
    pub fn open_sessions(&self) -> usize {
        self.sessions.len()
    }

    fn job(&self, what: JobKind, activity: i64, o: &Observation) -> Job {
        let e = &o.event;
        let renamed = matches!(what, JobKind::Rename) || e.kind == EventKind::Link;
        Job {
            what,
            kind: e.kind,
            file_kind: file_kind(e),
            path: e.path.clone(),
            new_path: renamed.then(|| e.path2.clone()),
            activity,
            rule: o.rule.clone(),
            rule2: o.rule2.clone(),
            process: Arc::clone(&o.process),
            authorized: o.authorized,
            backend: e.source.backend_name(e.backend),
            truncated_path: e.truncated(),
            used_path: e.used_path.clone(),
            time_ns: wall_ns(e.ktime_ns, self.clock_offset_ns),
            ktime_ns: e.ktime_ns,
        }
    }

    /// Feeds one observation; pushes the jobs it completes onto `out`.
    pub fn observe(&mut self, o: Observation, out: &mut Vec<Job>) {
        let e = &o.event;
        match e.kind {
            // A path that did not fit is not the key its close will come with (the kernel
            // builds that one from the file, keeping the other end of the path), so a session
            // would wait for it forever, and the long-writer tick would report the path again
            // every few seconds. Such a path is never examined anyway: report it now.
            EventKind::Create
            | EventKind::OpenWrite
            | EventKind::MmapSharedWrite
            | EventKind::Truncate
                if e.truncated() =>
            {
                let activity = if e.kind == EventKind::Create {
                    activity::CREATE
                } else {
                    activity::UPDATE
                };
                out.push(self.job(JobKind::Examine, activity, &o));
            }
            EventKind::Create => {
                // The tracepoint backend reports the open that created the file, with its flags;
                // the LSM backends report the creation and then the open separately.
                let writer = e.backend == Backend::Tracepoint && write_intent(e.args.flags);
                self.touch(o, writer as u32, true, out);
            }
            EventKind::OpenWrite => self.touch(o, 1, false, out),
            // A write the completeness layer saw has no open or close around it: a session
            // without writers, examined once the writes settle (or every `LONG_WRITER`).
            EventKind::MmapSharedWrite | EventKind::Truncate | EventKind::Written => {
                self.touch(o, 0, false, out)
            }
            EventKind::Modified => {
                let path = e.path.clone();
                let done = match self.sessions.get_mut(&path) {
                    Some(s) => {
                        s.writers = s.writers.saturating_sub(1);
                        s.last = o;
                        s.writers == 0
                    }
                    None => {
                        // Opened before fim started: this close is all there is.
                        out.push(self.job(JobKind::Examine, activity::UPDATE, &o));
                        false
                    }
                };
                if done && let Some(s) = self.sessions.remove(&path) {
                    out.push(self.session_job(&s));
                }
            }
            EventKind::Unlink | EventKind::Rmdir => {
                // A file created and removed before it settled is still reported as created.
                if let Some(s) = self.sessions.remove(&e.path) {
                    out.push(self.session_job(&s));
                }
                out.push(self.job(JobKind::Delete, activity::DELETE, &o));
            }
            EventKind::Rename => {
                if let Some(s) = self.sessions.remove(&e.path) {
                    out.push(self.session_job(&s));
                }
                if let Some(s) = self.sessions.remove(&e.path2) {
                    out.push(self.session_job(&s));
                }
                out.push(self.job(JobKind::Rename, activity::RENAME, &o));
            }
            // Attribution only; the classifier hands these to the enrichment.
            EventKind::Exec => {}
            EventKind::Mkdir | EventKind::Symlink => {
                out.push(self.job(JobKind::Examine, activity::CREATE, &o));
            }
            EventKind::Link => {
                // The new name is what appeared.
                let mut job = self.job(JobKind::Examine, activity::CREATE, &o);
                job.path = o.event.path2.clone();
                job.new_path = None;
                job.rule = o.rule2.clone().or(o.rule.clone());
                out.push(job);
            }
            EventKind::Chmod | EventKind::Chown | EventKind::AttributesChanged => {
                out.push(self.job(JobKind::Examine, activity::SET_ATTRIBUTES, &o));
            }
            EventKind::SetXattr | EventKind::RemoveXattr => {
                let security = e.flags & flags::PATH2_IS_STRING != 0 && is_security_xattr(&e.path2);
                let activity = if security {
                    activity::SET_SECURITY
                } else {
                    activity::SET_ATTRIBUTES
                };
                out.push(self.job(JobKind::Examine, activity, &o));
            }
        }
    }

    fn touch(&mut self, o: Observation, writers: u32, created: bool, out: &mut Vec<Job>) {
        let now = o.event.ktime_ns;
        match self.sessions.get_mut(&o.event.path) {
            Some(s) => {
                s.writers += writers;
                s.created |= created;
                s.last = o;
            }
            None => {
                if self.sessions.len() >= MAX_SESSIONS {
                    self.evict(out);
                }
                self.sessions.insert(
                    o.event.path.clone(),
                    Session {
                        writers,
                        created,
                        first: o.clone(),
                        last: o,
                        flushed_ns: now,
                    },
                );
            }
        }
    }

    /// Examines the least recently touched eighth of the sessions now and forgets them.
    fn evict(&mut self, out: &mut Vec<Job>) {
        let mut by_age: Vec<(u64, Vec<u8>)> = self
            .sessions
            .iter()
            .map(|(path, s)| (s.last.event.ktime_ns, path.clone()))
            .collect();
        by_age.sort_unstable();
        let n = (MAX_SESSIONS / 8).max(1);
        if self.evicted == 0 {
            log::warn!(
                "{MAX_SESSIONS} files are being written at once: examining the {n} least                  recently written now (their later closes are examined again)"
            );
        }
        for (_, path) in by_age.into_iter().take(n) {
            if let Some(s) = self.sessions.remove(&path) {
                out.push(self.session_job(&s));
                self.evicted += 1;
            }
        }
    }

    fn session_job(&self, s: &Session) -> Job {
        let activity = if s.created {
            activity::CREATE
        } else {
            activity::UPDATE
        };
        // The creator is the actor of a creation; the last writer of an update.
        let who = if s.created { &s.first } else { &s.last };
        let mut job = self.job(JobKind::Examine, activity, who);
        job.time_ns = wall_ns(s.last.event.ktime_ns, self.clock_offset_ns);
        job.ktime_ns = s.last.event.ktime_ns;
        job
    }

    /// Issues the jobs of sessions that settled (no writer left for `SETTLE`) or whose writer
    /// has kept the file open for `LONG_WRITER` since the last report.
    pub fn tick(&mut self, now_ktime_ns: u64, out: &mut Vec<Job>) {
        let settle = SETTLE.as_nanos() as u64;
        let long = LONG_WRITER.as_nanos() as u64;
        let mut done = Vec::new();
        for (path, s) in self.sessions.iter_mut() {
            let last = s.last.event.ktime_ns;
            if s.writers == 0 && now_ktime_ns.saturating_sub(last) >= settle {
                done.push(path.clone());
            } else if now_ktime_ns.saturating_sub(s.flushed_ns) >= long {
                // A writer that stays open, or writes without open and close (seen only by
                // the completeness layer) that never pause for `SETTLE`.
                s.flushed_ns = now_ktime_ns;
                let mut job = {
                    let who = if s.created { &s.first } else { &s.last };
                    let e = &who.event;
                    Job {
                        what: JobKind::Examine,
                        kind: e.kind,
                        file_kind: file_kind(e),
                        path: e.path.clone(),
                        new_path: None,
                        activity: if s.created {
                            activity::CREATE
                        } else {
                            activity::UPDATE
                        },
                        rule: who.rule.clone(),
                        rule2: None,
                        process: Arc::clone(&who.process),
                        authorized: who.authorized,
                        backend: e.source.backend_name(e.backend),
                        truncated_path: e.truncated(),
                        used_path: e.used_path.clone(),
                        time_ns: wall_ns(now_ktime_ns, self.clock_offset_ns),
                        ktime_ns: now_ktime_ns,
                    }
                };
                // Once reported, the file exists: later reports are updates.
                if s.created {
                    s.created = false;
                    s.last = s.first.clone();
                } else {
                    job.activity = activity::UPDATE;
                }
                out.push(job);
            }
        }
        for path in done {
            if let Some(s) = self.sessions.remove(&path) {
                out.push(self.session_job(&s));
            }
        }
    }

    /// Every open session as a job (shutdown: report what is known rather than nothing).
    pub fn flush_all(&mut self, out: &mut Vec<Job>) {
        let sessions: Vec<Session> = self.sessions.drain().map(|(_, s)| s).collect();
        for s in &sessions {
            out.push(self.session_job(s));
        }
    }
}
