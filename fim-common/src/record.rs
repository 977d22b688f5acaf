//! The record every kernel program pushes into the ring buffer.
//!
//! A ring-buffer item is a fixed-layout [`RecordHeader`] followed by the bytes of up to two
//! strings (`path1_len` then `path2_len` bytes, no NULs). The kernel builds the whole
//! [`Record`] (header + fixed-capacity data area) in a per-CPU scratch slot and outputs only
//! the used prefix: a record of a short path costs a few hundred bytes of ring buffer instead of
//! the 8 KiB capacity, so a burst of tens of thousands of events fits without loss.

/// Length of `task_struct::comm`, including the trailing NUL.
pub const COMM_LEN: usize = 16;
/// Capacity of one path in bytes. Longer paths keep their last `PATH_CAP - 1` bytes (the end
/// closest to the file) and are flagged `PATH1_TRUNCATED` / `PATH2_TRUNCATED`.
pub const PATH_CAP: usize = 4096;
/// Capacity of the kernel's scratch data area. Two paths at most are sent (rename and link carry
/// old and new); the third `PATH_CAP` is slack so that every masked offset plus a masked length
/// provably stays in bounds for the verifier. Only the used prefix goes into the ring buffer.
pub const DATA_CAP: usize = 3 * PATH_CAP;
/// Maximum number of dentries the kernel's filter walks up looking for a watched directory
/// (deeper events are sent undecided and user space decides). Building a path is bounded by
/// the buffer instead, and this many mount crossings.
pub const MAX_WALK_DEPTH: u32 = 64;

/// What happened. Stable numbers: never renumber, never reuse a retired value.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A file (regular, FIFO, socket or device node) was created.
    Create = 1,
    /// A file was opened with write intent.
    OpenWrite = 2,
    /// A writer closed a file it had written.
    Modified = 3,
    Truncate = 4,
    /// path1 is the old path, path2 the new one.
    Rename = 5,
    Unlink = 6,
    Mkdir = 7,
    Rmdir = 8,
    /// `arg.mode` is the new mode.
    Chmod = 9,
    /// `arg.uid` / `arg.gid` are the new owner (`u32::MAX` = unchanged).
    Chown = 10,
    /// path2 is the attribute name.
    SetXattr = 11,
    /// path2 is the attribute name.
    RemoveXattr = 12,
    /// path1 is the existing file, path2 the new name.
    Link = 13,
    /// path1 is the new link, path2 its target string.
    Symlink = 14,
    /// A file was mapped shared and writable.
    MmapSharedWrite = 15,
    /// A process executed a program: path1 is the executable, path2 the arguments
    /// (NUL-separated, `PATH2_IS_STRING`). Feeds attribution; not a file change.
    Exec = 16,
    /// The content may have changed (a write, truncation or fallocate) with no open and close
    /// around it that fim saw: what the completeness layer (fanotify) reports. User space
    /// only; the kernel programs never emit it.
    Written = 17,
    /// Attributes may have changed (mode, owner, xattrs, link count, times): what the
    /// completeness layer reports. User space only, like `Written`.
    AttributesChanged = 18,
}

impl EventKind {
    pub const ALL: [EventKind; 18] = [
        EventKind::Create,
        EventKind::OpenWrite,
        EventKind::Modified,
        EventKind::Truncate,
        EventKind::Rename,
        EventKind::Unlink,
        EventKind::Mkdir,
        EventKind::Rmdir,
        EventKind::Chmod,
        EventKind::Chown,
        EventKind::SetXattr,
        EventKind::RemoveXattr,
        EventKind::Link,
        EventKind::Symlink,
        EventKind::MmapSharedWrite,
        EventKind::Exec,
        EventKind::Written,
        EventKind::AttributesChanged,
    ];

    /// Decodes a kind received from the kernel; unknown values are not trusted.
    pub fn from_raw(raw: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|k| *k as u16 == raw)
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
            Exec => "exec",
            Written => "written",
            AttributesChanged => "attributes_changed",
        }
    }
}

/// Which kind of kernel program produced a record. Stable numbers.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    Lsm = 1,
    Fentry = 2,
    Tracepoint = 3,
}

impl Backend {
    pub const ALL: [Backend; 3] = [Backend::Lsm, Backend::Fentry, Backend::Tracepoint];

    pub fn from_raw(raw: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|b| *b as u8 == raw)
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Lsm => "lsm",
            Backend::Fentry => "fentry",
            Backend::Tracepoint => "tracepoint",
        }
    }
}

