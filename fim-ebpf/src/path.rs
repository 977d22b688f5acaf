//! Building absolute paths from dentries (and their mount, when the hook knows it) in the
//! kernel, with a bounded walk. The walk goes on as long as names still fit, so any path that
//! fits the buffer is built whole however deep it is; a path that does not fit keeps its leaf
//! end and is flagged truncated: never silently wrong.

use aya_ebpf::{
    helpers::generated::{bpf_loop, bpf_probe_read_kernel},
    macros::map,
    maps::PerCpuArray,
};
use fim_common::{
    flags,
    record::{MAX_WALK_DEPTH, PATH_CAP},
};

use crate::{
    dirmemo,
    kernel::{field, load, load_ptr, off, read, read_ptr, set_field},
    pathmemo,
};

/// Scratch space for writing a path backwards. Oversized so that every masked offset plus a
/// masked length stays inside it, which is what the verifier checks.
const WALK_CAP: usize = 2 * PATH_CAP + 256;

#[map]
static WALKBUF: PerCpuArray<[u8; WALK_CAP]> = PerCpuArray::with_max_entries(1, 0);

/// Mask for offsets and lengths within one path.
pub const MASK: usize = PATH_CAP - 1;

/// Iterations of the path walk: every name takes at least two bytes ('/' and one character),
/// so no more than `PATH_CAP / 2` names fit, plus one iteration per mount crossed. The walk
/// stops earlier at the root or when the next name does not fit; the bound only has to be
/// large enough that depth alone never truncates a path that fits (`MAX_WALK_DEPTH * 2`
/// did: a file 129 directories down came out as a truncated leaf end, which no rule matches).
const BUILD_STEPS: u32 = (PATH_CAP / 2) as u32 + MAX_WALK_DEPTH;

/// A written string: its length and flags, packed in one register (BPF functions take at most
/// five arguments and cannot return structs through memory).
#[derive(Clone, Copy)]
pub struct Piece(u32);

impl Piece {
    #[inline(always)]
    pub fn new(len: usize, flags: u16) -> Piece {
        Piece((len as u32 & 0xffff) | ((flags as u32) << 16))
    }

    #[inline(always)]
    pub fn len(self) -> usize {
        (self.0 & 0xffff) as usize & MASK
    }

    #[inline(always)]
    pub fn flags(self) -> u16 {
        (self.0 >> 16) as u16
    }
}
/// Mask for string destinations, which may start anywhere in the first two `PATH_CAP`s.
pub const DATA_MASK: usize = 2 * PATH_CAP - 1;

/// Loop state of a path walk. It lives in a map, not in registers: the verifier then sees
/// every iteration start from the same unknown values and prunes, instead of tracking each
/// branch's exact `pos` through 128 iterations (which blows its 1M-instruction budget).
#[repr(C)]
struct Walk {
    pos: u64,
    dentry: u64,
    mnt: u64,
    mount: u64,
    /// `mnt->mnt_root`, read once per mount instead of once per name.
    mnt_root: u64,
    flags: u64,
    done: u64,
}

#[map]
static WALKSTATE: PerCpuArray<Walk> = PerCpuArray::with_max_entries(1, 0);

/// One step of the walk: write one name, or cross one mount. Returns false when finished.
#[inline(always)]
fn step(state: *mut Walk, buf: *mut u8) -> bool {
    if field!(state, done) != 0 {
        return false;
    }
    let dentry = field!(state, dentry) as *const u8;
    let mnt = field!(state, mnt) as *const u8;
    let mount = field!(state, mount) as *const u8;
    if !mnt.is_null() && dentry as u64 == field!(state, mnt_root) {
        let Ok(parent_mount) = read_ptr(mount, off!(mount_mnt_parent)) else {
            return false;
        };
        if parent_mount == mount {
            set_field!(state, done, 1);
            return false;
        }
        let Ok(mountpoint) = read_ptr(mount, off!(mount_mnt_mountpoint)) else {
            return false;
        };
        let parent_mnt = parent_mount.wrapping_add(off!(mount_mnt));
        let Ok(parent_root) = read_ptr(parent_mnt, off!(vfsmount_mnt_root)) else {
            return false;
        };
        set_field!(state, dentry, mountpoint as u64);
        set_field!(state, mount, parent_mount as u64);
        set_field!(state, mnt, parent_mnt as u64);
        set_field!(state, mnt_root, parent_root as u64);
        return true;
    }
    let Some((parent, name, len)) = dentry_fields(dentry) else {
        return false;
    };
    if parent == dentry {
        if mnt.is_null() {
            set_field!(
                state,
                flags,
                field!(state, flags) | flags::PATH_FS_RELATIVE as u64
            );
        }
        set_field!(state, done, 1);
        return false;
    }
    let len = len as usize & 255;
    let pos = field!(state, pos) as usize & (PATH_CAP * 2 - 1);
    if len + 2 > pos || pos > PATH_CAP {
        return false;
    }
    let pos = pos - len;
    // SAFETY: (pos & MASK) + len < WALK_CAP; the helper checks the source.
    unsafe {
        bpf_probe_read_kernel(
            buf.add(bounded(pos, MASK)).cast(),
            bounded(len, 255) as u32,
            name.cast(),
        )
    };
    let pos = pos - 1;
    // SAFETY: pos & MASK < WALK_CAP.
    unsafe { *buf.add(pos & MASK) = b'/' };
    set_field!(state, pos, pos as u64);
    set_field!(state, dentry, parent as u64);
    true
}

