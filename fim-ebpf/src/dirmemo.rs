//! The filter's verdict for the last directory it walked up from, per CPU (lsm and fentry:
//! the hooks' typed dentries; see `filter::check`): most changes come
//! in runs inside one directory (a build, an unpacked archive, a log rotation), and the walk
//! to the filesystem root is the same every time.
//!
//! A directory's verdict depends on the chain of its ancestors and on the watched roots. The
//! chain changes only through the dcache's `__d_move` (rename, exchange, a directory alias
//! spliced in), which always runs with the kernel's `rename_lock` seqlock held for writing.
//! A memo holds `DCACHE_GEN`, which the lsm and fentry programs bump when `__d_move` is about
//! to move a directory (`moving`; a file's move changes no directory's chain, so the memos
//! outlive the renames of files that most workloads make), and it is valid while that
//! generation and `FILTER_GEN` (bumped by user space after every change of the roots) are
//! unchanged: a check reads two array slots and calls no helper.
//!
//! The bump comes at `__d_move`'s entry, with `rename_lock` held and before the move changes
//! anything: a check before it finds the chain as it still is, and one after it misses. A walk
//! after a miss may still see a chain in the middle of a move whose bump came before the walk's
//! stamp, so its result is only kept when `rename_lock`'s sequence, read before and after the
//! walk (on a miss only), is even and unchanged. User space gives the lock's address (from
//! /proc/kallsyms; no memo when the kernel does not list data symbols). The sequence is read
//! with no barrier between its reads and the walk: sound where loads are not reordered with
//! loads (x86, where the kernel's `smp_rmb` is a compiler barrier too; the helper calls and
//! volatile loads keep the compiler's order), so user space enables the memo on x86_64 only.
//!
//! The key is the directory's dentry and inode number. A dentry is freed without any rename,
//! and tmpfs frees a removed directory's at once: the next directory created may get the same
//! memory, somewhere else, perhaps with the same inode number (filesystems reuse them). So
//! `DCACHE_GEN` is also bumped whenever a dentry becomes a directory's (`instantiated`): a
//! reused address is a new directory only once it has its inode, and no event can name it
//! before that. The path memo (`pathmemo`) relies on the same generation.
//!
//! Programs on one CPU may interleave where the kernel preempts a BPF program (preempt=full,
//! RT): an entry is written with its dentry cleared first and set last, and read the other
//! way round, with the dentry checked again at the end, so a half-written entry never matches.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    macros::map,
    maps::{Array, PerCpuArray},
};

use fim_common::record::DCACHE_GEN_UNTRACKED;

use crate::kernel::{field, off, read, read_ptr, set_field};

/// Address of the kernel's `rename_lock` (its first word is the sequence); 0: unknown, no
/// memo. Set by user space before load.
#[unsafe(no_mangle)]
pub static RENAME_LOCK: u64 = 0;

/// Bumped by user space after every change of the watched roots.
#[map]
static FILTER_GEN: Array<u64> = Array::with_max_entries(1, 0);

/// Bumped by the lsm and fentry programs each time a dentry gets a directory's inode or a
/// directory's dentry moves; holds `DCACHE_GEN_UNTRACKED` until moves are counted.
#[map]
static DCACHE_GEN: Array<u64> = Array::with_max_entries(1, 0);

#[repr(C)]
struct DirMemo {
    dentry: u64,
    ino: u64,
    generation: u64,
    dcache: u64,
    verdict: u64,
}

#[map]
static DIRMEMO: PerCpuArray<DirMemo> = PerCpuArray::with_max_entries(1, 0);

