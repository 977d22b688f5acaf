//! When each process started, by pid (`sched:sched_process_fork`; the tracepoint backend
//! only). The completeness layer (fanotify) learns only the pid of an actor; a process that
//! exits before the daemon reads the event leaves nothing in /proc. Its start time from here
//! ties the event to the process's exec record, and never to an earlier process that had the
//! same pid.

use aya_ebpf::{
    helpers::bpf_ktime_get_boot_ns, macros::map, maps::LruHashMap, programs::TracePointContext,
};
use fim_common::record::STARTED_ENTRIES;

/// The offset of `child_pid` in the tracepoint's record (it differs between kernels: 44
/// with fixed-size comms, 20 with `__data_loc` ones); 0: unknown, nothing recorded. Set by
/// user space before load, from the tracepoint's format.
#[unsafe(no_mangle)]
pub static FORK_CHILD_PID: u32 = 0;

/// pid (of a new process or thread) -> CLOCK_BOOTTIME ns at its fork: the kernel's
/// `start_boottime` of that task to within microseconds.
#[map]
static STARTED: LruHashMap<u32, u64> = LruHashMap::with_max_entries(STARTED_ENTRIES, 0);

pub fn fork(ctx: &TracePointContext) -> Result<(), i64> {
    // SAFETY: a plain read of a global user space sets before load.
    let offset = unsafe { core::ptr::read_volatile(&raw const FORK_CHILD_PID) } as usize;
    if offset == 0 {
        return Ok(());
    }
    // SAFETY: read_at checks the access with bpf_probe_read.
    let child: i32 = unsafe { ctx.read_at(offset)? };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    STARTED.insert(child as u32, now, 0).map_err(i64::from)
}