/// A dentry's parent, name and name length. They sit within a few words of each other
/// (`d_parent`, then `d_name`'s hash, length and pointer), so one read of four words usually
/// gets all three; other layouts take three reads.
#[inline(always)]
fn dentry_fields(dentry: *const u8) -> Option<(*const u8, *const u8, u32)> {
    let (p, n, l) = (
        off!(dentry_d_parent),
        off!(dentry_d_name_name),
        off!(dentry_d_name_len),
    );
    let lo = if p < n { p } else { n };
    let lo = if l < lo { l } else { lo };
    let (kp, kn, kl) = (p - lo, n - lo, l - lo);
    if kp <= 24 && kn <= 24 && kl <= 28 && kp % 8 == 0 && kn % 8 == 0 && kl % 4 == 0 {
        let words = read::<[u64; 4]>(dentry, lo).ok()?;
        let len = (words[(kl / 8) & 3] >> ((kl % 8) * 8)) as u32;
        return Some((
            words[(kp / 8) & 3] as *const u8,
            words[(kn / 8) & 3] as *const u8,
            len,
        ));
    }
    Some((
        read_ptr(dentry, p).ok()?,
        read_ptr(dentry, n).ok()?,
        read::<u32>(dentry, l).ok()?,
    ))
}

/// One `bpf_loop` iteration of the walk: 0 continues, 1 stops.
unsafe extern "C" fn walk_callback(_index: u64, _ctx: *mut core::ffi::c_void) -> i64 {
    let (Some(buf), Some(state)) = (WALKBUF.get_ptr_mut(0), WALKSTATE.get_ptr_mut(0)) else {
        return 1;
    };
    if step(state, buf.cast()) { 0 } else { 1 }
}

/// A name below its mount's root and filesystem's root, the directory it is in, and the
/// path memo's stamp taken before anything was read: what `pathmemo` needs.
#[derive(Clone, Copy)]
struct Leaf {
    dir: *const u8,
    name: *const u8,
    len: usize,
    stamp: pathmemo::Stamp,
}

impl Leaf {
    /// `dentry` is a hook's typed pointer (the memo is lsm and fentry only): its parent and
    /// name are plain loads (see `kernel::load`).
    #[inline(always)]
    fn of(dentry: *const u8) -> Option<Leaf> {
        let stamp = pathmemo::stamp()?;
        let dir = load_ptr(dentry, off!(dentry_d_parent));
        let name = load_ptr(dentry, off!(dentry_d_name_name));
        let len = load::<u32>(dentry, off!(dentry_d_name_len)) as usize;
        if dir == dentry || len == 0 || len > 255 {
            return None;
        }
        Some(Leaf {
            dir,
            name,
            len,
            stamp,
        })
    }

    /// Where the directory's path ends in the walk buffer: before '/' and the name, which
    /// the walk's first step writes at its end.
    #[inline(always)]
    fn end(self) -> usize {
        PATH_CAP - 1 - (self.len & 255)
    }

