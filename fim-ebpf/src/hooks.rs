//! What the LSM and fexit backends do at each hook. Both see the same arguments (the fexit
//! programs attach to the `security_*` functions that call the LSM hooks), so one function per
//! hook serves both; only the backend number and the success check differ.

use fim_common::{Args, Backend, EventKind, Record, flags, record::PATH_CAP};

use crate::{
    emit::{self, Held},
    filter::{self, Presence},
    kernel::{member, member_ptr, off, read},
    path, writers,
};

// `TYPED` (see `kernel::member`): the LSM and fexit programs' arguments are typed pointers,
// so what is never null behind them is loaded directly. The exceptions go through the
// helper: the inode of a hook's dentry that may be negative (a name about to be created,
// `filter::dentry_inode`; the filter loads an existing object's directly),
// `mmap_file`'s file, which is null for anonymous memory, and the tracepoint backend's file
// in `file_closed`, which came out of a read.
const TYPED: bool = true;

/// `struct path` -> (mnt, dentry).
#[inline(always)]
fn split_path<const T: bool>(path: *const u8) -> Result<(*const u8, *const u8), i64> {
    Ok((
        member_ptr::<T>(path, off!(path_mnt))?,
        member_ptr::<T>(path, off!(path_dentry))?,
    ))
}

/// A dentry the filter decides on, and what its hook knows about its inode
/// (`filter::Presence`).
#[derive(Clone, Copy)]
struct Target(*const u8, Presence);

/// An object the hook's caller found and holds (it cannot turn negative).
#[inline(always)]
fn existing(dentry: *const u8) -> Target {
    Target(dentry, Presence::Existing)
}

/// The new name of a rename or link: it may exist (and be replaced).
#[inline(always)]
fn new_name(dentry: *const u8) -> Target {
    Target(dentry, Presence::Either)
}

/// Whether to report, and under which rule: `None` drops the event.
#[inline(always)]
fn decide<const T: bool>(targets: &[Target]) -> Option<(u32, u16)> {
    if !crate::kernel::offsets_loaded() {
        return None;
    }
    let mut decision = None;
    for &Target(target, presence) in targets {
        if target.is_null() {
            continue;
        }
        let verdict = filter::check::<T>(target, presence);
        if let Some(rule) = verdict.rule() {
            let via = if verdict.via_link() {
                flags::VIA_LINK
            } else {
                0
            };
            decision = Some((rule, via));
            break;
        }
        if verdict.is_undecided() {
            decision = Some((0, flags::FILTER_UNDECIDED));
        }
    }
    // The actor check comes second: most events are about unwatched paths, and the walk
    // settles those without the lookup.
    if decision.is_some() && filter::actor_excluded() {
        return None;
    }
    decision
}

/// The filter's decision, then the scratch record, held (`emit::Held`), with rule and
/// decision flags filled in; `None` drops the event.
#[inline(always)]
fn begin<const T: bool>(kind: EventKind, backend: Backend, targets: &[Target]) -> Option<Held> {
    let (rule, decision_flags) = decide::<T>(targets)?;
    let mut held = emit::start::<T>(kind, backend)?;
    let record = held.record();
    record.header.rule_id = rule;
    record.header.flags = decision_flags;
    Some(held)
}

/// Copies `args` into the header field by field: an all-zero `Args` the compiler knows of
/// becomes a call of the BPF target's `memset`, a byte loop.
#[inline(always)]
fn set_args(record: &mut Record, args: Args) {
    let to = &raw mut record.header.args;
    // SAFETY: fields of a valid header. Volatile, or the compiler merges zero stores back
    // into a `memset`.
    unsafe {
        core::ptr::write_volatile(&raw mut (*to).mode, args.mode);
        core::ptr::write_volatile(&raw mut (*to).uid, args.uid);
        core::ptr::write_volatile(&raw mut (*to).gid, args.gid);
        core::ptr::write_volatile(&raw mut (*to).flags, args.flags);
    }
}

/// The inode number of the directory that holds `dentry`'s name: its parent is positive
/// while the dentry holds it (see `kernel::load`), so typed pointers load it directly.
#[inline(always)]
pub fn dir_ino<const T: bool>(dentry: *const u8) -> u64 {
    let Ok(parent) = member_ptr::<T>(dentry, off!(dentry_d_parent)) else {
        return 0;
    };
    let Ok(inode) = member_ptr::<T>(parent, off!(dentry_d_inode)) else {
        return 0;
    };
    if inode.is_null() {
        return 0;
    }
    member::<u64, T>(inode, off!(inode_i_ino)).unwrap_or(0)
}