/// `RecordHeader::flags` bits.
pub mod flags {
    /// path1 is incomplete (too long, or deeper than the walk limit): never use it as exact.
    pub const PATH1_TRUNCATED: u16 = 1 << 0;
    pub const PATH2_TRUNCATED: u16 = 1 << 1;
    /// The path walk stopped at a filesystem root without knowing the mount (hooks that only
    /// get a dentry): the path is relative to the root of filesystem `target.dev`.
    pub const PATH_FS_RELATIVE: u16 = 1 << 2;
    /// The kernel could not decide whether the path is watched (walk limit, `.`/`..` in a
    /// syscall string); user space must check.
    pub const FILTER_UNDECIDED: u16 = 1 << 3;
    /// path2 holds a plain string (xattr name, symlink target), not a path.
    pub const PATH2_IS_STRING: u16 = 1 << 4;
    /// `target` describes the object (dev/ino/mode valid).
    pub const TARGET_KNOWN: u16 = 1 << 5;
    /// path1 came from the kernel's `d_path` (`bpf_d_path`), not from fim's dentry walk. For
    /// tests and diagnosis: both give the same path.
    pub const PATH1_D_PATH: u16 = 1 << 6;
    /// The object is watched because another name of it is (a hard link, found in the
    /// kernel's map of watched inodes with more than one link): path1 is the name that was
    /// used, which no rule may cover. User space reports the change at the watched name(s).
    pub const VIA_LINK: u16 = 1 << 7;
}

/// The process that caused an event, as the kernel saw it at that moment.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Actor {
    /// Process id (thread-group id) as user space knows it.
    pub tgid: u32,
    /// Thread id.
    pub pid: u32,
    /// The parent's tgid.
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub euid: u32,
    /// The audit login uid: the human behind `sudo`. `u32::MAX` when unset.
    pub loginuid: u32,
    /// Inode number of the mount namespace.
    pub mnt_ns: u32,
    /// Start of the thread-group leader in ns since boot (`start_boottime`), so a reused pid
    /// can never be mistaken for the original process.
    pub start_boottime_ns: u64,
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
}

/// The file the event is about (for rename/link: the object being renamed or linked).
///
/// The directory inode numbers let user space find the watched name of a change made through
/// another name of the same directory (a bind mount, another mount namespace): the kernel
/// decides on inodes, and the path it builds is the one that was used.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Target {
    /// Kernel device number of the filesystem (`super_block::s_dev`, the kernel encoding
    /// `major << 20 | minor`).
    pub dev: u32,
    /// `inode::i_mode` (type and permission bits); 0 for a name that does not exist yet.
    pub mode: u32,
    pub ino: u64,
    /// Inode number of the directory that holds path1's last name (0: unknown).
    pub dir_ino: u64,
    /// The same for path2 when it is a path (the new name of a rename or link; 0: unknown).
    pub dir2_ino: u64,
}

/// Operation arguments that are not paths.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Args {
    /// New mode (chmod, mkdir, create).
    pub mode: u32,
    /// New owner (chown); `u32::MAX` when unchanged.
    pub uid: u32,
    pub gid: u32,
    /// open(2) flags, rename(2) flags, mmap flags.
    pub flags: u32,
}

/// The fixed-layout part of every ring-buffer item.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RecordHeader {
    /// `EventKind` as its raw number.
    pub kind: u16,
    /// `Backend` as its raw number.
    pub backend: u8,
    pub _reserved: u8,
    /// See [`flags`].
    pub flags: u16,
    pub path1_len: u16,
    pub path2_len: u16,
    pub _pad: u16,
    /// The watched-root rule that matched in the kernel (0 when undecided).
    pub rule_id: u32,
    /// `bpf_ktime_get_ns()` at the hook.
    pub ktime_ns: u64,
    pub actor: Actor,
    pub target: Target,
    pub args: Args,
}

// The kernel side zeroes a header a word at a time.
const _: () = assert!(
    RecordHeader::SIZE.is_multiple_of(8) && core::mem::align_of::<RecordHeader>() == 8,
    "RecordHeader must be a whole number of aligned 64-bit words"
);

/// Header plus data area, as built in the kernel's per-CPU scratch slot.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Record {
    pub header: RecordHeader,
    pub data: [u8; DATA_CAP],
}

/// The kernel's per-CPU scratch slot: the record being built, and two counters through which
/// one program at a time on a CPU holds it. A BPF program may be preempted where the kernel
/// preempts kernel code (`preempt=full`, RT): another program on the same CPU, in another
/// task, must then not write into the record the first one has half built.
///
/// A program adds one to `entered` (an atomic add), reads `left`, then `entered` again, and
/// holds the slot when [`holds_alone`] says so; it adds one to `left` when it is done, whether
/// it held the slot or not. A program that does not hold the slot drops its record and counts
/// it as lost.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Scratch {
    pub entered: u64,
    pub left: u64,
    pub record: Record,
}

