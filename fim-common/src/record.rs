//! The fixed-size record every kernel program pushes into the ring buffer.

/// Length of `task_struct::comm`, including the trailing NUL.
pub const COMM_LEN: usize = 16;

/// What happened. Stable numbers: never renumber, never reuse a retired value.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A file was created.
    Create = 1,
    /// A file was opened with write intent.
    OpenWrite = 2,
    /// A writer closed a file it had written.
    Modified = 3,
    Truncate = 4,
    Rename = 5,
    Unlink = 6,
    Mkdir = 7,
    Rmdir = 8,
    Chmod = 9,
    Chown = 10,
    SetXattr = 11,
    RemoveXattr = 12,
    Link = 13,
    Symlink = 14,
    /// A file was mapped shared and writable.
    MmapSharedWrite = 15,
}

impl EventKind {
    /// Decodes a kind received from the kernel; unknown values are not trusted.
    pub fn from_raw(raw: u16) -> Option<Self> {
        use EventKind::*;
        Some(match raw {
            1 => Create,
            2 => OpenWrite,
            3 => Modified,
            4 => Truncate,
            5 => Rename,
            6 => Unlink,
            7 => Mkdir,
            8 => Rmdir,
            9 => Chmod,
            10 => Chown,
            11 => SetXattr,
            12 => RemoveXattr,
            13 => Link,
            14 => Symlink,
            15 => MmapSharedWrite,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        use EventKind::*;
        match self {
            Create => "create",
            OpenWrite => "open_write",
            Modified => "modified",
            Truncate => "truncate",
            Rename => "rename",
            Unlink => "unlink",
            Mkdir => "mkdir",
            Rmdir => "rmdir",
            Chmod => "chmod",
            Chown => "chown",
            SetXattr => "setxattr",
            RemoveXattr => "removexattr",
            Link => "link",
            Symlink => "symlink",
            MmapSharedWrite => "mmap_shared_write",
        }
    }
}

/// Which kind of kernel program produced a record. Stable numbers.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Lsm = 1,
    Fentry = 2,
    Tracepoint = 3,
}

impl Backend {
    pub const ALL: [Backend; 3] = [Backend::Lsm, Backend::Fentry, Backend::Tracepoint];

    pub fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            1 => Some(Backend::Lsm),
            2 => Some(Backend::Fentry),
            3 => Some(Backend::Tracepoint),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Lsm => "lsm",
            Backend::Fentry => "fentry",
            Backend::Tracepoint => "tracepoint",
        }
    }
}

/// The process that caused an event, as the kernel saw it at that moment.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Actor {
    /// Process id (thread-group id) as user space knows it.
    pub tgid: u32,
    /// Thread id.
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: [u8; COMM_LEN],
}

/// One ring-buffer record. Fixed size so the kernel side can reserve it in one step.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Record {
    /// `EventKind` as its raw number.
    pub kind: u16,
    /// `Backend` as its raw number.
    pub backend: u8,
    pub flags: u8,
    pub _reserved: u32,
    /// `bpf_ktime_get_ns()` at the hook.
    pub ktime_ns: u64,
    pub actor: Actor,
}

impl Record {
    pub const SIZE: usize = core::mem::size_of::<Record>();

    /// Reads a record from ring-buffer bytes. Returns `None` when the buffer is too short,
    /// so a malformed or truncated item can never panic the reader.
    pub fn from_bytes(bytes: &[u8]) -> Option<Record> {
        if bytes.len() < Self::SIZE {
            return None;
        }
        // SAFETY: the length was checked, `Record` is plain old data (every bit pattern is a
        // valid value) and `read_unaligned` copes with any alignment of the ring buffer item.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<Record>()) })
    }

    pub fn event_kind(&self) -> Option<EventKind> {
        EventKind::from_raw(self.kind)
    }

    pub fn backend(&self) -> Option<Backend> {
        Backend::from_raw(self.backend)
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: both are `repr(C)` with only integer fields and no implicit padding holes that
    // could leak uninitialised memory into maps.
    unsafe impl aya::Pod for super::Record {}
    unsafe impl aya::Pod for super::Actor {}
}
