//! The acting process: ids from helpers, the rest from `task_struct`.

use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
    generated::{bpf_get_current_cgroup_id, bpf_get_current_task, bpf_get_current_task_btf},
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

/// Fills `actor` for the current task. Fields that cannot be read stay at their sentinel
/// (`u32::MAX` for ids) rather than being guessed.
#[inline(always)]
pub fn fill(actor: &mut Actor) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    actor.tgid = (pid_tgid >> 32) as u32;
    actor.pid = pid_tgid as u32;
    actor.uid = uid_gid as u32;
    actor.gid = (uid_gid >> 32) as u32;
    actor.comm = bpf_get_current_comm().unwrap_or([0u8; 16]);
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
    let parent = load_ptr(task, off!(task_real_parent));
    if !parent.is_null() {
        actor.ppid = load::<u32>(parent, off!(task_tgid));
    }
    let cred = load_ptr(task, off!(task_cred));
    if !cred.is_null() {
        actor.euid = load::<u32>(cred, off!(cred_euid));
    }
    let loginuid = off!(task_loginuid);
    if loginuid != 0 {
        actor.loginuid = load::<u32>(task, loginuid);
    }
    let leader = load_ptr(task, off!(task_group_leader));
    if !leader.is_null() {
        actor.start_boottime_ns = load::<u64>(leader, off!(task_start_boottime));
    }
    // Through the helper: `nsproxy` is null once an exiting task has left its namespaces,
    // and files it wrote are released after that (see `kernel::load`).
    if let Ok(nsproxy) = read_ptr(current_task(), off!(task_nsproxy))
        && !nsproxy.is_null()
        && let Ok(mnt_ns) = read_ptr(nsproxy, off!(nsproxy_mnt_ns))
    {
        actor.mnt_ns = read::<u32>(mnt_ns, off!(mnt_namespace_ns_inum)).unwrap_or(0);
    }
}