/// Fills `target` from a dentry's inode (if it has one), its filesystem and its directory.
/// The inode of an object the caller holds is loaded directly where the pointer is typed
/// (three helper calls fewer); a name about to be created has none; one that may exist goes
/// through the helper (see `filter::dentry_inode`).
#[inline(always)]
fn describe_target<const T: bool>(record: &mut Record, Target(dentry, presence): Target) {
    let header = &mut record.header;
    header.target.dev = filter::dentry_dev::<T>(dentry).unwrap_or(0);
    header.target.dir_ino = dir_ino::<T>(dentry);
    if T && matches!(presence, Presence::Existing) {
        let inode = crate::kernel::load_ptr(dentry, off!(dentry_d_inode));
        if !inode.is_null() {
            header.target.ino = crate::kernel::load::<u64>(inode, off!(inode_i_ino));
            header.target.mode = crate::kernel::load::<u16>(inode, off!(inode_i_mode)) as u32;
            header.flags |= flags::TARGET_KNOWN;
        }
    } else if presence != Presence::New
        && let Some(inode) = filter::dentry_inode(dentry)
    {
        header.target.ino = read::<u64>(inode, off!(inode_i_ino)).unwrap_or(0);
        header.target.mode = read::<u16>(inode, off!(inode_i_mode)).unwrap_or(0) as u32;
        header.flags |= flags::TARGET_KNOWN;
    }
}

#[inline(always)]
fn set_path1<const MEMO: bool>(record: &mut Record, dentry: *const u8, mnt: *const u8) -> usize {
    let data = record.data.as_mut_ptr();
    let piece = path::build::<MEMO>(data, 0, dentry, mnt, flags::PATH1_TRUNCATED);
    record.header.path1_len = piece.len() as u16;
    record.header.flags |= piece.flags();
    piece.len()
}

/// `set_path1` for a hook that has the `struct path` itself: through `bpf_d_path` when
/// `use_d_path` (only where the kernel allows the helper, see `path::d_path`), else the walk.
#[inline(always)]
fn set_path1_of<const MEMO: bool>(
    record: &mut Record,
    path_ptr: *const u8,
    (mnt, dentry): (*const u8, *const u8),
    use_d_path: bool,
) -> usize {
    if use_d_path && let Some(piece) = path::d_path(record.data.as_mut_ptr(), path_ptr) {
        record.header.path1_len = piece.len() as u16;
        record.header.flags |= flags::PATH1_D_PATH;
        return piece.len();
    }
    set_path1::<MEMO>(record, dentry, mnt)
}

#[inline(always)]
fn set_path2<const MEMO: bool>(
    record: &mut Record,
    offset: usize,
    dentry: *const u8,
    mnt: *const u8,
) {
    let data = record.data.as_mut_ptr();
    let piece = path::build::<MEMO>(data, offset, dentry, mnt, flags::PATH2_TRUNCATED);
    record.header.path2_len = piece.len() as u16;
    record.header.flags |= piece.flags();
}

#[inline(always)]
fn set_string2(record: &mut Record, offset: usize, string: *const u8) {
    let data = record.data.as_mut_ptr();
    let piece = path::kernel_string(data, offset, string, flags::PATH2_TRUNCATED);
    record.header.path2_len = piece.len() as u16;
    record.header.flags |= piece.flags() | flags::PATH2_IS_STRING;
}

/// A name inside a directory: create (mknod), mkdir, unlink, rmdir, symlink.
#[inline(always)]
pub fn dir_entry(
    kind: EventKind,
    backend: Backend,
    dir: *const u8,
    dentry: *const u8,
    args: Args,
    symlink_target: *const u8,
) -> Result<(), i64> {
    let (mnt, _dir_dentry) = split_path::<TYPED>(dir)?;
    // unlink and rmdir name what their caller found; the others a name to be created.
    let target = if matches!(kind, EventKind::Unlink | EventKind::Rmdir) {
        existing(dentry)
    } else {
        Target(dentry, Presence::New)
    };
    let Some(mut held) = begin::<TYPED>(kind, backend, &[target]) else {
        return Ok(());
    };
    let record = held.record();
    set_args(record, args);
    describe_target::<TYPED>(record, target);
    let len1 = set_path1::<TYPED>(record, dentry, mnt);
    if !symlink_target.is_null() {
        set_string2(record, len1 & (PATH_CAP - 1), symlink_target);
    }
    emit::submit(record, backend);
    Ok(())
}

