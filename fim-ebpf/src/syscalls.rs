//! The tracepoint backend: `syscalls:sys_enter_*` stashes the arguments per thread,
//! `syscalls:sys_exit_*` reports the operation only when it succeeded.
//!
//! Paths come from the syscall's strings. A relative path is resolved in the kernel against
//! the task's cwd or the dirfd's file while the task is still inside the syscall, so a process
//! that exits right after is still attributed a correct absolute path. Filtering works on the
//! resulting string: FNV-1a hashes of every '/'-bounded prefix are looked up in `PREFIXES`.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::map, maps::HashMap, programs::TracePointContext,
};
use fim_common::{
    Backend, EventKind, Record, WatchValue, flags,
    record::{PATH_CAP, fnv1a_start, fnv1a_step},
    watch,
};

use crate::{
    actor::current_task,
    emit, filter,
    kernel::{field, off, read, read_ptr, set_field},
    path::{self, DATA_MASK, Piece},
    writers,
};

const BACKEND: Backend = Backend::Tracepoint;
const AT_FDCWD: i64 = -100;
/// FNV-1a of a watched path (no trailing slash) -> its rule; also every proper ancestor of a
/// watched path, flagged `watch::ANCESTOR`.
#[map]
static PREFIXES: HashMap<u64, WatchValue> = HashMap::with_max_entries(16384, 0);

/// The entry for "/" (a rule on the root directory watches every path), kept apart from
/// `PREFIXES` because every scan checks it: an array lookup is nearly free.
#[map]
static ROOT_PREFIX: aya_ebpf::maps::Array<WatchValue> =
    aya_ebpf::maps::Array::with_max_entries(1, 0);

/// How the stashed arguments are turned into paths at exit.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Shape {
    /// path1 = (dfd1, p1)
    Path = 1,
    /// path1 = (dfd1, p1), path2 = (dfd2, p2): rename, link
    TwoPaths = 2,
    /// path1 = (dfd2, p2) the new link, path2 = string p1 (its target)
    Symlink = 3,
    /// path1 = (dfd1, p1), path2 = string p2 (the attribute name)
    Xattr = 4,
    /// path1 = the file behind fd `dfd1`; path2 = string p2 when non-null (fsetxattr)
    Fd = 5,
    /// open*: path1 = (dfd1, p1); at exit the returned fd tells whether it was created
    Open = 6,
}

const SHAPE_TWO_PATHS: u16 = Shape::TwoPaths as u16;
const SHAPE_SYMLINK: u16 = Shape::Symlink as u16;
const SHAPE_XATTR: u16 = Shape::Xattr as u16;
const SHAPE_FD: u16 = Shape::Fd as u16;
const SHAPE_OPEN: u16 = Shape::Open as u16;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pending {
    pub kind: u16,
    /// A `Shape` as its raw number: map memory is never trusted to hold a valid enum.
    pub shape: u16,
    pub mode: u32,
    pub dfd1: i64,
    pub p1: u64,
    pub dfd2: i64,
    pub p2: u64,
    pub uid: u32,
    pub gid: u32,
    pub flags: u32,
    pub _pad: u32,
    /// The filter's `Verdict` (raw), decided at sys_enter.
    pub verdict: u64,
}

/// Arguments of in-flight watched syscalls, per thread. Every stashed syscall reaches its
/// sys_exit (a killed task still returns through it), which removes the entry, so a plain hash
/// map cannot fill up with leftovers; it is much cheaper to update than an LRU map. Only
/// entries stashed just before the exit programs were attached can linger, until the same
/// thread's next watched syscall replaces them.
#[map]
static PENDING: HashMap<u64, Pending> = HashMap::with_max_entries(PENDING_ENTRIES, 0);
const PENDING_ENTRIES: u32 = 16384;

/// The counting filter in front of `PENDING` (`presence`): most syscalls reaching sys_exit
/// were not stashed.
#[map]
static PENDING_COUNT: aya_ebpf::maps::Array<u64> =
    aya_ebpf::maps::Array::with_max_entries(crate::presence::ENTRIES, 0);

