//! The filter's verdict for the last directory it walked up from, per CPU (lsm and fentry:
//! the hooks' typed dentries; see `filter::check`): most changes come
//! in runs inside one directory (a build, an unpacked archive, a log rotation), and the walk
//! to the filesystem root is the same every time.
//!
//! A directory's verdict depends on the chain of its ancestors and on the watched roots. The
//! chain changes only through the dcache's `__d_move` (rename, exchange, a directory alias
//! spliced in), which always runs under the kernel's `rename_lock` seqlock, so the memo is
//! valid while that lock's sequence is unchanged, exactly as the kernel's own lockless path
//! walks check it. User space gives the lock's address (from /proc/kallsyms; no memo when the
//! kernel does not list data symbols) and bumps `FILTER_GEN` after every change of the roots.
//! The sequence is read before and after the walk with no barrier between: sound where loads
//! are not reordered with loads (x86, where the kernel's `smp_rmb` is a compiler barrier too;
//! the helper calls and volatile loads keep the compiler's order), so user space enables the
//! memo on x86_64 only.
//!
//! The key is the directory's dentry and inode number: a dentry freed and reused in the same
//! place with the same inode is the same directory to the walk, whose lookups are by inode.
//!
//! Programs on one CPU may interleave where the kernel preempts a BPF program (preempt=full,
//! RT): an entry is written with its dentry cleared first and set last, and read the other
//! way round, with the dentry checked again at the end, so a half-written entry never matches.

use aya_ebpf::{
    macros::map,
    maps::{Array, PerCpuArray},
};

use crate::kernel::{field, read, set_field};

/// Address of the kernel's `rename_lock` (its first word is the sequence); 0: unknown, no
/// memo. Set by user space before load.
#[unsafe(no_mangle)]
pub static RENAME_LOCK: u64 = 0;

/// Bumped by user space after every change of the watched roots.
#[map]
static FILTER_GEN: Array<u64> = Array::with_max_entries(1, 0);

#[repr(C)]
struct DirMemo {
    dentry: u64,
    ino: u64,
    seq: u64,
    generation: u64,
    verdict: u64,
}

#[map]
static DIRMEMO: PerCpuArray<DirMemo> = PerCpuArray::with_max_entries(1, 0);

/// When the memo may be used: the rename sequence (even: no rename in progress) and the
/// roots' generation, read before the walk.
#[derive(Clone, Copy)]
pub struct Stamp {
    seq: u64,
    generation: u64,
}

/// The sequence of the kernel seqlock at `lock`; `None` when its address is unknown (0) or
/// a writer holds it (odd).
#[inline(always)]
pub fn lock_seq(lock: u64) -> Option<u64> {
    if lock == 0 {
        return None;
    }
    let seq = read::<u32>(lock as *const u8, 0).ok()?;
    if seq & 1 != 0 {
        return None;
    }
    Some(seq as u64)
}

#[inline(always)]
pub fn rename_seq() -> Option<u64> {
    // SAFETY: volatile so the zero initialiser is not folded into the code.
    lock_seq(unsafe { core::ptr::read_volatile(&raw const RENAME_LOCK) })
}

/// The current stamp; `None` when the memo cannot be used now.
#[inline(always)]
pub fn stamp() -> Option<Stamp> {
    let seq = rename_seq()?;
    let generation = *FILTER_GEN.get(0)?;
    Some(Stamp { seq, generation })
}

/// The memoised raw verdict for directory `dentry` (inode number `ino`), if still valid.
#[inline(always)]
pub fn recall(dentry: *const u8, ino: u64, stamp: Stamp) -> Option<u64> {
    let memo = DIRMEMO.get_ptr_mut(0)?;
    if field!(memo, dentry) != dentry as u64 {
        return None;
    }
    let fresh = field!(memo, generation) == stamp.generation
        && field!(memo, seq) == stamp.seq
        && field!(memo, ino) == ino;
    let verdict = field!(memo, verdict);
    if fresh && field!(memo, dentry) == dentry as u64 {
        Some(verdict)
    } else {
        None
    }
}

/// Keeps `verdict` for `dentry` when no rename ran since `stamp` was taken (the walk may have
/// seen a chain in the middle of a move).
#[inline(always)]
pub fn remember(dentry: *const u8, ino: u64, stamp: Stamp, verdict: u64) {
    if rename_seq() != Some(stamp.seq) {
        return;
    }
    let Some(memo) = DIRMEMO.get_ptr_mut(0) else {
        return;
    };
    set_field!(memo, dentry, 0);
    set_field!(memo, verdict, verdict);
    set_field!(memo, ino, ino);
    set_field!(memo, seq, stamp.seq);
    set_field!(memo, generation, stamp.generation);
    set_field!(memo, dentry, dentry as u64);
}