/// An operation on an existing path: chmod, chown, truncate. `use_d_path`: the hook may call
/// `bpf_d_path` on `path`.
#[inline(always)]
pub fn on_path(
    kind: EventKind,
    backend: Backend,
    path: *const u8,
    args: Args,
    use_d_path: bool,
) -> Result<(), i64> {
    let (mnt, dentry) = split_path::<TYPED>(path)?;
    let Some(mut held) = begin::<TYPED>(kind, backend, &[existing(dentry)]) else {
        return Ok(());
    };
    let record = held.record();
    set_args(record, args);
    describe_target::<TYPED>(record, existing(dentry));
    set_path1_of::<TYPED>(record, path, (mnt, dentry), use_d_path);
    emit::submit(record, backend);
    Ok(())
}

/// An open file truncated (ftruncate, or an O_TRUNC open on kernels >= 6.2).
#[inline(always)]
pub fn file_truncate(backend: Backend, file: *const u8) -> Result<(), i64> {
    on_path(
        EventKind::Truncate,
        backend,
        file.wrapping_add(off!(file_f_path)),
        Args::default(),
        false,
    )
}

/// rename(old_dir/old_dentry -> new_dir/new_dentry): reported when either side is watched.
#[inline(always)]
pub fn rename(
    backend: Backend,
    old_dir: *const u8,
    old_dentry: *const u8,
    new_dir: *const u8,
    new_dentry: *const u8,
    rename_flags: u32,
) -> Result<(), i64> {
    let (old_mnt, _) = split_path::<TYPED>(old_dir)?;
    let (new_mnt, _) = split_path::<TYPED>(new_dir)?;
    let old = (old_dentry, old_mnt);
    two_paths(
        EventKind::Rename,
        backend,
        old,
        (new_dentry, new_mnt),
        rename_flags,
    );
    Ok(())
}

/// An event about an existing object (old) and a new name for it: rename and link.
#[inline(always)]
fn two_paths(
    kind: EventKind,
    backend: Backend,
    (old_dentry, old_mnt): (*const u8, *const u8),
    (new_dentry, new_mnt): (*const u8, *const u8),
    event_flags: u32,
) {
    let targets = [existing(old_dentry), new_name(new_dentry)];
    let Some(mut held) = begin::<TYPED>(kind, backend, &targets) else {
        return;
    };
    let record = held.record();
    record.header.args.flags = event_flags;
    describe_target::<TYPED>(record, existing(old_dentry));
    record.header.target.dir2_ino = dir_ino::<TYPED>(new_dentry);
    if kind == EventKind::Link
        && record.header.rule_id != 0
        && record.header.flags & flags::TARGET_KNOWN != 0
    {
        // A watched file (or a file that gets a watched name) has one more name now.
        let target = record.header.target;
        filter::remember_link(target.dev, target.ino, record.header.rule_id);
    }
    let len1 = set_path1::<TYPED>(record, old_dentry, old_mnt);
    set_path2::<TYPED>(record, len1 & (PATH_CAP - 1), new_dentry, new_mnt);
    emit::submit(record, backend);
}

/// link(old_dentry, new_dir/new_dentry). The old dentry's mount is the new directory's (a hard
/// link never crosses a mount).
#[inline(always)]
pub fn link(
    backend: Backend,
    old_dentry: *const u8,
    new_dir: *const u8,
    new_dentry: *const u8,
) -> Result<(), i64> {
    let (mnt, _) = split_path::<TYPED>(new_dir)?;
    two_paths(
        EventKind::Link,
        backend,
        (old_dentry, mnt),
        (new_dentry, mnt),
        0,
    );
    Ok(())
}