/// Argument `i` of a `sys_enter_*` tracepoint (after the 8-byte common header and the
/// syscall number).
#[inline(always)]
pub fn arg(ctx: &TracePointContext, i: usize) -> u64 {
    // SAFETY: the offset is inside the tracepoint's fixed record.
    unsafe { ctx.read_at::<u64>(16 + 8 * i).unwrap_or(0) }
}

/// Keeps the arguments of a syscall for its exit, but only when it touches a watched path (or
/// one the kernel cannot decide): an unwatched operation costs one string scan and no map
/// update. Deciding at enter also sees the paths as they were before the operation.
#[inline(always)]
pub fn stash(mut pending: Pending) {
    // Opens are decided at their exit, on the file they opened (`exit_open`): whatever name,
    // link, mount or file handle led to it.
    let verdict = if pending.shape == SHAPE_OPEN {
        filter::Verdict::Undecided
    } else {
        decide(&pending)
    };
    // Unwatched first: that settles most syscalls without the actor lookup.
    if verdict.is_unwatched() || filter::actor_excluded() {
        return;
    }
    pending.verdict = verdict.raw();
    let key = bpf_get_current_pid_tgid();
    // Counted first, as in `writers::opened`: the count never trails the map.
    crate::presence::inserted(&PENDING_COUNT, key);
    if PENDING.insert(key, pending, 0).is_err() {
        crate::presence::removed(&PENDING_COUNT, key);
        // Full: more threads inside watched syscalls than slots. Never silent.
        emit::count_lost(BACKEND);
        crate::diag::pending_full(PENDING_ENTRIES);
    }
}

/// The filter verdict for a syscall about to run, from its path arguments.
fn decide(pending: &Pending) -> filter::Verdict {
    let Some(data) = emit::data_ptr() else {
        return filter::Verdict::Undecided;
    };
    let shape = pending.shape;
    if shape == SHAPE_FD {
        // The file is open: decide on its dentry, as the LSM backends do.
        let Some(file) = fd_file(pending.dfd1) else {
            return filter::Verdict::Undecided;
        };
        let f_path = file.wrapping_add(off!(file_f_path));
        return match read_ptr(f_path, off!(path_dentry)) {
            Ok(dentry) => filter::check::<false>(dentry, filter::Presence::Existing),
            Err(_) => filter::Verdict::Undecided,
        };
    }
    let piece = if shape == SHAPE_SYMLINK {
        resolve(data, 0, pending.dfd2, pending.p2, flags::PATH1_TRUNCATED)
    } else {
        resolve(data, 0, pending.dfd1, pending.p1, flags::PATH1_TRUNCATED)
    };
    let verdict = prefix_verdict(0, piece.len(), piece.flags() != 0);
    if shape != SHAPE_TWO_PATHS || !verdict.is_unwatched() {
        return verdict;
    }
    let piece2 = resolve(data, 0, pending.dfd2, pending.p2, flags::PATH2_TRUNCATED);
    prefix_verdict(0, piece2.len(), piece2.flags() != 0)
}

impl Pending {
    #[inline(always)]
    pub fn new(kind: EventKind, shape: Shape) -> Pending {
        Pending {
            kind: kind as u16,
            shape: shape as u16,
            mode: 0,
            dfd1: AT_FDCWD,
            p1: 0,
            dfd2: AT_FDCWD,
            p2: 0,
            uid: u32::MAX,
            gid: u32::MAX,
            flags: 0,
            _pad: 0,
            verdict: 0,
        }
    }
}

/// The stashed arguments of this thread's syscall, if it was stashed, and the syscall's
/// result when it succeeded.
#[inline(always)]
fn take_pending(ctx: &TracePointContext) -> Option<(Pending, i64)> {
    let key = bpf_get_current_pid_tgid();
    if !crate::presence::maybe(&PENDING_COUNT, key) {
        return None;
    }
    // SAFETY: copied out at once.
    let pending = unsafe { PENDING.get(key).copied() }?;
    if PENDING.remove(key).is_ok() {
        crate::presence::removed(&PENDING_COUNT, key);
    }
    // SAFETY: `ret` is at offset 16 of every sys_exit record.
    let ret = unsafe { ctx.read_at::<i64>(16).unwrap_or(-1) };
    if ret < 0 || !crate::kernel::offsets_loaded() {
        return None;
    }
    Some((pending, ret))
}