    /// Writes the memoised directory path, '/' and the name to `data[dst..]` (dst <
    /// PATH_CAP); `None` when the memo cannot serve.
    #[inline(always)]
    fn recall(self, data: *mut u8, dst: usize, mnt: *const u8) -> Option<Piece> {
        let dst = bounded(dst, MASK);
        // SAFETY: dst < PATH_CAP, so PATH_CAP bytes are free there (DATA_CAP = 3 * PATH_CAP).
        let (len, flags) = pathmemo::recall(
            self.dir,
            mnt,
            self.stamp,
            unsafe { data.add(dst) },
            self.end(),
        )?;
        let slash = dst + (len & MASK);
        // SAFETY: slash < 2 * PATH_CAP, and the name (below 256 bytes) after it stays inside
        // DATA_CAP.
        unsafe {
            *data.add(bounded(slash, DATA_MASK)) = b'/';
            bpf_probe_read_kernel(
                data.add(bounded(slash + 1, DATA_MASK)).cast(),
                bounded(self.len, 255) as u32,
                self.name.cast(),
            );
        }
        Some(Piece::new(len + 1 + self.len, flags as u16))
    }

    /// After a walk that reached the top: keeps the directory's part of the path.
    #[inline(always)]
    fn remember(self, buf: *const u8, state: *mut Walk, mnt: *const u8, rename_seq: u64) {
        if field!(state, done) == 0 {
            return;
        }
        let pos = field!(state, pos) as usize & (PATH_CAP * 2 - 1);
        let end = self.end();
        if pos > end {
            return;
        }
        pathmemo::remember(
            self.dir,
            mnt,
            (self.stamp, rename_seq),
            buf,
            (pos, end - pos),
            field!(state, flags),
        );
    }
}

/// Writes the path of `dentry` to `data[dst..]` (dst < PATH_CAP). `vfsmount` may be null when
/// the hook does not know the mount: the path is then relative to the filesystem root and
/// flagged `PATH_FS_RELATIVE`. The flags may hold `truncated_flag`. `MEMO`: the directory's
/// path may come from (and goes to) this CPU's path memo (`pathmemo`; lsm and fentry only:
/// the tracepoint programs have no verifier budget left for it).
pub fn build<const MEMO: bool>(
    data: *mut u8,
    dst: usize,
    dentry: *const u8,
    vfsmount: *const u8,
    truncated_flag: u16,
) -> Piece {
    let mount = if vfsmount.is_null() {
        vfsmount
    } else {
        vfsmount.wrapping_sub(off!(mount_mnt))
    };
    let mnt_root = if vfsmount.is_null() {
        core::ptr::null()
    } else if MEMO {
        // A hook's typed `struct path` member: a plain load (see `kernel::load`).
        load_ptr(vfsmount, off!(vfsmount_mnt_root))
    } else {
        // Without it the walk could not tell where the mount starts: nothing is built.
        match read_ptr(vfsmount, off!(vfsmount_mnt_root)) {
            Ok(root) => root,
            Err(_) => return Piece::new(0, truncated_flag),
        }
    };
    let leaf = if MEMO && dentry != mnt_root {
        Leaf::of(dentry)
    } else {
        None
    };
    if let Some(leaf) = leaf
        && let Some(piece) = leaf.recall(data, dst, vfsmount)
    {
        return piece;
    }
    // The walk's buffers only now: a memo hit does not need them (two per-CPU lookups, helper
    // calls on 6.1).
    let (Some(buf), Some(state)) = (WALKBUF.get_ptr_mut(0), WALKSTATE.get_ptr_mut(0)) else {
        return Piece::new(0, truncated_flag);
    };
    let buf = buf.cast::<u8>();
    // A miss: the walk's result is kept only if no rename ran meanwhile (see `dirmemo`).
    let rename_seq = leaf.and_then(|_| dirmemo::rename_seq());
    set_field!(state, pos, PATH_CAP as u64);
    set_field!(state, dentry, dentry as u64);
    set_field!(state, mnt, vfsmount as u64);
    set_field!(state, mount, mount as u64);
    set_field!(state, mnt_root, mnt_root as u64);
    set_field!(state, flags, 0);
    set_field!(state, done, 0);
    // bpf_loop (5.17+): the verifier checks the callback once instead of every iteration.
    // SAFETY: the callback has the signature bpf_loop expects and takes no context.
    unsafe {
        bpf_loop(
            BUILD_STEPS,
            walk_callback as *mut core::ffi::c_void,
            core::ptr::null_mut(),
            0,
        );
    }
    if let (Some(leaf), Some(seq)) = (leaf, rename_seq) {
        leaf.remember(buf, state, vfsmount, seq);
    }
    let mut out_flags = field!(state, flags) as u16;
    if field!(state, done) == 0 {
        out_flags |= truncated_flag;
    }
    let mut pos = field!(state, pos) as usize & (PATH_CAP * 2 - 1);
    if pos > PATH_CAP {
        return Piece::new(0, truncated_flag);
    }
    if pos == PATH_CAP {
        // The root itself.
        pos -= 1;
        // SAFETY: in bounds.
        unsafe { *buf.add(pos & MASK) = b'/' };
    }
    let len = (PATH_CAP - pos) & MASK;
    // SAFETY: (dst & MASK) + len < DATA_CAP; source within WALK_CAP.
    unsafe {
        bpf_probe_read_kernel(
            data.add(bounded(dst, MASK)).cast(),
            bounded(len, MASK) as u32,
            buf.add(bounded(pos, MASK)).cast(),
        )
    };
    Piece::new(len, out_flags)
}