/// setxattr/removexattr: only a dentry is known, so the path is relative to its filesystem
/// root (user space prefixes the mount point) unless it is the root filesystem.
#[inline(always)]
pub fn xattr(
    kind: EventKind,
    backend: Backend,
    dentry: *const u8,
    name: *const u8,
) -> Result<(), i64> {
    let Some(mut held) = begin::<TYPED>(kind, backend, &[existing(dentry)]) else {
        return Ok(());
    };
    let record = held.record();
    describe_target::<TYPED>(record, existing(dentry));
    let len1 = set_path1::<TYPED>(record, dentry, core::ptr::null());
    set_string2(record, len1 & (PATH_CAP - 1), name);
    emit::submit(record, backend);
    Ok(())
}

const FMODE_WRITE: u32 = 0x2;
const O_TRUNC: u32 = 0o1000;

/// file_open with write intent (or O_TRUNC): `OpenWrite`.
#[inline(always)]
pub fn file_open(backend: Backend, file: *const u8) -> Result<(), i64> {
    let f_mode = member::<u32, TYPED>(file, off!(file_f_mode))?;
    let f_flags = member::<u32, TYPED>(file, off!(file_f_flags))?;
    if f_mode & FMODE_WRITE == 0 && f_flags & O_TRUNC == 0 {
        return Ok(());
    }
    // Both file_open hooks may use bpf_d_path (see `path::d_path`).
    if let Some(rule) = file_event::<TYPED>(EventKind::OpenWrite, backend, file, f_flags, true)?
        && f_mode & FMODE_WRITE != 0
    {
        writers::opened(file, rule);
    }
    Ok(())
}

/// The last reference to a file is gone: if it was opened for writing in a watched place,
/// report `Modified` (no filter walk: the decision was made at open). `T`: `file` is a hook's
/// typed pointer (the tracepoint backend's came out of a read).
#[inline(always)]
pub fn file_closed<const T: bool>(backend: Backend, file: *const u8) -> Result<(), i64> {
    // Only files opened for writing are tracked: one read spares the others the map lookup.
    if member::<u32, T>(file, off!(file_f_mode))? & FMODE_WRITE == 0 {
        return Ok(());
    }
    let Some(rule) = writers::closing(file) else {
        return Ok(());
    };
    if filter::actor_excluded() {
        return Ok(());
    }
    let f_path = file.wrapping_add(off!(file_f_path));
    let (mnt, dentry) = split_path::<T>(f_path)?;
    let Some(mut held) = emit::start::<T>(EventKind::Modified, backend) else {
        return Ok(());
    };
    let record = held.record();
    record.header.rule_id = rule;
    if rule == 0 {
        record.header.flags |= flags::FILTER_UNDECIDED;
    }
    describe_target::<T>(record, existing(dentry));
    set_path1::<T>(record, dentry, mnt);
    emit::submit(record, backend);
    Ok(())
}

const MAP_SHARED: u64 = 0x01;
const PROT_WRITE: u64 = 0x2;

/// mmap of a file, shared and writable: writes can reach the file without write(2).
#[inline(always)]
pub fn mmap(backend: Backend, file: *const u8, prot: u64, map_flags: u64) -> Result<(), i64> {
    if file.is_null() || map_flags & MAP_SHARED == 0 || prot & PROT_WRITE == 0 {
        return Ok(());
    }
    // Untyped: the file is null for anonymous memory, and a verifier that takes the argument
    // for trusted drops the null check above (see `kernel::load`). The helper just fails.
    file_event::<false>(
        EventKind::MmapSharedWrite,
        backend,
        file,
        map_flags as u32,
        false,
    )
    .map(|_| ())
}

/// Reports an event about an open file; returns the rule it was reported under (0 when the
/// filter was undecided), or `None` when it was dropped. `use_d_path`: the hook may call
/// `bpf_d_path`.
#[inline(always)]
fn file_event<const T: bool>(
    kind: EventKind,
    backend: Backend,
    file: *const u8,
    event_flags: u32,
    use_d_path: bool,
) -> Result<Option<u32>, i64> {
    let f_path = file.wrapping_add(off!(file_f_path));
    let (mnt, dentry) = split_path::<T>(f_path)?;
    let Some(mut held) = begin::<T>(kind, backend, &[existing(dentry)]) else {
        return Ok(None);
    };
    let record = held.record();
    record.header.args.flags = event_flags;
    describe_target::<T>(record, existing(dentry));
    set_path1_of::<T>(record, f_path, (mnt, dentry), use_d_path);
    let rule = record.header.rule_id;
    emit::submit(record, backend);
    Ok(Some(rule))
}