/// The `sys_exit_*` handler of the open family (open, openat, openat2, creat,
/// open_by_handle_at): decides on the file that was opened, the way the LSM backends do, and
/// builds its path from the file. A symlink, a bind mount, another mount namespace,
/// `/proc/PID/fd/N`, `/proc/PID/root`, a chroot or a file handle all lead to the file itself.
pub fn exit_open(ctx: &TracePointContext) -> Result<(), i64> {
    let Some((pending, fd)) = take_pending(ctx) else {
        return Ok(());
    };
    if pending.shape != SHAPE_OPEN {
        return Ok(());
    }
    let Some(file) = fd_file(fd) else {
        return Ok(());
    };
    let f_mode = read::<u32>(file, off!(file_f_mode)).unwrap_or(0);
    let created = f_mode & FMODE_CREATED != 0;
    if !created && pending.flags & WRITE_INTENT == 0 {
        // O_CREAT of a file that was there, without write intent: nothing changed.
        return Ok(());
    }
    let f_path = file.wrapping_add(off!(file_f_path));
    let (Ok(mnt), Ok(dentry)) = (
        read_ptr(f_path, off!(path_mnt)),
        read_ptr(f_path, off!(path_dentry)),
    ) else {
        return Ok(());
    };
    let verdict = filter::check::<false>(dentry, filter::Presence::Existing);
    if verdict.is_unwatched() {
        return Ok(());
    }
    let kind = if created {
        EventKind::Create
    } else {
        EventKind::OpenWrite
    };
    let Some(record) = emit::start_bare(kind, BACKEND) else {
        return Ok(());
    };
    record.header.args.mode = pending.mode;
    record.header.args.flags = pending.flags;
    let data = record.data.as_mut_ptr();
    let mut piece = path::build::<false>(data, 0, dentry, mnt, flags::PATH1_TRUNCATED);
    if piece.flags() & flags::PATH1_TRUNCATED != 0 && pending.p1 != 0 {
        // Too long to build whole: the walk keeps the leaf end, which no rule matches. The
        // syscall's own string, resolved against its cwd or dirfd, keeps the start instead
        // (the task is still in the syscall, so the string is still there).
        piece = resolve(data, 0, pending.dfd1, pending.p1, flags::PATH1_TRUNCATED);
        crate::diag::open_string_fallback(piece.len() as u32);
    }
    record.header.path1_len = piece.len() as u16;
    record.header.flags |= piece.flags();
    set_rule(record, verdict);
    describe_file(record, file);
    crate::actor::fill::<false>(&mut record.header.actor);
    if pending.flags & (O_WRONLY | O_RDWR) != 0 {
        writers::opened(file, record.header.rule_id);
    }
    emit::submit(record, BACKEND);
    Ok(())
}

