//! In-kernel filtering: is the object under a watched root, and is the actor excluded?
//!
//! Roots are keyed by (dev, inode). User space also registers the root of every mount below a
//! recursive root, so the walk never has to cross a mount: it stops at the filesystem root.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::map,
    maps::{Array, HashMap},
};
use fim_common::{Excluded, WatchKey, WatchValue, bitmap, record::MAX_WALK_DEPTH, watch};

use crate::{
    dirmemo,
    kernel::{member, member_ptr, off, read_ptr},
};

#[map]
static WATCHED: HashMap<WatchKey, WatchValue> = HashMap::with_max_entries(16384, 0);

/// A bit per `WATCHED` key hash (`fim_common::bitmap`): a clear bit skips the lookup.
#[map]
static WATCHED_BITS: Array<u64> = Array::with_max_entries(bitmap::WORDS, 0);

/// Whether the key with this hash may be in the map behind `bits`. A clear bit proves it absent
/// with one inlined array load; set (or unreadable), the caller looks it up.
#[inline(always)]
pub fn maybe_present(bits: &Array<u64>, hash: u64) -> bool {
    let (word, mask) = bitmap::bit(hash);
    match bits.get(word) {
        Some(w) => *w & mask != 0,
        None => true,
    }
}

/// Watched regular files that have more than one link, (dev, inode) -> the rule of a watched
/// name: a change made through another name (a hard link in an unwatched directory) is watched
/// too. Filled by user space from its scans and by the link hooks when a watched file gets a
/// name; looked up only for a regular file with more than one link that the walk found
/// unwatched, so no bitmap stands in front of it.
#[map]
static LINKED: HashMap<WatchKey, WatchValue> = HashMap::with_max_entries(16384, 0);

/// Processes (tgid) whose changes are dropped in the kernel: fim itself, configured actors.
#[map]
static EXCLUDED: HashMap<u32, Excluded> = HashMap::with_max_entries(1024, 0);

/// A bit per `EXCLUDED` tgid (`fim_common::bitmap`): a clear bit spares every record of a
/// process that is not excluded the hash lookup.
#[map]
static EXCLUDED_BITS: Array<u64> = Array::with_max_entries(bitmap::WORDS, 0);

/// The filter's decision, as one plain integer: a Rust enum with a payload lets LLVM move an
/// undefined payload register around, which the verifier rejects as an uninitialised read.
#[derive(Clone, Copy)]
pub struct Verdict(u64);

const V_UNWATCHED: u64 = 0;
const V_UNDECIDED: u64 = 1;
const V_WATCHED: u64 = 2;
/// With `V_WATCHED`: watched as another name of a watched file (`LINKED`).
const V_VIA_LINK: u64 = 1 << 40;

impl Verdict {
    #[allow(non_upper_case_globals)]
    pub const Unwatched: Verdict = Verdict(V_UNWATCHED);
    /// The walk limit was hit, or the string was not canonical: user space decides.
    #[allow(non_upper_case_globals)]
    pub const Undecided: Verdict = Verdict(V_UNDECIDED);

    #[allow(non_snake_case)]
    #[inline(always)]
    pub fn Watched(rule: u32) -> Verdict {
        Verdict(V_WATCHED | (rule as u64) << 8)
    }

    /// Watched because another name of the object is (a hard link).
    #[allow(non_snake_case)]
    #[inline(always)]
    pub fn Linked(rule: u32) -> Verdict {
        Verdict(V_WATCHED | (rule as u64) << 8 | V_VIA_LINK)
    }

    /// Whether the object is watched only as another name of a watched file.
    #[inline(always)]
    pub fn via_link(self) -> bool {
        self.0 & V_VIA_LINK != 0
    }

    /// The verdict as one integer, for map memory and loop state.
    #[inline(always)]
    pub fn raw(self) -> u64 {
        self.0
    }

    #[inline(always)]
    pub fn from_raw(raw: u64) -> Verdict {
        Verdict(raw)
    }

    #[inline(always)]
    pub fn is_unwatched(self) -> bool {
        self.0 & 0xff == V_UNWATCHED
    }

    #[inline(always)]
    pub fn is_undecided(self) -> bool {
        self.0 & 0xff == V_UNDECIDED
    }

    /// The rule of a watched verdict.
    #[inline(always)]
    pub fn rule(self) -> Option<u32> {
        if self.0 & 0xff == V_WATCHED {
            Some((self.0 >> 8) as u32)
        } else {
            None
        }
    }
}