/// Re-masks an offset behind an optimisation barrier. The compiler would otherwise drop a mask
/// it can prove redundant, and older verifiers (6.1) can carry impossible bounds (umin > umax)
/// into pointer arithmetic along dead branches and then reject the program.
#[inline(always)]
pub fn bounded(offset: usize, mask: usize) -> usize {
    core::hint::black_box(offset) & mask
}

/// Copies a NUL-terminated kernel string (xattr name, symlink target) to `data[dst..]`.
/// Returns its length without the NUL, and `truncated_flag` when it did not fit.
pub fn kernel_string(data: *mut u8, dst: usize, src: *const u8, truncated_flag: u16) -> Piece {
    // SAFETY: (dst & DATA_MASK) + PATH_CAP <= DATA_CAP.
    let n = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel_str(
            data.add(bounded(dst, DATA_MASK)).cast(),
            PATH_CAP as u32,
            src.cast(),
        )
    };
    string_result(n, truncated_flag)
}

/// Copies a NUL-terminated user string (a syscall argument) to `data[dst..]`.
///
/// Unlike a kernel string, one that fills the buffer is complete: the syscalls fim reports
/// refuse a path (or symlink target) of `PATH_MAX` (= `PATH_CAP`) bytes or more, NUL
/// included, so the string of a syscall that succeeded has at most `PATH_CAP - 1` bytes,
/// which fit. (A longer one read at `sys_enter` belongs to a syscall that fails with
/// ENAMETOOLONG and is never reported.) Flagging it would report a file at a path of exactly
/// 4095 bytes as truncated, and a truncated path is never examined or hashed.
pub fn user_string(data: *mut u8, dst: usize, src: *const u8, truncated_flag: u16) -> Piece {
    // SAFETY: as above.
    let n = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_user_str(
            data.add(bounded(dst, DATA_MASK)).cast(),
            PATH_CAP as u32,
            src.cast(),
        )
    };
    if n <= 0 {
        return Piece::new(0, truncated_flag);
    }
    Piece::new((n as usize - 1) & MASK, 0)
}

#[inline(always)]
fn string_result(n: i64, truncated_flag: u16) -> Piece {
    if n <= 0 {
        return Piece::new(0, truncated_flag);
    }
    let len = (n as usize - 1) & MASK;
    // A string that filled the whole buffer may have been cut.
    let cut = if n as usize >= PATH_CAP {
        truncated_flag
    } else {
        0
    };
    Piece::new(len, cut)
}

/// What `d_path` appends to the path of an unlinked file.
const DELETED_SUFFIX: &[u8; 10] = b" (deleted)";

/// The path of an open file's `struct path`, from the kernel's own `d_path` through
/// `bpf_d_path`: one helper call instead of a walk with a read per name. Only for the hooks
/// the kernel allows it on (LSM `file_open`; fexit on `security_file_open` and
/// `security_path_truncate`), and only when it is bound to give what the walk gives:
/// `d_path` is relative to the task's root, the walk to the top of the mount tree, so a
/// chrooted task (root below the top) gets the walk. `None` means "use the walk": also for a
/// path that does not fit (the walk keeps its leaf end and flags it) and for one that ends in
/// " (deleted)" (the file was unlinked meanwhile, or is really called that: the walk gives
/// the name either way).
#[inline(always)]
pub fn d_path(data: *mut u8, path: *const u8) -> Option<Piece> {
    if !matches!(task_root(), Root::Top) {
        return None;
    }
    // SAFETY: `path` is the hook's own `struct path` (a member of its file); the destination
    // is the start of the record's data area, PATH_CAP bytes of DATA_CAP.
    let n = unsafe {
        aya_ebpf::helpers::generated::bpf_d_path(path as *mut _, data.cast(), PATH_CAP as u32)
    };
    if n <= 0 || n as usize > PATH_CAP {
        return None;
    }
    let len = (n as usize - 1) & MASK;
    if len >= DELETED_SUFFIX.len() {
        let start = bounded(len - DELETED_SUFFIX.len(), MASK);
        let mut same = true;
        for (i, &c) in DELETED_SUFFIX.iter().enumerate() {
            // SAFETY: start + i < PATH_CAP + 10 <= DATA_CAP.
            if unsafe { *data.add(start + i) } != c {
                same = false;
            }
        }
        if same {
            return None;
        }
    }
    Some(Piece::new(len, 0))
}