/// The shared `sys_exit_*` handler of the other syscalls.
pub fn exit(ctx: &TracePointContext) -> Result<(), i64> {
    let Some((pending, _)) = take_pending(ctx) else {
        return Ok(());
    };
    let Some(kind) = EventKind::from_raw(pending.kind) else {
        return Ok(());
    };
    // Plain numbers, not the enum: LLVM may assume an enum read from map memory is valid and
    // emit code the verifier (which knows nothing of Rust enums) rejects. Opens have their
    // own exit program.
    let shape = pending.shape;
    if !(1..=5).contains(&shape) {
        return Ok(());
    }
    let Some(record) = emit::start_bare(kind, BACKEND) else {
        return Ok(());
    };
    record.header.args.mode = pending.mode;
    record.header.args.uid = pending.uid;
    record.header.args.gid = pending.gid;
    record.header.args.flags = pending.flags;
    let data = record.data.as_mut_ptr();

    let piece1 = match shape {
        SHAPE_SYMLINK => resolve(data, 0, pending.dfd2, pending.p2, flags::PATH1_TRUNCATED),
        SHAPE_FD => fd_path(data, 0, pending.dfd1, flags::PATH1_TRUNCATED),
        _ => resolve(data, 0, pending.dfd1, pending.p1, flags::PATH1_TRUNCATED),
    };
    let len1 = piece1.len();
    record.header.path1_len = len1 as u16;
    record.header.flags |= piece1.flags();
    let verdict = filter::Verdict::from_raw(pending.verdict);

    match shape {
        SHAPE_TWO_PATHS => {
            let piece2 = resolve(data, len1, pending.dfd2, pending.p2, flags::PATH2_TRUNCATED);
            record.header.path2_len = piece2.len() as u16;
            record.header.flags |= piece2.flags();
        }
        SHAPE_SYMLINK => {
            let piece2 =
                path::user_string(data, len1, pending.p1 as *const u8, flags::PATH2_TRUNCATED);
            record.header.path2_len = piece2.len() as u16;
            record.header.flags |= piece2.flags() | flags::PATH2_IS_STRING;
        }
        SHAPE_XATTR | SHAPE_FD if pending.p2 != 0 => {
            let piece2 =
                path::user_string(data, len1, pending.p2 as *const u8, flags::PATH2_TRUNCATED);
            record.header.path2_len = piece2.len() as u16;
            record.header.flags |= piece2.flags() | flags::PATH2_IS_STRING;
        }
        _ => {}
    }
    if shape == SHAPE_FD
        && let Some(file) = fd_file(pending.dfd1)
    {
        // The fd-based syscalls (fchmod, ftruncate, fsetxattr...) decided on the file's
        // dentry: describe it (the target, and its directory for user space).
        describe_file(record, file);
    }
    set_rule(record, verdict);
    // Only now, with the decision made, is the actor worth its kernel reads.
    crate::actor::fill::<false>(&mut record.header.actor);
    emit::submit(record, BACKEND);
    Ok(())
}

/// The filter's decision into the header: the rule (and whether it was reached through
/// another name of the file), or, for anything else, "user space decides".
#[inline(always)]
fn set_rule(record: &mut Record, verdict: filter::Verdict) {
    match verdict.rule() {
        Some(rule) => {
            record.header.rule_id = rule;
            if verdict.via_link() {
                record.header.flags |= flags::VIA_LINK;
            }
        }
        None => record.header.flags |= flags::FILTER_UNDECIDED,
    }
}

const O_WRONLY: u32 = 0o1;
const O_RDWR: u32 = 0o2;

/// close(fd) of a file opened for writing in a watched place: `Modified`.
pub fn close(fd: i64) -> Result<(), i64> {
    let Some(file) = fd_file(fd) else {
        return Ok(());
    };
    crate::hooks::file_closed::<false>(BACKEND, file)
}

const FMODE_CREATED: u32 = 0x0010_0000;
/// O_WRONLY | O_RDWR | O_TRUNC
pub const WRITE_INTENT: u32 = 0o1 | 0o2 | 0o1000;
pub const O_CREAT: u32 = 0o100;

fn describe_file(record: &mut Record, file: *const u8) {
    let f_path = file.wrapping_add(off!(file_f_path));
    if let Ok(dentry) = read_ptr(f_path, off!(path_dentry)) {
        record.header.target.dev = filter::dentry_dev::<false>(dentry).unwrap_or(0);
        record.header.target.dir_ino = crate::hooks::dir_ino::<false>(dentry);
        if let Ok(inode) = read_ptr(dentry, off!(dentry_d_inode))
            && !inode.is_null()
        {
            record.header.target.ino = read::<u64>(inode, off!(inode_i_ino)).unwrap_or(0);
            record.header.target.mode = read::<u16>(inode, off!(inode_i_mode)).unwrap_or(0) as u32;
            record.header.flags |= flags::TARGET_KNOWN;
        }
    }
}

/// The `struct file *` behind descriptor `fd` of the current task.
fn fd_file(fd: i64) -> Option<*const u8> {
    if fd < 0 {
        return None;
    }
    let files = read_ptr(current_task(), off!(task_files)).ok()?;
    let fdt = read_ptr(files, off!(files_struct_fdt)).ok()?;
    let max = read::<u32>(fdt, off!(fdtable_max_fds)).ok()? as i64;
    if fd >= max {
        return None;
    }
    let table = read_ptr(fdt, off!(fdtable_fd)).ok()?;
    let file = read_ptr(table, (fd as usize & 0xffff) * 8).ok()?;
    if file.is_null() { None } else { Some(file) }
}

