//! Files opened for writing in a watched place, so their close can be reported as `Modified`
//! (user space rehashes then and compares: the close of a writer is when content settles).

use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap},
};

use crate::presence;

/// `struct file *` -> the rule it matched at open. LRU: a file whose close is never seen
/// (e.g. released by a path the backend does not hook) cannot pin an entry forever.
#[map]
static WRITERS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(WRITERS_ENTRIES, 0);
const WRITERS_ENTRIES: u32 = 65536;

/// The counting filter in front of `WRITERS` (`presence`): most files released were never
/// tracked.
#[map]
static WRITERS_COUNT: Array<u64> = Array::with_max_entries(presence::ENTRIES, 0);

#[inline(always)]
pub fn opened(file: *const u8, rule: u32) {
    let key = crate::kernel::as_number(file);
    // Counted before the insertion, so that the count never trails what the map holds, even
    // for a close on another CPU in between.
    presence::inserted(&WRITERS_COUNT, key);
    if WRITERS.insert(key, rule, 0).is_err() {
        presence::removed(&WRITERS_COUNT, key);
        crate::diag::writers_full(WRITERS_ENTRIES);
    }
}

/// The rule of a tracked writer being closed (and forgets it).
#[inline(always)]
pub fn closing(file: *const u8) -> Option<u32> {
    // The key is the pointer as a number, which costs a helper call (`kernel::as_number`):
    // most of the time no file at all is tracked.
    if !presence::any(&WRITERS_COUNT) {
        return None;
    }
    let key = crate::kernel::as_number(file);
    if !presence::maybe(&WRITERS_COUNT, key) {
        return None;
    }
    // SAFETY: copied out at once.
    let rule = unsafe { WRITERS.get(key).copied() }?;
    if WRITERS.remove(key).is_ok() {
        presence::removed(&WRITERS_COUNT, key);
    }
    Some(rule)
}
