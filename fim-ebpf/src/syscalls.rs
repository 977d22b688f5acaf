//! The tracepoint backend: `syscalls:sys_enter_*` stashes the arguments per thread,
//! `syscalls:sys_exit_*` reports the operation only when it succeeded.
//!
//! Paths come from the syscall's strings. A relative path is resolved in the kernel against
//! the task's cwd or the dirfd's file while the task is still inside the syscall, so a process
//! that exits right after is still attributed a correct absolute path. Filtering works on the
//! resulting string: FNV-1a hashes of every '/'-bounded prefix are looked up in `PREFIXES`.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::map,
    maps::{HashMap, LruHashMap},
    programs::TracePointContext,
};
use fim_common::{
    Backend, EventKind, Record, WatchValue, flags,
    record::{PATH_CAP, fnv1a_start, fnv1a_step},
};

use crate::{
    actor::current_task,
    emit, filter,
    kernel::{off, read, read_ptr},
    path::{self, DATA_MASK, Piece},
    writers,
};

const BACKEND: Backend = Backend::Tracepoint;
const AT_FDCWD: i64 = -100;
/// Watched path prefixes are at most this long (user space enforces it).
const PREFIX_SCAN: usize = 256;

/// FNV-1a of a watched path (no trailing slash) -> its rule.
#[map]
static PREFIXES: HashMap<u64, WatchValue> = HashMap::with_max_entries(16384, 0);

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
}

/// Arguments of in-flight syscalls, per thread. LRU so a thread that never returns (killed
/// in the syscall) cannot leak an entry forever.
#[map]
static PENDING: LruHashMap<u64, Pending> = LruHashMap::with_max_entries(16384, 0);

/// Argument `i` of a `sys_enter_*` tracepoint (after the 8-byte common header and the
/// syscall number).
#[inline(always)]
pub fn arg(ctx: &TracePointContext, i: usize) -> u64 {
    // SAFETY: the offset is inside the tracepoint's fixed record.
    unsafe { ctx.read_at::<u64>(16 + 8 * i).unwrap_or(0) }
}

#[inline(always)]
pub fn stash(pending: Pending) {
    if filter::actor_excluded() {
        return;
    }
    let _ = PENDING.insert(bpf_get_current_pid_tgid(), pending, 0);
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
        }
    }
}

