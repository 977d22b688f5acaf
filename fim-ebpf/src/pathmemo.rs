//! The path of the directory the last path walk on this CPU started from (lsm and fentry):
//! the next event in the same directory copies it and adds its own name, instead of walking
//! and reading every name up to the top of the mount tree again. Changes come in runs inside
//! one directory, and in a watched one every event builds a path: at four levels the walk
//! cost about 2,200 instructions of the 4,800 a record took on 6.1.
//!
//! A directory's path, seen through one mount, depends on its chain of ancestors and on the
//! chain of mounts above it. The first changes only when `__d_move` moves a directory, which
//! bumps the dentry generation (see `dirmemo`; a walk's result is kept only when the kernel's
//! `rename_lock` sequence did not move during it), the second only under `mount_lock` (mount,
//! move, unmount), a seqlock: the memo is valid while that sequence and the dentry generation
//! are unchanged (a removed directory's dentry may be freed and its memory reused for another
//! directory: see `dirmemo`). The key is the directory's dentry and the mount it was seen
//! through (a bind mount shows the same dentry at another path).
//!
//! As in `dirmemo`, user space gives both locks' addresses from /proc/kallsyms (no memo
//! without them, and none off x86_64), and an entry is written with its dentry cleared first
//! and set last, and read the other way round.

use aya_ebpf::{helpers::generated::bpf_probe_read_kernel, macros::map, maps::PerCpuArray};
use fim_common::record::PATH_CAP;

use crate::{
    dirmemo,
    kernel::{field, set_field},
    path::{MASK, bounded},
};

/// Address of the kernel's `mount_lock` (its first word is the sequence); 0: unknown, no
/// memo. Set by user space before load.
#[unsafe(no_mangle)]
pub static MOUNT_LOCK: u64 = 0;

#[repr(C)]
struct PathMemo {
    dir: u64,
    mnt: u64,
    mount_seq: u64,
    dcache: u64,
    len: u64,
    /// The walk's flags (`PATH_FS_RELATIVE`).
    flags: u64,
    path: [u8; PATH_CAP],
}

#[map]
static PATHMEMO: PerCpuArray<PathMemo> = PerCpuArray::with_max_entries(1, 0);

/// The mount sequence and the dentry generation, read before anything else; `None` when the
/// memo cannot be used now.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    mount_seq: u64,
    dcache: u64,
}

#[inline(always)]
pub fn stamp() -> Option<Stamp> {
    // SAFETY: volatile so the zero initialiser is not folded into the code.
    let mount_lock = unsafe { core::ptr::read_volatile(&raw const MOUNT_LOCK) };
    let mount_seq = dirmemo::lock_seq(mount_lock)?;
    Some(Stamp {
        mount_seq,
        dcache: dirmemo::dcache_gen()?,
    })
}

/// Copies the memoised path of `dir` (seen through `mnt`) to `dst` (where `PATH_CAP` bytes
/// are free) and returns its length and the walk's flags. `None` when the memo holds another
/// directory, is stale, or the path is not shorter than `room`.
#[inline(always)]
pub fn recall(
    dir: *const u8,
    mnt: *const u8,
    stamp: Stamp,
    dst: *mut u8,
    room: usize,
) -> Option<(usize, u64)> {
    let memo = PATHMEMO.get_ptr_mut(0)?;
    if field!(memo, dir) != dir as u64 {
        return None;
    }
    if field!(memo, mnt) != mnt as u64
        || field!(memo, mount_seq) != stamp.mount_seq
        || field!(memo, dcache) != stamp.dcache
    {
        return None;
    }
    let len = field!(memo, len) as usize & MASK;
    if len >= room {
        return None;
    }
    // SAFETY: len & MASK < PATH_CAP bytes free at dst; the source is this map value's path.
    unsafe {
        bpf_probe_read_kernel(
            dst.cast(),
            bounded(len, MASK) as u32,
            (&raw const (*memo).path).cast(),
        )
    };
    let flags = field!(memo, flags);
    // Rewritten meanwhile (a preempting program on this CPU): what was copied may be mixed.
    if field!(memo, dir) != dir as u64 {
        return None;
    }
    Some((len, flags))
}

/// Keeps `buf[start..start + len]` as the path of `dir` (seen through `mnt`) when the stamp
/// is still `taken` and the rename sequence still `rename_seq`, read before the walk (which
/// may have seen a chain mid-move).
#[inline(always)]
pub fn remember(
    dir: *const u8,
    mnt: *const u8,
    (taken, rename_seq): (Stamp, u64),
    buf: *const u8,
    (start, len): (usize, usize),
    flags: u64,
) {
    if stamp() != Some(taken) || dirmemo::rename_seq() != Some(rename_seq) {
        return;
    }
    let Some(memo) = PATHMEMO.get_ptr_mut(0) else {
        return;
    };
    set_field!(memo, dir, 0);
    // SAFETY: the destination is this map value's path (len & MASK < PATH_CAP); the source
    // lies within WALK_CAP.
    unsafe {
        bpf_probe_read_kernel(
            (&raw mut (*memo).path).cast(),
            bounded(len, MASK) as u32,
            buf.add(bounded(start, MASK)).cast(),
        )
    };
    set_field!(memo, len, len as u64);
    set_field!(memo, flags, flags);
    set_field!(memo, mnt, mnt as u64);
    set_field!(memo, mount_seq, taken.mount_seq);
    set_field!(memo, dcache, taken.dcache);
    set_field!(memo, dir, dir as u64);
}
