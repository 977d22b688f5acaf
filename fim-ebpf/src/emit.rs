//! Filling and submitting ring-buffer records, with loss accounting.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns,
    },
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use fim_common::{Actor, Backend, EventKind, Record, record::COMM_LEN};

/// Records for user space. 256 KiB holds a few thousand records; user space drains it
/// continuously and every failed reservation is counted in `LOST`.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Failed ring-buffer reservations, per CPU, indexed by the raw `Backend` number.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(4, 0);

pub struct Lost;

/// Reserves a record, fills the actor from the current task and submits it.
pub fn event(kind: EventKind, backend: Backend) -> Result<(), Lost> {
    let Some(mut slot) = EVENTS.reserve::<Record>(0) else {
        count_lost(backend);
        return Err(Lost);
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let comm = bpf_get_current_comm().unwrap_or([0u8; COMM_LEN]);
    slot.write(Record {
        kind: kind as u16,
        backend: backend as u8,
        flags: 0,
        _reserved: 0,
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        actor: Actor {
            tgid: (pid_tgid >> 32) as u32,
            pid: pid_tgid as u32,
            uid: uid_gid as u32,
            gid: (uid_gid >> 32) as u32,
            comm,
        },
    });
    slot.submit(0);
    Ok(())
}

fn count_lost(backend: Backend) {
    if let Some(counter) = LOST.get_ptr_mut(backend as u32) {
        // Per-CPU slot: no other CPU writes it, and programs do not nest on one CPU here.
        unsafe { *counter += 1 };
    }
}