/// The shared `sys_exit_*` handler.
pub fn exit(ctx: &TracePointContext) -> Result<(), i64> {
    let key = bpf_get_current_pid_tgid();
    // SAFETY: copied out at once.
    let Some(pending) = (unsafe { PENDING.get(key).copied() }) else {
        return Ok(());
    };
    let _ = PENDING.remove(key);
    // SAFETY: `ret` is at offset 16 of every sys_exit record.
    let ret = unsafe { ctx.read_at::<i64>(16).unwrap_or(-1) };
    if ret < 0 || !crate::kernel::offsets_loaded() {
        return Ok(());
    }
    let Some(kind) = EventKind::from_raw(pending.kind) else {
        return Ok(());
    };
    // Plain numbers, not the enum: LLVM may assume an enum read from map memory is valid and
    // emit code the verifier (which knows nothing of Rust enums) rejects.
    let shape = pending.shape;
    if !(1..=6).contains(&shape) {
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
    let mut opened_file: *const u8 = core::ptr::null();

    let piece1 = match shape {
        SHAPE_SYMLINK => resolve(data, 0, pending.dfd2, pending.p2, flags::PATH1_TRUNCATED),
        SHAPE_FD => fd_path(data, 0, pending.dfd1, flags::PATH1_TRUNCATED),
        _ => resolve(data, 0, pending.dfd1, pending.p1, flags::PATH1_TRUNCATED),
    };
    let len1 = piece1.len();
    record.header.path1_len = len1 as u16;
    record.header.flags |= piece1.flags();
    let mut verdict = prefix_verdict(data, 0, len1);

    match shape {
        SHAPE_TWO_PATHS => {
            let piece2 = resolve(data, len1, pending.dfd2, pending.p2, flags::PATH2_TRUNCATED);
            record.header.path2_len = piece2.len() as u16;
            record.header.flags |= piece2.flags();
            if verdict.is_unwatched() {
                verdict = prefix_verdict(data, len1, piece2.len());
            }
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
        SHAPE_OPEN => {
            // The file is open now: describe it, and tell creation from opening.
            if let Some(file) = fd_file(ret) {
                opened_file = file;
                let f_mode = read::<u32>(file, off!(file_f_mode)).unwrap_or(0);
                if f_mode & FMODE_CREATED != 0 {
                    record.header.kind = EventKind::Create as u16;
                } else if pending.flags & WRITE_INTENT == 0 {
                    return Ok(());
                }
                describe_file(record, file);
            }
        }
        _ => {}
    }
    if verdict.is_unwatched() {
        return Ok(());
    }
    match verdict.rule() {
        Some(rule) => record.header.rule_id = rule,
        None => record.header.flags |= flags::FILTER_UNDECIDED,
    }
    // Only now, with the decision made, is the actor worth its kernel reads.
    crate::actor::fill(&mut record.header.actor);
    if !opened_file.is_null() && pending.flags & (O_WRONLY | O_RDWR) != 0 {
        writers::opened(opened_file, record.header.rule_id);
    }
    emit::submit(record, BACKEND);
    Ok(())
}

const O_WRONLY: u32 = 0o1;
const O_RDWR: u32 = 0o2;

/// close(fd) of a file opened for writing in a watched place: `Modified`.
pub fn close(fd: i64) -> Result<(), i64> {
    let Some(file) = fd_file(fd) else {
        return Ok(());
    };
    crate::hooks::file_closed(BACKEND, file)
}

const FMODE_CREATED: u32 = 0x0010_0000;
/// O_WRONLY | O_RDWR | O_TRUNC
pub const WRITE_INTENT: u32 = 0o1 | 0o2 | 0o1000;
pub const O_CREAT: u32 = 0o100;

fn describe_file(record: &mut Record, file: *const u8) {
    let f_path = file.wrapping_add(off!(file_f_path));
    if let Ok(dentry) = read_ptr(f_path, off!(path_dentry)) {
        record.header.target.dev = filter::dentry_dev(dentry).unwrap_or(0);
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
    path::build(data, dst, dentry, mnt, truncated)
}

/// Resolves a syscall path string (relative to `dfd` or the cwd) to an absolute path at
/// `data[dst..]`.
fn resolve(data: *mut u8, dst: usize, dfd: i64, user_path: u64, truncated: u16) -> Piece {
    let src = user_path as *const u8;
    // SAFETY: the helper checks the user address.
    let first = unsafe { bpf_probe_read_user(src) }.unwrap_or(0u8);
    if first == b'/' {
        return path::user_string(data, dst, src, truncated);
    }
    // Relative: the base is the cwd or the directory behind dfd.
    let base = if dfd == AT_FDCWD {
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
        path::build(data, dst, dentry, mnt, truncated)
    } else {
        fd_path(data, dst, dfd, truncated)
    };
    let base_len = base.len();
    let mut end = dst + base_len;
    if base_len != 1 {
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
    verdict: u64,
    /// Where the string starts in the scratch record's data area, and its length.
    dst: u64,
    len: u64,
}

#[map]
static SCANSTATE: aya_ebpf::maps::PerCpuArray<Scan> =
    aya_ebpf::maps::PerCpuArray::with_max_entries(1, 0);

const SCAN_CONTINUE: u64 = 0;
const SCAN_UNDECIDED: u64 = 1;
const SCAN_WATCHED: u64 = 2;

/// Scans one byte; returns false when a verdict was reached.
#[inline(always)]
fn scan_byte(state: *mut Scan, byte: u8, first: bool) -> bool {
    // SAFETY (all accesses): `state` is a valid per-CPU map value.
    unsafe {
        let hash = core::ptr::read_volatile(&raw const (*state).hash);
        let component_len = core::ptr::read_volatile(&raw const (*state).component_len);
        let dots = core::ptr::read_volatile(&raw const (*state).dots);
        if byte == b'/' {
            if !first {
                if component_len == 0 || (component_len == dots && dots <= 2) {
                    core::ptr::write_volatile(&raw mut (*state).verdict, SCAN_UNDECIDED);
                    return false;
                }
                if let Some(rule) = lookup_prefix(hash) {
                    core::ptr::write_volatile(
                        &raw mut (*state).verdict,
                        SCAN_WATCHED | (rule as u64) << 8,
                    );
                    return false;
                }
            }
            core::ptr::write_volatile(&raw mut (*state).component_len, 0);
            core::ptr::write_volatile(&raw mut (*state).dots, 0);
        } else {
            core::ptr::write_volatile(&raw mut (*state).component_len, component_len + 1);
            if byte == b'.' {
                core::ptr::write_volatile(&raw mut (*state).dots, dots + 1);
            }
        }
        core::ptr::write_volatile(&raw mut (*state).hash, fnv1a_step(hash, byte));
    }
    true
}

/// One `bpf_loop` iteration of the prefix scan over the scratch record's data.
unsafe extern "C" fn scan_callback(index: u64, _ctx: *mut core::ffi::c_void) -> i64 {
    let (Some(state), Some(data)) = (SCANSTATE.get_ptr_mut(0), emit::data_ptr()) else {
        return 1;
    };
    // SAFETY: valid per-CPU map value.
    let dst = unsafe { core::ptr::read_volatile(&raw const (*state).dst) } as usize;
    // SAFETY: (dst + index) & DATA_MASK < DATA_CAP.
    let byte = unsafe { *data.add(path::bounded(dst + index as usize, DATA_MASK)) };
    if scan_byte(state, byte, index == 0) {
        0
    } else {
        1
    }
}

/// Looks up every '/'-bounded prefix of `data[dst..dst+len]` (and the whole path) in
/// `PREFIXES`. `.`/`..` components or doubled slashes make the string non-canonical: user space
/// decides those.
fn prefix_verdict(data: *const u8, dst: usize, len: usize) -> filter::Verdict {
    let Some(state) = SCANSTATE.get_ptr_mut(0) else {
        return filter::Verdict::Undecided;
    };
    if len == 0 {
        return filter::Verdict::Undecided;
    }
    // SAFETY: valid per-CPU map value.
    unsafe {
        core::ptr::write_volatile(&raw mut (*state).hash, fnv1a_start());
        core::ptr::write_volatile(&raw mut (*state).component_len, 0);
        core::ptr::write_volatile(&raw mut (*state).dots, 0);
        core::ptr::write_volatile(&raw mut (*state).verdict, SCAN_CONTINUE);
    }
    let _ = data;
    // SAFETY: valid per-CPU map value; bpf_loop as in the path walk.
    unsafe {
        core::ptr::write_volatile(&raw mut (*state).dst, dst as u64);
        core::ptr::write_volatile(&raw mut (*state).len, len as u64);
        let scan = len.min(PREFIX_SCAN) as u32;
        aya_ebpf::helpers::generated::bpf_loop(
            scan,
            scan_callback as *mut core::ffi::c_void,
            core::ptr::null_mut(),
            0,
        );
    }
    // SAFETY: valid per-CPU map value.
    let (verdict, hash, component_len, dots) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*state).verdict),
            core::ptr::read_volatile(&raw const (*state).hash),
            core::ptr::read_volatile(&raw const (*state).component_len),
            core::ptr::read_volatile(&raw const (*state).dots),
        )
    };
    match verdict & 0xff {
        SCAN_UNDECIDED => return filter::Verdict::Undecided,
        SCAN_WATCHED => return filter::Verdict::Watched((verdict >> 8) as u32),
        _ => {}
    }
    if len <= PREFIX_SCAN {
        if component_len == dots && dots > 0 && dots <= 2 {
            return filter::Verdict::Undecided;
        }
        if let Some(rule) = lookup_prefix(hash) {
            return filter::Verdict::Watched(rule);
        }
    }
    filter::Verdict::Unwatched
}

#[inline(always)]
fn lookup_prefix(hash: u64) -> Option<u32> {
    // SAFETY: copied out at once.
    unsafe { PREFIXES.get(hash).map(|v| v.rule_id) }
}
