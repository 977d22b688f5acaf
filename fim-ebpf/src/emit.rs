//! The per-CPU scratch record, submission into the ring buffer, and loss accounting.
//!
//! A record is built in a per-CPU scratch slot and only its used prefix is copied into the
//! ring buffer. fim's programs run on hooks that do not nest on one CPU, but where the kernel
//! preempts kernel code (`preempt=full`, RT) a program may be preempted while it builds a
//! record, and another task's program run on the same CPU: the lsm, fentry and exec programs
//! therefore hold the slot (`start`, see `fim_common::Scratch`) and give it back when their
//! `Held` goes out of scope, after the record is in the ring buffer. A program that finds the
//! slot held drops its event and counts it as lost. The tracepoint backend's `sys_exit`
//! programs use it unheld (`start_bare`): syscall tracepoints run with preemption off, and
//! those programs are near the 6.1 verifier's limit.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use fim_common::{
    Backend, EventKind, Record, RecordHeader, flags,
    record::{PATH_CAP, Scratch, holds_alone},
};

/// Records for user space. User space may resize it at load time (`EVENTS` max entries).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// Failed ring-buffer outputs, per CPU, indexed by the raw `Backend` number.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(4, 0);

#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's scratch slot, held by the running program until dropped (see the module's
/// comment).
pub struct Held(*mut Scratch);

impl Held {
    /// The record in the slot.
    #[inline(always)]
    pub fn record(&mut self) -> &mut Record {
        // SAFETY: a valid per-CPU map value that no other program writes while held.
        unsafe { &mut (*self.0).record }
    }
}

impl Drop for Held {
    #[inline(always)]
    fn drop(&mut self) {
        // SAFETY: a valid, aligned map value. Atomic: a program preempted on this CPU may be
        // counting in or out at the same time.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*self.0).left, 1) };
    }
}

/// Asks for this CPU's scratch slot: counts in, reads `left`, then `entered` (volatile, in
/// that order; see `fim_common::record::holds_alone`). `None`, counted as lost for `backend`,
/// when another program holds it.
#[inline(always)]
fn claim(backend: Backend) -> Option<Held> {
    let slot = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a valid, aligned map value (see `Held::drop`).
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*slot).entered, 1) };
    // From here every way out counts out again.
    let held = Held(slot);
    // SAFETY: fields of a valid map value; volatile keeps both reads, in this order.
    let (left, entered) = unsafe {
        let left = core::ptr::read_volatile(&raw const (*slot).left);
        (left, core::ptr::read_volatile(&raw const (*slot).entered))
    };
    if !holds_alone(left, entered) {
        count_lost(backend);
        crate::diag::scratch_held(backend as u8);
        return None;
    }
    Some(held)
}

/// The scratch record, held, with a fresh header for `kind`/`backend` and the actor filled in
/// (`TYPED`: see `actor::fill`).
#[inline(always)]
pub fn start<const TYPED: bool>(kind: EventKind, backend: Backend) -> Option<Held> {
    let mut held = claim(backend)?;
    let record = held.record();
    fresh(record, kind, backend);
    crate::actor::fill::<TYPED>(&mut record.header.actor);
    Some(held)
}

/// The scratch record with a fresh header but no actor yet, not held: for the tracepoint
/// backend's `sys_exit` programs (see the module's comment), which still have to decide
/// whether to report (the actor costs a dozen kernel reads).
#[inline(always)]
pub fn start_bare(kind: EventKind, backend: Backend) -> Option<&'static mut Record> {
    // SAFETY: valid per-CPU map value pointer, used by one program at a time on this CPU.
    let record = unsafe { &mut (*SCRATCH.get_ptr_mut(0)?).record };
    fresh(record, kind, backend);
    Some(record)
}

/// Zeroes the header and sets kind, backend and time.
#[inline(always)]
fn fresh(record: &mut Record, kind: EventKind, backend: Backend) {
    // Zeroed a word at a time: a struct literal compiles to calls of the BPF target's
    // `memset`, a byte loop (five instructions per byte, about 550 for the header).
    let words = (&raw mut record.header).cast::<u64>();
    for i in 0..RecordHeader::SIZE / 8 {
        // SAFETY: within the header, which is 8-aligned and a whole number of words long.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
    record.header.kind = kind as u16;
    record.header.backend = backend as u8;
    // SAFETY: no preconditions.
    record.header.ktime_ns = unsafe { bpf_ktime_get_ns() };
}

/// The data area of this CPU's scratch record (for loop callbacks, which get no pointers).
#[inline(always)]
pub fn data_ptr() -> Option<*mut u8> {
    let slot = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: valid map value pointer.
    Some(unsafe { (*slot).record.data.as_mut_ptr() })
}

/// Outputs the header and the used part of the data area; counts a failure as lost.
#[inline(always)]
pub fn submit(record: &Record, backend: Backend) {
    let len1 = crate::path::bounded(record.header.path1_len as usize, PATH_CAP - 1);
    let len2 = crate::path::bounded(record.header.path2_len as usize, PATH_CAP - 1);
    let size = RecordHeader::SIZE + len1 + len2;
    // SAFETY: `size` <= size_of::<Record>() because both lengths are below PATH_CAP and the
    // data area holds 2 * PATH_CAP bytes.
    let bytes =
        unsafe { core::slice::from_raw_parts((record as *const Record).cast::<u8>(), size) };
    if EVENTS.output::<[u8]>(bytes, wakeup_flag()).is_err() {
        count_lost(backend);
        crate::diag::ring_full(backend as u8);
    }
    // Here, once per record, rather than where each happened: a diagnostic inside the path
    // walk, the filter or the sys_enter programs changed their code enough for the 6.1
    // verifier to refuse them (an uninitialised stack read; the instruction limit).
    let header = &record.header;
    if header.flags & (flags::PATH1_TRUNCATED | flags::PATH2_TRUNCATED) != 0 {
        crate::diag::path_truncated(header.kind, len1 as u32, len2 as u32);
    }
    if header.flags & flags::FILTER_UNDECIDED != 0 {
        crate::diag::filter_undecided(header.kind);
    }
}

/// Pending bytes above which user space is woken at once. Below it no wake-up is sent: a
/// wake-up per record (the ring buffer's default when the reader keeps up) costs a context
/// switch per file change; user space polls every few milliseconds instead.
const WAKEUP_BYTES: u64 = 256 * 1024;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

#[inline(always)]
fn wakeup_flag() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

pub fn count_lost(backend: Backend) {
    if let Some(counter) = LOST.get_ptr_mut(backend as u32) {
        // SAFETY: per-CPU slot; nothing else on this CPU writes it concurrently.
        unsafe { *counter += 1 };
    }
}