/// Absolute path of the file behind `fd`.
fn fd_path(data: *mut u8, dst: usize, fd: i64, truncated: u16) -> Piece {
    let Some(file) = fd_file(fd) else {
        return Piece::new(0, truncated);
    };
    let f_path = file.wrapping_add(off!(file_f_path));
    let (Ok(mnt), Ok(dentry)) = (
        read_ptr(f_path, off!(path_mnt)),
        read_ptr(f_path, off!(path_dentry)),
    ) else {
        return Piece::new(0, truncated);
    };
    path::build::<false>(data, dst, dentry, mnt, truncated)
}

/// Resolves a syscall path string (relative to `dfd` or the cwd) to an absolute path at
/// `data[dst..]`.
fn resolve(data: *mut u8, dst: usize, dfd: i64, user_path: u64, truncated: u16) -> Piece {
    let src = user_path as *const u8;
    // Most paths are absolute: read the string where it belongs, then look at its first byte.
    let whole = path::user_string(data, dst, src, truncated);
    // SAFETY: dst & DATA_MASK < DATA_CAP.
    let absolute = whole.len() != 0 && unsafe { *data.add(path::bounded(dst, DATA_MASK)) } == b'/';
    // An absolute path means what it says unless the task is chrooted: then it starts at the
    // task's root, whose own path goes first (the string keeps its leading '/').
    let chroot_base = if absolute {
        match path::task_root() {
            path::Root::Below(mnt, dentry) => Some((mnt, dentry)),
            path::Root::Top | path::Root::Unknown => return whole,
        }
    } else {
        None
    };
    // Relative: the base is the cwd or the directory behind dfd.
    let base = if let Some((mnt, dentry)) = chroot_base {
        path::build::<false>(data, dst, dentry, mnt, truncated)
    } else if dfd == AT_FDCWD {
        let Ok(fs) = read_ptr(current_task(), off!(task_fs)) else {
            return Piece::new(0, truncated);
        };
        let pwd = fs.wrapping_add(off!(fs_struct_pwd));
        let (Ok(mnt), Ok(dentry)) = (
            read_ptr(pwd, off!(path_mnt)),
            read_ptr(pwd, off!(path_dentry)),
        ) else {
            return Piece::new(0, truncated);
        };
        path::build::<false>(data, dst, dentry, mnt, truncated)
    } else {
        fd_path(data, dst, dfd, truncated)
    };
    let base_len = base.len();
    let mut end = dst + base_len;
    if chroot_base.is_some() {
        // The string brings its own '/'; a root of "/" adds nothing.
        if base_len == 1 {
            end = dst;
        }
    } else if base_len != 1 {
        // SAFETY: end & DATA_MASK < DATA_CAP.
        unsafe { *data.add(path::bounded(end, DATA_MASK)) = b'/' };
        end += 1;
    }
    let rel = path::user_string(data, end, src, truncated);
    if rel.len() == 0 {
        // An empty string (AT_EMPTY_PATH): the base itself.
        return base;
    }
    let total = end + rel.len() - dst;
    if total >= PATH_CAP {
        return Piece::new(PATH_CAP - 1, base.flags() | rel.flags() | truncated);
    }
    Piece::new(total, base.flags() | rel.flags())
}

/// Loop state of the prefix scan, kept in a map for the same reason as the path walk's.
#[repr(C)]
struct Scan {
    hash: u64,
    component_len: u64,
    dots: u64,
    /// A `filter::Verdict` once decided, `SCAN_CONTINUE` before.
    verdict: u64,
    /// Where the string starts in the scratch record's data area, and its length.
    dst: u64,
    len: u64,
    /// A prefix was neither watched nor an ancestor of a watched root: only a `..` component
    /// further on can still lead back to a watched place. Then this is where the rest starts.
    pruned_at: u64,
    /// The `..` search over the rest: dot lanes of the previous word, and whether a pair was
    /// found.
    carry: u64,
    pairs: u64,
}

#[map]
static SCANSTATE: aya_ebpf::maps::PerCpuArray<Scan> =
    aya_ebpf::maps::PerCpuArray::with_max_entries(1, 0);

const SCAN_CONTINUE: u64 = u64::MAX;
/// Bytes scanned per `bpf_loop` iteration: a callback per byte costs more than the scan.
/// 16 made the unwatched sys_enter programs 10-15% cheaper than 8 here; 32 gained nothing more
/// (`cargo xtask bench sensor -- --profile`).
const SCAN_STEP: usize = 16;