/// When the memo may be used: the roots' generation and the dentry generation, read before
/// anything else.
#[derive(Clone, Copy)]
pub struct Stamp {
    generation: u64,
    dcache: u64,
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

/// The current stamp; `None` when the memo cannot be used.
#[inline(always)]
pub fn stamp() -> Option<Stamp> {
    let generation = *FILTER_GEN.get(0)?;
    Some(Stamp {
        generation,
        dcache: dcache_gen()?,
    })
}

/// How many dentries became directories' and directories moved since load (see the
/// module's comment); `None` while moves are not counted.
#[inline(always)]
pub fn dcache_gen() -> Option<u64> {
    let generation = DCACHE_GEN.get(0).copied()?;
    if generation & DCACHE_GEN_UNTRACKED != 0 {
        return None;
    }
    Some(generation)
}

const S_IFMT: u16 = 0o170000;
const S_IFDIR: u16 = 0o040000;

/// A dentry got its inode (`d_instantiate`, `d_add`, `d_splice_alias`, ...): when that is a
/// directory, every CPU's memo entries made before may hold this dentry's address for another
/// directory. Bumped before the kernel makes the dentry positive, so an event that finds the
/// new directory sees the new generation. The inode through the helper (a typed argument's
/// null check may be dropped, see `kernel::load`); unreadable, it counts as a directory.
#[inline(always)]
pub fn instantiated(inode: *const u8) {
    let dir = match read::<u16>(inode, off!(inode_i_mode)) {
        Ok(mode) => mode & S_IFMT == S_IFDIR,
        Err(_) => true,
    };
    if dir {
        bump();
    }
}

/// `__d_move(dentry, target, exchange)` is about to run (rename_lock held): when it moves a
/// directory, every CPU's memo entries made before may hold a chain about to change. A moving
/// `dentry` that is a directory, or with `exchange` a `target` that is one (a directory
/// exchanged with a file moves, and a plain move leaves `target` where it is, unhashed).
/// Inodes through the helper; unreadable, they count as directories.
#[inline(always)]
pub fn moving(dentry: *const u8, target: *const u8, exchange: bool) {
    if is_directory(dentry) || (exchange && is_directory(target)) {
        bump();
    }
}

#[inline(always)]
fn is_directory(dentry: *const u8) -> bool {
    let Ok(inode) = read_ptr(dentry, off!(dentry_d_inode)) else {
        return true;
    };
    match read::<u16>(inode, off!(inode_i_mode)) {
        Ok(mode) => mode & S_IFMT == S_IFDIR,
        Err(_) => true,
    }
}

#[inline(always)]
fn bump() {
    if let Some(generation) = DCACHE_GEN.get_ptr_mut(0) {
        // SAFETY: a valid, aligned map value. An atomic add (see `presence`): two CPUs
        // bumping at once must not both write the same value, and on x86 it is a full
        // barrier, before the kernel makes the dentry positive or moves it.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(generation, 1) };
    }
}

/// The memoised raw verdict for directory `dentry` (inode number `ino`), if still valid.
#[inline(always)]
pub fn recall(dentry: *const u8, ino: u64, stamp: Stamp) -> Option<u64> {
    let memo = DIRMEMO.get_ptr_mut(0)?;
    if field!(memo, dentry) != dentry as u64 {
        return None;
    }
    let fresh = field!(memo, generation) == stamp.generation
        && field!(memo, dcache) == stamp.dcache
        && field!(memo, ino) == ino;
    let verdict = field!(memo, verdict);
    if fresh && field!(memo, dentry) == dentry as u64 {
        Some(verdict)
    } else {
        None
    }
}

/// Keeps `verdict` for `dentry` when the rename sequence is still `seq` (read before the
/// walk, which may have seen a chain in the middle of a move).
#[inline(always)]
pub fn remember(dentry: *const u8, ino: u64, stamp: Stamp, seq: u64, verdict: u64) {
    if rename_seq() != Some(seq) {
        return;
    }
    let Some(memo) = DIRMEMO.get_ptr_mut(0) else {
        return;
    };
    set_field!(memo, dentry, 0);
    set_field!(memo, verdict, verdict);
    set_field!(memo, ino, ino);
    set_field!(memo, generation, stamp.generation);
    set_field!(memo, dcache, stamp.dcache);
    set_field!(memo, dentry, dentry as u64);
}