#[inline(always)]
pub fn actor_excluded() -> bool {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !maybe_present(&EXCLUDED_BITS, tgid as u64) {
        return false;
    }
    // SAFETY: copied out at once.
    let Some(start) = (unsafe { EXCLUDED.get(tgid).map(|e| e.start_boottime_ns) }) else {
        return false;
    };
    start == 0 || start == crate::actor::group_start(crate::actor::current_task_btf())
}

/// The device number of the filesystem a dentry lives on. `TYPED`: see `kernel::member`.
#[inline(always)]
pub fn dentry_dev<const TYPED: bool>(dentry: *const u8) -> Result<u32, i64> {
    let sb = member_ptr::<TYPED>(dentry, off!(dentry_d_sb))?;
    member::<u32, TYPED>(sb, off!(super_block_s_dev))
}

/// The inode of a dentry that may be negative (a name about to be created), always through
/// the helper: 6.12's verifier takes `d_inode` of a typed dentry for a trusted, never-null
/// pointer, drops the caller's null check as dead code and makes the next load a plain one,
/// which faults on a negative dentry (it crashed the 6.12 test VM in `path_mkdir`). Read
/// with the helper, the pointer is a number and the check stays.
#[inline(always)]
pub fn dentry_inode(dentry: *const u8) -> Option<*const u8> {
    let inode = read_ptr(dentry, off!(dentry_d_inode)).ok()?;
    if inode.is_null() { None } else { Some(inode) }
}

/// An ancestor's inode and parent. Typed: two plain loads (an ancestor is positive, see
/// `kernel::load`). Untyped: two helper calls. (One read of the four words that hold both was
/// tried: the 6.1 verifier then ran out of its instruction budget on the tracepoint programs.)
#[inline(always)]
fn ancestor_links<const TYPED: bool>(dentry: *const u8) -> Option<(*const u8, *const u8)> {
    Some((
        member_ptr::<TYPED>(dentry, off!(dentry_d_inode)).ok()?,
        member_ptr::<TYPED>(dentry, off!(dentry_d_parent)).ok()?,
    ))
}

/// The watch entry of an inode (null: none).
#[inline(always)]
fn lookup<const TYPED: bool>(dev: u32, inode: *const u8) -> Option<WatchValue> {
    if inode.is_null() {
        return None;
    }
    let ino = member::<u64, TYPED>(inode, off!(inode_i_ino)).ok()?;
    if !maybe_present(&WATCHED_BITS, bitmap::inode_hash(dev, ino)) {
        return None;
    }
    // SAFETY: the value is copied out at once.
    unsafe { WATCHED.get(WatchKey { dev, _pad: 0, ino }).copied() }
}

/// What the caller knows about a target dentry's inode (see `check`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// It names an existing object the caller found and holds: positive, and it stays so.
    Existing,
    /// A name that may or may not exist (the new name of a rename or link).
    Either,
    /// A name about to be created (mknod, mkdir, symlink): negative, so no inode to look up.
    New,
}

/// Decides for `target` (a dentry). `TYPED`: `target` is a hook's typed pointer, and the walk
/// loads what it safely can directly (see `kernel::load`); otherwise (the tracepoint
/// backend's dentries came out of reads) two helper calls per level.
pub fn check<const TYPED: bool>(target: *const u8, presence: Presence) -> Verdict {
    let Ok(dev) = dentry_dev::<TYPED>(target) else {
        return Verdict::Undecided;
    };
    // Nothing watched on this filesystem: the walk, which never leaves it, would find nothing.
    if !maybe_present(&WATCHED_BITS, bitmap::dev_hash(dev)) {
        return Verdict::Unwatched;
    }
    // The target itself may be watched (a file rule). An existing object's inode is read
    // with plain loads; one that may be negative goes through the helper (see
    // `dentry_inode`); a name about to be created has none.
    let own = match presence {
        Presence::Existing if TYPED => member_ptr::<TYPED>(target, off!(dentry_d_inode))
            .ok()
            .and_then(|inode| own_verdict::<TYPED>(dev, inode)),
        Presence::New => None,
        _ => dentry_inode(target).and_then(|inode| own_verdict::<false>(dev, inode)),
    };
    if let Some(verdict) = own {
        return verdict;
    }
    dir_verdict::<TYPED>(dev, target)
}

/// The verdict an object's own inode gives: watched by a file rule (`SELF`), or as another
/// name of a watched file (`LINKED`); `None`: its directory decides. (Decided before the
/// walk, not after it: code after the walk that used the inode made LLVM read a stack slot
/// that some paths never wrote, which the 6.1 verifier rejects.)
#[inline(always)]
fn own_verdict<const TYPED: bool>(dev: u32, inode: *const u8) -> Option<Verdict> {
    if let Some(v) = lookup::<TYPED>(dev, inode)
        && v.flags & watch::SELF != 0
    {
        return Some(Verdict::Watched(v.rule_id));
    }
    linked::<TYPED>(dev, inode)
}