/// One `bpf_loop` iteration of the prefix scan: `SCAN_STEP` bytes of the scratch data.
unsafe extern "C" fn scan_callback(index: u64, _ctx: *mut core::ffi::c_void) -> i64 {
    let (Some(state), Some(data)) = (SCANSTATE.get_ptr_mut(0), emit::data_ptr()) else {
        return 1;
    };
    let dst = field!(state, dst) as usize;
    let len = field!(state, len) as usize;
    let mut hash = field!(state, hash);
    let mut component_len = field!(state, component_len);
    let mut dots = field!(state, dots);
    let base = index as usize * SCAN_STEP;
    // Branch-free bookkeeping per byte: a branch per byte and per case multiplies the paths
    // the verifier walks through the unrolled steps (6.1 gives up), so only a '/' branches.
    for k in 0..SCAN_STEP {
        let pos = base + k;
        if pos >= len {
            break;
        }
        // SAFETY: (dst + pos) & DATA_MASK < DATA_CAP.
        let byte = unsafe { *data.add(path::bounded(dst + pos, DATA_MASK)) };
        let slash = is_zero((byte ^ b'/') as u64);
        if slash != 0 {
            // An empty, "." or ".." component: not canonical, user space decides.
            let bad = is_zero(component_len)
                | (is_zero(component_len ^ dots) & ((dots.wrapping_sub(3) >> 63) & 1));
            if bad != 0 {
                set_field!(state, verdict, filter::Verdict::Undecided.raw());
                return 1;
            }
            match lookup_prefix(hash) {
                None => {
                    set_field!(state, pruned_at, pos as u64);
                    return 1;
                }
                Some(v) if v.flags & watch::WATCHING != 0 => {
                    set_field!(state, verdict, filter::Verdict::Watched(v.rule_id).raw());
                    return 1;
                }
                Some(_) => {}
            }
        }
        let keep = 1 - slash;
        component_len = (component_len + 1) * keep;
        dots = (dots + is_zero((byte ^ b'.') as u64)) * keep;
        hash = fnv1a_step(hash, byte);
    }
    set_field!(state, hash, hash);
    set_field!(state, component_len, component_len);
    set_field!(state, dots, dots);
    0
}

/// 1 when `x` is zero, else 0, without a branch (`x` below 2^63).
#[inline(always)]
fn is_zero(x: u64) -> u64 {
    1 - ((x | x.wrapping_neg()) >> 63)
}

/// Words per iteration of the `..` search.
const PAIR_WORDS: usize = 8;
const DOTS: u64 = 0x2e2e_2e2e_2e2e_2e2e;
const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// One iteration of the `..` search after a pruned prefix: `PAIR_WORDS` 8-byte words,
/// branch-free (a branch per byte is what makes the verifier's job explode). A word's dot
/// lanes get their high bit set; a dot lane followed by a dot lane is a `..`.
unsafe extern "C" fn pairs_callback(index: u64, _ctx: *mut core::ffi::c_void) -> i64 {
    let (Some(state), Some(data)) = (SCANSTATE.get_ptr_mut(0), emit::data_ptr()) else {
        return 1;
    };
    let dst = field!(state, dst) as usize;
    let len = field!(state, len) as usize;
    let start = field!(state, pruned_at) as usize;
    let mut carry = field!(state, carry);
    let mut pairs = field!(state, pairs);
    for k in 0..PAIR_WORDS {
        let pos = start + (index as usize * PAIR_WORDS + k) * 8;
        if pos >= len {
            break;
        }
        let at = path::bounded(dst + pos, DATA_MASK);
        // SAFETY: at + 8 <= DATA_MASK + 8 < DATA_CAP.
        let word = unsafe { core::ptr::read_unaligned(data.add(at).cast::<u64>()) };
        // The last word may read a few bytes past the string (NUL, then leftovers of earlier
        // records). Not masking them keeps this branch-free; a '..' among them only makes the
        // verdict undecided, and user space then decides on the real path.
        let x = word ^ DOTS;
        let dot_lanes = !(((x & LOW7) + LOW7) | x | LOW7);
        pairs |= (dot_lanes & (dot_lanes >> 8)) | (carry & (dot_lanes << 56));
        carry = dot_lanes;
    }
    set_field!(state, carry, carry);
    set_field!(state, pairs, pairs);
    0
}

