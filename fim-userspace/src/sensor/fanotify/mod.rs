//! The completeness layer for the tracepoint backend: what syscall tracepoints cannot see,
//! seen through fanotify.
//!
//! The tracepoint backend decides on syscalls, so it misses changes that reach the VFS
//! without one of its syscalls (io_uring's `OPENAT`, `WRITE`, `RENAMEAT`, `UNLINKAT`,
//! `FALLOCATE`, `MKDIRAT`...) and path-based syscalls made through another name of a watched
//! directory (a bind mount mounted elsewhere, another mount namespace) or of a watched file (a
//! hard link in an unwatched directory). fanotify reports on inodes, whatever name, mount,
//! namespace or submission interface was used: one group with file-handle reporting
//! (`FAN_REPORT_DFID_NAME_TARGET`, and `FAN_REPORT_PIDFD` for the actor) and inode marks on
//!
//! - every directory a rule watches (a `children` root; a recursive root and every directory
//!   below it, mounts included), for changes of its entries and of itself;
//! - a file rule's file and its directory (for that name only);
//! - the watched names of regular files with more than one link ([`Completeness::watch_links`]):
//!   a write, truncation or attribute change through any of their names then arrives.
//!
//! Inode marks cost nothing outside the watched trees (a filesystem mark would queue an event
//! for every change on the filesystem for the daemon to throw away: see docs/completeness.md
//! for the measurement). Events come back to watched paths through a map from directory
//! handle to path that this layer keeps right as directories are created, renamed and
//! removed. The same change usually also comes from the tracepoint programs: the daemon holds
//! these events briefly and drops those a kernel record explains (`pipeline::dedup`).

mod actor;
mod decode;
mod handle;
mod marks;
mod plan;
mod translate;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use fim_common::Backend;
use tokio::io::unix::AsyncFd;

use super::{Event, WatchRoot};
use crate::host;
use actor::Actors;
use decode::{Decoded, Handle};
use marks::{DirMark, Name, OBJECT_MASK, Origin, Tree, os_path};
use plan::Plan;
use translate::Seen;

/// How long the layer gets to see its own self-test change at start.
pub const SELF_TEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes read at once: a few hundred events.
const READ_BUFFER: usize = 64 * 1024;

/// What one filesystem mark asks for (`MarkScope::Filesystem`).
const FILESYSTEM_MASK: u64 = libc::FAN_CREATE
    | libc::FAN_DELETE
    | libc::FAN_RENAME
    | libc::FAN_ONDIR
    | libc::FAN_MODIFY
    | libc::FAN_CLOSE_WRITE
    | libc::FAN_ATTRIB
    | libc::FAN_DELETE_SELF
    | libc::FAN_MOVE_SELF;

/// Where the marks go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MarkScope {
    /// On the watched directories and files themselves (what fim uses).
    #[default]
    Inodes,
    /// One mark per filesystem the roots are on, every event filtered in the daemon (kept
    /// to measure the choice: `cargo xtask bench sensor -- --fanotify`).
    Filesystem,
}

/// A watched name of a regular file with more than one link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchedLink {
    pub path: PathBuf,
    pub rule_id: u32,
}

/// The fanotify group, its marks and the way back from handles to watched paths.
pub struct Completeness {
    backend: Backend,
    group: AsyncFd<OwnedFd>,
    scope: MarkScope,
    tree: Tree,
    /// A descriptor on each filesystem with a mark, for `open_by_handle_at` (by fsid).
    mount_fds: HashMap<u64, OwnedFd>,
    /// Filesystems marked whole (`MarkScope::Filesystem`), by fsid.
    filesystems: HashSet<u64>,
    actors: Actors,
    /// Events made without a read (entries listed in a newly marked directory).
    pending: VecDeque<Event>,
    lost: u64,
    malformed: u64,
    /// Handles of unmarked directories that could not be turned into a path.
    unresolved: u64,
    me: i32,
    /// What one read fills.
    buf: Vec<u8>,
}