const S_IFMT: u16 = 0o170000;
const S_IFREG: u16 = 0o100000;

/// Watched as another name of a watched file: a regular file with more than one link whose
/// inode is in `LINKED`. (A watched name of it is watched anyway; user space tells.)
#[inline(always)]
fn linked<const TYPED: bool>(dev: u32, inode: *const u8) -> Option<Verdict> {
    if inode.is_null() {
        return None;
    }
    let mode = member::<u16, TYPED>(inode, off!(inode_i_mode)).ok()?;
    if mode & S_IFMT != S_IFREG {
        return None;
    }
    if member::<u32, TYPED>(inode, off!(inode_i_nlink)).ok()? <= 1 {
        return None;
    }
    let ino = member::<u64, TYPED>(inode, off!(inode_i_ino)).ok()?;
    // SAFETY: copied out at once.
    unsafe { LINKED.get(WatchKey { dev, _pad: 0, ino }).copied() }
        .map(|v| Verdict::Linked(v.rule_id))
}

/// A watched file got another name (a link hook whose decision was "watched"): changes
/// through either name are watched from now on, with no window in which user space has yet
/// to learn of it. User space keeps the map otherwise (scans, removals).
#[inline(always)]
pub fn remember_link(dev: u32, ino: u64, rule: u32) {
    let value = WatchValue {
        rule_id: rule,
        flags: watch::SELF,
    };
    // A full map is not a loss: the next scan finds the link (and user space adds it on the
    // link record).
    if LINKED
        .insert(WatchKey { dev, _pad: 0, ino }, value, 0)
        .is_err()
    {
        crate::diag::linked_full(ino);
    }
}

/// The verdict for a name in the directory that holds `target`.
#[inline(always)]
fn dir_verdict<const TYPED: bool>(dev: u32, target: *const u8) -> Verdict {
    let Ok(parent) = member_ptr::<TYPED>(target, off!(dentry_d_parent)) else {
        return Verdict::Undecided;
    };
    // The tracepoint backend decides on dentries only for fd-based syscalls and opens, and
    // the memo's code in every one of its programs pushed `tp_enter_renameat2` over the 6.1
    // verifier's budget: it walks.
    if !TYPED {
        return walk::<TYPED>(dev, parent);
    }
    // The parent's verdict is memoised per CPU (see `dirmemo`): keyed by its dentry and
    // inode number, which the walk's first step reads anyway.
    let Some((parent_inode, _)) = ancestor_links::<TYPED>(parent) else {
        return Verdict::Undecided;
    };
    let Ok(parent_ino) = member::<u64, TYPED>(parent_inode, off!(inode_i_ino)) else {
        return Verdict::Undecided;
    };
    let stamp = dirmemo::stamp();
    if let Some(stamp) = stamp
        && let Some(raw) = dirmemo::recall(parent, parent_ino, stamp)
    {
        return Verdict::from_raw(raw);
    }
    // A miss: the walk's verdict is kept only if no rename ran meanwhile (see `dirmemo`).
    let seq = stamp.and_then(|_| dirmemo::rename_seq());
    let verdict = walk::<TYPED>(dev, parent);
    if let (Some(stamp), Some(seq)) = (stamp, seq)
        && !verdict.is_undecided()
    {
        dirmemo::remember(parent, parent_ino, stamp, seq, verdict.raw());
    }
    verdict
}

/// The verdict for a name in directory `dir`: whether `dir` watches its children, or one of
/// its ancestors its whole tree.
#[inline(always)]
fn walk<const TYPED: bool>(dev: u32, dir: *const u8) -> Verdict {
    let mut dentry = dir;
    let mut depth = 1u32;
    while depth < MAX_WALK_DEPTH {
        let Some((inode, parent)) = ancestor_links::<TYPED>(dentry) else {
            return Verdict::Undecided;
        };
        if let Some(v) = lookup::<TYPED>(dev, inode) {
            let wanted = if depth == 1 {
                watch::CHILDREN | watch::RECURSIVE
            } else {
                watch::RECURSIVE
            };
            if v.flags & wanted != 0 {
                return Verdict::Watched(v.rule_id);
            }
        }
        if parent == dentry {
            return Verdict::Unwatched;
        }
        dentry = parent;
        depth += 1;
    }
    Verdict::Undecided
}
