//! Decoded kernel records: what user space works with.

use std::path::PathBuf;

use fim_common::{Actor, Args, Backend, EventKind, RecordHeader, Target, flags};

/// Where a record came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Source {
    /// The sensor's ring buffer (the backend's kernel programs).
    #[default]
    Kernel,
    /// The completeness layer (fanotify): what syscall tracepoints cannot see (io_uring,
    /// changes through another name or mount). Only the pid of the actor is known, and the
    /// same change may also have come from the kernel programs: user space reports it once.
    Fanotify,
}

impl Source {
    /// The `backend` a change reports: the completeness layer names itself.
    pub fn backend_name(self, backend: Backend) -> &'static str {
        match self {
            Source::Kernel => backend.name(),
            Source::Fanotify => "fanotify",
        }
    }
}

/// One kernel record, decoded and owned.
#[derive(Clone, Debug)]
pub struct Event {
    pub kind: EventKind,
    /// The sensor backend running (for `Source::Fanotify`, the one it completes).
    pub backend: Backend,
    pub source: Source,
    pub flags: u16,
    pub rule_id: u32,
    pub ktime_ns: u64,
    pub actor: Actor,
    pub target: Target,
    pub args: Args,
    /// Absolute path of the object (for rename/link: the old/existing path; for symlink: the
    /// new link). Raw bytes: Linux paths need not be UTF-8.
    pub path: Vec<u8>,
    /// rename/link: the new path; symlink: the target string; xattr: the attribute name.
    pub path2: Vec<u8>,
    /// The name the change was actually made through, when `path` is the watched name found
    /// for it instead (another hard link, a bind mount, another mount namespace): reported as
    /// `unmapped.fim.used_path`.
    pub used_path: Option<Vec<u8>>,
}

impl Event {
    /// Decodes a ring-buffer item; `None` for anything malformed (unknown kind or backend,
    /// lengths that do not add up).
    pub fn decode(item: &[u8]) -> Option<Event> {
        let (header, path1, path2) = RecordHeader::parse(item)?;
        Some(Event {
            kind: header.event_kind()?,
            backend: header.backend()?,
            source: Source::Kernel,
            flags: header.flags,
            rule_id: header.rule_id,
            ktime_ns: header.ktime_ns,
            actor: header.actor,
            target: header.target,
            args: header.args,
            path: path1.to_vec(),
            path2: path2.to_vec(),
            used_path: None,
        })
    }

    pub fn path_buf(&self) -> PathBuf {
        use std::os::unix::ffi::OsStrExt;
        PathBuf::from(std::ffi::OsStr::from_bytes(&self.path))
    }

    pub fn path2_buf(&self) -> PathBuf {
        use std::os::unix::ffi::OsStrExt;
        PathBuf::from(std::ffi::OsStr::from_bytes(&self.path2))
    }

    /// Whether path (or path2) is incomplete and must not be used as exact.
    pub fn truncated(&self) -> bool {
        self.flags & (flags::PATH1_TRUNCATED | flags::PATH2_TRUNCATED) != 0
    }

    pub fn comm(&self) -> String {
        let comm = &self.actor.comm;
        let len = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
        String::from_utf8_lossy(&comm[..len]).into_owned()
    }
}
