//! The acting process: ids from helpers, the rest from `task_struct`.

use aya_ebpf::helpers::{
    bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
    generated::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_task,
        bpf_get_current_task_btf,
    },
};
use fim_common::Actor;

use crate::kernel::{load, load_ptr, off, read, read_ptr};

/// The current task as a number: for the read helper (`kernel::read`).
pub fn current_task() -> *const u8 {
    // SAFETY: no preconditions.
    unsafe { bpf_get_current_task() as *const u8 }
}

/// The current task as a typed pointer (5.11+, every program type fim uses): for
/// `kernel::load`, an instruction per member instead of a helper call.
#[inline(always)]
pub fn current_task_btf() -> *const u8 {
    // SAFETY: no preconditions.
    unsafe { bpf_get_current_task_btf() as *const u8 }
}

/// `task_struct::flags`: the task is exiting (set before it leaves its namespaces).
const PF_EXITING: u32 = 0x4;

/// Fills `actor` for the current task. `TYPED` (lsm and fentry): by plain loads from the
/// typed task pointer wherever that is safe, one helper call in all (the cgroup id) where
/// `fill_fresh`, which the tracepoint programs keep (they are at the 6.1 verifier's limit),
/// makes eight (about 770 instructions on 6.1).
///
/// An earlier version kept the last actor per CPU and reused it while the task's `cred`,
/// `nsproxy` and other pointers were unchanged; a freed object's memory reused for a new one
/// would have defeated that, so every field is read as a value each time.
#[inline(always)]
pub fn fill<const TYPED: bool>(actor: &mut Actor) {
    if !TYPED || !crate::kernel::offsets_loaded() {
        fill_fresh(actor);
        return;
    }
    let task = current_task_btf();
    actor.tgid = load::<u32>(task, off!(task_tgid));
    actor.pid = load::<u32>(task, off!(task_pid));
    actor.uid = u32::MAX;
    actor.gid = u32::MAX;
    actor.euid = u32::MAX;
    let cred = load_ptr(task, off!(task_cred));
    if !cred.is_null() {
        actor.uid = load::<u32>(cred, off!(cred_uid));
        actor.gid = load::<u32>(cred, off!(cred_gid));
        actor.euid = load::<u32>(cred, off!(cred_euid));
    }
    // comm as two words: the kernel keeps it NUL-terminated and zero-padded (the helper
    // copies it byte by byte).
    let comm = off!(task_comm);
    let words = actor.comm.as_mut_ptr().cast::<u64>();
    // SAFETY: `comm` is 16 bytes; unaligned writes need no alignment.
    unsafe {
        words.write_unaligned(load::<u64>(task, comm));
        words.add(1).write_unaligned(load::<u64>(task, comm + 8));
    }
    // SAFETY: no preconditions.
    actor.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    actor.ppid = parent_tgid(task);
    actor.loginuid = loginuid();
    actor.start_boottime_ns = group_start(task);
    // `nsproxy` is null once an exiting task has left its namespaces (files it wrote are
    // released after that), and a verifier may take it for never null (see `kernel::load`):
    // plain loads only while the task is not exiting, which it cannot start to do while it
    // runs this program; the helper otherwise.
    actor.mnt_ns = 0;
    if load::<u32>(task, off!(task_flags)) & PF_EXITING == 0 {
        let nsproxy = load_ptr(task, off!(task_nsproxy));
        if !nsproxy.is_null() {
            let mnt_ns = load_ptr(nsproxy, off!(nsproxy_mnt_ns));
            if !mnt_ns.is_null() {
                actor.mnt_ns = load::<u32>(mnt_ns, off!(mnt_namespace_ns_inum));
            }
        }
    } else {
        actor.mnt_ns = mnt_ns_read();
    }
}

/// The current task's login uid (`u32::MAX` without CONFIG_AUDIT or offsets).
#[inline(always)]
fn loginuid() -> u32 {
    let offset = off!(task_loginuid);
    if !crate::kernel::offsets_loaded() || offset == 0 {
        return u32::MAX;
    }
    load::<u32>(current_task_btf(), offset)
}

/// Fills `actor` for the current task from the kernel. Fields that cannot be read stay at
/// their sentinel (`u32::MAX` for ids) rather than being guessed.
#[inline(always)]
fn fill_fresh(actor: &mut Actor) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    actor.tgid = (pid_tgid >> 32) as u32;
    actor.pid = pid_tgid as u32;
    actor.uid = uid_gid as u32;
    actor.gid = (uid_gid >> 32) as u32;
    // Straight into the record: aya's wrapper goes through a zeroed stack buffer, which the
    // BPF target zeroes and copies a byte at a time. The helper fills all 16 bytes (zeroes
    // on failure).
    // SAFETY: `comm` is 16 writable bytes.
    unsafe { bpf_get_current_comm(actor.comm.as_mut_ptr().cast(), actor.comm.len() as u32) };
    // SAFETY: no preconditions.
    actor.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    actor.ppid = u32::MAX;
    actor.euid = u32::MAX;
    actor.loginuid = u32::MAX;
    actor.mnt_ns = 0;
    actor.start_boottime_ns = 0;
    if !crate::kernel::offsets_loaded() {
        return;
    }
    let task = current_task_btf();
    actor.ppid = parent_tgid(task);
    let cred = load_ptr(task, off!(task_cred));
    if !cred.is_null() {
        actor.euid = load::<u32>(cred, off!(cred_euid));
    }
    actor.loginuid = loginuid();
    actor.start_boottime_ns = group_start(task);
    actor.mnt_ns = mnt_ns_read();
}

/// The parent's tgid (`u32::MAX` when there is none) of `task`, a typed pointer.
#[inline(always)]
fn parent_tgid(task: *const u8) -> u32 {
    let parent = load_ptr(task, off!(task_real_parent));
    if parent.is_null() {
        return u32::MAX;
    }
    load::<u32>(parent, off!(task_tgid))
}

/// The start time of `task`'s thread group (0 when unknown), what user space keys processes
/// by; `task` is a typed pointer.
#[inline(always)]
pub fn group_start(task: *const u8) -> u64 {
    let leader = load_ptr(task, off!(task_group_leader));
    if leader.is_null() {
        return 0;
    }
    load::<u64>(leader, off!(task_start_boottime))
}

/// The mount namespace's inode number through the helper: `nsproxy` is null once an exiting
/// task has left its namespaces, and files it wrote are released after that (see
/// `kernel::load`). 0 when there is none.
#[inline(always)]
fn mnt_ns_read() -> u32 {
    if let Ok(nsproxy) = read_ptr(current_task(), off!(task_nsproxy))
        && !nsproxy.is_null()
        && let Ok(mnt_ns) = read_ptr(nsproxy, off!(nsproxy_mnt_ns))
    {
        return read::<u32>(mnt_ns, off!(mnt_namespace_ns_inum)).unwrap_or(0);
    }
    0
}