/// CLOCK_MONOTONIC in ns: the clock of the kernel records' `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    // SAFETY: clock_gettime fills the struct it is given.
    let ts = unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        ts
    };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn sysctl(name: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/fs/fanotify/{name}"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// A fanotify group that reports directory and object handles, names and pidfds.
fn init() -> Result<OwnedFd> {
    let flags = libc::FAN_CLASS_NOTIF
        | libc::FAN_CLOEXEC
        | libc::FAN_NONBLOCK
        | libc::FAN_REPORT_DFID_NAME_TARGET
        | libc::FAN_REPORT_PIDFD;
    // SAFETY: plain syscall.
    let fd =
        unsafe { libc::fanotify_init(flags, (libc::O_RDONLY | libc::O_LARGEFILE) as libc::c_uint) };
    if fd >= 0 {
        // SAFETY: just created, owned here.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    let error = io::Error::last_os_error();
    let release = host::kernel_release();
    let why = match error.raw_os_error() {
        Some(libc::ENOSYS) => {
            format!("kernel {release} has no fanotify (built without CONFIG_FANOTIFY)")
        }
        Some(libc::EPERM) => "fanotify needs CAP_SYS_ADMIN: run fim as root".to_string(),
        Some(libc::EINVAL) => format!(
            "kernel {release} lacks fanotify's FAN_REPORT_DFID_NAME_TARGET or \
             FAN_REPORT_PIDFD (Linux 5.17 or later has both)"
        ),
        Some(libc::EMFILE) => format!(
            "too many fanotify groups (fs.fanotify.max_user_groups is {})",
            sysctl("max_user_groups")
        ),
        _ => format!("fanotify_init failed on kernel {release}"),
    };
    Err(anyhow!(error).context(format!("the completeness layer cannot start: {why}")))
}

/// Why a mark could not be placed, in words an operator can act on.
pub(super) fn mark_problem(path: &Path, error: &io::Error) -> String {
    let shown = path.display();
    match error.raw_os_error() {
        Some(libc::ENODEV) => format!(
            "{shown}: its filesystem has no id (fsid) fanotify can report: changes there are \
             seen only by the sensor and the scheduled rescan"
        ),
        Some(libc::EOPNOTSUPP) => format!(
            "{shown}: its filesystem cannot encode file handles: changes there are seen only \
             by the sensor and the scheduled rescan"
        ),
        Some(libc::EXDEV) => format!(
            "{shown}: on a filesystem (subvolume) whose id differs from its filesystem's, \
             which this kernel cannot mark"
        ),
        Some(libc::ENOENT | libc::EACCES | libc::ELOOP | libc::ENOTDIR) => {
            format!("{shown}: {error}")
        }
        Some(libc::ENOSPC) => format!(
            "{shown}: the fanotify mark limit is reached (fs.fanotify.max_user_marks is {}; \
             raise it with sysctl)",
            sysctl("max_user_marks")
        ),
        _ => format!("{shown}: fanotify_mark: {error}"),
    }
}

/// A private directory for the start-up self-test, removed on drop.
struct SelfTestDir(PathBuf);

impl Drop for SelfTestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Completeness {
    /// Starts the layer for `backend` on `roots` with inode marks; fails, naming what is
    /// missing, where fanotify is unavailable or does not deliver.
    pub async fn start(backend: Backend, roots: &[WatchRoot]) -> Result<Completeness> {
        Completeness::start_with(backend, roots, MarkScope::Inodes).await
    }

    /// [`Completeness::start`] with the marks in `scope`.
    pub async fn start_with(
        backend: Backend,
        roots: &[WatchRoot],
        scope: MarkScope,
    ) -> Result<Completeness> {
        let group = init()?;
        // SAFETY: the group's descriptor is owned by the AsyncFd and stays open and unchanged
        // until it is dropped.
        let group =
            unsafe { AsyncFd::register_with_interest(group, tokio::io::Interest::READABLE) }
                .map_err(|e| anyhow!("registering the fanotify group with tokio: {e}"))?;
        let mut layer = Completeness {
            backend,
            group,
            scope,
            tree: Tree::default(),
            mount_fds: HashMap::new(),
            filesystems: HashSet::new(),
            actors: Actors::default(),
            pending: VecDeque::new(),
            lost: 0,
            malformed: 0,
            unresolved: 0,
            me: std::process::id() as i32,
            buf: vec![0; READ_BUFFER],
        };
        layer.self_test(SELF_TEST_TIMEOUT).await?;
        for problem in layer.set_roots(roots)? {
            log::warn!("not watched by the completeness layer: {problem}");
        }
        Ok(layer)
    }

    /// Marks a private directory, creates a file in it and waits for the event: proves that
    /// marks on the temporary directory's filesystem deliver, with the records fim reads.
    async fn self_test(&mut self, timeout: Duration) -> Result<()> {
        let dir = SelfTestDir(std::env::temp_dir().join(format!(
            "fim-fanotify-selftest-{}-{}",
            self.me,
            monotonic_ns()
        )));
        std::fs::create_dir(&dir.0).with_context(|| format!("creating {}", dir.0.display()))?;
        let opened =
            handle::open(&dir.0).with_context(|| format!("opening {}", dir.0.display()))?;
        let mask = libc::FAN_CREATE | libc::FAN_ONDIR;
        handle::mark(self.group.get_ref(), libc::FAN_MARK_ADD, mask, &opened.fd).map_err(|e| {
            anyhow!(
                "the completeness layer cannot start: {}",
                mark_problem(&dir.0, &e)
            )
        })?;
        std::fs::write(dir.0.join("probe"), b"fim self-test")
            .with_context(|| format!("writing in {}", dir.0.display()))?;
        let deadline = tokio::time::Instant::now() + timeout;
        let found = loop {
            let decoded = match tokio::time::timeout_at(deadline, self.read_raw()).await {
                Err(_) => break false,
                Ok(read) => read?,
            };
            let seen = decoded.events.iter().any(|e| {
                e.mask & libc::FAN_CREATE != 0
                    && e.dir
                        .as_ref()
                        .is_some_and(|(h, name)| *h == opened.handle && name.as_slice() == b"probe")
            });
            if seen {
                break true;
            }
        };
        let _ = handle::mark(
            self.group.get_ref(),
            libc::FAN_MARK_REMOVE,
            mask,
            &opened.fd,
        );
        if !found {
            bail!(
                "the completeness layer cannot start: fanotify accepted a mark on {} but did \
                 not report a file created there within {timeout:?} (kernel {})",
                dir.0.display(),
                host::kernel_release()
            );
        }
        Ok(())
    }

    /// Waits for the next read that returns something.
    async fn read_raw(&mut self) -> Result<Decoded> {
        let buf = &mut self.buf;
        loop {
            let mut guard = self
                .group
                .readable()
                .await
                .context("waiting on the fanotify group")?;
            match guard.try_io(|group| read(group.get_ref(), buf)) {
                Ok(Ok(n)) => return Ok(decode::decode(&buf[..n])),
                Ok(Err(e)) => return Err(e).context("reading the fanotify group"),
                Err(_would_block) => continue,
            }
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Queue overflows (`FAN_Q_OVERFLOW`): events the kernel dropped. Each one means
    /// changes may have gone unreported: the daemon rescans, as after a sensor loss.
    pub fn lost_events(&self) -> u64 {
        self.lost
    }

    /// Events or records that could not be decoded (never expected; counted, not trusted).
    pub fn malformed_events(&self) -> u64 {
        self.malformed
    }

    /// Marked directories (the marks this layer holds for directories).
    pub fn watched_directories(&self) -> usize {
        self.tree.dir_count()
    }

    /// Replaces the watched roots. New marks are placed before the old ones are removed, so a
    /// directory kept is never unmarked in between. Returns what could not be marked.
    pub fn set_roots(&mut self, roots: &[WatchRoot]) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        let plan = Plan::of(roots, &mut problems);
        let old = std::mem::take(&mut self.tree);
        let mut full = false;
        let mut left_out = 0usize;
        for (path, want) in plan.dirs {
            if full {
                left_out += 1;
                continue;
            }
            let shown = os_path(&path).to_path_buf();
            let opened = match handle::open(&shown) {
                Ok(o) if o.is_dir => o,
                Ok(_) => continue,
                Err(e) => {
                    problems.push(mark_problem(&shown, &e));
                    continue;
                }
            };
            let had = old.dir(&opened.handle).map_or(0, DirMark::mask);
            if let Err(e) = self.place(&opened, want.mask() & !had) {
                full = e.raw_os_error() == Some(libc::ENOSPC);
                problems.push(mark_problem(&shown, &e));
                continue;
            }
            self.remember_filesystem(&opened.handle, &shown);
            self.tree.insert_dir(opened.handle, want);
        }
        if left_out > 0 {
            problems.push(format!(
                "{left_out} more directories not marked: the fanotify mark limit is reached"
            ));
        }
        for (path, rule) in plan.files {
            if let Some(problem) = self.watch_object(&path, rule, Origin::Rule) {
                problems.push(problem);
            }
        }
        // The names of multi-link files do not depend on the roots.
        for (handle, names) in old.objects() {
            for name in names.iter().filter(|n| n.origin == Origin::Link) {
                self.tree.add_name(handle.clone(), name.clone());
            }
        }
        for (handle, mark) in old.dirs() {
            let keep = self.tree.dir(handle).map_or(0, DirMark::mask);
            if mark.mask() & !keep != 0 {
                self.unmark(handle, &mark.path, mark.mask() & !keep);
            }
        }
        for (handle, names) in old.objects() {
            if self.tree.object(handle).is_none()
                && let Some(name) = names.first()
            {
                self.unmark(handle, &name.path, OBJECT_MASK);
            }
        }
        Ok(problems)
    }

    /// Adds watched names of multi-link regular files (after a scan, or when the sensor
    /// reports a link): a change through any name of such a file is then reported at its
    /// watched name(s). A name whose file has one link left is skipped (its directory's mark
    /// covers it). Returns what could not be marked.
    pub fn watch_links(&mut self, links: &[WatchedLink]) -> Vec<String> {
        links
            .iter()
            .filter_map(|link| {
                let path = link.path.as_os_str().as_bytes();
                self.watch_object(path, link.rule_id, Origin::Link)
            })
            .collect()
    }

    /// Replaces every watched name of multi-link files with `links` (after a full scan).
    pub fn set_links(&mut self, links: &[WatchedLink]) -> Vec<String> {
        let problems = self.watch_links(links);
        let wanted: HashSet<&[u8]> = links
            .iter()
            .map(|l| l.path.as_os_str().as_bytes())
            .collect();
        let stale: Vec<Vec<u8>> = self
            .tree
            .objects()
            .flat_map(|(_, names)| names.iter())
            .filter(|n| n.origin == Origin::Link && !wanted.contains(n.path.as_slice()))
            .map(|n| n.path.clone())
            .collect();
        for path in stale {
            if let Some(handle) = self.tree.forget_name(&path) {
                self.unmark(&handle, &path, OBJECT_MASK);
            }
        }
        problems
    }

    /// A directory appeared under a recursive root (the sensor reported a mkdir or a
    /// directory renamed in): mark it and everything below, then list what is already in
    /// them, reported as created by [`Completeness::recv`] (entries made before the mark
    /// would otherwise go unseen). A directory already marked is left alone.
    pub fn watch_new_directory(&mut self, path: &Path) {
        let bytes = path.as_os_str().as_bytes();
        let Some(rule) = path
            .parent()
            .and_then(|p| self.tree.dir_at(p.as_os_str().as_bytes()))
            .and_then(|(_, d)| d.recursive)
        else {
            return;
        };
        let seen = Seen::unattributed(monotonic_ns(), true, false);
        let mut out = Vec::new();
        self.adopt(bytes, rule, &seen, &mut out);
        self.pending.extend(out);
    }

    /// Waits until at least one event is available and appends everything available to
    /// `out`. Suitable for `tokio::select!` beside the sensor's `recv` (cancel-safe: nothing
    /// read is dropped).
    pub async fn recv(&mut self, out: &mut Vec<Event>) -> Result<()> {
        loop {
            if !self.pending.is_empty() {
                out.extend(self.pending.drain(..));
                return Ok(());
            }
            let decoded = self.read_raw().await?;
            // Nothing between the read and here awaits: cancelling `recv` loses nothing.
            self.translate_all(decoded, out);
            if !out.is_empty() {
                return Ok(());
            }
        }
    }

    /// Appends whatever is queued now, without waiting. The daemon calls it before it notes
    /// a batch of sensor records for deduplication: an event read after the kernel record
    /// that explains it would be reported twice.
    pub fn read_now(&mut self, out: &mut Vec<Event>) -> Result<()> {
        out.extend(self.pending.drain(..));
        loop {
            match read(self.group.get_ref(), &mut self.buf) {
                Ok(n) => {
                    let decoded = decode::decode(&self.buf[..n]);
                    self.translate_all(decoded, out);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e).context("reading the fanotify group"),
            }
        }
    }

    fn translate_all(&mut self, decoded: Decoded, out: &mut Vec<Event>) {
        self.malformed += decoded.malformed;
        self.actors.next_batch();
        let now = monotonic_ns();
        for raw in decoded.events {
            self.translate(raw, now, out);
        }
    }

    /// Marks the non-directory at `path` as a watched name (a file rule's file, or a name of
    /// a multi-link file); returns a problem when it cannot.
    fn watch_object(&mut self, path: &[u8], rule: u32, origin: Origin) -> Option<String> {
        let shown = os_path(path);
        let opened = match handle::open(shown) {
            Ok(o) => o,
            Err(e) => return Some(format!("{}: {e}", shown.display())),
        };
        if opened.is_dir || (origin == Origin::Link && opened.links < 2) {
            return None;
        }
        if let Err(e) = self.place(&opened, OBJECT_MASK) {
            return Some(mark_problem(shown, &e));
        }
        let name = Name {
            path: path.to_vec(),
            rule,
            origin,
        };
        if let Some(emptied) = self.tree.add_name(opened.handle, name) {
            // The inode that had this name before (replaced) keeps no watched name.
            self.unmark(&emptied, path, OBJECT_MASK);
        }
        None
    }

    /// Adds `mask` to the mark of `opened` (or, for `MarkScope::Filesystem`, marks its
    /// filesystem once).
    fn place(&mut self, opened: &handle::Opened, mask: u64) -> io::Result<()> {
        match self.scope {
            MarkScope::Inodes => {
                if mask == 0 {
                    return Ok(());
                }
                handle::mark(self.group.get_ref(), libc::FAN_MARK_ADD, mask, &opened.fd)
            }
            MarkScope::Filesystem => {
                if self.filesystems.contains(&opened.handle.fsid) {
                    return Ok(());
                }
                let flags = libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM;
                handle::mark(self.group.get_ref(), flags, FILESYSTEM_MASK, &opened.fd)?;
                self.filesystems.insert(opened.handle.fsid);
                Ok(())
            }
        }
    }

    /// Removes `mask` from the mark of the object `handle` (found at `path`, or by handle).
    fn unmark(&self, handle: &Handle, path: &[u8], mask: u64) {
        if self.scope == MarkScope::Filesystem {
            return;
        }
        let fd = match handle::open(os_path(path)) {
            Ok(o) if o.handle == *handle => Some(o.fd),
            _ => self
                .mount_fds
                .get(&handle.fsid)
                .and_then(|mount| handle::open_handle(mount, handle).ok()),
        };
        let result = match &fd {
            Some(fd) => handle::mark(self.group.get_ref(), libc::FAN_MARK_REMOVE, mask, fd),
            None => Err(io::Error::from_raw_os_error(libc::ENOENT)),
        };
        if let Err(e) = result {
            // Gone with its inode, most likely.
            log::debug!(
                "removing the fanotify mark of {}: {e}",
                os_path(path).display()
            );
        }
    }

    /// Keeps a descriptor on the filesystem of `handle` for `open_by_handle_at`.
    fn remember_filesystem(&mut self, handle: &Handle, dir: &Path) {
        if !self.mount_fds.contains_key(&handle.fsid)
            && let Ok(fd) = handle::mount_fd(dir)
        {
            self.mount_fds.insert(handle.fsid, fd);
        }
    }
}

/// One `read` of the group.
fn read(group: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: reading into a buffer of buf.len() bytes.
    let n = unsafe { libc::read(group.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}