/// The filter verdict for the absolute path at `data[dst..dst+len]`: the FNV-1a hash of every
/// '/'-bounded prefix is looked up in `PREFIXES`, which holds the watched paths and their
/// ancestors; the first prefix that is neither ends the lookups. `.`/`..` components or
/// doubled slashes make the string non-canonical: user space decides those.
fn prefix_verdict(dst: usize, len: usize, truncated: bool) -> filter::Verdict {
    let Some(state) = SCANSTATE.get_ptr_mut(0) else {
        return filter::Verdict::Undecided;
    };
    if len == 0 || truncated {
        return filter::Verdict::Undecided;
    }
    // "/" itself as a watched root covers everything.
    if let Some(v) = ROOT_PREFIX.get(0)
        && v.flags & watch::WATCHING != 0
    {
        return filter::Verdict::Watched(v.rule_id);
    }
    // Every path here is absolute: the scan starts after the leading '/', whose prefix (the
    // empty string) needs no lookup.
    let Some(data) = emit::data_ptr() else {
        return filter::Verdict::Undecided;
    };
    // SAFETY: dst & DATA_MASK < DATA_CAP.
    if unsafe { *data.add(path::bounded(dst, DATA_MASK)) } != b'/' {
        return filter::Verdict::Undecided;
    }
    let (dst, len) = (dst + 1, len - 1);
    set_field!(state, hash, fnv1a_step(fnv1a_start(), b'/'));
    set_field!(state, component_len, 0);
    set_field!(state, dots, 0);
    set_field!(state, pruned_at, 0);
    set_field!(state, carry, 0);
    set_field!(state, pairs, 0);
    set_field!(state, verdict, SCAN_CONTINUE);
    set_field!(state, dst, dst as u64);
    set_field!(state, len, len as u64);
    let steps = len.div_ceil(SCAN_STEP) as u32;
    // SAFETY: the callback only touches per-CPU map values; bpf_loop as in the path walk.
    unsafe {
        aya_ebpf::helpers::generated::bpf_loop(
            steps,
            scan_callback as *mut core::ffi::c_void,
            core::ptr::null_mut(),
            0,
        );
    }
    let verdict = field!(state, verdict);
    if verdict != SCAN_CONTINUE {
        return filter::Verdict::from_raw(verdict);
    }
    let pruned_at = field!(state, pruned_at) as usize;
    if pruned_at != 0 {
        // Only a `..` can climb back out of the unwatched prefix; "." and "//" cannot.
        let words = (len - pruned_at).div_ceil(8);
        // SAFETY: as above.
        unsafe {
            aya_ebpf::helpers::generated::bpf_loop(
                words.div_ceil(PAIR_WORDS) as u32,
                pairs_callback as *mut core::ffi::c_void,
                core::ptr::null_mut(),
                0,
            );
        }
        return if field!(state, pairs) & HIGH != 0 {
            filter::Verdict::Undecided
        } else {
            filter::Verdict::Unwatched
        };
    }
    let component_len = field!(state, component_len);
    let dots = field!(state, dots);
    if component_len == dots && dots > 0 && dots <= 2 {
        return filter::Verdict::Undecided;
    }
    match lookup_prefix(field!(state, hash)) {
        Some(v) if v.flags & watch::WATCHING != 0 => filter::Verdict::Watched(v.rule_id),
        _ => filter::Verdict::Unwatched,
    }
}

/// A bit per `PREFIXES` key (`fim_common::bitmap`): a clear bit ends the lookup.
#[map]
static PREFIX_BITS: aya_ebpf::maps::Array<u64> =
    aya_ebpf::maps::Array::with_max_entries(fim_common::bitmap::WORDS, 0);

#[inline(always)]
fn lookup_prefix(hash: u64) -> Option<WatchValue> {
    if !filter::maybe_present(&PREFIX_BITS, hash) {
        return None;
    }
    // SAFETY: copied out at once.
    unsafe { PREFIXES.get(hash).copied() }
}