/// The current task's root directory, as the walk sees it.
#[derive(Clone, Copy)]
pub enum Root {
    /// Where the walk ends (the top of the mount tree, or the root of a mount on it): an
    /// absolute path string means what it says, and `d_path` agrees with the walk.
    Top,
    /// Below the top (chroot): an absolute path string is relative to this (mnt, dentry).
    Below(*const u8, *const u8),
    Unknown,
}

/// The last root looked at on this CPU and whether it was the top: a task's root changes only
/// with chroot or pivot_root, so the parent and mountpoint reads are done once per root, not
/// per syscall.
#[repr(C)]
struct RootMemo {
    mnt: u64,
    dentry: u64,
    top: u64,
}

#[map]
static ROOTMEMO: PerCpuArray<RootMemo> = PerCpuArray::with_max_entries(1, 0);

/// The current task's root (`task->fs->root`).
#[inline(always)]
pub fn task_root() -> Root {
    // Plain loads (`kernel::load`): this runs for every absolute path the tracepoint backend
    // sees, watched or not.
    let task = crate::actor::current_task_btf();
    let fs = load_ptr(task, off!(task_fs));
    if fs.is_null() {
        return Root::Unknown;
    }
    let root = fs.wrapping_add(off!(fs_struct_root));
    let (mnt, dentry) = (
        load_ptr(root, off!(path_mnt)),
        load_ptr(root, off!(path_dentry)),
    );
    if mnt.is_null() || dentry.is_null() {
        return Root::Unknown;
    }
    let Some(memo) = ROOTMEMO.get_ptr_mut(0) else {
        return Root::Unknown;
    };
    let (memo_mnt, memo_dentry, memo_top) = load_memo(memo);
    let top = if memo_mnt == mnt as u64 && memo_dentry == dentry as u64 {
        memo_top != 0
    } else {
        let Some(top) = is_top(mnt, dentry) else {
            return Root::Unknown;
        };
        store_memo(memo, mnt as u64, dentry as u64, top as u64);
        top
    };
    if top {
        Root::Top
    } else {
        Root::Below(mnt, dentry)
    }
}

#[inline(always)]
fn load_memo(memo: *mut RootMemo) -> (u64, u64, u64) {
    (field!(memo, mnt), field!(memo, dentry), field!(memo, top))
}

#[inline(always)]
fn store_memo(memo: *mut RootMemo, mnt: u64, dentry: u64, top: u64) {
    set_field!(memo, mnt, mnt);
    set_field!(memo, dentry, dentry);
    set_field!(memo, top, top);
}

/// Whether (vfsmount, dentry) is where the dentry walk ends: the root of a mount with no
/// parent, or the root of a mount on the root of one (`/` over the rootfs on a normal host, a
/// container's root after `pivot_root`). `None` when the kernel reads fail.
#[inline(always)]
fn is_top(vfsmount: *const u8, dentry: *const u8) -> Option<bool> {
    if read_ptr(vfsmount, off!(vfsmount_mnt_root)).ok()? != dentry {
        return Some(false);
    }
    let mount = vfsmount.wrapping_sub(off!(mount_mnt));
    let parent = read_ptr(mount, off!(mount_mnt_parent)).ok()?;
    if parent == mount {
        return Some(true);
    }
    let mountpoint = read_ptr(mount, off!(mount_mnt_mountpoint)).ok()?;
    let parent_root = read_ptr(parent, off!(mount_mnt) + off!(vfsmount_mnt_root)).ok()?;
    if mountpoint != parent_root {
        return Some(false);
    }
    Some(read_ptr(parent, off!(mount_mnt_parent)).ok()? == parent)
}
