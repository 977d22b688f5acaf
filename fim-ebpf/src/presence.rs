//! Counting filters in front of the maps that are looked up on every syscall or file release
//! but rarely hold the key (in-flight watched syscalls, files being written in a watched
//! place). A slot counts the insertions into the map minus the removals of keys hashing to it,
//! so a zero slot proves the key absent with one array load instead of a hash lookup. Keys the
//! map drops on its own (LRU evictions, replaced entries) are never counted down: their slot
//! only stays non-zero, which costs lookups, never a missed key. Callers count a key before
//! inserting it (and count it down again if the insertion fails), so at no instant does a slot
//! say zero while its map holds a key of that slot. One more entry counts every key the same
//! way: zero there means the map is empty, for callers whose key itself costs a helper call.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::maps::Array;

/// Slots per filter (a power of two).
pub const SLOTS: u32 = 4096;

/// Entries of a filter's array: the slots, then one more that counts every key (`any`).
pub const ENTRIES: u32 = SLOTS + 1;

#[inline(always)]
fn slot(key: u64) -> u32 {
    (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 52) as u32 & (SLOTS - 1)
}

#[inline(always)]
fn add(counts: &Array<u64>, key: u64, delta: u64) {
    for index in [slot(key), SLOTS] {
        if let Some(count) = counts.get_ptr_mut(index) {
            // SAFETY: a valid, aligned map value. An atomic add whose result is unused (BPF's
            // `lock xadd`, what `fetch_add` would be on targets that offer it): exact across
            // CPUs.
            unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(count, delta) };
        }
    }
}

/// `key` is about to be inserted into the map.
#[inline(always)]
pub fn inserted(counts: &Array<u64>, key: u64) {
    add(counts, key, 1);
}

/// `key` was removed from the map by this program (or its insertion failed).
#[inline(always)]
pub fn removed(counts: &Array<u64>, key: u64) {
    add(counts, key, u64::MAX);
}

/// Whether the map may hold `key`.
#[inline(always)]
pub fn maybe(counts: &Array<u64>, key: u64) -> bool {
    match counts.get(slot(key)) {
        Some(count) => *count != 0,
        None => true,
    }
}

/// Whether the map may hold any key at all: callers whose key costs something to compute
/// ask this first.
#[inline(always)]
pub fn any(counts: &Array<u64>) -> bool {
    match counts.get(SLOTS) {
        Some(count) => *count != 0,
        None => true,
    }
}