/// Whether a program that counted itself into `entered` and then read `left` and `entered`,
/// in that order, holds the scratch slot: every program that asked before its second read
/// had given the slot back by its first. A program that asks later finds this one still in,
/// so no two hold the slot at once; two that overlap may both go without it.
#[inline(always)]
pub const fn holds_alone(left: u64, entered: u64) -> bool {
    entered.wrapping_sub(left) == 1
}

impl RecordHeader {
    pub const SIZE: usize = core::mem::size_of::<RecordHeader>();

    pub fn event_kind(&self) -> Option<EventKind> {
        EventKind::from_raw(self.kind)
    }

    pub fn backend(&self) -> Option<Backend> {
        Backend::from_raw(self.backend)
    }

    /// Splits a ring-buffer item into its header and its two strings. Returns `None` for an
    /// item that is too short or whose lengths do not add up, so a malformed item can never
    /// panic or mislead the reader.
    pub fn parse(item: &[u8]) -> Option<(RecordHeader, &[u8], &[u8])> {
        if item.len() < Self::SIZE {
            return None;
        }
        // SAFETY: the length was checked, `RecordHeader` is plain old data (every bit pattern
        // is a valid value) and `read_unaligned` copes with any alignment.
        let header = unsafe { core::ptr::read_unaligned(item.as_ptr().cast::<RecordHeader>()) };
        let len1 = header.path1_len as usize;
        let len2 = header.path2_len as usize;
        if len1 > PATH_CAP || len2 > PATH_CAP {
            return None;
        }
        let data = &item[Self::SIZE..];
        if data.len() < len1 + len2 {
            return None;
        }
        Some((header, &data[..len1], &data[len1..len1 + len2]))
    }
}

/// Key of the watched-roots map: an inode on a filesystem.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct WatchKey {
    pub dev: u32,
    pub _pad: u32,
    pub ino: u64,
}

/// `WatchValue::flags` bits.
pub mod watch {
    /// Everything below this directory, at any depth.
    pub const RECURSIVE: u32 = 1 << 0;
    /// The entries directly inside this directory.
    pub const CHILDREN: u32 = 1 << 1;
    /// This inode itself (a file rule, or the directory itself).
    pub const SELF: u32 = 1 << 2;
    /// Tracepoint prefixes only: a watched root lies below this path. A prefix that is
    /// neither watched nor an ancestor ends the kernel's string scan early.
    pub const ANCESTOR: u32 = 1 << 3;
    /// The flags that make a prefix watched (as opposed to merely an ancestor).
    pub const WATCHING: u32 = RECURSIVE | CHILDREN | SELF;
}

/// The memos' dentry generation (fim-ebpf's `dirmemo`) while it is not known to count every
/// directory move: user space sets it at load and clears it once the program on the kernel's
/// `__d_move` is attached. No memo is used while this bit is set; the programs' bumps leave it
/// set.
pub const DCACHE_GEN_UNTRACKED: u64 = 1 << 63;

/// Entries of the eBPF map of process start times by pid (`STARTED`, the tracepoint
/// backend's fork program): least recently used pids go first.
pub const STARTED_ENTRIES: u32 = 65_536;

/// Value of the watched-roots map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchValue {
    pub rule_id: u32,
    pub flags: u32,
}

/// Value of the excluded-actors map (keyed by tgid): present means "drop in the kernel", for
/// the process that started at `start_boottime_ns` only (0: whatever process has the pid).
/// A reused pid is never excluded by mistake.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Excluded {
    pub reason: u32,
    pub _pad: u32,
    pub start_boottime_ns: u64,
}

/// Why a process is excluded (`Excluded::reason`).
pub mod excluded {
    /// fim itself.
    pub const SELF: u32 = 1;
    /// An executable listed in the configuration's `excluded`.
    pub const CONFIGURED: u32 = 2;
}

/// FNV-1a 64 of a byte string: how watched path prefixes are keyed for the tracepoint
/// backend, which only has syscall strings to go by. Same function on both sides.
pub const fn fnv1a_start() -> u64 {
    0xcbf2_9ce4_8422_2325
}

#[inline(always)]
pub const fn fnv1a_step(hash: u64, byte: u8) -> u64 {
    (hash ^ byte as u64).wrapping_mul(0x0000_0100_0000_01b3)
}

pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash = fnv1a_start();
    let mut i = 0;
    while i < bytes.len() {
        hash = fnv1a_step(hash, bytes[i]);
        i += 1;
    }
    hash
}

/// Membership bitmaps in front of the filter's hash maps: one bit per key hash, set by user
/// space for every key in the map. A clear bit proves the key absent with one array load,
/// which the verifier inlines, instead of a hash-map lookup; most paths the kernel asks about
/// are unwatched, so most lookups end there. A set bit only means "look it up".
pub mod bitmap {
    /// 64-bit words per bitmap (65,536 bits: 8 KiB).
    pub const WORDS: u32 = 1024;

    /// The bit of a 64-bit key hash: (word, mask).
    #[inline(always)]
    pub const fn bit(hash: u64) -> (u32, u64) {
        // Multiplicative mixing, top 16 bits: FNV hashes and inode numbers both vary most in
        // their low bits.
        let index = (hash.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 48) as u32;
        (index >> 6, 1u64 << (index & 63))
    }

    /// The hash that stands for a whole filesystem in the inode bitmap: its bit is set when
    /// any key is on device `dev`, so a clear bit settles a path on an unwatched filesystem
    /// (tmpfs, procfs, ...) before any walk.
    #[inline(always)]
    pub const fn dev_hash(dev: u32) -> u64 {
        (dev as u64) | 1 << 63
    }

    /// The hash of a `WatchKey`'s fields.
    #[inline(always)]
    pub const fn inode_hash(dev: u32, ino: u64) -> u64 {
        ino ^ ((dev as u64) << 40) ^ (dev as u64)
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: `repr(C)` structs with only integer fields, laid out without padding holes.
    unsafe impl aya::Pod for super::WatchKey {}
    unsafe impl aya::Pod for super::WatchValue {}
    unsafe impl aya::Pod for super::Excluded {}
    // SAFETY: `repr(C)`, integers and byte arrays only; every bit pattern is a valid value.
    unsafe impl aya::Pod for super::Scratch {}
}

#[cfg(test)]
mod scratch_tests {
    use super::holds_alone;

    /// One program's steps (see `Scratch`): count in, read `left`, read `entered`, then either
    /// hold the slot (one step inside) or not, and count out.
    #[derive(Clone, Copy, Default)]
    struct Program {
        pc: u8,
        first: u64,
        second: u64,
        holds: bool,
    }

    #[derive(Clone, Copy, Default)]
    struct World {
        entered: u64,
        left: u64,
        programs: [Program; 3],
    }

    /// Runs program `i`'s next step; `left_first`: the reads in the order `holds_alone`
    /// expects, or the other way round. Returns false once the program is done.
    fn step(w: &mut World, i: usize, left_first: bool) -> bool {
        let p = w.programs[i];
        let mut p2 = p;
        match p.pc {
            0 => w.entered += 1,
            1 => p2.first = if left_first { w.left } else { w.entered },
            2 => {
                p2.second = if left_first { w.entered } else { w.left };
                let (left, entered) = if left_first {
                    (p2.first, p2.second)
                } else {
                    (p2.second, p2.first)
                };
                p2.holds = holds_alone(left, entered);
            }
            3 => {}
            4 => {
                p2.holds = false;
                w.left += 1;
            }
            _ => return false,
        }
        p2.pc += 1;
        w.programs[i] = p2;
        true
    }

    /// Explores every interleaving of the three programs, keeping in `most` the largest number
    /// of them that held the slot at once.
    fn explore(w: World, left_first: bool, most: &mut usize) {
        let holding = w.programs.iter().filter(|p| p.holds).count();
        *most = (*most).max(holding);
        for i in 0..3 {
            let mut next = w;
            if step(&mut next, i, left_first) {
                explore(next, left_first, most);
            }
        }
    }

    #[test]
    fn no_two_programs_hold_the_slot_at_once() {
        let mut most = 0;
        explore(World::default(), true, &mut most);
        assert_eq!(most, 1, "two programs held the scratch slot at once");
    }

    #[test]
    fn reading_entered_first_would_let_two_hold_it() {
        let mut most = 0;
        explore(World::default(), false, &mut most);
        assert!(most > 1, "the model no longer tells the orders apart");
    }

    #[test]
    fn a_program_on_its_own_holds_the_slot() {
        let mut w = World {
            entered: 7,
            left: 7,
            ..World::default()
        };
        for i in 0..3 {
            while step(&mut w, i, true) {
                if w.programs[i].pc == 3 {
                    assert!(
                        w.programs[i].holds,
                        "program {i} ran alone without the slot"
                    );
                }
            }
        }
        assert_eq!(w.entered, w.left);
    }
}
